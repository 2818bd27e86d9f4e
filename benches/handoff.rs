//! Connection handoff benchmark: the `hello` axum server behind `clusterd --listen` (clusterd
//! accepts, reads the request line, passes the socket to a worker over SCM_RIGHTS) against the same
//! app accepting on the port itself (`examples/hello_direct.rs`), loaded by `wrk` over loopback.
//! It prints a Markdown table.
//!
//! Run it with `cargo build --release --workspace --examples && cargo bench --bench handoff`. Cargo
//! builds the package's binaries before its benches, so `clusterd` is fresh, but it does not build
//! examples: the bench finds `target/release/examples/{hello,hello_direct}` and stops with a clear
//! message when they are missing (and warns when one is older than its sources). It needs `wrk`
//! (Debian package `wrk`) in `PATH`.
//!
//! What is measured, in one run, interleaved (for each round: new-connection direct, clusterd,
//! then keep-alive direct, clusterd; [`ROUNDS`] rounds), each wrk run against a freshly started
//! server on a fresh loopback port:
//!
//! 1. **New connection per request**: `wrk -t2 -c64 -d5s -H 'Connection: close'`, so every request
//!    is one accept, and with clusterd one handoff. `hello_direct` runs a 2-thread Tokio runtime;
//!    clusterd runs 2 `hello` workers (each a multi-thread Tokio runtime).
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

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// A/B rounds of each test.
const ROUNDS: usize = 3;
const WRK_SECONDS: u64 = 5;
const WRK_THREADS: usize = 2;
const WRK_CONNECTIONS: usize = 64;
/// clusterd's pool size.
const WORKERS: usize = 2;
/// Tokio worker threads of the direct server.
const DIRECT_THREADS: usize = 2;
/// The targets of the issue, as clusterd / direct.
const CLOSE_TARGET: f64 = 0.80;
const KEEP_ALIVE_TARGET: f64 = 0.97;

const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long wrk may run beyond its `-d` before it is killed.
const WRK_SLACK: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_millis(5);
/// "Other CPU" (busy time not charged to the server or wrk) above this share of one core during a
/// run is called out: something else was running.
const OTHER_CPU_WARNING: f64 = 0.10;

const BUILD_HINT: &str = "run `cargo build --release --workspace --examples` first";

fn main() {
    let wrk = find_wrk().unwrap_or_else(|| {
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
            for setup in [Setup::Direct, Setup::Clusterd] {
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
        let exe = std::env::current_exe().expect("cannot find the path of the bench executable");
        // The bench runs as target/<profile>/deps/handoff-<hash>.
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("the bench executable {} is not in target/<profile>/deps/", exe.display()));
        let clusterd = dir.join("clusterd");
        assert!(
            clusterd.is_file(),
            "{} is missing: run `cargo build --release` first (`cargo bench --bench handoff` builds it by \
             itself; this happens when the bench executable is run by hand)",
            clusterd.display()
        );
        let example = |name: &str| {
            let path = dir.join("examples").join(name);
            if !path.is_file() {
                eprintln!("error: {} is missing: {BUILD_HINT} (`cargo bench` does not build examples)", path.display());
                std::process::exit(1);
            }
            path
        };
        Self { clusterd, hello: example("hello"), direct: example("hello_direct") }
    }

    /// Warnings for example binaries older than a source they are built from.
    fn stale(&self) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut sdk: Vec<PathBuf> = std::fs::read_dir(root.join("worker-sdk/src"))
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        sdk.push(root.join("worker-sdk/Cargo.toml"));
        let mut hello_sources = vec![root.join("examples/hello.rs"), root.join("Cargo.lock")];
        hello_sources.extend(sdk);
        let direct_sources = vec![root.join("examples/hello_direct.rs"), root.join("Cargo.lock")];
        let mut warnings = Vec::new();
        for (binary, sources) in [(&self.hello, hello_sources), (&self.direct, direct_sources)] {
            let Some(built) = modified(binary) else { continue };
            let newer: Vec<String> = sources
                .iter()
                .filter(|s| modified(s).is_some_and(|m| m > built))
                .map(|s| s.strip_prefix(root).unwrap_or(s).display().to_string())
                .collect();
            if !newer.is_empty() {
                warnings.push(format!(
                    "{} is older than {}: {BUILD_HINT} to measure the current code",
                    binary.display(),
                    newer.join(", ")
                ));
            }
        }
        warnings
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `wrk` from `PATH`, if it is there.
fn find_wrk() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Removes what would change how clusterd or the workers behave: clusterd reads every `CLUSTERD_*`
/// variable as an option, and would talk to a service manager through `NOTIFY_SOCKET` or take over
/// sockets passed with `LISTEN_FDS`.
fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        if name.starts_with("CLUSTERD_")
            || name.starts_with("LISTEN_")
            || name.starts_with("WATCHDOG_")
            || name == "NOTIFY_SOCKET"
        {
            command.env_remove(&key);
        }
    }
    command.env("RUST_LOG", "info");
}

