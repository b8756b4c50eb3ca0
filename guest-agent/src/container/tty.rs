//! ResizePty and CloseStdin: the process's terminal and input stream.

use std::os::fd::AsRawFd;

use super::{Container, ContainerError};

/// End-of-transmission: what a terminal reads as end of input.
const EOT: u8 = 0x04;

pub fn do_resize(
    container: &Container,
    exec_id: &str,
    rows: u32,
    cols: u32,
) -> Result<(), ContainerError> {
    let process = container.process(exec_id)?;
    let (master, _) = process.pty.as_ref().ok_or(ContainerError::NoTerminal)?;
    let size = libc::winsize {
        ws_row: rows.min(u16::MAX.into()) as u16,
        ws_col: cols.min(u16::MAX.into()) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that lives on our stack for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(ContainerError::Sys {
            what: "resize the pty",
            source: nix::Error::last(),
        });
    }
    tracing::info!(container = %container.id, exec = exec_id, rows, cols, "pty resized");
    Ok(())
}

pub fn do_close_stdin(container: &Container, exec_id: &str) -> Result<(), ContainerError> {
    let process = container.process(exec_id)?;
    let sys = |source| ContainerError::Sys {
        what: "close stdin",
        source,
    };
    if let Some((master, _)) = &process.pty {
        nix::unistd::write(master, &[EOT]).map_err(sys)?;
    } else if let Some(stdin) = process.stdin.lock().expect("stdin lock").take() {
        crate::stdio::close_read(&stdin).map_err(sys)?;
    }
    tracing::info!(container = %container.id, exec = exec_id, "stdin closed");
    Ok(())
}
