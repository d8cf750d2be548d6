//! The in-process fake criu peer, shared by the suites that drive the crate against
//! it: the other end of `UnixSeqpacket::pair()`, run as a Tokio task from a script. It
//! behaves as criu's `cr-service.c` does (one request per datagram, notifications as
//! `criu_resp` of type NOTIFY, a final answer of the request's type) and records every
//! request it received, so each test asserts both on what the API returned and on
//! what the driver put on the wire.
#![allow(dead_code)]

use std::future::Future;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::AncillaryMessageWriter;

use criu_swrk::proto::{
    CriuFeatures, CriuNotify, CriuReq, CriuReqType, CriuResp, CriuRestoreResp, CriuVersion,
    StatsEntry,
};
use criu_swrk::{Criu, Hooks, Notification, Reply, Session};

// ---------------------------------------------------------------------------------
// The fake peer
// ---------------------------------------------------------------------------------

/// Every wait in this file is bounded by this: a hang fails the test, it does not
/// stall CI.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The pid the dump requests name: neither ours nor anyone's that gets dumped (the
/// fake dumps nothing).
pub const TARGET: i32 = 999_999;

/// The pid the fake "restores".
pub const RESTORED: i32 = 4321;

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing happened within {DEADLINE:?}"))
}

/// criu's end of the socketpair.
pub struct FakePeer {
    pub sock: Option<UnixSeqpacket>,
    /// Every request the driver sent, in order.
    pub received: Vec<CriuReq>,
}

impl FakePeer {
    pub fn sock(&self) -> &UnixSeqpacket {
        self.sock
            .as_ref()
            .expect("the fake peer already closed its end")
    }

    /// The next request from the driver, `None` once the driver closed its end.
    pub async fn recv(&mut self) -> Option<CriuReq> {
        let mut buf = vec![0u8; 1 << 20];
        let res = within(
            "the fake peer waiting for the driver",
            self.sock().recv(&mut buf),
        )
        .await;
        let info = match res {
            Ok(info) => info,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("fake peer: recv: {e}"),
        };
        if info.bytes_read() == 0 {
            return None;
        }
        assert!(!info.truncated(), "a request larger than 1 MiB");
        let req = CriuReq::decode(&buf[..info.bytes_read()])
            .unwrap_or_else(|e| panic!("the driver sent an invalid criu_req: {e}"));
        self.received.push(req.clone());
        Some(req)
    }

