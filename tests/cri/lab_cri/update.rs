//! Lab: CRI UpdateContainerResources for `runc` and `hull` in the same run.
//! A container starts with a memory limit and a CPU quota; its cgroup, read
//! from inside through ExecSync, shows them; an update changes them to
//! exactly what was asked; an update that sets only the memory leaves the
//! CPU quota as it was (containerd carries the container's other resources);
//! a memory limit above the pod's VM is refused by Hull with create's message
//! and leaves the limit as it was, where runc accepts it (a documented
//! difference: the VM's memory is fixed at boot).

use super::*;

const MIB: i64 = 1 << 20;

/// Prints the container's cgroup version, memory limit, CPU quota and period:
/// cgroup v2 files (Hull's guest; runc on a v2 host) or v1 ones (runc on a v1
/// or hybrid host). The container sees its own cgroup at /sys/fs/cgroup.
const READ_LIMITS: &str = "if [ -f /sys/fs/cgroup/memory.max ]; then \
     echo v2 $(cat /sys/fs/cgroup/memory.max) $(cat /sys/fs/cgroup/cpu.max); \
     else echo v1 $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) \
     $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); fi";

/// What the container's cgroup says: version, memory limit, CPU quota, CPU period.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Limits {
    version: String,
    memory: String,
    quota: String,
    period: String,
}

impl Limits {
    fn read(cri: &mut Cri, r: &mut Report, handler: &str, id: &str) -> Option<Limits> {
        let out = exec(cri, r, handler, id, &["sh", "-c", READ_LIMITS]);
        let words: Vec<&str> = out.stdout.split_whitespace().collect();
        let limits = match words[..] {
            [version, memory, quota, period] => Some(Limits {
                version: version.into(),
                memory: memory.into(),
                quota: quota.into(),
                period: period.into(),
            }),
            _ => None,
        };
        r.check(
            handler,
            limits.is_some(),
            format!("the container's cgroup limits read from inside: {out:?}"),
        );
        limits
    }

    /// Whether these are `memory` bytes and `quota` µs per `period` µs.
    fn are(&self, memory: i64, quota: i64, period: i64) -> bool {
        (
            self.memory.as_str(),
            self.quota.as_str(),
            self.period.as_str(),
        ) == (
            memory.to_string().as_str(),
            quota.to_string().as_str(),
            period.to_string().as_str(),
        )
    }
}

/// A container's resources as kubelet sends them: a memory limit and a CPU quota per 100 ms.
fn limits(memory_mib: i64, quota_us: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: if quota_us > 0 { 100_000 } else { 0 },
        cpu_quota: quota_us,
        memory_limit_in_bytes: memory_mib * MIB,
        ..Default::default()
    }
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel, runc, CNI plugins (make test-lab)"]
fn lab_cri_update_container_resources_changes_the_containers_cgroup() {
    let (mut cri, base) = cri();
    let mut r = Report::default();
    let started = Instant::now();
    for handler in &handlers() {
        let handler = handler.as_str();
        // Hull's VM: 512 MiB for the pod plus the base.
        let mut fx = PodFixture::new(
            &base,
            handler,
            &format!("update-{handler}"),
            false,
            Some(resources(1, 512)),
        );
        let app = container_config(
            "app",
            IMAGE,
            &["sleep", "100000"],
            &[],
            false,
            Some(limits(256, 50_000)),
        );
        let Some((_, id, _)) = fx.start(&mut cri, &mut r, "start the pod", &app) else {
            continue;
        };
        if let Some(before) = Limits::read(&mut cri, &mut r, handler, &id) {
            println!("[{handler}] cgroup {}: {before:?}", before.version);
            r.check(
                handler,
                before.are(256 * MIB, 50_000, 100_000),
                format!("created with 256 MiB and 50000/100000 µs: {before:?}"),
            );
        }
        let steps = [
            (limits(192, 30_000), (192, 30_000), "192 MiB and 30000 µs"),
            // Only the memory: containerd carries the quota set before.
            (limits(128, 0), (128, 30_000), "128 MiB, the quota kept"),
        ];
        for (update, (mib, quota), what) in steps {
            let done = r.result(
                handler,
                &format!("UpdateContainerResources to {what}"),
                cri.update_resources(&id, update),
            );
            if done.is_none() {
                continue;
            }
            if let Some(now) = Limits::read(&mut cri, &mut r, handler, &id) {
                r.check(
                    handler,
                    now.are(mib * MIB, quota, 100_000),
                    format!("updated to {what}: {now:?}"),
                );
            }
        }
        // Above the VM's memory (640 MiB for Hull): Hull refuses, runc accepts.
        let big = cri.update_resources(&id, limits(4096, 0));
        let after = Limits::read(&mut cri, &mut r, handler, &id);
        if handler == "hull" {
            r.check(
                handler,
                big.as_ref()
                    .is_err_and(|e| e.to_string().contains("does not fit in the pod's VM")),
                format!("a 4 GiB limit in a 640 MiB VM is refused: {big:?}"),
            );
            r.check(
                handler,
                after.is_some_and(|l| l.are(128 * MIB, 30_000, 100_000)),
                "the refused update changed nothing",
            );
        } else {
            r.check(
                handler,
                big.is_ok() && after.is_some_and(|l| l.are(4096 * MIB, 30_000, 100_000)),
                format!("runc takes a 4 GiB limit: {big:?}"),
            );
        }
        fx.teardown(&mut cri, &mut r);
    }
    println!(
        "update scenario: {:.1} s for {:?}",
        started.elapsed().as_secs_f64(),
        handlers()
    );
    r.finish(&shim_log());
}
