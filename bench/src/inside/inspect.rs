//! Isolation probes: what the container can see of the kernel, the host's
//! processes, mounts, logs, symbols, devices and cgroups. Reads only: nothing
//! here writes to a kernel interface (the sysrq probe opens, never writes).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use crate::probe_data::{Access, Dev, Isolation, Kallsyms, Proc};

const MAX_LINES: usize = 300;

/// Capabilities that let a container reach the host kernel or hardware.
const POWERFUL_CAPS: &[(u32, &str)] = &[
    (16, "SYS_MODULE"),
    (17, "SYS_RAWIO"),
    (19, "SYS_PTRACE"),
    (21, "SYS_ADMIN"),
    (22, "SYS_BOOT"),
    (34, "SYSLOG"),
    (38, "PERFMON"),
    (39, "BPF"),
];

fn first_line(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.lines().next().unwrap_or_default().to_string())
        .unwrap_or_else(|e| format!("error: {e}"))
}

fn uname_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it and we read it only on success.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return format!("error: {}", std::io::Error::last_os_error());
    }
    // SAFETY: uname NUL-terminates release within the array.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn processes() -> Vec<Proc> {
    let mut procs: Vec<Proc> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            Some(Proc {
                pid,
                comm: comm.trim().to_string(),
            })
        })
        .collect();
    procs.sort_by_key(|p| p.pid);
    procs.truncate(MAX_LINES);
    procs
}

fn lines_of(path: &str) -> Vec<String> {
    fs::read_to_string(path)
        .map(|s| s.lines().take(MAX_LINES).map(str::to_string).collect())
        .unwrap_or_else(|e| vec![format!("error: {e}")])
}

/// The kernel log through syslog(2), else /dev/kmsg: readable, and its "Linux version" line.
fn dmesg() -> Access {
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: READ_ALL (3) copies at most len bytes into buf, which is that long.
    let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), buf.len() as libc::c_int) };
    let syslog_err = if n >= 0 {
        let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
        return Access {
            readable: true,
            detail: format!("syslog(2): {}", banner(&text)),
        };
    } else {
        std::io::Error::last_os_error()
    };
    let kmsg = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg");
    match kmsg.and_then(|mut f| {
        let mut rec = vec![0u8; 8192];
        let mut text = String::new();
        for _ in 0..64 {
            match f.read(&mut rec) {
                Ok(0) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&rec[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if text.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(text)
    }) {
        Ok(text) if !text.is_empty() => Access {
            readable: true,
            detail: format!("/dev/kmsg: {}", banner(&text)),
        },
        Ok(_) => Access {
            readable: false,
            detail: format!("syslog(2): {syslog_err}; /dev/kmsg: empty"),
        },
        Err(e) => Access {
            readable: false,
            detail: format!("syslog(2): {syslog_err}; /dev/kmsg: {e}"),
        },
    }
}

/// The log's "Linux version ..." line (trimmed), else its first line.
fn banner(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("Linux version"))
        .or_else(|| log.lines().next())
        .unwrap_or("(empty)");
    let at = line.find("Linux version").unwrap_or(0);
    line[at..].chars().take(100).collect()
}

/// Counts kallsyms entries and those whose address is not zero.
pub fn kallsyms_from(reader: impl BufRead) -> Kallsyms {
    let mut k = Kallsyms::default();
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let Some(addr) = line.split_whitespace().next() else {
            continue;
        };
        k.symbols += 1;
        if addr.chars().any(|c| c != '0') {
            k.nonzero += 1;
        }
    }
    k
}

