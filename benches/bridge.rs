//! Several hosts through Redis (`--bridge`): what crossing hosts costs, against Redis itself and
//! against socketioxide-redis in every worker, and what configuring a bridge costs the local relay.
//!
//! Run it with `cargo build --release --workspace --bins --examples && cargo bench --bench bridge`.
//! It needs `redis-server` and `redis-cli` (scripts/install-redis). Every figure of a round comes
//! from the same run, on one fresh `redis-server` per measurement, all on loopback; two "hosts" are
//! two clusterd processes on this machine.
//!
//! 1. **Latency**: the raw Redis round trip (PUBLISH on one connection → the message on a
//!    subscribed one, [`RAW_SAMPLES`] one after the other), then a chat message from a client of
//!    host A (its worker emits it) to [`LATENCY_CLIENTS`] clients of host B, [`PACED`] broadcasts
//!    at [`PACED_RATE`] per second: p50 / p99 from the send to each receipt (the sender's own
//!    copy, on host A, is one sample in `LATENCY_CLIENTS + 1`).
//! 2. **Throughput**: [`CLIENTS`] clients on each of two hosts of [`WORKERS`] chat workers; one
//!    client per worker sends, [`BURST`] broadcasts with at most [`WINDOW`] in flight; deliveries
//!    per second, Redis connections, and the CPU of Redis and of the hosts (clusterd and workers)
//!    per delivery. Setups: clusterd's bridge (`chat`, the SDK's adapter over the bus, `--bridge`)
//!    against every worker using socketioxide-redis itself (`chat_redis` under clusterd without
//!    a bridge).
//!    The same two phases with Node workers: benches/node/worker.cjs (`@socket.io/cluster-adapter`)
//!    under `clusterd --protocol node --bridge`, against the Node primary (benches/node/primary.cjs,
//!    `cluster` + `@socket.io/sticky`) forking benches/node/redis_worker.cjs
//!    (`@socket.io/redis-adapter` in every worker).
//! 3. **The local relay**: benches/relay.rs's scenario (`relay_worker`, one publisher and two
//!    subscribers on one host, [`RELAY_COUNT`] messages of [`RELAY_SIZE`] bytes) with and without
//!    `--bridge` configured (its channel is not bridged: the cost is the relay's check).
//!
//! [`ROUNDS`] rounds, the setups interleaved; medians.

mod common;

use common::broadcast::{self, Pace, Phase, Shared, broadcast};
use common::redis::Redis;
use common::sio_client::{self, Client};
use common::{Process, Setup};

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
/// Workers per host.
const WORKERS: usize = 2;
/// Clients per host in the throughput phase.
const CLIENTS: usize = 100;
/// Clients of host B in the latency phase.
const LATENCY_CLIENTS: usize = 20;
/// Chat message text, bytes.
const SIZE: usize = 100;
const WARMUP: usize = 200;
const BURST: usize = 2_000;
const WINDOW: usize = 16;
const PACED: usize = 300;
const PACED_RATE: f64 = 100.0;
/// Raw Redis round trips per round.
const RAW_SAMPLES: usize = 2_000;
const RELAY_SIZE: usize = 100;
const RELAY_COUNT: u64 = 200_000;
/// Starting a host, and each wait of the relay runs.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `chat` on two clusterd hosts joined by `--bridge`.
    Bridge,
    /// `chat_redis` (socketioxide-redis in every worker) on two clusterd hosts without a bridge.
    PerWorker,
    /// benches/node/worker.cjs (cluster adapter) under `clusterd --protocol node --bridge`.
    NodeBridge,
    /// The Node primary (primary.cjs: `cluster` + `@socket.io/sticky`) with
    /// benches/node/redis_worker.cjs (`@socket.io/redis-adapter` in every worker).
    NodeRedis,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Bridge => "clusterd --bridge",
            Self::PerWorker => "socketioxide-redis in every worker",
            Self::NodeBridge => "Node workers, clusterd --bridge",
            Self::NodeRedis => "Node primary, @socket.io/redis-adapter in every worker",
        }
    }

    fn bridged(self) -> bool {
        matches!(self, Self::Bridge | Self::NodeBridge)
    }
}

struct Binaries {
    node: PathBuf,
    clusterd: PathBuf,
    chat: PathBuf,
    chat_redis: PathBuf,
    relay_worker: PathBuf,
}

