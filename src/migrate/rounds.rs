//! Pre-copy into a destination: rounds of pre-dumps while the tree runs, each into
//! a page server the destination starts for it (`ID/<n>`, its parent `../<n - 1>`),
//! until [`PreCopyPolicy`] says stop; then the final dump into `ID`, its parent the
//! last round. Also the destination's page servers, which stop-and-copy shares.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::precopy::{PreCopyPolicy, PreCopyReport, RoundOptions, pre_copy_with};
use super::wire::{self, Msg};
use super::{Link, Security};
use crate::criu::Criu;
use crate::error::{Error, Result, Side, chain};
use crate::options::{PageServerOptions, PreDumpOptions};
use crate::session::{PreDumpLoop, Session};

type Failure = (Side, String);

fn link_err(e: std::io::Error) -> Failure {
    (Side::Link, format!("the control connection: {e}"))
}

/// A page server of the destination's, criu's child, and the session that waits
/// for it.
pub(super) struct PageServer {
    pub(super) session: Session,
    pub(super) pid: i32,
    pub(super) port: u16,
}

/// Starts a page server into `dir` on `local`, with criu's TLS from `security` and
/// `parent` (relative to `dir`) as its parent images.
pub(super) async fn page_server(
    criu: &Criu,
    dir: &Path,
    local: IpAddr,
    security: &Security,
    parent: Option<&str>,
) -> std::result::Result<PageServer, Failure> {
    let mut opts = PageServerOptions::new()
        .images_dir(dir)
        .address(local.to_string())
        .port(0);
    if let Some(parent) = parent {
        opts = opts.parent_images(parent);
    }
    if let Security::Tls(f) = security {
        // criu checks a peer's name against its own address: right for the dumping
        // side, meaningless here (the client's certificate is still checked against
        // the CA).
        opts = opts
            .tls(true)
            .tls_no_cn_verify(true)
            .tls_cacert(f.ca.display().to_string())
            .tls_cert(f.cert.display().to_string())
            .tls_key(f.key.display().to_string());
    }
    let mut session = criu
        .session()
        .map_err(|e| (Side::Destination, e.to_string()))?;
    let ps = session
        .page_server_child(opts)
        .await
        .map_err(|e| (Side::Destination, format!("page server: {}", chain(&e))))?;
    let pid = ps
        .pid
        .ok_or((Side::Destination, "page server without a pid".to_owned()))?;
    Ok(PageServer {
        session,
        pid,
        port: ps.port,
    })
}

/// Waits up to `within` for a page server whose client is done, and says how it
/// ended.
pub(super) async fn page_server_end(
    ps: PageServer,
    within: Duration,
) -> std::result::Result<(), Failure> {
    let status = tokio::time::timeout(within, ps.session.wait_pid(ps.pid))
        .await
        .map_err(|_| {
            (
                Side::Destination,
                "the page server did not finish".to_owned(),
            )
        })?
        .map_err(|e| (Side::Destination, format!("page server: {}", chain(&e))))?;
    if !status.success() {
        return Err((
            Side::Destination,
            format!("the page server failed ({status})"),
        ));
    }
    Ok(())
}

/// The destination's side of the rounds: a page server per `Round` until `Final`,
/// whose parent (relative to `dir`) is returned.
pub(super) async fn receive(
    criu: &Criu,
    link: &mut Box<dyn Link>,
    dir: &Path,
    local: IpAddr,
    security: &Security,
    round_end: Duration,
) -> std::result::Result<String, Failure> {
    wire::send(
        link,
        &Msg::Ready {
            page_server_port: 0,
        },
    )
    .await
    .map_err(link_err)?;
    let mut last = 0;
    loop {
        match wire::recv(link).await.map_err(link_err)? {
            Msg::Round { round } if round == last + 1 => {
                let round_dir = dir.join(round.to_string());
                std::fs::create_dir(&round_dir).map_err(|e| {
                    (
                        Side::Destination,
                        format!("cannot make {}: {e}", round_dir.display()),
                    )
                })?;
                let parent = (round > 1).then(|| format!("../{}", round - 1));
                let ps = page_server(criu, &round_dir, local, security, parent.as_deref()).await?;
                wire::send(
                    link,
                    &Msg::Ready {
                        page_server_port: ps.port,
                    },
                )
                .await
                .map_err(link_err)?;
                match wire::recv(link).await.map_err(link_err)? {
                    Msg::RoundDone { round: r } if r == round => {}
                    Msg::Abort { reason } => return Err((Side::Source, reason)),
                    other => {
                        return Err((
                            Side::Source,
                            format!("expected round {round} done, got {other:?}"),
                        ));
                    }
                }
                page_server_end(ps, round_end).await?;
                wire::send(link, &Msg::RoundIn { round })
                    .await
                    .map_err(link_err)?;
                last = round;
            }
            Msg::Final { parent_round } if parent_round == last && last > 0 => {
                return Ok(last.to_string());
            }
            Msg::Abort { reason } => return Err((Side::Source, reason)),
            other => {
                return Err((
                    Side::Source,
                    format!("expected pre-copy round {}, got {other:?}", last + 1),
                ));
            }
        }
    }
}

