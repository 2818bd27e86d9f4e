//! Supervisor benchmark: drives the real release binaries `clusterd` and `clusterd-test-worker`
//! from the outside, as an operator would, and prints a Markdown table.
//!
//! Run it with `cargo bench --bench supervisor`. Cargo builds the package's binaries before its
//! benches (that is what makes `CARGO_BIN_EXE_*` available to them), so they are always fresh; the
//! bench finds them next to its own directory (`target/release/deps/..`).
//!
//! What is measured, and why:
//!
//! 1. **Restart latency**, the time a slot is without a ready worker after a crash. clusterd runs
//!    2 workers with `--stable-after 0s`; the bench SIGKILLs worker 0 thirty times and times each
//!    kill until the control socket's `status` shows slot 0 with a new pid in state `ready`. With
//!    `--stable-after 0s` every worker that was ready counts as stable, so the restart policy
//!    (`src/supervisor/policy.rs`) restarts it with no backoff: there is no deliberate delay to
//!    subtract, and the figure is all mechanism (reap, decide, fork/exec, the worker's start-up,
//!    its hello and ready frames). The status is polled with a 1 ms pause between requests, so a
//!    figure is late by up to 1 ms plus a status round trip, which is also reported.
//! 2. **A baseline for that latency**: the same test worker binary started directly by the bench
//!    (no `CLUSTERD_*` variables), timed from spawn to its first stdout line, which it prints as
//!    soon as its Tokio runtime is up (it then fails to find clusterd and exits 3). The difference
//!    of the medians is reported as clusterd's overhead; it includes the polling resolution and the
//!    SDK handshake, so it is an upper bound on what clusterd itself adds.
//! 3. **Idle cost**: clusterd with 8 ready workers and nothing to do, over a 10 s window: its own
//!    CPU time (utime + stime from `/proc/<pid>/stat`, in clock ticks, plus the higher-resolution
//!    per-thread run time from `/proc/<pid>/task/*/schedstat`) and its memory (`VmRSS`, `VmHWM`).
//!    Heartbeats stay at their default (every 10 s, a third of the 30 s heartbeat timeout), so the
//!    window holds about one heartbeat per worker: the steady state of an idle cluster. The
//!    control socket is not touched during the window.
//!
//! Everything is local: a private temporary directory for the control socket and clusterd's log,
//! loopback only. Every wait has a timeout and clusterd is always stopped with SIGTERM (SIGKILL if
//! it does not exit in time), also when the bench panics.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Process, Row};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Kills of worker 0 that are timed.
const RESTARTS: usize = 30;
/// Direct starts of the test worker that are timed, after [`WARM_UP`] untimed ones.
const BASELINE_RUNS: usize = 30;
const WARM_UP: usize = 3;
/// Status requests timed back to back to give the polling resolution.
const ROUND_TRIPS: usize = 100;
/// The pause between two status polls.
const POLL_EVERY: Duration = Duration::from_millis(1);
/// The pause after a replacement is ready before the next kill.
const BETWEEN_KILLS: Duration = Duration::from_millis(50);
const IDLE_WORKERS: usize = 8;
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Time given to the start-up's aftermath before the idle window opens.
const SETTLE: Duration = Duration::from_secs(1);

const START_TIMEOUT: Duration = Duration::from_secs(15);
const RESTART_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let bins = Binaries::locate();
    let started = Instant::now();
    let restart = measure_restarts(&bins);
    let baseline = measure_baseline(&bins.worker);
    let idle = measure_idle(&bins);
    report(&restart, &baseline, &idle, started.elapsed());
}

/// The two release binaries under test.
struct Binaries {
    clusterd: PathBuf,
    worker: PathBuf,
}

impl Binaries {
    fn locate() -> Self {
        let dir = common::target_dir();
        let find = |name: &str| common::binary(&dir, "supervisor", name);
        Self { clusterd: find("clusterd"), worker: find("clusterd-test-worker") }
    }
}

