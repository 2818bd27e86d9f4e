//! `clusterd status --watch [INTERVAL]`: the worker table, redrawn until interrupted.
//!
//! On a terminal each frame overwrites the last in place (cursor home, each line followed by
//! clear-to-end-of-line, then clear-to-end-of-screen): no full clear, so no flicker. When stdout
//! is not a terminal the frames are printed one after the other, each ending with an empty line,
//! for a log or a pipe. Requests per second are the connections routed to a process between two
//! frames (`handed_off` in `status --json`), over the time between them.
//!
//! It ends with exit 0 on `INT` (Ctrl-C), `TERM` or `HUP`, or when stdout closes; and with exit
//! 1 and a message once clusterd no longer answers (it stopped).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::proto::ControlRequest;
use crate::status::Status;

/// Redraws the status every `interval` until a signal, a closed stdout, or clusterd's exit.
pub fn run(control: &Path, interval: Duration, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(watch(control, interval, json))
}

async fn watch(control: &Path, interval: Duration, json: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let terminal = std::io::stdout().is_terminal();
    let mut previous: Option<(Status, Instant)> = None;
    loop {
        let stopped = tokio::select! {
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
            _ = hangup.recv() => true,
            _ = ticks.tick() => false,
        };
        if stopped {
            return Ok(());
        }
        let path = control.to_owned();
        // The request blocks (std socket): off the thread that waits for the signals.
        let reply = tokio::task::spawn_blocking(move || super::client::send(&path, &ControlRequest::Status))
            .await
            .context("the status request did not finish")?;
        let status = match reply {
            Ok(reply) if reply.ok => reply.status.context("clusterd answered without a status")?,
            Ok(reply) => bail!("{}", reply.error.unwrap_or_else(|| "refused, with no reason given".into())),
            Err(_) if previous.is_some() => {
                bail!("it stopped: its control socket {} no longer answers", control.display())
            }
            Err(error) => return Err(error),
        };
        let now = Instant::now();
        let frame = if json {
            format!("{}\n", serde_json::to_string(&status)?)
        } else {
            let since = previous.as_ref().map(|(s, at)| (s, now - *at));
            let text = table(&status, since, &clock());
            if terminal { in_place(&text) } else { format!("{text}\n") }
        };
        let mut out = std::io::stdout().lock();
        if out.write_all(frame.as_bytes()).and_then(|()| out.flush()).is_err() {
            return Ok(()); // the reader went away (`| head`): nothing more to show
        }
        previous = Some((status, now));
    }
}

