//! A blocking ttrpc client whose threads sleep in the kernel while idle.
//!
//! ttrpc's own synchronous client wakes its receiver every 10 ms for as long
//! as the client lives (it polls the socket with a timeout, to notice that the
//! last handle was dropped). A shim holds two clients per pod (the agent's,
//! and containerd's event service), so an idle pod cost ~200 wake-ups a
//! second on the host. This client speaks the same wire format with two named
//! threads per connection: a receiver blocked in `read(2)` and a sender blocked
//! on its queue. Dropping the last handle shuts the socket down, which ends
//! the receiver's read and the sender's queue; nothing polls.
//!
//! Calls keep ttrpc's contract, so the generated `AgentClient` runs on it
//! unchanged (build.rs swaps the client type): a context timeout of 0 waits
//! for ever, an error status from the server is `Error::RpcStatus`, and a
//! call that got no answer (timeout, closed or broken connection) is any other
//! error. Everything the server sends is hostile: a frame over ttrpc's 4 MiB
//! limit, or a read that fails, closes the connection and fails every call in
//! flight with the reason; replies to unknown or abandoned streams are dropped.

use std::collections::HashMap;
use std::io::Read;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::errno::Errno;
use protobuf::Message;
use ttrpc::proto::{
    MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE,
};
use ttrpc::{Code, Error, Request, Response};

/// What a waiting call receives: the reply's body, or why none will come.
type Reply = Result<Vec<u8>, Error>;

/// A cloneable handle on one ttrpc connection; clones share it, and calls
/// may run concurrently from any thread.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    calls: Arc<Calls>,
    /// Frames for the sender thread; `None` only while dropping.
    queue: Option<Sender<Vec<u8>>>,
    stream: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

/// The calls waiting for a reply, by stream id, and the next id to use.
#[derive(Default)]
struct Calls {
    state: Mutex<CallState>,
}

#[derive(Default)]
struct CallState {
    waiting: HashMap<u32, SyncSender<Reply>>,
    next_id: u32,
    /// Set once the connection is unusable: why.
    closed: Option<String>,
}

impl Calls {
    fn lock(&self) -> MutexGuard<'_, CallState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new call; its stream id, or why the connection is closed.
    fn register(&self, tx: SyncSender<Reply>) -> Result<u32, Error> {
        let mut s = self.lock();
        if let Some(why) = &s.closed {
            return Err(Error::Socket(why.clone()));
        }
        // Client-initiated streams have odd ids.
        let id = s.next_id.wrapping_mul(2).wrapping_add(1);
        s.next_id = s.next_id.wrapping_add(1);
        s.waiting.insert(id, tx);
        Ok(id)
    }

    fn take(&self, id: u32) -> Option<SyncSender<Reply>> {
        self.lock().waiting.remove(&id)
    }

    /// Marks the connection closed and fails every waiting call with `why`.
    fn close(&self, why: String) {
        let mut s = self.lock();
        for (_, tx) in s.waiting.drain() {
            let _ = tx.try_send(Err(Error::Socket(why.clone())));
        }
        s.closed.get_or_insert(why);
    }
}

