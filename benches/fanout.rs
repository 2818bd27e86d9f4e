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
//!    clock whatever the deliveries (at most [`PACED_BACKLOG`] in flight): p50 / p99 at a load
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

use common::{Process, Setup};

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

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
const PACED_BACKLOG: usize = 64;

/// How long starting a server, connecting every client, and each phase may take.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// A handshake step without an answer within this time stalled: the client starts again, at most
/// [`MAX_STALLS`] times per run.
const STEP_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_STALLS: usize = 20;
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest WebSocket frame the clients accept from a server.
const MAX_FRAME: usize = 1 << 20;
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

#[derive(Debug, Default, Clone)]
struct Cpu {
    primary: f64,
    workers: Vec<f64>,
    client: f64,
    other: f64,
    /// Busy time of the whole machine.
    busy: f64,
    seconds: f64,
}

impl Cpu {
    /// Share of one core.
    fn pct(&self, seconds: f64) -> f64 {
        seconds / self.seconds * 100.0
    }

    /// The server's (primary and workers) CPU seconds.
    fn server(&self) -> f64 {
        self.primary + self.workers.iter().sum::<f64>()
    }

    /// The share of all the machine's cores that the server and the clients used, %.
    fn own(&self) -> f64 {
        (self.server() + self.client) / self.seconds / cores() as f64 * 100.0
    }

    /// Busy share of all the machine's cores, %.
    fn machine(&self) -> f64 {
        self.busy / self.seconds / cores() as f64 * 100.0
    }
}

/// The CPUs this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the clients measured in one phase.
#[derive(Debug, Default, Clone)]
struct Phase {
    broadcasts: usize,
    /// Broadcasts that reached every client before the deadline.
    completed: usize,
    deliveries: u64,
    /// First send → last receipt.
    seconds: f64,
    /// Latency percentiles and maximum, µs.
    p50: u32,
    p99: u32,
    max: u32,
}

impl Phase {
    /// Deliveries per second.
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.deliveries as f64 / self.seconds } else { 0.0 }
    }

    fn complete(&self) -> bool {
        self.completed == self.broadcasts && self.deliveries == (self.broadcasts * CLIENTS) as u64
    }
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

/// What every client task shares (one thread: `Cell`s and `RefCell`s, never borrowed across an
/// await).
struct Shared {
    base: Instant,
    /// The phase being measured; deliveries tagged with another one are counted as stale.
    phase: Cell<u64>,
    /// For each broadcast of the phase, the clients that have yet to receive it.
    remaining: RefCell<Vec<u32>>,
    completed: Cell<usize>,
    deliveries: Cell<u64>,
    last_receipt_us: Cell<u64>,
    latencies: RefCell<Vec<u32>>,
    stale: Cell<u64>,
    unexpected: Cell<u64>,
    samples: RefCell<Vec<String>>,
    /// Woken when a broadcast has reached every client.
    progress: Notify,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A complete text message from the server, read at `now_us`; replies go to `out`.
    fn on_text(&self, text: &[u8], now_us: u64, out: &mut Vec<u8>) {
        if let Some(rest) = text.strip_prefix(BROADCAST_PREFIX) {
            if self.on_broadcast(rest, now_us).is_none() {
                self.unexpected(text);
            }
        } else if text == b"2" {
            // Engine.IO ping.
            out.extend(client_frame(OP_TEXT, b"3"));
        } else {
            self.unexpected(text);
        }
    }

    /// `<phase>:<seq>:<sent µs>:xxx…"]`; `None` if malformed or a duplicate.
    fn on_broadcast(&self, rest: &[u8], now_us: u64) -> Option<()> {
        let mut fields = rest.splitn(4, |&b| b == b':');
        let mut number = || -> Option<u64> { std::str::from_utf8(fields.next()?).ok()?.parse().ok() };
        let (phase, seq, sent) = (number()?, number()?, number()?);
        if phase != self.phase.get() {
            self.stale.set(self.stale.get() + 1);
            return Some(());
        }
        let mut remaining = self.remaining.borrow_mut();
        let left = remaining.get_mut(usize::try_from(seq).ok()?)?;
        *left = left.checked_sub(1)?;
        if *left == 0 {
            self.completed.set(self.completed.get() + 1);
            self.progress.notify_one();
        }
        self.deliveries.set(self.deliveries.get() + 1);
        self.last_receipt_us.set(now_us);
        self.latencies.borrow_mut().push(u32::try_from(now_us.saturating_sub(sent)).unwrap_or(u32::MAX));
        Some(())
    }

