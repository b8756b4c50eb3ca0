//! Host integration tests of hull-agent: the real binary on a Unix socket
//! creating real containers (namespaces, cgroup v2) from OCI specs with a
//! busybox rootfs. They need root and a cgroup v2 hierarchy with controllers,
//! so they are ignored by default and run in the lab:
//! `tests/lab/lab.sh -- target/debug/deps/lab_agent-<hash> --ignored --test-threads=1`.
//! `HULL_AGENT_BIN` overrides the agent binary; `HULL_TEST_CGROUP_ROOT` overrides the cgroup used (default /sys/fs/cgroup/hull-test).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use serde_json::{json, Value};

const LAB: &str = "lab: needs root and a cgroup v2 hierarchy (make test-lab)";
const BUSYBOX: &str = "/bin/busybox";

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// One agent process with its own directory, socket and cgroup root.
struct Agent {
    child: Child,
    client: AgentClient,
    dir: PathBuf,
    cgroup_root: PathBuf,
}

impl Agent {
    fn start(name: &str) -> Agent {
        let dir = std::env::temp_dir().join(format!("hull-agent-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup_base = std::env::var("HULL_TEST_CGROUP_ROOT")
            .unwrap_or_else(|_| "/sys/fs/cgroup/hull-test".into());
        let cgroup_root = PathBuf::from(cgroup_base).join(name);
        let sock = dir.join("agent.sock");
        // HULL_AGENT_BIN: a snapshot of the binary, so rebuilding on the host
        // does not pull it from under a running lab.
        let bin = std::env::var("HULL_AGENT_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hull-agent").into());
        let mut child = Command::new(bin)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--containers-root")
            .arg(&dir)
            .arg("--cgroup-root")
            .arg(&cgroup_root)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("HULL_AGENT_LOG", "debug")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start hull-agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with(hull_protocol::READY_MARKER),
            "agent said {line:?}"
        );
        let stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let client = hull_protocol::rpc::Client::new(stream, "agent").unwrap();
        Agent {
            child,
            client: AgentClient::new(client),
            dir,
            cgroup_root,
        }
    }

