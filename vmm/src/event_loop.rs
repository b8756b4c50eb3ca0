//! The VMM's event loop thread: one epoll over the exit event, termination signals, device queue
//! notifications and device backend sockets. Dispatch only; the work happens in the devices.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::virtio::VirtioDevice;
use crate::exit::{ExitNotifier, ExitReason};

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// epoll or signalfd setup failed.
    #[error("event loop setup failed")]
    Setup(#[source] std::io::Error),
}

/// Something that handles readiness of a descriptor registered with the loop.
pub trait EventHandler: Send {
    /// Called when `fd` is ready.
    fn handle(&mut self, fd: RawFd);
}

enum Source {
    Exit,
    Signal,
    Queue(Arc<Mutex<dyn VirtioDevice>>, usize),
    Backend(Arc<Mutex<dyn VirtioDevice>>, RawFd),
    Handler(Arc<Mutex<dyn EventHandler>>, RawFd),
}

/// The epoll set and what each registered descriptor means.
pub struct EventLoop {
    epoll: Epoll,
    sources: Vec<Source>,
    signal_fd: Option<OwnedFd>,
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

impl EventLoop {
    /// A loop that ends when `exit` is notified.
    pub fn new(exit: Arc<ExitNotifier>) -> Result<Self, Error> {
        let mut el = EventLoop {
            epoll: Epoll::new().map_err(Error::Setup)?,
            sources: Vec::new(),
            signal_fd: None,
            exit,
        };
        let fd = el.exit.event().as_raw_fd();
        el.add(fd, Source::Exit)?;
        Ok(el)
    }

    fn add(&mut self, fd: RawFd, source: Source) -> Result<(), Error> {
        let token = self.sources.len() as u64;
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(Error::Setup)?;
        self.sources.push(source);
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
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        self.add(owned.as_raw_fd(), Source::Signal)?;
        self.signal_fd = Some(owned);
        Ok(())
    }

    /// Polls a device's queue events and backend descriptors.
    pub fn add_device(&mut self, dev: Arc<Mutex<dyn VirtioDevice>>) -> Result<(), Error> {
        let (queue_fds, backend_fds) = {
            let d = dev.lock().unwrap_or_else(|e| e.into_inner());
            let q: Vec<RawFd> = if d.polls_queue_events() {
                d.common()
                    .queue_events()
                    .iter()
                    .map(|e| e.as_raw_fd())
                    .collect()
            } else {
                Vec::new()
            };
            (q, d.backend_fds())
        };
        for (i, fd) in queue_fds.into_iter().enumerate() {
            self.add(fd, Source::Queue(dev.clone(), i))?;
        }
        for fd in backend_fds {
            self.add(fd, Source::Backend(dev.clone(), fd))?;
        }
        Ok(())
    }

    /// Polls `fd` on behalf of `handler`.
    pub fn add_handler(
        &mut self,
        fd: RawFd,
        handler: Arc<Mutex<dyn EventHandler>>,
    ) -> Result<(), Error> {
        self.add(fd, Source::Handler(handler, fd))
    }

    /// Runs until the VM exits or a termination signal arrives.
    pub fn run(&mut self) -> ExitReason {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return ExitReason::VmmError(format!("epoll_wait: {e}")),
            };
            for ev in &events[..n] {
                match self.sources.get(ev.data() as usize) {
                    Some(Source::Exit) => {
                        let _ = self.exit.event().read();
                        if let Some(reason) = self.exit.reason() {
                            return reason;
                        }
                    }
                    Some(Source::Signal) => {
                        tracing::info!("termination signal: stopping the VM");
                        self.exit.notify(ExitReason::Stopped);
                    }
                    Some(Source::Queue(dev, idx)) => {
                        let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                        d.common().take_notifications(*idx);
                        d.process_queue(*idx);
                    }
                    Some(Source::Backend(dev, fd)) => {
                        let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                        d.process_backend(*fd);
                        if !d.backend_fds().contains(fd) {
                            // The device gave the descriptor up (its backend died). It may
                            // already be closed, which removed it from the set: ignore errors.
                            let _ = self.epoll.ctl(
                                ControlOperation::Delete,
                                *fd,
                                EpollEvent::default(),
                            );
                        }
                    }
                    Some(Source::Handler(h, fd)) => {
                        h.lock().unwrap_or_else(|e| e.into_inner()).handle(*fd)
                    }
                    None => {}
                }
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

    #[test]
    fn exit_event_ends_the_loop() {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut el = EventLoop::new(exit.clone()).unwrap();
        exit.notify(ExitReason::GuestPowerOff);
        assert_eq!(el.run(), ExitReason::GuestPowerOff);
    }
}
