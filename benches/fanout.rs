//! End-to-end Socket.IO broadcast fan-out: clients on every worker, one `io.emit` reaching all of
//! them, through clusterd with the Rust `chat` workers against the classic Node.js primary with
//! Node workers. It prints Markdown tables and the exact commands.
//!
//! Run it with `cargo build --release --workspace --bins --examples && cargo bench --bench fanout`.
//! Cargo builds `clusterd` before its benches but not the examples: the bench finds
//! `target/release/examples/chat` and stops with a clear message when it is missing (and warns when
//! it is older than its sources). It needs `node`/`npm` in `PATH`; when `benches/node/node_modules`
//! is missing it runs `npm ci` there first.
//!
//! The two systems, each with [`WORKERS`] workers, on a fresh loopback port:
//! - **clusterd**: `clusterd --workers 2 --listen 127.0.0.1:<port> -- target/release/examples/chat`
//!   (socketioxide with the SDK's cluster adapter over clusterd's bus);
//! - **Node primary**: `node benches/node/primary.cjs <port> 2` (`cluster` + `@socket.io/sticky`
//!   least-connection + `@socket.io/cluster-adapter`, `serialization: "advanced"`; each Node worker
//!   runs `io.adapter(createAdapter())` and `setupWorker(io)`).
//!
//! Both servers do the same work for the same event: `"chat message"` with a string is emitted to
//! every connected client of every worker (`io.emit("chat message", text)`): the sender's worker
//! encodes it for its own clients and publishes it through the primary, which relays it to the
//! other worker, which encodes it for its clients.
//!
//! The load: [`CLIENTS`] Socket.IO clients over WebSocket only (`EIO=4&transport=websocket`, as
//! `socket.io-client` with `transports: ["websocket"]`), connected one after the other through the
//! primary, so the balancer spreads them (each asks `"whoami"`; the spread over the workers is
//! printed and a run fails if a worker got none). A handshake step with no answer within
//! [`STEP_TIMEOUT`] is counted as a stall and that client starts again: with @socket.io/sticky this
//! happens to a few connections in a hundred: Node's `cluster` keeps the primary's copy of a
//! handed-off socket open, reading into a no-op, until the worker's `NODE_HANDLE_ACK` comes back,
//! and a client sends its namespace connect as soon as the Engine.IO open packet arrives, so the
//! primary sometimes reads (and drops) it.
//!
//! The clients are written here, in the bench, on one thread (a current-thread Tokio runtime): the
//! WebSocket framing and the few Engine.IO/Socket.IO packets they need (open, connect, ping/pong,
//! an event, an ack). On a machine whose 2 cores the clients share with the servers, they must be
//! cheap: about 1.5 µs of CPU per delivered message, where `socket.io-client` in one Node process
//! took 11 µs (it would use a core by itself at Node's rate). One client per worker is also a
//! sender; they take turns. Each message text carries its phase, sequence number and send time (µs
//! on the bench's monotonic clock, which the receivers share), padded with `x` to [`SIZES`] bytes;
//! every client records the latency of every delivery (send → the read that brought it). Per run,
//! after [`WARMUP`] broadcasts (Node's JIT, the buffers):
//!
//! 1. **Throughput**: [`BURST`] broadcasts with at most [`WINDOW`] in flight (a broadcast is in
//!    flight until every client has it), so the servers are kept busy but their queues stay
//!    bounded (socketioxide drops a packet for a socket whose 128-packet buffer is full; Node
//!    queues without bound). Deliveries per second = deliveries / (first send → last receipt);
//!    the p50 / p99 latency is under that saturation, so mostly time spent in the window.
//! 2. **Latency at a set rate**: [`PACED`] broadcasts at [`PACED_RATE`] per second, sent on a
//!    clock whatever the deliveries (at most [`broadcast::PACED_BACKLOG`] in flight): p50 / p99 at a load
//!    that both systems carry without queueing.
//!
//! [`ROUNDS`] rounds, interleaved (per round and size: Node, then clusterd), every server and every
//! client fresh for each run; medians over the rounds. The CPU time of the primary, of each worker
//! (utime + stime from `/proc/<pid>/stat`), of the client thread (`RUSAGE_THREAD`) and of the rest
//! of the machine (`/proc/stat`) over the throughput phase shows what saturates; the server's CPU
//! per delivery is the figure least moved by other processes on the machine.
//!
//! Everything is loopback; every wait and every phase has a deadline; every process is stopped
//! (SIGTERM, then SIGKILL to its process group), also when the bench panics, and gets SIGTERM from
//! the kernel if the bench itself is killed.

