//! Issue 13, item 4: reloads and scale-downs lose no request, keep-alive included.
//!
//! Clients keep their HTTP/1.1 connections alive and never retry: a request that gets no response
//! (a reset, or an end of stream where the response should be) is a failure, as it is for `wrk`.
//! The classic race: the draining worker closes an idle kept-alive connection at the moment its
//! client sends the next request on it. The SDK gives such connections back to clusterd instead,
//! which routes them to a live worker.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// Clients, each with one kept-alive connection at a time.
const CLIENTS: usize = 8;
/// The most a load runs, whatever happens to the test (a failure bound, not a pace).
const LOAD_LIMIT: Duration = Duration::from_secs(300);

fn example(name: &str) -> PathBuf {
    let path = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join(name);
    assert!(path.exists(), "{} is missing: `cargo test` builds examples, run it from the workspace", path.display());
    path
}

fn cli(c: &Cluster, args: &[&str]) {
    let out = Command::new(CLUSTERD).args(args).arg("--control").arg(&c.control).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "clusterd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn rows(status: &Value) -> Vec<Value> {
    status["workers"].as_array().unwrap().clone()
}

/// `n` workers of `generation`, all ready, and no other (the drained ones exited).
fn settled(s: &Value, n: usize, generation: u64) -> bool {
    s["phase"] == "ready"
        && rows(s).len() == n
        && rows(s).iter().all(|w| w["state"] == "ready" && w["generation"].as_u64() == Some(generation))
}

/// One HTTP/1.1 response read from a buffered connection: its status and whether the server said
/// `Connection: close`. `Err` says what went wrong (the failure a client would see).
fn response(reader: &mut BufReader<TcpStream>) -> Result<(u16, bool), String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err("end of stream instead of a response".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("reading the status line: {e}")),
    }
    let code: u16 =
        line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("status line {line:?}"))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) => return Err("end of stream inside a response head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading a header: {e}")),
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().map_err(|_| format!("bad length {header:?}"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.split(',').any(|v| v.trim().eq_ignore_ascii_case("close"));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| format!("reading the body: {e}"))?;
    Ok((code, close))
}

/// Clients that keep their connections alive and never retry, until `finish`.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let clients = (0..CLIENTS)
            .map(|_| {
                let (stop, served) = (stop.clone(), served.clone());
                std::thread::spawn(move || client(addr, &stop, &served))
            })
            .collect();
        Self { stop, served, clients }
    }

    /// Waits until the clients were served more requests than now: the pool serves after `what`.
    fn wait_served(&self, what: &str) {
        let before = self.served.load(Ordering::Relaxed);
        wait_until(&format!("requests served {what}"), || {
            (self.served.load(Ordering::Relaxed) > before + 50).then_some(())
        });
    }

    /// Stops the clients; returns how many requests were served and every failure.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
        (self.served.load(Ordering::Relaxed), failures)
    }
}

/// One client: `GET /` after `GET /` on its kept-alive connection; a new connection only when the
/// server said `Connection: close` or the previous one failed. Returns its failures.
fn client(addr: SocketAddr, stop: &AtomicBool, served: &AtomicU64) -> Vec<String> {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut connection: Option<BufReader<TcpStream>> = None;
    // Requests on the current connection: a failure on a fresh one is not the race under test.
    let mut on_this = 0u32;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
        let reader = match &mut connection {
            Some(reader) => reader,
            None => match TcpStream::connect(addr) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                    on_this = 0;
                    connection.insert(BufReader::new(stream))
                }
                Err(e) => {
                    failures.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let result = reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .map_err(|e| format!("write: {e}"))
            .and_then(|()| response(reader));
        match result {
            Ok((200, close)) => {
                served.fetch_add(1, Ordering::Relaxed);
                on_this += 1;
                if close {
                    connection = None;
                }
            }
            Ok((code, _)) => {
                failures.push(format!("status {code}"));
                connection = None;
            }
            Err(e) => {
                failures.push(format!("{e} (request {} on its connection)", on_this + 1));
                connection = None;
            }
        }
    }
    failures
}

/// 5 rolling reloads and 5 scale-downs (3 -> 2 -> 3) of `hello` workers (axum on the SDK) under
/// keep-alive load: not one request fails, and the pool serves after each change.
#[test]
fn keep_alive_load_through_reloads_and_scale_downs_loses_no_request() {
    let hello = example("hello");
    let mut c = Builder::new()
        .args(&["--workers", "3", "--listen", "127.0.0.1:0", "--grace", "20s"])
        .program(&[hello.to_str().unwrap()])
        .start();
    let addr = listen_addr(&c.wait_ready(3));
    let load = Load::start(addr);
    load.wait_served("at the start");
    let mut generation = 1;
    for _ in 0..5 {
        cli(&c, &["reload"]);
        generation += 1;
        c.wait_status(&format!("generation {generation} alone serving"), |s| settled(s, 3, generation));
        load.wait_served(&format!("after the reload to generation {generation}"));
    }
    for round in 1..=5 {
        cli(&c, &["scale", "2"]);
        c.wait_status("the scale-down done, its worker exited", |s| settled(s, 2, generation));
        load.wait_served(&format!("after scale-down {round}"));
        cli(&c, &["scale", "3"]);
        c.wait_status("back to 3 workers", |s| settled(s, 3, generation));
    }
    let (served, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed through 5 reloads and 5 scale-downs, e.g. {:#?}",
        failures.len(),
        served + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    println!("{served} requests served through 5 reloads and 5 scale-downs, none failed");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
