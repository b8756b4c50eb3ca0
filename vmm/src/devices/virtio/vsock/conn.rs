//! One vsock connection of the muxer (its host socket, credit counters and the bytes the guest
//! sent that the host socket has not taken yet), and the non-blocking dial of a host socket.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// An emptied send buffer keeps at most this much capacity, so idle connections hold little.
const KEEP_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated, REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

pub(super) struct Conn {
    pub stream: UnixStream,
    pub state: State,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    pub rx_cnt: u32,
    /// Bytes written to the host socket.
    pub fwd_cnt: u32,
    pub last_fwd_cnt_sent: u32,
    pub tx_buf: VecDeque<u8>,
    /// The host socket may have data (EPOLLIN seen and not yet drained).
    pub readable: bool,
    /// The host shut its sending side (read returned 0).
    pub host_eof: bool,
    /// The host socket hung up (EPOLLHUP): it is out of the epoll set, what it still holds
    /// goes to the guest as credit allows, and `parked` says since when nothing moved.
    pub hup: bool,
    pub parked: Option<Instant>,
    pub peer_shut_send: bool,
    pub peer_shut_recv: bool,
    pub want_out: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, state: State) -> Self {
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
            hup: false,
            parked: None,
            peer_shut_send: false,
            peer_shut_recv: false,
            want_out: false,
        }
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Whether a read of the host socket may yield a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        self.readable && self.state == State::Established && self.peer_credit() > 0
    }

    /// Writes as much of the buffer as the socket takes; false on a broken socket.
    pub fn flush(&mut self) -> bool {
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
        if self.tx_buf.capacity() > KEEP_CAPACITY {
            self.tx_buf = VecDeque::new();
        }
        true
    }
}

/// Connects to the Unix socket `path` without waiting: a listener whose backlog is full
/// answers `WouldBlock` at once instead of stalling the event loop.
pub(super) fn connect_nonblocking(path: &str) -> std::io::Result<UnixStream> {
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long or malformed",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is an initialised sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(stream)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