    fn unexpected(&self, text: &[u8]) {
        self.unexpected.set(self.unexpected.get() + 1);
        let mut samples = self.samples.borrow_mut();
        if samples.len() < MAX_SAMPLES {
            samples.push(String::from_utf8_lossy(&text[..text.len().min(120)]).into_owned());
        }
    }

    /// Starts phase `id` of `broadcasts`.
    fn begin(&self, id: u64, broadcasts: usize) {
        self.phase.set(id);
        *self.remaining.borrow_mut() = vec![u32::try_from(CLIENTS).expect("client count"); broadcasts];
        self.completed.set(0);
        self.deliveries.set(0);
        self.last_receipt_us.set(0);
        self.latencies.borrow_mut().clear();
    }
}

/// What a broadcast looks like when it arrives: the event and the start of the text.
const BROADCAST_PREFIX: &[u8] = br#"42["chat message",""#;

/// How a phase sends.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// As fast as deliveries complete, at most this many in flight.
    Window(usize),
    /// At this rate, at most [`PACED_BACKLOG`] in flight.
    Rate(f64),
}

/// Connects the clients, runs the phases, returns what they measured; `primary` and `workers` are
/// the server's pids (for the CPU figures).
async fn clients(port: u16, size: usize, (primary, workers): (i32, Vec<i32>)) -> Result<Load, String> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut connected = Vec::with_capacity(CLIENTS);
    let mut stalls = Vec::new();
    while connected.len() < CLIENTS {
        let i = connected.len();
        let outcome = tokio::time::timeout_at(deadline, Client::connect(port))
            .await
            .map_err(|_| format!("{i} of {CLIENTS} clients connected within {CONNECT_TIMEOUT:?}"))?;
        match outcome {
            Ok(client) => connected.push(client),
            Err(Handshake::Stalled(step)) if stalls.len() < MAX_STALLS => stalls.push(step),
            Err(Handshake::Stalled(step)) => {
                return Err(format!("client {i}: no answer {step} within {STEP_TIMEOUT:?}, {MAX_STALLS} times"));
            }
            Err(Handshake::Failed(error)) => return Err(format!("client {i}: {error}")),
        }
    }
    let mut spread: Vec<(u64, usize)> = Vec::new();
    for client in &connected {
        match spread.iter_mut().find(|(id, _)| *id == client.worker) {
            Some((_, n)) => *n += 1,
            None => spread.push((client.worker, 1)),
        }
    }
    spread.sort_unstable();

    let shared = Rc::new(Shared {
        base: Instant::now(),
        phase: Cell::new(0),
        remaining: RefCell::new(Vec::new()),
        completed: Cell::new(0),
        deliveries: Cell::new(0),
        last_receipt_us: Cell::new(0),
        latencies: RefCell::new(Vec::new()),
        stale: Cell::new(0),
        unexpected: Cell::new(0),
        samples: RefCell::new(Vec::new()),
        progress: Notify::new(),
    });
    let stop = CancellationToken::new();
    // One sender per worker: the first client each worker got.
    let mut senders = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for client in connected {
        let outgoing = if senders.len() < spread.len() && !senders.iter().any(|(w, _)| *w == client.worker) {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push((client.worker, tx));
            Some(rx)
        } else {
            None
        };
        tasks.spawn_local(client.run(shared.clone(), outgoing, stop.clone()));
    }
    let senders: Vec<_> = senders.into_iter().map(|(_, tx)| tx).collect();

    let result = async {
        let sample = || CpuSample::take(primary, &workers);
        broadcast(&shared, &senders, (1, WARMUP), Pace::Window(WINDOW), size).await?;
        let before = sample();
        let burst = broadcast(&shared, &senders, (2, BURST), Pace::Window(WINDOW), size).await?;
        let cpu = sample().since(&before);
        let paced = broadcast(&shared, &senders, (3, PACED), Pace::Rate(PACED_RATE), size).await?;
        Ok::<_, String>((burst, cpu, paced))
    };
    // A client that fails (the server closed it, a bad frame) ends the run at once.
    let (burst, cpu, paced) = tokio::select! {
        outcome = result => outcome?,
        Some(ended) = tasks.join_next() => {
            let why = ended.map_err(|e| e.to_string()).and_then(|r| r).err().unwrap_or_else(|| "ended".into());
            return Err(format!("a client stopped during the run: {why}"));
        }
    };
    stop.cancel();
    while let Some(ended) = tasks.join_next().await {
        ended.map_err(|e| e.to_string())?.map_err(|e| format!("a client failed: {e}"))?;
    }
    let samples = shared.samples.borrow().clone();
    Ok(Load {
        spread,
        stalls,
        burst,
        paced,
        cpu,
        unexpected: shared.unexpected.get(),
        samples,
        stale: shared.stale.get(),
    })
}

