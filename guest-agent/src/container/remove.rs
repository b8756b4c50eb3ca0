//! RemoveContainer: kill what is left, remove the cgroup, forget the state.

use std::time::Duration;

use super::{Container, ContainerError};
use crate::reaper::reaper;

/// How long the container's processes get to die before removal fails.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

pub fn do_remove(container: &Container) -> Result<(), ContainerError> {
    container.cgroup.destroy(KILL_TIMEOUT)?;
    reaper().forget(container.init.pid);
    for process in container.execs.lock().expect("execs lock").values() {
        reaper().forget(process.pid);
    }
    tracing::info!(container = %container.id, "removed");
    Ok(())
}