fn main() {
    let dir = common::target_dir();
    let need = |name: &str| {
        common::find_in_path(name).unwrap_or_else(|| {
            eprintln!("error: `{name}` is not in PATH; this bench needs Node.js 20 or later (with npm)");
            std::process::exit(1);
        })
    };
    common::ensure_node_modules(&need("npm"), &["socket.io", "@socket.io/sticky", "@socket.io/redis-adapter", "redis"]);
    let bins = Binaries {
        node: need("node"),
        clusterd: common::binary(&dir, "bridge", "clusterd"),
        chat: common::example(&dir, "chat"),
        chat_redis: common::example(&dir, "chat_redis"),
        relay_worker: common::example(&dir, "relay_worker"),
    };
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut latency: Vec<(Kind, Phase)> = Vec::new();
    let mut throughput: Vec<(Kind, Throughput)> = Vec::new();
    let mut relay: Vec<(bool, f64)> = Vec::new();
    for round in 1..=ROUNDS {
        let (p50, p99) = raw_round_trip();
        eprintln!("round {round}: raw Redis PUBLISH → message p50 {p50:.0} µs, p99 {p99:.0} µs");
        raw.push((p50, p99));
        for kind in [Kind::PerWorker, Kind::Bridge, Kind::NodeRedis, Kind::NodeBridge] {
            let phase = cross_host_latency(&bins, kind);
            eprintln!("round {round} {}: cross-host p50 {} µs, p99 {} µs", kind.label(), phase.p50, phase.p99);
            latency.push((kind, phase));
            let t = cross_host_throughput(&bins, kind);
            eprintln!(
                "round {round} {}: {:.0} deliveries/s, {} Redis connections, Redis CPU {:.2} µs and hosts' CPU {:.2} µs per delivery",
                kind.label(),
                t.phase.rate(),
                t.connections,
                t.redis_cpu_us,
                t.hosts_cpu_us
            );
            throughput.push((kind, t));
        }
        for bridge in [false, true] {
            let rate = local_relay(&bins, bridge);
            eprintln!(
                "round {round} local relay {}: {rate:.0} messages/s",
                if bridge { "with --bridge" } else { "without" }
            );
            relay.push((bridge, rate));
        }
    }
    report(&raw, &latency, &throughput, &relay, started.elapsed());
}

// ---- Raw Redis ------------------------------------------------------------------------------------

/// PUBLISH → message on a subscribed connection, one at a time: (p50, p99) in µs.
fn raw_round_trip() -> (f64, f64) {
    use futures_util::StreamExt;
    let redis = Redis::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime");
    let mut samples = runtime.block_on(async {
        let client = redis::Client::open(redis.url()).expect("a Redis client");
        let mut publisher = client.get_multiplexed_async_connection().await.expect("a Redis connection");
        let mut pubsub = client.get_async_pubsub().await.expect("a Redis subscription");
        pubsub.subscribe("bench:rtt").await.expect("SUBSCRIBE");
        let mut messages = pubsub.into_on_message();
        let mut samples = Vec::with_capacity(RAW_SAMPLES);
        for i in 0..RAW_SAMPLES {
            let start = Instant::now();
            redis::cmd("PUBLISH").arg("bench:rtt").arg(i).query_async::<i64>(&mut publisher).await.expect("PUBLISH");
            tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .expect("the message")
                .expect("a stream");
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
        samples
    });
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.5), at(0.99))
}

// ---- Hosts ----------------------------------------------------------------------------------------

/// A "host" with [`WORKERS`] workers on a fresh port: clusterd, or the Node primary.
struct Host {
    process: Process,
    port: u16,
    socket: PathBuf,
    workers: Vec<i32>,
    _dir: tempfile::TempDir,
}

