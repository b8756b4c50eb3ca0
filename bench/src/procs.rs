//! Host processes: a pod's shim and its descendants, their PSS (guest RAM
//! apart), and the pod machinery left running after the benchmark.

use std::collections::HashMap;
use std::fs;

use serde::{Deserialize, Serialize};

/// Name of Hull's guest RAM memfd as it shows in /proc/PID/smaps.
pub const GUEST_RAM_MAPPING: &str = "memfd:hull-guest-ram";

/// Process names that must not outlive the benchmark.
pub const POD_MACHINERY: &[&str] = &[
    "containerd-shim-runc-v2",
    "containerd-shim-hull-v2",
    "hull-vmm",
    "virtiofsd",
    "runc",
    "crun",
    "hull-bench-probe",
];

/// PSS of one host process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcMem {
    pub pid: u32,
    pub name: String,
    /// Everything mapped, KiB.
    pub pss_kib: u64,
    /// Of which Hull's guest RAM mapping, KiB.
    pub guest_ram_kib: u64,
    /// Its seccomp mode (`Seccomp:` in /proc/PID/status): 0 none, 1 strict, 2 filter.
    #[serde(default)]
    pub seccomp: Option<u8>,
}

/// The `Seccomp:` mode in the text of a /proc/PID/status file.
pub fn seccomp_mode(status: &str) -> Option<u8> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Sums the Pss lines of a smaps file: (all mappings, the guest RAM mapping).
pub fn smaps_pss(smaps: &str) -> (u64, u64) {
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Pss:") {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            total += kib;
            if in_guest {
                guest += kib;
            }
        } else if is_mapping_header(line) {
            in_guest = line.contains(GUEST_RAM_MAPPING);
        }
    }
    (total, guest)
}

/// A smaps mapping line starts with `start-end perms`: hex digits, a dash, hex digits.
fn is_mapping_header(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or_default();
    first.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && a.chars().all(|c| c.is_ascii_hexdigit())
            && b.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// One running process: pid, parent, argv.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub argv: Vec<String>,
}

impl ProcInfo {
    /// The basename of argv[0] (or of the comm when argv is empty).
    pub fn name(&self) -> String {
        self.argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default()
    }
}

/// Every process in /proc.
pub fn list() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The comm field is in parentheses and may hold spaces: parse after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let argv = fs::read(e.path().join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push(ProcInfo { pid, ppid, argv });
    }
    out
}

/// The shim serving container `id` (`... -id <id> ...` in its argv).
pub fn find_shim(procs: &[ProcInfo], id: &str) -> Option<u32> {
    procs
        .iter()
        .find(|p| {
            p.name().starts_with("containerd-shim")
                && p.argv.windows(2).any(|w| w[0] == "-id" && w[1] == id)
        })
        .map(|p| p.pid)
}

/// `root` and all its descendants.
pub fn tree(procs: &[ProcInfo], root: u32) -> Vec<&ProcInfo> {
    let mut children: HashMap<u32, Vec<&ProcInfo>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out: Vec<&ProcInfo> = procs.iter().filter(|p| p.pid == root).collect();
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i].pid) {
            out.extend(c.iter().copied());
        }
        i += 1;
    }
    out
}

/// PSS of each process of `pids`' tree (those that vanished are left out).
pub fn memory_of(procs: &[&ProcInfo]) -> Vec<ProcMem> {
    procs
        .iter()
        .filter_map(|p| {
            let smaps = fs::read_to_string(format!("/proc/{}/smaps", p.pid)).ok()?;
            let (pss_kib, guest_ram_kib) = smaps_pss(&smaps);
            let status = fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap_or_default();
            Some(ProcMem {
                pid: p.pid,
                name: p.name(),
                pss_kib,
                guest_ram_kib,
                seccomp: seccomp_mode(&status),
            })
        })
        .collect()
}

/// Pod machinery still running: "PID name".
pub fn leftovers(procs: &[ProcInfo]) -> Vec<String> {
    procs
        .iter()
        .filter(|p| POD_MACHINERY.contains(&p.name().as_str()))
        .map(|p| format!("{} {}", p.pid, p.argv.join(" ")))
        .collect()
}

/// Mounts under any of `dirs` still in /proc/self/mountinfo.
pub fn leftover_mounts(mountinfo: &str, dirs: &[&str]) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| dirs.iter().any(|d| m.starts_with(d)))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 123 /usr/bin/hull-vmm
Size:                132 kB
Pss:                 100 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 9 /memfd:hull-guest-ram (deleted)
Size:             262144 kB
Pss:               40000 kB
Pss_Dirty:         40000 kB
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]
Pss:                  12 kB
";

    #[test]
    fn seccomp_mode_from_status() {
        let status = "Name:\thull-vmm\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(seccomp_mode(status), Some(2));
        assert_eq!(seccomp_mode("Name:\tx\nSeccomp:\t0\n"), Some(0));
        assert_eq!(seccomp_mode("Name:\tx\n"), None);
    }

    #[test]
    fn smaps_splits_guest_ram_from_the_rest() {
        // Pss_Dirty must not be counted twice.
        assert_eq!(smaps_pss(SMAPS), (40112, 40000));
    }

    fn p(pid: u32, ppid: u32, argv: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            argv: argv.split(' ').map(str::to_string).collect(),
        }
    }

    #[test]
    fn finds_the_shim_of_an_id_and_its_descendants() {
        let procs = vec![
            p(1, 0, "/sbin/init"),
            p(
                10,
                1,
                "/usr/bin/containerd-shim-runc-v2 -namespace default -id other -address /x",
            ),
            p(
                20,
                1,
                "/usr/bin/containerd-shim-hull-v2 -namespace default -id hb-pod-hull -address /x",
            ),
            p(21, 20, "/usr/local/bin/hull-vmm --config c"),
            p(22, 20, "/root/.cargo/bin/virtiofsd --socket-path s"),
            p(23, 22, "/root/.cargo/bin/virtiofsd --socket-path s"),
            p(30, 10, "sleep 1"),
        ];
        let shim = find_shim(&procs, "hb-pod-hull").unwrap();
        assert_eq!(shim, 20);
        let mut pids: Vec<u32> = tree(&procs, shim).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![20, 21, 22, 23]);
        assert_eq!(find_shim(&procs, "hb-pod"), None);
        assert_eq!(leftovers(&procs).len(), 5);
    }

    #[test]
    fn leftover_mounts_match_by_prefix() {
        let mi = "36 25 0:32 / /run/hull/pod1/rootfs rw - overlay overlay rw\n37 25 0:33 / /proc rw - proc proc rw\n";
        assert_eq!(
            leftover_mounts(mi, &["/run/hull/"]),
            vec!["/run/hull/pod1/rootfs"]
        );
    }
}
