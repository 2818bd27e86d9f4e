//! The bundled `hello` example, supervised by clusterd and answering real HTTP requests through
//! connection handoff.

mod support;

use std::path::PathBuf;

use nix::sys::signal::Signal;
use support::*;

/// `cargo test` builds the examples beside the binaries: target/<profile>/examples/hello.
fn hello_example() -> PathBuf {
    let path = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("hello");
    assert!(path.exists(), "{} is missing: `cargo test` builds examples, run it from the workspace", path.display());
    path
}

#[test]
fn hello_answers_from_every_worker_and_drains_on_term() {
    let example = hello_example();
    let mut c = Builder::new()
        .args(&["--workers", "2", "--listen", "127.0.0.1:0"])
        .program(&[example.to_str().unwrap()])
        .start();
    let status = c.wait_ready(2);
    let addr = listen_addr(&status);
    let pids: Vec<i32> = (0..2).map(|id| worker_pid(&status, id)).collect();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let response = get(addr, "/");
        assert_eq!(response.code, 200);
        let body = response.body;
        let id = if body.contains("worker 0") { 0 } else { 1 };
        assert!(body.contains(&format!("pid {}", pids[id])), "{body} vs {pids:?}");
        assert!(body.contains("you are 127.0.0.1:"), "the client address reaches the handler: {body}");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 2, "least-connection rotates ties over both workers");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    assert!(c.output.contains("[w0] worker 0 drained") && c.output.contains("[w1] worker 1 drained"));
}
