//! The destination: accepts a migration, receives the tree, restores it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use super::restore::{Restore, Restored, restore_holding};
use super::wire::{self, Msg};
use super::{DEFAULT_DEADLINE, Link, Security, insecure_allowed};
use super::{rounds, tunnel};
use crate::criu::Criu;
use crate::error::{Error, RequestState, Result, Side, chain};
use crate::lazy::LazyPagesOptions;
use crate::options::{CpuinfoOptions, RestoreOptions};

/// The largest image file accepted over the control connection (pages go to the
/// page server, not here).
const MAX_FILE: u64 = 1 << 30;
/// How long the page server gets to finish once the source's files are in (its
/// client disconnected before sending them).
const PAGE_SERVER_END: Duration = Duration::from_secs(30);

/// The destination agent: receives migrations into `images_root/ID` and restores
/// them.
///
/// # Example
/// ```no_run
/// use criu_swrk::Criu;
/// use criu_swrk::migrate::{Destination, Security};
///
/// # async fn run(security: Security) -> criu_swrk::Result<()> {
/// let listener = tokio::net::TcpListener::bind("10.0.0.2:7070").await.unwrap();
/// let dest = Destination::new(Criu::new(), "/var/lib/criu-swrk/incoming", security);
/// loop {
///     match dest.accept(&listener).await {
///         Ok(a) => println!("{} arrived as pid {}", a.id, a.pid),
///         Err(e) => eprintln!("a migration failed: {e}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a destination does nothing until it accepts"]
pub struct Destination {
    criu: Criu,
    images_root: PathBuf,
    security: Security,
    deadline: Duration,
}

/// A tree that arrived.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Arrival {
    /// The migration's name (its directory under the images root).
    pub id: String,
    /// The restored root's pid here.
    pub pid: i32,
    /// Where its images are.
    pub images_dir: PathBuf,
    /// The source said its tree is gone (its dump committed). `false` when the
    /// connection ended first: the tree runs here, and the source may still hold
    /// its own (check there).
    pub confirmed: bool,
    /// Bytes of image files received on the control connection (pages came to the
    /// page server).
    pub file_bytes: u64,
}

