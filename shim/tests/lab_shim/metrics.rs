//! hull-monitor scraped over its loopback HTTP endpoint while a real pod runs (issue 10,
//! metrics): the pod's vsock device counted what it did (the agent's RPCs, stdio) and its guest answered with memory and CPU figures that fit the VM.

use std::io::{BufRead, BufReader, Read, Write};

use super::*;

/// A running hull-monitor, killed and reaped when dropped.
struct Monitor {
    child: std::process::Child,
    addr: String,
}

impl Monitor {
    fn start() -> Self {
        let bin = bin_dir().join("hull-monitor");
        assert!(bin.is_file(), "no {bin:?}: cargo build -p hull-tools");
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(Path::new(BASE).join("hull.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hull-monitor");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("hull-monitor's first line: {first:?}"))
            .to_string();
        Self { child, addr }
    }

    /// One `GET /metrics`: the body, and how long the scrape took.
    fn scrape(&self) -> (String, Duration) {
        let started = Instant::now();
        let mut conn = std::net::TcpStream::connect(&self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        conn.read_to_string(&mut page).unwrap();
        let took = started.elapsed();
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        let body = page.split_once("\r\n\r\n").unwrap().1.to_string();
        (body, took)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample of family `name` whose labels include every one of `labels`.
fn sample(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.rsplit_once("} ")?;
        let set: Vec<&str> = set.split(',').collect();
        labels
            .iter()
            .all(|l| set.contains(l))
            .then(|| value.parse().ok())?
    })
}

/// Every family of the page has one HELP and one TYPE line, and its samples follow them.
fn assert_valid_text_format(page: &str) {
    let mut typed: Vec<&str> = Vec::new();
    let mut helped: Vec<&str> = Vec::new();
    let mut current = "";
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split(' ').next().unwrap();
            assert!(!typed.contains(&current), "second TYPE of {current}");
            typed.push(current);
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!helped.contains(&name), "second HELP of {name}");
            helped.push(name);
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(name, current, "sample outside its family: {line}");
        }
    }
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_monitor_scrape_shows_device_counters_and_guest_figures_of_a_running_pod() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["metrics"]);
    // The container reads a file of its root (virtio-fs) and writes to its stdout (vsock).
    ctrd.run_detached(
        "metrics",
        &[],
        &[
            "sh",
            "-c",
            "cat /bin/busybox >/dev/null; echo up; sleep 100000",
        ],
    );
    ctrd.wait_status("metrics", "RUNNING", 120);
    let monitor = Monitor::start();
    let (page, took) = monitor.scrape();
    println!("scrape took {:.2} s:\n{page}", took.as_secs_f64());
    assert_valid_text_format(&page);
    let pod = ["namespace=\"default\"", "pod=\"metrics\""];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        pod.iter().copied().chain(extra.iter().copied()).collect()
    };
    let get = |page: &str, name: &str, extra: &[&'static str]| {
        sample(page, name, &with(extra))
            .unwrap_or_else(|| panic!("no {name} {extra:?} of the pod in\n{page}"))
    };
    assert_eq!(get(&page, "hull_vmm_up", &[]), 1.0);
    assert_eq!(get(&page, "hull_guest_up", &[]), 1.0);

    // Devices: the agent's RPCs and the stdio stream went over vsock.
    for queue in ["queue=\"rx\"", "queue=\"tx\""] {
        let kicks = get(
            &page,
            "hull_vmm_device_notifications_total",
            &["device=\"vsock0\"", queue],
        );
        assert!(kicks > 0.0, "vsock {queue} kicks: {kicks}");
    }
    for direction in ["direction=\"rx\"", "direction=\"tx\""] {
        let bytes = get(
            &page,
            "hull_vmm_device_bytes_total",
            &["device=\"vsock0\"", direction],
        );
        assert!(bytes > 0.0, "vsock {direction} bytes: {bytes}");
    }
    // virtio-fs's interrupts are virtiofsd's own (the device's irqfd): not counted.
    let irqs = get(
        &page,
        "hull_vmm_device_interrupts_total",
        &["device=\"vsock0\""],
    );
    assert!(irqs > 0.0, "vsock0 interrupts: {irqs}");

    // The guest's figures fit the VM hull-vmm runs.
    let vm_bytes = get(&page, "hull_vmm_guest_memory_bytes", &[]);
    let total = get(&page, "hull_guest_memory_total_bytes", &[]);
    let available = get(&page, "hull_guest_memory_available_bytes", &[]);
    assert!(
        total > vm_bytes / 2.0 && total <= vm_bytes,
        "MemTotal {total} of a {vm_bytes}-byte VM"
    );
    assert!(
        available > 0.0 && available <= total,
        "MemAvailable {available} of {total}"
    );
    let cpus = get(&page, "hull_guest_cpus", &[]);
    assert!(cpus >= 1.0 && cpus <= get(&page, "hull_vmm_vcpus", &[]));
    let busy = get(&page, "hull_guest_cpu_seconds_total", &["mode=\"system\""]);
    let idle = get(&page, "hull_guest_cpu_seconds_total", &["mode=\"idle\""]);
    assert!(busy > 0.0 && idle > 0.0, "system {busy} s, idle {idle} s");

    // Counters only grow: a second scrape asked the agent again over vsock.
    let (again, _) = monitor.scrape();
    let tx = |p: &str| {
        get(
            p,
            "hull_vmm_device_notifications_total",
            &["device=\"vsock0\"", "queue=\"tx\""],
        )
    };
    assert!(tx(&again) > tx(&page), "{} then {}", tx(&page), tx(&again));
    drop(monitor);

    ctrd.stop_and_remove("metrics", "KILL");
    assert_clean(ctrd, "a scraped pod");
}
