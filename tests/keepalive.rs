//! Kept-alive connections across sessions (issue 14, item 9): clusterd routes a connection by its
//! first request, so a later request on it may belong to a session that lives on another worker.
//! The SDK gives such a connection back to clusterd, which routes it again: the request reaches
//! its session's worker, and the client sees no error.
//!
//! The workers are the `chat` example (socketioxide with the SDK's `SessionLayer`).

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use nix::sys::signal::Signal;
use support::*;

fn chat_example() -> PathBuf {
    let path = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("chat");
    assert!(path.exists(), "{} is missing: `cargo test` builds examples, run it from the workspace", path.display());
    path
}

/// One HTTP/1.1 connection that the client keeps for as long as the server does.
struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Requests sent on the current connection.
    sent: usize,
    /// The worker the current connection sits on.
    on: Option<usize>,
    /// Per worker: the times the connection had to leave it (its next request was for another
    /// worker), each a connection the worker gives back.
    given_back: [u64; 2],
}

impl KeepAlive {
    /// Sends a request that `owner` must answer.
    fn send(&mut self, owner: usize, method: &str, target: &str, body: &str) -> Response {
        match self.on {
            Some(on) if self.stream.is_some() && on != owner => self.given_back[on] += 1,
            _ => {}
        }
        let addr = self.addr;
        let stream = self.stream.get_or_insert_with(|| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s
        });
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let response = read_response(stream).unwrap_or_else(|| panic!("no response to {method} {target}"));
        self.sent += 1;
        self.on = Some(owner);
        if response.close {
            self.stream = None;
            self.sent = 0;
        }
        response
    }
}

/// Opens a polling session on a connection of its own; returns its sid.
fn handshake(addr: SocketAddr) -> String {
    let response = get(addr, "/socket.io/?EIO=4&transport=polling");
    assert_eq!(response.code, 200, "{}", response.body);
    response.body.split("\"sid\":\"").nth(1).expect("an open packet").split('"').next().unwrap().to_owned()
}

#[test]
fn a_poll_for_another_workers_session_on_a_kept_alive_connection_reaches_that_worker() {
    let chat = chat_example();
    let mut c = Builder::new()
        .args(&["--workers", "2", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .program(&[chat.to_str().unwrap()])
        .start();
    let status = c.wait_ready(2);
    let addr = listen_addr(&status);
    let metrics_at = metrics_addr(&c);

    // A session on each worker (least-connection alternates the handshakes' connections).
    let mut by_worker: [Option<String>; 2] = [None, None];
    let mut known = 0;
    while by_worker.iter().any(Option::is_none) {
        let before = c.status().expect("status");
        let sid = handshake(addr);
        known += 1;
        let after = c.wait_status("the session registered", |s| s["sessions"].as_u64() == Some(known));
        let owner = (0..2)
            .find(|&id| worker(&after, id)["sessions"].as_u64() > worker(&before, id)["sessions"].as_u64())
            .expect("one worker's count went up");
        by_worker[owner as usize].get_or_insert(sid);
    }
    let sids: Vec<String> = by_worker.into_iter().map(Option::unwrap).collect();

    // A browser-like client: the page first (not a long-poll: the connection stays open), then
    // polls of both sessions on the same connection. Every one must reach its owner (another
    // worker answers 400 "Session ID unknown").
    let mut client = KeepAlive { addr, stream: None, sent: 0, on: None, given_back: [0; 2] };
    let page = client.send(0, "GET", "/", "");
    assert_eq!(page.code, 200);
    assert!(!page.close, "the page keeps its connection");
    let page_worker = usize::from(!page.body.contains("came from worker 0"));
    // The page went where the balancer chose: that is where the connection sits.
    client.on = Some(page_worker);
    // The other worker's session first: the connection belongs to the page's worker.
    let order = [1 - page_worker, page_worker];
    for i in order {
        let sid = &sids[i];
        let joined = client.send(i, "POST", &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"), "40");
        assert_eq!(
            (joined.code, joined.body.as_str()),
            (200, "ok"),
            "session {i} joining the namespace\n{}",
            c.stderr_dump()
        );
    }
    for round in 0..10 {
        let sid = &sids[order[round % 2]];
        let event = format!("42[\"chat message\",\"round {round}\"]");
        let sent =
            client.send(order[round % 2], "POST", &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"), &event);
        assert_eq!((sent.code, sent.body.as_str()), (200, "ok"), "round {round}");
        // The broadcast reaches the session's queue a moment later: poll until it is there.
        let mut seen = String::new();
        for _ in 0..5 {
            let polled =
                client.send(order[round % 2], "GET", &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"), "");
            assert_eq!(polled.code, 200, "round {round}: {}", polled.body);
            seen.push_str(&polled.body);
            if seen.contains(&format!("round {round}")) {
                break;
            }
        }
        assert!(seen.contains(&format!("round {round}")), "round {round}: {seen}");
    }

    // Each move of the connection to the other worker was a connection given back, counted on
    // the row of the worker that gave it back (before it was routed again, so before the answer
    // came) and in its slot's series of /metrics.
    let moves = client.given_back;
    assert!(moves.iter().all(|&n| n > 0), "the connection moved both ways: {moves:?}");
    let status = c.status().expect("status");
    let m = scrape(&metrics_at);
    for (id, &moved) in moves.iter().enumerate() {
        assert_eq!(worker(&status, id as u64)["given_back"].as_u64(), Some(moved), "worker {id}: {status:#}");
        let slot = id.to_string();
        assert_eq!(
            m.value("clusterd_worker_connections_given_back_total", &[("worker", &slot)]),
            Some(moved as f64),
            "worker {id}:\n{}",
            m.text
        );
    }
    let out = std::process::Command::new(CLUSTERD).arg("status").arg("--control").arg(&c.control).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let line = format!("connections given back: worker 0 pid {} {}", worker_pid(&status, 0), moves[0]);
    assert!(table.contains(&line), "`{line}` in:\n{table}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

/// A worker can only give back a connected stream socket that clusterd handed it: anything else
/// (here `/dev/null`) is a protocol violation, the worker is replaced, and clusterd goes on.
#[test]
fn a_worker_that_gives_back_something_else_than_its_socket_is_replaced() {
    let mut c = Cluster::start(&["--workers", "1", "--listen", "127.0.0.1:0"], &["--bad-handback"]);
    let status = c.wait_ready(1);
    let addr = listen_addr(&status);
    let pid = worker_pid(&status, 0);
    let mut client = TcpStream::connect(addr).expect("connect");
    client.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    c.output.wait_contains("gave back an fd that is not a stream socket");
    c.wait_status("the worker replaced", |s| s["workers"][0]["pid"].as_i64().is_some_and(|p| p as i32 != pid));
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
