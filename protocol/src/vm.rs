//! The VM configuration the shim hands to `hull-vmm` (`hull-vmm --config
//! vm.json`): one typed shape with its defaults and limits written once, and
//! one validation both sides run, the shim before it spawns anything and the
//! VMM before it builds anything. Nothing is clamped: a value out of range is
//! an error naming the field and its bounds.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Fewest vCPUs of a VM.
pub const MIN_VCPUS: u8 = 1;
/// Most vCPUs of a VM (what hull-vmm's MP table and CPUID topology describe).
pub const MAX_VCPUS: u8 = 8;
/// vCPUs of a VM whose configuration names none.
pub const DEFAULT_VCPUS: u8 = 1;
/// Smallest guest hull-vmm builds (a Linux guest needs a few MiB anyway).
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest memory accepted (hull-vmm also refuses more than the host's RAM).
pub const MAX_MEMORY_MIB: u64 = 256 * 1024;
/// Guest memory of a VM whose configuration names none.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Smallest pod VM the shim boots: Hull's guest kernel, initramfs and agent need this much.
pub const MIN_POD_MEMORY_MIB: u64 = 64;
/// Guest kernel command line of every Hull VM; hull-vmm appends its device words.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet";
/// Kernel command-line word that turns on the agent's debug logs.
pub const DEBUG_CMDLINE_WORD: &str = "hull.debug=1";
/// Longest guest command line the shim or a config file may give (the VMM
/// appends its device words within the kernel's 2048 bytes).
pub const MAX_CMDLINE_LEN: usize = 1024;
/// Lowest CID a guest may have (0-2 are reserved by the vsock spec).
pub const MIN_GUEST_CID: u64 = 3;
/// Guest CID of every pod VM (each VM has its own hybrid vsock socket).
pub const POD_GUEST_CID: u64 = MIN_GUEST_CID;
/// Longest virtio-fs tag (the device's config space holds 36 bytes).
pub const MAX_FS_TAG_LEN: usize = 36;
/// virtio-fs tag of the pod share.
pub const SHARE_TAG: &str = "hullshare";
/// Longest virtio-blk serial (the VIRTIO_BLK_T_GET_ID answer holds 20 bytes).
pub const MAX_DISK_SERIAL_LEN: usize = 20;
/// The id a virtio-blk disk reports when its configuration names no serial.
pub const DEFAULT_DISK_SERIAL: &str = "hull-blk";
/// Where the agent mounts the pod share in the guest; container rootfs paths lie under it.
pub const GUEST_SHARE_DIR: &str = "/run/hull/shared";
/// Most virtio-net devices of a VM (one per interface CNI created in the pod's netns).
pub const MAX_NET_DEVICES: usize = 4;
/// Smallest MTU a network device may have (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// MTU of a network device whose configuration names none.
pub const DEFAULT_MTU: u16 = 1500;

/// `/proc/<pid>/comm` of the process that holds a jailed hull-vmm's PID namespace (the one
/// its spawner started); the VMM is its one child.
pub const VMM_HOLDER_NAME: &str = "hull-vmm-jail";
/// Open files hull-vmm may hold when the configuration names no limit: the vsock muxer's 128
/// connections, the control socket's clients, the devices' descriptors and headroom.
pub const DEFAULT_VMM_NOFILE: u64 = 1024;
/// Fewest open files accepted for hull-vmm (it needs its devices' descriptors and some slack).
pub const MIN_VMM_NOFILE: u64 = 64;
/// Processes/threads hull-vmm's uid may run when the configuration names no limit (the kernel
/// counts them per uid, and ignores the limit for root).
pub const DEFAULT_VMM_NPROC: u64 = 4096;
/// Largest file offset hull-vmm may write at, in MiB, when the configuration names none and no
/// disk is larger (the console file, FIFOs); a larger disk raises it to the disk's size.
pub const DEFAULT_VMM_FSIZE_MIB: u64 = 1024;

/// File names inside a pod's state directory (`<run_dir>/<namespace>/<pod>`).
pub mod pod_files {
    /// The hybrid vsock socket of hull-vmm.
    pub const VSOCK: &str = "vsock.sock";
    /// virtiofsd's vhost-user socket.
    pub const FS: &str = "fs.sock";
    /// hull-vmm's control socket (see [`crate::control`]).
    pub const CONTROL: &str = "control.sock";
    /// The [`super::VmConfig`] the shim wrote for hull-vmm.
    pub const VM_CONFIG: &str = "vm.json";
}

/// A VM configuration that breaks a limit.
#[derive(Debug, thiserror::Error)]
pub enum VmConfigError {
    #[error("{field} = {value}: must be {min} to {max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("kernel: a guest kernel path is required")]
    NoKernel,
    #[error("cmdline is {0} bytes: at most {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
    #[error("cmdline holds a NUL or newline: give plain words")]
    CmdlineControl,
    #[error("disks[{0}]: an empty slot (no path) must be read_only: true; the shim fills it with a read-only image")]
    WritableEmptySlot(usize),
    #[error("disk serial {0:?}: must be 1 to {MAX_DISK_SERIAL_LEN} bytes of A-Z, a-z, 0-9, '.', '_' or '-'")]
    DiskSerial(String),
    #[error("virtio-fs tag {0:?}: must be 1 to {MAX_FS_TAG_LEN} bytes")]
    FsTag(String),
    #[error("{0} network devices: at most {MAX_NET_DEVICES}")]
    TooManyNets(usize),
    #[error("net.tap_fd = {0}: must be an inherited descriptor, 3 or above")]
    TapFd(i32),
    #[error("net.mac {0:?}: give a unicast MAC as six hex pairs, aa:bb:cc:dd:ee:ff")]
    Mac(String),
    #[error("jail.dir {0:?}: give an absolute directory that holds the vsock and control sockets")]
    JailDir(PathBuf),
    #[error("not a valid VM configuration")]
    Json(#[source] serde_json::Error),
}

/// Where the serial console goes. JSON: `"stdout"`, `"none"` or `{"file": "/path"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Console {
    /// The VMM's stdout.
    #[default]
    Stdout,
    /// Dropped.
    None,
    /// Appended to a file (or written to a FIFO).
    File(PathBuf),
}

/// The vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's CID.
    #[serde(default = "default_cid")]
    pub cid: u64,
    /// Unix socket the host connects to; guest connections to host port P go to `<uds>_P`.
    pub uds: PathBuf,
}

