//! What a worker inherits and what clusterd leaves behind: fds, environment, process groups,
//! systemd notifications, PID 1 duty, and output that cannot block clusterd.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;

use nix::sys::signal::Signal;
use support::*;

#[test]
fn a_worker_inherits_stdio_and_its_two_sockets_only_and_no_private_variables() {
    // A descriptor without close-on-exec, given to clusterd the way a careless parent would.
    let leaky = std::fs::File::open("/dev/null").unwrap();
    nix::fcntl::fcntl(&leaky, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let notify_dir = tempfile::tempdir().unwrap();
    let notify = UnixDatagram::bind(notify_dir.path().join("notify")).unwrap();
    let mut c = Builder::new()
        .args(&["--workers", "2", "--ready-on", "spawn"])
        .program(&["sleep", "1000"])
        .env("NOTIFY_SOCKET", notify_dir.path().join("notify").to_str().unwrap())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "http")
        .env("WATCHDOG_USEC", "")
        .start();
    let status = c.wait_ready(2);
    drop(leaky);
    for id in 0..2 {
        let pid = worker_pid(&status, id);
        let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| {
                let fd = e.file_name().to_string_lossy().parse().unwrap();
                (fd, std::fs::read_link(e.path()).unwrap().to_string_lossy().into_owned())
            })
            .collect();
        fds.sort();
        let numbers: Vec<i32> = fds.iter().map(|f| f.0).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4], "worker {id} fds: {fds:?}");
        assert_eq!(fds[0].1, "/dev/null", "stdin");
        assert!(fds[1].1.starts_with("pipe:") && fds[2].1.starts_with("pipe:"), "{fds:?}");
        assert!(fds[3].1.starts_with("socket:") && fds[4].1.starts_with("socket:"), "IPC and bus sockets: {fds:?}");

        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<String> = environ.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        for expected in [
            "CLUSTERD_IPC_FD=3".to_owned(),
            "CLUSTERD_BUS_FD=4".to_owned(),
            format!("CLUSTERD_WORKER_ID={id}"),
            "CLUSTERD_WORKER_COUNT=2".into(),
            "CLUSTERD_GENERATION=1".into(),
        ] {
            assert!(vars.contains(&expected), "worker {id} lacks {expected}: {vars:?}");
        }
        for private in ["NOTIFY_SOCKET=", "LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=", "WATCHDOG_USEC="] {
            assert!(!vars.iter().any(|v| v.starts_with(private)), "worker {id} got {private}");
        }
        let (_, ppid, pgid) = proc_stat(pid).unwrap();
        assert_eq!(ppid, c.pid(), "the worker is clusterd's child");
        assert_eq!(pgid, pid, "the worker leads its own process group");
    }
    // clusterd's own inherited fd is still open in clusterd (it is only made close-on-exec).
    assert!(notify.as_raw_fd() > 0);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn systemd_hears_ready_once_every_worker_is_ready_then_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let recv = || {
        let mut buf = vec![0u8; 4096];
        let n = notify.recv(&mut buf).expect("a notification within the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut c = Builder::new()
        .args(&["--workers", "2"])
        .worker_args(&["--only-slot", "1", "--ready-after", "200"])
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .start();
    let mut seen = Vec::new();
    loop {
        let message = recv();
        seen.push(message.clone());
        if message.contains("READY=1") {
            assert!(message.contains("STATUS=2/2 workers ready"), "{seen:?}");
            break;
        }
        assert!(!message.contains("STATUS=2/2"), "2/2 must come with READY=1: {seen:?}");
    }
    assert!(seen.iter().any(|m| m.contains("STATUS=1/2 workers ready")), "progress is reported: {seen:?}");
    // The worker never sees NOTIFY_SOCKET.
    assert!(c.output.wait_contains("[w0] test-worker").contains("notify=false"));
    let pid = worker_pid(&c.wait_ready(2), 0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    loop {
        let message = recv();
        assert!(!message.contains("READY=1"), "READY is sent once");
        if message.contains("STATUS=1/2 workers ready") {
            break;
        }
    }
    c.wait_ready(2);
    c.signal(Signal::SIGTERM);
    loop {
        if recv().contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn as_pid_1_clusterd_reaps_orphans_and_stops_on_term() {
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status();
    assert!(
        probe.as_ref().is_ok_and(|s| s.success()),
        "this test needs `unshare --pid --fork --mount-proc` (util-linux, root): {probe:?}"
    );
    let mut c = Builder::new()
        .under(&["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(&["--workers", "1"])
        .worker_args(&["--orphan", "1500"])
        .start();
    let unshare = c.pid();
    let clusterd = wait_until("clusterd running under unshare", || children_of(unshare).first().map(|c| c.0));
    let status = c.wait_ready(1);
    assert_eq!(status["pid"], 1, "clusterd is PID 1 in its namespace");
    c.output.wait_contains("[w0] orphan pid=");
    // The orphan (a `sleep` whose parent shell exited) now belongs to PID 1 = clusterd ...
    let orphan = wait_until("the orphan to be reparented to clusterd", || {
        children_of(clusterd).into_iter().find(|(_, comm)| comm == "sleep").map(|c| c.0)
    });
    // ... which reaps it when it ends: no zombie is left.
    wait_gone(orphan, "the orphaned grandchild");
    assert!(children_of(clusterd).iter().all(|(pid, _)| proc_stat(*pid).is_some_and(|s| s.0 != 'Z')));
    // TERM reaches PID 1 (it has handlers), which drains and exits 0.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(clusterd), Signal::SIGTERM).unwrap();
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    assert!(c.output.contains("[w0] drained"));
}

#[test]
fn worker_lines_are_prefixed_whole_and_the_prefix_can_be_turned_off() {
    let mut c = Cluster::start(&["--workers", "2"], &["--flood", "100000"]);
    c.wait_ready(2);
    let flood = c.output.wait_contains("[w1] xxxx");
    assert_eq!(flood.len(), "[w1] ".len() + 16 * 1024, "a run without newline is cut at 16 KiB, each piece prefixed");
    c.output.wait_contains("[w0] flood done");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));

    let mut c = Cluster::start(&["--workers", "1", "--no-log-prefix"], &[]);
    c.wait_ready(1);
    let line = c.output.wait_contains("test-worker id=0");
    assert!(line.starts_with("test-worker"), "{line}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn a_worker_flooding_a_stuck_stdout_does_not_block_clusterd() {
    // clusterd's stdout is a pipe nobody reads: it fills, and the flooding worker must wait, while
    // clusterd keeps answering and restarting.
    let (_reader, writer) = std::io::pipe().unwrap();
    let mut c = Builder::new()
        .args(&["--workers", "2", "--grace", "500ms"])
        .worker_args(&["--only-slot", "0", "--flood", "50000000"])
        .stdout(Stdio::from(writer))
        .start();
    let status = c.wait_ready(2);
    for _ in 0..20 {
        assert!(c.status().is_some(), "the control socket answers during the flood");
    }
    let pid = worker_pid(&status, 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    c.wait_status("slot 1 replaced during the flood", |s| {
        worker(s, 1)["state"] == "ready" && worker(s, 1)["pid"].as_i64().is_some_and(|p| p as i32 != pid)
    });
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
