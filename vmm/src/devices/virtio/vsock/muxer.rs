//! Hybrid vsock backend: maps guest vsock streams to Unix sockets, Firecracker-style. The host
//! connects to `uds` and sends `CONNECT <port>\n` (answer `OK <host port>\n`); a guest
//! connection to host port P is forwarded to the Unix socket `<uds>_P`.
//!
//! What a guest can make the host keep is bounded per VM: at most [`MAX_CONNECTIONS`]
//! connections (beyond it the guest gets RST), each buffering at most [`TX_BUF_SIZE`] bytes
//! toward its host socket (the credit the guest is given), so [`TX_BUDGET`] in all; host-to-guest
//! data stays in the host socket until the guest has credit and RX buffers. A host socket that
//! hangs up leaves the epoll set at once (EPOLLHUP cannot be masked, so keeping it would spin);
//! what it still holds goes to the guest as credit allows, and a guest that takes none of it for
//! [`HUNG_UP_GRACE`] gets RST. Dialing `<uds>_P` never waits: a full backlog is an RST.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{connect_nonblocking, Conn, State};
use super::packet::*;

/// Most connections at once (host- and guest-initiated together, pending handshakes included).
pub const MAX_CONNECTIONS: usize = 128;
/// Bytes the device buffers per connection toward the host socket: also the credit it gives.
pub const TX_BUF_SIZE: u32 = 64 * 1024;
/// Most guest bytes the device holds for all host sockets together.
pub const TX_BUDGET: usize = MAX_CONNECTIONS * TX_BUF_SIZE as usize;
/// Largest payload the device puts in one packet to the guest.
pub const MAX_RX_PAYLOAD: usize = 64 * 1024;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Control packets waiting for guest RX buffers; beyond this the device stops taking TX packets.
pub const MAX_PENDING_CONTROL: usize = 2 * MAX_CONNECTIONS;
/// How long a hung-up host socket waits for a guest that takes none of its remaining data.
pub const HUNG_UP_GRACE: Duration = Duration::from_secs(10);
/// How often parked connections are checked.
const PARK_TICK: Duration = Duration::from_secs(1);
/// Socket events handled per call of [`Muxer::process_events`].
const EVENTS_PER_CALL: usize = 32;
/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the listening socket, the epoll set or the timer failed.
    #[error("cannot listen on vsock socket {0}")]
    Listen(String, #[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    local: u32,
    peer: u32,
}

/// The connection multiplexer of one vsock device.
pub struct Muxer {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    grace: Duration,
    conns: HashMap<Key, Conn>,
    /// Accepted host connections still sending their CONNECT line.
    handshakes: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    fds: HashMap<RawFd, Key>,
    control: VecDeque<Packet>,
    next_local_port: u32,
    /// Where the next scan for host data starts, so every connection gets its turn.
    rx_turn: usize,
}

