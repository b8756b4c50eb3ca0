//! Hybrid vsock backend: maps guest vsock streams to Unix sockets, Firecracker-style. The host
//! connects to `uds` and sends `CONNECT <port>\n` (answer `OK <host port>\n`); a guest
//! connection to host port P is forwarded to the Unix socket `<uds>_P`. Buffers and the number
//! of connections are bounded; a guest that breaks the protocol gets its connection reset.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::*;

/// Most connections at once (host- and guest-initiated together, pending handshakes included).
pub const MAX_CONNECTIONS: usize = 256;
/// Bytes the device buffers per connection toward the host socket: also the credit it gives.
pub const TX_BUF_SIZE: u32 = 256 * 1024;
/// Largest payload the device puts in one packet to the guest.
pub const MAX_RX_PAYLOAD: usize = 64 * 1024;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Control packets waiting for guest RX buffers; beyond this the device stops taking TX packets.
pub const MAX_PENDING_CONTROL: usize = 2 * MAX_CONNECTIONS;
/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the listening socket or the epoll set failed.
    #[error("cannot listen on vsock socket {0}")]
    Listen(String, #[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    local: u32,
    peer: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated, REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Bytes written to the host socket.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    tx_buf: VecDeque<u8>,
    /// The host socket may have data (EPOLLIN seen and not yet drained).
    readable: bool,
    host_eof: bool,
    peer_shut_send: bool,
    peer_shut_recv: bool,
    want_out: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Conn {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: VecDeque::new(),
            readable: false,
            host_eof: false,
            peer_shut_send: false,
            peer_shut_recv: false,
            want_out: false,
        }
    }

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Writes as much of the buffer as the socket takes; false on a broken socket.
    fn flush(&mut self) -> bool {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return false,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// The connection multiplexer of one vsock device.
pub struct Muxer {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Conn>,
    /// Accepted host connections still sending their CONNECT line.
    handshakes: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    fds: HashMap<RawFd, Key>,
    control: VecDeque<Packet>,
    next_local_port: u32,
}

impl Muxer {
    /// Listens on `uds` for a guest with CID `cid`. The path must not exist.
    pub fn new(cid: u64, uds: &Path) -> Result<Self, Error> {
        let name = uds.display().to_string();
        let listener = UnixListener::bind(uds).map_err(|e| Error::Listen(name.clone(), e))?;
        let setup = || -> std::io::Result<Epoll> {
            listener.set_nonblocking(true)?;
            let epoll = Epoll::new()?;
            let ev = EpollEvent::new(EventSet::IN, listener.as_raw_fd() as u64);
            epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), ev)?;
            Ok(epoll)
        };
        let epoll = setup().map_err(|e| {
            let _ = std::fs::remove_file(uds);
            Error::Listen(name, e)
        })?;
        Ok(Muxer {
            cid,
            uds: uds.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            fds: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The descriptor the VMM's event loop polls: readable when a socket needs attention.
    pub fn poll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live connections and pending handshakes.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Whether the device should stop taking TX packets until the guest drains RX.
    pub fn control_full(&self) -> bool {
        self.control.len() >= MAX_PENDING_CONTROL
    }

    fn header(&self, key: Key, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.local,
            dst_port: key.peer,
            type_: TYPE_STREAM,
            op,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.conns.get(&key).map_or(0, |c| c.fwd_cnt),
            ..Default::default()
        }
    }

    fn push_control(&mut self, key: Key, op: u16, flags: u32) {
        let mut hdr = self.header(key, op);
        hdr.flags = flags;
        tracing::debug!(op, src = key.local, dst = key.peer, "vsock: to guest");
        if let Some(c) = self.conns.get_mut(&key) {
            c.last_fwd_cnt_sent = c.fwd_cnt;
        }
        self.control.push_back(Packet {
            hdr,
            data: Vec::new(),
        });
    }

    fn set_interest(&self, fd: RawFd, c: &Conn) {
        if c.host_eof {
            // EPOLLHUP cannot be masked: stop polling a socket whose peer is gone.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            return;
        }
        let mut set = EventSet::empty();
        if !c.readable && !c.host_eof && !c.peer_shut_recv && c.state == State::Established {
            set |= EventSet::IN;
        }
        if c.want_out {
            set |= EventSet::OUT;
        }
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(set, fd as u64),
        );
    }

    fn add_conn(&mut self, key: Key, conn: Conn) {
        let fd = conn.stream.as_raw_fd();
        let _ = self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::empty(), fd as u64),
        );
        self.set_interest(fd, &conn);
        self.fds.insert(fd, key);
        self.conns.insert(key, conn);
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.fds.remove(&fd);
        }
    }

    fn reset(&mut self, key: Key) {
        self.remove(key);
        self.push_control(key, OP_RST, 0);
    }

    /// Handles one packet the guest sent.
    pub fn handle_guest_packet(&mut self, pkt: Packet) {
        let h = pkt.hdr;
        tracing::debug!(
            op = h.op,
            src = h.src_port,
            dst = h.dst_port,
            len = h.len,
            "vsock: from guest"
        );
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            tracing::debug!(
                src = h.src_cid,
                dst = h.dst_cid,
                "vsock: dropped packet with wrong CIDs"
            );
            return;
        }
        let key = Key {
            local: h.dst_port,
            peer: h.src_port,
        };
        if h.type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.push_control(key, OP_RST, 0);
            }
            return;
        }
        if h.op == OP_REQUEST {
            self.guest_connect(key, h);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                self.push_control(key, OP_RST, 0);
            }
            return;
        };
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RESPONSE if conn.state == State::Connecting => {
                conn.state = State::Established;
                // Straight to the fresh socket, not through tx_buf: the line is not guest data
                // and must not count in fwd_cnt (the guest's credit).
                let line = format!("OK {}\n", key.local);
                if (&conn.stream).write_all(line.as_bytes()).is_err() {
                    self.reset(key);
                    return;
                }
                self.after_tx(key);
            }
            OP_RW if conn.state == State::Established => {
                if conn.tx_buf.len() + pkt.data.len() > TX_BUF_SIZE as usize {
                    tracing::debug!(port = key.local, "vsock: guest overran its credit");
                    self.reset(key);
                    return;
                }
                conn.tx_buf.extend(&pkt.data);
                self.after_tx(key);
            }
            OP_CREDIT_UPDATE => self.wake(key),
            OP_CREDIT_REQUEST => self.push_control(key, OP_CREDIT_UPDATE, 0),
            OP_SHUTDOWN => {
                conn.peer_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                conn.peer_shut_recv |= h.flags & SHUTDOWN_RCV != 0;
                self.after_tx(key);
            }
            OP_RST => self.remove(key),
            _ => self.reset(key),
        }
    }

    fn guest_connect(&mut self, key: Key, h: Header) {
        if self.conns.contains_key(&key) || self.connection_count() >= MAX_CONNECTIONS {
            self.push_control(key, OP_RST, 0);
            return;
        }
        let path = format!("{}_{}", self.uds.display(), key.local);
        match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
            Ok(stream) => {
                let mut conn = Conn::new(stream, State::Established);
                conn.peer_buf_alloc = h.buf_alloc;
                conn.peer_fwd_cnt = h.fwd_cnt;
                self.add_conn(key, conn);
                self.push_control(key, OP_RESPONSE, 0);
            }
            Err(e) => {
                tracing::debug!(%path, error = %e, "vsock: guest connection refused");
                self.push_control(key, OP_RST, 0);
            }
        }
    }

    /// Re-arms reading for a connection whose credit grew.
    fn wake(&mut self, key: Key) {
        if let Some(c) = self.conns.get(&key) {
            self.set_interest(c.stream.as_raw_fd(), c);
        }
    }

    /// Flushes toward the host socket and follows up on shutdowns and credit.
    fn after_tx(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.flush() {
            self.reset(key);
            return;
        }
        c.want_out = !c.tx_buf.is_empty();
        if c.tx_buf.is_empty() && c.peer_shut_send {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        let done = c.tx_buf.is_empty() && c.peer_shut_send && (c.peer_shut_recv || c.host_eof);
        let credit = c.fwd_cnt.wrapping_sub(c.last_fwd_cnt_sent) >= TX_BUF_SIZE / 2;
        let fd = c.stream.as_raw_fd();
        if done {
            self.reset(key);
            return;
        }
        let c = &self.conns[&key];
        self.set_interest(fd, c);
        if credit {
            self.push_control(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Handles socket readiness; call when `poll_fd()` is readable.
    pub fn process_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 32];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            if fd == self.listener.as_raw_fd() {
                self.accept();
            } else if self.handshakes.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.fds.get(&fd) {
                let set = ev.event_set();
                if set.intersects(EventSet::OUT) {
                    self.after_tx(key);
                }
                if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                    if let Some(c) = self.conns.get_mut(&key).filter(|c| !c.host_eof) {
                        c.readable = true;
                        let fd = c.stream.as_raw_fd();
                        let c = &self.conns[&key];
                        self.set_interest(fd, c);
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.connection_count() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let _ = self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            );
            self.handshakes.insert(fd, (stream, Vec::new()));
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) -> Option<UnixStream> {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.handshakes.remove(&fd).map(|(s, _)| s)
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some((stream, line)) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(line),
                Ok(1) if line.len() < MAX_CONNECT_LINE => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        let Some(stream) = self.drop_handshake(fd) else {
            return;
        };
        let Some(port) = port else {
            return; // Malformed line, EOF or overlong: drop the connection.
        };
        let key = Key {
            local: self.alloc_local_port(),
            peer: port,
        };
        self.add_conn(key, Conn::new(stream, State::Connecting));
        self.push_control(key, OP_REQUEST, 0);
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local == p) {
                return p;
            }
        }
    }

    /// Whether a packet for the guest may be ready.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty()
            || self
                .conns
                .values()
                .any(|c| c.readable && c.state == State::Established && c.peer_credit() > 0)
    }

    /// The next packet for the guest whose payload fits `max_data` bytes.
    pub fn next_rx_packet(&mut self, max_data: usize) -> Option<Packet> {
        if let Some(p) = self.control.pop_front() {
            return Some(p);
        }
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.readable && c.state == State::Established && c.peer_credit() > 0)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(p) = self.read_host(key, max_data) {
                return Some(p);
            }
        }
        None
    }

    fn read_host(&mut self, key: Key, max_data: usize) -> Option<Packet> {
        let c = self.conns.get_mut(&key)?;
        let want = max_data.min(MAX_RX_PAYLOAD).min(c.peer_credit() as usize);
        if want == 0 {
            return None;
        }
        let mut buf = vec![0u8; want];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    // The host shut its sending side (or closed): the guest
                    // reads what it has, then EOF, and may still send to a
                    // host that only half-closed (stdin of a pty stream).
                    c.host_eof = true;
                    c.readable = false;
                    let both_done = c.peer_shut_send && c.tx_buf.is_empty();
                    let fd = c.stream.as_raw_fd();
                    let mut hdr = self.header(key, OP_SHUTDOWN);
                    hdr.flags = SHUTDOWN_SEND;
                    if both_done {
                        self.remove(key);
                    } else {
                        let c = &self.conns[&key];
                        self.set_interest(fd, c);
                    }
                    return Some(Packet {
                        hdr,
                        data: Vec::new(),
                    });
                }
                Ok(n) => {
                    c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                    buf.truncate(n);
                    let mut hdr = self.header(key, OP_RW);
                    hdr.len = n as u32;
                    return Some(Packet { hdr, data: buf });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.readable = false;
                    let fd = c.stream.as_raw_fd();
                    let c = &self.conns[&key];
                    self.set_interest(fd, c);
                    return None;
                }
                Err(_) => {
                    self.remove(key);
                    return Some(Packet {
                        hdr: self.header(key, OP_RST),
                        data: Vec::new(),
                    });
                }
            }
        }
    }

    /// Drops every connection (device reset).
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
        for fd in fds {
            self.drop_handshake(fd);
        }
        self.control.clear();
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    text.strip_prefix("CONNECT ")?.trim().parse().ok()
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
