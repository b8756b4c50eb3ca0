//! StartContainer: let the waiting init execute its program.

use super::spawn::await_exec;
use super::{Container, ContainerError};
use crate::channel::Msg;

pub fn do_start(container: &Container) -> Result<(), ContainerError> {
    let chan = container
        .start
        .lock()
        .expect("start lock")
        .take()
        .ok_or_else(|| ContainerError::AlreadyStarted(container.id.clone()))?;
    chan.send(&Msg::Start, None)?;
    await_exec(&chan)?;
    tracing::info!(container = %container.id, pid = container.init.pid, "started");
    Ok(())
}
