//! Relays between containerd's stdio (FIFOs, `file://`, `binary://`) and a
//! process's byte streams (vsock streams in the VM, pipes in tests), without loss.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Errors of setting up stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("stdio URI {0:?} is not supported (use a FIFO path, file:// or binary://)")]
    BadUri(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StdioError {
    let context = context.into();
    move |source| StdioError::Io { context, source }
}

/// Where one of containerd's stdio strings points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A FIFO (or any path) that containerd reads or writes.
    Fifo(PathBuf),
    /// `file:///path`: output appended to a file.
    File(PathBuf),
    /// `binary:///path?args`: a logging binary fed on fds 3 (stdout) and 4 (stderr).
    Binary { path: PathBuf, args: Vec<String> },
}

impl Target {
    /// Parses containerd's stdio string; empty means "not attached".
    pub fn parse(uri: &str) -> Result<Option<Self>, StdioError> {
        if uri.is_empty() {
            return Ok(None);
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Ok(Some(Self::Fifo(PathBuf::from(uri))));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() || !path.starts_with('/') {
            return Err(StdioError::BadUri(uri.to_string()));
        }
        match scheme {
            "fifo" => Ok(Some(Self::Fifo(PathBuf::from(path)))),
            "file" => Ok(Some(Self::File(PathBuf::from(path)))),
            "binary" => Ok(Some(Self::Binary {
                path: PathBuf::from(path),
                args: query_args(query),
            })),
            _ => Err(StdioError::BadUri(uri.to_string())),
        }
    }
}

/// `binary://` query pairs become `key value` arguments, as containerd does.
fn query_args(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .flat_map(|pair| match pair.split_once('=') {
            Some((k, v)) => vec![k.to_string(), v.to_string()],
            None => vec![pair.to_string()],
        })
        .collect()
}

/// A process's stdin as the shim holds it: the stream toward the process,
/// shared by the relay thread and `CloseIO`.
#[derive(Default)]
pub struct StdinSlot {
    stream: Mutex<Option<Box<dyn Write + Send>>>,
    /// A relay thread copies containerd's FIFO into `stream`.
    relayed: AtomicBool,
    /// `CloseIO` asked for the end: the relay stops once the FIFO is empty.
    closing: AtomicBool,
}

/// The shared handle on a process's stdin.
pub type SharedStdin = Arc<StdinSlot>;

impl StdinSlot {
    /// A slot holding `stream`.
    #[cfg(test)]
    pub fn new(stream: Box<dyn Write + Send>) -> Self {
        let slot = Self::default();
        slot.set(stream);
        slot
    }

    /// Puts the process's stream in the slot.
    pub fn set(&self, stream: Box<dyn Write + Send>) {
        *self.stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
    }