impl Destination {
    /// A destination restoring with `criu` into `images_root`, which must exist.
    pub fn new(criu: Criu, images_root: impl Into<PathBuf>, security: Security) -> Self {
        Destination {
            criu,
            images_root: images_root.into(),
            security,
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// How long one migration may take here, from the connection to the restored
    /// tree and the source's last word (default [`DEFAULT_DEADLINE`]). Past it before
    /// the restore, the migration is abandoned: what arrived is removed and the
    /// source, told nothing more, resumes its tree. Past it after the restore, the
    /// tree stays and is reported with [`Arrival::confirmed`] false: the source may
    /// have let its own go.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Accepts one migration on `listener` and carries it through.
    ///
    /// # Errors
    /// [`Error::Migration`] naming the side that failed: a peer without a valid
    /// certificate (refused before anything is written), a plan this side cannot
    /// take, an image file that does not match its checksum, a restore criu
    /// refuses, a source that goes silent past the deadline. Whatever arrived for a
    /// failed migration is removed. [`Error::Io`] when accepting fails.
    ///
    /// # Cancel safety
    /// Dropping the future drops the connection: the source resumes its tree. A
    /// tree already restored here is left running (the source may have committed).
    pub async fn accept(&self, listener: &TcpListener) -> Result<Arrival> {
        let (tcp, _) = listener
            .accept()
            .await
            .map_err(|e| Error::io("accepting a migration", e))?;
        self.serve_connection(tcp).await
    }

    /// Carries one migration through on a connection already accepted: what
    /// [`accept`](Self::accept) does once it has one. Several may run at once (one
    /// task per connection), each into its own `images_root/ID`.
    ///
    /// # Example
    /// ```no_run
    /// use criu_swrk::Criu;
    /// use criu_swrk::migrate::{Destination, Security};
    ///
    /// # async fn run(security: Security) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("10.0.0.2:7070").await?;
    /// let dest = Destination::new(Criu::new(), "/var/lib/criu-swrk/incoming", security);
    /// loop {
    ///     let (tcp, _) = listener.accept().await?;
    ///     let dest = dest.clone();
    ///     tokio::spawn(async move { dest.serve_connection(tcp).await });
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`accept`](Self::accept), but for the accepting.
    ///
    /// # Cancel safety
    /// As [`accept`](Self::accept).
    pub async fn serve_connection(&self, tcp: TcpStream) -> Result<Arrival> {
        let peer = tcp
            .peer_addr()
            .map_err(|e| Error::io("the migration connection's peer", e))?;
        let local = tcp
            .local_addr()
            .map_err(|e| Error::io("the migration connection's address", e))?
            .ip();
        tracing::info!(%peer, "migration connection");
        // Post-copy's page requests ride this connection and wait on each other.
        let _ = tcp.set_nodelay(true);
        let started = Instant::now();
        let link: Box<dyn Link> = match &self.security {
            Security::Insecure if insecure_allowed(local) && insecure_allowed(peer.ip()) => {
                Box::new(tcp)
            }
            Security::Insecure => {
                return Err(failed(
                    Side::Destination,
                    format!("plain TCP is refused on {local} (loopback and RFC 5737 only)"),
                ));
            }
            Security::Tls(files) => {
                let acceptor = files.server()?;
                match tokio::time::timeout(self.deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(e)) => {
                        return Err(failed(Side::Link, format!("TLS with {peer} failed: {e}")));
                    }
                    Err(_) => {
                        return Err(failed(Side::Link, format!("TLS with {peer}: no handshake")));
                    }
                }
            }
        };
        let left = self.deadline.saturating_sub(started.elapsed());
        let mut progress = Progress::default();
        let run = self.arrive(link, local, &mut progress);
        match tokio::time::timeout(left, run).await {
            Ok(result) => result,
            // Restored, but the source's word never came: the tree runs here, and
            // whether the source still holds its own is unknown. Said as it is.
            Err(_) if progress.restored.is_some() => {
                let arrival = progress.restored.take().expect("checked");
                tracing::warn!(
                    pid = arrival.pid,
                    "no word from the source within the deadline"
                );
                Ok(arrival)
            }
            Err(_) => {
                // A tree still waiting for pages cannot run on: the source resumes.
                if let Some(held) = progress.running.take() {
                    held.kill_tree();
                }
                if let Some(dir) = progress.made.take() {
                    remove(&dir);
                }
                Err(failed(
                    Side::Source,
                    format!("no migration within the deadline ({:?})", self.deadline),
                ))
            }
        }
    }

