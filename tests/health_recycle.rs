//! Health checks (`--health-check`) and recycling (`--max-memory`, `--max-lifetime`,
//! `--max-connections`): a worker that stops answering is replaced within interval × failures +
//! timeout, a healthy pool never is, and recycled slots are replaced gracefully, one at a time,
//! without a failed request and without touching the crash-loop guard.

mod support;

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn rows(status: &Value) -> Vec<Value> {
    status["workers"].as_array().unwrap().clone()
}

fn replaced(status: &Value, why: &str) -> u64 {
    status["replaced"][why].as_u64().unwrap_or(0)
}

/// The ready, serving process of each slot, by slot.
fn serving(status: &Value) -> std::collections::BTreeMap<u64, i64> {
    rows(status)
        .iter()
        .filter(|w| w["state"] == "ready" && w["replacing"].is_null())
        .map(|w| (w["id"].as_u64().unwrap(), w["pid"].as_i64().unwrap()))
        .collect()
}

/// Sends a request on a new connection and leaves it open (its answer never comes).
fn send_only(addr: std::net::SocketAddr, target: &str) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    stream
}

/// The slot number in a worker's output line (`[w1] spinning`).
fn slot_of(line: &str) -> u64 {
    let start = line.find("[w").expect("a worker line") + 2;
    line[start..].split(']').next().unwrap().parse().unwrap()
}

const INTERVAL_MS: u64 = 300;
const TIMEOUT_MS: u64 = 200;
const FAILURES: u64 = 3;

