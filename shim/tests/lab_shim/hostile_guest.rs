//! A container that dials the agent over vsock or steals another process's stdio stream gets nothing (issue 16, holes 1 and 2).
//!
//! The attacker is `hull-hostile` (tests/hostile), a static binary
//! bind-mounted read-only at /t into a busybox container. Run only these
//! with the filter `hostile_guest`.

use super::*;

/// Where `cargo build --release --target x86_64-unknown-linux-musl -p hull-hostile` puts it.
const HOSTILE_REL: &str = "target/x86_64-unknown-linux-musl/release/hull-hostile";
/// The guest's vsock CID (hull-vmm's, set by the shim's launch).
const GUEST_CID: u32 = 3;
/// The first host port the shim gives stdio streams, and how many to scan.
const FIRST_STREAM_PORT: u32 = 10_000;
const SCANNED_PORTS: u32 = 64;

/// A directory holding only the attacker binary, built if missing. Call it
/// after `containerd()`, whose first start empties [`BASE`].
fn hostile_dir() -> PathBuf {
    let bin = workspace().join(HOSTILE_REL);
    if !bin.is_file() {
        let built = Command::new("cargo")
            .args([
                "build",
                "--release",
                "--target",
                "x86_64-unknown-linux-musl",
                "-p",
                "hull-hostile",
            ])
            .current_dir(workspace())
            .status();
        assert!(
            built.is_ok_and(|s| s.success()) && bin.is_file(),
            "no {}: build it on the host first with \
             `cargo build --release --target x86_64-unknown-linux-musl -p hull-hostile`",
            bin.display()
        );
    }
    let dir = Path::new(BASE).join("hostile-bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&bin, dir.join("hull-hostile")).unwrap();
    dir
}

fn bind_ro(src: &Path, dst: &str) -> String {
    format!("type=bind,src={},dst={dst},options=rbind:ro", src.display())
}

/// `key=value` from a line of the attacker's report.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_hostile_guest_vsock_to_the_agent_is_refused() {
    let (ctrd, _one) = containerd();
    let dir = hostile_dir();
    let _cleanup = Remove(ctrd, &["vsock-probe"]);
    let mount = bind_ro(&dir, "/t");
    let script = format!(
        "for cid in 1 {GUEST_CID} 2; do /t/hull-hostile vsock-connect $cid {}; done",
        hull_protocol::AGENT_PORT
    );
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        HULL,
        "--mount",
        &mount,
        IMAGE,
        "vsock-probe",
        "sh",
        "-c",
        &script,
    ]);
    let report = text(&out.stdout);
    println!(
        "vsock probes from a container:\n{report}{}",
        text(&out.stderr)
    );
    assert!(out.status.success(), "{}", ctrd.shim_log());
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("connect "))
        .collect();
    assert_eq!(lines.len(), 3, "one report per CID: {report}");
    for line in lines {
        let result = field(line, "result").unwrap_or_default();
        let ms: u64 = field(line, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        println!(
            "REFUSAL cid={} errno={result} ms={ms}",
            field(line, "cid").unwrap_or("?")
        );
        assert_ne!(result, "ok", "a container reached the agent's port: {line}");
        assert!(!result.is_empty(), "unparsable report {line:?}");
    }
    assert_clean(ctrd, "the vsock probes");
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_hostile_guest_cannot_join_the_agents_pid_namespace() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["ns-agent"]);
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--privileged",
        "--with-ns",
        "pid:/proc/1/ns/pid",
        "--runtime",
        HULL,
        IMAGE,
        "ns-agent",
        "sh",
        "-c",
        "echo joined; ls /proc",
    ]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    println!(
        "ctr run --with-ns pid:/proc/1/ns/pid: {}\n{said}",
        out.status
    );
    assert!(!out.status.success(), "the container ran: {said}");
    assert!(!said.contains("joined"), "the process ran: {said}");
    let log = ctrd.shim_log();
    // The shim refuses it first (only the pod's own sandbox namespaces are
    // mapped into the guest); the agent's own refusal of its namespaces is
    // the second wall, tested in lab_agent.
    let clear = |s: &str| {
        s.contains("namespace path /proc/1/ns/pid")
            && (s.contains("is not a namespace of this pod")
                || s.contains("the agent's own namespaces"))
    };
    assert!(
        clear(&said) || clear(&log),
        "no clear refusal in ctr's output or the shim log:\n{said}\n{log}"
    );
    println!("refusal reaches ctr: {}", clear(&said));
    ctrd.remove("ns-agent");
    assert_clean(ctrd, "the refused namespace");
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_hostile_guest_cannot_take_over_an_exec_stream() {
    let (ctrd, _one) = containerd();
    let dir = hostile_dir();
    let out_dir = Path::new(BASE).join("steal-out");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let _cleanup = Remove(ctrd, &["steal-b", "steal-a"]);
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=steal-pod"];
    ctrd.run_detached("steal-a", &pod, &["sleep", "1000"]);
    let expected: String = (0..20).map(|i| format!("line-{i}\n")).collect();
    let slow = "i=0; while [ $i -lt 20 ]; do echo line-$i; i=$((i+1)); sleep 0.2; done";
    // One exec alone first: the time to compare with under attack.
    let started = Instant::now();
    let alone = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "alone",
        "steal-a",
        "sh",
        "-c",
        slow,
    ]);
    assert_eq!(alone, expected);
    let alone_took = started.elapsed();
    let t = bind_ro(&dir, "/t");
    let out = format!(
        "type=bind,src={},dst=/out,options=rbind:rw",
        out_dir.display()
    );
    let last = FIRST_STREAM_PORT + SCANNED_PORTS - 1;
    let scan = format!(
        "/t/hull-hostile vsock-scan 2 {FIRST_STREAM_PORT} {last} 900 /out/stop > /out/scan.txt 2>&1"
    );
    ctrd.run_detached(
        "steal-b",
        &[
            &pod[..],
            &[
                "--annotation",
                "io.kubernetes.cri.container-type=container",
                "--mount",
                &t,
                "--mount",
                &out,
            ],
        ]
        .concat(),
        &["sh", "-c", &scan],
    );
    // B scans while A's execs print a known sequence slowly.
    let started = Instant::now();
    for n in 0..3 {
        let exec_id = format!("slow{n}");
        let got = ctrd.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            "steal-a",
            "sh",
            "-c",
            slow,
        ]);
        assert_eq!(got, expected, "exec {n}'s stream arrived changed");
    }
    println!(
        "TIMING exec into A: {:.1} s alone; 3 execs intact while B scanned, {:.1} s",
        alone_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    std::fs::write(out_dir.join("stop"), "").unwrap();
    ctrd.wait_status("steal-b", "STOPPED", 300);
    let report = std::fs::read_to_string(out_dir.join("scan.txt")).unwrap_or_default();
    println!("B's scan:\n{report}");
    let summary = report
        .lines()
        .find(|l| l.starts_with("scan "))
        .unwrap_or_else(|| panic!("B wrote no summary: {report}"));
    assert!(
        !report.lines().any(|l| l.starts_with("got ")),
        "B read stream data: {report}"
    );
    assert_eq!(field(summary, "bytes"), Some("0"), "{summary}");
    let attempts: u64 = field(summary, "attempts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        attempts >= u64::from(SCANNED_PORTS),
        "B barely scanned: {summary}"
    );
    println!(
        "SCAN attempts={attempts} connected={} errnos={}",
        field(summary, "connected").unwrap_or("?"),
        field(summary, "errnos").unwrap_or("?")
    );
    ctrd.remove("steal-b");
    ctrd.remove("steal-a");
    assert_clean(ctrd, "the stream theft");
}
