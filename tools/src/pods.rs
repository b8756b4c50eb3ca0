//! Hull pods on this node, as the shim leaves them in its run directory
//! (`<run_dir>/<namespace>/<pod>`), and the host processes each one runs
//! (hull-vmm, virtiofsd: the `host-pids` file, `<pid> <start time>` per line),
//! with their CPU and memory from /proc, hull-vmm's own figures from the
//! pod's control socket, and the guest's from its agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_protocol::control::{self, ControlError, VmStats};

use crate::guest::{self, Bounds, GuestError, GuestFigures};
use hull_protocol::vm::pod_files;

/// The shim's record of a pod's host processes, in the pod directory.
pub const HOST_PIDS: &str = "host-pids";

/// One pod's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub id: String,
    pub dir: PathBuf,
}

/// How long a pod's hull-vmm may take to answer a stats request.
pub const VMM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a pod's agent may take for the CONNECT handshake and for its answer each.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(1);

impl Pod {
    /// hull-vmm's figures, asked on the pod's control socket.
    pub fn vmm_stats(&self) -> Result<VmStats, ControlError> {
        control::vm_stats(&self.dir.join(pod_files::CONTROL), VMM_TIMEOUT)
    }

    /// The guest's figures, asked of its agent through the hybrid vsock socket and
    /// checked against what hull-vmm said of the VM (`vmm`, when it answered).
    pub fn guest_stats(&self, vmm: Option<&VmStats>) -> Result<GuestFigures, GuestError> {
        let bounds = Bounds {
            guest_bytes: vmm.map(|v| v.memory.guest_mib.saturating_mul(1 << 20)),
            vcpus: vmm.map(|v| u32::from(v.vcpus)),
        };
        guest::guest_stats(&self.dir.join(pod_files::VSOCK), GUEST_TIMEOUT, bounds)
    }
}

/// The pods under `run_dir`, sorted; a missing run directory means no pods.
pub fn list(run_dir: &Path) -> std::io::Result<Vec<Pod>> {
    let mut pods = Vec::new();
    let namespaces = match std::fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pods),
        Err(e) => return Err(e),
    };
    for ns in namespaces {
        let ns = ns?;
        if !ns.file_type()?.is_dir() {
            continue;
        }
        for pod in std::fs::read_dir(ns.path())? {
            let pod = pod?;
            if pod.file_type()?.is_dir() {
                pods.push(Pod {
                    namespace: ns.file_name().to_string_lossy().into_owned(),
                    id: pod.file_name().to_string_lossy().into_owned(),
                    dir: pod.path(),
                });
            }
        }
    }
    pods.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    Ok(pods)
}

/// A live host process of a pod, with its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`): `hull-vmm`, `virtiofsd`, ...
    pub name: String,
    pub user_cpu_s: f64,
    pub system_cpu_s: f64,
    pub rss_bytes: u64,
}

/// `/proc/<pid>/stat` fields after the command name (which may hold spaces and
/// parentheses, so the split is at the last `)`); field 3 of the man page is index 0.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// The figures of `pid` if it still is the process started at `start` (clock
/// ticks since boot); a pid reused by another process is not reported.
pub fn process(pid: u32, start: u64) -> Option<Process> {
    let fields = stat_fields(pid)?;
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    if num(19)? != start {
        return None;
    }
    let ticks = clock_ticks();
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(Process {
        pid,
        name: name.trim_end().to_string(),
        user_cpu_s: num(11)? as f64 / ticks,
        system_cpu_s: num(12)? as f64 / ticks,
        rss_bytes: rss_pages * page_size(),
    })
}

/// The start time of `pid` (clock ticks since boot), for writing a `host-pids` line.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The `(pid, start)` records of a pod's `host-pids` file; bad lines are skipped.
pub fn recorded(pod_dir: &Path) -> Vec<(u32, u64)> {
    let text = std::fs::read_to_string(pod_dir.join(HOST_PIDS)).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// The pod's live host processes.
pub fn processes(pod: &Pod) -> Vec<Process> {
    recorded(&pod.dir)
        .into_iter()
        .filter_map(|(pid, start)| process(pid, start))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_namespace_and_id_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(&dir.path().join("absent")).unwrap().is_empty());
        std::fs::create_dir_all(dir.path().join("k8s.io/p2")).unwrap();
        std::fs::create_dir_all(dir.path().join("default/p1")).unwrap();
        std::fs::write(dir.path().join("default/stray"), "").unwrap();
        let pods = list(dir.path()).unwrap();
        let ids: Vec<_> = pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.id))
            .collect();
        assert_eq!(ids, ["default/p1", "k8s.io/p2"]);
    }

    #[test]
    fn this_process_has_figures_and_a_wrong_start_time_hides_it() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        let p = process(me, start).unwrap();
        assert!(p.rss_bytes > 0);
        assert!(!p.name.is_empty());
        assert_eq!(process(me, start + 1), None);
    }

    #[test]
    fn host_pids_lines_are_parsed_and_junk_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(HOST_PIDS),
            "12 345\njunk\n13\n14 99 extra\n",
        )
        .unwrap();
        assert_eq!(recorded(dir.path()), [(12, 345), (14, 99)]);
    }
}
