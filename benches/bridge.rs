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
//! 3. **The bus alone** (no Socket.IO): `relay_worker` publishing [`BUS_SAMPLES`] messages at
//!    [`BUS_RATE`] per second, timestamped; p50 / p99 from the publish to the receipt, for one
//!    local hop (two workers of one host) and across hosts (a worker of host A, under `--bridge`,
//!    on a bridged channel, to a worker of host B). This is the bridge's own latency, against the
//!    raw Redis round trip: what the Socket.IO rows add on top is the same for every setup.
//!    Beside them, in the same round, **the bound** of that path: the same hops (a unix socket
//!    into a forwarder process, TCP to Redis, TCP from Redis to a second forwarder, a unix socket
//!    out of it) through two minimal forwarders, one blocking thread each, no runtime, no relay:
//!    what any primary between the workers and Redis costs on this machine, at the least.
//! 4. **The local relay**: benches/relay.rs's scenario (`relay_worker`, one publisher and two
//!    subscribers on one host, [`RELAY_COUNT`] messages of [`RELAY_SIZE`] bytes) with and without
//!    `--bridge` configured (its channel is not bridged: the cost is the relay's check),
//!    [`RELAY_PAIRS`] pairs a round, each pair run back to back in alternating order, so that the
//!    paired ratios cancel the drift of the machine's load; median and range reported, of the
//!    rate and of clusterd's CPU per message (`schedstat`: less disturbed by the machine's other
//!    load than the rate, which depends on when the kernel runs each process).
//!
//! [`ROUNDS`] rounds, the setups interleaved; medians. `BRIDGE_BENCH_PHASES` (a comma-separated
//! subset of `latency,throughput,node,bus,relay`; all when unset) runs only some phases.
//! `BRIDGE_BENCH_BEFORE=<another clusterd binary>` adds that binary's bridge as one more setup
//! of the SDK rows (`chat`, `--bridge`) and of the cross-host bus row: a change measured side by
//! side with what it changed, in one run.

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
/// Local relay runs with and without a bridge, pairs per round.
const RELAY_PAIRS: usize = 5;
/// Bus-level latency: messages, and their rate.
const BUS_SAMPLES: u64 = 2_000;
const BUS_RATE: u64 = 1_000;
/// A bridged channel (socketioxide's request channel of the root namespace).
const BRIDGED_CHANNEL: &str = "socket.io-request#/#";
/// Starting a host, and each wait of the relay runs.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `chat` on two clusterd hosts joined by `--bridge`.
    Bridge,
    /// The same with the clusterd binary of `BRIDGE_BENCH_BEFORE`.
    Before,
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
            Self::Before => "clusterd --bridge, BRIDGE_BENCH_BEFORE's binary",
            Self::PerWorker => "socketioxide-redis in every worker",
            Self::NodeBridge => "Node workers, clusterd --bridge",
            Self::NodeRedis => "Node primary, @socket.io/redis-adapter in every worker",
        }
    }

    fn bridged(self) -> bool {
        matches!(self, Self::Bridge | Self::Before | Self::NodeBridge)
    }
}

struct Binaries {
    node: PathBuf,
    clusterd: PathBuf,
    /// `BRIDGE_BENCH_BEFORE`: another clusterd to compare with.
    before: Option<PathBuf>,
    chat: PathBuf,
    chat_redis: PathBuf,
    relay_worker: PathBuf,
}