/// The child gets SIGTERM when the bench dies: a panic stops the servers through the `Drop` guards,
/// but a bench killed by a signal would leave them (and wrk) running without this.
fn die_with_bench(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let bench = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The bench died before the prctl took effect.
            if libc::getppid() != bench {
                libc::_exit(1);
            }
            Ok(())
        });
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

    fn target(self) -> f64 {
        match self {
            Self::Close => CLOSE_TARGET,
            Self::KeepAlive => KEEP_ALIVE_TARGET,
        }
    }

    /// wrk's arguments, as they would be typed.
    fn wrk_args(self, port: u16) -> Vec<String> {
        let mut args = vec![format!("-t{WRK_THREADS}"), format!("-c{WRK_CONNECTIONS}"), format!("-d{WRK_SECONDS}s")];
        if self == Self::Close {
            args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
        }
        args.push(format!("http://127.0.0.1:{port}/"));
        args
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Direct,
    Clusterd,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Clusterd => "clusterd",
        }
    }
}

/// One row of the status document's worker table.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: u64,
    pid: Option<u32>,
    state: String,
    generation: u64,
}

fn all_ready(count: usize) -> impl Fn(&[Row]) -> bool {
    move |rows| rows.len() == count && rows.iter().all(|r| r.state == "ready" && r.pid.is_some())
}

/// A running server under test (the direct server, or clusterd and its workers); stopped on drop
/// if [`Server::stop`] was not called (a panic).
struct Server {
    setup: Setup,
    child: Option<Child>,
    pid: i32,
    port: u16,
    socket: PathBuf,
    log: PathBuf,
    command: String,
    /// clusterd's workers once all were ready; empty for the direct server.
    workers: Vec<Row>,
    // Last, so that it is removed after the server has stopped.
    dir: tempfile::TempDir,
}

