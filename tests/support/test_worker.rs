//! A worker built on the SDK whose behaviour the integration tests choose with flags. It announces
//! itself and each step on stdout, so that tests can wait on its lines.
//!
//! Flags (any order): `--ready-after MS`, `--never-ready`, `--exit-after MS`, `--exit-code N`,
//! `--exit-at-start N` (exit before greeting clusterd), `--ignore-drain`, `--drain-delay MS`,
//! `--orphan MS` (leave a grandchild that outlives this process by MS), `--child` (keep a
//! `sleep` child in the process group), `--flood BYTES` (write that much stdout without a
//! newline, after ready), `--freeze` (block the runtime right after ready), `--garbage` / `--oversized` / `--skip-hello` (break the protocol on fd 3), `--no-sdk` (never touch
//! the IPC socket), `--serve` (answer HTTP on handed-off connections, see `serve`),
//! bus: `--bus-sub CH` (print every message of CH), `--bus-tally CH` (print each message's sender and
//! length only), `--bus-stuck CH` (subscribe, never read),
//! `--bus-pub CH N` (publish N numbered messages once `--bus-wait W` workers subscribe to CH),
//! `--bus-big BYTES` (then a payload of that size, `--bus-big-times N` times), `--bus-flood TOTAL SIZES` (then
//! payloads of the comma-separated SIZES in turn until TOTAL bytes went out), `--bus-send ID` (send to a worker; prints
//! direct messages and events), `--bus-answer` (answer requests; `--bus-answer-bytes N`: with N bytes), `--bus-ignore-requests` (take
//! them, print, never answer), `--bus-ask` (ask the others
//! once `--bus-wait` workers subscribe, print the answers), `--bus-sub-many PREFIX N`,
//! `--bus-long-name N`, `--bus-raw-subscribe N`, `--bus-ask-many CH N TIMEOUT_MS` (the bus's
//! bounds: see `test_worker_bus_limits.rs`), `--alloc MIB` (after ready, allocate
//! and touch that many MiB, and keep them), `--log-requests` (print each request line served),
//! `--starts-file PATH --fail-starts-after N` (count starts of every slot in PATH; exit 4 at start
//! from start N + 1 on), `--listen-self ADDR` (ask clusterd to listen on ADDR for this worker), `--fill-fds` (after ready, open files until the fd limit: no passed fd can be received), `--bad-handback` (give back a connection with a fd that is not a socket), `--handback-repeat N` (give the first connection back N times, then answer `200 ok` to every later one), `--capacity-toggles N` (say full, then room again, N times each), `--session-flood-in G N` (in generation G: announce N sessions, then never read fd 3 and ignore SIGTERM), `--fail-generation G` (exit 4 at start in generation G), `--burst-generations N` (in generations 1 to N: hold every connection unanswered; at the drain give them all back at once, then exit at once), `--only-slot N` (the flags apply only in slot N; other slots just serve), `--metrics` (register metrics: a counter `app_hits_total` of id + 1, a gauge `process_open_fds`), `--metrics-garbage` (register a text that is not the 0.0.4 format), `--metrics-lines N` (register N series `app_line{n="i"} i`, to make a large text).

use std::io::Write;
use std::time::Duration;

#[path = "test_worker_bus_limits.rs"]
mod bus_limits;

#[derive(Default)]
struct Flags {
    ready_after: u64,
    never_ready: bool,
    exit_after: Option<u64>,
    exit_code: i32,
    exit_at_start: Option<i32>,
    ignore_drain: bool,
    drain_delay: u64,
    orphan: Option<u64>,
    child: bool,
    flood: Option<usize>,
    garbage: bool,
    oversized: bool,
    skip_hello: bool,
    no_sdk: bool,
    fail_generation: Option<u64>,
    burst_generations: u64,
    serve: bool,
    bus_sub: Option<String>,
    bus_tally: Option<String>,
    bus_stuck: Option<String>,
    bus_pub: Option<(String, u64)>,
    bus_big: Option<usize>,
    bus_big_times: u64,
    bus_flood: Option<(u64, Vec<usize>)>,
    bus_wait: u32,
    bus_send: Vec<u32>,
    bus_answer: bool,
    bus_answer_bytes: Option<usize>,
    bus_ignore: bool,
    bus_ask: bool,
    bus_limits: bus_limits::LimitFlags,
    listen_self: Option<String>,
    freeze: bool,
    fill_fds: bool,
    bad_handback: bool,
    handback_repeat: Option<u64>,
    capacity_toggles: Option<u64>,
    session_flood: Option<(u64, u32)>,
    alloc: Option<usize>,
    log_requests: bool,
    starts_file: Option<String>,
    fail_starts_after: Option<u64>,
    metrics: bool,
    metrics_garbage: bool,
    metrics_lines: Option<u64>,
}

