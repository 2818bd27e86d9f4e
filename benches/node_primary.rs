//! clusterd against the Node.js primary it replaces: the classic recipe of `benches/node/primary.cjs`
//! (a `cluster` primary with `@socket.io/sticky`'s `setupMaster` least-connection and
//! `@socket.io/cluster-adapter`'s `setupPrimary`, `serialization: "advanced"`, 2 Node workers with an
//! http server and a Socket.IO server) measured side by side with clusterd and 2 Rust workers on the
//! same machine, over loopback. It prints a Markdown table and the exact commands.
//!
//! Run it with `cargo build --release --workspace --bins --examples && cargo bench --bench node_primary`.
//! Cargo builds the package's binaries (`clusterd`, `clusterd-test-worker`) before its benches but
//! not the examples: the bench finds `target/release/examples/{hello,chat}` and stops with a clear
//! message when they are missing (and warns when one is older than its sources). It needs `wrk` and
//! `node`/`npm` in `PATH`; when `benches/node/node_modules` is missing it runs `npm ci` there
//! (from the committed `package-lock.json`) first.
//!
//! What is measured, in one run, interleaved (for each round: new-connection Node, clusterd, then
//! polling sessions Node, clusterd; [`ROUNDS`] rounds), each load run against a freshly started
//! server on a fresh loopback port:
//!
//! 1. **New connection per request**: `wrk -t2 -c64 -d5s -H 'Connection: close'`: clusterd + 2
//!    `hello` workers against the Node primary + 2 Node workers (the issue's target: clusterd
//!    ≥ [`CLOSE_TARGET`]× the Node primary).
//! 2. **Socket.IO polling sessions established per second**: `benches/node/polling_load.mjs`
//!    (socket.io-client, `transports: ["polling"]`, [`LOAD_CONCURRENCY`] loops for
//!    [`LOAD_SECONDS`] s, each: connect, one `whoami` ack, disconnect): clusterd + 2 `chat` workers
//!    (socketioxide behind the SDK's `SessionLayer`) against the Node primary + 2 Node Socket.IO
//!    workers. Every error is counted by kind; "Session ID unknown" (HTTP 400: a request of a
//!    session reached a worker that does not hold it) is the Node primary's known misrouting, and
//!    clusterd must show none.
//! 3. **clusterd's memory with [`SESSIONS`] open sticky sessions**, once: clusterd + 2
//!    `clusterd-test-worker --serve` workers, whose `GET /open?sid=S` registers session S with
//!    clusterd and answers after clusterd's ack. [`SESSIONS`] distinct 16-character sids are opened
//!    over 4 keep-alive connections (sequential requests on each), `status` must then show exactly
//!    that many sessions, and clusterd's `VmRSS`/`VmHWM` are read (target: RSS below
//!    [`RSS_TARGET_MIB`] MiB), against the same figures before the first session.
//!
//! For each load run the main process's CPU (clusterd, or the Node primary: utime + stime from
//! `/proc/<pid>/stat`) and its memory after the run are recorded too. A server is used only once
//! it is ready: clusterd's `status` shows every worker ready, the Node primary printed its
//! `listening` line and every worker its `ready` line (read from its stdout, with a timeout); then
//! one plain GET through the port must answer 200 from the app. Everything is loopback; every wait
//! has a timeout; every process the bench starts is stopped (SIGTERM, then SIGKILL to its process
//! group), also when it panics, and gets SIGTERM from the kernel if the bench itself is killed.

mod common;

use common::Setup;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{IO_TIMEOUT, Process, Status, WRK_CONNECTIONS, WRK_SECONDS, mib};
use serde_json::Value;

/// A/B rounds of each test.
const ROUNDS: usize = 3;
/// Workers behind each primary.
const WORKERS: usize = 2;
/// polling_load.mjs: concurrent loops and seconds.
const LOAD_CONCURRENCY: usize = 16;
const LOAD_SECONDS: u64 = 5;
/// Open sticky sessions for the memory figure, and the keep-alive connections that open them.
const SESSIONS: usize = 10_000;
const SESSION_CONNECTIONS: usize = 4;
/// The issue's targets: clusterd / Node primary for new connections; clusterd's RSS with
/// [`SESSIONS`] sessions.
const CLOSE_TARGET: f64 = 5.0;
const RSS_TARGET_MIB: f64 = 20.0;

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a load generator may run beyond its duration before it is killed.
const LOAD_SLACK: Duration = Duration::from_secs(25);
const POLL_EVERY: Duration = Duration::from_millis(5);
/// "Other CPU" (busy time not charged to the servers or the load generator) above this share of one
/// core during a run is called out: something else was running.
const OTHER_CPU_WARNING: f64 = 0.10;