impl Host {
    fn start(bins: &Binaries, kind: Kind, redis: &Redis) -> Self {
        if kind == Kind::NodeRedis {
            return Self::node_primary(bins, redis);
        }
        let (dir, socket, log) = common::scratch("clusterd-bridge-bench-", "host.log");
        let port = common::free_port();
        let mut args = vec![
            "--workers".to_owned(),
            WORKERS.to_string(),
            "--control".into(),
            socket.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        if kind.bridged() {
            args.extend(["--bridge".into(), redis.url()]);
        }
        match kind {
            Kind::Bridge => args.extend(["--".into(), bins.chat.display().to_string()]),
            Kind::PerWorker => args.extend(["--".into(), bins.chat_redis.display().to_string()]),
            Kind::NodeBridge | Kind::NodeRedis => {
                let worker = common::node_dir().join("worker.cjs");
                args.splice(0..0, ["--protocol".to_owned(), "node".into()]);
                args.extend(["--".into(), bins.node.display().to_string(), worker.display().to_string()]);
            }
        }
        let mut command = Command::new(&bins.clusterd);
        command.args(&args).env("REDIS_URL", format!("{}?protocol=resp3", redis.url()));
        common::log_to(&mut command, &log, "clusterd");
        let child = common::spawn_group(&mut command, |_| false);
        let text = format!("{} {}", bins.clusterd.display(), common::shell_join(&args));
        let mut process = Process::new(Setup::Clusterd.label(), child, log, text, true);
        let status = common::wait_for_status(
            &mut process,
            &socket,
            (START_TIMEOUT, Duration::from_millis(5)),
            "every worker ready",
            |s| s.all_ready(WORKERS),
        );
        Self { process, port, socket, workers: status.pids(), _dir: dir }
    }

    /// `node primary.cjs <port> 2` with BENCH_WORKER=redis_worker.cjs; ready once it listens and
    /// every worker said `ready worker`.
    fn node_primary(bins: &Binaries, redis: &Redis) -> Self {
        let (dir, socket, log) = common::scratch("clusterd-bridge-bench-node-", "primary.log");
        let port = common::free_port();
        let args = vec!["primary.cjs".to_owned(), port.to_string(), WORKERS.to_string()];
        let mut command = Command::new(&bins.node);
        command
            .args(&args)
            .current_dir(common::node_dir())
            .env("BENCH_WORKER", "redis_worker.cjs")
            .env("REDIS_URL", redis.url())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"));
        let mut child = common::spawn_group(&mut command, |name| name.starts_with("NODE_") || name == "DEBUG");
        let lines = common::forward_lines(&mut child, &log);
        let text = format!(
            "(cd {} && BENCH_WORKER=redis_worker.cjs REDIS_URL={} {} {})",
            common::node_dir().display(),
            redis.url(),
            bins.node.display(),
            args.join(" ")
        );
        let mut process = Process::new(Setup::Node.label(), child, log, text, true);
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut listening, mut workers) = (false, Vec::new());
        while !listening || workers.len() < WORKERS {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(" listening on ") => listening = true,
                Ok(line) => {
                    if let Some(pid) = line.strip_prefix("ready worker ").and_then(|r| r.split(" pid ").nth(1)) {
                        workers.push(pid.trim().parse().unwrap_or(0));
                    }
                }
                Err(_) => process.fail("the Node primary and its workers were not ready in time"),
            }
        }
        Self { process, port, socket, workers, _dir: dir }
    }

    fn pids(&self) -> Vec<i32> {
        std::iter::once(self.process.pid).chain(self.workers.iter().copied()).collect()
    }

    /// Waits until the bridge sees `n` hosts (with `--bridge`).
    fn wait_hosts(&mut self, n: u64) {
        let deadline = Instant::now() + START_TIMEOUT;
        while bridge_hosts(&self.socket) != Some(n) {
            if Instant::now() > deadline {
                self.process.fail(&format!("the bridge did not see {n} hosts within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `status`'s `bridge.hosts`.
fn bridge_hosts(socket: &Path) -> Option<u64> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(common::IO_TIMEOUT)).ok()?;
    stream.write_all(b"{\"command\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let reply: serde_json::Value = serde_json::from_str(&line).ok()?;
    let bridge = &reply["status"]["bridge"];
    (bridge["state"] == "connected").then(|| bridge["hosts"].as_u64()).flatten()
}

/// Two hosts of `kind` on one fresh Redis, ready (with the bridge: each sees the other).
fn two_hosts(bins: &Binaries, kind: Kind) -> (Redis, Host, Host) {
    let redis = Redis::start();
    let mut a = Host::start(bins, kind, &redis);
    let mut b = Host::start(bins, kind, &redis);
    if kind.bridged() {
        a.wait_hosts(2);
        b.wait_hosts(2);
    }
    (redis, a, b)
}

fn run_local<T>(what: &str, future: impl Future<Output = Result<T, String>>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, future).unwrap_or_else(|error| panic!("{what}: {error}"))
}

// ---- Cross-host latency and throughput ------------------------------------------------------------

fn cross_host_latency(bins: &Binaries, kind: Kind) -> Phase {
    let (_redis, a, b) = two_hosts(bins, kind);
    run_local("cross-host latency", async {
        let sender = Client::connect(a.port).await.map_err(|e| match e {
            sio_client::Handshake::Stalled(step) => format!("the sender's handshake stalled {step}"),
            sio_client::Handshake::Failed(error) => format!("the sender: {error}"),
        })?;
        let receivers = sio_client::connect_all(b.port, LATENCY_CLIENTS).await?;
        let mut clients = vec![sender];
        clients.extend(receivers.clients);
        let shared = Rc::new(Shared::new(clients.len(), 5, 120));
        broadcast::run_clients(clients, shared, &[0], async |shared, senders| {
            broadcast(shared, senders, (1, WARMUP / 4), Pace::Rate(PACED_RATE), SIZE).await?;
            broadcast(shared, senders, (2, PACED), Pace::Rate(PACED_RATE), SIZE).await
        })
        .await
    })
}

struct Throughput {
    phase: Phase,
    connections: usize,
    redis_cpu_us: f64,
    hosts_cpu_us: f64,
}

fn cross_host_throughput(bins: &Binaries, kind: Kind) -> Throughput {
    let (redis, a, b) = two_hosts(bins, kind);
    let connections = redis.clients();
    let pids: Vec<i32> = a.pids().into_iter().chain(b.pids()).collect();
    let redis_pid = redis.pid();
    let ticks = |pids: &[i32]| pids.iter().map(|&p| common::cpu_ticks(p)).sum::<u64>() as f64;
    let (phase, redis_ticks, host_ticks) = run_local("cross-host throughput", async {
        let mut clients = sio_client::connect_all(a.port, CLIENTS).await?.clients;
        clients.extend(sio_client::connect_all(b.port, CLIENTS).await?.clients);
        // One sender per worker of each host: the first client each worker got.
        let mut senders: Vec<usize> = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let host = i / CLIENTS;
            if !senders.iter().any(|&s| s / CLIENTS == host && clients[s].worker == client.worker) {
                senders.push(i);
            }
        }
        let shared = Rc::new(Shared::new(clients.len(), 5, 120));
        broadcast::run_clients(clients, shared, &senders, async |shared, senders| {
            broadcast(shared, senders, (1, WARMUP), Pace::Window(WINDOW), SIZE).await?;
            let (redis0, hosts0) = (ticks(&[redis_pid]), ticks(&pids));
            let phase = broadcast(shared, senders, (2, BURST), Pace::Window(WINDOW), SIZE).await?;
            Ok((phase, ticks(&[redis_pid]) - redis0, ticks(&pids) - hosts0))
        })
        .await
    });
    let per_delivery =
        |ticks: f64| ticks / common::clock_ticks_per_second() as f64 * 1e6 / (phase.deliveries.max(1) as f64);
    if !phase.complete(2 * CLIENTS) {
        eprintln!(
            "warning: {}: {} of {} broadcasts reached every client",
            kind.label(),
            phase.completed,
            phase.broadcasts
        );
    }
    Throughput { connections, redis_cpu_us: per_delivery(redis_ticks), hosts_cpu_us: per_delivery(host_ticks), phase }
}

// ---- The local relay ------------------------------------------------------------------------------

/// benches/relay.rs's scenario on one host, with or without a bridge configured: messages
/// delivered per second.
fn local_relay(bins: &Binaries, bridge: bool) -> f64 {
    let redis = Redis::start();
    let (_dir, socket, log) = common::scratch("clusterd-bridge-relay-", "clusterd.log");
    let mut args = vec!["--workers".to_owned(), "3".into(), "--control".into(), socket.display().to_string()];
    if bridge {
        args.extend(["--bridge".into(), redis.url()]);
    }
    args.extend(["--".into(), bins.relay_worker.display().to_string()]);
    let mut command = Command::new(&bins.clusterd);
    command
        .args(&args)
        .env("RELAY_SIZE", RELAY_SIZE.to_string())
        .env("RELAY_COUNT", RELAY_COUNT.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("a log file"));
    let mut child = common::spawn_group(&mut command, |_| false);
    let lines = common::forward_lines(&mut child, &log);
    let text = format!("{} {}", bins.clusterd.display(), common::shell_join(&args));
    let mut process = Process::new(Setup::Clusterd.label(), child, log, text, true);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let (mut received, mut elapsed_ms, mut done) = (0u64, 0f64, 0);
    while done < 2 {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let Some(rest) = line.split("relay done ").nth(1) else { continue };
                let field = |name: &str| -> f64 {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                        .unwrap_or(0.0)
                };
                received += field("received") as u64;
                elapsed_ms = elapsed_ms.max(field("elapsed_ms"));
                done += 1;
            }
            Err(_) => process.fail("the subscribers did not report in time"),
        }
    }
    process.stop();
    if elapsed_ms > 0.0 { received as f64 / (elapsed_ms / 1e3) } else { 0.0 }
}

