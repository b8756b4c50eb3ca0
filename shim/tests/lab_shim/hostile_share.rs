//! A guest that plants symlinks, setuid files or device nodes in the pod share cannot make the host create, change or mount anything outside the pod's directory (issue 16, holes 3 and 4).

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Host files the attack aims at, on the lab's ext4 (as a node's volumes are).
const TARGETS: &str = "/var/lib/hull-test/hostile-share";

/// Mount points outside this binary's directory (containerd's snapshots and the
/// pods live under [`BASE`]).
fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| !m.starts_with(BASE))
        .collect()
}

/// Per-mount options of the topmost mount at `path`.
fn mount_options(path: &Path) -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .rfind(|f| f.get(4) == path.to_str().as_ref())
        .map(|f| f[5].to_string())
        .unwrap_or_else(|| panic!("{} is not a mount point", path.display()))
}

/// A file's content and mtime, to show an attack left it alone.
fn fingerprint(path: &Path) -> (String, i64, i64) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(meta.is_file(), "{} was replaced", path.display());
    (
        std::fs::read_to_string(path).unwrap(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// What the privileged container does as guest root: reach the share's top
/// level (through the agent's root when its PID namespace is joinable, else by
/// mounting the virtio-fs tag itself, which in the guest yields the newest
/// superblock of the connection: a container root, not the top), try to plant
/// symlinks to host files where the shim makes the next container's mount
/// points (then keep trying in the background while that container is
/// created), make a setuid file and a block device node in its own root, and
/// chown a file.
fn attack_script(canary: &Path, canary_dir: &Path) -> String {
    let (c, d) = (canary.display(), canary_dir.display());
    format!(
        r#"S=/proc/1/root/run/hull/shared
if [ -d $S/.volumes ]; then echo "REACHED: the agent's view of the share"; else
  mkdir -p /mnt/s && mount -t virtiofs hullshare /mnt/s || {{ echo MOUNT-FAILED; exit 10; }}
  S=/mnt/s; [ -d $S/.volumes ] && echo "REACHED: a mount of the tag" || echo "NOT-REACHED: the tag mounts as $(ls $S | tr '\n' ' ')"
fi
cd $S
try() {{ if "$@" 2>/tmp/err; then echo "PLANTED: $*"; else echo "REFUSED: $* ($(cat /tmp/err))"; fi; }}
try ln -s {d} .volumes/hs2
try mkdir .volumes/hs2
try ln -s {c} .volumes/hs2/0
try ln -s {d} .volumes/hs2/1
try ln -s {d} hs2
try mv .volumes .volumes-old
try rmdir .volumes
try ln -s {d} .volumes/hs1
ls -la $S
if touch $S/image-write 2>/tmp/err; then echo IMAGE-WRITTEN; else echo "IMAGE-REFUSED ($(cat /tmp/err))"; fi
cp /bin/busybox /hs-suid && chmod 4755 /hs-suid && echo SUID-MADE
if mknod /hs-blk b 7 0 2>/tmp/err; then echo MKNOD-MADE; else echo "MKNOD-REFUSED $(cat /tmp/err)"; fi
touch /owned && chown 1234:4321 /owned && echo "CHOWN $(stat -c %u:%g /owned)"
(while [ ! -e /tmp/stop ]; do
   mkdir -p .volumes/hs2; ln -s {c} .volumes/hs2/0; ln -s {d} hs2; usleep 20000
 done) >/dev/null 2>&1 &
echo ATTACK-DONE
"#
    )
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_hostile_share_planted_symlinks_setuid_files_and_device_nodes() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["hs2", "hs1"]);
    let targets = Path::new(TARGETS);
    let _ = std::fs::remove_dir_all(targets);
    std::fs::create_dir_all(targets.join("canary-dir")).unwrap();
    let canary = targets.join("canary");
    std::fs::write(&canary, "canary\n").unwrap();
    let canary_dir = targets.join("canary-dir");
    std::fs::write(canary_dir.join("keep"), "keep\n").unwrap();
    let vol_file = targets.join("vol-file");
    std::fs::write(&vol_file, "file volume\n").unwrap();
    let vol_dir = targets.join("vol-dir");
    std::fs::create_dir(&vol_dir).unwrap();
    // A block device node in a volume: nodev keeps it unopenable through the share.
    let blk = vol_dir.join("blk");
    let made = Command::new("mknod")
        .arg(&blk)
        .args(["b", "7", "0"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod on the host");
    let before = (fingerprint(&canary), fingerprint(&canary_dir.join("keep")));

    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=hspod"];
    // The issue's entry: join the agent's PID namespace (its root at /proc/1/root).
    // Once the agent refuses that, the container runs plain privileged.
    let privileged = [&pod[..], &["--privileged"]].concat();
    let joined = [&privileged[..], &["--with-ns", "pid:/proc/1/ns/pid"]].concat();
    let mut full = vec!["run", "-d", "--runtime", HULL];
    full.extend_from_slice(&joined);
    full.extend_from_slice(&[IMAGE, "hs1", "sleep", "1000"]);
    if !ctrd.ctr(&full).status.success() {
        println!("the agent refuses its PID namespace: attacking through the virtio-fs tag");
        ctrd.remove("hs1");
        ctrd.run_detached("hs1", &privileged, &["sleep", "1000"]);
    }
    let pod_dir = Path::new(BASE).join("pods/default/hspod");
    let share = pod_dir.join("shared");
    // Private: 0700, or, with hull-vmm jailed under a gid of its own (this
    // containerd's config), 02710 in that group: the VMM may only traverse it
    // to reach its sockets; nobody else gets anything.
    let meta = std::fs::metadata(&pod_dir).unwrap();
    let mode = meta.permissions().mode() & 0o7777;
    assert!(
        mode == 0o700 || (mode == 0o2710 && meta.gid() == JAIL_ID),
        "the pod directory is private: mode {mode:o}, gid {}",
        meta.gid()
    );
    let run_mode = std::fs::metadata(Path::new(BASE).join("pods"))
        .unwrap()
        .mode();
    assert_eq!(run_mode & 0o022, 0, "run_dir is writable by root only");
    let opts = mount_options(&share);
    assert!(
        opts.starts_with("ro,") && opts.contains("nosuid") && opts.contains("nodev"),
        "the served share: {opts}"
    );

    let script = attack_script(&canary, &canary_dir);
    let out = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "attack",
        "hs1",
        "sh",
        "-c",
        &script,
    ]);
    println!("attack from hs1:\n{out}");
    assert!(out.contains("ATTACK-DONE"), "{out}");
    if out.lines().any(|l| l.starts_with("REACHED:")) {
        let planted = out.contains("PLANTED");
        assert!(!planted, "the guest wrote the share's own levels:\n{out}");
        let refused = out.lines().filter(|l| l.starts_with("REFUSED")).count();
        assert_eq!(refused, 8, "{out}");
        assert!(out.contains("Read-only file system"), "{out}");
    } else {
        assert!(out.contains("NOT-REACHED"), "{out}");
        println!("the guest did not reach the share's top level; the host side is checked below");
    }
    assert!(out.contains("CHOWN 1234:4321"), "chown still works:\n{out}");
    // With the writable layer in the guest, the container's root on the host is the
    // read-only image: what the guest writes stays in the guest.
    let in_guest = hull_tests::writable_layer() == "guest";
    if in_guest {
        assert!(
            out.contains("IMAGE-REFUSED"),
            "the image is read-only:\n{out}"
        );
        assert!(
            out.contains("MKNOD-MADE"),
            "mknod in the guest's own layer:\n{out}"
        );
        for f in ["owned", "hs-suid", "hs-blk", "image-write"] {
            assert!(!share.join("hs1").join(f).exists(), "{f} reached the host");
        }
    } else {
        assert!(
            out.contains("MKNOD-REFUSED"),
            "virtiofsd has no CAP_MKNOD:\n{out}"
        );
        let owned = std::fs::metadata(share.join("hs1/owned")).unwrap();
        assert_eq!((owned.uid(), owned.gid()), (1234, 4321));
    }

    // The next container of the pod, with a file and a directory volume, made
    // while the guest keeps planting.
    let outside_before = host_mounts();
    let file_mount = format!(
        "type=bind,src={},dst=/f,options=rbind:rw",
        vol_file.display()
    );
    let dir_mount = format!(
        "type=bind,src={},dst=/d,options=rbind:ro",
        vol_dir.display()
    );
    let opts = [&pod[..], &["--mount", &file_mount, "--mount", &dir_mount]].concat();
    ctrd.run_detached("hs2", &opts, &["sleep", "1000"]);
    let seen = ctrd.ctr_ok(&["task", "exec", "--exec-id", "r", "hs2", "cat", "/f"]);
    assert_eq!(
        seen, "file volume\n",
        "the volume made after virtiofsd started is served"
    );
    let _ = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "s",
        "hs1",
        "touch",
        "/tmp/stop",
    ]);
    assert_eq!(
        (fingerprint(&canary), fingerprint(&canary_dir.join("keep"))),
        before,
        "the host canaries are unchanged"
    );
    let mut names: Vec<_> = std::fs::read_dir(&canary_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["keep"], "nothing was created next to the canary");
    assert_eq!(
        host_mounts(),
        outside_before,
        "nothing was mounted outside the pod"
    );
    assert_eq!(std::fs::read_to_string(&vol_file).unwrap(), "file volume\n");
    for (point, ro) in [
        (share.join("hs1"), in_guest),
        (share.join("hs2"), in_guest),
        (share.join(".volumes/hs2/0"), false),
        (share.join(".volumes/hs2/1"), true),
    ] {
        let opts = mount_options(&point);
        assert!(
            opts.contains("nosuid") && opts.contains("nodev") && opts.starts_with("ro") == ro,
            "{}: {opts}",
            point.display()
        );
    }
    // The setuid file from the guest sits on a nosuid mount; the device node
    // cannot be opened through the host path.
    if !in_guest {
        let suid = std::fs::metadata(share.join("hs1/hs-suid")).unwrap();
        println!("hs-suid mode {:o} on a nosuid mount", suid.mode());
    }
    let err = std::fs::File::open(share.join(".volumes/hs2/1/blk")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "nodev: {err}");
    assert!(
        !share.join("hs1/hs-blk").exists(),
        "no device node was made"
    );

    ctrd.remove("hs2");
    ctrd.remove("hs1");
    assert_clean(ctrd, "the hostile share pod");
    assert_eq!(
        (fingerprint(&canary), fingerprint(&canary_dir.join("keep"))),
        before,
        "the host canaries are unchanged after the teardown"
    );
    let _ = std::fs::remove_dir_all(targets);
}