/// A frame drawn over the previous one: cursor home, each line cleared to its end, and the rest
/// of the screen cleared (a shorter table leaves nothing behind).
fn in_place(text: &str) -> String {
    let mut out = String::from("\x1b[H");
    for line in text.lines() {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// The wall clock as `HH:MM:SS` UTC, for the frame's header.
fn clock() -> String {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let day = seconds % 86_400;
    format!("{:02}:{:02}:{:02} UTC", day / 3600, day % 3600 / 60, day % 60)
}

/// One frame: the header and a row per process. `previous` is the last frame's status and the
/// time since it, for the rates; a process it did not have shows `-`.
pub fn table(status: &Status, previous: Option<(&Status, Duration)>, clock: &str) -> String {
    let mut out = format!(
        "clusterd pid {}  phase {}  generation {}  {}/{} workers ready  {clock}\n",
        status.pid,
        format!("{:?}", status.phase).to_lowercase(),
        status.generation,
        status.ready,
        status.pool,
    );
    out.push_str(&format!(
        "{:>3}  {:>8}  {:<9} {:>6} {:>8} {:>8} {:>8} {:>8}\n",
        "ID", "PID", "STATE", "CONNS", "SESSIONS", "RSS", "RESTARTS", "REQ/S"
    ));
    let mut total_rate = Some(0.0);
    for w in &status.workers {
        let rate = previous.and_then(|(before, elapsed)| {
            let old = before.workers.iter().find(|o| o.pid.is_some() && o.pid == w.pid)?;
            let seconds = elapsed.as_secs_f64();
            (seconds > 0.0).then(|| w.handed_off.saturating_sub(old.handed_off) as f64 / seconds)
        });
        total_rate = match (total_rate, rate) {
            (Some(total), Some(rate)) => Some(total + rate),
            (Some(total), None) if w.pid.is_none() => Some(total),
            _ => None,
        };
        // The markers of `clusterd status`: `!` crash loop, `*` at capacity.
        let state = format!("{:?}", w.state).to_lowercase()
            + if w.crash_loop { "!" } else { "" }
            + if w.at_capacity { "*" } else { "" };
        out.push_str(&format!(
            "{:>3}  {:>8}  {:<9} {:>6} {:>8} {:>8} {:>8} {:>8}\n",
            w.id,
            w.pid.map_or("-".into(), |p| p.to_string()),
            state,
            w.connections,
            w.sessions,
            w.rss_bytes.map_or("-".into(), bytes),
            w.restarts,
            rate.map_or("-".into(), |r| format!("{r:.1}")),
        ));
    }
    let connections: u64 = status.workers.iter().map(|w| w.connections).sum();
    let rss: u64 = status.workers.iter().filter_map(|w| w.rss_bytes).sum();
    out.push_str(&format!(
        "total: {connections} connections, {} sessions, {} RSS, {} requests/s\n",
        status.sessions,
        bytes(rss),
        total_rate.filter(|_| previous.is_some()).map_or("-".into(), |r| format!("{r:.1}")),
    ));
    if status.workers.iter().any(|w| w.at_capacity) {
        out.push_str("* at capacity: close to its fd limit, the worker gets no new connection\n");
    }
    for problem in &status.problems {
        out.push_str(&format!("! {problem}\n"));
    }
    out
}

/// A size the way `top` shows it: `812K`, `12.3M`, `1.2G`.
fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n < KIB * KIB {
        format!("{:.0}K", n / KIB)
    } else if n < KIB * KIB * KIB {
        format!("{:.1}M", n / (KIB * KIB))
    } else {
        format!("{:.1}G", n / (KIB * KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Phase, WorkerState, WorkerStatus};

    fn row(id: u32, pid: Option<u32>, handed_off: u64, rss: Option<u64>) -> WorkerStatus {
        WorkerStatus {
            id,
            pid,
            state: if pid.is_some() { WorkerState::Ready } else { WorkerState::Backoff },
            generation: 1,
            restarts: 0,
            restart_reasons: Default::default(),
            connections: 1,
            sessions: 0,
            at_capacity: false,
            dropped: 0,
            given_back: 0,
            uptime_ms: None,
            failures: 0,
            crash_loop: false,
            last_exit: None,
            draining_ms: None,
            handed_off,
            rss_bytes: rss,
            replacing: None,
        }
    }

    fn status(workers: Vec<WorkerStatus>) -> Status {
        Status {
            pid: 7,
            phase: Phase::Ready,
            generation: 1,
            pool: 2,
            ready: 2,
            grace_ms: 0,
            problems: Vec::new(),
            listen: Vec::new(),
            program: "x".into(),
            sessions: 0,
            workers,
            proxy_refused: 0,
            bridge: None,
            replaced: Default::default(),
            reloads: Default::default(),
        }
    }

    #[test]
    fn rates_come_from_the_same_process_between_frames() {
        let before = status(vec![row(0, Some(10), 100, Some(5 << 20)), row(1, Some(11), 0, None)]);
        let after = status(vec![
            row(0, Some(10), 150, Some(5 << 20)),
            row(1, Some(12), 40, Some(512 << 10)),
            row(2, None, 0, None),
        ]);
        let first = table(&before, None, "t");
        assert!(first.lines().nth(2).unwrap().ends_with(" -"), "no rate in the first frame:\n{first}");
        assert!(first.contains("total: 2 connections, 0 sessions, 5.0M RSS, - requests/s"), "{first}");
        let next = table(&after, Some((&before, Duration::from_secs(2))), "t");
        let lines: Vec<&str> = next.lines().collect();
        assert!(lines[2].contains(" 5.0M ") && lines[2].ends_with(" 25.0"), "{next}");
        // Slot 1 has a new process: no rate for it, and so none for the total.
        assert!(lines[3].contains(" 512K ") && lines[3].ends_with(" -"), "{next}");
        assert!(lines[4].starts_with("  2         -  backoff"), "{next}");
        assert!(lines[5].ends_with("- requests/s"), "{next}");
        let steady = table(&after, Some((&after, Duration::from_secs(1))), "t");
        assert!(steady.contains("0.0 requests/s"), "{steady}");
    }

    #[test]
    fn a_terminal_frame_is_drawn_in_place() {
        assert_eq!(in_place("a\nbb\n"), "\x1b[Ha\x1b[K\nbb\x1b[K\n\x1b[J");
    }
}
