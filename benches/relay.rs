//! clusterd's message relay against the Node.js cluster primary's: one publisher, two subscribers.
//!
//! Run it with `cargo build --release --workspace --bins --examples && cargo bench --bench relay`.
//!
//! 1. **clusterd**: `clusterd --workers 3 -- target/release/examples/relay_worker`: slot 0 publishes
//!    `COUNT` messages of `SIZE` bytes on the bus channel "bench" once both other workers subscribe;
//!    they receive them through clusterd's relay.
//! 2. **Node**: `node benches/node/relay_primary.cjs 3`: a `cluster` primary (`serialization:
//!    "advanced"`) running @socket.io/cluster-adapter's real `setupPrimary()`, which forwards every
//!    `_sio_adapter` message of one worker to all the others with `worker.send`; worker 1
//!    (`relay_worker.cjs`) sends the same traffic with `process.send`, the two others receive it.
//!
//! Each payload starts with its send time; each subscriber records every message's latency and
//! prints `relay done received=N elapsed_ms=E p50_us=P p99_us=Q` (E from the first message's send
//! time to the last receipt). Messages delivered per second = messages received by both subscribers
//! / the larger E. Sizes [`SIZES`], [`ROUNDS`] interleaved rounds (Node, then clusterd, per size),
//! medians. Every process is fresh for each run, local, stopped (SIGTERM, then SIGKILL to its
//! process group) after the run or when the bench panics, and every wait has a timeout.

mod common;

use common::Setup;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::Process;

const ROUNDS: usize = 3;
const WORKERS: usize = 3;
const SUBSCRIBERS: usize = WORKERS - 1;
/// Payload sizes and message counts (each clusterd run takes about 1 to 2 s).
const SIZES: [(usize, u64); 2] = [(100, 400_000), (10 * 1024, 150_000)];
/// The target: clusterd delivers at least this many times Node's messages per second.
const TARGET: f64 = 10.0;

/// How long one run (start, publish, receive) may take before the bench gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// One subscriber's `relay done` line.
#[derive(Debug, Clone, Copy)]
struct Done {
    received: u64,
    elapsed_ms: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Done {
    fn parse(line: &str) -> Option<Self> {
        let rest = &line[line.find("relay done ")? + "relay done ".len()..];
        let field = |name: &str| -> Option<f64> {
            rest.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        Some(Self {
            received: field("received")? as u64,
            elapsed_ms: field("elapsed_ms")?,
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
        })
    }
}

struct Run {
    setup: Setup,
    size: usize,
    count: u64,
    /// Messages delivered per second (both subscribers).
    rate: f64,
    received: u64,
    /// The worse subscriber's p50 and p99, µs.
    p50_us: f64,
    p99_us: f64,
    command: String,
}

fn main() {
    let dir = common::target_dir();
    let clusterd = common::binary(&dir, "relay", "clusterd");
    let worker = common::example(&dir, "relay_worker");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = common::sdk_sources(root);
    sources.push(root.join("examples/relay_worker.rs"));
    if let Some(warning) = common::stale_warning(root, &worker, &sources) {
        eprintln!("warning: {warning}");
    }
    let node = common::find_in_path("node").unwrap_or_else(|| {
        eprintln!("error: `node` is not in PATH; this bench needs Node.js 20 or later (with npm)");
        std::process::exit(1);
    });
    common::ensure_node_modules(
        &common::find_in_path("npm").unwrap_or_else(|| {
            eprintln!("error: `npm` is not in PATH");
            std::process::exit(1);
        }),
        &["@socket.io/cluster-adapter"],
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        for (size, count) in SIZES {
            for setup in [Setup::Node, Setup::Clusterd] {
                let run = match setup {
                    Setup::Node => run_node(&node, size, count),
                    Setup::Clusterd => run_clusterd(&clusterd, &worker, size, count),
                };
                eprintln!(
                    "round {round}/{ROUNDS} {size} B {}: {:.0} msg/s, p50 {:.0} µs, p99 {:.0} µs, received {}/{}",
                    setup.label(),
                    run.rate,
                    run.p50_us,
                    run.p99_us,
                    run.received,
                    run.count * SUBSCRIBERS as u64
                );
                runs.push(run);
            }
        }
    }
    report(&runs, &node, started.elapsed());
}

fn run_clusterd(clusterd: &Path, worker: &Path, size: usize, count: u64) -> Run {
    let (dir, socket, log) = common::scratch("clusterd-relay-", "clusterd.log");
    let args = vec![
        "--workers".to_owned(),
        WORKERS.to_string(),
        "--control".into(),
        socket.display().to_string(),
        "--".into(),
        worker.display().to_string(),
    ];
    let mut command = Command::new(clusterd);
    command.args(&args).env("RELAY_SIZE", size.to_string()).env("RELAY_COUNT", count.to_string());
    let text = format!(
        "RELAY_SIZE={size} RELAY_COUNT={count} RUST_LOG=info {} --workers {WORKERS} -- {}",
        clusterd.display(),
        worker.display()
    );
    let run = measure(Setup::Clusterd, command, &log, text, size, count);
    drop(dir);
    run
}

fn run_node(node: &Path, size: usize, count: u64) -> Run {
    let (dir, _socket, log) = common::scratch("clusterd-relay-node-", "node.log");
    let script = common::node_dir().join("relay_primary.cjs");
    let mut command = Command::new(node);
    command
        .arg(&script)
        .arg(WORKERS.to_string())
        .current_dir(common::node_dir())
        .env("RELAY_SIZE", size.to_string())
        .env("RELAY_COUNT", count.to_string());
    let text = format!(
        "(cd {} && RELAY_SIZE={size} RELAY_COUNT={count} {} relay_primary.cjs {WORKERS})",
        common::node_dir().display(),
        node.display()
    );
    let run = measure(Setup::Node, command, &log, text, size, count);
    drop(dir);
    run
}

/// Starts the primary, waits (bounded) for both subscribers' `relay done` lines, stops it.
fn measure(setup: Setup, mut command: Command, log: &Path, text: String, size: usize, count: u64) -> Run {
    let err = std::fs::File::create(log).expect("cannot create the log file");
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
    let mut child = spawn(&mut command);
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let mut copy = std::fs::OpenOptions::new().append(true).open(log).expect("cannot open the log file");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(copy, "{line}");
            let _ = tx.send(line);
        }
    });
    let mut process = Process::new(setup.label(), child, log.to_path_buf(), text.clone(), true);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut done = Vec::new();
    while done.len() < SUBSCRIBERS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => done.extend(Done::parse(&line)),
            Err(mpsc::RecvTimeoutError::Timeout) => process.fail(&format!(
                "{} subscribers of {SUBSCRIBERS} reported within {RUN_TIMEOUT:?} ({size} B x {count})",
                done.len()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => process.fail("the primary closed its stdout"),
        }
    }
    process.stop();
    let received: u64 = done.iter().map(|d| d.received).sum();
    let elapsed_ms = done.iter().map(|d| d.elapsed_ms).fold(0.0, f64::max);
    Run {
        setup,
        size,
        count,
        rate: if elapsed_ms > 0.0 { received as f64 / (elapsed_ms / 1e3) } else { 0.0 },
        received,
        p50_us: done.iter().map(|d| d.p50_us).fold(0.0, f64::max),
        p99_us: done.iter().map(|d| d.p99_us).fold(0.0, f64::max),
        command: text,
    }
}

