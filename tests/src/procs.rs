//! Host processes as the lab and host tests see them in `/proc`: which belong to a test's
//! pods, and what they use (memory, CPU, status fields).

use std::path::Path;

/// Whether `/proc/<pid>` is the holder of a jailed hull-vmm's PID namespace (same command line
/// as the VMM, its child): the VMM is counted, not its holder.
pub fn is_vmm_holder(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("comm")).is_ok_and(|c| c.trim() == "hull-vmm-jail")
}

/// Host processes of a test's pods: their command line contains one of `markers` (the test's
/// state or run directory) and their argv0 ends in one of `names`; a jailed VMM's holder is
/// not counted. Each as (pid, the name it matched).
pub fn pod_processes(markers: &[&str], names: &[&str]) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline);
        if !markers.iter().any(|m| text.contains(m)) || is_vmm_holder(&entry.path()) {
            continue;
        }
        let argv0 = text.split('\0').next().unwrap_or_default();
        if let Some(name) = names.iter().find(|n| argv0.ends_with(*n)) {
            found.push((pid, name.to_string()));
        }
    }
    found
}

/// A field of `/proc/<pid>/status`, its value's whitespace-separated words (none when the
/// process or the field is gone).
pub fn proc_status(pid: i32, field: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// A KiB field of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, ...); 0 when it is gone.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    proc_status(pid, field)
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).map_or(0, |(_, ticks)| ticks)
}

/// Clock ticks per second (`_SC_CLK_TCK`; 100 if the system does not say).
pub fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_secs(pid: i32) -> f64 {
    cpu_ticks(pid) as f64 / ticks_per_sec() as f64
}

/// Where a machine's CPU time went over a stretch of time, by program: sampled from
/// `/proc/*/stat` (a process that lived between two samples is missed), and split by thread
/// name for the programs named in `by_thread` (hull-vmm's `vcpu0`, `console`...).
#[derive(Default)]
pub struct CpuCensus {
    /// Programs whose threads are counted apart (their comm, as `/proc/PID/comm` shows it).
    by_thread: Vec<String>,
    /// Per process or thread id: its name and its CPU ticks at the first and the last sample.
    tasks: std::collections::HashMap<i32, (String, u64, u64)>,
    /// The machine's busy and total ticks (`/proc/stat`) at the first and last sample.
    machine: Option<((u64, u64), (u64, u64))>,
}

/// A `/proc/.../stat` file's command name and user + system ticks.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15; 11 and 12 after the state.
    Some((
        name,
        fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0),
    ))
}

impl CpuCensus {
    /// A census that counts the threads of the programs `by_thread` (comm names) apart.
    pub fn new(by_thread: &[&str]) -> Self {
        Self {
            by_thread: by_thread.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Records every process's (and the named programs' threads') CPU time now.
    pub fn sample(&mut self) {
        let mut seen = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Some((comm, ticks)) = stat_ticks(&entry.path().join("stat")) else {
                continue;
            };
            if !self.by_thread.contains(&comm) {
                seen.push((pid, comm, ticks));
                continue;
            }
            for task in std::fs::read_dir(entry.path().join("task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if let Some((thread, ticks)) = stat_ticks(&task.path().join("stat")) {
                    let name = if thread == comm {
                        comm.clone()
                    } else {
                        format!(
                            "{comm}:{}",
                            thread.trim_end_matches(|c: char| c.is_ascii_digit())
                        )
                    };
                    seen.push((tid, name, ticks));
                }
            }
        }
        for (id, name, ticks) in seen {
            self.tasks
                .entry(id)
                .and_modify(|t| t.2 = ticks)
                .or_insert((name, ticks, ticks));
        }
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // idle and iowait are fields 4 and 5.
        let total: u64 = cpu.iter().sum();
        let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
        let now = (total - idle, total);
        self.machine = Some(self.machine.map_or((now, now), |(first, _)| (first, now)));
    }

    /// CPU seconds per name between the first and the last sample, largest first, then the
    /// machine's busy share over the same stretch.
    pub fn summary(&self) -> String {
        let mut by_name: std::collections::BTreeMap<&str, u64> = Default::default();
        for (name, first, last) in self.tasks.values() {
            *by_name.entry(name).or_default() += last - first;
        }
        let mut rows: Vec<(&str, u64)> = by_name.into_iter().filter(|r| r.1 > 0).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        let tps = ticks_per_sec() as f64;
        let mut out: Vec<String> = rows
            .iter()
            .map(|(name, t)| format!("{name} {:.1} s", *t as f64 / tps))
            .collect();
        if let Some(((b0, t0), (b1, t1))) = self.machine {
            out.push(format!(
                "machine busy {:.0}% of {:.1} CPU-s",
                100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
                (t1 - t0) as f64 / tps
            ));
        }
        out.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_by_its_name_and_has_memory_and_a_status() {
        let me = std::process::id() as i32;
        // The path this process was started by, as its cmdline holds it (not
        // current_exe(), which resolves a symlinked target directory).
        let argv0 = std::path::PathBuf::from(std::env::args().next().unwrap());
        let name = argv0.file_name().unwrap().to_str().unwrap();
        let dir = argv0.parent().unwrap().to_str().unwrap();
        let found = pod_processes(&[dir], &[name]);
        assert!(found.contains(&(me, name.to_string())), "{found:?}");
        assert!(pod_processes(&["/no/such/marker/dir"], &[name]).is_empty());
        assert!(rss_kib(me) > 0);
        assert!(alive(&me.to_string()));
        assert_eq!(proc_status(me, "Pid"), [me.to_string()]);
        assert_eq!(status_kib(me, "NoSuchField"), 0);
        assert!(!is_vmm_holder(Path::new("/proc/self")));
    }
}
