//! Per-thread seccomp filters of hull-vmm: a guest that finds a bug in a device gets only the
//! syscalls the thread it runs on needs, and any other syscall kills the whole VMM.
//!
//! Three filters: [`ThreadKind::Vcpu`] for the vCPU threads (KVM_RUN and the MMIO/port I/O
//! handlers: device activation, interrupts, logs), [`ThreadKind::Vmm`] for the event loop
//! (epoll, the devices' sockets and files, the control socket) and [`ThreadKind::Console`]
//! for the console writer (writes and locks only). All are installed before the guest runs
//! its first instruction; none allows creating threads or processes, executing files, or
//! opening files for writing. The allowlists come from strace of the lab_vmm boot and block
//! tests, per thread, and were checked by running the lab_vmm tests (two-vCPU boot, vsock,
//! block, virtio-fs, the hostile guest) and a containerd pod under them: no kill but the
//! self-test's.

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Environment variable (test-only) that makes the event loop, once filtered, issue a syscall
/// no filter allows (`socket(AF_INET, ...)`), so a test can see the VMM killed by SIGSYS.
pub const SELFTEST_ENV: &str = "HULL_VMM_SECCOMP_SELFTEST";

/// KVM_RUN: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// FIONBIO: std's `set_nonblocking` on sockets.
const FIONBIO: u64 = 0x5421;
/// TUNSETOFFLOAD: a virtio-net device sets the tap's offloads when the guest starts it.
const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;
/// The one fallocate mode allowed: the balloon punches reported guest pages out of the RAM
/// memfd (never allocating, never changing a file's size).
const PUNCH_HOLE: u64 = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64;

/// Errors compiling or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules did not compile (a bug in this module: the unit tests compile every filter).
    #[error("cannot compile the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused the filter (no seccomp support?); run with `"seccomp": false` only
    /// to debug.
    #[error("cannot install the {0} seccomp filter (does the kernel support seccomp filters?)")]
    Install(&'static str, #[source] seccompiler::Error),
}

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// The event loop (main thread).
    Vmm,
    /// The console writer thread.
    Console,
    /// The jail's holder, `hull-vmm-jail`: the VMM's parent outside its PID namespace.
    Holder,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Vmm => "event loop",
            ThreadKind::Console => "console writer",
            ThreadKind::Holder => "jail holder",
        }
    }
}

/// Both compiled filters, shared by the threads that install them.
#[derive(Debug, Clone)]
pub struct Filters {
    /// For the vCPU threads.
    pub vcpu: Arc<BpfProgram>,
    /// For the event loop.
    pub vmm: Arc<BpfProgram>,
    /// For the console writer.
    pub console: Arc<BpfProgram>,
}

impl Filters {
    /// Compiles the filters for this machine. `drop_to` is the (uid, gid) the jail will switch
    /// the process to after the console writer is filtered: glibc makes every thread issue
    /// the switch, so that thread may set exactly these ids and no others.
    pub fn compile(drop_to: Option<(u32, u32)>) -> Result<Self, Error> {
        let mut console = common_rules();
        if let Some((uid, gid)) = drop_to.filter(|ids| *ids != (0, 0)) {
            console.extend(set_ids_rules(uid, gid));
        }
        Ok(Filters {
            vcpu: Arc::new(compile(ThreadKind::Vcpu)?),
            vmm: Arc::new(compile(ThreadKind::Vmm)?),
            console: Arc::new(compile_rules(ThreadKind::Console, console)?),
        })
    }
}

/// setgroups(0, ...), setresgid(gid, gid, gid) and setresuid(uid, uid, uid), nothing else.
fn set_ids_rules(uid: u32, gid: u32) -> Vec<(i64, Vec<Cond>)> {
    let all = |id: u32| {
        (0..3)
            .map(|arg| (arg, Len::Dword, Op::Eq, u64::from(id)))
            .collect::<Vec<Cond>>()
    };
    vec![
        arg_eq(libc::SYS_setgroups, 0, 0),
        (libc::SYS_setresgid, all(gid)),
        (libc::SYS_setresuid, all(uid)),
    ]
}

/// Installs `filter` (made for `kind`) on the calling thread; threads it spawns later inherit
/// it. Sets no_new_privs first, as the kernel requires of an unprivileged caller.
pub fn install(kind: ThreadKind, filter: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(filter).map_err(|e| Error::Install(kind.name(), e))
}

