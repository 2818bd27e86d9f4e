//! clusterd's own cost per unit of work, `--protocol node` against the native protocol, counted in
//! instructions with `valgrind --tool=callgrind` (see `common/callgrind.rs`): a figure that other
//! processes on the machine do not move, unlike CPU time, so it can be taken on a busy machine and
//! compared from one version of the code to the next.
//!
//! Run it with `cargo build --release --workspace --bins --examples && cargo bench --bench primary_cost`
//! (`scripts/bench primary_cost` installs valgrind and the npm packages first). It needs `valgrind`
//! and `node` in `PATH`. Options after `--`: `--quick` (smaller loads, for a check that it runs),
//! `--keep <DIR>` (keep each run's callgrind output there, for `callgrind_annotate`),
//! `--clusterd <PATH>` (measure that binary instead, say a copy built from an earlier commit; the
//! workers still come from this build), `--clients <N>` (N clients at once, each with its share of
//! the units, one at a time: under valgrind clusterd is the slowest party, so they queue up and it
//! finds several connections per wakeup, as under a load generator), `--only connection|session`.
//!
//! The units, the same bytes from the same client for both protocols, one at a time:
//! - **connection**: `GET /` on a new connection with `Connection: close`: clusterd accepts it,
//!   reads the request and hands it to a worker, which answers 200 and closes;
//! - **polling session**: a Socket.IO session over HTTP long-polling, written out request by
//!   request (`common/polling.rs`: handshake, connect, its answer, a `whoami` with ack, the ack,
//!   close): [`REQUESTS_PER_SESSION`] connections routed by the session id, plus the session's
//!   report from the worker when it opens and when it closes.
//!
//! Workers, 2 of each: native, the `hello` example (connections) and the `chat` example
//! (sessions, socketioxide behind the SDK's `SessionLayer`); node, `benches/node/worker.cjs`
//! (the documented worker, `setupWorker(io)`, `io.adapter(createAdapter())`) for both. Each unit
//! count runs clusterd afresh twice, with [`LOADS`] units each; the cost of one unit is the
//! difference of the two runs' instructions divided by the difference of their units, so
//! clusterd's start, its workers' start and its stop cancel out.

mod common;

use std::path::{Path, PathBuf};

use common::callgrind::{Profiled, profile};
use common::polling::{self, REQUESTS_PER_SESSION};

/// The two loads of each measurement, in units: (connections, sessions).
const LOADS: [(usize, usize); 2] = [(100, 20), (500, 100)];
/// `--quick`: just enough to see that every part runs.
const QUICK_LOADS: [(usize, usize); 2] = [(10, 2), (30, 6)];
/// The issue's goal: node costs at most this many times native per unit.
const TARGET: f64 = 1.5;
const WORKERS: usize = 2;
/// `--session-ttl`: far longer than one session takes under valgrind, short enough to wait for.
const SESSION_TTL: &str = "2s";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Native,
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Connection,
    Session,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Self::Connection => "handed-off connection (`GET /`, `Connection: close`)",
            Self::Session => "polling session (6 requests, open and close reports)",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Session => "session",
        }
    }
}

struct Options {
    quick: bool,
    keep: Option<PathBuf>,
    /// Another clusterd binary to measure (say, a copy built from an earlier commit).
    clusterd: Option<PathBuf>,
    /// Clients running at once (each does its share of the units, one at a time).
    clients: usize,
    /// Only this unit (`connection` or `session`).
    only: Option<String>,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self { quick: false, keep: None, clusterd: None, clients: 1, only: None };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--keep" => {
                    options.keep = args.next().map(|dir| {
                        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir}: {e}"));
                        std::fs::canonicalize(&dir).unwrap_or_else(|e| panic!("cannot resolve {dir}: {e}"))
                    })
                }
                // clusterd runs in benches/node: a relative path would be taken from there.
                "--clusterd" => options.clusterd = args.next().and_then(|p| std::fs::canonicalize(p).ok()),
                // `cargo bench` passes `--bench`.
                "--clients" => {
                    options.clients = args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0).unwrap_or_else(|| {
                        eprintln!("error: --clients takes a number of clients, 1 or more");
                        std::process::exit(2);
                    })
                }
                "--only" => options.only = args.next(),
                "--bench" => {}
                other => {
                    eprintln!(
                        "error: unknown option {other:?} (known: --quick, --keep <DIR>, --clusterd <PATH>, --clients <N>, --only <UNIT>)"
                    );
                    std::process::exit(2);
                }
            }
        }
        options
    }
}

