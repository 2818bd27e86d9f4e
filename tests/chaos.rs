//! Chaos with accounting: steady Socket.IO load (the npm `socket.io-client`, tests/node/chaos.mjs)
//! on `chat` workers while a worker is killed with SIGKILL every 2 s. Only the victims' clients
//! reconnect; between the others no message is lost, duplicated or reordered; clusterd ends with
//! its pool full and the same fds and memory as before.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// Workers; slots [`KEPT`] are never killed, the others are, in turn.
const WORKERS: u64 = 4;
const KEPT: [u64; 2] = [0, 1];
const KILLS: usize = 6;
const KILL_EVERY: Duration = Duration::from_secs(2);
const CLIENTS: &str = "24";
/// Each client sends a message this often, in ms.
const SEND_EVERY_MS: &str = "100";
/// clusterd's resident memory may differ by this much after the kills (allocator pools).
const RSS_TOLERANCE: u64 = 2 * 1024 * 1024;

/// The next JSON line the script printed, within `timeout`.
fn next_json(lines: &mpsc::Receiver<String>, timeout: Duration, what: &str) -> Value {
    let line =
        lines.recv_timeout(timeout).unwrap_or_else(|_| panic!("no {what} line from chaos.mjs within {timeout:?}"));
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("chaos.mjs said: {line}"))
}

#[test]
fn killing_workers_under_socketio_load_disturbs_only_their_clients_and_leaks_nothing() {
    let chat = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("chat");
    assert!(chat.exists(), "{} is missing: `cargo test` builds the examples", chat.display());
    let mut c = Builder::new()
        .args(&["--workers", &WORKERS.to_string(), "--listen", "127.0.0.1:0"])
        .program(&[chat.to_str().unwrap()])
        .start();
    let status = c.wait_ready(WORKERS as usize);
    let url = format!("http://{}", listen_addr(&status));
    let mut node = Command::new("node")
        .arg(node_dir().join("chaos.mjs"))
        .args([&url, CLIENTS, SEND_EVERY_MS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (Node.js) must be installed to run the Socket.IO interop tests");
    let stdout = node.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let connected = next_json(&lines, Duration::from_secs(40), "connected");
    assert_eq!(connected["phase"], "connected", "{connected}");
    let kept: Vec<u64> = connected["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|client| KEPT.contains(&client["worker"].as_u64().unwrap()))
        .map(|client| client["id"].as_u64().unwrap())
        .collect();
    assert!(!kept.is_empty(), "clients on the workers never killed: {connected}");
    let pid = c.pid();
    let (rss_before, _) = memory_of(pid);
    let fds_before = fd_count(pid);

    // The chaos: every KILL_EVERY, SIGKILL to the next victim slot (the replacement is ready
    // before the next kill, so each kill meets a serving worker).
    let started = Instant::now();
    let mut killed = Vec::new();
    for round in 0..KILLS {
        let pace = (started + KILL_EVERY * round as u32).saturating_duration_since(Instant::now());
        std::thread::sleep(pace); // the load's schedule, not a synchronisation
        let slot = (WORKERS - KEPT.len() as u64..WORKERS).nth(round % (WORKERS as usize - KEPT.len())).unwrap();
        let status = c.wait_ready(WORKERS as usize);
        let victim = worker_pid(&status, slot);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).expect("kill the victim");
        killed.push(i64::from(victim));
        c.wait_status(&format!("slot {slot} replaced after kill {round}"), |s| {
            let row = worker(s, slot);
            row["state"] == "ready" && row["pid"].as_i64() != Some(i64::from(victim))
        });
    }
    writeln!(node.stdin.as_mut().unwrap(), "stop").unwrap();
    let done = next_json(&lines, Duration::from_secs(60), "done");
    assert!(node.wait().unwrap().success(), "{done}");
    eprintln!("chaos: {} kills, {done}", killed.len());
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["unreconnected"], serde_json::json!([]), "every client is served again: {done}");
    for from in done["disconnectedFrom"].as_array().unwrap() {
        assert!(killed.contains(&from.as_i64().unwrap_or(-1)), "a client lost a worker that was not killed: {done}");
    }
    assert!(!done["disturbed"].as_array().unwrap().is_empty(), "the kills reached clients: {done}");
    let undisturbed: Vec<u64> =
        done["undisturbed"].as_array().unwrap().iter().map(|c| c["id"].as_u64().unwrap()).collect();
    for id in &kept {
        assert!(undisturbed.contains(id), "client {id} of a worker never killed was disturbed: {done}");
    }
    assert_eq!(done["lost"], 0, "messages lost between undisturbed clients: {done}");
    assert_eq!(done["duplicated"], 0, "{done}");
    assert_eq!(done["reordered"], 0, "{done}");

    // Afterwards: a full pool, the same fds, the same memory.
    c.wait_ready(WORKERS as usize);
    let fds_after = wait_until("clusterd's fd count to come back", || {
        let now = fd_count(pid);
        (now == fds_before).then_some(now)
    });
    let (rss_after, _) = memory_of(pid);
    eprintln!("clusterd: fds {fds_before} -> {fds_after}, VmRSS {rss_before} -> {rss_after} bytes");
    assert!(
        rss_after <= rss_before + RSS_TOLERANCE,
        "clusterd's memory grew from {rss_before} to {rss_after} bytes over the kills"
    );
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
