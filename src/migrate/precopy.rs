//! Pre-copy: the tree's memory copied in rounds while it runs, so that the final
//! (frozen) dump only has to carry what the last round left dirty.
//!
//! Two parts: [`PreCopyPolicy`], a pure rule that says after each round whether
//! another one is worth it, and [`pre_copy`], which runs the rounds as one criu
//! pre-dump loop and applies the rule to the pages criu reports for each round.

use std::fmt;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::error::{Error, Result};
use crate::info::Features;
use crate::notify::NoHooks;
use crate::options::PreDumpOptions;
use crate::outcome::PreDumpOutcome;
use crate::{Criu, PreDumpLoop};

/// When to stop copying memory in rounds and do the final dump (P.Haul's rule).
///
/// Each round re-sends only what the tree dirtied since the previous one. While the
/// rounds shrink, another round makes the final dump (and so the downtime) smaller.
/// Once a round writes few pages, or writes more than the one before (the tree
/// dirties memory faster than it is copied), the final dump is as small as it will
/// get: go on and it only costs time. A cap on the rounds bounds a tree that keeps
/// shrinking slowly.
///
/// After round `n`, checked in this order:
/// 1. [`StopReason::FewPages`] when the round wrote at most
///    [`min_pages`](Self::min_pages) pages (default 64);
/// 2. [`StopReason::Growing`] when it wrote more than the previous round plus
///    [`max_growth_percent`](Self::max_growth_percent) (default 10%) of it, compared
///    exactly (3000 then 3300 goes on, 3000 then 3301 stops);
/// 3. [`StopReason::MaxRounds`] when `n` reached [`max_rounds`](Self::max_rounds)
///    (default 8).
///
/// # Example
/// ```
/// use criu_swrk::migrate::{PreCopyPolicy, Step, StopReason};
///
/// let policy = PreCopyPolicy::default();
/// assert_eq!(policy.after_round(1, 5000, None), Step::Again);
/// assert_eq!(policy.after_round(2, 2000, Some(5000)), Step::Again);
/// assert_eq!(policy.after_round(3, 40, Some(2000)), Step::Stop(StopReason::FewPages));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a policy does nothing until a pre-copy applies it"]
pub struct PreCopyPolicy {
    max_rounds: u32,
    min_pages: u64,
    max_growth_percent: u32,
}

impl Default for PreCopyPolicy {
    /// P.Haul's numbers: at most 8 rounds, stop at 64 pages or at 10% growth.
    fn default() -> Self {
        PreCopyPolicy {
            max_rounds: 8,
            min_pages: 64,
            max_growth_percent: 10,
        }
    }
}

impl PreCopyPolicy {
    /// The default policy (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop after this many rounds (default 8). One round always runs: 0 acts as 1.
    pub fn max_rounds(mut self, n: u32) -> Self {
        self.max_rounds = n;
        self
    }

    /// Stop once a round writes this many pages or fewer (default 64).
    pub fn min_pages(mut self, pages: u64) -> Self {
        self.min_pages = pages;
        self
    }

    /// Stop once a round writes more than the previous one by more than this many
    /// percent of it (default 10).
    pub fn max_growth_percent(mut self, percent: u32) -> Self {
        self.max_growth_percent = percent;
        self
    }

    /// What to do after round `round` (1-based) wrote `pages_written` pages;
    /// `previous` is what the round before wrote (`None` after the first).
    pub fn after_round(&self, round: u32, pages_written: u64, previous: Option<u64>) -> Step {
        if pages_written <= self.min_pages {
            return Step::Stop(StopReason::FewPages);
        }
        if let Some(prev) = previous {
            // pages > prev * (1 + g/100), in integers wide enough not to overflow.
            let limit = u128::from(prev) * (100 + u128::from(self.max_growth_percent));
            if u128::from(pages_written) * 100 > limit {
                return Step::Stop(StopReason::Growing);
            }
        }
        if round >= self.max_rounds {
            return Step::Stop(StopReason::MaxRounds);
        }
        Step::Again
    }
}