    /// The next request, which must be of type `ty`.
    pub async fn expect(&mut self, ty: CriuReqType) -> CriuReq {
        let req = self
            .recv()
            .await
            .unwrap_or_else(|| panic!("fake peer: expected {ty:?}, the driver closed"));
        assert_eq!(req.r#type(), ty, "fake peer: unexpected request {req:?}");
        req
    }

    /// Waits until the driver closes its end, failing on any further request.
    pub async fn expect_closed(&mut self) {
        if let Some(req) = self.recv().await {
            panic!("fake peer: expected the driver to close, got {req:?}");
        }
    }

    pub async fn send(&self, resp: &CriuResp) {
        self.send_raw(&resp.encode_to_vec()).await;
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        let n = self.sock().send(bytes).await.expect("fake peer: send");
        assert_eq!(n, bytes.len(), "fake peer: short send");
    }

    /// Sends `resp` with one fd attached (SCM_RIGHTS), as criu sends
    /// `orphan-pts-master`.
    pub async fn send_with_fd(&self, resp: &CriuResp, fd: BorrowedFd<'_>) {
        let bytes = resp.encode_to_vec();
        let mut space = [0u8; 64];
        let mut anc = AncillaryMessageWriter::new(&mut space);
        anc.add_fds([fd]).expect("room for one fd");
        let n = self
            .sock()
            .send_with_ancillary(&bytes, &mut anc)
            .await
            .expect("fake peer: send with fd");
        assert_eq!(n, bytes.len(), "fake peer: short send");
    }

    /// Sends a notification and returns the driver's answer (a NOTIFY request).
    pub async fn notify(&mut self, name: &str, pid: Option<i32>) -> CriuReq {
        self.send(&notification(name, pid)).await;
        self.expect_answer().await
    }

    /// Sends hook `name` of a dump, checks the driver answers it with failure, and
    /// refuses the dump as criu does when rolling back; then waits for the close.
    pub async fn expect_rollback_at(&mut self, name: &str) {
        let answer = self.notify(name, None).await;
        assert_eq!(answer.notify_success, Some(false));
        let why = format!("{name} script failed");
        self.send(&refused(CriuReqType::Dump, 0, &why)).await;
        self.expect_closed().await;
    }

    /// Sends a notification carrying `fd` and returns the driver's answer.
    pub async fn notify_with_fd(
        &mut self,
        name: &str,
        pid: Option<i32>,
        fd: BorrowedFd<'_>,
    ) -> CriuReq {
        self.send_with_fd(&notification(name, pid), fd).await;
        self.expect_answer().await
    }

    pub async fn expect_answer(&mut self) -> CriuReq {
        let answer = self.expect(CriuReqType::Notify).await;
        assert!(
            answer.notify_success.is_some(),
            "a NOTIFY answer without notify_success: {answer:?}"
        );
        answer
    }

    /// Closes criu's end, as a criu that exits does.
    pub fn close(&mut self) {
        self.sock = None;
    }

    /// The types of the requests received, in order.
    pub fn types(&self) -> Vec<CriuReqType> {
        self.received.iter().map(CriuReq::r#type).collect()
    }

    /// The answers the driver gave to notifications, in order.
    pub fn answers(&self) -> Vec<bool> {
        self.received
            .iter()
            .filter(|r| r.r#type() == CriuReqType::Notify)
            .map(|r| r.notify_success.expect("checked on receipt"))
            .collect()
    }
}

/// A session whose peer runs `script` in a task; the task hands the peer (and its
/// record of requests) back when the script ends.
pub fn fake<F, Fut>(script: F) -> (Session, JoinHandle<FakePeer>)
where
    F: FnOnce(FakePeer) -> Fut,
    Fut: Future<Output = FakePeer> + Send + 'static,
{
    let (ours, theirs) = UnixSeqpacket::pair().expect("socketpair");
    let peer = FakePeer {
        sock: Some(theirs),
        received: Vec::new(),
    };
    (
        Session::from_fd(ours.into()).expect("a seqpacket socket"),
        tokio::spawn(script(peer)),
    )
}

/// A `Criu` whose every request runs against a fresh fake peer (through
/// [`Criu::connect_with`]), each running `script` in a task of its own; the handles of
/// those tasks, in the order the connections were made, are in the returned list.
pub fn fake_criu<F, Fut>(script: F) -> (Criu, Peers)
where
    F: Fn(FakePeer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = FakePeer> + Send + 'static,
{
    let peers = Peers::default();
    let list = peers.clone();
    let criu = Criu::connect_with(move || {
        let (ours, theirs) = UnixSeqpacket::pair()?;
        let peer = FakePeer {
            sock: Some(theirs),
            received: Vec::new(),
        };
        list.0.lock().unwrap().push(tokio::spawn(script(peer)));
        Ok(ours.into())
    });
    (criu, peers)
}

/// The fake peers a [`fake_criu`] connected to, in connection order.
#[derive(Clone, Default)]
pub struct Peers(std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<FakePeer>>>>);

impl Peers {
    /// How many connections were made so far.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Waits for every peer's script to end (re-raising a panic), in connection order.
    pub async fn finish(&self) -> Vec<FakePeer> {
        let handles = std::mem::take(&mut *self.0.lock().unwrap());
        let mut out = Vec::new();
        for h in handles {
            out.push(finish(h).await);
        }
        out
    }
}

/// Waits for the fake peer's script to end; re-raises its panic (its assertion) if it
/// had one.
pub async fn finish(peer: JoinHandle<FakePeer>) -> FakePeer {
    match within("the fake peer's script", peer).await {
        Ok(peer) => peer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("fake peer task: {e}"),
    }
}

// ----- what criu sends -----

pub fn resp(ty: CriuReqType, success: bool) -> CriuResp {
    CriuResp {
        r#type: ty as i32,
        success,
        ..Default::default()
    }
}

pub fn notification(name: &str, pid: Option<i32>) -> CriuResp {
    CriuResp {
        notify: Some(CriuNotify {
            script: Some(name.to_owned()),
            pid,
        }),
        ..resp(CriuReqType::Notify, true)
    }
}

pub fn refused(ty: CriuReqType, errno: i32, message: &str) -> CriuResp {
    CriuResp {
        cr_errno: Some(errno),
        cr_errmsg: Some(message.to_owned()),
        ..resp(ty, false)
    }
}

pub fn version_resp(major: i32, minor: i32, sublevel: i32) -> CriuResp {
    CriuResp {
        version: Some(CriuVersion {
            major_number: major,
            minor_number: minor,
            sublevel: Some(sublevel),
            extra: None,
            gitid: Some("v4.2-7-gdeadbeef".into()),
            name: Some("CRIUsalem".into()),
        }),
        ..resp(CriuReqType::Version, true)
    }
}

pub fn features_resp(mem_track: bool) -> CriuResp {
    CriuResp {
        features: Some(CriuFeatures {
            mem_track: Some(mem_track),
            lazy_pages: Some(true),
            // An older criu leaves out what it does not know.
            pidfd_store: None,
        }),
        ..resp(CriuReqType::FeatureCheck, true)
    }
}

pub fn restore_resp(pid: i32) -> CriuResp {
    CriuResp {
        restore: Some(CriuRestoreResp { pid }),
        ..resp(CriuReqType::Restore, true)
    }
}

// ----- images and work directories -----

pub fn images_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// An images directory a restore accepts.
pub fn restore_images() -> tempfile::TempDir {
    let dir = images_dir();
    std::fs::write(dir.path().join("inventory.img"), b"fake").expect("inventory.img");
    dir
}

/// The directory behind an fd number of the driver's, found as criu finds it: through
/// `/proc/<peer pid>/fd/<n>` (the peer is this process).
pub fn dir_of_fd(fd: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap_or_else(|e| panic!("fd {fd} named in the request is not open: {e}"))
}

pub fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).expect("canonicalize")
}

/// Writes a stats image (`stats-dump` / `stats-restore`) as criu does.
pub fn write_stats(dir: &Path, file: &str, entry: &StatsEntry) {
    let mut img = Vec::new();
    img.extend_from_slice(&0x5510_5940u32.to_ne_bytes());
    img.extend_from_slice(&0x5709_3306u32.to_ne_bytes());
    let body = entry.encode_to_vec();
    img.extend_from_slice(&(body.len() as u32).to_ne_bytes());
    img.extend_from_slice(&body);
    std::fs::write(dir.join(file), img).expect("writing stats");
}

// ----- hooks -----

/// The name of a notification's variant, to check the mapping from hook names.
pub fn variant(n: &Notification) -> &'static str {
    match n {
        Notification::PreStream => "PreStream",
        Notification::PreDump => "PreDump",
        Notification::PostDump => "PostDump",
        Notification::PreRestore => "PreRestore",
        Notification::PostRestore { .. } => "PostRestore",
        Notification::NetworkLock => "NetworkLock",
        Notification::NetworkUnlock => "NetworkUnlock",
        Notification::SetupNamespaces { .. } => "SetupNamespaces",
        Notification::PostSetupNamespaces => "PostSetupNamespaces",
        Notification::PreResume => "PreResume",
        Notification::PostResume => "PostResume",
        Notification::OrphanPtsMaster { .. } => "OrphanPtsMaster",
        Notification::StatusReady => "StatusReady",
        Notification::QueryExtFiles => "QueryExtFiles",
        Notification::Other { .. } => "Other",
        _ => "a variant this test does not know",
    }
}

/// One notification as a hook saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub name: String,
    pub variant: &'static str,
    pub pid: Option<i32>,
    pub had_fd: bool,
}