/// A running clusterd; stopped on drop if [`Process::stop`] was not called (a panic).
struct Cluster {
    process: Process,
    socket: PathBuf,
    // Last, so that it is removed after clusterd has stopped.
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(bins: &Binaries, workers: usize, options: &[&str]) -> Self {
        let (dir, socket, log) = common::scratch("clusterd-bench-", "clusterd.log");
        let mut args: Vec<String> = vec!["--workers".into(), workers.to_string()];
        args.extend(["--control".into(), socket.display().to_string()]);
        args.extend(options.iter().map(|o| (*o).to_owned()));
        args.extend(["--".into(), bins.worker.display().to_string()]);
        let mut command = Command::new(&bins.clusterd);
        command.args(&args);
        common::log_to(&mut command, &log, "clusterd");
        common::clean_env(&mut command, |_| false);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bins.clusterd.display()));
        let command = format!("RUST_LOG=info {} {}", bins.clusterd.display(), args.join(" "));
        Self { process: Process::new("clusterd", child, log, command, false), socket, _dir: dir }
    }

    /// One `status` request; the worker rows of the reply.
    fn status(&self) -> Result<Vec<Row>, String> {
        common::status(&self.socket).map(|s| s.workers)
    }

    /// Polls `status` every [`POLL_EVERY`] until `count` workers are ready; panics after `timeout`.
    fn wait_for(&mut self, timeout: Duration, what: &str, count: usize) -> Vec<Row> {
        common::wait_for_status(&mut self.process, &self.socket, (timeout, POLL_EVERY), what, |s| s.all_ready(count))
            .workers
    }
}

/// The row of slot `id`.
fn slot(rows: &[Row], id: u64) -> Option<&Row> {
    rows.iter().find(|r| r.id == id)
}

struct Restarts {
    command: String,
    /// Kill → slot 0 shows a new pid in state `ready`.
    ready: Vec<Duration>,
    /// Kill → the status no longer shows the killed pid (reaped).
    gone: Vec<Duration>,
    /// Kill → the status shows the new pid (forked and registered).
    spawned: Vec<Duration>,
    polls: Vec<usize>,
    round_trip: Vec<Duration>,
    exit: Option<ExitStatus>,
}

fn measure_restarts(bins: &Binaries) -> Restarts {
    let mut cluster = Cluster::start(bins, 2, &["--stable-after", "0s"]);
    let mut rows = cluster.wait_for(START_TIMEOUT, "both workers to be ready", 2);
    let round_trip = (0..ROUND_TRIPS)
        .map(|_| {
            let t0 = Instant::now();
            if let Err(error) = cluster.status() {
                cluster.process.fail(&format!("status request failed: {error}"));
            }
            t0.elapsed()
        })
        .collect();
    let mut result = Restarts {
        command: cluster.process.command.clone(),
        ready: Vec::new(),
        gone: Vec::new(),
        spawned: Vec::new(),
        polls: Vec::new(),
        round_trip,
        exit: None,
    };
    for round in 1..=RESTARTS {
        let old = slot(&rows, 0).and_then(|r| r.pid).expect("slot 0 has a pid");
        let target = Pid::from_raw(i32::try_from(old).expect("pid out of range"));
        let t0 = Instant::now();
        if let Err(errno) = kill(target, Signal::SIGKILL) {
            cluster.process.fail(&format!("cannot SIGKILL worker 0 (pid {old}): {errno}"));
        }
        let deadline = t0 + RESTART_TIMEOUT;
        let (mut gone, mut spawned, mut polls) = (None, None, 0);
        loop {
            polls += 1;
            let now = cluster.status();
            let at = t0.elapsed();
            match now.as_deref().map(|r| slot(r, 0)) {
                Ok(Some(w)) => {
                    if w.pid != Some(old) {
                        gone.get_or_insert(at);
                    }
                    if w.pid.is_some_and(|p| p != old) {
                        spawned.get_or_insert(at);
                        if w.state == "ready" {
                            result.ready.push(at);
                            break;
                        }
                    }
                }
                Ok(None) => cluster.process.fail("the status has no slot 0"),
                Err(error) => cluster.process.fail(&format!("restart {round}: status failed: {error}")),
            }
            if Instant::now() >= deadline {
                cluster.process.fail(&format!(
                    "restart {round}: slot 0 had no new ready worker {RESTART_TIMEOUT:?} after \
                     SIGKILL of pid {old}; last: {now:?}"
                ));
            }
            thread::sleep(POLL_EVERY);
        }
        result.gone.extend(gone);
        result.spawned.extend(spawned);
        result.polls.push(polls);
        thread::sleep(BETWEEN_KILLS);
        rows = cluster.wait_for(RESTART_TIMEOUT, "both workers to be ready again", 2);
    }
    result.exit = cluster.process.stop();
    result
}

