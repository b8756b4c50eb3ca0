//! Publishes task events to containerd from one thread, in the order they were
//! emitted, so a slow containerd never blocks an RPC or reorders events. OOM
//! events, which the guest triggers at will, are bounded in the queue.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::topics::TASK_OOM_EVENT_TOPIC;
use hull_protocol::rpc::Client;
use ttrpc::Request;

/// OOM events waiting for containerd beyond this many are dropped (and logged).
pub const MAX_QUEUED_OOM: usize = 64;

/// One event for containerd: its topic (e.g. `/tasks/exit`) and payload.
pub struct Event {
    pub topic: &'static str,
    pub payload: Box<dyn MessageDyn>,
}

/// Where events end up: containerd's event service in the shim, a vector in tests.
pub trait EventSink: Send + 'static {
    /// Delivers one event; failures are logged by the sink.
    fn publish(&mut self, event: Event);
}

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: Sender<Event>,
    /// OOM events queued and not yet published.
    queued_oom: Arc<AtomicUsize>,
}

impl Events {
    /// Starts the publishing thread; it ends once every [`Events`] clone is dropped.
    pub fn start(sink: impl EventSink) -> (Self, JoinHandle<()>) {
        let (tx, rx) = channel::<Event>();
        let queued_oom = Arc::new(AtomicUsize::new(0));
        let counter = queued_oom.clone();
        let mut sink = sink;
        let handle = std::thread::spawn(move || {
            for event in rx {
                let oom = event.topic == TASK_OOM_EVENT_TOPIC;
                sink.publish(event);
                if oom {
                    counter.fetch_sub(1, Ordering::SeqCst);
                }
            }
        });
        (Self { tx, queued_oom }, handle)
    }

    /// Queues an event behind every event emitted before it; an OOM event is
    /// dropped instead when [`MAX_QUEUED_OOM`] are already waiting.
    pub fn emit(&self, topic: &'static str, payload: impl MessageDyn) {
        if topic == TASK_OOM_EVENT_TOPIC
            && self.queued_oom.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED_OOM
        {
            self.queued_oom.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                topic,
                "containerd is behind on OOM events; this one is dropped"
            );
            return;
        }
        let event = Event {
            topic,
            payload: Box::new(payload),
        };
        if self.tx.send(event).is_err() {
            if topic == TASK_OOM_EVENT_TOPIC {
                self.queued_oom.fetch_sub(1, Ordering::SeqCst);
            }
            tracing::warn!(topic, "event publisher is gone; event dropped");
        }
    }
}

/// How long containerd has to answer one Forward (containerd's own shims give it 5 s; the
/// lab's containerd is slower).
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(10);
/// Tries after the first before an event is dropped; the n-th waits n seconds first, as
/// containerd's own shims do, and keeps the events behind it waiting (their order holds).
pub const FORWARD_RETRIES: u32 = 5;

/// Sends events to containerd's event service (`Events.Forward`) over ttrpc,
/// at the address containerd gives the shim (`TTRPC_ADDRESS`). Runs on
/// [`hull_protocol::rpc::Client`], which sleeps while no event is sent; a
/// broken connection (containerd restarted) is dialled again at once. An event
/// containerd does not answer within [`FORWARD_DEADLINE`] is sent again, up to
/// [`FORWARD_RETRIES`] times, then dropped with an error in the log, so a
/// containerd that accepts and never answers cannot hold the queue for ever.
pub struct RemoteSink {
    address: String,
    namespace: String,
    client: Option<Client>,
    deadline: Duration,
    retry_delay: Duration,
    retries: u32,
}

const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";

impl RemoteSink {
    /// Connects to containerd's ttrpc socket (`unix://` prefix optional).
    pub fn connect(address: &str, namespace: &str) -> std::io::Result<Self> {
        let mut sink = Self {
            address: address.to_string(),
            namespace: namespace.to_string(),
            client: None,
            deadline: FORWARD_DEADLINE,
            retry_delay: Duration::from_secs(1),
            retries: FORWARD_RETRIES,
        };
        sink.client = Some(sink.dial()?);
        Ok(sink)
    }