/// Hooks that record what they see, keep the fds they get, answer `query-ext-files`
/// with `externals` and everything else with ok.
#[derive(Default)]
pub struct Recorder {
    pub seen: Vec<Seen>,
    pub fds: Vec<OwnedFd>,
    pub externals: Vec<String>,
}

impl Hooks for Recorder {
    async fn on_notify(&mut self, n: Notification) -> Reply {
        let variant = variant(&n);
        let name = n.name().to_owned();
        let pid = n.pid();
        let fd = match n {
            Notification::OrphanPtsMaster { master } => Some(master),
            Notification::Other { fd, .. } => fd,
            _ => None,
        };
        self.seen.push(Seen {
            name: name.clone(),
            variant,
            pid,
            had_fd: fd.is_some(),
        });
        self.fds.extend(fd);
        if name == "query-ext-files" {
            Reply::externals(self.externals.clone())
        } else {
            Reply::ok()
        }
    }
}

/// A hook that signals when it starts and then never finishes.
pub fn stuck_hook(started: oneshot::Sender<String>) -> impl Hooks {
    let mut started = Some(started);
    move |n: Notification| {
        if let Some(tx) = started.take() {
            let _ = tx.send(n.name().to_owned());
        }
        std::future::pending::<Reply>()
    }
}