mod common;

use common::broadcast::{self, PHASE_TIMEOUT, Pace, Phase, Shared, broadcast};
use common::cpu::{Cpu, CpuSample, LoadIn};
use common::sio_client::{self, Connected, STEP_TIMEOUT};
use common::{Process, Setup};

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Interleaved rounds.
const ROUNDS: usize = 3;
/// Workers behind each primary.
const WORKERS: usize = 2;
/// Socket.IO clients per run (spread over the workers by the primary).
const CLIENTS: usize = 200;
/// Length of each broadcast's message text, bytes.
const SIZES: [usize; 2] = [100, 1024];
/// Broadcasts before the measured phases.
const WARMUP: usize = 200;
/// Throughput phase: broadcasts, and how many may be in flight.
const BURST: usize = 2_000;
const WINDOW: usize = 16;
/// Latency phase: broadcasts, their rate, and the most in flight before sending waits.
const PACED: usize = 300;
const PACED_RATE: f64 = 100.0;

/// How long starting a server may take (connecting the clients and each phase: see
/// [`sio_client::CONNECT_TIMEOUT`] and [`PHASE_TIMEOUT`]).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Below this share of all cores (%) used by the server and the clients in the throughput phase, a
/// run is called out as not CPU-bound (other processes fill idle cores, so the machine's busy share
/// cannot tell); above this share of one core, CPU used by other processes is.
const UNSATURATED: f64 = 50.0;
const OTHER_CPU_WARNING: f64 = 0.10;
/// Above this share of the time busy, the client thread may be what limits a run.
const CLIENT_BOUND: f64 = 0.8;
/// Unexpected packets kept as examples for the report.
const MAX_SAMPLES: usize = 5;

fn main() {
    let dir = common::target_dir();
    let clusterd = common::binary(&dir, "fanout", "clusterd");
    let chat = common::example(&dir, "chat");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = common::sdk_sources(root);
    sources.extend([root.join("examples/chat.rs"), root.join("Cargo.lock")]);
    let stale = common::stale_warning(root, &chat, &sources);
    if let Some(warning) = &stale {
        eprintln!("warning: {warning}");
    }
    let need = |name: &str| {
        common::find_in_path(name).unwrap_or_else(|| {
            eprintln!("error: `{name}` is not in PATH; this bench needs Node.js 20 or later (with npm)");
            std::process::exit(1);
        })
    };
    let node = need("node");
    common::ensure_node_modules(&need("npm"), &["socket.io", "@socket.io/sticky", "@socket.io/cluster-adapter"]);
    let started = Instant::now();
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        for size in SIZES {
            for setup in [Setup::Node, Setup::Clusterd] {
                let server = match setup {
                    Setup::Node => Server::node(&node),
                    Setup::Clusterd => Server::clusterd(&clusterd, &chat),
                };
                let run = measure(server, round, size);
                let load = &run.load;
                eprintln!(
                    "round {round}/{ROUNDS} {size} B {}: {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms; at \
                     {PACED_RATE} broadcasts/s p50 {:.2} ms, p99 {:.2} ms; clients per worker {:?}; stalled \
                     handshakes {}",
                    setup.label(),
                    load.burst.rate(),
                    ms(load.burst.p50),
                    ms(load.burst.p99),
                    ms(load.paced.p50),
                    ms(load.paced.p99),
                    load.spread,
                    load.stalls.len()
                );
                runs.push(run);
            }
        }
    }
    report(&runs, &node, stale.as_deref(), started.elapsed());
}

/// A running primary with its workers, on `port`; stopped on drop (a panic) if not before.
struct Server {
    setup: Setup,
    process: Process,
    port: u16,
    workers: Vec<i32>,
    socket: PathBuf,
    // Last, so that it is removed after the server has stopped.
    _dir: tempfile::TempDir,
}

