//! The VM description: from `--config vm.json` or command-line flags, validated before anything
//! is created.

use std::path::{Path, PathBuf};

pub use hull_protocol::vm::{
    Console, DiskConfig, FsConfig, NetConfig, VmConfig, VmConfigError, VsockConfig,
    DEFAULT_CMDLINE, DEFAULT_DISK_SERIAL, DEFAULT_MEMORY_MIB, DEFAULT_MTU, DEFAULT_VCPUS,
    MAX_DISK_SERIAL_LEN, MAX_FS_TAG_LEN, MAX_MEMORY_MIB, MAX_VCPUS, MIN_GUEST_CID, MIN_MEMORY_MIB,
    MIN_VCPUS,
};

/// The `--disk` value that asks for an empty slot instead of a file.
const EMPTY_DISK: &str = "empty";

/// Errors in the VM description.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or value the VMM does not know.
    #[error("{0}")]
    Usage(String),
    /// The JSON file could not be read.
    #[error("cannot read config file {0}")]
    ReadConfig(String, #[source] std::io::Error),
    /// The JSON file is malformed.
    #[error("invalid config file {0}")]
    ParseConfig(String, #[source] serde_json::Error),
    /// A value breaks a limit of the VM configuration.
    #[error("invalid VM configuration (see --help for the limits)")]
    Invalid(#[source] VmConfigError),
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Print the help text.
    Help,
    /// Build and run a VM.
    Run(Box<VmConfig>),
}

/// Help text for `--help`, with the limits of [`hull_protocol::vm`].
pub fn help() -> String {
    format!(
        "\
hull-vmm: run one KVM microVM (Hull's VMM, built on rust-vmm)

USAGE:
    hull-vmm --kernel VMLINUX|BZIMAGE [--initrd INITRAMFS] [OPTIONS]
    hull-vmm --config vm.json

OPTIONS:
    --kernel PATH      guest kernel: ELF vmlinux with a PVH entry note (CONFIG_PVH=y),
                       or a bzImage (Linux 32-bit boot protocol; decompresses itself)
    --initrd PATH      initramfs: cpio archive, plain or gzip; its /init runs as PID 1
    --cmdline TEXT     guest kernel command line
                       [default: \"{DEFAULT_CMDLINE}\"];
                       virtio_mmio.device=... words for the devices are appended
    --vcpus N          number of vCPUs, {MIN_VCPUS} to {MAX_VCPUS} [default: {DEFAULT_VCPUS}]
    --memory MIB       guest RAM in MiB, {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} and at most the
                       host's RAM [default: {DEFAULT_MEMORY_MIB}]
    --console DEST     serial console (COM1, ttyS0): 'stdout', 'none' or a file path
                       [default: stdout]
    --vsock CID,PATH   virtio-vsock device with guest CID (>= {MIN_GUEST_CID}) and a hybrid Unix socket at
                       PATH: the host connects to PATH and sends 'CONNECT <port>\\n' (answer
                       'OK <n>\\n'); guest connections to host port P go to PATH_P.
                       PATH must not exist yet; it is removed when the VMM exits
    --disk PATH[,ro][,serial=S]
                       virtio-blk disk backed by a file, read-write unless ',ro'; S is the
                       id the guest reads (/sys/block/vdX/serial), 1 to {MAX_DISK_SERIAL_LEN} bytes of
                       [A-Za-z0-9._-] [default: {DEFAULT_DISK_SERIAL}]; repeatable.
                       '--disk empty[,serial=S]' is an empty read-only slot, filled while
                       the VM runs with the control socket's attach-disk (write ./empty for
                       a file of that name)
    --fs TAG,SOCKET    virtio-fs share (TAG: 1 to {MAX_FS_TAG_LEN} bytes) served over vhost-user by a
                       virtiofsd already listening on SOCKET, e.g.
                       'virtiofsd --socket-path=SOCKET --shared-dir=DIR --sandbox=chroot';
                       the guest mounts it with 'mount -t virtiofs TAG DIR'; repeatable.
                       The VMM connects at start (exit 2 if nothing listens)
    --net FD,MAC[,MTU] virtio-net device on tap descriptor FD, inherited from the caller and
                       opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (the shim opens it in
                       the pod's network namespace); MAC aa:bb:cc:dd:ee:ff (unicast), MTU
                       [default: {DEFAULT_MTU}]; repeatable (eth0, eth1, ...)
    --control PATH     control socket (JSON lines, see the README); removed on exit
    --no-balloon       no virtio-balloon: without it, guest pages freed and reported by the
                       guest kernel (free page reporting) are not given back to the host
    --config FILE      read the whole VM description from a JSON file (same fields:
                       kernel, initrd, cmdline, vcpus, memory_mib, console, vsock {{cid, uds}},
                       disks [{{path, read_only, serial}}], fs [{{socket, tag}}],
                       net [{{tap_fd, mac, mtu}}], control, balloon, allow_pvm,
                       debug); the shim writes this file for every pod
    --allow-pvm        run even on a PVM-backed /dev/kvm, which cannot boot a standard
                       kernel (only for tiny test guests)
    --debug            log at debug level (HULL_LOG=FILTER overrides)
    -h, --help         print this help

EXIT STATUS:
    0  the guest powered off, rebooted or reset (a guest booted with reboot=t restarts
       by triple fault: that is its normal way out)
    1  VMM error (KVM unavailable or unusable, I/O error, device failure)
    2  bad command line or configuration (missing/corrupt kernel or initramfs, existing
       socket path, memory larger than the host's RAM, no virtiofsd on an --fs socket)
    3  the guest crashed in a way KVM reports (failed entry, emulation failure)
    4  stopped by SIGTERM/SIGINT or a control-socket shutdown
"
    )
}

fn value<'a>(flag: &str, it: &mut impl Iterator<Item = &'a String>) -> Result<&'a String, Error> {
    it.next()
        .ok_or_else(|| Error::Usage(format!("{flag} needs a value (see --help)")))
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, Error> {
    v.parse()
        .map_err(|_| Error::Usage(format!("{flag}: '{v}' is not a valid number")))
}

fn parse_vsock(v: &str) -> Result<VsockConfig, Error> {
    let (cid, uds) = v
        .split_once(',')
        .ok_or_else(|| Error::Usage(format!("--vsock: expected CID,PATH, got '{v}'")))?;
    Ok(VsockConfig {
        cid: number("--vsock", cid)?,
        uds: PathBuf::from(uds),
    })
}

/// `PATH[,ro|,rw][,serial=S]` or `empty[,serial=S]`; options are taken from the end, so a
/// path may hold commas. An empty slot is read-only (`empty,rw` fails validation).
fn parse_disk(v: &str) -> DiskConfig {
    let (mut rest, mut read_only, mut serial) = (v, None, None);
    while let Some((head, opt)) = rest.rsplit_once(',') {
        match opt {
            "ro" => read_only = read_only.or(Some(true)),
            "rw" => read_only = read_only.or(Some(false)),
            _ => match opt.strip_prefix("serial=") {
                Some(s) if serial.is_none() => serial = Some(s.to_string()),
                _ => break,
            },
        }
        rest = head;
    }
    match rest {
        EMPTY_DISK => DiskConfig {
            read_only: read_only.unwrap_or(true),
            ..DiskConfig::empty_slot(serial)
        },
        path => DiskConfig {
            path: Some(PathBuf::from(path)),
            read_only: read_only.unwrap_or(false),
            serial,
        },
    }
}

fn parse_fs(v: &str) -> Result<FsConfig, Error> {
    let (tag, socket) = v
        .split_once(',')
        .ok_or_else(|| Error::Usage(format!("--fs: expected TAG,SOCKET, got '{v}'")))?;
    Ok(FsConfig {
        tag: tag.to_string(),
        socket: PathBuf::from(socket),
    })
}

fn parse_net(v: &str) -> Result<NetConfig, Error> {
    let usage = || Error::Usage(format!("--net: expected FD,MAC[,MTU], got '{v}'"));
    let mut parts = v.split(',');
    let (Some(fd), Some(mac)) = (parts.next(), parts.next()) else {
        return Err(usage());
    };
    let mtu = match parts.next() {
        Some(m) => number("--net", m)?,
        None => DEFAULT_MTU,
    };
    if parts.next().is_some() {
        return Err(usage());
    }
    Ok(NetConfig {
        tap_fd: number("--net", fd)?,
        mac: mac.to_string(),
        mtu,
    })
}

/// Reads a JSON VM description.
pub fn from_file(path: &Path) -> Result<VmConfig, Error> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::ReadConfig(name.clone(), e))?;
    serde_json::from_str(&text).map_err(|e| Error::ParseConfig(name, e))
}

/// Parses the command line (without the program name).
pub fn parse_args(args: &[String]) -> Result<Command, Error> {
    let mut it = args.iter();
    let mut config_file = None;
    let mut kernel = None;
    let mut cfg = VmConfig::new(PathBuf::new());
    let mut flags = false;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut val = || -> Result<String, Error> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => value(flag, &mut it).cloned(),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--config" => config_file = Some(PathBuf::from(val()?)),
            "--allow-pvm" => cfg.allow_pvm = true,
            "--debug" => cfg.debug = true,
            other => {
                flags = true;
                match other {
                    "--kernel" => kernel = Some(PathBuf::from(val()?)),
                    "--initrd" => cfg.initrd = Some(PathBuf::from(val()?)),
                    "--cmdline" => cfg.cmdline = val()?,
                    "--vcpus" => cfg.vcpus = number(flag, &val()?)?,
                    "--memory" => cfg.memory_mib = number(flag, &val()?)?,
                    "--console" => {
                        cfg.console = match val()?.as_str() {
                            "stdout" | "-" => Console::Stdout,
                            "none" => Console::None,
                            path => Console::File(PathBuf::from(path)),
                        }
                    }
                    "--vsock" => cfg.vsock = Some(parse_vsock(&val()?)?),
                    "--disk" => cfg.disks.push(parse_disk(&val()?)),
                    "--fs" => cfg.fs.push(parse_fs(&val()?)?),
                    "--net" => cfg.net.push(parse_net(&val()?)?),
                    "--control" => cfg.control = Some(PathBuf::from(val()?)),
                    "--no-balloon" => cfg.balloon = false,
                    _ => {
                        return Err(Error::Usage(format!(
                            "unknown argument '{arg}' (see --help)"
                        )))
                    }
                }
            }
        }
    }
    let cfg = match config_file {
        Some(_) if flags => {
            return Err(Error::Usage(
                "--config cannot be combined with other VM flags".into(),
            ))
        }
        Some(path) => {
            let mut file_cfg = from_file(&path)?;
            file_cfg.allow_pvm |= cfg.allow_pvm;
            file_cfg.debug |= cfg.debug;
            file_cfg
        }
        None => {
            cfg.kernel =
                kernel.ok_or_else(|| Error::Usage("--kernel is required (see --help)".into()))?;
            cfg
        }
    };
    validate(&cfg)?;
    Ok(Command::Run(Box::new(cfg)))
}

