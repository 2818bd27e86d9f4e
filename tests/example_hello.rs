//! The bundled `hello` example, supervised by clusterd and answering real HTTP requests.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use nix::sys::signal::Signal;
use support::*;

/// `cargo test` builds the examples beside the binaries: target/<profile>/examples/hello.
fn hello_example() -> PathBuf {
    let path = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("hello");
    assert!(path.exists(), "{} is missing: `cargo test` builds examples, run it from the workspace", path.display());
    path
}

fn get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn hello_answers_from_every_worker_and_drains_on_term() {
    // A port the kernel says is free now; the workers bind it with SO_REUSEPORT.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let example = hello_example();
    let addr = format!("127.0.0.1:{port}");
    let mut c = Builder::new().args(&["--workers", "2"]).program(&[example.to_str().unwrap(), &addr]).start();
    let status = c.wait_ready(2);
    let pids: Vec<i32> = (0..2).map(|id| worker_pid(&status, id)).collect();
    let mut seen = std::collections::HashSet::new();
    wait_until("answers from both workers", || {
        let response = get(port)?;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1)?.to_owned();
        let id = if body.contains("worker 0") { 0 } else { 1 };
        assert!(body.contains(&format!("pid {}", pids[id])), "{body} vs {pids:?}");
        seen.insert(id);
        (seen.len() == 2).then_some(())
    });
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    assert!(c.output.contains("[w0] worker 0 drained") && c.output.contains("[w1] worker 1 drained"));
}
