//! The VMM's event loop thread, on rust-vmm's `event-manager`: the exit event, termination
//! signals, each virtio device (queue notifications and backend sockets) and the control socket
//! are its subscribers. Dispatch only; the work happens in the devices.
//!
//! Fairness: a device serves a bounded batch per event (vsock 64 chains, virtio-blk 32 requests)
//! and, with work left, signals its own queue event, so every other ready descriptor is served
//! before it comes back (the epoll set is level-triggered).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::devices::virtio::VirtioDevice;
use crate::exit::{ExitNotifier, ExitReason};

/// Ready descriptors handled per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;
/// Event data of a device's backend descriptors (queue events carry their queue index).
const BACKEND: u32 = u32::MAX;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// epoll or signalfd setup failed.
    #[error("event loop setup failed")]
    Setup(#[source] std::io::Error),
    /// The event manager refused a descriptor or could not be created.
    #[error("event loop registration failed")]
    Register(#[source] event_manager::Error),
}

/// Something that handles readiness of a descriptor registered with the loop.
pub trait EventHandler: Send {
    /// Called when `fd` is ready.
    fn handle(&mut self, fd: RawFd);
}

type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// The event manager and the exit it watches for.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    exit: Arc<ExitNotifier>,
}

/// Blocks SIGTERM and SIGINT in the calling thread (and threads it spawns later) so that only
/// the event loop's signalfd sees them.
pub fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset/pthread_sigmask only touch it and
    // the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The exit event: drained here; `EventLoop::run` returns once a reason is recorded.
struct ExitSubscriber(Arc<ExitNotifier>);

impl MutEventSubscriber for ExitSubscriber {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // Non-blocking: an empty counter is a spurious wakeup.
        let _ = self.0.event().read();
    }
    fn init(&mut self, _: &mut EventOps) {}
}

/// SIGTERM/SIGINT through a signalfd: a clean stop.
struct SignalSubscriber {
    fd: File,
    exit: Arc<ExitNotifier>,
}

impl MutEventSubscriber for SignalSubscriber {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // Consume the signal (one signalfd_siginfo) so it is not reported again.
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        let _ = self.fd.read(&mut info);
        tracing::info!("termination signal: stopping the VM");
        self.exit.notify(ExitReason::Stopped);
    }
    fn init(&mut self, _: &mut EventOps) {}
}

/// A virtio device: its queue events (data: the queue index) and backend descriptors.
struct DeviceSubscriber(Arc<Mutex<dyn VirtioDevice>>);

impl MutEventSubscriber for DeviceSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut d = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fd = events.fd();
        if events.data() != BACKEND {
            let idx = events.data() as usize;
            if let Some(evt) = d.common().queue_events().get(idx) {
                // Non-blocking: an empty counter just means a spurious wakeup.
                let _ = evt.read();
            }
            d.process_queue(idx);
            return;
        }
        d.process_backend(fd);
        if !d.backend_fds().contains(&fd) {
            // The device gave the descriptor up (its backend died): a dead socket stays
            // readable and would wake the loop forever.
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                tracing::warn!(device = %d.common().device_type(), error = %e,
                    "cannot drop a dead backend descriptor from the event loop");
            }
        }
    }
    fn init(&mut self, _: &mut EventOps) {}
}

/// Any other descriptor with its handler (the control socket).
struct HandlerSubscriber(Arc<Mutex<dyn EventHandler>>);

impl MutEventSubscriber for HandlerSubscriber {
    fn process(&mut self, events: Events, _: &mut EventOps) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle(events.fd());
    }
    fn init(&mut self, _: &mut EventOps) {}
}

impl EventLoop {
    /// A loop that ends when `exit` is notified.
    pub fn new(exit: Arc<ExitNotifier>) -> Result<Self, Error> {
        let mut el = EventLoop {
            manager: EventManager::new_with_capacity(EVENTS_PER_WAIT).map_err(Error::Register)?,
            exit,
        };
        let fd = el.exit.event().as_raw_fd();
        let sub = ExitSubscriber(el.exit.clone());
        el.subscribe(Box::new(sub), &[Events::new_raw(fd, EventSet::IN)])?;
        Ok(el)
    }

