//! The standard `process_*` metrics of clusterd itself, read from `/proc/self` at each scrape.
//!
//! Read here rather than by the `prometheus` crate's process collector, which truncates the CPU
//! time to whole seconds (a `rate()` over a usual window would then be mostly noise).

use prometheus::{Counter, Gauge, IntGauge, Registry};

/// What one `/proc/PID/stat` line says of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub threads: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub resident_pages: u64,
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so the fields are counted from its last `)`.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `fields[0]` is field 3 (state): field N is at N - 3.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The machine's boot time, seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|n| n.trim().parse().ok())
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|&v| v > 0)
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Registers clusterd's `process_*` metrics, as read now, in `registry`. What cannot be read is
/// left out.
pub fn register(registry: &Registry) {
    let int_gauge = |name: &str, help: &str, value: u64| {
        let gauge = IntGauge::new(name, help).expect("a valid gauge");
        gauge.set(gauge_value(value));
        registry.register(Box::new(gauge)).expect("distinct metric names");
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat);
    let ticks = sysconf(libc::_SC_CLK_TCK);
    if let (Some(stat), Some(hz)) = (stat, ticks) {
        let cpu = Counter::new("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
            .expect("a valid counter");
        cpu.inc_by(stat.cpu_ticks as f64 / hz as f64);
        registry.register(Box::new(cpu)).expect("distinct metric names");
        if let Some(boot) = boot_time() {
            let start =
                Gauge::new("process_start_time_seconds", "Start time of the process since unix epoch in seconds.")
                    .expect("a valid gauge");
            start.set(boot as f64 + stat.start_ticks as f64 / hz as f64);
            registry.register(Box::new(start)).expect("distinct metric names");
        }
    }
    if let Some(stat) = stat {
        int_gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", stat.virtual_bytes);
        let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
        int_gauge("process_resident_memory_bytes", "Resident memory size in bytes.", stat.resident_pages * page);
        int_gauge("process_threads", "Number of OS threads in the process.", stat.threads);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // Less the one the listing itself holds open.
        let open = fds.count().saturating_sub(1) as u64;
        int_gauge("process_open_fds", "Number of open file descriptors.", open);
    }
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        int_gauge("process_max_fds", "Maximum number of open file descriptors.", soft);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 125 0 0 20 0 3 0 98765 \
                    160796672 3920 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).expect("a stat line");
        assert_eq!(
            stat,
            Stat { cpu_ticks: 375, threads: 3, start_ticks: 98765, virtual_bytes: 160796672, resident_pages: 3920 }
        );
        assert_eq!(parse_stat("4242 (cut) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own).is_some_and(|s| s.threads >= 1 && s.resident_pages > 0), "{own}");
    }
}
