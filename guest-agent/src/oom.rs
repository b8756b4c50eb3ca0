//! OOM events: watches each container's `memory.events` for new `oom_kill`s
//! and queues the container id for the blocking OomEvent call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;

/// How often memory.events is read.
const POLL: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct OomMonitor {
    watched: Mutex<HashMap<String, (Cgroup, u64)>>,
    events: Mutex<VecDeque<String>>,
    arrived: Condvar,
}

impl OomMonitor {
    /// A monitor with its polling thread, which ends with the monitor.
    pub fn start() -> Arc<OomMonitor> {
        let monitor = Arc::new(OomMonitor::default());
        let weak = Arc::downgrade(&monitor);
        std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || poll(weak))
            .expect("spawn the OOM monitor");
        monitor
    }

    pub fn watch(&self, id: &str, cgroup: &Cgroup) {
        let seen = cgroup.oom_kills();
        self.watched
            .lock()
            .expect("oom lock")
            .insert(id.into(), (cgroup.clone(), seen));
    }

    /// Stops watching, reporting a last kill if one slipped in.
    pub fn unwatch(&self, id: &str) {
        if let Some((cgroup, seen)) = self.watched.lock().expect("oom lock").remove(id) {
            if cgroup.oom_kills() > seen {
                self.push(id.into());
            }
        }
    }

    fn push(&self, id: String) {
        tracing::warn!(container = %id, "OOM kill");
        self.events.lock().expect("oom lock").push_back(id);
        self.arrived.notify_all();
    }

    /// Next container that was OOM-killed, or `None` after `timeout`.
    pub fn next(&self, timeout: Option<Duration>) -> Option<String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut events = self.events.lock().expect("oom lock");
        loop {
            if let Some(id) = events.pop_front() {
                return Some(id);
            }
            events = match deadline {
                None => self.arrived.wait(events).expect("oom lock"),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.arrived.wait_timeout(events, left).expect("oom lock").0
                }
            };
        }
    }
}

fn poll(monitor: Weak<OomMonitor>) {
    while let Some(monitor) = monitor.upgrade() {
        let mut fired = Vec::new();
        for (id, (cgroup, seen)) in monitor.watched.lock().expect("oom lock").iter_mut() {
            let now = cgroup.oom_kills();
            if now > *seen {
                *seen = now;
                fired.push(id.clone());
            }
        }
        for id in fired {
            monitor.push(id);
        }
        drop(monitor);
        std::thread::sleep(POLL);
    }
}
