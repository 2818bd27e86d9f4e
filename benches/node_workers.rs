//! clusterd as the primary of unmodified Node.js workers (`--protocol node`) against the Node.js
//! primary it replaces, both running the very same worker script, `benches/node/worker.cjs` (the
//! documented worker: an http server that never listens, `new Server(httpServer)`,
//! `io.adapter(createAdapter())`, `setupWorker(io)`). It prints Markdown tables with the ratios,
//! whether each target of issue #5 is met, and the exact commands.
//!
//! Run it with `cargo build --release --workspace --bins --examples && cargo bench --bench node_workers`.
//! Cargo builds `clusterd` before its benches (the report warns when it is older than `src/`).
//! It needs `node` and `npm` in `PATH` (when `benches/node/node_modules` is missing it runs
//! `npm ci` there, from the committed lock file) and `wrk` (Debian's package): without it the
//! bench stops at once and says so.
//!
//! The two primaries, each with [`WORKERS`] workers, each started fresh on a free loopback port for
//! every load run (both from `benches/node`):
//! - **Node primary**: `node node_primary_exec.cjs <port> 2`: `cluster` + `@socket.io/sticky`
//!   `setupMaster` least-connection + `@socket.io/cluster-adapter` `setupPrimary`,
//!   `serialization: "advanced"`, forking `worker.cjs` through `cluster.setupPrimary({ exec })`;
//! - **clusterd**: `clusterd --protocol node --workers 2 --listen 127.0.0.1:<port> -- node worker.cjs`.
//!
//! What is measured, in [`ROUNDS`] interleaved rounds (per round and test, one run on each
//! primary; the primary that goes first alternates from round to round), medians over the rounds:
//!
//! 1. **Handoff rate**: `wrk -t2 -c64 -d5s -H 'Connection: close' /hello`: every request is a new
//!    connection that the primary accepts, reads and passes to a worker (target: clusterd ≥
//!    [`HANDOFF_TARGET`]× the Node primary). The primary's CPU per connection is shown too.
//! 2. **Polling sessions per second**: `benches/node/polling_load.mjs` ([`POLL_CONCURRENCY`]
//!    loops of `socket.io-client`, polling only, for [`POLL_SECONDS`] s; each: handshake, a few
//!    polls, one `whoami` ack, disconnect). Every request of a polling session goes through the
//!    primary (the workers answer `Connection: close`). Errors are counted by kind; "Session ID
//!    unknown" is the Node primary's known misrouting (target: ≥ [`POLLING_TARGET`]×).
//! 3. **Broadcast fan-out** over WebSocket, for each of [`FANOUTS`]: that many Socket.IO clients,
//!    connected one after the other through the primary (so both balancers spread them), written
//!    here on one thread (a current-thread Tokio runtime: WebSocket framing and the few
//!    Engine.IO / Socket.IO packets needed), several times cheaper per message than
//!    `socket.io-client` on a machine whose 2 cores they share with the servers. [`SENDERS`] of
//!    them, taking turns, emit `"chat message"` with a [`PAYLOAD`]-byte text; the worker emits it
//!    to every client of every worker (`io.emit`), which crosses the primary once per broadcast
//!    (the cluster adapter's relay). After [`WARMUP`] broadcasts: a **throughput** phase (a set
//!    number of broadcasts, at most [`WINDOW`] in flight: a broadcast is in flight until every
//!    client has it) gives the deliveries per second (first send → last receipt) and the p50 /
//!    p99 latency of every delivery under that saturation (target: ≥ [`FANOUT_TARGET`]× with a
//!    lower p99); a **paced** phase ([`PACED`] broadcasts at [`PACED_RATE`]/s) the p50 / p99 at a
//!    load both carry without queueing. Each text carries its phase, sequence number and send
//!    time (µs on the bench's clock, shared by every client).
//! 4. **The primary's memory**: `VmRSS` of the Node primary process and of clusterd once the
//!    workers are ready and one GET answered (idle), and `VmRSS` / `VmHWM` right after each load
//!    run (target: clusterd ≤ [`RSS_TARGET`] of the Node primary, on the peak over the tests).
//!
//! A fan-out handshake step without an answer within [`STEP_TIMEOUT`] (the Node primary loses
//! the first bytes a client sends after the upgrade, now and then) is started again, at most
//! [`MAX_STALLS`] times per run, and counted. Before each run the bench waits (at most
//! [`QUIET_WAIT`]) for the machine to be quiet (other builds skew the figures; how busy it was is
//! printed).
//!
//! For every run the CPU time (utime + stime from `/proc/<pid>/stat`) of the primary, of each
//! worker, of the load generator (wrk or node: `getrusage(RUSAGE_CHILDREN)`; the fan-out clients:
//! the bench's thread) and of the rest of the machine (`/proc/stat`) shows what saturates.
//! A server is used only once it is ready (clusterd: `status` shows every worker ready; Node: the
//! primary's `listening` line and every worker's `ready worker` line) and `GET /hello` answered
//! 200 from a worker. Everything is loopback; every wait, load run and phase has a deadline; every
//! process the bench starts is stopped (SIGTERM, then SIGKILL to its process group), also when the
//! bench panics, and gets SIGTERM from the kernel if the bench itself is killed.

mod common;

use common::{Process, Setup, WrkResult, mib};

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Interleaved rounds.
const ROUNDS: usize = 3;
/// Workers behind each primary.
const WORKERS: usize = 2;
/// polling_load.mjs: concurrent loops and seconds.
const POLL_CONCURRENCY: usize = 16;
const POLL_SECONDS: u64 = 5;
/// Fan-out runs: clients, and broadcasts in the throughput phase (about 200 000 deliveries each).
const FANOUTS: [Fanout; 2] = [Fanout { clients: 50, broadcasts: 4_000 }, Fanout { clients: 200, broadcasts: 1_000 }];
/// Clients that send (half of them on each worker), the text's length, broadcasts in flight.
const SENDERS: usize = 4;
const PAYLOAD: usize = 64;
const WINDOW: usize = 16;
/// Broadcasts before the measured phases (Node's JIT, the buffers).
const WARMUP: usize = 300;
/// The paced phase: broadcasts, their rate, and the most in flight before sending waits.
const PACED: usize = 500;
const PACED_RATE: f64 = 200.0;
const PACED_BACKLOG: usize = 64;

/// The targets of issue #5: clusterd / Node primary.
const HANDOFF_TARGET: f64 = 2.5;
const POLLING_TARGET: f64 = 2.0;
const FANOUT_TARGET: f64 = 1.3;
const RSS_TARGET: f64 = 0.2;

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a load generator may run beyond its duration before it is killed.
const LOAD_SLACK: Duration = Duration::from_secs(25);
/// Connecting every fan-out client; each handshake step; each phase.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const STEP_TIMEOUT: Duration = Duration::from_secs(1);
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Handshakes that may stall (no answer within [`STEP_TIMEOUT`]: started again) in one run.
const MAX_STALLS: usize = 20;
/// The largest WebSocket message the clients accept.
const MAX_MESSAGE: usize = 1 << 20;
/// Before each run, wait at most [`QUIET_WAIT`] for the machine to be less than [`QUIET_BUSY`] busy
/// (share of all cores over [`QUIET_SAMPLE`]).
const QUIET_WAIT: Duration = Duration::from_secs(15);
const QUIET_BUSY: f64 = 0.15;
const QUIET_SAMPLE: Duration = Duration::from_millis(500);
/// "Other CPU" (busy time charged to none of the measured processes) above this share of one core
/// is called out: something else was running.
const OTHER_CPU_WARNING: f64 = 0.10;