    /// Takes the stream out; dropping it closes (half-closes) the process's stdin.
    pub fn take(&self) -> Option<Box<dyn Write + Send>> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn is_open(&self) -> bool {
        self.stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// `CloseIO`: lets the relay forward what containerd already wrote into the
    /// FIFO (its client asks before it closes the FIFO), waiting up to `limit`,
    /// then takes the stream. Returns the stream if the caller must close it.
    pub fn close_after_drain(&self, limit: Duration) -> Option<Box<dyn Write + Send>> {
        if self.relayed.load(Ordering::SeqCst) {
            self.closing.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + limit;
            while self.is_open() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.take()
    }
}

/// How long the relay waits in one poll of the FIFO before it checks for `CloseIO`.
const STDIN_POLL_MS: u16 = 20;

/// Copies containerd's stdin into the slot's stream until EOF (or, after
/// `CloseIO`, until the FIFO is empty), then closes the stream and calls `on_eof`.
pub fn spawn_stdin(
    source: PathBuf,
    dst: SharedStdin,
    on_eof: impl FnOnce() + Send + 'static,
) -> JoinHandle<()> {
    dst.relayed.store(true, Ordering::SeqCst);
    std::thread::spawn(move || {
        match File::open(&source) {
            Ok(fifo) => relay_stdin(&source, fifo, &dst),
            Err(e) => tracing::warn!(path = %source.display(), "open stdin: {e}"),
        }
        if dst.take().is_some() {
            on_eof();
        }
    })
}

/// The relay loop: FIFO reads never block, so `CloseIO` is noticed even while a
/// writer keeps the FIFO open.
fn relay_stdin(source: &std::path::Path, mut fifo: File, dst: &StdinSlot) {
    let nonblocking = nix::fcntl::fcntl(&fifo, nix::fcntl::FcntlArg::F_GETFL).and_then(|fl| {
        let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fifo, nix::fcntl::FcntlArg::F_SETFL(fl))
    });
    if let Err(e) = nonblocking {
        tracing::warn!(path = %source.display(), "stdin: cannot make the FIFO non-blocking: {e}");
        return;
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match fifo.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if dst.closing.load(Ordering::SeqCst) {
                    return;
                }
                let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(STDIN_POLL_MS));
                continue;
            }
            Err(e) => {
                tracing::warn!(path = %source.display(), "stdin read: {e}");
                return;
            }
        };
        let mut guard = dst.stream.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else { return };
        if let Err(e) = w.write_all(&buf[..n]).and_then(|()| w.flush()) {
            tracing::debug!("stdin write to process: {e}");
            return;
        }
    }
}

/// Opens an output destination inside the relay thread (opening a FIFO blocks
/// until containerd reads it).
pub type Opener = Box<dyn FnOnce() -> Result<Box<dyn Write + Send>, StdioError> + Send>;

/// Copies `src` to EOF into the destination `open` returns; the returned handle
/// ends when every byte has been written, so joining it drains the stream.
pub fn spawn_output(mut src: Box<dyn Read + Send>, open: Opener) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let result = open().and_then(|mut dst| {
            std::io::copy(&mut src, &mut dst)
                .and_then(|_| dst.flush())
                .map_err(io("stdio relay"))
        });
        if let Err(e) = result {
            tracing::warn!("{e}");
            // Keep draining so the process never blocks on a full stream.
            let _ = std::io::copy(&mut src, &mut std::io::sink());
        }
    })
}

/// Opens an output destination that is a FIFO or a file.
pub fn open_output(target: &Target) -> Result<Box<dyn Write + Send>, StdioError> {
    match target {
        Target::Fifo(path) => {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(format!("open stdio FIFO {}", path.display())))?;
            Ok(Box::new(f))
        }
        Target::File(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io(format!("open stdio file {}", path.display())))?;
            Ok(Box::new(f))
        }
        Target::Binary { .. } => Err(StdioError::BadUri(
            "binary:// must be started with BinaryLogger".to_string(),
        )),
    }
}

/// A running `binary://` logger and the write ends of its stdout and stderr pipes.
pub struct BinaryLogger {
    pub child: Child,
    pub stdout: File,
    pub stderr: File,
}

