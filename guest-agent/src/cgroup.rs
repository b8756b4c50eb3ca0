//! cgroup v2: one child of the agent's cgroup root per container, its limits
//! from the OCI spec, its figures for `Stats`, and its removal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_protocol::agent;
use oci_spec::runtime::LinuxResources;

/// Controllers the agent enables for its containers.
const CONTROLLERS: &str = "+cpu +cpuset +memory +pids +io";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot write {value:?} to {path:?}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create cgroup {path:?}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {0:?} still has processes")]
    Busy(PathBuf),
    #[error("cgroup {0:?} did not report {1} within the timeout")]
    FreezeTimeout(PathBuf, &'static str),
    #[error("invalid unified cgroup key {0:?}")]
    BadKey(String),
    #[error("{0:?} holds no value")]
    Unreadable(PathBuf),
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.into(),
        value: value.into(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

/// Prepares the agent's cgroup root: creates it and enables the controllers
/// for its children (and in the parent, which must offer them first).
pub fn setup_root(root: &Path) -> Result<(), CgroupError> {
    // Every cgroup between the hierarchy's root and ours must pass them down.
    let mut ancestors: Vec<&Path> = root
        .ancestors()
        .skip(1)
        .take_while(|dir| !dir.exists() || dir.join("cgroup.controllers").exists())
        .collect();
    ancestors.reverse();
    for dir in ancestors {
        std::fs::create_dir_all(dir).map_err(|source| CgroupError::Create {
            path: dir.into(),
            source,
        })?;
        enable_controllers(dir);
    }
    std::fs::create_dir_all(root).map_err(|source| CgroupError::Create {
        path: root.into(),
        source,
    })?;
    enable_controllers(root);
    Ok(())
}

/// Enables what it can: a missing controller must not stop the agent.
fn enable_controllers(dir: &Path) {
    let file = dir.join("cgroup.subtree_control");
    for c in CONTROLLERS.split(' ') {
        if let Err(e) = write(&file, c) {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            tracing::warn!(error = %e, cause, "cgroup controller not enabled");
        }
    }
}

/// A container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup; an empty one left by an earlier agent is reused.
    pub fn create(root: &Path, id: &str) -> Result<Cgroup, CgroupError> {
        let cgroup = Cgroup {
            path: root.join(id),
        };
        match std::fs::create_dir(&cgroup.path) {
            Ok(()) => Ok(cgroup),
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists && cgroup.pids()?.is_empty() =>
            {
                Ok(cgroup)
            }
            Err(source) => Err(CgroupError::Create {
                path: cgroup.path,
                source,
            }),
        }
    }

    /// Writes the limits `res` sets (cgroup v1 style fields converted to v2,
    /// and `unified` as is); what it leaves out stays as it is, so the same
    /// call serves CreateContainer and UpdateContainer (as `runc update`).
    /// Not atomic: a failed write leaves the earlier ones in place. Returns
    /// the files written, in order.
    pub fn apply(&self, res: &LinuxResources) -> Result<Vec<String>, CgroupError> {
        let current_quota = || {
            let cpu_max = self.path.join("cpu.max");
            let text = read(&cpu_max)?;
            text.split_whitespace()
                .next()
                .map(str::to_owned)
                .ok_or(CgroupError::Unreadable(cpu_max))
        };
        let limits = limits(res, current_quota)?;
        for (file, value) in &limits {
            write(&self.path.join(file), value)?;
        }
        Ok(limits.into_iter().map(|(file, _)| file).collect())
    }

    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(read(&self.path.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Freezes (`frozen = true`) or thaws every process of the cgroup and waits
    /// until `cgroup.events` says it is done: a freeze only counts once no
    /// process can run any more.
    pub fn set_frozen(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        write(
            &self.path.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + timeout;
        loop {
            let events = read(&self.path.join("cgroup.events"))?;
            if events.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::FreezeTimeout(self.path.clone(), want));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to every process of the cgroup.
    pub fn signal_all(&self, signal: i32) -> Result<(), CgroupError> {
        for pid in self.pids()? {
            // SAFETY: kill(2) with a PID and signal number has no memory effects.
            unsafe { libc::kill(pid as i32, signal) };
        }
        Ok(())
    }

    /// SIGKILLs every process of the cgroup at once through `cgroup.kill`,
    /// which also catches what forks meanwhile (a list of pids read first
    /// misses a child forked after the read, and that child then holds the
    /// container's stdout open); one pid at a time where the file is missing.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            write(&kill, "1")
        } else {
            self.signal_all(libc::SIGKILL)
        }
    }

    /// Kills everything inside and removes the cgroup, waiting up to `timeout`.
    pub fn destroy(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !self.path.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.kill_all()?;
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return Err(CgroupError::Busy(self.path.clone())),
            }
        }
    }

    pub fn oom_kills(&self) -> u64 {
        read(&self.path.join("memory.events"))
            .map(|s| key_values(&s).get("oom_kill").copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The figures for `Stats`; missing files (controller off) read as zero.
    pub fn stats(&self) -> agent::StatsResponse {
        let file = |name: &str| read(&self.path.join(name)).unwrap_or_default();
        let num = |name: &str| parse_limit(file(name).trim());
        let mut out = agent::StatsResponse::new();

        let pids = out.pids.mut_or_insert_default();
        pids.current = num("pids.current");
        pids.limit = num("pids.max");

        let cpu_stat = key_values(&file("cpu.stat"));
        let get = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let cpu = out.cpu.mut_or_insert_default();
        cpu.usage_usec = get(&cpu_stat, "usage_usec");
        cpu.user_usec = get(&cpu_stat, "user_usec");
        cpu.system_usec = get(&cpu_stat, "system_usec");
        cpu.nr_periods = get(&cpu_stat, "nr_periods");
        cpu.nr_throttled = get(&cpu_stat, "nr_throttled");
        cpu.throttled_usec = get(&cpu_stat, "throttled_usec");

        let mem = out.memory.mut_or_insert_default();
        mem.usage = num("memory.current");
        mem.usage_limit = num("memory.max");
        mem.swap_usage = num("memory.swap.current");
        mem.swap_limit = num("memory.swap.max");
        mem.stat = key_values(&file("memory.stat"));

        let events = key_values(&file("memory.events"));
        let ev = out.memory_events.mut_or_insert_default();
        ev.low = get(&events, "low");
        ev.high = get(&events, "high");
        ev.max = get(&events, "max");
        ev.oom = get(&events, "oom");
        ev.oom_kill = get(&events, "oom_kill");

        out.io.mut_or_insert_default().usage = parse_io_stat(&file("io.stat"));
        out
    }
}

/// `key value` lines (cpu.stat, memory.stat, memory.events).
fn key_values(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// A limit file: a number, or `max` (reported as 0, "unlimited").
fn parse_limit(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

/// `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` lines.
fn parse_io_stat(text: &str) -> Vec<agent::IoEntry> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (major, minor) = it.next()?.split_once(':')?;
            let mut e = agent::IoEntry::new();
            e.major = major.parse().ok()?;
            e.minor = minor.parse().ok()?;
            for kv in it {
                let (k, v) = kv.split_once('=')?;
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// cgroup v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000), as runc does.
fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// The (file, value) pairs the spec's resources turn into. A zero memory
/// limit, CPU shares, CPU quota or period, or pids limit means "not set", as
/// in runc; a CPU period without a quota keeps the quota in force
/// (`current_quota`, the first field of `cpu.max`), a quota without a period
/// keeps the period.
pub fn limits(
    res: &LinuxResources,
    current_quota: impl FnOnce() -> Result<String, CgroupError>,
) -> Result<Vec<(String, String)>, CgroupError> {
    let mut out = Vec::new();
    let mut set = |k: &str, v: String| out.push((k.to_owned(), v));
    let max_or = |v: i64| {
        if v < 0 {
            "max".to_owned()
        } else {
            v.to_string()
        }
    };
    if let Some(mem) = res.memory() {
        if let Some(limit) = mem.limit().filter(|l| *l != 0) {
            set("memory.max", max_or(limit));
            if let Some(swap) = mem.swap() {
                // v1 swap is memory+swap; v2 counts swap alone.
                let v2 = if swap < 0 {
                    -1
                } else {
                    (swap - limit.max(0)).max(0)
                };
                set("memory.swap.max", max_or(v2));
            }
        }
        if let Some(low) = mem.reservation() {
            set("memory.low", max_or(low));
        }
    }
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
            set("cpu.weight", shares_to_weight(shares).to_string());
        }
        // cpu.max is "QUOTA [PERIOD]": the kernel keeps the period when only
        // the quota is written, so only a lone period needs the quota read.
        let period = cpu.period().filter(|p| *p != 0);
        let quota = match (cpu.quota().filter(|q| *q != 0), period) {
            (None, None) => None,
            (Some(q), _) if q > 0 => Some(q.to_string()),
            (Some(_), _) => Some("max".to_owned()),
            (None, Some(_)) => Some(current_quota()?),
        };
        if let Some(quota) = quota {
            match period {
                Some(period) => set("cpu.max", format!("{quota} {period}")),
                None => set("cpu.max", quota),
            }
        }
        if let Some(cpus) = cpu.cpus() {
            set("cpuset.cpus", cpus.clone());
        }
        if let Some(mems) = cpu.mems() {
            set("cpuset.mems", mems.clone());
        }
    }
    if let Some(pids) = res.pids().as_ref().filter(|p| p.limit() != 0) {
        set(
            "pids.max",
            if pids.limit() > 0 {
                pids.limit().to_string()
            } else {
                "max".into()
            },
        );
    }
    if let Some(bio) = res.block_io() {
        if let Some(weight) = bio.weight() {
            set("io.weight", format!("default {weight}"));
        }
        let throttles = [
            (bio.throttle_read_bps_device(), "rbps"),
            (bio.throttle_write_bps_device(), "wbps"),
            (bio.throttle_read_iops_device(), "riops"),
            (bio.throttle_write_iops_device(), "wiops"),
        ];
        for (devices, key) in throttles {
            for d in devices.iter().flatten() {
                set(
                    "io.max",
                    format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                );
            }
        }
    }
    if let Some(unified) = res.unified() {
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (k, v) in keys {
            // A controller's file only: never a path, and never the core
            // `cgroup.*` files (procs, kill, freeze, subtree_control), which
            // would move, kill or freeze processes instead of limiting them.
            if k.contains('/') || k.starts_with('.') || !k.contains('.') || k.starts_with("cgroup.")
            {
                return Err(CgroupError::BadKey(k.clone()));
            }
            set(k, v.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    /// For resources that set a CPU quota or no CPU period: nothing to read.
    fn no_read() -> Result<String, CgroupError> {
        panic!("cpu.max read although the request sets the quota")
    }

    #[test]
    fn spec_resources_become_v2_files() {
        let res = resources(
            r#"{"memory":{"limit":67108864,"swap":134217728},
                "cpu":{"shares":1024,"quota":50000,"period":100000},
                "pids":{"limit":32}}"#,
        );
        let got: HashMap<_, _> = limits(&res, no_read).unwrap().into_iter().collect();
        assert_eq!(got["memory.max"], "67108864");
        assert_eq!(got["memory.swap.max"], "67108864");
        assert_eq!(got["cpu.weight"], "39");
        assert_eq!(got["cpu.max"], "50000 100000");
        assert_eq!(got["pids.max"], "32");
    }

    #[test]
    fn unified_keys_cannot_escape() {
        let res = resources(r#"{"unified":{"../../etc/passwd":"x"}}"#);
        assert!(matches!(limits(&res, no_read), Err(CgroupError::BadKey(_))));
        for core in ["cgroup.procs", "cgroup.kill", "cgroup.subtree_control"] {
            let res = resources(&format!(r#"{{"unified":{{"{core}":"1"}}}}"#));
            assert!(
                matches!(limits(&res, no_read), Err(CgroupError::BadKey(_))),
                "{core} accepted"
            );
        }
        let res = resources(r#"{"unified":{"memory.high":"1000000"}}"#);
        assert_eq!(
            limits(&res, no_read).unwrap(),
            vec![("memory.high".into(), "1000000".into())]
        );
    }

    #[test]
    fn kill_all_writes_cgroup_kill_where_the_kernel_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = Cgroup {
            path: dir.path().into(),
        };
        std::fs::write(dir.path().join("cgroup.kill"), "").unwrap();
        cgroup.kill_all().unwrap();
        let written = std::fs::read_to_string(dir.path().join("cgroup.kill")).unwrap();
        assert_eq!(written, "1");
        // Without it: the pids one by one (none here), and no cgroup.kill made up.
        std::fs::remove_file(dir.path().join("cgroup.kill")).unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        cgroup.kill_all().unwrap();
        assert!(!dir.path().join("cgroup.kill").exists());
    }

    #[test]
    fn stat_files_parse() {
        let kv = key_values("usage_usec 10\nuser_usec 7\n");
        assert_eq!(kv["usage_usec"], 10);
        let io = parse_io_stat("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n");
        assert_eq!(
            (io[0].major, io[0].minor, io[0].wbytes, io[0].wios),
            (8, 0, 2, 4)
        );
        assert_eq!(parse_limit("max"), 0);
    }
}
