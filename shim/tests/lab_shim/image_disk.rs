//! Container images on read-only ext4 disks (issue 13): the container's root is the image
//! disk (found by its slot's serial) with the writable layer in the guest over it; the pod's
//! second container of the same image shares the slot; the disk is made once per image; and a
//! privileged container, root of its guest, cannot change the image file every pod shares.
//! The middle setting too (`image_layers = "share"`): the image's layers read-only over
//! virtio-fs, under the same writable layer in the guest.

use super::*;

/// The image disks of the cache, as (name, bytes).
fn cached_disks() -> Vec<(String, Vec<u8>)> {
    let mut disks: Vec<_> = std::fs::read_dir(Path::new(BASE).join("images"))
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ext4"))
        .map(|n| {
            let bytes = std::fs::read(Path::new(BASE).join("images").join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    disks.sort();
    disks
}

/// The `lowerdir` of the container's root overlay, from its mountinfo.
fn root_lower(ctrd: &Containerd, id: &str, exec_id: &str) -> String {
    let info = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        exec_id,
        id,
        "cat",
        "/proc/self/mountinfo",
    ]);
    let root = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no root mount in {info}"));
    root.split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("the root is not an overlay: {root}"))
        .to_string()
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_the_image_is_a_read_only_disk_the_guest_cannot_change() {
    if hull_tests::writable_layer() != "guest" {
        println!("skipped: image disks need writable_layer = \"guest\" (HULL_TEST_WRITABLE_LAYER)");
        return;
    }
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["imgd-2", "imgd"]);
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=imgd"];
    ctrd.run_detached(
        "imgd",
        &[&pod[..], &["--privileged"]].concat(),
        &["sleep", "1000"],
    );
    let lower = root_lower(ctrd, "imgd", "m1");
    assert!(
        lower.starts_with("/run/hull/images/hull-image-"),
        "the root's image is a disk: lowerdir={lower}"
    );
    let disks = cached_disks();
    assert_eq!(
        disks.len(),
        1,
        "one disk for the image: {:?}",
        disks.iter().map(|d| &d.0).collect::<Vec<_>>()
    );
    // The pod's second container of the same image reads the same disk.
    ctrd.run_detached(
        "imgd-2",
        &[
            &pod[..],
            &["--annotation", "io.kubernetes.cri.container-type=container"],
        ]
        .concat(),
        &["sleep", "1000"],
    );
    assert_eq!(
        root_lower(ctrd, "imgd-2", "m2"),
        lower,
        "one slot per image"
    );
    // Root of the guest, the privileged container tries to write the disk, with the block
    // layer's read-only flag lifted first; the container's own root stays writable.
    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "w",
        "imgd",
        "sh",
        "-c",
        "echo layer > /etc/written; cat /etc/written; \
         for s in /sys/block/vd*; do n=${s##*/}; mm=$(cat $s/dev); \
         mknod /tmp/$n b ${mm%:*} ${mm#*:} && echo TRY $n; blockdev --setrw /tmp/$n; \
         dd if=/dev/zero of=/tmp/$n bs=4096 count=16 conv=fsync 2>&1 && echo WROTE $n; done; \
         echo 3 > /proc/sys/vm/drop_caches; cat /etc/passwd >/dev/null && echo READ-OK",
    ]);
    let said = text(&out.stdout);
    assert!(said.starts_with("layer\n"), "the root takes writes: {said}");
    assert!(
        !said.contains("WROTE"),
        "a guest write reached a disk: {said}"
    );
    assert!(said.contains("READ-OK"), "the image still reads: {said}");
    assert_eq!(
        cached_disks(),
        disks,
        "the image disk on the host is unchanged"
    );
    ctrd.remove("imgd-2");
    ctrd.remove("imgd");
    assert_clean(ctrd, "the image-disk pod");
    assert_eq!(
        cached_disks(),
        disks,
        "the disk stays cached for the next pod"
    );
}

/// Files named `name` anywhere under this binary's directory on the host (containerd's
/// snapshots, the pods' shares).
fn host_files_named(name: &str) -> Vec<String> {
    let out = Command::new("find")
        .args([BASE, "-name", name])
        .output()
        .unwrap();
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_the_image_through_the_share_under_a_layer_in_the_guest() {
    if hull_tests::writable_layer() != "guest" {
        println!("skipped: image_layers = \"share\" needs writable_layer = \"guest\" (HULL_TEST_WRITABLE_LAYER)");
        return;
    }
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["imgs-ro", "imgs"]);
    let pod = [
        "--annotation",
        "io.kubernetes.cri.sandbox-id=imgs",
        "--annotation",
        "io.hull.image_layers=share",
    ];
    ctrd.run_detached("imgs", &pod, &["sleep", "1000"]);
    let lower = root_lower(ctrd, "imgs", "m1");
    assert!(
        lower.starts_with(hull_protocol::vm::GUEST_SHARE_DIR) && !lower.contains("hull-image-"),
        "the root's image comes through the share: lowerdir={lower}"
    );
    println!("the root's image: lowerdir={lower}");
    let marker = "hull-middle-setting-marker";
    let trues = host_files_named("true");
    assert!(!trues.is_empty(), "the image's /bin/true is on the host");
    let said = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "w",
        "imgs",
        "sh",
        "-c",
        &format!(
            "echo layer > /{marker} && cat /{marker} && rm /bin/true && \
             ls /bin/true 2>/dev/null || echo GONE; grep -c ^root: /etc/passwd"
        ),
    ]);
    assert_eq!(
        said, "layer\nGONE\n1\n",
        "the root takes writes and deletes over the image"
    );
    assert_eq!(
        host_files_named(marker),
        Vec::<String>::new(),
        "what the container wrote stays in the guest"
    );
    assert_eq!(
        host_files_named("true"),
        trues,
        "the image's /bin/true is still on the host"
    );
    // The pod's second container, read-only: its root refuses writes.
    ctrd.run_detached(
        "imgs-ro",
        &[
            &pod[..],
            &[
                "--annotation",
                "io.kubernetes.cri.container-type=container",
                "--read-only",
            ],
        ]
        .concat(),
        &["sleep", "1000"],
    );
    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "w2",
        "imgs-ro",
        "sh",
        "-c",
        "touch /x 2>&1; ls /bin/true",
    ]);
    let said = text(&out.stdout);
    assert!(
        said.contains("Read-only file system") && said.contains("/bin/true"),
        "--read-only holds, the image reads: {said}"
    );
    ctrd.remove("imgs-ro");
    ctrd.remove("imgs");
    assert_clean(ctrd, "the pod with its image through the share");
}
