//! Changing the pool while it serves: rolling reload (HUP, `clusterd reload`) and scaling
//! (`clusterd scale`, TTIN, TTOU).

mod support;

use std::io::Write;
use std::process::Command;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

fn cli(c: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(CLUSTERD).args(args).arg("--control").arg(&c.control).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

fn rows(status: &Value) -> Vec<Value> {
    status["workers"].as_array().unwrap().clone()
}

/// Slots that have a ready process in this status.
fn ready_slots(status: &Value) -> std::collections::BTreeSet<u64> {
    rows(status).iter().filter(|w| w["state"] == "ready").map(|w| w["id"].as_u64().unwrap()).collect()
}

#[test]
fn reload_replaces_each_worker_only_after_its_successor_is_ready() {
    let mut c = Cluster::start(&["--workers", "2"], &["--ready-after", "150"]);
    let before = c.wait_ready(2);
    let old: Vec<i32> = (0..2).map(|id| worker_pid(&before, id)).collect();
    let (code, out) = cli(&c, &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("reloading to generation 2"), "{out}");
    let (code, out) = cli(&c, &["reload"]);
    assert_eq!(code, Some(1), "a second reload waits for the first: {out}");
    assert_eq!(
        out.trim(),
        "clusterd: a reload to generation 2 is already in progress",
        "one wording, no 'clusterd refused'"
    );

    // Sample the pool throughout: every slot has a ready process at every moment.
    let mut samples = 0;
    let after = c.wait_status("every worker on generation 2", |s| {
        samples += 1;
        assert_eq!(ready_slots(s).len(), 2, "a slot without a ready worker during reload: {s:#}");
        s["phase"] == "ready"
            && s["generation"] == 2
            && rows(s).len() == 2
            && rows(s).iter().all(|w| w["generation"] == 2)
    });
    assert!(samples > 1, "the reload was observed while in progress");
    for id in 0..2u64 {
        let pid = worker_pid(&after, id);
        assert!(!old.contains(&pid));
        c.output.wait_contains(&format!("[w{id}] test-worker id={id} pid={pid} gen=2"));
        wait_gone(old[id as usize], "an old-generation worker");
    }
    // One slot at a time: slot 1's replacement starts only once slot 0's is ready (clusterd's own
    // log, written in the dispatcher's order).
    let lines = c.output.snapshot();
    let pos = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?}"));
    let ready0 = lines
        .iter()
        .position(|l| l.contains("worker ready") && l.contains("worker=0") && l.contains("generation=2"))
        .expect("slot 0 ready on generation 2");
    assert!(ready0 < pos("reload: starting the replacement worker=1"), "{lines:#?}");
    assert!(pos("reload: starting the replacement worker=0") < ready0);
    c.output.wait_contains("reload complete");
    let retired = c.output.wait_contains("retired worker exited");
    assert!(retired.contains("; its drain took "), "the drain time is logged: {retired}");

    c.signal(Signal::SIGHUP);
    c.wait_status("generation 3 after SIGHUP", |s| {
        s["phase"] == "ready"
            && rows(s).len() == 2
            && rows(s).iter().all(|w| w["generation"] == 3 && w["state"] == "ready")
    });
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn a_new_generation_that_cannot_start_aborts_the_reload_and_the_old_one_keeps_serving() {
    let mut c = Cluster::start(&["--workers", "2", "--crash-loop-limit", "3"], &["--fail-generation", "2"]);
    let before = c.wait_ready(2);
    let (code, out) = cli(&c, &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    c.output.wait_contains("reload to generation 2 aborted");
    let after = c.wait_status("back to ready on generation 1", |s| s["phase"] == "ready" && rows(s).len() == 2);
    assert_eq!(after["generation"], 1);
    for id in 0..2 {
        assert_eq!(worker_pid(&after, id), worker_pid(&before, id), "the old workers were never touched");
        assert_eq!(worker(&after, id)["state"], "ready");
    }
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "a failed reload is not a crash loop of the pool");
}

#[test]
fn scale_up_and_down_by_command_and_by_signal() {
    let mut c = Cluster::start(&["--workers", "2"], &[]);
    let before = c.wait_ready(2);
    let (code, out) = cli(&c, &["scale", "4"]);
    assert_eq!((code, out.trim()), (Some(0), "scaling to 4 workers"));
    let four = c.wait_ready(4);
    let ids: Vec<u64> = rows(&four).iter().map(|w| w["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    assert_eq!(worker_pid(&four, 0), worker_pid(&before, 0), "existing workers stay");
    c.output.wait_contains("[w3] test-worker id=3");
    assert!(c.output.wait_contains("[w3] test-worker id=3").contains("count=4"));

    let (code, _) = cli(&c, &["scale", "1"]);
    assert_eq!(code, Some(0));
    c.wait_ready(1);
    for id in 1..4 {
        wait_gone(worker_pid(&four, id), "a scaled-away worker");
    }
    assert!(c.output.contains("[w3] drained"), "scaled-away workers drain");

    c.signal(Signal::SIGTTIN);
    c.wait_ready(2);
    c.signal(Signal::SIGTTOU);
    c.wait_ready(1);
    c.signal(Signal::SIGTTOU);
    c.output.wait_contains("the pool size must be 1 to 1024, not 0");
    assert_eq!(rows(&c.wait_ready(1)).len(), 1);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Requests keep coming during a reload: not one may fail (the old workers drain what they were
/// handed, the new ones take the rest).
#[test]
fn a_reload_under_load_loses_no_request() {
    let hello = std::path::PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("hello");
    let mut c =
        Builder::new().args(&["--workers", "2", "--listen", "127.0.0.1:0"]).program(&[hello.to_str().unwrap()]).start();
    let addr = listen_addr(&c.wait_ready(2));
    let load = Load::start(addr);
    for generation in 2..=6 {
        let (code, out) = cli(&c, &["reload"]);
        assert_eq!(code, Some(0), "{out}");
        c.wait_status(&format!("generation {generation} serving"), |s| {
            s["phase"] == "ready" && rows(s).len() == 2 && rows(s).iter().all(|w| w["generation"] == generation)
        });
    }
    load.finish("the reloads");
}

/// Clients making one request per connection, as fast as they can, until `finish`.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<(u32, Vec<String>)>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..4)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failed) = (0u32, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && ok < 100_000 {
                        let result = std::net::TcpStream::connect(addr).and_then(|mut s| {
                            s.set_read_timeout(Some(TIMEOUT))?;
                            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
                            read_response(&mut s).ok_or_else(|| std::io::Error::other("no response"))
                        });
                        match result {
                            Ok(r) if r.code == 200 => ok += 1,
                            Ok(r) => failed.push(format!("status {}", r.code)),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the clients; fails if any request failed, or if too few ran to mean anything.
    fn finish(self, during: &str) {
        self.finish_allowing(during, 0);
    }

    /// As `finish`, with up to `allowed` failed requests.
    fn finish_allowing(self, during: &str, allowed: usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut total, mut failed) = (0, Vec::new());
        for client in self.clients {
            let (ok, errors) = client.join().unwrap();
            total += ok;
            failed.extend(errors);
        }
        assert!(
            failed.len() <= allowed,
            "{} failed requests during {during} (at most {allowed} allowed), e.g. {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(total >= 50, "the load ran during {during} ({total} requests)");
    }
}

#[test]
fn scaling_down_and_up_under_load_loses_no_request() {
    let hello = std::path::PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("hello");
    let mut c =
        Builder::new().args(&["--workers", "3", "--listen", "127.0.0.1:0"]).program(&[hello.to_str().unwrap()]).start();
    let addr = listen_addr(&c.wait_ready(3));
    let load = Load::start(addr);
    for workers in [1, 3, 2, 1, 3] {
        let (code, out) = cli(&c, &["scale", &workers.to_string()]);
        assert_eq!(code, Some(0), "{out}");
        c.wait_ready(workers);
    }
    load.finish("the scaling");
}

#[test]
fn a_worker_killed_under_load_costs_at_most_its_requests_in_flight() {
    let hello = std::path::PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("hello");
    let mut c =
        Builder::new().args(&["--workers", "2", "--listen", "127.0.0.1:0"]).program(&[hello.to_str().unwrap()]).start();
    let status = c.wait_ready(2);
    let addr = listen_addr(&status);
    let load = Load::start(addr);
    for round in 0..3 {
        let status = c.wait_ready(2);
        let pid = worker_pid(&status, round % 2);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        c.wait_status("the killed worker replaced", |s| {
            rows(s).len() == 2 && rows(s).iter().all(|w| w["state"] == "ready" && w["pid"].as_i64() != Some(pid as i64))
        });
    }
    // Each of the 4 clients has at most one request in flight when a worker dies: 3 kills.
    load.finish_allowing("three worker kills", 12);
}

/// Issue 15, item 4: during a reload the header counts the pool as configured (not the rows), a
/// draining worker shows the connections it still carries, and for how long it has drained.
#[test]
fn status_tells_the_truth_during_a_reload() {
    use std::io::Read;
    let mut c = Cluster::start(
        &["--workers", "2", "--listen", "127.0.0.1:0", "--grace", "60s"],
        &["--serve", "--ready-after", "300", "--drain-delay", "60000"],
    );
    let addr = listen_addr(&c.wait_ready(2));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("holding") {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the worker closed a held connection");
            seen.extend_from_slice(&chunk[..n]);
        }
        held.push(stream);
    }
    let carried = |s: &Value, state: &str| -> u64 {
        rows(s).iter().filter(|w| w["state"] == state).map(|w| w["connections"].as_u64().unwrap()).sum()
    };
    c.wait_status("both held connections counted", |s| carried(s, "ready") == 2);

    let (code, out) = cli(&c, &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    let s = c.wait_status("a successor starting", |s| rows(s).iter().any(|w| w["state"] == "starting"));
    assert_eq!((s["pool"].as_u64(), s["ready"].as_u64()), (Some(2), Some(2)), "slots, not rows: {s:#}");
    let s = c.wait_status("both old workers draining, the reload done", |s| {
        s["phase"] == "ready" && rows(s).iter().filter(|w| w["state"] == "draining").count() == 2
    });
    assert_eq!(carried(&s, "draining"), 2, "the draining workers still carry the held connections: {s:#}");
    assert_eq!(carried(&s, "ready"), 0);
    for w in rows(&s).iter().filter(|w| w["state"] == "draining") {
        assert!(w["draining_ms"].as_u64().is_some(), "the drain time is shown: {w}");
    }
    assert_eq!(s["grace_ms"], 60_000);
    let (code, table) = cli(&c, &["status"]);
    assert_eq!(code, Some(0));
    assert!(table.contains("phase ready  generation 2  2/2 workers ready"), "{table}");
    let draining: Vec<&str> = table.lines().filter(|l| l.contains(" draining ")).collect();
    assert_eq!(draining.len(), 2, "{table}");
    for line in draining {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[5], "1", "CONNS of a draining worker: {line}");
        assert!(fields[8].ends_with("s/1m"), "DRAINING shows the time drained of the grace: {line}");
    }
    // A connection the draining worker closes is uncounted at once.
    drop(held.pop());
    c.wait_status("one held connection left", |s| carried(s, "draining") == 1);
}