    /// The migration after the handshake; `progress` records how far it got, for the
    /// caller's deadline.
    async fn arrive(
        &self,
        mut link: Box<dyn Link>,
        local: IpAddr,
        progress: &mut Progress,
    ) -> Result<Arrival> {
        let lost = |e: std::io::Error| failed(Side::Link, format!("the control connection: {e}"));
        let hello = wire::recv(&mut link).await.map_err(lost)?;
        let Msg::Hello {
            protocol,
            id,
            criu,
            tcp_established,
            shell_job,
            file_locks,
            ext_unix_sk,
            lazy,
            memory_bytes,
            pre_copy,
            bundle,
        } = hello
        else {
            return Err(failed(
                Side::Source,
                format!("expected hello, got {hello:?}"),
            ));
        };
        if protocol != wire::PROTOCOL {
            // Another protocol's frames cannot be read on.
            return refuse(
                &mut link,
                format!("protocol {protocol}, this side speaks {}", wire::PROTOCOL),
            )
            .await;
        }
        let cpuinfo = self.read_cpuinfo(&mut link).await;
        if !wire::is_plain_name(&id) || id.starts_with('.') {
            return refuse(
                &mut link,
                format!("migration name {id:?} is not a plain directory name"),
            )
            .await;
        }
        let ours = match self.criu.version().await {
            Ok(v) => v,
            Err(e) => return refuse(&mut link, format!("criu here: {e}")).await,
        };
        if !criu_at_least(&ours, &criu) {
            return refuse(
                &mut link,
                format!("criu {ours} here is older than the source's {criu}"),
            )
            .await;
        }
        let checked = match &cpuinfo {
            Ok(scratch) => self.check_cpu(scratch).await,
            Err(why) => Err(why.clone()),
        };
        drop(cpuinfo);
        if let Err(why) = checked {
            return refuse(&mut link, why).await;
        }
        // Stop-and-copy writes the tree's memory here; post-copy maps it straight in.
        if !lazy
            && let Some(free) = free_bytes(&self.images_root)
            && free < memory_bytes
        {
            return refuse(
                &mut link,
                format!(
                    "{} has {} MiB free, the tree needs about {} MiB",
                    self.images_root.display(),
                    free >> 20,
                    memory_bytes.div_ceil(1 << 20)
                ),
            )
            .await;
        }
        let dir = self.images_root.join(&id);
        if let Err(e) = std::fs::create_dir(&dir) {
            return refuse(&mut link, format!("cannot make {}: {e}", dir.display())).await;
        }
        progress.made = Some(dir.clone());
        let restore = RestoreOptions::new()
            .images_dir(&dir)
            .tcp_established(tcp_established)
            .shell_job(shell_job)
            .file_locks(file_locks)
            .ext_unix_sk(ext_unix_sk);
        let restore = Restore {
            plain: restore,
            bundle,
        };
        let result = if lazy {
            self.receive_lazy(&mut link, &dir, restore, progress).await
        } else {
            self.receive(&mut link, local, &dir, restore, pre_copy)
                .await
        };
        let result = result.map(|(held, bytes)| (held.pid(), Some(held), bytes));
        match result {
            Ok((pid, held, file_bytes)) => {
                progress.made = None;
                progress.restored = Some(Arrival {
                    id: id.clone(),
                    pid,
                    images_dir: dir.clone(),
                    confirmed: false,
                    file_bytes,
                });
                // The source's last word: its tree is gone (commit), or it kept it.
                let confirmed = match wire::recv(&mut link).await {
                    Ok(Msg::Commit) => true,
                    Ok(Msg::Abort { reason }) => {
                        tracing::warn!(pid, %reason, "the source kept its tree: killing the copy");
                        progress.restored = None;
                        if let Some(held) = held {
                            held.kill_tree();
                        }
                        remove(&dir);
                        return Err(failed(
                            Side::Source,
                            format!("the source aborted after the restore: {reason}"),
                        ));
                    }
                    Ok(other) => {
                        tracing::warn!(?other, "no commit from the source");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the source went before confirming");
                        false
                    }
                };
                Ok(Arrival {
                    id,
                    pid,
                    images_dir: dir,
                    confirmed,
                    file_bytes,
                })
            }
            Err((side, why)) => {
                let _ = wire::send_last(
                    &mut link,
                    &Msg::Failed {
                        reason: why.clone(),
                    },
                )
                .await;
                remove(&dir);
                progress.made = None;
                Err(failed(side, why))
            }
        }
    }

    /// The source's `cpuinfo dump`, sent right after its hello: read whatever comes
    /// next (so that a refusal is read, not reset), into a scratch directory.
    async fn read_cpuinfo(
        &self,
        link: &mut Box<dyn Link>,
    ) -> std::result::Result<tempfile::TempDir, String> {
        let scratch = tempfile::Builder::new()
            .prefix(".cpuinfo.")
            .tempdir_in(&self.images_root)
            .map_err(|e| {
                format!(
                    "cannot check the CPU in {}: {e}",
                    self.images_root.display()
                )
            })?;
        match wire::recv(link).await {
            Ok(Msg::File { name, size, sha256 }) if name == "cpuinfo.img" && size <= 1 << 20 => {
                let got = wire::recv_file(link, size, &scratch.path().join(&name))
                    .await
                    .map_err(|e| format!("the control connection: {e}"))?;
                if got != sha256 {
                    return Err("the source's cpuinfo.img does not match its checksum".into());
                }
            }
            Ok(other) => return Err(format!("expected the source's cpuinfo.img, got {other:?}")),
            Err(e) => return Err(format!("the control connection: {e}")),
        }
        Ok(scratch)
    }

