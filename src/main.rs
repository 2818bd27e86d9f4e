//! clusterd: the primary process of a multi-process network server.
//!
//! `main` parses, validates (exit 2 on any bad input, nothing started), prepares the process
//! (fd hygiene, subreaper, control socket) while it is still single-threaded, then runs the
//! supervisor on a Tokio runtime and maps its outcome to the documented exit status.

mod accept;
mod balancer;
mod bridge;
mod budget;
mod bus_memory;
mod cli;
mod config;
mod control;
mod duration;
mod listener;
mod logs;
mod metrics;
mod node;
mod notify;
mod proxy_protocol;
mod relay;
mod rss;
mod signals;
mod sniff;
mod socketfile;
mod status;
mod supervisor;
mod values;
mod worker_link;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use tokio::sync::{mpsc, watch};

use crate::cli::Cli;
use crate::config::{Config, LogFormat, LogTimestamps};
use crate::control::server::ControlSocket;
use crate::status::Phase;
use crate::supervisor::{Inputs, Outcome, Parts};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parsed = Cli::command().try_get_matches_from(&argv).and_then(|m| Cli::from_arg_matches(&m).map(|cli| (m, cli)));
    let (matches, cli) = match parsed {
        Ok(parsed) => parsed,
        Err(error) if !error.use_stderr() => error.exit(), // --help, --version
        Err(error) => {
            eprintln!("{}", cli::explain(&error, &argv));
            return ExitCode::from(2);
        }
    };
    if let Some(command) = cli.command {
        // `--control` is global (before or after the subcommand); the options of a run are not.
        let given = matches
            .ids()
            .find(|id| id.as_str() != "control" && matches.value_source(id.as_str()) == Some(ValueSource::CommandLine));
        if let Some(id) = given {
            eprintln!("clusterd: `{id}` is an option of a run, not of a subcommand (which takes only --control)");
            return ExitCode::from(2);
        }
        let control = cli.control.unwrap_or_else(config::default_control_path);
        return match control::client::run(command, &control) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("clusterd: {error:#}");
                ExitCode::from(1)
            }
        };
    }
    let config = match Config::load(cli.run, cli.control, &cli::given_as(&matches)) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("clusterd: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format, config.log_timestamps);
    match run(config) {
        Ok(Outcome::Graceful) => ExitCode::SUCCESS,
        Ok(Outcome::Immediate(signal)) => ExitCode::from(128 + signal as u8),
        Ok(Outcome::Fatal(reason)) => {
            eprintln!("clusterd: {reason}");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("clusterd: {}", describe(&error));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, each said once: an error whose message already quotes its source
/// (`cannot listen on ADDR: {source}`) does not get the source appended again.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run(config: Config) -> anyhow::Result<Outcome> {
    // systemd's sockets first, before clusterd opens any fd of its own: fd 3 and up are theirs
    // only while nothing else has taken a free number.
    let systemd = if config.listen.is_empty() { listener::from_systemd()? } else { Vec::new() };
    // Single-threaded still: safe to touch the fd table and the umask.
    fd_hygiene();
    if let Err(errno) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(%errno, "cannot become a subreaper: orphaned grandchildren will not be reaped by clusterd");
    }
    // Forked now, while single-threaded, and before clusterd opens its sockets.
    let guard = std::sync::Arc::new(supervisor::guard::Guard::start());
    match guard.mechanism() {
        supervisor::guard::Mechanism::Cgroup(_) => tracing::info!("{}", guard.describe()),
        _ => tracing::warn!("{}", guard.describe()),
    }
    let mut control = ControlSocket::bind(&config.control)?;
    // Listening sockets before any worker: a bind error ends clusterd (exit 1) with nothing started.
    let bound = if config.listen.is_empty() { systemd } else { listener::bind_all(&config.listen)? };
    // `bind_all` keeps the order of `config.listen`; systemd's sockets have no `--listen` entry.
    let proxied: Vec<bool> = (0..bound.len()).map(|i| config.proxy_protocol.applies_to(config.listen.get(i))).collect();
    // The metrics address too: cannot bind it, exit 1 before any worker starts.
    let metrics = metrics::server::bind(&config.metrics)?;
    let listening: Vec<String> = bound.iter().map(|b| b.addr().to_owned()).collect();
    let unix_paths: Vec<std::path::PathBuf> =
        bound.iter().chain(&metrics).filter_map(listener::Bound::unix_path).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (spawner, reaper) = supervisor::spawn::start(std::sync::Arc::clone(&guard))?;
        let signals = signals::start(reaper.clone())?;
        tokio::spawn(reaper.run());
        let (requests_tx, requests) = mpsc::channel(64);
        // The workers' own metrics: each scrape (`--metrics`, or the control socket's `metrics`)
        // asks the supervisor, which answers by the scrape's deadline.
        let (gather_tx, gather) = mpsc::channel(metrics::workers::GATHER_QUEUE);
        if !metrics.is_empty() {
            // Before the listeners serve: the accept path counts from the first connection.
            metrics::server::serve(metrics, requests_tx.clone(), Some(gather_tx.clone()))?;
        }
        control.serve(requests_tx, gather_tx)?;
        let (routes_tx, routes) = mpsc::channel(1024);
        let limits = listener::Limits {
            sniff_bytes: config.sniff_bytes,
            sniff_timeout: config.sniff_timeout,
            sticky: config.sticky,
            node: config.protocol == config::Protocol::Node,
            tcp_nodelay: config.tcp_nodelay,
            proxy_protocol: false,
        };
        listener::serve(bound, limits, &proxied, routes_tx.clone())?;
        let logs = logs::LogSink::start(config.log_prefix)?;
        for decision in &config.decisions {
            tracing::info!("{decision}");
        }
        tracing::info!(
            pid = std::process::id(),
            workers = config.workers,
            auto = config.workers_auto,
            control = %control.path().display(),
            listen = ?listening,
            "clusterd starting {} worker(s){}",
            config.workers,
            if config.workers_auto { " (auto: the CPUs this process may use)" } else { "" },
        );
        let (phase, _) = watch::channel(Phase::Starting);
        let bus_memory = std::sync::Arc::new(bus_memory::BusMemory::new(bus_memory::BUS_INPUT));
        let relay = relay::start(config.bus_queue, config.requests_timeout, std::sync::Arc::clone(&bus_memory));
        // Redis is not waited for: clusterd serves locally whatever it does.
        let bridge = match config.bridge.clone() {
            Some(bridge) => Some(bridge::start(bridge, relay.clone(), std::sync::Arc::clone(&bus_memory))?),
            None => None,
        };
        let parts = Parts {
            config,
            spawner,
            logs: logs.clone(),
            phase,
            listening,
            limits,
            routes: routes_tx,
            relay,
            bus_memory,
            bridge: bridge.clone(),
        };
        let outcome = supervisor::run(parts, Inputs { signals, requests, routes, metrics: gather }).await;
        if let Some(bridge) = bridge {
            // The other hosts count this one out at once, not after the host timeout.
            bridge.leave(std::time::Duration::from_secs(1)).await;
        }
        // Every worker is reaped: pass on the last lines they wrote before exiting.
        logs.finish(std::time::Duration::from_secs(2)).await;
        for path in unix_paths {
            let _ = std::fs::remove_file(path);
        }
        guard.finish();
        match &outcome {
            Outcome::Fatal(_) => {}
            Outcome::Graceful => tracing::info!("stopped"),
            Outcome::Immediate(signal) => tracing::warn!("stopped at once ({})", signal.as_str()),
        }
        drop(control);
        Ok(outcome)
    })
}

