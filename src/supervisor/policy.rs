//! When to restart a worker's slot, and when to give up: pure, no clock, no I/O.
//!
//! Three streaks of a slot are counted apart, because they call for different answers:
//! - a *failed start* is a worker that exited before it was ready: the program cannot come up
//!   (a real crash loop). Consecutive failed starts grow the delay (100 ms × 1.5ⁿ, capped at 15 s);
//!   from [`CRASH_LOOP_AFTER`] on the slot is reported as crash-looping, and at `crash_loop_limit`
//!   clusterd gives up (0 never gives up);
//! - a *death* is a worker that was ready and died before it ran `stable_after` (killed from
//!   outside, a crash under load): its program does come up, so this alone never gives up. Deaths
//!   grow the delay the same way, capped at [`MAX_DEATH_BACKOFF`], so a kill storm costs restarts
//!   and never the service;
//! - a *resource failure* is clusterd failing to get what a start needs (fds, memory, processes):
//!   clusterd's failure, never the worker's. It is retried with the same growth, capped at
//!   [`MAX_RESOURCE_BACKOFF`], and counts toward neither of the others.
//!
//! A worker that was ready and ran `stable_after` resets every streak.

use std::time::Duration;

/// Consecutive failed starts from which a slot is reported as crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 3;
/// The longest delay before restarting a slot whose ready workers keep dying.
pub const MAX_DEATH_BACKOFF: Duration = Duration::from_secs(5);
/// The longest delay before clusterd retries a start it lacked the resources for.
pub const MAX_RESOURCE_BACKOFF: Duration = Duration::from_secs(5);
/// With `--ready-on spawn` a worker is ready as soon as its program runs, which says nothing about
/// whether it came up: for the crash-loop rule it counts as ready once it ran this long.
pub const SPAWN_CAME_UP_AFTER: Duration = Duration::from_secs(1);

/// The restart policy's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub factor: f64,
    /// The cap of the delay after failed starts.
    pub max: Duration,
    /// The cap of the delay after deaths of ready workers.
    pub max_after_death: Duration,
    /// The cap of the delay after clusterd's own resource failures.
    pub max_after_resources: Duration,
    pub stable_after: Duration,
    /// 0 never gives up.
    pub crash_loop_limit: u32,
    /// Set when readiness is not heard but assumed (`--ready-on spawn`): how long a ready worker
    /// must have run to count as one that came up.
    pub came_up_after: Option<Duration>,
}

/// The consecutive failures of one slot, by kind (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    pub failed_starts: u32,
    pub deaths: u32,
    pub resource_failures: u32,
}

/// How a start of a slot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The worker process ran, and exited (or was killed) after `uptime`.
    Exited { uptime: Duration, was_ready: bool },
    /// clusterd could not get what the start needs; no worker ran.
    Resources,
}

