//! When to restart a worker's slot, and when to give up: pure, no clock, no I/O.
//!
//! A start *fails* when the worker exits before it was ready or before it ran `stable_after`.
//! Consecutive failures of one slot grow the delay (100 ms × 1.5ⁿ, capped at 15 s); a stable run
//! resets them. From [`CRASH_LOOP_AFTER`] failures on the slot is reported as crash-looping; at
//! `crash_loop_limit` clusterd gives up (0 never gives up).

use std::time::Duration;

/// Consecutive failures from which a slot is reported as crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 3;

/// The restart policy's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
    pub stable_after: Duration,
    /// 0 never gives up.
    pub crash_loop_limit: u32,
}

impl RestartPolicy {
    pub fn new(stable_after: Duration, crash_loop_limit: u32) -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: 1.5,
            max: Duration::from_secs(15),
            stable_after,
            crash_loop_limit,
        }
    }

    /// Whether a worker that is up counts as stable (it resets its slot's failures).
    pub fn is_stable(&self, uptime: Duration, ready: bool) -> bool {
        ready && uptime >= self.stable_after
    }

    /// The decision after a worker of a slot with `failures` consecutive failures exited.
    pub fn on_exit(&self, failures: u32, uptime: Duration, was_ready: bool) -> Decision {
        if self.is_stable(uptime, was_ready) {
            return Decision::Restart { after: Duration::ZERO, failures: 0 };
        }
        let failures = failures.saturating_add(1);
        if self.crash_loop_limit > 0 && failures >= self.crash_loop_limit {
            return Decision::GiveUp { failures };
        }
        Decision::Restart { after: self.backoff(failures), failures }
    }

    /// The delay before the restart that follows the `failures`-th consecutive failure (from 1).
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(64) as i32;
        let delay = self.initial.as_secs_f64() * self.factor.powi(exponent);
        Duration::from_secs_f64(delay.min(self.max.as_secs_f64()))
    }
}

/// What to do with a slot whose worker exited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Start a new worker in the slot after the delay; `failures` is the slot's new count.
    Restart { after: Duration, failures: u32 },
    /// The slot failed `failures` times in a row, reaching the limit: stop clusterd with status 1.
    GiveUp { failures: u32 },
}

impl Decision {
    pub fn is_crash_loop(&self) -> bool {
        match *self {
            Decision::Restart { failures, .. } => failures >= CRASH_LOOP_AFTER,
            Decision::GiveUp { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limit: u32) -> RestartPolicy {
        RestartPolicy::new(Duration::from_secs(10), limit)
    }

    #[test]
    fn backoff_grows_by_half_from_100ms_and_caps_at_15s() {
        let p = policy(0);
        let ms = |n| p.backoff(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [100, 150, 225, 337]);
        assert_eq!(p.backoff(13).as_millis(), 12_974, "100ms × 1.5^12, just under the cap");
        assert_eq!(p.backoff(14), Duration::from_secs(15), "100ms × 1.5^13 = 19.5s, capped");
        assert_eq!(p.backoff(1000), Duration::from_secs(15));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(15));
        for n in 1..100 {
            assert!(p.backoff(n) <= p.backoff(n + 1), "monotonic at {n}");
        }
    }

    #[test]
    fn a_stable_run_resets_the_failures_and_restarts_at_once() {
        let p = policy(5);
        assert_eq!(
            p.on_exit(4, Duration::from_secs(10), true),
            Decision::Restart { after: Duration::ZERO, failures: 0 }
        );
    }

    #[test]
    fn a_long_run_that_never_got_ready_is_still_a_failure() {
        let p = policy(0);
        assert_eq!(
            p.on_exit(0, Duration::from_secs(3600), false),
            Decision::Restart { after: Duration::from_millis(100), failures: 1 }
        );
    }

    #[test]
    fn quick_exits_count_up_to_the_limit_then_give_up() {
        let p = policy(3);
        let quick = Duration::from_millis(50);
        let mut failures = 0;
        let mut decisions = Vec::new();
        loop {
            let d = p.on_exit(failures, quick, true);
            decisions.push(d);
            match d {
                Decision::Restart { failures: f, .. } => failures = f,
                Decision::GiveUp { .. } => break,
            }
        }
        assert_eq!(
            decisions,
            [
                Decision::Restart { after: Duration::from_millis(100), failures: 1 },
                Decision::Restart { after: Duration::from_millis(150), failures: 2 },
                Decision::GiveUp { failures: 3 },
            ]
        );
        assert!(!decisions[0].is_crash_loop() && decisions[2].is_crash_loop());
    }

    #[test]
    fn limit_zero_never_gives_up() {
        let p = policy(0);
        let d = p.on_exit(u32::MAX - 1, Duration::ZERO, false);
        assert!(matches!(d, Decision::Restart { after, .. } if after == Duration::from_secs(15)));
        assert!(d.is_crash_loop());
        assert!(matches!(p.on_exit(u32::MAX, Duration::ZERO, false), Decision::Restart { .. }));
    }

    #[test]
    fn stability_needs_both_readiness_and_uptime() {
        let p = policy(0);
        assert!(p.is_stable(Duration::from_secs(10), true));
        assert!(!p.is_stable(Duration::from_secs(9), true));
        assert!(!p.is_stable(Duration::from_secs(100), false));
    }
}
