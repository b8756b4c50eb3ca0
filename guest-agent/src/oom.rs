//! OOM events: watches each container's `memory.events` for new `oom_kill`s
//! and queues the container id for the blocking OomEvent call.
//!
//! The kernel notifies a change of `memory.events` as a file modification, so
//! the watcher thread sleeps in poll(2) on an inotify descriptor and wakes only
//! when some container's counters change (or the monitor is dropped), instead
//! of reading every container's file ten times a second.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::cgroup::Cgroup;

/// The agent's OOM monitor; its watcher thread ends when it is dropped.
pub struct OomMonitor {
    shared: Arc<Shared>,
    /// The write end of a pipe the watcher polls: closing it stops the thread.
    _stop: OwnedFd,
}

struct Shared {
    inotify: Inotify,
    watched: Mutex<HashMap<String, Watch>>,
    events: Mutex<VecDeque<String>>,
    arrived: Condvar,
}

struct Watch {
    cgroup: Cgroup,
    /// oom_kill count already reported.
    seen: u64,
    /// None when memory.events could not be watched (no memory controller).
    wd: Option<WatchDescriptor>,
}

impl Watch {
    /// Whether the cgroup's oom_kill count grew since last seen (and takes
    /// the new count as seen).
    fn killed_since(&mut self) -> bool {
        let now = self.cgroup.oom_kills();
        let grew = now > self.seen;
        self.seen = self.seen.max(now);
        grew
    }
}

impl OomMonitor {
    /// A monitor with its watcher thread.
    pub fn start() -> std::io::Result<Arc<OomMonitor>> {
        Self::start_named("oom")
    }

    fn start_named(thread: &str) -> std::io::Result<Arc<OomMonitor>> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let (stopped, stop) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let shared = Arc::new(Shared {
            inotify,
            watched: Mutex::default(),
            events: Mutex::default(),
            arrived: Condvar::new(),
        });
        let watcher = shared.clone();
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || watcher.run(&stopped))?;
        Ok(Arc::new(OomMonitor {
            shared,
            _stop: stop,
        }))
    }

    pub fn watch(&self, id: &str, cgroup: &Cgroup) {
        let events = cgroup.path.join("memory.events");
        let wd = match self
            .shared
            .inotify
            .add_watch(&events, AddWatchFlags::IN_MODIFY)
        {
            Ok(wd) => Some(wd),
            Err(e) => {
                tracing::warn!(container = %id, "cannot watch {}: {e}; OOM kills go unreported", events.display());
                None
            }
        };
        // Read after the watch is in place, so no kill falls between the two.
        let seen = cgroup.oom_kills();
        let cgroup = cgroup.clone();
        let old = self
            .shared
            .watched()
            .insert(id.into(), Watch { cgroup, seen, wd });
        // Watching the same file again gives the same descriptor: keep it.
        if let Some(old) = old.and_then(|w| w.wd).filter(|old| Some(*old) != wd) {
            let _ = self.shared.inotify.rm_watch(old);
        }
    }

    /// Stops watching, reporting a last kill if one slipped in.
    pub fn unwatch(&self, id: &str) {
        let Some(mut w) = self.shared.watched().remove(id) else {
            return;
        };
        if let Some(wd) = w.wd {
            // Fails harmlessly when the cgroup is already gone.
            let _ = self.shared.inotify.rm_watch(wd);
        }
        if w.killed_since() {
            self.shared.push(id.into());
        }
    }

    /// Next container that was OOM-killed, or `None` after `timeout`.
    pub fn next(&self, timeout: Option<Duration>) -> Option<String> {
        let shared = &self.shared;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut events = shared.events.lock().expect("oom lock");
        loop {
            if let Some(id) = events.pop_front() {
                return Some(id);
            }
            events = match deadline {
                None => shared.arrived.wait(events).expect("oom lock"),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    shared
                        .arrived
                        .wait_timeout(events, left)
                        .expect("oom lock")
                        .0
                }
            };
        }
    }
}

