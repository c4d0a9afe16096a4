//! Telling systemd how the daemon is doing: `READY=1`, `STATUS=…`, `RELOADING=1`,
//! `STOPPING=1` and `WATCHDOG=1`, through the `sd-notify` crate.
//!
//! Owns: when each message is due (the watchdog at half of `WatchdogSec`, a status only when
//! it changed) and logging a socket that refuses them, once. Outside systemd (no
//! `NOTIFY_SOCKET`) every call is a no-op. Must not: decide what the daemon is doing (the
//! scheduler loop says so), or send from anywhere but the scheduler's own loop, so that a
//! wedged loop stops the watchdog and systemd restarts the service.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

pub(crate) struct Notifier {
    /// Half of `WatchdogSec` (systemd's recommended ping interval); `None` when the unit
    /// has no watchdog for this process.
    watchdog_every: Option<Duration>,
    /// When `WATCHDOG=1` was last sent.
    last_ping: Mutex<Option<Instant>>,
    /// The last `STATUS=` sent, so an unchanged line is not re-sent on every wake-up.
    last_status: Mutex<String>,
    /// Set once a send failed, so a broken socket is logged once, not every second.
    warned: AtomicBool,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` / `WATCHDOG_PID` as systemd set them for this process.
    pub(crate) fn from_env() -> Self {
        Self {
            watchdog_every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last_ping: Mutex::new(None),
            last_status: Mutex::new(String::new()),
            warned: AtomicBool::new(false),
        }
    }

    /// How long the scheduler loop may sleep at most, so the watchdog is fed in time.
    pub(crate) fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states)
            && !self.warned.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(error = %error, "Cannot notify systemd (NOTIFY_SOCKET); the service state it shows may be stale.");
        }
    }

    /// Migrations are done and every job is scheduled.
    pub(crate) fn ready(&self, status: &str) {
        self.remember(status);
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload (SIGHUP) started; systemd waits for the next [`Notifier::ready`].
    pub(crate) fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub(crate) fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: waiting for running jobs to write their checkpoints"),
        ]);
    }

    /// Sends `status` if it differs from the last one sent.
    pub(crate) fn status(&self, status: &str) {
        if self.remember(status) {
            self.send(&[NotifyState::Status(status)]);
        }
    }

    /// `true` when `status` is new.
    fn remember(&self, status: &str) -> bool {
        match self.last_status.lock() {
            Ok(mut last) if *last != status => {
                *last = status.to_string();
                true
            }
            Ok(_) => false,
            Err(_) => true,
        }
    }

    /// The scheduler loop went round: feed the watchdog if half its period has passed.
    pub(crate) fn scheduler_alive(&self) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        let now = Instant::now();
        let due = match self.last_ping.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| now.duration_since(t) >= every);
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => true,
        };
        if due {
            self.send(&[NotifyState::Watchdog]);
        }
    }
}