impl Muxer {
    /// Listens on `uds` for a guest with CID `cid`. The path must not exist.
    pub fn new(cid: u64, uds: &Path) -> Result<Self, Error> {
        let name = uds.display().to_string();
        let listener = UnixListener::bind(uds).map_err(|e| Error::Listen(name.clone(), e))?;
        let setup = || -> std::io::Result<(Epoll, TimerFd)> {
            listener.set_nonblocking(true)?;
            let epoll = Epoll::new()?;
            let ev = EpollEvent::new(EventSet::IN, listener.as_raw_fd() as u64);
            epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), ev)?;
            let timer = TimerFd::new()?;
            let ev = EpollEvent::new(EventSet::IN, timer.as_raw_fd() as u64);
            epoll.ctl(ControlOperation::Add, timer.as_raw_fd(), ev)?;
            Ok((epoll, timer))
        };
        let (epoll, timer) = setup().map_err(|e| {
            let _ = std::fs::remove_file(uds);
            Error::Listen(name, e)
        })?;
        Ok(Muxer {
            cid,
            uds: uds.to_path_buf(),
            listener,
            epoll,
            timer,
            timer_armed: false,
            grace: HUNG_UP_GRACE,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            fds: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_turn: 0,
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

    /// Guest bytes buffered toward host sockets, all connections together.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|c| c.tx_buf.len()).sum()
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
        if c.hup {
            return; // Out of the epoll set for good.
        }
        let mut set = EventSet::empty();
        if !c.readable && !c.host_eof && !c.peer_shut_recv && c.state == State::Established {
            set |= EventSet::IN;
        }
        if c.want_out {
            set |= EventSet::OUT;
        }
        // An empty set still reports EPOLLHUP and EPOLLERR: `process_events` takes the socket
        // out of the set on either, so neither can repeat.
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
            if !c.hup {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.fds.remove(&fd);
        }
    }

    fn reset(&mut self, key: Key) {
        self.remove(key);
        self.push_control(key, OP_RST, 0);
    }

    /// Answers a guest packet not addressed to the host (a guest dialing CID 1, its own CID or
    /// another VM): RST from where it was headed, so the guest's connect fails at once. A
    /// packet with a source other than the guest's CID is dropped: nobody there to answer.
    fn refuse_foreign(&mut self, h: Header) {
        tracing::debug!(
            src = h.src_cid,
            dst = h.dst_cid,
            "vsock: packet not addressed guest-to-host refused"
        );
        if h.op == OP_RST || h.src_cid != self.cid {
            return;
        }
        self.control.push_back(Packet {
            hdr: Header {
                src_cid: h.dst_cid,
                dst_cid: h.src_cid,
                src_port: h.dst_port,
                dst_port: h.src_port,
                type_: h.type_,
                op: OP_RST,
                ..Default::default()
            },
            data: Vec::new(),
        });
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
            self.refuse_foreign(h);
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
            tracing::debug!(
                port = key.local,
                "vsock: guest connection over the cap refused"
            );
            self.push_control(key, OP_RST, 0);
            return;
        }
        let path = format!("{}_{}", self.uds.display(), key.local);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let mut conn = Conn::new(stream, State::Established);
                conn.peer_buf_alloc = h.buf_alloc;
                conn.peer_fwd_cnt = h.fwd_cnt;
                self.add_conn(key, conn);
                self.push_control(key, OP_RESPONSE, 0);
            }
            Err(e) => {
                // WouldBlock is a full backlog: refused like a missing listener.
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

    /// Handles socket readiness; call when `poll_fd()` is readable. Handles at most a fixed
    /// number of events per call; the rest stay pending in the epoll set.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_CALL];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            let set = ev.event_set();
            if fd == self.listener.as_raw_fd() {
                self.accept();
            } else if fd == self.timer.as_raw_fd() {
                self.expire_parked();
            } else if self.handshakes.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.fds.get(&fd) {
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    // A Unix stream socket errs only when its peer closed with data unread:
                    // a hang-up too. What the peer wrote before stays readable.
                    self.host_hung_up(key);
                } else {
                    if set.intersects(EventSet::OUT) {
                        self.after_tx(key);
                    }
                    if set.intersects(EventSet::IN) {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.readable = true;
                            let c = &self.conns[&key];
                            self.set_interest(fd, c);
                        }
                    }
                }
            }
        }
    }

    /// The host socket of `key` hung up: take it out of the epoll set, then either finish the
    /// connection or park it until the guest takes what the socket still holds.
    fn host_hung_up(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = c.stream.as_raw_fd();
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        c.hup = true;
        c.want_out = false;
        if c.state == State::Connecting || c.peer_shut_recv || !c.tx_buf.is_empty() {
            // Nothing more can pass: the guest will not read, or the host will not.
            self.reset(key);
        } else if c.host_eof {
            self.finish(key);
        } else {
            c.readable = true;
            c.parked = Some(Instant::now());
            self.arm_timer();
        }
    }

    /// Ends a connection whose host side is gone entirely and whose data the guest has.
    fn finish(&mut self, key: Key) {
        self.push_control(key, OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV);
        self.remove(key);
    }

    fn arm_timer(&mut self) {
        let tick = PARK_TICK.min(self.grace);
        if !self.timer_armed && self.timer.reset(tick, Some(tick)).is_ok() {
            self.timer_armed = true;
        }
    }

    /// Resets parked connections the guest made no progress on for the grace period.
    fn expire_parked(&mut self) {
        let _ = self.timer.wait();
        let grace = self.grace;
        let stale: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.parked.is_some_and(|t| t.elapsed() >= grace))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            tracing::debug!(port = key.local, "vsock: hung-up connection expired");
            self.reset(key);
        }
        if !self.conns.values().any(|c| c.parked.is_some()) {
            let _ = self.timer.clear();
            self.timer_armed = false;
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
        !self.control.is_empty() || self.conns.values().any(Conn::wants_rx)
    }

    /// The next packet for the guest whose payload fits `max_data` bytes. Connections take
    /// turns, so one busy host socket cannot starve the others.
    pub fn next_rx_packet(&mut self, max_data: usize) -> Option<Packet> {
        if let Some(p) = self.control.pop_front() {
            return Some(p);
        }
        let mut keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.wants_rx())
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return None;
        }
        keys.sort_unstable_by_key(|k| (k.local, k.peer));
        self.rx_turn = self.rx_turn.wrapping_add(1);
        let start = self.rx_turn % keys.len();
        keys.rotate_left(start);
        keys.into_iter()
            .find_map(|key| self.read_host(key, max_data))
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
                Ok(0) if c.hup => {
                    self.finish(key);
                    return self.control.pop_back();
                }
                Ok(0) => {
                    // The host shut its sending side: the guest reads what it has, then EOF,
                    // and may still send to a host that only half-closed (stdin of a pty).
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
                    if c.hup {
                        c.parked = Some(Instant::now());
                    }
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

    /// Shortens [`HUNG_UP_GRACE`] for tests.
    #[cfg(test)]
    pub(crate) fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
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
