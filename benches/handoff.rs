//! Connection handoff benchmark: the `hello` axum server behind `clusterd --listen` (clusterd
//! accepts, reads the request line, passes the socket to a worker over SCM_RIGHTS) against the same
//! app accepting on the port itself (`examples/hello_direct.rs`), loaded by `wrk` over loopback.
//! It prints a Markdown table.
//!
//! Run it with `cargo build --release --workspace --bins --examples && cargo bench --bench handoff`. Cargo
//! builds the package's binaries before its benches, so `clusterd` is fresh, but it does not build
//! examples: the bench finds `target/release/examples/{hello,hello_direct}` and stops with a clear
//! message when they are missing (and warns when one is older than its sources). It needs `wrk`
//! (Debian package `wrk`) in `PATH`.
//!
//! What is measured, in one run, interleaved (for each round: new-connection direct, clusterd,
//! clusterd with `--metrics`, then keep-alive direct, clusterd; [`ROUNDS`] rounds), each wrk run
//! against a freshly started server on a fresh loopback port:
//!
//! 1. **New connection per request**: `wrk -t2 -c64 -d5s -H 'Connection: close'`, so every request
//!    is one accept, and with clusterd one handoff. `hello_direct` runs a 2-thread Tokio runtime;
//!    clusterd runs 2 `hello` workers (each a multi-thread Tokio runtime).
//!    The same with `--metrics` on: every handoff counted and timed into `clusterd_handoff_seconds`
//!    (the goal: within 3 % of clusterd without it).
//! 2. **Keep-alive**: `wrk -t2 -c64 -d5s`: 64 connections handed off once, then requests go straight
//!    from wrk to the workers; clusterd should cost nothing here.
//! 3. **clusterd's own cost**: its CPU time during each run (utime + stime from `/proc/<pid>/stat`,
//!    and the finer per-thread `schedstat` run time), divided by the requests wrk completed: in the
//!    new-connection runs that is the CPU per handed-off connection. Its memory (`VmRSS`, `VmHWM`)
//!    after each clusterd run. The CPU of the other processes is reported too (the workers, the
//!    direct server, wrk itself, the whole machine), to show where the time goes on a machine
//!    where the load generator shares the cores with the server.
//!
//! Before a run, clusterd's `status` must show every worker ready, and one plain GET through the
//! port must answer 200 with the example's body from the expected process. wrk's `Requests/sec`,
//! its request count, `Non-2xx or 3xx responses` and `Socket errors` are read; every error is shown
//! in the per-run table and called out under it. Everything is loopback; every wait has a timeout;
//! every process the bench starts is stopped (SIGTERM, then SIGKILL), also when it panics, and gets
//! SIGTERM from the kernel if the bench itself is killed.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Process, Row, WRK_CONNECTIONS, WRK_SECONDS, WRK_THREADS, WrkResult};

/// A/B rounds of each test.
const ROUNDS: usize = 3;
/// clusterd's pool size.
const WORKERS: usize = 2;
/// Tokio worker threads of the direct server.
const DIRECT_THREADS: usize = 2;
/// The targets of the issue, as clusterd / direct.
const CLOSE_TARGET: f64 = 0.80;
const KEEP_ALIVE_TARGET: f64 = 0.97;
/// clusterd with `--metrics` against clusterd without, new connection per request (issue 13:
/// within 3 %).
const METRICS_TARGET: f64 = 0.97;

const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long wrk may run beyond its `-d` before it is killed.
const WRK_SLACK: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_millis(5);
/// "Other CPU" (busy time not charged to the server or wrk) above this share of one core during a
/// run is called out: something else was running.
const OTHER_CPU_WARNING: f64 = 0.10;

