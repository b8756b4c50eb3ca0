//! Host tests of the operator tools, run as binaries: the node check on this
//! host, a diagnostics bundle of a fake pod, and a metrics scrape of a fake pod
//! whose host process is a real stand-in process.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hull_protocol::control::{
    self, Answer, CpuStats, DeviceBytes, DeviceKind, DeviceStats, MemoryStats, Request, VmStats,
};

const CHECK: &str = env!("CARGO_BIN_EXE_hull-check");
const MONITOR: &str = env!("CARGO_BIN_EXE_hull-monitor");

/// Kills and reaps a child when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Hull config whose run_dir is `run_dir`, with the installed paths otherwise.
fn config(dir: &Path, run_dir: &Path) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!("run_dir = {:?}\n", run_dir.display().to_string()),
    )
    .unwrap();
    path
}

/// A fake pod directory the shim would leave: sockets' names, host-pids, a share
/// with a container whose spec carries an environment value.
fn fake_pod(run_dir: &Path, ns: &str, pod: &str, pids: &[u32]) -> PathBuf {
    let dir = run_dir.join(ns).join(pod);
    std::fs::create_dir_all(dir.join("shared/c1/rootfs/etc")).unwrap();
    std::fs::write(
        dir.join("shared/c1/config.json"),
        r#"{"process":{"env":["PATH=/bin","HULL_PLANTED=s3cret-planted-value"]}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("shared/c1/rootfs/etc/secret"),
        "s3cret-planted-value",
    )
    .unwrap();
    let record: String = pids
        .iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let start = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .nth(19)
                .unwrap()
                .to_string();
            format!("{pid} {start}\n")
        })
        .collect();
    std::fs::write(dir.join("host-pids"), record).unwrap();
    dir
}

#[test]
fn version_lines_name_the_commit() {
    for bin in [CHECK, MONITOR] {
        let out = Command::new(bin).arg("--version").output().unwrap();
        assert!(out.status.success());
        let line = String::from_utf8(out.stdout).unwrap();
        let name = Path::new(bin).file_name().unwrap().to_str().unwrap();
        assert!(
            line.starts_with(&format!("{name} {} (commit ", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
    }
}

#[test]
fn node_check_on_this_host() {
    let out = Command::new(CHECK).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    println!("{text}");
    assert!(
        text.lines()
            .all(|l| l.starts_with("ok ") || l.starts_with("warn ") || l.starts_with("FAIL ")),
        "{text}"
    );
    let failed = text.lines().any(|l| l.starts_with("FAIL "));
    assert_eq!(out.status.code(), Some(i32::from(failed)), "{text}");
    if Path::new("/sys/module/kvm_pvm").exists() {
        let line = text
            .lines()
            .find(|l| l.contains("kvm: PVM"))
            .expect("a PVM line");
        assert!(line.starts_with("FAIL "), "{line}");
        assert!(
            line.contains("cannot boot a standard guest kernel"),
            "{line}"
        );
        assert!(line.contains("lab"), "{line}");
        assert_eq!(out.status.code(), Some(1));
    } else {
        println!("not a PVM host: the PVM line is checked by the unit test only");
        assert!(text.lines().any(|l| l.contains(" kvm: ")), "{text}");
    }
}

#[test]
fn bad_arguments_exit_2_with_the_reason() {
    let out = Command::new(CHECK).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument \"--bogus\""));
    let out = Command::new(MONITOR)
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

#[test]
fn bundle_of_a_pod_has_its_story_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let stand_in = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    fake_pod(&run_dir, "default", "pod1", &[stand_in.0.id()]);
    fake_pod(&run_dir, "default", "pod2", &[]);
    let cfg = config(dir.path(), &run_dir);
    let log = dir.path().join("containerd.log");
    std::fs::write(
        &log,
        "time=\"t\" level=info msg=\"guest line\" sandbox=pod1 source=\"guest console\"\n\
         time=\"t\" level=info msg=other sandbox=pod2\n",
    )
    .unwrap();
    let out_file = dir.path().join("b.tar.gz");
    let out = Command::new(CHECK)
        .args(["bundle", "--pod", "pod1", "--config"])
        .arg(&cfg)
        .arg("--log")
        .arg(&log)
        .arg("--out")
        .arg(&out_file)
        .env("HULL_PLANTED_ENV", "s3cret-planted-value")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 pod)"));
    let unpacked = dir.path().join("x");
    std::fs::create_dir(&unpacked).unwrap();
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(&out_file)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(tar.success());
    let root = unpacked.join("hull-bundle-pod1");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert!(read("versions.txt").contains("hull-check 0."));
    assert!(read("node-check.txt").lines().any(|l| l.contains("kvm")));
    assert!(read("config.toml").contains("run_dir"));
    let listing = read("pods/default/pod1/listing.txt");
    assert!(
        listing.contains(" host-pids\n") && listing.contains(" shared/c1\n"),
        "{listing}"
    );
    assert!(!listing.contains("config.json"), "{listing}");
    let vmm = read("pods/default/pod1/vmm.txt");
    assert!(
        vmm.contains(&format!("process sleep pid={}", stand_in.0.id())),
        "{vmm}"
    );
    let logs = read("containerd.log");
    assert!(logs.contains("msg=\"guest line\" sandbox=pod1"), "{logs}");
    assert!(!logs.contains("pod2"), "{logs}");
    assert!(!root.join("pods/default/pod2").exists());
    // Nothing anywhere in the archive holds the planted value.
    let mut all = Vec::new();
    let mut files = vec![root.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            std::fs::File::open(&p)
                .unwrap()
                .read_to_end(&mut all)
                .unwrap();
        }
    }
    assert!(!all.is_empty());
    assert!(!String::from_utf8_lossy(&all).contains("s3cret-planted-value"));
}

