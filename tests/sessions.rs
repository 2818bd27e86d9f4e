//! Every live Socket.IO session is counted, whatever its transport, and an ended one is forgotten
//! within a second (issue 14, item 8): the real npm `socket.io-client` against the `chat` example.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// How soon after a client's close its session must be gone from `status`: the SDK reports an end
/// within a second; the rest is clusterd's and the test's polling on a shared machine.
const GONE_WITHIN: Duration = Duration::from_secs(3);

fn chat_example() -> PathBuf {
    let path = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("chat");
    assert!(path.exists(), "{} is missing: `cargo test` builds examples, run it from the workspace", path.display());
    path
}

fn total(status: &Value) -> u64 {
    status["workers"].as_array().unwrap().iter().map(|w| w["sessions"].as_u64().unwrap()).sum()
}

struct Clients {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Clients {
    fn start(url: &str, mode: &str, count: usize) -> Self {
        let mut child = Command::new("node")
            .arg(node_dir().join("sessions.mjs"))
            .args([url, mode, &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    fn next(&mut self) -> Value {
        let line = self.lines.next().expect("a line from sessions.mjs").expect("read");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("sessions.mjs said: {line}"))
    }

    fn close(mut self) {
        writeln!(self.child.stdin.as_mut().unwrap(), "close").unwrap();
        assert_eq!(self.next()["phase"], "closed");
        assert!(self.child.wait().unwrap().success());
    }
}

#[test]
fn sessions_of_every_transport_are_counted_and_forgotten_within_a_second_of_their_end() {
    let chat = chat_example();
    let mut c = Builder::new()
        .args(&["--workers", "2", "--listen", "127.0.0.1:0", "--session-ttl", "1h"])
        .program(&[chat.to_str().unwrap()])
        .start();
    let status = c.wait_ready(2);
    let url = format!("http://{}", listen_addr(&status));
    for (mode, transport) in [("polling", "polling"), ("websocket", "websocket"), ("upgrade", "websocket")] {
        let clients_count = 6;
        let mut clients = Clients::start(&url, mode, clients_count);
        let connected = clients.next();
        assert_eq!(connected["phase"], "connected", "{mode}: {connected}");
        assert!(connected["transports"].as_array().unwrap().iter().all(|t| t == transport), "{mode}: {connected}");
        let status = c.wait_status(&format!("{mode}: {clients_count} sessions counted"), |s| {
            total(s) == clients_count as u64 && s["sessions"].as_u64() == Some(clients_count as u64)
        });
        assert!(
            status["workers"].as_array().unwrap().iter().all(|w| w["sessions"].as_u64().unwrap() > 0),
            "{mode}: sessions on both workers: {status:#}"
        );
        let closed = Instant::now();
        clients.close();
        c.wait_status(&format!("{mode}: sessions forgotten"), |s| total(s) == 0 && s["sessions"].as_u64() == Some(0));
        // The TTL is an hour: only the SDK's reports can have taken them out.
        assert!(closed.elapsed() < GONE_WITHIN, "{mode}: forgotten after {:?}", closed.elapsed());
    }
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
