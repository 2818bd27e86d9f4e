//! Operations: the PROXY protocol on a listener (real sockets, the real test worker echoing the
//! peer address it was given), the timestamps of clusterd's own log lines, and the live view
//! `clusterd status --watch` read through a pipe.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use support::*;

fn start_proxied(extra: &[&str]) -> (Cluster, SocketAddr) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--proxy-protocol"];
    args.extend_from_slice(extra);
    let mut c = Cluster::start(&args, &["--serve"]);
    let status = c.wait_status("listening", |s| s["listen"].as_array().is_some_and(|l| !l.is_empty()));
    let addr = listen_addr(&status);
    (c, addr)
}

/// Sends `header` then a `GET` (in one write, or in pieces when `pieces` is more than 1) and
/// reads the answer.
fn get_behind(addr: SocketAddr, header: &[u8], pieces: usize) -> Response {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let size = bytes.len().div_ceil(pieces);
    for piece in bytes.chunks(size) {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
    }
    read_response(&mut stream).unwrap_or_else(|| panic!("no response behind header {header:?}"))
}

fn v1(ip: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {ip} 127.0.0.1 {port} 443\r\n").into_bytes()
}

fn v2_tcp4(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&ip);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// The `peer=` the test worker saw.
fn peer(response: &Response) -> String {
    response.body.split_whitespace().find_map(|t| t.strip_prefix("peer=")).expect("peer=").to_owned()
}

/// Two claimed clients on two workers (round-robin gives the second new IP the other worker),
/// each always on its own, and each worker sees the claimed address: with `--sticky ip` on the
/// socket's address, every connection (all from 127.0.0.1) would land on one worker.
fn sticky_ip_follows_the_claimed_client(header: impl Fn(u8, u16) -> Vec<u8>) {
    let (mut c, addr) = start_proxied(&["--workers", "2", "--sticky", "ip", "--balance", "round-robin"]);
    c.wait_ready(2);
    let first = get_behind(addr, &header(1, 40001), 1);
    let second = get_behind(addr, &header(2, 40002), 1);
    assert_eq!(first.code, 200, "{}", first.body);
    assert_ne!(first.worker(), second.worker(), "two new client IPs, round-robin: two workers");
    assert_eq!(peer(&first), "192.0.2.1:40001");
    assert_eq!(peer(&second), "192.0.2.2:40002");
    for round in 0..5 {
        let port = 41000 + round;
        let again = get_behind(addr, &header(1, port), 1);
        assert_eq!(again.worker(), first.worker(), "192.0.2.1 stays on its worker");
        assert_eq!(peer(&again), format!("192.0.2.1:{port}"));
        assert_eq!(get_behind(addr, &header(2, port), 1).worker(), second.worker(), "192.0.2.2 too");
    }
    assert_eq!(c.status().unwrap()["proxy_refused"], 0);
}

#[test]
fn proxy_v1_with_sticky_ip() {
    sticky_ip_follows_the_claimed_client(|n, port| v1(&format!("192.0.2.{n}"), port));
}

#[test]
fn proxy_v2_with_sticky_ip() {
    sticky_ip_follows_the_claimed_client(|n, port| v2_tcp4([192, 0, 2, n], port));
}

#[test]
fn proxy_header_split_across_writes() {
    let (mut c, addr) = start_proxied(&["--workers", "1"]);
    c.wait_ready(1);
    for pieces in [2, 5, 40] {
        let response = get_behind(addr, &v1("198.51.100.9", 5555), pieces);
        assert_eq!(peer(&response), "198.51.100.9:5555", "v1 in {pieces} writes");
        let response = get_behind(addr, &v2_tcp4([203, 0, 113, 4], 6666), pieces);
        assert_eq!(peer(&response), "203.0.113.4:6666", "v2 in {pieces} writes");
    }
    // The balancer's own connection (v2 LOCAL, a health check): the socket's address stands.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let response = get_behind(addr, local, 1);
    assert!(peer(&response).starts_with("127.0.0.1:"), "{}", response.body);
    assert_eq!(c.status().unwrap()["proxy_refused"], 0);
}

