//! The control socket server: a Unix socket speaking the versioned JSON lines
//! of [`hull_protocol::control`] (stats, pause, resume, shutdown, wait-exit,
//! attach-disk), which the shim and hull-monitor read VM figures from, the
//! virtio devices' counters included, and through which the shim fills empty
//! disk slots with container images.
//!
//! `attach-disk` carries its image as an `SCM_RIGHTS` descriptor, so the socket is read with
//! `recvmsg`. Descriptors belong to the request line holding the last byte of the read that
//! brought them (the kernel ends a read at a message that carries descriptors); any a request
//! does not use, and any left with a client that goes away, are closed at once. A client that
//! piles up more than [`MAX_FDS`] descriptors without a request to use them is cut off.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hull_protocol::control::{
    Answer, Command, CpuStats, DeviceKind, DeviceStats, MemoryStats, Request, VmExit, VmStats,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::virtio::block::device::Block;
use crate::devices::virtio::counters::DeviceCounters;
use crate::event_loop::EventHandler;
use crate::exit::{ExitNotifier, ExitReason};
use crate::vcpu::RunControl;

pub use hull_protocol::control::{MAX_LINE, VERSION};
/// Most clients at once.
const MAX_CLIENTS: usize = 16;
/// Most descriptors a client may have waiting for a request (and most one read takes).
pub const MAX_FDS: usize = 4;

/// Errors creating the control socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or polling the socket failed.
    #[error("cannot listen on control socket {0}")]
    Listen(String, #[source] std::io::Error),
}

/// The answer to a finished VM, for `wait-exit`.
pub fn exit_answer(reason: &ExitReason) -> Answer {
    Answer::exit(VmExit {
        reason: format!("{reason:?}"),
        status: reason.code(),
    })
}

/// Process CPU seconds (user, system) and resident memory in KiB, from /proc.
pub fn process_usage() -> (f64, f64, u64) {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page_kib = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) / 1024) as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        rest.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let rss_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (field(11) / ticks, field(12) / ticks, rss_pages * page_kib)
}

/// Bytes and descriptors one `recvmsg` brought.
struct Received {
    len: usize,
    fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors that did not fit [`MAX_FDS`].
    truncated: bool,
}

/// Reads what `sock` has (without blocking) into `buf`, with any `SCM_RIGHTS` descriptors,
/// received close-on-exec and owned at once so none can leak.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> std::io::Result<Received> {
    // u64 words: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (space as usize).min(std::mem::size_of_val(&control));
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all alive and large enough for
    // the lengths given; the kernel writes only within them.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside `control`, as CMSG_FIRSTHDR/NXTHDR returned it.
        let hdr = unsafe { std::ptr::read_unaligned(cmsg) };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a size.
            let data_len =
                (hdr.cmsg_len as usize).saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: the data of an SCM_RIGHTS header are `data_len` bytes of descriptors.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..data_len / std::mem::size_of::<RawFd>() {
                // SAFETY: `i` is within the header's data; the kernel installed each descriptor
                // for this process just now, and nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        len: n as usize,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// One connected client: its socket, the bytes of its unfinished request line, and the
/// descriptors it sent, each with the position in `line` of the byte it belongs to.
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    fds: Vec<(usize, OwnedFd)>,
}

impl Client {
    /// The first complete request line, with the descriptors that belong to it.
    fn next_request(&mut self) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
        let pos = self.line.iter().position(|&b| b == b'\n')?;
        let text: Vec<u8> = self.line.drain(..=pos).collect();
        let (mine, rest): (Vec<_>, Vec<_>) = self.fds.drain(..).partition(|(at, _)| *at <= pos);
        self.fds = rest
            .into_iter()
            .map(|(at, fd)| (at - pos - 1, fd))
            .collect();
        Some((text, mine.into_iter().map(|(_, fd)| fd).collect()))
    }
}

