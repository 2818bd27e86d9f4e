//! The harness of the integration tests: the real `clusterd` binary supervising the real test
//! worker (`tests/support/test_worker.rs`, a binary of this package), each test in its own temp
//! dir with its own control socket, with a scrubbed environment. Every wait polls an observable
//! (a log line, the control socket, /proc) and fails with a message after a timeout.

#![allow(dead_code)]

pub mod keepalive_load;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CLUSTERD: &str = env!("CARGO_BIN_EXE_clusterd");
pub const WORKER: &str = env!("CARGO_BIN_EXE_clusterd-test-worker");

/// Generous: CI machines have 2 cores shared by parallel tests.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Lines a child wrote, shared with the threads that read its pipes.
#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Lines {
    fn collect(&self, pipe: impl Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let (all, cv) = &*lines.inner;
                all.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().clone()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.snapshot().iter().any(|l| l.contains(needle))
    }

    /// Waits for a line that matches; returns it.
    pub fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.wait_for_within(TIMEOUT, what, matches)
    }

    /// As [`Lines::wait_for`], failing after `timeout` (for a step that is long by design).
    pub fn wait_for_within(&self, timeout: Duration, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let (all, cv) = &*self.inner;
        let mut guard = all.lock().unwrap();
        loop {
            if let Some(line) = guard.iter().find(|l| matches(l)) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out after {timeout:?} waiting for {what}; output so far:\n{}",
                guard.join("\n")
            );
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn wait_contains(&self, needle: &str) -> String {
        self.wait_for(&format!("a line containing {needle:?}"), |l| l.contains(needle))
    }
}

/// Polls `probe` until it returns `Some`, or fails with `what` after [`TIMEOUT`].
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A running clusterd; killed (with its workers, by their parent-death signal) on drop.
pub struct Cluster {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub control: PathBuf,
    pub output: Lines,
    exited: Option<ExitStatus>,
}

/// How to start a clusterd.
pub struct Builder {
    args: Vec<String>,
    program: Vec<String>,
    env: Vec<(String, String)>,
    prefix: Vec<String>,
    dir: tempfile::TempDir,
    stdout: Option<Stdio>,
}