fn main() {
    if let Ok(role) = std::env::var(FORWARDER_ROLE) {
        forwarder(&role);
        return;
    }
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
        before: std::env::var_os("BRIDGE_BENCH_BEFORE").map(PathBuf::from),
        chat: common::example(&dir, "chat"),
        chat_redis: common::example(&dir, "chat_redis"),
        relay_worker: common::example(&dir, "relay_worker"),
    };
    let phases = Phases::from_env();
    let started = Instant::now();
    let mut results = Results::default();
    for round in 1..=ROUNDS {
        let (p50, p99) = raw_round_trip();
        eprintln!("round {round}: raw Redis PUBLISH → message p50 {p50:.0} µs, p99 {p99:.0} µs");
        results.raw.push((p50, p99));
        if phases.bus {
            let hops = [Hop::Local, Hop::Cross, Hop::CrossBefore, Hop::Bound];
            for hop in hops.into_iter().filter(|h| *h != Hop::CrossBefore || bins.before.is_some()) {
                let (p50, p99) = bus_latency(&bins, hop);
                eprintln!("round {round} bus, {}: p50 {p50:.0} µs, p99 {p99:.0} µs", hop.label());
                results.bus.push((hop, (p50, p99)));
            }
        }
        let kinds = [Kind::PerWorker, Kind::Before, Kind::Bridge, Kind::NodeRedis, Kind::NodeBridge];
        for kind in kinds
            .into_iter()
            .filter(|k| phases.node || !matches!(k, Kind::NodeRedis | Kind::NodeBridge))
            .filter(|k| *k != Kind::Before || bins.before.is_some())
        {
            if phases.latency {
                let phase = cross_host_latency(&bins, kind);
                eprintln!("round {round} {}: cross-host p50 {} µs, p99 {} µs", kind.label(), phase.p50, phase.p99);
                results.latency.push((kind, phase));
            }
            if phases.throughput {
                let t = cross_host_throughput(&bins, kind);
                eprintln!(
                    "round {round} {}: {:.0} deliveries/s, {} Redis connections, per delivery: Redis CPU {:.2} µs, hosts' CPU {:.2} µs, the bench's clients {:.2} µs",
                    kind.label(),
                    t.phase.rate(),
                    t.connections,
                    t.redis_cpu_us,
                    t.hosts_cpu_us,
                    t.clients_cpu_us
                );
                results.throughput.push((kind, t));
            }
        }
        if phases.relay {
            for pair in 0..RELAY_PAIRS {
                // Alternating which runs first, so that neither always gets the quieter moment.
                let order = if pair % 2 == 0 { [false, true] } else { [true, false] };
                let mut runs = [(0.0, 0.0); 2];
                for bridge in order {
                    let (rate, cpu) = local_relay(&bins, bridge);
                    eprintln!(
                        "round {round} local relay {}: {rate:.0} messages/s, clusterd's CPU {cpu:.0} ns per message",
                        if bridge { "with --bridge" } else { "without" }
                    );
                    runs[usize::from(bridge)] = (rate, cpu);
                }
                results.relay.push((runs[0], runs[1]));
            }
        }
    }
    report(&results, started.elapsed());
}

/// Which phases run (`BRIDGE_BENCH_PHASES`).
struct Phases {
    latency: bool,
    throughput: bool,
    node: bool,
    bus: bool,
    relay: bool,
}

impl Phases {
    fn from_env() -> Self {
        let Ok(list) = std::env::var("BRIDGE_BENCH_PHASES") else {
            return Self { latency: true, throughput: true, node: true, bus: true, relay: true };
        };
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        for name in &names {
            if !["latency", "throughput", "node", "bus", "relay"].contains(name) {
                eprintln!("error: BRIDGE_BENCH_PHASES: unknown phase {name:?} (latency, throughput, node, bus, relay)");
                std::process::exit(2);
            }
        }
        let has = |name: &str| names.contains(&name);
        Self {
            latency: has("latency"),
            throughput: has("throughput"),
            node: has("node"),
            bus: has("bus"),
            relay: has("relay"),
        }
    }
}

