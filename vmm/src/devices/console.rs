//! The serial console's output path: the vCPU hands bytes to a bounded buffer and never waits;
//! a writer thread moves them to the real console. A console reader that stalls costs at most
//! [`CONSOLE_BUFFER`] bytes: beyond it output is dropped and a marker says how much.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most console bytes held for a slow reader.
pub const CONSOLE_BUFFER: usize = 256 * 1024;
/// Largest write the writer thread makes at once.
const CHUNK: usize = 16 * 1024;

#[derive(Default)]
struct Pending {
    bytes: VecDeque<u8>,
    /// Bytes dropped since the last marker.
    dropped: u64,
    /// The writer thread is writing a batch it took out of `bytes`.
    writing: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when bytes arrive (for the writer) and when a batch is written (for `drain`).
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vCPU side: a `Write` that never blocks on the console reader.
#[derive(Clone)]
pub struct BoundedConsole {
    shared: Arc<Shared>,
}

impl BoundedConsole {
    /// Starts the writer thread that feeds `out`. The thread blocks every signal, so SIGTERM
    /// and SIGINT reach only the event loop's signalfd (and vCPU kicks only the vCPUs), and
    /// installs `filter` (its seccomp filter) before it writes anything.
    pub fn spawn(
        out: Box<dyn Write + Send>,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask only touch it and the
        // calling thread's mask, which is restored below (a new thread inherits the mask).
        let old = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            old
        };
        let (ready, filtered) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                if let Some(f) = filter {
                    let installed =
                        crate::seccomp::install(crate::seccomp::ThreadKind::Console, &f);
                    let failed = installed.is_err();
                    let _ = ready.send(installed);
                    if failed {
                        return;
                    }
                } else {
                    let _ = ready.send(Ok(()));
                }
                write_loop(&theirs, out)
            });
        // SAFETY: `old` is the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        spawned?;
        match filtered.recv() {
            Ok(Ok(())) => Ok(BoundedConsole { shared }),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("the console thread died at start")),
        }
    }

    /// Waits up to `timeout` for the buffered bytes to reach the console (at VM exit).
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut p = self.shared.lock();
        while (!p.bytes.is_empty() || p.writing || p.dropped > 0) && !p.closed {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            p = self
                .shared
                .changed
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Bytes waiting for the writer thread.
    pub fn pending(&self) -> usize {
        self.shared.lock().bytes.len()
    }
}

impl Write for BoundedConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut p = self.shared.lock();
        if !p.closed {
            let room = CONSOLE_BUFFER.saturating_sub(p.bytes.len());
            let take = room.min(buf.len());
            p.bytes.extend(&buf[..take]);
            p.dropped += (buf.len() - take) as u64;
            self.shared.changed.notify_all();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_loop(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(CHUNK);
    loop {
        let dropped = {
            let mut p = shared.lock();
            p.writing = false;
            shared.changed.notify_all();
            while p.bytes.is_empty() && p.dropped == 0 {
                p = shared.changed.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            let n = p.bytes.len().min(CHUNK);
            batch.clear();
            batch.extend(p.bytes.drain(..n));
            if p.bytes.is_empty() && p.bytes.capacity() > CHUNK {
                p.bytes = VecDeque::new();
            }
            p.writing = true;
            std::mem::take(&mut p.dropped)
        };
        let mut ok = out.write_all(&batch).is_ok();
        if dropped > 0 {
            let marker =
                format!("\n[hull-vmm: console reader too slow, {dropped} bytes dropped]\n");
            ok &= out.write_all(marker.as_bytes()).is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            tracing::warn!("console output failed; further output is dropped");
            let mut p = shared.lock();
            p.closed = true;
            p.writing = false;
            p.bytes = VecDeque::new();
            shared.changed.notify_all();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_stalled_reader_neither_blocks_the_writer_nor_grows_the_buffer() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut console = BoundedConsole::spawn(Box::new(ours), None).unwrap();
        let line = [b'x'; 4096];
        let start = Instant::now();
        // 16 MiB without a newline, nobody reading: every write returns at once.
        for _ in 0..4096 {
            assert_eq!(console.write(&line).unwrap(), line.len());
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "writes waited for the reader: {:?}",
            start.elapsed()
        );
        assert!(console.pending() <= CONSOLE_BUFFER);
        // The reader wakes up: what was kept arrives, then a marker for the rest.
        console.write_all(b"\nlast line\n").unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !String::from_utf8_lossy(&got).contains("bytes dropped]") {
            let n = theirs.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
            assert!(got.len() <= 16 << 20, "more than was written");
        }
        assert!(got.len() < 4 << 20, "kept {} bytes", got.len());
    }

    #[test]
    fn drain_waits_for_the_last_bytes() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut console = BoundedConsole::spawn(Box::new(ours), None).unwrap();
        console.write_all(b"HULL_TEST_DONE 0\n").unwrap();
        console.drain(Duration::from_secs(5));
        assert_eq!(console.pending(), 0);
        let mut buf = [0u8; 17];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HULL_TEST_DONE 0\n");
    }

    #[test]
    fn a_closed_console_is_dropped_quietly() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let mut console = BoundedConsole::spawn(Box::new(ours), None).unwrap();
        for _ in 0..100 {
            console.write_all(&[b'y'; 1024]).unwrap();
        }
        console.drain(Duration::from_secs(5));
        assert_eq!(console.pending(), 0);
    }
}
