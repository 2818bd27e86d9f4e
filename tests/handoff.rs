//! Connection handoff: clusterd accepts, reads the request line, picks a worker and passes the
//! socket; real clients, real workers (the test worker's `--serve` HTTP server).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

fn start(args: &[&str], worker_args: &[&str]) -> (Cluster, std::net::SocketAddr) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut worker = vec!["--serve"];
    worker.extend_from_slice(worker_args);
    let mut c = Cluster::start(&all, &worker);
    let status = c.wait_status("listening", |s| s["listen"].as_array().is_some_and(|l| !l.is_empty()));
    let addr = listen_addr(&status);
    (c, addr)
}

fn connections(status: &serde_json::Value) -> Vec<u64> {
    status["workers"].as_array().unwrap().iter().map(|w| w["connections"].as_u64().unwrap()).collect()
}

/// Opens a `/hold` connection and returns it with the worker that holds it.
fn hold(addr: std::net::SocketAddr) -> (TcpStream, i32) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"holding\n") {
        assert_ne!(stream.read(&mut byte).unwrap(), 0, "closed while holding");
        seen.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let worker = field(text.lines().last().unwrap(), "worker");
    (stream, worker)
}

#[test]
fn a_burst_spreads_one_connection_per_worker_and_the_counts_come_back_to_zero() {
    let (mut c, addr) = start(&["--workers", "3"], &[]);
    c.wait_ready(3);
    // Three connections at once, none closed: least-connection counts each at pick time.
    let held: Vec<(TcpStream, i32)> = (0..3).map(|_| hold(addr)).collect();
    let mut workers: Vec<i32> = held.iter().map(|h| h.1).collect();
    workers.sort();
    assert_eq!(workers, [0, 1, 2], "one per worker");
    c.wait_status("one connection each", |s| connections(s) == [1, 1, 1]);
    drop(held);
    c.wait_status("counts back to zero", |s| connections(s) == [0, 0, 0]);
    // Ties rotate: six requests one after another, two per worker. Each close is counted before
    // the next request: the client has its answer before the worker's close report is heard, and
    // a routing that waits for nothing can pick before that report (it did under load).
    let mut per = [0; 3];
    for _ in 0..6 {
        per[get(addr, "/").worker() as usize] += 1;
        c.wait_status("the close counted", |s| connections(s) == [0, 0, 0]);
    }
    assert_eq!(per, [2, 2, 2]);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn round_robin_cycles_and_the_client_address_reaches_the_worker() {
    let (mut c, addr) = start(&["--workers", "3", "--balance", "round-robin"], &[]);
    c.wait_ready(3);
    let order: Vec<i32> = (0..6).map(|_| get(addr, "/").worker()).collect();
    assert_eq!(&order[..3], &order[3..], "a cycle repeats: {order:?}");
    let mut first: Vec<i32> = order[..3].to_vec();
    first.sort();
    assert_eq!(first, [0, 1, 2]);
    let response = get(addr, "/who?x=1");
    assert!(response.body.contains("peer=127.0.0.1:"), "{}", response.body);
    assert!(response.body.contains("line=GET /who?x=1 HTTP/1.1"), "{}", response.body);
}

#[test]
fn with_no_ready_worker_http_gets_503_at_once_and_other_protocols_a_close() {
    let (mut c, addr) = start(&["--workers", "1"], &["--never-ready"]);
    c.wait_status("worker started", |s| s["workers"][0]["pid"].is_number());
    let started = Instant::now();
    let response = get(addr, "/");
    assert_eq!(response.code, 503);
    assert!(started.elapsed() < Duration::from_secs(2), "503 comes at once");
    let mut tls = TcpStream::connect(addr).unwrap();
    tls.set_read_timeout(Some(TIMEOUT)).unwrap();
    tls.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(tls.read(&mut buf).unwrap(), 0, "a non-HTTP client is closed");
}

#[test]
fn slow_silent_garbage_and_oversized_clients_never_hold_up_the_others() {
    let (mut c, addr) = start(&["--workers", "2", "--sniff-timeout", "400ms", "--sniff-bytes", "1024"], &[]);
    c.wait_ready(2);
    let silent = TcpStream::connect(addr).unwrap();
    let mut drip = TcpStream::connect(addr).unwrap();
    drip.set_read_timeout(Some(TIMEOUT)).unwrap();
    drip.write_all(b"GE").unwrap();
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x00]).unwrap();
    let mut long = TcpStream::connect(addr).unwrap();
    long.set_read_timeout(Some(TIMEOUT)).unwrap();
    long.write_all(format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2000)).as_bytes()).unwrap();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get(addr, "/").code, 200);
        assert!(started.elapsed() < Duration::from_secs(2), "served while hostile clients wait");
    }
    assert_eq!(read_response(&mut long).map(|r| r.code), Some(414), "an over-long request line");
    assert_eq!(read_response(&mut drip).map(|r| r.code), Some(408), "a request line not finished in time");
    drop((silent, garbage));
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn a_session_sticks_to_its_owner_and_moves_when_the_owner_dies() {
    let (mut c, addr) = start(&["--workers", "3"], &[]);
    let status = c.wait_ready(3);
    let sid = "CucdsEyTiqO-9vwA";
    let opened = get(addr, &format!("/open?sid={sid}"));
    assert!(opened.body.contains(&format!("opened {sid}")), "{}", opened.body);
    let owner = opened.worker();
    let status_after = c.wait_status("the session known", |s| s["sessions"] == 1);
    assert_eq!(worker(&status_after, owner as u64)["sessions"], 1);
    for _ in 0..30 {
        assert_eq!(get(addr, &format!("/poll?EIO=4&transport=polling&sid={sid}")).worker(), owner);
    }
    // An unknown sid is balanced like no sid.
    let others: std::collections::HashSet<i32> =
        (0..6).map(|_| get(addr, "/?sid=unknown0000000000").worker()).collect();
    assert!(others.len() > 1, "unknown sids are balanced: {others:?}");

    let pid = worker_pid(&status, owner as u64);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    c.wait_status("the owner replaced and its session dropped", |s| {
        s["sessions"] == 0 && worker(s, owner as u64)["state"] == "ready" && worker_pid(s, owner as u64) != pid
    });
    let moved = get(addr, &format!("/poll?sid={sid}"));
    assert_eq!(moved.code, 200, "the session's next request reaches a live worker");

    let closed = get(addr, "/open?sid=second00000000000001");
    let w = closed.worker();
    get(addr, "/close?sid=second00000000000001");
    c.wait_status("session closed", |s| worker(s, w as u64)["sessions"] == 0);
}