fn main() {
    let tools = Tools::find();
    let clusterd = common::binary(&common::target_dir(), "node_workers", "clusterd");
    common::ensure_node_modules(
        &tools.npm,
        &["socket.io", "socket.io-client", "@socket.io/sticky", "@socket.io/cluster-adapter"],
    );
    let started = Instant::now();
    let tests: Vec<Test> =
        [Test::Handoff, Test::Polling].into_iter().chain(FANOUTS.iter().map(|f| Test::Fanout(*f))).collect();
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        for &test in &tests {
            let order = if round % 2 == 1 { [Setup::Node, Setup::Clusterd] } else { [Setup::Clusterd, Setup::Node] };
            for setup in order {
                let run = measure(&tools, &clusterd, round, test, setup);
                eprintln!("round {round}/{ROUNDS} {} {}: {}", test.label(), setup.label(), run.summary());
                runs.push(run);
            }
        }
    }
    report(&runs, &tests, &tools, &clusterd, started.elapsed());
}

/// The external programs.
struct Tools {
    wrk: PathBuf,
    node: PathBuf,
    npm: PathBuf,
}

impl Tools {
    fn find() -> Self {
        let need = |name: &str, hint: &str| {
            common::find_in_path(name).unwrap_or_else(|| {
                eprintln!("error: `{name}` is not in PATH; this bench needs it. {hint}");
                std::process::exit(1);
            })
        };
        Self {
            wrk: need("wrk", "It measures the handoff rate: install it with `apt-get install wrk` (Debian package)."),
            node: need("node", "Install Node.js 20 or later (with npm)."),
            npm: need("npm", "Install npm (it comes with Node.js)."),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fanout {
    clients: usize,
    broadcasts: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    /// A new connection per request, wrk.
    Handoff,
    /// Socket.IO polling-only sessions, polling_load.mjs.
    Polling,
    /// Broadcast fan-out over WebSocket, the bench's own clients.
    Fanout(Fanout),
}

impl Test {
    fn label(self) -> String {
        match self {
            Self::Handoff => "handoff".into(),
            Self::Polling => "polling sessions".into(),
            Self::Fanout(f) => format!("fan-out {} clients", f.clients),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Handoff => "req/s",
            Self::Polling => "sessions/s",
            Self::Fanout(_) => "deliveries/s",
        }
    }

    /// What the primary does once per unit of [`Run::work`].
    fn work_unit(self) -> &'static str {
        match self {
            Self::Handoff => "connection",
            Self::Polling => "session",
            Self::Fanout(_) => "broadcast",
        }
    }

    fn target(self) -> f64 {
        match self {
            Self::Handoff => HANDOFF_TARGET,
            Self::Polling => POLLING_TARGET,
            Self::Fanout(_) => FANOUT_TARGET,
        }
    }
}

// ---- The servers ----------------------------------------------------------------------------------

/// A running primary with its workers; stopped on drop (a panic) if not before.
struct Server {
    process: Process,
    port: u16,
    /// The worker pids once all were ready.
    workers: Vec<i32>,
    /// clusterd's control socket.
    socket: PathBuf,
    // Last, so that it is removed after the server has stopped.
    dir: tempfile::TempDir,
}

impl Server {
    fn start(tools: &Tools, clusterd: &Path, setup: Setup) -> Self {
        let (dir, socket, log) = common::scratch("clusterd-node-workers-", "server.log");
        let port = common::free_port();
        let (process, workers) = match setup {
            Setup::Node => {
                common::start_node_primary(&tools.node, ("node_primary_exec.cjs", port, WORKERS), &log, START_TIMEOUT)
            }
            Setup::Clusterd => start_clusterd(clusterd, &tools.node, (port, &socket, &log)),
        };
        let mut server = Self { process, port, workers, socket, dir };
        match http_get(server.port, "/hello") {
            Ok((200, body)) if body.starts_with("hello from worker ") => server,
            Ok((code, body)) => {
                server.process.fail(&format!("GET /hello answered {code} {body:?}, not the worker's 200"))
            }
            Err(error) => server.process.fail(&format!("GET /hello failed: {error}")),
        }
    }
}

/// `clusterd --protocol node --workers 2 --control <socket> --listen 127.0.0.1:<port> -- node
/// worker.cjs` in benches/node, its output in `log`; waits until `status` shows every worker ready.
fn start_clusterd(clusterd: &Path, node: &Path, (port, socket, log): (u16, &Path, &Path)) -> (Process, Vec<i32>) {
    let args: Vec<String> = vec![
        "--protocol".into(),
        "node".into(),
        "--workers".into(),
        WORKERS.to_string(),
        "--control".into(),
        socket.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--".into(),
        node.display().to_string(),
        "worker.cjs".into(),
    ];
    let mut command = Command::new(clusterd);
    command.args(&args).current_dir(common::node_dir());
    common::log_to(&mut command, log, "clusterd");
    // `DEBUG` would make the Node packages log every request; `NODE_*` would change the workers.
    let child = common::spawn_group(&mut command, |name| name.starts_with("NODE_") || name == "DEBUG");
    let text = format!(
        "(cd {} && RUST_LOG=info {} {})",
        common::node_dir().display(),
        clusterd.display(),
        common::shell_join(&args)
    );
    let mut process = Process::new(Setup::Clusterd.label(), child, log.to_path_buf(), text, true);
    let what = format!("all {WORKERS} workers to be ready");
    let status = common::wait_for_status(&mut process, socket, (START_TIMEOUT, Duration::from_millis(5)), &what, |s| {
        s.all_ready(WORKERS)
    });
    (process, status.pids())
}

/// One GET with `Connection: close`: the status code and the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, common::IO_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(common::IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(common::IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no complete response: {text:?}"))?;
    Ok((common::status_code(head).ok_or_else(|| format!("no status line: {text:?}"))?, body.to_owned()))
}

// ---- One run --------------------------------------------------------------------------------------

/// One load run against one freshly started server.
struct Run {
    round: usize,
    test: Test,
    setup: Setup,
    /// req/s, sessions/s or deliveries/s.
    rate: f64,
    /// Requests, sessions or deliveries completed.
    done: u64,
    errors: u64,
    /// What went wrong, in words; empty if nothing.
    error_detail: String,
    /// Sessions or clients per worker.
    spread: String,
    /// Fan-out: the throughput phase's and the paced phase's p50 / p99, ms.
    latency: Option<[f64; 4]>,
    /// Fan-out: WebSocket handshakes that got no answer within [`STEP_TIMEOUT`] and were started
    /// again (not errors: the client tried again, as socket.io-client would).
    stalls: usize,
    /// Share of the machine busy just before the run (after [`wait_for_quiet`]).
    busy_before: f64,
    /// clusterd: workers that did not end cleanly when it stopped (from its log).
    unclean_stops: Vec<String>,
    cpu: Cpu,
    /// The primary's VmRSS / VmHWM in KiB: ready and idle, then right after the load.
    idle: (u64, u64),
    after: (u64, u64),
    server_command: String,
    load_command: String,
    exit: Option<ExitStatus>,
}

impl Run {
    /// Connections, sessions, or broadcasts relayed (the primary relays each one once).
    fn work(&self) -> f64 {
        match self.test {
            Test::Fanout(f) => self.done as f64 / f.clients.max(1) as f64,
            _ => self.done as f64,
        }
    }

