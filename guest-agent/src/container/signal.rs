//! SignalProcess: one process, or the whole container through its cgroup.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Container, ContainerError};

pub fn do_signal(
    container: &Container,
    exec_id: &str,
    signal: u32,
    all: bool,
) -> Result<(), ContainerError> {
    let sig = Signal::try_from(signal as i32)
        .map_err(|_| ContainerError::Invalid(format!("unknown signal {signal}")))?;
    if all && sig == Signal::SIGKILL {
        container.cgroup.kill_all()?;
    } else if all {
        container.cgroup.signal_all(sig as i32)?;
    } else {
        let process = container.process(exec_id)?;
        if crate::reaper::reaper().exited(process.pid).is_none() {
            kill(Pid::from_raw(process.pid), sig).map_err(|source| ContainerError::Sys {
                what: "kill",
                source,
            })?;
        }
    }
    tracing::info!(container = %container.id, exec = exec_id, signal, all, "signalled");
    Ok(())
}
