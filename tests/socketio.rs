//! Socket.IO through clusterd: the real npm `socket.io-client` (tests/node/) against the `chat`
//! example (socketioxide workers with the SDK's SessionLayer).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

fn node_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "tests/node/node_modules is missing: run ./scripts/test (it installs the npm packages), or `npm ci --prefix tests/node`"
    );
    dir
}

fn start_chat(workers: &str) -> (Cluster, String) {
    start_chat_with(workers, &[])
}

/// The chat example under clusterd, with more environment (for clusterd and its workers).
fn start_chat_with(workers: &str, env: &[(&str, &str)]) -> (Cluster, String) {
    let chat = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("chat");
    assert!(chat.exists(), "{} is missing: `cargo test` builds the examples", chat.display());
    let mut builder =
        Builder::new().args(&["--workers", workers, "--listen", "127.0.0.1:0"]).program(&[chat.to_str().unwrap()]);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let mut c = builder.start();
    let status = c.wait_ready(workers.parse().unwrap());
    let url = format!("http://{}", listen_addr(&status));
    (c, url)
}

/// Runs tests/node/clients.mjs and returns its JSON result.
fn clients(url: &str, mode: &str, count: usize, asks: usize) -> Value {
    let out = Command::new("node")
        .arg(node_dir().join("clients.mjs"))
        .args([url, mode, &count.to_string(), &asks.to_string()])
        .output()
        .expect("node (Node.js) must be installed to run the Socket.IO interop tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("node said: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success() && result["ok"] == true, "{mode}: {result:#}");
    result
}

