//! virtio-net lab tests (part of the `lab_vmm` binary): a tap in a network namespace the test
//! creates, a guest that talks TCP with it both ways over IPv4 and IPv6, and a hostile guest
//! that stalls RX under a flood and floods TX while hull-vmm's memory and vsock are watched.

use super::*;

/// A network namespace the test creates (and deletes on drop) with a tap in it: the guest's
/// virtio-net backend, as the shim sets one up in a pod's netns. All test traffic stays in it.
struct TapNetns {
    name: String,
    /// The tap, opened in the namespace; hull-vmm inherits it.
    tap: std::os::fd::OwnedFd,
}

const TAP_NAME: &str = "hulltap0";
const GUEST_MAC: &str = "02:00:0a:4d:00:02";
const GUEST_IP: &str = "10.77.0.2";
const NETNS_IP: &str = "10.77.0.1";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that entered network namespace `ns` (setns is per thread).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open netns descriptor; it changes only this thread.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

impl TapNetns {
    /// Creates namespace `hullnet-<tag>-<pid>` holding tap `hulltap0` (IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR) with 10.77.0.1/24 and fd77::1/64, up.
    fn new(tag: &str) -> TapNetns {
        assert!(
            Path::new("/sys/module/tun").exists() || Path::new("/dev/net/tun").exists(),
            "no tun driver: the lab loads the tun module (tests/lab/prepare.sh)"
        );
        let name = format!("hullnet-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let tap = in_netns(&name, || {
            use std::os::fd::FromRawFd;
            // SAFETY: plain open; the result is checked.
            let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR) };
            assert!(
                fd >= 0,
                "open /dev/net/tun: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` is fresh and ours.
            let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            // SAFETY: ifreq is plain data.
            let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in ifr.ifr_name.iter_mut().zip(TAP_NAME.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags =
                (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
            // SAFETY: TUNSETIFF reads and fills the ifreq we own.
            let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr) };
            assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
            owned
        })
        .join()
        .unwrap();
        for args in [
            vec!["addr", "add", "10.77.0.1/24", "dev", TAP_NAME],
            vec!["-6", "addr", "add", "fd77::1/64", "dev", TAP_NAME, "nodad"],
            vec!["link", "set", TAP_NAME, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["-n", name.as_str()];
            full.extend(args);
            ip(&full);
        }
        TapNetns { name, tap }
    }

    /// The `--net` flag handing the tap to hull-vmm (the descriptor is inherited: no CLOEXEC).
    fn net_flag(&self) -> [String; 2] {
        use std::os::fd::AsRawFd;
        [
            "--net".into(),
            format!("{},{GUEST_MAC},1400", self.tap.as_raw_fd()),
        ]
    }
}

impl Drop for TapNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn accept_within(l: &std::net::TcpListener, deadline: Instant) -> std::net::TcpStream {
    l.set_nonblocking(true).unwrap();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                return s;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no connection from the guest: {e}"),
        }
    }
}

fn dial_within(addr: &str, deadline: Instant) -> std::net::TcpStream {
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                s.set_nodelay(true).unwrap();
                return s;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("cannot reach the guest at {addr}: {e}"),
        }
    }
}

/// What the namespace side of the TCP test saw.
#[derive(Debug)]
struct NetFigures {
    guest_said: String,
    echo_v4: String,
    echo_v6: String,
    rtt_us: f64,
    rx_mbit: f64,
    tx_mbit: f64,
    guest_counted: String,
    tx_bytes: usize,
}

/// Bytes each bulk transfer moves (the guest's NET_BULK).
const NET_BULK: usize = 16 << 20;
const RTT_ROUNDS: u32 = 200;