fn main() {
    let wrk = common::find_in_path("wrk").unwrap_or_else(|| {
        eprintln!(
            "error: `wrk` is not in PATH; this bench drives the servers with it. Install it with \
             `apt-get install wrk` (Debian package) and run the bench again."
        );
        std::process::exit(1);
    });
    let bins = Binaries::locate();
    let stale = bins.stale();
    for warning in &stale {
        eprintln!("warning: {warning}");
    }
    let started = Instant::now();
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        for test in [Test::Close, Test::KeepAlive] {
            for &setup in test.setups() {
                let run = measure(&bins, &wrk, round, test, setup);
                eprintln!(
                    "round {round}/{ROUNDS} {} {}: {:.0} req/s{}",
                    test.label(),
                    setup.label(),
                    run.wrk.rps,
                    if run.wrk.errors() > 0 { format!(", {} errors", run.wrk.errors()) } else { String::new() }
                );
                runs.push(run);
            }
        }
    }
    report(&runs, &wrk, &stale, started.elapsed());
}

/// The release binaries under test.
struct Binaries {
    clusterd: PathBuf,
    hello: PathBuf,
    direct: PathBuf,
}

impl Binaries {
    fn locate() -> Self {
        let dir = common::target_dir();
        Self {
            clusterd: common::binary(&dir, "handoff", "clusterd"),
            hello: common::example(&dir, "hello"),
            direct: common::example(&dir, "hello_direct"),
        }
    }

    /// Warnings for example binaries older than a source they are built from.
    fn stale(&self) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut hello_sources = vec![root.join("examples/hello.rs"), root.join("Cargo.lock")];
        hello_sources.extend(common::sdk_sources(root));
        let direct_sources = vec![root.join("examples/hello_direct.rs"), root.join("Cargo.lock")];
        [(&self.hello, hello_sources), (&self.direct, direct_sources)]
            .iter()
            .filter_map(|(binary, sources)| common::stale_warning(root, binary, sources))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    /// A new connection per request (`Connection: close`).
    Close,
    KeepAlive,
}

impl Test {
    fn label(self) -> &'static str {
        match self {
            Self::Close => "new connection per request",
            Self::KeepAlive => "keep-alive",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Close => "new conn",
            Self::KeepAlive => "keep-alive",
        }
    }

    /// What is measured for the test, in this order in each round: `--metrics` only where every
    /// request is a handoff (its histogram is on the accept path).
    fn setups(self) -> &'static [Setup] {
        match self {
            Self::Close => &[Setup::Direct, Setup::Clusterd, Setup::ClusterdMetrics],
            Self::KeepAlive => &[Setup::Direct, Setup::Clusterd],
        }
    }

    fn target(self) -> f64 {
        match self {
            Self::Close => CLOSE_TARGET,
            Self::KeepAlive => KEEP_ALIVE_TARGET,
        }
    }

    /// wrk's arguments, as they would be typed.
    fn wrk_args(self, port: u16) -> Vec<String> {
        common::wrk_args(format!("http://127.0.0.1:{port}/"), self == Self::Close)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Direct,
    Clusterd,
    /// clusterd with `--metrics` (on a Unix socket in the run's scratch dir): the hot counters and
    /// the handoff histogram on.
    ClusterdMetrics,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Clusterd => "clusterd",
            Self::ClusterdMetrics => "clusterd --metrics",
        }
    }
}

/// A running server under test (the direct server, or clusterd and its workers); stopped on drop
/// if [`Process::stop`] was not called (a panic).
struct Server {
    setup: Setup,
    process: Process,
    port: u16,
    socket: PathBuf,
    /// clusterd's workers once all were ready; empty for the direct server.
    workers: Vec<Row>,
    // Last, so that it is removed after the server has stopped.
    dir: tempfile::TempDir,
}

