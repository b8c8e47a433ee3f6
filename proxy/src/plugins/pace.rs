//! Where a request's plugin chain runs on the proxy's multi-thread runtime:
//! right on the worker thread, or under `block_in_place`.
//!
//! `block_in_place` hands the worker's other tasks to a thread from tokio's
//! blocking pool, so a slow chain cannot stall other connections. That
//! hand-off (a pool spawn under a mutex, thread wake-ups) costs more CPU
//! than a whole chain of three small plugins (about 30 µs), so a chain that
//! has proven quick runs in place:
//! - a chain starts out unproven, under `block_in_place`;
//! - after [`QUICK_RUNS`] runs in a row that each took at most [`QUICK`] of
//!   CPU time, it runs in place;
//! - any slower run, in place or not, starts the count again. A plugin that
//!   turns slow on some requests can so stall one worker at most once per
//!   [`QUICK_RUNS`] requests, for at most its CPU budget (or the wall-time cap);
//! - a chain whose plugins may wait for the network (the shared Redis
//!   counters) never runs in place: a wait is not CPU and has no such bound.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A run that took at most this much CPU time counts as quick.
pub const QUICK: Duration = Duration::from_millis(1);

/// Quick runs in a row after which a chain runs in place.
pub const QUICK_RUNS: u32 = 256;

/// The recent pace of one chain.
pub struct Pace {
    quick_streak: AtomicU32,
    may_run_in_place: bool,
}

impl Pace {
    /// `may_run_in_place`: false when the chain's plugins may block on I/O.
    pub fn new(may_run_in_place: bool) -> Pace {
        Pace {
            quick_streak: AtomicU32::new(0),
            may_run_in_place,
        }
    }

    /// True when the next run may take the worker thread itself.
    pub fn run_in_place(&self) -> bool {
        self.may_run_in_place && self.quick_streak.load(Ordering::Relaxed) >= QUICK_RUNS
    }

    /// Records how long a run took.
    pub fn record(&self, took: Duration) {
        if took <= QUICK {
            // Saturating: the streak only has to reach QUICK_RUNS.
            let _ = self
                .quick_streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < QUICK_RUNS).then_some(n + 1)
                });
        } else {
            self.quick_streak.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_runs_in_place_only_after_a_streak_of_quick_runs() {
        let pace = Pace::new(true);
        for _ in 0..QUICK_RUNS - 1 {
            pace.record(Duration::from_micros(30));
        }
        assert!(!pace.run_in_place());
        pace.record(QUICK);
        assert!(pace.run_in_place());
        // One slow run, and the chain has to prove itself again.
        pace.record(QUICK + Duration::from_micros(1));
        assert!(!pace.run_in_place());
    }

    #[test]
    fn a_chain_that_may_wait_for_the_network_never_runs_in_place() {
        let pace = Pace::new(false);
        for _ in 0..2 * QUICK_RUNS {
            pace.record(Duration::from_micros(30));
        }
        assert!(!pace.run_in_place());
    }
}