    /// Adds `subscriber` with its descriptors. Registration happens here rather than in the
    /// subscriber's `init`, so a refused descriptor is an error the caller sees.
    fn subscribe(&mut self, subscriber: Subscriber, events: &[Events]) -> Result<(), Error> {
        let id = self.manager.add_subscriber(subscriber);
        let mut ops = self.manager.event_ops(id).map_err(Error::Register)?;
        for ev in events {
            ops.add(*ev).map_err(Error::Register)?;
        }
        Ok(())
    }

    /// Turns SIGTERM/SIGINT into a clean stop (they must be blocked in every thread).
    pub fn watch_termination_signals(&mut self) -> Result<(), Error> {
        let set = block_termination_signals();
        // SAFETY: `set` is initialised; the result is checked.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::Setup(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let event = Events::new_raw(fd.as_raw_fd(), EventSet::IN);
        let sub = SignalSubscriber {
            fd,
            exit: self.exit.clone(),
        };
        self.subscribe(Box::new(sub), &[event])
    }

    /// Polls a device's queue events and backend descriptors.
    pub fn add_device(&mut self, dev: Arc<Mutex<dyn VirtioDevice>>) -> Result<(), Error> {
        let events = {
            let d = dev.lock().unwrap_or_else(|e| e.into_inner());
            let mut events = Vec::new();
            if d.polls_queue_events() {
                for (i, evt) in d.common().queue_events().iter().enumerate() {
                    events.push(Events::with_data(evt, i as u32, EventSet::IN));
                }
            }
            for fd in d.backend_fds() {
                events.push(Events::with_data_raw(fd, BACKEND, EventSet::IN));
            }
            events
        };
        self.subscribe(Box::new(DeviceSubscriber(dev)), &events)
    }

    /// Polls `fd` on behalf of `handler`.
    pub fn add_handler(
        &mut self,
        fd: RawFd,
        handler: Arc<Mutex<dyn EventHandler>>,
    ) -> Result<(), Error> {
        let sub = HandlerSubscriber(handler);
        self.subscribe(Box::new(sub), &[Events::new_raw(fd, EventSet::IN)])
    }

