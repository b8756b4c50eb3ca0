//! WaitProcess: exit status once the process is gone and its pty output relayed.

use std::time::Duration;

use super::{Container, ContainerError};
use crate::reaper::{reaper, Exit};

/// How long pty output may keep flowing after the process exited (a
/// background child can hold the terminal open forever).
const PTY_DRAIN: Duration = Duration::from_secs(10);

pub fn do_wait(container: &Container, exec_id: &str) -> Result<Exit, ContainerError> {
    let process = container.process(exec_id)?;
    let exit = reaper().wait(process.pid);
    if let Some((_, drained)) = &process.pty {
        drained.wait(PTY_DRAIN);
    }
    tracing::info!(container = %container.id, exec = exec_id, status = exit.status, "exited");
    Ok(exit)
}