/// What [`PreCopyPolicy::after_round`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Run another round.
    Again,
    /// Stop the rounds and do the final dump.
    Stop(StopReason),
}

/// Why the pre-copy rounds stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The last round wrote at most [`PreCopyPolicy::min_pages`] pages: little is left
    /// for the final dump.
    FewPages,
    /// The last round wrote more than the one before by more than
    /// [`PreCopyPolicy::max_growth_percent`]: the tree dirties memory faster than the
    /// rounds copy it.
    Growing,
    /// [`PreCopyPolicy::max_rounds`] rounds ran.
    MaxRounds,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::FewPages => "the last round wrote few pages",
            StopReason::Growing => "the rounds stopped shrinking",
            StopReason::MaxRounds => "the most rounds allowed ran",
        })
    }
}

/// One pre-copy round.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoundStats {
    /// Its number, from 1.
    pub round: u32,
    /// The pages criu wrote (or sent to the page server) in it.
    pub pages_written: u64,
    /// How long its pre-dump took, from the request to criu's answer.
    pub took: Duration,
}

/// What [`pre_copy`] did: every round, and why it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreCopyReport {
    /// The rounds, in order; never empty.
    pub rounds: Vec<RoundStats>,
    /// Why no further round ran.
    pub stop: StopReason,
}

impl PreCopyReport {
    /// The last round's number.
    pub fn last_round(&self) -> u32 {
        self.rounds.last().map_or(0, |r| r.round)
    }

    /// What the final dump names as its parent images: the last round's directory,
    /// relative to the final dump's (`../<last round>`).
    pub fn final_parent(&self) -> String {
        format!("../{}", self.last_round())
    }
}

/// Copies the tree's memory in rounds while it runs, on one criu process, until
/// `policy` says stop; returns the loop, ready for the final dump, and what each round
/// wrote.
///
/// `round_opts(n, parent)` gives the options of round `n` (from 1). `parent` is the
/// previous round's images relative to this round's (`None` for round 1, then
/// `Some("../1")`, `Some("../2")`, ...): this sets it as the pre-dump's
/// [`parent_images`](PreDumpOptions::parent_images) itself, so the round directories
/// must be siblings named by round number (`<root>/1`, `<root>/2`, ...). A page
/// server receiving round `n` needs the same `parent` as its
/// [`parent_images`](crate::PageServerOptions::parent_images).
///
/// The final dump is the caller's: [`PreDumpLoop::dump`] with images in
/// `<root>/<last + 1>` and [`PreCopyReport::final_parent`] as its parent.
///
/// # Errors
/// - As [`Criu::pre_dump`] for round 1, including [`Error::Unsupported`] when this
///   kernel does not track dirty memory (see [`check_memory_tracking`]);
/// - as [`PreDumpLoop::pre_dump`] for later rounds;
/// - [`Error::Stats`] when criu left no readable stats for a round: without its
///   page count the policy cannot decide, so this stops rather than guess.
///
/// On any error the loop is dropped: criu ends, the tree keeps running, and the
/// images of the rounds that finished stay on disk.
///
/// # Cancel safety
/// Dropping the future rolls back the round in flight and ends criu; the tree keeps
/// running and the finished rounds' images stay on disk.
pub async fn pre_copy<F>(
    criu: &Criu,
    policy: &PreCopyPolicy,
    mut round_opts: F,
) -> Result<(PreDumpLoop, PreCopyReport)>
where
    F: FnMut(u32, Option<&str>) -> PreDumpOptions + Send,
{
    pre_copy_with(criu, policy, &mut Given(&mut round_opts)).await
}

/// Where each round's options come from, possibly after asking (a destination's
/// page server for the round, say).
pub(crate) trait RoundOptions: Send {
    /// Round `round`'s options; `parent` as in [`pre_copy`].
    fn options(
        &mut self,
        round: u32,
        parent: Option<&str>,
    ) -> impl Future<Output = Result<PreDumpOptions>> + Send;
}

/// Options from a closure.
struct Given<'a, F>(&'a mut F);