fn parse() -> Flags {
    let mut flags = Flags::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let slot: Option<String> = std::env::var("CLUSTERD_WORKER_ID").ok();
    let only = args.iter().position(|a| a == "--only-slot").map(|i| args[i + 1].clone());
    if only.is_some() && only != slot {
        return flags;
    }
    let mut it = args.iter();
    let num =
        |it: &mut std::slice::Iter<'_, String>| -> u64 { it.next().and_then(|v| v.parse().ok()).expect("number") };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--ready-after" => flags.ready_after = num(&mut it),
            "--never-ready" => flags.never_ready = true,
            "--exit-after" => flags.exit_after = Some(num(&mut it)),
            "--exit-code" => flags.exit_code = num(&mut it) as i32,
            "--exit-at-start" => flags.exit_at_start = Some(num(&mut it) as i32),
            "--ignore-drain" => flags.ignore_drain = true,
            "--drain-delay" => flags.drain_delay = num(&mut it),
            "--orphan" => flags.orphan = Some(num(&mut it)),
            "--child" => flags.child = true,
            "--flood" => flags.flood = Some(num(&mut it) as usize),
            "--garbage" => flags.garbage = true,
            "--oversized" => flags.oversized = true,
            "--skip-hello" => flags.skip_hello = true,
            "--no-sdk" => flags.no_sdk = true,
            "--serve" => flags.serve = true,
            "--bus-sub" => flags.bus_sub = it.next().cloned(),
            "--bus-tally" => flags.bus_tally = it.next().cloned(),
            "--bus-stuck" => flags.bus_stuck = it.next().cloned(),
            "--bus-pub" => {
                let channel = it.next().cloned().expect("channel");
                flags.bus_pub = Some((channel, num(&mut it)));
            }
            "--bus-big" => flags.bus_big = Some(num(&mut it) as usize),
            "--bus-big-times" => flags.bus_big_times = num(&mut it),
            "--bus-flood" => {
                let total = num(&mut it);
                let sizes = it.next().expect("sizes").split(',').map(|s| s.parse().expect("size")).collect();
                flags.bus_flood = Some((total, sizes));
            }
            "--bus-wait" => flags.bus_wait = num(&mut it) as u32,
            "--bus-send" => flags.bus_send.push(num(&mut it) as u32),
            "--bus-answer" => flags.bus_answer = true,
            "--bus-answer-bytes" => flags.bus_answer_bytes = Some(num(&mut it) as usize),
            "--bus-ignore-requests" => flags.bus_ignore = true,
            "--bus-ask" => flags.bus_ask = true,
            "--listen-self" => flags.listen_self = it.next().cloned(),
            "--fail-generation" => flags.fail_generation = Some(num(&mut it)),
            "--burst-generations" => flags.burst_generations = num(&mut it),
            "--freeze" => flags.freeze = true,
            "--fill-fds" => flags.fill_fds = true,
            "--bad-handback" => flags.bad_handback = true,
            "--handback-repeat" => flags.handback_repeat = Some(num(&mut it)),
            "--capacity-toggles" => flags.capacity_toggles = Some(num(&mut it)),
            "--session-flood-in" => {
                let generation = num(&mut it);
                flags.session_flood = Some((generation, num(&mut it) as u32));
            }
            "--alloc" => flags.alloc = Some(num(&mut it) as usize),
            "--log-requests" => flags.log_requests = true,
            "--starts-file" => flags.starts_file = it.next().cloned(),
            "--fail-starts-after" => flags.fail_starts_after = Some(num(&mut it)),
            "--metrics" => flags.metrics = true,
            "--metrics-garbage" => flags.metrics_garbage = true,
            "--metrics-lines" => flags.metrics_lines = Some(num(&mut it)),
            "--only-slot" => {
                it.next();
            }
            other if flags.bus_limits.parse(other, &mut it) => {}
            other => panic!("unknown flag {other}"),
        }
    }
    flags
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flags = parse();
    let generation: Option<u64> = std::env::var("CLUSTERD_GENERATION").ok().and_then(|g| g.parse().ok());
    if flags.fail_generation.is_some() && flags.fail_generation == generation {
        say("failing in this generation");
        std::process::exit(4);
    }
    if let (Some(path), Some(allowed)) = (&flags.starts_file, flags.fail_starts_after) {
        // One byte per start, appended atomically: the file's length counts the starts of all slots.
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("starts file");
        file.write_all(b"x").expect("count a start");
        let starts = file.metadata().expect("starts file").len();
        if starts > allowed {
            say(&format!("start {starts} of at most {allowed}: failing"));
            std::process::exit(4);
        }
    }
    if let Some(code) = flags.exit_at_start {
        say(&format!("exit-at-start {code}"));
        std::process::exit(code);
    }
    let id = std::env::var("CLUSTERD_WORKER_ID").unwrap_or_default();
    say(&format!(
        "test-worker id={id} pid={} gen={} count={} notify={} listen_fds={}",
        std::process::id(),
        std::env::var("CLUSTERD_GENERATION").unwrap_or_default(),
        std::env::var("CLUSTERD_WORKER_COUNT").unwrap_or_default(),
        std::env::var_os("NOTIFY_SOCKET").is_some(),
        std::env::var_os("LISTEN_FDS").is_some(),
    ));
    if flags.child {
        // Never waited for on purpose: it must die with the worker's process group.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sleep").arg("1000").spawn().expect("spawn sleep");
        say(&format!("child pid={}", child.id()));
    }
    if let Some(ms) = flags.orphan {
        // sh exits at once; its background sleep is orphaned and reparented to clusterd.
        let script = format!("sleep {} >/dev/null 2>&1 & echo orphan pid=$!", ms as f64 / 1000.0);
        let out = std::process::Command::new("sh").args(["-c", &script]).output().expect("spawn sh");
        say(String::from_utf8_lossy(&out.stdout).trim());
    }
    if flags.no_sdk {
        say("no-sdk: waiting for SIGTERM");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm");
        term.recv().await;
        say("no-sdk: exiting");
        return;
    }
    if flags.garbage || flags.oversized || flags.skip_hello {
        let bytes = match (flags.garbage, flags.oversized) {
            (true, _) => vec![0xff, 0xfe, 0x00, 0x13, 0x37],
            (_, true) => vec![0u8; 70 * 1024],
            // A well-formed Ready frame, but without the Hello that must come first.
            _ => vec![0x01],
        };
        let sent = nix::sys::socket::send(3, &bytes, nix::sys::socket::MsgFlags::MSG_NOSIGNAL);
        say(&format!("sent bad frame: {sent:?}"));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm");
        term.recv().await;
        say("bad worker: got SIGTERM");
        return;
    }
    if flags.bad_handback {
        bad_handback().await;
        return;
    }
    if let Some(times) = flags.capacity_toggles {
        capacity_toggles(times).await;
        return;
    }
    if let Some(times) = flags.handback_repeat {
        handback_repeat(times).await;
        return;
    }
    if let Some((_, sessions)) = flags.session_flood.filter(|&(g, _)| Some(g) == generation) {
        session_flood(sessions).await;
        return;
    }
    if let Some(g) = generation.filter(|&g| (1..=flags.burst_generations).contains(&g)) {
        handback_burst(g).await;
        return;
    }
    let worker = match clusterd_worker::Worker::from_env() {
        Ok(worker) => worker,
        Err(error) => {
            say(&format!("from_env failed: {error}"));
            std::process::exit(3);
        }
    };
    if let Some(addr) = &flags.listen_self {
        match worker.listen(addr).await {
            Ok(bound) => say(&format!("listening on {bound}")),
            Err(error) => say(&format!("listen failed: {error}")),
        }
    }
    if flags.serve {
        let listener = worker.listener().expect("listener");
        tokio::spawn(serve(worker.clone(), listener, flags.log_requests));
    }
    bus_modes(&worker, &flags).await;
    bus_limits::run(&worker, &flags.bus_limits).await;
    if flags.metrics {
        let hits = u64::from(worker.id()) + 1;
        worker.set_metrics(move || {
            format!(
                "# HELP app_hits_total Hits.\n# TYPE app_hits_total counter\napp_hits_total{{kind=\"test\"}} {hits}\n\
                 # HELP process_open_fds Open fds.\n# TYPE process_open_fds gauge\nprocess_open_fds 7\n"
            )
        });
    }
    if let Some(lines) = flags.metrics_lines {
        worker.set_metrics(move || {
            let mut text = String::from("# TYPE app_line gauge\n");
            for n in 0..lines {
                text.push_str(&format!("app_line{{n=\"{n}\"}} {n}\n"));
            }
            text
        });
    }
    if flags.metrics_garbage {
        worker.set_metrics(|| "app_hits_total{kind=\"oops} 1\n".to_owned());
    }
    if !flags.never_ready {
        // A slow start is the behaviour under test here (tests watch the states in between).
        tokio::time::sleep(Duration::from_millis(flags.ready_after)).await;
        worker.ready().await.expect("ready");
        say(&format!("ready id={}", worker.id()));
    }
    if let Some(bytes) = flags.flood {
        // Blocking writes on purpose: a flooding worker that clusterd cannot keep up with waits.
        let mut out = std::io::stdout().lock();
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            let _ = out.write_all(&chunk[..n]);
            left -= n;
        }
        let _ = out.write_all(b"\nflood done\n");
        let _ = out.flush();
    }
    if flags.fill_fds {
        // Every fd the process may have is taken (kept until exit): the next fd clusterd passes
        // cannot be installed.
        let mut held = Vec::new();
        while let Ok(file) = std::fs::File::open("/dev/null") {
            held.push(file);
        }
        say(&format!("fds full held={}", held.len()));
        std::mem::forget(held);
    }
    // Kept until the process ends: the memory clusterd's --max-memory must see.
    let _ballast: Vec<u8> = match flags.alloc {
        Some(mib) => {
            let ballast = vec![1u8; mib << 20];
            say(&format!("allocated {mib} MiB"));
            ballast
        }
        None => Vec::new(),
    };
    if flags.freeze {
        say("freezing");
        // Blocks the only runtime thread: the SDK's heartbeat stops, as in a hung event loop.
        std::thread::sleep(Duration::from_secs(3600));
    }
    let exit_after = async {
        match flags.exit_after {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = exit_after => {
            say(&format!("exiting with {}", flags.exit_code));
            std::process::exit(flags.exit_code);
        }
        () = worker.draining() => {}
    }
    say(&format!("draining grace={:?}", worker.grace()));
    if flags.ignore_drain {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(Duration::from_millis(flags.drain_delay)).await;
    say("drained");
}

/// A small HTTP/1.1 server on handed-off connections, keep-alive included. Every answer starts with
/// `worker=<id> pid=<pid>`. Paths: `/open?sid=S` reports session S (answers after clusterd's ack),
/// `/close?sid=S` ends it, `/nodelay` says whether the socket has TCP_NODELAY, `/hold` answers its head at once and keeps the connection open without
/// a body end until the client leaves, `/echo` answers the request body, `/spin` blocks the
/// runtime's only thread forever (a stuck event loop), `/garbage` answers bytes that are not HTTP
/// and closes, `/half` half a status line and closes, `/unavailable` answers 503; anything else answers the request line.
async fn serve(worker: clusterd_worker::Worker, mut listener: clusterd_worker::Listener, log: bool) {
    while let Some(connection) = listener.accept().await {
        let worker = worker.clone();
        tokio::spawn(async move {
            let _ = handle(worker, connection, log).await;
        });
    }
}

async fn handle(
    worker: clusterd_worker::Worker,
    mut connection: clusterd_worker::Connection,
    log: bool,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let me = format!("worker={} pid={}", worker.id(), std::process::id());
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = connection.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let line = head.lines().next().unwrap_or_default().to_owned();
        let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
        if log {
            say(&format!("request {line}"));
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            let n = connection.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let sid = query.split('&').find_map(|p| p.strip_prefix("sid=")).unwrap_or_default().to_owned();
        let answer: Vec<u8> = match path {
            "/open" => match worker.session_open(&sid).await {
                Ok(()) => format!("{me} opened {sid}\n").into_bytes(),
                Err(e) => format!("{me} open failed: {e}\n").into_bytes(),
            },
            "/close" => {
                worker.session_close(&sid);
                format!("{me} closed {sid}\n").into_bytes()
            }
            "/hold" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n{me} holding\n");
                connection.write_all(head.as_bytes()).await?;
                let mut sink = [0u8; 1024];
                while connection.read(&mut sink).await? > 0 {}
                return Ok(());
            }
            "/nodelay" => format!("{me} nodelay={}\n", connection.nodelay()?).into_bytes(),
            "/spin" => {
                say("spinning");
                // Blocks the only runtime thread: nothing of this worker runs any more.
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            "/half" => {
                // A status line cut short, then the close.
                connection.write_all(b"HTTP/1.1 20").await?;
                return Ok(());
            }
            "/garbage" => {
                connection.write_all(b"garbage, not HTTP\r\n\r\n").await?;
                return Ok(());
            }
            "/unavailable" => {
                let out = format!("HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{me}\n", me.len() + 1);
                connection.write_all(out.as_bytes()).await?;
                continue;
            }
            "/echo" => {
                let mut out = format!("{me} echo ").into_bytes();
                out.extend_from_slice(&body);
                out
            }
            "/local" => format!("{me} local={} \n", connection.local_addr()).into_bytes(),
            _ => format!("{me} peer={} line={line}\n", connection.peer_addr()).into_bytes(),
        };
        // One write per answer: a head and a body in two writes would wait on the client's
        // delayed ACK (Nagle) on every keep-alive request.
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", answer.len()).into_bytes();
        out.extend_from_slice(&answer);
        connection.write_all(&out).await?;
    }
}

/// The IPC channel on fd 3, spoken by hand (no SDK): hello and ready already said.
async fn greeted_channel() -> clusterd_worker::channel::WorkerChannel {
    use clusterd_worker::protocol::FromWorker;
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: fd 3 is the IPC socket clusterd gave this process, and nothing else here claims it.
    let owned = unsafe { OwnedFd::from_raw_fd(3) };
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).expect("nonblocking");
    let socket = tokio_seqpacket::UnixSeqpacket::try_from(owned).expect("register fd 3");
    let channel = clusterd_worker::channel::WorkerChannel::new(socket);
    channel.send(&FromWorker::Hello { version: 1, pid: std::process::id() }).await.expect("hello");
    channel.send(&FromWorker::Ready).await.expect("ready");
    channel
}

