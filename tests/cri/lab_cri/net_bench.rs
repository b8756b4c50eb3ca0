//! Lab benchmark, not a check: pod↔node TCP throughput and round-trip
//! latency for the `runc` and `hull` handlers in the same lab run, through
//! the CNI bridge, for `make bench` (bench/run.sh runs it and renders its
//! `network.json`; bench/README.md describes the scenario). Both pods run at
//! once and the handlers alternate within every round. Only what can really
//! fail is asserted (transfers arrive whole, echoes come back as sent), never
//! a time.
//!
//! Settings: `HULL_NET_BENCH_SECS` (seconds per bulk transfer, default 5),
//! `HULL_NET_BENCH_REPEATS` (rounds, 3), `HULL_NET_BENCH_ROUND_TRIPS` (timed
//! 1-byte round trips per handler over all rounds, 900), `HULL_NET_BENCH_CAP_MIB`
//! (bytes per transfer at most, 4096), `HULL_NET_BENCH_OUT` (where to write
//! the JSON). Needs the bench image's probe built:
//! `cargo build --release -p hull-bench --bin hull-bench-probe --target x86_64-unknown-linux-musl`.

use std::net::{SocketAddr, TcpStream};

use hull_bench::net::{self, Echo, NetData, NetHandler};
use hull_bench::stats::summarize;

use super::*;