fn main() {
    let tools = Tools::find();
    let bins = Binaries::locate();
    let stale = bins.stale();
    for warning in &stale {
        eprintln!("warning: {warning}");
    }
    common::ensure_node_modules(
        &tools.npm,
        &["socket.io", "socket.io-client", "@socket.io/sticky", "@socket.io/cluster-adapter"],
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        for test in [Test::Close, Test::Polling] {
            for setup in [Setup::Node, Setup::Clusterd] {
                let run = measure(&bins, &tools, round, test, setup);
                eprintln!(
                    "round {round}/{ROUNDS} {} {}: {:.0} {}{}",
                    test.label(),
                    setup.label(),
                    run.load.rate,
                    test.unit(),
                    if run.load.errors > 0 { format!(", {} errors", run.load.errors) } else { String::new() }
                );
                runs.push(run);
            }
        }
    }
    let memory = measure_sessions(&bins);
    eprintln!(
        "memory: {} sessions, clusterd VmRSS {:.1} MiB (before {:.1} MiB)",
        memory.sessions,
        mib(memory.with.0),
        mib(memory.before.0)
    );
    report(&runs, &memory, &tools, &stale, started.elapsed());
}

/// The external programs: wrk, node, npm.
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
            wrk: need("wrk", "Install it with `apt-get install wrk` (Debian package)."),
            node: need("node", "Install Node.js 20 or later (with npm)."),
            npm: need("npm", "Install npm (it comes with Node.js)."),
        }
    }
}

/// The release binaries under test.
struct Binaries {
    clusterd: PathBuf,
    test_worker: PathBuf,
    hello: PathBuf,
    chat: PathBuf,
}

impl Binaries {
    fn locate() -> Self {
        let dir = common::target_dir();
        Self {
            clusterd: common::binary(&dir, "node_primary", "clusterd"),
            test_worker: common::binary(&dir, "node_primary", "clusterd-test-worker"),
            hello: common::example(&dir, "hello"),
            chat: common::example(&dir, "chat"),
        }
    }

    /// Warnings for example binaries older than a source they are built from.
    fn stale(&self) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut sdk = common::sdk_sources(root);
        sdk.push(root.join("Cargo.lock"));
        [(&self.hello, "examples/hello.rs"), (&self.chat, "examples/chat.rs")]
            .iter()
            .filter_map(|(binary, source)| {
                let sources: Vec<PathBuf> = std::iter::once(root.join(source)).chain(sdk.iter().cloned()).collect();
                common::stale_warning(root, binary, &sources)
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    /// A new connection per request (`Connection: close`), wrk.
    Close,
    /// Socket.IO polling-only sessions, polling_load.mjs.
    Polling,
}

impl Test {
    fn label(self) -> &'static str {
        match self {
            Self::Close => "new connection per request",
            Self::Polling => "Socket.IO polling sessions",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Close => "req/s",
            Self::Polling => "sessions/s",
        }
    }

    /// The clusterd worker program for this test.
    fn app(self) -> App {
        match self {
            Self::Close => App::Hello,
            Self::Polling => App::Chat,
        }
    }
}

/// What runs behind clusterd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    Hello,
    Chat,
    /// `clusterd-test-worker --serve`.
    Sessions,
}

/// A running server under test (the Node primary and its workers, or clusterd and its workers);
/// stopped on drop if [`Process::stop`] was not called (a panic).
struct Server {
    app: Option<App>,
    process: Process,
    port: u16,
    socket: PathBuf,
    /// Worker pids once all were ready.
    workers: Vec<i32>,
    // Last, so that it is removed after the server has stopped.
    dir: tempfile::TempDir,
}