/// Phase `id`: `count` broadcasts of `size`-byte texts, paced by `pace`, the senders taking turns;
/// returns when every client has every broadcast or at the phase's deadline.
async fn broadcast(
    shared: &Shared,
    senders: &[mpsc::UnboundedSender<Vec<u8>>],
    (id, count): (u64, usize),
    pace: Pace,
    size: usize,
) -> Result<Phase, String> {
    shared.begin(id, count);
    let start = tokio::time::Instant::now();
    let deadline = start + PHASE_TIMEOUT;
    let first_send_us = shared.now_us();
    let window = match pace {
        Pace::Window(window) => window,
        Pace::Rate(_) => PACED_BACKLOG,
    };
    let mut sent = 0;
    'sending: while sent < count {
        if let Pace::Rate(rate) = pace {
            tokio::time::sleep_until(start + Duration::from_secs_f64(sent as f64 / rate)).await;
        }
        while sent - shared.completed.get() >= window {
            if tokio::time::timeout_at(deadline, shared.progress.notified()).await.is_err() {
                break 'sending;
            }
        }
        let frame = client_frame(OP_TEXT, &chat_message(id, sent as u64, shared.now_us(), size));
        senders[sent % senders.len()].send(frame).map_err(|_| "a sender's connection is gone".to_owned())?;
        sent += 1;
    }
    while shared.completed.get() < count {
        if tokio::time::timeout_at(deadline, shared.progress.notified()).await.is_err() {
            break;
        }
    }
    let mut latencies = std::mem::take(&mut *shared.latencies.borrow_mut());
    latencies.sort_unstable();
    let at = |q: f64| -> u32 {
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(rank - 1).copied().unwrap_or(0)
    };
    Ok(Phase {
        broadcasts: count,
        completed: shared.completed.get(),
        deliveries: shared.deliveries.get(),
        seconds: shared.last_receipt_us.get().saturating_sub(first_send_us) as f64 / 1e6,
        p50: at(0.50),
        p99: at(0.99),
        max: latencies.last().copied().unwrap_or(0),
    })
}

/// The Socket.IO event packet `42["chat message","<id>:<seq>:<sent µs>:xxx…"]`, the text padded
/// with `x` to `size` bytes (longer only if the numbers need more).
fn chat_message(id: u64, seq: u64, sent_us: u64, size: usize) -> Vec<u8> {
    let head = format!("{id}:{seq}:{sent_us}:");
    let mut packet = Vec::with_capacity(size + 24);
    packet.extend_from_slice(br#"42["chat message",""#);
    packet.extend_from_slice(head.as_bytes());
    packet.resize(packet.len() + size.saturating_sub(head.len()), b'x');
    packet.extend_from_slice(br#""]"#);
    packet
}

// WebSocket opcodes (RFC 6455).
const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Client frames must be masked; servers cannot tell one key from another, so a fixed one will do.
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x81];

/// One final, masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// A complete server frame at the start of a buffer: FIN, opcode, and where its payload is.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: std::ops::Range<usize>,
}