fn health_args(failures: u64) -> Vec<String> {
    [
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        // The SDK's heartbeat would catch a blocked SDK worker too: off, so that the health check
        // is what is tested.
        "--heartbeat-timeout",
        "0",
        "--health-interval",
        &format!("{INTERVAL_MS}ms"),
        "--health-timeout",
        &format!("{TIMEOUT_MS}ms"),
        "--health-failures",
        &failures.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Checks that a stuck worker in `slot` (stuck since `stuck_at`) is replaced within the bound.
fn assert_replaced_in_time(c: &mut Cluster, slot: u64, old: i64, other: (u64, i64), stuck_at: Instant) {
    let bound = Duration::from_millis(INTERVAL_MS * FAILURES + TIMEOUT_MS);
    let line = c.output.wait_contains(&format!("failed {FAILURES} health checks in a row"));
    let detected = stuck_at.elapsed();
    assert!(line.contains(&format!("worker={slot}")), "{line}");
    // The output is read by a thread of this test: allow it a moment beyond the bound.
    assert!(
        detected <= bound + Duration::from_millis(500),
        "the stuck worker was found after {detected:?}, the bound is {bound:?}:\n{}",
        c.stderr_dump()
    );
    let after =
        c.wait_status("the stuck worker's successor ready", |s| serving(s).get(&slot).is_some_and(|&pid| pid != old));
    let replaced_in = stuck_at.elapsed();
    assert_eq!(serving(&after).get(&other.0), Some(&other.1), "the healthy worker was left alone: {after:#}");
    assert_eq!(replaced(&after, "health"), 1, "{after:#}");
    let old_row = rows(&after).into_iter().find(|w| w["pid"] == old);
    if let Some(row) = old_row {
        // Still draining (a blocked worker does not act on its drain): it says why.
        assert_eq!(row["state"], "draining", "{row:#}");
        assert!(row["replacing"].as_str().unwrap().contains("health checks in a row"), "{row:#}");
    }
    eprintln!("stuck worker detected after {detected:?}, its successor ready after {replaced_in:?} (bound {bound:?})");
}

#[test]
fn a_stuck_sdk_worker_is_replaced_within_the_bound_and_the_healthy_one_is_left_alone() {
    let mut args = health_args(FAILURES);
    args.extend(["--health-check".into(), "/health".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Cluster::start(&args, &["--serve"]);
    let status = c.wait_ready(2);
    let addr = listen_addr(&status);
    let before = serving(&status);
    let _stuck = send_only(addr, "/spin");
    let line = c.output.wait_contains("spinning");
    let stuck_at = Instant::now();
    let slot = slot_of(&line);
    let other = 1 - slot;
    assert_replaced_in_time(&mut c, slot, before[&slot], (other, before[&other]), stuck_at);
    // Health-check connections are neither client connections nor sessions, and clients are
    // served by the new worker.
    let status = c.status().unwrap();
    for w in rows(&status).iter().filter(|w| w["state"] == "ready") {
        assert_eq!(w["connections"], 0, "a health check counted as a connection: {status:#}");
        assert_eq!(w["sessions"], 0, "{status:#}");
    }
    for _ in 0..4 {
        assert_eq!(get(addr, "/").code, 200);
    }
    let table = Command::new(CLUSTERD).arg("status").arg("--control").arg(&c.control).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("replaced while running: health 1"), "{table}");
}

#[test]
fn a_healthy_pool_is_never_replaced() {
    let mut args = health_args(FAILURES);
    args.extend(["--health-check".into(), "/health".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Cluster::start(&args, &["--serve", "--log-requests"]);
    let before = serving(&c.wait_ready(2));
    // Ten checks of each worker, all answered.
    for slot in 0..2 {
        let prefix = format!("[w{slot}] request GET /health HTTP/1.1");
        wait_until(&format!("10 health checks of worker {slot}"), || {
            (c.output.snapshot().iter().filter(|l| l.starts_with(&prefix)).count() >= 10).then_some(())
        });
    }
    let status = c.status().unwrap();
    assert_eq!(serving(&status), before, "{status:#}");
    assert!(status["replaced"].as_object().is_none_or(|m| m.is_empty()), "{status:#}");
    assert!(!c.output.contains("health check failed"), "{}", c.stderr_dump());
}

#[test]
fn garbage_half_and_error_answers_count_as_failures() {
    for (path, why) in [
        ("/garbage", "not HTTP/1.x"),
        ("/half", "closed the connection in the middle of its status line"),
        ("/unavailable", "answered 503"),
    ] {
        let mut args = health_args(2);
        args.extend(["--health-check".into(), path.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = Cluster::start(&args, &["--serve"]);
        c.wait_ready(2);
        let line = c.output.wait_contains("failed 2 health checks in a row");
        assert!(line.contains(why), "{path}: {line}");
        let status = c.wait_status("both workers replaced", |s| replaced(s, "health") >= 2);
        // A replacement is not a failed start: the crash-loop guard does not move.
        for w in rows(&status) {
            assert_eq!(w["failures"], 0, "{status:#}");
        }
    }
}

/// Both ways a Node worker gets connections: sticky connections of clusterd's `--listen`
/// (`setupWorker(io)`, V8 serialization), and `newconn` of its own `server.listen()` (JSON
/// serialization). Each worker answers its checks first; then one spins forever.
#[test]
fn a_node_worker_whose_handler_spins_forever_is_replaced_within_the_bound() {
    let script = node_dir().join("workers/health-worker.cjs");
    for (plain, serialization) in [(false, "advanced"), (true, "json")] {
        let mut args = health_args(FAILURES);
        args.retain(|a| !plain || (a != "--listen" && a != "127.0.0.1:0"));
        args.extend(["--protocol", "node", "--health-check", "/health", "--grace", "1s"].map(str::to_owned));
        args.extend(["--serialization".to_owned(), serialization.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = Builder::new()
            .args(&args)
            .program(&["node", script.to_str().unwrap()])
            .env("NODE_PATH", node_dir().join("node_modules").to_str().unwrap())
            .env("PLAIN", if plain { "1" } else { "0" })
            .start();
        c.wait_ready(2);
        for slot in 0..2 {
            let prefix = format!("[w{slot}] health check worker={slot}");
            wait_until(&format!("3 health checks of worker {slot} (plain {plain})"), || {
                (c.output.snapshot().iter().filter(|l| l.starts_with(&prefix)).count() >= 3).then_some(())
            });
        }
        let status = c.status().unwrap();
        let addr = listen_addr(&status);
        let before = serving(&status);
        assert_eq!(before.len(), 2, "{status:#}");
        assert!(status["replaced"].as_object().is_none_or(|m| m.is_empty()), "{status:#}");
        let _stuck = send_only(addr, "/spin");
        let line = c.output.wait_contains("spinning worker=");
        let stuck_at = Instant::now();
        let slot = slot_of(&line);
        let other = 1 - slot;
        assert_replaced_in_time(&mut c, slot, before[&slot], (other, before[&other]), stuck_at);
        // The spinning process goes at the end of its grace time.
        wait_gone(before[&slot] as i32, "the spinning Node worker");
        assert_eq!(get(addr, "/health").code, 200);
    }
}

#[test]
fn max_memory_recycles_a_worker_that_allocates() {
    let mut c = Cluster::start(
        // A single failed start would end clusterd: recycling must never count as one.
        &["--workers", "2", "--listen", "127.0.0.1:0", "--max-memory", "48MiB", "--crash-loop-limit", "1"],
        &["--serve", "--only-slot", "1", "--alloc", "96"],
    );
    let mut min_ready = usize::MAX;
    let status = c.wait_status("slot 1 recycled twice for its memory", |s| {
        if s["phase"] == "ready" {
            min_ready = min_ready.min(s["ready"].as_u64().unwrap() as usize);
        }
        replaced(s, "memory") >= 2
    });
    let line = c.output.wait_contains("recycled: memory");
    assert!(line.contains("worker=1") && line.contains("over --max-memory 48.0 MiB"), "{line}");
    assert!(!c.output.snapshot().iter().any(|l| l.contains("recycled") && l.contains("worker=0")));
    assert_eq!(min_ready, 2, "the pool dropped below its size while recycling");
    for w in rows(&status) {
        assert_eq!(w["failures"], 0, "recycling counted as failed starts: {status:#}");
        assert!(!w["crash_loop"].as_bool().unwrap());
    }
}

/// A client that sends requests on new connections (`Connection: close`) without retrying, and
/// counts what failed.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<std::collections::BTreeMap<i32, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, pids) = (stop.clone(), ok.clone(), failed.clone(), pids.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match one_request(addr) {
                            Ok(pid) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                *pids.lock().unwrap().entry(pid).or_default() += 1;
                            }
                            Err(why) => failed.lock().unwrap().push(why),
                        }
                    }
                })
            })
            .collect();
        Self { stop, ok, failed, pids, threads }
    }

    fn finish(self) -> (u64, Vec<String>, std::collections::BTreeMap<i32, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        let pids = self.pids.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed, pids)
    }
}

