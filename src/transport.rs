//! One SOCK_SEQPACKET connection to criu: whole datagrams out, whole datagrams (plus
//! passed fds) in. No protocol knowledge here.

use std::os::fd::OwnedFd;

use nix::sys::socket::{MsgFlags, recv};
use tokio::io::Interest;
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::OwnedAncillaryMessage;

use crate::error::{Error, Result};

/// The largest datagram we accept. criu's messages are a few KiB; the kernel's own
/// limit for a unix datagram is around the socket buffer size (~200 KiB by default).
pub(crate) const MAX_DATAGRAM: usize = 4 * 1024 * 1024;

/// Room for the control data of a datagram: criu passes at most one fd per message;
/// a little more lets us notice (and close) extras instead of losing them silently.
const ANCILLARY_BYTES: usize = 128;

/// One received datagram.
#[derive(Debug, Default)]
pub(crate) struct Datagram {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// The connection.
#[derive(Debug)]
pub(crate) struct Transport {
    sock: UnixSeqpacket,
}

impl Transport {
    pub(crate) fn new(sock: UnixSeqpacket) -> Self {
        Transport { sock }
    }

    /// Sends one datagram.
    ///
    /// Cancel safety: a datagram is either sent whole or not at all.
    pub(crate) async fn send(&self, bytes: &[u8]) -> Result<()> {
        let n = self
            .sock
            .send(bytes)
            .await
            .map_err(|e| Error::io("sending to criu", e))?;
        if n != bytes.len() {
            return Err(Error::protocol(
                format!("a {}-byte datagram sent whole", bytes.len()),
                format!("{n} bytes sent"),
            ));
        }
        Ok(())
    }

    /// Receives one datagram; `None` at end-of-stream (criu closed its end or died).
    ///
    /// The size is learnt with `MSG_PEEK | MSG_TRUNC` first, so no response is ever cut
    /// by a fixed buffer; truncated control data is a protocol error.
    ///
    /// Cancel safety: nothing is consumed until the final `recvmsg`, which completes
    /// within one poll.
    pub(crate) async fn recv(&self) -> Result<Option<Datagram>> {
        let len = self.peek_len().await?;
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_DATAGRAM {
            return Err(Error::protocol(
                format!("a datagram of at most {MAX_DATAGRAM} bytes"),
                format!("{len} bytes"),
            ));
        }
        let mut bytes = vec![0u8; len];
        let mut anc = [0u8; ANCILLARY_BYTES];
        let (info, reader) = self
            .sock
            .recv_with_ancillary(&mut bytes, &mut anc)
            .await
            .map_err(|e| Error::io("receiving from criu", e))?;
        let mut fds = Vec::new();
        for msg in reader.into_messages() {
            if let OwnedAncillaryMessage::FileDescriptors(received) = msg {
                fds.extend(received);
            }
        }
        if info.truncated() || info.bytes_read() != len {
            return Err(Error::protocol(
                format!("a whole {len}-byte datagram"),
                format!("{} bytes (truncated)", info.bytes_read()),
            ));
        }
        if info.ancillary_truncated() {
            // The kernel closed the fds that did not fit; ours are closed on return.
            return Err(Error::protocol(
                "at most one fd per message",
                format!("truncated control data ({} fds kept)", fds.len()),
            ));
        }
        bytes.truncate(info.bytes_read());
        Ok(Some(Datagram { bytes, fds }))
    }

    /// The length of the next datagram, waiting for one; 0 at end-of-stream.
    async fn peek_len(&self) -> Result<usize> {
        let afd = self.sock.as_async_fd();
        loop {
            let mut guard = afd
                .ready(Interest::READABLE)
                .await
                .map_err(|e| Error::io("waiting for criu", e))?;
            let r = guard.try_io(|inner| {
                recv(
                    inner.get_ref().as_raw_fd(),
                    &mut [],
                    MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT,
                )
                .map_err(std::io::Error::from)
            });
            match r {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::ECONNRESET) => return Ok(0),
                Ok(Err(e)) => return Err(Error::io("receiving from criu", e)),
                Err(_would_block) => continue,
            }
        }
    }
}
