//! `hull-hostile`: what a hostile container tries inside a Hull guest, as a
//! static binary the lab tests bind-mount into a busybox container.
//!
//! Build: `cargo build --release --target x86_64-unknown-linux-musl -p hull-hostile`.
//!
//! Usage:
//!   hull-hostile vsock-connect CID PORT
//!       One vsock connect (2 s timeout). Prints
//!       `connect cid=C port=P result=ok|ERRNO errno=N ms=T [read=B]`; when it
//!       connects it sends a few bytes and reports how many came back.
//!   hull-hostile vsock-scan CID FROM TO SECONDS [STOPFILE]
//!       Connects to every port FROM..=TO again and again for SECONDS (or
//!       until STOPFILE exists),
//!       silent on even rounds and with a guessed 16-byte token on odd ones,
//!       reading what each connection yields. Prints one `got port=P bytes=N`
//!       line per connection that gave data, then
//!       `scan rounds=R attempts=A connected=C bytes=B errnos=NAME:count,...`.
//!
//! Exit status 0 when the attempts ran (whatever their outcome), 2 on bad usage.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection is read before giving up on more data.
const READ_WINDOW: Duration = Duration::from_millis(300);

/// Pause between scan rounds (a refused connect takes microseconds).
const ROUND_PAUSE: Duration = Duration::from_millis(10);

/// Outcome of one connect.
enum Outcome {
    Connected(OwnedFd),
    Failed(i32),
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The errno's symbolic name, for the report.
fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENODEV => "ENODEV",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        _ => return format!("E{e}"),
    };
    name.into()
}

/// A non-blocking vsock connect to (cid, port), waited for at most `timeout`.
fn connect(cid: u32, port: u32, timeout: Duration) -> Outcome {
    // SAFETY: socket(2) takes integers only.
    let fd = unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Outcome::Failed(errno());
    }
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_vm is valid; the fields are set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: `addr` is a sockaddr_vm on our stack, its size passed with it.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Outcome::Connected(fd);
    }
    let e = errno();
    if e != libc::EINPROGRESS {
        return Outcome::Failed(e);
    }
    if !wait_for(&fd, libc::POLLOUT, timeout) {
        return Outcome::Failed(libc::ETIMEDOUT);
    }
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one int into `err`, whose size is in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            std::ptr::addr_of_mut!(err).cast(),
            &mut len,
        )
    };
    match (rc, err) {
        (0, 0) => Outcome::Connected(fd),
        (0, e) => Outcome::Failed(e),
        _ => Outcome::Failed(errno()),
    }
}

/// Waits until `fd` is ready for `events` (or hung up), at most `timeout`.
fn wait_for(fd: &OwnedFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd on our stack, count 1.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    rc > 0
}

/// Sends `bytes` (best effort) and reads what arrives within [`READ_WINDOW`].
fn probe(fd: &OwnedFd, bytes: &[u8]) -> Vec<u8> {
    if !bytes.is_empty() {
        // SAFETY: writes from a live slice of the given length.
        let _ = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
    }
    let deadline = Instant::now() + READ_WINDOW;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 1 << 20 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_for(fd, libc::POLLIN, left) {
            break;
        }
        // SAFETY: reads into a live buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    got
}

fn vsock_connect(cid: u32, port: u32) {
    let started = Instant::now();
    let outcome = connect(cid, port, CONNECT_TIMEOUT);
    let ms = started.elapsed().as_millis();
    match outcome {
        Outcome::Connected(fd) => {
            // A ttrpc frame header would come first; any bytes do to see
            // whether something answers.
            let got = probe(&fd, &[0, 0, 0, 0, 0, 0, 0, 1, 1, 0]);
            println!(
                "connect cid={cid} port={port} result=ok errno=0 ms={ms} read={}",
                got.len()
            );
        }
        Outcome::Failed(e) => println!(
            "connect cid={cid} port={port} result={} errno={e} ms={ms}",
            errno_name(e)
        ),
    }
}

fn vsock_scan(cid: u32, from: u32, to: u32, secs: u64, stop: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let guess = [0x5au8; 16];
    let (mut rounds, mut attempts, mut connected, mut bytes) = (0u64, 0u64, 0u64, 0usize);
    let mut errnos: BTreeMap<String, u64> = BTreeMap::new();
    while Instant::now() < deadline && !stop.is_some_and(|p| std::path::Path::new(p).exists()) {
        let send: &[u8] = if rounds % 2 == 0 { &[] } else { &guess };
        for port in from..=to {
            attempts += 1;
            match connect(cid, port, Duration::from_millis(500)) {
                Outcome::Connected(fd) => {
                    connected += 1;
                    let got = probe(&fd, send);
                    if !got.is_empty() {
                        bytes += got.len();
                        println!(
                            "got port={port} bytes={} text={:?}",
                            got.len(),
                            String::from_utf8_lossy(&got[..got.len().min(200)])
                        );
                    }
                }
                Outcome::Failed(e) => *errnos.entry(errno_name(e)).or_default() += 1,
            }
        }
        rounds += 1;
        std::thread::sleep(ROUND_PAUSE);
    }
    let errnos: Vec<String> = errnos.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!(
        "scan rounds={rounds} attempts={attempts} connected={connected} bytes={bytes} errnos={}",
        errnos.join(",")
    );
}

fn usage() -> ! {
    eprintln!(
        "usage: hull-hostile vsock-connect CID PORT | vsock-scan CID FROM TO SECONDS [STOPFILE]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u32 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    match args.first().map(String::as_str) {
        Some("vsock-connect") if args.len() == 3 => vsock_connect(num(1), num(2)),
        Some("vsock-scan") if args.len() == 5 || args.len() == 6 => vsock_scan(
            num(1),
            num(2),
            num(3),
            u64::from(num(4)),
            args.get(5).map(String::as_str),
        ),
        _ => usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::ECONNRESET), "ECONNRESET");
        assert_eq!(errno_name(9999), "E9999");
    }
}
