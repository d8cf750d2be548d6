//! `--console-socket`: a restored terminal container's new console master, sent to a
//! unix socket as runc sends it (one fd in an SCM_RIGHTS message).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use criu_swrk::{Hooks, Notification, Reply};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// Hooks that forward the `orphan-pts-master` fd to a socket, when one is given, and
/// agree to everything.
#[derive(Debug)]
pub struct Forward {
    socket: Option<PathBuf>,
}

impl Forward {
    pub fn to(socket: Option<PathBuf>) -> Self {
        Forward { socket }
    }
}

impl Hooks for Forward {
    async fn on_notify(&mut self, n: Notification) -> Reply {
        match (n, &self.socket) {
            (Notification::OrphanPtsMaster { master }, Some(path)) => match send(path, &master) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::fail(format!("sending the console to {}: {e}", path.display())),
            },
            (Notification::OrphanPtsMaster { .. }, None) => Reply::fail(
                "the container has a terminal: give --console-socket PATH to receive its \
                 console (without one it would be hung up)",
            ),
            _ => Reply::ok(),
        }
    }
}

fn send(path: &PathBuf, master: &OwnedFd) -> std::io::Result<()> {
    let stream = UnixStream::connect(path)?;
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(b"console")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}