/// Checks the values that need no file system access (the limits of [`hull_protocol::vm`]).
pub fn validate(cfg: &VmConfig) -> Result<(), Error> {
    cfg.validate().map_err(Error::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn run(s: &str) -> VmConfig {
        match parse_args(&args(s)).unwrap() {
            Command::Run(c) => *c,
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn flags() {
        let c = run("--kernel k --initrd i --vcpus 2 --memory=256 --console none --vsock 3,/tmp/v.sock --disk d,ro --disk e --fs share,/tmp/fs.sock");
        assert_eq!(c.kernel, PathBuf::from("k"));
        assert_eq!(c.initrd, Some(PathBuf::from("i")));
        assert_eq!((c.vcpus, c.memory_mib, c.console), (2, 256, Console::None));
        assert_eq!(
            c.vsock,
            Some(VsockConfig {
                cid: 3,
                uds: "/tmp/v.sock".into()
            })
        );
        assert_eq!(c.disks, vec![parse_disk("d,ro"), parse_disk("e")]);
        assert!(c.disks[0].read_only && !c.disks[1].read_only);
        let d = parse_disk("a,b,rw,serial=img-1");
        assert_eq!(d.path, Some(PathBuf::from("a,b")));
        assert_eq!((d.read_only, d.serial.as_deref()), (false, Some("img-1")));
        assert_eq!(
            run("--kernel k --disk empty,serial=c1 --disk empty").disks,
            vec![
                DiskConfig::empty_slot(Some("c1".into())),
                DiskConfig::empty_slot(None)
            ]
        );
        assert_eq!(parse_disk("./empty").path, Some(PathBuf::from("./empty")));
        assert_eq!(c.fs[0].tag, "share");
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        let c = run("--kernel k --net 3,02:00:00:00:00:01 --net=4,02:00:00:00:00:02,9000");
        assert_eq!(
            (c.net[0].tap_fd, c.net[0].mtu, c.net[1].tap_fd, c.net[1].mtu),
            (3, DEFAULT_MTU, 4, 9000)
        );
        assert_eq!(c.net[1].mac, "02:00:00:00:00:02");
        assert!(c.balloon, "free page reporting is on by default");
        assert!(!run("--kernel k --no-balloon").balloon);
    }

    #[test]
    fn usage_errors() {
        for bad in [
            "",
            "--kernel",
            "--kernel k --memory lots",
            "--kernel k --vcpus 300",
            "--kernel k --vsock /x",
            "--kernel k --net 3",
            "--kernel k --net x,02:00:00:00:00:01",
            "--kernel k --net 3,02:00:00:00:00:01,1500,9",
            "--kernel k --bogus",
            "--config c.json --kernel k",
            "--config c.json --no-balloon",
        ] {
            assert!(
                matches!(parse_args(&args(bad)), Err(Error::Usage(_))),
                "{bad}"
            );
        }
        for bad in [
            "--kernel k --vcpus 9",
            "--kernel k --vcpus 0",
            "--kernel k --memory 8",
            "--kernel k --vsock 2,/x",
            "--kernel k --fs ,/x",
        ] {
            let err = parse_args(&args(bad)).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{bad}: {err}");
            let text = hull_protocol::error::chain(&err);
            assert!(text.contains(" to "), "the bounds are named: {text}");
        }
        for (bad, want) in [
            ("--kernel k --net 3,01:00:00:00:00:01", "unicast MAC"),
            ("--kernel k --net 1,02:00:00:00:00:01", "3 or above"),
            ("--kernel k --disk empty,rw", "read_only"),
            ("--kernel k --disk d,serial=a/b", "disk serial"),
        ] {
            let text = hull_protocol::error::chain(&parse_args(&args(bad)).unwrap_err());
            assert!(text.contains(want), "{bad}: {text}");
        }
        assert_eq!(parse_args(&args("--help")).unwrap(), Command::Help);
    }

    #[test]
    fn json_config() {
        let dir = std::env::temp_dir().join(format!("hull-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.json");
        std::fs::write(
            &path,
            r#"{"kernel":"/k","vcpus":2,"console":{"file":"/tmp/c"},"vsock":{"uds":"/tmp/v"},"disks":[{"path":"/d","read_only":true}]}"#,
        )
        .unwrap();
        let c = run(&format!("--config {}", path.display()));
        assert_eq!((c.vcpus, c.memory_mib), (2, DEFAULT_MEMORY_MIB));
        assert_eq!(c.console, Console::File("/tmp/c".into()));
        assert_eq!(c.vsock.unwrap().cid, MIN_GUEST_CID);
        std::fs::write(&path, r#"{"kernel":"/k","typo":1}"#).unwrap();
        assert!(matches!(
            parse_args(&args(&format!("--config {}", path.display()))),
            Err(Error::ParseConfig(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