impl Builder {
    pub fn new() -> Self {
        Self {
            args: Vec::new(),
            program: vec![WORKER.to_owned()],
            env: Vec::new(),
            prefix: Vec::new(),
            dir: tempfile::tempdir().expect("temp dir"),
            stdout: None,
        }
    }
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }
    /// Arguments of the test worker.
    pub fn worker_args(mut self, args: &[&str]) -> Self {
        self.program.extend(args.iter().map(|s| s.to_string()));
        self
    }
    /// Another program instead of the test worker.
    pub fn program(mut self, program: &[&str]) -> Self {
        self.program = program.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Runs clusterd under another command (for example `unshare`).
    pub fn under(mut self, prefix: &[&str]) -> Self {
        self.prefix = prefix.iter().map(|s| s.to_string()).collect();
        self
    }
    /// clusterd's stdout goes there instead of to the collected lines.
    pub fn stdout(mut self, stdio: Stdio) -> Self {
        self.stdout = Some(stdio);
        self
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn start(self) -> Cluster {
        let control = self.dir.path().join("control.sock");
        let mut command = if self.prefix.is_empty() {
            Command::new(CLUSTERD)
        } else {
            let mut c = Command::new(&self.prefix[0]);
            c.args(&self.prefix[1..]).arg(CLUSTERD);
            c
        };
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--control")
            .arg(&control)
            .args(&self.args)
            .arg("--")
            .args(&self.program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let piped_stdout = self.stdout.is_none();
        if let Some(stdio) = self.stdout {
            command.stdout(stdio);
        }
        let mut child = command.spawn().expect("start clusterd");
        let output = Lines::default();
        if piped_stdout {
            output.collect(child.stdout.take().unwrap());
        }
        output.collect(child.stderr.take().unwrap());
        Cluster { child, dir: self.dir, control, output, exited: None }
    }
}

impl Cluster {
    pub fn start(args: &[&str], worker_args: &[&str]) -> Self {
        Builder::new().args(args).worker_args(worker_args).start()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// One request on the control socket; `None` if it cannot be reached (yet).
    pub fn request(&self, request: &str) -> Option<Value> {
        control_request(&self.control, request)
    }

    pub fn status(&self) -> Option<Value> {
        let reply = self.request(r#"{"command":"status"}"#)?;
        reply.get("status").cloned()
    }

    /// Waits until the status satisfies `pred`.
    pub fn wait_status(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = None;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(status) = self.status() {
                if pred(&status) {
                    return status;
                }
                last = Some(status);
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "clusterd exited ({exit}) while waiting for {what}; output:\n{}",
                    self.output.snapshot().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {TIMEOUT:?} waiting for {what}; last status: {last:#?}\noutput:\n{}",
                self.output.snapshot().join("\n")
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Waits until every one of `n` workers is ready and the phase is `ready`; returns the status.
    pub fn wait_ready(&mut self, n: usize) -> Value {
        self.wait_status(&format!("{n} ready workers"), |s| {
            s["phase"] == "ready"
                && s["workers"].as_array().is_some_and(|w| w.len() == n && w.iter().all(|w| w["state"] == "ready"))
        })
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("signal clusterd");
    }

    /// Waits for clusterd to exit; fails with its output after [`TIMEOUT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let status = wait_until("clusterd to exit", || self.child.try_wait().expect("try_wait"));
        self.exited = Some(status);
        status
    }

    pub fn stderr_dump(&self) -> String {
        self.output.snapshot().join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request line on a control socket, one reply line back.
pub fn control_request(path: &Path, request: &str) -> Option<Value> {
    let mut stream = UnixStream::connect(path).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    stream.write_all(b"\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// The pid of worker `id` in a status document.
pub fn worker_pid(status: &Value, id: u64) -> i32 {
    let w = status["workers"].as_array().unwrap().iter().find(|w| w["id"] == id).expect("worker id");
    w["pid"].as_i64().expect("worker pid") as i32
}

pub fn worker(status: &Value, id: u64) -> Value {
    status["workers"].as_array().unwrap().iter().find(|w| w["id"] == id).expect("worker id").clone()
}

/// Whether a pid exists at all (a zombie counts: it still exists until reaped).
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `(state, ppid, pgid)` from /proc/<pid>/stat.
pub fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

/// The CPU time a process has used (user and system, `/proc/<pid>/stat`), in USER_HZ ticks of
/// 10 ms (Linux reports 100 a second whatever the kernel's own tick).
pub fn cpu_time(pid: i32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // After the command name: state is field 3, utime and stime fields 14 and 15.
    let rest = &text[text.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Children of `parent` (any state) and their command names.
pub fn children_of(parent: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Some((_, ppid, _)) = proc_stat(pid)
            && ppid == parent
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_owned()));
        }
    }
    out
}

/// Waits until `pid` is gone entirely: exited *and* reaped.
pub fn wait_gone(pid: i32, what: &str) {
    wait_until(&format!("{what} (pid {pid}) to be gone and reaped (state: {:?})", proc_stat(pid)), || {
        (!pid_exists(pid)).then_some(())
    });
}

/// The number in a `key=<n>` token of a line.
pub fn field(line: &str, key: &str) -> i32 {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}=<n> in {line:?}"))
}

/// The TCP address clusterd listens on (from `status`).
pub fn listen_addr(status: &Value) -> std::net::SocketAddr {
    status["listen"][0].as_str().expect("a listen address").parse().expect("a TCP address")
}

/// A response: status code, and the body as text.
pub struct Response {
    pub code: u16,
    pub body: String,
    /// The server said `Connection: close`.
    pub close: bool,
}

impl Response {
    /// The `worker=<n>` the test worker put first in its answer.
    pub fn worker(&self) -> i32 {
        field(&self.body, "worker")
    }
}

/// Reads one HTTP/1.1 response (status line, headers, `Content-Length` body) from `stream`.
pub fn read_response(stream: &mut impl Read) -> Option<Response> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let close = head.lines().any(|l| l.trim().eq_ignore_ascii_case("connection: close"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(Response { code, body: String::from_utf8_lossy(&body).into_owned(), close })
}

/// One `GET` on a new connection with `Connection: close`.
pub fn get(addr: std::net::SocketAddr, target: &str) -> Response {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    read_response(&mut stream).unwrap_or_else(|| panic!("no response to GET {target}"))
}

/// The number of open fds of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The npm packages of the interop tests (`tests/node`), installed by `scripts/test`.
pub fn node_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "tests/node/node_modules is missing: run ./scripts/test (it installs the npm packages), or `npm ci --prefix tests/node`"
    );
    dir
}

/// A process's resident memory now and its peak (`VmRSS`, `VmHWM` of `/proc/<pid>/status`), in bytes.
pub fn memory_of(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {status}"));
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of kB");
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A private `redis-server` on a free loopback port, in its own temp dir (never a system one);
/// killed on drop. `scripts/install-redis` installs Debian's redis-server where it is missing.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With more `redis-server` arguments (`--port` is chosen here; TLS setups pass `--tls-port`).
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut redis = Self { port: 0, child: None, dir, args };
        // A port found free can be taken before redis binds it: try a few.
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start (is it installed? scripts/install-redis)");
    }

    fn spawn(&mut self) -> bool {
        let tls = self.args.iter().any(|a| a == "--tls-port");
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).arg("--dir").arg(self.dir.path());
        if tls {
            command.args(["--port", "0"]);
        } else {
            command.args(["--port", &port]);
        }
        for arg in &self.args {
            command.arg(if arg == "{port}" { &port } else { arg });
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-redis)");
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("redis-server runs").id() as i32
    }

    /// Kills it (SIGKILL: connections reset) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server did not start again on port {}", self.port);
    }

    /// SIGSTOP: no RST, just silence; `thaw` resumes it.
    pub fn freeze(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::Signal::SIGSTOP).unwrap();
    }

    pub fn thaw(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::Signal::SIGCONT).unwrap();
    }

    /// `redis-cli` against it; returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be installed (scripts/install-redis)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `PUBLISH channel payload`, any bytes (through `redis-cli -x`, which reads the last
    /// argument from stdin).
    pub fn publish(&self, channel: &str, payload: &[u8]) {
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-x", "PUBLISH", channel])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli must be installed (scripts/install-redis)");
        // Written from a thread, so that a Redis that stops reading fails the wait below instead
        // of blocking the test (payloads go up to tens of MiB).
        let mut stdin = child.stdin.take().unwrap();
        let payload = payload.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&payload));
        let status = wait_until(&format!("redis-cli PUBLISH {channel} to finish"), || child.try_wait().unwrap());
        assert!(status.success(), "redis-cli PUBLISH {channel}: {status}");
        writer.join().unwrap().expect("redis-cli took the payload");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server must be woken to die of SIGKILL promptly.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        self.stop();
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The `--metrics` address clusterd serves on, from its start line (`127.0.0.1:0` gets a port
/// only when bound).
pub fn metrics_addr(c: &Cluster) -> String {
    let line = c.output.wait_contains("GET /metrics on ");
    let after = line.rsplit("GET /metrics on ").next().unwrap_or_default();
    after.split_whitespace().next().expect("an address after `GET /metrics on`").to_owned()
}

/// One raw HTTP/1.1 exchange on a new connection to `addr` (`HOST:PORT` or `unix:/path`):
/// returns the status code, the headers (lowercase names) and the body.
pub fn http_exchange(addr: &str, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut bytes = Vec::new();
    if let Some(path) = addr.strip_prefix("unix:") {
        let mut s = UnixStream::connect(path).expect("connect to the metrics socket");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.read_to_end(&mut bytes).expect("read the answer");
    } else {
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.read_to_end(&mut bytes).expect("read the answer");
    }
    let text = String::from_utf8(bytes).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.lines();
    let code = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, body.to_owned())
}

