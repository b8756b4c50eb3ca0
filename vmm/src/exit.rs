//! Why a VM stopped, the process exit status for each reason, and how vCPUs and devices report it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit status: the guest powered off, rebooted or reset (including a triple fault, which is how
/// a guest booted with `reboot=t` restarts).
pub const EXIT_GUEST_SHUTDOWN: i32 = 0;
/// Exit status: the VMM failed (setup error, KVM error, I/O error).
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status: bad command line or configuration.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the guest crashed in a way KVM reports (entry failure, internal/emulation error).
pub const EXIT_GUEST_CRASH: i32 = 3;
/// Exit status: stopped by SIGTERM/SIGINT or a control-socket shutdown.
pub const EXIT_STOPPED: i32 = 4;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself: triple fault, i8042 reset, or a KVM reset event.
    GuestReset,
    /// The guest powered off.
    GuestPowerOff,
    /// The guest did something KVM could not run.
    GuestCrash(String),
    /// The VMM hit an error while running.
    VmmError(String),
    /// Someone asked the VMM to stop.
    Stopped,
}

impl ExitReason {
    /// The documented process exit status for this reason.
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestPowerOff => EXIT_GUEST_SHUTDOWN,
            ExitReason::GuestCrash(_) => EXIT_GUEST_CRASH,
            ExitReason::VmmError(_) => EXIT_VMM_ERROR,
            ExitReason::Stopped => EXIT_STOPPED,
        }
    }
}

/// Shared by vCPUs and devices: the first reason reported wins and wakes the event loop.
pub struct ExitNotifier {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitNotifier {
    /// A notifier with nothing reported yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitNotifier {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one was already recorded, and signals the event.
    pub fn notify(&self, reason: ExitReason) {
        let mut guard = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            tracing::info!(?reason, "vm exit");
            *guard = Some(reason);
        }
        drop(guard);
        // An eventfd write only fails when the counter would overflow: it is already signalled.
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The event signalled on every report, for the event loop.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.reason(), None);
        n.notify(ExitReason::GuestReset);
        n.notify(ExitReason::GuestCrash("x".into()));
        assert_eq!(n.reason(), Some(ExitReason::GuestReset));
        assert_eq!(n.event().read().unwrap(), 2);
        assert_eq!(n.reason().unwrap().code(), EXIT_GUEST_SHUTDOWN);
        assert_eq!(
            ExitReason::GuestCrash(String::new()).code(),
            EXIT_GUEST_CRASH
        );
    }
}
