//! The container file system behaves like a local one under Hull as under runc: the rm -rf reproduction, a POSIX conformance suite and stress cases on the container root and on a volume (issue 14).
//!
//! Every test runs the same commands under runc and Hull in one lab run and
//! compares them. Tools come in through a read-only bind mount of a host
//! directory at /t (pjdfstest from scripts/setup.sh, hull-fscheck built for
//! musl), /etc/passwd and /etc/group through file bind mounts. Volumes live on
//! ext4 under /var/lib/hull-test, as on a node (tests/lab/stage2.sh).
//! `HULL_FS_FULL=1` runs the big sizes (100k-entry directory, 20k-file tree);
//! the default sizes keep this module to a few lab minutes. Results and known
//! differences: tests/fs-conformance.md.

use super::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The pjdfstest release scripts/setup.sh installs (keep the two equal).
const PJDFSTEST_VERSION: &str = "0.2.2";
/// Volumes on disk, as a node's are (the lab mounts ext4 here).
const DISK: &str = "/var/lib/hull-test/lab-shim-fs";

/// Differences from runc that are understood, with their reason:
/// (`suite:` prefix, case-name suffix, reason). Any other difference fails the test.
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "pjdfstest:",
        "::block",
        "block device nodes cannot be created on the share: virtiofsd runs without CAP_MKNOD (issue 16, hole 4), so mknod gets EPERM",
    ),
    (
        "stress:",
        "o-tmpfile",
        "virtiofsd 1.14 answers FUSE_TMPFILE with ENOSYS (not implemented there), so O_TMPFILE gets EOPNOTSUPP on the share; runc fails it too on the root (overlayfs has O_TMPFILE from Linux 6.6)",
    ),
];

/// The reason a difference in `case` (`suite:name`) is understood, if it is.
fn known_difference(case: &str) -> Option<&'static str> {
    KNOWN_DIFFERENCES
        .iter()
        .find(|(suite, suffix, _)| case.starts_with(suite) && case.ends_with(suffix))
        .map(|(_, _, reason)| *reason)
}

fn full() -> bool {
    ["HULL_FS_FULL", "HULL_LAB_FULL"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| v == "1"))
}

/// The pjdfstest cases the test command keeps (substrings of case names):
/// the calls that remove entries, the area of the rm -rf bug (~58 cases).
/// In a loaded lab rename+unlink+rmdir (117 cases) took 193 s per place under
/// Hull (each case is dozens of FUSE round trips through a nested VM) and the
/// whole module ~19 lab minutes; `rename` and the rest of the suite (398
/// cases) run with `HULL_FS_FULL=1`.
const PJDFSTEST_SUBSET: &[&str] = &["unlink", "rmdir"];

/// (files in the deleted tree, entries in the big directory).
fn sizes() -> (usize, usize) {
    if full() {
        (20_000, 100_000)
    } else {
        // Under Hull in a loaded lab the stress cases at 200 + 300 took 160 s
        // on the root (~110 ms per created file).
        (100, 150)
    }
}

fn fs_type(path: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .expect("stat -f");
    text(&out.stdout).trim().to_string()
}

/// A fresh, empty host directory for a volume: on the ext4 disk, or on tmpfs.
fn volume(name: &str, tmpfs: bool) -> PathBuf {
    let dir = if tmpfs {
        Path::new(BASE).join("fs-tmpfs").join(name)
    } else {
        Path::new(DISK).join(name)
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    println!("fs: volume {} is on {}", dir.display(), fs_type(&dir));
    dir
}

fn bind(src: &Path, dst: &str, mode: &str) -> String {
    format!(
        "type=bind,src={},dst={dst},options=rbind:{mode}",
        src.display()
    )
}

/// The host directory bound read-only at /t: pjdfstest, hull-fscheck, the
/// suite's configuration and the passwd/group files with its users.
fn tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let cache = std::env::var("HULL_CACHE").unwrap_or_else(|_| "/var/cache/hull".into());
        let pjdfstest = PathBuf::from(format!(
            "{cache}/tools/pjdfstest-{PJDFSTEST_VERSION}/bin/pjdfstest"
        ));
        assert!(
            pjdfstest.is_file(),
            "no {}: scripts/setup.sh (make setup) builds it",
            pjdfstest.display()
        );
        // SHIM is <target>/debug/containerd-shim-hull-v2.
        let target = Path::new(SHIM).parent().unwrap().parent().unwrap();
        let fscheck = target.join("x86_64-unknown-linux-musl/release/hull-fscheck");
        assert!(
            fscheck.is_file(),
            "no {}: cargo build -p hull-fscheck --release --target x86_64-unknown-linux-musl",
            fscheck.display()
        );
        let dir = Path::new(BASE).join("fs-tools");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&pjdfstest, dir.join("pjdfstest")).unwrap();
        std::fs::copy(&fscheck, dir.join("hull-fscheck")).unwrap();
        std::fs::write(
            dir.join("pjdfstest.toml"),
            "[features]\nposix_fallocate = {}\nrename_ctime = {}\nutime_now = {}\nutimensat = {}\n\n\
             [settings]\nnaptime = 0.01\nallow_remount = false\n\n\
             [dummy_auth]\nentries = [[\"nobody\", \"nobody\"], [\"tests\", \"tests\"]]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n\
             tests:x:1000:1000:pjdfstest:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("group"),
            "root:x:0:\nnobody:x:65534:\ntests:x:1000:\n",
        )
        .unwrap();
        dir
    })
}