/// A scrape of `/metrics`, read by a Prometheus text parser (the `prometheus-parse` crate: a
/// parser written by others, so that the test does not read the format the way clusterd writes
/// it). It is lenient, skipping what it does not understand, so [`Metrics::parse`] also checks
/// that every sample line of the text became a sample.
pub struct Metrics {
    pub text: String,
    pub scrape: prometheus_parse::Scrape,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text exposition");
        let sample_lines = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count();
        let understood: usize = scrape
            .samples
            .iter()
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => buckets.len(),
                _ => 1,
            })
            .sum();
        assert_eq!(understood, sample_lines, "every sample line is understood by the parser:\n{text}");
        Self { text: text.to_owned(), scrape }
    }

    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.sample(name, labels).map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        })
    }

    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<&prometheus_parse::Sample> {
        self.scrape.samples.iter().find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// Every sample of `name`.
    pub fn samples(&self, name: &str) -> Vec<&prometheus_parse::Sample> {
        self.scrape.samples.iter().filter(|s| s.metric == name).collect()
    }

    /// The sum of every sample of `name` (a counter or gauge over all its label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples(name)
            .iter()
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name} is not a single value: {other:?}"),
            })
            .sum()
    }
}

/// `GET /metrics` on `addr`: 200 with the 0.0.4 content type, parsed.
pub fn scrape(addr: &str) -> Metrics {
    let (code, headers, body) = http_exchange(addr, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(code, 200, "GET /metrics: {body}");
    let content_type = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str());
    assert_eq!(content_type, Some("text/plain; version=0.0.4; charset=utf-8"));
    Metrics::parse(&body)
}

/// Runs clusterd to its exit with a scrubbed environment (only `PATH`, plus `env`) in `dir`;
/// returns (exit code, stderr). For bad input, which must end clusterd before anything starts.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(CLUSTERD)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until("clusterd to exit on bad input", || child.try_wait().unwrap());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}
