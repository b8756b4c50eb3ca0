//! The node check (`hull-check`): can this node run Hull pods? One plain line per
//! finding, `ok …`, `warn … : what to do` or `FAIL … : what to do`, and a failed
//! check makes the command exit non-zero. It reads Hull's configuration through
//! the shim's own type, so it sees the file exactly as the shim will.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_hull_v2::config::{Config, CONFIG_ENV, DEFAULT_CONFIG_PATH};

/// containerd's default configuration file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// The runtime type containerd must name for Hull.
pub const RUNTIME_TYPE: &str = "io.containerd.hull.v2";
/// The CRI runtime handler (RuntimeClass `handler`) the README uses.
pub const HANDLER: &str = "hull";
/// cgroup2's file-system magic (`statfs` type).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// How long a `--version` of another binary may take (milliseconds on a node;
/// over 5 s inside the lab's emulated VM).
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// Most output kept from such a run.
const MAX_OUTPUT: u64 = 16 * 1024;

/// How a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    /// What was found.
    pub what: String,
    /// What to do about it (warn and FAIL only).
    pub fix: String,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            what: what.into(),
            fix: String::new(),
        }
    }

    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            what: what.into(),
            fix: fix.into(),
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            what: what.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Status::Ok => write!(f, "ok {}", self.what),
            Status::Warn => write!(f, "warn {} : {}", self.what, self.fix),
            Status::Fail => write!(f, "FAIL {} : {}", self.what, self.fix),
        }
    }
}

/// Where the check looks; tests point these at a fake tree.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/sys/module`: which kernel modules are loaded.
    pub sys_module: PathBuf,
    pub dev_kvm: PathBuf,
    pub dev_tun: PathBuf,
    pub cgroup: PathBuf,
    pub containerd_config: PathBuf,
    /// The host's shmem transparent-huge-page setting (guest RAM is a memfd).
    pub shmem_thp: PathBuf,
    /// Hull's configuration file; None: the shim's own lookup (`$HULL_CONFIG`, then the default).
    pub hull_config: Option<PathBuf>,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            sys_module: PathBuf::from("/sys/module"),
            dev_kvm: PathBuf::from("/dev/kvm"),
            dev_tun: PathBuf::from("/dev/net/tun"),
            cgroup: PathBuf::from("/sys/fs/cgroup"),
            containerd_config: PathBuf::from(CONTAINERD_CONFIG),
            shmem_thp: PathBuf::from("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
            hull_config: None,
        }
    }
}

/// Runs every check, in the order they are printed.
pub fn run(host: &Host) -> Vec<Finding> {
    let mut out = vec![kvm(host), kvm_access(&host.dev_kvm)];
    out.extend(networking(host));
    out.push(cgroup_v2(&host.cgroup));
    out.push(huge_pages(&host.shmem_thp));
    out.push(containerd_version());
    out.extend(containerd_config(&host.containerd_config));
    out.extend(hull(host.hull_config.as_deref()));
    out
}

/// True if any finding failed.
pub fn failed(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.status == Status::Fail)
}

fn module(host: &Host, name: &str) -> bool {
    host.sys_module.join(name).exists()
}

/// Hardware KVM, or PVM (which cannot boot a standard guest kernel).
pub fn kvm(host: &Host) -> Finding {
    if module(host, "kvm_pvm") {
        return Finding::fail(
            "kvm: PVM-backed /dev/kvm (kvm_pvm loaded): it cannot boot a standard guest \
             kernel, so Hull pods cannot start on this node",
            "run Hull on a node with hardware KVM (kvm_intel or kvm_amd); here, guests boot \
             only in the lab (tests/lab/lab.sh)",
        );
    }
    for m in ["kvm_intel", "kvm_amd"] {
        if module(host, m) {
            return Finding::ok(format!("kvm: hardware KVM ({m})"));
        }
    }
    if !host.dev_kvm.exists() {
        return Finding::fail(
            "kvm: no /dev/kvm",
            "enable virtualization (VT-x/AMD-V) in the firmware and load kvm_intel or kvm_amd",
        );
    }
    Finding::fail(
        "kvm: /dev/kvm comes from neither kvm_intel nor kvm_amd",
        "load kvm_intel or kvm_amd; Hull needs hardware KVM",
    )
}

