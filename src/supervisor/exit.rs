//! How a worker ended, in words an operator can act on.

use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

/// Why clusterd itself signalled a worker, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillReason {
    /// Drained for a stop (SIGTERM, then SIGKILL after the grace time).
    Stop,
    /// It did not report ready within `--ready-timeout`.
    ReadyTimeout,
    /// It sent no heartbeat within `--heartbeat-timeout`.
    HeartbeatTimeout,
    /// It broke the protocol (garbage, oversized frame, wrong version).
    Protocol(String),
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stop => f.write_str("stopped by clusterd"),
            Self::ReadyTimeout => f.write_str("not ready within --ready-timeout"),
            Self::HeartbeatTimeout => f.write_str("no heartbeat within --heartbeat-timeout"),
            Self::Protocol(why) => write!(f, "protocol violation: {why}"),
        }
    }
}

/// The raw end of a process, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Code(i32),
    Signal { signal: Signal, core_dumped: bool },
}

impl Status {
    pub fn from_wait(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(Self::Code(code)),
            WaitStatus::Signaled(_, signal, core_dumped) => Some(Self::Signal { signal, core_dumped }),
            _ => None,
        }
    }
}

/// Everything known about a worker's end.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitInfo {
    pub status: Status,
    pub uptime: Duration,
    pub was_ready: bool,
    /// Set when clusterd asked the worker to go (and why).
    pub killed_by_clusterd: Option<KillReason>,
    /// SIGKILL that clusterd did not send, while the cgroup's OOM-kill counter went up.
    pub oom_evidence: bool,
}

impl ExitInfo {
    /// Why a restart that follows this end happens, as one word of a fixed set (the `reason`
    /// label of `clusterd_worker_restarts_total`, `restart_reasons` in `status`): `exited` (code
    /// 0) and `failed` (another code) on its own, `signal` (a signal clusterd did not send),
    /// `oom` (SIGKILL while the cgroup counted an OOM kill), or what clusterd killed it for.
    pub fn restart_reason(&self) -> &'static str {
        match (&self.killed_by_clusterd, self.status) {
            (Some(KillReason::ReadyTimeout), _) => "ready_timeout",
            (Some(KillReason::HeartbeatTimeout), _) => "heartbeat",
            (Some(KillReason::Protocol(_)), _) => "protocol",
            (Some(KillReason::Stop), _) => "stopped",
            (None, Status::Code(0)) => "exited",
            (None, Status::Code(_)) => "failed",
            (None, Status::Signal { .. }) if self.oom_evidence => "oom",
            (None, Status::Signal { .. }) => "signal",
        }
    }
}

/// The reason of a restart after a process that could not be started at all.
pub const START_FAILED: &str = "start_failed";

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Status::Code(code) => write!(f, "exited with code {code}")?,
            Status::Signal { signal, core_dumped } => {
                write!(f, "killed by {}", signal.as_str())?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
            }
        }
        write!(f, " after {:.1?}", self.uptime)?;
        if let Some(reason) = &self.killed_by_clusterd {
            write!(f, "; {reason}")?;
        } else if self.status == (Status::Signal { signal: Signal::SIGKILL, core_dumped: false }) {
            if self.oom_evidence {
                f.write_str("; the kernel OOM killer killed a process in clusterd's cgroup just now")?;
            } else {
                f.write_str("; not sent by clusterd: an operator, or the kernel OOM killer (see dmesg)")?;
            }
        }
        Ok(())
    }
}

/// The number of OOM kills in clusterd's memory cgroup (v2 `memory.events`, v1
/// `memory.oom_control`), when the kernel tells.
pub fn oom_kill_count() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.events")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.oom_control")
        } else {
            continue;
        };
        if let Some(count) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())))
        {
            return Some(count);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(status: Status, killed: Option<KillReason>, oom: bool) -> String {
        ExitInfo {
            status,
            uptime: Duration::from_millis(1500),
            was_ready: true,
            killed_by_clusterd: killed,
            oom_evidence: oom,
        }
        .to_string()
    }

    #[test]
    fn describes_codes_signals_and_oom_hints() {
        assert_eq!(info(Status::Code(3), None, false), "exited with code 3 after 1.5s");
        let kill = Status::Signal { signal: Signal::SIGKILL, core_dumped: false };
        assert!(info(kill, None, false).contains("an operator, or the kernel OOM killer"));
        assert!(info(kill, None, true).contains("OOM killer killed"));
        assert!(info(kill, Some(KillReason::ReadyTimeout), false).ends_with("not ready within --ready-timeout"));
        let segv = Status::Signal { signal: Signal::SIGSEGV, core_dumped: true };
        assert_eq!(info(segv, None, false), "killed by SIGSEGV (core dumped) after 1.5s");
    }
}