impl BinaryLogger {
    /// Starts the logger with stdout on fd 3, stderr on fd 4 and a ready pipe on fd 5,
    /// and waits until it closes fd 5 (containerd's protocol for logging binaries).
    pub fn spawn(
        path: &PathBuf,
        args: &[String],
        namespace: &str,
        container_id: &str,
    ) -> Result<Self, StdioError> {
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))?;
        let (ready_r, ready_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))?;
        let fds: [OwnedFd; 3] = [out_r, err_r, ready_w];
        let raw: Vec<i32> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let mut cmd = Command::new(path);
        cmd.args(args)
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(std::process::Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and only calls
        // fcntl(2) and dup2(2), which are async-signal-safe; the fds stay open in the
        // parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Move the sources above the targets first, so no dup2 clobbers a source.
                let mut high = [0; 3];
                for (slot, fd) in high.iter_mut().zip(&raw) {
                    *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                    if *slot < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (target, fd) in (3..).zip(high) {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("start logging binary {}", path.display())))?;
        drop(fds);
        let mut ready = File::from(ready_r);
        let mut byte = [0u8; 1];
        // EOF (the logger closed fd 5) or a byte both mean ready.
        let _ = ready.read(&mut byte);
        Ok(Self {
            child,
            stdout: File::from(out_w),
            stderr: File::from(err_w),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn parses_every_uri_form() {
        assert_eq!(Target::parse("").unwrap(), None);
        assert_eq!(
            Target::parse("/run/x/stdout").unwrap(),
            Some(Target::Fifo("/run/x/stdout".into()))
        );
        assert_eq!(
            Target::parse("file:///var/log/c.log").unwrap(),
            Some(Target::File("/var/log/c.log".into()))
        );
        assert_eq!(
            Target::parse("binary:///usr/bin/logger?id=1&verbose").unwrap(),
            Some(Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["id".into(), "1".into(), "verbose".into()]
            })
        );
        assert!(Target::parse("tcp://1.2.3.4").is_err());
        assert!(Target::parse("file://relative").is_err());
    }

    #[test]
    fn output_relay_is_lossless_over_a_socketpair() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let target = Target::File(path.clone());
        let relay = spawn_output(Box::new(reader), Box::new(move || open_output(&target)));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&data).unwrap();
        drop(writer);
        relay.join().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn fifo_stdin_reaches_the_process_and_eof_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (proc_end, mut shim_end) = UnixStream::pair().unwrap();
        let shared: SharedStdin = Arc::new(StdinSlot::new(Box::new(proc_end)));
        let (tx, rx) = std::sync::mpsc::channel();
        let relay = spawn_stdin(fifo.clone(), shared.clone(), move || tx.send(()).unwrap());
        let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"hello\n").unwrap();
        drop(w);
        relay.join().unwrap();
        rx.recv().unwrap();
        let mut got = String::new();
        shim_end.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello\n");
        assert!(shared.take().is_none());
    }

    #[test]
    fn close_io_forwards_what_the_fifo_holds_then_closes_while_it_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (proc_end, mut shim_end) = UnixStream::pair().unwrap();
        let shared: SharedStdin = Arc::new(StdinSlot::new(Box::new(proc_end)));
        let relay = spawn_stdin(fifo.clone(), shared.clone(), || {});
        let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
        // containerd's client writes, then sends CloseIO before closing the FIFO:
        // nothing written before CloseIO may be lost.
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                w.write_all(&data).unwrap();
                w
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            shim_end.read_to_end(&mut got).unwrap();
            got
        });
        let w = writer.join().unwrap();
        let left = shared.close_after_drain(Duration::from_secs(10));
        assert!(left.is_none(), "the relay closes the stream itself");
        assert_eq!(reader.join().unwrap(), data);
        drop(w);
        relay.join().unwrap();
    }

    #[test]
    fn close_io_without_a_relay_closes_at_once() {
        let (proc_end, mut shim_end) = UnixStream::pair().unwrap();
        let shared = StdinSlot::new(Box::new(proc_end));
        let started = Instant::now();
        drop(shared.close_after_drain(Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(1));
        let mut got = Vec::new();
        shim_end.read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn binary_logger_gets_stdout_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("log");
        let script = dir.path().join("logger.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\ncat <&3 >{0}.out & cat <&4 >{0}.err\nwait\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut logger = BinaryLogger::spawn(&script, &[], "ns", "c1").unwrap();
        logger.stdout.write_all(b"to stdout").unwrap();
        logger.stderr.write_all(b"to stderr").unwrap();
        drop(logger.stdout);
        drop(logger.stderr);
        assert!(logger.child.wait().unwrap().success());
        let read = |ext: &str| std::fs::read_to_string(format!("{}.{ext}", out.display())).unwrap();
        assert_eq!(
            (read("out"), read("err")),
            ("to stdout".into(), "to stderr".into())
        );
    }
}