fn one_request(addr: std::net::SocketAddr) -> Result<i32, String> {
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let response = read_response(&mut stream).ok_or("no response")?;
    if response.code != 200 {
        return Err(format!("status {}: {}", response.code, response.body));
    }
    Ok(field(&response.body, "pid"))
}

#[test]
fn max_lifetime_recycles_under_load_without_a_failed_request() {
    let mut c = Cluster::start(&["--workers", "2", "--listen", "127.0.0.1:0", "--max-lifetime", "3s"], &["--serve"]);
    let status = c.wait_ready(2);
    let first = serving(&status);
    let load = Load::start(listen_addr(&status), 4);
    let mut min_ready = usize::MAX;
    let status = c.wait_status("each slot recycled twice", |s| {
        min_ready = min_ready.min(s["ready"].as_u64().unwrap() as usize);
        replaced(s, "lifetime") >= 4
    });
    let (ok, failed, pids) = load.finish();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok as usize + failed.len());
    assert!(ok > 0);
    assert_eq!(min_ready, 2, "the pool dropped below its size while recycling");
    for pid in first.values() {
        assert!(pids.contains_key(&(*pid as i32)), "the first workers served: {pids:?}");
    }
    // The count moves when a replacement begins: the first two successors surely served.
    assert!(pids.len() >= 4, "requests were served by the first workers and their successors: {pids:?}");
    let line = c.output.wait_contains("recycled: ran its lifetime of");
    // Jitter: at most 10% less than 3s.
    let shown = line.split("lifetime of ").nth(1).unwrap().split(':').next().unwrap().trim().to_owned();
    let secs: f64 = shown.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("{shown}"));
    assert!((2.7..=3.0).contains(&secs), "{line}");
    for w in rows(&status) {
        assert_eq!(w["failures"], 0, "{status:#}");
    }
    eprintln!("max-lifetime under load: {ok} requests, 0 failed, served by {} processes", pids.len());
}

