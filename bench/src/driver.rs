//! The benchmark run: a private containerd, each scenario with every runtime
//! (alternating where samples repeat), then the report. Every `ctr` call is
//! bounded; a runtime whose first container fails is reported as failed and
//! skipped from then on; containerd is stopped and leftovers are listed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hull_bench::ctr::{Ctr, CtrResult};
use hull_bench::model::{
    Burst, Config, Density, Env, HostFacts, Memory, RunData, RuntimeData, Sample,
};
use hull_bench::probe_data::parse_probe_output;
use hull_bench::{procs, report};

/// The image the benchmark imports (tests/images/bench.sh) and runs.
pub const IMAGE: &str = "docker.io/library/hull-bench:latest";
const PROBE: &str = "/bin/hull-bench-probe";

/// Paths the driver needs, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub out: PathBuf,
    pub work: PathBuf,
    pub checkout: PathBuf,
    pub image_tar: PathBuf,
    pub shim_dir: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub hull_vmm: Option<PathBuf>,
    pub virtiofsd: Option<PathBuf>,
}

fn env_u32(name: &str, default: u32) -> Result<u32> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .with_context(|| format!("{name}={v}: not a number")),
        _ => Ok(default),
    }
}

/// Run counts from `HULL_BENCH_*` variables, with defaults that fit the lab's 25-minute budget.
pub fn config_from_env(lab: bool) -> Result<Config> {
    let pick = |lab_v: u32, host_v: u32| if lab { lab_v } else { host_v };
    let runtimes =
        std::env::var("HULL_BENCH_RUNTIMES").unwrap_or_else(|_| "runc,crun,hull,hull-host".into());
    Ok(Config {
        runtimes: runtimes
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        start_runs: env_u32("HULL_BENCH_START_RUNS", pick(3, 10))?,
        first_byte_runs: env_u32("HULL_BENCH_FIRST_BYTE_RUNS", pick(2, 5))?,
        exec_runs: env_u32("HULL_BENCH_EXEC_RUNS", pick(3, 10))?,
        density: env_u32("HULL_BENCH_DENSITY", 10)?,
        loop_ms: env_u32("HULL_BENCH_LOOP_MS", 1000)?,
        seq_mib: env_u32("HULL_BENCH_SEQ_MIB", pick(32, 256))?,
        small_files: env_u32("HULL_BENCH_SMALL_FILES", pick(300, 2000))?,
        blast_mib: env_u32("HULL_BENCH_BLAST_MIB", pick(16, 256))?,
        burst_mib: env_u32("HULL_BENCH_BURST_MIB", 400)?,
        untar_files: env_u32("HULL_BENCH_UNTAR_FILES", 2000)?,
        ctr_timeout_s: u64::from(env_u32("HULL_BENCH_CTR_TIMEOUT", pick(300, 60))?),
        crash_hull: std::env::var("HULL_BENCH_CRASH_HULL").is_ok_and(|v| v == "1"),
        image: IMAGE.into(),
    })
}

/// Progress lines on stderr and in `log.txt`, with the time since the start.
struct Log {
    start: Instant,
    file: Option<fs::File>,
}

