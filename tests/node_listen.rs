//! The lifetime and the bounds of the listeners clusterd binds for Node workers'
//! `server.listen()` (README "How connections are routed", "Limits and guarantees"): bound at a
//! worker's first listen, closed when the last worker in it closes its server, kept while a
//! worker restarts, and bounded per worker and in all.
//!
//! The worker is tests/node/workers/listen-lifetime-worker.cjs, driven over its control server.

mod support;

use std::net::{SocketAddr, TcpStream};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// clusterd with `workers` listen-lifetime workers; `env` goes to the workers.
fn start(workers: usize, env: &[(&str, String)]) -> Cluster {
    start_with(workers, &[], env)
}

/// [`start`], with more arguments for clusterd.
fn start_with(workers: usize, args: &[&str], env: &[(&str, String)]) -> Cluster {
    let script = node_dir().join("workers/listen-lifetime-worker.cjs");
    let workers = workers.to_string();
    let mut builder = Builder::new()
        .args(&["--protocol", "node", "--workers", &workers])
        .args(args)
        .program(&["node", script.to_str().unwrap()]);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    builder.start()
}

/// The `control {...}` lines the workers printed so far.
fn controls(c: &Cluster) -> Vec<Value> {
    c.output
        .snapshot()
        .iter()
        .filter_map(|line| line.split_once("control {").map(|(_, rest)| format!("{{{rest}")))
        .map(|json| serde_json::from_str(&json).unwrap_or_else(|_| panic!("not JSON: {json}")))
        .collect()
}

/// Waits for the control line of process `pid`-to-be: the first one not in `seen`, of `slot`.
fn wait_control(c: &Cluster, slot: u64, seen: &[i64]) -> Value {
    wait_until(&format!("a new control server of slot {slot}"), || {
        controls(c).into_iter().find(|l| l["slot"] == slot && !seen.contains(&l["pid"].as_i64().unwrap()))
    })
}

fn local(port: u64) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// One request to a worker's control server; its JSON answer.
fn ask(c: &Cluster, control: u64, target: &str) -> Value {
    let response = get(local(control), target);
    assert_eq!(response.code, 200, "{target}: {}", response.body);
    serde_json::from_str(&response.body)
        .unwrap_or_else(|_| panic!("{target} answered {}; output:\n{}", response.body, c.stderr_dump()))
}

/// How many listeners clusterd reports (its `--listen` ones and those workers asked for).
fn listeners(status: &Value) -> usize {
    status["listen"].as_array().map_or(0, Vec::len)
}

fn lists(status: &Value, addr: &str) -> bool {
    status["listen"].as_array().is_some_and(|l| l.iter().any(|a| a == addr))
}