    /// A fresh busybox rootfs for container `id`.
    fn rootfs(&self, id: &str) -> PathBuf {
        let root = self.dir.join(id).join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap().stdout;
        for applet in String::from_utf8(list).unwrap().lines() {
            if applet != "busybox" {
                let _ = symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        root
    }

    fn create(&self, id: &str, spec: &Value, stdio: Stdio_) -> Result<u32, ttrpc::Error> {
        let rootfs = self.rootfs(id);
        self.create_at(id, spec, &rootfs, stdio)
    }

    fn create_at(
        &self,
        id: &str,
        spec: &Value,
        rootfs: &Path,
        stdio: Stdio_,
    ) -> Result<u32, ttrpc::Error> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.oci_spec_json = serde_json::to_vec(spec).unwrap();
        req.rootfs = rootfs.to_string_lossy().into();
        req.stdio = Some(stdio.0).into();
        self.client.create_container(ctx(), &req).map(|r| r.pid)
    }

    fn start_c(&self, id: &str) {
        let mut req = StartContainerRequest::new();
        req.container_id = id.into();
        self.client.start_container(ctx(), &req).unwrap();
    }

    fn wait(&self, id: &str, exec: &str) -> u32 {
        let mut req = WaitProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        self.client.wait_process(ctx(), &req).unwrap().exit_status
    }

    fn signal(&self, id: &str, signal: i32) {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.signal = signal as u32;
        self.client.signal_process(ctx(), &req).unwrap();
    }

    fn remove(&self, id: &str) {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        self.client.remove_container(ctx(), &req).unwrap();
    }

    fn pids(&self, id: &str) -> Result<Vec<u32>, ttrpc::Error> {
        let mut req = ListPidsRequest::new();
        req.container_id = id.into();
        self.client.list_pids(ctx(), &req).map(|r| r.pids)
    }

    /// Creates, starts and waits for a container; returns (status, stdout, stderr).
    fn run(&self, id: &str, spec: &Value) -> (u32, String, String) {
        let io = Io::new(&self.dir, id, false);
        self.create(id, spec, io.stdio()).unwrap();
        let (out, err) = io.collect();
        self.start_c(id);
        let status = self.wait(id, "");
        let (out, err) = (out.join().unwrap(), err.unwrap().join().unwrap());
        self.remove(id);
        (status, text(&out), text(&err))
    }

    fn version(&self) -> Result<VersionResponse, ttrpc::Error> {
        let mut req = VersionRequest::new();
        req.api_version = hull_protocol::API_VERSION.into();
        self.client.version(ctx(), &req)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test leaves containers running: kill them and their cgroups.
        for entry in std::fs::read_dir(&self.cgroup_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let procs =
                std::fs::read_to_string(entry.path().join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2) has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
            let _ = std::fs::remove_dir(entry.path());
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `Stdio` message (named apart from std's).
struct Stdio_(hull_protocol::agent::Stdio);

/// Listening sockets the agent dials for a process's stdio.
struct Io {
    stdin: UnixListener,
    stdout: UnixListener,
    stderr: Option<UnixListener>,
    paths: [PathBuf; 3],
}

impl Io {
    fn new(dir: &Path, name: &str, terminal: bool) -> Io {
        let p = |s: &str| dir.join(format!("{name}.{s}.sock"));
        let paths = [p("in"), p("out"), p("err")];
        for path in &paths {
            let _ = std::fs::remove_file(path);
        }
        Io {
            stdin: UnixListener::bind(&paths[0]).unwrap(),
            stdout: UnixListener::bind(&paths[1]).unwrap(),
            stderr: (!terminal).then(|| UnixListener::bind(&paths[2]).unwrap()),
            paths,
        }
    }

    fn stdio(&self) -> Stdio_ {
        let ep = |p: &Path| {
            let mut e = StreamEndpoint::new();
            e.set_unix_path(p.to_string_lossy().into());
            Some(e).into()
        };
        let mut s = hull_protocol::agent::Stdio::new();
        s.stdin = ep(&self.paths[0]);
        if self.stderr.is_some() {
            s.stdout = ep(&self.paths[1]);
            s.stderr = ep(&self.paths[2]);
        }
        Stdio_(s)
    }

    /// Accepts stdin (closed at once: EOF) and reads stdout/stderr to EOF in threads.
    fn collect(self) -> (JoinHandle<Vec<u8>>, Option<JoinHandle<Vec<u8>>>) {
        let (stdin, _) = self.stdin.accept().unwrap();
        stdin.shutdown(std::net::Shutdown::Write).unwrap();
        let read_all = |l: UnixListener| {
            let (mut s, _) = l.accept().unwrap();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                s.read_to_end(&mut v).unwrap();
                v
            })
        };
        (read_all(self.stdout), self.stderr.map(read_all))
    }

    /// For a terminal: the one stream, both ways.
    fn pty(self) -> UnixStream {
        self.stdin.accept().unwrap().0
    }
}

/// A spec close to containerd's default for `args`.
fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
                "effective": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
                "permitted": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "hull-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "rootfsPropagation": "rprivate"
        }
    })
}

fn sh(script: &str) -> Value {
    spec(&["sh", "-c", script])
}

