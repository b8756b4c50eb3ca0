//! Lab tier: Kubernetes pods through containerd's CRI plugin, driven the way
//! kubelet drives them (the `hull-cri-tests` client), for the runtime
//! handlers `runc` and `hull` in the same run. A private containerd
//! (tests/lab/containerd.sh) gets both handlers, a pause image built offline
//! (tests/images/pause.sh) as its `sandbox_image`, and a CNI bridge network
//! (Debian's containernetworking-plugins in /usr/lib/cni; the lab loads the
//! bridge and veth modules). Every scenario runs for both handlers and reports
//! each one's failures; a difference from runc is a Hull bug unless the
//! README's Kubernetes section documents it.
//!
//! Needs what `lab_shim` needs (guest kernel and image, `hull-vmm` and the
//! shim built: `cargo build -p hull-vmm -p containerd-shim-hull-v2`,
//! virtiofsd) and runc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hull_cri_tests::net::{http_get, netns_plumbing, netns_with, root_taps};
use hull_cri_tests::*;
use hull_tests::containerd::{containerd_sh, stop_containerd};
use hull_tests::{
    guest_initrd, guest_kernel_dir, repo_root as workspace, script_output, virtiofsd,
};

use fixture::{pod_processes, PodFixture};

/// A scenario's pod for one handler: its setup, start and teardown.
#[path = "lab_cri/fixture.rs"]
mod fixture;
/// `make bench`'s pod network benchmark (runc and Hull, pod↔node TCP).
#[path = "lab_cri/net_bench.rs"]
mod net_bench;
/// Pod sizing, host accounting, the measured per-pod overhead, a crashed container restarted.
#[path = "lab_cri/resources.rs"]
mod resources;
/// CRI Exec and Attach: the streaming calls (runc and Hull).
#[path = "lab_cri/streaming.rs"]
mod streaming;
/// UpdateContainerResources: the container's cgroup changes as asked.
#[path = "lab_cri/update.rs"]
mod update;

/// The runtime handlers every scenario runs for; `HULL_CRI_HANDLERS=hull`
/// (comma-separated) narrows a run while iterating on one.
fn handlers() -> Vec<String> {
    match std::env::var("HULL_CRI_HANDLERS") {
        Ok(list) if !list.is_empty() => list.split(',').map(str::to_string).collect(),
        _ => vec!["runc".into(), "hull".into()],
    }
}
const IMAGE: &str = "docker.io/library/busybox:latest";
const PAUSE: &str = "localhost/hull-pause:latest";
/// Everything of this binary lives here: containerd's state, logs, volumes.
const BASE: &str = "/run/hull-lab-cri";
/// The shim's `run_dir`: short, as the pod's vsock listeners
/// (`<run_dir>/k8s.io/<64-hex sandbox id>/vsock.sock_<port>`) must fit in a
/// Unix socket address (108 bytes).
const RUN_DIR: &str = "/run/hcri";
/// The host cgroup (cgroupfs form, under the v2 root) kubelet would make per pod.
const CGROUP_ROOT: &str = "hull-lab-cri";
const CGROUP_FS: &str = "/sys/fs/cgroup";
/// MiB the shim adds to a pod's memory for the guest kernel and agent (its default).
const BASE_MEMORY_MIB: u64 = 128;
/// The CNI network's name (host-local keeps its leases under
/// `/var/lib/cni/networks/<name>`) and the MTU its bridge plugin gives pods.
const CNI_NETWORK: &str = "hull-lab";
const CNI_MTU: u32 = 1460;

/// Where the shim and hull-vmm under test are: `HULL_LAB_BIN_DIR` (see `lab_bin_dir`), else
/// this checkout's `target/<profile>`, the test's `deps/` parent.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    hull_tests::lab_bin_dir(exe.parent().unwrap().parent().unwrap())
}

extern "C" fn stop_at_exit() {
    stop_containerd(&Path::new(BASE).join("containerd"));
    let _ = std::fs::remove_dir(Path::new(CGROUP_FS).join(CGROUP_ROOT));
}

/// The private containerd with its CRI socket; tests take it one at a time.
fn cri() -> (std::sync::MutexGuard<'static, Cri>, PathBuf) {
    static ONE: OnceLock<Mutex<Cri>> = OnceLock::new();
    let cri = ONE.get_or_init(|| Mutex::new(start_containerd()));
    (
        cri.lock().unwrap_or_else(|e| e.into_inner()),
        Path::new(BASE).into(),
    )
}