impl Client {
    /// Takes over a connected stream socket (Unix or vsock: the client only
    /// reads, writes and shuts it down). `name` (a few letters) names the
    /// connection's threads, `<name>-recv` and `<name>-send`.
    pub fn new(socket: impl Into<OwnedFd>, name: &str) -> std::io::Result<Client> {
        let stream = UnixStream::from(socket.into());
        let calls = Arc::new(Calls::default());
        let (queue, frames) = mpsc::channel();
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        let recv = {
            let calls = calls.clone();
            thread::Builder::new()
                .name(format!("{name}-recv"))
                .spawn(move || receive(reader, &calls))?
        };
        let send = {
            let calls = calls.clone();
            thread::Builder::new()
                .name(format!("{name}-send"))
                .spawn(move || send(writer, frames, &calls))
        };
        let send = match send {
            Ok(t) => t,
            Err(e) => {
                let _ = stream.shutdown(Shutdown::Both);
                let _ = recv.join();
                return Err(e);
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                calls,
                queue: Some(queue),
                stream,
                threads: vec![recv, send],
            }),
        })
    }

    /// Sends one unary request and waits for its response: for ever when
    /// `req.timeout_nano` is 0, else at most that long.
    pub fn request(&self, req: Request) -> ttrpc::Result<Response> {
        let body = req
            .write_to_bytes()
            .map_err(|e| Error::Others(format!("encode the request: {e}")))?;
        if body.len() > MESSAGE_LENGTH_MAX {
            return Err(Error::RpcStatus(ttrpc::get_status(
                Code::INVALID_ARGUMENT,
                format!(
                    "the {}.{} request is {} bytes, over ttrpc's limit of {MESSAGE_LENGTH_MAX}",
                    req.service,
                    req.method,
                    body.len()
                ),
            )));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let calls = &self.inner.calls;
        let id = calls.register(tx)?;
        let request = frame(id, MESSAGE_TYPE_REQUEST, &body);
        let queued = self.inner.queue.as_ref().map(|q| q.send(request));
        if !matches!(queued, Some(Ok(()))) {
            calls.take(id);
            return Err(Error::Socket("the connection's sender has stopped".into()));
        }
        let reply = if req.timeout_nano <= 0 {
            rx.recv()
                .map_err(|_| Error::Socket("the connection closed".into()))
        } else {
            let limit = Duration::from_nanos(req.timeout_nano as u64);
            rx.recv_timeout(limit).map_err(|e| {
                calls.take(id);
                match e {
                    RecvTimeoutError::Timeout => Error::Others(format!(
                        "no answer to {}.{} within {limit:?}",
                        req.service, req.method
                    )),
                    RecvTimeoutError::Disconnected => Error::Socket("the connection closed".into()),
                }
            })
        };
        let res = Response::parse_from_bytes(&reply??)
            .map_err(|e| Error::Others(format!("decode the response: {e}")))?;
        match res.status.as_ref() {
            Some(status) if status.code() != Code::OK => Err(Error::RpcStatus(status.clone())),
            _ => Ok(res),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Both threads hold their own clone of the socket: the shutdown ends
        // the receiver's read, and the closed queue ends the sender.
        let _ = self.stream.shutdown(Shutdown::Both);
        self.queue = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A frame: the header (body length, stream id, type, no flags) and the body.
fn frame(id: u32, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(MESSAGE_HEADER_LENGTH + body.len());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[kind, 0]);
    f.extend_from_slice(body);
    f
}

/// The sender thread: writes queued frames in order until the queue closes
/// or a write fails.
fn send(stream: UnixStream, frames: Receiver<Vec<u8>>, calls: &Calls) {
    for frame in frames {
        if let Err(e) = send_all(&stream, &frame) {
            calls.close(format!("write to the connection: {e}"));
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Writes all of `buf` with MSG_NOSIGNAL: a peer that hung up is an error,
/// never a SIGPIPE, whatever the program's signal disposition.
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> nix::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    while !buf.is_empty() {
        match send(stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The receiver thread: reads frames and hands each response to its call,
/// until the connection ends or breaks the protocol.
fn receive(mut stream: UnixStream, calls: &Calls) {
    let why = loop {
        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        if let Err(e) = stream.read_exact(&mut header) {
            break format!("the connection closed: {e}");
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let kind = header[8];
        if len as usize > MESSAGE_LENGTH_MAX {
            break format!(
                "the server sent a frame of {len} bytes, over ttrpc's limit of \
                 {MESSAGE_LENGTH_MAX}; the connection is closed"
            );
        }
        let mut body = vec![0u8; len as usize];
        if let Err(e) = stream.read_exact(&mut body) {
            break format!("the connection closed inside a frame: {e}");
        }
        if kind != MESSAGE_TYPE_RESPONSE {
            continue;
        }
        if let Some(tx) = calls.take(id) {
            let _ = tx.try_send(Ok(body));
        }
    };
    calls.close(why);
    let _ = stream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Reads one request frame: its stream id and decoded request.
    fn read_request(sock: &mut UnixStream) -> Option<(u32, Request)> {
        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        sock.read_exact(&mut header).ok()?;
        let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).ok()?;
        let id = u32::from_be_bytes(header[4..8].try_into().unwrap());
        Some((id, Request::parse_from_bytes(&body).unwrap()))
    }

    /// A server on the other end of a socket pair: answers each request with
    /// `answer(request)` (None: no answer).
    fn server(
        mut theirs: UnixStream,
        answer: impl Fn(&Request) -> Option<Response> + Send + 'static,
    ) -> JoinHandle<usize> {
        thread::spawn(move || {
            let mut served = 0;
            while let Some((id, req)) = read_request(&mut theirs) {
                served += 1;
                if let Some(res) = answer(&req) {
                    let out = res.write_to_bytes().unwrap();
                    if theirs
                        .write_all(&frame(id, MESSAGE_TYPE_RESPONSE, &out))
                        .is_err()
                    {
                        break;
                    }
                }
            }
            served
        })
    }

    fn request(method: &str, timeout: Duration) -> Request {
        let mut req = Request::new();
        req.service = "test.Echo".into();
        req.method = method.into();
        req.payload = method.as_bytes().to_vec();
        req.timeout_nano = timeout.as_nanos() as i64;
        req
    }

    fn echo(req: &Request) -> Option<Response> {
        let mut res = Response::new();
        match req.method.as_str() {
            "Silent" => return None,
            "Fail" => {
                res.status = protobuf::MessageField::some(ttrpc::get_status(
                    Code::NOT_FOUND,
                    "no such thing".to_string(),
                ))
            }
            _ => res.payload = req.payload.clone(),
        }
        Some(res)
    }

    #[test]
    fn calls_get_their_own_replies_and_statuses() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let srv = server(theirs, echo);
        let client = Client::new(ours, "test").unwrap();
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let c = client.clone();
                thread::spawn(move || {
                    let m = format!("Call{i}");
                    let res = c.request(request(&m, Duration::ZERO)).unwrap();
                    assert_eq!(res.payload, m.as_bytes());
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let err = client
            .request(request("Fail", Duration::from_secs(5)))
            .unwrap_err();
        assert!(
            matches!(&err, Error::RpcStatus(s) if s.code() == Code::NOT_FOUND && s.message == "no such thing"),
            "{err:?}"
        );
        drop(client);
        assert_eq!(srv.join().unwrap(), 9, "the drop closed the connection");
    }

    #[test]
    fn an_unanswered_call_times_out_and_the_connection_lives_on() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let _srv = server(theirs, echo);
        let client = Client::new(ours, "test").unwrap();
        let err = client
            .request(request("Silent", Duration::from_millis(100)))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Others(m) if m.contains("no answer to test.Echo.Silent")),
            "{err:?}"
        );
        let res = client
            .request(request("After", Duration::from_secs(5)))
            .unwrap();
        assert_eq!(res.payload, b"After");
    }

    /// The shim gives up on a hung agent by shutting a duplicate of the socket
    /// down: a call waiting without a deadline must end, and later calls fail
    /// at once.
    #[test]
    fn a_shutdown_ends_waiting_calls_and_refuses_new_ones() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let _srv = server(theirs, echo);
        let dup = ours.try_clone().unwrap();
        let client = Client::new(ours, "test").unwrap();
        let waiter = {
            let c = client.clone();
            thread::spawn(move || c.request(request("Silent", Duration::ZERO)))
        };
        thread::sleep(Duration::from_millis(100));
        dup.shutdown(Shutdown::Both).unwrap();
        let err = waiter.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::Socket(_)), "{err:?}");
        let err = client
            .request(request("Later", Duration::ZERO))
            .unwrap_err();
        assert!(matches!(err, Error::Socket(_)), "{err:?}");
    }

    /// A hostile server claims a 4 GiB reply: the call ends at once with the
    /// reason, without reading (or allocating) the claimed body.
    #[test]
    fn an_oversized_frame_closes_the_connection_with_the_reason() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let client = Client::new(ours, "test").unwrap();
        let srv = thread::spawn(move || {
            let (id, _) = read_request(&mut theirs).unwrap();
            let mut header = frame(id, MESSAGE_TYPE_RESPONSE, &[]);
            header[..4].copy_from_slice(&u32::MAX.to_be_bytes());
            theirs.write_all(&header).unwrap();
            // Keep the socket open: the client must not wait for a body.
            let mut rest = Vec::new();
            let _ = theirs.read_to_end(&mut rest);
        });
        let err = client.request(request("Big", Duration::ZERO)).unwrap_err();
        assert!(
            matches!(&err, Error::Socket(m) if m.contains("4294967295")),
            "{err:?}"
        );
        drop(client);
        srv.join().unwrap();
    }

    /// Replies to streams nobody waits for, and frames that are not
    /// responses, are dropped; the call that is waiting still gets its own.
    #[test]
    fn stray_frames_are_ignored() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let client = Client::new(ours, "test").unwrap();
        let srv = thread::spawn(move || {
            let (id, _) = read_request(&mut theirs).unwrap();
            let mut res = Response::new();
            res.payload = b"mine".to_vec();
            let out = res.write_to_bytes().unwrap();
            let stray = 77;
            theirs
                .write_all(&frame(stray, MESSAGE_TYPE_RESPONSE, b"junk"))
                .unwrap();
            theirs.write_all(&frame(id, 3, b"data")).unwrap();
            theirs
                .write_all(&frame(id, MESSAGE_TYPE_RESPONSE, &out))
                .unwrap();
            theirs
        });
        let res = client
            .request(request("Mine", Duration::from_secs(5)))
            .unwrap();
        assert_eq!(res.payload, b"mine");
        drop(srv.join().unwrap());
    }

    /// An idle client costs no wake-ups: its receiver sleeps in read(2).
    #[test]
    fn an_idle_client_does_not_wake() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let _srv = server(theirs, echo);
        let client = Client::new(ours, "idle").unwrap();
        client
            .request(request("Warm", Duration::from_secs(5)))
            .unwrap();
        let switches = || -> u64 {
            let mut total = 0;
            for task in std::fs::read_dir("/proc/self/task").unwrap() {
                let dir = task.unwrap().path();
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if !comm.starts_with("idle-") {
                    continue;
                }
                let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
                total += status
                    .lines()
                    .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .map(|v| v.trim().parse::<u64>().unwrap())
                    .sum::<u64>();
            }
            total
        };
        let before = switches();
        thread::sleep(Duration::from_millis(500));
        let woke = switches() - before;
        // ttrpc's own client woke ~50 times in this half second.
        assert!(
            woke <= 2,
            "an idle client's threads woke {woke} times in 0.5 s"
        );
    }
}