/// Reads until the server closes; what it sent.
fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("no close within {TIMEOUT:?}: {e}"),
        }
    }
}

#[test]
fn proxy_garbage_or_a_missing_header_is_closed_and_counted() {
    let (mut c, addr) = start_proxied(&["--workers", "2", "--sniff-timeout", "300ms"]);
    c.wait_ready(2);
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",        // a client that skipped the balancer
        b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",   // a bad address
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04abcd", // v2 too short for its addresses
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03", // TLS
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(bytes).unwrap();
        assert!(until_closed(&mut stream).is_empty(), "case {i}: closed without an answer");
        c.wait_status(&format!("{} refusals counted", i + 1), |s| s["proxy_refused"] == i as u64 + 1);
    }
    // Half a header, then silence: closed at --sniff-timeout.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    slow.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    assert!(until_closed(&mut slow).is_empty());
    let status = c.wait_status("5 refusals", |s| s["proxy_refused"] == 5);
    let handed: u64 = status["workers"].as_array().unwrap().iter().map(|w| w["handed_off"].as_u64().unwrap()).sum();
    assert_eq!(handed, 0, "no refused connection reached a worker");
    c.output.wait_contains("PROXY protocol: closed a connection: no PROXY protocol header");
    // The listener still serves a proper one.
    assert_eq!(get_behind(addr, &v1("192.0.2.50", 1234), 1).code, 200);
}

#[test]
fn proxy_protocol_in_the_config_file_names_its_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lb.sock");
    let config = dir.path().join("c.toml");
    let listen = format!("unix:{}", sock.display());
    std::fs::write(
        &config,
        format!("listen = [\"127.0.0.1:0\", \"{listen}\"]\nproxy_protocol = [\"{listen}\"]\nworkers = 1\n"),
    )
    .unwrap();
    let mut c = Cluster::start(&["--config", config.to_str().unwrap()], &["--serve"]);
    let status = c.wait_ready(1);
    let tcp = listen_addr(&status);
    // The TCP listener takes plain clients; the Unix one wants the header and reports its client.
    assert!(peer(&get(tcp, "/")).starts_with("127.0.0.1:"));
    let mut unix = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    unix.set_read_timeout(Some(TIMEOUT)).unwrap();
    unix.write_all(&v1("192.0.2.77", 7777)).unwrap();
    unix.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(peer(&read_response(&mut unix).unwrap()), "192.0.2.77:7777");

    // An entry that is not a listen address is a configuration error (exit 2).
    std::fs::write(&config, "listen = [\"127.0.0.1:0\"]\nproxy_protocol = [\"127.0.0.1:9\"]\n").unwrap();
    let out = Command::new(CLUSTERD).args(["--config", config.to_str().unwrap(), "--", WORKER]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("key `proxy_protocol`") && stderr.contains("not one of the `listen` addresses"),
        "{stderr}"
    );

    // A malformed flag or variable: exit 2, naming it.
    let flag = Command::new(CLUSTERD).args(["--proxy-protocol=maybe", "--", WORKER]).output().unwrap();
    assert_eq!(flag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&flag.stderr).contains("--proxy-protocol"));
    let env = Command::new(CLUSTERD).env("CLUSTERD_PROXY_PROTOCOL", "yes").args(["--", WORKER]).output().unwrap();
    assert_eq!(env.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&env.stderr).contains("CLUSTERD_PROXY_PROTOCOL"), "{env:?}");
}

/// An RFC 3339 UTC timestamp at the start of `line` (`2026-12-03T09:02:55.123456Z `).
fn starts_with_timestamp(line: &str) -> bool {
    let Some((stamp, _)) = line.split_once(' ') else { return false };
    let b = stamp.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && stamp.ends_with('Z')
}

