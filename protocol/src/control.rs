//! hull-vmm's control socket protocol: JSON lines on a Unix socket, one
//! [`Request`] per line, one [`Answer`] per request, typed on both sides.
//!
//! Request: `{"v":1,"cmd":"stats"}`. Commands: `stats` ([`VmStats`]), `pause`,
//! `resume`, `shutdown` (stop the VM now; hull-vmm exits with status 4),
//! `wait-exit` (answered when the VM stops, with [`VmExit`]), and
//! `{"v":1,"cmd":"attach-disk","disk":N}`, which fills the empty disk slot at
//! position N of the VM's `disks` with a read-only image whose open descriptor
//! travels as `SCM_RIGHTS` data on the same `sendmsg` as the request line (one
//! descriptor, a regular file of at least one sector; a slot is filled once).
//! Every answer carries `"v":1` and `"ok"`; a failure adds `"error"`, a `stats`
//! answer adds `"stats"`, a `wait-exit` answer adds `"exit"`. Descriptors sent
//! with any other request are closed unused.
//!
//! The clients are [`vm_stats`], used by the shim and the operator tools alike,
//! and [`attach_disk`], the shim's ([`client`]).

use serde::{Deserialize, Serialize};

pub mod client;
pub use client::{attach_disk, vm_stats, ControlError};

/// Protocol version spoken on the control socket.
pub const VERSION: u64 = 1;
/// Longest request line hull-vmm accepts.
pub const MAX_LINE: usize = 4096;

/// What a request asks for: the `cmd` field, with the command's own fields beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
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
    /// Fill an empty disk slot with the image whose descriptor comes with the request.
    AttachDisk {
        /// The slot's position in the VM configuration's `disks`.
        disk: usize,
    },
}

/// One request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u64,
    #[serde(flatten)]
    pub cmd: Command,
}

impl Request {
    /// A request of this protocol version.
    pub fn new(cmd: Command) -> Self {
        Self { v: VERSION, cmd }
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        // Plain integers and names: serializing cannot fail.
        format!("{}\n", serde_json::to_string(self).unwrap_or_default())
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
        let req: Request = serde_json::from_str(line)
            .map_err(|e| format!("not a request of this protocol: {e}"))?;
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

/// The kind of a virtio device. A kind this side does not know (a newer
/// hull-vmm's) parses as [`DeviceKind::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    Vsock,
    Block,
    Fs,
    Net,
    Balloon,
    #[default]
    #[serde(other)]
    Unknown,
}

impl DeviceKind {
    /// The short name used in metric labels (`vsock`, `blk`, `fs`, `net`, `balloon`).
    pub fn short_name(self) -> &'static str {
        match self {
            DeviceKind::Vsock => "vsock",
            DeviceKind::Block => "blk",
            DeviceKind::Fs => "fs",
            DeviceKind::Net => "net",
            DeviceKind::Balloon => "balloon",
            DeviceKind::Unknown => "unknown",
        }
    }

    /// The name of queue `index` in the virtio spec's order for this kind, or
    /// None for an index the kind does not have.
    pub fn queue_name(self, index: usize) -> Option<&'static str> {
        let names: &[&'static str] = match self {
            DeviceKind::Vsock => &["rx", "tx", "event"],
            DeviceKind::Block => &["request"],
            DeviceKind::Fs => &["hiprio", "request"],
            DeviceKind::Net => &["rx", "tx"],
            DeviceKind::Balloon => &["inflate", "deflate", "reporting"],
            DeviceKind::Unknown => &[],
        };
        names.get(index).copied()
    }
}

/// Payload bytes a device moved, as hull-vmm counts them: `rx` towards the
/// guest (network receive, disk read, vsock host-to-guest), `tx` from it
/// (for the balloon: guest RAM given back to the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceBytes {
    pub rx: u64,
    pub tx: u64,
}

/// The counters of one virtio device. hull-vmm's own device code writes them;
/// nothing the guest writes into its memory is read back as a figure.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceStats {
    pub kind: DeviceKind,
    /// The device's place among those of its kind (0: vda, eth0, the first share).
    pub index: u32,
    /// Guest notifications (queue kicks) per queue, in the kind's queue order;
    /// empty when hull-vmm does not see them (virtio-fs: virtiofsd reads its kicks).
    #[serde(default)]
    pub queue_notifications: Vec<u64>,
    /// Used-ring interrupts raised to the guest.
    #[serde(default)]
    pub interrupts: u64,
    /// Bytes moved; None when another process moves them (virtio-fs: virtiofsd).
    #[serde(default)]
    pub bytes: Option<DeviceBytes>,
}

