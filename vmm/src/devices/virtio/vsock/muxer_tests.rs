//! Unit tests of the vsock muxer: handshakes both ways, data, credit and hostile packets.

use super::*;

const CID: u64 = 3;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hull-mux-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A test's socket paths: the device socket and, when a host listener exists, its
/// `<uds>_<port>`. Both are removed when this is dropped.
struct Paths {
    uds: PathBuf,
    port: Option<String>,
}

impl Paths {
    fn port(&self) -> &str {
        self.port.as_deref().expect("a listening rig")
    }
}

impl Drop for Paths {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
        if let Some(p) = &self.port {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A muxer on a fresh socket path named after the test.
fn muxer(name: &str) -> (Muxer, Paths) {
    let uds = tmp(name);
    let m = Muxer::new(CID, &uds).unwrap();
    (m, Paths { uds, port: None })
}

/// A muxer plus a host listener on `<uds>_<port>`, where guest connections to `port` go.
fn listening(name: &str, port: u32) -> (Muxer, UnixListener, Paths) {
    let (m, mut paths) = muxer(name);
    let path = format!("{}_{port}", paths.uds.display());
    let l = UnixListener::bind(&path).unwrap();
    paths.port = Some(path);
    (m, l, paths)
}

fn guest_pkt(op: u16, src_port: u32, dst_port: u32, data: &[u8]) -> Packet {
    Packet {
        hdr: Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Default::default()
        },
        data: data.to_vec(),
    }
}

fn pump(m: &mut Muxer) -> Option<Packet> {
    for _ in 0..50 {
        m.process_events();
        if let Some(p) = m.next_rx_packet(4096) {
            return Some(p);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}

fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn host_initiated_connection() {
    let (mut m, paths) = muxer("host");
    let uds = &paths.uds;
    let mut host = UnixStream::connect(uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let req = pump(&mut m).expect("REQUEST");
    assert_eq!(
        (req.hdr.op, req.hdr.dst_port, req.hdr.dst_cid),
        (OP_REQUEST, 1024, CID)
    );
    let local = req.hdr.src_port;
    assert_eq!(local, FIRST_LOCAL_PORT);

    m.handle_guest_packet(guest_pkt(OP_RESPONSE, 1024, local, b""));
    assert_eq!(
        read_exact_timeout(&mut host, 14),
        format!("OK {local}\n").into_bytes()
    );

    host.write_all(b"ping").unwrap();
    let rw = pump(&mut m).expect("RW");
    assert_eq!((rw.hdr.op, rw.data.as_slice()), (OP_RW, &b"ping"[..]));
    m.handle_guest_packet(guest_pkt(OP_RW, 1024, local, b"pong"));
    assert_eq!(read_exact_timeout(&mut host, 4), b"pong");

    // The host shuts its sending side: the guest hears SHUTDOWN_SEND only and
    // may still send to the host.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let shut = pump(&mut m).expect("SHUTDOWN");
    assert_eq!((shut.hdr.op, shut.hdr.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    m.handle_guest_packet(guest_pkt(OP_RW, 1024, local, b"after"));
    assert_eq!(read_exact_timeout(&mut host, 5), b"after");
    // Then the guest closes: it answers with RST.
    m.handle_guest_packet(guest_pkt(OP_RST, 1024, local, b""));
    assert_eq!(m.connection_count(), 0);
    drop(m);
    assert!(
        !uds.exists(),
        "the device socket is removed with the device"
    );
}

#[test]
fn guest_initiated_connection() {
    let (mut m, listener, _paths) = listening("guest", 52);
    m.handle_guest_packet(guest_pkt(OP_REQUEST, 5000, 52, b""));
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RESPONSE);
    let (mut peer, _) = listener.accept().unwrap();
    m.handle_guest_packet(guest_pkt(OP_RW, 5000, 52, b"hello"));
    assert_eq!(read_exact_timeout(&mut peer, 5), b"hello");
    peer.write_all(b"back").unwrap();
    let rw = pump(&mut m).unwrap();
    assert_eq!(
        (rw.hdr.src_port, rw.hdr.dst_port, rw.data.as_slice()),
        (52, 5000, &b"back"[..])
    );
    // Nobody listens on port 53.
    m.handle_guest_packet(guest_pkt(OP_REQUEST, 5001, 53, b""));
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RST);
    // Guest half-closes, then the host peer sees EOF after the data.
    m.handle_guest_packet(guest_pkt(OP_RW, 5000, 52, b"bye"));
    let mut shut = guest_pkt(OP_SHUTDOWN, 5000, 52, b"");
    shut.hdr.flags = SHUTDOWN_SEND;
    m.handle_guest_packet(shut);
    peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye");
}

#[test]
fn credit_limits_what_the_host_sends() {
    let (mut m, listener, _paths) = listening("credit", 60);
    let mut req = guest_pkt(OP_REQUEST, 7, 60, b"");
    req.hdr.buf_alloc = 3;
    m.handle_guest_packet(req);
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RESPONSE);
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(b"abcdef").unwrap();
    let rw = pump(&mut m).unwrap();
    assert_eq!(rw.data, b"abc");
    assert!(pump(&mut m).is_none(), "no credit left");
    let mut upd = guest_pkt(OP_CREDIT_UPDATE, 7, 60, b"");
    upd.hdr.buf_alloc = 3;
    upd.hdr.fwd_cnt = 3;
    m.handle_guest_packet(upd);
    assert_eq!(pump(&mut m).unwrap().data, b"def");
}

#[test]
fn hostile_packets() {
    let (mut m, paths) = muxer("hostile");
    let uds = &paths.uds;
    // Spoofed source CID: dropped silently.
    let mut p = guest_pkt(OP_REQUEST, 1, 2, b"");
    p.hdr.src_cid = 99;
    m.handle_guest_packet(p);
    assert!(m.next_rx_packet(4096).is_none());
    // Data for an unknown connection: RST.
    m.handle_guest_packet(guest_pkt(OP_RW, 1, 2, b"x"));
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RST);
    // Unknown op / socket type: RST.
    let mut p = guest_pkt(OP_RW, 1, 2, b"");
    p.hdr.type_ = 2;
    m.handle_guest_packet(p);
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RST);
    // RST for nothing: no answer.
    m.handle_guest_packet(guest_pkt(OP_RST, 1, 2, b""));
    assert!(m.next_rx_packet(4096).is_none());
    // A malformed CONNECT line closes the host connection.
    let mut host = UnixStream::connect(uds).unwrap();
    host.write_all(b"HELLO\n").unwrap();
    assert!(pump(&mut m).is_none());
    host.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let (mut m, listener, _paths) = listening("overrun", 61);
    m.handle_guest_packet(guest_pkt(OP_REQUEST, 8, 61, b""));
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RESPONSE);
    let (_peer, _) = listener.accept().unwrap();
    // Nobody reads the peer: the socket buffer fills, then the device buffer, then RST.
    let chunk = vec![0u8; 60 * 1024];
    let mut reset = false;
    for _ in 0..200 {
        m.handle_guest_packet(guest_pkt(OP_RW, 8, 61, &chunk));
        while let Some(p) = m.next_rx_packet(4096) {
            reset |= p.hdr.op == OP_RST;
        }
        if reset {
            break;
        }
    }
    assert!(reset);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn connect_line_parsing() {
    assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT x"), None);
    assert_eq!(parse_connect(b"connect 1"), None);
    assert_eq!(parse_connect(&[0xff, 0xfe]), None);
}

#[test]
fn existing_path_is_refused() {
    let uds = tmp("exists");
    std::fs::write(&uds, b"").unwrap();
    assert!(Muxer::new(CID, &uds).is_err());
    std::fs::remove_file(&uds).unwrap();
}

#[test]
fn established_host_connection_stays_quiet() {
    let (mut m, paths) = muxer("quiet");
    let uds = &paths.uds;
    let mut host = UnixStream::connect(uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let req = pump(&mut m).expect("REQUEST");
    let local = req.hdr.src_port;
    m.handle_guest_packet(guest_pkt(OP_RESPONSE, 1024, local, b""));
    assert_eq!(
        read_exact_timeout(&mut host, 14),
        format!("OK {local}\n").into_bytes()
    );
    host.write_all(b"hello guest\n").unwrap();
    let rw = pump(&mut m).expect("RW");
    assert_eq!(rw.data, b"hello guest\n");
    assert_eq!(
        rw.hdr.fwd_cnt, 0,
        "the OK line is not guest data: it must not use guest credit"
    );
    m.handle_guest_packet(guest_pkt(OP_CREDIT_UPDATE, 1024, local, b""));
    let extra = pump(&mut m);
    assert!(extra.is_none(), "unexpected packet {extra:?}");
    m.handle_guest_packet(guest_pkt(OP_RW, 1024, local, b"echo: hello guest\n"));
    assert_eq!(read_exact_timeout(&mut host, 18), b"echo: hello guest\n");
}

#[test]
fn closed_host_socket_is_reported_once() {
    let (mut m, listener, _paths) = listening("hup", 62);
    m.handle_guest_packet(guest_pkt(OP_REQUEST, 9, 62, b""));
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RESPONSE);
    let (peer, _) = listener.accept().unwrap();
    drop(peer);
    assert_eq!(pump(&mut m).unwrap().hdr.op, OP_SHUTDOWN);
    assert!(
        pump(&mut m).is_none(),
        "a hung-up socket must not be reported again"
    );
}

/// Whether the muxer's poll descriptor is readable now: what makes the event loop call it.
fn poll_ready(m: &Muxer) -> bool {
    let mut pfd = libc::pollfd {
        fd: m.poll_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

/// A guest connection to host port `port` (listener at `<uds>_<port>`), answered and accepted.
fn guest_conn(m: &mut Muxer, l: &UnixListener, src: u32, port: u32, buf_alloc: u32) -> UnixStream {
    let mut req = guest_pkt(OP_REQUEST, src, port, b"");
    req.hdr.buf_alloc = buf_alloc;
    m.handle_guest_packet(req);
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RESPONSE);
    l.accept().unwrap().0
}

/// Drains the muxer's events and packets for a while; returns every packet sent to the guest.
fn settle(m: &mut Muxer, rounds: usize) -> Vec<Packet> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        m.process_events();
        while let Some(p) = m.next_rx_packet(4096) {
            out.push(p);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    out
}

#[test]
fn zero_credit_guest_and_hung_up_host_neither_spin_nor_stay() {
    let (mut m, l, _paths) = listening("zc", 63);
    m.set_grace(std::time::Duration::from_millis(100));
    // The guest advertises no buffer at all; the host writes, then hangs up.
    let mut peer = guest_conn(&mut m, &l, 10, 63, 0);
    peer.write_all(&[7u8; 1000]).unwrap();
    drop(peer);
    let early = settle(&mut m, 5);
    assert!(
        early.is_empty(),
        "nothing may reach a zero-credit guest: {early:?}"
    );
    // What spun before: the hung-up socket kept the poll descriptor readable.
    assert!(!poll_ready(&m), "the muxer stays readable after a hang-up");
    assert_eq!(
        m.connection_count(),
        1,
        "parked until the grace period ends"
    );
    // After the grace period the connection is reset and nothing is left.
    let late = settle(&mut m, 60);
    assert_eq!(late.iter().map(|p| p.hdr.op).collect::<Vec<_>>(), [OP_RST]);
    assert_eq!(m.connection_count(), 0);
    let quiet = settle(&mut m, 30);
    assert!(quiet.is_empty());
    assert!(!poll_ready(&m), "the timer stops with no parked connection");
}

#[test]
fn a_hung_up_host_socket_is_drained_then_finished() {
    let (mut m, l, _paths) = listening("drain", 64);
    let mut peer = guest_conn(&mut m, &l, 11, 64, 3);
    peer.write_all(b"abcdef").unwrap();
    drop(peer);
    // Credit for 3 bytes: they go, then the guest's credit stops the rest (parked, quiet).
    let first = settle(&mut m, 5);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].data, b"abc");
    assert!(!poll_ready(&m));
    // The guest frees its buffer: the rest, then a full shutdown, and the connection is gone.
    let mut upd = guest_pkt(OP_CREDIT_UPDATE, 11, 64, b"");
    upd.hdr.buf_alloc = 3;
    upd.hdr.fwd_cnt = 3;
    m.handle_guest_packet(upd);
    let mut upd = guest_pkt(OP_CREDIT_UPDATE, 11, 64, b"");
    upd.hdr.buf_alloc = 64;
    upd.hdr.fwd_cnt = 6;
    let second = settle(&mut m, 2);
    m.handle_guest_packet(upd);
    let third = settle(&mut m, 2);
    let all: Vec<_> = second.iter().chain(&third).collect();
    assert_eq!(all[0].data, b"def");
    let last = all.last().unwrap().hdr;
    assert_eq!(
        (last.op, last.flags),
        (OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV)
    );
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn hang_ups_nobody_can_finish_are_reset_at_once() {
    let (mut m, l, paths) = listening("hupreset", 65);
    // The guest shut its receiving side, then the host hangs up.
    let peer = guest_conn(&mut m, &l, 12, 65, 65536);
    let mut shut = guest_pkt(OP_SHUTDOWN, 12, 65, b"");
    shut.hdr.flags = SHUTDOWN_RCV;
    m.handle_guest_packet(shut);
    drop(peer);
    let out = settle(&mut m, 5);
    assert_eq!(out.iter().map(|p| p.hdr.op).collect::<Vec<_>>(), [OP_RST]);
    // A host-initiated connection whose client hangs up before the guest answers.
    let mut host = UnixStream::connect(&paths.uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    assert_eq!(pump(&mut m).unwrap().hdr.op, OP_REQUEST);
    drop(host);
    let out = settle(&mut m, 5);
    assert_eq!(out.iter().map(|p| p.hdr.op).collect::<Vec<_>>(), [OP_RST]);
    assert_eq!(m.connection_count(), 0);
    assert!(!poll_ready(&m));
}

#[test]
fn zero_credit_guest_that_hangs_up_leaves_nothing() {
    let (mut m, l, _paths) = listening("zcguest", 66);
    let mut a = guest_conn(&mut m, &l, 13, 66, 0);
    let mut b = guest_conn(&mut m, &l, 14, 66, 0);
    a.write_all(&[1u8; 4096]).unwrap();
    b.write_all(&[1u8; 4096]).unwrap();
    assert!(settle(&mut m, 3).is_empty());
    m.handle_guest_packet(guest_pkt(OP_RST, 13, 66, b""));
    let mut shut = guest_pkt(OP_SHUTDOWN, 14, 66, b"");
    shut.hdr.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    m.handle_guest_packet(shut);
    settle(&mut m, 3);
    assert_eq!(m.connection_count(), 0);
    assert!(!poll_ready(&m));
    // Both host sockets see the end (closed with their data unread: EOF or a reset).
    for s in [&mut a, &mut b] {
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        match s.read(&mut [0u8; 8]) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
}

#[test]
fn a_full_host_backlog_is_refused_without_waiting() {
    let (mut m, l, paths) = listening("backlog", 67);
    let path = paths.port();
    // SAFETY: re-listening on an owned listening socket only changes its backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
    let mut fillers = Vec::new();
    while let Ok(s) = super::super::conn::connect_nonblocking(path) {
        fillers.push(s);
        assert!(fillers.len() < 64, "the backlog never filled");
    }
    let start = std::time::Instant::now();
    m.handle_guest_packet(guest_pkt(OP_REQUEST, 15, 67, b""));
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RST);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn a_connection_flood_stops_at_the_cap_and_buffers_stay_in_budget() {
    let (mut m, l, _paths) = listening("flood", 68);
    l.set_nonblocking(true).unwrap();
    let mut peers = Vec::new();
    let (mut ok, mut rst) = (0, 0);
    for src in 0..(MAX_CONNECTIONS as u32 + 100) {
        m.handle_guest_packet(guest_pkt(OP_REQUEST, 20_000 + src, 68, b""));
        match m.next_rx_packet(4096).unwrap().hdr.op {
            OP_RESPONSE => ok += 1,
            OP_RST => rst += 1,
            op => panic!("unexpected op {op}"),
        }
        while let Ok((s, _)) = l.accept() {
            peers.push(s);
        }
    }
    assert_eq!((ok, rst), (MAX_CONNECTIONS, 100));
    assert_eq!(m.connection_count(), MAX_CONNECTIONS);
    // Host peers that never read: every connection fills its buffer up to its credit, no
    // further (a packet beyond it is an overrun, and reset).
    let chunk = vec![0u8; 16 * 1024];
    for src in 0..MAX_CONNECTIONS as u32 {
        for _ in 0..(TX_BUF_SIZE as usize / chunk.len() + 16) {
            m.handle_guest_packet(guest_pkt(OP_RW, 20_000 + src, 68, &chunk));
            assert!(m.buffered_bytes() <= TX_BUDGET);
            if m.connection_count() < MAX_CONNECTIONS - src as usize {
                break;
            }
        }
    }
    assert!(m.buffered_bytes() <= TX_BUDGET);
    while m.next_rx_packet(4096).is_some() {}
    drop(peers);
}

#[test]
fn packets_to_other_cids_are_reset_from_where_they_were_headed() {
    let (mut m, _paths) = muxer("cids");
    for dst in [1, CID, 7] {
        let mut p = guest_pkt(OP_REQUEST, 5555, 1024, b"");
        p.hdr.dst_cid = dst;
        m.handle_guest_packet(p);
        let rst = m.next_rx_packet(4096).expect("RST");
        assert_eq!(
            (rst.hdr.op, rst.hdr.src_cid, rst.hdr.dst_cid),
            (OP_RST, dst, CID)
        );
        assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (1024, 5555));
    }
    // An RST to another CID gets no answer, and nothing is kept.
    let mut p = guest_pkt(OP_RST, 5555, 1024, b"");
    p.hdr.dst_cid = 1;
    m.handle_guest_packet(p);
    assert!(m.next_rx_packet(4096).is_none());
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn a_host_that_closes_with_guest_data_unread_still_delivers_its_reply() {
    let (mut m, l, _paths) = listening("errhup", 69);
    let mut peer = guest_conn(&mut m, &l, 16, 69, 65536);
    // The guest's bytes sit unread in the peer's socket when it closes: EPOLLERR on ours.
    m.handle_guest_packet(guest_pkt(OP_RW, 16, 69, b"unread"));
    peer.write_all(b"reply").unwrap();
    drop(peer);
    let out = settle(&mut m, 5);
    let ops: Vec<u16> = out.iter().map(|p| p.hdr.op).collect();
    assert_eq!(out[0].data, b"reply", "{ops:?}");
    assert!(matches!(ops[1..], [OP_SHUTDOWN] | [OP_RST]), "{ops:?}");
    assert_eq!(m.connection_count(), 0);
    assert!(!poll_ready(&m));
}