impl Server {
    fn clusterd(clusterd: &Path, chat: &Path) -> Self {
        let (dir, socket, log) = common::scratch("clusterd-fanout-", "server.log");
        let port = common::free_port();
        let program = [chat.display().to_string()];
        let (process, workers) =
            common::start_clusterd(clusterd, (WORKERS, &program), (port, &socket, &log), START_TIMEOUT);
        Self { setup: Setup::Clusterd, process, port, workers, socket, _dir: dir }.checked()
    }

    fn node(node: &Path) -> Self {
        let (dir, socket, log) = common::scratch("clusterd-fanout-node-", "server.log");
        let port = common::free_port();
        let (process, workers) = common::start_node_primary(node, ("primary.cjs", port, WORKERS), &log, START_TIMEOUT);
        Self { setup: Setup::Node, process, port, workers, socket, _dir: dir }.checked()
    }

    /// One GET / through the port must answer 200 from the app (the chat page, or primary.cjs's
    /// hello).
    fn checked(mut self) -> Self {
        let expected = |body: &str| match self.setup {
            Setup::Clusterd => body.contains("clusterd chat"),
            Setup::Node => body.starts_with("hello from worker "),
        };
        match common::http_get(self.port) {
            Ok((200, body)) if expected(&body) => self,
            Ok((code, body)) => self.process.fail(&format!("GET / answered {code} {body:?}, not the app's 200")),
            Err(error) => self.process.fail(&format!("GET / failed: {error}")),
        }
    }
}

/// One run: one server, fresh clients, the phases.
struct Run {
    round: usize,
    setup: Setup,
    size: usize,
    load: Load,
    /// The server's command line.
    command: String,
    exit: Option<ExitStatus>,
}

impl Run {
    /// "round 1 100 B clusterd", for the notes.
    fn name(&self) -> String {
        format!("round {} {} B {}", self.round, self.size, self.setup.label())
    }
}

/// What the clients saw and measured in one run.
struct Load {
    /// Clients per worker id, in worker id order.
    spread: Vec<(u64, usize)>,
    /// Handshakes that stalled and were started again: at which step.
    stalls: Vec<&'static str>,
    burst: Phase,
    paced: Phase,
    /// CPU seconds over the throughput phase: the primary, each worker, the client thread, the rest
    /// of the machine; and its wall time.
    cpu: Cpu,
    /// Packets the clients did not expect (with examples), and deliveries of an earlier phase.
    unexpected: u64,
    samples: Vec<String>,
    stale: u64,
}

impl Load {
    /// The throughput phase, or the paced one.
    fn phase(&self, paced: bool) -> &Phase {
        if paced { &self.paced } else { &self.burst }
    }
}

/// The share of all the machine's cores that the server and the clients used, %.
fn own(cpu: &Cpu) -> f64 {
    (cpu.server() + cpu.load) / cpu.seconds / cores() as f64 * 100.0
}

/// Busy share of all the machine's cores, %.
fn machine(cpu: &Cpu) -> f64 {
    cpu.busy / cpu.seconds / cores() as f64 * 100.0
}

/// The CPUs this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn measure(mut server: Server, round: usize, size: usize) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| server.process.fail(&format!("cannot build a Tokio runtime: {e}")));
    let local = tokio::task::LocalSet::new();
    let pids = (server.process.pid, server.workers.clone());
    let load = match local.block_on(&runtime, clients(server.port, size, pids)) {
        Ok(load) => load,
        Err(error) => server.process.fail(&format!("{} {size} B: {error}", server.setup.label())),
    };
    if let Some(status) = server.process.exited() {
        server.process.fail(&format!("the server exited during the run ({status})"));
    }
    if server.setup == Setup::Clusterd {
        let pids = common::status(&server.socket)
            .unwrap_or_else(|e| server.process.fail(&format!("status after the run failed: {e}")))
            .pids();
        if pids != server.workers {
            server.process.fail(&format!("a worker was replaced during the run: {:?} → {pids:?}", server.workers));
        }
    }
    if load.spread.len() != WORKERS {
        let ids: Vec<u64> = load.spread.iter().map(|&(id, _)| id).collect();
        server.process.fail(&format!("the clients reached workers {ids:?}, not all {WORKERS}"));
    }
    let command = server.process.command.clone();
    Run { round, setup: server.setup, size, load, command, exit: server.process.stop() }
}

