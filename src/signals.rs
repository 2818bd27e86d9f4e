//! Signals, mapped once to a typed enum. The handlers (signal-hook's) only wake a stream; the
//! stream's task routes SIGCHLD to the reaper and everything else to the dispatcher.

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use signal_hook::consts::signal::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;

use crate::supervisor::spawn::Reaper;

/// A signal, as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// TERM or INT: graceful stop; a second one stops at once.
    Stop(Signal),
    /// QUIT: immediate stop.
    Quit,
    /// HUP: rolling reload.
    Reload,
    /// TTIN: one worker more.
    ScaleUp,
    /// TTOU: one worker fewer.
    ScaleDown,
}

/// Installs the handlers (before any worker exists) and starts the routing task.
pub fn start(reaper: Reaper) -> std::io::Result<mpsc::Receiver<SignalEvent>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU, SIGCHLD])?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(signo) = signals.next().await {
            let event = match signo {
                SIGCHLD => {
                    reaper.wake();
                    continue;
                }
                SIGTERM => SignalEvent::Stop(Signal::SIGTERM),
                SIGINT => SignalEvent::Stop(Signal::SIGINT),
                SIGQUIT => SignalEvent::Quit,
                SIGHUP => SignalEvent::Reload,
                SIGTTIN => SignalEvent::ScaleUp,
                SIGTTOU => SignalEvent::ScaleDown,
                _ => continue,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