    /// The source's CPU description checked against this CPU (criu's `cpuinfo
    /// check`), before the source freezes anything.
    async fn check_cpu(&self, scratch: &tempfile::TempDir) -> std::result::Result<(), String> {
        self.criu
            .cpuinfo_check(CpuinfoOptions::new().images_dir(scratch.path()))
            .await
            .map_err(|e| format!("this CPU cannot run the source's tree: {}", chain(&e)))
    }

    /// Page server (after pre-copy's rounds, with `pre_copy`), files, restore: the
    /// restored root and the bytes received, or the side that failed and why.
    async fn receive(
        &self,
        link: &mut Box<dyn Link>,
        local: IpAddr,
        dir: &Path,
        restore: Restore,
        pre_copy: bool,
    ) -> std::result::Result<(Restored, u64), (Side, String)> {
        let link_err = |e: std::io::Error| (Side::Link, format!("the control connection: {e}"));
        let parent = if pre_copy {
            let r = rounds::receive(
                &self.criu,
                link,
                dir,
                local,
                &self.security,
                PAGE_SERVER_END,
            );
            Some(r.await?)
        } else {
            None
        };
        let ps =
            rounds::page_server(&self.criu, dir, local, &self.security, parent.as_deref()).await?;
        wire::send(
            link,
            &Msg::Ready {
                page_server_port: ps.port,
            },
        )
        .await
        .map_err(link_err)?;
        let files = receive_files(link, dir).await;
        // The dump disconnected from the page server before its post-dump hook: the
        // pages are all here once the server has exited.
        // Waited for whatever the files' fate: criu's child, it would otherwise
        // outlive criu as nobody's.
        let waited = rounds::page_server_end(ps, PAGE_SERVER_END).await;
        let file_bytes = files?;
        waited?;
        let restored = restore_holding(&self.criu, restore.options(dir)?).await?;
        wire::send(
            link,
            &Msg::Restored {
                pid: restored.pid(),
            },
        )
        .await
        .map_err(link_err)?;
        Ok((restored, file_bytes))
    }
}

impl Destination {
    /// Post-copy: files (checked, then said so: the source lets criu serve its
    /// pages), a lazy-pages daemon reaching the source through the control
    /// connection, the restore, and the pages until the last.
    async fn receive_lazy(
        &self,
        link: &mut Box<dyn Link>,
        dir: &Path,
        restore: Restore,
        progress: &mut Progress,
    ) -> std::result::Result<(Restored, u64), (Side, String)> {
        let here = |why: String| (Side::Destination, why);
        wire::send(
            link,
            &Msg::Ready {
                page_server_port: 0,
            },
        )
        .await
        .map_err(link_err)?;
        let file_bytes = receive_files(link, dir).await?;
        // The daemon's page server is us, on loopback; the traffic goes on inside
        // the control connection (see tunnel.rs for why).
        let relay = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| here(format!("a loopback listener for the pages: {e}")))?;
        let relay_port = relay
            .local_addr()
            .map_err(|e| here(format!("a loopback listener for the pages: {e}")))?
            .port();
        let daemon = self
            .criu
            .lazy_pages(LazyPagesOptions::new(dir).page_server("127.0.0.1", relay_port))
            .await
            .map_err(|e| here(format!("lazy-pages daemon: {}", chain(&e))))?;
        let go = async {
            wire::send(link, &Msg::Checked).await.map_err(link_err)?;
            match wire::recv(link).await.map_err(link_err)? {
                Msg::Serving => Ok(()),
                Msg::Abort { reason } => Err((Side::Source, reason)),
                other => Err((Side::Source, format!("expected serving, got {other:?}"))),
            }
        };
        if let Err(f) = go.await {
            daemon.kill().await;
            return Err(f);
        }
        tracing::debug!("the source serves its pages: restoring");
        let criu = &self.criu;
        let restore = match restore.options(dir) {
            Ok(opts) => restore_holding(criu, opts.lazy_pages(true)),
            Err(f) => {
                daemon.kill().await;
                return Err(f);
            }
        };
        let result = tunnel::destination(link, relay, daemon, restore, &mut progress.running).await;
        match result {
            Ok(_) => {
                let held = progress.running.take().expect("the tree ran");
                tracing::info!(pid = held.pid(), "every page arrived");
                Ok((held, file_bytes))
            }
            Err(f) => {
                // A tree missing pages cannot run on, and the source resumes its
                // own: only one copy may run.
                if let Some(held) = progress.running.take() {
                    held.kill_tree();
                }
                Err(f)
            }
        }
    }
}