    fn summary(&self) -> String {
        let latency = self.latency.map_or(String::new(), |[p50, p99, paced50, paced99]| {
            format!(", p50 {p50:.2} / p99 {p99:.2} ms (paced {paced50:.2} / {paced99:.2} ms)")
        });
        format!(
            "{:.0} {}{latency}, primary {:.0} % of a core, RSS {:.1} MiB idle / {:.1} MiB after{}",
            self.rate,
            self.test.unit(),
            self.cpu.pct(self.cpu.primary),
            mib(self.idle.0),
            mib(self.after.0),
            if self.error_detail.is_empty() { String::new() } else { format!("; {}", self.error_detail) }
        ) + &if self.stalls > 0 { format!("; {} stalled handshakes", self.stalls) } else { String::new() }
    }
}

/// CPU seconds over a load: the primary, each worker, the load generator, the rest of the
/// machine; and the wall time.
#[derive(Debug, Default, Clone)]
struct Cpu {
    primary: f64,
    workers: Vec<f64>,
    load: f64,
    other: f64,
    seconds: f64,
}

impl Cpu {
    /// Share of one core, in %.
    fn pct(&self, seconds: f64) -> f64 {
        if self.seconds > 0.0 { seconds / self.seconds * 100.0 } else { 0.0 }
    }
}

/// The counters a [`Cpu`] is the difference of.
struct CpuSample {
    at: Instant,
    primary: u64,
    workers: Vec<u64>,
    children: Duration,
    thread: Duration,
    machine: (u64, u64),
}

impl CpuSample {
    fn take(primary: i32, workers: &[i32]) -> Self {
        Self {
            at: Instant::now(),
            primary: common::cpu_ticks_or_0(primary),
            workers: workers.iter().map(|&w| common::cpu_ticks_or_0(w)).collect(),
            children: common::children_cpu(),
            thread: thread_cpu(),
            machine: common::machine_jiffies(),
        }
    }

    /// From `self` to `later`; the load is the waited-for children's time (`external`) or this
    /// thread's (the fan-out clients).
    fn until(&self, later: &Self, external: bool) -> Cpu {
        let hz = common::clock_ticks_per_second() as f64;
        let ticks = |a: u64, b: u64| a.saturating_sub(b) as f64 / hz;
        let primary = ticks(later.primary, self.primary);
        let workers: Vec<f64> = later.workers.iter().zip(&self.workers).map(|(a, b)| ticks(*a, *b)).collect();
        let load = if external { later.children - self.children } else { later.thread - self.thread }.as_secs_f64();
        let busy = ticks(later.machine.0, self.machine.0);
        Cpu {
            primary,
            other: (busy - primary - workers.iter().sum::<f64>() - load).max(0.0),
            workers,
            load,
            seconds: later.at.duration_since(self.at).as_secs_f64(),
        }
    }
}

/// The CPUs online (the `/proc/stat` figures cover them all).
fn cores() -> f64 {
    // SAFETY: sysconf reads a system constant; it has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as f64 } else { 1.0 }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).expect("getrusage failed");
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0).unsigned_abs()) + Duration::from_micros(t.tv_usec().max(0).unsigned_abs())
    };
    time(usage.user_time()) + time(usage.system_time())
}

fn measure(tools: &Tools, clusterd: &Path, round: usize, test: Test, setup: Setup) -> Run {
    let busy_before = wait_for_quiet();
    let mut server = Server::start(tools, clusterd, setup);
    let idle = common::proc_memory(server.process.pid);
    let mut run = Run {
        round,
        test,
        setup,
        rate: 0.0,
        done: 0,
        errors: 0,
        error_detail: String::new(),
        spread: String::new(),
        latency: None,
        stalls: 0,
        busy_before,
        unclean_stops: Vec::new(),
        cpu: Cpu::default(),
        idle,
        after: (0, 0),
        server_command: server.process.command.clone(),
        load_command: String::new(),
        exit: None,
    };
    match test {
        Test::Handoff | Test::Polling => external_load(tools, &mut server, &mut run),
        Test::Fanout(fanout) => fanout_load(&mut server, fanout, &mut run),
    }
    if let Some(status) = server.process.exited() {
        server.process.fail(&format!("the server exited during the run ({status})"));
    }
    if setup == Setup::Clusterd {
        let pids = common::status(&server.socket)
            .unwrap_or_else(|e| server.process.fail(&format!("status after the run failed: {e}")))
            .pids();
        if pids != server.workers {
            run.error_detail.push_str(&format!(" workers replaced during the run: {:?} → {pids:?}", server.workers));
        }
    }
    run.after = common::proc_memory(server.process.pid);
    run.exit = server.process.stop();
    if setup == Setup::Clusterd {
        run.unclean_stops = unclean_stops(&server.process.log);
    }
    run
}

/// The workers that clusterd's log shows ending with an exit code other than 0 (a Node worker
/// stopped by SIGTERM is "killed by SIGTERM"; one that crashed while stopping, say on an internal
/// assertion, "exited with code 1").
fn unclean_stops(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut found: Vec<String> = text
        .lines()
        .filter(|l| l.contains("worker exited with code") && !l.contains("exited with code 0 "))
        .map(|l| l.split_once("INFO ").map_or(l, |(_, rest)| rest).trim().to_owned())
        .collect();
    if let Some(error) = text.lines().find(|l| l.contains("Error [ERR_") || l.contains("Error: ")) {
        found.push(format!("first error in the log: {}", error.trim()));
    }
    found
}

/// Waits (at most [`QUIET_WAIT`]) until the machine's busy share over [`QUIET_SAMPLE`] is below
/// [`QUIET_BUSY`]: other processes (builds) skew the figures, and on 2 cores they often come and
/// go. Returns the last share measured; the run goes ahead anyway after the wait.
fn wait_for_quiet() -> f64 {
    let deadline = Instant::now() + QUIET_WAIT;
    loop {
        let (busy0, total0) = common::machine_jiffies();
        std::thread::sleep(QUIET_SAMPLE);
        let (busy1, total1) = common::machine_jiffies();
        let share = if total1 > total0 { (busy1 - busy0) as f64 / (total1 - total0) as f64 } else { 0.0 };
        if share < QUIET_BUSY || Instant::now() >= deadline {
            return share;
        }
    }
}

/// wrk (handoff) or polling_load.mjs (polling sessions), as a child process with a deadline.
fn external_load(tools: &Tools, server: &mut Server, run: &mut Run) {
    let url = format!("http://127.0.0.1:{}/", server.port);
    let (program, args, seconds) = match run.test {
        Test::Handoff => (&tools.wrk, common::wrk_args(format!("{url}hello"), true), common::WRK_SECONDS),
        _ => (
            &tools.node,
            vec!["polling_load.mjs".into(), url, POLL_CONCURRENCY.to_string(), POLL_SECONDS.to_string()],
            POLL_SECONDS,
        ),
    };
    let name = program.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    run.load_command = match run.test {
        Test::Handoff => format!("{name} {}", common::shell_join(&args)),
        _ => format!("(cd {} && {name} {})", common::node_dir().display(), common::shell_join(&args)),
    };
    let out_path = server.dir.path().join("load.out");
    let err_path = server.dir.path().join("load.err");
    let mut command = Command::new(program);
    command
        .args(&args)
        .current_dir(common::node_dir())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("cannot create the load's output file"))
        .stderr(File::create(&err_path).expect("cannot create the load's error file"));
    common::clean_env(&mut command, |name| name.starts_with("NODE_") || name == "DEBUG");
    common::die_with_bench(&mut command);
    let before = CpuSample::take(server.process.pid, &server.workers);
    let mut child =
        command.spawn().unwrap_or_else(|e| server.process.fail(&format!("cannot start {}: {e}", run.load_command)));
    let status = common::wait_timeout(&mut child, Duration::from_secs(seconds) + LOAD_SLACK);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    run.cpu = before.until(&CpuSample::take(server.process.pid, &server.workers), true);
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let errors = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        None => server.process.fail(&format!(
            "{} did not finish within {LOAD_SLACK:?} of its duration:\n{output}{errors}",
            run.load_command
        )),
        Some(status) if !status.success() => {
            server.process.fail(&format!("{} failed ({status}):\n{output}{errors}", run.load_command))
        }
        Some(_) => {}
    }
    let parsed = match run.test {
        Test::Handoff => read_wrk(&output, run),
        _ => read_polling(&output, run),
    };
    if let Err(e) = parsed {
        server.process.fail(&format!("cannot read the load's output ({e}):\n{output}{errors}"));
    }
}