impl Log {
    fn say(&mut self, msg: &str) {
        let line = format!("[{:6.0} s] {msg}", self.start.elapsed().as_secs_f64());
        eprintln!("{line}");
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn on_path(bin: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(bin).is_file())
}

fn host_facts(containerd_root: &Path, volume: &Path) -> HostFacts {
    let mut cgroup_dirs: Vec<String> = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    cgroup_dirs.sort();
    HostFacts {
        kernel_release: output("uname", &["-r"]),
        proc_version: fs::read_to_string("/proc/version")
            .unwrap_or_default()
            .trim()
            .to_string(),
        process_count: procs::list().len(),
        containerd_root: containerd_root.display().to_string(),
        volume_dir: volume.display().to_string(),
        cgroup_dirs,
    }
}

/// Runtimes to compare, each either ready or with the reason it is not.
fn runtimes(config: &Config, paths: &Paths) -> Vec<RuntimeData> {
    config
        .runtimes
        .iter()
        .map(|name| {
            let (flags, unavailable): (Vec<&str>, Option<String>) = match name.as_str() {
                "runc" => (
                    vec!["--runtime", "io.containerd.runc.v2"],
                    (!on_path("runc"))
                        .then(|| "runc is not installed (apt-get install runc)".into()),
                ),
                "crun" => (
                    vec![
                        "--runtime",
                        "io.containerd.runc.v2",
                        "--runc-binary",
                        "crun",
                    ],
                    (!on_path("crun"))
                        .then(|| "crun is not installed (apt-get install crun)".into()),
                ),
                "hull" => (
                    vec!["--runtime", "io.containerd.hull.v2"],
                    hull_missing(paths),
                ),
                // Hull with the writable layer on the host (virtio-fs), the other setting.
                "hull-host" => (
                    vec![
                        "--runtime",
                        "io.containerd.hull.v2",
                        "--annotation",
                        "io.hull.writable_layer=host",
                    ],
                    hull_missing(paths),
                ),
                // Hull with the writable layer in the guest over the image read through
                // virtio-fs rather than from an image disk.
                "hull-share" => (
                    vec![
                        "--runtime",
                        "io.containerd.hull.v2",
                        "--annotation",
                        "io.hull.image_layers=share",
                    ],
                    hull_missing(paths),
                ),
                other => (
                    vec![],
                    Some(format!(
                        "unknown runtime {other:?} (known: runc, crun, hull, hull-host, hull-share)"
                    )),
                ),
            };
            RuntimeData {
                name: name.clone(),
                ctr_flags: flags.into_iter().map(str::to_string).collect(),
                unavailable,
                ..Default::default()
            }
        })
        .collect()
}

fn hull_missing(paths: &Paths) -> Option<String> {
    let shim = paths
        .shim_dir
        .as_ref()
        .map(|d| d.join("containerd-shim-hull-v2"));
    let need = [
        ("containerd-shim-hull-v2", shim),
        ("hull-vmm", paths.hull_vmm.clone()),
        ("guest kernel", paths.kernel.clone()),
        ("guest image", paths.initrd.clone()),
        ("virtiofsd", paths.virtiofsd.clone()),
    ];
    for (what, p) in need {
        match p {
            Some(p) if p.is_file() => {}
            Some(p) => {
                return Some(format!(
                    "{what} not found at {} (run `make setup` and build it)",
                    p.display()
                ))
            }
            None => return Some(format!("{what} not given")),
        }
    }
    let kvm = Command::new(paths.checkout.join("scripts/kvm-check.sh")).output();
    match kvm {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Err(e) => Some(format!("scripts/kvm-check.sh: {e}")),
    }
}

/// The benchmark run's state.
struct Bench {
    ctr: Ctr,
    config: Config,
    paths: Paths,
    log: Log,
    volume: PathBuf,
    rts: Vec<RuntimeData>,
    /// How much of containerd's log `shim_log_hint` has already looked at.
    log_mark: usize,
}

impl Bench {
    fn run_args(&self, rt: usize, extra: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--rm".into()];
        a.extend(self.rts[rt].ctr_flags.iter().cloned());
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(IMAGE.into());
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    fn usable(&self) -> Vec<usize> {
        (0..self.rts.len())
            .filter(|i| self.rts[*i].usable())
            .collect()
    }

    /// Records a failed call: the first failure of a runtime's containers marks it failed.
    fn failure(&mut self, rt: usize, scenario: &str, r: &CtrResult, first_container: bool) {
        let mut msg = format!(
            "`ctr {}`: {}",
            r.args.first().cloned().unwrap_or_default(),
            r.failure()
        );
        let name = self.rts[rt].name.clone();
        if let Some(hint) = self.shim_log_hint(&name) {
            msg.push_str(&format!(" [containerd log: {hint}]"));
        }
        self.log
            .say(&format!("{}: {scenario} FAILED: {msg}", self.rts[rt].name));
        self.rts[rt]
            .errors
            .entry(scenario.into())
            .or_insert(msg.clone());
        if first_container {
            self.rts[rt].failed = Some(msg);
        }
    }

    /// The last error line of containerd's log about this runtime's shim,
    /// written since the previous look.
    fn shim_log_hint(&mut self, name: &str) -> Option<String> {
        let log = fs::read_to_string(self.paths.work.join("containerd/containerd.log")).ok()?;
        let since = self.log_mark.min(log.len());
        self.log_mark = log.len();
        let log = log.get(since..).unwrap_or_default();
        // Paths hold "hull-bench" for every runtime: match the shim's name instead.
        let key = if name.starts_with("hull") {
            "containerd-shim-hull-v2"
        } else {
            "containerd-shim-runc-v2"
        };
        log.lines()
            .rev()
            .find(|l| {
                l.contains("level=error") && l.contains(key) && !l.contains("delete\" error=")
            })
            .map(|l| hull_bench::ctr::tail(l, 300))
    }

    fn start_round(&mut self) {
        let runs = self.config.start_runs;
        for i in 0..runs {
            for rt in self.usable() {
                let id = format!("hb-start-{}-{i}", self.rts[rt].name);
                let r = self.ctr.run(&self.run_args(rt, &[], &id, &["true"]));
                self.log.say(&format!(
                    "{}: start {}/{runs}: {:.1} s, {}",
                    self.rts[rt].name,
                    i + 1,
                    r.wall_s,
                    r.status
                ));
                let first = self.rts[rt].start.iter().all(|s| !s.ok);
                if !r.ok {
                    self.failure(rt, "start", &r, first);
                }
                self.rts[rt].start.push(sample(&r));
            }
        }
    }

    fn first_byte_round(&mut self) {
        let runs = self.config.first_byte_runs;
        for i in 0..runs {
            for rt in self.usable() {
                let id = format!("hb-echo-{}-{i}", self.rts[rt].name);
                let r = self
                    .ctr
                    .run(&self.run_args(rt, &[], &id, &["echo", "hull-bench"]));
                self.log.say(&format!(
                    "{}: first byte {}/{runs}: {} (wall {:.1} s), {}",
                    self.rts[rt].name,
                    i + 1,
                    r.first_byte_s
                        .map_or("none".into(), |t| format!("{t:.1} s")),
                    r.wall_s,
                    r.status
                ));
                if !r.ok || r.first_byte_s.is_none() {
                    self.failure(rt, "first_byte", &r, false);
                }
                let mut s = sample(&r);
                s.ok = s.ok && s.first_byte_s.is_some();
                self.rts[rt].first_byte.push(s);
            }
        }
    }

    /// One long-running container: memory, exec latency, the probe's figures, stdout.
    fn pod(&mut self, rt: usize) {
        let name = self.rts[rt].name.clone();
        let id = format!("hb-pod-{name}");
        let vol = format!(
            "type=bind,src={},dst=/vol,options=rbind:rw",
            self.volume.display()
        );
        let args = self.run_args(rt, &["--mount", &vol], &id, &[PROBE, "serve"]);
        let mut child = self.ctr.spawn(&args);
        let timeout = self.ctr.timeout;
        let Some(fb) = child.wait_first_byte(timeout) else {
            let r = child.finish(Duration::from_secs(5));
            self.failure(rt, "pod", &r, false);
            for s in ["memory", "exec", "stdout", "work", "isolation"] {
                self.rts[rt]
                    .errors
                    .entry(s.into())
                    .or_insert_with(|| "the long-running container did not start (see pod)".into());
            }
            return;
        };
        self.log.say(&format!(
            "{name}: long-running container ready after {fb:.1} s"
        ));
        self.rts[rt].first_byte.push(Sample {
            ok: true,
            wall_s: fb,
            first_byte_s: Some(fb),
            error: None,
        });
        std::thread::sleep(Duration::from_secs(2));
        self.memory(rt, &id);
        for i in 0..self.config.exec_runs {
            let r = self.ctr.run(&[
                "task".into(),
                "exec".into(),
                "--exec-id".into(),
                format!("e{i}"),
                id.clone(),
                "true".into(),
            ]);
            self.log.say(&format!(
                "{name}: exec {}/{}: {:.1} s, {}",
                i + 1,
                self.config.exec_runs,
                r.wall_s,
                r.status
            ));
            if !r.ok {
                self.failure(rt, "exec", &r, false);
            }
            self.rts[rt].exec.push(sample(&r));
        }
        self.work(rt, &id);
        self.untar(rt, &id);
        let k = self.ctr.run(&[
            "task".into(),
            "kill".into(),
            "-s".into(),
            "KILL".into(),
            id.clone(),
        ]);
        if !k.ok {
            self.failure(rt, "cleanup", &k, false);
        }
        let r = child.finish(timeout);
        self.log.say(&format!(
            "{name}: long-running container stopped ({}, {:.1} s in all)",
            r.status, r.wall_s
        ));
    }

    fn memory(&mut self, rt: usize, id: &str) {
        let Some(m) = pod_memory(id) else {
            self.rts[rt].errors.insert(
                "memory".into(),
                format!("no shim process with `-id {id}` found"),
            );
            return;
        };
        self.log.say(&format!(
            "{}: idle pod PSS {:.1} MiB (guest RAM {:.1} MiB) over {} processes",
            self.rts[rt].name,
            m.total_kib() as f64 / 1024.0,
            m.guest_ram_kib() as f64 / 1024.0,
            m.procs.len()
        ));
        self.rts[rt].memory = Some(m);
    }

    fn work(&mut self, rt: usize, id: &str) {
        let c = &self.config;
        let cmd: Vec<String> = [
            "task",
            "exec",
            "--exec-id",
            "work",
            id,
            PROBE,
            "all",
            "--vol",
            "/vol",
            "--loop-ms",
            &c.loop_ms.to_string(),
            "--seq-mib",
            &c.seq_mib.to_string(),
            "--small",
            &c.small_files.to_string(),
            "--blast-mib",
            &c.blast_mib.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = self.ctr.run(&cmd);
        let name = self.rts[rt].name.clone();
        self.log.say(&format!(
            "{name}: probe run: {:.1} s, {}",
            r.wall_s, r.status
        ));
        match parse_probe_output(&r.stdout) {
            Ok(out) => {
                if let Some(w) = &out.work {
                    for e in &w.errors {
                        self.rts[rt].errors.insert("work".into(), e.clone());
                    }
                }
                self.rts[rt].work = out.work;
                self.rts[rt].isolation = out.isolation;
            }
            Err(e) => {
                let msg = format!("{e}; ctr: {}", r.failure());
                self.rts[rt].errors.insert("work".into(), msg.clone());
                self.rts[rt].errors.insert("isolation".into(), msg);
            }
        }
        let want = u64::from(c.blast_mib) << 20;
        if r.blast_bytes == want && r.blast_s > 0.0 {
            let mibs = want as f64 / (1u64 << 20) as f64 / r.blast_s;
            self.log.say(&format!("{name}: stdout {:.1} MiB/s", mibs));
            self.rts[rt].stdout_mibs = Some(mibs);
        } else {
            self.rts[rt].errors.insert(
                "stdout".into(),
                format!(
                    "received {} of {want} blast bytes ({})",
                    r.blast_bytes,
                    r.failure()
                ),
            );
        }
    }

    fn privileged(&mut self, rt: usize) {
        let id = format!("hb-priv-{}", self.rts[rt].name);
        let r = self.ctr.run(&self.run_args(
            rt,
            &["--privileged"],
            &id,
            &[PROBE, "isolation", "--privileged"],
        ));
        self.log.say(&format!(
            "{}: privileged probe: {:.1} s, {}",
            self.rts[rt].name, r.wall_s, r.status
        ));
        match parse_probe_output(&r.stdout) {
            Ok(out) if r.ok => self.rts[rt].privileged = out.isolation,
            Ok(_) | Err(_) => self.failure(rt, "privileged", &r, false),
        }
    }

    fn density(&mut self, rt: usize) {
        let n = self.config.density;
        let name = self.rts[rt].name.clone();
        let started = Instant::now();
        let results: Vec<CtrResult> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|k| {
                    let args = self.run_args(rt, &[], &format!("hb-dens-{name}-{k}"), &["true"]);
                    let ctr = self.ctr.clone();
                    s.spawn(move || ctr.run(&args))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let d = Density {
            n,
            total_s: started.elapsed().as_secs_f64(),
            failures: results.iter().filter(|r| !r.ok).count() as u32,
            errors: results
                .iter()
                .filter(|r| !r.ok)
                .map(|r| r.failure())
                .collect(),
        };
        self.log.say(&format!(
            "{name}: density {n} in parallel: {:.1} s, {} failed",
            d.total_s, d.failures
        ));
        self.rts[rt].density = Some(d);
    }

    /// Metadata-heavy work on the container's root: a tarball of small files (made in the
    /// container, untimed) extracted with busybox `tar`, timed inside by /proc/uptime.
    fn untar(&mut self, rt: usize, id: &str) {
        let n = self.config.untar_files;
        let name = self.rts[rt].name.clone();
        if n == 0 {
            return;
        }
        if name == "hull-host" && std::env::var("HULL_BENCH_UNTAR_HOST").map_or(true, |v| v != "1")
        {
            // Through virtio-fs, making, packing and extracting the files outlasts the 300 s
            // ctr bound in the lab (2026-12-01).
            self.rts[rt].errors.insert(
                "untar".into(),
                "skipped on the virtio-fs root (over 300 s in the lab); HULL_BENCH_UNTAR_HOST=1 runs it".into(),
            );
            return;
        }
        // Extra `tar x` arguments, e.g. `--numeric-owner` to skip the per-file owner-name
        // lookups in the image's /etc/passwd and /etc/group.
        let args = std::env::var("HULL_BENCH_UNTAR_ARGS").unwrap_or_default();
        let args: String = args
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-= ".contains(*c))
            .collect();
        let script = format!(
            "set -e; cd /tmp; rm -rf hb-src hb-x hb.tar; mkdir hb-src hb-x; i=0; \
             while [ $i -lt {n} ]; do echo $i > hb-src/f$i; i=$((i+1)); done; \
             tar cf hb.tar hb-src; rm -rf hb-src; a=$(cut -d' ' -f1 /proc/uptime); \
             tar xf hb.tar {args} -C hb-x; b=$(cut -d' ' -f1 /proc/uptime); \
             echo \"UNTAR $a $b\"; rm -rf hb-x hb.tar"
        );
        let r = self.ctr.run(&[
            "task".into(),
            "exec".into(),
            "--exec-id".into(),
            "untar".into(),
            id.into(),
            "sh".into(),
            "-c".into(),
            script,
        ]);
        let secs = r.stdout.lines().find_map(|l| {
            let mut w = l.strip_prefix("UNTAR ")?.split(' ');
            let a: f64 = w.next()?.parse().ok()?;
            let b: f64 = w.next()?.parse().ok()?;
            Some(b - a)
        });
        match secs.filter(|_| r.ok) {
            Some(s) => {
                self.log
                    .say(&format!("{name}: untar of {n} files on the root: {s:.2} s"));
                self.rts[rt].untar_s = Some(s);
            }
            None => self.failure(rt, "untar", &r, false),
        }
    }

    /// Guest RAM on the host while a pod idles, after a burst of guest memory (a file on a
    /// tmpfs in the guest), and after the file is deleted: freed guest pages go back to the
    /// host through free page reporting, within seconds.
    fn burst(&mut self, rt: usize) {
        let mib = self.config.burst_mib;
        if mib == 0 {
            return;
        }
        let vm_mib = mib + 384;
        let id = "hb-burst".to_string();
        let tmpfs = format!("type=tmpfs,src=tmpfs,dst=/burst,options=size={}m", mib + 32);
        let memory = format!("io.hull.memory_mib={vm_mib}");
        let flags = ["--annotation", memory.as_str(), "--mount", tmpfs.as_str()];
        let args = self.run_args(rt, &flags, &id, &[PROBE, "serve"]);
        let mut child = self.ctr.spawn(&args);
        let timeout = self.ctr.timeout;
        if child.wait_first_byte(timeout).is_none() {
            let r = child.finish(Duration::from_secs(5));
            self.failure(rt, "burst", &r, false);
            return;
        }
        let guest_ram = |id: &str| pod_memory(id).map(|m| m.guest_ram_kib());
        let exec = |ctr: &Ctr, n: &str, cmd: &str| {
            ctr.run(&[
                "task".into(),
                "exec".into(),
                "--exec-id".into(),
                n.into(),
                id.clone(),
                "sh".into(),
                "-c".into(),
                cmd.into(),
            ])
        };
        std::thread::sleep(Duration::from_secs(5));
        let idle = guest_ram(&id);
        let fill = exec(
            &self.ctr,
            "fill",
            &format!("dd if=/dev/zero of=/burst/x bs=1M count={mib} 2>&1"),
        );
        let peak = guest_ram(&id);
        let free = exec(&self.ctr, "free", "rm /burst/x && sync");
        let freed = Instant::now();
        let mut after = guest_ram(&id);
        // The guest reports free pages 2 s after they gather; give it up to 30 s.
        while freed.elapsed() < Duration::from_secs(30) {
            if let (Some(a), Some(i)) = (after, idle) {
                if a <= i + (u64::from(mib) << 10) / 10 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_secs(2));
            after = guest_ram(&id);
        }
        let after_s = freed.elapsed().as_secs_f64();
        match (fill.ok && free.ok, idle, peak, after) {
            (true, Some(idle_kib), Some(peak_kib), Some(after_kib)) => {
                self.log.say(&format!(
                    "hull: memory burst of {mib} MiB in a {vm_mib} MiB guest: guest RAM on the host \
                     idle {:.1} MiB, after the burst {:.1} MiB, {after_s:.1} s after the delete {:.1} MiB",
                    idle_kib as f64 / 1024.0,
                    peak_kib as f64 / 1024.0,
                    after_kib as f64 / 1024.0
                ));
                self.rts[rt].burst = Some(Burst {
                    mib,
                    vm_mib,
                    idle_kib,
                    peak_kib,
                    after_kib,
                    after_s,
                });
            }
            _ => {
                let r = if fill.ok { &free } else { &fill };
                self.failure(rt, "burst", r, false);
            }
        }
        let k = self
            .ctr
            .run(&["task".into(), "kill".into(), "-s".into(), "KILL".into(), id]);
        if !k.ok {
            self.failure(rt, "cleanup", &k, false);
        }
        child.finish(timeout);
    }

    /// Opt-in: panics the guest kernel of a privileged Hull container, then checks the host.
    fn crash(&mut self, rt: usize) {
        let started = Instant::now();
        let r =
            self.ctr
                .run(&self.run_args(rt, &["--privileged"], "hb-crash-hull", &[PROBE, "crash"]));
        let ver = self.ctr.run(&["version".into()]);
        let vmm_left = procs::list()
            .iter()
            .filter(|p| p.name() == "hull-vmm")
            .count();
        let text = format!(
            "`echo c > /proc/sysrq-trigger` in a privileged Hull container: ctr {} after {:.1} s; host kernel up \
             (this driver kept running), containerd {}, hull-vmm processes left: {vmm_left}",
            r.status,
            started.elapsed().as_secs_f64(),
            if ver.ok { "answered" } else { "did NOT answer" }
        );
        self.log.say(&format!("hull: crash probe: {text}"));
        self.rts[rt].crash = Some(text);
    }
}

fn sample(r: &CtrResult) -> Sample {
    Sample {
        ok: r.ok,
        wall_s: r.wall_s,
        first_byte_s: r.first_byte_s,
        error: (!r.ok).then(|| r.failure()),
    }
}

/// The shim's config for Hull pods; the guest's RAM holds the writable layer's tmpfs (half
/// of it at most), so the default grows with the sequential-write size.
fn write_hull_config(paths: &Paths, path: &Path, seq_mib: u32) -> Result<()> {
    let p = |o: &Option<PathBuf>| {
        o.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let mem = env_u32("HULL_BENCH_HULL_MEMORY_MIB", (2 * seq_mib + 128).max(256))?;
    fs::write(
        path,
        format!(
            "kernel = {:?}\ninitrd = {:?}\nhull_vmm = {:?}\nvirtiofsd = {:?}\nmemory_mib = {mem}\nrun_dir = {:?}\ndebug = true\n",
            p(&paths.kernel),
            p(&paths.initrd),
            p(&paths.hull_vmm),
            p(&paths.virtiofsd),
            paths.work.join("hull").display().to_string()
        ),
    )
    .with_context(|| format!("write {}", path.display()))
}

/// The memory of the pod whose shim runs with `-id ID`: its shim's process tree, the VM's
/// processes included.
fn pod_memory(id: &str) -> Option<Memory> {
    let all = procs::list();
    let shim = procs::find_shim(&all, id)?;
    Some(Memory {
        procs: procs::memory_of(&procs::tree(&all, shim)),
    })
}

fn containerd_sh(paths: &Paths, action: &str, hull_config: &Path) -> Result<String> {
    let mut cmd = Command::new("timeout");
    cmd.arg("600")
        .arg(paths.checkout.join("tests/lab/containerd.sh"))
        .arg(action)
        .env("HULL_CTRD_DIR", paths.work.join("containerd"))
        .env("HULL_CONFIG", hull_config);
    if let Some(d) = &paths.shim_dir {
        cmd.env("HULL_SHIM_DIR", d);
    }
    let out = cmd.output().context("run tests/lab/containerd.sh")?;
    if !out.status.success() {
        bail!(
            "containerd.sh {action} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn leftovers(work: &Path) -> Vec<String> {
    let all = procs::list();
    let mut left = procs::leftovers(&all);
    let ours = work.display().to_string();
    left.extend(
        all.iter()
            .filter(|p| p.name() == "containerd" && p.argv.iter().any(|a| a.starts_with(&ours)))
            .map(|p| format!("{} {}", p.pid, p.argv.join(" "))),
    );
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let work = format!("{}/", work.display());
    left.extend(
        procs::leftover_mounts(&mountinfo, &[work.as_str(), "/run/hull/"])
            .into_iter()
            .map(|m| format!("mount {m}")),
    );
    left
}

/// Whether the run should fail the command: 2 when `HULL_BENCH_REQUIRE_HULL=1` and
/// Hull produced no start figure, 3 when something was left running.
pub fn exit_code(data: &RunData, require_hull: bool) -> i32 {
    let hull_ok = data
        .runtimes
        .iter()
        .any(|r| r.name == "hull" && r.usable() && r.start.iter().any(|s| s.ok));
    if !data.leftovers.is_empty() {
        3
    } else if require_hull && !hull_ok {
        2
    } else {
        0
    }
}

/// Runs everything and writes the results to `paths.out`.
pub fn run(paths: Paths) -> Result<RunData> {
    let start = Instant::now();
    fs::create_dir_all(&paths.out).with_context(|| format!("create {}", paths.out.display()))?;
    let mut log = Log {
        start,
        file: fs::File::create(paths.out.join("log.txt")).ok(),
    };
    let lab = std::env::var("HULL_LAB").is_ok_and(|v| v == "1");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = config_from_env(lab)?;
    let _ = fs::remove_dir_all(&paths.work);
    let volume = paths.work.join("vol");
    fs::create_dir_all(&volume)?;
    let hull_config = paths.work.join("hull.toml");
    write_hull_config(&paths, &hull_config, config.seq_mib)?;
    let mut data = RunData {
        started: output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        env: Env {
            place: if lab { "lab".into() } else { "host".into() },
            cpus,
            mem_mib: fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|k| k.parse::<u64>().ok())
                })
                .map_or(0, |k| k / 1024),
            versions: BTreeMap::from([
                ("containerd".into(), output("containerd", &["--version"])),
                ("runc".into(), output("runc", &["--version"])),
                ("crun".into(), output("crun", &["--version"])),
                (
                    "guest kernel".into(),
                    paths.kernel.as_ref().map_or("n/a".into(), |k| {
                        fs::read_to_string(k.with_file_name("release"))
                            .map_or_else(|_| k.display().to_string(), |s| s.trim().to_string())
                    }),
                ),
                (
                    "hull commit".into(),
                    output(
                        "git",
                        &[
                            "-C",
                            &paths.checkout.display().to_string(),
                            "rev-parse",
                            "--short",
                            "HEAD",
                        ],
                    ),
                ),
            ]),
        },
        config: config.clone(),
        host: host_facts(&paths.work.join("containerd/root"), &volume),
        ..Default::default()
    };
    let rts = runtimes(&config, &paths);
    for rt in &rts {
        if let Some(u) = &rt.unavailable {
            log.say(&format!("{}: not available: {u}", rt.name));
        }
    }
    let n = rts.iter().filter(|r| r.usable()).count() as u32;
    let calls = n * (config.start_runs + config.first_byte_runs + 1 + config.exec_runs + 2 + 1)
        + n * config.density;
    log.say(&format!(
        "plan: {} runtimes ({}), about {calls} ctr calls: {} starts, {} first-byte starts, 1 long-running container \
         with {} execs + 1 probe run, 1 privileged probe, {} parallel starts each{}",
        n,
        rts.iter().filter(|r| r.usable()).map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
        config.start_runs,
        config.first_byte_runs,
        config.exec_runs,
        config.density,
        if config.crash_hull { ", then the Hull kernel crash probe" } else { "" }
    ));
    log.say("starting the private containerd and importing the bench image");
    let address = match containerd_sh(&paths, "start", &hull_config) {
        Ok(a) => a,
        Err(e) => {
            let _ = containerd_sh(&paths, "stop", &hull_config);
            return Err(e);
        }
    };
    let ctr = Ctr {
        address,
        timeout: Duration::from_secs(config.ctr_timeout_s),
    };
    let import = ctr.run(&[
        "images".into(),
        "import".into(),
        "--base-name".into(),
        "docker.io/library/hull-bench".into(),
        paths.image_tar.display().to_string(),
    ]);
    let mut bench = Bench {
        ctr,
        config: config.clone(),
        paths: paths.clone(),
        log,
        volume,
        rts,
        log_mark: 0,
    };
    if import.ok {
        bench.log.say(&format!(
            "image imported in {:.1} s; containerd ready",
            import.wall_s
        ));
        bench.start_round();
        bench.first_byte_round();
        for rt in bench.usable() {
            bench.pod(rt);
        }
        for rt in bench.usable() {
            if bench.rts[rt].name == "hull" {
                bench.burst(rt);
            }
        }
        for rt in bench.usable() {
            bench.privileged(rt);
        }
        for rt in bench.usable() {
            bench.density(rt);
        }
        if config.crash_hull {
            if let Some(rt) = bench
                .usable()
                .into_iter()
                .find(|i| bench.rts[*i].name == "hull")
            {
                bench.crash(rt);
            }
        }
    } else {
        data.notes.push(format!(
            "importing {} failed: {}",
            paths.image_tar.display(),
            import.failure()
        ));
        bench
            .log
            .say(&format!("image import failed: {}", import.failure()));
    }
    bench.log.say("stopping containerd");
    let log_copy = paths.out.join("containerd.log");
    let _ = fs::read_to_string(paths.work.join("containerd/containerd.log")).map(|s| {
        fs::write(
            &log_copy,
            s.lines()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
        )
    });
    // containerd.sh stop may exit non-zero after a successful stop (its final
    // mount sweep finds nothing); what counts is what is left, checked below.
    let _ = containerd_sh(&paths, "stop", &hull_config);
    // Give exiting shims and VMMs a moment before looking for leftovers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = leftovers(&paths.work);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        left = leftovers(&paths.work);
    }
    bench.log.say(&format!(
        "left running: {}",
        if left.is_empty() {
            "nothing".into()
        } else {
            left.join("; ")
        }
    ));
    data.leftovers = left;
    data.runtimes = bench.rts;
    data.elapsed_s = start.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(&paths.work);
    write_results(&paths.out, &data)?;
    bench.log.say(&format!(
        "report: {}",
        paths.out.join("report.md").display()
    ));
    Ok(data)
}

/// Writes data.json, data.csv, report.md and the plots into `out`.
pub fn write_results(out: &Path, data: &RunData) -> Result<()> {
    fs::write(out.join("data.json"), serde_json::to_string_pretty(data)?)?;
    fs::write(out.join("data.csv"), report::csv(data))?;
    fs::write(out.join("report.md"), report::markdown(data))?;
    for (name, svg) in report::plots(data) {
        fs::write(out.join(name), svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(hull_ok: bool, leftovers: Vec<String>) -> RunData {
        let start = vec![Sample {
            ok: hull_ok,
            ..Default::default()
        }];
        RunData {
            runtimes: vec![RuntimeData {
                name: "hull".into(),
                start,
                failed: (!hull_ok).then(|| "mount virtio-fs: EINVAL".into()),
                ..Default::default()
            }],
            leftovers,
            ..Default::default()
        }
    }

    #[test]
    fn exit_code_fails_only_when_asked_or_when_something_is_left() {
        assert_eq!(exit_code(&data(false, vec![]), false), 0);
        assert_eq!(exit_code(&data(false, vec![]), true), 2);
        assert_eq!(exit_code(&data(true, vec![]), true), 0);
        assert_eq!(
            exit_code(&data(true, vec!["123 hull-vmm".into()]), false),
            3
        );
    }
}
