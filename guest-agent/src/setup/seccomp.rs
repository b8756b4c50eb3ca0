//! The spec's seccomp profile compiled to a classic BPF program, first match
//! wins, for x86_64 (other architectures are killed).

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompArg, LinuxSeccompOperator as Op,
};

use super::SetupError;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARGS: u32 = 16;
/// Most instructions the kernel accepts in one program.
const MAX_INSNS: usize = 4096;

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret_value(action: Action, errno: Option<u32>) -> Result<u32, SetupError> {
    let errno = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match action {
        Action::ScmpActKill | Action::ScmpActKillThread => RET_KILL_THREAD,
        Action::ScmpActKillProcess => RET_KILL_PROCESS,
        Action::ScmpActTrap => RET_TRAP,
        Action::ScmpActErrno => RET_ERRNO | errno,
        Action::ScmpActTrace => RET_TRACE | errno,
        Action::ScmpActLog => RET_LOG,
        Action::ScmpActAllow => RET_ALLOW,
        Action::ScmpActNotify => {
            return Err(SetupError::Unsupported(
                "seccomp SCMP_ACT_NOTIFY is not supported".into(),
            ))
        }
    })
}

/// Instructions checking one argument; they fall through when it matches and
/// jump `fail` instructions past their own end when it does not.
fn arg_check(arg: &LinuxSeccompArg, fail: usize) -> Result<Vec<libc::sock_filter>, SetupError> {
    if arg.index() > 5 {
        return Err(SetupError::Unsupported(format!(
            "seccomp argument index {}",
            arg.index()
        )));
    }
    let lo_off = ARGS + 8 * arg.index() as u32;
    let hi_off = lo_off + 4;
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    let (vh, vl) = split(arg.value());
    // Jump offsets below count from the next instruction; `f(n)` = to fail,
    // when n instructions of this check remain after the jump.
    let f = |n: usize| -> Result<u8, SetupError> {
        u8::try_from(n + fail).map_err(|_| SetupError::Unsupported("seccomp rule too large".into()))
    };
    Ok(match arg.op() {
        Op::ScmpCmpEq => vec![
            insn(LD_ABS, 0, 0, hi_off),
            insn(JEQ, 0, f(2)?, vh),
            insn(LD_ABS, 0, 0, lo_off),
            insn(JEQ, 0, f(0)?, vl),
        ],
        Op::ScmpCmpNe => vec![
            insn(LD_ABS, 0, 0, hi_off),
            insn(JEQ, 0, 2, vh),
            insn(LD_ABS, 0, 0, lo_off),
            insn(JEQ, f(0)?, 0, vl),
        ],
        Op::ScmpCmpMaskedEq => {
            let (mh, ml) = (vh, vl);
            let (eh, el) = split(arg.value_two().unwrap_or(0));
            vec![
                insn(LD_ABS, 0, 0, hi_off),
                insn(AND, 0, 0, mh),
                insn(JEQ, 0, f(3)?, eh),
                insn(LD_ABS, 0, 0, lo_off),
                insn(AND, 0, 0, ml),
                insn(JEQ, 0, f(0)?, el),
            ]
        }
        op => {
            // Unsigned 64-bit compare: the high word decides unless it is equal.
            // GT/GE pass when high > v; LT/LE fail then. Equal: compare low.
            let greater = matches!(op, Op::ScmpCmpGt | Op::ScmpCmpGe);
            let low_jump = match op {
                Op::ScmpCmpGt | Op::ScmpCmpLe => JGT,
                _ => JGE,
            };
            if greater {
                vec![
                    insn(LD_ABS, 0, 0, hi_off),
                    insn(JGT, 3, 0, vh),
                    insn(JEQ, 0, f(2)?, vh),
                    insn(LD_ABS, 0, 0, lo_off),
                    insn(low_jump, 0, f(0)?, vl),
                ]
            } else {
                vec![
                    insn(LD_ABS, 0, 0, hi_off),
                    insn(JGT, f(3)?, 0, vh),
                    insn(JEQ, 0, 2, vh),
                    insn(LD_ABS, 0, 0, lo_off),
                    insn(low_jump, f(0)?, 0, vl),
                ]
            }
        }
    })
}