/// wrk's `Requests/sec`, request count, non-2xx and socket errors.
fn read_wrk(text: &str, run: &mut Run) -> Result<(), String> {
    let wrk = WrkResult::parse(text)?;
    (run.rate, run.done, run.errors) = (wrk.rps, wrk.requests, wrk.errors());
    if run.errors > 0 {
        let [c, r, w, t] = wrk.socket_errors;
        run.error_detail = format!("non-2xx {}, socket errors connect {c} read {r} write {w} timeout {t}", wrk.non_2xx);
    }
    Ok(())
}

/// polling_load.mjs's JSON line.
fn read_polling(text: &str, run: &mut Run) -> Result<(), String> {
    let line = text.lines().rev().find(|l| l.starts_with('{')).ok_or("no JSON line")?;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON {line:?}: {e}"))?;
    run.done = v["sessions"].as_u64().ok_or("no `sessions`")?;
    run.errors = v["errors"].as_u64().ok_or("no `errors`")?;
    let seconds = v["seconds"].as_f64().filter(|s| *s > 0.0).ok_or("no `seconds`")?;
    run.rate = run.done as f64 / seconds;
    let kinds = |key: &str| {
        v[key]
            .as_object()
            .map_or(String::new(), |m| m.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", "))
    };
    run.spread = kinds("workers");
    if run.errors > 0 {
        let samples: Vec<&str> =
            v["error_samples"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).take(2).collect());
        run.error_detail = format!("{} (e.g. {})", kinds("error_kinds"), samples.join("; "));
    }
    Ok(())
}

/// The fan-out clients, on a current-thread runtime on this thread.
fn fanout_load(server: &mut Server, fanout: Fanout, run: &mut Run) {
    run.load_command = format!(
        "(the bench's {} WebSocket clients: ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket, {SENDERS} \
         senders, {PAYLOAD}-byte texts, {WINDOW} broadcasts in flight)",
        fanout.clients, server.port
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| server.process.fail(&format!("cannot build a Tokio runtime: {e}")));
    let local = tokio::task::LocalSet::new();
    let pids = (server.process.pid, server.workers.clone());
    let outcome = match local.block_on(&runtime, clients(server.port, fanout, pids)) {
        Ok(outcome) => outcome,
        Err(error) => server.process.fail(&format!("fan-out with {} clients: {error}", fanout.clients)),
    };
    if outcome.spread.len() != WORKERS {
        server.process.fail(&format!("the clients reached workers {:?}, not all {WORKERS}", outcome.spread));
    }
    let (burst, paced) = (&outcome.burst, &outcome.paced);
    run.rate = burst.rate();
    run.done = burst.deliveries;
    run.latency = Some([burst.p50, burst.p99, paced.p50, paced.p99].map(|us| f64::from(us) / 1000.0));
    run.cpu = outcome.cpu;
    run.spread = outcome.spread.iter().map(|(id, n)| format!("{id}: {n}")).collect::<Vec<_>>().join(", ");
    let mut problems = Vec::new();
    for (name, phase, broadcasts) in [("throughput", burst, fanout.broadcasts), ("paced", paced, PACED)] {
        let expected = (broadcasts * fanout.clients) as u64;
        if phase.completed != broadcasts || phase.deliveries != expected {
            run.errors += expected.saturating_sub(phase.deliveries);
            problems.push(format!(
                "{name}: {} of {broadcasts} broadcasts reached every client, {} of {expected} deliveries",
                phase.completed, phase.deliveries
            ));
        }
    }
    if outcome.unexpected > 0 {
        problems.push(format!("{} unexpected packets (e.g. {:?})", outcome.unexpected, outcome.sample));
    }
    run.stalls = outcome.stalls;
    run.error_detail = problems.join("; ");
}

// ---- The fan-out clients --------------------------------------------------------------------------

/// What the fan-out clients measured.
struct Outcome {
    /// Clients per worker id, in id order.
    spread: Vec<(u64, usize)>,
    stalls: usize,
    burst: Phase,
    paced: Phase,
    /// Over the throughput phase.
    cpu: Cpu,
    unexpected: u64,
    sample: Option<String>,
}

/// One phase's deliveries.
#[derive(Debug, Default, Clone)]
struct Phase {
    /// Broadcasts that reached every client before the deadline.
    completed: usize,
    deliveries: u64,
    /// First send → last receipt.
    seconds: f64,
    /// Latency percentiles, µs.
    p50: u32,
    p99: u32,
}

impl Phase {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.deliveries as f64 / self.seconds } else { 0.0 }
    }
}

/// What every client task shares (one thread: never borrowed across an await).
struct Shared {
    base: Instant,
    clients: u32,
    /// The phase being measured; deliveries of another one are ignored.
    phase: Cell<u64>,
    /// For each broadcast of the phase, the clients that have yet to receive it.
    remaining: RefCell<Vec<u32>>,
    completed: Cell<usize>,
    deliveries: Cell<u64>,
    last_receipt_us: Cell<u64>,
    latencies: RefCell<Vec<u32>>,
    unexpected: Cell<u64>,
    sample: RefCell<Option<String>>,
    /// Woken when a broadcast has reached every client.
    progress: Notify,
}

/// A broadcast as it arrives: the event and the start of its text.
const BROADCAST_PREFIX: &[u8] = br#"42["chat message",""#;

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A text message from the server, read at `now_us`; replies go to `out`.
    fn on_text(&self, text: &[u8], now_us: u64, out: &mut Vec<u8>) {
        let known = match text.strip_prefix(BROADCAST_PREFIX) {
            Some(rest) => self.on_broadcast(rest, now_us).is_some(),
            // An Engine.IO ping.
            None if text == b"2" => {
                out.extend(client_frame(OP_TEXT, b"3"));
                true
            }
            None => false,
        };
        if !known {
            self.unexpected.set(self.unexpected.get() + 1);
            self.sample
                .borrow_mut()
                .get_or_insert_with(|| String::from_utf8_lossy(&text[..text.len().min(100)]).into());
        }
    }

    /// `<phase>:<seq>:<sent µs>:xxx…"]`; `None` if malformed or a duplicate.
    fn on_broadcast(&self, rest: &[u8], now_us: u64) -> Option<()> {
        let mut fields = rest.splitn(4, |&b| b == b':');
        let mut number = || -> Option<u64> { std::str::from_utf8(fields.next()?).ok()?.parse().ok() };
        let (phase, seq, sent) = (number()?, number()?, number()?);
        if phase != self.phase.get() {
            return Some(());
        }
        let mut remaining = self.remaining.borrow_mut();
        let left = remaining.get_mut(usize::try_from(seq).ok()?)?;
        *left = left.checked_sub(1)?;
        if *left == 0 {
            self.completed.set(self.completed.get() + 1);
            self.progress.notify_one();
        }
        self.deliveries.set(self.deliveries.get() + 1);
        self.last_receipt_us.set(now_us);
        self.latencies.borrow_mut().push(u32::try_from(now_us.saturating_sub(sent)).unwrap_or(u32::MAX));
        Some(())
    }

    fn begin(&self, phase: u64, broadcasts: usize) {
        self.phase.set(phase);
        *self.remaining.borrow_mut() = vec![self.clients; broadcasts];
        self.completed.set(0);
        self.deliveries.set(0);
        self.latencies.borrow_mut().clear();
    }
}

