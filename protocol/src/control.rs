//! hull-vmm's control socket protocol: JSON lines on a Unix socket, one
//! [`Request`] per line, one [`Answer`] per request, typed on both sides.
//!
//! Request: `{"v":1,"cmd":"stats"}`. Commands: `stats` ([`VmStats`]), `pause`,
//! `resume`, `shutdown` (stop the VM now; hull-vmm exits with status 4),
//! `wait-exit` (answered when the VM stops, with [`VmExit`]). Every answer
//! carries `"v":1` and `"ok"`; a failure adds `"error"`, a `stats` answer adds
//! `"stats"`, a `wait-exit` answer adds `"exit"`.
//!
//! The client that asks for the figures is [`vm_stats`] ([`client`]), used by
//! the shim and the operator tools alike.

use serde::{Deserialize, Serialize};

pub mod client;
pub use client::{vm_stats, ControlError};

/// Protocol version spoken on the control socket.
pub const VERSION: u64 = 1;
/// Longest request line hull-vmm accepts.
pub const MAX_LINE: usize = 4096;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// The VM's figures.
    Stats,
    /// Pause the vCPUs.
    Pause,
    /// Resume the vCPUs.
    Resume,
    /// Stop the VM.
    Shutdown,
    /// Answer when the VM exits.
    WaitExit,
}

/// One request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u64,
    pub cmd: Command,
}

impl Request {
    /// A request of this protocol version.
    pub fn new(cmd: Command) -> Self {
        Self { v: VERSION, cmd }
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        format!("{}\n", serde_json::json!({"v": self.v, "cmd": self.cmd}))
    }

    /// Parses one request line; the error is the text to send back.
    pub fn parse(line: &str) -> Result<Command, String> {
        #[derive(Deserialize)]
        struct Versioned {
            v: Option<serde_json::Value>,
        }
        let versioned: Versioned =
            serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        if versioned.v.as_ref().and_then(serde_json::Value::as_u64) != Some(VERSION) {
            return Err(format!(
                "unsupported protocol version {:?}; this VMM speaks {VERSION}",
                versioned.v
            ));
        }
        let req: Request =
            serde_json::from_str(line).map_err(|e| format!("unknown command: {e}"))?;
        Ok(req.cmd)
    }
}

/// Guest memory and the VMM's own resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Guest RAM as configured, in MiB.
    pub guest_mib: u64,
    /// Resident memory of the hull-vmm process (guest pages it touched included), in KiB.
    pub vmm_rss_kib: u64,
}

/// CPU time of the hull-vmm process (vCPU threads included).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CpuStats {
    pub user_s: f64,
    pub system_s: f64,
}

/// The figures of one VM, as hull-vmm counts them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct VmStats {
    pub vcpus: u8,
    pub paused: bool,
    /// Seconds since hull-vmm started serving the control socket.
    pub uptime_s: f64,
    pub memory: MemoryStats,
    pub cpu: CpuStats,
    /// Exits from KVM_RUN handled, summed over all vCPUs (I/O, MMIO, interrupts).
    #[serde(default)]
    pub vcpu_exits: u64,
}

/// How the VM ended, for `wait-exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExit {
    /// The VMM's reason, e.g. `GuestPowerOff`.
    pub reason: String,
    /// hull-vmm's exit status.
    pub status: i32,
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub v: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<VmStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<VmExit>,
}

impl Answer {
    /// A bare success.
    pub fn ok() -> Self {
        Self {
            v: VERSION,
            ok: true,
            error: None,
            stats: None,
            exit: None,
        }
    }

    /// A failure with its reason.
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            ..Self::ok()
        }
    }

    /// The answer to `stats`.
    pub fn stats(stats: VmStats) -> Self {
        Self {
            stats: Some(stats),
            ..Self::ok()
        }
    }

    /// The answer to `wait-exit`.
    pub fn exit(exit: VmExit) -> Self {
        Self {
            exit: Some(exit),
            ..Self::ok()
        }
    }

    /// The answer as one JSON line, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_check_the_version() {
        assert_eq!(
            Request::parse(r#"{"v":1,"cmd":"stats"}"#),
            Ok(Command::Stats)
        );
        assert_eq!(
            Request::parse(Request::new(Command::WaitExit).to_line().trim()),
            Ok(Command::WaitExit)
        );
        assert!(Request::parse(r#"{"v":2,"cmd":"stats"}"#)
            .unwrap_err()
            .contains("version"));
        assert!(Request::parse(r#"{"cmd":"stats"}"#)
            .unwrap_err()
            .contains("version"));
        assert!(Request::parse(r#"{"v":1,"cmd":"reboot"}"#)
            .unwrap_err()
            .contains("unknown"));
        assert!(Request::parse("not json").is_err());
    }

    #[test]
    fn answers_keep_the_wire_shape() {
        let stats = VmStats {
            vcpus: 2,
            memory: MemoryStats {
                guest_mib: 128,
                vmm_rss_kib: 4096,
            },
            vcpu_exits: 7,
            ..VmStats::default()
        };
        let line = Answer::stats(stats).to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["ok"], true);
        assert_eq!(v["stats"]["memory"]["guest_mib"], 128);
        assert_eq!(v["stats"]["vcpu_exits"], 7);
        assert!(v.get("error").is_none());
        let back: Answer = serde_json::from_str(&line).unwrap();
        assert_eq!(back.stats, Some(stats));
        let err: Answer = serde_json::from_str(&Answer::error("no").to_line()).unwrap();
        assert_eq!((err.ok, err.error.as_deref()), (false, Some("no")));
    }
}