fn stop(mut c: Cluster) {
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// Review 16: a worker that keeps one server and opens and closes another 500 times left
/// clusterd with a bound listener (and its fd) per cycle. Each closed server's listener goes,
/// with its metrics series, and the kept one still serves.
#[test]
fn listen_and_close_cycles_leave_no_listener_and_no_fd_behind() {
    let mut c = start_with(1, &["--metrics", "127.0.0.1:0"], &[]);
    c.wait_ready(1);
    let control = wait_control(&c, 0, &[])["port"].as_u64().unwrap();
    c.wait_status("the control server's listener", |s| listeners(s) == 1);
    let fds = fd_count(c.pid());

    let done = ask(&c, control, "/cycle?n=500");
    assert_eq!(done["cycles"], 500, "{done}");
    // The worker's last `close` may reach clusterd after its answer reached us: wait for it.
    c.wait_status("the 500 cycled listeners closed, the control one kept", |s| listeners(s) == 1);
    wait_until(&format!("clusterd's fds back to the {fds} it had before the cycles"), || {
        (fd_count(c.pid()) <= fds + 2).then_some(())
    });
    let answer = get(local(control), "/");
    assert!(answer.body.starts_with("slot 0 "), "the kept server still serves: {}", answer.body);
    let metrics = scrape(&metrics_addr(&c));
    let series = metrics.samples("clusterd_connections_accepted_total");
    assert_eq!(series.len(), 1, "one listener's series, the kept one's: {} series", series.len());
    stop(c);
}

/// Once every worker closed its server on a port, clusterd no longer accepts there (as Node's
/// primary closes its handle when the last worker leaves), a Unix socket file it created is
/// removed, and a new listen on the same address binds it again.
#[test]
fn an_address_every_worker_closed_refuses_connections_and_can_be_listened_on_again() {
    let ctl = [free_port(), free_port()];
    let env = [("CONTROL_PORT_0", ctl[0].to_string()), ("CONTROL_PORT_1", ctl[1].to_string())];
    let mut c = start(2, &env);
    c.wait_ready(2);
    let pids = [wait_control(&c, 0, &[])["pid"].as_i64().unwrap(), wait_control(&c, 1, &[])["pid"].as_i64().unwrap()];
    let ctl = ctl.map(u64::from);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let path = path.to_str().unwrap();
    let port = u64::from(free_port());
    for control in ctl {
        assert_eq!(ask(&c, control, &format!("/listen?port={port}"))["port"], port);
        assert_eq!(ask(&c, control, &format!("/listen?path={path}"))["path"], path);
    }
    assert_eq!(get(local(port), "/").code, 200);

    // One worker closes: the other still serves the port.
    assert_eq!(ask(&c, ctl[0], &format!("/close?port={port}"))["closed"], true);
    c.output.wait_for("clusterd saw slot 0 close its server", |l| {
        l.contains("the worker closed its server")
            && l.contains(&format!("pid={}", pids[0]))
            && l.contains(&format!(":{port}"))
    });
    for _ in 0..4 {
        let answer = get(local(port), "/");
        assert!(answer.body.starts_with("served slot 1 "), "{}", answer.body);
    }

    // The last one closes: the port is closed, the socket file gone.
    assert_eq!(ask(&c, ctl[1], &format!("/close?port={port}"))["closed"], true);
    for control in ctl {
        assert_eq!(ask(&c, control, &format!("/close?path={path}"))["closed"], true);
    }
    let addr = format!("127.0.0.1:{port}");
    let unix = format!("unix:{path}");
    c.wait_status("the closed listeners gone from status", |s| !lists(s, &addr) && !lists(s, &unix));
    match TcpStream::connect(local(port)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("a connect to the closed port must be refused, got {other:?}; output:\n{}", c.stderr_dump()),
    }
    assert!(!std::path::Path::new(path).exists(), "clusterd removed the socket file it created");

    // Listening again binds again.
    assert_eq!(ask(&c, ctl[0], &format!("/listen?port={port}"))["port"], port);
    let answer = get(local(port), "/");
    assert!(answer.body.starts_with("served slot 0 "), "{}", answer.body);
    stop(c);
}

/// The documented contract: a worker that exits (killed, or reloaded: its drain closes its
/// servers) does not close its listeners; its replacement listens again and finds the same
/// socket, port 0 included.
#[test]
fn a_worker_that_dies_or_is_reloaded_keeps_its_port_bound() {
    let mut c = start(1, &[]);
    c.wait_ready(1);
    let first = wait_control(&c, 0, &[]);
    let port = first["port"].as_u64().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut pids = vec![first["pid"].as_i64().unwrap()];

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    let second = wait_control(&c, 0, &pids);
    assert_eq!(second["port"], port, "the restarted worker found the same port: {second}");
    pids.push(second["pid"].as_i64().unwrap());

    let reload = c.request(r#"{"command":"reload"}"#).expect("the control socket answers");
    assert!(reload.get("error").is_none(), "{reload}");
    let third = wait_control(&c, 0, &pids);
    assert_eq!(third["port"], port, "the reloaded worker found the same port: {third}");
    let status = c.wait_status("the old process gone", |s| s["workers"].as_array().is_some_and(|w| w.len() == 1));
    assert!(lists(&status, &addr), "still listening on {addr}: {status}");
    let answer = get(local(port), "/");
    assert!(answer.body.starts_with(&format!("slot 0 pid {}", third["pid"])), "{}", answer.body);
    stop(c);
}

/// A `queryServer` with an index no Node worker can send (it never listened that often) is
/// refused (EINVAL) and binds nothing; so is a listen past the bound of listeners one worker
/// holds at once (EMFILE). clusterd and the worker's other servers carry on.
#[test]
fn a_forged_listen_index_and_listens_past_the_worker_bound_are_refused() {
    let mut c = start(1, &[]);
    c.wait_ready(1);
    let control = wait_control(&c, 0, &[])["port"].as_u64().unwrap();
    c.wait_status("the control server's listener", |s| listeners(s) == 1);

    let forged = ask(&c, control, "/forge?n=1000000");
    assert_eq!(forged["errno"], -22, "a forged index is refused with EINVAL: {forged}");
    c.output.wait_contains("refused a listen");
    assert_eq!(listeners(&c.status().unwrap()), 1, "the forged listen bound nothing");

    // 64 listeners per worker at once: the control server and 63 more.
    let held = ask(&c, control, "/hold?n=64");
    assert_eq!(held["listening"], 63, "{held}");
    assert_eq!(held["errors"], serde_json::json!(["EMFILE"]), "{held}");
    assert_eq!(listeners(&c.status().unwrap()), 64);
    let answer = get(local(control), "/");
    assert!(answer.body.starts_with("slot 0 "), "{}", answer.body);
    let status = c.status().unwrap();
    assert_eq!(worker(&status, 0)["restarts"], 0, "{status}");
    stop(c);
}

/// The bound on listeners in all: workers that each listen on their own address (so that no
/// two share a listener) reach it together; the listens past it fail (EMFILE), the others and
/// clusterd carry on, and a closed listener makes room for a new one.
#[test]
fn listens_past_the_bound_on_listeners_in_all_are_refused() {
    const MAX_GROUPS: u64 = 256;
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let env: Vec<(String, String)> =
        ports.iter().enumerate().map(|(i, p)| (format!("CONTROL_PORT_{i}"), p.to_string())).collect();
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut c = start(5, &env);
    c.wait_ready(5);
    c.wait_status("the five control servers' listeners", |s| listeners(s) == 5);
    // Each worker on a loopback address of its own: 4 x 50, then the last one past the bound.
    for (slot, port) in ports.iter().enumerate().take(4) {
        let held = ask(&c, u64::from(*port), &format!("/hold?n=50&host=127.0.0.{}", slot + 2));
        assert_eq!(held["errors"], serde_json::json!([]), "slot {slot}: {held}");
    }
    let last = u64::from(ports[4]);
    let held = ask(&c, last, "/hold?n=55&host=127.0.0.6");
    assert_eq!(held["listening"], MAX_GROUPS - 5 - 200, "{held}");
    assert_eq!(held["errors"], serde_json::json!(["EMFILE", "EMFILE", "EMFILE", "EMFILE"]), "{held}");
    c.output.wait_contains("refused a listen: too many listeners");
    assert_eq!(listeners(&c.status().unwrap()) as u64, MAX_GROUPS);

    // One closed makes room for one more.
    let port = port_on(&c, "127.0.0.6");
    assert_eq!(ask(&c, last, &format!("/close?port={port}"))["closed"], true);
    c.wait_status("one listener closed", |s| listeners(s) as u64 == MAX_GROUPS - 1);
    let again = ask(&c, last, "/hold?n=1&host=127.0.0.6");
    assert_eq!(again["errors"], serde_json::json!([]), "{again}");
    for port in &ports {
        assert!(get(local(u64::from(*port)), "/").body.starts_with("slot "));
    }
    stop(c);
}

/// The port of a listener clusterd bound on `host`, from its status.
fn port_on(c: &Cluster, host: &str) -> u64 {
    let status = c.status().unwrap();
    let prefix = format!("{host}:");
    let addr = status["listen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with(&prefix))
        .unwrap_or_else(|| panic!("a listener on {host}: {status}"))
        .to_owned();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The documented choice for a listener whose workers all exited and were not replaced (a
/// scale-down to fewer workers than listened on it; their drain closes their servers): it stays
/// bound while the pool may grow back, and a worker that comes back finds it.
#[test]
fn a_listener_whose_workers_were_scaled_away_stays_bound() {
    let ctl = [free_port(), free_port()];
    let env = [("CONTROL_PORT_0", ctl[0].to_string()), ("CONTROL_PORT_1", ctl[1].to_string())];
    let mut c = start(2, &env);
    c.wait_ready(2);
    let gone = wait_control(&c, 1, &[])["pid"].as_i64().unwrap();
    let addr = format!("127.0.0.1:{}", ctl[1]);
    c.wait_status("both control listeners", |s| lists(s, &addr) && listeners(s) == 2);

    let reply = c.request(r#"{"command":"scale","workers":1}"#).expect("scale answered");
    assert!(reply.get("error").is_none(), "{reply}");
    wait_gone(gone as i32, "slot 1's worker");
    let status = c.wait_status("slot 1 removed", |s| s["workers"].as_array().is_some_and(|w| w.len() == 1));
    assert!(lists(&status, &addr), "slot 1's listener is kept: {status}");

    let reply = c.request(r#"{"command":"scale","workers":2}"#).expect("scale answered");
    assert!(reply.get("error").is_none(), "{reply}");
    let back = wait_control(&c, 1, &[gone]);
    assert_eq!(back["port"], u64::from(ctl[1]), "{back}");
    let answer = get(local(u64::from(ctl[1])), "/");
    assert!(answer.body.starts_with(&format!("slot 1 pid {}", back["pid"])), "{}", answer.body);
    stop(c);
}