/// How a phase sends.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// As fast as broadcasts complete, at most [`WINDOW`] in flight.
    Window,
    /// At this rate per second, at most [`PACED_BACKLOG`] in flight.
    Rate(f64),
}

/// Connects the clients one after the other, then runs the phases.
async fn clients(port: u16, fanout: Fanout, (primary, workers): (i32, Vec<i32>)) -> Result<Outcome, String> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut connected: Vec<Client> = Vec::with_capacity(fanout.clients);
    let mut stalls = 0;
    while connected.len() < fanout.clients {
        let i = connected.len();
        let attempt = tokio::time::timeout_at(deadline, Client::connect(port))
            .await
            .map_err(|_| format!("{i} of {} clients connected within {CONNECT_TIMEOUT:?}", fanout.clients))?;
        match attempt {
            Ok(client) => connected.push(client),
            Err(Handshake::Stalled(_)) if stalls < MAX_STALLS => stalls += 1,
            Err(Handshake::Stalled(step)) => {
                return Err(format!("client {i}: no answer {step} within {STEP_TIMEOUT:?}, {MAX_STALLS} times"));
            }
            Err(Handshake::Failed(error)) => return Err(format!("client {i}: {error}")),
        }
    }
    let mut spread: Vec<(u64, usize)> = Vec::new();
    for client in &connected {
        match spread.iter_mut().find(|(id, _)| *id == client.worker) {
            Some((_, n)) => *n += 1,
            None => spread.push((client.worker, 1)),
        }
    }
    spread.sort_unstable();

    let shared = Rc::new(Shared {
        base: Instant::now(),
        clients: u32::try_from(fanout.clients).expect("client count"),
        phase: Cell::new(0),
        remaining: RefCell::new(Vec::new()),
        completed: Cell::new(0),
        deliveries: Cell::new(0),
        last_receipt_us: Cell::new(0),
        latencies: RefCell::new(Vec::new()),
        unexpected: Cell::new(0),
        sample: RefCell::new(None),
        progress: Notify::new(),
    });
    // The senders: the first clients of each worker, in turn, so that they alternate workers.
    let per_worker = SENDERS.div_ceil(spread.len().max(1));
    let mut chosen: Vec<usize> = Vec::new();
    for rank in 0..per_worker {
        for &(worker, _) in &spread {
            if let Some(i) = connected.iter().enumerate().filter(|(_, c)| c.worker == worker).nth(rank).map(|(i, _)| i)
            {
                chosen.push(i);
            }
        }
    }
    chosen.truncate(SENDERS);
    let stop = CancellationToken::new();
    let mut senders = vec![None; chosen.len()];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in connected.into_iter().enumerate() {
        let outgoing = chosen.iter().position(|&c| c == i).map(|slot| {
            let (tx, rx) = mpsc::unbounded_channel();
            senders[slot] = Some(tx);
            rx
        });
        tasks.spawn_local(client.run(Rc::clone(&shared), outgoing, stop.clone()));
    }
    let senders: Vec<_> = senders.into_iter().flatten().collect();

    let phases = async {
        broadcast(&shared, &senders, (1, WARMUP), Pace::Window).await;
        let before = CpuSample::take(primary, &workers);
        let burst = broadcast(&shared, &senders, (2, fanout.broadcasts), Pace::Window).await;
        let cpu = before.until(&CpuSample::take(primary, &workers), false);
        let paced = broadcast(&shared, &senders, (3, PACED), Pace::Rate(PACED_RATE)).await;
        (burst, cpu, paced)
    };
    // A client that fails (the server closed it, a bad frame) ends the run at once.
    let (burst, cpu, paced) = tokio::select! {
        outcome = phases => outcome,
        Some(ended) = tasks.join_next() => {
            let why = ended.map_err(|e| e.to_string()).and_then(|r| r).err().unwrap_or_else(|| "ended".into());
            return Err(format!("a client stopped during the run: {why}"));
        }
    };
    stop.cancel();
    while let Some(ended) = tasks.join_next().await {
        ended.map_err(|e| e.to_string())?.map_err(|e| format!("a client failed: {e}"))?;
    }
    let sample = shared.sample.borrow().clone();
    Ok(Outcome { spread, stalls, burst, paced, cpu, unexpected: shared.unexpected.get(), sample })
}