fn link_err(e: std::io::Error) -> (Side, String) {
    (Side::Link, format!("the control connection: {e}"))
}

/// Bytes an unprivileged writer may still put under `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The source's image files until its `Restore`: the bytes received, or the side
/// that failed and why.
async fn receive_files(
    link: &mut Box<dyn Link>,
    dir: &Path,
) -> std::result::Result<u64, (Side, String)> {
    let link_err = |e: std::io::Error| (Side::Link, format!("the control connection: {e}"));
    let mut file_bytes = 0;
    // The first file refused; the rest are still read (and dropped), so that the
    // source, which sends them all before it listens, reads the refusal as the
    // answer to its restore rather than a reset connection.
    let mut refused: Option<(Side, String)> = None;
    loop {
        match wire::recv(link).await.map_err(link_err)? {
            Msg::File { size, .. } if size > MAX_FILE => {
                return Err((
                    Side::Source,
                    format!("an image file of {size} bytes refused"),
                ));
            }
            Msg::File { size, .. } if refused.is_some() => {
                wire::drain(link, size).await.map_err(link_err)?;
            }
            Msg::File { name, size, .. } if !wire::is_plain_name(&name) => {
                wire::drain(link, size).await.map_err(link_err)?;
                refused = Some((Side::Source, format!("image file name {name:?} refused")));
            }
            Msg::File { name, size, sha256 } => {
                let path = dir.join(&name);
                let got = wire::recv_file(link, size, &path).await.map_err(link_err)?;
                if got != sha256 {
                    let _ = std::fs::remove_file(&path);
                    refused = Some((
                        Side::Destination,
                        format!(
                            "image file {name} does not match its checksum: refused before restore"
                        ),
                    ));
                }
                file_bytes += size;
            }
            Msg::Restore => break,
            Msg::Abort { reason } => return Err((Side::Source, reason)),
            other => return Err((Side::Source, format!("expected a file, got {other:?}"))),
        }
    }
    match refused {
        Some(why) => Err(why),
        None => Ok(file_bytes),
    }
}

/// How far a migration got, for its deadline: the images directory once made (removed
/// if the deadline passes before the restore), the tree once restored.
#[derive(Default)]
struct Progress {
    made: Option<PathBuf>,
    restored: Option<Arrival>,
    /// Post-copy: a tree running here before all its memory arrived.
    running: Option<Restored>,
}

/// Tells the source why this side will not take the migration.
async fn refuse(link: &mut Box<dyn Link>, why: String) -> Result<Arrival> {
    let _ = wire::send_last(
        link,
        &Msg::Failed {
            reason: why.clone(),
        },
    )
    .await;
    Err(failed(Side::Destination, why))
}

/// `major.minor.sublevel` of ours at least the source's.
fn criu_at_least(ours: &crate::info::Version, theirs: &str) -> bool {
    let mut parts = theirs.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let t = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (ours.major, ours.minor, ours.sublevel) >= t
}

pub(super) fn failed(side: Side, reason: String) -> Error {
    Error::Migration {
        failed: side,
        reason,
        source_tree: RequestState::Untouched,
    }
}

fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a failed migration's images");
    }
}