    fn dial(&self) -> std::io::Result<Client> {
        let path = crate::shim::socket_path(&self.address);
        let stream = UnixStream::connect(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("connect to containerd's ttrpc socket {path}: {e}"),
            )
        })?;
        Client::new(stream, "events")
    }

    /// The Forward request for one event.
    fn request(&self, event: &Event) -> Result<Request, String> {
        let value = event
            .payload
            .write_to_bytes_dyn()
            .map_err(|e| format!("encode the event: {e}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut envelope = Envelope::new();
        envelope.timestamp = MessageField::some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
            ..Default::default()
        });
        envelope.namespace = self.namespace.clone();
        envelope.topic = event.topic.to_string();
        envelope.event = MessageField::some(Any {
            type_url: event.payload.descriptor_dyn().full_name().to_string(),
            value,
            ..Default::default()
        });
        let mut forward = ForwardRequest::new();
        forward.envelope = MessageField::some(envelope);
        let mut req = Request::new();
        req.service = EVENTS_SERVICE.into();
        req.method = "Forward".into();
        req.payload = forward
            .write_to_bytes()
            .map_err(|e| format!("encode the request: {e}"))?;
        req.timeout_nano = i64::try_from(self.deadline.as_nanos()).unwrap_or(i64::MAX);
        Ok(req)
    }

    /// One Forward; a connection that broke is dialled again once, at once.
    fn forward_once(&mut self, req: &Request) -> ttrpc::Result<()> {
        let socket = |e: std::io::Error| ttrpc::Error::Socket(e.to_string());
        let mut client = match self.client.take() {
            Some(c) => c,
            None => self.dial().map_err(socket)?,
        };
        let mut sent = client.request(req.clone());
        if let Err(ttrpc::Error::Socket(why)) = &sent {
            tracing::warn!("containerd's event connection broke ({why}); dialling again");
            client = self.dial().map_err(socket)?;
            sent = client.request(req.clone());
        }
        self.client = Some(client);
        sent.map(drop)
    }

    /// Forwards `req`, again after a pause while containerd does not answer; an
    /// error status is containerd's answer, and is not retried.
    fn forward(&mut self, topic: &str, req: Request) -> Result<(), String> {
        let mut tries = 0;
        loop {
            match self.forward_once(&req) {
                Ok(()) => return Ok(()),
                Err(e @ ttrpc::Error::RpcStatus(_)) => return Err(e.to_string()),
                Err(e) if tries == self.retries => {
                    return Err(format!("dropped after {} tries: {e}", tries + 1))
                }
                Err(e) => {
                    tries += 1;
                    tracing::warn!(
                        topic,
                        "containerd did not take an event ({e}); \
                        sending it again (try {} of {})",
                        tries + 1,
                        self.retries + 1
                    );
                    std::thread::sleep(self.retry_delay * tries);
                }
            }
        }
    }
}