impl Server {
    fn start_clusterd(bins: &Binaries, app: App) -> Self {
        let (dir, socket, log, port) = scratch();
        let mut args = vec![
            "--workers".to_owned(),
            WORKERS.to_string(),
            "--control".into(),
            socket.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            // As measured before clusterd stopped setting it unasked (issue 14).
            "--tcp-nodelay".into(),
            "--".into(),
        ];
        match app {
            App::Hello => args.push(bins.hello.display().to_string()),
            App::Chat => args.push(bins.chat.display().to_string()),
            App::Sessions => args.extend([bins.test_worker.display().to_string(), "--serve".into()]),
        }
        let mut command = Command::new(&bins.clusterd);
        command.args(&args);
        common::log_to(&mut command, &log, "the server");
        let child = spawn_server(&mut command);
        let command = format!("RUST_LOG=info {} {}", bins.clusterd.display(), args.join(" "));
        let mut server = Self {
            app: Some(app),
            process: Process::new(Setup::Clusterd.label(), child, log, command, true),
            port,
            socket,
            workers: Vec::new(),
            dir,
        };
        server.workers = server.wait_for_ready_workers().pids();
        if app != App::Sessions {
            server.check_get();
        }
        server
    }

    fn start_node(tools: &Tools) -> Self {
        let (dir, socket, log, port) = scratch();
        let script = common::node_dir().join("primary.cjs");
        let args = vec![script.display().to_string(), port.to_string(), WORKERS.to_string()];
        let err = File::create(&log).expect("cannot create the server's log file");
        let mut command = Command::new(&tools.node);
        command.args(&args).current_dir(common::node_dir()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        let mut child = spawn_server(&mut command);
        // The primary's and its workers' stdout: each line goes to the channel (for the ready
        // lines) and to the log (appended after stderr's, which opened the file first).
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let mut copy = std::fs::OpenOptions::new().append(true).open(&log).expect("cannot open the log file");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(copy, "{line}");
                let _ = tx.send(line);
            }
        });
        let command = format!("(cd {} && {} {})", common::node_dir().display(), tools.node.display(), args.join(" "));
        let mut server = Self {
            app: None,
            process: Process::new(Setup::Node.label(), child, log, command, true),
            port,
            socket,
            workers: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut listening = false;
        while !listening || server.workers.len() < WORKERS {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("primary ") && line.contains(" listening on ") => listening = true,
                Ok(line) => {
                    // `ready worker <id> pid <pid>`
                    if let Some(pid) = line.strip_prefix("ready worker ").and_then(|r| r.split(" pid ").nth(1)) {
                        server.workers.push(pid.trim().parse().unwrap_or(0));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => server.process.fail(&format!(
                    "the Node primary and its {WORKERS} workers were not ready within {START_TIMEOUT:?} \
                     (listening: {listening}, workers ready: {})",
                    server.workers.len()
                )),
                Err(mpsc::RecvTimeoutError::Disconnected) => server.process.fail("the Node primary closed its stdout"),
            }
        }
        server.check_get();
        server
    }

    /// One `GET /` must answer 200 with the app's body.
    fn check_get(&mut self) {
        let (code, body) = match common::http_get(self.port) {
            Ok(answer) => answer,
            Err(error) => self.process.fail(&format!("GET / failed: {error}")),
        };
        let expected = match self.app {
            None | Some(App::Hello) => body.starts_with("hello from worker "),
            Some(App::Chat) => body.contains("clusterd chat"),
            Some(App::Sessions) => true,
        };
        if code != 200 || !expected {
            self.process.fail(&format!("GET / answered {code} {body:?}, not the app's 200"));
        }
    }

    /// Polls `status` until every worker is ready; panics after [`START_TIMEOUT`].
    fn wait_for_ready_workers(&mut self) -> Status {
        self.wait_for_status(START_TIMEOUT, &format!("all {WORKERS} workers to be ready"), |s| s.all_ready(WORKERS))
    }

    /// Polls `status` until `done` holds; panics after `timeout`.
    fn wait_for_status(&mut self, timeout: Duration, what: &str, done: impl Fn(&Status) -> bool) -> Status {
        common::wait_for_status(&mut self.process, &self.socket, (timeout, POLL_EVERY), what, done)
    }
}

/// A temporary directory, a control socket path and a log path in it, and a free port.
fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf, u16) {
    let (dir, socket, log) = common::scratch("clusterd-node-primary-", "server.log");
    (dir, socket, log, common::free_port())
}