/// With [`SELFTEST_ENV`] set, issues a syscall outside every filter: a filtered VMM dies here
/// of SIGSYS; an unfiltered one logs that it survived and goes on.
pub fn selftest_if_asked() {
    if std::env::var_os(SELFTEST_ENV).is_none() {
        return;
    }
    tracing::warn!("{SELFTEST_ENV} set: issuing a forbidden syscall");
    // SAFETY: socket() has no memory arguments; the descriptor, if any, is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just created and is owned by nobody else.
        unsafe { libc::close(fd) };
    }
    tracing::warn!("forbidden syscall returned {fd}: no seccomp filter is installed");
}

/// Compiles the filter of `kind`: allowlist, anything else kills the process.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, Error> {
    let rules = match kind {
        ThreadKind::Vcpu => vcpu_rules(),
        ThreadKind::Vmm => vmm_rules(),
        ThreadKind::Console => common_rules(),
        ThreadKind::Holder => holder_rules(0),
    };
    compile_rules(kind, rules)
}

fn compile_rules(kind: ThreadKind, rules: Vec<(i64, Vec<Cond>)>) -> Result<BpfProgram, Error> {
    let err = |e| Error::Compile(kind.name(), e);
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, conds) in rules {
        let entry = map.entry(nr).or_default();
        if conds.is_empty() {
            continue;
        }
        let conds = conds
            .into_iter()
            .map(|(arg, len, op, value)| SeccompCondition::new(arg, len, op, value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        entry.push(SeccompRule::new(conds).map_err(err)?);
    }
    let filter = SeccompFilter::new(
        map,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    filter.try_into().map_err(err)
}

/// One argument condition: (argument index, width, comparison, value).
type Cond = (u8, Len, Op, u64);

/// A syscall allowed whatever its arguments.
fn any(nr: libc::c_long) -> (i64, Vec<Cond>) {
    (nr, Vec::new())
}

/// A syscall allowed when argument `arg` (32-bit) equals `value`; one entry per allowed value.
fn arg_eq(nr: libc::c_long, arg: u8, value: u64) -> (i64, Vec<Cond>) {
    (nr, vec![(arg, Len::Dword, Op::Eq, value)])
}

/// A syscall allowed when none of `bits` is set in argument `arg` (32-bit).
fn arg_clear(nr: libc::c_long, arg: u8, bits: u64) -> (i64, Vec<Cond>) {
    (nr, vec![(arg, Len::Dword, Op::MaskedEq(bits), 0)])
}

/// tgkill of `signal` to a thread of this process (the one that compiles the filter).
fn own_signal(signal: libc::c_int) -> (i64, Vec<Cond>) {
    let pid = u64::from(std::process::id());
    (
        libc::SYS_tgkill,
        vec![
            (0, Len::Dword, Op::Eq, pid),
            (2, Len::Dword, Op::Eq, signal as u64),
        ],
    )
}

/// What every thread needs: memory (never executable), locks, signals, thread exit, time, logs.
fn common_rules() -> Vec<(i64, Vec<Cond>)> {
    let exec = libc::PROT_EXEC as u64;
    vec![
        any(libc::SYS_read),
        any(libc::SYS_write),
        any(libc::SYS_futex),
        any(libc::SYS_brk),
        arg_clear(libc::SYS_mmap, 2, exec),
        arg_clear(libc::SYS_mprotect, 2, exec),
        any(libc::SYS_munmap),
        any(libc::SYS_mremap),
        any(libc::SYS_madvise),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_rt_sigreturn),
        any(libc::SYS_sigaltstack),
        any(libc::SYS_sched_yield),
        any(libc::SYS_sched_getaffinity),
        any(libc::SYS_getrandom),
        any(libc::SYS_clock_gettime),
        any(libc::SYS_gettimeofday),
        any(libc::SYS_getpid),
        any(libc::SYS_gettid),
        // A vCPU kick from another thread and abort() on a double panic, inside this process.
        own_signal(libc::SIGRTMIN()),
        own_signal(libc::SIGABRT),
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
    ]
}

/// The jail's holder (see `jail::enter_pid_namespace`), which stays root outside the jail:
/// it waits for signals and for its one child, the VMM (`child`), passes signals on to it,
/// and ends as the VMM ends (exit code, or the VMM's signal raised at itself). Nothing else:
/// no memory calls, no files, no signals to any other process.
pub fn holder(child: libc::pid_t) -> Result<BpfProgram, Error> {
    compile_rules(ThreadKind::Holder, holder_rules(child))
}

fn holder_rules(child: libc::pid_t) -> Vec<(i64, Vec<Cond>)> {
    let own = u64::from(std::process::id());
    vec![
        any(libc::SYS_rt_sigtimedwait),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_rt_sigaction),
        any(libc::SYS_rt_sigreturn),
        arg_eq(libc::SYS_kill, 0, child as u64),
        arg_eq(libc::SYS_kill, 0, own),
        arg_eq(libc::SYS_wait4, 0, child as u64),
        any(libc::SYS_getpid),
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
    ]
}