// ---- The clients ----------------------------------------------------------------------------------

/// Connects the clients, runs the phases, returns what they measured; `primary` and `workers` are
/// the server's pids (for the CPU figures).
async fn clients(port: u16, size: usize, (primary, workers): (i32, Vec<i32>)) -> Result<Load, String> {
    let Connected { clients, stalls, spread } = sio_client::connect_all(port, CLIENTS).await?;
    // One sender per worker: the first client each worker got.
    let mut senders: Vec<usize> = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        if !senders.iter().any(|&s| clients[s].worker == client.worker) {
            senders.push(i);
        }
    }
    let shared = Rc::new(Shared::new(CLIENTS, MAX_SAMPLES, 120));
    let (burst, cpu, paced) = broadcast::run_clients(clients, Rc::clone(&shared), &senders, async |shared, senders| {
        let sample = || CpuSample::take(primary, &workers);
        broadcast(shared, senders, (1, WARMUP), Pace::Window(WINDOW), size).await?;
        let before = sample();
        let burst = broadcast(shared, senders, (2, BURST), Pace::Window(WINDOW), size).await?;
        let cpu = before.until(&sample(), LoadIn::Thread);
        let paced = broadcast(shared, senders, (3, PACED), Pace::Rate(PACED_RATE), size).await?;
        Ok((burst, cpu, paced))
    })
    .await?;
    Ok(Load {
        spread,
        stalls,
        burst,
        paced,
        cpu,
        unexpected: shared.unexpected_count(),
        samples: shared.samples(),
        stale: shared.stale(),
    })
}

// ---- Report ---------------------------------------------------------------------------------------

fn ms(us: u32) -> f64 {
    f64::from(us) / 1e3
}

fn report(runs: &[Run], node: &Path, stale: Option<&str>, took: Duration) {
    println!();
    println!("## Socket.IO broadcast fan-out: {CLIENTS} WebSocket clients on {WORKERS} workers");
    println!();
    println!(
        "Node primary: `benches/node/primary.cjs` (cluster + @socket.io/sticky {} least-connection + \
         @socket.io/cluster-adapter {}, serialization \"advanced\", socket.io {}) with {WORKERS} Node workers; \
         clusterd: `--workers {WORKERS} --listen` with `examples/chat`. {CLIENTS} clients, {BURST} broadcasts \
         with at most {WINDOW} in flight for throughput, then {PACED} at {PACED_RATE} broadcasts/s for latency; \
         {ROUNDS} interleaved rounds on the same {}-CPU machine, medians.",
        common::package_version("@socket.io/sticky"),
        common::package_version("@socket.io/cluster-adapter"),
        common::package_version("socket.io"),
        cores()
    );
    println!();
    summary(runs);
    println!();
    println!("Every run:");
    println!();
    every_run(runs);
    println!();
    println!("Notes:");
    notes(runs, stale);
    println!(
        "- Latency is from the send (the sender's clock, shared by every client: one process) to the read that \
         brought the message, for every delivery. The clients share the machine with the servers."
    );
    println!(
        "- node {}; whole bench {:.0} s.",
        common::version(node, "--version").unwrap_or_else(|| "(version unknown)".to_owned()),
        took.as_secs_f64()
    );
    println!();
    println!("Commands:");
    println!();
    println!("```");
    println!("cargo build --release --workspace --bins --examples && cargo bench --bench fanout");
    for setup in [Setup::Node, Setup::Clusterd] {
        if let Some(run) = runs.iter().find(|r| r.setup == setup) {
            println!("{} &", run.command);
        }
    }
    println!("```");
    println!();
    println!(
        "(Ports and temporary control-socket paths differ in every run. The clients are the bench itself: \
         ws://127.0.0.1:<port>/socket.io/?EIO=4&transport=websocket.)"
    );
}