impl Server {
    fn start(bins: &Binaries, setup: Setup) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("clusterd-handoff-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let socket = dir.path().join("c.sock");
        let log = dir.path().join("server.log");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let (program, args): (&Path, Vec<String>) = match setup {
            Setup::Direct => (&bins.direct, vec![addr, DIRECT_THREADS.to_string()]),
            Setup::Clusterd => (
                &bins.clusterd,
                vec![
                    "--workers".into(),
                    WORKERS.to_string(),
                    "--control".into(),
                    socket.display().to_string(),
                    "--listen".into(),
                    addr,
                    "--".into(),
                    bins.hello.display().to_string(),
                ],
            ),
        };
        let out = File::create(&log).expect("cannot create the server's log file");
        let err = out.try_clone().expect("cannot duplicate the log file handle");
        let mut command = Command::new(program);
        command.args(&args).stdin(Stdio::null()).stdout(out).stderr(err);
        clean_env(&mut command);
        die_with_bench(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let pid = i32::try_from(child.id()).expect("pid out of range");
        let command = format!("RUST_LOG=info {} {}", program.display(), args.join(" "));
        let mut server = Self { setup, child: Some(child), pid, port, socket, log, command, workers: Vec::new(), dir };
        match setup {
            Setup::Direct => server.wait_for_http(),
            Setup::Clusterd => {
                let what = format!("all {WORKERS} workers to be ready");
                server.workers = server.wait_for_status(START_TIMEOUT, &what, all_ready(WORKERS));
                // Every worker is ready and the port was bound before any started: one GET must do.
                match http_get(port) {
                    Ok(answer) => server.check(&answer),
                    Err(error) => server.fail(&format!("GET / through clusterd failed: {error}")),
                }
            }
        }
        server
    }

    /// Panics with `what`, the server's exit status if it is gone, and the end of its log.
    fn fail(&mut self, what: &str) -> ! {
        let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        let state = exited.map_or("still running".to_owned(), |s| format!("exited: {s}"));
        panic!("{what}\n{} ({state}): {}\nlast lines of its log:\n{tail}", self.setup.label(), self.command);
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The direct server is ready when a GET answers.
    fn wait_for_http(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match http_get(self.port) {
                Ok(answer) => return self.check(&answer),
                Err(error) => error,
            };
            if let Some(status) = self.exited() {
                self.fail(&format!("the direct server exited ({status}) before it answered"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no answer on port {} within {START_TIMEOUT:?}; last: {last}", self.port));
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// The answer must be a 200 with the example's body, from the process that should answer.
    fn check(&mut self, (code, body): &(u16, String)) {
        if *code != 200 {
            self.fail(&format!("GET / answered {code}, not 200: {body:?}"));
        }
        let Some(hello) = Hello::parse(body) else { self.fail(&format!("unexpected body {body:?}")) };
        let expected = match self.setup {
            Setup::Direct => hello.worker == 0 && hello.generation == 0 && hello.pid == self.pid.unsigned_abs(),
            Setup::Clusterd => self
                .workers
                .iter()
                .any(|w| w.pid == Some(hello.pid) && w.id == hello.worker && w.generation == hello.generation),
        };
        if !expected || !hello.client.starts_with("127.0.0.1:") {
            self.fail(&format!("the answer {body:?} is not from the expected process (workers {:?})", self.workers));
        }
    }

    /// One `status` request; the worker rows of the reply.
    fn status(&self) -> Result<Vec<Row>, String> {
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|e| format!("cannot connect to {}: {e}", self.socket.display()))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        stream.write_all(b"{\"command\":\"status\"}\n").map_err(|e| format!("cannot send the request: {e}"))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).map_err(|e| format!("no reply: {e}"))?;
        let reply: Value = serde_json::from_str(&line).map_err(|e| format!("unreadable reply {line:?}: {e}"))?;
        if reply["ok"] != Value::Bool(true) {
            return Err(format!("clusterd refused: {line}"));
        }
        let workers = reply["status"]["workers"].as_array().ok_or_else(|| format!("no worker table in {line:?}"))?;
        workers
            .iter()
            .map(|w| {
                Ok(Row {
                    id: w["id"].as_u64().ok_or("a worker without an id")?,
                    pid: w["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
                    state: w["state"].as_str().ok_or("a worker without a state")?.to_owned(),
                    generation: w["generation"].as_u64().ok_or("a worker without a generation")?,
                })
            })
            .collect()
    }

    /// Polls `status` until `done` holds; panics after `timeout`. Errors are retried: the socket
    /// appears only once clusterd is up.
    fn wait_for_status(&mut self, timeout: Duration, what: &str, done: impl Fn(&[Row]) -> bool) -> Vec<Row> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status() {
                Ok(rows) if done(&rows) => return rows,
                Ok(rows) => format!("{rows:?}"),
                Err(error) => error,
            };
            if let Some(status) = self.exited() {
                self.fail(&format!("clusterd exited ({status}) while waiting for {what}"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}; last: {last}"));
            }
            thread::sleep(POLL_EVERY);
        }
    }

    fn worker_pids(&self) -> Vec<i32> {
        self.workers.iter().filter_map(|w| w.pid).filter_map(|p| i32::try_from(p).ok()).collect()
    }

    /// SIGTERM, then wait; SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        if let Some(status) = wait_timeout(&mut child, STOP_TIMEOUT) {
            return Some(status);
        }
        eprintln!("{} did not exit within {STOP_TIMEOUT:?} of SIGTERM: sending SIGKILL", self.setup.label());
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `Child::wait` with a deadline; `None` if the child is still running (or cannot be waited for).
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A loopback port nobody listens on now: bind port 0, read what the kernel chose, close.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind 127.0.0.1:0");
    listener.local_addr().expect("no local address").port()
}

/// One `GET /` with `Connection: close`; the status code and the body.
fn http_get(port: u16) -> Result<(u16, String), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no complete response: {text:?}"))?;
    let code = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {text:?}"))?;
    Ok((code, body.to_owned()))
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

/// What wrk reported.
#[derive(Debug, Default)]
struct WrkResult {
    rps: f64,
    requests: u64,
    seconds: f64,
    latency_avg: String,
    non_2xx: u64,
    /// connect, read, write, timeout
    socket_errors: [u64; 4],
}

impl WrkResult {
    fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors.iter().sum::<u64>()
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut result = Self::default();
        let mut rps = None;
        for line in text.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("Requests/sec:") {
                rps = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
                result.non_2xx = v.trim().parse().map_err(|_| format!("bad line {line:?}"))?;
            } else if let Some(v) = line.strip_prefix("Socket errors:") {
                // "connect 0, read 0, write 0, timeout 0"
                for (i, part) in v.split(',').enumerate().take(4) {
                    let n = part.split_whitespace().nth(1).and_then(|n| n.parse().ok());
                    result.socket_errors[i] = n.ok_or_else(|| format!("bad line {line:?}"))?;
                }
            } else if let Some(v) = line.strip_prefix("Latency") {
                result.latency_avg = v.split_whitespace().next().unwrap_or("?").to_owned();
            } else if let Some((n, rest)) = line.split_once(" requests in ") {
                result.requests = n.trim().parse().map_err(|_| format!("bad line {line:?}"))?;
                let secs = rest.split(',').next().unwrap_or("");
                result.seconds = parse_wrk_time(secs).ok_or_else(|| format!("bad duration in {line:?}"))?;
            }
        }
        result.rps = rps.ok_or("no `Requests/sec:` line")?;
        if result.requests == 0 {
            return Err("no `N requests in` line, or no request completed".into());
        }
        Ok(result)
    }
}

/// wrk's durations: `5.00s`, `1.00m`, `900.00ms`.
fn parse_wrk_time(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
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
        main_ticks: cpu_ticks(main),
        worker_ticks: workers.iter().map(|&p| cpu_ticks(p)).sum(),
        main_run_ns: run_ns(main),
        machine: machine_jiffies(),
        children: children_cpu(),
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
    let wrk_command = format!(
        "wrk {}",
        args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { a.clone() }).collect::<Vec<_>>().join(" ")
    );
    let workers = server.worker_pids();
    let hz = clock_ticks_per_second() as f64;

