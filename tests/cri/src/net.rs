//! What the pod network scenarios look at from the node: a TCP request to a
//! pod from the lab VM's root network namespace, the CNI namespace holding a
//! pod's address, its links and ingress filters, and Hull taps left behind.

use std::process::Command;
use std::time::{Duration, Instant};

/// `GET /` over TCP from the lab VM's root network namespace (the node);
/// retried for up to `within` while the server comes up. The body, or the last error.
pub fn http_get(
    addr: std::net::SocketAddr,
    within: Duration,
) -> std::result::Result<String, String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + within;
    loop {
        let attempt = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.take(64 * 1024).read_to_string(&mut out)?;
            Ok(out)
        };
        match attempt() {
            Ok(out) => return Ok(out),
            Err(e) if Instant::now() >= deadline => return Err(format!("{addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// The named network namespace (under /var/run/netns) holding `ip`: the pod's, as CNI made it.
pub fn netns_with(ip: &str) -> Option<String> {
    std::fs::read_dir("/var/run/netns")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|ns| {
            Command::new("ip")
                .args(["-n", ns, "-o", "address", "show"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/")))
        })
}

/// Links and ingress filters of a named network namespace, as `ip`/`tc` show them.
pub fn netns_plumbing(ns: &str) -> String {
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    run(&["-n", ns, "-o", "link", "show"])
        + &run(&[
            "netns", "exec", ns, "tc", "filter", "show", "dev", "eth0", "ingress",
        ])
}

/// Links in the lab VM's root namespace that are Hull taps.
pub fn root_taps() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_hull"))
        .collect()
}