/// Runs a tests/node script that prints one JSON line with `"ok"`, and returns that line.
fn node_json(script: &str, args: &[&str]) -> Value {
    let out = Command::new("node").arg(node_dir().join(script)).args(args).output().expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("node {script} said: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success() && result["ok"] == true, "{script}: {result}");
    result
}

/// The distinct workers in a script's `"workers"` list.
fn distinct_workers(result: &Value) -> HashSet<u64> {
    result["workers"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap()).collect()
}

/// Every client was served by exactly one worker, over the expected transport; returns how many
/// clients each worker served.
fn served(result: &Value, transport: &str, workers: usize) -> Vec<usize> {
    let mut per = vec![0; workers];
    for client in result["clients"].as_array().unwrap() {
        let ids = client["workers"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "a session moved between workers: {client}");
        assert_eq!(client["transport"], transport, "{client}");
        per[ids[0].as_u64().unwrap() as usize] += 1;
    }
    per
}

#[test]
fn long_polling_sessions_always_reach_their_owner() {
    let (mut c, url) = start_chat("2");
    // 8 clients × 40 acks: every one of those polling requests is a new connection routed by sid.
    let result = clients(&url, "polling", 8, 40);
    // Least-connection balances connections (long polls hold theirs for a while), so sessions
    // spread fairly but not necessarily exactly evenly.
    let per = served(&result, "polling", 2);
    assert!(per.iter().all(|&n| n >= 3), "the burst spreads over both workers: {per:?}");
    assert!(result["chat_received"].as_u64().unwrap() >= 1);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn websocket_only_and_the_default_upgrade_work_through_clusterd() {
    let (mut c, url) = start_chat("2");
    let result = clients(&url, "websocket", 6, 10);
    assert_eq!(served(&result, "websocket", 2), [3, 3]);
    // Default: polling first, then the upgrade request, routed by its sid to the same worker.
    let result = clients(&url, "default", 6, 10);
    assert_eq!(served(&result, "websocket", 2).iter().sum::<usize>(), 6);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn clients_of_a_killed_worker_reconnect_to_a_live_one() {
    let (mut c, url) = start_chat("2");
    for mode in ["polling", "websocket"] {
        let mut node = Command::new("node")
            .arg(node_dir().join("reconnect.mjs"))
            .args([&url, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first["phase"], "connected", "{first}");
        let pid = first["pid"].as_i64().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        writeln!(node.stdin.as_mut().unwrap(), "killed").unwrap();
        let second: Value = serde_json::from_str(&lines.next().expect("a reconnection").unwrap()).unwrap();
        assert_eq!(second["phase"], "reconnected", "{second}");
        assert_ne!(second["pid"].as_i64().unwrap() as i32, pid, "{mode}: served by a live worker");
        assert!(node.wait().unwrap().success());
        c.wait_ready(2);
    }
}

/// A client that keeps one connection for as long as the server keeps it open (HTTP/1.1
/// keep-alive, as browsers, agents and proxies do).
struct KeepAliveClient {
    addr: std::net::SocketAddr,
    connection: Option<TcpStream>,
}

impl KeepAliveClient {
    /// Sends a request; returns (status, body, whether the server closed the connection).
    fn send(&mut self, method: &str, target: &str, body: &str) -> (u16, String, bool) {
        let addr = self.addr;
        let stream = self.connection.get_or_insert_with(|| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s
        });
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let response = read_response(stream).expect("a response");
        if response.close {
            self.connection = None;
        }
        (response.code, response.body, response.close)
    }
}

/// The sticky failure of `@socket.io/sticky` (its issues 8 and 17): a kept-alive connection,
/// routed to one worker, brings a request of a session that lives on another worker.
#[test]
fn a_keep_alive_client_using_two_sessions_on_two_workers_never_reaches_the_wrong_one() {
    let (mut c, url) = start_chat("2");
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let mut client = KeepAliveClient { addr, connection: None };
    // Open sessions until two live on different workers (the owner is where clusterd counts it).
    let mut sessions: Vec<(String, u64)> = Vec::new();
    let mut before: Vec<u64> = vec![0, 0];
    while sessions.len() < 2 {
        // Each handshake on a connection of its own, so that least-connection spreads them.
        let handshake = get(addr, "/socket.io/?EIO=4&transport=polling");
        let (code, body) = (handshake.code, handshake.body);
        assert_eq!(code, 200, "{body}");
        let sid = body.split("\"sid\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let status =
            c.wait_status("the session registered", |s| s["sessions"].as_u64().unwrap() as usize > sessions.len());
        let now: Vec<u64> = (0..2).map(|id| worker(&status, id)["sessions"].as_u64().unwrap()).collect();
        let owner = (0..2).find(|&id| now[id as usize] > before[id as usize]).unwrap();
        before = now;
        if sessions.iter().all(|(_, o)| *o != owner) {
            sessions.push((sid, owner));
        }
    }
    for (sid, _) in &sessions {
        let (code, body, _) = client.send("POST", &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"), "40");
        assert_eq!((code, body.as_str()), (200, "ok"), "joining the namespace");
    }
    // Alternate the two sessions on the client's connection: every request must reach its owner
    // (another worker answers 400 "Session ID unknown"). The worker holding the connection gives
    // it back to clusterd for a request of the other's session (tests/keepalive.rs).
    for round in 0..20 {
        let (sid, _) = &sessions[round % 2];
        let event = format!("42[\"chat message\",\"round {round}\"]");
        let (code, body, _) = client.send("POST", &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"), &event);
        assert_eq!((code, body.as_str()), (200, "ok"), "round {round}");
    }
}

#[test]
fn a_broadcast_from_a_client_on_one_worker_reaches_the_clients_on_every_worker() {
    let (mut c, url) = start_chat("2");
    for mode in ["websocket", "polling"] {
        let result = node_json("broadcast.mjs", &[&url, mode, "6"]);
        assert_eq!(result["received"], 6, "{mode}: every client got it");
        assert_eq!(distinct_workers(&result).len(), 2, "{mode}: the clients were on both workers: {result}");
    }
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn rooms_and_fetch_sockets_work_across_workers() {
    let (mut c, url) = start_chat("2");
    let result = node_json("rooms.mjs", &[&url]);
    assert_eq!(distinct_workers(&result).len(), 2, "clients on both workers: {result}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Issue #4: `io.timeout(..).emit_with_ack(..)` on one worker (socketioxide's broadcast with
/// acknowledgements) reaches the clients of every worker, and the caller gets every answer.
#[test]
fn a_broadcast_with_acks_gets_the_answer_of_every_client_on_every_worker() {
    let (mut c, url) = start_chat("3");
    let result = node_json("ask_all.mjs", &[&url, "9"]);
    assert_eq!(distinct_workers(&result).len(), 3, "clients on all three workers: {result}");
    assert_eq!(result["answers"], 9, "one answer per client: {result}");
    // Each client answered once, with its own id (the script checks the question too).
    assert_eq!(result["answered"], result["ids"], "{result}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Waits until a line that the worker `id` wrote after the first `seen` lines contains `needle`.
fn wait_worker_line(c: &Cluster, seen: usize, id: u64, needle: &str, what: &str) {
    let prefix = format!("[w{id}] ");
    wait_until(what, || {
        c.output.snapshot()[seen..].iter().any(|l| l.starts_with(&prefix) && l.contains(needle)).then_some(())
    });
}

/// Runs `event` ("sockets" or "ask all") from a client while the worker it must ask dies:
/// stopped first (alive and subscribed, it cannot answer), killed once the request reached the
/// other live worker. Checks that the answer comes at once, with the ids of the live workers'
/// clients, and that the asker completed the request because the victim left.
fn a_worker_dies_during(event: &str) {
    // The adapter's debug lines tell when the request reached a worker and how it completed.
    let (c, url) = start_chat_with("3", &[("RUST_LOG", "info,clusterd_worker::adapter=debug")]);
    let mut node = Command::new("node")
        .arg(node_dir().join("dies_during_request.mjs"))
        .args([&url, "6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next_line = |what: &str| -> Value {
        let line = lines.next().unwrap_or_else(|| panic!("node ended before {what}")).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("node said {line:?} instead of {what}"))
    };
    let connected = next_line("the clients' list");
    assert_eq!(connected["phase"], "connected", "{connected}");
    // worker -> (pid, the ids of its clients)
    let mut workers: BTreeMap<u64, (i32, BTreeSet<String>)> = BTreeMap::new();
    for client in connected["clients"].as_array().unwrap() {
        let entry = workers
            .entry(client["worker"].as_u64().unwrap())
            .or_insert_with(|| (client["pid"].as_i64().unwrap() as i32, BTreeSet::new()));
        entry.1.insert(client["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(workers.len(), 3, "clients on all three workers: {connected}");
    let asker = connected["clients"][0]["worker"].as_u64().unwrap();
    let mut others = workers.keys().copied().filter(|&w| w != asker);
    let (victim, witness) = (others.next().unwrap(), others.next().unwrap());
    let victim_pid = workers[&victim].0;

    // If the test fails before the kill, the cluster's drop kills clusterd, and the stopped
    // victim gets its parent-death signal, SIGKILL.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim_pid), Signal::SIGSTOP).unwrap();
    wait_until("the victim to stop", || (proc_stat(victim_pid)?.0 == 'T').then_some(()));
    let seen = c.output.snapshot().len();
    writeln!(node.stdin.as_mut().unwrap(), "ask 0 {event}").unwrap();
    // The witness got the request, so clusterd asked the victim too: the death lands during it.
    wait_worker_line(&c, seen, witness, "socket.io request to answer", "the request to reach the live worker");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim_pid), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let answered = next_line("the answer");
    let after_kill = killed.elapsed();
    assert_eq!(answered["phase"], "answered", "{event}: {answered}");
    let ms = answered["ms"].as_u64().unwrap();
    assert!(
        ms < 2000 && after_kill < Duration::from_secs(2),
        "{event} took {ms} ms, {after_kill:?} after the kill (the adapter's timeout: 5 s, 10 s for acks); output:\n{}",
        c.output.snapshot()[seen..].join("\n")
    );
    let got: BTreeSet<String> =
        answered["ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect();
    let live: BTreeSet<String> = workers[&asker].1.union(&workers[&witness].1).cloned().collect();
    assert_eq!(got, live, "{event}: the clients of the live workers, and only them");
    assert_eq!(answered["ids"].as_array().unwrap().len(), live.len(), "{event}: each once: {answered}");
    assert_eq!(answered["errors"], serde_json::json!([]), "{event}: {answered}");
    // It came early because the asker learned that the victim left, not by luck of timing.
    wait_worker_line(&c, seen, asker, "completing it with what arrived", "the asker to complete the request");
    assert!(node.wait().unwrap().success());
    eprintln!("{event}: answered in {ms} ms, {after_kill:?} after the kill");
}

/// Issue #4: a worker that dies while asked for its sockets does not hold `fetch_sockets` until
/// socketioxide-redis's request timeout (5 s): clusterd reports it gone at once, and the caller
/// gets the sockets of the live workers.
#[test]
fn fetch_sockets_answers_at_once_when_an_asked_worker_dies() {
    a_worker_dies_during("sockets");
}

/// The same for a broadcast with acknowledgements: the caller gets the answers of the live
/// workers' clients at once, not after the request and acknowledgement timeouts.
#[test]
fn a_broadcast_with_acks_answers_at_once_when_an_asked_worker_dies() {
    a_worker_dies_during("ask all");
}