fn start_containerd() -> Cri {
    for m in [
        "bridge",
        "veth",
        "tun",
        "sch_ingress",
        "cls_u32",
        "act_mirred",
    ] {
        assert!(
            Path::new("/sys/module").join(m).exists(),
            "kernel module {m} is not loaded: CNI's bridge plugin needs bridge and veth, \
             Hull's pod network tun, sch_ingress, cls_u32 and act_mirred (the lab loads \
             them, tests/lab/prepare.sh)"
        );
    }
    assert!(
        Path::new("/usr/lib/cni/bridge").is_file(),
        "no CNI plugins in /usr/lib/cni: apt-get install containernetworking-plugins (make setup)"
    );
    let bins = bin_dir();
    for b in ["hull-vmm", "containerd-shim-hull-v2"] {
        assert!(
            bins.join(b).is_file(),
            "no {b} in {bins:?}: cargo build -p hull-vmm -p containerd-shim-hull-v2"
        );
    }
    let (kernel, initrd) = (guest_kernel_dir().join("vmlinux"), guest_initrd());
    let base = Path::new(BASE);
    stop_at_exit();
    let _ = std::fs::remove_dir_all(base);
    let _ = std::fs::remove_dir_all(RUN_DIR);
    std::fs::create_dir_all(base.join("cni")).unwrap();
    let config = base.join("hull.toml");
    std::fs::write(
        &config,
        format!(
            "kernel = {:?}\ninitrd = {initrd:?}\nhull_vmm = {:?}\nvirtiofsd = {:?}\n\
             run_dir = {:?}\nmemory_mib = 256\nbase_memory_mib = {BASE_MEMORY_MIB}\n\
             max_memory_mib = 2048\nmax_vcpus = 4\ndebug = true\nwritable_layer = {:?}\n",
            kernel,
            bins.join("hull-vmm"),
            virtiofsd(),
            RUN_DIR,
            hull_tests::writable_layer(),
        ),
    )
    .unwrap();
    // Bridge + host-local (IPv4 and IPv6), an MTU of CNI's choosing, no
    // masquerading or port mapping (those need netfilter).
    std::fs::write(
        base.join("cni/10-hull-lab.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{CNI_NETWORK}","plugins":[{{"type":"bridge",
            "bridge":"hullcni0","isGateway":true,"ipMasq":false,"mtu":{CNI_MTU},
            "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.88.77.0/24"}}],
            [{{"subnet":"fd88:77::/64"}}]],"routes":[{{"dst":"0.0.0.0/0"}},{{"dst":"::/0"}}]}}}}]}}"#
        ),
    )
    .unwrap();
    let cri_toml = base.join("cri.toml");
    std::fs::write(
        &cri_toml,
        format!(
            "  sandbox_image = \"{PAUSE}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]\n  runtime_type = \"io.containerd.hull.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{}\"\n",
            base.join("cni").display()
        ),
    )
    .unwrap();
    let out = containerd_sh(
        "start",
        &base.join("containerd"),
        &[
            ("HULL_SHIM_DIR", bins.as_os_str()),
            ("HULL_CONFIG", config.as_os_str()),
            ("HULL_CTRD_CRI_EXTRA", cri_toml.as_os_str()),
        ],
    );
    assert!(
        out.status.success(),
        "containerd.sh start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: registers a plain function with no captured state, run once at exit.
    unsafe { libc::atexit(stop_at_exit) };
    let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for (name, script) in [
        ("docker.io/library/busybox", "tests/images/busybox.sh"),
        ("localhost/hull-pause", "tests/images/pause.sh"),
    ] {
        let tar = script_output(script, &[]);
        let out = Command::new("ctr")
            .args(["--address", &address, "-n", "k8s.io", "images", "import"])
            .args(["--base-name", name, &tar])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "import {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cri = Cri::connect(Path::new(&address)).expect("CRI socket");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(cri.image_present(IMAGE).unwrap() && cri.image_present(PAUSE).unwrap()) {
        assert!(
            Instant::now() < deadline,
            "CRI does not see the imported images"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("CRI runtime: {:?}", cri.version().unwrap());
    cri
}

/// Failures of one scenario, by handler; the test fails at the end if any.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn check(&mut self, handler: &str, ok: bool, what: impl std::fmt::Display) {
        println!("  [{handler}] {} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.0.push(format!("[{handler}] {what}"));
        }
    }

    fn result<T, E: std::fmt::Display>(
        &mut self,
        handler: &str,
        what: &str,
        r: std::result::Result<T, E>,
    ) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.check(handler, false, format!("{what}: {e}"));
                None
            }
        }
    }

    fn finish(self, shim_log: &str) {
        assert!(
            self.0.is_empty(),
            "failures:\n{}\nshim log (last lines):\n{shim_log}",
            self.0.join("\n")
        );
    }
}