impl<F: FnMut(u32, Option<&str>) -> PreDumpOptions + Send> RoundOptions for Given<'_, F> {
    async fn options(&mut self, round: u32, parent: Option<&str>) -> Result<PreDumpOptions> {
        Ok((self.0)(round, parent))
    }
}

/// [`pre_copy`] with options that take asking for; an error from `round_opts` ends
/// the loop with it.
pub(crate) async fn pre_copy_with<R: RoundOptions>(
    criu: &Criu,
    policy: &PreCopyPolicy,
    round_opts: &mut R,
) -> Result<(PreDumpLoop, PreCopyReport)> {
    let mut rounds: Vec<RoundStats> = Vec::new();
    let mut lp: Option<PreDumpLoop> = None;
    loop {
        let round = rounds.len() as u32 + 1;
        let parent = (round > 1).then(|| format!("../{}", round - 1));
        let mut opts = round_opts.options(round, parent.as_deref()).await?;
        if let Some(parent) = &parent {
            opts = opts.parent_images(parent.clone());
        }
        let span = tracing::info_span!("pre_copy_round", round);
        let started = Instant::now();
        let outcome = async {
            match lp.as_mut() {
                Some(lp) => lp.pre_dump(opts).await,
                // Round 1 starts the loop (and criu) with its options, so that fds
                // meant for criu's table (a page-server socket) reach it.
                None => {
                    let (started, first) = criu.pre_dump_with(opts, &mut NoHooks).await?;
                    lp = Some(started);
                    Ok(first)
                }
            }
        }
        .instrument(span.clone())
        .await?;
        let took = started.elapsed();
        let pages_written = pages_written(round, outcome)?;
        span.in_scope(|| {
            tracing::info!(
                pages = pages_written,
                took_ms = took.as_millis() as u64,
                "pre-copy round done"
            );
        });
        let previous = rounds.last().map(|r| r.pages_written);
        rounds.push(RoundStats {
            round,
            pages_written,
            took,
        });
        if let Step::Stop(stop) = policy.after_round(round, pages_written, previous) {
            tracing::info!(rounds = round, %stop, "pre-copy stops");
            let lp = lp.expect("round 1 started the loop");
            return Ok((lp, PreCopyReport { rounds, stop }));
        }
    }
}

/// A round's page count, or an error saying the policy has nothing to go on.
fn pages_written(round: u32, outcome: PreDumpOutcome) -> Result<u64> {
    match outcome.stats {
        Ok(stats) => Ok(stats.pages_written),
        Err(e) => Err(Error::Stats {
            path: None,
            reason: format!(
                "pre-copy round {round} needs criu's pages_written to decide whether to \
                 go on"
            ),
            source: Some(Box::new(e)),
        }),
    }
}