/// Compiles the profile; unknown syscall names are skipped (as libseccomp does).
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<libc::sock_filter>, SetupError> {
    let mut prog = vec![
        insn(LD_ABS, 0, 0, ARCH),
        insn(JEQ, 1, 0, AUDIT_ARCH_X86_64),
        insn(RET, 0, 0, RET_KILL_PROCESS),
        insn(LD_ABS, 0, 0, NR),
    ];
    for rule in profile.syscalls().iter().flatten() {
        let ret = ret_value(rule.action(), rule.errno_ret())?;
        let args = rule.args().clone().unwrap_or_default();
        for name in rule.names() {
            let Ok(nr) = name.parse::<syscalls::Sysno>() else {
                continue;
            };
            // Block: [checks...] RET ret, reload NR; a failed check jumps to the reload.
            let mut checks = Vec::new();
            for (i, arg) in args.iter().enumerate() {
                let remaining: usize = args[i + 1..].iter().map(check_len).sum();
                checks.extend(arg_check(arg, remaining + 1)?);
            }
            let skip = u8::try_from(checks.len() + 1)
                .map_err(|_| SetupError::Unsupported("seccomp rule too large".into()))?;
            prog.push(insn(JEQ, 0, skip, nr.id() as u32));
            let has_checks = !checks.is_empty();
            prog.extend(checks);
            prog.push(insn(RET, 0, 0, ret));
            if has_checks {
                prog.push(insn(LD_ABS, 0, 0, NR));
            }
        }
    }
    prog.push(insn(
        RET,
        0,
        0,
        ret_value(profile.default_action(), profile.default_errno_ret())?,
    ));
    if prog.len() > MAX_INSNS {
        return Err(SetupError::Unsupported(format!(
            "seccomp program of {} instructions",
            prog.len()
        )));
    }
    Ok(prog)
}

fn check_len(arg: &LinuxSeccompArg) -> usize {
    match arg.op() {
        Op::ScmpCmpEq | Op::ScmpCmpNe => 4,
        Op::ScmpCmpMaskedEq => 6,
        _ => 5,
    }
}

/// Installs the program for this thread and its future children.
pub fn install(prog: &[libc::sock_filter]) -> Result<(), SetupError> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const _,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(super::io("install the seccomp filter")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    /// Runs `f` in a forked child under the filter; returns its exit code.
    fn under_filter(prog: &[libc::sock_filter], f: fn() -> i32) -> i32 {
        // SAFETY: the child only makes raw syscalls and exits without unwinding.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: prctl with integer flags; the filter needs no privilege after it.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = if install(prog).is_ok() { f() } else { 99 };
                // SAFETY: _exit ends the child at once, skipping the test harness.
                unsafe { libc::_exit(code) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child with a valid status pointer.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                libc::WEXITSTATUS(status)
            }
        }
    }

    fn errno_of(nr: libc::c_long, arg: u64) -> i32 {
        // SAFETY: dup/fsync/fchdir on descriptors that do not exist only fail.
        let rc = unsafe { libc::syscall(nr, arg) };
        if rc >= 0 {
            // SAFETY: closing the descriptor dup just returned.
            unsafe { libc::close(rc as i32) };
            return 0;
        }
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }

    #[test]
    fn argument_rules_and_default_action_hold_in_the_kernel() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":77,
                 "args":[{"index":0,"value":1234,"op":"SCMP_CMP_EQ"}]},
                {"names":["fchdir"],"action":"SCMP_ACT_ERRNO","errnoRet":78,
                 "args":[{"index":0,"value":2000,"op":"SCMP_CMP_GT"}]},
                {"names":["fsync"],"action":"SCMP_ACT_ERRNO","errnoRet":79,
                 "args":[{"index":0,"value":5000,"op":"SCMP_CMP_LT"}]},
                {"names":["no_such_syscall"],"action":"SCMP_ACT_KILL"}]}"#,
        );
        let prog = compile(&p).unwrap();
        let check = || {
            let ebadf = libc::EBADF;
            let cases = [
                (errno_of(libc::SYS_dup, 1234), 77),
                (errno_of(libc::SYS_dup, (1 << 32) | 1234), ebadf),
                (errno_of(libc::SYS_dup, 1235), ebadf),
                (errno_of(libc::SYS_fchdir, 3000), 78),
                (errno_of(libc::SYS_fchdir, 1 << 40), 78),
                (errno_of(libc::SYS_fchdir, 1500), ebadf),
                (errno_of(libc::SYS_fsync, 4000), 79),
                (errno_of(libc::SYS_fsync, 6000), ebadf),
                (errno_of(libc::SYS_fsync, (1 << 33) | 1000), ebadf),
            ];
            cases
                .iter()
                .position(|(got, want)| got != want)
                .map_or(0, |i| i as i32 + 1)
        };
        assert_eq!(under_filter(&prog, check), 0, "case number that failed");
    }

    #[test]
    fn default_errno_denies_everything_unlisted() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"syscalls":[
                {"names":["exit","exit_group"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        let prog = compile(&p).unwrap();
        assert_eq!(
            under_filter(&prog, || errno_of(libc::SYS_dup, 1)),
            libc::EPERM
        );
    }

    #[test]
    fn notify_is_refused() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(compile(&p).is_err());
    }
}