#[test]
fn max_connections_recycles_after_that_many_handoffs() {
    let mut c = Cluster::start(
        &["--workers", "2", "--listen", "127.0.0.1:0", "--max-connections", "5", "--lifetime-jitter", "0"],
        &["--serve"],
    );
    let addr = listen_addr(&c.wait_ready(2));
    let mut pids = std::collections::BTreeMap::<i32, u64>::new();
    // Requests one after the other until four processes served (the first two and successors).
    let mut sent = 0;
    while pids.len() < 4 {
        assert!(sent < 1000, "{sent} requests and only these processes served: {pids:?}\n{}", c.stderr_dump());
        let pid = one_request(addr).unwrap_or_else(|why| panic!("a request failed: {why}\n{}", c.stderr_dump()));
        *pids.entry(pid).or_default() += 1;
        sent += 1;
    }
    // 5 per process, but an old worker serves on until its successor is ready, so it can take a
    // few more (and the second waits while the first is replaced): the limit triggers, it does
    // not cut off.
    let status = c.wait_status("recycled for their connections", |s| replaced(s, "connections") >= 2);
    let recycled = c.output.snapshot().into_iter().filter(|l| l.contains("recycled: was handed its 5 connections"));
    let slots: std::collections::BTreeSet<bool> = recycled.map(|l| l.contains("worker=0")).collect();
    assert_eq!(slots.len(), 2, "both slots recycled:\n{}", c.stderr_dump());
    for w in rows(&status) {
        assert_eq!(w["failures"], 0, "{status:#}");
    }
}

/// A successor that cannot start is retried 3 times; then the old worker keeps serving, and
/// clusterd (even with `--crash-loop-limit 1`) carries on.
#[test]
fn a_recycled_worker_keeps_serving_when_its_successor_cannot_start() {
    let b = Builder::new();
    let starts = b.dir().join("starts");
    let starts = starts.to_str().unwrap().to_owned();
    let mut c = b
        .args(&[
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--max-lifetime",
            "1s",
            "--lifetime-jitter",
            "0",
            "--crash-loop-limit",
            "1",
        ])
        .worker_args(&["--serve", "--starts-file", &starts, "--fail-starts-after", "2"])
        .start();
    let first = serving(&c.wait_ready(2));
    // One slot after the other (one replacement at a time), and each gives up after 3 tries.
    wait_until("both slots gave their replacement up", || {
        let lines = c.output.snapshot();
        let gave_up =
            lines.iter().filter(|l| l.contains("the successor failed to start 3 times; the worker keeps serving"));
        (gave_up.count() == 2).then_some(())
    });
    let status = c.status().unwrap();
    assert_eq!(serving(&status), first, "the first workers serve on: {status:#}");
    let addr = listen_addr(&status);
    for _ in 0..4 {
        let pid = one_request(addr).unwrap_or_else(|why| panic!("{why}\n{}", c.stderr_dump()));
        assert!(first.values().any(|&p| p == i64::from(pid)), "served by a first worker: {pid}");
    }
    assert!(c.child.try_wait().unwrap().is_none(), "clusterd is still running:\n{}", c.stderr_dump());
    for w in rows(&status) {
        assert_eq!(w["failures"], 0, "{status:#}");
    }
}

/// Every new option's bad values end clusterd with exit 2 and one line naming the option.
#[test]
fn bad_values_are_refused_before_anything_starts() {
    let cases: &[(&[&str], &str)] = &[
        (&["--health-check", "health"], "--health-check: must be a path starting with /"),
        (&["--health-check", "/a b"], "--health-check: must be a path"),
        (&["--health-check", "/h", "--health-interval", "10ms"], "--health-interval: must be 100ms to 24h"),
        (
            &["--health-check", "/h", "--health-interval", "1s", "--health-timeout", "2s"],
            "--health-timeout: must be 10ms to 1s",
        ),
        (&["--health-check", "/h", "--health-failures", "0"], "--health-failures: must be 1 to 100"),
        (&["--max-memory", "1KiB"], "--max-memory: must be 4MiB to 1TiB"),
        (&["--max-memory", "lots"], "invalid size"),
        (&["--max-lifetime", "10ms"], "--max-lifetime: must be 1s to 24h"),
        (&["--max-connections", "0"], "--max-connections: must be 1 to"),
        (&["--lifetime-jitter", "60%"], "--lifetime-jitter: must be 0% to 50%"),
        (&["--lifetime-jitter", "half"], "invalid percentage"),
    ];
    for (args, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(CLUSTERD)
            .arg("--control")
            .arg(dir.path().join("c.sock"))
            .args(*args)
            .args(["--", WORKER])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("worker started"), "{args:?}: {stderr}");
    }
}