/// The frame at the start of `buf`, `None` if it is not all there yet.
fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, String> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b1 & 0x80 != 0 {
        return Err("the server sent a masked frame".into());
    }
    let (len, header) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(n) => (usize::from(u16::from_be_bytes([n[0], n[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(n) => (usize::try_from(u64::from_be_bytes(n.try_into().expect("8 bytes"))).unwrap_or(usize::MAX), 10),
            None => return Ok(None),
        },
        n => (usize::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err(format!("a {len}-byte frame from the server (more than {MAX_FRAME})"));
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload: header..header + len }))
}

/// One Socket.IO client over WebSocket, connected to the default namespace.
struct Client {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// The fragments of a message not yet complete.
    partial: Vec<u8>,
    /// The worker that serves it (its "whoami" answer).
    worker: u64,
}

impl Client {
    /// WebSocket upgrade, Engine.IO open, Socket.IO connect, then `whoami` (ack 0), which must say
    /// the transport is "websocket". Each answer must come within [`STEP_TIMEOUT`].
    async fn connect(port: u16) -> Result<Self, Handshake> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| fail(format!("connect: {e}")))?;
        stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        let mut client = Self { stream, buf: Vec::with_capacity(16 * 1024), partial: Vec::new(), worker: 0 };
        let request = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        client.stream.write_all(request.as_bytes()).await.map_err(|e| fail(format!("send the upgrade: {e}")))?;
        let head_end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if client.buf.len() > 8192 {
                return Err(fail("no end of the upgrade response within 8 KiB".into()));
            }
            client.read_within("to the upgrade request").await?;
        };
        let head = String::from_utf8_lossy(&client.buf[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(fail(format!("the upgrade was answered {:?}", head.lines().next().unwrap_or(""))));
        }
        client.buf.drain(..head_end);
        let open = client.next_text("after the upgrade (the Engine.IO open packet)").await?;
        if !open.starts_with(b"0{") {
            return Err(fail(format!("expected the Engine.IO open packet, got {:?}", String::from_utf8_lossy(&open))));
        }
        client.send(b"40").await?;
        let connected = client.next_text("to the namespace connect (40)").await?;
        if !connected.starts_with(b"40") {
            return Err(fail(format!("expected the namespace connect, got {:?}", String::from_utf8_lossy(&connected))));
        }
        client.send(br#"420["whoami"]"#).await?;
        let answer = client.next_text("to whoami").await?;
        let me = answer
            .strip_prefix(b"430")
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(json).ok())
            .ok_or_else(|| fail(format!("expected the whoami ack, got {:?}", String::from_utf8_lossy(&answer))))?;
        if me[0]["transport"] != "websocket" {
            return Err(fail(format!("whoami says the transport is {}", me[0]["transport"])));
        }
        client.worker = me[0]["worker"].as_u64().ok_or_else(|| fail(format!("no worker id in {me}")))?;
        Ok(client)
    }

    /// Reads more of the handshake, within [`STEP_TIMEOUT`]; `step` names what is awaited.
    async fn read_within(&mut self, step: &'static str) -> Result<(), Handshake> {
        match tokio::time::timeout(STEP_TIMEOUT, self.read_more()).await {
            Ok(read) => read.map_err(Handshake::Failed),
            Err(_) => Err(Handshake::Stalled(step)),
        }
    }

    async fn read_more(&mut self) -> Result<(), String> {
        self.buf.reserve(16 * 1024);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    async fn send(&mut self, text: &[u8]) -> Result<(), Handshake> {
        self.stream.write_all(&client_frame(OP_TEXT, text)).await.map_err(|e| fail(format!("send: {e}")))
    }

    /// The next text message of the handshake, `step` (a ping is answered on the way).
    async fn next_text(&mut self, step: &'static str) -> Result<Vec<u8>, Handshake> {
        loop {
            let mut first = None;
            let mut out = Vec::new();
            self.parse(&mut out, |text, out| {
                if text == b"2" {
                    out.extend(client_frame(OP_TEXT, b"3"));
                } else if first.is_none() {
                    first = Some(text.to_vec());
                }
            })
            .map_err(Handshake::Failed)?;
            // Only the first message is wanted: the server sends nothing else before it is answered.
            if !out.is_empty() {
                self.stream.write_all(&out).await.map_err(|e| fail(format!("send: {e}")))?;
            }
            if let Some(text) = first {
                return Ok(text);
            }
            self.read_within(step).await?;
        }
    }

    /// Parses every complete frame buffered: text messages go to `on_text`, pings are answered and
    /// a close is an error. Replies are appended to `out`.
    fn parse(&mut self, out: &mut Vec<u8>, mut on_text: impl FnMut(&[u8], &mut Vec<u8>)) -> Result<(), String> {
        let mut at = 0;
        while let Some(frame) = parse_frame(&self.buf[at..])? {
            let payload = &self.buf[at + frame.payload.start..at + frame.payload.end];
            match frame.opcode {
                OP_TEXT | OP_CONTINUATION if frame.fin && self.partial.is_empty() => on_text(payload, out),
                OP_TEXT | OP_CONTINUATION => {
                    self.partial.extend_from_slice(payload);
                    if self.partial.len() > MAX_FRAME {
                        return Err("a fragmented message larger than the frame limit".into());
                    }
                    if frame.fin {
                        on_text(&self.partial, out);
                        self.partial.clear();
                    }
                }
                OP_PING => out.extend(client_frame(OP_PONG, payload)),
                OP_PONG => {}
                OP_CLOSE => {
                    return Err(format!("the server closed the WebSocket ({:?})", String::from_utf8_lossy(payload)));
                }
                other => return Err(format!("an unexpected frame (opcode {other})")),
            }
            at += frame.payload.end;
        }
        self.buf.drain(..at);
        Ok(())
    }

    /// Receives until `stop`: every text goes to `shared`; frames from `outgoing` (a sender's) are
    /// written as they come.
    async fn run(
        mut self,
        shared: Rc<Shared>,
        mut outgoing: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
        stop: CancellationToken,
    ) -> Result<(), String> {
        let mut out = Vec::new();
        loop {
            self.buf.reserve(16 * 1024);
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                Some(frame) = next(&mut outgoing) => {
                    self.stream.write_all(&frame).await.map_err(|e| format!("send: {e}"))?;
                }
                read = self.stream.read_buf(&mut self.buf) => {
                    match read {
                        Ok(0) => return Err("the server closed the connection".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read: {e}")),
                    }
                    // Every message of this read arrived by now.
                    let now = shared.now_us();
                    self.parse(&mut out, |text, out| shared.on_text(text, now, out))?;
                    if !out.is_empty() {
                        self.stream.write_all(&out).await.map_err(|e| format!("send: {e}"))?;
                        out.clear();
                    }
                }
            }
        }
    }
}