/// A vCPU thread: KVM_RUN on its vCPU, and what the MMIO and port I/O handlers do there
/// (interrupt eventfds, the virtio-fs activation's vhost-user messages, logs).
fn vcpu_rules() -> Vec<(i64, Vec<Cond>)> {
    let mut rules = common_rules();
    rules.extend([
        arg_eq(libc::SYS_ioctl, 1, KVM_RUN),
        // virtio-net activation and reset (a guest's MMIO write, on this
        // thread): the tap's offloads and the device's own tap poll set.
        arg_eq(libc::SYS_ioctl, 1, TUNSETOFFLOAD),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_sendmsg),
        any(libc::SYS_recvmsg),
        any(libc::SYS_close),
    ]);
    rules
}

/// The event loop: epoll, the devices' descriptors and backends (block file I/O, vsock Unix
/// sockets, vhost-user, tap, the balloon's hole punching in guest RAM), the control socket
/// (its `attach-disk` images arrive by recvmsg with SCM_RIGHTS and are examined by statx or
/// fstat; unused ones are closed), /proc reads for stats.
fn vmm_rules() -> Vec<(i64, Vec<Cond>)> {
    let writes = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u64;
    let mut rules = common_rules();
    rules.extend([
        any(libc::SYS_epoll_wait),
        any(libc::SYS_epoll_pwait),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_readv),
        any(libc::SYS_writev),
        any(libc::SYS_pread64),
        any(libc::SYS_pwrite64),
        any(libc::SYS_preadv),
        any(libc::SYS_pwritev),
        any(libc::SYS_fsync),
        any(libc::SYS_fdatasync),
        // Free page reporting: only the punch-hole mode (see `memory::discard`).
        arg_eq(libc::SYS_fallocate, 1, PUNCH_HOLE),
        any(libc::SYS_lseek),
        any(libc::SYS_close),
        any(libc::SYS_fstat),
        any(libc::SYS_statx),
        any(libc::SYS_newfstatat),
        // Only read-only opens: the control socket's stats read /proc/self/stat{,m}.
        arg_clear(libc::SYS_openat, 2, writes),
        // Vsock connections to `<uds>_<port>`: Unix sockets only.
        arg_eq(libc::SYS_socket, 0, libc::AF_UNIX as u64),
        any(libc::SYS_connect),
        any(libc::SYS_accept4),
        any(libc::SYS_shutdown),
        any(libc::SYS_getsockopt),
        any(libc::SYS_sendto),
        any(libc::SYS_recvfrom),
        any(libc::SYS_sendmsg),
        any(libc::SYS_recvmsg),
        arg_eq(libc::SYS_ioctl, 1, FIONBIO),
        arg_eq(libc::SYS_fcntl, 1, libc::F_GETFL as u64),
        arg_eq(libc::SYS_fcntl, 1, libc::F_SETFL as u64),
        arg_eq(libc::SYS_fcntl, 1, libc::F_GETFD as u64),
        arg_eq(libc::SYS_fcntl, 1, libc::F_SETFD as u64),
        arg_eq(libc::SYS_fcntl, 1, libc::F_DUPFD_CLOEXEC as u64),
        any(libc::SYS_eventfd2),
        any(libc::SYS_timerfd_create),
        any(libc::SYS_timerfd_settime),
        any(libc::SYS_nanosleep),
        any(libc::SYS_clock_nanosleep),
        // The VMM removes its sockets at exit.
        any(libc::SYS_unlink),
        any(libc::SYS_unlinkat),
    ]);
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile_for_x86_64() {
        let f = Filters::compile(Some((1000, 1000))).unwrap();
        for prog in [&f.vcpu, &f.vmm, &f.console] {
            // An arch check, the rules and the default action at least.
            assert!(prog.len() > 20, "{} instructions", prog.len());
            assert!(
                prog.len() < 4096,
                "BPF programs hold at most 4096 instructions"
            );
        }
        assert_ne!(f.vcpu, f.vmm);
        assert!(f.console.len() < f.vmm.len());
        let root = Filters::compile(None).unwrap();
        assert!(
            root.console.len() < f.console.len(),
            "no id changes without a drop"
        );
    }

    #[test]
    fn vcpu_threads_get_no_sockets_files_or_epoll() {
        let nrs: Vec<i64> = vcpu_rules().iter().map(|(nr, _)| *nr).collect();
        for forbidden in [
            libc::SYS_socket,
            libc::SYS_openat,
            libc::SYS_connect,
            libc::SYS_epoll_wait,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_execve,
        ] {
            assert!(!nrs.contains(&forbidden), "syscall {forbidden} allowed");
        }
    }

    #[test]
    fn no_thread_may_spawn_exec_or_change_ids() {
        let kinds = [
            ThreadKind::Vcpu,
            ThreadKind::Vmm,
            ThreadKind::Console,
            ThreadKind::Holder,
        ];
        for kind in kinds {
            let rules = match kind {
                ThreadKind::Vcpu => vcpu_rules(),
                ThreadKind::Vmm => vmm_rules(),
                ThreadKind::Console => common_rules(),
                ThreadKind::Holder => holder_rules(1),
            };
            for (nr, _) in rules {
                assert!(
                    ![
                        libc::SYS_clone,
                        libc::SYS_clone3,
                        libc::SYS_fork,
                        libc::SYS_vfork,
                        libc::SYS_execve,
                        libc::SYS_execveat,
                        libc::SYS_ptrace,
                        libc::SYS_setuid,
                        libc::SYS_mount,
                        libc::SYS_bpf,
                    ]
                    .contains(&nr),
                    "{kind:?} allows syscall {nr}"
                );
            }
        }
    }

    #[test]
    fn only_the_event_loop_may_fallocate_and_only_to_punch_holes() {
        for rules in [vcpu_rules(), common_rules()] {
            assert!(rules.iter().all(|(nr, _)| *nr != libc::SYS_fallocate));
        }
        let fallocate: Vec<_> = vmm_rules()
            .into_iter()
            .filter(|(nr, _)| *nr == libc::SYS_fallocate)
            .collect();
        assert_eq!(fallocate, [arg_eq(libc::SYS_fallocate, 1, PUNCH_HOLE)]);
    }

    /// Runs `f` in a forked child under the event-loop filter; its wait status.
    fn under_vmm_filter(f: impl FnOnce() -> i32) -> i32 {
        under_filter(&compile(ThreadKind::Vmm).unwrap(), f)
    }

    /// Runs `f` in a forked child under `filter`; its wait status.
    fn under_filter(filter: &BpfProgram, f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only makes raw syscalls before _exit (the filter's installation is
        // prctl + seccomp on a prebuilt program).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if seccompiler::apply_filter(filter).is_err() {
                3
            } else {
                f()
            };
            // SAFETY: exiting the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn the_holder_may_signal_only_its_child_and_itself() {
        let other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (sleeper, me) = (other.id() as libc::pid_t, std::process::id() as libc::pid_t);
        let filter = holder(sleeper).unwrap();
        let run = |f: &dyn Fn() -> i32| under_filter(&filter, f);
        // SAFETY: kill with signal 0 only checks; no memory arguments.
        let child = run(&|| unsafe { libc::kill(sleeper, 0) });
        assert!(
            libc::WIFEXITED(child) && libc::WEXITSTATUS(child) == 0,
            "{child:#x}"
        );
        // The test process stands for the holder's own pid (the filter was compiled here).
        // SAFETY: as above.
        let own = run(&|| unsafe { libc::kill(me, 0) });
        assert!(
            libc::WIFEXITED(own) && libc::WEXITSTATUS(own) == 0,
            "{own:#x}"
        );
        // SAFETY: as above; init is neither the child nor the holder.
        let init = run(&|| unsafe { libc::kill(1, 0) });
        assert!(
            libc::WIFSIGNALED(init) && libc::WTERMSIG(init) == libc::SIGSYS,
            "{init:#x}"
        );
        // SAFETY: getppid has no arguments; it is outside the holder's list.
        let ppid = run(&|| unsafe { libc::getppid() });
        assert!(
            libc::WIFSIGNALED(ppid) && libc::WTERMSIG(ppid) == libc::SIGSYS,
            "{ppid:#x}"
        );
        let mut other = other;
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn the_event_loop_may_punch_holes_but_not_allocate() {
        use std::os::fd::AsRawFd;
        let ram = crate::memory::create(16).unwrap();
        let fd = ram.memfd.as_raw_fd();
        let mode = PUNCH_HOLE as libc::c_int;
        // SAFETY: fallocate takes no pointers; `fd` is the child's copy of the memfd.
        let punch = under_vmm_filter(|| unsafe { libc::fallocate(fd, mode, 0, 4096) });
        assert!(
            libc::WIFEXITED(punch) && libc::WEXITSTATUS(punch) == 0,
            "punching a hole: status {punch:#x}"
        );
        // SAFETY: as above; mode 0 allocates and must kill the child.
        let alloc = under_vmm_filter(|| unsafe { libc::fallocate(fd, 0, 0, 4096) });
        assert!(
            libc::WIFSIGNALED(alloc) && libc::WTERMSIG(alloc) == libc::SIGSYS,
            "allocating: status {alloc:#x}: expected death by SIGSYS"
        );
    }

    /// The control socket's attach-disk, served under the event-loop filter: accepting the
    /// client, recvmsg with SCM_RIGHTS, statx of the image, the answer, closing what is unused.
    #[test]
    fn the_event_loop_may_receive_and_attach_an_image_descriptor() {
        use crate::control::ControlServer;
        use crate::devices::virtio::block::device::Block;
        use crate::event_loop::EventHandler;
        use hull_protocol::control::{Command, Request};
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        use std::sync::Mutex;

        let dir = std::env::temp_dir().join(format!("hull-seccomp-attach-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let image = dir.join("image");
        std::fs::write(&image, [0u8; 4096]).unwrap();
        let disk = Arc::new(Mutex::new(Block::empty("slot").unwrap()));
        let socket = dir.join("control.sock");
        let mut server = ControlServer::new(
            &socket,
            Arc::default(),
            Arc::new(crate::exit::ExitNotifier::new().unwrap()),
            128,
            1,
            Vec::new(),
            vec![disk.clone()],
        )
        .unwrap();
        let client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let file = std::fs::File::open(&image).unwrap();
        let stats = Request::new(Command::Stats).to_line();
        let attach = Request::new(Command::AttachDisk { disk: 0 }).to_line();
        for line in [stats, attach] {
            let fds = [file.as_raw_fd()];
            let iov = [std::io::IoSlice::new(line.as_bytes())];
            let cmsgs = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(client.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
        }
        let status = under_vmm_filter(|| {
            for _ in 0..10 {
                server.handle(server.poll_fd());
            }
            let sectors = disk.lock().map_or(0, |d| d.capacity_sectors());
            i32::from(sectors != 8)
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "attach under the filter: status {status:#x}"
        );
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Installs the event-loop filter in a forked child and checks that an allowed syscall
    /// works and a forbidden one kills the child with SIGSYS.
    #[test]
    fn a_forbidden_syscall_kills_with_sigsys() {
        let filter = compile(ThreadKind::Vmm).unwrap();
        // SAFETY: the child only calls async-signal-safe functions and raw syscalls before
        // _exit (the filter's installation is prctl + seccomp on a prebuilt program).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&filter).is_err() {
                // SAFETY: exiting the forked child.
                unsafe { libc::_exit(3) };
            }
            // SAFETY: getpid is allowed; socket(AF_INET) is not and must kill the process.
            unsafe {
                libc::getpid();
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "child status {status:#x}: expected death by SIGSYS"
        );
    }
}