/// `/dev/kvm` opens read-write for this user.
pub fn kvm_access(dev: &Path) -> Finding {
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => Finding::ok(format!("{}: read-write access", dev.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::fail(
            format!("{}: missing", dev.display()),
            "load the kvm module (modprobe kvm_intel or kvm_amd)",
        ),
        Err(e) => Finding::fail(
            format!("{}: cannot open read-write ({e})", dev.display()),
            "run the shim as root (containerd does) or grant this user the device's group",
        ),
    }
}

/// What the pod network of CRI pods needs: the tun device (one tap per CNI
/// interface) and the tc ingress qdisc, u32 classifier and mirred action that
/// join each tap to its CNI interface. Warnings only: `ctr run` pods have a
/// loopback-only network and need neither.
pub fn networking(host: &Host) -> Vec<Finding> {
    let mut out = Vec::new();
    if host.dev_tun.exists() {
        out.push(Finding::ok(format!("tun: {}", host.dev_tun.display())));
    } else {
        out.push(Finding::warn(
            format!("tun: no {}", host.dev_tun.display()),
            "modprobe tun (CRI pods with a CNI network get a tap each)",
        ));
    }
    let tc = ["sch_ingress", "cls_u32", "act_mirred"];
    let missing: Vec<&str> = tc.into_iter().filter(|m| !module(host, m)).collect();
    if missing.is_empty() {
        out.push(Finding::ok("tc: ingress qdisc, u32 and mirred loaded"));
    } else {
        out.push(Finding::warn(
            format!("tc: {} not loaded", missing.join(", ")),
            format!(
                "modprobe {} (the shim joins each CNI interface to its pod's tap with tc; \
                 the kernel may also load them on first use)",
                missing.join(" ")
            ),
        ));
    }
    out
}

/// Whether guest RAM (a memfd, so shmem) can get transparent huge pages: hull-vmm advises them,
/// which the kernel follows when `shmem_enabled` is `advise`, `within_size`, `always` or `force`.
/// A warning only: guests run either way, with 512x more first-touch faults while they boot.
pub fn huge_pages(setting: &Path) -> Finding {
    let text = std::fs::read_to_string(setting).unwrap_or_default();
    let chosen = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("");
    let fix = format!(
        "echo advise > {} (guest RAM then faults in 2 MiB at a time: faster guest boots;          persist it with a tmpfiles.d or sysfs.conf entry)",
        setting.display()
    );
    match chosen {
        "advise" | "within_size" | "always" | "force" => Finding::ok(format!(
            "huge pages: shmem THP {chosen}, guest RAM uses them"
        )),
        "" => Finding::warn(
            format!(
                "huge pages: no {} (no transparent huge pages)",
                setting.display()
            ),
            "a kernel with CONFIG_TRANSPARENT_HUGEPAGE boots guests faster",
        ),
        other => Finding::warn(format!("huge pages: shmem THP is {other}"), fix),
    }
}

/// Whether `dir` is a cgroup v2 (unified) mount.
pub fn cgroup_v2(dir: &Path) -> Finding {
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return Finding::fail(
            format!("cgroup: bad path {}", dir.display()),
            "fix the path",
        );
    };
    // SAFETY: statfs is plain data; zeroed is a valid value for it.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and buf is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    if rc != 0 {
        return Finding::warn(
            format!(
                "cgroup: cannot stat {} ({})",
                dir.display(),
                std::io::Error::last_os_error()
            ),
            "mount cgroup2 on /sys/fs/cgroup",
        );
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libc targets.
    if buf.f_type as i64 == CGROUP2_SUPER_MAGIC {
        Finding::ok(format!("cgroup: v2 (unified) at {}", dir.display()))
    } else {
        Finding::warn(
            format!("cgroup: {} is not cgroup v2 (v1 or hybrid)", dir.display()),
            "boot with systemd.unified_cgroup_hierarchy=1 (kubelet and containerd expect v2; \
             Hull's guests use v2 inside either way)",
        )
    }
}

/// Runs `program args` with a deadline; its first stdout line, or why not.
pub fn first_line(program: &Path, args: &[&str]) -> Result<String, String> {
    first_line_within(program, args, RUN_TIMEOUT)
}