#[test]
fn sticky_ip_keeps_a_client_on_one_worker() {
    let (mut c, addr) = start(&["--workers", "3", "--sticky", "ip"], &[]);
    c.wait_ready(3);
    let first = get(addr, "/").worker();
    for _ in 0..10 {
        assert_eq!(get(addr, "/").worker(), first);
    }
}

#[test]
fn the_worker_reads_exactly_the_bytes_the_client_sent() {
    let (mut c, addr) = start(&["--workers", "2"], &[]);
    c.wait_ready(2);
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26).collect();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The request line arrives in pieces: clusterd reads what it needs, the worker gets all of it.
    stream.write_all(b"POST /echo HT").unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20)); // a real client pausing mid-line, not a synchronisation
    stream.write_all(format!("TP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let response = read_response(&mut stream).unwrap();
    let echoed = response.body.split_once(" echo ").unwrap().1;
    assert_eq!(echoed.len(), body.len());
    assert!(echoed.as_bytes() == body.as_slice(), "byte for byte");
    // Keep-alive: the next request on the same connection goes to the same worker, not via clusterd.
    stream.write_all(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let again = read_response(&mut stream).unwrap();
    assert_eq!(again.worker(), response.worker());
}

#[test]
fn clusterd_keeps_no_fd_of_a_handed_off_connection() {
    let (mut c, addr) = start(&["--workers", "2"], &[]);
    c.wait_ready(2);
    get(addr, "/");
    let baseline = fd_count(c.pid());
    for _ in 0..200 {
        assert_eq!(get(addr, "/").code, 200);
    }
    let held: Vec<(TcpStream, i32)> = (0..10).map(|_| hold(addr)).collect();
    // (A control connection of the status polling may still be closing at the baseline: the
    // count may be lower, never higher.)
    assert!(fd_count(c.pid()) <= baseline, "held connections live in the workers only");
    // A worker dies holding connections: its clients see the close, clusterd's fds stay put.
    let status = c.status().unwrap();
    let victim = held[0].1;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker_pid(&status, victim as u64)), Signal::SIGKILL).unwrap();
    for (mut stream, w) in held {
        if w == victim {
            let mut buf = [0u8; 16];
            assert_eq!(stream.read(&mut buf).unwrap_or(0), 0, "the client sees the close");
        }
    }
    c.wait_ready(2);
    wait_until("clusterd's fds back to the baseline", || (fd_count(c.pid()) <= baseline).then_some(()));
}