/// The control socket server; registered with the event loop through its own epoll fd.
pub struct ControlServer {
    path: std::path::PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    clients: HashMap<RawFd, Client>,
    waiters: Vec<UnixStream>,
    run: Arc<RunControl>,
    exit: Arc<ExitNotifier>,
    guest_mib: u64,
    vcpus: u8,
    devices: Vec<Arc<DeviceCounters>>,
    disks: Vec<Arc<Mutex<Block>>>,
    started: Instant,
}

impl ControlServer {
    /// Listens on `path` (which must not exist); `devices` are the virtio devices' counters in
    /// attach order, `disks` the virtio-blk disks in configuration order (for `attach-disk`).
    pub fn new(
        path: &Path,
        run: Arc<RunControl>,
        exit: Arc<ExitNotifier>,
        guest_mib: u64,
        vcpus: u8,
        devices: Vec<Arc<DeviceCounters>>,
        disks: Vec<Arc<Mutex<Block>>>,
    ) -> Result<Self, Error> {
        let name = path.display().to_string();
        let listener = UnixListener::bind(path).map_err(|e| Error::Listen(name.clone(), e))?;
        let setup = || -> std::io::Result<Epoll> {
            listener.set_nonblocking(true)?;
            let epoll = Epoll::new()?;
            let fd = listener.as_raw_fd();
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )?;
            Ok(epoll)
        };
        let epoll = setup().map_err(|e| {
            let _ = std::fs::remove_file(path);
            Error::Listen(name, e)
        })?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            listener,
            epoll,
            clients: HashMap::new(),
            waiters: Vec::new(),
            run,
            exit,
            guest_mib,
            vcpus,
            devices,
            disks,
            started: Instant::now(),
        })
    }

    /// The descriptor the event loop polls.
    pub fn poll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The VM's figures now.
    pub fn stats(&self) -> VmStats {
        let (user_s, system_s, vmm_rss_kib) = process_usage();
        VmStats {
            vcpus: self.vcpus,
            paused: self.run.is_paused(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            memory: MemoryStats {
                guest_mib: self.guest_mib,
                vmm_rss_kib,
            },
            cpu: CpuStats { user_s, system_s },
            vcpu_exits: self.run.exits(),
            devices: self.device_stats(),
        }
    }

    /// Each device's counters, numbered within its kind in attach order.
    fn device_stats(&self) -> Vec<DeviceStats> {
        let mut seen: Vec<DeviceKind> = Vec::new();
        self.devices
            .iter()
            .map(|c| {
                let kind = c.kind();
                let index = seen.iter().filter(|k| **k == kind).count() as u32;
                seen.push(kind);
                c.snapshot(index)
            })
            .collect()
    }

    /// Answers a request that came with `fds` (closed here unless `attach-disk` keeps its
    /// one); None for `wait-exit` (answered at exit).
    pub fn answer(&self, cmd: Command, fds: Vec<OwnedFd>) -> Option<Answer> {
        if !fds.is_empty() && !matches!(cmd, Command::AttachDisk { .. }) {
            tracing::debug!(
                count = fds.len(),
                ?cmd,
                "control: closing descriptors sent with a request that takes none"
            );
        }
        match cmd {
            Command::Stats => Some(Answer::stats(self.stats())),
            Command::Pause => {
                self.run.set_paused(true);
                Some(Answer::ok())
            }
            Command::Resume => {
                self.run.set_paused(false);
                Some(Answer::ok())
            }
            Command::Shutdown => {
                self.exit.notify(ExitReason::Stopped);
                Some(Answer::ok())
            }
            Command::WaitExit => None,
            Command::AttachDisk { disk } => Some(match self.attach_disk(disk, fds) {
                Ok(()) => Answer::ok(),
                Err(msg) => Answer::error(msg),
            }),
        }
    }

    /// Fills empty disk slot `index` with the one descriptor that came with the request.
    fn attach_disk(&self, index: usize, fds: Vec<OwnedFd>) -> Result<(), String> {
        let Some(disk) = self.disks.get(index) else {
            return Err(format!(
                "no disk {index}: this VM has {} disks (0-based positions in its configuration)",
                self.disks.len()
            ));
        };
        let fd = match <[OwnedFd; 1]>::try_from(fds) {
            Ok([fd]) => fd,
            Err(fds) if fds.is_empty() => {
                return Err(
                    "attach-disk needs the image's descriptor as SCM_RIGHTS data on \
                    the request's sendmsg; none arrived"
                        .into(),
                )
            }
            Err(fds) => {
                return Err(format!(
                    "attach-disk takes one descriptor; {} arrived (all closed)",
                    fds.len()
                ))
            }
        };
        let mut block = disk.lock().unwrap_or_else(|e| e.into_inner());
        block
            .attach(File::from(fd))
            .map_err(|e| format!("disk {index}: {}", hull_protocol::error::chain(&e)))?;
        tracing::info!(
            disk = index,
            sectors = block.capacity_sectors(),
            "image attached to an empty disk slot"
        );
        Ok(())
    }

    fn accept(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            if self.clients.len() >= MAX_CLIENTS || s.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = s.as_raw_fd();
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .is_ok()
            {
                self.clients.insert(
                    fd,
                    Client {
                        stream: s,
                        line: Vec::new(),
                        fds: Vec::new(),
                    },
                );
            }
        }
    }

    fn drop_client(&mut self, fd: RawFd) -> Option<UnixStream> {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.clients.remove(&fd).map(|c| c.stream)
    }

    /// Drops client `fd` (closing the descriptors it sent) after telling it why.
    fn cut_off(&mut self, fd: RawFd, why: &str) {
        if let Some(mut s) = self.drop_client(fd) {
            let _ = writeln!(s, "{}", Answer::error(why).to_line());
        }
    }

    fn serve(&mut self, fd: RawFd) {
        let mut buf = [0u8; 512];
        loop {
            let Some(client) = self.clients.get_mut(&fd) else {
                return;
            };
            match recv_with_fds(&client.stream, &mut buf) {
                Ok(Received { len: 0, .. }) => {
                    self.drop_client(fd);
                    return;
                }
                Ok(r) => {
                    client.line.extend_from_slice(&buf[..r.len]);
                    let at = client.line.len() - 1;
                    client.fds.extend(r.fds.into_iter().map(|fd| (at, fd)));
                    if r.truncated || client.fds.len() > MAX_FDS {
                        let why = format!("more than {MAX_FDS} descriptors sent; all closed");
                        self.cut_off(fd, &why);
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.drop_client(fd);
                    return;
                }
            }
            let client = &self.clients[&fd];
            if client.line.len() > MAX_LINE && !client.line.contains(&b'\n') {
                self.cut_off(fd, "request line too long");
                return;
            }
        }
        loop {
            let Some((text, fds)) = self.clients.get_mut(&fd).and_then(Client::next_request) else {
                return;
            };
            let text = String::from_utf8_lossy(&text);
            let answer = match Request::parse(text.trim()) {
                Ok(Command::WaitExit) => {
                    drop(fds);
                    if let Some(s) = self.drop_client(fd) {
                        let _ = s.set_nonblocking(false);
                        self.waiters.push(s);
                    }
                    return;
                }
                Ok(cmd) => self.answer(cmd, fds),
                Err(msg) => Some(Answer::error(msg)),
            };
            if let (Some(a), Some(client)) = (answer, self.clients.get_mut(&fd)) {
                if writeln!(client.stream, "{}", a.to_line()).is_err() {
                    self.drop_client(fd);
                    return;
                }
            }
        }
    }

    /// Tells every `wait-exit` client how the VM ended.
    pub fn finish(&mut self, reason: &ExitReason) {
        let answer = exit_answer(reason).to_line();
        for mut w in self.waiters.drain(..) {
            let _ = writeln!(w, "{answer}");
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl EventHandler for ControlServer {
    fn handle(&mut self, _fd: RawFd) {
        let mut events = vec![EpollEvent::default(); 16];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            if fd == self.listener.as_raw_fd() {
                self.accept();
            } else {
                self.serve(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::counters::Seen;
    use crate::devices::virtio::DeviceType;
    use serde_json::Value;
    use std::io::{BufRead, BufReader};

    #[test]
    fn socket_round_trip() {
        let path = std::env::temp_dir().join(format!("hull-ctl-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let run = Arc::new(RunControl::default());
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let vsock = Arc::new(DeviceCounters::new(DeviceType::Vsock, 3, Seen::Everything));
        let fs = || Arc::new(DeviceCounters::new(DeviceType::Fs, 2, Seen::InterruptsOnly));
        vsock.notified(1, 2);
        vsock.add_rx_bytes(9);
        let devices = vec![fs(), vsock.clone(), fs()];
        let mut server = ControlServer::new(
            &path,
            run.clone(),
            exit.clone(),
            128,
            2,
            devices,
            Vec::new(),
        )
        .unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let waiter = UnixStream::connect(&path).unwrap();
        let mut c = &client;
        writeln!(c, r#"{{"v":1,"cmd":"stats"}}"#).unwrap();
        writeln!(c, r#"{{"v":1,"cmd":"pause"}}"#).unwrap();
        writeln!(c, r#"{{"v":9}}"#).unwrap();
        writeln!(&waiter, r#"{{"v":1,"cmd":"wait-exit"}}"#).unwrap();
        let mut reader = BufReader::new(&client);
        let mut answers = Vec::new();
        while answers.len() < 3 {
            server.handle(server.poll_fd());
            let mut line = String::new();
            client
                .set_read_timeout(Some(std::time::Duration::from_millis(50)))
                .unwrap();
            if reader.read_line(&mut line).is_ok() && !line.is_empty() {
                answers.push(serde_json::from_str::<Value>(&line).unwrap());
            }
        }
        assert_eq!(answers[0]["stats"]["memory"]["guest_mib"], 128);
        assert!(
            answers[0]["stats"]["memory"]["vmm_rss_kib"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert_eq!(answers[1]["ok"], true);
        assert!(run.is_paused());
        assert_eq!(answers[0]["stats"]["vcpu_exits"], 0, "no vCPU ran");
        let devices = &answers[0]["stats"]["devices"];
        let labels: Vec<_> = (0..3)
            .map(|i| format!("{}{}", devices[i]["kind"], devices[i]["index"]))
            .collect();
        assert_eq!(labels, ["\"fs\"0", "\"vsock\"0", "\"fs\"1"]);
        assert_eq!(
            devices[1]["queue_notifications"],
            serde_json::json!([0, 2, 0])
        );
        assert_eq!(devices[1]["bytes"]["rx"], 9);
        assert_eq!(devices[0]["bytes"], Value::Null);
        assert_eq!(answers[2]["ok"], false);
        // The waiter hears about the exit.
        for _ in 0..5 {
            server.handle(server.poll_fd());
        }
        server.finish(&ExitReason::GuestPowerOff);
        let mut line = String::new();
        BufReader::new(&waiter).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["exit"]["status"], 0);
        std::fs::remove_file(&path).unwrap();
    }

    /// A server with an empty slot (disk 0), a configured disk (disk 1) and a second slot
    /// (disk 2), on a fresh socket named after `name`.
    fn disk_server(name: &str) -> (ControlServer, Vec<Arc<Mutex<Block>>>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("hull-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let image = dir.join("configured.img");
        std::fs::write(&image, [0u8; 1024]).unwrap();
        let disks = vec![
            Arc::new(Mutex::new(Block::empty("slot0").unwrap())),
            Arc::new(Mutex::new(Block::new(&image, true, "conf").unwrap())),
            Arc::new(Mutex::new(Block::empty("slot2").unwrap())),
        ];
        let server = ControlServer::new(
            &dir.join("control.sock"),
            Arc::new(RunControl::default()),
            Arc::new(ExitNotifier::new().unwrap()),
            128,
            1,
            Vec::new(),
            disks.clone(),
        )
        .unwrap();
        (server, disks, dir)
    }

    /// A file of `sectors` sectors under `dir`, with a name of its own.
    fn image(dir: &Path, name: &str, sectors: usize) -> File {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; sectors * 512]).unwrap();
        File::open(path).unwrap()
    }

    /// How many of this process's descriptors are open on `path` (robust to other tests'
    /// descriptors coming and going).
    fn open_on(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    /// One sendmsg of `bytes` with `fds` as SCM_RIGHTS data.
    fn send(stream: &UnixStream, bytes: &str, fds: &[RawFd]) {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
        let iov = [std::io::IoSlice::new(bytes.as_bytes())];
        let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None);
        assert_eq!(sent, Ok(bytes.len()));
    }

    /// Serves until `client` has an answer line, or None once it was hung up on. Reads byte
    /// by byte, so a second answer stays in the socket for the next call.
    fn answer_to(server: &mut ControlServer, client: &UnixStream) -> Option<Value> {
        use std::io::Read;
        client
            .set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let mut line = Vec::new();
        for _ in 0..200 {
            server.handle(server.poll_fd());
            let mut byte = [0u8; 1];
            loop {
                match (&*client).read(&mut byte) {
                    Ok(0) => return None,
                    Ok(_) if byte[0] == b'\n' => {
                        return Some(serde_json::from_slice(&line).unwrap())
                    }
                    Ok(_) => line.push(byte[0]),
                    Err(_) => break,
                }
            }
        }
        panic!("no answer");
    }

    fn attach_line(disk: usize) -> String {
        Request::new(Command::AttachDisk { disk }).to_line()
    }

    #[test]
    fn attach_disk_fills_a_slot_with_the_client_library() {
        let (mut server, disks, dir) = disk_server("attach");
        let socket = dir.join("control.sock");
        let img = dir.join("three.img");
        std::fs::write(&img, vec![7u8; 3 * 512]).unwrap();
        let client = {
            let (socket, img) = (socket.clone(), img.clone());
            std::thread::spawn(move || {
                hull_protocol::control::attach_disk(&socket, 2, &File::open(img).unwrap())
            })
        };
        while !client.is_finished() {
            server.handle(server.poll_fd());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        client.join().unwrap().unwrap();
        let slot = disks[2].lock().unwrap();
        assert_eq!((slot.is_empty_slot(), slot.capacity_sectors()), (false, 3));
        assert_eq!(open_on(&img), 1, "the disk holds the one descriptor it got");
        assert!(disks[0].lock().unwrap().is_empty_slot());
        drop(slot);
        // Filled once: the library reports the refusal.
        let again = {
            let img = img.clone();
            std::thread::spawn(move || {
                hull_protocol::control::attach_disk(&socket, 2, &File::open(img).unwrap())
            })
        };
        while !again.is_finished() {
            server.handle(server.poll_fd());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let err = again.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("not an empty slot"), "{err}");
        assert_eq!(open_on(&img), 1, "the refused descriptor was closed");
        drop(server);
        drop(disks);
        assert_eq!(open_on(&img), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn attach_disk_errors_say_what_was_wrong_and_close_every_descriptor() {
        let (mut server, disks, dir) = disk_server("errors");
        let client = UnixStream::connect(dir.join("control.sock")).unwrap();
        let a = image(&dir, "a.img", 1);
        let b = image(&dir, "b.img", 1);
        let small_path = dir.join("small.img");
        std::fs::write(&small_path, [0u8; 100]).unwrap();
        let small = File::open(&small_path).unwrap();
        let folder = File::open(&dir).unwrap();
        let cases: [(String, Vec<RawFd>, &str); 7] = [
            (attach_line(9), vec![a.as_raw_fd()], "no disk 9"),
            (attach_line(1), vec![a.as_raw_fd()], "not an empty slot"),
            (attach_line(0), vec![], "none arrived"),
            (
                attach_line(0),
                vec![a.as_raw_fd(), b.as_raw_fd()],
                "2 arrived",
            ),
            (
                attach_line(0),
                vec![folder.as_raw_fd()],
                "not a regular file",
            ),
            (attach_line(0), vec![small.as_raw_fd()], "100 bytes"),
            ("garbage\n".into(), vec![a.as_raw_fd()], "invalid JSON"),
        ];
        for (line, fds, want) in cases {
            send(&client, &line, &fds);
            let answer = answer_to(&mut server, &client).unwrap();
            assert_eq!(answer["ok"], false, "{line}");
            let error = answer["error"].as_str().unwrap();
            assert!(error.contains(want), "{line}: {error}");
        }
        // A descriptor sent with `stats` is closed; the answer is the usual one.
        send(&client, r#"{"v":1,"cmd":"stats"}"#, &[a.as_raw_fd()]);
        send(&client, "\n", &[]);
        let answer = answer_to(&mut server, &client).unwrap();
        assert_eq!(answer["stats"]["vcpus"], 1);
        // A line before the one with the descriptor, sent before the server reads either:
        // the descriptor still goes with its own request.
        send(&client, r#"{"v":1,"cmd":"pause"}"#, &[]);
        send(&client, "\n", &[]);
        send(&client, &attach_line(0), &[b.as_raw_fd()]);
        assert_eq!(answer_to(&mut server, &client).unwrap()["ok"], true);
        assert_eq!(answer_to(&mut server, &client).unwrap()["ok"], true);
        assert!(!disks[0].lock().unwrap().is_empty_slot());
        drop((a, b, small, folder));
        for name in ["a.img", "small.img"] {
            assert_eq!(open_on(&dir.join(name)), 0, "{name} leaked");
        }
        assert_eq!(open_on(&dir.join("b.img")), 1, "held by disk 0");
        assert_eq!(open_on(&dir), 0, "the directory leaked");
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_clients_lose_their_descriptors_and_the_connection() {
        let (mut server, disks, dir) = disk_server("hostile");
        let socket = dir.join("control.sock");
        let a = image(&dir, "a.img", 1);
        let fd = a.as_raw_fd();
        // More descriptors in one message than a read takes.
        let flood = UnixStream::connect(&socket).unwrap();
        send(&flood, &attach_line(0), &[fd; MAX_FDS + 1]);
        let answer = answer_to(&mut server, &flood).unwrap();
        assert!(answer["error"].as_str().unwrap().contains("descriptors"));
        assert!(answer_to(&mut server, &flood).is_none(), "cut off");
        // Descriptors piling up without a request line.
        let pile = UnixStream::connect(&socket).unwrap();
        for _ in 0..3 {
            send(&pile, "{", &[fd, fd]);
        }
        let answer = answer_to(&mut server, &pile).unwrap();
        assert!(answer["error"].as_str().unwrap().contains("descriptors"));
        // Descriptors with half a line, then the client goes away.
        let quitter = UnixStream::connect(&socket).unwrap();
        send(&quitter, r#"{"v":1,"cmd":"attach-di"#, &[fd]);
        for _ in 0..5 {
            server.handle(server.poll_fd());
        }
        drop(quitter);
        for _ in 0..5 {
            server.handle(server.poll_fd());
        }
        // A wait-exit client's descriptor is not kept either.
        let waiter = UnixStream::connect(&socket).unwrap();
        send(&waiter, "{\"v\":1,\"cmd\":\"wait-exit\"}\n", &[fd]);
        for _ in 0..5 {
            server.handle(server.poll_fd());
        }
        drop(a);
        assert_eq!(open_on(&dir.join("a.img")), 0, "a descriptor leaked");
        assert!(disks
            .iter()
            .all(|d| d.lock().unwrap().capacity_sectors() != 1));
        // The server still serves.
        let fine = UnixStream::connect(&socket).unwrap();
        send(&fine, "{\"v\":1,\"cmd\":\"resume\"}\n", &[]);
        assert_eq!(answer_to(&mut server, &fine).unwrap()["ok"], true);
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