fn tool_mounts() -> Vec<String> {
    let t = tools();
    vec![
        "--mount".into(),
        bind(t, "/t", "ro"),
        "--mount".into(),
        bind(&t.join("passwd"), "/etc/passwd", "ro"),
        "--mount".into(),
        bind(&t.join("group"), "/etc/group", "ro"),
    ]
}

fn short(runtime: &str) -> &'static str {
    if runtime == HULL {
        "hull"
    } else {
        "runc"
    }
}

/// A running container for a series of `ctr task exec`s; removed when dropped.
struct Running<'a> {
    ctrd: &'a Containerd,
    id: String,
}

impl<'a> Running<'a> {
    fn start(ctrd: &'a Containerd, runtime: &str, id: &str, opts: &[String]) -> Self {
        let mut args: Vec<&str> = vec!["run", "-d", "--runtime", runtime];
        args.extend(opts.iter().map(String::as_str));
        args.extend([IMAGE, id, "sleep", "100000"]);
        let started = Instant::now();
        ctrd.ctr_ok(&args);
        println!(
            "fs: {id} ({}) up in {:.1} s",
            short(runtime),
            started.elapsed().as_secs_f64()
        );
        Self {
            ctrd,
            id: id.to_string(),
        }
    }

    /// Runs `script` with sh; returns its stdout+stderr, whether it succeeded, and the time.
    fn sh(&self, script: &str) -> (String, bool, f64) {
        static EXEC: AtomicUsize = AtomicUsize::new(0);
        let exec_id = format!("x{}", EXEC.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        // The whole suite under HULL_FS_FULL=1 outlasts CTR_TIMEOUT_SECS.
        let limit = if full() { 4 * 3600 } else { CTR_TIMEOUT_SECS };
        let out = Command::new("timeout")
            .arg(limit.to_string())
            .args(["ctr", "--address", &self.ctrd.address, "task", "exec"])
            .args(["--exec-id", &exec_id, &self.id, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run ctr task exec");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        (all, out.status.success(), started.elapsed().as_secs_f64())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.ctrd.remove(&self.id);
    }
}

/// The issue's reproduction, for each directory given as an argument.
const RM_RF: &str = r#"for d in "$@"; do
  mkdir $d; i=0; while [ $i -lt 1500 ]; do echo x > $d/f$i; i=$((i+1)); done
  if rm -rf $d 2>/dev/null; then echo "rmrf $d ok"; else
    n=1; while [ -e $d ] && [ $n -lt 20 ]; do rm -rf $d 2>/dev/null; n=$((n+1)); done
    echo "rmrf $d FAILED: $(ls $d 2>/dev/null | wc -l) left; gone after $n passes: $([ -e $d ] && echo no || echo yes)"
  fi
done"#;

/// `ctr run --rm` with `opts` before the image; returns stdout+stderr, success, seconds.
fn run_with(
    ctrd: &Containerd,
    runtime: &str,
    id: &str,
    opts: &[String],
    args: &[&str],
) -> (String, bool, f64) {
    let mut full: Vec<&str> = vec!["run", "--rm", "--runtime", runtime];
    full.extend(opts.iter().map(String::as_str));
    full.extend([IMAGE, id]);
    full.extend_from_slice(args);
    let started = Instant::now();
    let out = ctrd.ctr(&full);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (all, out.status.success(), started.elapsed().as_secs_f64())
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_fs_rm_rf_of_1500_files_on_root_and_volumes() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["rmrf-runc", "rmrf-hull"]);
    let lab_kernel = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let mut problems = Vec::new();
    // runc's run is the reference (the same script, one kernel): in the full run only.
    let runtimes: &[&str] = if full() {
        &[RUNC, HULL]
    } else {
        println!("skipped: rm -rf under runc, the reference (HULL_FS_FULL=1 runs it)");
        &[HULL]
    };
    for &runtime in runtimes {
        let rt = short(runtime);
        // The issue's reproduction on the container root. Each place costs
        // 3-6 lab minutes under Hull (1,500 files through virtio-fs in a
        // nested VM: 672 s for root and ext4 in a loaded lab), so the volumes
        // are in the full run only; the test command deletes a tree on an ext4
        // volume while listing it in the stress cases.
        let mut opts = Vec::new();
        let mut dirs = vec!["/tmp/m"];
        if full() {
            let (ext4, tmpfs) = (volume("rmrf-ext4", false), volume("rmrf-tmpfs", true));
            opts.extend(["--mount".to_string(), bind(&ext4, "/vol", "rw")]);
            opts.extend(["--mount".to_string(), bind(&tmpfs, "/tmpvol", "rw")]);
            dirs.extend(["/vol/m", "/tmpvol/m"]);
        }
        let mut args = vec!["sh", "-c", RM_RF, "rm-rf"];
        args.extend(&dirs);
        let (out, ok, secs) = run_with(ctrd, runtime, &format!("rmrf-{rt}"), &opts, &args);
        println!("fs: {rt}: rm -rf of 1500 files in {secs:.1} s:\n{out}");
        if !ok {
            problems.push(format!("{rt}: the container failed: {out}"));
            continue;
        }
        for (dir, place) in [
            ("/tmp/m", "root"),
            ("/vol/m", "ext4 volume"),
            ("/tmpvol/m", "tmpfs volume"),
        ]
        .into_iter()
        .filter(|(dir, _)| dirs.contains(dir))
        {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("rmrf {dir} ")))
                .unwrap_or("no result");
            let passed = line.ends_with(" ok");
            if passed {
                continue;
            }
            if runtime == HULL && place == "tmpfs volume" {
                // virtiofsd seeks back on every READDIR; on kernels before
                // 6.6 tmpfs offsets are positions, so entries get skipped.
                println!(
                    "fs: known gap: hull rm -rf on a volume whose host source is tmpfs (lab kernel {}): {line}",
                    lab_kernel.trim()
                );
                // What must still hold: nothing is lost for good, more passes finish the job.
                if !line.ends_with("passes: yes") {
                    problems.push(format!("{rt} {place}: {line}"));
                }
                continue;
            }
            problems.push(format!("{rt} {place}: {line}"));
        }
    }
    assert!(
        problems.is_empty(),
        "rm -rf failed: {problems:#?}\nshim log:\n{}",
        ctrd.shim_log()
    );
    assert_clean(ctrd, "the rm -rf runs");
}