/// The table of medians, Node against clusterd, per payload size.
fn summary(runs: &[Run]) {
    let median = |rs: &[&Load], f: &dyn Fn(&Load) -> f64| common::median(rs.iter().map(|l| f(l)));
    println!("| payload | measurement | Node primary | clusterd | clusterd / Node |");
    println!("|---|---|---|---|---|");
    for size in SIZES {
        let of = |setup: Setup| -> Vec<&Load> {
            runs.iter().filter(|r| r.setup == setup && r.size == size).map(|r| &r.load).collect()
        };
        let (n, c) = (of(Setup::Node), of(Setup::Clusterd));
        let rate = |rs: &[&Load]| median(rs, &|l| l.burst.rate());
        println!(
            "| {size} B | deliveries/s, median (runs) | {:.0} ({}) | {:.0} ({}) | **{:.2}×** |",
            rate(&n),
            common::list(n.iter().map(|l| l.burst.rate()), 0),
            rate(&c),
            common::list(c.iter().map(|l| l.burst.rate()), 0),
            rate(&c) / rate(&n)
        );
        let paced = format!("at {PACED_RATE} broadcasts/s ({:.0} deliveries/s)", PACED_RATE * CLIENTS as f64);
        for (what, paced) in [("under that load", false), (&paced, true)] {
            let p50 = |rs: &[&Load]| median(rs, &|l| ms(l.phase(paced).p50));
            let p99 = |rs: &[&Load]| median(rs, &|l| ms(l.phase(paced).p99));
            println!(
                "| {size} B | latency p50 / p99 {what}, ms | {:.2} / {:.2} | {:.2} / {:.2} | p99 **{:.2}×** |",
                p50(&n),
                p99(&n),
                p50(&c),
                p99(&c),
                p99(&c) / p99(&n)
            );
        }
        let per_delivery = |rs: &[&Load]| median(rs, &|l| l.cpu.server() / l.burst.deliveries.max(1) as f64 * 1e6);
        println!(
            "| {size} B | server CPU (primary + workers) per delivery, µs | {:.2} | {:.2} | **{:.2}×** |",
            per_delivery(&n),
            per_delivery(&c),
            per_delivery(&c) / per_delivery(&n)
        );
        let cpu = |rs: &[&Load]| {
            let core = |f: &dyn Fn(&Cpu) -> f64| median(rs, &|l| l.cpu.pct(f(&l.cpu)));
            format!(
                "{:.0}; {:.0}; {:.0}; {:.0} ({:.0} %)",
                core(&|c| c.primary),
                core(&|c| c.workers.iter().sum()),
                core(&|c| c.load),
                core(&|c| c.other),
                median(rs, &|l| machine(&l.cpu))
            )
        };
        println!(
            "| {size} B | CPU in the throughput phase, % of a core: primary; workers; clients; rest (machine busy) | \
             {} | {} | |",
            cpu(&n),
            cpu(&c)
        );
    }
    let stalls = |setup: Setup| {
        let stalled: usize = runs.iter().filter(|r| r.setup == setup).map(|r| r.load.stalls.len()).sum();
        format!("{stalled} of {}", runs.iter().filter(|r| r.setup == setup).count() * CLIENTS + stalled)
    };
    println!(
        "| all | WebSocket handshakes that stalled (no answer within {STEP_TIMEOUT:?}; started again), all runs \
         | {} | {} | |",
        stalls(Setup::Node),
        stalls(Setup::Clusterd)
    );
}

/// One line per run.
fn every_run(runs: &[Run]) {
    println!(
        "| round | payload | setup | clients per worker | deliveries/s | p50 / p99 / max ms | paced p50 / p99 / max \
         ms | CPU % of a core: primary / each worker / clients / rest | machine busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let (l, cpu) = (&r.load, &r.load.cpu);
        let latency = |p: &Phase| format!("{:.2} / {:.2} / {:.2}", ms(p.p50), ms(p.p99), ms(p.max));
        println!(
            "| {} | {} B | {} | {} | {:.0} | {} | {} | {:.0} / {} / {:.0} / {:.0} | {:.0} % |",
            r.round,
            r.size,
            r.setup.label(),
            l.spread.iter().map(|(id, n)| format!("{id}: {n}")).collect::<Vec<_>>().join(", "),
            l.burst.rate(),
            latency(&l.burst),
            latency(&l.paced),
            cpu.pct(cpu.primary),
            cpu.workers.iter().map(|&w| format!("{:.0}", cpu.pct(w))).collect::<Vec<_>>().join(" + "),
            cpu.pct(cpu.load),
            cpu.pct(cpu.other),
            machine(cpu),
        );
    }
}