#[test]
fn bundle_of_an_unknown_pod_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("run"));
    let out = Command::new(CHECK)
        .args(["bundle", "--pod", "nope", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.path().join("b.tar.gz"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pod \"nope\""));
}

/// Answers one `stats` request with hull-vmm's answer type, as hull-vmm does
/// (vmm/src/control.rs).
fn fake_control_socket(path: &Path) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    let stats = VmStats {
        vcpus: 2,
        paused: false,
        uptime_s: 7.5,
        memory: MemoryStats {
            guest_mib: 256,
            vmm_rss_kib: 1024,
        },
        cpu: CpuStats {
            user_s: 0.5,
            system_s: 0.25,
        },
        vcpu_exits: 31337,
        devices: vec![DeviceStats {
            kind: DeviceKind::Vsock,
            index: 0,
            queue_notifications: vec![4, 9, 0],
            interrupts: 12,
            bytes: Some(DeviceBytes { rx: 300, tx: 200 }),
        }],
    };
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        assert_eq!(Request::parse(line.trim()), Ok(control::Command::Stats));
        (&stream)
            .write_all((Answer::stats(stats).to_line() + "\n").as_bytes())
            .unwrap();
    })
}

#[test]
fn monitor_scrape_shows_a_running_pod() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let stand_in = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    let pod_dir = fake_pod(&run_dir, "k8s.io", "pod1", &[stand_in.0.id()]);
    let vmm = fake_control_socket(&pod_dir.join(hull_protocol::vm::pod_files::CONTROL));
    // A hybrid vsock socket whose agent takes the connection and never answers.
    let agent = UnixListener::bind(pod_dir.join(hull_protocol::vm::pod_files::VSOCK)).unwrap();
    let hung_agent = std::thread::spawn(move || {
        let (mut conn, _) = agent.accept().unwrap();
        conn.write_all(b"OK 1024\n").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
    });
    let cfg = config(dir.path(), &run_dir);
    let mut monitor = Reaped(
        Command::new(MONITOR)
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    BufReader::new(monitor.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .expect("ready line")
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    let asked = std::time::Instant::now();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    let took = asked.elapsed();
    vmm.join().unwrap();
    hung_agent.join().unwrap();
    println!("{page}");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(page.contains("\nhull_pods 1\n"));
    let pid = stand_in.0.id();
    let rss_line = page
        .lines()
        .find(|l| l.starts_with(&format!(
            "hull_process_resident_memory_bytes{{namespace=\"k8s.io\",pod=\"pod1\",process=\"sleep\",pid=\"{pid}\"}} "
        )))
        .expect("an RSS sample of the stand-in");
    let rss: f64 = rss_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rss > 0.0);
    assert!(page.contains("mode=\"user\"}"));
    assert!(page.contains("hull_vmm_up{namespace=\"k8s.io\",pod=\"pod1\"} 1\n"));
    assert!(page.contains("hull_vmm_vcpus{namespace=\"k8s.io\",pod=\"pod1\"} 2\n"));
    assert!(
        page.contains("hull_vmm_guest_memory_bytes{namespace=\"k8s.io\",pod=\"pod1\"} 268435456\n")
    );
    assert!(page.contains("# TYPE hull_vmm_vcpu_exits_total counter\n"));
    assert!(page.contains("hull_vmm_vcpu_exits_total{namespace=\"k8s.io\",pod=\"pod1\"} 31337\n"));
    assert!(page.contains(
        "hull_vmm_device_notifications_total{namespace=\"k8s.io\",pod=\"pod1\",device=\"vsock0\",queue=\"tx\"} 9\n"
    ));
    assert!(page.contains(
        "hull_vmm_device_bytes_total{namespace=\"k8s.io\",pod=\"pod1\",device=\"vsock0\",direction=\"rx\"} 300\n"
    ));
    // The hung agent costs its own figures and no more than the scrape's deadline.
    assert!(page.contains("hull_guest_up{namespace=\"k8s.io\",pod=\"pod1\"} 0\n"));
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 404"), "{page}");
}
