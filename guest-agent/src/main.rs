//! `hull-agent`: the guest's `/init`.
//!
//! For now it proves the boot path: mounts the basics, prints the ready marker
//! on the console and restarts the VM, which the VMM treats as power-off.

use std::ffi::CString;
use std::io::Write;

fn mount(source: &str, target: &str, fstype: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    let c = |s: &str| CString::new(s).expect("static mount arguments have no NUL");
    let (source, target, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call;
    // a null data pointer is allowed by mount(2).
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        for (src, dst, fs) in [
            ("proc", "/proc", "proc"),
            ("sysfs", "/sys", "sysfs"),
            ("devtmpfs", "/dev", "devtmpfs"),
        ] {
            if let Err(e) = mount(src, dst, fs) {
                eprintln!("hull-agent: mount {dst}: {e}");
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} uptime={}", hull_protocol::READY_MARKER, uptime());
    let _ = out.flush();
    if pid1 {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        // SAFETY: reboot(2) with a valid command; as PID 1 we own the machine.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    }
}