/// The namespace side of the guest's `net` test (tests/guest/net_tests.c), in order.
fn netns_side(deadline: Instant) -> NetFigures {
    use std::net::TcpListener;
    let l7000 = TcpListener::bind((NETNS_IP, 7000)).unwrap();
    let l7003 = TcpListener::bind((NETNS_IP, 7003)).unwrap();
    let s = accept_within(&l7000, deadline);
    let mut guest_said = String::new();
    BufReader::new(&s).read_line(&mut guest_said).unwrap();
    (&s).write_all(b"pong from netns\n").unwrap();
    drop(s);
    let echo = |addr: &str, msg: &[u8], rounds: u32| -> (String, f64) {
        let mut s = dial_within(addr, deadline);
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        let echoed = String::from_utf8_lossy(&back).into_owned();
        let t = Instant::now();
        let mut one = [0u8; 1];
        for _ in 0..rounds {
            s.write_all(b"x").unwrap();
            s.read_exact(&mut one).unwrap();
            assert_eq!(&one, b"x");
        }
        let rtt = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds.max(1));
        (echoed, rtt)
    };
    let (echo_v4, rtt_us) = echo(&format!("{GUEST_IP}:7001"), b"hello guest\n", RTT_ROUNDS);
    let (echo_v6, _) = echo("[fd77::2]:7001", b"hello over ipv6\n", 0);
    // Bulk netns -> guest.
    let mut s = dial_within(&format!("{GUEST_IP}:7002"), deadline);
    let chunk = vec![0x24u8; 64 * 1024];
    let t = Instant::now();
    for _ in 0..NET_BULK / chunk.len() {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut guest_counted = String::new();
    BufReader::new(&s).read_line(&mut guest_counted).unwrap();
    let rx_mbit = (NET_BULK * 8) as f64 / t.elapsed().as_secs_f64() / 1e6;
    // Bulk guest -> netns.
    let mut s = accept_within(&l7003, deadline);
    let t = Instant::now();
    let tx_bytes = std::io::copy(&mut s, &mut std::io::sink()).unwrap() as usize;
    let tx_mbit = (tx_bytes * 8) as f64 / t.elapsed().as_secs_f64() / 1e6;
    s.write_all(format!("got {tx_bytes}\n").as_bytes()).unwrap();
    NetFigures {
        guest_said,
        echo_v4,
        echo_v6,
        rtt_us,
        rx_mbit,
        tx_mbit,
        guest_counted,
        tx_bytes,
    }
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel and the tun module (make test-lab)"]
fn net_tcp_both_ways_over_ipv4_and_ipv6() {
    let dir = scratch("net");
    let initrd = test_initrd(&dir);
    let ns = TapNetns::new("tcp");
    let mut args = test_args(&initrd, "net");
    args.extend(ns.net_flag());
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let host = in_netns(&ns.name, move || netns_side(deadline));
    let run = run_vmm(&args, BOOT_TIMEOUT);
    println!(
        "--- net, {:?}, exit {:?}\n{}",
        run.elapsed, run.code, run.output
    );
    let figures = host.join().expect("the namespace side failed");
    println!("--- netns side: {figures:?}");
    assert!(
        run.output
            .contains(&format!("NET_UP mtu=1400 mac={GUEST_MAC}")),
        "the guest's eth0 has the configured MTU and MAC"
    );
    assert_eq!(figures.guest_said, "ping from guest\n");
    assert!(run.output.contains("NET_GOT pong from netns"));
    assert_eq!(figures.echo_v4, "hello guest\n");
    assert_eq!(figures.echo_v6, "hello over ipv6\n");
    assert_eq!(figures.guest_counted, format!("got {NET_BULK}\n"));
    assert_eq!(figures.tx_bytes, NET_BULK);
    assert!(run.output.contains(&format!("netns_got {NET_BULK}")));
    assert!(run.output.contains("HULL_TEST_DONE 0"));
    assert_eq!(run.code, Some(0));
    println!(
        "NET_FIGURES rtt_us={:.0} netns_to_guest_mbit={:.1} guest_to_netns_mbit={:.1}",
        figures.rtt_us, figures.rx_mbit, figures.tx_mbit
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// How much hull-vmm's own memory (RssAnon) may grow while the guest stalls RX under a flood
/// or floods TX: the device holds at most one frame in buffers allocated at start, so anything
/// beyond allocator noise would be queueing.
const NET_FLOOD_GROWTH_BOUND_KIB: u64 = 4 * 1024;
/// How long each flood lasts.
const FLOOD: Duration = Duration::from_secs(10);

/// Connects to the guest's vsock `port` through the hybrid socket; the OK line, if any.
fn vsock_connect(uds: &Path, port: u32) -> Option<UnixStream> {
    let mut s = UnixStream::connect(uds).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).ok()?;
    let mut ok = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut ok)
        .ok()?;
    ok.starts_with("OK ").then_some(s)
}

/// The guest's vsock echo (port 1024) answers; how long it took.
fn vsock_answers(uds: &Path) -> Option<Duration> {
    let t = Instant::now();
    let (_, echo) = talk_to_guest(uds, Instant::now() + Duration::from_secs(60))?;
    (echo == "echo: hello guest\n").then(|| t.elapsed())
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel and the tun module (make test-lab)"]
fn net_hostile_guest_stalls_rx_and_floods_tx() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = scratch("net-hostile");
    let initrd = test_initrd(&dir);
    let ns = TapNetns::new("hostile");
    // The guest does not answer ARP while eth0 is down: the flood needs a static neighbour.
    ip(&[
        "-n",
        &ns.name,
        "neigh",
        "replace",
        GUEST_IP,
        "lladdr",
        GUEST_MAC,
        "dev",
        TAP_NAME,
        "nud",
        "permanent",
    ]);
    let uds = dir.join("v.sock");
    let mut args = test_args(&initrd, "net_hostile");
    args.extend(ns.net_flag());
    args.extend([
        "--vcpus".into(),
        "2".into(),
        "--vsock".into(),
        format!("3,{}", uds.display()),
    ]);
    let (mut child, console, reader) = spawn_with_console(&args);
    let pid = child.id() as i32;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let wait_for = |marker: &str, child: &mut std::process::Child| {
        wait_for_console(&console, marker, child, deadline)
    };
    let anon = || status_kib(pid, "RssAnon");
    // Peak RssAnon while `f` runs.
    let sample_during = |f: &mut dyn FnMut()| -> u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            while !stop2.load(Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "RssAnon"));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        f();
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap()
    };

    // Phase 1: the guest takes no RX buffers back while the namespace floods it.
    wait_for("NET_RX_STALLED", &mut child);
    std::thread::sleep(Duration::from_secs(1));
    let base = anon();
    let flooder = in_netns(&ns.name, || {
        let u = std::net::UdpSocket::bind((NETNS_IP, 0)).unwrap();
        let buf = [0x66u8; 1400];
        let (mut sent, t) = (0u64, Instant::now());
        while t.elapsed() < FLOOD {
            if u.send_to(&buf, (GUEST_IP, 9999)).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let mut rx_vsock = None;
    let rx_peak = sample_during(&mut || {
        std::thread::sleep(Duration::from_secs(2));
        rx_vsock = vsock_answers(&uds);
        while !flooder.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let flood_sent = flooder.join().unwrap();

    // The guest takes RX again and reaches the namespace.
    let listener = in_netns(&ns.name, move || {
        let l = std::net::TcpListener::bind((NETNS_IP, 7000)).unwrap();
        let s = accept_within(&l, deadline);
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        (&s).write_all(b"pong after the stall\n").unwrap();
        line
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vsock_connect(&uds, 1025).is_some(),
        "cannot release the guest"
    );
    let recovered = listener.join().unwrap();
    wait_for("NET_RECOVERED", &mut child);

    // Phase 2: the guest floods TX.
    wait_for("NET_TX_FLOOD", &mut child);
    let counter = in_netns(&ns.name, || {
        let u = std::net::UdpSocket::bind((NETNS_IP, 9999)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let (mut got, t) = (0u64, Instant::now());
        while t.elapsed() < FLOOD {
            if u.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    });
    let mut tx_vsock = None;
    let tx_base = anon();
    let tx_peak = sample_during(&mut || {
        std::thread::sleep(Duration::from_secs(2));
        tx_vsock = vsock_answers(&uds);
        while !counter.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let tx_got = counter.join().unwrap();
    assert!(vsock_connect(&uds, 1025).is_some(), "cannot stop the flood");
    wait_for("HULL_TEST_DONE", &mut child);
    let code =
        wait_or_kill(&mut child, Instant::now() + Duration::from_secs(60)).and_then(|s| s.code());
    reader.join().unwrap();
    let out = console.lock().unwrap().clone();
    println!(
        "--- hostile net guest\n{out}\n--- RssAnon at the stall {base} KiB, peak during the RX \
         flood {rx_peak} KiB ({flood_sent} frames sent), at the TX flood {tx_base} KiB, peak \
         {tx_peak} KiB ({tx_got} datagrams reached the netns); vsock answered in {rx_vsock:?} \
         and {tx_vsock:?}; exit {code:?}"
    );
    assert!(flood_sent > 1000, "the flood sent only {flood_sent} frames");
    assert!(
        rx_vsock.is_some(),
        "vsock did not answer during the RX flood"
    );
    assert!(
        rx_peak <= base + NET_FLOOD_GROWTH_BOUND_KIB,
        "hull-vmm grew from {base} to {rx_peak} KiB while the guest stalled RX"
    );
    assert_eq!(recovered, "alive after the stall\n");
    assert!(out.contains("NET_RECOVERED pong after the stall"));
    assert!(
        tx_got > 100,
        "only {tx_got} flood datagrams reached the netns"
    );
    assert!(
        tx_vsock.is_some(),
        "vsock did not answer during the TX flood"
    );
    assert!(
        tx_peak <= tx_base + NET_FLOOD_GROWTH_BOUND_KIB,
        "hull-vmm grew from {tx_base} to {tx_peak} KiB while the guest flooded TX"
    );
    assert!(tx_peak <= super::HOSTILE_RSS_ANON_BOUND_KIB);
    assert!(out.contains("NET_HOSTILE_DONE"));
    assert!(out.contains("HULL_TEST_DONE 0"));
    assert_eq!(code, Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}
