//! Unit tests of the vsock muxer: handshakes both ways, data, credit and hostile packets.

use super::*;

const CID: u64 = 3;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hull-mux-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
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
    let uds = tmp("host");
    let mut m = Muxer::new(CID, &uds).unwrap();
    let mut host = UnixStream::connect(&uds).unwrap();
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
    let uds = tmp("guest");
    let listener = UnixListener::bind(format!("{}_52", uds.display())).unwrap();
    let mut m = Muxer::new(CID, &uds).unwrap();
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
    let _ = std::fs::remove_file(format!("{}_52", uds.display()));
}

#[test]
fn credit_limits_what_the_host_sends() {
    let uds = tmp("credit");
    let listener = UnixListener::bind(format!("{}_60", uds.display())).unwrap();
    let mut m = Muxer::new(CID, &uds).unwrap();
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
    let _ = std::fs::remove_file(format!("{}_60", uds.display()));
}

#[test]
fn hostile_packets() {
    let uds = tmp("hostile");
    let mut m = Muxer::new(CID, &uds).unwrap();
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
    let mut host = UnixStream::connect(&uds).unwrap();
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
    let uds = tmp("overrun");
    let listener = UnixListener::bind(format!("{}_61", uds.display())).unwrap();
    let mut m = Muxer::new(CID, &uds).unwrap();
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
    let _ = std::fs::remove_file(format!("{}_61", uds.display()));
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
    let uds = tmp("quiet");
    let mut m = Muxer::new(CID, &uds).unwrap();
    let mut host = UnixStream::connect(&uds).unwrap();
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
    let uds = tmp("hup");
    let listener = UnixListener::bind(format!("{}_62", uds.display())).unwrap();
    let mut m = Muxer::new(CID, &uds).unwrap();
    m.handle_guest_packet(guest_pkt(OP_REQUEST, 9, 62, b""));
    assert_eq!(m.next_rx_packet(4096).unwrap().hdr.op, OP_RESPONSE);
    let (peer, _) = listener.accept().unwrap();
    drop(peer);
    assert_eq!(pump(&mut m).unwrap().hdr.op, OP_SHUTDOWN);
    assert!(
        pump(&mut m).is_none(),
        "a hung-up socket must not be reported again"
    );
    let _ = std::fs::remove_file(format!("{}_62", uds.display()));
}