const BENCH_IMAGE: &str = "docker.io/library/hull-bench:latest";
/// Bound on every connect, read and write of the benchmark (the lab is slow).
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Round trips on each fresh echo connection before the timed ones.
const WARM_ROUND_TRIPS: usize = 20;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds (or finds cached) the bench image with the static probe and imports it for CRI.
fn import_bench_image(cri: &mut Cri) {
    let probe = std::env::var("HULL_BENCH_PROBE").map_or_else(
        |_| workspace().join("target/x86_64-unknown-linux-musl/release/hull-bench-probe"),
        PathBuf::from,
    );
    assert!(
        probe.is_file(),
        "no {probe:?}: cargo build --release -p hull-bench --bin hull-bench-probe \
         --target x86_64-unknown-linux-musl (or set HULL_BENCH_PROBE)"
    );
    let tar = script_output("tests/images/bench.sh", &[probe.to_str().unwrap()]);
    let sock = Path::new(BASE).join("containerd/containerd.sock");
    let out = Command::new("ctr")
        .args(["--address", sock.to_str().unwrap(), "-n", "k8s.io"])
        .args([
            "images",
            "import",
            "--base-name",
            "docker.io/library/hull-bench",
        ])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import the bench image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cri.image_present(BENCH_IMAGE).unwrap() {
        assert!(Instant::now() < deadline, "CRI does not see {BENCH_IMAGE}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One handler's pod with its server, and what was measured of it.
struct Pod {
    fx: PodFixture,
    addr: Option<SocketAddr>,
    echo: Option<Echo>,
    data: NetHandler,
}

impl Pod {
    fn fail(&mut self, r: &mut Report, what: String) {
        r.check(&self.data.handler, false, &what);
        self.data.errors.push(what);
    }
}

/// Starts `handler`'s pod serving `serve-net`; its address once a connection succeeds.
fn start_server_pod(cri: &mut Cri, r: &mut Report, base: &Path, handler: &str) -> Pod {
    let port = net::PORT.to_string();
    let server = container_config(
        "server",
        BENCH_IMAGE,
        &["/bin/hull-bench-probe", "serve-net", "--port", &port],
        &[],
        false,
        None,
    );
    let mut p = Pod {
        fx: PodFixture::new(base, handler, &format!("netbench-{handler}"), false, None),
        addr: None,
        echo: None,
        data: NetHandler {
            handler: handler.into(),
            ..Default::default()
        },
    };
    let pod = match p.fx.run(cri, &server) {
        Ok((pod, _, _)) => pod,
        Err(e) => {
            p.fail(r, format!("start the pod: {e}"));
            return p;
        }
    };
    let ip = match cri.pod_status(&pod) {
        Ok(s) => s.network.map(|n| n.ip).unwrap_or_default(),
        Err(e) => {
            p.fail(r, format!("PodSandboxStatus: {e}"));
            return p;
        }
    };
    let addr: SocketAddr = match format!("{ip}:{port}").parse() {
        Ok(a) => a,
        Err(e) => {
            p.fail(r, format!("pod IP {ip:?}: {e}"));
            return p;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                p.fail(r, format!("the server at {addr} never answered: {e}"));
                return p;
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
    // Warm up: a short transfer and a few round trips, not counted.
    let warm = net::send(addr, Duration::from_secs(1), 1 << 20, IO_TIMEOUT)
        .and_then(|_| Echo::open(addr, IO_TIMEOUT))
        .and_then(|mut e| e.round_trips(WARM_ROUND_TRIPS).map(|_| e));
    match warm {
        Ok(echo) => {
            println!("[{handler}] server at {addr}");
            p.addr = Some(addr);
            p.echo = Some(echo);
        }
        Err(e) => p.fail(r, format!("warm-up: {e}")),
    }
    p
}

/// One round for one pod: node→pod, pod→node (as many bytes as node→pod
/// moved), then `round_trips` timed echoes.
fn round(p: &mut Pod, r: &mut Report, secs: Duration, cap: u64, round_trips: usize) {
    let Some(addr) = p.addr else { return };
    let handler = p.data.handler.clone();
    match net::send(addr, secs, cap, IO_TIMEOUT) {
        Ok(t) => {
            p.data.node_to_pod_mbit.push(t.mbit());
            let bytes = t.bytes.max(1 << 20);
            match net::receive(addr, bytes, IO_TIMEOUT) {
                Ok(back) => {
                    p.data.pod_to_node_mbit.push(back.mbit());
                    println!(
                        "[{handler}] node->pod {} B in {:.2} s = {:.1} Mbit/s; pod->node {} B in {:.2} s = {:.1} Mbit/s",
                        t.bytes,
                        t.secs,
                        t.mbit(),
                        back.bytes,
                        back.secs,
                        back.mbit()
                    );
                }
                Err(e) => p.fail(r, format!("pod->node transfer: {e}")),
            }
        }
        Err(e) => p.fail(r, format!("node->pod transfer: {e}")),
    }
    if let Some(echo) = p.echo.as_mut() {
        match echo.round_trips(round_trips) {
            Ok(times) => p.data.rtt_us.extend(times),
            Err(e) => {
                p.echo = None;
                p.fail(r, format!("round trips: {e}"));
            }
        }
    }
}

fn median(v: &[f64]) -> Option<f64> {
    summarize(v).map(|s| s.median)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "none".into(), |v| format!("{v:.1}"))
}

/// The machine-readable line of one handler.
fn summary_line(d: &NetHandler) -> String {
    let rtt = summarize(&d.rtt_us);
    format!(
        "NET_BENCH handler={} node_to_pod_mbit={} pod_to_node_mbit={} rtt_median_us={} rtt_p95_us={} rtt_n={} errors={}",
        d.handler,
        fmt(median(&d.node_to_pod_mbit)),
        fmt(median(&d.pod_to_node_mbit)),
        fmt(rtt.map(|s| s.median)),
        fmt(rtt.map(|s| s.p95)),
        d.rtt_us.len(),
        d.errors.len()
    )
}

#[test]
#[ignore = "lab: a benchmark (make bench runs it); needs a KVM that boots a standard guest kernel, runc, CNI plugins, the static probe"]
fn lab_cri_bench_pod_network_runc_and_hull() {
    let secs = Duration::from_secs(setting("HULL_NET_BENCH_SECS", 5).max(1));
    let repeats = setting("HULL_NET_BENCH_REPEATS", 3).max(1) as u32;
    let round_trips = setting("HULL_NET_BENCH_ROUND_TRIPS", 900).max(1) as usize;
    let per_round = round_trips.div_ceil(repeats as usize);
    let cap = setting("HULL_NET_BENCH_CAP_MIB", 4096).max(1) << 20;
    let (mut cri, base) = cri();
    import_bench_image(&mut cri);
    let mut r = Report::default();
    let mut pods: Vec<Pod> = handlers()
        .iter()
        .map(|h| start_server_pod(&mut cri, &mut r, &base, h))
        .collect();
    for i in 0..repeats {
        println!("round {} of {repeats}", i + 1);
        for p in pods.iter_mut() {
            round(p, &mut r, secs, cap, per_round);
        }
    }
    let data = NetData {
        setup: format!(
            "Both pods up at once, handlers alternating in {repeats} rounds; per round and handler: node->pod \
             for {} s (at most {} MiB) to a discard server, pod->node of as many bytes from a source server, \
             {per_round} timed 1-byte round trips on one echo connection (after {WARM_ROUND_TRIPS} untimed); \
             server `hull-bench-probe serve-net` in the pod, client in the lab VM's root netns, CNI bridge MTU {CNI_MTU}.",
            secs.as_secs(),
            cap >> 20
        ),
        secs_per_transfer: secs.as_secs_f64(),
        repeats,
        handlers: pods.iter().map(|p| p.data.clone()).collect(),
    };
    for d in &data.handlers {
        println!("{}", summary_line(d));
    }
    if let [a, b] = &data.handlers[..] {
        let ratio = |x: Option<f64>, y: Option<f64>| {
            x.zip(y)
                .map_or_else(|| "none".into(), |(x, y)| format!("{:.2}", x / y))
        };
        let rtt = |d: &NetHandler| median(&d.rtt_us);
        let p95 = |d: &NetHandler| summarize(&d.rtt_us).map(|s| s.p95);
        println!(
            "NET_BENCH ratio={}/{} node_to_pod={} pod_to_node={} rtt_median={} rtt_p95={}",
            b.handler,
            a.handler,
            ratio(median(&b.node_to_pod_mbit), median(&a.node_to_pod_mbit)),
            ratio(median(&b.pod_to_node_mbit), median(&a.pod_to_node_mbit)),
            ratio(rtt(b), rtt(a)),
            ratio(p95(b), p95(a)),
        );
    }
    if let Ok(path) = std::env::var("HULL_NET_BENCH_OUT") {
        std::fs::write(&path, serde_json::to_string_pretty(&data).unwrap())
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
        println!("wrote {path}");
    }
    // Both pods go before either is checked: what `teardown` looks for (Hull
    // processes, pod state, mounts) is not per pod.
    for p in pods.iter_mut() {
        p.echo = None;
        p.fx.remove(&mut cri, &mut r, "");
    }
    for p in pods.iter_mut() {
        p.fx.teardown(&mut cri, &mut r);
    }
    r.finish(&shim_log());
}
