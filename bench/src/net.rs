//! Pod network benchmark: the TCP server `hull-bench-probe serve-net` runs in
//! the pod, the client the lab's CRI test (`lab_cri`'s `net_bench`) runs on
//! the node, and `network.json`, the figures both sides agree on.
//!
//! Protocol, one connection per job: the client sends one mode byte, then
//! - `D` (discard): the client streams bytes and shuts its side down; the
//!   server counts them and answers the count (u64, little endian), then closes;
//! - `S` (source): the client sends a count N (u64 LE); the server sends N bytes, then closes;
//! - `E` (echo): the server writes back every byte it reads until the client closes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const DISCARD: u8 = b'D';
pub const SOURCE: u8 = b'S';
pub const ECHO: u8 = b'E';
/// The port `serve-net` listens on unless told otherwise.
pub const PORT: u16 = 5201;
const CHUNK: usize = 64 * 1024;

/// Serves the protocol on `port` (all addresses, IPv4 and IPv6 where the
/// kernel maps them), one thread per connection, until killed.
pub fn serve(port: u16) -> std::io::Result<()> {
    let listener =
        TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))?;
    println!("ready {port}");
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            if let Err(e) = handle(conn) {
                eprintln!("serve-net: connection: {e}");
            }
        });
    }
    Ok(())
}

fn handle(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    conn.read_exact(&mut mode)?;
    let mut buf = vec![0u8; CHUNK];
    match mode[0] {
        DISCARD => {
            let mut total = 0u64;
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            conn.write_all(&total.to_le_bytes())?;
        }
        SOURCE => {
            let mut want = [0u8; 8];
            conn.read_exact(&mut want)?;
            let mut left = u64::from_le_bytes(want);
            buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                conn.write_all(&buf[..n])?;
                left -= n as u64;
            }
        }
        ECHO => loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n])?;
        },
        other => {
            return Err(std::io::Error::other(format!("unknown mode byte {other}")));
        }
    }
    conn.shutdown(Shutdown::Both).or(Ok(()))
}

fn connect(addr: SocketAddr, mode: u8, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    s.write_all(&[mode])?;
    Ok(s)
}

/// One bulk transfer: bytes moved and the time they took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    pub bytes: u64,
    pub secs: f64,
}

impl Transfer {
    /// Megabits (10^6 bits) per second.
    pub fn mbit(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e6 / self.secs
    }
}

/// Client to discard server: streams for `duration` or `cap` bytes, whichever
/// comes first, then waits for the server's count (the clock stops when it
/// arrives: every byte was received). Fails unless the count is what was sent.
pub fn send(
    addr: SocketAddr,
    duration: Duration,
    cap: u64,
    timeout: Duration,
) -> Result<Transfer, String> {
    let err = |what: &str, e: std::io::Error| format!("{what} {addr}: {e}");
    let mut s = connect(addr, DISCARD, timeout).map_err(|e| err("connect", e))?;
    let buf = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < cap && started.elapsed() < duration {
        let n = (cap - sent).min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).map_err(|e| err("send to", e))?;
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| err("shut down sending to", e))?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .map_err(|e| err("read the count from", e))?;
    let secs = started.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(count);
    if got != sent {
        return Err(format!(
            "{addr}: sent {sent} bytes, the server counted {got}"
        ));
    }
    Ok(Transfer { bytes: sent, secs })
}

/// Client of the source server: asks for `bytes` and reads to the end. Fails
/// unless exactly that many arrived.
pub fn receive(addr: SocketAddr, bytes: u64, timeout: Duration) -> Result<Transfer, String> {
    let err = |what: &str, e: std::io::Error| format!("{what} {addr}: {e}");
    let mut s = connect(addr, SOURCE, timeout).map_err(|e| err("connect", e))?;
    let started = Instant::now();
    s.write_all(&bytes.to_le_bytes())
        .map_err(|e| err("ask", e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).map_err(|e| err("receive from", e))?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    if got != bytes {
        return Err(format!("{addr}: asked for {bytes} bytes, received {got}"));
    }
    Ok(Transfer { bytes, secs })
}

/// An open echo connection: round trips of one byte each.
pub struct Echo {
    stream: TcpStream,
    next: u8,
}

impl Echo {
    pub fn open(addr: SocketAddr, timeout: Duration) -> Result<Echo, String> {
        let stream = connect(addr, ECHO, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
        Ok(Echo { stream, next: 0 })
    }

    /// `n` round trips of one byte, each timed in microseconds; fails on the
    /// first byte that does not come back as sent.
    pub fn round_trips(&mut self, n: usize) -> Result<Vec<f64>, String> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let byte = [self.next];
            self.next = self.next.wrapping_add(1);
            let started = Instant::now();
            self.stream
                .write_all(&byte)
                .map_err(|e| format!("echo send: {e}"))?;
            let mut back = [0u8; 1];
            self.stream
                .read_exact(&mut back)
                .map_err(|e| format!("echo receive: {e}"))?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
            if back != byte {
                return Err(format!("echo: sent {byte:?}, got {back:?}"));
            }
        }
        Ok(times)
    }
}

/// What `network.json` holds: one entry per handler, in the order they ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetData {
    /// How the figures were made (one sentence per setting).
    pub setup: String,
    pub secs_per_transfer: f64,
    pub repeats: u32,
    pub handlers: Vec<NetHandler>,
}

/// One handler's figures; empty lists when it could not run (see `errors`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetHandler {
    pub handler: String,
    /// Node to pod, Mbit/s, one per repeat.
    pub node_to_pod_mbit: Vec<f64>,
    /// Pod to node, Mbit/s, one per repeat.
    pub pod_to_node_mbit: Vec<f64>,
    /// Every timed round trip, microseconds.
    pub rtt_us: Vec<f64>,
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                std::thread::spawn(move || handle(c));
            }
        });
        addr
    }

    #[test]
    fn send_receive_and_echo_over_loopback() {
        let addr = server();
        let t = Duration::from_secs(10);
        let sent = send(addr, Duration::from_secs(5), 3 << 20, t).unwrap();
        assert_eq!(sent.bytes, 3 << 20);
        assert!(sent.mbit() > 0.0);
        let got = receive(addr, (1 << 20) + 7, t).unwrap();
        assert_eq!(got.bytes, (1 << 20) + 7);
        let mut echo = Echo::open(addr, t).unwrap();
        let rtt = echo.round_trips(300).unwrap();
        assert_eq!(rtt.len(), 300);
        assert!(rtt.iter().all(|v| *v > 0.0));
    }

    #[test]
    fn send_stops_at_the_duration() {
        let addr = server();
        let t = Duration::from_secs(10);
        let sent = send(addr, Duration::ZERO, u64::MAX, t).unwrap();
        assert_eq!(sent.bytes, 0);
    }
}