impl RestartPolicy {
    pub fn new(stable_after: Duration, crash_loop_limit: u32) -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: 1.5,
            max: Duration::from_secs(15),
            max_after_death: MAX_DEATH_BACKOFF,
            max_after_resources: MAX_RESOURCE_BACKOFF,
            stable_after,
            crash_loop_limit,
            came_up_after: None,
        }
    }

    /// For workers that are ready when their program runs (`--ready-on spawn`): one that exits
    /// within [`SPAWN_CAME_UP_AFTER`] is a failed start, not a death.
    pub fn ready_on_spawn(self) -> Self {
        Self { came_up_after: Some(SPAWN_CAME_UP_AFTER), ..self }
    }

    /// Whether a worker that is up counts as stable (it resets its slot's streaks).
    pub fn is_stable(&self, uptime: Duration, ready: bool) -> bool {
        ready && uptime >= self.stable_after
    }

    /// The decision after a start of a slot whose streaks were `streak` ended as `ending`.
    pub fn on_end(&self, streak: Streak, ending: Ending) -> Decision {
        let ending = match ending {
            Ending::Exited { uptime, was_ready: true } if self.came_up_after.is_some_and(|d| uptime < d) => {
                Ending::Exited { uptime, was_ready: false }
            }
            other => other,
        };
        match ending {
            Ending::Exited { uptime, was_ready: true } if self.is_stable(uptime, true) => {
                Decision::Restart { after: Duration::ZERO, streak: Streak::default() }
            }
            Ending::Exited { was_ready: true, .. } => {
                // It came up, so its start did not fail: only the deaths grow.
                let deaths = streak.deaths.saturating_add(1);
                let streak = Streak { failed_starts: 0, deaths, resource_failures: 0 };
                Decision::Restart { after: self.delay(deaths, self.max_after_death), streak }
            }
            Ending::Exited { was_ready: false, .. } => {
                let failed_starts = streak.failed_starts.saturating_add(1);
                if self.crash_loop_limit > 0 && failed_starts >= self.crash_loop_limit {
                    return Decision::GiveUp { failures: failed_starts };
                }
                let streak = Streak { failed_starts, resource_failures: 0, ..streak };
                Decision::Restart { after: self.backoff(failed_starts), streak }
            }
            Ending::Resources => {
                let resource_failures = streak.resource_failures.saturating_add(1);
                let streak = Streak { resource_failures, ..streak };
                Decision::Restart { after: self.delay(resource_failures, self.max_after_resources), streak }
            }
        }
    }

    /// The delay before the restart that follows the `failures`-th consecutive failed start (from 1).
    pub fn backoff(&self, failures: u32) -> Duration {
        self.delay(failures, self.max)
    }

    /// 100 ms × 1.5ⁿ⁻¹ for the `n`-th consecutive failure (from 1), capped at `max`.
    fn delay(&self, n: u32, max: Duration) -> Duration {
        let exponent = n.saturating_sub(1).min(64) as i32;
        let delay = self.initial.as_secs_f64() * self.factor.powi(exponent);
        Duration::from_secs_f64(delay.min(max.as_secs_f64()))
    }
}

/// What to do with a slot whose start ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Start a new worker in the slot after the delay; `streak` is the slot's new count.
    Restart { after: Duration, streak: Streak },
    /// The slot failed to start `failures` times in a row, reaching the limit: stop clusterd
    /// with status 1.
    GiveUp { failures: u32 },
}