    /// Runs until the VM exits or a termination signal arrives.
    pub fn run(&mut self) -> ExitReason {
        loop {
            if let Some(reason) = self.exit.reason() {
                return reason;
            }
            if let Err(e) = self.manager.run() {
                return ExitReason::VmmError(format!("event loop: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{DeviceType, VirtioCommon};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A device like vhost-user-fs: an external reader owns its queue events, and its backend
    /// descriptor dies (stays readable) on first use.
    struct External {
        common: VirtioCommon,
        backend: EventFd,
        gone: bool,
        queue_calls: usize,
        backend_calls: usize,
    }

    impl VirtioDevice for External {
        fn common(&self) -> &VirtioCommon {
            &self.common
        }
        fn common_mut(&mut self) -> &mut VirtioCommon {
            &mut self.common
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn polls_queue_events(&self) -> bool {
            false
        }
        fn backend_fds(&self) -> Vec<RawFd> {
            if self.gone {
                Vec::new()
            } else {
                vec![self.backend.as_raw_fd()]
            }
        }
        fn process_queue(&mut self, _: usize) {
            self.queue_calls += 1;
        }
        fn process_backend(&mut self, _: RawFd) {
            self.backend_calls += 1;
            self.gone = true;
        }
    }

    #[test]
    fn external_queue_events_and_dead_backends_are_left_alone() {
        let dev = Arc::new(Mutex::new(External {
            common: VirtioCommon::new(DeviceType::Fs, 0, &[16]).unwrap(),
            backend: EventFd::new(EFD_NONBLOCK).unwrap(),
            gone: false,
            queue_calls: 0,
            backend_calls: 0,
        }));
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut el = EventLoop::new(exit.clone()).unwrap();
        el.add_device(dev.clone()).unwrap();
        {
            let d = dev.lock().unwrap();
            d.common.queue_events()[0].write(1).unwrap();
            // Never read by the device: without the removal the loop would spin on it.
            d.backend.write(1).unwrap();
        }
        let looping = std::thread::spawn(move || el.run());
        std::thread::sleep(std::time::Duration::from_millis(200));
        exit.notify(ExitReason::Stopped);
        assert_eq!(looping.join().unwrap(), ExitReason::Stopped);
        let d = dev.lock().unwrap();
        assert_eq!((d.queue_calls, d.backend_calls), (0, 1));
        assert_eq!(
            d.common.queue_events()[0].read().unwrap(),
            1,
            "the kick is left to its reader"
        );
    }

    /// Re-arms its queue forever, like a device whose budget always runs out; or, as `stopper`,
    /// ends the VM when its queue is notified.
    struct Busy {
        common: VirtioCommon,
        calls: usize,
        stopper: Option<Arc<ExitNotifier>>,
    }

    impl VirtioDevice for Busy {
        fn common(&self) -> &VirtioCommon {
            &self.common
        }
        fn common_mut(&mut self) -> &mut VirtioCommon {
            &mut self.common
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn process_queue(&mut self, idx: usize) {
            self.calls += 1;
            match &self.stopper {
                Some(exit) => exit.notify(ExitReason::GuestPowerOff),
                None => self.common.rearm(idx),
            }
        }
    }

    fn busy(stopper: Option<Arc<ExitNotifier>>) -> Arc<Mutex<Busy>> {
        Arc::new(Mutex::new(Busy {
            common: VirtioCommon::new(DeviceType::Block, 0, &[16]).unwrap(),
            calls: 0,
            stopper,
        }))
    }

    #[test]
    fn a_device_that_always_has_work_does_not_starve_the_others() {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut el = EventLoop::new(exit.clone()).unwrap();
        let hog = busy(None);
        let other = busy(Some(exit.clone()));
        el.add_device(hog.clone()).unwrap();
        el.add_device(other.clone()).unwrap();
        hog.lock().unwrap().common.rearm(0);
        other.lock().unwrap().common.rearm(0);
        let looping = std::thread::spawn(move || el.run());
        assert_eq!(looping.join().unwrap(), ExitReason::GuestPowerOff);
        assert_eq!(other.lock().unwrap().calls, 1);
        assert!(
            hog.lock().unwrap().calls <= 2,
            "served once per round at most"
        );
    }

    struct Counter {
        evt: EventFd,
        calls: usize,
        exit: Arc<ExitNotifier>,
    }

    impl EventHandler for Counter {
        fn handle(&mut self, fd: RawFd) {
            assert_eq!(fd, self.evt.as_raw_fd());
            let _ = self.evt.read();
            self.calls += 1;
            self.exit.notify(ExitReason::Stopped);
        }
    }

    #[test]
    fn handlers_hear_their_descriptor_and_duplicates_are_refused() {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut el = EventLoop::new(exit.clone()).unwrap();
        let counter = Arc::new(Mutex::new(Counter {
            evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            calls: 0,
            exit: exit.clone(),
        }));
        let fd = counter.lock().unwrap().evt.as_raw_fd();
        el.add_handler(fd, counter.clone()).unwrap();
        assert!(matches!(
            el.add_handler(fd, counter.clone()),
            Err(Error::Register(_))
        ));
        counter.lock().unwrap().evt.write(1).unwrap();
        assert_eq!(el.run(), ExitReason::Stopped);
        assert_eq!(counter.lock().unwrap().calls, 1);
    }

    #[test]
    fn exit_event_ends_the_loop() {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut el = EventLoop::new(exit.clone()).unwrap();
        exit.notify(ExitReason::GuestPowerOff);
        assert_eq!(el.run(), ExitReason::GuestPowerOff);
    }
}