fn first_line_within(program: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not answer within {} s",
                    program.display(),
                    timeout.as_secs_f64()
                ));
            }
            Err(e) => return Err(format!("wait for {}: {e}", program.display())),
        }
    };
    let mut text = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = out.take(MAX_OUTPUT).read_to_string(&mut text);
    }
    if !status.success() {
        return Err(format!("{} exited with {status}", program.display()));
    }
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// The first `program` on `$PATH` (or in /usr/local/bin, /usr/bin, /usr/sbin).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `(major, minor)` of a `containerd --version` line
/// (`containerd github.com/containerd/containerd 1.6.20~ds1 …`).
pub fn containerd_release(line: &str) -> Option<(u32, u32)> {
    let version = line.split_whitespace().nth(2)?.trim_start_matches('v');
    let mut parts = version.split(['.', '-', '~', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// containerd is installed and new enough (1.6 or later).
pub fn containerd_version() -> Finding {
    let Some(bin) = which("containerd") else {
        return Finding::fail(
            "containerd: not installed",
            "install containerd 1.6 or later (Debian: apt-get install containerd)",
        );
    };
    match first_line(&bin, &["--version"]) {
        Ok(line) => match containerd_release(&line) {
            Some((major, minor)) if (major, minor) >= (1, 6) => {
                Finding::ok(format!("containerd: {major}.{minor} ({line})"))
            }
            Some(_) => Finding::fail(
                format!("containerd: too old ({line})"),
                "upgrade to containerd 1.6 or later",
            ),
            None => Finding::warn(
                format!("containerd: unknown version line {line:?}"),
                "check that containerd is 1.6 or later",
            ),
        },
        Err(e) => Finding::fail(format!("containerd: {e}"), "reinstall containerd"),
    }
}

/// The CRI runtime tables of a containerd config, for 1.6/1.7 (version 2) and 2.x (version 3).
const RUNTIME_TABLES: [&[&str]; 2] = [
    &[
        "plugins",
        "io.containerd.grpc.v1.cri",
        "containerd",
        "runtimes",
    ],
    &[
        "plugins",
        "io.containerd.cri.v1.runtime",
        "containerd",
        "runtimes",
    ],
];

/// The `hull` runtime as declared in containerd's config text: its table path and entry.
pub fn declared_runtime(text: &str) -> Result<Option<(String, toml::Table)>, String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    for path in RUNTIME_TABLES {
        let mut node = Some(&doc);
        for key in path {
            node = node
                .and_then(|t| t.get(*key))
                .and_then(toml::Value::as_table);
        }
        if let Some(entry) = node
            .and_then(|t| t.get(HANDLER))
            .and_then(toml::Value::as_table)
        {
            let name = format!("plugins.\"{}\".containerd.runtimes.{HANDLER}", path[1]);
            return Ok(Some((name, entry.clone())));
        }
    }
    Ok(None)
}

/// containerd's config declares the `hull` runtime with Hull's runtime type.
pub fn containerd_config(path: &Path) -> Vec<Finding> {
    let add = "add the runtime from the README's Kubernetes section (scripts/install.sh \
               --print-cri prints it) and restart containerd";
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return vec![Finding::fail(
                format!("containerd config: cannot read {} ({e})", path.display()),
                add,
            )]
        }
    };
    match declared_runtime(&text) {
        Err(e) => vec![Finding::fail(
            format!("containerd config: {} is {e}", path.display()),
            "fix the file",
        )],
        Ok(None) => vec![Finding::fail(
            format!(
                "containerd config: {} declares no runtime `{HANDLER}`",
                path.display()
            ),
            add,
        )],
        Ok(Some((name, entry))) => {
            let runtime_type = entry.get("runtime_type").and_then(toml::Value::as_str);
            if runtime_type != Some(RUNTIME_TYPE) {
                return vec![Finding::fail(
                    format!("containerd config: {name} has runtime_type {runtime_type:?}"),
                    format!("set runtime_type = \"{RUNTIME_TYPE}\""),
                )];
            }
            vec![Finding::ok(format!(
                "containerd config: {name} runs {RUNTIME_TYPE} ({})",
                path.display()
            ))]
        }
    }
}

