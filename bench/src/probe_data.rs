//! The JSON the in-container probe (`hull-bench-probe`) prints and the driver reads.

use serde::{Deserialize, Serialize};

/// Marker line the probe prints before its stdout blast: `HULL-BENCH-BLAST <bytes>`.
pub const BLAST_MARKER: &str = "HULL-BENCH-BLAST ";

/// Cost figures measured inside one container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// `getppid` in a tight loop, ns per call.
    pub getppid_ns: f64,
    /// One create + write 4 KiB + close + unlink cycle on the container rootfs, ns.
    pub file_cycle_ns: f64,
    /// File I/O on the container's rootfs.
    pub rootfs: Option<FileIo>,
    /// File I/O on the bind-mounted volume, when one was given.
    pub volume: Option<FileIo>,
    /// What failed inside the probe (the rest is still reported).
    pub errors: Vec<String>,
}

/// File I/O figures in one directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileIo {
    pub dir: String,
    /// Size of the sequential file, MiB.
    pub seq_mib: u32,
    /// Sequential write in 1 MiB chunks, including the final fsync, MiB/s.
    pub seq_write_mibs: f64,
    /// Sequential read of that file after fsync + fadvise(DONTNEED), MiB/s.
    pub seq_read_mibs: f64,
    /// How many 4 KiB files the small-file test used.
    pub small_files: u32,
    /// Small files created, read back and deleted, per second (whole cycle).
    pub small_files_per_s: f64,
}

/// One process visible in the container's /proc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
}

/// One entry of the container's /dev.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dev {
    pub name: String,
    /// "char", "block", "dir", "link" or "file".
    pub kind: String,
}

/// Whether something could be read, and what was seen (or the error).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Access {
    pub readable: bool,
    pub detail: String,
}

/// /proc/kallsyms as the container sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Kallsyms {
    pub symbols: u64,
    /// Symbols whose address is not zero (zero = addresses hidden).
    pub nonzero: u64,
    pub error: Option<String>,
}

/// Result of calling every syscall number with invalid arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyscallScan {
    /// Highest syscall number tried (all from 0).
    pub max_nr: u32,
    /// Numbers actually tried (all minus `skipped`).
    pub probed: u32,
    /// Answered by the kernel with anything but ENOSYS (including blocking or ending the process).
    pub answered: u32,
    /// Answered ENOSYS: not implemented by the kernel that answered.
    pub enosys: u32,
    /// The process was killed by SIGSYS (a seccomp filter) instead.
    pub sigsys: u32,
    /// Not tried because they would fork or hang the probe (they exist on every Linux).
    pub skipped: Vec<u32>,
}

/// What one container can see of the kernel and the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Isolation {
    pub privileged_run: bool,
    /// `uname -r` inside.
    pub kernel_release: String,
    /// First line of /proc/version inside.
    pub proc_version: String,
    pub processes: Vec<Proc>,
    /// Lines of /proc/self/mounts (at most a few hundred).
    pub mounts: Vec<String>,
    pub dmesg: Access,
    pub kallsyms: Kallsyms,
    pub devices: Vec<Dev>,
    /// /proc/self/cgroup.
    pub cgroup_self: String,
    /// Directories directly under /sys/fs/cgroup (cgroup2) or its controllers (v1).
    pub cgroup_dirs: Vec<String>,
    /// Whether /proc/sysrq-trigger opened for writing (nothing is written).
    pub sysrq: Access,
    /// CapEff of the probe, hex, and the names of the powerful capabilities in it.
    pub cap_eff: String,
    pub powerful_caps: Vec<String>,
    /// Reading the first 512 bytes of the first readable block device.
    pub block_read: Access,
    pub syscalls: Option<SyscallScan>,
}

/// Everything one `hull-bench-probe all` prints before its blast.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeOutput {
    pub work: Option<Work>,
    pub isolation: Option<Isolation>,
}

/// Parses the probe's JSON line out of its stdout: the last line that starts with `{`.
pub fn parse_probe_output(text: &str) -> Result<ProbeOutput, String> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("no JSON line in the probe's output ({} bytes)", text.len()))?;
    serde_json::from_str(line).map_err(|e| format!("probe JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_last_json_line_and_ignores_noise() {
        let iso = Isolation {
            kernel_release: "6.12.1-hull".into(),
            ..Default::default()
        };
        let out = ProbeOutput {
            work: Some(Work {
                getppid_ns: 123.5,
                ..Default::default()
            }),
            isolation: Some(iso),
        };
        let text = format!(
            "warning: something\n{{\"not\": \"this\"}}\n{}\n",
            serde_json::to_string(&out).unwrap()
        );
        assert_eq!(parse_probe_output(&text).unwrap(), out);
    }

    #[test]
    fn reports_missing_or_broken_json() {
        assert!(parse_probe_output("exec failed\n")
            .unwrap_err()
            .contains("no JSON line"));
        assert!(parse_probe_output("{\"work\": 3}\n")
            .unwrap_err()
            .contains("probe JSON"));
    }
}