/// Whether pre-copy can work here, from criu's [`Features`]: it needs the kernel to
/// track which pages a tree dirtied between rounds (soft-dirty bits).
///
/// # Errors
/// [`Error::Unsupported`] (`what` = "pre-copy migration") when criu's `mem_track`
/// feature is off.
///
/// # Example
/// ```no_run
/// # async fn run() -> criu_swrk::Result<()> {
/// let features = criu_swrk::Criu::new().features().await?;
/// criu_swrk::migrate::check_memory_tracking(&features)?;
/// # Ok(()) }
/// ```
pub fn check_memory_tracking(features: &Features) -> Result<()> {
    if features.mem_track {
        return Ok(());
    }
    Err(Error::Unsupported {
        what: "pre-copy migration".into(),
        reason: "this kernel does not track dirty memory (CONFIG_MEM_SOFT_DIRTY; criu's \
                 mem_track feature is off): use stop-and-copy or post-copy"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGAIN: Step = Step::Again;
    const FEW: Step = Step::Stop(StopReason::FewPages);
    const GROWING: Step = Step::Stop(StopReason::Growing);
    const MAX: Step = Step::Stop(StopReason::MaxRounds);

    #[test]
    fn defaults_are_phauls() {
        let p = PreCopyPolicy::default();
        assert_eq!(
            (p.max_rounds, p.min_pages, p.max_growth_percent),
            (8, 64, 10)
        );
        assert_eq!(PreCopyPolicy::new(), p);
    }

    #[test]
    fn few_pages_stop_at_the_boundary() {
        let p = PreCopyPolicy::default();
        assert_eq!(p.after_round(1, 64, None), FEW);
        assert_eq!(p.after_round(1, 65, None), AGAIN);
        assert_eq!(p.after_round(3, 0, Some(100)), FEW);
        assert_eq!(p.after_round(2, 64, Some(1000)), FEW);
        // Few pages win over growth and over the round cap.
        assert_eq!(p.after_round(2, 60, Some(10)), FEW);
        assert_eq!(p.after_round(8, 10, Some(5000)), FEW);
        assert_eq!(p.min_pages(0).after_round(1, 1, None), AGAIN);
    }

    #[test]
    fn growth_stops_just_past_the_allowed_percent() {
        let p = PreCopyPolicy::default();
        assert_eq!(p.after_round(2, 3300, Some(3000)), AGAIN);
        assert_eq!(p.after_round(2, 3301, Some(3000)), GROWING);
        assert_eq!(p.after_round(2, 3000, Some(3000)), AGAIN);
        assert_eq!(p.after_round(2, 2999, Some(3000)), AGAIN);
        // Not a whole page: 10% of 1005 is 100.5, so 1105 is within and 1106 is not.
        assert_eq!(p.after_round(2, 1105, Some(1005)), AGAIN);
        assert_eq!(p.after_round(2, 1106, Some(1005)), GROWING);
        // Growth wins over the round cap.
        assert_eq!(p.after_round(8, 3400, Some(3000)), GROWING);
        let strict = p.clone().max_growth_percent(0);
        assert_eq!(strict.after_round(2, 3001, Some(3000)), GROWING);
        assert_eq!(strict.after_round(2, 3000, Some(3000)), AGAIN);
        // A previous round of 0 pages: any growth is growth (no division by zero).
        assert_eq!(p.clone().min_pages(0).after_round(2, 1, Some(0)), GROWING);
        // No overflow at the top of the range.
        assert_eq!(p.after_round(2, u64::MAX, Some(u64::MAX)), AGAIN);
        assert_eq!(p.after_round(2, u64::MAX, Some(u64::MAX / 2)), GROWING);
    }

    #[test]
    fn the_round_cap_stops_at_its_round() {
        let p = PreCopyPolicy::default();
        assert_eq!(p.after_round(7, 1000, Some(2000)), AGAIN);
        assert_eq!(p.after_round(8, 1000, Some(2000)), MAX);
        assert_eq!(p.after_round(9, 1000, Some(2000)), MAX);
        let one = p.clone().max_rounds(1);
        assert_eq!(one.after_round(1, 1000, None), MAX);
        assert_eq!(p.max_rounds(0).after_round(1, 1000, None), MAX);
    }

    #[test]
    fn the_report_names_the_final_parent() {
        let report = PreCopyReport {
            rounds: (1..=3)
                .map(|round| RoundStats {
                    round,
                    pages_written: 100,
                    took: Duration::ZERO,
                })
                .collect(),
            stop: StopReason::FewPages,
        };
        assert_eq!(report.last_round(), 3);
        assert_eq!(report.final_parent(), "../3");
    }

    #[test]
    fn memory_tracking_is_required() {
        let mut f = Features::default();
        let e = check_memory_tracking(&f).unwrap_err();
        assert!(e.is_unsupported(), "{e:?}");
        let Error::Unsupported { what, reason } = &e else {
            unreachable!()
        };
        assert_eq!(what, "pre-copy migration");
        assert!(reason.contains("CONFIG_MEM_SOFT_DIRTY"), "{reason}");
        assert!(reason.contains("mem_track"), "{reason}");
        assert!(reason.contains("stop-and-copy or post-copy"), "{reason}");
        f.mem_track = true;
        check_memory_tracking(&f).unwrap();
    }
}
