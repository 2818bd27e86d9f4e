//! Supervision end to end: start, replace, restart policy, timeouts, protocol violations, stop.

mod support;

use nix::sys::signal::Signal;
use support::*;

#[test]
fn kill_9_replaces_the_worker_in_its_slot_and_term_drains_everything() {
    let mut c = Cluster::start(&["--workers", "2"], &[]);
    let status = c.wait_ready(2);
    assert_eq!(status["generation"], 1);
    let (old0, old1) = (worker_pid(&status, 0), worker_pid(&status, 1));
    c.output.wait_contains(&format!("[w0] test-worker id=0 pid={old0} gen=1 count=2"));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old0), Signal::SIGKILL).unwrap();
    let status = c.wait_status("slot 0 replaced and ready", |s| {
        let w = worker(s, 0);
        w["state"] == "ready" && w["pid"].as_i64().is_some_and(|p| p as i32 != old0)
    });
    let w0 = worker(&status, 0);
    assert_eq!(w0["restarts"], 1, "{w0}");
    assert!(w0["last_exit"].as_str().unwrap().contains("killed by SIGKILL"), "{w0}");
    let new0 = worker_pid(&status, 0);
    // Same slot, same CLUSTERD_WORKER_ID, new process; the other slot untouched.
    c.output.wait_contains(&format!("[w0] test-worker id=0 pid={new0} gen=1 count=2"));
    assert_eq!(worker_pid(&status, 1), old1);
    assert_eq!(worker(&status, 1)["restarts"], 0);
    wait_gone(old0, "the killed worker");

    c.signal(Signal::SIGTERM);
    let exit = c.wait_exit();
    assert_eq!(exit.code(), Some(0), "{}", c.stderr_dump());
    assert!(c.output.contains("[w0] drained") && c.output.contains("[w1] drained"), "{}", c.stderr_dump());
    assert!(c.output.contains("[w1] draining grace=Some(30s)"), "the drain frame carries the grace time");
    for pid in [new0, old1] {
        wait_gone(pid, "a drained worker");
    }
}

#[test]
fn a_crash_loop_past_the_limit_ends_clusterd_with_status_1_and_the_reason() {
    let mut c = Cluster::start(&["--workers", "1", "--crash-loop-limit", "5"], &["--exit-at-start", "7"]);
    let exit = c.wait_exit();
    assert_eq!(exit.code(), Some(1), "{}", c.stderr_dump());
    let reason = c.output.wait_contains("failed 5 times in a row");
    assert!(reason.contains("exited with code 7"), "{reason}");
    assert!(c.output.contains("crash loop: restarting in"), "the loop is reported before giving up");
}

