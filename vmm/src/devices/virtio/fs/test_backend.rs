//! Test helper: a fake vhost-user backend on one end of a socket pair. It answers like virtiofsd
//! (features, protocol features, queue count, REPLY_ACK acks) and records every request, so the
//! frontend's handshake can be checked without virtiofsd.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};
use vhost::vhost_user::Frontend;

use super::vhost_user::{F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, NUM_QUEUES};
use crate::devices::virtio::VIRTIO_F_VERSION_1;

/// virtiofsd 1.14's virtio features: VERSION_1, ring features, PROTOCOL_FEATURES, LOG_ALL.
pub const FEATURES: u64 =
    VIRTIO_F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX | 1 << 30 | 1 << 26;

/// Some of virtiofsd 1.14's protocol features: those Hull wants plus two it must leave off.
pub const PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::RESET_DEVICE)
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::BACKEND_REQ);

const NEED_REPLY: u32 = 0x8;
const REPLY: u32 = 0x4;

/// One request the backend received: its code and body (descriptors are dropped).
#[derive(Debug, Clone)]
pub struct Request {
    /// The request code.
    pub code: u32,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The little-endian u64 at `offset` of the body.
    pub fn u64_at(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.body[offset..offset + 8].try_into().unwrap())
    }
    /// The little-endian u32 at `offset` of the body.
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.body[offset..offset + 4].try_into().unwrap())
    }
}

/// How the fake behaves.
#[derive(Clone, Copy)]
pub struct Behaviour {
    /// Virtio features offered.
    pub features: u64,
    /// Protocol features offered.
    pub protocol: VhostUserProtocolFeatures,
    /// Queues reported by GET_QUEUE_NUM.
    pub queues: u64,
    /// A request answered with a failure ack.
    pub refuse: Option<FrontendReq>,
    /// Hang up after this many requests.
    pub hang_up_after: Option<usize>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            features: FEATURES,
            protocol: PROTOCOL,
            queues: NUM_QUEUES as u64,
            refuse: None,
            hang_up_after: None,
        }
    }
}

fn reply(s: &mut UnixStream, code: u32, body: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(12 + body.len());
    msg.extend_from_slice(&code.to_le_bytes());
    msg.extend_from_slice(&(0x1 | REPLY).to_le_bytes());
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    s.write_all(&msg)
}

fn serve(mut s: UnixStream, b: Behaviour) -> Vec<Request> {
    let mut log = Vec::new();
    loop {
        if b.hang_up_after == Some(log.len()) {
            return log;
        }
        let mut hdr = [0u8; 12];
        if s.read_exact(&mut hdr).is_err() {
            return log;
        }
        let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        let (code, flags, size) = (word(0), word(4), word(8));
        let mut body = vec![0u8; size as usize];
        if s.read_exact(&mut body).is_err() {
            return log;
        }
        let is = |r: FrontendReq| code == r as u32;
        let answer = if is(FrontendReq::GET_FEATURES) {
            Some(b.features.to_le_bytes().to_vec())
        } else if is(FrontendReq::GET_PROTOCOL_FEATURES) {
            Some(b.protocol.bits().to_le_bytes().to_vec())
        } else if is(FrontendReq::GET_QUEUE_NUM) {
            Some(b.queues.to_le_bytes().to_vec())
        } else if is(FrontendReq::GET_VRING_BASE) {
            Some(body.clone())
        } else if flags & NEED_REPLY != 0 {
            let failed = b.refuse.is_some_and(is);
            Some(u64::from(failed).to_le_bytes().to_vec())
        } else {
            None
        };
        log.push(Request { code, body });
        if let Some(a) = answer {
            if reply(&mut s, code, &a).is_err() {
                return log;
            }
        }
    }
}

/// A frontend connected to a fake backend; joining the handle (after the frontend is dropped)
/// gives the requests the backend saw.
pub fn pair(b: Behaviour) -> (Frontend, JoinHandle<Vec<Request>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = std::thread::spawn(move || serve(theirs, b));
    (Frontend::from_stream(ours, NUM_QUEUES as u64), backend)
}

/// The codes of `log`.
pub fn codes(log: &[Request]) -> Vec<u32> {
    log.iter().map(|r| r.code).collect()
}