/// What went wrong or could skew the figures, run by run.
fn notes(runs: &[Run], stale: Option<&str>) {
    let list = |keep: &dyn Fn(&Run) -> Option<String>| -> Vec<String> { runs.iter().filter_map(keep).collect() };
    let incomplete = list(&|r| {
        let short: Vec<String> = [("throughput", &r.load.burst), ("paced", &r.load.paced)]
            .into_iter()
            .filter(|(_, p)| !p.complete(CLIENTS))
            .map(|(name, p)| {
                format!(
                    "{name}: {} of {} broadcasts reached every client, {} of {} deliveries",
                    p.completed,
                    p.broadcasts,
                    p.deliveries,
                    p.broadcasts * CLIENTS
                )
            })
            .collect();
        (!short.is_empty()).then(|| format!("{} {}", r.name(), short.join(", ")))
    });
    if incomplete.is_empty() {
        println!("- Every broadcast of every phase reached all {CLIENTS} clients, exactly once.");
    } else {
        println!("- **Incomplete** (the phase hit its {PHASE_TIMEOUT:?} deadline): {}.", incomplete.join("; "));
    }
    for r in runs.iter().filter(|r| r.load.unexpected > 0 || r.load.stale > 0) {
        println!(
            "- {}: {} unexpected packets (e.g. {:?}), {} late deliveries of an earlier phase.",
            r.name(),
            r.load.unexpected,
            r.load.samples,
            r.load.stale
        );
    }
    for setup in [Setup::Node, Setup::Clusterd] {
        let mut steps: Vec<(&str, usize)> = Vec::new();
        for &step in runs.iter().filter(|r| r.setup == setup).flat_map(|r| &r.load.stalls) {
            match steps.iter_mut().find(|(s, _)| *s == step) {
                Some((_, n)) => *n += 1,
                None => steps.push((step, 1)),
            }
        }
        if !steps.is_empty() {
            let steps: Vec<String> = steps.iter().map(|(step, n)| format!("{n} {step}")).collect();
            println!(
                "- {}: handshakes that stalled (no answer within {STEP_TIMEOUT:?}; the client started again): {}.",
                setup.label(),
                steps.join(", ")
            );
        }
    }
    let bad_exits = list(&|r| {
        (!r.exit.is_some_and(|s| s.success())).then(|| format!("{}: {}", r.name(), common::describe(r.exit)))
    });
    if bad_exits.is_empty() {
        println!("- Every server exited 0 after SIGTERM.");
    } else {
        println!("- **Servers that did not exit 0** after SIGTERM: {}.", bad_exits.join("; "));
    }
    let client_bound = list(&|r| (r.load.cpu.load > CLIENT_BOUND * r.load.cpu.seconds).then(|| r.name()));
    if !client_bound.is_empty() {
        println!(
            "- **The client thread was busy more than {:.0} % of the time** in: {}; those rates are bounded by the \
             clients, a lower bound of what the server can do.",
            CLIENT_BOUND * 100.0,
            client_bound.join(", ")
        );
    }
    let unsaturated = list(&|r| {
        let cpu = &r.load.cpu;
        (own(cpu) < UNSATURATED && cpu.load <= CLIENT_BOUND * cpu.seconds)
            .then(|| format!("{} ({:.0} %)", r.name(), own(cpu)))
    });
    if !unsaturated.is_empty() {
        println!(
            "- **Not CPU-bound**: in the throughput phase of {}, the server and the clients used less than \
             {UNSATURATED:.0} % of the {} cores (the share is in brackets): latency bounded the rate ({WINDOW} \
             broadcasts in flight at most), unless other processes took the cores (see below).",
            unsaturated.join(", "),
            cores()
        );
    }
    let busy_elsewhere = list(&|r| {
        let cpu = &r.load.cpu;
        (cpu.other > OTHER_CPU_WARNING * cpu.seconds)
            .then(|| format!("{} ({:.0} % of a core)", r.name(), cpu.pct(cpu.other)))
    });
    if !busy_elsewhere.is_empty() {
        println!(
            "- **Warning**: other processes used the machine during: {}; where the server was CPU-bound, its rate \
             is low (the CPU per delivery is the steadier figure).",
            busy_elsewhere.join(", ")
        );
    }
    if let Some(warning) = stale {
        println!("- **Warning**: {warning}.");
    }
}