/// Spawns a server in a process group of its own, in a clean environment, dying with the bench.
fn spawn_server(command: &mut Command) -> Child {
    use std::os::unix::process::CommandExt;
    // `DEBUG` would make the Node packages log every request.
    common::clean_env(command, |name| name.starts_with("NODE_") || name == "DEBUG");
    command.process_group(0);
    common::die_with_bench(command);
    command.spawn().unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()))
}

/// One load run against one freshly started server.
struct Run {
    round: usize,
    test: Test,
    setup: Setup,
    /// The load's figures: req/s (wrk) or sessions/s (polling_load.mjs), requests or sessions
    /// completed, errors (by kind, as text), completed sessions per worker (polling runs).
    load: common::LoadOutcome,
    load_command: String,
    server_command: String,
    /// CPU seconds of the main process (clusterd or the Node primary) during the load, and the
    /// load's wall time.
    main_cpu: f64,
    seconds: f64,
    /// CPU seconds of each worker and of the load generator during the load.
    worker_cpu: Vec<f64>,
    load_cpu: f64,
    /// Busy share of all cores, 0..1, and busy CPU seconds charged to none of the above (another
    /// process running beside the bench skews the figures).
    machine_busy: f64,
    other_cpu: f64,
    /// VmRSS / VmHWM of the main process after the run, KiB.
    memory: (u64, u64),
    exit: Option<ExitStatus>,
}

fn measure(bins: &Binaries, tools: &Tools, round: usize, test: Test, setup: Setup) -> Run {
    let mut server = match setup {
        Setup::Node => Server::start_node(tools),
        Setup::Clusterd => Server::start_clusterd(bins, test.app()),
    };
    let url = format!("http://127.0.0.1:{}/", server.port);
    let (program, args, cwd): (&Path, Vec<String>, Option<PathBuf>) = match test {
        Test::Close => (&tools.wrk, common::wrk_args(url, true), None),
        Test::Polling => {
            let script = common::node_dir().join("polling_load.mjs").display().to_string();
            (
                &tools.node,
                vec![script, url, LOAD_CONCURRENCY.to_string(), LOAD_SECONDS.to_string()],
                Some(common::node_dir()),
            )
        }
    };
    let name = program.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let load_command = format!(
        "{}{name} {}",
        cwd.as_ref().map_or(String::new(), |d| format!("cd {} && ", d.display())),
        common::shell_join(&args)
    );
    let out_path = server.dir.path().join("load.out");
    let err_path = server.dir.path().join("load.err");
    let out = File::create(&out_path).expect("cannot create the load's output file");
    let err = File::create(&err_path).expect("cannot create the load's error file");
    let mut command = Command::new(program);
    command.args(&args).stdin(Stdio::null()).stdout(out).stderr(err);
    if let Some(dir) = &cwd {
        command.current_dir(dir);
    }
    common::die_with_bench(&mut command);
    let before = sample(server.process.pid, &server.workers);
    let started = Instant::now();
    let mut child =
        command.spawn().unwrap_or_else(|e| server.process.fail(&format!("cannot start {load_command}: {e}")));
    let duration = Duration::from_secs(if test == Test::Close { WRK_SECONDS } else { LOAD_SECONDS });
    let status = common::wait_timeout(&mut child, duration + LOAD_SLACK);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let wall = started.elapsed().as_secs_f64();
    let after = sample(server.process.pid, &server.workers);
    let hz = common::clock_ticks_per_second() as f64;
    let main_cpu = (after.main_ticks - before.main_ticks) as f64 / hz;
    let worker_cpu: Vec<f64> =
        after.worker_ticks.iter().zip(&before.worker_ticks).map(|(a, b)| a.saturating_sub(*b) as f64 / hz).collect();
    let load_cpu = (after.children - before.children).as_secs_f64();
    let (busy, total) = (after.machine.0 - before.machine.0, after.machine.1 - before.machine.1);
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let errors = std::fs::read_to_string(&err_path).unwrap_or_default();
    let Some(status) = status else {
        server
            .process
            .fail(&format!("{load_command} did not finish within {LOAD_SLACK:?} of its duration:\n{output}{errors}"))
    };
    if !status.success() {
        server.process.fail(&format!("{load_command} failed ({status}):\n{output}{errors}"));
    }
    let memory = common::proc_memory(server.process.pid);
    let mut run = Run {
        round,
        test,
        setup,
        load: common::LoadOutcome::default(),
        load_command,
        server_command: server.process.command.clone(),
        main_cpu,
        seconds: wall,
        machine_busy: if total == 0 { 0.0 } else { busy as f64 / total as f64 },
        other_cpu: busy as f64 / hz - main_cpu - worker_cpu.iter().sum::<f64>() - load_cpu,
        worker_cpu,
        load_cpu,
        memory,
        exit: None,
    };
    let parsed = match test {
        Test::Close => take_outcome(common::LoadOutcome::from_wrk(&output), &mut run),
        Test::Polling => take_outcome(common::LoadOutcome::from_polling_load(&output), &mut run),
    };
    if let Err(e) = parsed {
        server.process.fail(&format!("cannot read the load's output ({e}):\n{output}{errors}"));
    }
    if setup == Setup::Clusterd {
        let status = common::status(&server.socket)
            .unwrap_or_else(|e| server.process.fail(&format!("status after the run failed: {e}")));
        let pids = status.pids();
        if pids != server.workers {
            run.load.error_detail.push_str(&format!(" workers changed: {:?} → {pids:?}", server.workers));
        }
    }
    if let Some(status) = server.process.exited() {
        server.process.fail(&format!("the server exited during the run ({status})"));
    }
    run.exit = server.process.stop();
    run
}