/// How a client's handshake failed.
enum Handshake {
    /// No answer within [`STEP_TIMEOUT`] to this step: worth starting again.
    Stalled(&'static str),
    Failed(String),
}

fn fail(error: String) -> Handshake {
    Handshake::Failed(error)
}

/// The next frame to send, if this client is a sender (pending for ever otherwise).
async fn next(outgoing: &mut Option<mpsc::UnboundedReceiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match outgoing {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

// ---- CPU accounting -------------------------------------------------------------------------------

/// CPU counters at one instant, read from the client thread.
struct CpuSample {
    at: Instant,
    primary: u64,
    workers: Vec<u64>,
    /// This thread (the clients), µs.
    client_us: u64,
    /// Busy jiffies of the machine.
    busy: u64,
}

impl CpuSample {
    fn take(primary: i32, workers: &[i32]) -> Self {
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
            .expect("getrusage(RUSAGE_THREAD) failed");
        let us = |t: nix::sys::time::TimeVal| {
            t.tv_sec().max(0).unsigned_abs() * 1_000_000 + t.tv_usec().max(0).unsigned_abs()
        };
        Self {
            at: Instant::now(),
            primary: common::cpu_ticks(primary),
            workers: workers.iter().map(|&p| common::cpu_ticks_or_0(p)).collect(),
            client_us: us(usage.user_time()) + us(usage.system_time()),
            busy: common::machine_jiffies().0,
        }
    }

    fn since(&self, before: &Self) -> Cpu {
        let hz = common::clock_ticks_per_second() as f64;
        let primary = self.primary.saturating_sub(before.primary) as f64 / hz;
        let workers: Vec<f64> =
            self.workers.iter().zip(&before.workers).map(|(a, b)| a.saturating_sub(*b) as f64 / hz).collect();
        let client = self.client_us.saturating_sub(before.client_us) as f64 / 1e6;
        let busy = self.busy.saturating_sub(before.busy) as f64 / hz;
        Cpu {
            other: (busy - primary - workers.iter().sum::<f64>() - client).max(0.0),
            busy,
            primary,
            workers,
            client,
            seconds: self.at.duration_since(before.at).as_secs_f64(),
        }
    }
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
                core(&|c| c.client),
                core(&|c| c.other),
                median(rs, &|l| l.cpu.machine())
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
            cpu.pct(cpu.client),
            cpu.pct(cpu.other),
            cpu.machine(),
        );
    }
}

/// What went wrong or could skew the figures, run by run.
fn notes(runs: &[Run], stale: Option<&str>) {
    let list = |keep: &dyn Fn(&Run) -> Option<String>| -> Vec<String> { runs.iter().filter_map(keep).collect() };
    let incomplete = list(&|r| {
        let short: Vec<String> = [("throughput", &r.load.burst), ("paced", &r.load.paced)]
            .into_iter()
            .filter(|(_, p)| !p.complete())
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
    let client_bound = list(&|r| (r.load.cpu.client > CLIENT_BOUND * r.load.cpu.seconds).then(|| r.name()));
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
        (cpu.own() < UNSATURATED && cpu.client <= CLIENT_BOUND * cpu.seconds)
            .then(|| format!("{} ({:.0} %)", r.name(), cpu.own()))
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