fn rpc_message(e: ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message,
        other => format!("{other:?}"),
    }
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn exit_codes_output_and_pid1() {
    let a = Agent::start("exit");
    let (status, out, err) = a.run("c1", &sh("echo hi; echo oops >&2; echo pid=$$; exit 7"));
    assert_eq!(
        (status, out.as_str(), err.as_str()),
        (7, "hi\npid=1\n", "oops\n")
    );
    let (status, out, _) = a.run("c2", &spec(&["true"]));
    assert_eq!((status, out.as_str()), (0, ""));
    let _ = LAB;
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn hostname_and_env() {
    let a = Agent::start("env");
    let mut s = sh("hostname; cat /proc/sys/kernel/domainname; echo $FOO; id -u");
    s["hostname"] = json!("box-one");
    s["domainname"] = json!("example.org");
    s["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("FOO=bar baz"));
    let (status, out, _) = a.run("c1", &s);
    assert_eq!(
        (status, out.as_str()),
        (0, "box-one\nexample.org\nbar baz\n0\n")
    );
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn signals_reach_the_process_and_death_by_signal_is_128_plus_n() {
    let a = Agent::start("signal");
    let io = Io::new(&a.dir, "t", false);
    a.create(
        "trap",
        &sh("trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.1; done"),
        io.stdio(),
    )
    .unwrap();
    let (out, _) = io.collect();
    a.start_c("trap");
    std::thread::sleep(Duration::from_millis(1500));
    a.signal("trap", libc::SIGTERM);
    assert_eq!(a.wait("trap", ""), 3);
    assert_eq!(text(&out.join().unwrap()), "ready\ngot TERM\n");
    a.remove("trap");

    let io = Io::new(&a.dir, "k", false);
    a.create("kill", &spec(&["sleep", "1000"]), io.stdio())
        .unwrap();
    let _streams = io.collect();
    a.start_c("kill");
    a.signal("kill", libc::SIGKILL);
    assert_eq!(a.wait("kill", ""), 128 + 9);
    a.remove("kill");
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn memory_limit_oom_kills_with_an_event() {
    let a = Agent::start("oom");
    let mut s = sh("a=aaaaaaaaaaaaaaaa; while true; do a=$a$a; done");
    s["linux"]["resources"]["memory"] = json!({"limit": 32 << 20, "swap": 32 << 20});
    let (status, _, _) = a.run("hog", &s);
    assert_eq!(status, 137, "killed by SIGKILL");
    let mut req = OomEventRequest::new();
    req.timeout_ms = 5000;
    assert_eq!(a.client.oom_event(ctx(), &req).unwrap().container_id, "hog");
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn pids_limit_stops_forks() {
    let a = Agent::start("pids");
    // busybox sh gives up at the first fork that fails; PID 1 leaving then
    // ends the whole PID namespace.
    let mut s = sh("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done; wait");
    s["linux"]["resources"]["pids"] = json!({"limit": 5});
    let (status, _, err) = a.run("forky", &s);
    assert_ne!(status, 0);
    assert!(err.contains("fork"), "stderr: {err}");
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn readonly_rootfs_and_masked_paths() {
    let a = Agent::start("ro");
    let mut s = sh("touch /newfile; echo touch=$?; cat /proc/kcore | wc -c; ls /sys/firmware | wc -l; echo x > /proc/sys/kernel/hostname; echo sys=$?");
    s["root"]["readonly"] = json!(true);
    let (status, out, err) = a.run("c1", &s);
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(out, "touch=1\n0\n0\nsys=1\n");
    assert!(err.contains("Read-only file system"), "stderr: {err}");
    assert!(!a.dir.join("c1/rootfs/newfile").exists());
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn exec_sees_the_same_filesystem_and_hostname() {
    let a = Agent::start("exec");
    let mut s = sh("echo hello > /tmp/marker; sleep 1000");
    s["hostname"] = json!("exec-host");
    let io = Io::new(&a.dir, "init", false);
    a.create("c1", &s, io.stdio()).unwrap();
    let _init = io.collect();
    a.start_c("c1");
    std::thread::sleep(Duration::from_millis(1000));
    let io = Io::new(&a.dir, "exec", false);
    let mut req = ExecProcessRequest::new();
    req.container_id = "c1".into();
    req.exec_id = "e1".into();
    req.oci_process_json =
        serde_json::to_vec(&sh("cat /tmp/marker; hostname; cat /proc/1/comm; exit 5")["process"])
            .unwrap();
    req.stdio = Some(io.stdio().0).into();
    let client = a.client.clone();
    let exec = std::thread::spawn(move || client.exec_process(ctx(), &req).map(|r| r.pid));
    let (out, _) = io.collect();
    exec.join().unwrap().unwrap();
    assert_eq!(a.wait("c1", "e1"), 5);
    assert_eq!(text(&out.join().unwrap()), "hello\nexec-host\nsleep\n");
    a.signal("c1", libc::SIGKILL);
    assert_eq!(a.wait("c1", ""), 137);
    a.remove("c1");
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn hundred_mib_of_stdout_arrives_intact_before_the_exit_status() {
    let a = Agent::start("big");
    let (id, io) = ("c1", Io::new(&a.dir, "big", false));
    let s = sh("head -c 1048576 /dev/urandom > /chunk; i=0; while [ $i -lt 100 ]; do cat /chunk; i=$((i+1)); done");
    a.create(id, &s, io.stdio()).unwrap();
    let (out, _) = io.collect();
    a.start_c(id);
    let status = a.wait(id, "");
    let out = out.join().unwrap();
    assert_eq!(status, 0);
    let chunk = std::fs::read(a.dir.join("c1/rootfs/chunk")).unwrap();
    assert_eq!(out.len(), 100 << 20);
    assert!(
        out.chunks(1 << 20).all(|c| c == chunk.as_slice()),
        "stdout corrupted"
    );
    a.remove(id);
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn tty_gives_a_terminal_and_resize_changes_its_size() {
    let a = Agent::start("tty");
    let mut s = sh("sleep 2; tty; stty size");
    s["process"]["terminal"] = json!(true);
    let io = Io::new(&a.dir, "tty", true);
    let create = {
        let client = a.client.clone();
        let mut req = CreateContainerRequest::new();
        req.container_id = "c1".into();
        req.oci_spec_json = serde_json::to_vec(&s).unwrap();
        req.rootfs = a.rootfs("c1").to_string_lossy().into();
        req.stdio = Some(io.stdio().0).into();
        std::thread::spawn(move || client.create_container(ctx(), &req))
    };
    let mut pty = io.pty();
    create.join().unwrap().unwrap();
    a.start_c("c1");
    let mut req = ResizePtyRequest::new();
    req.container_id = "c1".into();
    req.rows = 42;
    req.cols = 123;
    a.client.resize_pty(ctx(), &req).unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pty.read_to_end(&mut v);
        v
    });
    assert_eq!(a.wait("c1", ""), 0);
    let out = text(&reader.join().unwrap());
    assert!(out.contains("/dev/pts/0"), "output: {out:?}");
    assert!(out.contains("42 123"), "output: {out:?}");
    a.remove("c1");
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn stats_report_memory_and_cpu_and_remove_leaves_nothing() {
    let a = Agent::start("stats");
    let io = Io::new(&a.dir, "s", false);
    let mut s = sh("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done; sleep 1000");
    s["linux"]["resources"]["pids"] = json!({"limit": 50});
    let pid = a.create("c1", &s, io.stdio()).unwrap();
    let (out, _) = io.collect();
    a.start_c("c1");
    let deadline = Instant::now() + Duration::from_secs(120);
    let stats = loop {
        let mut req = StatsRequest::new();
        req.container_id = "c1".into();
        let st = a.client.stats(ctx(), &req).unwrap();
        if st.cpu.usage_usec > 0 && st.memory.usage > 0 || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        stats.cpu.usage_usec > 0 && stats.memory.usage > 0,
        "{stats:?}"
    );
    assert!(stats.pids.current >= 1);
    assert_eq!(stats.pids.limit, 50);
    assert!(!stats.memory.stat.is_empty());
    let cgroup = a.cgroup_root.join("c1");
    assert!(cgroup.exists());
    a.remove("c1");
    let _ = out.join();
    assert!(!cgroup.exists(), "cgroup left behind");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(a.dir.to_str().unwrap()),
        "mounts left behind"
    );
    assert!(a.pids("c1").is_err());
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn bad_inputs_are_refused_and_the_agent_keeps_serving() {
    let a = Agent::start("bad");
    let none = || Stdio_(hull_protocol::agent::Stdio::new());
    let good = spec(&["true"]);

    // rootfs escaping through a symlink, through `..`, or missing
    symlink("/etc", a.dir.join("evil")).unwrap();
    let e = a
        .create_at("c1", &good, &a.dir.join("evil"), none())
        .unwrap_err();
    assert!(rpc_message(e).contains("escapes"));
    let dotdot = a.dir.join("x/../../etc");
    let e = a.create_at("c2", &good, &dotdot, none()).unwrap_err();
    assert!(rpc_message(e).contains(".."));
    let e = a
        .create_at("c3", &good, &a.dir.join("missing"), none())
        .unwrap_err();
    assert!(rpc_message(e).contains("cannot resolve"));

    // mount destination escaping through a symlink inside the rootfs
    let rootfs = a.rootfs("c4");
    symlink("../../../../../../../etc", rootfs.join("evil")).unwrap();
    let mut s = good.clone();
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"}));
    let e = a.create_at("c4", &s, &rootfs, none()).unwrap_err();
    assert!(rpc_message(e).contains("escapes"), "mount symlink escape");
    let mut s = good.clone();
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/../etc", "type": "tmpfs"}));
    assert!(rpc_message(a.create("c5", &s, none()).unwrap_err()).contains(".."));

    // unknown namespace type, malformed JSON, user namespace
    let mut s = good.clone();
    s["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "bogus"}));
    assert!(rpc_message(a.create("c6", &s, none()).unwrap_err()).contains("invalid OCI spec"));
    let mut req = CreateContainerRequest::new();
    req.container_id = "c7".into();
    req.oci_spec_json = b"{not json".to_vec();
    req.rootfs = a.rootfs("c7").to_string_lossy().into();
    assert!(
        rpc_message(a.client.create_container(ctx(), &req).unwrap_err())
            .contains("invalid OCI spec")
    );
    let mut s = good.clone();
    s["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    assert!(rpc_message(a.create("c8", &s, none()).unwrap_err()).contains("not supported"));
    let e = a.create("../x", &good, none()).unwrap_err();
    assert!(rpc_message(e).contains("container id \"../x\" is not valid"));

    // a huge frame and garbage on raw connections
    let sock = a.dir.join("agent.sock");
    let mut raw = UnixStream::connect(&sock).unwrap();
    let mut header = Vec::new();
    header.extend_from_slice(&(64u32 << 20).to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&[1, 0]);
    let _ = raw.write_all(&header);
    let _ = raw.write_all(&vec![0xab; 1 << 20]);
    drop(raw);
    let mut raw = UnixStream::connect(&sock).unwrap();
    let _ = raw.write_all(&[0xff; 4096]);
    drop(raw);

    // a mismatched major version is refused; the agent still serves
    let mut req = VersionRequest::new();
    req.api_version = "hull.agent.v2".into();
    assert!(rpc_message(a.client.version(ctx(), &req).unwrap_err()).contains("speaks"));
    let v = a.version().unwrap();
    assert_eq!(v.api_version, hull_protocol::API_VERSION);
    let (status, _, _) = a.run("ok", &spec(&["true"]));
    assert_eq!(status, 0);
    assert!(
        a.pids("c1").is_err(),
        "nothing registered for failed creates"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&a.cgroup_root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .collect();
    assert!(leftovers.is_empty(), "cgroups left: {leftovers:?}");
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn seccomp_profile_from_the_spec_is_enforced() {
    let a = Agent::start("seccomp");
    let mut s = sh("mkdir /tmp/denied; echo mkdir=$?; ls -d /tmp/denied; true");
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let (status, out, err) = a.run("c1", &s);
    assert_eq!((status, out.as_str()), (0, "mkdir=1\n"), "stderr: {err}");
    assert!(err.contains("Operation not permitted"), "stderr: {err}");
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn stdin_reaches_the_process_and_close_stdin_ends_it() {
    let a = Agent::start("stdin");
    let io = Io::new(&a.dir, "in", false);
    a.create("c1", &spec(&["cat"]), io.stdio()).unwrap();
    let (mut stdin, _) = io.stdin.accept().unwrap();
    let read_all = |l: UnixListener| {
        let (mut s, _) = l.accept().unwrap();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v
        })
    };
    let (out, _err) = (read_all(io.stdout), read_all(io.stderr.unwrap()));
    a.start_c("c1");
    stdin.write_all(b"hello through stdin\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let mut req = CloseStdinRequest::new();
    req.container_id = "c1".into();
    a.client.close_stdin(ctx(), &req).unwrap();
    assert_eq!(a.wait("c1", ""), 0);
    assert_eq!(text(&out.join().unwrap()), "hello through stdin\n");
    a.remove("c1");
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn sandbox_files_limits_and_destroy() {
    let mut a = Agent::start("sandbox");
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "pod1".into();
    req.hostname = "ignored-on-the-host".into();
    req.resolv_conf = b"nameserver 10.0.0.1\n".to_vec();
    req.hosts = b"127.0.0.1 localhost\n".to_vec();
    req.pids_limit = 100;
    a.client.create_sandbox(ctx(), &req).unwrap();
    let state = a.dir.join("state");
    let resolv = std::fs::read_to_string(state.join("resolv.conf")).unwrap();
    assert_eq!(resolv, "nameserver 10.0.0.1\n");
    let pids_max = std::fs::read_to_string(a.cgroup_root.join("pids.max")).unwrap();
    assert_eq!(pids_max.trim(), "100");

    let io = Io::new(&a.dir, "d", false);
    let pid = a
        .create("c1", &spec(&["sleep", "1000"]), io.stdio())
        .unwrap();
    let _streams = io.collect();
    a.start_c("c1");
    a.client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .unwrap();
    let status = a.child.wait().unwrap();
    assert!(
        status.success(),
        "agent exits after DestroySandbox: {status}"
    );
    assert!(
        !a.cgroup_root.join("c1").exists(),
        "container cgroup removed"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "container process gone"
    );
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn pause_freezes_the_container_and_resume_thaws_it() {
    let a = Agent::start("pause");
    let io = Io::new(&a.dir, "p", false);
    let s = sh("i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done");
    a.create("c1", &s, io.stdio()).unwrap();
    let (out, _) = io.collect();
    a.start_c("c1");
    let counter = a.dir.join("c1/rootfs/tmp/n");
    let read = || std::fs::read_to_string(&counter).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read().trim().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!read().trim().is_empty(), "the container never counted");

    let mut req = PauseContainerRequest::new();
    req.container_id = "c1".into();
    a.client.pause_container(ctx(), &req).unwrap();
    let events = std::fs::read_to_string(a.cgroup_root.join("c1/cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let frozen_at = read();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read(), frozen_at, "a paused container kept running");

    let mut req = ResumeContainerRequest::new();
    req.container_id = "c1".into();
    a.client.resume_container(ctx(), &req).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read() == frozen_at && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(read(), frozen_at, "a resumed container did not run again");

    let mut req = PauseContainerRequest::new();
    req.container_id = "nope".into();
    let err = rpc_message(a.client.pause_container(ctx(), &req).unwrap_err());
    assert!(err.contains("nope"), "{err}");
    a.remove("c1");
    let _ = out.join();
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn devices_listed_by_the_spec_replace_the_default_nodes() {
    // What `ctr run --privileged` sends: every device, the defaults among them.
    let a = Agent::start("devices");
    let mut s = sh("stat -c '%n %t:%T' /dev/full /dev/null /dev/ptmx /dev/loop-hull /dev/net/tun");
    s["linux"]["devices"] = json!([
        {"path": "/dev/full", "type": "c", "major": 1, "minor": 7, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/ptmx", "type": "c", "major": 5, "minor": 2, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/loop-hull", "type": "b", "major": 7, "minor": 0, "fileMode": 432, "uid": 0, "gid": 0},
        {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 438, "uid": 0, "gid": 0}
    ]);
    let (status, out, err) = a.run("c1", &s);
    assert_eq!(status, 0, "{out}{err}");
    assert_eq!(
        out,
        "/dev/full 1:7\n/dev/null 1:3\n/dev/ptmx 5:2\n/dev/loop-hull 7:0\n/dev/net/tun a:c8\n"
    );
}

/// `spec` with the namespace entry of `typ` joined by `path` instead of new.
fn with_ns_path(mut s: Value, typ: &str, path: &str) -> Value {
    let list = s["linux"]["namespaces"].as_array_mut().unwrap();
    list.retain(|ns| ns["type"] != typ);
    list.push(json!({"type": typ, "path": path}));
    s
}

#[test]
#[ignore = "lab: needs root and a cgroup v2 hierarchy (make test-lab)"]
fn namespace_paths_may_name_only_the_pods_containers() {
    let a = Agent::start("nspath");
    let none = || Stdio_(hull_protocol::agent::Stdio::new());
    let agent_net = format!("/proc/{}/ns/net", a.child.id());
    let sleeper = a.create("a", &sh("sleep 60"), none()).unwrap();
    a.start_c("a");
    // The agent's own namespaces, by every name, and a process that is not a
    // container's (the lab's init shares the agent's namespaces here, and
    // this test process is no container).
    let own_pid = format!("/proc/{}/ns/pid", std::process::id());
    for (i, (typ, path)) in [
        ("pid", "/proc/1/ns/pid"),
        ("pid", "/proc/self/ns/pid"),
        ("mount", "/proc/1/ns/mnt"),
        ("network", agent_net.as_str()),
        ("pid", own_pid.as_str()),
        ("network", "/etc/passwd"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad{i}");
        let e = a
            .create(&id, &with_ns_path(sh("true"), typ, path), none())
            .unwrap_err();
        let msg = rpc_message(e);
        assert!(
            msg.contains(&format!("namespace path {path}"))
                && (msg.contains("the agent's own")
                    || msg.contains("not a namespace of a container")),
            "{typ} {path}: {msg}"
        );
        assert!(a.pids(&id).is_err(), "{id} was registered");
    }
    // The right inode under the wrong type is not that namespace.
    let e = a
        .create(
            "wrongtype",
            &with_ns_path(sh("true"), "pid", &format!("/proc/{sleeper}/ns/net")),
            none(),
        )
        .unwrap_err();
    assert!(rpc_message(e).contains("not a namespace of a container"));
    // A namespace of a container of the pod can be joined.
    let theirs = format!("/proc/{sleeper}/ns/net");
    let (status, out, err) = a.run(
        "b",
        &with_ns_path(sh("readlink /proc/self/ns/net"), "network", &theirs),
    );
    let want = std::fs::read_link(&theirs).unwrap();
    assert_eq!(
        (status, out.trim()),
        (0, want.to_str().unwrap()),
        "stderr {err}"
    );
    a.signal("a", libc::SIGKILL);
    a.wait("a", "");
    a.remove("a");
}