/// Phase `id`: `count` broadcasts, the senders taking turns, paced by `pace`; returns when every
/// client has every broadcast, or at the phase's deadline (then some are missing).
async fn broadcast(
    shared: &Shared,
    senders: &[mpsc::UnboundedSender<Vec<u8>>],
    (id, count): (u64, usize),
    pace: Pace,
) -> Phase {
    shared.begin(id, count);
    let start = tokio::time::Instant::now();
    let deadline = start + PHASE_TIMEOUT;
    let first_send_us = shared.now_us();
    let window = match pace {
        Pace::Window => WINDOW,
        Pace::Rate(_) => PACED_BACKLOG,
    };
    let mut sent = 0;
    'sending: while sent < count {
        if let Pace::Rate(rate) = pace {
            tokio::time::sleep_until(start + Duration::from_secs_f64(sent as f64 / rate)).await;
        }
        while sent - shared.completed.get() >= window {
            if tokio::time::timeout_at(deadline, shared.progress.notified()).await.is_err() {
                break 'sending;
            }
        }
        let packet = chat_message(id, sent as u64, shared.now_us());
        // A sender whose connection is gone ends its task, and the run with it.
        let _ = senders[sent % senders.len()].send(client_frame(OP_TEXT, &packet));
        sent += 1;
    }
    while shared.completed.get() < count {
        if tokio::time::timeout_at(deadline, shared.progress.notified()).await.is_err() {
            break;
        }
    }
    let mut latencies = std::mem::take(&mut *shared.latencies.borrow_mut());
    latencies.sort_unstable();
    let at = |q: f64| -> u32 {
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(rank - 1).copied().unwrap_or(0)
    };
    Phase {
        completed: shared.completed.get(),
        deliveries: shared.deliveries.get(),
        seconds: shared.last_receipt_us.get().saturating_sub(first_send_us) as f64 / 1e6,
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// `42["chat message","<phase>:<seq>:<sent µs>:xxx…"]`, the text padded with `x` to [`PAYLOAD`]
/// bytes.
fn chat_message(phase: u64, seq: u64, sent_us: u64) -> Vec<u8> {
    let head = format!("{phase}:{seq}:{sent_us}:");
    let mut packet = Vec::with_capacity(BROADCAST_PREFIX.len() + PAYLOAD.max(head.len()) + 2);
    packet.extend_from_slice(BROADCAST_PREFIX);
    packet.extend_from_slice(head.as_bytes());
    packet.resize(packet.len() + PAYLOAD.saturating_sub(head.len()), b'x');
    packet.extend_from_slice(br#""]"#);
    packet
}

// WebSocket opcodes (RFC 6455).
const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Client frames must be masked; the server cannot tell one key from another.
const MASK: [u8; 4] = [0x3c, 0xa5, 0x5a, 0xc3];

/// One final, masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// The server frame at the start of `buf` (FIN, opcode, where its payload is), `None` if it is
/// not all there yet.
fn parse_frame(buf: &[u8]) -> Result<Option<(bool, u8, std::ops::Range<usize>)>, String> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b1 & 0x80 != 0 {
        return Err("the server sent a masked frame".into());
    }
    let (len, header) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(n) => (usize::from(u16::from_be_bytes([n[0], n[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(n) => (usize::try_from(u64::from_be_bytes(n.try_into().expect("8 bytes"))).unwrap_or(usize::MAX), 10),
            None => return Ok(None),
        },
        n => (usize::from(n), 2),
    };
    if len > MAX_MESSAGE {
        return Err(format!("a {len}-byte frame from the server (more than {MAX_MESSAGE})"));
    }
    Ok((buf.len() >= header + len).then(|| (b0 & 0x80 != 0, b0 & 0x0f, header..header + len)))
}

/// How a client's handshake failed.
enum Handshake {
    /// No answer to this step within [`STEP_TIMEOUT`]: worth starting again.
    Stalled(&'static str),
    Failed(String),
}

/// One Socket.IO client over WebSocket, connected to the default namespace.
struct Client {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// The fragments of a message not yet complete.
    partial: Vec<u8>,
    /// The worker that serves it (its `whoami` answer).
    worker: u64,
}

impl Client {
    /// The WebSocket upgrade, Engine.IO open, Socket.IO connect, then `whoami`, whose answer must
    /// say "websocket". Each answer must come within [`STEP_TIMEOUT`].
    async fn connect(port: u16) -> Result<Self, Handshake> {
        let failed = |what: &str, e: std::io::Error| Handshake::Failed(format!("{what}: {e}"));
        let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| failed("connect", e))?;
        stream.set_nodelay(true).map_err(|e| failed("TCP_NODELAY", e))?;
        let mut client = Self { stream, buf: Vec::with_capacity(16 * 1024), partial: Vec::new(), worker: 0 };
        let request = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        client.stream.write_all(request.as_bytes()).await.map_err(|e| failed("send the upgrade", e))?;
        let head_end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if client.buf.len() > 8192 {
                return Err(Handshake::Failed("no end of the upgrade response within 8 KiB".into()));
            }
            client.read_within("to the upgrade request").await?;
        };
        if !client.buf.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&client.buf[..head_end]).lines().next().unwrap_or("").to_owned();
            return Err(Handshake::Failed(format!("the upgrade was answered {line:?}")));
        }
        client.buf.drain(..head_end);
        let open = client.next_text("after the upgrade (Engine.IO open)").await?;
        expect(&open, b"0{", "the Engine.IO open packet")?;
        client.send(b"40").await?;
        let connected = client.next_text("to the namespace connect (40)").await?;
        expect(&connected, b"40", "the namespace connect")?;
        client.send(br#"420["whoami"]"#).await?;
        let answer = client.next_text("to whoami").await?;
        expect(&answer, b"430", "the whoami ack")?;
        let me: Value = serde_json::from_slice(&answer[3..])
            .map_err(|e| Handshake::Failed(format!("a bad whoami ack ({e}): {}", String::from_utf8_lossy(&answer))))?;
        if me[0]["transport"] != "websocket" {
            return Err(Handshake::Failed(format!("whoami says the transport is {}", me[0]["transport"])));
        }
        client.worker = me[0]["worker"].as_u64().ok_or_else(|| Handshake::Failed(format!("no worker id in {me}")))?;
        Ok(client)
    }

    /// Reads more of the handshake within [`STEP_TIMEOUT`]; `step` names what is awaited.
    async fn read_within(&mut self, step: &'static str) -> Result<(), Handshake> {
        self.buf.reserve(16 * 1024);
        match tokio::time::timeout(STEP_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(Handshake::Stalled(step)),
            Ok(Ok(0)) => {
                Err(Handshake::Failed(format!("the server closed the connection (awaiting an answer {step})")))
            }
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Handshake::Failed(format!("read: {e}"))),
        }
    }

    async fn send(&mut self, text: &[u8]) -> Result<(), Handshake> {
        self.stream.write_all(&client_frame(OP_TEXT, text)).await.map_err(|e| Handshake::Failed(format!("send: {e}")))
    }

    /// The next text message of the handshake (answering pings on the way): the server sends
    /// nothing else before the step is answered.
    async fn next_text(&mut self, step: &'static str) -> Result<Vec<u8>, Handshake> {
        loop {
            let mut first = None;
            let mut out = Vec::new();
            self.parse(&mut out, |text, out| {
                if text == b"2" {
                    out.extend(client_frame(OP_TEXT, b"3"));
                } else if first.is_none() {
                    first = Some(text.to_vec());
                }
            })
            .map_err(Handshake::Failed)?;
            if !out.is_empty() {
                self.stream.write_all(&out).await.map_err(|e| Handshake::Failed(format!("send: {e}")))?;
            }
            if let Some(text) = first {
                return Ok(text);
            }
            self.read_within(step).await?;
        }
    }

    /// Every complete frame buffered: text messages go to `on_text`, pings are answered (into
    /// `out`), a close is an error.
    fn parse(&mut self, out: &mut Vec<u8>, mut on_text: impl FnMut(&[u8], &mut Vec<u8>)) -> Result<(), String> {
        let mut at = 0;
        while let Some((fin, opcode, payload)) = parse_frame(&self.buf[at..])? {
            let body = &self.buf[at + payload.start..at + payload.end];
            match opcode {
                OP_TEXT | OP_CONTINUATION if fin && self.partial.is_empty() => on_text(body, out),
                OP_TEXT | OP_CONTINUATION => {
                    self.partial.extend_from_slice(body);
                    if self.partial.len() > MAX_MESSAGE {
                        return Err("a fragmented message larger than the limit".into());
                    }
                    if fin {
                        on_text(&self.partial, out);
                        self.partial.clear();
                    }
                }
                OP_PING => out.extend(client_frame(OP_PONG, body)),
                OP_PONG => {}
                OP_CLOSE => {
                    return Err(format!("the server closed the WebSocket ({:?})", String::from_utf8_lossy(body)));
                }
                other => return Err(format!("an unexpected frame (opcode {other})")),
            }
            at += payload.end;
        }
        self.buf.drain(..at);
        Ok(())
    }

    /// Receives until `stop`, every text to `shared`; writes the frames `outgoing` brings (a
    /// sender's).
    async fn run(
        mut self,
        shared: Rc<Shared>,
        mut outgoing: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
        stop: CancellationToken,
    ) -> Result<(), String> {
        let mut out = Vec::new();
        loop {
            self.buf.reserve(16 * 1024);
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                Some(frame) = next_frame(&mut outgoing) => {
                    self.stream.write_all(&frame).await.map_err(|e| format!("send: {e}"))?;
                }
                read = self.stream.read_buf(&mut self.buf) => {
                    match read {
                        Ok(0) => return Err("the server closed the connection".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read: {e}")),
                    }
                    // Every message of this read had arrived by now.
                    let now = shared.now_us();
                    self.parse(&mut out, |text, out| shared.on_text(text, now, out))?;
                    if !out.is_empty() {
                        self.stream.write_all(&out).await.map_err(|e| format!("send: {e}"))?;
                        out.clear();
                    }
                }
            }
        }
    }
}

/// `Failed` unless `text` starts with `prefix`.
fn expect(text: &[u8], prefix: &[u8], what: &str) -> Result<(), Handshake> {
    if text.starts_with(prefix) {
        Ok(())
    } else {
        Err(Handshake::Failed(format!("expected {what}, got {:?}", String::from_utf8_lossy(text))))
    }
}

/// The next frame a sender must write; pending for ever for the other clients.
async fn next_frame(outgoing: &mut Option<mpsc::UnboundedReceiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match outgoing {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

// ---- The report -----------------------------------------------------------------------------------

/// The files under `dir`, recursively (clusterd's sources, for the staleness warning).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { dirs.push(path) } else { files.push(path) }
        }
    }
    files
}

