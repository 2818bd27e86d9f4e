//! Health checks and recycling, the pure part: what a health check's answer means, when a worker
//! has failed enough checks, the jitter of the recycling limits, and why a worker is replaced.
//! No sockets, no clock: the worker task (`worker.rs`) does the I/O and applies these decisions,
//! and the dispatcher (`recycle.rs`) replaces the worker.

use std::time::Duration;

use crate::duration::show;

/// The most bytes of a health check's answer clusterd reads: its status line must fit.
pub const MAX_HEALTH_ANSWER: usize = 4096;

/// How often the memory of each worker is read (`--max-memory`).
pub const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the bytes of a health check's answer say so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The status line is not complete yet: read more.
    Incomplete,
    /// A 2xx status.
    Healthy,
    /// A well-formed status line with another status.
    Status(u16),
    /// Not an HTTP/1.x status line.
    Garbage,
}

/// Reads the status line of an HTTP/1.x answer (`HTTP/1.1 200 OK\r\n`).
pub fn read_answer(bytes: &[u8]) -> Answer {
    const PREFIX: &[u8] = b"HTTP/1.";
    let shown = bytes.len().min(PREFIX.len());
    if bytes[..shown] != PREFIX[..shown] {
        return Answer::Garbage;
    }
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= MAX_HEALTH_ANSWER { Answer::Garbage } else { Answer::Incomplete };
    };
    let line = &bytes[..end];
    // `HTTP/1.x NNN` then a space (and a reason) or the end of the line.
    if line.len() < 12 || !matches!(line[7], b'0' | b'1') || line[8] != b' ' {
        return Answer::Garbage;
    }
    let digits = &line[9..12];
    if !digits.iter().all(u8::is_ascii_digit) || !matches!(line.get(12), None | Some(b' ' | b'\r')) {
        return Answer::Garbage;
    }
    let code = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match code {
        200..=299 => Answer::Healthy,
        100..=599 => Answer::Status(code),
        _ => Answer::Garbage,
    }
}

/// Counts a worker's consecutive failed health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthTracker {
    pub consecutive: u32,
}

impl HealthTracker {
    /// Records one check: `Err(why)` for a failure. Returns the reason to replace the worker when
    /// this failure is the `limit`-th in a row (the count then starts again, so a worker that is
    /// still there after its replacement failed is reported again `limit` checks later).
    pub fn record(&mut self, result: Result<(), String>, limit: u32) -> Option<Reason> {
        match result {
            Ok(()) => {
                self.consecutive = 0;
                None
            }
            Err(last) => {
                self.consecutive += 1;
                if self.consecutive < limit.max(1) {
                    return None;
                }
                let failures = self.consecutive;
                self.consecutive = 0;
                Some(Reason::Health { failures, last })
            }
        }
    }
}

/// Why a worker is replaced while it still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// It failed `failures` health checks in a row.
    Health { failures: u32, last: String },
    /// The RSS of its process tree went over `--max-memory`.
    Memory { rss: u64, limit: u64 },
    /// It ran its (jittered) `--max-lifetime`.
    Lifetime { limit: Duration },
    /// It was handed its (jittered) `--max-connections`.
    Connections { limit: u64 },
}