/// Every figure of every round.
#[derive(Default)]
struct Results {
    raw: Vec<(f64, f64)>,
    bus: Vec<(Hop, (f64, f64))>,
    latency: Vec<(Kind, Phase)>,
    throughput: Vec<(Kind, Throughput)>,
    /// Local relay pairs: (without, with) a bridge, each (messages/s, clusterd's CPU ns per
    /// message).
    relay: Vec<((f64, f64), (f64, f64))>,
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
            Kind::Bridge | Kind::Before => args.extend(["--".into(), bins.chat.display().to_string()]),
            Kind::PerWorker => args.extend(["--".into(), bins.chat_redis.display().to_string()]),
            Kind::NodeBridge | Kind::NodeRedis => {
                let worker = common::node_dir().join("worker.cjs");
                args.splice(0..0, ["--protocol".to_owned(), "node".into()]);
                args.extend(["--".into(), bins.node.display().to_string(), worker.display().to_string()]);
            }
        }
        let clusterd = match (kind, &bins.before) {
            (Kind::Before, Some(before)) => before,
            _ => &bins.clusterd,
        };
        let mut command = Command::new(clusterd);
        command.args(&args).env("REDIS_URL", format!("{}?protocol=resp3", redis.url()));
        common::log_to(&mut command, &log, "clusterd");
        let child = common::spawn_group(&mut command, |_| false);
        let text = format!("{} {}", clusterd.display(), common::shell_join(&args));
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
    /// The bench's own thread (every client): it shares the 2 cores with the hosts and Redis.
    clients_cpu_us: f64,
}

/// CPU time of the calling thread (the bench's clients run on it), µs.
fn thread_cpu_us() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
    us(usage.user_time()) + us(usage.system_time())
}

fn cross_host_throughput(bins: &Binaries, kind: Kind) -> Throughput {
    let (redis, a, b) = two_hosts(bins, kind);
    let connections = redis.clients();
    let pids: Vec<i32> = a.pids().into_iter().chain(b.pids()).collect();
    let redis_pid = redis.pid();
    let ticks = |pids: &[i32]| pids.iter().map(|&p| common::cpu_ticks(p)).sum::<u64>() as f64;
    let (phase, redis_ticks, host_ticks, clients_us) = run_local("cross-host throughput", async {
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
            let (redis0, hosts0, clients0) = (ticks(&[redis_pid]), ticks(&pids), thread_cpu_us());
            let phase = broadcast(shared, senders, (2, BURST), Pace::Window(WINDOW), SIZE).await?;
            Ok((phase, ticks(&[redis_pid]) - redis0, ticks(&pids) - hosts0, thread_cpu_us() - clients0))
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
    Throughput {
        connections,
        redis_cpu_us: per_delivery(redis_ticks),
        hosts_cpu_us: per_delivery(host_ticks),
        clients_cpu_us: clients_us / (phase.deliveries.max(1) as f64),
        phase,
    }
}

// ---- The bus alone, and the local relay ----------------------------------------------------------

/// Where the bus-level latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// Two workers of one host, no bridge.
    Local,
    /// A worker of host A to a worker of host B, on a bridged channel through Redis.
    Cross,
    /// The same with the clusterd binary of `BRIDGE_BENCH_BEFORE`.
    CrossBefore,
    /// The same hops through two minimal forwarders ([`bound_latency`]).
    Bound,
}

impl Hop {
    fn label(self) -> &'static str {
        match self {
            Self::Local => "worker → worker on one host",
            Self::Cross => "worker on host A → worker on host B, --bridge",
            Self::CrossBefore => "the same, BRIDGE_BENCH_BEFORE's binary",
            Self::Bound => "the same hops through two minimal forwarders (the bound)",
        }
    }
}

/// What a `relay_worker` subscriber reported.
struct Done {
    received: u64,
    elapsed_ms: f64,
    p50_us: f64,
    p99_us: f64,
}

/// clusterd running `relay_worker`s, with `env` for them; its stdout's lines.
fn relay_host(
    bins: &Binaries,
    clusterd: &Path,
    workers: usize,
    redis: Option<&Redis>,
    env: &[(&str, String)],
) -> (Process, std::sync::mpsc::Receiver<String>, tempfile::TempDir) {
    let (dir, socket, log) = common::scratch("clusterd-bridge-relay-", "clusterd.log");
    let mut args = vec!["--workers".to_owned(), workers.to_string(), "--control".into(), socket.display().to_string()];
    if let Some(redis) = redis {
        args.extend(["--bridge".into(), redis.url()]);
    }
    args.extend(["--".into(), bins.relay_worker.display().to_string()]);
    let mut command = Command::new(clusterd);
    command.args(&args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped());
    command.stderr(std::fs::File::create(&log).expect("a log file"));
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = common::spawn_group(&mut command, |_| false);
    let lines = common::forward_lines(&mut child, &log);
    let vars: Vec<String> = env.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let text = format!("{} {} {}", vars.join(" "), clusterd.display(), common::shell_join(&args));
    (Process::new(Setup::Clusterd.label(), child, log, text, true), lines, dir)
}

