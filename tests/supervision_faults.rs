//! Faults that must not take the service down or make clusterd lie (issue 14): kill storms, a
//! program that cannot be executed, clusterd's own fd exhaustion, workers whose descendants would
//! outlive clusterd, and the words used for each.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

/// One `GET /` on a new connection; `None` when the connection failed or broke (its worker was
/// killed while it served, or no worker was ready).
fn try_get(addr: std::net::SocketAddr) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    read_response(&mut stream).map(|r| r.code)
}

/// A small xorshift generator: the test prints its seed, so a failing order can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The regression of issue 14, item 4: a worker killed from outside after it was ready is not a
/// failed start. By default the storm is short and fast, with a long `--stable-after` and a low
/// crash-loop limit, so that the code before the fix gives up within it (each slot is killed far
/// more than 3 times, always while younger than 60 s). `CLUSTERD_KILL_STORM_SECS=60` runs the
/// issue's own scenario instead: a kill every 2 s for that long, with the default limits.
#[test]
fn a_kill_storm_of_ready_workers_never_ends_clusterd() {
    let long = std::env::var("CLUSTERD_KILL_STORM_SECS").ok().and_then(|s| s.parse::<u64>().ok());
    let (duration, every, mut args) = match long {
        Some(secs) => (Duration::from_secs(secs), Duration::from_secs(2), vec![]),
        None => (
            Duration::from_secs(6),
            Duration::from_millis(300),
            vec!["--stable-after", "60s", "--crash-loop-limit", "3"],
        ),
    };
    args.extend(["--workers", "2", "--listen", "127.0.0.1:0"]);
    let mut c = Cluster::start(&args, &["--serve"]);
    let addr = listen_addr(&c.wait_ready(2));

    // The load: a bounded loop of requests, each on a new connection, until the storm ends.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, refused, failed) =
            (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&refused), Arc::clone(&failed));
        std::thread::spawn(move || {
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match try_get(addr) {
                    Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                    // No worker was ready at that moment: clusterd answers at once.
                    Some(503) => refused.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill storm: seed {seed}, a kill every {every:?} for {duration:?}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < duration {
        if let Ok(Some(exit)) = c.child.try_wait() {
            panic!("clusterd exited ({exit}) after {kills} kills (seed {seed}); output:\n{}", c.stderr_dump());
        }
        let ready: Vec<i32> = c.status().map_or_else(Vec::new, |s| {
            s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["state"] == "ready")
                .filter_map(|w| w["pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        });
        if !ready.is_empty() {
            let victim = ready[(rng.next() % ready.len() as u64) as usize];
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        }
        // The storm's rate, not a wait for an event.
        std::thread::sleep(every);
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    // Enough that one of the two slots was killed at least 3 times (the limit of the short run),
    // and few enough for a slow, shared machine.
    let min_kills = if long.is_some() { duration.as_millis() / every.as_millis() / 2 } else { 6 };
    assert!(kills as u128 >= min_kills, "only {kills} kills landed (seed {seed})");

    let status = c.wait_ready(2);
    assert_eq!(status["phase"], "ready");
    let restarts: u64 = status["workers"].as_array().unwrap().iter().map(|w| w["restarts"].as_u64().unwrap()).sum();
    assert!(restarts >= kills, "{restarts} restarts for {kills} kills");
    for id in 0..2 {
        assert_eq!(worker(&status, id)["crash_loop"], false, "a killed ready worker is not a crash loop");
    }
    let (ok, refused, failed) =
        (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "kill storm: {kills} kills, {restarts} restarts; requests: {ok} answered, {refused} got 503 (no worker ready), {failed} broken"
    );
    assert!(ok > 0, "the load got answers during the storm");
    assert_eq!(try_get(addr), Some(200), "the pool serves after the storm");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Writes an executable file of `content` in `dir`.
fn executable(dir: &std::path::Path, name: &str, content: &[u8], mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The lines of clusterd's own log (not its workers' output), once its last words (the line
/// `clusterd: ...` that it prints before exiting 1) have been read from its pipe.
fn own_lines(c: &Cluster) -> Vec<String> {
    c.output.wait_for("clusterd's last line", |l| l.starts_with("clusterd: "));
    c.output.snapshot().into_iter().filter(|l| !l.starts_with("[w")).collect()
}

#[test]
fn a_worker_that_dies_is_reported_with_its_status_not_as_a_protocol_violation() {
    // The shell never reads its IPC socket: its end closes with the greeting unread, and clusterd
    // reads ECONNRESET, which is the death of the process, not a protocol violation.
    let mut c = Builder::new()
        .args(&["--workers", "1", "--ready-on", "spawn", "--crash-loop-limit", "0"])
        .program(&["sh", "-c", "exit 3"])
        .start();
    let status = c.wait_status("an exit of slot 0", |s| worker(s, 0)["last_exit"].is_string());
    let last = worker(&status, 0)["last_exit"].as_str().unwrap().to_owned();
    assert!(last.starts_with("exited with code 3 after "), "{last}");
    c.output.wait_contains("worker exited with code 3");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    c.output.wait_contains("INFO stopped");
    let log = c.output.snapshot().join("\n");
    assert!(!log.contains("protocol violation") && !log.contains("reset by peer"), "{log}");

    // The same for an SDK worker killed while frames wait in its socket.
    let mut c = Cluster::start(&["--workers", "1", "--crash-loop-limit", "0"], &["--freeze"]);
    let pid = worker_pid(&c.wait_ready(1), 0);
    c.output.wait_contains("[w0] freezing");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let status = c.wait_status("the kill reported", |s| worker(s, 0)["last_exit"].is_string());
    let last = worker(&status, 0)["last_exit"].as_str().unwrap().to_owned();
    assert!(last.starts_with("killed by SIGKILL"), "{last}");
    assert!(!last.contains("protocol violation"), "{last}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn a_program_that_is_not_executable_format_ends_clusterd_at_once_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // Executable bits, but neither an ELF binary nor a `#!` script.
    let program = executable(dir.path(), "not-a-program", b"just some text\nexit 0\n", 0o755);
    let mut c = Builder::new().args(&["--workers", "2", "--crash-loop-limit", "0"]).program(&[&program]).start();
    let exit = c.wait_exit();
    assert_eq!(exit.code(), Some(1), "{}", c.stderr_dump());
    let log = own_lines(&c);
    let last = log.last().cloned().unwrap_or_default();
    assert!(last.contains("cannot execute") && last.contains(&program), "{last}");
    assert!(last.contains("Exec format error"), "{last}");
    let all = log.join("\n");
    assert!(!all.contains("restarting in") && !all.contains("crash loop"), "no backoff loop:\n{all}");
}

/// The shell that runs a script worker opens the script by its path after `exec`: a test that
/// changes the file waits until each of the `n` workers has read it and become `sleep`.
fn wait_scripts_read(status: &serde_json::Value, n: u64) {
    for id in 0..n {
        let pid = worker_pid(status, id);
        wait_until(&format!("worker {id} to exec sleep"), || {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (comm.trim() == "sleep").then_some(())
        });
    }
}

#[test]
fn a_program_that_disappears_or_loses_its_permission_ends_clusterd_at_once_with_the_error() {
    use std::os::unix::fs::PermissionsExt;
    for (what, expected) in [("removed", "No such file or directory"), ("chmod 644", "Permission denied")] {
        let dir = tempfile::tempdir().unwrap();
        let program = executable(dir.path(), "server", b"#!/bin/sh\nexec sleep 1000\n", 0o755);
        let mut c = Builder::new()
            .args(&["--workers", "2", "--ready-on", "spawn", "--crash-loop-limit", "0"])
            .program(&[&program])
            .start();
        let status = c.wait_ready(2);
        wait_scripts_read(&status, 2);
        let pid = worker_pid(&status, 0);
        match what {
            "removed" => std::fs::remove_file(&program).unwrap(),
            _ => std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o644)).unwrap(),
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let exit = c.wait_exit();
        assert_eq!(exit.code(), Some(1), "{what}: {}", c.stderr_dump());
        let log = own_lines(&c);
        let last = log.last().cloned().unwrap_or_default();
        assert!(last.contains("cannot execute") && last.contains(expected), "{what}: {last}");
        let all = log.join("\n");
        // The kill is a death, restarted once; the failed exec of that restart ends clusterd.
        assert_eq!(all.matches("restarting in").count(), 1, "{what}: no backoff loop:\n{all}");
        assert_eq!(all.matches("cannot execute").count(), 2, "{what}: the error and the reason:\n{all}");
    }
}

#[test]
fn a_bind_error_gives_its_reason_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = Cluster::start(&["--workers", "1", "--listen", &addr], &[]);
    assert_eq!(c.wait_exit().code(), Some(1), "{}", c.stderr_dump());
    let log = own_lines(&c).join("\n");
    assert_eq!(log.matches("Address already in use").count(), 1, "{log}");
    assert!(log.contains(&format!("cannot listen on {addr}")), "{log}");
}

/// The regression of issue 14, item 3: clusterd at its own fd limit. Idle clients (a request line
/// that never ends) fill clusterd's fd table (`RLIMIT_NOFILE` 64 through `prlimit`); a worker is
/// killed, and clusterd cannot create its replacement's sockets. That is clusterd's failure: it is
/// retried, never counted toward the crash-loop guard (a limit of 3 would be reached at once), and
/// the control socket still answers. Once the clients leave, the slot comes back.
#[test]
fn clusterd_at_its_fd_limit_retries_its_own_failures_and_still_answers_control() {
    let limit = 64;
    let mut c = Builder::new()
        .under(&["prlimit", &format!("--nofile={limit}:{limit}"), "--"])
        .args(&["--workers", "2", "--listen", "127.0.0.1:0", "--sniff-timeout", "5m", "--crash-loop-limit", "3"])
        .worker_args(&["--serve"])
        .start();
    let status = c.wait_ready(2);
    let addr = listen_addr(&status);
    let clusterd = status["pid"].as_i64().unwrap() as i32;
    let victim = worker_pid(&status, 0);

    let mut idle = Vec::new();
    for _ in 0..2 * limit {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect (the backlog takes what clusterd cannot)");
        stream.write_all(b"GET /slow").unwrap();
        idle.push(stream);
    }
    c.output
        .wait_for("the accept loop at EMFILE", |l| l.contains("accept failed") && l.contains("Too many open files"));
    assert!(fd_count(clusterd) >= limit as usize - 1, "clusterd is at its limit: {} fds", fd_count(clusterd));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    // Retried, and more times than the crash-loop limit, without giving up.
    for n in 1..=4 {
        c.output.wait_for(&format!("resource failure {n}"), |l| {
            l.contains("clusterd's own resources") && l.contains(&format!("attempts={n}")) && l.contains("retrying in")
        });
    }
    let status = c.status().expect("the control socket answers at EMFILE");
    assert_ne!(worker(&status, 0)["state"], "ready");
    assert_eq!(worker(&status, 0)["crash_loop"], false, "clusterd's failure is not the worker's crash loop");
    assert_eq!(worker(&status, 0)["failures"], 0);
    assert!(c.child.try_wait().unwrap().is_none(), "clusterd keeps running");

    drop(idle);
    let status = c.wait_ready(2);
    assert_ne!(worker_pid(&status, 0), victim);
    assert_eq!(try_get(addr), Some(200), "the pool serves again");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Waits until `pid` has ended: gone, or a zombie (once clusterd is dead, whoever inherits an
/// orphan reaps it, on its own time).
fn wait_dead(pid: i32, what: &str) {
    wait_until(&format!("{what} (pid {pid}) to end (state: {:?})", proc_stat(pid)), || {
        proc_stat(pid).is_none_or(|(state, _, _)| state == 'Z').then_some(())
    });
}

/// A worker (a shell) that starts a child in its process group and one that leaves it for a
/// session of its own, then becomes `sleep`. Each announces its pid.
const FAMILY: &str = "sleep 1000 & echo child=$!; setsid sh -c 'echo escaped=$$; exec sleep 1001' & exec sleep 1002";

/// Starts the family under clusterd; returns (worker, child, escaped) and the `pool cleanup` line.
fn start_family(c: &mut Cluster) -> (i32, i32, i32, String) {
    let worker = worker_pid(&c.wait_ready(1), 0);
    let child = field(&c.output.wait_contains("[w0] child="), "child");
    let escaped = field(&c.output.wait_contains("[w0] escaped="), "escaped");
    let line = c.output.wait_contains("pool cleanup:");
    (worker, child, escaped, line)
}

/// The regression of issue 14, item 5: workers died with a SIGKILLed clusterd (parent-death
/// signal), their children did not.
#[test]
fn no_process_of_the_pool_outlives_a_sigkilled_clusterd() {
    let mut c = Builder::new().args(&["--workers", "1", "--ready-on", "spawn"]).program(&["sh", "-c", FAMILY]).start();
    let (worker, child, escaped, line) = start_family(&mut c);
    c.signal(Signal::SIGKILL);
    c.wait_exit();
    wait_dead(worker, "the worker");
    wait_dead(child, "the worker's child");
    if line.contains("(cgroup.kill)") {
        wait_dead(escaped, "the worker's child in a session of its own");
        let dir = line.split("pool cleanup: cgroup ").nth(1).and_then(|r| r.split(' ').next()).unwrap().to_owned();
        wait_until(&format!("the pool's cgroup {dir} to be removed"), || {
            (!std::path::Path::new(&dir).exists()).then_some(())
        });
    } else {
        // Not covered without a cgroup (the line says so); cleaned up here, not by clusterd.
        eprintln!("no cgroup on this machine ({line}): the escaped child is not covered");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(escaped), Signal::SIGKILL);
    }
}

/// Without a cgroup v2 hierarchy (here: unmounted in a private mount namespace), the guard falls
/// back on the workers' process groups, and says at start what that does not cover.
#[test]
fn without_a_cgroup_the_guard_kills_the_process_groups_and_says_what_it_misses() {
    let probe = std::process::Command::new("unshare").args(["--mount", "true"]).status();
    assert!(
        probe.as_ref().is_ok_and(|s| s.success()),
        "this test needs `unshare --mount` (util-linux, root): {probe:?}"
    );
    let hide_cgroups =
        "umount -l /sys/fs/cgroup/unified 2>/dev/null; umount -l /sys/fs/cgroup 2>/dev/null; exec \"$0\" \"$@\"";
    let mut c = Builder::new()
        .under(&["unshare", "--mount", "--propagation", "private", "sh", "-c", hide_cgroups])
        .args(&["--workers", "1", "--ready-on", "spawn"])
        .program(&["sh", "-c", FAMILY])
        .start();
    let (worker, child, escaped, line) = start_family(&mut c);
    assert!(line.contains("process groups") && line.contains("no cgroup v2 hierarchy is mounted"), "{line}");
    assert!(line.contains("can outlive a SIGKILLed clusterd"), "the line says what is not covered: {line}");
    c.signal(Signal::SIGKILL);
    c.wait_exit();
    wait_dead(worker, "the worker");
    wait_dead(child, "the worker's child");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(escaped), Signal::SIGKILL);
}

/// A release whose program cannot be executed aborts its reload at once (no three tries through
/// backoff); the old generation keeps serving and clusterd keeps running.
#[test]
fn a_reload_to_a_program_that_cannot_be_executed_is_aborted_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let program = executable(dir.path(), "server", b"#!/bin/sh\nexec sleep 1000\n", 0o755);
    let mut c = Builder::new().args(&["--workers", "2", "--ready-on", "spawn"]).program(&[&program]).start();
    let before = c.wait_ready(2);
    wait_scripts_read(&before, 2);
    // The new release is a data file: replaced by a rename, as a deploy does.
    let staged = executable(dir.path(), "server.new", b"not a program\n", 0o755);
    std::fs::rename(&staged, &program).unwrap();
    let reply = c.request(r#"{"command":"reload"}"#).expect("a reply");
    assert!(reply.to_string().contains("reloading to generation 2"), "{reply}");
    let line = c.output.wait_contains("reload to generation 2 aborted");
    assert!(line.contains("cannot execute") && line.contains("Exec format error"), "{line}");
    let after = c.wait_status("generation 1 serving again", |s| s["generation"] == 1 && s["phase"] == "ready");
    for id in 0..2 {
        assert_eq!(worker_pid(&after, id), worker_pid(&before, id), "the old worker {id} keeps serving");
    }
    assert!(!c.output.contains("retrying the replacement"), "no backoff loop:\n{}", c.stderr_dump());
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// The guard is clusterd's child in a process group of its own (a signal to clusterd's group
/// does not reach it); if it is killed anyway, clusterd says that the pool is unguarded.
#[test]
fn the_guard_runs_apart_and_its_end_is_reported() {
    let mut c = Cluster::start(&["--workers", "1"], &[]);
    let status = c.wait_ready(1);
    let clusterd = status["pid"].as_i64().unwrap() as i32;
    let guard = children_of(clusterd).into_iter().find(|(_, comm)| comm == "clusterd-guard").expect("a guard").0;
    let (_, ppid, pgid) = proc_stat(guard).unwrap();
    assert_eq!((ppid, pgid), (clusterd, guard), "clusterd's child, leading its own group");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard), Signal::SIGKILL).unwrap();
    c.output.wait_contains("the pool guard ended");
    let line = c.output.wait_contains("pool cleanup:");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    if let Some(dir) = line.split("pool cleanup: cgroup ").nth(1).and_then(|r| r.split(' ').next()) {
        assert!(!std::path::Path::new(dir).exists(), "clusterd removes its empty pool cgroup itself");
    }
}

/// With `--ready-on spawn` readiness is assumed, not heard: a program that exits at once is still
/// a crash loop, and clusterd gives up at the limit.
#[test]
fn with_ready_on_spawn_a_program_that_exits_at_once_is_still_a_crash_loop() {
    let mut c = Builder::new()
        .args(&["--workers", "1", "--ready-on", "spawn", "--crash-loop-limit", "3"])
        .program(&["sh", "-c", "exit 3"])
        .start();
    assert_eq!(c.wait_exit().code(), Some(1), "{}", c.stderr_dump());
    let last = own_lines(&c).last().cloned().unwrap_or_default();
    assert!(last.contains("failed 3 times in a row") && last.contains("exited with code 3"), "{last}");
}