fn kallsyms() -> Kallsyms {
    match File::open("/proc/kallsyms") {
        Ok(f) => kallsyms_from(BufReader::new(f)),
        Err(e) => Kallsyms {
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

fn devices() -> Vec<Dev> {
    let mut devs: Vec<Dev> = fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let kind = match e.path().symlink_metadata().map(|m| m.file_type()) {
                Ok(t) if t.is_char_device() => "char",
                Ok(t) if t.is_block_device() => "block",
                Ok(t) if t.is_dir() => "dir",
                Ok(t) if t.is_symlink() => "link",
                _ => "file",
            };
            Dev {
                name: e.file_name().to_string_lossy().into_owned(),
                kind: kind.into(),
            }
        })
        .collect();
    devs.sort_by(|a, b| a.name.cmp(&b.name));
    devs.truncate(MAX_LINES);
    devs
}

/// Tries to read the first sector of each block device; the first that gives data wins.
fn block_read(devs: &[Dev]) -> Access {
    let blocks: Vec<&Dev> = devs.iter().filter(|d| d.kind == "block").collect();
    if blocks.is_empty() {
        return Access {
            readable: false,
            detail: "no block devices in /dev".into(),
        };
    }
    let (mut empty, mut errors) = (Vec::new(), Vec::new());
    for d in &blocks {
        let path = format!("/dev/{}", d.name);
        let mut sector = [0u8; 512];
        match File::open(&path).and_then(|mut f| f.read(&mut sector)) {
            Ok(n) if n > 0 => {
                return Access {
                    readable: true,
                    detail: format!(
                        "read {n} bytes from {path} ({} block devices)",
                        blocks.len()
                    ),
                }
            }
            Ok(_) => empty.push(d.name.clone()),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    let mut detail = format!("{} block devices, none gave data", blocks.len());
    if !empty.is_empty() {
        detail.push_str(&format!("; opened but empty: {}", empty.join(" ")));
    }
    if !errors.is_empty() {
        detail.push_str(&format!("; {}", errors.join("; ")));
    }
    Access {
        readable: false,
        detail,
    }
}

fn cgroup_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs.truncate(MAX_LINES);
    dirs
}

/// Opens /proc/sysrq-trigger for writing and closes it again: nothing is written.
fn sysrq() -> Access {
    match OpenOptions::new().write(true).open("/proc/sysrq-trigger") {
        Ok(_) => Access {
            readable: true,
            detail: "opened for writing (nothing written)".into(),
        },
        Err(e) => Access {
            readable: false,
            detail: e.to_string(),
        },
    }
}

/// The CapEff hex word of /proc/self/status and the powerful capabilities it holds.
pub fn cap_eff(status: &str) -> (String, Vec<String>) {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let bits = u64::from_str_radix(&hex, 16).unwrap_or(0);
    let caps = POWERFUL_CAPS
        .iter()
        .filter(|(bit, _)| bits & (1u64 << bit) != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    (hex, caps)
}

/// Runs every probe above (the syscall scan is separate: see `syscalls`).
pub fn inspect(privileged_run: bool) -> Isolation {
    let devices = devices();
    let (cap_eff, powerful_caps) =
        cap_eff(&fs::read_to_string("/proc/self/status").unwrap_or_default());
    Isolation {
        privileged_run,
        kernel_release: uname_release(),
        proc_version: first_line("/proc/version"),
        processes: processes(),
        mounts: lines_of("/proc/self/mounts"),
        dmesg: dmesg(),
        kallsyms: kallsyms(),
        block_read: block_read(&devices),
        devices,
        cgroup_self: fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_else(|e| format!("error: {e}"))
            .trim()
            .to_string(),
        cgroup_dirs: cgroup_dirs(),
        sysrq: sysrq(),
        cap_eff,
        powerful_caps,
        syscalls: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_counts_hidden_and_visible_addresses() {
        let text = "0000000000000000 T _text\n0000000000000000 T start\n";
        let k = kallsyms_from(text.as_bytes());
        assert_eq!((k.symbols, k.nonzero), (2, 0));
        let text = "ffffffff81000000 T _text\n0000000000000000 A fixed\n";
        assert_eq!(kallsyms_from(text.as_bytes()).nonzero, 1);
    }

    #[test]
    fn cap_eff_names_powerful_capabilities() {
        let (hex, caps) = cap_eff("Name:\tx\nCapEff:\t00000000a80425fb\n");
        assert_eq!(hex, "00000000a80425fb");
        assert!(caps.is_empty(), "{caps:?}");
        let (_, caps) = cap_eff("CapEff:\t000001ffffffffff\n");
        assert!(
            caps.contains(&"SYS_ADMIN".to_string()) && caps.contains(&"SYS_MODULE".to_string())
        );
    }

    #[test]
    fn banner_prefers_the_linux_version_line() {
        let log = "<6>[    0.000000] Command line: x\n<5>[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian)\n";
        assert!(banner(log).starts_with("Linux version 6.1.0-56"));
        assert_eq!(banner("only line\n"), "only line");
    }

    #[test]
    fn inspect_runs_unprivileged() {
        let iso = inspect(false);
        assert!(!iso.kernel_release.is_empty());
        assert!(!iso.processes.is_empty());
        assert!(iso.syscalls.is_none());
    }
}
