//! Post-copy's page traffic, carried inside the control connection: the
//! destination's lazy-pages daemon talks to a listener of ours on its loopback, the
//! source's criu serves pages on its own loopback, and each side relays between
//! that local socket and the control connection's [`Msg::Data`] frames.
//!
//! Relaying, rather than letting the daemon reach the source's criu directly, is
//! what keeps the tree safe. criu's lazy dump takes a plain end of file from its
//! client as success and kills the source tree, even when the daemon failed and the
//! restored copy is lost; only a broken connection makes it resume the tree. So:
//!
//! - the destination withholds the daemon's closing request until the daemon has
//!   exited well, answering it itself, and reports [`Msg::Done`] or [`Msg::Failed`];
//! - the source passes the close on to criu only after `Done`, and on anything else
//!   resets its connection to criu, which then resumes the tree.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Mutex, Notify};

use super::Link;
use super::progress::Progress;
use super::wire::{self, Msg};
use crate::error::Side;
use crate::lazy::LazyPages;
use crate::process::Held;

/// criu's page-server requests are this struct: `u32 cmd; u64 nr_pages; u64 vaddr;
/// u64 dst_id` with natural alignment (criu/page-xfer.c).
const REQUEST: usize = 32;
/// The requests that end a page-server session (`PS_IOV_CLOSE`,
/// `PS_IOV_FORCE_CLOSE`); criu answers them with a 4-byte status.
const CLOSE: [u32; 2] = [0x1023, 0x1024];
/// How much of criu's page stream goes into one frame.
const CHUNK: usize = 256 * 1024;
/// How long page traffic may stop before the link counts as dead: a cut link sends
/// no reset, and a whole migration's deadline is sized for its largest trees.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long criu's lazy page server may take to listen after `post-dump`.
const LISTEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
/// How often served pages are reported.
const REPORT_EVERY: u64 = 8 << 20;

type Failure = (Side, String);

fn link_err(e: std::io::Error) -> Failure {
    (Side::Link, format!("the control connection: {e}"))
}

/// A read of the control connection, failed once nothing came for [`IDLE`].
async fn idle<T>(read: impl Future<Output = std::io::Result<T>>) -> Result<T, Failure> {
    match tokio::time::timeout(IDLE, read).await {
        Ok(r) => r.map_err(link_err),
        Err(_) => Err((
            Side::Link,
            format!("no page traffic for {}s: the link is gone", IDLE.as_secs()),
        )),
    }
}

/// The destination's half: restores the tree (`restore`, whose memory comes through
/// here) while relaying between the lazy-pages daemon, which connects to `relay`,
/// and the source; says [`Msg::Running`] once the tree runs, and [`Msg::Done`] once
/// the daemon has delivered every page and exited well (the source's [`Msg::End`]
/// was then read). `running` is set while the tree runs with part of its memory.
///
/// # Errors
/// The side that failed and why: the restore failed, the daemon hung up or exited
/// with a failure (nothing was said to the source yet), or the control connection
/// broke.
pub(crate) async fn destination<R>(
    link: &mut Box<dyn Link>,
    relay: TcpListener,
    lazy: LazyPages,
    restore: R,
    running: &mut Option<Held>,
) -> Result<(i32, u64), Failure>
where
    R: Future<Output = Result<Held, Failure>>,
{
    let (mut from_source, to_source) = tokio::io::split(&mut **link);
    let to_source = Mutex::new(to_source);
    let mut restore = std::pin::pin!(restore);
    // The daemon connects once the restore has handed it the tree's memory; the
    // restore may end first, or fail.
    let mut restored = None;
    let mut daemon = loop {
        tokio::select! {
            accepted = relay.accept() => match accepted {
                Ok((s, _)) => break s,
                Err(e) => {
                    return Err((
                        Side::Destination,
                        format!("the lazy-pages daemon's connection: {e}"),
                    ));
                }
            },
            r = &mut restore, if restored.is_none() => restored = Some(r?),
        }
    };
    let _ = daemon.set_nodelay(true);
    let (mut from_daemon, to_daemon) = daemon.split();
    let to_daemon = Mutex::new(to_daemon);
    let mut received = 0u64;
    // Taken to wait for it; killed and reaped here otherwise (a dropped daemon is
    // reaped by a thread, which a process exiting right after would not wait for).
    let lazy = Mutex::new(Some(lazy));

    let run = async {
        let held = match restored {
            Some(held) => held,
            None => restore.await?,
        };
        let pid = held.pid();
        *running = Some(held);
        let mut w = to_source.lock().await;
        wire::send(&mut *w, &Msg::Running { pid })
            .await
            .map_err(link_err)?;
        Ok::<_, Failure>(pid)
    };
    let up = async {
        let mut req = [0u8; REQUEST];
        loop {
            if let Err(e) = from_daemon.read_exact(&mut req).await {
                return Err((
                    Side::Destination,
                    format!("the lazy-pages daemon hung up before it had every page: {e}"),
                ));
            }
            let cmd = u32::from_le_bytes(req[..4].try_into().expect("4 bytes"));
            if CLOSE.contains(&cmd) {
                // Answered here: the source hears of the end only once the daemon
                // has exited well.
                let ok = 0i32.to_le_bytes();
                let mut w = to_daemon.lock().await;
                w.write_all(&ok).await.map_err(|e| {
                    (
                        Side::Destination,
                        format!("the lazy-pages daemon's last answer: {e}"),
                    )
                })?;
                break;
            }
            let mut w = to_source.lock().await;
            wire::send_data(&mut *w, &req).await.map_err(link_err)?;
        }
        let daemon = lazy.lock().await.take().expect("taken once");
        let status = daemon.wait().await.map_err(|e| {
            (
                Side::Destination,
                format!("the lazy-pages daemon: {}", crate::error::chain(&e)),
            )
        })?;
        if !status.success() {
            return Err((
                Side::Destination,
                format!("the lazy-pages daemon failed ({status})"),
            ));
        }
        Ok(())
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match idle(wire::recv(&mut from_source)).await? {
                Msg::Data { len } => {
                    let mut left = len as usize;
                    while left > 0 {
                        let want = left.min(buf.len());
                        idle(from_source.read_exact(&mut buf[..want])).await?;
                        // A daemon gone early is the other half's to report.
                        let _ = to_daemon.lock().await.write_all(&buf[..want]).await;
                        left -= want;
                    }
                    received += u64::from(len);
                }
                Msg::End => return Ok(()),
                Msg::Abort { reason } => return Err((Side::Source, reason)),
                other => {
                    return Err((
                        Side::Source,
                        format!("expected page traffic, got {other:?}"),
                    ));
                }
            }
        }
    };
    // Done goes out once the tree runs and the daemon is through; the source then
    // ends its traffic, which `down` reads.
    let finish = async {
        let (pid, ()) = tokio::try_join!(run, up)?;
        let mut w = to_source.lock().await;
        wire::send(&mut *w, &Msg::Done).await.map_err(link_err)?;
        Ok::<_, Failure>(pid)
    };
    let result = tokio::try_join!(finish, down);
    if let Some(daemon) = lazy.into_inner() {
        daemon.kill().await;
    }
    let (pid, ()) = result?;
    Ok((pid, received))
}

