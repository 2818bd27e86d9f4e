//! clusterd under `valgrind --tool=callgrind`: the instructions it executes for a bounded load.
//! Unlike CPU time, an instruction count does not move when other processes share the cores, so
//! two versions of the code, or two protocols, can be compared on a busy machine.
//!
//! Only clusterd runs under valgrind (its workers are exec'd natively: valgrind does not follow
//! children unless told to). A run: clusterd starts with a notify socket of the bench's own
//! (`READY=1` comes once every worker is ready, so waiting costs clusterd nothing per poll), the
//! load runs, the bench waits until `status` shows no connection and no session left (so that
//! every per-connection timer and close report is counted), then SIGTERM, and callgrind writes
//! its counts when clusterd exits. The cost of starting and stopping cancels out when the
//! difference of two runs with different loads is divided by the difference of their units.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Process, Setup, clean_env, die_with_bench, free_port, log_to, shell_join, wait_for_status, wait_timeout};

/// clusterd under valgrind runs about 50 times slower: starting it and its workers may take this.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// After the load, every connection and session must be closed within this (Node workers'
/// connections without a session count for clusterd's handshake window, 5 s).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `status` is asked while settling (each request costs clusterd instructions; a
/// coarse interval keeps that small and about the same in every run).
pub const SETTLE_POLL: Duration = Duration::from_millis(500);
/// From SIGTERM to clusterd's exit (its workers stop first).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What one profiled run gave.
pub struct Profiled {
    /// Instructions clusterd executed, all threads, from start to exit.
    pub instructions: u64,
    /// The callgrind output file (for `callgrind_annotate`), if it was kept.
    pub kept: Option<PathBuf>,
    /// The command line, as it would be typed.
    pub command: String,
}

/// Runs `clusterd --listen 127.0.0.1:<port> --control <socket> <args>` under callgrind in `cwd`,
/// runs `load(port)` once every worker is ready, and returns clusterd's instruction count. With
/// `keep`, the callgrind output is written to `keep/callgrind.out.<name>` and left there.
pub fn profile(
    (valgrind, clusterd): (&Path, &Path),
    args: &[String],
    cwd: &Path,
    (keep, name): (Option<&Path>, &str),
    load: impl FnOnce(u16) -> Result<(), String>,
) -> Result<Profiled, String> {
    let dir = tempfile::Builder::new().prefix("clusterd-callgrind-").tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let socket = dir.path().join("c.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).map_err(|e| format!("cannot bind the notify socket: {e}"))?;
    let out = match keep {
        Some(keep) => {
            std::fs::create_dir_all(keep).map_err(|e| format!("cannot create {}: {e}", keep.display()))?;
            keep.join(format!("callgrind.out.{name}"))
        }
        None => dir.path().join("callgrind.out"),
    };
    // clusterd's own options first: everything after its `--` is the worker's.
    let mut full = vec![
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
        clusterd.display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--control".to_owned(),
        socket.display().to_string(),
    ];
    full.extend(args.iter().cloned());
    let mut command = Command::new(valgrind);
    command.args(&full).current_dir(cwd);
    let log = dir.path().join("clusterd.log");
    log_to(&mut command, &log, "clusterd");
    // `DEBUG` would make the Node packages log every request; `NODE_*` would change the workers.
    clean_env(&mut command, |name| name.starts_with("NODE_") || name == "DEBUG");
    command.env("NOTIFY_SOCKET", &notify_path);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    die_with_bench(&mut command);
    let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", valgrind.display()))?;
    let text = format!("(cd {} && RUST_LOG=info {} {})", cwd.display(), valgrind.display(), shell_join(&full));
    let mut process = Process::new(Setup::Clusterd.label(), child, log.clone(), text.clone(), true);

    wait_ready(&mut process, &notify)?;
    if let Err(error) = load(port) {
        process.fail(&format!("the load failed: {error}"));
    }
    wait_for_status(&mut process, &socket, (SETTLE_TIMEOUT, SETTLE_POLL), "no connection and no session left", |s| {
        s.sessions == 0 && s.workers.iter().all(|w| w.connections == 0 && w.sessions == 0)
    });
    let mut child = process.child.take().ok_or("clusterd's process is gone")?;
    let _ = kill(Pid::from_raw(process.pid), Signal::SIGTERM);
    let status = wait_timeout(&mut child, EXIT_TIMEOUT);
    if status.is_none_or(|s| !s.success()) {
        let _ = kill(Pid::from_raw(-process.pid), Signal::SIGKILL);
        let _ = child.wait();
        return Err(format!("clusterd did not exit cleanly after SIGTERM ({status:?}); its log: {}", log.display()));
    }
    let instructions = total(&out)?;
    Ok(Profiled { instructions, kept: keep.map(|_| out), command: text })
}

/// Waits for `READY=1` on the notify socket.
fn wait_ready(process: &mut Process, notify: &UnixDatagram) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            process.fail(&format!("READY=1 did not come within {START_TIMEOUT:?}"));
        }
        notify.set_read_timeout(Some(left.min(Duration::from_millis(500)))).map_err(|e| e.to_string())?;
        match notify.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if let Some(status) = process.exited() {
                    process.fail(&format!("clusterd exited ({status}) before READY=1"));
                }
            }
            Err(e) => return Err(format!("notify socket: {e}")),
        }
    }
}

/// The `totals:` (or `summary:`) line of a callgrind output file: instructions (`Ir`).
pub fn total(out: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals line in {}", out.display()))
}