/// Makes sure fds 0–2 are open (so no socket of ours can land on them and be clobbered by a
/// worker's stdio), and marks every other inherited fd close-on-exec so none leaks into workers.
fn fd_hygiene() {
    use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl, open};
    for fd in 0..3 {
        // SAFETY: borrowed for the duration of one fcntl call only.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if fcntl(borrowed, FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF) {
            // open() takes the lowest free number, which is this one; keep it open for good.
            if let Ok(null) = open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
                std::mem::forget(null);
            }
        }
    }
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> =
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect();
    for fd in fds {
        // SAFETY: borrowed for the duration of the fcntl calls only; a number that closed since
        // the listing (the read_dir handle itself) just fails with EBADF.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Ok(bits) = fcntl(borrowed, FcntlArg::F_GETFD) {
            let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::from_bits_truncate(bits) | FdFlag::FD_CLOEXEC));
        }
    }
}

/// Text lines carry an RFC 3339 UTC timestamp unless `--log-timestamps` says otherwise or, with
/// `auto`, stderr is the journal, which stamps every line itself. JSON lines always carry one (a
/// `timestamp` field): what reads them expects it.
fn init_logging(format: LogFormat, timestamps: LogTimestamps) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let timed = match timestamps {
        LogTimestamps::Always => true,
        LogTimestamps::Never => false,
        LogTimestamps::Auto => !logs::stderr_is_journal(),
    };
    match format {
        LogFormat::Text if timed => builder.init(),
        LogFormat::Text => builder.without_time().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