fn main() {
    let options = Options::parse();
    let need = |name: &str, hint: &str| {
        common::find_in_path(name).unwrap_or_else(|| {
            eprintln!("error: `{name}` is not in PATH; this bench needs it. {hint}");
            std::process::exit(1);
        })
    };
    let valgrind = need("valgrind", "Install it with scripts/install-valgrind (Debian package `valgrind`).");
    let node = need("node", "Install Node.js 20 or later (with npm).");
    let npm = need("npm", "Install npm (it comes with Node.js).");
    common::ensure_node_modules(&npm, &["socket.io", "@socket.io/sticky", "@socket.io/cluster-adapter"]);
    let target = common::target_dir();
    let clusterd = options.clusterd.clone().unwrap_or_else(|| common::binary(&target, "primary_cost", "clusterd"));
    let examples = [common::example(&target, "hello"), common::example(&target, "chat")];
    let loads = if options.quick { QUICK_LOADS } else { LOADS };

    let mut rows = Vec::new();
    let mut commands = Vec::new();
    let units = [Unit::Connection, Unit::Session];
    for unit in units.into_iter().filter(|u| options.only.as_deref().is_none_or(|only| only == u.name())) {
        let mut per_unit = Vec::new();
        for protocol in [Protocol::Native, Protocol::Node] {
            let mut runs = Vec::new();
            for &(connections, sessions) in &loads {
                let count = match unit {
                    Unit::Connection => connections,
                    Unit::Session => sessions,
                };
                let worker = match (protocol, unit) {
                    (Protocol::Native, Unit::Connection) => vec![examples[0].display().to_string()],
                    (Protocol::Native, Unit::Session) => vec![examples[1].display().to_string()],
                    (Protocol::Node, _) => vec![node.display().to_string(), "worker.cjs".to_owned()],
                };
                let name = format!("{}-{:?}-{count}", unit.name(), protocol).to_lowercase();
                let keep = (options.keep.as_deref(), name.as_str());
                let run = measure((&valgrind, &clusterd), protocol, &worker, keep, (unit, count, options.clients));
                eprintln!("{name}: {} instructions", thousands(run.instructions as f64));
                if let Some(kept) = &run.kept {
                    eprintln!("  kept {}", kept.display());
                }
                commands.push(run.command.clone());
                runs.push((count, run.instructions));
            }
            let [(n1, i1), (n2, i2)] = [runs[0], runs[1]];
            per_unit.push((i2 as f64 - i1 as f64) / (n2 - n1) as f64);
        }
        rows.push((unit, per_unit[0], per_unit[1]));
    }
    report(&rows, &loads, &commands, (options.quick, options.clients));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(warning) = common::stale_warning(root, &clusterd, &common::files_under(&root.join("src"))) {
        println!("- **Warning**: {warning}.");
    }
}

/// One run of clusterd under callgrind with `count` units of load.
fn measure(
    (valgrind, clusterd): (&Path, &Path),
    protocol: Protocol,
    worker: &[String],
    keep: (Option<&Path>, &str),
    (unit, count, clients): (Unit, usize, usize),
) -> Profiled {
    // Sessions that end are forgotten after the ttl (SDK workers report no close): a short one
    // lets every run end with none left, so that each session's whole cost is counted.
    let mut args =
        vec!["--workers".to_owned(), WORKERS.to_string(), "--session-ttl".to_owned(), SESSION_TTL.to_owned()];
    if protocol == Protocol::Node {
        args.extend(["--protocol".to_owned(), "node".to_owned()]);
    }
    args.push("--".to_owned());
    args.extend(worker.iter().cloned());
    let load = |port: u16| -> Result<(), String> {
        std::thread::scope(|scope| {
            let shares: Vec<_> = (0..clients)
                .map(|client| {
                    scope.spawn(move || {
                        for i in (client..count).step_by(clients) {
                            match unit {
                                Unit::Connection => polling::get_root(port),
                                Unit::Session => polling::session(port),
                            }
                            .map_err(|e| format!("unit {} of {count}: {e}", i + 1))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            shares.into_iter().try_for_each(|share| share.join().unwrap_or_else(|_| Err("a client panicked".into())))
        })
    };
    profile((valgrind, clusterd), &args, &common::node_dir(), keep, load)
        .unwrap_or_else(|e| panic!("{:?} {}: {e}", protocol, unit.name()))
}

fn report(
    rows: &[(Unit, f64, f64)],
    loads: &[(usize, usize); 2],
    commands: &[String],
    (quick, clients): (bool, usize),
) {
    println!();
    println!(
        "## clusterd's instructions per unit, `--protocol node` against native ({WORKERS} workers, {clients} \
         client{} at once, callgrind{})",
        if clients == 1 { "" } else { "s" },
        if quick { ", --quick: too few units for a figure to keep" } else { "" }
    );
    println!();
    println!("| unit | native | node | node / native | goal ≤ {TARGET}× |");
    println!("|---|---|---|---|---|");
    for &(unit, native, node) in rows {
        let ratio = node / native.max(f64::MIN_POSITIVE);
        println!(
            "| {} | {} | {} | **{ratio:.2}×** | {} |",
            unit.label(),
            thousands(native),
            thousands(node),
            if ratio <= TARGET { "met" } else { "**missed**" }
        );
    }
    println!();
    println!(
        "Each figure: (instructions with the larger load − with the smaller) / the difference in units, clusterd \
         alone (all its threads, from start to exit; its workers are not counted). Connections: {} and {}; \
         sessions: {} and {} ({REQUESTS_PER_SESSION} connections each).",
        loads[0].0, loads[1].0, loads[0].1, loads[1].1
    );
    println!();
    println!("Commands (one per run; ports and temporary paths differ each time):");
    println!();
    println!("```");
    println!("cargo build --release --workspace --bins --examples && cargo bench --bench primary_cost");
    for command in commands {
        println!("{command}");
    }
    println!("```");
}

/// Thousands separated by a space, as in the README.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}
