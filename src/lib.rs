//! Checkpoint and restore Linux processes with [CRIU](https://criu.org) from async Rust.
//!
//! `criu-swrk` drives criu in its RPC "swrk" mode: each request starts
//! `criu swrk <fd>` with one end of a `SOCK_SEQPACKET` socketpair, sends one protobuf
//! request, answers criu's notifications (its hooks), and reads the final response. No
//! daemon, no command-line parsing, no fixed-size buffers.
//!
//! * [`Criu`]: which criu to run; one-call [`dump`](Criu::dump),
//!   [`restore`](Criu::restore), [`pre_dump`](Criu::pre_dump), [`check`](Criu::check),
//!   [`version`](Criu::version), [`features`](Criu::features).
//! * [`Session`]: one criu process, for several keep-open queries and the pre-dump loop
//!   ([`PreDumpLoop`]); [`Session::from_fd`] and [`Criu::connect_with`] are the seams for fake peers.
//! * [`DumpOptions`], [`RestoreOptions`], [`PreDumpOptions`], [`CheckOptions`]: typed
//!   builders with criu's defaults and a raw escape hatch.
//! * [`Notification`], [`Hooks`], [`Reply`], [`notify::channel`]: answer criu's hooks
//!   with async code or through a stream.
//! * [`Error`]: one error type; criu's refusals carry its message and its log's error
//!   lines ([`Refusal`]).
//! * [`fleet::Fleet`]: many targets at once, bounded, with progress events and a
//!   cancel that rolls every dump back.
//! * [`lazy`]: a supervised `criu lazy-pages` daemon for post-copy restores;
//!   [`Criu::page_server`] and [`Session::page_server_child`] for pages over the
//!   network; [`stats`] for criu's stats images.
//!
//! # Never losing the target
//!
//! Every request runs with criu's notifications on, so criu stops at each hook and
//! waits for the driver. What a timeout, a cancel, a dropped future, or an error of
//! ours does then depends on how far criu has got, and the error says which
//! ([`Error::request_state`], [`RequestState`]):
//!
//! | moment | dump | restore |
//! | --- | --- | --- |
//! | before `pre-dump` / `pre-restore` is answered | criu has touched nothing and is killed at once, with its helpers: [`RequestState::Untouched`] | the same |
//! | between the hooks | criu's next hook is answered with failure: criu resumes the tree, memory intact: [`RequestState::RolledBack`] | criu kills what it restored: [`RequestState::RolledBack`] |
//! | criu does not reach that hook within the grace ([`Criu::grace`]) | criu is killed; the tree most likely runs on but may carry criu's parasite mapping: [`RequestState::Unknown`] | criu is killed; a partly restored tree may be left (its pid in the error when known): [`RequestState::Unknown`] |
//! | after `post-dump` / `post-restore` is answered with success | committed: the dump is let finish and its outcome returned (images complete; tree gone unless `leave_running`) | committed: the outcome, with the pid, is returned; a *dropped* restore has its tree killed, since nobody would know of it |
//!
//! A dump that does not commit leaves no images behind: what criu wrote is removed
//! (criu's log file stays). criu is reaped on every path. If the driver process itself
//! dies, criu sees its socket close and fails the hook it waits at, so a dump rolls
//! back unless it had already committed.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use criu_swrk::{Criu, DumpOptions, Notification, Reply, RestoreOptions};
//!
//! #[tokio::main]
//! async fn main() -> criu_swrk::Result<()> {
//!     let criu = Criu::new();
//!     let version = criu.version().await?;
//!     assert!(version.at_least(4, 0));
//!
//!     // Checkpoint pid 4242, recording the hooks criu passes through.
//!     let mut hooks_seen = Vec::new();
//!     let mut hooks = |n: Notification| {
//!         hooks_seen.push(n.name().to_owned());
//!         std::future::ready(Reply::ok())
//!     };
//!     let dump = DumpOptions::new(4242)
//!         .images_dir("/var/lib/ckpt/4242")
//!         .timeout(Duration::from_secs(60));
//!     let dumped = criu.dump_with(dump, &mut hooks).await?;
//!     println!("hooks: {hooks_seen:?}, stats: {:?}", dumped.stats);
//!
//!     // Bring it back.
//!     let restored = criu
//!         .restore(RestoreOptions::new().images_dir("/var/lib/ckpt/4242"))
//!         .await?;
//!     println!("running again as pid {}", restored.pid);
//!     Ok(())
//! }
//! ```
//!
//! # Requirements
//!
//! Linux, root (or the capabilities criu needs), criu 3.15 or later (tested with 4.2.1;
//! criu 4.1 cannot dump inet sockets on Linux 6.16 and later), and a Tokio runtime with
//! the `net` and `time` drivers enabled (`Builder::enable_all`, or `#[tokio::main]`).
#![warn(missing_docs)]

mod codec;
mod conn;
mod criu;
pub mod doctor;
mod error;
mod exchange;
pub mod external;
pub mod fleet;
mod info;
mod kind;
pub mod lazy;
mod log;
pub mod migrate;
mod modes;
pub mod notify;
pub mod oci;
mod options;
mod outcome;
mod pool;
mod preflight;
mod process;
pub mod proto;
mod publish;
pub mod record;
mod session;
mod spawn;
pub mod stats;
mod transport;

pub use criu::{Criu, Spawned};
pub use error::{
    BoxError, DaemonFailure, Error, Interruption, Refusal, RequestState, Result, Side,
};
pub use info::{Features, Version};
pub use kind::RequestKind;
pub use notify::{Hooks, NoHooks, Notification, Reply};
pub use options::{
    CgroupMode, CheckOptions, CpuinfoOptions, DEFAULT_LOG_LEVEL, DumpOptions, NetworkLock,
    PageServerOptions, PassFd, PreDumpMode, PreDumpOptions, RestoreOptions,
};
pub use outcome::{DumpOutcome, PageServer, PreDumpOutcome, RestoreOutcome};
pub use process::reap_dropped;
pub use session::{DEFAULT_GRACE, PreDumpLoop, Session};
/// Re-exported: cancels requests ([`DumpOptions::cancel_on`]) and batches.
pub use tokio_util::sync::CancellationToken;