/// clusterd's memory with [`SESSIONS`] open sticky sessions.
struct Memory {
    /// VmRSS / VmHWM in KiB: all workers ready, no session yet; then with every session open.
    before: (u64, u64),
    with: (u64, u64),
    /// Sessions `status` showed, in all and per worker.
    sessions: u64,
    per_worker: Vec<u64>,
    /// Seconds it took to open them all.
    open_seconds: f64,
    command: String,
    exit: Option<ExitStatus>,
}

fn measure_sessions(bins: &Binaries) -> Memory {
    let mut server = Server::start_clusterd(bins, App::Sessions);
    let before = common::proc_memory(server.process.pid);
    let port = server.port;
    let started = Instant::now();
    let per_connection = SESSIONS / SESSION_CONNECTIONS;
    // The connections stay open (each holds its sessions' worker) until the status has been read.
    let (done_tx, done_rx) = mpsc::channel::<Result<TcpStream, String>>();
    let mut threads = Vec::new();
    for c in 0..SESSION_CONNECTIONS {
        let done_tx = done_tx.clone();
        let count = if c + 1 == SESSION_CONNECTIONS { SESSIONS - per_connection * c } else { per_connection };
        threads.push(thread::spawn(move || {
            let _ = done_tx.send(open_sessions(port, c * per_connection, count));
        }));
    }
    drop(done_tx);
    let mut failures = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..SESSION_CONNECTIONS {
        match done_rx.recv_timeout(START_TIMEOUT * 3) {
            Ok(Ok(stream)) => streams.push(stream),
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a connection did not finish in time".to_owned()),
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        server.process.fail(&format!("opening {SESSIONS} sessions failed: {}", failures.join("; ")));
    }
    let status =
        server.wait_for_status(START_TIMEOUT, &format!("{SESSIONS} sessions"), |s| s.sessions == SESSIONS as u64);
    let with = common::proc_memory(server.process.pid);
    drop(streams);
    for thread in threads {
        let _ = thread.join();
    }
    let exit = server.process.stop();
    Memory {
        before,
        with,
        sessions: status.sessions,
        per_worker: status.workers.iter().map(|w| w.sessions).collect(),
        open_seconds,
        command: server.process.command.clone(),
        exit,
    }
}

/// Opens `count` sessions with sids `first..first + count` over one keep-alive connection; each
/// answer must say `opened <sid>`. Returns the stream (kept open by the caller). The requests are
/// pipelined (a writer thread sends them all, this thread reads the answers in order; the worker
/// serves them one after the other): one at a time, each would wait out the 40 ms delayed ACK, as the
/// test worker writes an answer's head and body in two writes on a socket with Nagle's algorithm on.
fn open_sessions(port: u16, first: usize, count: usize) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // 16 characters, distinct.
    let sid = |i: usize| format!("bench{i:011}");
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = std::io::BufWriter::new(stream.try_clone().map_err(|e| e.to_string())?);
    let sender = thread::spawn(move || -> Result<(), String> {
        for i in first..first + count {
            let request = format!("GET /open?sid={} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", sid(i));
            writer.write_all(request.as_bytes()).map_err(|e| format!("send {}: {e}", sid(i)))?;
        }
        writer.flush().map_err(|e| format!("send: {e}"))
    });
    for i in first..first + count {
        let sid = sid(i);
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(|e| format!("read {sid}: {e}"))? == 0 {
                return Err(format!("connection closed before the answer for {sid}"));
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().map_err(|_| format!("bad header {line:?}"))?;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map_err(|e| format!("read the body for {sid}: {e}"))?;
        let body = String::from_utf8_lossy(&body);
        if common::status_code(&head) != Some(200) || !body.contains(&format!("opened {sid}")) {
            return Err(format!("GET /open?sid={sid} answered {head:?} {body:?}"));
        }
    }
    sender.join().map_err(|_| "the sending thread panicked".to_owned())??;
    Ok(stream)
}

/// utime + stime in clock ticks, 0 for a process that is gone.
fn cpu_ticks_or_0(pid: i32) -> u64 {
    if std::fs::metadata(format!("/proc/{pid}")).is_ok() { common::cpu_ticks(pid) } else { 0 }
}

/// CPU counters at one instant.
struct Sample {
    main_ticks: u64,
    /// Per worker.
    worker_ticks: Vec<u64>,
    machine: (u64, u64),
    children: Duration,
}

fn sample(main: i32, workers: &[i32]) -> Sample {
    Sample {
        main_ticks: common::cpu_ticks(main),
        worker_ticks: workers.iter().map(|&p| cpu_ticks_or_0(p)).collect(),
        machine: common::machine_jiffies(),
        children: common::children_cpu(),
    }
}

fn of(runs: &[Run], test: Test, setup: Setup) -> Vec<&Run> {
    runs.iter().filter(|r| r.test == test && r.setup == setup).collect()
}

/// The installed version of an npm package of benches/node.
fn package_version(name: &str) -> String {
    let path = common::node_dir().join("node_modules").join(name).join("package.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn report(runs: &[Run], memory: &Memory, tools: &Tools, stale: &[String], took: Duration) {
    println!();
    println!("## clusterd against the Node.js primary");
    println!();
    println!(
        "Node primary: `benches/node/primary.cjs` (cluster + @socket.io/sticky {} least-connection + \
         @socket.io/cluster-adapter {}, serialization \"advanced\", socket.io {}) with {WORKERS} Node workers; \
         clusterd: `--workers {WORKERS} --listen` with the `hello` / `chat` examples. Load over loopback on the \
         same {}-CPU machine; {ROUNDS} interleaved rounds, medians.",
        package_version("@socket.io/sticky"),
        package_version("@socket.io/cluster-adapter"),
        package_version("socket.io"),
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| measurement | Node primary | clusterd | clusterd / Node |");
    println!("|---|---|---|---|");
    for test in [Test::Close, Test::Polling] {
        let node = of(runs, test, Setup::Node);
        let clusterd = of(runs, test, Setup::Clusterd);
        let (n, c) =
            (common::median(node.iter().map(|r| r.load.rate)), common::median(clusterd.iter().map(|r| r.load.rate)));
        let ratio = c / n;
        let verdict = match test {
            Test::Close if ratio >= CLOSE_TARGET => format!(" (meets the ≥ {CLOSE_TARGET:.0}× target)"),
            Test::Close => format!(" (MISSES the ≥ {CLOSE_TARGET:.0}× target)"),
            Test::Polling => String::new(),
        };
        let what = match test {
            Test::Close => format!("new connection per request (wrk -c{WRK_CONNECTIONS}, Connection: close): req/s"),
            Test::Polling => {
                format!("Socket.IO polling sessions established ({LOAD_CONCURRENCY} concurrent): sessions/s")
            }
        };
        println!(
            "| {what}, median (runs) | {n:.0} ({}) | {c:.0} ({}) | **{ratio:.2}×**{verdict} |",
            common::list(node.iter().map(|r| r.load.rate), 0),
            common::list(clusterd.iter().map(|r| r.load.rate), 0),
        );
        let errors = |runs: &[&Run]| runs.iter().map(|r| r.load.errors).sum::<u64>();
        let done = |runs: &[&Run]| runs.iter().map(|r| r.load.done).sum::<u64>();
        let share = |runs: &[&Run]| {
            let d = done(runs) + errors(runs);
            if d == 0 { 0.0 } else { errors(runs) as f64 * 100.0 / d as f64 }
        };
        let noun = if test == Test::Close { "requests" } else { "sessions" };
        println!(
            "| {}: errors, all runs | {} of {} {noun} ({:.2} %) | {} of {} ({:.2} %) | |",
            test.unit(),
            errors(&node),
            done(&node) + errors(&node),
            share(&node),
            errors(&clusterd),
            done(&clusterd) + errors(&clusterd),
            share(&clusterd)
        );
        let cores = |runs: &[&Run]| common::median(runs.iter().map(|r| r.main_cpu / r.seconds * 100.0));
        let rss = |runs: &[&Run]| runs.iter().map(|r| r.memory.1).max().unwrap_or(0);
        println!(
            "| {}: primary's CPU (% of one core, median); its VmHWM (max) | {:.0} %; {:.1} MiB | {:.0} %; {:.1} MiB | |",
            test.unit(),
            cores(&node),
            mib(rss(&node)),
            cores(&clusterd),
            mib(rss(&clusterd))
        );
    }
    let rss = mib(memory.with.0);
    let verdict = if rss < RSS_TARGET_MIB { "meets" } else { "MISSES" };
    println!(
        "| clusterd VmRSS with {} open sticky sessions (VmHWM) | | **{rss:.1} MiB** ({:.1} MiB); before: {:.1} MiB \
         ({:.1}); +{:.1} MiB | {verdict} the < {RSS_TARGET_MIB:.0} MiB target |",
        memory.sessions,
        mib(memory.with.1),
        mib(memory.before.0),
        mib(memory.before.1),
        mib(memory.with.0.saturating_sub(memory.before.0)),
    );

    println!();
    println!("Every run:");
    println!();
    println!(
        "| round | test | setup | rate | completed | errors | sessions per worker | CPU s: primary (% of a core) / \
         each worker / load generator | machine busy; other CPU | primary VmRSS / VmHWM |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {} | {} | {} | {:.0} {} | {} | {}{} | {} | {:.2} ({:.0} %) / {} / {:.2} | {:.0} %; {:.2} s | {:.1} / \
             {:.1} MiB |",
            r.round,
            r.test.label(),
            r.setup.label(),
            r.load.rate,
            r.test.unit(),
            r.load.done,
            r.load.errors,
            if r.load.error_detail.is_empty() { String::new() } else { format!(": {}", r.load.error_detail.trim()) },
            r.load.spread,
            r.main_cpu,
            r.main_cpu / r.seconds * 100.0,
            r.worker_cpu.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(" + "),
            r.load_cpu,
            r.machine_busy * 100.0,
            r.other_cpu,
            mib(r.memory.0),
            mib(r.memory.1)
        );
    }

    println!();
    println!("Notes:");
    let troubled: Vec<&Run> = runs.iter().filter(|r| r.load.errors > 0 || !r.load.error_detail.is_empty()).collect();
    if troubled.is_empty() {
        println!("- No run had an error.");
    }
    for r in troubled {
        println!(
            "- **Errors** in round {} {} {}: {} ({}).",
            r.round,
            r.test.label(),
            r.setup.label(),
            r.load.errors,
            r.load.error_detail.trim()
        );
    }
    let clusterd_errors: u64 = runs.iter().filter(|r| r.setup == Setup::Clusterd).map(|r| r.load.errors).sum();
    println!(
        "- clusterd's runs had {clusterd_errors} errors in all{}.",
        if clusterd_errors == 0 { " (the issue requires 0)" } else { ": **the issue requires 0**" }
    );
    println!(
        "- Sessions: {} opened over {SESSION_CONNECTIONS} keep-alive connections in {:.2} s ({:.0}/s); per worker \
         {:?}; clusterd {}.",
        memory.sessions,
        memory.open_seconds,
        memory.sessions as f64 / memory.open_seconds,
        memory.per_worker,
        describe(memory.exit)
    );
    let bad_exits: Vec<String> = runs
        .iter()
        .filter(|r| !r.exit.is_some_and(|s| s.success()))
        .map(|r| format!("round {} {} {}: {}", r.round, r.test.label(), r.setup.label(), describe(r.exit)))
        .collect();
    if bad_exits.is_empty() {
        println!("- Every server exited 0 after SIGTERM.");
    } else {
        println!("- **Servers that did not exit 0** after SIGTERM: {}.", bad_exits.join("; "));
    }
    // Uneven workers: one got less than a tenth of the workers' CPU.
    let uneven: Vec<String> = runs
        .iter()
        .filter(|r| {
            let total: f64 = r.worker_cpu.iter().sum();
            r.worker_cpu.len() > 1 && r.worker_cpu.iter().any(|&c| c < 0.1 * total)
        })
        .map(|r| format!("round {} {} {}", r.round, r.test.label(), r.setup.label()))
        .collect();
    if !uneven.is_empty() {
        println!(
            "- **One worker did nearly all the work** (see the CPU per worker) in: {}. @socket.io/sticky's \
             least-connection counts Socket.IO sessions only; plain HTTP requests open none, so every count \
             stays 0 and the first worker wins every tie.",
            uneven.join(", ")
        );
    }
    let client_bound: Vec<String> = runs
        .iter()
        .filter(|r| r.load_cpu > r.seconds)
        .map(|r| {
            format!("round {} {} {} ({:.2} cores)", r.round, r.test.label(), r.setup.label(), r.load_cpu / r.seconds)
        })
        .collect();
    if !client_bound.is_empty() {
        println!(
            "- The load generator used more than one core in: {}. On this machine those runs are bounded by the \
             client as much as by the server: the rate (and a ratio) is a lower bound of what the server can take.",
            client_bound.join(", ")
        );
    }
    let busy_elsewhere: Vec<String> = runs
        .iter()
        .filter(|r| r.other_cpu > OTHER_CPU_WARNING * r.seconds)
        .map(|r| format!("round {} {} {} ({:.2} s)", r.round, r.test.label(), r.setup.label(), r.other_cpu))
        .collect();
    if !busy_elsewhere.is_empty() {
        println!(
            "- **Warning**: the machine was busy beyond the servers and the load generator (more than {:.0} % of \
             one core) in: {}. Another process was probably running; those figures are skewed.",
            OTHER_CPU_WARNING * 100.0,
            busy_elsewhere.join(", ")
        );
    }
    for warning in stale {
        println!("- **Warning**: {warning}.");
    }
    println!(
        "- Each load run gets a freshly started server on a free loopback port, used once it is ready (clusterd: \
         `status` shows all {WORKERS} workers ready; Node: the primary's `listening` and {WORKERS} `ready worker` \
         lines) and one GET / answered 200 from the app. Order in a round: new-connection Node, clusterd, polling \
         Node, clusterd. The load generator shares the cores with the servers, so figures are machine-saturated."
    );
    println!(
        "- CPU = utime+stime from `/proc/<pid>/stat` over the load run (primary = clusterd or the Node primary; \
         workers = the ones ready at the start); the load generator's is getrusage(RUSAGE_CHILDREN) around it. \
         Other CPU = machine busy time (`/proc/stat`) less all of those. The primary's memory is read right \
         after the run."
    );
    println!(
        "- {}; node {}; socket.io-client {}; whole bench {:.1} s.",
        common::version(&tools.wrk, "-v").unwrap_or_else(|| "(version unknown)".to_owned()),
        common::version(&tools.node, "--version").unwrap_or_else(|| "(version unknown)".to_owned()),
        package_version("socket.io-client"),
        took.as_secs_f64()
    );
    println!();
    println!("Commands:");
    println!();
    println!("```");
    println!("cargo build --release --workspace --bins --examples && cargo bench --bench node_primary");
    for r in runs.iter().filter(|r| r.round == 1) {
        println!("# {}, {}", r.test.label(), r.setup.label());
        println!("{} &", r.server_command);
        println!("{}", r.load_command);
    }
    println!(
        "# {} open sticky sessions (GET /open?sid=benchNNNNNNNNNNN over {SESSION_CONNECTIONS} keep-alive connections)",
        SESSIONS
    );
    println!("{} &", memory.command);
    println!("```");
    println!();
    println!("(Ports and temporary control-socket paths differ in every run.)");
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "unknown (killed after the timeout)".to_owned(), |s| format!("exited: {s}"))
}

/// Copies a load run's outcome into the run.
fn take_outcome(outcome: Result<common::LoadOutcome, String>, run: &mut Run) -> Result<(), String> {
    run.load.update(outcome?);
    Ok(())
}