/// Median of `f` over the runs of `test` on `setup`, with the lowest and highest.
fn stats(runs: &[Run], test: Test, setup: Setup, f: impl Fn(&Run) -> f64) -> (f64, f64, f64) {
    let values: Vec<f64> = runs.iter().filter(|r| r.test == test && r.setup == setup).map(f).collect();
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (common::median(values), low, high)
}

/// clusterd / Node in each round, marked `†` where either run had the machine busy beyond the
/// servers and the load (another process was running).
fn round_ratios(runs: &[Run], test: Test) -> String {
    let noisy = |r: &Run| r.cpu.other > OTHER_CPU_WARNING * r.cpu.seconds;
    (1..=ROUNDS)
        .filter_map(|round| {
            let find = |setup| runs.iter().find(|r| r.round == round && r.test == test && r.setup == setup);
            let (node, clusterd) = (find(Setup::Node)?, find(Setup::Clusterd)?);
            let ratio = clusterd.rate / node.rate.max(f64::MIN_POSITIVE);
            Some(format!("{ratio:.2}{}", if noisy(node) || noisy(clusterd) { "†" } else { "" }))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn yes(met: bool) -> &'static str {
    if met { "**yes**" } else { "**no**" }
}

/// Thousands separated by a space, as in the README.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn report(runs: &[Run], tests: &[Test], tools: &Tools, clusterd: &Path, took: Duration) {
    println!();
    println!(
        "## clusterd `--protocol node` against the Node.js primary, the same `worker.cjs`, {WORKERS} workers \
         ({ROUNDS} interleaved rounds, medians; min–max over the rounds in brackets)"
    );
    println!();
    println!("| measurement | Node primary | clusterd | clusterd / Node | target | met |");
    println!("|---|---|---|---|---|---|");
    let range =
        |(m, lo, hi): (f64, f64, f64), precision: usize| format!("{m:.precision$} ({lo:.precision$}–{hi:.precision$})");
    for &test in tests {
        let rate = |setup| stats(runs, test, setup, |r| r.rate);
        let (node, clusterd) = (rate(Setup::Node), rate(Setup::Clusterd));
        let ratio = if node.0 > 0.0 { clusterd.0 / node.0 } else { 0.0 };
        let what = match test {
            Test::Handoff => format!(
                "handoff: new connection per request (`wrk -t{} -c{} -d{}s -H 'Connection: close'` /hello), req/s",
                common::WRK_THREADS,
                common::WRK_CONNECTIONS,
                common::WRK_SECONDS
            ),
            Test::Polling => format!(
                "Socket.IO polling sessions established per second ({POLL_CONCURRENCY} loops, socket.io-client, \
                 polling only)"
            ),
            Test::Fanout(f) => format!(
                "broadcast fan-out, WebSocket, {} clients ({SENDERS} senders, {PAYLOAD} B, {WINDOW} in flight), \
                 deliveries/s",
                f.clients
            ),
        };
        let mut met = ratio >= test.target();
        let mut target = format!("≥ {:.1}×", test.target());
        if let Test::Fanout(_) = test {
            let p99 = |setup| stats(runs, test, setup, |r| r.latency.map_or(0.0, |l| l[1])).0;
            met &= p99(Setup::Clusterd) < p99(Setup::Node);
            target.push_str(", lower p99");
        }
        println!(
            "| {what} | {} | {} | **{ratio:.2}×** (rounds: {}) | {target} | {} |",
            range(node, 0),
            range(clusterd, 0),
            round_ratios(runs, test),
            yes(met)
        );
        if let Test::Fanout(_) = test {
            let lat = |setup, i: usize| stats(runs, test, setup, |r| r.latency.map_or(0.0, |l| l[i])).0;
            println!(
                "| — its latency under that load, p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | p99 {:.2}× | | |",
                lat(Setup::Node, 0),
                lat(Setup::Node, 1),
                lat(Setup::Clusterd, 0),
                lat(Setup::Clusterd, 1),
                lat(Setup::Clusterd, 1) / lat(Setup::Node, 1).max(f64::MIN_POSITIVE)
            );
            println!(
                "| — latency at {PACED_RATE:.0} broadcasts/s, p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | p99 {:.2}× | | |",
                lat(Setup::Node, 2),
                lat(Setup::Node, 3),
                lat(Setup::Clusterd, 2),
                lat(Setup::Clusterd, 3),
                lat(Setup::Clusterd, 3) / lat(Setup::Node, 3).max(f64::MIN_POSITIVE)
            );
        }
        // What the primary spent per unit of work: a connection, a session, a relayed broadcast.
        let unit = test.work_unit();
        let per_unit = |setup| stats(runs, test, setup, |r| r.cpu.primary / r.work().max(1.0) * 1e6).0;
        let pct = |setup| stats(runs, test, setup, |r| r.cpu.pct(r.cpu.primary)).0;
        println!(
            "| — the primary's CPU: % of a core / µs per {unit} | {:.0} % / {:.0} µs | {:.0} % / {:.0} µs | {:.2}× per \
             {unit} | | |",
            pct(Setup::Node),
            per_unit(Setup::Node),
            pct(Setup::Clusterd),
            per_unit(Setup::Clusterd),
            per_unit(Setup::Clusterd) / per_unit(Setup::Node).max(f64::MIN_POSITIVE)
        );
    }
    // Memory: idle over every run; after the load and peak, the largest per-test median.
    let memory = |setup: Setup, f: &dyn Fn(&Run) -> u64| -> f64 {
        tests.iter().map(|&t| stats(runs, t, setup, |r| mib(f(r))).0).fold(0.0, f64::max)
    };
    let idle = |setup: Setup| common::median(runs.iter().filter(|r| r.setup == setup).map(|r| mib(r.idle.0)));
    let (idle_node, idle_clusterd) = (idle(Setup::Node), idle(Setup::Clusterd));
    println!(
        "| the primary's memory, idle (VmRSS, workers ready), MiB | {idle_node:.1} | {idle_clusterd:.1} | **{:.3}** | \
         ≤ {RSS_TARGET} | {} |",
        idle_clusterd / idle_node,
        yes(idle_clusterd <= RSS_TARGET * idle_node)
    );
    let (after_node, after_clusterd) = (memory(Setup::Node, &|r| r.after.0), memory(Setup::Clusterd, &|r| r.after.0));
    println!(
        "| the primary's memory after the load (VmRSS, the most loaded test), MiB | {after_node:.1} | {after_clusterd:.1} \
         | **{:.3}** | ≤ {RSS_TARGET} | {} |",
        after_clusterd / after_node,
        yes(after_clusterd <= RSS_TARGET * after_node)
    );
    let (peak_node, peak_clusterd) = (memory(Setup::Node, &|r| r.after.1), memory(Setup::Clusterd, &|r| r.after.1));
    println!(
        "| the primary's peak memory (VmHWM, the most loaded test), MiB | {peak_node:.1} | {peak_clusterd:.1} | \
         **{:.3}** | ≤ {RSS_TARGET} | {} |",
        peak_clusterd / peak_node,
        yes(peak_clusterd <= RSS_TARGET * peak_node)
    );

    println!();
    println!(
        "† the machine was busy beyond the servers and the load generator in that round (more than {:.0} % of a \
         core: another process was running).",
        OTHER_CPU_WARNING * 100.0
    );
    println!();
    println!("What saturates (medians, % of one core over the load; the machine has {:.0}):", cores() * 100.0);
    println!();
    println!("| test | primary | the primary | its workers | the load generator | the rest of the machine | total |");
    println!("|---|---|---|---|---|---|---|");
    for &test in tests {
        for setup in [Setup::Node, Setup::Clusterd] {
            let pct = |f: &dyn Fn(&Cpu) -> f64| stats(runs, test, setup, |r| r.cpu.pct(f(&r.cpu))).0;
            let primary = pct(&|c| c.primary);
            let workers = pct(&|c| c.workers.iter().sum());
            let load = pct(&|c| c.load);
            let other = pct(&|c| c.other);
            println!(
                "| {} | {} | {primary:.0} | {workers:.0} | {load:.0} | {other:.0} | {:.0} |",
                test.label(),
                setup.label(),
                primary + workers + load + other
            );
        }
    }

    println!();
    println!(
        "Every run (CPU over the load, % of one core: the primary; each worker; the load generator; the rest of the \
         machine, and how busy it was just before the run):"
    );
    println!();
    println!(
        "| round | test | primary | rate | latency ms (p50 / p99; paced) | errors | per worker | CPU % primary; \
         workers; load; rest | RSS idle → after / peak, MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {} | {} | {} | {} {} | {} | {}{}{} | {} | {:.0}; {}; {:.0}; {:.0} ({:.0} before) | {:.1} → {:.1} / {:.1} |",
            r.round,
            r.test.label(),
            r.setup.label(),
            thousands(r.rate),
            r.test.unit(),
            r.latency.map_or("".into(), |[a, b, c, d]| format!("{a:.2} / {b:.2}; {c:.2} / {d:.2}")),
            r.errors,
            if r.error_detail.is_empty() { String::new() } else { format!(": {}", r.error_detail.trim()) },
            if r.stalls > 0 { format!(" ({} stalled handshakes)", r.stalls) } else { String::new() },
            r.spread,
            r.cpu.pct(r.cpu.primary),
            r.cpu.workers.iter().map(|&w| format!("{:.0}", r.cpu.pct(w))).collect::<Vec<_>>().join(" + "),
            r.cpu.pct(r.cpu.load),
            r.cpu.pct(r.cpu.other),
            r.busy_before * cores() * 100.0,
            mib(r.idle.0),
            mib(r.after.0),
            mib(r.after.1)
        );
    }

    println!();
    println!("Notes:");
    let troubled: Vec<&Run> = runs.iter().filter(|r| r.errors > 0 || !r.error_detail.is_empty()).collect();
    if troubled.is_empty() {
        println!("- No run had an error; every broadcast reached every client exactly once.");
    }
    for r in troubled {
        println!(
            "- **Round {} {} {}**: {} errors ({}).",
            r.round,
            r.test.label(),
            r.setup.label(),
            r.errors,
            r.error_detail.trim()
        );
    }
    for setup in [Setup::Node, Setup::Clusterd] {
        let fanouts: Vec<&Run> = runs.iter().filter(|r| r.setup == setup && r.latency.is_some()).collect();
        let stalls: usize = fanouts.iter().map(|r| r.stalls).sum();
        let clients: usize =
            fanouts.iter().map(|r| if let Test::Fanout(f) = r.test { f.clients } else { 0 }).sum::<usize>() + stalls;
        println!(
            "- {}: {stalls} of {clients} WebSocket handshakes of the fan-out clients stalled (no answer within \
             {STEP_TIMEOUT:?}) and were started again.",
            setup.label()
        );
    }
    let bad_exits: Vec<String> = runs
        .iter()
        .filter(|r| !r.exit.is_some_and(|s| s.success()))
        .map(|r| format!("round {} {} {}: {}", r.round, r.test.label(), r.setup.label(), common::describe(r.exit)))
        .collect();
    let unclean: Vec<String> = runs
        .iter()
        .filter(|r| !r.unclean_stops.is_empty())
        .map(|r| format!("round {} {}: {}", r.round, r.test.label(), r.unclean_stops.join("; ")))
        .collect();
    if !unclean.is_empty() {
        println!("- **clusterd's workers that did not stop cleanly** (from its log): {}.", unclean.join(" — "));
    }
    if bad_exits.is_empty() {
        println!("- Every server exited 0 after SIGTERM.");
    } else {
        println!("- **Servers that did not exit 0** after SIGTERM: {}.", bad_exits.join("; "));
    }
    let uneven: Vec<String> = runs
        .iter()
        .filter(|r| {
            let total: f64 = r.cpu.workers.iter().sum();
            r.cpu.workers.len() > 1 && r.cpu.workers.iter().any(|&c| c < 0.1 * total)
        })
        .map(|r| format!("round {} {} {}", r.round, r.test.label(), r.setup.label()))
        .collect();
    if !uneven.is_empty() {
        println!(
            "- **One worker did nearly all the work** in: {}. @socket.io/sticky's least-connection counts reported \
             Socket.IO sessions only: plain HTTP requests open none, every count stays equal, and the first worker \
             wins every tie.",
            uneven.join(", ")
        );
    }
    let client_bound: Vec<String> = runs
        .iter()
        .filter(|r| r.cpu.load > 0.8 * r.cpu.seconds)
        .map(|r| format!("round {} {} {} ({:.0} %)", r.round, r.test.label(), r.setup.label(), r.cpu.pct(r.cpu.load)))
        .collect();
    if !client_bound.is_empty() {
        println!(
            "- The load generator used more than 80 % of a core in: {}. On 2 shared cores those rates are bounded \
             by the client as much as by the server: a lower bound of what the server can take.",
            client_bound.join(", ")
        );
    }
    let busy: Vec<String> = runs
        .iter()
        .filter(|r| r.cpu.other > OTHER_CPU_WARNING * r.cpu.seconds)
        .map(|r| format!("round {} {} {} ({:.0} %)", r.round, r.test.label(), r.setup.label(), r.cpu.pct(r.cpu.other)))
        .collect();
    if !busy.is_empty() {
        println!(
            "- **Warning**: the machine was busy beyond the servers and the load generator (more than {:.0} % of one \
             core) in: {}. Another process was probably running; those figures are skewed.",
            OTHER_CPU_WARNING * 100.0,
            busy.join(", ")
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(warning) = common::stale_warning(root, clusterd, &files_under(&root.join("src"))) {
        println!("- **Warning**: {warning}.");
    }
    println!(
        "- Each run gets a freshly started primary and workers on a free loopback port; the primary that goes first \
         alternates from round to round. The load generator shares the 2 cores with the servers. The memory is the \
         primary process's alone (the Node primary, or clusterd), not its workers'."
    );
    println!(
        "- {}; node {}; socket.io {}, @socket.io/sticky {}, @socket.io/cluster-adapter {}, socket.io-client {}; whole \
         bench {:.0} s.",
        common::version(&tools.wrk, "-v").unwrap_or_else(|| "wrk (version unknown)".to_owned()),
        common::version(&tools.node, "--version").unwrap_or_else(|| "(version unknown)".to_owned()),
        common::package_version("socket.io"),
        common::package_version("@socket.io/sticky"),
        common::package_version("@socket.io/cluster-adapter"),
        common::package_version("socket.io-client"),
        took.as_secs_f64()
    );
    println!();
    println!("Commands:");
    println!();
    println!("```");
    println!("cargo build --release --workspace --bins --examples && cargo bench --bench node_workers");
    for setup in [Setup::Node, Setup::Clusterd] {
        if let Some(r) = runs.iter().find(|r| r.setup == setup) {
            println!("# {}", setup.label());
            println!("{} &", r.server_command);
        }
    }
    for &test in tests {
        if let Some(r) = runs.iter().find(|r| r.test == test) {
            println!("# {}", test.label());
            println!("{}", r.load_command);
        }
    }
    println!("```");
    println!();
    println!("(Ports and temporary control-socket paths differ in every run.)");
}