impl Shared {
    fn watched(&self) -> MutexGuard<'_, HashMap<String, Watch>> {
        self.watched.lock().expect("oom lock")
    }

    fn push(&self, id: String) {
        tracing::warn!(container = %id, "OOM kill");
        self.events.lock().expect("oom lock").push_back(id);
        self.arrived.notify_all();
    }

    /// The watcher: sleeps until a memory.events changes, then reports every
    /// container whose oom_kill count grew. Ends when `stopped` hangs up.
    fn run(&self, stopped: &OwnedFd) {
        loop {
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(stopped.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!("OOM monitor: poll: {e}; OOM kills go unreported");
                    return;
                }
            }
            if fds[1].any().unwrap_or(true) {
                return;
            }
            match self.inotify.read_events() {
                Ok(_) | Err(Errno::EAGAIN) => {}
                Err(e) => {
                    tracing::error!("OOM monitor: read inotify: {e}; OOM kills go unreported");
                    return;
                }
            }
            let fired: Vec<String> = self
                .watched()
                .iter_mut()
                .filter_map(|(id, w)| w.killed_since().then(|| id.clone()))
                .collect();
            for id in fired {
                self.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup(dir: &std::path::Path, kills: u64) -> Cgroup {
        std::fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {kills}\n"),
        )
        .unwrap();
        Cgroup {
            path: dir.to_path_buf(),
        }
    }

    /// A write to memory.events (what the kernel notifies) wakes the watcher;
    /// only a grown oom_kill count is reported, once.
    #[test]
    fn a_new_oom_kill_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = OomMonitor::start().unwrap();
        monitor.watch("c1", &cgroup(dir.path(), 2));
        cgroup(dir.path(), 2);
        assert_eq!(monitor.next(Some(Duration::from_millis(300))), None);
        cgroup(dir.path(), 3);
        assert_eq!(
            monitor.next(Some(Duration::from_secs(5))).as_deref(),
            Some("c1")
        );
        assert_eq!(monitor.next(Some(Duration::from_millis(300))), None);
    }

    #[test]
    fn a_kill_before_unwatch_is_still_reported() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = OomMonitor::start().unwrap();
        let cg = cgroup(dir.path(), 0);
        monitor.watch("c1", &cg);
        // Unwatch before the watcher could look (it may or may not have).
        cgroup(dir.path(), 1);
        monitor.unwatch("c1");
        assert_eq!(
            monitor.next(Some(Duration::from_secs(5))).as_deref(),
            Some("c1")
        );
        assert_eq!(monitor.next(Some(Duration::from_millis(300))), None);
    }

    /// An idle monitor does not wake (the old one read every file each 100 ms),
    /// and its thread ends with it.
    #[test]
    fn an_idle_monitor_sleeps_and_its_thread_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = OomMonitor::start_named("oom-idle").unwrap();
        monitor.watch("c1", &cgroup(dir.path(), 0));
        let oom_threads = || -> Vec<(String, u64)> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| {
                    let dir = t.ok()?.path();
                    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
                    (comm.trim() == "oom-idle").then_some(())?;
                    let status = std::fs::read_to_string(dir.join("status")).ok()?;
                    let woke = status
                        .lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                        .trim()
                        .parse()
                        .ok()?;
                    Some((dir.display().to_string(), woke))
                })
                .collect()
        };
        std::thread::sleep(Duration::from_millis(100));
        let before = oom_threads();
        std::thread::sleep(Duration::from_millis(500));
        let after = oom_threads();
        for (task, woke) in &after {
            if let Some((_, was)) = before.iter().find(|(t, _)| t == task) {
                assert!(
                    woke - was <= 1,
                    "an idle OOM watcher woke {} times",
                    woke - was
                );
            }
        }
        assert_eq!(after.len(), 1, "one watcher thread: {after:?}");
        drop(monitor);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !oom_threads().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            oom_threads().is_empty(),
            "the watcher thread ended with the monitor"
        );
    }
}