#[test]
fn a_crash_loop_is_visible_in_status_before_the_limit() {
    let mut c =
        Cluster::start(&["--workers", "2", "--crash-loop-limit", "0"], &["--only-slot", "1", "--exit-at-start", "2"]);
    let status = c.wait_status("slot 1 reported as crash-looping", |s| worker(s, 1)["crash_loop"] == true);
    assert!(worker(&status, 1)["failures"].as_u64().unwrap() >= 3);
    assert_eq!(worker(&status, 0)["crash_loop"], false);
    assert_eq!(status["phase"], "starting", "READY waits for every initial worker");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn a_worker_that_never_reports_ready_is_killed_after_the_ready_timeout() {
    let mut c = Cluster::start(&["--workers", "1", "--ready-timeout", "300ms"], &["--never-ready"]);
    let status = c.wait_status("a ready-timeout exit", |s| {
        worker(s, 0)["last_exit"].as_str().is_some_and(|e| e.contains("not ready within --ready-timeout"))
    });
    assert!(worker(&status, 0)["restarts"].as_u64().unwrap() >= 1);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn a_worker_whose_heartbeat_stops_is_replaced() {
    let mut c = Cluster::start(&["--workers", "1", "--heartbeat-timeout", "600ms"], &["--freeze"]);
    let status = c.wait_status("a heartbeat-timeout exit", |s| {
        worker(s, 0)["last_exit"].as_str().is_some_and(|e| e.contains("no heartbeat"))
    });
    assert!(c.output.contains("[w0] freezing"));
    assert!(worker(&status, 0)["restarts"].as_u64().unwrap() >= 1);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn garbage_oversized_and_out_of_order_frames_get_the_worker_replaced_never_a_crash() {
    for flag in ["--garbage", "--oversized", "--skip-hello"] {
        let mut c = Cluster::start(&["--workers", "2", "--crash-loop-limit", "0"], &["--only-slot", "0", flag]);
        let status = c.wait_status(&format!("slot 0 replaced after {flag}"), |s| {
            worker(s, 0)["last_exit"].as_str().is_some_and(|e| e.contains("protocol violation"))
                && worker(s, 1)["state"] == "ready"
        });
        let exit = worker(&status, 0)["last_exit"].as_str().unwrap().to_owned();
        let expected = match flag {
            "--garbage" => "malformed frame",
            "--oversized" => "exceeds the limit",
            _ => "a frame before Hello",
        };
        assert!(exit.contains(expected), "{flag}: {exit}");
        // The bad worker got the SIGTERM of a drain, not an abrupt kill.
        c.output.wait_contains("[w0] bad worker: got SIGTERM");
        assert_eq!(worker(&status, 1)["restarts"], 0, "the good worker is untouched");
        c.signal(Signal::SIGTERM);
        assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    }
}

#[test]
fn after_the_grace_time_the_whole_process_group_is_killed() {
    let mut c = Cluster::start(&["--workers", "1", "--grace", "300ms"], &["--ignore-drain", "--child"]);
    let status = c.wait_ready(1);
    let pid = worker_pid(&status, 0);
    let child = field(&c.output.wait_contains("[w0] child pid="), "pid");
    assert_eq!(proc_stat(child).map(|s| s.2), Some(pid), "the child is in the worker's process group");
    c.signal(Signal::SIGTERM);
    c.output.wait_contains("[w0] draining");
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    assert!(c.output.contains("still running after the grace time: SIGKILL"));
    wait_gone(pid, "the worker");
    wait_gone(child, "the worker's child");
}

#[test]
fn a_second_term_stops_at_once() {
    let mut c = Cluster::start(&["--workers", "1", "--grace", "60s"], &["--ignore-drain"]);
    let pid = worker_pid(&c.wait_ready(1), 0);
    c.signal(Signal::SIGTERM);
    c.output.wait_contains("[w0] draining");
    c.wait_status("phase draining", |s| s["phase"] == "draining");
    c.signal(Signal::SIGTERM);
    let exit = c.wait_exit();
    assert_eq!(exit.code(), Some(128 + 15), "{}", c.stderr_dump());
    wait_gone(pid, "the worker");
}

#[test]
fn quit_stops_at_once() {
    let mut c = Cluster::start(&["--workers", "2", "--grace", "60s"], &["--ignore-drain"]);
    let status = c.wait_ready(2);
    c.signal(Signal::SIGQUIT);
    assert_eq!(c.wait_exit().code(), Some(128 + 3), "{}", c.stderr_dump());
    assert!(!c.output.contains("[w0] draining"), "QUIT does not drain");
    for id in 0..2 {
        wait_gone(worker_pid(&status, id), "a worker");
    }
}

#[test]
fn sigkilled_clusterd_takes_its_workers_with_it() {
    let mut c = Cluster::start(&["--workers", "2"], &[]);
    let status = c.wait_ready(2);
    c.signal(Signal::SIGKILL);
    c.wait_exit();
    for id in 0..2 {
        wait_gone(worker_pid(&status, id), "a worker of a SIGKILLed clusterd");
    }
}

#[test]
fn a_program_without_the_sdk_is_supervised_with_ready_on_spawn() {
    let mut c = Builder::new().args(&["--workers", "2", "--ready-on", "spawn"]).program(&["sleep", "1000"]).start();
    let status = c.wait_ready(2);
    let pid = worker_pid(&status, 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    c.wait_status("slot 1 replaced", |s| worker(s, 1)["pid"].as_i64().is_some_and(|p| p as i32 != pid));
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Issue 15, item 2: a plain program run without `--ready-on spawn` never greets clusterd. While
/// it still lives, a few seconds in, clusterd says so and names the fix; the line that reports
/// the kill at `--ready-timeout` says it again.
#[test]
fn a_program_that_does_not_speak_the_protocol_is_told_the_fix_while_it_runs() {
    let mut c = Builder::new().args(&["--workers", "1", "--ready-timeout", "8s"]).program(&["sleep", "1000"]).start();
    let hint = c.output.wait_contains("does not speak clusterd's protocol");
    assert!(hint.contains("the worker has said nothing on its IPC socket within 3s"), "{hint}");
    assert!(hint.contains("run clusterd with --ready-on spawn"), "{hint}");
    let status = c.status().expect("status");
    let row = worker(&status, 0);
    assert_eq!(row["state"], "starting", "the hint comes while the worker still runs: {row}");
    assert!(pid_exists(row["pid"].as_i64().unwrap() as i32));
    assert!(!c.output.contains("killing it"), "the hint comes before the kill");
    let kill = c.output.wait_contains("killing it:");
    assert!(kill.contains("said nothing on its IPC socket within 8s"), "{kill}");
    assert!(kill.contains("--ready-on spawn"), "{kill}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Issue 15, item 3: a stable worker that exits is restarted at once, and the log says so in
/// words ("restarting at once"), not as a zero duration ("restarting in 0ns").
#[test]
fn an_immediate_restart_is_said_in_words() {
    let mut c = Cluster::start(&["--workers", "1", "--stable-after", "0s"], &["--exit-after", "100"]);
    let line = c.output.wait_contains("restarting ");
    assert!(line.contains("restarting at once"), "{line}");
    assert!(!c.output.contains("0ns"), "{}", c.stderr_dump());
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