/// The source's side: the rounds, each into the page server the destination
/// starts for it, then `Final`. Returns the loop for the final dump, what the
/// rounds wrote, the final dump's page-server port and its parent (relative to
/// `images`, where the rounds' own files went, mirroring the destination).
#[allow(clippy::too_many_arguments)]
pub(super) async fn send(
    criu: &Criu,
    link: &mut Box<dyn Link>,
    policy: &PreCopyPolicy,
    pid: i32,
    host: IpAddr,
    images: &Path,
    security: &Security,
    deadline: Instant,
) -> Result<(PreDumpLoop, PreCopyReport, u16, String)> {
    let mut to = IntoDestination {
        link: &mut *link,
        pid,
        host,
        images,
        security,
        deadline,
    };
    let (lp, report) = pre_copy_with(criu, policy, &mut to).await?;
    let last = report.last_round();
    round_in(link, last, deadline).await.map_err(failed)?;
    wire::send(link, &Msg::Final { parent_round: last })
        .await
        .map_err(|e| failed(link_err(e)))?;
    let port = ready(link, deadline).await.map_err(failed)?;
    Ok((lp, report, port, last.to_string()))
}

fn failed((side, reason): Failure) -> Error {
    super::dest::failed(side, reason)
}

/// Each round's options: the previous round reported in, a page server asked for.
struct IntoDestination<'a> {
    link: &'a mut Box<dyn Link>,
    pid: i32,
    host: IpAddr,
    images: &'a Path,
    security: &'a Security,
    deadline: Instant,
}

impl RoundOptions for IntoDestination<'_> {
    async fn options(&mut self, round: u32, parent: Option<&str>) -> Result<PreDumpOptions> {
        if round > 1 {
            round_in(self.link, round - 1, self.deadline)
                .await
                .map_err(failed)?;
        }
        wire::send(self.link, &Msg::Round { round })
            .await
            .map_err(|e| failed(link_err(e)))?;
        let port = ready(self.link, self.deadline).await.map_err(failed)?;
        let dir = self.images.join(round.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("making a pre-copy round's directory", e))?;
        let mut opts = PreDumpOptions::new(self.pid)
            .images_dir(&dir)
            .page_server(self.host.to_string(), port);
        if let Security::Tls(f) = self.security {
            opts = opts
                .tls(true)
                .tls_cacert(f.ca.display().to_string())
                .tls_cert(f.cert.display().to_string())
                .tls_key(f.key.display().to_string());
        }
        tracing::info!(round, ?parent, port, "pre-copy round");
        Ok(opts)
    }
}

/// The destination's `Ready` with a page server's port.
async fn ready(link: &mut Box<dyn Link>, deadline: Instant) -> std::result::Result<u16, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, wire::recv(link)).await {
        Err(_) => Err((
            Side::Destination,
            "no page server within the deadline".into(),
        )),
        Ok(Err(e)) => Err(link_err(e)),
        Ok(Ok(Msg::Ready { page_server_port })) => Ok(page_server_port),
        Ok(Ok(Msg::Failed { reason })) => Err((Side::Destination, reason)),
        Ok(Ok(other)) => Err((Side::Destination, format!("expected ready, got {other:?}"))),
    }
}

/// Says round `round` is over; waits until the destination has all its pages.
async fn round_in(
    link: &mut Box<dyn Link>,
    round: u32,
    deadline: Instant,
) -> std::result::Result<(), Failure> {
    wire::send(link, &Msg::RoundDone { round })
        .await
        .map_err(link_err)?;
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, wire::recv(link)).await {
        Err(_) => Err((Side::Destination, format!("round {round} never came in"))),
        Ok(Err(e)) => Err(link_err(e)),
        Ok(Ok(Msg::RoundIn { round: r })) if r == round => Ok(()),
        Ok(Ok(Msg::Failed { reason })) => Err((Side::Destination, reason)),
        Ok(Ok(other)) => Err((
            Side::Destination,
            format!("expected round {round} in, got {other:?}"),
        )),
    }
}