    let out_path = server.dir.path().join("wrk.out");
    let err_path = server.dir.path().join("wrk.err");
    let out = File::create(&out_path).expect("cannot create wrk's output file");
    let err = File::create(&err_path).expect("cannot create wrk's error file");
    let before = sample(server.pid, &workers);
    let mut command = Command::new(wrk);
    command.args(&args).stdin(Stdio::null()).stdout(out).stderr(err);
    die_with_bench(&mut command);
    let mut child = command.spawn().unwrap_or_else(|e| server.fail(&format!("cannot start {}: {e}", wrk.display())));
    let status = wait_timeout(&mut child, Duration::from_secs(WRK_SECONDS) + WRK_SLACK);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let after = sample(server.pid, &workers);
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let errors = std::fs::read_to_string(&err_path).unwrap_or_default();
    let Some(status) = status else {
        server.fail(&format!(
            "{wrk_command} did not finish within {WRK_SLACK:?} of its duration; output:\n{output}{errors}"
        ))
    };
    if !status.success() {
        server.fail(&format!("{wrk_command} failed ({status}):\n{output}{errors}"));
    }
    let result = WrkResult::parse(&output)
        .unwrap_or_else(|e| server.fail(&format!("cannot read wrk's output ({e}):\n{output}{errors}")));

