//! The pre-dump loop: any number of pre-dumps, then one dump, on one criu process.

use tracing::Instrument;

use super::{Mode, Session, pre_dump_outcome};
use crate::error::Result;
use crate::kind::RequestKind;
use crate::notify::{Hooks, NoHooks};
use crate::options::{DumpOptions, PreDumpOptions, Prepared};
use crate::outcome::{DumpOutcome, PreDumpOutcome};

/// The pre-dump loop on one criu process: any number of pre-dumps, then one dump.
/// The types allow nothing else, which is all criu accepts.
///
/// Made by [`Session::pre_dump`] or [`Criu::pre_dump`](crate::Criu::pre_dump).
///
/// # Drop behavior
/// Dropping the loop without a final dump ends criu; the tree keeps running and the
/// pre-dump images stay on disk.
#[derive(Debug)]
pub struct PreDumpLoop {
    session: Session,
    iterations: u32,
}

impl PreDumpLoop {
    pub(crate) fn new(session: Session) -> Self {
        PreDumpLoop {
            session,
            iterations: 0,
        }
    }

    /// How many pre-dumps have completed.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// One more pre-dump (usually with `parent_images` naming the previous one).
    ///
    /// # Errors
    /// As [`Session::dump`]. After a failed pre-dump criu has left the loop: further
    /// calls fail with [`Error::Closed`](crate::Error::Closed).
    ///
    /// # Cancel safety
    /// Dropping the future rolls this pre-dump back and ends the loop.
    pub async fn pre_dump(&mut self, opts: PreDumpOptions) -> Result<PreDumpOutcome> {
        self.pre_dump_with(opts, &mut NoHooks).await
    }

    /// [`pre_dump`](Self::pre_dump) with hooks.
    ///
    /// # Errors
    /// As [`pre_dump`](Self::pre_dump), plus [`Error::Hook`](crate::Error::Hook).
    ///
    /// # Cancel safety
    /// As [`pre_dump`](Self::pre_dump).
    pub async fn pre_dump_with<H: Hooks>(
        &mut self,
        opts: PreDumpOptions,
        hooks: &mut H,
    ) -> Result<PreDumpOutcome> {
        self.iterate(opts.prepare(RequestKind::PreDump)?, hooks)
            .await
    }

    pub(crate) async fn iterate<H: Hooks>(
        &mut self,
        mut p: Prepared,
        hooks: &mut H,
    ) -> Result<PreDumpOutcome> {
        let pid = p.pid.unwrap_or_default();
        let iteration = self.iterations + 1;
        self.session
            .request(&mut p, Mode::InLoop, hooks)
            .instrument(tracing::info_span!("pre_dump_loop", iteration))
            .await?;
        self.iterations = iteration;
        Ok(pre_dump_outcome(pid, p))
    }

    /// The final dump, on the same criu process.
    ///
    /// # Errors
    /// As [`Session::dump`].
    ///
    /// # Cancel safety
    /// As [`Session::dump`].
    pub async fn dump(self, opts: DumpOptions) -> Result<DumpOutcome> {
        self.session.dump(opts).await
    }

    /// [`dump`](Self::dump) with hooks.
    ///
    /// # Errors
    /// As [`Session::dump_with`].
    ///
    /// # Cancel safety
    /// As [`Session::dump`].
    pub async fn dump_with<H: Hooks>(
        self,
        opts: DumpOptions,
        hooks: &mut H,
    ) -> Result<DumpOutcome> {
        self.session.dump_with(opts, hooks).await
    }
}
