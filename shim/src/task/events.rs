//! Publishes task events to containerd from one thread, in the order they were
//! emitted, so a slow containerd never blocks an RPC or reorders events.

use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

use containerd_shim::protos::protobuf::MessageDyn;

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
}

impl Events {
    /// Starts the publishing thread; it ends once every [`Events`] clone is dropped.
    pub fn start(mut sink: impl EventSink) -> (Self, JoinHandle<()>) {
        let (tx, rx) = channel::<Event>();
        let handle = std::thread::spawn(move || {
            for event in rx {
                sink.publish(event);
            }
        });
        (Self { tx }, handle)
    }

    /// Queues an event behind every event emitted before it.
    pub fn emit(&self, topic: &'static str, payload: impl MessageDyn) {
        let event = Event {
            topic,
            payload: Box::new(payload),
        };
        if self.tx.send(event).is_err() {
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
}