// ---- Report ---------------------------------------------------------------------------------------

fn report(
    raw: &[(f64, f64)],
    latency: &[(Kind, Phase)],
    throughput: &[(Kind, Throughput)],
    relay: &[(bool, f64)],
    took: Duration,
) {
    let lat = |kind: Kind, p99: bool| {
        common::median(
            latency.iter().filter(|(k, _)| *k == kind).map(|(_, p)| f64::from(if p99 { p.p99 } else { p.p50 })),
        )
    };
    let thr = |kind: Kind, f: &dyn Fn(&Throughput) -> f64| {
        common::median(throughput.iter().filter(|(k, _)| *k == kind).map(|(_, t)| f(t)))
    };
    let (raw50, raw99) = (common::median(raw.iter().map(|r| r.0)), common::median(raw.iter().map(|r| r.1)));
    println!();
    println!("## Several hosts through Redis ({ROUNDS} rounds, medians; {} s)", took.as_secs());
    println!();
    println!("| latency, µs | p50 | p99 | p50 / raw Redis |");
    println!("|---|---|---|---|");
    println!("| raw Redis PUBLISH → message | {raw50:.0} | {raw99:.0} | 1.0× |");
    for kind in [Kind::Bridge, Kind::PerWorker, Kind::NodeBridge, Kind::NodeRedis] {
        let (p50, p99) = (lat(kind, false), lat(kind, true));
        println!(
            "| chat message, host A → client on host B, {}: | {p50:.0} | {p99:.0} | {:.1}× |",
            kind.label(),
            p50 / raw50
        );
    }
    println!();
    println!(
        "| throughput: 2 hosts × {WORKERS} workers, {} clients, {BURST} broadcasts of {SIZE} B | deliveries/s | Redis connections | Redis CPU per delivery | hosts' CPU per delivery |",
        2 * CLIENTS
    );
    println!("|---|---|---|---|---|");
    for kind in [Kind::Bridge, Kind::PerWorker, Kind::NodeBridge, Kind::NodeRedis] {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} µs | {:.2} µs |",
            kind.label(),
            thr(kind, &|t| t.phase.rate()),
            thr(kind, &|t| t.connections as f64),
            thr(kind, &|t| t.redis_cpu_us),
            thr(kind, &|t| t.hosts_cpu_us)
        );
    }
    let ratio = thr(Kind::Bridge, &|t| t.phase.rate()) / thr(Kind::PerWorker, &|t| t.phase.rate());
    println!();
    println!("bridge / socketioxide-redis in every worker: {ratio:.2}× deliveries/s");
    let node = thr(Kind::NodeBridge, &|t| t.phase.rate()) / thr(Kind::NodeRedis, &|t| t.phase.rate());
    println!("Node workers: clusterd --bridge / Node primary with @socket.io/redis-adapter: {node:.2}× deliveries/s");
    let without = common::median(relay.iter().filter(|(b, _)| !b).map(|(_, r)| *r));
    let with = common::median(relay.iter().filter(|(b, _)| *b).map(|(_, r)| *r));
    println!();
    println!("| local relay, {RELAY_COUNT} × {RELAY_SIZE} B to 2 subscribers | messages delivered/s |");
    println!("|---|---|");
    println!("| without a bridge | {without:.0} |");
    println!("| with --bridge configured | {with:.0} ({:.1}%) |", (with / without - 1.0) * 100.0);
}
