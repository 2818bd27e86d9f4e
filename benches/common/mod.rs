//! Harness code shared by the bench binaries (`supervisor`, `handoff`, `node_primary`, `relay`,
//! `fanout`, …): finding the release binaries, starting and stopping processes, clusterd's control
//! socket, the Node.js primaries, `/proc` figures, wrk, and small statistics. Each bench includes it
//! with `mod common;`.

// Each bench binary uses a different subset of this module (and of its submodules).
#![allow(dead_code)]

pub mod broadcast;
pub mod callgrind;
pub mod cpu;
pub mod polling;
pub mod redis;
pub mod sio_client;

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

pub const WRK_SECONDS: u64 = 5;
pub const WRK_THREADS: usize = 2;
pub const WRK_CONNECTIONS: usize = 64;

pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub const BUILD_HINT: &str = "run `cargo build --release --workspace --bins --examples` first";

/// The directory of the release binaries: the bench runs as target/<profile>/deps/<bench>-<hash>.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the path of the bench executable");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("the bench executable {} is not in target/<profile>/deps/", exe.display()))
        .to_path_buf()
}

/// The package binary `name` in `dir`; panics when it is missing (the bench was run by hand).
pub fn binary(dir: &Path, bench: &str, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release` first (`cargo bench --bench {bench}` builds it by itself; \
         this happens when the bench executable is run by hand)",
        path.display()
    );
    path
}

/// The example binary `name` in `dir/examples`; exits with a hint when it is missing.
pub fn example(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join("examples").join(name);
    if !path.is_file() {
        eprintln!("error: {} is missing: {BUILD_HINT} (`cargo bench` does not build examples)", path.display());
        std::process::exit(1);
    }
    path
}

/// The files of the worker SDK an example is built from (its sources and its Cargo.toml).
pub fn sdk_sources(root: &Path) -> Vec<PathBuf> {
    let mut sdk: Vec<PathBuf> = std::fs::read_dir(root.join("worker-sdk/src"))
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sdk.push(root.join("worker-sdk/Cargo.toml"));
    sdk
}

/// The files under `dir`, recursively (clusterd's sources, for the staleness warning).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
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

/// A warning when `binary` is older than one of `sources` (paths shown relative to `root`).
pub fn stale_warning(root: &Path, binary: &Path, sources: &[PathBuf]) -> Option<String> {
    let built = modified(binary)?;
    let newer: Vec<String> = sources
        .iter()
        .filter(|s| modified(s).is_some_and(|m| m > built))
        .map(|s| s.strip_prefix(root).unwrap_or(s).display().to_string())
        .collect();
    (!newer.is_empty()).then(|| {
        format!("{} is older than {}: {BUILD_HINT} to measure the current code", binary.display(), newer.join(", "))
    })
}

/// The modification time of a file, if it can be read.
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `name` from `PATH`, if it is there and executable.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Removes what would change how clusterd or the workers behave (clusterd reads every `CLUSTERD_*`
/// variable as an option, would talk to a service manager through `NOTIFY_SOCKET` or take over
/// sockets passed with `LISTEN_FDS`), plus every variable `also` selects; sets `RUST_LOG=info`.
pub fn clean_env(command: &mut Command, also: impl Fn(&str) -> bool) {
    for (key, _) in std::env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        if name.starts_with("CLUSTERD_")
            || name.starts_with("LISTEN_")
            || name.starts_with("WATCHDOG_")
            || name == "NOTIFY_SOCKET"
            || also(name)
        {
            command.env_remove(&key);
        }
    }
    command.env("RUST_LOG", "info");
}

/// The child gets SIGTERM when the bench dies: a panic stops the servers through the `Drop` guards,
/// but a bench killed by a signal would leave them (and the load generators) running without this.
pub fn die_with_bench(command: &mut Command) {
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

/// A temporary directory named `prefix…`, with the control socket path and a log path in it.
pub fn scratch(prefix: &str, log_name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("cannot create a temporary directory");
    let socket = dir.path().join("c.sock");
    let log = dir.path().join(log_name);
    (dir, socket, log)
}

/// Sends the command's stdout and stderr to a new log file, with stdin from /dev/null.
pub fn log_to(command: &mut Command, log: &Path, what: &str) {
    let out = File::create(log).unwrap_or_else(|e| panic!("cannot create {what}'s log file: {e}"));
    let err = out.try_clone().expect("cannot duplicate the log file handle");
    command.stdin(Stdio::null()).stdout(out).stderr(err);
}

/// `Child::wait` with a deadline; `None` if the child is still running (or cannot be waited for).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A started server process with its log; stopped on drop if [`Process::stop`] was not called.
pub struct Process {
    /// What it is, in messages ("clusterd", "direct", …).
    pub label: &'static str,
    pub child: Option<Child>,
    pub pid: i32,
    pub log: PathBuf,
    /// The command line, as it would be typed.
    pub command: String,
    /// On SIGKILL, kill its whole process group (it leads one), not only the process.
    pub kill_group: bool,
}

impl Process {
    /// Wraps a spawned child whose output goes to `log`.
    pub fn new(label: &'static str, child: Child, log: PathBuf, command: String, kill_group: bool) -> Self {
        let pid = i32::try_from(child.id()).expect("pid out of range");
        Self { label, child: Some(child), pid, log, command, kill_group }
    }

    /// Panics with `what`, the process's exit status if it is gone, and the end of its log.
    pub fn fail(&mut self, what: &str) -> ! {
        let exited = self.exited();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        let state = exited.map_or("still running".to_owned(), |s| format!("exited: {s}"));
        panic!("{what}\n{} ({state}): {}\nlast lines of its log:\n{tail}", self.label, self.command);
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then wait; SIGKILL (to the process group with `kill_group`: the Node workers go with
    /// their primary; clusterd's workers get SIGKILL from the kernel when clusterd dies) if it has
    /// not exited within [`STOP_TIMEOUT`].
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        if let Some(status) = wait_timeout(&mut child, STOP_TIMEOUT) {
            return Some(status);
        }
        eprintln!("{} did not exit within {STOP_TIMEOUT:?} of SIGTERM: sending SIGKILL", self.label);
        if self.kill_group {
            // Not yet reaped, so the group id is still its pid.
            let _ = kill(Pid::from_raw(-self.pid), Signal::SIGKILL);
        } else {
            let _ = child.kill();
        }
        child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One row of the status document's worker table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: u64,
    pub pid: Option<u32>,
    pub state: String,
    pub generation: u64,
    pub sessions: u64,
    /// Connections counted on it (handed over and not yet reported closed).
    pub connections: u64,
}

/// Part of a `status` reply.
pub struct Status {
    pub workers: Vec<Row>,
    pub sessions: u64,
}

impl Status {
    /// Whether exactly `count` workers are listed and every one is ready with a pid.
    pub fn all_ready(&self, count: usize) -> bool {
        self.workers.len() == count && self.workers.iter().all(|r| r.state == "ready" && r.pid.is_some())
    }

    /// The pids of the listed workers.
    pub fn pids(&self) -> Vec<i32> {
        self.workers.iter().filter_map(|w| w.pid).filter_map(|p| i32::try_from(p).ok()).collect()
    }
}

/// One `status` request on clusterd's control socket (one JSON line each way).
pub fn status(socket: &Path) -> Result<Status, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(b"{\"command\":\"status\"}\n").map_err(|e| format!("cannot send the request: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| format!("no reply: {e}"))?;
    let reply: Value = serde_json::from_str(&line).map_err(|e| format!("unreadable reply {line:?}: {e}"))?;
    if reply["ok"] != Value::Bool(true) {
        return Err(format!("clusterd refused: {line}"));
    }
    let status = &reply["status"];
    let workers = status["workers"].as_array().ok_or_else(|| format!("no worker table in {line:?}"))?;
    let workers = workers
        .iter()
        .map(|w| {
            Ok(Row {
                id: w["id"].as_u64().ok_or("a worker without an id")?,
                pid: w["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
                state: w["state"].as_str().ok_or("a worker without a state")?.to_owned(),
                generation: w["generation"].as_u64().ok_or("a worker without a generation")?,
                sessions: w["sessions"].as_u64().unwrap_or(0),
                connections: w["connections"].as_u64().unwrap_or(0),
            })
        })
        .collect::<Result<Vec<Row>, String>>()?;
    let sessions = status["sessions"].as_u64().unwrap_or_else(|| workers.iter().map(|w| w.sessions).sum());
    Ok(Status { workers, sessions })
}

/// Polls `status` every `poll_every` until `done` holds; fails `clusterd` after `timeout`. Errors
/// are retried: the socket appears only once clusterd is up.
pub fn wait_for_status(
    clusterd: &mut Process,
    socket: &Path,
    (timeout, poll_every): (Duration, Duration),
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match status(socket) {
            Ok(status) if done(&status) => return status,
            Ok(status) => format!("sessions {}, workers {:?}", status.sessions, status.workers),
            Err(error) => error,
        };
        if let Some(status) = clusterd.exited() {
            clusterd.fail(&format!("clusterd exited ({status}) while waiting for {what}"));
        }
        if Instant::now() >= deadline {
            clusterd.fail(&format!("timed out after {timeout:?} waiting for {what}; last: {last}"));
        }
        thread::sleep(poll_every);
    }
}

/// A loopback port nobody listens on now: bind port 0, read what the kernel chose, close.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind 127.0.0.1:0");
    listener.local_addr().expect("no local address").port()
}

/// One `GET /` with `Connection: close`; the status code and the body.
pub fn http_get(port: u16) -> Result<(u16, String), String> {
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
    Ok((status_code(head).ok_or_else(|| format!("no status line: {text:?}"))?, body.to_owned()))
}

/// The status code of an HTTP/1.1 response head.
pub fn status_code(head: &str) -> Option<u16> {
    head.lines().next()?.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// wrk's arguments against `url`, as they would be typed; `close` adds `Connection: close`.
pub fn wrk_args(url: String, close: bool) -> Vec<String> {
    let mut args = vec![format!("-t{WRK_THREADS}"), format!("-c{WRK_CONNECTIONS}"), format!("-d{WRK_SECONDS}s")];
    if close {
        args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    }
    args.push(url);
    args
}

/// Arguments joined for a shell, those with a space in single quotes.
pub fn shell_join(args: &[String]) -> String {
    args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { a.clone() }).collect::<Vec<_>>().join(" ")
}

/// What wrk reported.
#[derive(Debug, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub requests: u64,
    pub seconds: f64,
    pub latency_avg: String,
    /// The 99th percentile latency in ms, when wrk ran with `--latency`.
    pub p99_ms: Option<f64>,
    pub non_2xx: u64,
    /// connect, read, write, timeout
    pub socket_errors: [u64; 4],
}

impl WrkResult {
    /// Non-2xx responses plus socket errors.
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors.iter().sum::<u64>()
    }

    /// Reads wrk's `Requests/sec`, request count, latency, non-2xx and socket errors.
    pub fn parse(text: &str) -> Result<Self, String> {
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
            } else if let Some(v) = line.strip_prefix("99%") {
                result.p99_ms = parse_wrk_time(v).map(|s| s * 1e3);
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

/// Parses wrk's durations: `5.00s`, `1.00m`, `900.00ms`.
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

/// The first line of `program arg`'s output, up to any " Copyright".
pub fn version(program: &Path, arg: &str) -> Option<String> {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .and_then(|l| l.split(" Copyright").next().map(str::to_owned))
}

/// utime + stime of the whole process (live and exited threads), in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
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
pub fn run_ns(pid: i32) -> Option<u64> {
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
pub fn machine_jiffies() -> (u64, u64) {
    let values = cpu_line();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Jiffies of all CPUs stolen by the hypervisor (`steal` in `/proc/stat`: time this virtual
/// machine wanted to run and the host ran something else). Counted busy by [`machine_jiffies`].
pub fn steal_jiffies() -> u64 {
    cpu_line().get(7).copied().unwrap_or(0)
}

/// user nice system idle iowait irq softirq steal, of the `cpu` line of `/proc/stat` (guest time
/// is already in user).
fn cpu_line() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").expect("cannot read /proc/stat");
    let line = stat.lines().find(|l| l.starts_with("cpu ")).expect("no cpu line in /proc/stat");
    line.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect()
}

/// User + system time of the bench's children that have been waited for.
pub fn children_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage failed");
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0).unsigned_abs()) + Duration::from_micros(t.tv_usec().max(0).unsigned_abs())
    };
    micros(usage.user_time()) + micros(usage.system_time())
}

/// The numeric fields `names` of `/proc/<pid>/status` (first number of each; KiB for the `Vm*`).
pub fn proc_status<const N: usize>(pid: i32, names: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    names.map(|name| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    })
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn proc_memory(pid: i32) -> (u64, u64) {
    let [rss, hwm] = proc_status(pid, ["VmRSS", "VmHWM"]);
    (rss, hwm)
}

/// The kernel's clock ticks per second (`_SC_CLK_TCK`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a system constant; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).expect("sysconf(_SC_CLK_TCK) failed")
}

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The median of a non-empty sample (the mean of the middle two for an even count).
pub fn median(sample: impl IntoIterator<Item = f64>) -> f64 {
    let mut sample: Vec<f64> = sample.into_iter().collect();
    assert!(!sample.is_empty(), "median of nothing");
    sample.sort_by(f64::total_cmp);
    let n = sample.len();
    if n % 2 == 1 { sample[n / 2] } else { (sample[n / 2 - 1] + sample[n / 2]) / 2.0 }
}

/// The values with `precision` decimals, joined with " / ".
pub fn list(values: impl IntoIterator<Item = f64>, precision: usize) -> String {
    values.into_iter().map(|v| format!("{v:.precision$}")).collect::<Vec<_>>().join(" / ")
}

/// An exit status as text; "unknown" when the process had to be killed after the timeout.
pub fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "unknown (killed after the timeout)".to_owned(), |s| s.to_string())
}

/// benches/node: the Node.js side of the comparisons.
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/node")
}

/// Runs `npm ci` in benches/node unless `packages` are installed, within 5 minutes; exits the
/// bench with a clear message when it fails.
pub fn ensure_node_modules(npm: &Path, packages: &[&str]) {
    let dir = node_dir();
    if packages.iter().all(|p| dir.join("node_modules").join(p).join("package.json").is_file()) {
        return;
    }
    eprintln!("benches/node/node_modules is missing: running `npm ci` in {}", dir.display());
    let mut command = Command::new(npm);
    command.args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir).stdin(Stdio::null());
    die_with_bench(&mut command);
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start npm: {e}"));
    match wait_timeout(&mut child, Duration::from_secs(300)) {
        Some(status) if status.success() => {}
        other => {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "error: `npm ci` in {} failed or timed out ({other:?}); run it by hand and try again",
                dir.display()
            );
            std::process::exit(1);
        }
    }
}

/// The two primaries the Node comparisons measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Node,
    Clusterd,
}

impl Setup {
    /// Its name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Node => "Node primary",
            Self::Clusterd => "clusterd",
        }
    }
}

/// Spawns `command` in a process group of its own (so that a SIGKILL to the group takes its children
/// too), in a clean environment ([`clean_env`], plus the variables `also` selects), dying with the
/// bench.
pub fn spawn_group(command: &mut Command, also: impl Fn(&str) -> bool) -> Child {
    use std::os::unix::process::CommandExt;
    clean_env(command, also);
    command.process_group(0);
    die_with_bench(command);
    command.spawn().unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()))
}

/// Takes the child's piped stdout: a thread sends each line to the returned channel and appends it
/// to `log` too. The channel disconnects when the child's stdout closes.
pub fn forward_lines(child: &mut Child, log: &Path) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("the child's stdout is not piped");
    let mut copy = std::fs::OpenOptions::new().append(true).open(log).expect("cannot open the log file");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(copy, "{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts clusterd with `workers` workers running `program` on `127.0.0.1:port`, its control socket
/// at `socket` and its output in `log`, and waits (at most `timeout`) until `status` shows every
/// worker ready. Returns the process (its command line as typed, `RUST_LOG=info` first) and the
/// worker pids.
pub fn start_clusterd(
    clusterd: &Path,
    (workers, program): (usize, &[String]),
    (port, socket, log): (u16, &Path, &Path),
    timeout: Duration,
) -> (Process, Vec<i32>) {
    let mut args = vec![
        "--workers".to_owned(),
        workers.to_string(),
        "--control".into(),
        socket.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        // As measured before clusterd stopped setting it unasked (issue 14).
        "--tcp-nodelay".into(),
        "--".into(),
    ];
    args.extend(program.iter().cloned());
    let mut command = Command::new(clusterd);
    command.args(&args);
    log_to(&mut command, log, "clusterd");
    let child = spawn_group(&mut command, |_| false);
    let text = format!("RUST_LOG=info {} {}", clusterd.display(), shell_join(&args));
    let mut process = Process::new(Setup::Clusterd.label(), child, log.to_path_buf(), text, true);
    let what = format!("all {workers} workers to be ready");
    let status =
        wait_for_status(&mut process, socket, (timeout, Duration::from_millis(5)), &what, |s| s.all_ready(workers));
    (process, status.pids())
}

/// Starts `node benches/node/<script> <port> <workers>` (a primary in the style of `primary.cjs`,
/// which prints `primary <pid> listening on …` once the port is bound and `ready worker <id> pid
/// <pid>` from each worker) with its output in `log`, and waits at most `timeout` for all those
/// lines. Returns the process (its command line as typed) and the worker pids.
pub fn start_node_primary(
    node: &Path,
    (script, port, workers): (&str, u16, usize),
    log: &Path,
    timeout: Duration,
) -> (Process, Vec<i32>) {
    let dir = node_dir();
    let args = vec![script.to_owned(), port.to_string(), workers.to_string()];
    let err = File::create(log).expect("cannot create the Node primary's log file");
    let mut command = Command::new(node);
    command.args(&args).current_dir(&dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
    // `DEBUG` would make the Node packages log every request.
    let mut child = spawn_group(&mut command, |name| name.starts_with("NODE_") || name == "DEBUG");
    let lines = forward_lines(&mut child, log);
    let text = format!("(cd {} && {} {})", dir.display(), node.display(), args.join(" "));
    let mut process = Process::new(Setup::Node.label(), child, log.to_path_buf(), text, true);
    let deadline = Instant::now() + timeout;
    let (mut listening, mut pids) = (false, Vec::new());
    while !listening || pids.len() < workers {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with("primary ") && line.contains(" listening on ") => listening = true,
            Ok(line) => {
                if let Some(pid) = line.strip_prefix("ready worker ").and_then(|r| r.split(" pid ").nth(1)) {
                    pids.push(pid.trim().parse().unwrap_or(0));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => process.fail(&format!(
                "the Node primary and its {workers} workers were not ready within {timeout:?} (listening: \
                 {listening}, workers ready: {})",
                pids.len()
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => process.fail("the Node primary closed its stdout"),
        }
    }
    (process, pids)
}

/// utime + stime in clock ticks, 0 for a process that is gone.
pub fn cpu_ticks_or_0(pid: i32) -> u64 {
    if Path::new(&format!("/proc/{pid}")).exists() { cpu_ticks(pid) } else { 0 }
}

/// The installed version of an npm package of benches/node, "?" if unknown.
pub fn package_version(name: &str) -> String {
    let path = node_dir().join("node_modules").join(name).join("package.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// What one load run reported: its rate, what it completed, its errors (and what they were), and
/// how the work spread over the workers, where the load generator says so.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub rate: f64,
    pub done: u64,
    pub errors: u64,
    pub error_detail: String,
    pub spread: String,
    /// The 99th percentile latency of a unit (a request, a session), ms, where the load generator
    /// gives it.
    pub p99_ms: Option<f64>,
}

impl LoadOutcome {
    /// Takes a later outcome's figures: the rate and the counts always, the error detail only
    /// when it had errors and the spread only when it has one (a run may have noted either).
    pub fn update(&mut self, later: LoadOutcome) {
        (self.rate, self.done, self.errors, self.p99_ms) = (later.rate, later.done, later.errors, later.p99_ms);
        if later.errors > 0 {
            self.error_detail = later.error_detail;
        }
        if !later.spread.is_empty() {
            self.spread = later.spread;
        }
    }

    /// wrk's `Requests/sec`, request count, non-2xx and socket errors.
    pub fn from_wrk(text: &str) -> Result<Self, String> {
        let wrk = WrkResult::parse(text)?;
        let mut outcome =
            Self { rate: wrk.rps, done: wrk.requests, errors: wrk.errors(), p99_ms: wrk.p99_ms, ..Self::default() };
        if outcome.errors > 0 {
            let [c, r, w, t] = wrk.socket_errors;
            outcome.error_detail =
                format!("non-2xx {}, socket errors connect {c} read {r} write {w} timeout {t}", wrk.non_2xx);
        }
        Ok(outcome)
    }

    /// benches/node/polling_load.mjs's JSON line: sessions, errors, seconds, per-worker counts.
    pub fn from_polling_load(text: &str) -> Result<Self, String> {
        let line = text.lines().rev().find(|l| l.starts_with('{')).ok_or("no JSON line")?;
        let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON {line:?}: {e}"))?;
        let done = v["sessions"].as_u64().ok_or("no `sessions`")?;
        let errors = v["errors"].as_u64().ok_or("no `errors`")?;
        let seconds = v["seconds"].as_f64().filter(|s| *s > 0.0).ok_or("no `seconds`")?;
        let kinds = |key: &str| {
            v[key]
                .as_object()
                .map_or(String::new(), |m| m.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", "))
        };
        let p99_ms = v["latency_ms"]["p99"].as_f64();
        let mut outcome =
            Self { rate: done as f64 / seconds, done, errors, spread: kinds("workers"), p99_ms, ..Self::default() };
        if errors > 0 {
            let samples: Vec<&str> = v["error_samples"]
                .as_array()
                .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).take(3).collect());
            outcome.error_detail = format!("{} (e.g. {})", kinds("error_kinds"), samples.join("; "));
        }
        Ok(outcome)
    }
}