/// The source's half: relays between criu's lazy page server (`criu`) and the
/// destination until the destination reports [`Msg::Done`]; then ends the session
/// with criu as a finished one. On any failure the connection to criu is reset, so
/// that criu resumes the tree.
///
/// Returns the restored pid, when the destination said it runs, and the bytes criu
/// served.
///
/// # Errors
/// The side that failed and why.
pub(crate) async fn source(
    link: &mut Box<dyn Link>,
    mut criu: TcpStream,
    deadline: Instant,
    progress: Option<&UnboundedSender<Progress>>,
) -> Result<(i32, Instant, u64), Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    let relayed = tokio::time::timeout(left, relay(link, &mut criu, progress)).await;
    let result = match relayed {
        Ok(Ok((Some((pid, at)), bytes))) => close(&mut criu).await.map(|()| (pid, at, bytes)),
        Ok(Ok((None, _))) => Err((
            Side::Destination,
            "every page was delivered, but the tree never said it ran".into(),
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err((
            Side::Destination,
            "the pages were not all delivered within the deadline".into(),
        )),
    };
    if result.is_err() {
        reset(criu);
    }
    result
}

/// Drops the connection to criu with a reset, not an end of file: criu takes only
/// this as a failed transfer, and resumes the tree.
pub(crate) fn reset(criu: TcpStream) {
    let zero = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // A zero linger does not block: the close sends the reset at once.
    let _ = nix::sys::socket::setsockopt(&criu, nix::sys::socket::sockopt::Linger, &zero);
    drop(criu);
}

/// Post-copy refused at post-dump: criu serves its pages anyway, to whoever comes;
/// end that session at once so that criu finishes and resumes the tree.
pub(crate) async fn release(port: u16, deadline: Instant) -> Result<(), Failure> {
    let mut criu = reach_criu(port, deadline).await?;
    close(&mut criu).await
}

/// Relays until the destination's `Done`: when the tree ran there (its pid) and the
/// bytes criu served.
async fn relay(
    link: &mut Box<dyn Link>,
    criu: &mut TcpStream,
    progress: Option<&UnboundedSender<Progress>>,
) -> Result<(Option<(i32, Instant)>, u64), Failure> {
    let (mut from_dest, mut to_dest) = tokio::io::split(&mut **link);
    let (mut from_criu, mut to_criu) = criu.split();
    let stop = Notify::new();
    let mut served = 0u64;
    let mut running = None;
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                n = from_criu.read(&mut buf) => n.map_err(|e| {
                    (Side::Source, format!("criu's page server: {e}"))
                })?,
                () = stop.notified() => break,
            };
            if n == 0 {
                return Err((
                    Side::Source,
                    "criu's page server ended before the destination had every page".into(),
                ));
            }
            wire::send_data(&mut to_dest, &buf[..n])
                .await
                .map_err(link_err)?;
            if let Some(tx) = progress
                && served / REPORT_EVERY != (served + n as u64) / REPORT_EVERY
            {
                let _ = tx.send(Progress::Pages {
                    bytes: served + n as u64,
                });
            }
            served += n as u64;
        }
        wire::send(&mut to_dest, &Msg::End).await.map_err(link_err)
    };
    let down = async {
        let mut buf = [0u8; REQUEST * 64];
        loop {
            match idle(wire::recv(&mut from_dest)).await? {
                Msg::Data { len } => {
                    let mut left = len as usize;
                    while left > 0 {
                        let want = left.min(buf.len());
                        idle(from_dest.read_exact(&mut buf[..want])).await?;
                        to_criu
                            .write_all(&buf[..want])
                            .await
                            .map_err(|e| (Side::Source, format!("criu's page server: {e}")))?;
                        left -= want;
                    }
                }
                Msg::Running { pid } => {
                    tracing::info!(pid, "the tree runs on the destination; its pages follow");
                    if let Some(tx) = progress {
                        let _ = tx.send(Progress::Running { pid });
                    }
                    running = Some((pid, Instant::now()));
                }
                Msg::Done => {
                    stop.notify_one();
                    return Ok(());
                }
                Msg::Failed { reason } => {
                    stop.notify_one();
                    return Err((Side::Destination, reason));
                }
                other => {
                    return Err((
                        Side::Destination,
                        format!("expected page traffic, got {other:?}"),
                    ));
                }
            }
        }
    };
    tokio::try_join!(up, down)?;
    Ok((running, served))
}

