//! Host tier: drives the shim (with its `fake` test-double backend, which runs
//! containers as chrooted host processes) through a real containerd of its own,
//! with its own root, state, sockets and config under a temporary directory.
//! Needs root, `containerd`, `ctr`, `umoci` and `/bin/busybox` (scripts/setup.sh
//! installs them); fails with a clear message when one is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hull_tests::containerd::{assert_task_lifecycle, ctr_events};

// The VM backend against stand-ins for hull-vmm, virtiofsd and the agent:
// one that never answers, one that floods OOM events and the console.
#[path = "host_shim/hostile_agent.rs"]
mod hostile_agent;
#[path = "host_shim/hung_agent.rs"]
mod hung_agent;
#[path = "host_shim/standin.rs"]
mod standin;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const RUNTIME: &str = "io.containerd.hull.v2";
const IMAGE: &str = "hull/busybox:latest";

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "host tier: `{tool}` is not installed (run scripts/setup.sh)"
    );
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private containerd with the shim on its PATH; everything goes on drop.
struct Lab {
    dir: PathBuf,
    containerd: Child,
}

impl Lab {
    /// A containerd whose shim uses the `fake` backend.
    fn start(name: &str) -> Self {
        Self::start_with(name, "fake", "")
    }

    /// A containerd whose shim uses `backend`, with `config` added to its Hull config.
    fn start_with(name: &str, backend: &str, config: &str) -> Self {
        assert!(
            nix_is_root(),
            "host tier: needs root to run containerd and mount rootfs"
        );
        for tool in ["containerd", "ctr", "umoci", "timeout"] {
            require(tool);
        }
        assert!(
            Path::new("/bin/busybox").is_file(),
            "host tier: /bin/busybox is missing (apt busybox-static)"
        );
        let dir = PathBuf::from(format!("/tmp/hull-shim-test.{}.{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(SHIM, dir.join("bin/containerd-shim-hull-v2")).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("hull.toml"),
            format!("run_dir = \"{d}/run\"\n{config}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let path = format!("{d}/bin:{}", std::env::var("PATH").unwrap_or_default());
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("HULL_SHIM_BACKEND", backend)
            .env("HULL_CONFIG", dir.join("hull.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let lab = Self { dir, containerd };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !lab.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                lab.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.import_busybox();
        lab
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Builds a busybox OCI image offline with umoci and imports it.
    fn import_busybox(&self) {
        let img = self.dir.join("img");
        let bundle = self.dir.join("img-bundle");
        let image = format!("{}:latest", img.display());
        run(Command::new("umoci").args(["init", "--layout"]).arg(&img));
        run(Command::new("umoci").args(["new", "--image", &image]));
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image", &image])
            .arg(&bundle));
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "sleep", "true", "ls", "wc", "head", "md5sum",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle));
        run(Command::new("umoci").args(["config", "--image", &image, "--config.env", "PATH=/bin"]));
        let tar = self.dir.join("img.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&img)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let out = self.ctr(&[
            "images",
            "import",
            "--base-name",
            "hull/busybox",
            tar.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `ctr` against this containerd, bounded in time.
    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_stdin(args, None)
    }

    fn ctr_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        self.ctr_in("hulltest", args, input)
    }

    /// Runs `ctr` in containerd namespace `ns`.
    fn ctr_in(&self, ns: &str, args: &[&str], input: Option<&[u8]>) -> Output {
        let sock = self.dir.join("c.sock");
        hull_tests::containerd::ctr(30, &["-a", sock.to_str().unwrap(), "-n", ns], args, input)
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run -d [OPTIONS] IMAGE ID sleep 100` with the Hull runtime; its output.
    fn run_sleeper(&self, id: &str, options: &[&str]) -> String {
        self.ctr_ok(&sleeper(id, options))
    }

    /// Waits up to 10 s until `ctr task ls` shows a STOPPED task; `what` names it in the failure.
    fn wait_stopped(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ctr_ok(&["task", "ls"]).contains("STOPPED") {
            assert!(
                Instant::now() < deadline,
                "{what} did not stop\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of shims serving this containerd.
    fn shim_pids(&self) -> Vec<i32> {
        let needle = format!("{}/c.sock", self.dir.display());
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim-hull-v2") && c.contains(&needle)
                })
            })
            .collect()
    }

    /// Processes whose root directory is inside this lab (the fake backend's containers).
    fn processes_rooted_here(&self) -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/root"))
                    .is_ok_and(|r| r.starts_with(&self.dir))
            })
            .collect()
    }

    /// Mount points under the pods' run directory.
    fn pod_mounts(&self) -> Vec<String> {
        let run = format!("{}/run", self.dir.display());
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&run))
            .collect()
    }

    /// Pod directories under the run directory.
    fn pod_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("run"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    /// Asserts no shim, pod mount or pod directory is left, once teardown had 10 s: containerd
    /// may list a task as gone before the `delete` it runs for a dead shim has finished.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(self.shim_pids().is_empty()
            && self.pod_mounts().is_empty()
            && self.pod_dirs().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.shim_pids(), Vec::<i32>::new(), "shims left running");
        assert_eq!(
            self.pod_mounts(),
            Vec::<String>::new(),
            "mounts left; containerd's log:\n{}",
            self.log()
        );
        let left = self.pod_dirs();
        assert!(left.is_empty(), "pod directories left: {left:?}");
    }
}

/// The arguments of `ctr run -d [OPTIONS] IMAGE ID sleep 100` with the Hull runtime.
fn sleeper<'a>(id: &'a str, options: &[&'a str]) -> Vec<&'a str> {
    [
        &["run", "-d"][..],
        options,
        &["--runtime", RUNTIME, IMAGE, id, "sleep", "100"],
    ]
    .concat()
}

/// Runs the shell command `cmd` in a terminal of its own (script(1)), bounded in time.
fn in_terminal(cmd: &str) -> Output {
    Command::new("timeout")
        .args(["30", "script", "-qec", cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script")
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in self.shim_pids() {
            let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = args
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            // A killed shim leaves its socket behind.
            if let Some(socket) = args.iter().skip_while(|a| *a != "-socket").nth(1) {
                let _ = std::fs::remove_file(socket.trim_start_matches("unix://"));
            }
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        // Container processes of killed shims run chrooted under the lab directory;
        // they go before the unmounts (a lazily unmounted root reads as "/").
        for pid in self.processes_rooted_here() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let prefix = format!("{}/", self.dir.display());
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn ctr_runs_containers_through_the_shim() {
    let lab = Lab::start("run");
    let base = ["run", "--rm", "--runtime", RUNTIME, IMAGE];

    // Output and exit codes.
    let out = lab.ctr(&[&base[..], &["c1", "echo", "hi"]].concat());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "{}",
        lab.log()
    );
    assert_eq!(out.status.code(), Some(0));
    let out = lab.ctr(&[&base[..], &["c2", "sh", "-c", "exit 7"]].concat());
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Stdin in, and a large stdout out, intact.
    let out = lab.ctr_stdin(&[&base[..], &["c3", "cat"]].concat(), Some(b"a line\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a line\n");
    let out = lab.ctr(
        &[
            &base[..],
            &[
                "c5",
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8; do cat /bin/busybox; done",
            ],
        ]
        .concat(),
    );
    // Config from containerd's runtime options, io.hull.* annotations validated.
    let config = lab.dir.join("h3.toml");
    let run_dir = lab.dir.join("run");
    std::fs::write(&config, format!("run_dir = {run_dir:?}\nvcpus = 3\n")).unwrap();
    let config = config.to_str().unwrap();
    lab.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        config,
        "--annotation",
        "io.hull.memory_mib=1024",
        IMAGE,
        "c6",
        "true",
    ]);
    assert!(
        lab.log().contains("vcpus=3 memory_mib=1024"),
        "{}",
        lab.log()
    );
    for bad in ["io.hull.kernel=/x", "io.hull.vcpu=2", "io.hull.vcpus=0"] {
        let out = lab.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            bad,
            IMAGE,
            "c7",
            "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && (err.contains("io.hull.") || err.contains("vcpus")),
            "{bad}: {err}"
        );
        lab.ctr(&["containers", "rm", "c7"]);
    }
    lab.assert_clean();

    // Output to file:// and to a binary:// logger instead of FIFOs.
    let file = lab.dir.join("out/c8.log");
    let logged_run = |id: &str, uri: &str, script: &str| {
        let run = ["run", "--rm", "--log-uri", uri, "--runtime", RUNTIME, IMAGE];
        lab.ctr_ok(&[&run[..], &[id, "sh", "-c", script]].concat())
    };
    let uri = format!("file://{}", file.display());
    logged_run("c8", &uri, "echo to-file; echo err-to-file >&2");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("to-file\n") && text.contains("err-to-file\n"),
        "{text}"
    );
    let logger = lab.dir.join("logger.sh");
    let logged = lab.dir.join("logged");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\nexec 5>&-\ncat <&3 >{0}.out & cat <&4 >{0}.err\nwait\n",
            logged.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}", logger.display());
    logged_run("c9", &uri, "echo to-binary; echo err-to-binary >&2");
    let read = |ext: &str| std::fs::read_to_string(format!("{}.{ext}", logged.display()));
    assert_eq!(read("out").unwrap(), "to-binary\n");
    assert_eq!(read("err").unwrap(), "err-to-binary\n");

    let busybox = std::fs::read("/bin/busybox").unwrap();
    assert!(
        out.stdout == busybox.repeat(8),
        "16 MB of stdout must arrive intact"
    );
    lab.assert_clean();
}

#[test]
fn task_operations_and_events_in_order() {
    let lab = Lab::start("ops");
    let events_log = lab.dir.join("events.txt");
    let sock = lab.dir.join("c.sock");
    let mut events = ctr_events(
        &["-a", sock.to_str().unwrap(), "-n", "hulltest"],
        &events_log,
    )
    .spawn()
    .expect("ctr events");
    std::thread::sleep(Duration::from_millis(300));
    lab.run_sleeper("long", &[]);
    let out = lab.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "long",
        "echo",
        "from-exec",
    ]);
    assert_eq!(out, "from-exec\n");
    // stdin of an exec reaches it, and its end (CloseIO) ends the exec.
    let out = lab.ctr_stdin(
        &["task", "exec", "--exec-id", "e2", "long", "cat"],
        Some(b"piped into exec\n"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped into exec\n");
    assert!(out.status.success());
    let ps = lab.ctr_ok(&["task", "ps", "long"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");
    let metrics = lab.ctr_ok(&["task", "metrics", "long"]);
    assert!(metrics.contains("pids.current"), "{metrics}");
    lab.ctr_ok(&["task", "pause", "long"]);
    assert!(lab.ctr_ok(&["task", "ls"]).contains("PAUSED"));
    lab.ctr_ok(&["task", "resume", "long"]);
    lab.ctr_ok(&["task", "kill", "-s", "TERM", "long"]);
    lab.wait_stopped("task");
    lab.ctr_ok(&["task", "delete", "long"]);
    lab.ctr_ok(&["containers", "rm", "long"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_task_lifecycle(&mut events, &events_log, 2);
    lab.assert_clean();
}

#[test]
fn containers_of_one_pod_share_one_shim() {
    let lab = Lab::start("pod");
    let vol = lab.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("f"), "in a volume").unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:ro", vol.display());
    for id in ["p1", "p2"] {
        let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=pod1"];
        lab.run_sleeper(id, &[&pod[..], &["--mount", &mount]].concat());
    }
    assert_eq!(lab.shim_pids().len(), 1, "one shim per pod");
    let shared = lab.dir.join("run/hulltest/pod1/shared");
    assert!(shared.join("p1/bin/busybox").exists() && shared.join("p2/bin/busybox").exists());
    let in_share = shared.join(".volumes/p1/0");
    assert_eq!(
        std::fs::read_to_string(in_share.join("f")).unwrap(),
        "in a volume"
    );
    assert!(
        std::fs::write(in_share.join("g"), "x").is_err(),
        "ro volume, enforced on the host"
    );
    for id in ["p1", "p2"] {
        lab.ctr_ok(&["task", "kill", "-s", "KILL", id]);
    }
    std::thread::sleep(Duration::from_millis(300));
    lab.ctr_ok(&["task", "delete", "p1"]);
    assert_eq!(
        lab.shim_pids().len(),
        1,
        "the shim stays while the pod has a container"
    );
    lab.ctr_ok(&["task", "delete", "p2"]);
    lab.ctr_ok(&["containers", "rm", "p1", "p2"]);
    lab.assert_clean();
}

/// Per-mount options of the mount at `path` (from /proc/self/mountinfo).
fn mount_options(path: &Path) -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&path.to_str().unwrap()))
        .map(|f| f[5].to_string())
        .unwrap_or_else(|| panic!("{} is not a mount point", path.display()))
}

#[test]
fn one_container_id_in_two_namespaces_gets_two_private_pods() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::start("ns");
    let tar = lab.dir.join("img.tar");
    for ns in ["a", "b"] {
        let import = ["images", "import", "--base-name", "hull/busybox"];
        let out = lab.ctr_in(ns, &[&import[..], &[tar.to_str().unwrap()]].concat(), None);
        assert!(out.status.success(), "import in {ns}: {out:?}");
        let out = lab.ctr_in(ns, &sleeper("web", &[]), None);
        assert!(
            out.status.success(),
            "ctr -n {ns} run ... web: {out:?}\n{}",
            lab.log()
        );
    }
    assert_eq!(lab.shim_pids().len(), 2, "one shim per namespace's pod");
    for ns in ["a", "b"] {
        let pod = lab.dir.join("run").join(ns).join("web");
        assert!(pod.join("shared/web/bin/busybox").exists(), "{ns}");
        let mode = std::fs::metadata(&pod).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "pod directory of {ns}");
        let share = mount_options(&pod.join("shared"));
        assert!(share.starts_with("ro,") && share.contains("nosuid") && share.contains("nodev"));
        let root = mount_options(&pod.join("shared/web"));
        assert!(root.contains("nosuid") && root.contains("nodev"), "{root}");
    }
    let run_mode = std::fs::metadata(lab.dir.join("run"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(run_mode & 0o022, 0, "run_dir is writable by root only");
    for ns in ["a", "b"] {
        // The kill may race the exit; the delete must succeed once the exit
        // is handled (within 10 s, however loaded the host).
        lab.ctr_in(ns, &["task", "kill", "-s", "KILL", "web"], None);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = lab.ctr_in(ns, &["task", "delete", "web"], None);
            if out.status.success() {
                break;
            }
            let running = String::from_utf8_lossy(&out.stderr).contains("must be stopped");
            assert!(
                running && std::time::Instant::now() < deadline,
                "{ns} task delete web: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(lab
            .ctr_in(ns, &["containers", "rm", "web"], None)
            .status
            .success());
    }
    lab.assert_clean();
}

#[test]
fn delete_subcommand_cleans_up_after_a_killed_shim() {
    let lab = Lab::start("dead");
    lab.run_sleeper("d1", &[]);
    let shims = lab.shim_pids();
    assert_eq!(shims.len(), 1);
    let tasks = lab.ctr_ok(&["task", "ls"]);
    let reported: i32 = tasks
        .lines()
        .find(|l| l.starts_with("d1"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no pid for d1 in {tasks}"));
    assert_eq!(
        reported, shims[0],
        "the task pid containerd sees is the shim's, never one the backend chose"
    );
    let rooted = lab.processes_rooted_here();
    assert_eq!(rooted.len(), 1, "{rooted:?}");
    let task_pid = rooted[0];
    let recorded = std::fs::read_to_string(lab.dir.join("run/hulltest/d1/host-pids")).unwrap();
    assert!(recorded.starts_with(&format!("{task_pid} ")), "{recorded}");
    let bundle = lab
        .dir
        .join("state/io.containerd.runtime.v2.task/hulltest/d1");
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists());
    let _ = Command::new("kill")
        .args(["-9", &shims[0].to_string()])
        .status();
    // containerd notices the dead shim and runs `containerd-shim-hull-v2 delete`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.ctr_ok(&["task", "ls"]).contains("d1") {
        assert!(
            Instant::now() < deadline,
            "task not cleaned up: {}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.ctr_ok(&["containers", "rm", "d1"]);
    lab.assert_clean();
    // containerd may list the task as gone before `delete` has finished.
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!socket.exists(), "the dead shim's socket is removed");
    // Gone, or a zombie waiting for its new parent to reap it.
    let alive = || hull_tests::procs::alive(&task_pid.to_string());
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(),
        "the dead shim's container process {task_pid} is killed"
    );
}

#[test]
fn ctr_run_t_gives_a_terminal() {
    require("script");
    let lab = Lab::start("tty");
    let ctr = format!(
        "ctr -a {}/c.sock -n hulltest run --rm -t --runtime {RUNTIME} {IMAGE} t1 \
         sh -c 'test -t 0 && test -t 1 && echo on-a-tty; exit 3'",
        lab.dir.display()
    );
    // ctr -t needs a terminal of its own: script(1) provides one.
    let out = in_terminal(&ctr);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("on-a-tty"), "{text}\n{}", lab.log());
    assert_eq!(out.status.code(), Some(3), "{text}");

    // An exec with a terminal (ctr also resizes it) in a running container.
    lab.run_sleeper("t2", &[]);
    let exec = format!(
        "ctr -a {}/c.sock -n hulltest task exec -t --exec-id e1 t2 \
         sh -c 'test -t 0 && echo exec-on-a-tty'",
        lab.dir.display()
    );
    let out = in_terminal(&exec);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("exec-on-a-tty") && out.status.success(),
        "{text}\n{}",
        lab.log()
    );
    lab.ctr_ok(&["task", "kill", "-s", "KILL", "t2"]);
    lab.wait_stopped("t2");
    lab.ctr_ok(&["task", "delete", "t2"]);
    lab.ctr_ok(&["containers", "rm", "t2"]);
    lab.assert_clean();
}
