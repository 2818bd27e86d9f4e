//! What a native worker that misuses the protocol can cost clusterd: never its fds (a connection
//! given back many times), never its hold on the worker (a drain and kill that a flood of frames
//! would crowd out).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

/// Review finding 2: a worker handed one connection gave it back 19 000 times; each copy was held
/// idle for 60 s, clusterd ran out of fds and refused every client. A connection can now come
/// back once; the repeats are refused (their fds closed at once) and logged at a pace.
#[test]
fn a_connection_given_back_many_times_costs_no_fds() {
    const TIMES: u64 = 10_000;
    let times = TIMES.to_string();
    let mut c = Cluster::start(&["--workers", "1", "--listen", "127.0.0.1:0"], &["--handback-repeat", &times]);
    let status = c.wait_ready(1);
    let addr = listen_addr(&status);
    let pid = worker_pid(&status, 0);
    let before = fd_count(c.pid());

    let mut client = TcpStream::connect(addr).expect("connect");
    client.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n").expect("send the first request");
    c.output.wait_for("the worker's repeats sent", |l| {
        l.contains("handback-repeat gave back id") && l.ends_with(&format!(" {times} times"))
    });
    // Logged the first ten times, then at every power of two: 8192 is the last below 10 000.
    c.output.wait_contains("refused=8192");
    let after = fd_count(c.pid());
    eprintln!("clusterd's fds: {before} before, {after} after one connection given back {TIMES} times");
    assert!(
        after <= before + 32,
        "clusterd's fds grew from {before} to {after} with one connection given back {TIMES} times:\n{}",
        c.stderr_dump()
    );
    assert!(!c.output.contains("refused=16384"), "more refusals than repeats:\n{}", c.stderr_dump());

    for n in 0..3 {
        let answer = get(addr, &format!("/after{n}"));
        assert_eq!(answer.code, 200, "request {n} after the repeats");
    }
    let status = c.status().expect("status");
    assert_eq!(worker_pid(&status, 0), pid, "a refused handback is not a reason to replace the worker");
    drop(client);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Review finding 6: a worker that announced thousands of sessions and never read its socket
/// kept its task's command queue full of acks, each waiting up to a second for room: the
/// reload's Drain and the grace's Kill were dropped, the worker outlived its grace, and `stop`
/// ended only through the "not reaped" fallback. Drain and Kill now always reach the task, and
/// acks never make it wait.
#[test]
fn a_worker_that_floods_sessions_and_never_reads_is_killed_after_its_grace() {
    const GRACE: Duration = Duration::from_secs(2);
    // A failure bound, not a sleep: the kill is due at GRACE; the rest covers a busy machine.
    const MARGIN: Duration = Duration::from_secs(8);
    let mut c = Cluster::start(
        &["--workers", "1", "--listen", "127.0.0.1:0", "--grace", "2s"],
        &["--session-flood-in", "1", "8000"],
    );
    let status = c.wait_ready(1);
    let old = worker_pid(&status, 0);
    // 2 000 announced: more than the acks the worker's socket and its task's queue hold.
    c.output.wait_contains("session-flood under way 2000");

    let asked = Instant::now();
    let reply = c.request(r#"{"command":"reload"}"#).expect("reload answered");
    assert_eq!(reply["ok"], true, "{reply}");
    c.wait_status("the flooding worker gone and its successor ready", |s| {
        let workers = s["workers"].as_array().expect("workers");
        workers.len() == 1
            && workers[0]["state"] == "ready"
            && workers[0]["pid"].as_i64().is_some_and(|p| p as i32 != old)
            && !pid_exists(old)
    });
    let took = asked.elapsed();
    eprintln!("the flooding worker was gone {took:?} after the reload (grace {GRACE:?})");
    assert!(
        took < GRACE + MARGIN,
        "the flooding worker was gone {took:?} after the reload, its grace being {GRACE:?}:\n{}",
        c.stderr_dump()
    );
    assert!(c.output.contains("still running after the grace time: SIGKILL"), "{}", c.stderr_dump());

    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    assert!(!c.output.contains("not reaped"), "stop needed the fallback:\n{}", c.stderr_dump());
}

/// Review finding 9: every capacity change was logged, so a worker saying full, room, full...
/// in a loop wrote two lines per change. They are logged the first ten times, then at every
/// power of two, with the count.
#[test]
fn a_worker_toggling_its_capacity_does_not_flood_the_log() {
    const TIMES: u64 = 10_000;
    let times = TIMES.to_string();
    let mut c = Cluster::start(&["--workers", "1", "--listen", "127.0.0.1:0"], &["--capacity-toggles", &times]);
    c.wait_ready(1);
    c.output.wait_contains(&format!("capacity toggled {times} times"));
    // 20 000 changes: 16 384 is the last power of two among them.
    c.output.wait_contains("changes=16384");
    let logged = c
        .output
        .snapshot()
        .iter()
        .filter(|l| l.contains("worker at capacity") || l.contains("worker has room again"))
        .count();
    // 1..=10, then the eleven powers of two 16, 32, ... 16 384.
    assert!(logged <= 21, "{logged} capacity lines for {} changes:\n{}", 2 * TIMES, c.stderr_dump());
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
