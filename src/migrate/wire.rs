//! The control connection's messages: each a frame of a 4-byte big-endian length and
//! a JSON object; a file's bytes follow its [`Msg::File`] frame raw.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol spoken; a peer speaking another is refused.
pub(crate) const PROTOCOL: u32 = 2;
/// The largest control frame accepted: plans and answers are small.
const MAX_FRAME: u32 = 64 * 1024;

/// What the two sides say to each other, in this order: `Hello` and the source's
/// `cpuinfo.img` as a `File` (checked against the destination's CPU), `Ready` (or
/// `Failed`), the source's `File`s and `Restore` while its dump waits at
/// `post-dump`, `Restored` (or `Failed`), then `Commit` (the source tree is gone) or
/// `Abort` (it runs on: the destination kills what it restored).
///
/// Pre-copy inserts, after the first `Ready` (port 0), a `Round`/`Ready`/`RoundDone`/
/// `RoundIn` exchange per round and `Final`, answered with the final dump's `Ready`.
///
/// Post-copy (`lazy`) differs after `Restore`: the destination says `Checked` once
/// the files match; the source answers `post-dump`, reaches its criu's page server
/// and says `Serving` (or `Abort`); the destination restores, its page traffic going
/// both ways as `Data` frames, and says `Running` once the tree runs. When its
/// lazy-pages daemon has every page it says `Done` (or `Failed`); the source ends
/// its traffic with `End`, and its last word is `Commit` or `Abort`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub(crate) enum Msg {
    Hello {
        protocol: u32,
        /// The migration's name: the directory under the destination's images root.
        id: String,
        /// The source's criu, `major.minor.sublevel`.
        criu: String,
        tcp_established: bool,
        shell_job: bool,
        file_locks: bool,
        ext_unix_sk: bool,
        /// Post-copy: the memory follows the tree, from the source's criu.
        #[serde(default)]
        lazy: bool,
        /// The tree's resident memory, for the destination's free-space check.
        #[serde(default)]
        memory_bytes: u64,
        /// Pre-copy: rounds of pre-dumps come first (`Round`...), then `Final`.
        #[serde(default)]
        pre_copy: bool,
        /// An OCI container: its bundle, at the same path on the destination.
        #[serde(default)]
        bundle: Option<std::path::PathBuf>,
    },
    /// Pre-copy: start a page server for round `round` (into `ID/<round>`, its
    /// parent `../<round - 1>`); answered with `Ready`.
    Round {
        round: u32,
    },
    /// Pre-copy: the source's pre-dump of `round` is over; answered with `RoundIn`
    /// once its pages are all written.
    RoundDone {
        round: u32,
    },
    RoundIn {
        round: u32,
    },
    /// Pre-copy: the final dump's page server (into `ID`, its parent `<round>`);
    /// answered with `Ready`.
    Final {
        parent_round: u32,
    },
    Ready {
        page_server_port: u16,
    },
    /// An image file; its `size` bytes follow.
    File {
        name: String,
        size: u64,
        sha256: String,
    },
    Restore,
    Restored {
        pid: i32,
    },
    /// Post-copy: the files are in and match; the daemon waits for the pages.
    Checked,
    /// Post-copy: the source's criu serves the pages; the tree may run.
    Serving,
    /// Post-copy: the tree runs on the destination.
    Running {
        pid: i32,
    },
    /// Page traffic; its `len` bytes follow.
    Data {
        len: u32,
    },
    /// Post-copy: every page arrived and the lazy-pages daemon ended well.
    Done,
    /// Post-copy: the source sends no more page traffic.
    End,
    Failed {
        reason: String,
    },
    Commit,
    Abort {
        reason: String,
    },
}

pub(crate) async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &Msg) -> std::io::Result<()> {
    send_with(w, msg, &[]).await
}

/// How long a side's last word (a commit, an abort, a refusal) may take to go out:
/// on a dead link with a full send buffer a write would wait forever.
const LAST_WORD: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends `msg` as a side's last word on the connection, giving up after
/// [`LAST_WORD`]; whether it went out.
pub(crate) async fn send_last<W: AsyncWrite + Unpin>(w: &mut W, msg: &Msg) -> bool {
    matches!(
        tokio::time::timeout(LAST_WORD, send(w, msg)).await,
        Ok(Ok(()))
    )
}

/// One frame and the bytes that follow it, in one write: page requests are small
/// and wait on each other, so no piece may sit in Nagle's queue.
async fn send_with<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Msg,
    tail: &[u8],
) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len() + tail.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame.extend_from_slice(tail);
    w.write_all(&frame).await?;
    w.flush().await
}

pub(crate) async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Msg> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a {len}-byte control frame (at most {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Sends `bytes` as one [`Msg::Data`] frame.
pub(crate) async fn send_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    let len = bytes.len() as u32;
    send_with(w, &Msg::Data { len }, bytes).await
}

/// Sends `path` as a [`Msg::File`] and its bytes; returns the bytes sent.
pub(crate) async fn send_file<W: AsyncWrite + Unpin>(
    w: &mut W,
    name: &str,
    path: &std::path::Path,
) -> std::io::Result<u64> {
    let bytes = tokio::fs::read(path).await?;
    let sha256 = hex(&Sha256::digest(&bytes));
    send(
        w,
        &Msg::File {
            name: name.to_owned(),
            size: bytes.len() as u64,
            sha256,
        },
    )
    .await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(bytes.len() as u64)
}

/// Reads `size` bytes into `path`, hashing them; the lowercase hex SHA-256.
pub(crate) async fn recv_file<R: AsyncRead + Unpin>(
    r: &mut R,
    size: u64,
    path: &std::path::Path,
) -> std::io::Result<String> {
    let mut file = tokio::fs::File::create_new(path).await?;
    let mut hash = Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        hash.update(&buf[..n]);
        file.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    file.flush().await?;
    Ok(hex(&hash.finalize()))
}

/// Reads and drops `size` bytes (a file refused, so that the sender gets to read
/// the refusal rather than a reset connection).
pub(crate) async fn drain<R: AsyncRead + Unpin>(r: &mut R, size: u64) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(size), &mut tokio::io::sink()).await?;
    if copied < size {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A file name the destination writes as sent: one plain path component.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_and_files_round_trip_and_oversized_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("core-1.img");
        std::fs::write(&src, b"criu image bytes").unwrap();
        send(&mut a, &Msg::Restore).await.unwrap();
        send_file(&mut a, "core-1.img", &src).await.unwrap();
        assert_eq!(recv(&mut b).await.unwrap(), Msg::Restore);
        let Msg::File { name, size, sha256 } = recv(&mut b).await.unwrap() else {
            panic!("a file");
        };
        let dst = dir.path().join("copy");
        let got = recv_file(&mut b, size, &dst).await.unwrap();
        assert_eq!((name.as_str(), got), ("core-1.img", sha256));
        assert_eq!(std::fs::read(&dst).unwrap(), b"criu image bytes");

        a.write_all(&(MAX_FRAME + 1).to_be_bytes()).await.unwrap();
        let e = recv(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn only_plain_names_are_written() {
        assert!(is_plain_name("pages-1.img"));
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }
}