impl Reason {
    /// The reason's kind, as `status --json` counts it and the metrics will label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Health { .. } => "health",
            Reason::Memory { .. } => "memory",
            Reason::Lifetime { .. } => "lifetime",
            Reason::Connections { .. } => "connections",
        }
    }

    /// A failing worker is taken out of the balancer at once; a recycled one serves until its
    /// successor is ready.
    pub fn is_failure(&self) -> bool {
        matches!(self, Reason::Health { .. })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Health { failures, last } => write!(f, "failed {failures} health checks in a row (last: {last})"),
            Reason::Memory { rss, limit } => {
                write!(f, "recycled: memory {} over --max-memory {}", mib(*rss), mib(*limit))
            }
            Reason::Lifetime { limit } => write!(f, "recycled: ran its lifetime of {}", show(*limit)),
            Reason::Connections { limit } => write!(f, "recycled: was handed its {limit} connections"),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `base` lowered by a pseudo-random share of at most `jitter` (0 to 1) of it, drawn from
/// `seed`: in `[base − ⌊base × jitter⌋, base]`. The limit stays a maximum, and workers started
/// together (different seeds) reach theirs at different times.
pub fn jittered(base: u64, jitter: f64, seed: u64) -> u64 {
    let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
    let span = (base as f64 * jitter) as u64;
    if span == 0 {
        return base;
    }
    base - splitmix64(seed) % (span + 1)
}

/// [`jittered`] for a duration, to the millisecond.
pub fn jittered_duration(base: Duration, jitter: f64, seed: u64) -> Duration {
    let ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(jittered(ms, jitter, seed))
}

/// A well-mixed 64-bit value from a seed (Vigna's splitmix64 finalizer).
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The health check request for `path` (already validated: printable ASCII, no spaces).
pub fn health_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: clusterd\r\nUser-Agent: clusterd-health-check\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(read_answer(b"HTTP/1.1 200 OK\r\n"), Answer::Healthy);
        assert_eq!(read_answer(b"HTTP/1.0 204\r\n"), Answer::Healthy);
        assert_eq!(read_answer(b"HTTP/1.1 299 x\n"), Answer::Healthy);
        assert_eq!(read_answer(b"HTTP/1.1 503 Service Unavailable\r\n"), Answer::Status(503));
        assert_eq!(read_answer(b"HTTP/1.1 301 Moved\r\n"), Answer::Status(301));
        for partial in [&b""[..], b"H", b"HTTP/1.", b"HTTP/1.1 2", b"HTTP/1.1 200 OK"] {
            assert_eq!(read_answer(partial), Answer::Incomplete, "{partial:?}");
        }
        for garbage in [
            &b"garbage\r\n"[..],
            b"\x00\x01",
            b"HTTP/2 200\r\n",
            b"HTTP/1.1 20\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 abc OK\r\n",
            b"HTTP/1.1  200 OK\r\n",
            b"HTTP/1.1 099 x\r\n",
            b"HTTP/1.1 600 x\r\n",
            b"SSH-2.0-OpenSSH\r\n",
        ] {
            assert_eq!(read_answer(garbage), Answer::Garbage, "{garbage:?}");
        }
        let mut long = b"HTTP/1.1 200".to_vec();
        long.resize(MAX_HEALTH_ANSWER, b'x');
        assert_eq!(read_answer(&long), Answer::Garbage, "a status line past the bound");
    }

    #[test]
    fn the_nth_failure_in_a_row_replaces_and_a_success_resets() {
        let mut t = HealthTracker::default();
        let fail = || Err("timeout".to_owned());
        assert_eq!(t.record(fail(), 3), None);
        assert_eq!(t.record(fail(), 3), None);
        assert_eq!(t.record(Ok(()), 3), None);
        assert_eq!(t.record(fail(), 3), None);
        assert_eq!(t.record(fail(), 3), None);
        assert_eq!(t.record(fail(), 3), Some(Reason::Health { failures: 3, last: "timeout".into() }));
        assert_eq!(t.consecutive, 0, "counts again from zero");
        assert_eq!(t.record(fail(), 1), Some(Reason::Health { failures: 1, last: "timeout".into() }));
        assert_eq!(t.record(fail(), 0), Some(Reason::Health { failures: 1, last: "timeout".into() }), "0 acts as 1");
    }

    #[test]
    fn jitter_stays_in_its_range_and_spreads() {
        for base in [0u64, 1, 9, 10, 100, 1000, 3000, 1 << 40] {
            for jitter in [0.0, 0.05, 0.1, 0.5, 1.0] {
                let span = (base as f64 * jitter) as u64;
                for seed in 0..2000 {
                    let v = jittered(base, jitter, seed);
                    assert!(v <= base && v >= base - span, "base {base} jitter {jitter} seed {seed}: {v}");
                }
            }
        }
        assert_eq!(jittered(1000, 0.0, 7), 1000, "no jitter, no change");
        assert_eq!(jittered(1000, f64::NAN, 7), 1000);
        assert!(jittered(1000, 5.0, 7) <= 1000, "clamped to the base");
        // Pure: the same seed, the same value.
        assert_eq!(jittered(3000, 0.1, 42), jittered(3000, 0.1, 42));
        // Spread: consecutive seeds (incarnations) land on many values, at both ends of the range.
        let values: std::collections::BTreeSet<u64> = (0..1000).map(|s| jittered(3000, 0.1, s)).collect();
        assert!(values.len() > 250, "only {} distinct values", values.len());
        assert!(*values.first().unwrap_or(&0) < 2710 && *values.last().unwrap_or(&0) > 2990, "{values:?}");
        let d = jittered_duration(Duration::from_secs(3), 0.1, 1);
        assert!(d >= Duration::from_millis(2700) && d <= Duration::from_secs(3), "{d:?}");
    }

    #[test]
    fn reasons_read_well() {
        let r = Reason::Memory { rss: 300 * 1024 * 1024, limit: 256 * 1024 * 1024 };
        assert_eq!(r.to_string(), "recycled: memory 300.0 MiB over --max-memory 256.0 MiB");
        assert_eq!(r.kind(), "memory");
        assert!(!r.is_failure());
        let h = Reason::Health { failures: 3, last: "no answer within 2s".into() };
        assert_eq!(h.to_string(), "failed 3 health checks in a row (last: no answer within 2s)");
        assert!(h.is_failure());
        assert_eq!(
            String::from_utf8_lossy(&health_request("/healthz")),
            "GET /healthz HTTP/1.1\r\nHost: clusterd\r\nUser-Agent: clusterd-health-check\r\nConnection: close\r\n\r\n"
        );
    }
}