/// Ends criu's page-server session as a finished one: the close request, its status,
/// then our end of file (criu waits for it).
async fn close(criu: &mut TcpStream) -> Result<(), Failure> {
    let fail = |e: std::io::Error| (Side::Source, format!("ending criu's page server: {e}"));
    let mut req = [0u8; REQUEST];
    req[..4].copy_from_slice(&CLOSE[0].to_le_bytes());
    criu.write_all(&req).await.map_err(fail)?;
    let mut status = [0u8; 4];
    criu.read_exact(&mut status).await.map_err(fail)?;
    criu.shutdown().await.map_err(fail)?;
    Ok(())
}

/// Reaches criu's lazy page server on loopback `port`, which listens once `post-dump`
/// was answered (within milliseconds; a criu that failed to listen, its port taken
/// meanwhile, say, is given up on after [`LISTEN_WITHIN`]).
pub(crate) async fn reach_criu(port: u16, deadline: Instant) -> Result<TcpStream, Failure> {
    let deadline = deadline.min(Instant::now() + LISTEN_WITHIN);
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => {
                tracing::debug!(port, "reached criu's lazy page server");
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err((
                    Side::Source,
                    format!("criu's lazy page server on port {port} never listened: {e}"),
                ));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// What a post-copy's post-dump hook leaves to the page relay.
pub(super) enum Handed {
    /// Answered with success (the destination has the files): the link.
    Go(Box<dyn Link>),
    /// Answered with failure.
    Refused,
}

/// Post-copy after post-dump: reach criu's page server and relay the pages while
/// the destination restores. The restored pid, when the tree ran there and the
/// bytes served.
pub(super) async fn serve_lazily(
    link: &mut Box<dyn Link>,
    port: u16,
    deadline: Instant,
    progress: Option<&UnboundedSender<Progress>>,
) -> std::result::Result<(i32, Instant, u64), (Side, String)> {
    let criu = match reach_criu(port, deadline).await {
        Ok(s) => s,
        Err(f) => {
            let _ = wire::send_last(
                link,
                &Msg::Abort {
                    reason: f.1.clone(),
                },
            )
            .await;
            return Err(f);
        }
    };
    if let Err(e) = wire::send(link, &Msg::Serving).await {
        reset(criu);
        return Err((Side::Link, format!("the control connection: {e}")));
    }
    source(link, criu, deadline, progress).await
}

/// A port for criu's lazy page server, free now. criu takes only the port for a
/// lazy dump and listens on every address (cr-service.c ignores the address), so
/// the port is checked free on all of them, and picked below the kernel's
/// ephemeral range, where no listener of ours (nor a peer's connection) lands by
/// chance between this check and criu's bind.
pub(super) fn free_lazy_port() -> crate::Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    let mut x = seed | 1;
    for _ in 0..64 {
        // xorshift32: spread over 20000..32768.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = 20_000 + (x % 12_768) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(crate::Error::io(
        "finding a free port for criu's lazy page server",
        std::io::Error::from(std::io::ErrorKind::AddrInUse),
    ))
}