#[test]
fn a_unix_socket_listener_serves_and_is_removed_on_exit() {
    let b = Builder::new();
    let path = b.dir().join("app.sock");
    let mut c =
        b.args(&["--workers", "2", "--listen", &format!("unix:{}", path.display())]).worker_args(&["--serve"]).start();
    c.wait_ready(2);
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"GET /over-unix HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let response = read_response(&mut stream).unwrap();
    assert_eq!(response.code, 200);
    assert!(response.body.contains("line=GET /over-unix"), "{}", response.body);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[test]
fn a_bind_error_exits_1_with_the_address_and_the_reason_before_any_worker_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = Builder::new().args(&["--workers", "2", "--listen", &addr]).worker_args(&["--serve"]).start();
    assert_eq!(c.wait_exit().code(), Some(1));
    let err = c.output.wait_contains("cannot listen on");
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
    assert!(!c.output.contains("[w0]"), "no worker started");
}

#[test]
fn systemd_socket_activation_serves_the_passed_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("c.sock");
    let raw = listener.as_raw_fd();
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec \"$0\" \"$@\""])
        .arg(CLUSTERD)
        .args(["--workers", "2", "--control"])
        .arg(&control)
        .args(["--", WORKER, "--serve"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it puts the listening socket on fd 3, as systemd does.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let ok = if raw == 3 { libc::fcntl(3, libc::F_SETFD, 0) == 0 } else { libc::dup2(raw, 3) >= 0 };
            if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    let mut child = command.spawn().unwrap();
    drop(listener);
    let status = wait_until("clusterd ready on the passed socket", || {
        control_request(&control, r#"{"command":"status"}"#)
            .and_then(|r| r.get("status").cloned())
            .filter(|s| s["phase"] == "ready")
    });
    assert_eq!(status["listen"][0], addr.to_string());
    assert_eq!(get(addr, "/").code, 200);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let exit = wait_until("clusterd to exit", || child.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn workers_that_ask_clusterd_to_listen_share_one_socket_balanced_over_them() {
    // No --listen: the program chooses its port, as `clusterd -- ./my-server` is meant to work.
    let mut c = Cluster::start(&["--workers", "2"], &["--serve", "--listen-self", "127.0.0.1:0"]);
    let status = c.wait_ready(2);
    let first = c.output.wait_contains("[w0] listening on 127.0.0.1:");
    let second = c.output.wait_contains("[w1] listening on 127.0.0.1:");
    let addr: std::net::SocketAddr = first.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(
        second.rsplit(' ').next().unwrap(),
        addr.to_string(),
        "both workers share one socket (port 0 resolved once)"
    );
    assert_eq!(status["listen"][0], addr.to_string());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(get(addr, "/").worker());
    }
    assert_eq!(seen.len(), 2, "balanced over both workers");

    // A restarted worker asks again and is served again; the socket stayed bound meanwhile.
    let pid = worker_pid(&status, 0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    c.wait_status("slot 0 back", |s| worker(s, 0)["state"] == "ready" && worker_pid(s, 0) != pid);
    let mut seen = std::collections::HashSet::new();
    wait_until("both workers served again", || {
        seen.insert(get(addr, "/").worker());
        (seen.len() == 2).then_some(())
    });

    // A worker asking for an address clusterd cannot bind gets the reason.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let mut c2 = Cluster::start(&["--workers", "1"], &["--serve", "--listen-self", &taken_addr]);
    c2.wait_ready(1);
    let failed = c2.output.wait_contains("[w0] listen failed:");
    assert!(failed.contains(&taken_addr) && failed.contains("in use"), "{failed}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn running_out_of_fds_backs_off_and_never_ends_the_accept_loop() {
    // clusterd may hold only a few fds: slow clients in the routing phase use them all, accept
    // fails with EMFILE, and clusterd keeps going; once the silent ones are routed (the sniff
    // timeout: 408), a normal client is served.
    let mut c = Builder::new()
        .under(&["prlimit", "--nofile=40:40"])
        .args(&["--workers", "1", "--listen", "127.0.0.1:0", "--sniff-timeout", "1s"])
        .worker_args(&["--serve"])
        .start();
    let status = c.wait_ready(1);
    let addr = listen_addr(&status);
    // Each sends a partial request line, so it is accepted at once (TCP_DEFER_ACCEPT) and then
    // held in the routing phase until the sniff timeout.
    let silent: Vec<TcpStream> = (0..60)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GE").unwrap();
            s
        })
        .collect();
    c.output.wait_contains("accept failed; retrying in");
    wait_until("a normal client served after the exhaustion", || {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
        read_response(&mut stream).filter(|r| r.code == 200)
    });
    drop(silent);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn a_program_without_the_sdk_gets_no_connections_and_clients_hear_503() {
    // `--ready-on spawn` supervises it, but it cannot receive sockets: it never greeted clusterd.
    let mut c = Builder::new()
        .args(&["--workers", "1", "--ready-on", "spawn", "--listen", "127.0.0.1:0"])
        .program(&["sleep", "1000"])
        .start();
    let status = c.wait_ready(1);
    let started = std::time::Instant::now();
    assert_eq!(get(listen_addr(&status), "/").code, 503);
    assert!(started.elapsed() < Duration::from_secs(2), "at once, not after handoff timeouts");
    // Issue 15, item 4: `status` says why, once the workers had their time to greet.
    let status = c.wait_status("the 503 explained", |s| s["problems"].as_array().is_some_and(|p| !p.is_empty()));
    let problem = status["problems"][0].as_str().unwrap();
    assert!(
        problem.starts_with("connections on the listening sockets get 503: the ready workers do not speak"),
        "{problem}"
    );
    // And the log said it at the first sign, a few seconds after the start.
    let said = c.output.wait_contains("it cannot be handed connections");
    assert!(
        said.contains("get 503; a program without the SDK serves the port it binds itself (run it without --listen)"),
        "{said}"
    );
}

/// An SDK worker that asks for the port of a `--listen` address (all interfaces, as a server's
/// own configuration often says) already gets that listener's connections: its listen is granted
/// with the `--listen` address, not refused as a second bind of the port.
#[test]
fn a_worker_listen_on_the_listen_port_joins_the_listen_socket() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = Cluster::start(
        &["--workers", "1", "--listen", &format!("127.0.0.1:{port}")],
        &["--serve", "--listen-self", &format!("0.0.0.0:{port}")],
    );
    c.wait_ready(1);
    c.output.wait_contains(&format!("listening on 127.0.0.1:{port}"));
    assert_eq!(get(format!("127.0.0.1:{port}").parse().unwrap(), "/").code, 200);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}

#[test]
fn the_worker_hears_the_address_each_client_connected_to() {
    // The native `Connection` frame carries the local address: the listener's own when it names
    // one (no system call per connection), the socket's own behind a wildcard.
    let b = Builder::new();
    let path = b.dir().join("app.sock");
    let unix = format!("unix:{}", path.display());
    let mut c = b
        .args(&["--workers", "1", "--listen", "127.0.0.1:0", "--listen", "0.0.0.0:0", "--listen", &unix])
        .worker_args(&["--serve"])
        .start();
    c.wait_ready(1);
    let status = c.wait_status("three listeners", |s| s["listen"].as_array().is_some_and(|l| l.len() == 3));
    let listen: Vec<String> =
        status["listen"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    let port = |prefix: &str| -> u16 {
        let addr = listen.iter().find(|a| a.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in {listen:?}"));
        addr.rsplit(':').next().unwrap().parse().unwrap()
    };
    for port in [port("127.0.0.1:"), port("0.0.0.0:")] {
        let response = get(([127, 0, 0, 1], port).into(), "/local");
        assert!(response.body.contains(&format!("local=127.0.0.1:{port} ")), "{}", response.body);
    }
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"GET /local HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let response = read_response(&mut stream).unwrap();
    assert!(response.body.contains(&format!("local={unix} ")), "{}", response.body);
}

#[test]
fn a_burst_larger_than_one_accept_batch_is_served_whole() {
    // Connections waiting at once are accepted in bounded batches; every one is served, whether
    // its request arrived with the connection or after it.
    let (mut c, addr) = start(&["--workers", "2"], &[]);
    c.wait_ready(2);
    let clients: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                let request = format!("GET /burst-{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                if i % 2 == 0 {
                    stream.write_all(request.as_bytes()).unwrap();
                } else {
                    // A request line in two pieces: the second after clusterd has the connection.
                    let (head, tail) = request.as_bytes().split_at(7);
                    stream.write_all(head).unwrap();
                    std::thread::yield_now();
                    stream.write_all(tail).unwrap();
                }
                let response = read_response(&mut stream).unwrap();
                assert_eq!(response.code, 200, "{}", response.body);
                assert!(response.body.contains(&format!("line=GET /burst-{i} HTTP/1.1")), "{}", response.body);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("every client of the burst is answered");
    }
}
