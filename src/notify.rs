//! Talking to systemd (`Type=notify`): READY once every initial worker is ready, STATUS as the pool
//! changes, STOPPING on stop, and WATCHDOG pings from the dispatcher's own loop, so a stuck
//! dispatcher stops them. Every call is a no-op when `NOTIFY_SOCKET` is unset.

use std::time::Duration;

use sd_notify::NotifyState;

/// The service manager's notification socket, if any.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    last_status: String,
}

impl Notifier {
    pub fn from_env() -> Self {
        Self { enabled: std::env::var_os("NOTIFY_SOCKET").is_some(), last_status: String::new() }
    }

    /// How often to ping the watchdog (half of `WATCHDOG_USEC`), if systemd asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        sd_notify::watchdog_enabled().map(|d| d / 2).filter(|d| !d.is_zero())
    }

    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.last_status = status.to_owned();
    }

    /// Sends STATUS= only when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.send(&[NotifyState::Status(status)]);
            self.last_status = status.to_owned();
        }
    }

    pub fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
        self.last_status = status.to_owned();
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(error) = sd_notify::notify(states)
        {
            tracing::warn!(%error, "cannot notify the service manager");
        }
    }
}