fn default_cid() -> u64 {
    MIN_GUEST_CID
}

/// A virtio-blk disk, or an empty slot the shim fills while the VM runs (virtio-mmio has no
/// hotplug): `{"path": null, "read_only": true}` boots with capacity 0 and takes its backing
/// file later through the control socket's `attach-disk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Backing file; `None` for an empty slot, which must be read-only.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
    /// What the guest reads as the disk's id (`/sys/block/vdX/serial`): at most
    /// [`MAX_DISK_SERIAL_LEN`] bytes of `[A-Za-z0-9._-]`; `None` gives [`DEFAULT_DISK_SERIAL`].
    #[serde(default)]
    pub serial: Option<String>,
}

impl DiskConfig {
    /// An empty read-only slot with `serial` as its id.
    pub fn empty_slot(serial: Option<String>) -> Self {
        DiskConfig {
            path: None,
            read_only: true,
            serial,
        }
    }

    /// The id the guest reads: the configured serial or [`DEFAULT_DISK_SERIAL`].
    pub fn serial_or_default(&self) -> &str {
        self.serial.as_deref().unwrap_or(DEFAULT_DISK_SERIAL)
    }
}

/// Checks a virtio-blk serial: 1 to [`MAX_DISK_SERIAL_LEN`] bytes of `[A-Za-z0-9._-]`.
pub fn check_disk_serial(serial: &str) -> Result<(), VmConfigError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if serial.is_empty() || serial.len() > MAX_DISK_SERIAL_LEN || !serial.bytes().all(allowed) {
        return Err(VmConfigError::DiskSerial(serial.to_string()));
    }
    Ok(())
}

/// A vhost-user-fs share served by virtiofsd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs TAG /dir`).
    pub tag: String,
}

/// A virtio-net device whose backend is a tap the shim opened (in the pod's
/// network namespace) and handed to hull-vmm as an inherited descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap's descriptor number in hull-vmm (not closed on exec by the shim).
    pub tap_fd: i32,
    /// The guest interface's MAC, `aa:bb:cc:dd:ee:ff` (the CNI interface's own).
    pub mac: String,
    /// MTU the device reports to the guest, [`MIN_MTU`] to 65535.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// Parses a unicast MAC written as six hex pairs separated by `:`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], VmConfigError> {
    let bad = || VmConfigError::Mac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 == 1 {
        return Err(bad());
    }
    Ok(mac)
}