/// Starts the test worker directly, outside clusterd, and times spawn → first stdout line.
fn measure_baseline(worker: &Path) -> Vec<Duration> {
    (0..WARM_UP + BASELINE_RUNS).map(|_| first_line(worker)).skip(WARM_UP).collect()
}

fn first_line(worker: &Path) -> Duration {
    let mut command = Command::new(worker);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    common::clean_env(&mut command, |_| false);
    let t0 = Instant::now();
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", worker.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        let _ = tx.send((Instant::now(), read.map(|_| line)));
        // Keep the pipe drained until the worker exits.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let outcome = rx.recv_timeout(FIRST_LINE_TIMEOUT);
    let status = match &outcome {
        Ok(_) => common::wait_timeout(&mut child, FIRST_LINE_TIMEOUT),
        Err(_) => None,
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = reader.join();
    let (at, line) = match outcome {
        Ok((at, Ok(line))) => (at, line),
        Ok((_, Err(error))) => panic!("cannot read the test worker's first line: {error}"),
        Err(_) => panic!("the test worker printed no line within {FIRST_LINE_TIMEOUT:?}"),
    };
    assert!(line.starts_with("test-worker id="), "unexpected first line {line:?}");
    let status =
        status.unwrap_or_else(|| panic!("the test worker did not exit within {FIRST_LINE_TIMEOUT:?} without clusterd"));
    assert_eq!(status.code(), Some(3), "the test worker without clusterd should exit 3");
    at - t0
}

struct Idle {
    command: String,
    window: Duration,
    ticks: u64,
    clock_ticks_per_s: u64,
    run_ns: Option<u64>,
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    exit: Option<ExitStatus>,
}

fn measure_idle(bins: &Binaries) -> Idle {
    let mut cluster = Cluster::start(bins, IDLE_WORKERS, &[]);
    let what = format!("all {IDLE_WORKERS} workers to be ready");
    let rows = cluster.wait_for(START_TIMEOUT, &what, IDLE_WORKERS);
    thread::sleep(SETTLE);
    let pid = cluster.process.pid;
    let (ticks_before, run_before) = (common::cpu_ticks(pid), common::run_ns(pid));
    let t0 = Instant::now();
    thread::sleep(IDLE_WINDOW);
    let (ticks_after, run_after) = (common::cpu_ticks(pid), common::run_ns(pid));
    let window = t0.elapsed();
    let [rss_kib, hwm_kib, threads] = common::proc_status(pid, ["VmRSS", "VmHWM", "Threads"]);
    let after = cluster.status().unwrap_or_else(|e| cluster.process.fail(&format!("status failed: {e}")));
    if after != rows {
        cluster.process.fail(&format!("workers changed during the idle window: {rows:?} → {after:?}"));
    }
    let exit = cluster.process.stop();
    Idle {
        command: cluster.process.command.clone(),
        window,
        ticks: ticks_after - ticks_before,
        clock_ticks_per_s: common::clock_ticks_per_second(),
        run_ns: run_before.zip(run_after).map(|(b, a)| a.saturating_sub(b)),
        rss_kib,
        hwm_kib,
        threads,
        exit,
    }
}

/// Nearest-rank percentile of a sorted sample.
fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted<T: Copy + Ord>(sample: &[T]) -> Vec<T> {
    let mut sample = sample.to_vec();
    sample.sort_unstable();
    sample
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(restart: &Restarts, baseline: &[Duration], idle: &Idle, took: Duration) {
    let ready = sorted(&restart.ready);
    let base = sorted(baseline);
    let gone = sorted(&restart.gone);
    let spawned = sorted(&restart.spawned);
    let round_trip = sorted(&restart.round_trip);
    let polls = sorted(&restart.polls);
    let (p50, p95, max) = (percentile(&ready, 50.0), percentile(&ready, 95.0), ready[ready.len() - 1]);
    let base_p50 = percentile(&base, 50.0);
    let overhead = ms(p50) - ms(base_p50);
    let window = idle.window.as_secs_f64();
    let tick_pct = idle.ticks as f64 / idle.clock_ticks_per_s as f64 / window * 100.0;
    let tick_resolution = 100.0 / idle.clock_ticks_per_s as f64 / window;

    println!();
    println!("## clusterd supervisor benchmark");
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!(
        "| kill → replacement ready, 2 workers (n={}): p50 / p95 / max | {:.2} / {:.2} / {:.2} ms |",
        ready.len(),
        ms(p50),
        ms(p95),
        ms(max)
    );
    println!(
        "| … of which kill → old pid gone / → new pid seen (p50, same polling) | {:.2} / {:.2} ms |",
        ms(percentile(&gone, 50.0)),
        ms(percentile(&spawned, 50.0))
    );
    println!(
        "| test worker started directly, spawn → first line (n={}): p50 / p95 | {:.2} / {:.2} ms |",
        base.len(),
        ms(base_p50),
        ms(percentile(&base, 95.0))
    );
    println!("| clusterd's overhead (difference of the p50s, restart backoff 0) | {overhead:.2} ms |");
    println!(
        "| status round trip (n={}): p50 / max; polls per restart p50 | {:.3} / {:.3} ms; {} |",
        round_trip.len(),
        ms(percentile(&round_trip, 50.0)),
        ms(round_trip[round_trip.len() - 1]),
        percentile(&polls, 50.0)
    );
    // Zero ticks means less than one tick in the window, not no CPU at all.
    let tick_figure = if idle.ticks == 0 { format!("< {tick_resolution:.2}") } else { format!("{tick_pct:.2}") };
    println!(
        "| idle CPU, {IDLE_WORKERS} ready workers, {window:.1} s window (utime+stime) | {tick_figure} % of one core \
         ({} ticks at {} Hz; resolution {tick_resolution:.2} %) |",
        idle.ticks, idle.clock_ticks_per_s
    );
    match idle.run_ns {
        Some(ns) => println!(
            "| idle CPU, same window (schedstat run time, live threads) | {:.3} % of one core ({:.2} ms) |",
            ns as f64 / 1e9 / window * 100.0,
            ns as f64 / 1e6
        ),
        None => println!("| idle CPU, same window (schedstat run time) | n/a (no schedstat) |"),
    }
    println!(
        "| clusterd memory, {IDLE_WORKERS} workers: VmRSS / VmHWM; threads | {:.1} / {:.1} MiB; {} |",
        common::mib(idle.rss_kib),
        common::mib(idle.hwm_kib),
        idle.threads
    );
    println!();
    println!("Notes:");
    println!(
        "- Restart: `--stable-after 0s` makes every ready worker stable, so the policy restarts it \
         at once (no backoff to subtract). Status is polled with a {} ms pause between requests, so \
         each figure is late by up to {} ms plus a round trip; the overhead also includes the \
         worker's SDK handshake.",
        POLL_EVERY.as_millis(),
        POLL_EVERY.as_millis()
    );
    println!(
        "- Idle: default heartbeats (every 10 s), so about one per worker falls in the window; the \
         control socket is not used during it. Window opened {} s after all were ready.",
        SETTLE.as_secs()
    );
    println!(
        "- clusterd exit status after SIGTERM: restart run {}, idle run {}.",
        common::describe(restart.exit),
        common::describe(idle.exit)
    );
    println!("- Whole bench: {:.1} s.", took.as_secs_f64());
    println!();
    println!("Commands:");
    println!();
    println!("```");
    println!("cargo bench --bench supervisor");
    println!("{}", restart.command);
    println!("{}", idle.command);
    println!("```");
}