/// One case's result in pjdfstest or hull-fscheck output.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Pass,
    Fail(String),
    Skip,
}

impl Outcome {
    fn word(&self) -> &str {
        match self {
            Outcome::Pass => "ok",
            Outcome::Fail(_) => "FAILED",
            Outcome::Skip => "skipped",
        }
    }
}

/// Removes terminal colour sequences (ESC [ ... m).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// pjdfstest's per-case lines (`NAME   ok|FAILED|skipped|...`; a FAILED line is
/// followed by indented lines saying why).
fn parse_pjdfstest(output: &str) -> BTreeMap<String, Outcome> {
    let output = plain(output);
    let mut results = BTreeMap::new();
    let mut last_failed: Option<String> = None;
    for line in output.lines() {
        if let Some(why) = line.strip_prefix('\t') {
            if let Some(name) = &last_failed {
                if let Some(Outcome::Fail(msg)) = results.get_mut(name) {
                    if msg.is_empty() {
                        *msg = why.trim().to_string();
                    }
                }
            }
            continue;
        }
        let Some((name, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let outcome = match rest.trim() {
            "ok" | "failed as expected" => Outcome::Pass,
            "FAILED" | "PASSED UNEXPECTEDLY" => Outcome::Fail(String::new()),
            "skipped" => Outcome::Skip,
            _ => continue,
        };
        last_failed = matches!(outcome, Outcome::Fail(_)).then(|| name.to_string());
        results.insert(name.to_string(), outcome);
    }
    results
}

/// hull-fscheck's `fscheck: ok NAME: ...` / `fscheck: FAILED NAME: why` lines.
fn parse_fscheck(output: &str) -> BTreeMap<String, Outcome> {
    let mut results = BTreeMap::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("fscheck: ") else {
            continue;
        };
        if let Some(ok) = rest.strip_prefix("ok ") {
            let name = ok.split(':').next().unwrap_or(ok);
            results.insert(name.to_string(), Outcome::Pass);
        } else if let Some(failed) = rest.strip_prefix("FAILED ") {
            let (name, why) = failed.split_once(": ").unwrap_or((failed, ""));
            results.insert(name.to_string(), Outcome::Fail(why.to_string()));
        }
    }
    results
}

fn count(results: &BTreeMap<String, Outcome>, want: &str) -> usize {
    results.values().filter(|o| o.word() == want).count()
}

/// What one runtime produced at one place.
struct PlaceResults {
    pjdfstest: BTreeMap<String, Outcome>,
    stress: BTreeMap<String, Outcome>,
}

/// Runs pjdfstest and hull-fscheck in `dir` of a running container.
fn conformance_at(c: &Running, rt: &str, place: &str, dir: &str) -> PlaceResults {
    let (files, entries) = sizes();
    let (out, _, secs) = c.sh(&format!(
        "mkdir -p {dir}/pjd && cd {dir}/pjd && NO_COLOR=1 /t/pjdfstest -c /t/pjdfstest.toml -p {dir}/pjd {} 2>&1",
        if full() { String::new() } else { PJDFSTEST_SUBSET.join(" ") }
    ));
    let pjdfstest = parse_pjdfstest(&out);
    // Shown at once: a later step that times out must not hide these.
    for (name, o) in &pjdfstest {
        if let Outcome::Fail(why) = o {
            println!("fs: {rt} {place}: pjdfstest {name} FAILED: {why}");
        }
    }
    println!(
        "TIMING fs pjdfstest {rt} {place}: {secs:.1} s ({} cases)",
        pjdfstest.len()
    );
    if pjdfstest.is_empty() {
        println!("fs: {rt} {place}: pjdfstest printed no results:\n{out}");
    }
    let (out, _, secs) = c.sh(&format!(
        "/t/hull-fscheck --files {files} --entries {entries} {dir} 2>&1"
    ));
    println!("fs: {rt} {place}: hull-fscheck in {secs:.1} s:\n{out}");
    let results = PlaceResults {
        pjdfstest,
        stress: parse_fscheck(&out),
    };
    println!("{}", summary(rt, place, &results));
    results
}

fn summary(rt: &str, place: &str, r: &PlaceResults) -> String {
    format!(
        "fs: {rt} {place}: pjdfstest {} passed, {} failed, {} skipped; stress {}/{}",
        count(&r.pjdfstest, "ok"),
        count(&r.pjdfstest, "FAILED"),
        count(&r.pjdfstest, "skipped"),
        count(&r.stress, "ok"),
        r.stress.len()
    )
}

/// Every case whose outcome differs between runc and Hull: (suite:case, runc, hull).
fn differences(runc: &PlaceResults, hull: &PlaceResults) -> Vec<(String, Outcome, Outcome)> {
    let mut diffs = Vec::new();
    for (suite, r, h) in [
        ("pjdfstest", &runc.pjdfstest, &hull.pjdfstest),
        ("stress", &runc.stress, &hull.stress),
    ] {
        let names: std::collections::BTreeSet<&String> = r.keys().chain(h.keys()).collect();
        for name in names {
            let missing = Outcome::Fail("no result".into());
            let (a, b) = (
                r.get(name).unwrap_or(&missing),
                h.get(name).unwrap_or(&missing),
            );
            if a.word() != b.word() {
                diffs.push((format!("{suite}:{name}"), a.clone(), b.clone()));
            }
        }
    }
    diffs
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_fs_pjdfstest_and_stress_on_root_and_volume_match_runc() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["fsconf-runc", "fsconf-hull"]);
    let started = Instant::now();
    let mut all: BTreeMap<(&str, &str), PlaceResults> = BTreeMap::new();
    for runtime in [RUNC, HULL] {
        let rt = short(runtime);
        let vol = volume(&format!("conformance-{rt}"), false);
        let mut opts = tool_mounts();
        opts.extend(["--mount".to_string(), bind(&vol, "/vol", "rw")]);
        let c = Running::start(ctrd, runtime, &format!("fsconf-{rt}"), &opts);
        for (place, dir) in [("root", "/fs-check"), ("volume", "/vol")] {
            all.insert((rt, place), conformance_at(&c, rt, place, dir));
        }
    }
    let mut problems = Vec::new();
    for place in ["root", "volume"] {
        let (runc, hull) = (&all[&("runc", place)], &all[&("hull", place)]);
        // The baseline must have run: both suites report every case.
        if count(&runc.pjdfstest, "ok") == 0 || runc.stress.is_empty() {
            problems.push(format!("runc {place}: the suites did not run"));
        }
        // A case runc fails too is the lab kernel's, not Hull's (e.g. O_TMPFILE
        // on overlayfs needs Linux 6.6): shown, compared, not a Hull failure.
        for (name, o) in &runc.stress {
            if let Outcome::Fail(why) = o {
                println!("fs: baseline gap: runc {place}: stress {name}: {why}");
            }
        }
        for (case, r, h) in differences(runc, hull) {
            let why = |o: &Outcome| match o {
                Outcome::Fail(w) if !w.is_empty() => format!(" ({w})"),
                _ => String::new(),
            };
            let line = format!(
                "{place} {case}: runc {}{}, hull {}{}",
                r.word(),
                why(&r),
                h.word(),
                why(&h)
            );
            match known_difference(&case) {
                Some(reason) => println!("fs: known difference: {line}; {reason}"),
                None => {
                    println!("fs: DIFFERENCE: {line}");
                    problems.push(line);
                }
            }
        }
    }
    println!(
        "TIMING fs conformance, both runtimes: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "differences from runc not listed in KNOWN_DIFFERENCES: {problems:#?}"
    );
    assert_clean(ctrd, "the conformance runs");
}

/// Steps of the coherence check: (container index, script that must succeed).
/// `HOST` marks a step the host does itself (writes `host` to the file).
const COHERENCE: &[(usize, &str)] = &[
    (0, "echo v1 > /vol/shared"),
    (1, "test \"$(cat /vol/shared)\" = v1"),
    (0, "echo v2-a-longer-line > /vol/shared"),
    (
        1,
        "test \"$(cat /vol/shared)\" = v2-a-longer-line && test $(stat -c %s /vol/shared) = 17",
    ),
    (1, "echo from-b >> /vol/shared"),
    (0, "test \"$(tail -n 1 /vol/shared)\" = from-b"),
    (2, "HOST"),
    (0, "test \"$(cat /vol/shared)\" = host"),
    (1, "test \"$(cat /vol/shared)\" = host"),
    (0, "mv /vol/shared /vol/moved"),
    (
        1,
        "test ! -e /vol/shared && test \"$(cat /vol/moved)\" = host",
    ),
    (1, "mkdir /vol/dir && echo in-dir > /vol/dir/f"),
    (0, "test \"$(cat /vol/dir/f)\" = in-dir && rm -r /vol/dir"),
    (1, "test ! -e /vol/dir"),
    (
        0,
        "flock -x /vol/moved sleep 30 </dev/null >/dev/null 2>&1 & sleep 3",
    ),
    (1, "! flock -n -x /vol/moved true"),
];

fn coherence(ctrd: &Containerd, runtime: &str) -> Vec<String> {
    let rt = short(runtime);
    let vol = volume(&format!("coherence-{rt}"), false);
    let mount = ["--mount".to_string(), bind(&vol, "/vol", "rw")];
    let pod = format!("io.kubernetes.cri.sandbox-id=fscoh-{rt}-a");
    let mut first: Vec<String> = mount.to_vec();
    let mut second: Vec<String> = mount.to_vec();
    if runtime == HULL {
        first.extend(["--annotation".into(), pod.clone()]);
        second.extend([
            "--annotation".into(),
            pod,
            "--annotation".into(),
            "io.kubernetes.cri.container-type=container".into(),
        ]);
    }
    let a = Running::start(ctrd, runtime, &format!("fscoh-{rt}-a"), &first);
    let b = Running::start(ctrd, runtime, &format!("fscoh-{rt}-b"), &second);
    if runtime == HULL {
        let vmms = pod_processes(&["hull-vmm"]);
        assert_eq!(vmms.len(), 1, "both containers in one pod VM: {vmms:?}");
    }
    let mut failed = Vec::new();
    for (i, (who, script)) in COHERENCE.iter().enumerate() {
        if *script == "HOST" {
            std::fs::write(vol.join("shared"), "host\n").unwrap();
            continue;
        }
        let c = if *who == 0 { &a } else { &b };
        let (out, ok, _) = c.sh(script);
        if !ok {
            failed.push(format!(
                "{rt} step {i} in container {}: {script}: {out}",
                *who
            ));
        }
    }
    let moved = std::fs::read_to_string(vol.join("moved")).unwrap_or_default();
    if moved != "host\n" {
        failed.push(format!(
            "{rt}: the host reads {moved:?} from the moved file"
        ));
    }
    println!(
        "fs: {rt} coherence: {}/{} steps",
        COHERENCE.len() - failed.len(),
        COHERENCE.len()
    );
    drop(b);
    drop(a);
    failed
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_fs_two_containers_of_a_pod_see_each_others_changes() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(
        ctrd,
        &[
            "fscoh-runc-b",
            "fscoh-runc-a",
            "fscoh-hull-b",
            "fscoh-hull-a",
        ],
    );
    // The runc baseline checks the steps themselves (one kernel, so they must all hold); it
    // costs as much lab time as Hull's run and runs with the full sizes only.
    if full() {
        let failed = coherence(ctrd, RUNC);
        assert!(failed.is_empty(), "the runc baseline failed: {failed:#?}");
    } else {
        println!("skipped: the coherence steps' runc baseline (HULL_FS_FULL=1 runs it)");
    }
    let failed = coherence(ctrd, HULL);
    for f in &failed {
        println!("fs: DIFFERENCE: coherence {f}");
    }
    assert!(
        failed.is_empty(),
        "{failed:#?}\nshim log:\n{}",
        ctrd.shim_log()
    );
    assert_clean(ctrd, "the coherence pods");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pjdfstest_lines_parse_with_colours_and_reasons() {
        let out = "chmod::ok_case                      \x1b[32mok\x1b[0m\n\
                   link::count                         FAILED\n\
                   \tassertion `left == right` failed\n\
                   \t  left: Ok(())\n\
                   open::erofs                         skipped\n\
                   \trequires root\n\
                   utimensat::y2038          failed as expected\n\
                   \n\
                   Summary: 1 failed, 1 skipped, 1 passed, 1 expected failures, 4 total\n";
        let r = parse_pjdfstest(out);
        assert_eq!(r.len(), 4, "{r:?}");
        assert_eq!(r["chmod::ok_case"], Outcome::Pass);
        assert_eq!(
            r["link::count"],
            Outcome::Fail("assertion `left == right` failed".into())
        );
        assert_eq!(r["open::erofs"], Outcome::Skip);
        assert_eq!(r["utimensat::y2038"], Outcome::Pass);
    }

    #[test]
    fn fscheck_lines_parse_and_differences_are_found() {
        let runc = PlaceResults {
            pjdfstest: parse_pjdfstest("a  ok\nb  ok\n"),
            stress: parse_fscheck("fscheck: ok xattr: fine (0.1 s)\nfscheck: ok times: x\n"),
        };
        let hull = PlaceResults {
            pjdfstest: parse_pjdfstest("a  ok\nb  skipped\n"),
            stress: parse_fscheck("fscheck: FAILED xattr: setxattr: EOPNOTSUPP (0.0 s)\nfscheck: ok times: x\nfscheck: stress 1/2\n"),
        };
        let d = differences(&runc, &hull);
        let names: Vec<&str> = d.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["pjdfstest:b", "stress:xattr"]);
        assert_eq!(d[1].2, Outcome::Fail("setxattr: EOPNOTSUPP (0.0 s)".into()));
        assert_eq!(
            summary("hull", "root", &hull),
            "fs: hull root: pjdfstest 1 passed, 0 failed, 1 skipped; stress 1/2"
        );
    }
}