    let (memory, workers_changed) = match setup {
        Setup::Direct => (None, None),
        Setup::Clusterd => {
            let memory = proc_memory(server.pid);
            let rows = server.status().unwrap_or_else(|e| server.fail(&format!("status after the run failed: {e}")));
            let changed = (rows != server.workers).then(|| format!("{:?} → {rows:?}", server.workers));
            (Some(memory), changed)
        }
    };
    if let Some(status) = server.exited() {
        server.fail(&format!("the server exited during the run ({status})"));
    }
    let exit = server.stop();
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
        server_command: server.command.clone(),
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

/// utime + stime of the whole process (live and exited threads), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime and stime are fields 14 and 15.
    let field = |i: usize| -> u64 {
        fields.get(i).and_then(|f| f.parse().ok()).unwrap_or_else(|| panic!("bad /proc/{pid}/stat: {stat}"))
    };
    field(11) + field(12)
}

/// Time on CPU of the live threads, in nanoseconds, from `schedstat`; `None` where the kernel does
/// not provide it. Finer than clock ticks, but blind to threads that exit in between.
fn run_ns(pid: i32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks {
        let path = task.ok()?.path().join("schedstat");
        let mut text = String::new();
        File::open(path).ok()?.read_to_string(&mut text).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Busy and total jiffies of all CPUs, from the `cpu` line of `/proc/stat`.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("cannot read /proc/stat");
    let line = stat.lines().find(|l| l.starts_with("cpu ")).expect("no cpu line in /proc/stat");
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let values: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// User + system time of the bench's children that have been waited for.
fn children_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage failed");
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0).unsigned_abs()) + Duration::from_micros(t.tv_usec().max(0).unsigned_abs())
    };
    micros(usage.user_time()) + micros(usage.system_time())
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn proc_memory(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS"), field("VmHWM"))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a system constant; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).expect("sysconf(_SC_CLK_TCK) failed")
}

/// The median of a non-empty sample (the mean of the middle two for an even count).
fn median(sample: impl IntoIterator<Item = f64>) -> f64 {
    let mut sample: Vec<f64> = sample.into_iter().collect();
    assert!(!sample.is_empty(), "median of nothing");
    sample.sort_by(f64::total_cmp);
    let n = sample.len();
    if n % 2 == 1 { sample[n / 2] } else { (sample[n / 2 - 1] + sample[n / 2]) / 2.0 }
}

fn of(runs: &[Run], test: Test, setup: Setup) -> Vec<&Run> {
    runs.iter().filter(|r| r.test == test && r.setup == setup).collect()
}

fn list(values: impl IntoIterator<Item = f64>, precision: usize) -> String {
    values.into_iter().map(|v| format!("{v:.precision$}")).collect::<Vec<_>>().join(" / ")
}

fn us_per(seconds: f64, requests: u64) -> f64 {
    seconds * 1e6 / requests as f64
}

fn wrk_version(wrk: &Path) -> String {
    Command::new(wrk)
        .arg("-v")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .and_then(|l| l.split(" Copyright").next().map(str::to_owned))
        .unwrap_or_else(|| "wrk (version unknown)".to_owned())
}