impl DeviceStats {
    /// The `device` label: kind and index, e.g. `vsock0`, `blk1`.
    pub fn label(&self) -> String {
        format!("{}{}", self.kind.short_name(), self.index)
    }
}

/// The figures of one VM, as hull-vmm counts them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    /// Each virtio device's counters, in attach order (absent from older hull-vmm).
    #[serde(default)]
    pub devices: Vec<DeviceStats>,
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
        let attach = Request::new(Command::AttachDisk { disk: 2 }).to_line();
        assert_eq!(attach, "{\"v\":1,\"cmd\":\"attach-disk\",\"disk\":2}\n");
        assert_eq!(
            Request::parse(attach.trim()),
            Ok(Command::AttachDisk { disk: 2 })
        );
        assert_eq!(
            Request::new(Command::Stats).to_line(),
            "{\"v\":1,\"cmd\":\"stats\"}\n"
        );
        for bad in [
            r#"{"v":1,"cmd":"attach-disk"}"#,
            r#"{"v":1,"cmd":"attach-disk","disk":-1}"#,
            r#"{"v":1,"cmd":"attach-disk","disk":"a"}"#,
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
        let missing = Request::parse(r#"{"v":1,"cmd":"attach-disk"}"#).unwrap_err();
        assert!(missing.contains("`disk`"), "{missing}");
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
        let line = Answer::stats(stats.clone()).to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["ok"], true);
        assert_eq!(v["stats"]["memory"]["guest_mib"], 128);
        assert_eq!(v["stats"]["vcpu_exits"], 7);
        assert!(v.get("error").is_none());
        let back: Answer = serde_json::from_str(&line).unwrap();
        assert_eq!(back.stats, Some(stats));
        assert_eq!(v["stats"]["devices"], serde_json::json!([]));
        let err: Answer = serde_json::from_str(&Answer::error("no").to_line()).unwrap();
        assert_eq!((err.ok, err.error.as_deref()), (false, Some("no")));
    }

    #[test]
    fn device_counters_are_additive_both_ways() {
        // An older hull-vmm's answer (no devices) parses with an empty list.
        let old = r#"{"v":1,"ok":true,"stats":{"vcpus":1,"paused":false,"uptime_s":1.0,
            "memory":{"guest_mib":64,"vmm_rss_kib":1},"cpu":{"user_s":0.0,"system_s":0.0}}}"#;
        let old: Answer = serde_json::from_str(old).unwrap();
        assert!(old.stats.unwrap().devices.is_empty());
        // A newer one's unknown device kind and extra fields do not break this side.
        let new = r#"{"v":1,"ok":true,"stats":{"vcpus":1,"paused":false,"uptime_s":1.0,
            "memory":{"guest_mib":64,"vmm_rss_kib":1},"cpu":{"user_s":0.0,"system_s":0.0},
            "devices":[{"kind":"vsock","index":0,"queue_notifications":[3,4,0],
            "interrupts":5,"bytes":{"rx":10,"tx":20}},
            {"kind":"gpu","index":0,"interrupts":1,"future":true}]}}"#;
        let devices = serde_json::from_str::<Answer>(new)
            .unwrap()
            .stats
            .unwrap()
            .devices;
        assert_eq!(devices[0].kind, DeviceKind::Vsock);
        assert_eq!(devices[0].label(), "vsock0");
        assert_eq!(devices[0].queue_notifications, [3, 4, 0]);
        assert_eq!(devices[0].bytes, Some(DeviceBytes { rx: 10, tx: 20 }));
        assert_eq!(devices[1].kind, DeviceKind::Unknown);
        assert_eq!(devices[1].bytes, None);
        // And what this side writes, it reads back.
        let stats = VmStats {
            devices: devices.clone(),
            ..VmStats::default()
        };
        let back: Answer = serde_json::from_str(&Answer::stats(stats.clone()).to_line()).unwrap();
        assert_eq!(back.stats, Some(stats));
    }

    #[test]
    fn queue_names_follow_the_spec_order() {
        assert_eq!(DeviceKind::Vsock.queue_name(2), Some("event"));
        assert_eq!(DeviceKind::Fs.queue_name(0), Some("hiprio"));
        assert_eq!(DeviceKind::Net.queue_name(1), Some("tx"));
        assert_eq!(DeviceKind::Balloon.queue_name(2), Some("reporting"));
        assert_eq!(DeviceKind::Block.queue_name(1), None);
        assert_eq!(DeviceKind::Unknown.queue_name(0), None);
    }
}
