//! Fuzzes the vsock muxer with real Unix sockets on the host side: guest packets with any
//! header (ops, ports, credit including zero, flags), host clients dialing the device socket,
//! host listeners the guest dials, host writes, half-closes and hang-ups, in any order.
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};

use hull_vmm::devices::virtio::vsock::muxer::Muxer;
use hull_vmm::devices::virtio::vsock::packet::{Header, Packet, HOST_CID};
use libfuzzer_sys::fuzz_target;

const CID: u64 = 3;
/// Host ports with a listener (`<uds>_<port>`); the guest may dial others (refused).
const LISTEN_PORTS: [u32; 2] = [5000, 5001];
/// Sockets kept at once, so an input cannot run the process out of descriptors.
const MAX_STREAMS: usize = 64;

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fuzz_target!(|data: &[u8]| {
    let uds = std::env::temp_dir().join(format!("hull-fuzz-mux-{}", std::process::id()));
    let _ = std::fs::remove_file(&uds);
    let listeners: Vec<(UnixListener, String)> = LISTEN_PORTS
        .iter()
        .map(|p| {
            let path = format!("{}_{p}", uds.display());
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path).unwrap();
            l.set_nonblocking(true).unwrap();
            (l, path)
        })
        .collect();
    let mut m = Muxer::new(CID, &uds).unwrap();
    let mut streams: Vec<UnixStream> = Vec::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 7 {
            // A guest packet: 24 bytes of header fields, then up to 63 bytes of data.
            0 if rest.len() >= 24 => {
                let (f, tail) = rest.split_at(24);
                let len = usize::from(f[23] % 64).min(tail.len());
                let (payload, tail) = tail.split_at(len);
                rest = tail;
                let foreign = f[22] & 0x80 != 0;
                let hdr = Header {
                    src_cid: if foreign { u64::from(f[22]) } else { CID },
                    dst_cid: if f[22] & 0x40 != 0 {
                        u64::from(f[21])
                    } else {
                        HOST_CID
                    },
                    src_port: 1000 + u32::from(f[0] % 8),
                    dst_port: if f[1] & 0x80 != 0 {
                        u32_at(f, 2)
                    } else {
                        LISTEN_PORTS[usize::from(f[1] & 1)] + u32::from(f[1] >> 1 & 1) * 10
                    },
                    len: if f[20] & 1 != 0 {
                        u32_at(f, 6)
                    } else {
                        len as u32
                    },
                    type_: if f[20] & 2 != 0 { u16::from(f[10]) } else { 1 },
                    op: u16::from(f[11] % 9),
                    flags: u32::from(f[12] % 4),
                    buf_alloc: u32_at(f, 13),
                    fwd_cnt: u32_at(f, 17),
                };
                m.handle_guest_packet(Packet {
                    hdr,
                    data: payload.to_vec(),
                });
            }
            // A host client dials the device socket and names a port (well-formed or not).
            1 if streams.len() < MAX_STREAMS => {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    let line = match rest.first().copied().unwrap_or(0) % 4 {
                        0 => "CONNECT 1000\n".to_string(),
                        1 => format!("CONNECT {}\n", 1000 + rest.len() % 8),
                        2 => "CONNECT nope\n".to_string(),
                        _ => "CONNECT 1000".to_string(),
                    };
                    let _ = s.set_nonblocking(true);
                    let _ = s.write_all(line.as_bytes());
                    streams.push(s);
                }
                rest = rest.get(1..).unwrap_or(&[]);
            }
            // Host listeners accept what the guest dialed.
            2 => {
                for (l, _) in &listeners {
                    while streams.len() < MAX_STREAMS {
                        let Ok((s, _)) = l.accept() else { break };
                        let _ = s.set_nonblocking(true);
                        streams.push(s);
                    }
                }
            }
            // A host socket writes, half-closes or hangs up.
            3 | 4 if !streams.is_empty() && !rest.is_empty() => {
                let i = usize::from(rest[0]) % streams.len();
                let n = usize::from(rest[0] >> 2) * 64;
                rest = &rest[1..];
                match op % 7 {
                    3 => {
                        let _ = streams[i].write(&vec![0x5a; n + 1]);
                    }
                    _ if n % 128 == 0 => {
                        let _ = streams[i].shutdown(std::net::Shutdown::Write);
                    }
                    _ => drop(streams.swap_remove(i)),
                }
            }
            5 => m.process_events(),
            // The guest takes packets, with RX buffers of a fuzzed size.
            _ => {
                let room = rest.first().map_or(0, |b| usize::from(*b) * 256);
                rest = rest.get(1..).unwrap_or(&[]);
                for _ in 0..64 {
                    if m.next_rx_packet(room).is_none() {
                        break;
                    }
                }
            }
        }
        assert!(m.connection_count() <= hull_vmm::devices::virtio::vsock::muxer::MAX_CONNECTIONS);
        assert!(m.buffered_bytes() <= hull_vmm::devices::virtio::vsock::muxer::TX_BUDGET);
    }
    drop(m);
    for (_, path) in &listeners {
        let _ = std::fs::remove_file(path);
    }
});