/// Waits for `n` subscribers' `relay done` lines; also returns clusterd's CPU time (`schedstat`,
/// ns) from the publisher's `relay start` line to then.
fn relay_done(process: &mut Process, lines: &std::sync::mpsc::Receiver<String>, n: usize) -> (Vec<Done>, u64) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut done = Vec::new();
    let mut cpu_at_start = None;
    while done.len() < n {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if line.contains("relay start ") {
                    cpu_at_start = common::run_ns(process.pid);
                }
                let Some(rest) = line.split("relay done ").nth(1) else { continue };
                let field = |name: &str| -> f64 {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                        .unwrap_or(0.0)
                };
                done.push(Done {
                    received: field("received") as u64,
                    elapsed_ms: field("elapsed_ms"),
                    p50_us: field("p50_us"),
                    p99_us: field("p99_us"),
                });
            }
            Err(_) => process.fail("the subscribers did not report in time"),
        }
    }
    let cpu = common::run_ns(process.pid).unwrap_or(0).saturating_sub(cpu_at_start.unwrap_or(0));
    (done, cpu)
}

/// Paced, timestamped messages from one worker to another, on one host or across two: (p50, p99)
/// in µs.
fn bus_latency(bins: &Binaries, hop: Hop) -> (f64, f64) {
    let env = |role: Option<&str>, channel: &str| {
        let mut env = vec![
            ("RELAY_CHANNEL", channel.to_owned()),
            ("RELAY_COUNT", BUS_SAMPLES.to_string()),
            ("RELAY_SIZE", RELAY_SIZE.to_string()),
            ("RELAY_RATE", BUS_RATE.to_string()),
            ("RELAY_SUBSCRIBERS", "1".to_owned()),
        ];
        env.extend(role.map(|role| ("RELAY_ROLE", role.to_owned())));
        env
    };
    let done = match hop {
        Hop::Bound => return bound_latency(),
        Hop::Local => {
            // Slot 0 publishes, slot 1 subscribes.
            let (mut host, lines, _dir) = relay_host(bins, &bins.clusterd, 2, None, &env(None, "bench"));
            let (done, _) = relay_done(&mut host, &lines, 1);
            host.stop();
            done
        }
        Hop::Cross | Hop::CrossBefore => {
            let clusterd = match (hop, &bins.before) {
                (Hop::CrossBefore, Some(before)) => before,
                _ => &bins.clusterd,
            };
            let redis = Redis::start();
            // The subscriber's host first: the publisher waits until the bus counts it.
            let (mut b, lines, _b_dir) =
                relay_host(bins, clusterd, 1, Some(&redis), &env(Some("subscriber"), BRIDGED_CHANNEL));
            let (mut a, _a_lines, _a_dir) =
                relay_host(bins, clusterd, 1, Some(&redis), &env(Some("publisher"), BRIDGED_CHANNEL));
            let (done, _) = relay_done(&mut b, &lines, 1);
            a.stop();
            b.stop();
            done
        }
    };
    let done = &done[0];
    if done.received < BUS_SAMPLES {
        eprintln!("warning: bus, {}: {} of {BUS_SAMPLES} messages arrived", hop.label(), done.received);
    }
    (done.p50_us, done.p99_us)
}

/// The environment variable that makes the bench a forwarder of [`bound_latency`]
/// (`to-redis` or `from-redis`), and the ones that tell it its unix socket and Redis.
const FORWARDER_ROLE: &str = "BRIDGE_BENCH_FORWARDER";
const FORWARDER_SOCKET: &str = "BRIDGE_BENCH_FORWARDER_SOCKET";
const FORWARDER_REDIS: &str = "BRIDGE_BENCH_FORWARDER_REDIS";
/// The largest frame a forwarder takes.
const FORWARDER_MAX_FRAME: usize = 1 << 20;