impl Decision {
    /// Whether the slot is reported as crash-looping (only failed starts make a crash loop).
    pub fn is_crash_loop(&self) -> bool {
        match *self {
            Decision::Restart { streak, .. } => streak.failed_starts >= CRASH_LOOP_AFTER,
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

    fn exited(ms: u64, was_ready: bool) -> Ending {
        Ending::Exited { uptime: Duration::from_millis(ms), was_ready }
    }

    fn streak(failed_starts: u32, deaths: u32, resource_failures: u32) -> Streak {
        Streak { failed_starts, deaths, resource_failures }
    }

    /// Follows a run of identical endings from a fresh slot until it gives up or `n` ran.
    fn run(p: &RestartPolicy, ending: Ending, n: usize) -> Vec<Decision> {
        let mut s = Streak::default();
        let mut out = Vec::new();
        for _ in 0..n {
            let d = p.on_end(s, ending);
            out.push(d);
            match d {
                Decision::Restart { streak, .. } => s = streak,
                Decision::GiveUp { .. } => break,
            }
        }
        out
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
        assert_eq!(p.backoff(0), Duration::from_millis(100), "0 is treated as the first");
        for n in 1..100 {
            assert!(p.backoff(n) <= p.backoff(n + 1), "monotonic at {n}");
        }
    }

    #[test]
    fn a_stable_run_resets_every_streak_and_restarts_at_once() {
        let p = policy(5);
        for s in [streak(4, 0, 0), streak(0, 9, 0), streak(0, 0, 9), streak(4, 9, 9)] {
            assert_eq!(
                p.on_end(s, exited(10_000, true)),
                Decision::Restart { after: Duration::ZERO, streak: Streak::default() },
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_long_run_that_never_got_ready_is_still_a_failed_start() {
        let p = policy(0);
        assert_eq!(
            p.on_end(Streak::default(), exited(3_600_000, false)),
            Decision::Restart { after: Duration::from_millis(100), streak: streak(1, 0, 0) }
        );
    }

    #[test]
    fn failed_starts_count_up_to_the_limit_then_give_up() {
        let p = policy(3);
        let decisions = run(&p, exited(50, false), 100);
        assert_eq!(
            decisions,
            [
                Decision::Restart { after: Duration::from_millis(100), streak: streak(1, 0, 0) },
                Decision::Restart { after: Duration::from_millis(150), streak: streak(2, 0, 0) },
                Decision::GiveUp { failures: 3 },
            ]
        );
        assert!(!decisions[0].is_crash_loop() && decisions[2].is_crash_loop());
    }

    #[test]
    fn ready_workers_that_keep_dying_never_give_up_whatever_the_limit() {
        for limit in [0, 1, 2, 3, 10] {
            let p = policy(limit);
            let decisions = run(&p, exited(50, true), 1000);
            assert_eq!(decisions.len(), 1000, "limit {limit}: never gives up");
            for (i, d) in decisions.iter().enumerate() {
                let Decision::Restart { after, streak: s } = *d else { panic!("limit {limit}: gave up at {i}") };
                assert_eq!(s, streak(0, i as u32 + 1, 0));
                assert!(after <= MAX_DEATH_BACKOFF && after >= Duration::from_millis(100), "{after:?}");
                assert!(!d.is_crash_loop(), "deaths are not a crash loop");
            }
            let Decision::Restart { after, .. } = decisions[999] else { unreachable!() };
            assert_eq!(after, MAX_DEATH_BACKOFF, "the delay grows to its cap");
        }
        let p = policy(0);
        let afters: Vec<u128> = run(&p, exited(50, true), 4)
            .iter()
            .map(|d| match d {
                Decision::Restart { after, .. } => after.as_millis(),
                Decision::GiveUp { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(afters, [100, 150, 225, 337], "with the same growth as failed starts");
    }

    #[test]
    fn a_death_after_ready_clears_the_failed_starts() {
        let p = policy(3);
        // Two failed starts, then a worker that got ready and died: the start did not fail.
        let d = p.on_end(streak(2, 0, 0), exited(500, true));
        assert_eq!(d, Decision::Restart { after: Duration::from_millis(100), streak: streak(0, 1, 0) });
        // So the next failed start is the first again, not the limit.
        let Decision::Restart { streak: s, .. } = d else { unreachable!() };
        assert!(
            matches!(p.on_end(s, exited(5, false)), Decision::Restart { streak: next, .. } if next == streak(1, 1, 0))
        );
    }

    #[test]
    fn a_failed_start_keeps_the_deaths_and_ends_a_resource_streak() {
        let p = policy(0);
        assert_eq!(
            p.on_end(streak(1, 4, 7), exited(5, false)),
            Decision::Restart { after: Duration::from_millis(150), streak: streak(2, 4, 0) }
        );
    }

    #[test]
    fn resource_failures_are_retried_forever_and_count_toward_nothing_else() {
        for limit in [0, 1, 3] {
            let p = policy(limit);
            let decisions = run(&p, Ending::Resources, 500);
            assert_eq!(decisions.len(), 500, "limit {limit}: never gives up");
            for (i, d) in decisions.iter().enumerate() {
                let Decision::Restart { after, streak: s } = *d else { panic!("gave up at {i}") };
                assert_eq!(s, streak(0, 0, i as u32 + 1));
                assert!(after <= MAX_RESOURCE_BACKOFF);
                assert!(!d.is_crash_loop());
            }
        }
        // A slot that had failed starts keeps them, neither more nor fewer.
        let p = policy(3);
        assert_eq!(
            p.on_end(streak(2, 1, 0), Ending::Resources),
            Decision::Restart { after: Duration::from_millis(100), streak: streak(2, 1, 1) }
        );
        // And a limit reached later is reached by failed starts alone.
        assert_eq!(p.on_end(streak(2, 1, 5), exited(1, false)), Decision::GiveUp { failures: 3 });
    }

    #[test]
    fn limit_zero_never_gives_up() {
        let p = policy(0);
        let d = p.on_end(streak(u32::MAX - 1, 0, 0), exited(0, false));
        assert!(matches!(d, Decision::Restart { after, .. } if after == Duration::from_secs(15)));
        assert!(d.is_crash_loop());
        assert!(matches!(p.on_end(streak(u32::MAX, u32::MAX, u32::MAX), exited(0, false)), Decision::Restart { .. }));
        assert!(matches!(p.on_end(streak(0, u32::MAX, 0), exited(0, true)), Decision::Restart { .. }));
        assert!(matches!(p.on_end(streak(0, 0, u32::MAX), Ending::Resources), Decision::Restart { .. }));
    }

    #[test]
    fn every_ending_from_every_small_streak_is_decided_by_the_rule() {
        // Exhaustive over small streaks and limits: the only way to give up is failed starts
        // reaching a non-zero limit, and every delay stays within its cap.
        for limit in 0..5 {
            let p = policy(limit);
            for f in 0..6 {
                for d in 0..6 {
                    for r in 0..6 {
                        let s = streak(f, d, r);
                        for ending in [exited(0, false), exited(50, true), exited(10_000, true), Ending::Resources] {
                            match p.on_end(s, ending) {
                                Decision::GiveUp { failures } => {
                                    assert_eq!(ending, exited(0, false), "{s:?} {ending:?}");
                                    assert!(limit > 0 && failures == f + 1 && failures >= limit);
                                }
                                Decision::Restart { after, streak: next } => {
                                    assert!(after <= p.max, "{s:?} {ending:?}: {after:?}");
                                    if ending == exited(0, false) {
                                        assert!(limit == 0 || f + 1 < limit);
                                    }
                                    assert!(next.failed_starts <= f + 1);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn with_ready_on_spawn_a_quick_exit_is_a_failed_start_and_a_later_one_a_death() {
        let p = policy(3).ready_on_spawn();
        let quick = Ending::Exited { uptime: SPAWN_CAME_UP_AFTER - Duration::from_millis(1), was_ready: true };
        let later = Ending::Exited { uptime: SPAWN_CAME_UP_AFTER, was_ready: true };
        assert_eq!(run(&p, quick, 100).last(), Some(&Decision::GiveUp { failures: 3 }), "a crash loop");
        assert_eq!(run(&p, later, 100).len(), 100, "a kill storm never gives up");
        assert_eq!(
            p.on_end(Streak::default(), later),
            Decision::Restart { after: Duration::from_millis(100), streak: streak(0, 1, 0) }
        );
        assert_eq!(
            p.on_end(streak(2, 0, 0), exited(10_000, true)),
            Decision::Restart { after: Duration::ZERO, streak: Streak::default() }
        );
        // Without it, readiness is heard, and a quick death is still a death.
        assert_eq!(
            policy(3).on_end(Streak::default(), quick),
            Decision::Restart { after: Duration::from_millis(100), streak: streak(0, 1, 0) }
        );
    }

    #[test]
    fn stability_needs_both_readiness_and_uptime() {
        let p = policy(0);
        assert!(p.is_stable(Duration::from_secs(10), true));
        assert!(!p.is_stable(Duration::from_secs(9), true));
        assert!(!p.is_stable(Duration::from_secs(100), false));
    }
}
