//! RemoveContainer: kill what is left, remove the cgroup and the writable layer, forget the
//! state.

use std::time::Duration;

use super::{Container, ContainerError};
use crate::reaper::reaper;

/// How long the container's processes get to die before removal fails.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dead process may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

pub fn do_remove(container: &Container) -> Result<(), ContainerError> {
    container.cgroup.destroy(KILL_TIMEOUT)?;
    // The cgroup is empty, so every process is dead; collect before forgetting.
    let execs = container.execs.lock().expect("execs lock");
    for pid in std::iter::once(container.init.pid).chain(execs.values().map(|p| p.pid)) {
        reaper().wait_timeout(pid, REAP_TIMEOUT);
        reaper().forget(pid);
    }
    if let Some(mut layer) = container.layer.lock().expect("layer lock").take() {
        layer.remove();
    }
    tracing::info!(container = %container.id, "removed");
    Ok(())
}