/// Everything needed to build one VM. Every field but `kernel` has a default,
/// so `{"kernel": "/path/vmlinux"}` is a whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF vmlinux with a PVH entry.
    pub kernel: PathBuf,
    /// cpio (optionally gzip) initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; the VMM appends its device announcements.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// vCPUs, [`MIN_VCPUS`] to [`MAX_VCPUS`].
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB, [`MIN_MEMORY_MIB`] to [`MAX_MEMORY_MIB`] (and at most the host's RAM).
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Serial console destination.
    #[serde(default)]
    pub console: Console,
    /// Optional vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-blk disks.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// vhost-user-fs shares.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices, at most [`MAX_NET_DEVICES`].
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Control socket path.
    #[serde(default)]
    pub control: Option<PathBuf>,
    /// A virtio-balloon with free page reporting: the guest reports the pages it frees and
    /// hull-vmm gives their host memory back. On by default; `false` leaves a guest's freed
    /// memory allocated on the host until the VM exits.
    #[serde(default = "default_balloon")]
    pub balloon: bool,
    /// Run even on a PVM-backed /dev/kvm (only tiny guests work there).
    #[serde(default)]
    pub allow_pvm: bool,
    /// hull-vmm logs at debug level (unless `HULL_LOG` says otherwise).
    #[serde(default)]
    pub debug: bool,
    /// Per-thread seccomp filters (kill the VMM on any syscall outside them). On by default;
    /// `false` is for developers tracing a VMM problem, never for pods.
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
    /// Resource limits hull-vmm sets on itself before it runs the guest.
    #[serde(default)]
    pub limits: VmmLimits,
    /// Jail hull-vmm once the VM is built: own mount, IPC and UTS namespaces, root pivoted to
    /// a tmpfs holding only `dir`, then the uid/gid drop. `None`: no jail.
    #[serde(default)]
    pub jail: Option<JailConfig>,
}

/// hull-vmm's jail (see [`VmConfig::jail`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The one host directory the jail shows, at the same path, without its subdirectories:
    /// where the vsock and control sockets are and the `<uds>_<port>` listeners appear.
    pub dir: PathBuf,
    /// uid hull-vmm runs as after the jail is set up (0 stays root).
    #[serde(default)]
    pub uid: u32,
    /// gid hull-vmm runs as after the jail is set up (0 stays root's group).
    #[serde(default)]
    pub gid: u32,
}

fn default_seccomp() -> bool {
    true
}

fn default_balloon() -> bool {
    true
}

/// Resource limits of the hull-vmm process (soft and hard), set before the seccomp filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmLimits {
    /// RLIMIT_NOFILE: open descriptors, at least [`MIN_VMM_NOFILE`].
    #[serde(default = "default_nofile")]
    pub nofile: u64,
    /// RLIMIT_NPROC: processes and threads of hull-vmm's uid (ignored by the kernel for root),
    /// at least the vCPUs plus hull-vmm's own threads.
    #[serde(default = "default_nproc")]
    pub nproc: u64,
    /// RLIMIT_FSIZE in MiB: no write lands beyond this offset. `null`: the largest disk's
    /// size, at least [`DEFAULT_VMM_FSIZE_MIB`].
    #[serde(default)]
    pub fsize_mib: Option<u64>,
}

impl Default for VmmLimits {
    fn default() -> Self {
        Self {
            nofile: DEFAULT_VMM_NOFILE,
            nproc: DEFAULT_VMM_NPROC,
            fsize_mib: None,
        }
    }
}

fn default_nofile() -> u64 {
    DEFAULT_VMM_NOFILE
}
fn default_nproc() -> u64 {
    DEFAULT_VMM_NPROC
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}
fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}

/// The guest command line of a pod VM: [`DEFAULT_CMDLINE`], plus
/// [`DEBUG_CMDLINE_WORD`] when the agent should log at debug level.
pub fn guest_cmdline(debug: bool) -> String {
    if debug {
        format!("{DEFAULT_CMDLINE} {DEBUG_CMDLINE_WORD}")
    } else {
        default_cmdline()
    }
}

/// Whether a kernel command line asks for the agent's debug logs.
pub fn cmdline_wants_debug(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == DEBUG_CMDLINE_WORD)
}

