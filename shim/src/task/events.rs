//! Publishes task events to containerd from one thread, in the order they were
//! emitted, so a slow containerd never blocks an RPC or reorders events. OOM
//! events, which the guest triggers at will, are bounded in the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics::TASK_OOM_EVENT_TOPIC;

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

/// Sends events to containerd through its ttrpc event service.
pub struct RemoteSink {
    pub publisher: containerd_shim::publisher::RemotePublisher,
    pub namespace: String,
}

impl EventSink for RemoteSink {
    fn publish(&mut self, event: Event) {
        let ctx = containerd_shim::Context::default();
        if let Err(e) = self
            .publisher
            .publish(ctx, event.topic, &self.namespace, event.payload)
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
}