impl EventSink for RemoteSink {
    fn publish(&mut self, event: Event) {
        if let Err(e) = self
            .request(&event)
            .and_then(|req| self.forward(event.topic, req))
        {
            tracing::error!(topic = event.topic, "publish event: {e}");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records topics, for tests of the task service.
    #[derive(Clone, Default)]
    pub struct Recorder(pub Arc<Mutex<Vec<&'static str>>>);

    impl EventSink for Recorder {
        fn publish(&mut self, event: Event) {
            self.0.lock().unwrap().push(event.topic);
        }
    }

    #[test]
    fn events_arrive_in_emission_order() {
        use containerd_shim::protos::events::task::TaskStart;
        let rec = Recorder::default();
        let (events, handle) = Events::start(rec.clone());
        let topics = [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
        ];
        for t in topics {
            events.emit(t, TaskStart::new());
        }
        drop(events);
        handle.join().unwrap();
        assert_eq!(*rec.0.lock().unwrap(), topics);
    }

    /// Blocks every publish until released, like a containerd that stopped reading.
    struct Stuck(Arc<(Mutex<bool>, std::sync::Condvar)>, Recorder);

    impl EventSink for Stuck {
        fn publish(&mut self, event: Event) {
            let (lock, cv) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.publish(event);
        }
    }

    #[test]
    fn queued_oom_events_are_bounded_and_others_never_dropped() {
        use containerd_shim::protos::events::task::{TaskOOM, TaskStart};
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let rec = Recorder::default();
        let (events, handle) = Events::start(Stuck(gate.clone(), rec.clone()));
        for _ in 0..10_000 {
            events.emit(TASK_OOM_EVENT_TOPIC, TaskOOM::new());
        }
        events.emit("/tasks/exit", TaskStart::new());
        assert!(events.queued_oom.load(Ordering::SeqCst) <= MAX_QUEUED_OOM);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(events);
        handle.join().unwrap();
        let got = rec.0.lock().unwrap().clone();
        let ooms = got.iter().filter(|t| **t == TASK_OOM_EVENT_TOPIC).count();
        assert!(
            (1..=MAX_QUEUED_OOM + 1).contains(&ooms),
            "{ooms} OOM events published"
        );
        assert_eq!(
            got.last(),
            Some(&"/tasks/exit"),
            "lifecycle events always pass"
        );
    }

    /// containerd's side, played by ttrpc's own server with the generated
    /// Events service: records each forwarded envelope.
    struct Containerd(Arc<Mutex<Vec<Envelope>>>);

    impl containerd_shim::protos::shim::events_ttrpc::Events for Containerd {
        fn forward(
            &self,
            _: &ttrpc::TtrpcContext,
            req: ForwardRequest,
        ) -> ttrpc::Result<containerd_shim::protos::types::empty::Empty> {
            self.0
                .lock()
                .unwrap()
                .push(req.envelope.unwrap_or_default());
            Ok(Default::default())
        }
    }

    fn containerd(path: &std::path::Path) -> (ttrpc::Server, Arc<Mutex<Vec<Envelope>>>) {
        use containerd_shim::protos::shim::events_ttrpc::create_events;
        let got = Arc::new(Mutex::new(Vec::new()));
        let service = create_events(Arc::new(Containerd(got.clone())));
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .unwrap()
            .register_service(service);
        server.start().unwrap();
        (server, got)
    }

    /// Events reach a real ttrpc event service in order, with the namespace,
    /// topic and typed payload containerd needs; after containerd restarts,
    /// the sink dials again and the next event still arrives.
    #[test]
    fn the_remote_sink_forwards_to_containerds_event_service() {
        use containerd_shim::protos::events::task::{TaskExit, TaskStart};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock.ttrpc");
        let (server, got) = containerd(&path);
        let mut sink =
            RemoteSink::connect(&format!("unix://{}", path.display()), "k8s.io").unwrap();
        let mut exit = TaskExit::new();
        exit.container_id = "c1".into();
        exit.exit_status = 3;
        sink.publish(Event {
            topic: "/tasks/start",
            payload: Box::new(TaskStart::new()),
        });
        sink.publish(Event {
            topic: "/tasks/exit",
            payload: Box::new(exit.clone()),
        });
        {
            let got = got.lock().unwrap();
            let topics: Vec<_> = got.iter().map(|e| e.topic.as_str()).collect();
            assert_eq!(topics, ["/tasks/start", "/tasks/exit"]);
            let e = &got[1];
            assert_eq!(e.namespace, "k8s.io");
            assert!(e.timestamp.seconds > 0);
            assert_eq!(e.event.type_url, "containerd.events.TaskExit");
            assert_eq!(TaskExit::parse_from_bytes(&e.event.value).unwrap(), exit);
        }
        server.shutdown();
        let _ = std::fs::remove_file(&path);
        let (_server, again) = containerd(&path);
        sink.publish(Event {
            topic: "/tasks/delete",
            payload: Box::new(TaskStart::new()),
        });
        let topics: Vec<_> = again
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.topic.clone())
            .collect();
        assert_eq!(
            topics,
            ["/tasks/delete"],
            "the sink dialled the new containerd"
        );
    }

    /// A containerd that accepts the connection and reads every request but
    /// never answers: each event is sent 1 + retries times, each within the
    /// deadline, then dropped, and the publisher moves on to the next event.
    #[test]
    fn an_unanswered_event_is_sent_again_then_dropped() {
        use containerd_shim::protos::events::task::TaskStart;
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock.ttrpc");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let frames = Arc::new(AtomicUsize::new(0));
        let counted = frames.clone();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut header = [0u8; 10];
            while conn.read_exact(&mut header).is_ok() {
                let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
                let mut body = vec![0u8; len];
                if conn.read_exact(&mut body).is_err() {
                    break;
                }
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut sink = RemoteSink::connect(&format!("unix://{}", path.display()), "ns").unwrap();
        sink.deadline = Duration::from_millis(100);
        sink.retry_delay = Duration::from_millis(10);
        sink.retries = 2;
        let start = std::time::Instant::now();
        for topic in ["/tasks/start", "/tasks/exit"] {
            sink.publish(Event {
                topic,
                payload: Box::new(TaskStart::new()),
            });
        }
        let took = start.elapsed();
        // The last frame may still be in the reader's hands.
        while frames.load(Ordering::SeqCst) < 6 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            frames.load(Ordering::SeqCst),
            6,
            "3 tries for each of 2 events"
        );
        assert!(took < Duration::from_secs(5), "publishing took {took:?}");
    }

    #[test]
    fn the_remote_sink_says_which_socket_it_could_not_reach() {
        let err = RemoteSink::connect("unix:///nonexistent/containerd.sock.ttrpc", "default")
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("containerd's ttrpc socket /nonexistent/containerd.sock.ttrpc"),
            "{err}"
        );
    }
}
