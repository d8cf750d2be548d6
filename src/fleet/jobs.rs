//! How many targets a batch runs at once when the caller does not say.
//!
//! The rule: start with two slots per CPU this process may run on
//! ([`std::thread::available_parallelism`], which honours CPU affinity and cgroup
//! quotas): a criu dump spends about a fifth of its time off the CPU (stopping the
//! tree, probing the kernel, waiting on its hooks and the disk), so one per CPU
//! leaves them a quarter idle (measured: two criu on two CPUs kept 1.5 of them busy,
//! four kept 1.9). After each target finishes, look at how idle the machine's CPUs
//! were since the last look (`/proc/stat`, idle time only: time waiting on the disk
//! is not spare CPU): a quarter of a CPU or more idle on average, and one more slot
//! opens, up to four per CPU; less than a twentieth of a CPU idle (the CPUs are
//! saturated, by the batch or by others), and one closes, down to one per CPU. Looks
//! shorter than 100 ms (ten ticks of `/proc/stat` per CPU) are merged into the next
//! one, so that a burst of tiny targets does not steer it on noise.

use std::time::{Duration, Instant};

/// The concurrency of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Jobs {
    /// Exactly this many at once.
    Fixed(usize),
    /// Chosen as the batch runs (see the module docs).
    Auto,
}

/// The slots of one running batch.
#[derive(Debug)]
pub(crate) struct Slots {
    limit: usize,
    auto: Option<Auto>,
}

#[derive(Debug)]
struct Auto {
    cpus: usize,
    last: Option<(Instant, CpuTimes)>,
}

/// Jiffies the machine's CPUs spent idle, and in all, since boot.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    idle: u64,
    total: u64,
}

const MIN_WINDOW: Duration = Duration::from_millis(100);

impl Slots {
    pub(crate) fn new(jobs: Jobs) -> Self {
        match jobs {
            Jobs::Fixed(n) => Slots {
                limit: n.max(1),
                auto: None,
            },
            Jobs::Auto => {
                let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                Slots {
                    limit: 2 * cpus,
                    auto: Some(Auto {
                        cpus,
                        last: cpu_times().map(|t| (Instant::now(), t)),
                    }),
                }
            }
        }
    }

    /// How many targets may run now.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A target finished: adjust the limit when it is chosen automatically.
    pub(crate) fn finished(&mut self) {
        let Some(auto) = &mut self.auto else {
            return;
        };
        let (Some((since, before)), Some(now)) = (auto.last, cpu_times()) else {
            return;
        };
        if since.elapsed() < MIN_WINDOW {
            return;
        }
        auto.last = Some((Instant::now(), now));
        self.limit = next_limit(self.limit, auto.cpus, before, now);
    }
}

/// The rule of the module docs, on two readings of `/proc/stat`.
fn next_limit(limit: usize, cpus: usize, before: CpuTimes, now: CpuTimes) -> usize {
    let total = now.total.saturating_sub(before.total);
    if total == 0 {
        return limit;
    }
    let idle_cpus = now.idle.saturating_sub(before.idle) as f64 / total as f64 * cpus as f64;
    if idle_cpus >= 0.25 && limit < 4 * cpus {
        limit + 1
    } else if idle_cpus < 0.05 && limit > cpus {
        limit - 1
    } else {
        limit
    }
}

/// The aggregate `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq
/// steal ... (guest time is already in user).
fn cpu_times() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields.len() >= 4).then(|| CpuTimes {
        idle: fields[3],
        total: fields.iter().sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(idle: u64, total: u64) -> CpuTimes {
        CpuTimes { idle, total }
    }

    #[test]
    fn a_slot_opens_while_a_quarter_cpu_sits_idle_and_closes_when_saturated() {
        let t0 = times(0, 0);
        // 2 CPUs, a quarter of the time idle: half a CPU idle on average.
        assert_eq!(next_limit(4, 2, t0, times(50, 200)), 5);
        // Exactly a quarter of a CPU idle still opens one.
        assert_eq!(next_limit(4, 2, t0, times(50, 400)), 5);
        // Never more than four per CPU.
        assert_eq!(next_limit(8, 2, t0, times(100, 200)), 8);
        // Saturated: back towards one per CPU, never below.
        assert_eq!(next_limit(5, 2, t0, times(1, 200)), 4);
        assert_eq!(next_limit(2, 2, t0, times(1, 200)), 2);
        // In between: unchanged.
        assert_eq!(next_limit(5, 2, t0, times(10, 200)), 5);
        // No time passed: unchanged.
        assert_eq!(next_limit(3, 2, t0, t0), 3);
    }

    #[test]
    fn fixed_jobs_stay_fixed_and_auto_starts_at_two_per_cpu() {
        let mut fixed = Slots::new(Jobs::Fixed(3));
        fixed.finished();
        assert_eq!(fixed.limit(), 3);
        assert_eq!(Slots::new(Jobs::Fixed(0)).limit(), 1);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(Slots::new(Jobs::Auto).limit(), 2 * cpus);
        assert!(cpu_times().is_some(), "/proc/stat is readable");
    }
}