/// The last lines of containerd's log, after its exit handlings that failed or were
/// retried (containerd 1.6 answers StopContainer and StopPodSandbox only once it has
/// handled the exit: these lines say why an answer came late).
fn shim_log() -> String {
    let all = std::fs::read_to_string(Path::new(BASE).join("containerd/containerd.log"))
        .unwrap_or_default();
    let lines: Vec<&str> = all.lines().collect();
    let retried: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("TaskExit event") && (l.contains("failed") || l.contains("ackOff")))
        .collect();
    format!(
        "exit handlings failed or retried ({}, the last 10):\n{}\nlast lines:\n{}",
        retried.len(),
        retried[retried.len().saturating_sub(10)..].join("\n"),
        lines[lines.len().saturating_sub(60)..].join("\n")
    )
}

fn exec(cri: &mut Cri, r: &mut Report, handler: &str, id: &str, cmd: &[&str]) -> ExecOutput {
    r.result(
        handler,
        &format!("ExecSync {cmd:?}"),
        cri.exec_sync(id, cmd, 60),
    )
    .unwrap_or(ExecOutput {
        stdout: String::new(),
        stderr: String::new(),
        exit_code: -1,
    })
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel, runc, CNI plugins (make test-lab)"]
fn lab_cri_pod_ready_exec_shared_namespaces_volume_logs_stats_and_grace() {
    let (mut cri, base) = cri();
    let mut r = Report::default();
    for handler in &handlers() {
        let handler = handler.as_str();
        let name = format!("share-{handler}");
        let mut fx = PodFixture::new(&base, handler, &name, false, None);
        let vol = base.join("volumes").join(&name);
        std::fs::create_dir_all(&vol).unwrap();
        let mounts = [(vol.as_path(), "/shared")];
        let server = container_config(
            "server",
            IMAGE,
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo pod-page > /www/index.html && echo line-one && \
                 echo line-two >&2 && echo from-server > /shared/file && exec httpd -f -p 127.0.0.1:8080 -h /www",
            ],
            &mounts,
            false,
            None,
        );
        let Some((pod, a, took)) = fx.start(&mut cri, &mut r, "start the pod", &server) else {
            continue;
        };
        println!(
            "[{handler}] pod start (RunPodSandbox+CreateContainer+StartContainer): {:.2} s",
            took.as_secs_f64()
        );
        let status = r.result(handler, "PodSandboxStatus", cri.pod_status(&pod));
        r.check(
            handler,
            status
                .as_ref()
                .is_some_and(|s| s.state == PodSandboxState::SandboxReady as i32),
            format!("pod ready: {:?}", status.as_ref().map(|s| s.state)),
        );
        let ip = status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        println!("[{handler}] pod IP {ip:?}");
        let client = container_config("client", IMAGE, &["sleep", "100000"], &mounts, false, None);
        let b = r
            .result(
                handler,
                "CreateContainer client",
                cri.create_container(&pod, &client, &fx.config),
            )
            .filter(|b| {
                r.result(handler, "StartContainer client", cri.start_container(b))
                    .is_some()
            });
        if let Some(b) = b.as_deref() {
            let st = r.result(handler, "ContainerStatus", cri.container_status(b));
            r.check(
                handler,
                st.is_some_and(|s| s.state == ContainerState::ContainerRunning as i32),
                "client running",
            );
            let h1 = exec(&mut cri, &mut r, handler, &a, &["hostname"]);
            let h2 = exec(&mut cri, &mut r, handler, b, &["hostname"]);
            r.check(
                handler,
                h1.stdout.trim() == name && h1.stdout == h2.stdout,
                format!(
                    "both containers have the pod's hostname: {:?} {:?}",
                    h1.stdout, h2.stdout
                ),
            );
            // The server may need a moment to listen.
            let mut page = String::new();
            for _ in 0..20 {
                page = exec(
                    &mut cri,
                    &mut r,
                    handler,
                    b,
                    &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
                )
                .stdout;
                if page.trim() == "pod-page" {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            r.check(
                handler,
                page.trim() == "pod-page",
                format!("client reaches the server on 127.0.0.1: {page:?}"),
            );
            let file = exec(&mut cri, &mut r, handler, b, &["cat", "/shared/file"]);
            r.check(
                handler,
                file.stdout.trim() == "from-server",
                format!("shared volume: {:?}", file.stdout),
            );
            let code = exec(
                &mut cri,
                &mut r,
                handler,
                b,
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
            );
            r.check(
                handler,
                (code.stdout.as_str(), code.stderr.as_str(), code.exit_code)
                    == ("out\n", "err\n", 3),
                format!("ExecSync output and exit code: {code:?}"),
            );
            let ipc = (
                exec(
                    &mut cri,
                    &mut r,
                    handler,
                    &a,
                    &["readlink", "/proc/self/ns/ipc"],
                )
                .stdout,
                exec(
                    &mut cri,
                    &mut r,
                    handler,
                    b,
                    &["readlink", "/proc/self/ns/ipc"],
                )
                .stdout,
            );
            r.check(
                handler,
                !ipc.0.is_empty() && ipc.0 == ipc.1,
                format!("one IPC namespace: {ipc:?}"),
            );
        }
        let log = std::fs::read_to_string(fx.logs.join("server.log")).unwrap_or_default();
        let lines = log_lines(&log);
        r.check(
            handler,
            lines.contains(&("stdout".into(), "line-one".into()))
                && lines.contains(&("stderr".into(), "line-two".into())),
            format!("CRI log lines: {lines:?}"),
        );
        if let Some(st) = r.result(handler, "ContainerStats", cri.container_stats(&a)) {
            let mem = st.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
            let cpu = st
                .cpu
                .and_then(|c| c.usage_core_nano_seconds)
                .map(|v| v.value);
            r.check(
                handler,
                mem.unwrap_or(0) > 0 && cpu.unwrap_or(0) > 0,
                format!("container stats non-zero: memory {mem:?} cpu {cpu:?}"),
            );
        }
        if let Some(st) = r.result(handler, "PodSandboxStats", cri.pod_stats(&pod)) {
            let mem = st
                .linux
                .as_ref()
                .and_then(|l| l.memory.as_ref())
                .and_then(|m| m.working_set_bytes.as_ref())
                .map(|v| v.value);
            r.check(
                handler,
                mem.unwrap_or(0) > 0,
                format!("pod stats non-zero: memory {mem:?}"),
            );
        }
        // Grace period: a TERM trap gets it (exit 0, not KILL's 137); a process ignoring TERM
        // is killed once the timeout passed. The upper bound only catches a hang: the lab
        // takes many seconds to reap and report an exit.
        let trap = container_config(
            "trap",
            IMAGE,
            &[
                "sh",
                "-c",
                "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 1; done",
            ],
            &[],
            false,
            None,
        );
        let deaf = container_config(
            "deaf",
            IMAGE,
            &["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
            &[],
            false,
            None,
        );
        for (cfg, timeout, want_code, at_least) in [(&trap, 20, 0, 0), (&deaf, 4, 137, 4)] {
            let Some(id) = r.result(
                handler,
                "CreateContainer",
                cri.create_container(&pod, cfg, &fx.config),
            ) else {
                continue;
            };
            if r.result(handler, "StartContainer", cri.start_container(&id))
                .is_none()
            {
                continue;
            }
            std::thread::sleep(Duration::from_secs(2));
            let started = Instant::now();
            r.result(handler, "StopContainer", cri.stop_container(&id, timeout));
            let took = started.elapsed();
            let st = r.result(handler, "ContainerStatus", cri.container_status(&id));
            let code = st.map(|s| s.exit_code);
            let name = &cfg.metadata.as_ref().unwrap().name;
            // The exit code says whether TERM was handled within the grace period (0) or
            // the container was killed after it (137, not before `at_least`). The upper
            // bound only catches a stop that never ends: containerd itself answered a runc
            // StopContainer 147.6 s after its 20 s grace in a loaded lab (2026-12-01).
            r.check(
                handler,
                code == Some(want_code)
                    && took >= Duration::from_secs(at_least)
                    && took < Duration::from_secs(timeout as u64 + 240),
                format!(
                    "StopContainer {name} (grace {timeout} s): exit {code:?} after {:.1} s",
                    took.as_secs_f64()
                ),
            );
        }
        let trap_log = std::fs::read_to_string(fx.logs.join("trap.log")).unwrap_or_default();
        r.check(
            handler,
            trap_log.contains("got-term"),
            format!("the TERM trap ran: {trap_log:?}"),
        );
        fx.teardown(&mut cri, &mut r);
    }
    r.finish(&shim_log());
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel, runc, CNI plugins (make test-lab)"]
fn lab_cri_pod_start_time_runc_and_hull() {
    // Pods per handler: 1 in the test command (`make bench` measures pod starts in
    // rounds); `HULL_CRI_START_RUNS` or `HULL_LAB_FULL=1` (3) run more for a median.
    let full = std::env::var("HULL_LAB_FULL").is_ok_and(|v| v == "1");
    let runs: usize = std::env::var("HULL_CRI_START_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 3 } else { 1 });
    let (mut cri, base) = cri();
    let mut r = Report::default();
    let mut medians = Vec::new();
    for handler in &handlers() {
        let handler = handler.as_str();
        let mut times = Vec::new();
        for i in 0..runs {
            let mut fx =
                PodFixture::new(&base, handler, &format!("start-{handler}-{i}"), false, None);
            let app = container_config("app", IMAGE, &["sleep", "100000"], &[], false, None);
            if let Some((_, _, took)) = fx.start(&mut cri, &mut r, "start the pod", &app) {
                times.push(took);
                fx.teardown(&mut cri, &mut r);
            }
        }
        times.sort();
        let median = times.get(times.len() / 2).copied();
        println!("[{handler}] pod start times {times:?}, median {median:?}");
        medians.push(median);
    }
    if let [Some(runc), Some(hull)] = medians[..] {
        println!(
            "pod start median: runc {:.2} s, hull {:.2} s, ratio {:.1}",
            runc.as_secs_f64(),
            hull.as_secs_f64(),
            hull.as_secs_f64() / runc.as_secs_f64()
        );
    }
    r.finish(&shim_log());
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel, runc, CNI plugins (make test-lab)"]
fn lab_cri_pod_network_cni_ip_mtu_node_and_pod_traffic_dns_and_teardown() {
    let (mut cri, base) = cri();
    let mut r = Report::default();
    for handler in &handlers() {
        let handler = handler.as_str();
        let name = format!("net-{handler}");
        let mut fx = PodFixture::new(&base, handler, &name, false, None);
        fx.config.dns_config = Some(DnsConfig {
            servers: vec!["10.88.77.53".into()],
            searches: vec!["hull.test".into()],
            options: vec!["ndots:2".into()],
        });
        let page = format!("net-page-{handler}");
        let web = container_config(
            "web",
            IMAGE,
            &[
                "sh",
                "-c",
                &format!(
                    "mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p 8080 -h /www"
                ),
            ],
            &[],
            false,
            None,
        );
        let Some((pod, web_id, _)) = fx.start(&mut cri, &mut r, "start the pod", &web) else {
            continue;
        };
        let network = r
            .result(handler, "PodSandboxStatus", cri.pod_status(&pod))
            .and_then(|s| s.network);
        let ip = network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
        let ip6 = network
            .as_ref()
            .into_iter()
            .flat_map(|n| n.additional_ips.iter())
            .map(|a| a.ip.clone())
            .find(|a| a.contains(':'))
            .unwrap_or_default();
        println!("[{handler}] pod IPs {ip:?} {ip6:?}");
        r.check(
            handler,
            ip.starts_with("10.88.77.") && ip6.starts_with("fd88:77:"),
            format!("CNI gave the pod an IPv4 and an IPv6 address: {ip:?} {ip6:?}"),
        );
        let addrs = exec(&mut cri, &mut r, handler, &web_id, &["ip", "addr", "show"]).stdout;
        let eth0 = exec(
            &mut cri,
            &mut r,
            handler,
            &web_id,
            &["ip", "link", "show", "eth0"],
        )
        .stdout;
        r.check(
            handler,
            addrs.contains(&format!("inet {ip}/24")) && addrs.contains(&format!("inet6 {ip6}/64")),
            format!("`ip addr` in the container shows CNI's addresses: {addrs}"),
        );
        r.check(
            handler,
            eth0.contains(&format!("mtu {CNI_MTU}")) && eth0.contains(",UP"),
            format!("eth0 is up with CNI's MTU {CNI_MTU}: {eth0}"),
        );
        let netns = netns_with(&ip);
        if handler == "hull" {
            let plumbing = netns.as_deref().map(netns_plumbing).unwrap_or_default();
            r.check(
                handler,
                plumbing.contains("tap0_hull") && plumbing.contains("mirred"),
                format!("the pod's netns {netns:?} has the tap and the mirred filter: {plumbing}"),
            );
        }
        for addr in [format!("{ip}:8080"), format!("[{ip6}]:8080")] {
            let got = addr
                .parse()
                .map_err(|e| format!("{addr}: {e}"))
                .and_then(|a| http_get(a, Duration::from_secs(60)));
            r.check(
                handler,
                got.as_ref().is_ok_and(|body| body.contains(&page)),
                format!("the node reaches the pod's server at {addr}: {got:?}"),
            );
        }
        let resolv = exec(
            &mut cri,
            &mut r,
            handler,
            &web_id,
            &["cat", "/etc/resolv.conf"],
        )
        .stdout;
        r.check(
            handler,
            resolv.contains("nameserver 10.88.77.53") && resolv.contains("search hull.test"),
            format!("resolv.conf is the CRI request's: {resolv:?}"),
        );
        let host = exec(&mut cri, &mut r, handler, &web_id, &["hostname"]).stdout;
        r.check(
            handler,
            host.trim() == name,
            format!("hostname is the CRI request's {name}: {host:?}"),
        );
        // A second pod reaches the first over the pod network.
        let mut fx2 = PodFixture::new(&base, handler, &format!("net2-{handler}"), false, None);
        let client = container_config("client", IMAGE, &["sleep", "100000"], &[], false, None);
        // Not `start`: a failed second pod is checked for leftovers with the first, below.
        let started2 = fx2.run(&mut cri, &client);
        if let Some((_, client_id, _)) = r.result(handler, "start the second pod", started2) {
            let url = format!("http://{ip}:8080/");
            let mut got = String::new();
            for _ in 0..10 {
                got = exec(
                    &mut cri,
                    &mut r,
                    handler,
                    &client_id,
                    &["wget", "-q", "-O", "-", &url],
                )
                .stdout;
                if got.contains(&page) {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            r.check(
                handler,
                got.contains(&page),
                format!("a second pod reaches {url}: {got:?}"),
            );
        }
        // StopPodSandbox fails when CNI's DEL does; both calls are checked.
        // What is left is checked once both pods are gone.
        fx2.remove(&mut cri, &mut r, " (second pod)");
        fx.teardown(&mut cri, &mut r);
        let _ = std::fs::remove_dir(&fx2.cgroup_dir);
        let lease = Path::new("/var/lib/cni/networks")
            .join(CNI_NETWORK)
            .join(&ip);
        let netns_left = netns
            .as_ref()
            .filter(|ns| Path::new("/var/run/netns").join(ns).exists());
        r.check(
            handler,
            !lease.exists() && netns_left.is_none() && root_taps().is_empty(),
            format!(
                "after RemovePodSandbox CNI's DEL released {ip} (lease file there: {}), \
                 the netns is gone ({netns_left:?}), no tap is left ({:?})",
                lease.exists(),
                root_taps()
            ),
        );
    }
    let log = std::fs::read_to_string(Path::new(BASE).join("containerd/containerd.log"))
        .unwrap_or_default();
    if handlers().iter().any(|h| h == "hull") {
        r.check(
            "hull",
            log.contains("pod network removed") && !log.contains("pod network teardown"),
            "the shim removed the taps and filters before CNI's DEL, without error",
        );
    }
    r.finish(&shim_log());
}
