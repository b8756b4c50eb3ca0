//! Memory back to the host (issue 13): guest memory a container used once and freed goes
//! back to the host. The guest kernel reports free pages through virtio-balloon free page
//! reporting and hull-vmm punches them out of guest RAM's memfd, so the pages leave
//! hull-vmm's resident set (`RssShmem`) and the host's page cache alike.

use super::*;
use hull_tests::procs::status_kib;

/// MiB the container writes to a tmpfs in its guest, then deletes.
const BURST_MIB: u64 = 256;

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_freed_guest_memory_goes_back_to_the_host() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["mback"]);
    let tmpfs = format!(
        "type=tmpfs,src=tmpfs,dst=/burst,options=size={}m",
        BURST_MIB + 32
    );
    let opts = [
        "--annotation",
        "io.hull.memory_mib=640",
        "--mount",
        tmpfs.as_str(),
    ];
    ctrd.run_detached("mback", &opts, &["sleep", "1000"]);
    let vmms = pod_processes(&["hull-vmm"]);
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    let vmm = vmms[0].0;
    let guest_ram = || status_kib(vmm, "RssShmem") >> 10;
    std::thread::sleep(Duration::from_secs(5));
    let idle = guest_ram();
    let count = format!("count={BURST_MIB}");
    let fill = ["dd", "if=/dev/zero", "of=/burst/x", "bs=1M", count.as_str()];
    ctrd.ctr_ok(&[&["task", "exec", "--exec-id", "fill", "mback"], &fill[..]].concat());
    let peak = guest_ram();
    assert!(
        peak >= idle + BURST_MIB * 3 / 4,
        "the burst shows on the host: idle {idle} MiB, after it {peak} MiB"
    );
    ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "free",
        "mback",
        "rm",
        "/burst/x",
    ]);
    let freed = Instant::now();
    // The guest reports free pages ~2 s after they gather; allow for the lab's pace.
    let mut after = guest_ram();
    while after > idle + BURST_MIB / 4 && freed.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(2));
        after = guest_ram();
    }
    let took = freed.elapsed().as_secs_f64();
    println!(
        "FIGURES memory-back: hull-vmm RssShmem idle {idle} MiB, after {BURST_MIB} MiB in a guest \
         tmpfs {peak} MiB, {took:.1} s after the delete {after} MiB"
    );
    assert!(
        after <= idle + BURST_MIB / 4,
        "freed guest memory went back to the host: idle {idle} MiB, peak {peak} MiB, \
         {after} MiB {took:.0} s after the delete"
    );
    ctrd.remove("mback");
    assert_clean(ctrd, "the memory-back pod");
}
