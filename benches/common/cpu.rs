//! CPU accounting over a load: the server's primary and workers, the load generator (this thread,
//! or the children the bench waited for), and the rest of the machine.

use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

/// CPU seconds over a load: the primary, each worker, the load generator, the rest of the
/// machine and the whole machine busy; and the wall time.
#[derive(Debug, Default, Clone)]
pub struct Cpu {
    pub primary: f64,
    pub workers: Vec<f64>,
    pub load: f64,
    pub other: f64,
    /// The part of [`Cpu::other`] the hypervisor took (`steal`): not this machine's processes.
    pub steal: f64,
    /// Busy time of the whole machine.
    pub busy: f64,
    pub seconds: f64,
}

impl Cpu {
    /// Share of one core, in %.
    pub fn pct(&self, seconds: f64) -> f64 {
        if self.seconds > 0.0 { seconds / self.seconds * 100.0 } else { 0.0 }
    }

    /// The server's (primary and workers) CPU seconds.
    pub fn server(&self) -> f64 {
        self.primary + self.workers.iter().sum::<f64>()
    }
}

/// Where the load generator runs, for [`CpuSample::until`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadIn {
    /// This thread (the bench's own clients).
    Thread,
    /// The bench's children that have been waited for (wrk and the like).
    Children,
    /// A process still running, given to [`CpuSample::with_load`].
    Process,
}

/// The counters a [`Cpu`] is the difference of.
pub struct CpuSample {
    at: Instant,
    primary: u64,
    workers: Vec<u64>,
    children: Duration,
    thread: Duration,
    /// CPU ticks of the load generator's process ([`LoadIn::Process`]).
    load_ticks: u64,
    /// Busy and total jiffies of the machine, and the stolen ones.
    machine: (u64, u64),
    steal: u64,
}

impl CpuSample {
    pub fn take(primary: i32, workers: &[i32]) -> Self {
        Self {
            at: Instant::now(),
            primary: super::cpu_ticks_or_0(primary),
            workers: workers.iter().map(|&w| super::cpu_ticks_or_0(w)).collect(),
            children: super::children_cpu(),
            thread: thread_cpu(),
            load_ticks: 0,
            machine: super::machine_jiffies(),
            steal: super::steal_jiffies(),
        }
    }

    /// As [`CpuSample::take`], with the load generator's process `load` (for [`LoadIn::Process`]).
    pub fn with_load(primary: i32, workers: &[i32], load: i32) -> Self {
        Self { load_ticks: super::cpu_ticks_or_0(load), ..Self::take(primary, workers) }
    }

    /// From `self` to `later`; the load is counted where `load` says.
    pub fn until(&self, later: &Self, load: LoadIn) -> Cpu {
        let hz = super::clock_ticks_per_second() as f64;
        let ticks = |a: u64, b: u64| a.saturating_sub(b) as f64 / hz;
        let primary = ticks(later.primary, self.primary);
        let workers: Vec<f64> = later.workers.iter().zip(&self.workers).map(|(a, b)| ticks(*a, *b)).collect();
        let load = match load {
            LoadIn::Thread => later.thread.saturating_sub(self.thread),
            LoadIn::Children => later.children.saturating_sub(self.children),
            LoadIn::Process => Duration::from_secs_f64(ticks(later.load_ticks, self.load_ticks)),
        }
        .as_secs_f64();
        let busy = ticks(later.machine.0, self.machine.0);
        Cpu {
            primary,
            other: (busy - primary - workers.iter().sum::<f64>() - load).max(0.0),
            steal: ticks(later.steal, self.steal),
            workers,
            load,
            busy,
            seconds: later.at.duration_since(self.at).as_secs_f64(),
        }
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage(RUSAGE_THREAD) failed");
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0).unsigned_abs()) + Duration::from_micros(t.tv_usec().max(0).unsigned_abs())
    };
    time(usage.user_time()) + time(usage.system_time())
}

/// The CPUs online (the `/proc/stat` figures cover them all).
pub fn cores_online() -> f64 {
    // SAFETY: sysconf reads a system constant; it has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as f64 } else { 1.0 }
}