/// The bound of the cross-host bus row: a timestamped message from one thread of the bench,
/// through a unix socket, a forwarder process that PUBLISHes it, Redis, a second forwarder that
/// is subscribed, and a unix socket to another thread of the bench. The forwarders are the bench
/// itself, run again as [`forwarder`]: blocking reads and writes, one thread, nothing else. Paced
/// like the bus rows ([`BUS_SAMPLES`] at [`BUS_RATE`] per second, [`RELAY_SIZE`] bytes); (p50,
/// p99) in µs.
fn bound_latency() -> (f64, f64) {
    use std::io::Read;
    let redis = Redis::start();
    let dir = tempfile::Builder::new().prefix("clusterd-bridge-bound-").tempdir().expect("a temporary directory");
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut children = Vec::new();
    let mut connect = |role: &str| -> UnixStream {
        let socket = dir.path().join(format!("{role}.sock"));
        let mut command = Command::new(&exe);
        command
            .env(FORWARDER_ROLE, role)
            .env(FORWARDER_SOCKET, &socket)
            .env(FORWARDER_REDIS, redis.url())
            .stdin(std::process::Stdio::null());
        common::die_with_bench(&mut command);
        let mut child = command.spawn().expect("a forwarder");
        // A forwarder binds its socket once it is connected (and subscribed): connecting is the
        // readiness.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(stream) = UnixStream::connect(&socket) {
                children.push(child);
                return stream;
            }
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                panic!("the {role} forwarder did not listen on {} within {START_TIMEOUT:?}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // The subscriber first: the publisher's messages must find it subscribed.
    let (mut out, mut into) = (connect("from-redis"), connect("to-redis"));
    let base = Instant::now();
    out.set_read_timeout(Some(RUN_TIMEOUT)).expect("a read timeout");
    let receiver = std::thread::spawn(move || {
        let mut latencies = Vec::with_capacity(BUS_SAMPLES as usize);
        let mut frame = vec![0u8; 4 + RELAY_SIZE];
        while (latencies.len() as u64) < BUS_SAMPLES {
            if out.read_exact(&mut frame).is_err() {
                break;
            }
            let now = base.elapsed().as_nanos() as u64;
            let sent = u64::from_le_bytes(frame[4..12].try_into().expect("8 bytes"));
            latencies.push(now.saturating_sub(sent) as f64 / 1e3);
        }
        latencies
    });
    let mut frame = Vec::with_capacity(4 + RELAY_SIZE);
    for i in 0..BUS_SAMPLES {
        // Pacing, as the bus rows' publisher paces.
        let at = Duration::from_nanos(i * 1_000_000_000 / BUS_RATE);
        if let Some(wait) = at.checked_sub(base.elapsed()) {
            std::thread::sleep(wait);
        }
        frame.clear();
        frame.extend_from_slice(&u32::try_from(RELAY_SIZE).expect("a small size").to_le_bytes());
        frame.extend_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
        frame.resize(4 + RELAY_SIZE, 0xa5);
        into.write_all(&frame).expect("a write to the forwarder");
    }
    let mut latencies = receiver.join().expect("the receiving thread");
    drop(into);
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    if (latencies.len() as u64) < BUS_SAMPLES {
        eprintln!("warning: bus, the bound: {} of {BUS_SAMPLES} messages arrived", latencies.len());
    }
    if latencies.is_empty() {
        return (0.0, 0.0);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1];
    (at(0.5), at(0.99))
}

/// The bench run as a forwarder of [`bound_latency`]: `to-redis` reads length-prefixed frames
/// from its unix socket and PUBLISHes each on [`BRIDGED_CHANNEL`]; `from-redis` subscribes to it
/// and writes each message, length-prefixed, to its unix socket. Blocking calls on one thread;
/// ends when its connection closes.
fn forwarder(role: &str) {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let (socket, url) = (var(FORWARDER_SOCKET), var(FORWARDER_REDIS));
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut connection = client.get_connection().expect("a Redis connection");
    match role {
        "to-redis" => {
            let (mut stream, _) = UnixListener::bind(&socket).expect("the socket").accept().expect("the bench");
            let mut head = [0u8; 4];
            let mut payload = Vec::new();
            while stream.read_exact(&mut head).is_ok() {
                let size = u32::from_le_bytes(head) as usize;
                assert!(size <= FORWARDER_MAX_FRAME, "a {size}-byte frame");
                payload.resize(size, 0);
                if stream.read_exact(&mut payload).is_err() {
                    return;
                }
                redis::cmd("PUBLISH")
                    .arg(BRIDGED_CHANNEL)
                    .arg(&payload)
                    .query::<i64>(&mut connection)
                    .expect("PUBLISH");
            }
        }
        "from-redis" => {
            let mut pubsub = connection.as_pubsub();
            pubsub.subscribe(BRIDGED_CHANNEL).expect("SUBSCRIBE");
            let (mut stream, _) = UnixListener::bind(&socket).expect("the socket").accept().expect("the bench");
            let mut frame = Vec::new();
            while let Ok(message) = pubsub.get_message() {
                let payload = message.get_payload_bytes();
                frame.clear();
                frame.extend_from_slice(&u32::try_from(payload.len()).expect("a small payload").to_le_bytes());
                frame.extend_from_slice(payload);
                if stream.write_all(&frame).is_err() {
                    return;
                }
            }
        }
        other => panic!("{FORWARDER_ROLE}: unknown role {other:?}"),
    }
}

/// benches/relay.rs's scenario on one host, with or without a bridge configured: messages
/// delivered per second, and clusterd's CPU per message delivered from the first publish on (ns;
/// from `schedstat`, which the machine's other load disturbs far less than the rate).
fn local_relay(bins: &Binaries, bridge: bool) -> (f64, f64) {
    let redis = Redis::start();
    let env = [("RELAY_SIZE", RELAY_SIZE.to_string()), ("RELAY_COUNT", RELAY_COUNT.to_string())];
    let (mut process, lines, _dir) = relay_host(bins, &bins.clusterd, 3, bridge.then_some(&redis), &env);
    let (done, cpu_ns) = relay_done(&mut process, &lines, 2);
    process.stop();
    let received: u64 = done.iter().map(|d| d.received).sum();
    let elapsed_ms = done.iter().map(|d| d.elapsed_ms).fold(0.0, f64::max);
    let rate = if elapsed_ms > 0.0 { received as f64 / (elapsed_ms / 1e3) } else { 0.0 };
    (rate, cpu_ns as f64 / received.max(1) as f64)
}

// ---- Report ---------------------------------------------------------------------------------------

fn report(results: &Results, took: Duration) {
    let Results { raw, bus, latency, throughput, relay } = results;
    let range = |values: &[f64]| {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    };
    let (raw50, raw99) = (common::median(raw.iter().map(|r| r.0)), common::median(raw.iter().map(|r| r.1)));
    println!();
    println!("## Several hosts through Redis ({ROUNDS} rounds, medians; {} s)", took.as_secs());
    println!();
    println!("| latency, µs | p50 | p99 | p50 / raw Redis |");
    println!("|---|---|---|---|");
    println!("| raw Redis PUBLISH → message | {raw50:.0} | {raw99:.0} | 1.0× |");
    for hop in [Hop::Local, Hop::Cross, Hop::CrossBefore, Hop::Bound] {
        let of = |i: usize| bus.iter().filter(|(h, _)| *h == hop).map(move |(_, p)| if i == 0 { p.0 } else { p.1 });
        if of(0).next().is_none() {
            continue;
        }
        let (p50, p99) = (common::median(of(0)), common::median(of(1)));
        println!(
            "| bus alone ({BUS_RATE}/s, {RELAY_SIZE} B), {}: | {p50:.0} | {p99:.0} | {:.1}× |",
            hop.label(),
            p50 / raw50
        );
    }
    let lat = |kind: Kind, p99: bool| {
        let mut values = latency
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, p)| f64::from(if p99 { p.p99 } else { p.p50 }))
            .peekable();
        values.peek().is_some().then(|| common::median(values))
    };
    for kind in [Kind::Bridge, Kind::Before, Kind::PerWorker, Kind::NodeBridge, Kind::NodeRedis] {
        let (Some(p50), Some(p99)) = (lat(kind, false), lat(kind, true)) else { continue };
        println!(
            "| chat message, host A → client on host B, {}: | {p50:.0} | {p99:.0} | {:.1}× |",
            kind.label(),
            p50 / raw50
        );
    }
    let thr = |kind: Kind, f: &dyn Fn(&Throughput) -> f64| {
        let mut values = throughput.iter().filter(|(k, _)| *k == kind).map(|(_, t)| f(t)).peekable();
        values.peek().is_some().then(|| common::median(values))
    };
    if !throughput.is_empty() {
        println!();
        println!(
            "| throughput: 2 hosts × {WORKERS} workers, {} clients, {BURST} broadcasts of {SIZE} B | deliveries/s | Redis connections | Redis CPU per delivery | hosts' CPU per delivery | the bench's clients' CPU per delivery |",
            2 * CLIENTS
        );
        println!("|---|---|---|---|---|---|");
        for kind in [Kind::Bridge, Kind::Before, Kind::PerWorker, Kind::NodeBridge, Kind::NodeRedis] {
            let Some(rate) = thr(kind, &|t| t.phase.rate()) else { continue };
            println!(
                "| {} | {rate:.0} | {:.0} | {:.2} µs | {:.2} µs | {:.2} µs |",
                kind.label(),
                thr(kind, &|t| t.connections as f64).unwrap_or(0.0),
                thr(kind, &|t| t.redis_cpu_us).unwrap_or(0.0),
                thr(kind, &|t| t.hosts_cpu_us).unwrap_or(0.0),
                thr(kind, &|t| t.clients_cpu_us).unwrap_or(0.0)
            );
        }
        let ratio = |a: Kind, b: Kind| Some(thr(a, &|t| t.phase.rate())? / thr(b, &|t| t.phase.rate())?);
        println!();
        if let Some(ratio) = ratio(Kind::Bridge, Kind::PerWorker) {
            println!("bridge / socketioxide-redis in every worker: {ratio:.2}× deliveries/s");
        }
        if let Some(ratio) = ratio(Kind::Before, Kind::PerWorker) {
            println!("BRIDGE_BENCH_BEFORE's bridge / socketioxide-redis in every worker: {ratio:.2}× deliveries/s");
        }
        if let Some(node) = ratio(Kind::NodeBridge, Kind::NodeRedis) {
            println!(
                "Node workers: clusterd --bridge / Node primary with @socket.io/redis-adapter: {node:.2}× deliveries/s"
            );
        }
    }
    if !relay.is_empty() {
        println!();
        println!(
            "| local relay, {RELAY_COUNT} × {RELAY_SIZE} B to 2 subscribers, {} runs each | median | range |",
            relay.len()
        );
        println!("|---|---|---|");
        for (what, unit, pick) in [
            ("messages delivered/s", "", (|r: (f64, f64)| r.0) as fn((f64, f64)) -> f64),
            ("clusterd's CPU per message", " ns", |r: (f64, f64)| r.1),
        ] {
            let without: Vec<f64> = relay.iter().map(|r| pick(r.0)).collect();
            let with: Vec<f64> = relay.iter().map(|r| pick(r.1)).collect();
            let diffs: Vec<f64> = relay.iter().map(|r| (pick(r.1) / pick(r.0) - 1.0) * 100.0).collect();
            let ((w0, w1), (b0, b1), (d0, d1)) = (range(&without), range(&with), range(&diffs));
            println!(
                "| {what}, without a bridge | {:.0}{unit} | {w0:.0} to {w1:.0} |",
                common::median(without.iter().copied())
            );
            println!(
                "| {what}, with --bridge configured | {:.0}{unit} | {b0:.0} to {b1:.0} |",
                common::median(with.iter().copied())
            );
            println!(
                "| {what}, with / without, paired runs | {:+.1}% | {d0:+.1}% to {d1:+.1}% (each: {}) |",
                common::median(diffs.iter().copied()),
                diffs.iter().map(|d| format!("{d:+.1}%")).collect::<Vec<_>>().join(", ")
            );
        }
    }
}
