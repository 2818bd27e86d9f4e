//! `--protocol node`: unmodified Node.js workers (the Socket.IO documentation's worker:
//! `@socket.io/sticky` `setupWorker` and `@socket.io/cluster-adapter`) under clusterd, with the
//! real npm `socket.io-client` (tests/node/node_cluster.mjs). The packages (sticky 1.x and 2.x,
//! adapter 0.2.x and 0.3.x) are pinned in tests/node/package.json and installed by scripts/test.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// clusterd with `workers` Node workers running tests/node/workers/socketio-worker.cjs.
fn start(workers: usize, sticky: &str, adapter: &str, serialization: &str) -> (Cluster, String) {
    let script = node_dir().join("workers/socketio-worker.cjs");
    let mut c = Builder::new()
        .args(&[
            "--protocol",
            "node",
            "--serialization",
            serialization,
            "--workers",
            &workers.to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .program(&["node", script.to_str().unwrap()])
        .env("STICKY", sticky)
        .env("ADAPTER", adapter)
        // The workers find their packages in tests/node.
        .env("NODE_PATH", node_dir().join("node_modules").to_str().unwrap())
        .start();
    let status = c.wait_ready(workers);
    let url = format!("http://{}", listen_addr(&status));
    (c, url)
}

/// Runs tests/node/node_cluster.mjs and returns its JSON line, which must say `"ok": true`.
fn run_clients(url: &str, clients: usize, phase: &str) -> Value {
    let out = Command::new("node")
        .arg(node_dir().join("node_cluster.mjs"))
        .args([url, &clients.to_string(), phase])
        .output()
        .expect("node (Node.js) must be installed to run the Node interop tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("node said: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success() && result["ok"] == true, "{result:#}");
    result
}

fn len(value: &Value) -> usize {
    value.as_array().map_or(0, Vec::len)
}

/// Everything the adapter carries, across 2 workers, for one combination of packages.
fn interop(sticky: &str, adapter: &str, serialization: &str) {
    let (mut c, url) = start(2, sticky, adapter, serialization);
    let result = run_clients(&url, 6, "");
    let mut used = BTreeSet::new();
    for (i, client) in result["clients"].as_array().unwrap().iter().enumerate() {
        assert_eq!(len(&client["workers"]), 1, "a session moved between workers: {client}");
        used.insert(client["workers"][0].as_u64().unwrap());
        let transport = if i % 2 == 0 { "polling" } else { "websocket" };
        assert_eq!(client["transport"], transport, "{client}");
    }
    assert_eq!(used.len(), 2, "a burst of new sessions spreads over both workers: {result}");
    // The broadcast reached every client, on both workers; with `advanced` the Buffer stays binary
    // everywhere (with `json`, Node's JSON turns it into an object on the way between workers).
    let broadcast = result["broadcast"].as_array().unwrap();
    assert_eq!(broadcast.len(), 6);
    let sender = result["clients"][0]["workers"][0].clone();
    for (i, got) in broadcast.iter().enumerate() {
        let same_worker = result["clients"][i]["workers"][0] == sender;
        if serialization == "advanced" || same_worker {
            assert_eq!(got["binary"], true, "client {i}: {got}");
            assert_eq!(got["bytes"], serde_json::json!([1, 2, 3, 250]), "client {i}: {got}");
        } else {
            // As Node's JSON channel does: `{type: "Buffer", data}` on the other worker.
            assert_eq!(got["binary"], false, "client {i}: {got}");
            assert_eq!(
                got["value"],
                serde_json::json!({"type": "Buffer", "data": [1, 2, 3, 250]}),
                "client {i}: {got}"
            );
        }
    }
    assert_eq!(len(&result["fetch"]["ids"]), 6, "fetchSockets sees every client: {result}");
    let mut ids: Vec<&Value> = result["fetch"]["ids"].as_array().unwrap().iter().collect();
    let mut expected: Vec<&Value> = result["ids"].as_array().unwrap().iter().collect();
    ids.sort_by_key(|v| v.to_string());
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(ids, expected);
    assert_eq!(result["serverAsk"]["error"], Value::Null, "{result}");
    assert_eq!(len(&result["serverAsk"]["answers"]), 1, "the other worker answers serverSideEmit: {result}");
    assert_eq!(result["askAll"]["error"], Value::Null, "{result}");
    assert_eq!(len(&result["askAll"]["answers"]), 6, "every client acks the broadcast: {result}");
    assert_eq!(result["roomCount"], 6, "socketsJoin reached every worker: {result}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn sticky_2_and_adapter_0_3_with_advanced_serialization() {
    interop("2", "0.3", "advanced");
}

#[test]
fn sticky_2_and_adapter_0_3_with_json_serialization() {
    interop("2", "0.3", "json");
}

#[test]
fn sticky_1_and_adapter_0_3() {
    interop("1", "0.3", "advanced");
}

#[test]
fn sticky_2_and_adapter_0_2() {
    interop("2", "0.2", "advanced");
}

#[test]
fn sticky_1_and_adapter_0_2_with_json_serialization() {
    interop("1", "0.2", "json");
}

/// A worker is SIGKILLed while clients are connected: the survivors' fetchSockets and
/// serverSideEmit answer at once (clusterd tells them the dead worker's adapters are gone), not
/// after the adapter's 5 s timeout; the dead worker is replaced.
fn killed_worker(adapter: &str) {
    let (mut c, url) = start(3, "2", adapter, "advanced");
    let mut node = Command::new("node")
        .arg(node_dir().join("node_cluster.mjs"))
        .args([&url, "6", "after-kill"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdout = BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let ready: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("node said: {line}"));
    assert_eq!(ready["ready"], true, "{ready}");
    let victim = ready["clients"][0]["workers"][0].as_u64().unwrap();
    let on_victim = ready["clients"].as_array().unwrap().iter().filter(|c| c["workers"][0] == victim).count();
    let status = c.status().unwrap();
    let pid = nix::unistd::Pid::from_raw(worker_pid(&status, victim));
    if adapter == "0.3" {
        // Stopped first, so that a request sent before the kill waits for a worker that will
        // never answer: clusterd's ADAPTER_CLOSE resolves it.
        nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
        writeln!(node.stdin.as_mut().unwrap(), "{victim}").unwrap();
        nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
    } else {
        // 0.2.x cannot resolve a pending request when a worker exits (its WORKER_EXIT only drops
        // the worker from later counts, with Node's primary too): ask once clusterd saw the exit.
        nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
        c.wait_status("clusterd saw the exit", |s| worker(s, victim)["pid"].as_i64() != Some(pid.as_raw().into()));
        writeln!(node.stdin.as_mut().unwrap(), "{victim}").unwrap();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(node.wait().unwrap().success(), "{rest}");
    let result: Value = serde_json::from_str(rest.trim()).unwrap_or_else(|_| panic!("node said: {rest}"));
    let fetch_ms = result["fetch"]["ms"].as_u64().unwrap();
    let ask_ms = result["serverAsk"]["ms"].as_u64().unwrap();
    assert!(fetch_ms < 2000 && ask_ms < 2000, "answers took {fetch_ms} ms and {ask_ms} ms: {result:#}");
    assert_eq!(len(&result["fetch"]["value"]["ids"]), 6 - on_victim, "the survivors' clients: {result:#}");
    assert_eq!(result["serverAsk"]["value"]["error"], Value::Null, "{result:#}");
    assert_eq!(len(&result["serverAsk"]["value"]["answers"]), 1, "the other survivor answers: {result:#}");
    let reconnected = result["reconnected"].as_array().unwrap();
    assert_eq!(reconnected.len(), on_victim, "{result:#}");
    let killed = i64::from(pid.as_raw());
    assert!(reconnected.iter().all(|p| p.as_i64().is_some_and(|p| p != killed)), "on a live worker: {result:#}");
    c.wait_status("the killed worker replaced", |s| {
        s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "ready")
            && worker(s, victim)["pid"].as_i64().is_some_and(|p| p != i64::from(pid.as_raw()))
    });
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn a_killed_worker_does_not_stall_adapter_0_3_requests() {
    killed_worker("0.3");
}

#[test]
fn a_killed_worker_does_not_stall_adapter_0_2_requests() {
    killed_worker("0.2");
}

/// 60 sessions at once (polling and WebSocket), each asking several times: no request reaches
/// a worker that does not know its session, no first WebSocket message is lost.
#[test]
fn no_session_is_lost_under_a_burst() {
    let (mut c, url) = start(2, "2", "0.3", "advanced");
    let result = run_clients(&url, 60, "load");
    assert_eq!(result["sessions"], 60, "{result}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// One worker takes every connection, so several handles are in flight to it at once while it is
/// busy: 30 polling clients at once echo 200 B and 150 KiB payloads (POST bodies handed over with
/// their connection, larger than one read of the channel). Every answer is the payload sent: no
/// handle reaches the wrong message, none is refused or lost.
#[test]
fn pipelined_handles_carry_large_requests_intact() {
    for (sticky, serialization) in [("2", "advanced"), ("1", "json")] {
        let (mut c, url) = start(1, sticky, "0.3", serialization);
        let result = run_clients(&url, 30, "big");
        assert_eq!(result["sessions"], 30, "{serialization}: {result}");
        c.signal(Signal::SIGTERM);
        assert_eq!(c.wait_exit().code(), Some(0), "{serialization}: {}", c.stderr_dump());
        assert!(!c.stderr_dump().contains("refused a connection"), "{}", c.stderr_dump());
    }
}

/// Node workers in a rolling reload (SIGHUP) and scaled up (SIGTTIN) and down (SIGTTOU): every
/// slot gets a new process that is online before the old one is told to go, the old processes
/// leave cleanly, and the new pool carries everything the adapter does, across workers that
/// never met the old ones.
#[test]
fn node_workers_reload_and_scale() {
    let (mut c, url) = start(2, "2", "0.3", "advanced");
    let before = c.status().unwrap();
    let old: Vec<i32> = (0..2).map(|id| worker_pid(&before, id)).collect();
    c.signal(Signal::SIGHUP);
    let rows = |s: &Value| s["workers"].as_array().cloned().unwrap_or_default();
    let after = c.wait_status("both Node workers on generation 2", |s| {
        s["phase"] == "ready"
            && rows(s).len() == 2
            && rows(s).iter().all(|w| w["generation"] == 2 && w["state"] == "ready")
    });
    for (id, pid) in old.iter().enumerate() {
        assert_ne!(worker_pid(&after, id as u64), *pid);
        wait_gone(*pid, "an old-generation Node worker");
    }
    let result = run_clients(&url, 4, "");
    assert_eq!(len(&result["fetch"]["ids"]), 4, "{result}");

    c.signal(Signal::SIGTTIN);
    c.wait_status("a third Node worker", |s| rows(s).len() == 3 && rows(s).iter().all(|w| w["state"] == "ready"));
    let result = run_clients(&url, 6, "");
    let workers: BTreeSet<u64> =
        result["clients"].as_array().unwrap().iter().map(|c| c["workers"][0].as_u64().unwrap()).collect();
    assert_eq!(workers.len(), 3, "new sessions reach all three workers: {result}");
    assert_eq!(len(&result["askAll"]["answers"]), 6, "{result}");

    c.signal(Signal::SIGTTOU);
    c.wait_status("back to two Node workers", |s| rows(s).len() == 2);
    run_clients(&url, 4, "");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    let log = c.stderr_dump();
    assert!(!log.contains("ERR_") && !log.contains("exited with status 1"), "{log}");
}

/// Workers that call `server.listen(0)` share one port that clusterd listens on, and both get
/// connections.
#[test]
fn workers_that_listen_get_connections_through_clusterd() {
    let script = node_dir().join("workers/listen-worker.cjs");
    let mut c = Builder::new()
        .args(&["--protocol", "node", "--workers", "2"])
        .program(&["node", script.to_str().unwrap()])
        .start();
    c.wait_ready(2);
    let port = |line: &str| line.rsplit(' ').next().and_then(|p| p.trim().parse::<u16>().ok());
    let first = c.output.wait_for("a worker listening", |l| l.contains("listening on "));
    let second = c.output.wait_for("both workers listening", |l| {
        l.contains("listening on ") && l != first.as_str() && port(l) == port(&first)
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", port(&second).unwrap()).parse().unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let response = get(addr, "/");
        assert_eq!(response.code, 200);
        seen.insert(response.body.split_whitespace().nth(1).unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "connections go to both workers: {seen:?}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// A worker that writes garbage on its channel (a length over the limit; a line that is not
/// JSON; values nested 300 deep, over the codecs' 256) is drained and replaced; clusterd carries on.
/// Bad input: big requests to a Node worker that has stopped reading (its event loop blocked,
/// here stopped with SIGSTOP) park no more in clusterd than its read-ahead budget (64 MiB, all
/// connections together): past it, each connection is handed on with what was read and the rest
/// of its request waits in its socket. 200 requests of 1 MB are 200 MB offered.
#[test]
fn big_requests_to_a_stalled_node_worker_cost_clusterd_at_most_its_read_ahead_budget() {
    const CLIENTS: u64 = 200;
    let (mut c, url) = start(1, "2", "0.3", "advanced");
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let worker_pid = nix::unistd::Pid::from_raw(worker_pid(&c.status().unwrap(), 0));
    let (rss_before, _) = memory_of(c.pid());
    nix::sys::signal::kill(worker_pid, Signal::SIGSTOP).unwrap();
    let body = vec![b'x'; 1_000_000];
    let head = format!("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len());
    let clients: Vec<std::net::TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            // What clusterd does not read waits in the sockets' buffers; a write that finds them
            // full gives up (the test only needs the requests offered).
            stream.set_write_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
            stream
        })
        .collect();
    // Routed once clusterd has read what it reads of each.
    c.wait_status("every request routed to the stalled worker", |s| {
        worker(s, 0)["handed_off"].as_u64() >= Some(CLIENTS)
    });
    let (rss, peak) = memory_of(c.pid());
    nix::sys::signal::kill(worker_pid, Signal::SIGCONT).unwrap();
    let mib = |bytes: u64| bytes / (1024 * 1024);
    assert!(
        peak < rss_before + 96 * 1024 * 1024,
        "clusterd's memory went from {} MiB to {} MiB (peak {} MiB) for {CLIENTS} MB offered: the budget is 64 MiB",
        mib(rss_before),
        mib(rss),
        mib(peak)
    );
    drop(clients);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn garbage_on_the_channel_replaces_the_worker() {
    let script = node_dir().join("workers/garbage-worker.cjs");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    // V8: the version header, then 300 dense arrays of one element each, one inside the other.
    let mut v8 = vec![0xff, 0x0f];
    v8.extend(std::iter::repeat_n([0x41u8, 0x01], 300).flatten());
    let mut deep_v8 = (v8.len() as u32).to_be_bytes().to_vec();
    deep_v8.extend(v8);
    let deep_json = format!("{}1{}\n", "[".repeat(300), "]".repeat(300));
    let (deep_v8, deep_json) = (hex(&deep_v8), hex(deep_json.as_bytes()));
    for (serialization, garbage, why) in [
        ("advanced", "ffffffff010203", ""),
        ("json", "6e6f74206a736f6e0a", ""),
        ("advanced", deep_v8.as_str(), "nested deeper than 256"),
        ("json", deep_json.as_str(), "nested deeper than 256"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("sent");
        let mut c = Builder::new()
            .args(&["--protocol", "node", "--serialization", serialization, "--workers", "1"])
            .program(&["node", script.to_str().unwrap()])
            .env("GARBAGE_MARKER", marker.to_str().unwrap())
            .env("GARBAGE_BYTES", garbage)
            .start();
        let line =
            c.output.wait_for("the violation", |l| l.contains("node channel:") && l.contains("replacing the worker"));
        assert!(line.contains(why), "{line}");
        let status = c.wait_status("the replacement ready", |s| {
            s["workers"][0]["state"] == "ready" && s["workers"][0]["restarts"].as_u64().unwrap_or(0) >= 1
        });
        let first: i32 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
        assert_ne!(worker_pid(&status, 0), first, "{serialization}: a new process");
        c.signal(Signal::SIGTERM);
        assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    }
}

/// A graceful stop while connections keep coming: each worker gets its `disconnect` only after
/// the connections it was handed (Node's order), so no worker dies of an acknowledgement on a
/// closed channel (`ERR_INTERNAL_ASSERTION`, exit 1): every one is stopped by clusterd.
#[test]
fn a_graceful_stop_under_load_stops_every_worker_cleanly() {
    let (mut c, url) = start(2, "2", "0.3", "advanced");
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + TIMEOUT;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { continue };
                    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                    let request =
                        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
                    if stream.write_all(request.as_bytes()).is_ok() && read_response(&mut stream).is_some() {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    wait_until("handshakes served under load", || {
        (served.load(std::sync::atomic::Ordering::Relaxed) >= 200).then_some(())
    });
    c.signal(Signal::SIGTERM);
    let exit = c.wait_exit();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
    let output = c.output.snapshot().join("\n");
    assert_eq!(exit.code(), Some(0), "{output}");
    assert!(!output.contains("ERR_INTERNAL_ASSERTION") && !output.contains("exited with code"), "{output}");
}

/// Issue 15, item 1: `clusterd --listen ADDR -- node app.cjs`, with no `--protocol`, runs the
/// documentation's complete `cluster.isMaster` program unchanged: the protocol is detected from
/// the program and logged, and a broadcast reaches the clients of both workers.
#[test]
fn a_complete_cluster_program_runs_unchanged_without_protocol_flag() {
    let script = node_dir().join("workers/cluster-app.cjs");
    let mut c = Builder::new()
        .args(&["--workers", "2", "--listen", "127.0.0.1:0"])
        .program(&["node", script.to_str().unwrap()])
        .env("NODE_PATH", node_dir().join("node_modules").to_str().unwrap())
        .start();
    c.output.wait_contains("protocol node (auto: the program is node)");
    let status = c.wait_ready(2);
    let url = format!("http://{}", listen_addr(&status));
    let out = Command::new("node")
        .arg(node_dir().join("broadcast.mjs"))
        .args([url.as_str(), "default", "6"])
        .output()
        .expect("node (Node.js) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("node said: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(result["received"], 6, "every client got the broadcast: {result}");
    let workers: BTreeSet<String> = result["workers"].as_array().unwrap().iter().map(|w| w.to_string()).collect();
    assert_eq!(workers.len(), 2, "the clients were on both workers: {result}");
    assert!(!c.output.contains("Master "), "the primary half never runs under clusterd");
    assert_eq!(c.status().unwrap()["problems"], serde_json::json!([]), "a pool that can be reached has no problem");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// A script whose `#!` line runs node is a Node program too, found by reading its first bytes.
#[test]
fn a_script_whose_shebang_runs_node_gets_the_node_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    let listen_worker = node_dir().join("workers/listen-worker.cjs");
    std::fs::write(&server, format!("#!/usr/bin/env node\nrequire({:?});\n", listen_worker.to_str().unwrap())).unwrap();
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = Builder::new().args(&["--workers", "1"]).program(&[server.to_str().unwrap()]).start();
    c.output.wait_contains("protocol node (auto: ");
    assert!(c.output.contains("starts with #!/usr/bin/env node"), "{}", c.stderr_dump());
    c.wait_ready(1);
    let line = c.output.wait_contains("listening on ");
    let port: u16 = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
    assert_eq!(get(format!("127.0.0.1:{port}").parse().unwrap(), "/").code, 200);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Issue 15, item 4: Node workers with no `--listen` that never call `server.listen()` can get
/// no connection at all; `status` says so instead of showing a healthy pool.
#[test]
fn status_reports_node_workers_that_nothing_can_reach() {
    let script = node_dir().join("workers/socketio-worker.cjs");
    let mut c = Builder::new()
        .args(&["--protocol", "node", "--workers", "1"])
        .program(&["node", script.to_str().unwrap()])
        .env("NODE_PATH", node_dir().join("node_modules").to_str().unwrap())
        .start();
    let status = c.wait_ready(1);
    let expected =
        "no connection can reach the workers: no --listen was given and no worker has called server.listen()";
    assert_eq!(status["problems"][0], expected, "{status:#}");
    let out = Command::new(CLUSTERD).arg("status").arg("--control").arg(&c.control).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("! {expected}")), "{table}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Issue 15, item 1: a plain Node server that listens on the port also given to `--listen` is
/// told the fix (no `--listen`: clusterd listens for it); without `--listen` it serves.
#[test]
fn a_plain_node_server_on_the_listen_port_is_told_to_drop_listen() {
    let script = node_dir().join("workers/listen-worker.cjs");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let c = Builder::new()
        .args(&["--workers", "1", "--listen", &format!("127.0.0.1:{port}")])
        .program(&["node", script.to_str().unwrap()])
        .env("LISTEN_PORT", &port)
        .start();
    let line = c.output.wait_contains("a server.listen() of the worker failed");
    let expected = format!(
        "port {port} is in use by --listen 127.0.0.1:{port}, whose connections go to Socket.IO workers \
         (setupWorker(io)); a server that calls listen() itself needs no --listen: clusterd listens for it"
    );
    assert!(line.contains(&expected), "{line}");
    drop(c);

    let mut c = Builder::new()
        .args(&["--workers", "1"])
        .program(&["node", script.to_str().unwrap()])
        .env("LISTEN_PORT", &port)
        .start();
    c.wait_ready(1);
    c.output.wait_contains(&format!("listening on {port}"));
    assert_eq!(get(format!("127.0.0.1:{port}").parse().unwrap(), "/").code, 200);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