impl Server {
    fn start(bins: &Binaries, setup: Setup) -> Self {
        let (dir, socket, log) = common::scratch("clusterd-handoff-", "server.log");
        let port = common::free_port();
        let addr = format!("127.0.0.1:{port}");
        let (program, args): (&Path, Vec<String>) = match setup {
            Setup::Direct => (&bins.direct, vec![addr, DIRECT_THREADS.to_string()]),
            Setup::Clusterd | Setup::ClusterdMetrics => (
                &bins.clusterd,
                vec![
                    "--workers".into(),
                    WORKERS.to_string(),
                    "--control".into(),
                    socket.display().to_string(),
                    "--listen".into(),
                    addr,
                    // As measured before clusterd stopped setting it unasked (issue 14).
                    "--tcp-nodelay".into(),
                ]
                .into_iter()
                .chain(
                    (setup == Setup::ClusterdMetrics)
                        .then(|| ["--metrics".to_owned(), format!("unix:{}", metrics_socket(dir.path()).display())])
                        .into_iter()
                        .flatten(),
                )
                .chain(["--".into(), bins.hello.display().to_string()])
                .collect(),
            ),
        };
        let mut command = Command::new(program);
        command.args(&args);
        common::log_to(&mut command, &log, "the server");
        common::clean_env(&mut command, |_| false);
        common::die_with_bench(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let command = format!("RUST_LOG=info {} {}", program.display(), args.join(" "));
        let process = Process::new(setup.label(), child, log, command, false);
        let mut server = Self { setup, process, port, socket, workers: Vec::new(), dir };
        match setup {
            Setup::Direct => server.wait_for_http(),
            Setup::Clusterd | Setup::ClusterdMetrics => {
                let what = format!("all {WORKERS} workers to be ready");
                let timing = (START_TIMEOUT, POLL_EVERY);
                server.workers = common::wait_for_status(&mut server.process, &server.socket, timing, &what, |s| {
                    s.all_ready(WORKERS)
                })
                .workers;
                // Every worker is ready and the port was bound before any started: one GET must do.
                match common::http_get(port) {
                    Ok(answer) => server.check(&answer),
                    Err(error) => server.process.fail(&format!("GET / through clusterd failed: {error}")),
                }
            }
        }
        server
    }

    /// The direct server is ready when a GET answers.
    fn wait_for_http(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match common::http_get(self.port) {
                Ok(answer) => return self.check(&answer),
                Err(error) => error,
            };
            if let Some(status) = self.process.exited() {
                self.process.fail(&format!("the direct server exited ({status}) before it answered"));
            }
            if Instant::now() >= deadline {
                self.process.fail(&format!("no answer on port {} within {START_TIMEOUT:?}; last: {last}", self.port));
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// The answer must be a 200 with the example's body, from the process that should answer.
    fn check(&mut self, (code, body): &(u16, String)) {
        if *code != 200 {
            self.process.fail(&format!("GET / answered {code}, not 200: {body:?}"));
        }
        let Some(hello) = Hello::parse(body) else { self.process.fail(&format!("unexpected body {body:?}")) };
        let expected = match self.setup {
            Setup::Direct => hello.worker == 0 && hello.generation == 0 && hello.pid == self.process.pid.unsigned_abs(),
            Setup::Clusterd | Setup::ClusterdMetrics => self
                .workers
                .iter()
                .any(|w| w.pid == Some(hello.pid) && w.id == hello.worker && w.generation == hello.generation),
        };
        if !expected || !hello.client.starts_with("127.0.0.1:") {
            self.process
                .fail(&format!("the answer {body:?} is not from the expected process (workers {:?})", self.workers));
        }
    }

    fn worker_pids(&self) -> Vec<i32> {
        self.workers.iter().filter_map(|w| w.pid).filter_map(|p| i32::try_from(p).ok()).collect()
    }
}

/// `hello from worker {id} (pid {pid}, generation {generation}), you are {client}\n`
struct Hello {
    worker: u64,
    pid: u32,
    generation: u64,
    client: String,
}

impl Hello {
    fn parse(body: &str) -> Option<Self> {
        let rest = body.strip_suffix('\n')?.strip_prefix("hello from worker ")?;
        let (worker, rest) = rest.split_once(" (pid ")?;
        let (pid, rest) = rest.split_once(", generation ")?;
        let (generation, client) = rest.split_once("), you are ")?;
        Some(Self {
            worker: worker.parse().ok()?,
            pid: pid.parse().ok()?,
            generation: generation.parse().ok()?,
            client: client.to_owned(),
        })
    }
}

/// CPU counters at one instant.
struct Sample {
    /// utime + stime of the server's main process (clusterd, or the direct server), in ticks.
    main_ticks: u64,
    /// The same for clusterd's workers.
    worker_ticks: u64,
    /// schedstat run time of the main process's live threads.
    main_run_ns: Option<u64>,
    /// Busy and total jiffies of the whole machine.
    machine: (u64, u64),
    /// CPU of the bench's reaped children (wrk, once it is waited for).
    children: Duration,
}

fn sample(main: i32, workers: &[i32]) -> Sample {
    Sample {
        main_ticks: common::cpu_ticks(main),
        worker_ticks: workers.iter().map(|&p| common::cpu_ticks(p)).sum(),
        main_run_ns: common::run_ns(main),
        machine: common::machine_jiffies(),
        children: common::children_cpu(),
    }
}

/// One wrk run against one freshly started server.
struct Run {
    round: usize,
    test: Test,
    setup: Setup,
    wrk: WrkResult,
    wrk_command: String,
    server_command: String,
    /// Seconds of CPU during the wrk run.
    main_cpu: f64,
    worker_cpu: f64,
    main_run: Option<f64>,
    wrk_cpu: f64,
    /// Busy share of all cores, 0..1.
    machine_busy: f64,
    /// Seconds of busy CPU on the machine not charged to the server or wrk: other processes (a build
    /// or test run beside the bench skews the figures) and interrupt work charged to no process.
    other_cpu: f64,
    /// clusterd's VmRSS / VmHWM after the run, KiB.
    memory: Option<(u64, u64)>,
    /// Workers that changed during the run (restarts), if any.
    workers_changed: Option<String>,
    exit: Option<ExitStatus>,
}

impl Run {
    fn server_cpu(&self) -> f64 {
        self.main_cpu + self.worker_cpu
    }
}

fn measure(bins: &Binaries, wrk: &Path, round: usize, test: Test, setup: Setup) -> Run {
    let mut server = Server::start(bins, setup);
    let args = test.wrk_args(server.port);
    let wrk_command = format!("wrk {}", common::shell_join(&args));
    let workers = server.worker_pids();
    let hz = common::clock_ticks_per_second() as f64;

    let out_path = server.dir.path().join("wrk.out");
    let err_path = server.dir.path().join("wrk.err");
    let out = File::create(&out_path).expect("cannot create wrk's output file");
    let err = File::create(&err_path).expect("cannot create wrk's error file");
    let before = sample(server.process.pid, &workers);
    let mut command = Command::new(wrk);
    command.args(&args).stdin(Stdio::null()).stdout(out).stderr(err);
    common::die_with_bench(&mut command);
    let mut child =
        command.spawn().unwrap_or_else(|e| server.process.fail(&format!("cannot start {}: {e}", wrk.display())));
    let status = common::wait_timeout(&mut child, Duration::from_secs(WRK_SECONDS) + WRK_SLACK);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let after = sample(server.process.pid, &workers);
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let errors = std::fs::read_to_string(&err_path).unwrap_or_default();
    let Some(status) = status else {
        server.process.fail(&format!(
            "{wrk_command} did not finish within {WRK_SLACK:?} of its duration; output:\n{output}{errors}"
        ))
    };
    if !status.success() {
        server.process.fail(&format!("{wrk_command} failed ({status}):\n{output}{errors}"));
    }
    let result = WrkResult::parse(&output)
        .unwrap_or_else(|e| server.process.fail(&format!("cannot read wrk's output ({e}):\n{output}{errors}")));

    // With --metrics, the histogram must have observed every handoff of the run.
    let observed = (setup == Setup::ClusterdMetrics).then(|| {
        handoffs_observed(&metrics_socket(server.dir.path()))
            .unwrap_or_else(|e| server.process.fail(&format!("GET /metrics failed: {e}")))
    });
    if let Some(observed) = observed
        && observed < result.requests
    {
        server.process.fail(&format!("the handoff histogram counted {observed} of {} requests", result.requests));
    }
    let (memory, workers_changed) = match setup {
        Setup::Direct => (None, None),
        Setup::Clusterd | Setup::ClusterdMetrics => {
            let memory = common::proc_memory(server.process.pid);
            let rows = common::status(&server.socket)
                .map(|s| s.workers)
                .unwrap_or_else(|e| server.process.fail(&format!("status after the run failed: {e}")));
            let changed = (rows != server.workers).then(|| format!("{:?} → {rows:?}", server.workers));
            (Some(memory), changed)
        }
    };
    if let Some(status) = server.process.exited() {
        server.process.fail(&format!("the server exited during the run ({status})"));
    }
    let exit = server.process.stop();
    let (busy, total) = (after.machine.0 - before.machine.0, after.machine.1 - before.machine.1);
    let main_cpu = (after.main_ticks - before.main_ticks) as f64 / hz;
    let worker_cpu = (after.worker_ticks - before.worker_ticks) as f64 / hz;
    let wrk_cpu = (after.children - before.children).as_secs_f64();
    Run {
        round,
        test,
        setup,
        wrk: result,
        wrk_command,
        server_command: server.process.command.clone(),
        main_cpu,
        worker_cpu,
        main_run: before.main_run_ns.zip(after.main_run_ns).map(|(b, a)| a.saturating_sub(b) as f64 / 1e9),
        wrk_cpu,
        machine_busy: if total == 0 { 0.0 } else { busy as f64 / total as f64 },
        other_cpu: busy as f64 / hz - main_cpu - worker_cpu - wrk_cpu,
        memory,
        workers_changed,
        exit,
    }
}

/// Where clusterd serves `/metrics` in a `--metrics` run.
fn metrics_socket(dir: &Path) -> PathBuf {
    dir.join("metrics.sock")
}

/// `clusterd_handoff_seconds_count` from one `GET /metrics` on the Unix socket `path`.
fn handoffs_observed(path: &Path) -> Result<u64, String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(START_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix("clusterd_handoff_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no clusterd_handoff_seconds_count in {text:?}"))
}

fn of(runs: &[Run], test: Test, setup: Setup) -> Vec<&Run> {
    runs.iter().filter(|r| r.test == test && r.setup == setup).collect()
}

fn us_per(seconds: f64, requests: u64) -> f64 {
    seconds * 1e6 / requests as f64
}

fn report(runs: &[Run], wrk: &Path, stale: &[String], took: Duration) {
    println!();
    println!("## clusterd connection handoff benchmark");
    println!();
    println!(
        "`hello` behind `clusterd --workers {WORKERS} --listen` against `hello_direct` ({DIRECT_THREADS} Tokio \
         threads) accepting on the port itself; `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s` over \
         loopback on the same {}-CPU machine; {ROUNDS} interleaved rounds, medians.",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| measurement | direct | clusterd | clusterd / direct |");
    println!("|---|---|---|---|");
    for test in [Test::Close, Test::KeepAlive] {
        let direct = of(runs, test, Setup::Direct);
        let clusterd = of(runs, test, Setup::Clusterd);
        let (d, c) =
            (common::median(direct.iter().map(|r| r.wrk.rps)), common::median(clusterd.iter().map(|r| r.wrk.rps)));
        let ratio = c / d;
        let verdict = if ratio >= test.target() { "meets" } else { "MISSES" };
        println!(
            "| {}: req/s, median (runs) | {d:.0} ({}) | {c:.0} ({}) | **{ratio:.3}** ({verdict} the ≥ {:.2} target) |",
            test.label(),
            common::list(direct.iter().map(|r| r.wrk.rps), 0),
            common::list(clusterd.iter().map(|r| r.wrk.rps), 0),
            test.target()
        );
        let errors = |runs: &[&Run]| runs.iter().map(|r| r.wrk.errors()).sum::<u64>();
        println!(
            "| {}: wrk errors, all runs (non-2xx + socket) | {} | {} | |",
            test.short(),
            errors(&direct),
            errors(&clusterd)
        );
        let server = |runs: &[&Run]| common::median(runs.iter().map(|r| us_per(r.server_cpu(), r.wrk.requests)));
        let (sd, sc) = (server(&direct), server(&clusterd));
        println!(
            "| {}: CPU of all server processes per request, median | {sd:.1} µs | {sc:.1} µs (clusterd {:.1} + workers \
             {:.1}) | {:.2} |",
            test.short(),
            common::median(clusterd.iter().map(|r| us_per(r.main_cpu, r.wrk.requests))),
            common::median(clusterd.iter().map(|r| us_per(r.worker_cpu, r.wrk.requests))),
            sc / sd
        );
        let wrk_cpu = |runs: &[&Run]| common::median(runs.iter().map(|r| us_per(r.wrk_cpu, r.wrk.requests)));
        let busy = |runs: &[&Run]| common::median(runs.iter().map(|r| r.machine_busy * 100.0));
        println!(
            "| {}: wrk's CPU per request; machine busy, median | {:.1} µs; {:.0} % | {:.1} µs; {:.0} % | |",
            test.short(),
            wrk_cpu(&direct),
            busy(&direct),
            wrk_cpu(&clusterd),
            busy(&clusterd)
        );
    }
    let close = of(runs, Test::Close, Setup::Clusterd);
    let ticks = common::median(close.iter().map(|r| us_per(r.main_cpu, r.wrk.requests)));
    let sched: Vec<f64> = close.iter().filter_map(|r| r.main_run.map(|s| us_per(s, r.wrk.requests))).collect();
    let sched = if sched.len() == close.len() { format!("{:.1} µs", common::median(sched)) } else { "n/a".to_owned() };
    println!(
        "| clusterd CPU per handed-off connection (new-connection runs; utime+stime / schedstat), median | | \
         **{ticks:.1} µs** / {sched} ({} runs: {}) | |",
        close.len(),
        common::list(close.iter().map(|r| us_per(r.main_cpu, r.wrk.requests)), 1)
    );
    let with_metrics = of(runs, Test::Close, Setup::ClusterdMetrics);
    let (off, on) =
        (common::median(close.iter().map(|r| r.wrk.rps)), common::median(with_metrics.iter().map(|r| r.wrk.rps)));
    let ratio = on / off;
    let verdict = if ratio >= METRICS_TARGET { "meets" } else { "MISSES" };
    println!(
        "| new conn: clusterd `--metrics` on / off, req/s median (runs) | | {on:.0} ({}) / {off:.0} | **{ratio:.3}** \
         ({verdict} the ≥ {METRICS_TARGET:.2} target) |",
        common::list(with_metrics.iter().map(|r| r.wrk.rps), 0),
    );
    let cpu = |runs: &[&Run]| common::median(runs.iter().map(|r| us_per(r.main_cpu, r.wrk.requests)));
    println!(
        "| new conn: clusterd CPU per handed-off connection, `--metrics` on / off, median | | {:.1} / {:.1} µs | \
         {:.2} |",
        cpu(&with_metrics),
        cpu(&close),
        cpu(&with_metrics) / cpu(&close)
    );
    let cores = |r: &&Run| r.main_cpu / r.wrk.seconds * 100.0;
    println!(
        "| clusterd CPU during the new-connection runs, % of one core, median | | {:.0} % | |",
        common::median(close.iter().map(cores))
    );
    for test in [Test::Close, Test::KeepAlive] {
        let memory: Vec<(u64, u64)> = of(runs, test, Setup::Clusterd).iter().filter_map(|r| r.memory).collect();
        let rss = memory.iter().map(|m| m.0).max().unwrap_or(0);
        let hwm = memory.iter().map(|m| m.1).max().unwrap_or(0);
        println!(
            "| clusterd memory after each {} run: VmRSS / VmHWM, max (runs, MiB) | | {:.1} / {:.1} MiB ({}) | |",
            test.short(),
            common::mib(rss),
            common::mib(hwm),
            memory
                .iter()
                .map(|m| format!("{:.1}/{:.1}", common::mib(m.0), common::mib(m.1)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    println!();
    println!("Every run:");
    println!();
    println!(
        "| round | test | setup | req/s | requests | avg latency | non-2xx | socket errors c/r/w/t | server CPU \
         (clusterd + workers) | wrk CPU | machine busy; other CPU | clusterd VmRSS / VmHWM |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let server_cpu = match r.setup {
            Setup::Direct => format!("{:.2} s", r.main_cpu),
            Setup::Clusterd | Setup::ClusterdMetrics => {
                format!("{:.2} s ({:.2} + {:.2})", r.server_cpu(), r.main_cpu, r.worker_cpu)
            }
        };
        let memory = r
            .memory
            .map_or(String::new(), |(rss, hwm)| format!("{:.1} / {:.1} MiB", common::mib(rss), common::mib(hwm)));
        let [c, rd, w, t] = r.wrk.socket_errors;
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {c}/{rd}/{w}/{t} | {server_cpu} | {:.2} s | {:.0} %; {:.2} s | {memory} |",
            r.round,
            r.test.short(),
            r.setup.label(),
            r.wrk.rps,
            r.wrk.requests,
            r.wrk.latency_avg,
            r.wrk.non_2xx,
            r.wrk_cpu,
            r.machine_busy * 100.0,
            r.other_cpu
        );
    }

    println!();
    println!("Notes:");
    let troubled: Vec<&Run> = runs.iter().filter(|r| r.wrk.errors() > 0).collect();
    if troubled.is_empty() {
        println!("- No run had non-2xx responses or socket errors.");
    }
    for r in troubled {
        let [c, rd, w, t] = r.wrk.socket_errors;
        println!(
            "- **Errors** in round {} {} {}: {} non-2xx, socket errors connect {c}, read {rd}, write {w}, timeout {t}.",
            r.round,
            r.test.label(),
            r.setup.label(),
            r.wrk.non_2xx
        );
    }
    for r in runs.iter().filter(|r| r.workers_changed.is_some()) {
        println!(
            "- **Workers changed** during round {} {}: {}",
            r.round,
            r.test.label(),
            r.workers_changed.as_deref().unwrap_or("")
        );
    }
    let bad_exits: Vec<String> = runs
        .iter()
        .filter(|r| !r.exit.is_some_and(|s| s.success()))
        .map(|r| format!("round {} {} {}: {}", r.round, r.test.short(), r.setup.label(), common::describe(r.exit)))
        .collect();
    if bad_exits.is_empty() {
        println!("- Every server exited 0 after SIGTERM.");
    } else {
        println!("- **Servers that did not exit 0** after SIGTERM: {}.", bad_exits.join("; "));
    }
    let busy_elsewhere: Vec<String> = runs
        .iter()
        .filter(|r| r.other_cpu > OTHER_CPU_WARNING * r.wrk.seconds)
        .map(|r| format!("round {} {} {} ({:.2} s)", r.round, r.test.short(), r.setup.label(), r.other_cpu))
        .collect();
    if !busy_elsewhere.is_empty() {
        println!(
            "- **Warning**: the machine was busy beyond the server and wrk (more than {:.0} % of one core) in: {}. \
             Another process was probably running; those figures are skewed.",
            OTHER_CPU_WARNING * 100.0,
            busy_elsewhere.join(", ")
        );
    }
    for warning in stale {
        println!("- **Warning**: {warning}.");
    }
    println!(
        "- Each wrk run gets a freshly started server on a free loopback port; clusterd's status showed all \
         {WORKERS} workers ready and one GET / answered 200 from the expected process before it. Order in a \
         round: new-connection direct, clusterd, clusterd --metrics, keep-alive direct, clusterd. After each \
         --metrics run, its `clusterd_handoff_seconds_count` was at least wrk's request count."
    );
    println!(
        "- CPU is utime+stime from `/proc/<pid>/stat` ({} Hz ticks) over the wrk run; clusterd's is also given \
         from `schedstat` (ns, live threads). Per request = CPU / requests wrk completed. wrk's CPU is \
         getrusage(RUSAGE_CHILDREN) around it. wrk, clusterd and the workers share the same cores, so req/s \
         is a machine-saturated figure: CPU per request says where the time goes. Other CPU = machine busy \
         time (`/proc/stat`) less the server's and wrk's: other processes, and softirq work charged to none.",
        common::clock_ticks_per_second()
    );
    println!(
        "- {}; whole bench {:.1} s.",
        common::version(wrk, "-v").unwrap_or_else(|| "wrk (version unknown)".to_owned()),
        took.as_secs_f64()
    );
    println!();
    println!("Commands:");
    println!();
    println!("```");
    println!("cargo build --release --workspace --bins --examples && cargo bench --bench handoff");
    for r in runs.iter().filter(|r| r.round == 1) {
        println!("# {}, {}", r.test.label(), r.setup.label());
        println!("{} &", r.server_command);
        println!("{}", r.wrk_command);
    }
    println!("```");
    println!();
    println!("(Ports and temporary control-socket paths differ in every run.)");
}
