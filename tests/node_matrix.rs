//! The README's Node.js compatibility matrix, one test (or more) per row: unmodified Node.js
//! workers and npm packages (pinned in tests/node/package.json, installed by scripts/test) under
//! `clusterd --protocol node`, with real clients (`socket.io-client`, `ws`, plain HTTP) and, for
//! the Redis adapters, a real `redis-server` started by the test on a free port.
//!
//! The workers are tests/node/workers/*.cjs; most rows use matrix-worker.cjs with a `ROLE`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// clusterd with `workers` Node workers running `script` (under tests/node/workers).
fn node(workers: usize, script: &str, args: &[&str], env: &[(&str, &str)]) -> Cluster {
    let script = node_dir().join("workers").join(script);
    let workers = workers.to_string();
    let mut builder = Builder::new()
        .args(&["--protocol", "node", "--workers", &workers])
        .args(args)
        .program(&["node", script.to_str().unwrap()])
        .env("NODE_PATH", node_dir().join("node_modules").to_str().unwrap());
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    builder.start()
}

/// The `matrix <what> <json>` lines of the workers so far, with the slot that printed each.
fn said(c: &Cluster, what: &str) -> Vec<(u64, Value)> {
    let marker = format!("matrix {what} ");
    c.output
        .snapshot()
        .iter()
        .filter_map(|line| {
            let slot = line.strip_prefix("[w")?.split(']').next()?.parse().ok()?;
            let json = &line[line.find(&marker)? + marker.len()..];
            Some((slot, serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {line}"))))
        })
        .collect()
}

/// Waits until the workers printed `n` `matrix <what>` lines; returns them.
fn wait_said(c: &Cluster, what: &str, n: usize) -> Vec<(u64, Value)> {
    wait_until(&format!("{n} `matrix {what}` lines"), || Some(said(c, what)).filter(|seen| seen.len() >= n))
}

/// Runs a Node client script of tests/node; returns its JSON line, which must say `"ok": true`.
fn client(script: &str, args: &[&str]) -> Value {
    let out = Command::new("node")
        .arg(node_dir().join(script))
        .args(args)
        .output()
        .expect("node (Node.js) must be installed to run the Node interop tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{script} said: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success() && result["ok"] == true, "{script}: {result:#}");
    result
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn local(port: u64) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn stop(mut c: Cluster) {
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Rows `cluster.isPrimary`/`isMaster`/`isWorker`, `cluster.worker.id`, `NODE_APP_INSTANCE`,
/// `process.send` and both serializations: what a worker sees of `cluster`, and that the
/// primary takes every message a worker sends it (the send callbacks complete without error).
/// `cluster.worker.id` is fresh for every process, as under Node's primary (never reused, so the
/// 0.2.x cluster adapter can route by it); the stable slot is `NODE_APP_INSTANCE`.
fn cluster_api(serialization: &str) {
    let mut c = node(2, "matrix-worker.cjs", &["--serialization", serialization], &[("ROLE", "api")]);
    c.wait_ready(2);
    let seen = wait_said(&c, "api", 2);
    let mut ids = BTreeSet::new();
    for (slot, api) in &seen {
        assert_eq!(api["isPrimary"], false, "{api}");
        assert_eq!(api["isMaster"], false, "{api}");
        assert_eq!(api["isWorker"], true, "{api}");
        assert_eq!(api["appInstance"], slot.to_string(), "{api}");
        assert_eq!(api["clusterdWorkerId"], slot.to_string(), "{api}");
        assert_eq!(api["serialization"], serialization, "{api}");
        assert_eq!(api["connected"], true, "{api}");
        assert!(api["sendErrors"].as_array().unwrap().iter().all(Value::is_null), "{api}");
        ids.insert(api["workerId"].as_u64().expect("cluster.worker.id is a number"));
    }
    assert_eq!(ids.len(), 2, "each worker its own cluster.worker.id: {seen:?}");
    let listening = wait_said(&c, "listening", 2);
    for (slot, said) in &listening {
        // What reached `process.on("message")` before the worker listened: clusterd sends nothing
        // of its own there (its messages are Node's internal ones).
        assert_eq!(said["messages"], 0, "slot {slot}: {said}");
    }
    let status = c.status().expect("clusterd runs");
    for slot in [0, 1] {
        assert_eq!(worker(&status, slot)["restarts"], 0, "every value sent was taken: {status}");
    }
    assert!(!c.output.contains("node channel:"), "no channel error: {}", c.stderr_dump());
    let port = listening[0].1["port"].as_u64().unwrap();
    assert!(get(local(port), "/").body.starts_with("slot "));

    // A slot's new process: the same NODE_APP_INSTANCE, a new cluster.worker.id.
    let old = seen.iter().find(|(slot, _)| *slot == 0).unwrap().1.clone();
    let old_pid = old["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_pid), Signal::SIGKILL).unwrap();
    let seen = wait_said(&c, "api", 3);
    let new = &seen.iter().find(|(slot, api)| *slot == 0 && api["pid"] != old["pid"]).expect("slot 0 again").1;
    assert_eq!(new["appInstance"], "0", "{new}");
    assert!(!ids.contains(&new["workerId"].as_u64().unwrap()), "a new cluster.worker.id: {new} after {ids:?}");
    c.wait_ready(2);
    stop(c);
}

#[test]
fn cluster_api_with_advanced_serialization() {
    cluster_api("advanced");
}

#[test]
fn cluster_api_with_json_serialization() {
    cluster_api("json");
}

/// Unix socket client: one GET with `Connection: close`.
fn get_unix(path: &str) -> Response {
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connect to the unix socket");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    read_response(&mut stream).expect("a response on the unix socket")
}

/// Rows `server.listen` with a port, port 0 and a Unix path, and several servers in one worker:
/// clusterd binds each address once and spreads its connections over the workers that listen.
/// Row `dgram` `socket.bind()`: refused.
#[test]
fn several_servers_on_a_port_port_0_and_a_unix_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let port = free_port().to_string();
    let mut c = node(
        2,
        "matrix-worker.cjs",
        &[],
        &[("ROLE", "servers"), ("PORT", &port), ("UNIX_PATH", path.to_str().unwrap())],
    );
    c.wait_ready(2);
    let seen = wait_said(&c, "servers", 2);
    assert_eq!(seen[0].1, seen[1].1, "both workers share each server: {seen:?}");
    let servers = &seen[0].1;
    assert_eq!(servers["port"].to_string(), port, "{servers}");
    assert_eq!(servers["unix"], path.to_str().unwrap(), "{servers}");
    assert_ne!(servers["zero"], servers["zero2"], "each listen(0) of a worker its own port: {servers}");
    let mut slots: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for _ in 0..16 {
        for (name, response) in [
            ("zero", get(local(servers["zero"].as_u64().unwrap()), "/")),
            ("zero2", get(local(servers["zero2"].as_u64().unwrap()), "/")),
            ("port", get(local(servers["port"].as_u64().unwrap()), "/")),
            ("unix", get_unix(path.to_str().unwrap())),
        ] {
            assert_eq!(response.code, 200);
            assert!(response.body.starts_with(&format!("{name} slot ")), "{name}: {}", response.body);
            slots.entry(name).or_default().insert(response.body.split_whitespace().nth(2).unwrap().to_owned());
        }
    }
    assert!(slots.values().all(|s| s.len() == 2), "every server's connections reach both workers: {slots:?}");
    // UDP is not clusterd's to share: a worker's `socket.bind()` fails at once.
    for (_, udp) in wait_said(&c, "udp", 2) {
        assert_eq!(udp["error"], "EINVAL", "{udp}");
    }
    stop(c);
    assert!(!path.exists(), "clusterd removes the Unix socket it bound for the workers");
}

/// [`get`], failing with clusterd's output.
fn get_or(c: &Cluster, addr: SocketAddr, target: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    read_response(&mut stream).unwrap_or_else(|| panic!("no response to GET {target}; output:\n{}", c.stderr_dump()))
}

/// One request on a kept-alive connection; the answer's body.
fn ask_on(stream: &mut TcpStream, target: &str) -> String {
    write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let response = read_response(stream).unwrap_or_else(|| panic!("the kept-alive connection answers {target}"));
    assert_eq!(response.code, 200);
    response.body
}

/// Bad input (and row `process.send` to the primary): a worker sends clusterd messages it does
/// not know, malformed cluster messages, a 16 MiB message and handles (a server, a socket, a
/// UDP socket): clusterd ignores the messages, refuses the handles (`NODE_HANDLE_NACK`), and the
/// worker's channel keeps working. A message over the 32 MiB limit gets only that worker
/// replaced. Neither costs another worker's client its connection, nor clusterd an fd.
fn misbehaving_worker(serialization: &str) {
    let ports = [free_port().to_string(), free_port().to_string()];
    let env = [("ROLE", "misbehave"), ("PORT_0", ports[0].as_str()), ("PORT_1", ports[1].as_str())];
    let mut c = node(2, "matrix-worker.cjs", &["--serialization", serialization], &env);
    c.wait_ready(2);
    wait_said(&c, "listening", 2);
    let mut other = TcpStream::connect(local(ports[1].parse().unwrap())).unwrap();
    other.set_read_timeout(Some(TIMEOUT)).unwrap();
    let first = ask_on(&mut other, "/");
    assert!(first.starts_with("slot 1 "), "{first}");
    let fds = fd_count(c.pid());

    let bad = get_or(&c, local(ports[0].parse().unwrap()), "/bad");
    let bad: Value = serde_json::from_str(&bad.body).unwrap_or_else(|_| panic!("{}", bad.body));
    assert!(bad["errors"].as_array().unwrap().iter().all(Value::is_null), "every send completed: {bad}");
    let after = get(local(bad["port"].as_u64().unwrap()), "/");
    assert_eq!(after.body, "after\n", "the worker's channel still works after the handles");
    assert_eq!(ask_on(&mut other, "/"), first, "the other worker's client keeps its connection");
    // The sender learns that nobody took its handles (Node's own warning, after 3 retries).
    c.output.wait_contains("SentHandleNotReceivedWarning");
    assert!(c.output.contains("clusterd takes none: refused (NODE_HANDLE_NACK)"), "{}", c.stderr_dump());
    // A message shaped like a `queryServer` but without a port binds nothing.
    assert!(!c.output.contains("addr=0.0.0.0"), "{}", c.stderr_dump());
    let status = c.status().expect("clusterd runs");
    assert_eq!(worker(&status, 0)["restarts"], 0, "unknown messages and handles are no reason to replace: {status}");
    // The refused handles were never received (the kernel closes fds nobody asked for), and the
    // listen the worker made after them is one more socket: nothing else stays open.
    assert!(fd_count(c.pid()) <= fds + 2, "clusterd's fds: {fds} before, {} after", fd_count(c.pid()));

    let pid = worker_pid(&status, 0);
    get(local(ports[0].parse().unwrap()), "/huge");
    c.output.wait_for("the oversize message", |l| l.contains("node channel:") && l.contains("replacing the worker"));
    c.wait_status("slot 0 replaced", |s| {
        worker(s, 0)["state"] == "ready" && worker(s, 0)["pid"].as_i64() != Some(pid.into())
    });
    assert_eq!(ask_on(&mut other, "/"), first, "the other worker's client keeps its connection");
    stop(c);
}

#[test]
fn unknown_huge_and_handle_messages_never_hurt_clusterd_or_another_worker() {
    misbehaving_worker("advanced");
}

#[test]
fn unknown_huge_and_handle_messages_never_hurt_clusterd_or_another_worker_with_json() {
    misbehaving_worker("json");
}

/// Bad input: the session ids a worker reports (`sticky:connection`) cost what a client's can and
/// no more. An id no client could send (1 MiB) is not recorded, and another worker's live session
/// stays with it (taking it over would cost that worker's client its session); both are logged
/// once, and the worker is acknowledged all the same.
#[test]
fn session_ids_a_worker_reports_are_held_to_what_a_client_could_send() {
    let ports = [free_port().to_string(), free_port().to_string()];
    let env = [("ROLE", "misbehave"), ("PORT_0", ports[0].as_str()), ("PORT_1", ports[1].as_str())];
    let mut c = node(2, "matrix-worker.cjs", &[], &env);
    c.wait_ready(2);
    wait_said(&c, "listening", 2);
    let on = |slot: usize| local(ports[slot].parse().unwrap());
    let sessions = |s: &Value, slot: u64| worker(s, slot)["sessions"].as_u64().unwrap();
    let (rss_before, _) = memory_of(c.pid());

    assert_eq!(get(on(1), "/session?sid=owned-by-slot-1").body, r#"{"error":null}"#);
    c.wait_status("slot 1's session recorded", |s| sessions(s, 1) == 1);
    assert_eq!(get(on(0), "/session?sid=owned-by-slot-1").body, r#"{"error":null}"#);
    c.output.wait_contains("the worker reported a session another worker owns: not recorded");

    let sids = get_or(&c, on(1), "/sids");
    let sids: Value = serde_json::from_str(&sids.body).unwrap_or_else(|_| panic!("{}", sids.body));
    assert!(sids["errors"].as_array().unwrap().iter().all(Value::is_null), "every send completed: {sids}");
    // Read in order on the worker's channel: once this one is recorded, the 200 were read too.
    get(on(1), "/session?sid=after-the-big-ones");
    let status = c.wait_status("slot 1's second valid session recorded", |s| sessions(s, 1) == 2);
    assert_eq!(sessions(&status, 0), 0, "slot 0 took no session: {status}");
    assert_eq!(status["sessions"], 2, "{status}");
    for slot in [0, 1] {
        assert_eq!(worker(&status, slot)["restarts"], 0, "reporting is no reason to replace: {status}");
    }
    let logged = c.output.snapshot().iter().filter(|l| l.contains("a session id no client could send")).count();
    assert_eq!(logged, 1, "logged once per process: {}", c.stderr_dump());
    let (rss_after, _) = memory_of(c.pid());
    assert!(
        rss_after < rss_before + 32 * 1024 * 1024,
        "200 MiB of ids reported, none kept: VmRSS {rss_before} before, {rss_after} after"
    );
    stop(c);
}

/// Bad input: cluster adapter packets that no adapter sends (`data: null`, options that are not
/// lists, ...), from one worker, throw in the other workers' adapters. clusterd relays adapter
/// packets as they come (as Node's primary does), and its preload drops such a packet in the
/// worker that gets it, with one warning, instead of letting it end that worker: the other
/// worker's clients keep their connections and its adapter keeps working.
#[test]
fn malformed_adapter_packets_from_one_worker_cost_the_others_nothing() {
    let mut c = node(2, "socketio-worker.cjs", &["--listen", "127.0.0.1:0"], &[]);
    let addr = listen_addr(&c.wait_ready(2));
    let result = client("bad_adapter.mjs", &[&format!("http://{addr}")]);
    assert_eq!(result["sent"], 5, "{result}");
    c.output.wait_contains("CLUSTERD_ADAPTER_PACKET");
    let status = c.status().expect("clusterd runs");
    for slot in [0, 1] {
        assert_eq!(worker(&status, slot)["restarts"], 0, "no worker was replaced: {status}");
    }
    stop(c);
}

/// Rows `worker.disconnect()` and `process.disconnect()`: the worker closes its servers (the
/// former) and its channel; it gets no more connections, leaves, and clusterd starts a new
/// process in its slot. Requests made after clusterd saw the servers close are all answered.
fn disconnect(how: &str) {
    let port = free_port().to_string();
    let mut c = node(2, "matrix-worker.cjs", &["--grace", "1s"], &[("ROLE", "disconnect"), ("PORT", &port)]);
    let before = c.wait_ready(2);
    wait_said(&c, "listening", 2);
    let addr = local(port.parse().unwrap());
    let answer = get(addr, how);
    assert!(answer.body.starts_with("disconnecting slot "), "{}", answer.body);
    let words: Vec<&str> = answer.body.split_whitespace().collect();
    let (slot, pid): (u64, i32) = (words[2].parse().unwrap(), words[4].parse().unwrap());
    assert_eq!(worker_pid(&before, slot), pid);
    if how == "/worker" {
        // `worker.disconnect()` closes the worker's servers first (Node's `close` act), then the
        // channel: from then on, connections go to the other worker, while it leaves.
        c.output.wait_for("clusterd saw the server close", |l| {
            l.contains("the worker closed its server") && l.contains(&format!("pid={pid}"))
        });
        for _ in 0..10 {
            assert_eq!(get_or(&c, addr, "/").code, 200);
        }
    }
    if how == "/process-and-stay" {
        c.output.wait_for("SIGTERM for the worker that stays", |l| {
            l.contains("closed its IPC channel")
                && l.contains("still runs: SIGTERM")
                && l.contains(&format!("pid={pid}"))
        });
        wait_said(&c, "sigterm", 1);
    }
    wait_gone(pid, "the disconnected worker");
    let after = c.wait_status("a new process in the slot", |s| {
        s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "ready") && worker_pid(s, slot) != pid
    });
    let new_pid = worker_pid(&after, slot);
    // Ready (`online`) comes before the script's listen: wait for the new process's.
    let listening = wait_until("the new process listening", || {
        said(&c, "listening").into_iter().find(|(_, l)| l["pid"] == new_pid).map(|(_, l)| l)
    });
    assert_eq!(listening["port"].to_string(), port, "it joined the same port");
    let mut slots = BTreeSet::new();
    for _ in 0..20 {
        let response = get(addr, "/");
        assert_eq!(response.code, 200);
        slots.insert(response.body.split_whitespace().nth(1).unwrap().to_owned());
    }
    assert_eq!(slots.len(), 2, "the new process serves too: {slots:?}");
    stop(c);
}

#[test]
fn worker_disconnect_ends_the_worker_and_its_slot_is_filled() {
    disconnect("/worker");
}

#[test]
fn process_disconnect_ends_the_worker_and_its_slot_is_filled() {
    disconnect("/process");
}

/// A worker that disconnected but keeps running gets SIGTERM after `--grace`.
#[test]
fn a_worker_that_disconnects_and_stays_gets_sigterm_after_grace() {
    disconnect("/process-and-stay");
}

/// Row `server.maxConnections`: a worker at its limit refuses a connection (Node's `accepted:
/// false`); clusterd hands it to another worker, as Node's primary does, and the client is served.
#[test]
fn a_connection_refused_by_a_full_worker_goes_to_another() {
    let port = free_port().to_string();
    let mut c = node(2, "matrix-worker.cjs", &[], &[("ROLE", "maxconn"), ("PORT", &port)]);
    c.wait_ready(2);
    wait_said(&c, "listening", 2);
    let addr = local(port.parse().unwrap());
    // Slot 0 takes one connection and holds it: its limit is reached.
    let held = wait_until("a kept-alive connection on slot 0", || {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        ask_on(&mut stream, "/").starts_with("slot 0 ").then_some(stream)
    });
    for i in 0..20 {
        let response = get_or(&c, addr, "/");
        assert!(response.body.starts_with("slot 1 "), "request {i}: {}", response.body);
    }
    drop(held);
    stop(c);
}

/// Row Express + Socket.IO: one http server for both, with sticky sessions through `--listen`.
#[test]
fn express_and_socketio_on_one_server() {
    let mut c = node(2, "express-worker.cjs", &["--listen", "127.0.0.1:0"], &[]);
    let status = c.wait_ready(2);
    let addr = listen_addr(&status);
    let hello = get(addr, "/hello");
    assert_eq!(hello.code, 200);
    let hello: Value = serde_json::from_str(&hello.body).unwrap_or_else(|_| panic!("{}", hello.body));
    assert!(hello["slot"].is_u64(), "{hello}");
    let result = client("broadcast.mjs", &[&format!("http://{addr}"), "default", "6"]);
    assert_eq!(result["received"], 6, "{result}");
    let workers: BTreeSet<String> = result["workers"].as_array().unwrap().iter().map(Value::to_string).collect();
    assert_eq!(workers.len(), 2, "{result}");
    stop(c);
}

/// Row `ws` without Socket.IO: a WebSocket server that calls `server.listen()` itself; each
/// connection stays whole on one worker, and connections reach every worker.
#[test]
fn ws_without_socketio() {
    let mut c = node(2, "ws-worker.cjs", &[], &[]);
    c.wait_ready(2);
    let line = c.output.wait_contains("listening on ");
    let port = line.rsplit(' ').next().unwrap().trim().to_owned();
    let result = client("ws_clients.mjs", &[&format!("ws://127.0.0.1:{port}"), "8"]);
    let slots: BTreeSet<u64> = result["slots"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
    assert_eq!(slots.len(), 2, "connections reach both workers: {result}");
    stop(c);
}

/// clusterd with the Socket.IO worker using a Redis adapter (no cluster adapter) on `redis`.
fn redis_workers(redis: &Redis, adapter: &str, balance: &str) -> (Cluster, String) {
    let url = redis.url();
    let mut c = node(
        2,
        "socketio-worker.cjs",
        &["--listen", "127.0.0.1:0", "--balance", balance],
        &[("ADAPTER", adapter), ("REDIS_URL", &url)],
    );
    let status = c.wait_ready(2);
    (c, format!("http://{}", listen_addr(&status)))
}

/// Row `@socket.io/redis-adapter`, and issue 11's alternative that needs no `--bridge`: the
/// workers meet in Redis themselves; clusterd gives them sticky sessions. Two clusterd hosts of
/// two workers each on one Redis: broadcasts, fetchSockets, serverSideEmit with acks,
/// broadcasts with acks and socketsJoin reach the clients of all four workers.
#[test]
fn redis_adapter_in_the_workers_spans_two_hosts_without_a_bridge() {
    let redis = Redis::start();
    let (a, url_a) = redis_workers(&redis, "redis", "least-connection");
    let (b, url_b) = redis_workers(&redis, "redis", "least-connection");
    let result = client("node_cluster.mjs", &[&format!("{url_a},{url_b}"), "8"]);
    let clients = result["clients"].as_array().unwrap();
    assert!(clients.iter().all(|c| c["workers"].as_array().unwrap().len() == 1), "sessions stay put: {result}");
    // Client i went to host i mod 2; each host spread its clients over its two workers.
    for host in 0..2 {
        let workers: BTreeSet<u64> =
            clients.iter().skip(host).step_by(2).map(|c| c["workers"][0].as_u64().unwrap()).collect();
        assert_eq!(workers.len(), 2, "host {host}: {result}");
    }
    assert_eq!(result["broadcast"].as_array().unwrap().len(), 8, "{result}");
    assert_eq!(result["fetch"]["ids"].as_array().unwrap().len(), 8, "{result}");
    assert_eq!(result["serverAsk"]["answers"].as_array().unwrap().len(), 3, "the 3 other workers: {result}");
    assert_eq!(result["askAll"]["answers"].as_array().unwrap().len(), 8, "{result}");
    assert_eq!(result["roomCount"], 8, "{result}");
    stop(a);
    stop(b);
}

/// Row `@socket.io/redis-streams-adapter` with connection state recovery: clients whose
/// transport drops connect again, land on a worker (round-robin makes it the other one), and are
/// recovered with the packets they missed.
#[test]
fn redis_streams_adapter_recovers_sessions_on_any_worker() {
    let redis = Redis::start();
    let (c, url) = redis_workers(&redis, "redis-streams", "round-robin");
    let result = client("recovery.mjs", &[&url, "4"]);
    let clients = result["clients"].as_array().unwrap();
    // 5 connections, then 4 reconnections one after another: round-robin over 2 workers moves
    // every client to the other worker.
    assert_eq!(clients.len(), 4, "{result}");
    assert!(clients.iter().all(|c| c["before"] != c["after"]), "each client recovered on the other worker: {result}");
    stop(c);
}