/// Which configuration file the shim reads (without containerd's `ConfigPath`).
pub fn hull_config_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(CONFIG_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

/// Hull's config loads, and the files it names are there and match this build.
pub fn hull(explicit: Option<&Path>) -> Vec<Finding> {
    let path = hull_config_path(explicit);
    let config = match Config::load(explicit) {
        Ok(config) => config,
        Err(e) => {
            return vec![Finding::fail(
                format!("hull config: {}", hull_protocol::error::chain(&e)),
                "fix the file (settings: shim/README.md)",
            )]
        }
    };
    let mut out = vec![if path.exists() {
        Finding::ok(format!("hull config: {}", path.display()))
    } else {
        Finding::warn(
            format!(
                "hull config: no {}, built-in defaults in use",
                path.display()
            ),
            "run scripts/install.sh (make install) to write it",
        )
    }];
    out.push(image("kernel", &config.kernel, &[b"\x7fELF"]));
    out.push(image(
        "initrd",
        &config.initrd,
        &[b"070701", b"070702", b"\x1f\x8b", b"\x28\xb5\x2f\xfd"],
    ));
    out.push(hull_binary("hull-vmm", &config.hull_vmm));
    out.push(virtiofsd(&config.virtiofsd));
    if let Some(shim) = which("containerd-shim-hull-v2") {
        out.push(hull_binary("containerd-shim-hull-v2", &shim));
    } else {
        out.push(Finding::fail(
            "containerd-shim-hull-v2: not on PATH",
            "run scripts/install.sh (make install): containerd finds the shim on its PATH",
        ));
    }
    out.push(run_dir(&config.run_dir));
    out.push(vmm_user(&config));
    out.push(image_disk_tools(&config, which));
    out
}

/// The tools that make image disks, when the config asks for them: without them every image
/// is read through the share (slower, and a warning in the shim's log for each container).
fn image_disk_tools(config: &Config, find: impl Fn(&str) -> Option<PathBuf>) -> Finding {
    if !config.image_disks() {
        return Finding::ok("image disks: off in the config (images read through the share)");
    }
    let missing: Vec<&str> = ["mkfs.ext4", "debugfs"]
        .into_iter()
        .filter(|t| find(t).is_none())
        .collect();
    let bound = match config.image_cache_max_mib {
        0 => "no bound".to_string(),
        mib => format!("at most {mib} MiB"),
    };
    match missing.is_empty() {
        true => Finding::ok(format!(
            "image disks: mkfs.ext4 and debugfs found; cache {} ({bound})",
            config.image_cache_dir.display()
        )),
        false => Finding::warn(
            format!(
                "image disks: {} not on PATH: images will be read through the share",
                missing.join(" and ")
            ),
            "apt-get install e2fsprogs (make setup does), or set image_layers = \"share\"",
        ),
    }
}

/// Who each pod's hull-vmm runs as inside its jail.
fn vmm_user(config: &Config) -> Finding {
    if !config.vmm_jail {
        return Finding::warn(
            "vmm jail: off (vmm_jail = false): hull-vmm runs as root in the host's namespaces",
            "remove vmm_jail = false from the config",
        );
    }
    match config.vmm_ids() {
        Ok((0, _)) => Finding::warn(
            "vmm user: hull-vmm stays root in its jail (vmm_uid = 0)",
            "drop vmm_uid/vmm_gid from the config to run it as the user hull-vmm",
        ),
        Ok((uid, gid)) => Finding::ok(format!("vmm user: hull-vmm runs as uid {uid}, gid {gid}")),
        Err(e) => Finding::fail(
            format!("vmm user: {}", hull_protocol::error::chain(&e)),
            "run scripts/install.sh (make install), which creates the user",
        ),
    }
}

/// A guest file exists and starts with one of the expected magics.
fn image(what: &str, path: &Path, magics: &[&[u8]]) -> Finding {
    let mut head = [0u8; 8];
    let read = std::fs::File::open(path).and_then(|mut f| f.read(&mut head));
    match read {
        Err(e) => Finding::fail(
            format!("{what}: {} ({e})", path.display()),
            format!("install the guest {what} (make install) or fix `{what}` in the config"),
        ),
        Ok(n) if magics.iter().any(|m| head[..n].starts_with(m)) => {
            Finding::ok(format!("{what}: {}", path.display()))
        }
        Ok(_) => Finding::fail(
            format!(
                "{what}: {} is not a guest {what} Hull boots",
                path.display()
            ),
            format!("point `{what}` at the files kernel-config/build.sh and rootfs/build.sh make"),
        ),
    }
}

/// A Hull binary runs and reports this build's version (and commit).
fn hull_binary(name: &str, path: &Path) -> Finding {
    let reinstall = "reinstall Hull (make install) so all its binaries come from one build";
    if !is_executable(path) {
        return Finding::fail(
            format!("{name}: {} is missing or not executable", path.display()),
            reinstall,
        );
    }
    let line = match first_line(path, &["--version"]) {
        Ok(line) => line,
        Err(e) => {
            let what =
                format!("{name}: no answer to --version ({e}), an older build or not {name}");
            return Finding::fail(what, reinstall);
        }
    };
    let ours = format!("{name} {}", env!("CARGO_PKG_VERSION"));
    let commit = format!("(commit {})", env!("HULL_COMMIT"));
    if !line.starts_with(&format!("{ours} ")) && line != ours {
        Finding::fail(
            format!(
                "{name}: {} is {line:?}, this hull-check is {}",
                path.display(),
                env!("CARGO_PKG_VERSION")
            ),
            reinstall,
        )
    } else if !line.ends_with(&commit) {
        Finding::warn(
            format!(
                "{name}: {} is {line:?}, built from another commit than this hull-check {commit}",
                path.display()
            ),
            reinstall,
        )
    } else {
        Finding::ok(format!("{name}: {} ({line})", path.display()))
    }
}

fn virtiofsd(path: &Path) -> Finding {
    let fix = "install virtiofsd (make setup) or fix `virtiofsd` in the config";
    if !is_executable(path) {
        return Finding::fail(
            format!("virtiofsd: {} is missing or not executable", path.display()),
            fix,
        );
    }
    match first_line(path, &["--version"]) {
        Ok(line) => Finding::ok(format!("virtiofsd: {} ({line})", path.display())),
        Err(e) => Finding::fail(format!("virtiofsd: {e}"), fix),
    }
}

/// The run directory is root's alone (the shim refuses it otherwise).
fn run_dir(dir: &Path) -> Finding {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::ok(format!(
            "run dir: {} (created with the first pod)",
            dir.display()
        )),
        Err(e) => Finding::fail(
            format!("run dir: {} ({e})", dir.display()),
            "fix `run_dir` in the config",
        ),
        Ok(m) if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 => Finding::fail(
            format!(
                "run dir: {} must be a directory owned by root and writable by root only \
                 (mode {:o}, uid {})",
                dir.display(),
                m.mode() & 0o7777,
                m.uid()
            ),
            format!("chown root {0} && chmod go-w {0}", dir.display()),
        ),
        Ok(_) => Finding::ok(format!("run dir: {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(dir: &Path, modules: &[&str]) -> Host {
        for m in modules {
            std::fs::create_dir_all(dir.join("module").join(m)).unwrap();
        }
        Host {
            sys_module: dir.join("module"),
            dev_kvm: dir.join("kvm"),
            dev_tun: dir.join("tun"),
            cgroup: dir.to_path_buf(),
            containerd_config: dir.join("config.toml"),
            shmem_thp: dir.join("shmem_enabled"),
            hull_config: None,
        }
    }

    #[test]
    fn pvm_fails_and_names_the_lab() {
        let dir = tempfile::tempdir().unwrap();
        let f = kvm(&fake_host(dir.path(), &["kvm", "kvm_pvm"]));
        assert_eq!(f.status, Status::Fail);
        let line = f.to_string();
        assert!(line.starts_with("FAIL kvm: PVM"), "{line}");
        assert!(
            line.contains("cannot boot a standard guest kernel"),
            "{line}"
        );
        assert!(line.contains(" : ") && line.contains("lab"), "{line}");
    }

    #[test]
    fn hardware_kvm_is_ok_and_no_kvm_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            kvm(&fake_host(dir.path(), &["kvm_amd"])).to_string(),
            "ok kvm: hardware KVM (kvm_amd)"
        );
        let empty = tempfile::tempdir().unwrap();
        let f = kvm(&fake_host(empty.path(), &[]));
        assert_eq!(f.status, Status::Fail);
        assert!(f.what.contains("no /dev/kvm"));
    }

    #[test]
    fn missing_network_devices_are_warnings_with_the_module_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let found = networking(&fake_host(dir.path(), &[]));
        assert!(found.iter().all(|f| f.status == Status::Warn));
        assert!(found[1]
            .to_string()
            .contains("modprobe sch_ingress cls_u32 act_mirred"));
        std::fs::write(dir.path().join("tun"), "").unwrap();
        let found = networking(&fake_host(
            dir.path(),
            &["sch_ingress", "cls_u32", "act_mirred"],
        ));
        assert!(found.iter().all(|f| f.status == Status::Ok), "{found:?}");
    }

    #[test]
    fn shmem_huge_pages_are_ok_when_advised_and_a_warning_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shmem_enabled");
        assert_eq!(huge_pages(&file).status, Status::Warn);
        std::fs::write(&file, "always within_size advise [never] deny force\n").unwrap();
        let never = huge_pages(&file);
        assert_eq!(never.status, Status::Warn);
        assert!(never.fix.contains("echo advise >"), "{never}");
        std::fs::write(&file, "always within_size [advise] never deny force\n").unwrap();
        assert_eq!(huge_pages(&file).status, Status::Ok);
    }

    #[test]
    fn a_tmpdir_is_not_cgroup_v2() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_v2(dir.path()).status, Status::Warn);
    }

    #[test]
    fn containerd_versions_parse() {
        let line = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3";
        assert_eq!(containerd_release(line), Some((1, 6)));
        assert_eq!(
            containerd_release("containerd containerd.io v2.1.4 abc"),
            Some((2, 1))
        );
        assert_eq!(containerd_release("containerd"), None);
    }

    #[test]
    fn the_runtime_is_found_in_both_config_forms() {
        let v2 = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull]
  runtime_type = "io.containerd.hull.v2"