/// Checks `value` against `min..=max`.
pub fn check_range(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), VmConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(VmConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

/// Converts a vCPU count held in a wider integer (the shim's configuration),
/// refusing what does not fit instead of truncating it.
pub fn vcpus_from(field: &'static str, value: u32) -> Result<u8, VmConfigError> {
    check_range(field, value.into(), MIN_VCPUS.into(), MAX_VCPUS.into())?;
    u8::try_from(value).map_err(|_| VmConfigError::OutOfRange {
        field,
        value: value.into(),
        min: MIN_VCPUS.into(),
        max: MAX_VCPUS.into(),
    })
}

impl VmConfig {
    /// A configuration with every default and the given kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            console: Console::Stdout,
            vsock: None,
            disks: Vec::new(),
            fs: Vec::new(),
            net: Vec::new(),
            control: None,
            balloon: true,
            allow_pvm: false,
            debug: false,
            seccomp: true,
            limits: VmmLimits::default(),
            jail: None,
        }
    }

    /// Parses and validates a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, VmConfigError> {
        let cfg: Self = serde_json::from_str(text).map_err(VmConfigError::Json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as pretty JSON (what `hull-vmm --config` reads).
    pub fn to_json(&self) -> String {
        // Serializing plain structs of paths, strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every limit that needs no file system access.
    pub fn validate(&self) -> Result<(), VmConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(VmConfigError::NoKernel);
        }
        check_range(
            "vcpus",
            self.vcpus.into(),
            MIN_VCPUS.into(),
            MAX_VCPUS.into(),
        )?;
        check_range(
            "memory_mib",
            self.memory_mib,
            MIN_MEMORY_MIB,
            MAX_MEMORY_MIB,
        )?;
        if self.cmdline.len() > MAX_CMDLINE_LEN {
            return Err(VmConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        if self.cmdline.contains(['\0', '\n']) {
            return Err(VmConfigError::CmdlineControl);
        }
        if let Some(v) = &self.vsock {
            check_range("vsock.cid", v.cid, MIN_GUEST_CID, u32::MAX.into())?;
        }
        for (i, disk) in self.disks.iter().enumerate() {
            if disk.path.is_none() && !disk.read_only {
                return Err(VmConfigError::WritableEmptySlot(i));
            }
            if let Some(serial) = &disk.serial {
                check_disk_serial(serial)?;
            }
        }
        for fs in &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > MAX_FS_TAG_LEN {
                return Err(VmConfigError::FsTag(fs.tag.clone()));
            }
        }
        if self.net.len() > MAX_NET_DEVICES {
            return Err(VmConfigError::TooManyNets(self.net.len()));
        }
        for net in &self.net {
            if net.tap_fd < 3 {
                return Err(VmConfigError::TapFd(net.tap_fd));
            }
            parse_mac(&net.mac)?;
            check_range("net.mtu", net.mtu.into(), MIN_MTU.into(), u16::MAX.into())?;
        }
        check_range(
            "limits.nofile",
            self.limits.nofile,
            MIN_VMM_NOFILE,
            u32::MAX.into(),
        )?;
        // vCPU threads, the event loop and the console writer.
        let threads = u64::from(self.vcpus) + 2;
        check_range("limits.nproc", self.limits.nproc, threads, u32::MAX.into())?;
        if let Some(mib) = self.limits.fsize_mib {
            check_range("limits.fsize_mib", mib, 1, u64::MAX >> 20)?;
        }
        if let Some(jail) = &self.jail {
            let inside = |p: &PathBuf| p.parent() == Some(jail.dir.as_path());
            if !jail.dir.is_absolute()
                || jail.dir.parent().is_none()
                || !self.vsock.as_ref().is_none_or(|v| inside(&v.uds))
                || !self.control.as_ref().is_none_or(inside)
            {
                return Err(VmConfigError::JailDir(jail.dir.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> VmConfig {
        VmConfig {
            initrd: Some("/i".into()),
            cmdline: guest_cmdline(true),
            vcpus: 2,
            memory_mib: 512,
            vsock: Some(VsockConfig {
                cid: POD_GUEST_CID,
                uds: "/run/hull/p/vsock.sock".into(),
            }),
            fs: vec![FsConfig {
                socket: "/run/hull/p/fs.sock".into(),
                tag: SHARE_TAG.into(),
            }],
            control: Some("/run/hull/p/control.sock".into()),
            debug: true,
            ..VmConfig::new("/k")
        }
    }

    #[test]
    fn disks_and_empty_slots() {
        // Today's shape still parses: a path, no serial.
        let old =
            VmConfig::from_json(r#"{"kernel":"/k","disks":[{"path":"/d","read_only":true}]}"#)
                .unwrap();
        assert_eq!(
            old.disks[0].path.as_deref(),
            Some(std::path::Path::new("/d"))
        );
        assert_eq!(old.disks[0].serial_or_default(), DEFAULT_DISK_SERIAL);
        let slot = VmConfig::from_json(
            r#"{"kernel":"/k","disks":[{"read_only":true,"serial":"ctr-1.img_a"}]}"#,
        )
        .unwrap();
        assert_eq!(
            slot.disks,
            [DiskConfig::empty_slot(Some("ctr-1.img_a".into()))]
        );
        assert!(slot.validate().is_ok());
        assert_eq!(VmConfig::from_json(&slot.to_json()).unwrap(), slot);
        let mut writable = slot.clone();
        writable.disks[0].read_only = false;
        let msg = writable.validate().unwrap_err().to_string();
        assert!(
            msg.contains("disks[0]") && msg.contains("read_only"),
            "{msg}"
        );
        for bad in ["", "a b", "x/y", "é", &"s".repeat(MAX_DISK_SERIAL_LEN + 1)] {
            let mut cfg = slot.clone();
            cfg.disks[0].serial = Some(bad.into());
            assert!(
                matches!(cfg.validate(), Err(VmConfigError::DiskSerial(_))),
                "{bad:?}"
            );
        }
        assert!(check_disk_serial(&"s".repeat(MAX_DISK_SERIAL_LEN)).is_ok());
    }

    #[test]
    fn json_round_trips_and_a_kernel_alone_is_enough() {
        let cfg = pod();
        assert_eq!(VmConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        let min = VmConfig::from_json(r#"{"kernel":"/k"}"#).unwrap();
        assert_eq!(min, VmConfig::new("/k"));
        assert_eq!(min.cmdline, DEFAULT_CMDLINE);
        let file = VmConfig::from_json(r#"{"kernel":"/k","console":{"file":"/c"}}"#).unwrap();
        assert_eq!(file.console, Console::File("/c".into()));
        assert!(matches!(
            VmConfig::from_json(r#"{"kernel":"/k","typo":1}"#),
            Err(VmConfigError::Json(_))
        ));
    }

    #[test]
    fn limits_are_errors_naming_the_field() {
        for (cfg, field) in [
            (VmConfig { vcpus: 0, ..pod() }, "vcpus = 0: must be 1 to 8"),
            (VmConfig { vcpus: 9, ..pod() }, "vcpus = 9"),
            (
                VmConfig {
                    memory_mib: 15,
                    ..pod()
                },
                "memory_mib = 15: must be 16 to 262144",
            ),
            (
                VmConfig {
                    memory_mib: MAX_MEMORY_MIB + 1,
                    ..pod()
                },
                "memory_mib",
            ),
            (
                VmConfig {
                    vsock: Some(VsockConfig {
                        cid: 2,
                        uds: "/v".into(),
                    }),
                    ..pod()
                },
                "vsock.cid = 2",
            ),
            (
                VmConfig {
                    cmdline: "x".repeat(MAX_CMDLINE_LEN + 1),
                    ..pod()
                },
                "cmdline is",
            ),
            (
                VmConfig {
                    cmdline: "a\nb".into(),
                    ..pod()
                },
                "NUL or newline",
            ),
            (VmConfig::new(""), "kernel"),
        ] {
            let msg = cfg.validate().unwrap_err().to_string();
            assert!(msg.contains(field), "{msg}");
        }
        let mut bad_tag = pod();
        bad_tag.fs[0].tag = "t".repeat(MAX_FS_TAG_LEN + 1);
        assert!(matches!(bad_tag.validate(), Err(VmConfigError::FsTag(_))));
        assert!(pod().validate().is_ok());
    }

    #[test]
    fn network_devices_need_an_inherited_fd_a_unicast_mac_and_a_sane_mtu() {
        let net = |tap_fd, mac: &str, mtu| NetConfig {
            tap_fd,
            mac: mac.into(),
            mtu,
        };
        let ok = VmConfig {
            net: vec![net(3, "02:00:0a:58:4d:02", 1500)],
            ..pod()
        };
        assert_eq!(VmConfig::from_json(&ok.to_json()).unwrap(), ok);
        assert_eq!(
            parse_mac("02:00:0A:58:4d:ff").unwrap(),
            [2, 0, 10, 0x58, 0x4d, 0xff]
        );
        for (nets, want) in [
            (vec![net(2, "02:00:00:00:00:01", 1500)], "net.tap_fd = 2"),
            (vec![net(3, "03:00:00:00:00:01", 1500)], "unicast MAC"),
            (vec![net(3, "02:00:00:00:00", 1500)], "unicast MAC"),
            (vec![net(3, "02:00:00:00:00:01:07", 1500)], "unicast MAC"),
            (vec![net(3, "02:0:00:00:00:001", 1500)], "unicast MAC"),
            (vec![net(3, "02:00:00:00:00:zz", 1500)], "unicast MAC"),
            (
                vec![net(3, "02:00:00:00:00:01", 67)],
                "net.mtu = 67: must be 68 to 65535",
            ),
            (
                vec![net(3, "02:00:00:00:00:01", 1500); 5],
                "5 network devices: at most 4",
            ),
        ] {
            let err = VmConfig { net: nets, ..pod() }
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        let default_mtu = VmConfig::from_json(
            r#"{"kernel":"/k","net":[{"tap_fd":3,"mac":"02:00:00:00:00:01"}]}"#,
        )
        .unwrap();
        assert_eq!(default_mtu.net[0].mtu, DEFAULT_MTU);
    }

    #[test]
    fn vcpus_from_a_wider_integer_is_refused_not_truncated() {
        assert_eq!(vcpus_from("vcpus", 8).unwrap(), 8);
        for bad in [0, 9, 256, 264] {
            assert!(matches!(
                vcpus_from("vcpus", bad),
                Err(VmConfigError::OutOfRange { value, .. }) if value == u64::from(bad)
            ));
        }
    }

    #[test]
    fn the_debug_word_is_on_the_command_line_only_when_asked() {
        assert!(cmdline_wants_debug(&guest_cmdline(true)));
        assert!(!cmdline_wants_debug(&guest_cmdline(false)));
        assert!(!cmdline_wants_debug("hull.debug=10 xhull.debug=1"));
    }

    #[test]
    fn free_page_reporting_is_on_unless_turned_off() {
        let min = VmConfig::from_json(r#"{"kernel":"/k"}"#).unwrap();
        assert!(min.balloon, "the balloon is on by default");
        assert!(pod().balloon);
        let off = VmConfig::from_json(r#"{"kernel":"/k","balloon":false}"#).unwrap();
        assert!(!off.balloon);
        assert_eq!(VmConfig::from_json(&off.to_json()).unwrap(), off);
        assert!(matches!(
            VmConfig::from_json(r#"{"kernel":"/k","balloon":{"pages":1}}"#),
            Err(VmConfigError::Json(_))
        ));
    }

    #[test]
    fn confinement_defaults_and_limits() {
        let min = VmConfig::from_json(r#"{"kernel":"/k"}"#).unwrap();
        assert!(min.seccomp, "seccomp is on unless turned off");
        assert_eq!(min.limits, VmmLimits::default());
        assert_eq!(min.jail, None);
        let off = VmConfig::from_json(r#"{"kernel":"/k","seccomp":false,"limits":{"nofile":100}}"#)
            .unwrap();
        assert!(!off.seccomp);
        assert_eq!(
            (off.limits.nofile, off.limits.nproc),
            (100, DEFAULT_VMM_NPROC)
        );
        let mut cfg = pod();
        cfg.limits.nofile = MIN_VMM_NOFILE - 1;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("limits.nofile = 63"), "{err}");
        cfg = pod();
        cfg.limits.nproc = 3;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("limits.nproc = 3: must be 4 to"), "{err}");
        cfg = pod();
        cfg.limits.fsize_mib = Some(0);
        assert!(cfg.validate().is_err());
        let jail = |dir: &str| JailConfig {
            dir: dir.into(),
            uid: 1000,
            gid: 1000,
        };
        cfg = pod();
        cfg.jail = Some(jail("/run/hull/p"));
        cfg.validate().unwrap();
        assert_eq!(VmConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        for bad in ["/run/hull", "run/hull/p", "/"] {
            cfg.jail = Some(jail(bad));
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("jail.dir"), "{bad}: {err}");
        }
    }
}
