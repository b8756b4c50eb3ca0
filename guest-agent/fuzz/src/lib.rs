//! What both agent fuzz targets run on a spec or a process: every check and
//! translation `hull_agent::checks` names, with the promises the agent relies
//! on asserted (a seccomp program the kernel would load, cgroup files inside
//! the container's cgroup, mount targets inside the rootfs).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hull_agent::checks::{
    cgroup_limits, check_lexical, check_spec, compile_seccomp, secure_join, MountOpts,
};
use oci_spec::runtime::{LinuxResources, Process, Spec};

/// A container rootfs with symlinks that try to lead out of it: absolute,
/// climbing, looping, and through a directory.
fn rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("hull-fuzz-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("dir/sub")).expect("fuzz rootfs");
        for (link, target) in [
            ("abs", "/etc"),
            ("up", "../../../.."),
            ("loop", "loop"),
            ("dir/back", ".."),
            ("dir/sub/out", "../../../etc"),
            ("rel", "dir/back/dir/sub"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link)).expect("fuzz rootfs link");
        }
        root
    })
}

/// The kernel's checks on a classic BPF program (`bpf_check_classic`) for the
/// instructions the agent emits: a length it accepts, every jump inside the
/// program, a return at the end.
fn check_bpf(prog: &[libc::sock_filter]) {
    assert!(
        !prog.is_empty() && prog.len() <= 4096,
        "{} instructions",
        prog.len()
    );
    for (i, insn) in prog.iter().enumerate() {
        let class = u32::from(insn.code) & 0x07;
        if class == libc::BPF_JMP {
            let last = i + 1 + usize::from(insn.jt.max(insn.jf));
            assert!(
                last < prog.len(),
                "jump from {i} to {last} of {}",
                prog.len()
            );
        }
        if class == libc::BPF_LD {
            assert!(insn.k % 4 == 0 && insn.k < 64, "load at offset {}", insn.k);
        }
    }
    let end = prog[prog.len() - 1];
    assert_eq!(
        u32::from(end.code) & 0x07,
        libc::BPF_RET,
        "no return at the end"
    );
}

/// Joins a path the spec names onto the rootfs, as mounting does.
fn join(path: &Path) {
    if check_lexical(path).is_err() {
        return;
    }
    if let Ok(joined) = secure_join(rootfs(), path) {
        assert!(
            joined.starts_with(rootfs()),
            "{path:?} escapes to {joined:?}"
        );
    }
}

/// A process: what the agent reads from it before the setup helper runs.
pub fn process(process: &Process) {
    if let Some(cwd) = process.cwd().to_str() {
        let _ = check_lexical(Path::new(cwd));
    }
}

/// An OCI spec as CreateContainer carries it (JSON).
pub fn spec_json(json: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<Spec>(json) else {
        return;
    };
    let _ = check_spec(&spec);
    if let Some(p) = spec.process() {
        process(p);
    }
    for m in spec.mounts().iter().flatten() {
        let _ = MountOpts::parse(m.options().as_deref().unwrap_or_default());
        join(m.destination());
    }
    let Some(linux) = spec.linux() else { return };
    for p in linux
        .masked_paths()
        .iter()
        .chain(linux.readonly_paths())
        .flatten()
    {
        join(Path::new(p));
    }
    if let Some(res) = linux.resources() {
        resources(res);
    }
    if let Some(profile) = linux.seccomp() {
        if let Ok(prog) = compile_seccomp(profile) {
            check_bpf(&prog);
        }
    }
}

/// Resource limits as create and update write them: only files of a
/// controller inside the container's cgroup, never a path or a core
/// `cgroup.*` file.
fn resources(res: &LinuxResources) {
    if let Ok(files) = cgroup_limits(res) {
        for (file, _) in files {
            assert!(
                !file.contains('/')
                    && !file.starts_with('.')
                    && file.contains('.')
                    && !file.starts_with("cgroup."),
                "cgroup file {file:?}"
            );
        }
    }
}

/// OCI `LinuxResources` as UpdateContainer carries them (JSON).
pub fn resources_json(json: &[u8]) {
    if let Ok(res) = serde_json::from_slice::<LinuxResources>(json) {
        resources(&res);
    }
}

/// An OCI process as ExecProcess carries it (JSON).
pub fn process_json(json: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<Process>(json) {
        process(&p);
    }
}
