//! Fuzzes the agent's reading of an OCI spec (CreateContainer's JSON): parsing,
//! the spec checks, mount options, path joins onto a rootfs full of escaping
//! symlinks, cgroup limits and the seccomp compiler, up to the first syscall.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hull_agent_fuzz::spec_json(data);
});