"#;
        let (name, entry) = declared_runtime(v2).unwrap().unwrap();
        assert_eq!(
            name,
            "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull"
        );
        assert_eq!(entry["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        let v3 = r#"version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.hull]
  runtime_type = 'io.containerd.hull.v2'
"#;
        let (name, _) = declared_runtime(v3).unwrap().unwrap();
        assert!(name.contains("io.containerd.cri.v1.runtime"));
        assert_eq!(declared_runtime("version = 2\n").unwrap(), None);
        assert!(declared_runtime("[[").is_err());
    }

    #[test]
    fn a_wrong_runtime_type_fails_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]\nruntime_type = \"io.containerd.runc.v2\"\n",
        )
        .unwrap();
        let f = &containerd_config(&path)[0];
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.contains("io.containerd.hull.v2"), "{f}");
        let f = &containerd_config(&dir.path().join("absent"))[0];
        assert_eq!(f.status, Status::Fail);
    }

    #[test]
    fn images_are_checked_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF....").unwrap();
        assert_eq!(image("kernel", &kernel, &[b"\x7fELF"]).status, Status::Ok);
        std::fs::write(&kernel, b"MZ......").unwrap();
        assert_eq!(image("kernel", &kernel, &[b"\x7fELF"]).status, Status::Fail);
        let f = image("kernel", &dir.path().join("none"), &[b"\x7fELF"]);
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.contains("make install"));
    }

    #[test]
    fn image_disk_tools_are_a_warning_when_missing() {
        let config = Config::default();
        let found = image_disk_tools(&config, |t| Some(PathBuf::from("/sbin").join(t)));
        assert!(found.to_string().contains("found"), "{found}");
        assert!(found.to_string().contains("at most 10240 MiB"), "{found}");
        let none = image_disk_tools(&config, |_| None);
        let text = none.to_string();
        assert!(
            text.contains("mkfs.ext4 and debugfs") && text.contains("e2fsprogs"),
            "{text}"
        );
        assert!(!failed(&[none]), "a warning, not a failure");
        let off = Config {
            image_disk_slots: 0,
            ..Config::default()
        };
        assert!(image_disk_tools(&off, |_| None).to_string().contains("off"));
    }

    #[test]
    fn run_dir_must_be_roots_alone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(run_dir(&dir.path().join("absent")).status, Status::Ok);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(run_dir(&open).status, Status::Fail);
    }

    #[test]
    fn a_binary_that_hangs_is_reported_not_waited_for() {
        let started = Instant::now();
        let timeout = Duration::from_millis(300);
        let e = first_line_within(Path::new("/bin/sleep"), &["60"], timeout).unwrap_err();
        assert!(e.contains("did not answer within 0.3 s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