/// Starts clusterd with its stderr on a pipe of our own, so that its device and inode are known;
/// returns the first log line (`starting ...`) and clusterd.
fn first_log_line(args: &[&str], journal: bool) -> String {
    let (read, write) = nix::unistd::pipe().unwrap();
    let stat = nix::sys::stat::fstat(&write).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(CLUSTERD);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--control")
        .arg(dir.path().join("c.sock"))
        .args(["--workers", "1"])
        .args(args)
        .args(["--", WORKER])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(write));
    if journal {
        command.env("JOURNAL_STREAM", format!("{}:{}", stat.st_dev, stat.st_ino));
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(std::fs::File::from(read)).lines();
    let line = lines.next().expect("a log line").unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn log_lines_carry_a_timestamp_unless_the_journal_adds_one() {
    let piped = first_log_line(&[], false);
    assert!(starts_with_timestamp(&piped), "a pipe: timestamped: {piped:?}");
    let journal = first_log_line(&[], true);
    assert!(!starts_with_timestamp(&journal) && journal.contains("INFO"), "the journal stamps it: {journal:?}");
    let forced = first_log_line(&["--log-timestamps", "always"], true);
    assert!(starts_with_timestamp(&forced), "always: {forced:?}");
    let never = first_log_line(&["--log-timestamps", "never"], false);
    assert!(!starts_with_timestamp(&never) && never.contains("INFO"), "never: {never:?}");
    for timestamps in ["never", "auto"] {
        let json = first_log_line(&["--log-format", "json", "--log-timestamps", timestamps], true);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let stamp = value["timestamp"].as_str().unwrap_or_else(|| panic!("JSON always has one: {json}"));
        assert!(starts_with_timestamp(&format!("{stamp} ")), "{stamp}");
    }
    let bad = Command::new(CLUSTERD).args(["--log-timestamps", "sometimes", "--", WORKER]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--log-timestamps"));
}

#[test]
fn status_watch_through_a_pipe_ends_when_clusterd_stops() {
    let (mut c, addr) = {
        let mut c = Cluster::start(&["--listen", "127.0.0.1:0", "--workers", "2"], &["--serve"]);
        let status = c.wait_ready(2);
        let addr = listen_addr(&status);
        (c, addr)
    };
    let (mut watch, mut lines) = status_watch(&c, &["200ms"]);
    let mut next_frame = || {
        let mut frame = Vec::new();
        loop {
            let line = lines.next().expect("a frame line").unwrap();
            if line.is_empty() {
                return frame;
            }
            frame.push(line);
        }
    };
    let check = |frame: &[String]| {
        assert!(!frame.iter().any(|l| l.contains('\x1b')), "no terminal codes into a pipe: {frame:?}");
        assert!(frame[0].starts_with("clusterd pid ") && frame[0].contains("2/2 workers ready"), "{frame:?}");
        let header: Vec<&str> = frame[1].split_whitespace().collect();
        assert_eq!(header, ["ID", "PID", "STATE", "CONNS", "SESSIONS", "RSS", "RESTARTS", "REQ/S"]);
        let rows: Vec<&String> =
            frame.iter().filter(|l| l.split_whitespace().next().is_some_and(|t| t.parse::<u32>().is_ok())).collect();
        assert_eq!(rows.len(), 2, "{frame:?}");
        for row in rows {
            let rss = row.split_whitespace().nth(5).unwrap();
            assert!(rss.ends_with('M') || rss.ends_with('K'), "the group's RSS: {row}");
        }
    };
    let first = next_frame();
    check(&first);
    assert!(first[2].ends_with(" -"), "no rate in the first frame: {first:?}");
    for _ in 0..10 {
        assert_eq!(get(addr, "/").code, 200);
    }
    // The requests show as a rate in a later frame (each frame is one interval).
    let mut seen = Vec::new();
    loop {
        let frame = next_frame();
        check(&frame);
        let total = frame.iter().find(|l| l.starts_with("total: ")).expect("a total line").clone();
        let rate: f64 = total.split_whitespace().rev().nth(1).unwrap().parse().expect("a rate after the first frame");
        if rate > 0.0 {
            break;
        }
        seen.push(total);
        assert!(seen.len() < 50, "10 requests never showed as a rate: {seen:?}");
    }

    c.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
    // The watch ends by itself: it drains its pipe, then exits 1 with a clear line.
    for line in lines.by_ref() {
        line.unwrap();
    }
    let status = wait_until("the watch to exit", || watch.try_wait().unwrap());
    let mut stderr = String::new();
    watch.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("clusterd: it stopped: its control socket"), "{stderr}");
}

#[test]
fn status_json_reports_handoffs_and_group_rss() {
    let mut c = Cluster::start(&["--listen", "127.0.0.1:0", "--workers", "1"], &["--serve"]);
    let status = c.wait_ready(1);
    let addr = listen_addr(&status);
    for _ in 0..3 {
        get(addr, "/");
    }
    let status = c.wait_status("3 handoffs", |s| worker(s, 0)["handed_off"] == 3);
    let rss = worker(&status, 0)["rss_bytes"].as_u64().expect("rss_bytes");
    let pid = worker_pid(&status, 0);
    let own: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024;
    assert!(rss >= own / 2 && rss < own * 4, "group RSS {rss} near the worker's own {own}");
    let bad = Command::new(CLUSTERD).args(["status", "--watch", "10ms"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// A real HAProxy in front of clusterd, killed on drop.
struct Haproxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two different ports free right now (HAProxy cannot tell which port 0 became).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// HAProxy (installed by `scripts/install-haproxy`) with two TCP frontends in front of
/// `backend`: the first sends PROXY v1 headers, the second v2.
fn haproxy(backend: SocketAddr) -> (Haproxy, SocketAddr, SocketAddr) {
    let program = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("haproxy is missing: run ./scripts/test (it installs it) or scripts/install-haproxy");
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = free_ports();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 256\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    \
             timeout server 30s\nfrontend v1\n    bind 127.0.0.1:{v1}\n    default_backend v1\nbackend v1\n    \
             server clusterd {backend} send-proxy\nfrontend v2\n    bind 127.0.0.1:{v2}\n    default_backend v2\n\
             backend v2\n    server clusterd {backend} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let child = Command::new(program)
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut proxy = Haproxy { child, _dir: dir };
    let front = |port| SocketAddr::from(([127, 0, 0, 1], port));
    wait_until("haproxy to listen on both frontends", || {
        assert!(proxy.child.try_wait().unwrap().is_none(), "haproxy exited; check its config");
        (TcpStream::connect(front(v1)).is_ok() && TcpStream::connect(front(v2)).is_ok()).then_some(())
    });
    (proxy, front(v1), front(v2))
}

/// A `GET` through `front` from the source address `from` (any 127.0.0.0/8 address works on
/// Linux loopback): the answer, and the client's own address.
fn get_from(front: SocketAddr, from: [u8; 4]) -> (Response, SocketAddr) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(from[0], from[1], from[2], from[3], 0)).unwrap();
    let SocketAddr::V4(to) = front else { unreachable!() };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).unwrap();
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let me = stream.local_addr().unwrap();
    stream.write_all(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    (read_response(&mut stream).expect("an answer through haproxy"), me)
}

/// The real balancer as the oracle: HAProxy's `send-proxy` and `send-proxy-v2` headers, clients
/// on two loopback addresses, `--sticky ip`.
#[test]
fn behind_a_real_haproxy_v1_and_v2() {
    let (mut c, addr) = start_proxied(&["--workers", "2", "--sticky", "ip", "--balance", "round-robin"]);
    c.wait_ready(2);
    let (_haproxy, v1, v2) = haproxy(addr);
    let refused_before = c.status().unwrap()["proxy_refused"].clone();
    // The second front finds both IPs in the sticky table: they stay where the first put them.
    for front in [v1, v2] {
        let (first, me) = get_from(front, [127, 0, 0, 2]);
        assert_eq!(first.code, 200, "{}", first.body);
        assert_eq!(peer(&first), me.to_string(), "the worker sees the client, not haproxy");
        let (second, me) = get_from(front, [127, 0, 0, 3]);
        assert_eq!(peer(&second), me.to_string());
        assert_ne!(first.worker(), second.worker(), "two client IPs: round-robin gives them two workers");
        for _ in 0..3 {
            assert_eq!(get_from(front, [127, 0, 0, 2]).0.worker(), first.worker(), "127.0.0.2 stays");
            assert_eq!(get_from(front, [127, 0, 0, 3]).0.worker(), second.worker(), "127.0.0.3 stays");
        }
    }
    // (haproxy's readiness probes may have been refused: they close before any byte.)
    assert_eq!(c.status().unwrap()["proxy_refused"], refused_before, "haproxy's headers are all valid");
}

#[test]
fn status_watch_ends_with_0_on_ctrl_c() {
    let mut c = Cluster::start(&["--workers", "1"], &[]);
    c.wait_ready(1);
    let (mut watch, mut lines) = status_watch(&c, &["--json"]);
    let first: serde_json::Value = serde_json::from_str(&lines.next().expect("a JSON line").unwrap()).unwrap();
    assert_eq!(first["workers"][0]["state"], "ready", "{first}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(watch.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = wait_until("the watch to exit on SIGINT", || watch.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    assert!(c.status().is_some(), "clusterd itself goes on");
}

/// On a terminal (a pty from util-linux's `script`), each frame is drawn over the last: cursor
/// home, lines cleared to their end, the rest of the screen cleared; never a full clear.
#[test]
fn status_watch_on_a_terminal_redraws_in_place() {
    let mut c = Cluster::start(&["--workers", "1"], &[]);
    c.wait_ready(1);
    let inner = format!("exec {CLUSTERD} status --watch 100ms --control {}", c.control.display());
    let mut script = Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) runs the watch on a pty");
    let mut out = script.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    // Three frames: three cursor-home sequences.
    while seen.windows(3).filter(|w| w == b"\x1b[H").count() < 3 {
        let n = out.read(&mut chunk).unwrap();
        assert_ne!(n, 0, "the watch ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(!text.contains("\x1b[2J"), "no full clear: {text:?}");
    let frame = text.split("\x1b[H").nth(1).unwrap();
    assert!(frame.starts_with("clusterd pid ") && frame.contains("\x1b[K") && frame.ends_with("\x1b[J"), "{frame:?}");
    let _ = script.kill();
    let _ = script.wait();
}

/// Node workers behind `--proxy-protocol`: the header never reaches them (the request parses),
/// and Node reports the socket's own peer, the balancer (README "Behind a load balancer").
#[test]
fn proxy_protocol_with_node_workers() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/workers/peer-worker.cjs");
    let mut c = Builder::new()
        .args(&["--protocol", "node", "--workers", "2", "--listen", "127.0.0.1:0", "--proxy-protocol"])
        .args(&["--sticky", "ip", "--balance", "round-robin"])
        .program(&["node", script])
        .start();
    let status = c.wait_ready(2);
    let addr = listen_addr(&status);
    let first = get_behind(addr, &v1("192.0.2.1", 1000), 1);
    assert_eq!(first.code, 200, "{}", first.body);
    assert!(peer(&first).starts_with("127.0.0.1:"), "Node sees the balancer: {}", first.body);
    let second = get_behind(addr, &v2_tcp4([192, 0, 2, 2], 2000), 3);
    assert_eq!(second.code, 200, "{}", second.body);
    assert_ne!(first.worker(), second.worker(), "stickiness still follows the header's client");
    assert_eq!(get_behind(addr, &v1("192.0.2.1", 1001), 1).worker(), first.worker());
}

/// `clusterd status --watch ARGS` on `c`'s control socket, and the lines it prints.
fn status_watch(
    c: &Cluster,
    args: &[&str],
) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut watch = Command::new(CLUSTERD)
        .args(["status", "--watch"])
        .args(args)
        .arg("--control")
        .arg(&c.control)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    (watch, lines)
}