/// Spawns a primary in a process group of its own, in a clean environment, dying with the bench.
fn spawn(command: &mut Command) -> Child {
    use std::os::unix::process::CommandExt;
    common::clean_env(command, |name| name.starts_with("NODE_") || name == "DEBUG" || name.starts_with("RELAY_"));
    command.process_group(0);
    common::die_with_bench(command);
    command.spawn().unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()))
}

fn report(runs: &[Run], node: &Path, took: Duration) {
    let of = |setup: Setup, size: usize| -> Vec<&Run> {
        runs.iter().filter(|r| r.setup == setup && r.size == size).collect()
    };
    println!("\n## Relay: 1 publisher → {SUBSCRIBERS} subscribers, medians of {ROUNDS} interleaved rounds\n");
    println!(
        "| payload | messages | clusterd msg/s | Node msg/s | ratio (target ≥ {TARGET:.0}×) | clusterd p50 / p99 µs | Node p50 / p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut lines = Vec::new();
    for (size, count) in SIZES {
        let c = of(Setup::Clusterd, size);
        let n = of(Setup::Node, size);
        let rate = |rs: &[&Run]| common::median(rs.iter().map(|r| r.rate));
        let p50 = |rs: &[&Run]| common::median(rs.iter().map(|r| r.p50_us));
        let p99 = |rs: &[&Run]| common::median(rs.iter().map(|r| r.p99_us));
        let ratio = rate(&c) / rate(&n);
        let verdict = if ratio >= TARGET { "met" } else { "MISSED" };
        println!(
            "| {size} B | {count} × {SUBSCRIBERS} | {:.0} | {:.0} | {ratio:.1}× ({verdict}) | {:.0} / {:.0} | {:.0} / {:.0} |",
            rate(&c),
            rate(&n),
            p50(&c),
            p99(&c),
            p50(&n),
            p99(&n)
        );
        let short: Vec<String> = c
            .iter()
            .chain(n.iter())
            .filter(|r| r.received < r.count * SUBSCRIBERS as u64)
            .map(|r| format!("{} {size} B received {}", r.setup.label(), r.received))
            .collect();
        lines.push(format!(
            "- {size} B: clusterd runs {} msg/s; Node runs {} msg/s; p99 {} (clusterd {:.0} µs vs Node {:.0} µs){}",
            common::list(c.iter().map(|r| r.rate), 0),
            common::list(n.iter().map(|r| r.rate), 0),
            if p99(&c) < p99(&n) { "lower" } else { "NOT lower" },
            p99(&c),
            p99(&n),
            if short.is_empty() { String::new() } else { format!("; INCOMPLETE: {}", short.join(", ")) }
        ));
    }
    println!();
    for line in lines {
        println!("{line}");
    }
    println!(
        "\nLatency is measured under full load (the publisher sends as fast as backpressure lets it), so \
         it is mostly queueing time. Node: {}. Took {:.0} s.\n\nCommands:\n",
        common::version(node, "--version").unwrap_or_else(|| "?".into()),
        took.as_secs_f64()
    );
    for (size, _) in SIZES {
        for setup in [Setup::Clusterd, Setup::Node] {
            if let Some(run) = of(setup, size).first() {
                println!("    {}", run.command);
            }
        }
    }
}