fn report(runs: &[Run], wrk: &Path, stale: &[String], took: Duration) {
    let mib = |kib: u64| kib as f64 / 1024.0;
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
        let (d, c) = (median(direct.iter().map(|r| r.wrk.rps)), median(clusterd.iter().map(|r| r.wrk.rps)));
        let ratio = c / d;
        let verdict = if ratio >= test.target() { "meets" } else { "MISSES" };
        println!(
            "| {}: req/s, median (runs) | {d:.0} ({}) | {c:.0} ({}) | **{ratio:.3}** ({verdict} the ≥ {:.2} target) |",
            test.label(),
            list(direct.iter().map(|r| r.wrk.rps), 0),
            list(clusterd.iter().map(|r| r.wrk.rps), 0),
            test.target()
        );
        let errors = |runs: &[&Run]| runs.iter().map(|r| r.wrk.errors()).sum::<u64>();
        println!(
            "| {}: wrk errors, all runs (non-2xx + socket) | {} | {} | |",
            test.short(),
            errors(&direct),
            errors(&clusterd)
        );
        let server = |runs: &[&Run]| median(runs.iter().map(|r| us_per(r.server_cpu(), r.wrk.requests)));
        let (sd, sc) = (server(&direct), server(&clusterd));
        println!(
            "| {}: CPU of all server processes per request, median | {sd:.1} µs | {sc:.1} µs (clusterd {:.1} + workers \
             {:.1}) | {:.2} |",
            test.short(),
            median(clusterd.iter().map(|r| us_per(r.main_cpu, r.wrk.requests))),
            median(clusterd.iter().map(|r| us_per(r.worker_cpu, r.wrk.requests))),
            sc / sd
        );
        let wrk_cpu = |runs: &[&Run]| median(runs.iter().map(|r| us_per(r.wrk_cpu, r.wrk.requests)));
        let busy = |runs: &[&Run]| median(runs.iter().map(|r| r.machine_busy * 100.0));
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
    let ticks = median(close.iter().map(|r| us_per(r.main_cpu, r.wrk.requests)));
    let sched: Vec<f64> = close.iter().filter_map(|r| r.main_run.map(|s| us_per(s, r.wrk.requests))).collect();
    let sched = if sched.len() == close.len() { format!("{:.1} µs", median(sched)) } else { "n/a".to_owned() };
    println!(
        "| clusterd CPU per handed-off connection (new-connection runs; utime+stime / schedstat), median | | \
         **{ticks:.1} µs** / {sched} ({} runs: {}) | |",
        close.len(),
        list(close.iter().map(|r| us_per(r.main_cpu, r.wrk.requests)), 1)
    );
    let cores = |r: &&Run| r.main_cpu / r.wrk.seconds * 100.0;
    println!(
        "| clusterd CPU during the new-connection runs, % of one core, median | | {:.0} % | |",
        median(close.iter().map(cores))
    );
    for test in [Test::Close, Test::KeepAlive] {
        let memory: Vec<(u64, u64)> = of(runs, test, Setup::Clusterd).iter().filter_map(|r| r.memory).collect();
        let rss = memory.iter().map(|m| m.0).max().unwrap_or(0);
        let hwm = memory.iter().map(|m| m.1).max().unwrap_or(0);
        println!(
            "| clusterd memory after each {} run: VmRSS / VmHWM, max (runs, MiB) | | {:.1} / {:.1} MiB ({}) | |",
            test.short(),
            mib(rss),
            mib(hwm),
            memory.iter().map(|m| format!("{:.1}/{:.1}", mib(m.0), mib(m.1))).collect::<Vec<_>>().join(", ")
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
            Setup::Clusterd => format!("{:.2} s ({:.2} + {:.2})", r.server_cpu(), r.main_cpu, r.worker_cpu),
        };
        let memory = r.memory.map_or(String::new(), |(rss, hwm)| format!("{:.1} / {:.1} MiB", mib(rss), mib(hwm)));
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
        .map(|r| format!("round {} {} {}: {}", r.round, r.test.short(), r.setup.label(), describe(r.exit)))
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
         round: new-connection direct, clusterd, keep-alive direct, clusterd."
    );
    println!(
        "- CPU is utime+stime from `/proc/<pid>/stat` ({} Hz ticks) over the wrk run; clusterd's is also given \
         from `schedstat` (ns, live threads). Per request = CPU / requests wrk completed. wrk's CPU is \
         getrusage(RUSAGE_CHILDREN) around it. wrk, clusterd and the workers share the same cores, so req/s \
         is a machine-saturated figure: CPU per request says where the time goes. Other CPU = machine busy \
         time (`/proc/stat`) less the server's and wrk's: other processes, and softirq work charged to none.",
        clock_ticks_per_second()
    );
    println!("- {}; whole bench {:.1} s.", wrk_version(wrk), took.as_secs_f64());
    println!();
    println!("Commands:");
    println!();
    println!("```");
    println!("cargo build --release --workspace --examples && cargo bench --bench handoff");
    for r in runs.iter().filter(|r| r.round == 1) {
        println!("# {}, {}", r.test.label(), r.setup.label());
        println!("{} &", r.server_command);
        println!("{}", r.wrk_command);
    }
    println!("```");
    println!();
    println!("(Ports and temporary control-socket paths differ in every run.)");
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "unknown (killed after the timeout)".to_owned(), |s| s.to_string())
}