/// Speaks the protocol on fd 3 itself, then gives back the first connection it gets with the fd
/// of `/dev/null` in place of the socket: clusterd must refuse it (a protocol violation).
async fn bad_handback() {
    use clusterd_worker::protocol::{FromWorker, Handback, ToWorker};
    use std::os::fd::AsFd;
    let channel = greeted_channel().await;
    say("bad-handback ready");
    loop {
        match channel.recv_with_fd().await {
            Ok(Some((ToWorker::Connection(connection), Some(_socket)))) => {
                let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
                let back =
                    FromWorker::Handback(Handback { id: connection.id, initial: b"GET / HTTP/1.1\r\n".to_vec() });
                let sent = channel.send_with_fd(&back, devnull.as_fd()).await;
                say(&format!("bad-handback sent: {sent:?}"));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Drained or cut off: wait for the end.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm");
    term.recv().await;
}

/// Speaks the protocol on fd 3 itself: gives the first connection it gets back `times` times
/// (the same id and socket each time, nothing read: as if idle), then answers every later
/// connection with `200 ok` and closes it, reporting the close.
async fn handback_repeat(times: u64) {
    use clusterd_worker::protocol::{FromWorker, Handback, ToWorker};
    use std::os::fd::AsFd;
    let channel = greeted_channel().await;
    say("handback-repeat ready");
    let mut first = true;
    loop {
        match channel.recv_with_fd().await {
            Ok(Some((ToWorker::Connection(connection), Some(socket)))) if first => {
                first = false;
                for _ in 0..times {
                    let back = FromWorker::Handback(Handback { id: connection.id, initial: Vec::new() });
                    channel.send_with_fd(&back, socket.as_fd()).await.expect("handback");
                }
                drop(socket);
                say(&format!("handback-repeat gave back id {} {times} times", connection.id));
            }
            Ok(Some((ToWorker::Connection(connection), Some(socket)))) => {
                let mut stream = std::net::TcpStream::from(socket);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                drop(stream);
                let closed = FromWorker::ConnectionsClosed { ids: vec![connection.id] };
                channel.send(&closed).await.expect("closed");
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm");
    term.recv().await;
}

/// Speaks the protocol on fd 3 itself: says it is full, then has room, `times` times each.
async fn capacity_toggles(times: u64) {
    use clusterd_worker::protocol::FromWorker;
    let channel = greeted_channel().await;
    for _ in 0..times {
        for full in [true, false] {
            channel.send(&FromWorker::Capacity { full }).await.expect("capacity");
        }
    }
    say(&format!("capacity toggled {times} times"));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm");
    term.recv().await;
}

/// Speaks the protocol on fd 3 itself: announces `sessions` sessions, then never reads its
/// socket again (clusterd's acks pile up in it) and ignores SIGTERM: only SIGKILL ends it.
async fn session_flood(sessions: u32) {
    use clusterd_worker::protocol::FromWorker;
    let _term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm");
    let channel = greeted_channel().await;
    say("session-flood ready");
    for seq in 0..sessions {
        let open = FromWorker::SessionOpen { seq, sid: format!("flood{seq:07}") };
        channel.send(&open).await.expect("session open");
        if seq + 1 == sessions / 4 {
            // More than clusterd's socket and its command queue hold: the rest may wait.
            say(&format!("session-flood under way {}", seq + 1));
        }
    }
    say(&format!("session-flood sent {sessions}"));
    std::future::pending::<()>().await;
}

/// Speaks the protocol on fd 3 itself: holds every connection it gets, unanswered, and at the
/// drain gives them all back (their requests unread) in frames written back to back, then exits
/// at once, as a draining SDK worker does with its last kept-alive connections.
async fn handback_burst(generation: u64) {
    use clusterd_worker::protocol::{FromWorker, Handback, ToWorker};
    use std::os::fd::AsFd;
    // The drain's SIGTERM must not end the process before the handbacks are written.
    let _term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm");
    let channel = greeted_channel().await;
    say("burst ready");
    let mut held = Vec::new();
    loop {
        match channel.recv_with_fd().await {
            Ok(Some((ToWorker::Connection(connection), Some(socket)))) => {
                held.push((connection.id, connection.initial, socket));
                say(&format!("holding {} in generation {generation}", held.len()));
            }
            Ok(Some((ToWorker::Drain { .. }, _))) | Ok(None) | Err(_) => break,
            Ok(Some(_)) => {}
        }
    }
    for (id, initial, socket) in held {
        let back = FromWorker::Handback(Handback { id, initial });
        channel.send_with_fd(&back, socket.as_fd()).await.expect("handback");
    }
    std::process::exit(0);
}

/// A small checksum of a payload, printed instead of megabytes.
fn checksum(payload: &[u8]) -> u64 {
    payload.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

async fn bus_modes(worker: &clusterd_worker::Worker, flags: &Flags) {
    if flags.bus_sub.is_none()
        && flags.bus_tally.is_none()
        && flags.bus_stuck.is_none()
        && flags.bus_pub.is_none()
        && flags.bus_send.is_empty()
    {
        return;
    }
    if flags.bus_answer || flags.bus_ignore {
        let mut requests = worker.bus().expect("bus").requests().expect("requests");
        let (me, answer, answer_bytes) = (worker.id(), flags.bus_answer, flags.bus_answer_bytes);
        tokio::spawn(async move {
            let mut ignored = Vec::new();
            while let Some(request) = requests.recv().await {
                if answer {
                    let text = format!("answer from {me} to {}", String::from_utf8_lossy(&request.payload));
                    let reply = match answer_bytes {
                        Some(n) => vec![b'a'; n],
                        None => text.into_bytes(),
                    };
                    let _ = request.reply(reply).await;
                } else {
                    say("bus ignoring a request");
                    ignored.push(request);
                }
            }
        });
    }
    let bus = worker.bus().expect("bus");
    let mut events = bus.events().expect("events");
    let mut direct = bus.direct_messages().expect("direct");
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            say(&format!("bus event {event:?}"));
        }
    });
    tokio::spawn(async move {
        while let Some(m) = direct.recv().await {
            say(&format!("bus direct from={} payload={}", m.from, String::from_utf8_lossy(&m.payload)));
        }
    });
    if let Some(channel) = &flags.bus_sub {
        let mut subscription = bus.subscribe(channel).await.expect("subscribe");
        // A round trip through the relay: the subscription is in place before this worker goes on
        // (it may freeze next, with frames still queued).
        bus.subscribers(channel).await.expect("count");
        tokio::spawn(async move {
            while let Some(m) = subscription.next().await {
                if m.payload.len() > 64 {
                    say(&format!("bus big from={} len={} sum={}", m.from, m.payload.len(), checksum(&m.payload)));
                } else {
                    say(&format!("bus got from={} {}", m.from, String::from_utf8_lossy(&m.payload)));
                }
            }
        });
    }
    if let Some(channel) = &flags.bus_tally {
        let mut subscription = bus.subscribe(channel).await.expect("subscribe");
        bus.subscribers(channel).await.expect("count");
        tokio::spawn(async move {
            while let Some(m) = subscription.next().await {
                say(&format!("bus tally from={} len={}", m.from, m.payload.len()));
            }
        });
    }
    if let Some(channel) = &flags.bus_stuck {
        // Subscribed, never read: the SDK's queue fills, then clusterd's for this worker.
        std::mem::forget(bus.subscribe(channel).await.expect("subscribe"));
        say("bus stuck");
    }
    let bus2 = bus.clone();
    let (publish, big, wait, sends) = (flags.bus_pub.clone(), flags.bus_big, flags.bus_wait, flags.bus_send.clone());
    let times = flags.bus_big_times.max(1);
    let flood = flags.bus_flood.clone();
    let ask = flags.bus_ask;
    let wait_channel = publish.as_ref().map(|(c, _)| c.clone()).or_else(|| flags.bus_sub.clone());
    tokio::spawn(async move {
        // Until `wait` workers subscribe to the channel, they have not all joined the bus.
        if let Some(channel) = &wait_channel {
            while bus2.subscribers(channel).await.expect("count") < wait {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for to in sends {
            bus2.send(to, format!("hello from {}", std::env::var("CLUSTERD_WORKER_ID").unwrap_or_default()))
                .await
                .expect("send");
        }
        if ask {
            say("bus asking");
            let started = std::time::Instant::now();
            let answers = bus2.request(b"q".to_vec()).await.expect("request");
            let mut from: Vec<u32> = answers.answers.iter().map(|(id, _)| *id).collect();
            from.sort();
            let mut missing = answers.missing.clone();
            missing.sort();
            say(&format!("bus answers from={from:?} missing={missing:?} ms={}", started.elapsed().as_millis()));
        }
        let Some((channel, count)) = publish else { return };
        for n in 0..count {
            bus2.publish(&channel, format!("n={n}")).await.expect("publish");
        }
        if let Some(size) = big {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            say(&format!("bus sending big len={} sum={}", payload.len(), checksum(&payload)));
            for _ in 0..times {
                bus2.publish(&channel, payload.clone()).await.expect("publish big");
            }
        }
        if let Some((total, sizes)) = flood {
            // One buffer of the largest size; each message is a prefix of it.
            let largest = sizes.iter().copied().max().unwrap_or(0);
            let payload: Vec<u8> = (0..largest).map(|i| (i % 251) as u8).collect();
            let (mut sent, mut messages) = (0u64, 0u64);
            for &size in sizes.iter().cycle() {
                if sent >= total {
                    break;
                }
                bus2.publish(&channel, payload[..size].to_vec()).await.expect("publish flood");
                sent += size as u64;
                messages += 1;
            }
            say(&format!("bus flooded bytes={sent} messages={messages}"));
        }
        say(&format!("bus published {count}"));
    });
}
