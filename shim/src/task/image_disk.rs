//! Container images as read-only ext4 disks. An image's committed layers never change, so
//! their merged files are copied once into an ext4 file in the image cache, named by the
//! layers' identity, and every pod that runs the image gets that file on a virtio-blk slot:
//! the guest's page cache then keeps the image's files, where virtio-fs sends every open,
//! read and close to virtiofsd (see the README, "The container root"). The cache is bounded:
//! after making a disk, the least recently used ones go until the rest fit.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::rootfs::{image_layers, MountSpec};

/// Block size of the image file system.
const BLOCK: u64 = 4096;
/// Room for the file system's own metadata beyond the files' blocks.
const SLACK_BYTES: u64 = 8 << 20;
/// Bytes per inode in the inode tables (mkfs.ext4's default inode size).
const INODE_BYTES: u64 = 256;
/// A disk used more recently is never pruned: a pod may be between [`ensure`] and handing
/// the file to its VM.
const IN_USE: Duration = Duration::from_secs(10 * 60);
/// A temporary file left unwritten this long is a crashed shim's, removed by [`prune`]
/// (mkfs.ext4 and debugfs write it all along while a disk is being made).
const ABANDONED: Duration = Duration::from_secs(60 * 60);

/// The image cache: where the disks are kept, and the bytes they may take (0: no bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCache {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// Errors of making an image disk.
#[derive(Debug, thiserror::Error)]
pub enum ImageDiskError {
    #[error("image cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read the image at {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {tool} (install e2fsprogs)")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed making {path}: {stderr}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        stderr: String,
    },
}

/// The image's cache name: a digest of its layers' paths with each layer directory's device,
/// inode and change time, so a layer made again at the same path (containerd's state wiped,
/// its snapshot ids counting from 1 again) gets a new name. `None` when the root is not made
/// of committed layers alone (a tmpfs, or a root prepared without mounts): such a root may
/// change and is read through the share.
pub fn key(mounts: &[MountSpec]) -> Option<String> {
    if mounts.is_empty() {
        return None;
    }
    let mut digest = Sha256::new();
    for m in image_layers(mounts) {
        let dirs: Vec<String> = match m.kind.as_str() {
            "bind" | "rbind" => vec![m.source.clone()],
            "overlay" => m
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))?
                .split(':')
                .map(String::from)
                .collect(),
            _ => return None,
        };
        digest.update(format!("{}\0{}\0", m.kind, m.options.join(",")));
        for dir in dirs {
            let meta = std::fs::metadata(&dir).ok()?;
            digest.update(format!(
                "{dir}\0{}:{}:{}.{}\0",
                meta.dev(),
                meta.ino(),
                meta.ctime(),
                meta.ctime_nsec()
            ));
        }
    }
    Some(
        digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// What the image holds: the bytes its files take in whole blocks, and its inodes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    bytes: u64,
    inodes: u64,
}

impl Usage {
    /// The file system size that holds it: the blocks plus a tenth, the inode tables, slack.
    fn fs_bytes(self) -> u64 {
        let raw = self.bytes + self.bytes / 10 + self.inodes * INODE_BYTES + SLACK_BYTES;
        raw.div_ceil(1 << 20) << 20
    }
}

/// Walks `root` without following symlinks or leaving its file system.
fn usage(root: &Path) -> Result<Usage, ImageDiskError> {
    let walk = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageDiskError::Walk { path, source }
    };
    let dev = std::fs::symlink_metadata(root).map_err(walk(root))?.dev();
    let mut usage = Usage::default();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        usage.inodes += 1;
        let mut dir_bytes = 0;
        for entry in std::fs::read_dir(&dir).map_err(walk(&dir))? {
            let entry = entry.map_err(walk(&dir))?;
            let meta = entry.metadata().map_err(walk(&entry.path()))?;
            dir_bytes += 16 + entry.file_name().len() as u64;
            if meta.is_dir() && meta.dev() == dev {
                todo.push(entry.path());
                continue;
            }
            usage.inodes += 1;
            if meta.is_file() || (meta.is_symlink() && meta.len() >= 60) {
                usage.bytes += meta.len().div_ceil(BLOCK) * BLOCK;
            }
        }
        usage.bytes += dir_bytes.div_ceil(BLOCK).max(1) * BLOCK;
    }
    Ok(usage)
}

/// The image disk of `key` in `cache`, made from the image mounted at `root` when the cache
/// does not hold it yet. Made under a temporary name and renamed, so a reader never sees a
/// half-made disk and two pods making the same one at once both succeed. A hit marks the
/// disk used (its modification time); a new disk makes room for itself ([`prune`]).
pub fn ensure(cache: &ImageCache, key: &str, root: &Path) -> Result<PathBuf, ImageDiskError> {
    let dir = cache.dir.as_path();
    let path = dir.join(format!("{key}.ext4"));
    if path.is_file() {
        touch(&path);
        return Ok(path);
    }
    let cache_err = |source| ImageDiskError::Cache {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(cache_err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(cache_err)?;
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    let made = make(&tmp, root).and_then(|()| {
        std::fs::rename(&tmp, &path).map_err(|source| ImageDiskError::Cache {
            path: path.clone(),
            source,
        })
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made?;
    prune(dir, cache.max_bytes, &path, SystemTime::now());
    Ok(path)
}

/// Marks a cached disk used now, for [`prune`]; a failure only makes it an earlier candidate.
fn touch(path: &Path) {
    let touched = std::fs::File::open(path).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        tracing::warn!(disk = %path.display(), error = %e,
            "image disk not marked used; the cache may prune it sooner");
    }
}

/// Bounds the cache at `dir` to `max_bytes` (0: no bound): removes the least recently used
/// disks (oldest modification time) while the disks take more, but never `keep` nor one used
/// within [`IN_USE`]. Only regular files named `<64 hex digits>.ext4` are disks, counted by
/// the blocks they hold (`st_blocks`): mkfs.ext4 leaves the file system's free space as
/// holes, so a disk's length overstates what it takes from the host's disk. Symlinks,
/// directories and other names are left alone, but for temporary files unwritten for
/// [`ABANDONED`]. A VM holding a removed disk open keeps reading it; its blocks are freed
/// when the VM ends. Errors are logged, never returned: a full cache must not fail a pod.
fn prune(dir: &Path, max_bytes: u64, keep: &Path, now: SystemTime) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(cache = %dir.display(), error = %e, "image cache not pruned");
            return;
        }
    };
    let age = |modified: SystemTime| now.duration_since(modified).unwrap_or_default();
    let mut disks = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            _ => continue,
        };
        let name = entry.file_name();
        let (Ok(modified), Some(name)) = (meta.modified(), name.to_str()) else {
            continue;
        };
        let bytes = meta.blocks() * 512;
        if is_disk(name) {
            disks.push((modified, bytes, path));
        } else if is_temporary(name) && age(modified) > ABANDONED {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), bytes,
                    "abandoned temporary image disk removed"),
                Err(e) => tracing::warn!(file = %path.display(), error = %e,
                    "abandoned temporary image disk not removed"),
            }
        }
    }
    let mut total: u64 = disks.iter().map(|(_, bytes, _)| bytes).sum();
    if max_bytes == 0 || total <= max_bytes {
        return;
    }
    disks.sort();
    for (modified, bytes, path) in disks {
        if total <= max_bytes {
            return;
        }
        if path == keep || age(modified) < IN_USE {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= bytes;
                tracing::info!(disk = %path.display(), bytes, "image disk pruned from the cache");
            }
            // Another shim pruned it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= bytes,
            Err(e) => tracing::warn!(disk = %path.display(), error = %e,
                "image disk not pruned"),
        }
    }
    if total > max_bytes {
        tracing::warn!(cache = %dir.display(), bytes = total, max_bytes,
            "image cache still above its bound: the disks left are in use");
    }
}

/// Whether `name` is a disk's: the 64 hex digits of a [`key`] and `.ext4`.
fn is_disk(name: &str) -> bool {
    name.strip_suffix(".ext4").is_some_and(is_key)
}

/// Whether `name` is one of the files [`ensure`] and [`make`] write while making a disk:
/// `.<key>.<pid>.tmp` and its debugfs script `.<key>.<pid>.debugfs`.
fn is_temporary(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some(rest) = rest.strip_suffix(".tmp").or(rest.strip_suffix(".debugfs")) else {
        return false;
    };
    rest.split_once('.').is_some_and(|(key, pid)| {
        is_key(key) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Whether `s` is spelled as a [`key`]: 64 lowercase hex digits.
fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes an ext4 file at `out` holding exactly the files under `root`: no journal (it is
/// never written), no `lost+found`, the root directory's owner and mode the image's.
fn make(out: &Path, root: &Path) -> Result<(), ImageDiskError> {
    let usage = usage(root)?;
    let top = std::fs::symlink_metadata(root).map_err(|source| ImageDiskError::Walk {
        path: root.to_path_buf(),
        source,
    })?;
    let mut size = usage.fs_bytes();
    // The estimate is generous; one retry at twice the size covers what it misses.
    let mut result = Ok(());
    for _ in 0..2 {
        let _ = std::fs::remove_file(out);
        result = run(
            "mkfs.ext4",
            out,
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
                .args(["-O", "^has_journal,^resize_inode", "-L", "hull-image"])
                .arg("-N")
                .arg((usage.inodes + 64).to_string())
                .arg("-E")
                .arg(format!("root_owner={}:{}", top.uid(), top.gid()))
                .arg("-d")
                .arg(root)
                .arg(out)
                .arg(format!("{}k", size >> 10)),
        );
        if result.is_ok() {
            break;
        }
        size *= 2;
    }
    result?;
    let mut script = format!("sif <2> mode 0{:o}\n", 0o040000 | (top.mode() & 0o7777));
    if std::fs::symlink_metadata(root.join("lost+found")).is_err() {
        script.push_str("rmdir lost+found\n");
    }
    let file = out.with_extension("debugfs");
    std::fs::write(&file, script).map_err(|source| ImageDiskError::Walk {
        path: file.clone(),
        source,
    })?;
    let fixed = run(
        "debugfs",
        out,
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&file)
            .arg(out),
    );
    let _ = std::fs::remove_file(&file);
    fixed
}

/// Runs a tool; debugfs reports a failed command only on stderr, so any stderr line that is
/// not its banner or an echo of a command counts as a failure.
fn run(tool: &'static str, out: &Path, cmd: &mut Command) -> Result<(), ImageDiskError> {
    let output = cmd
        .output()
        .map_err(|source| ImageDiskError::Spawn { tool, source })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(tool == "debugfs" && l.starts_with("debugfs ")))
        .collect();
    if output.status.success() && (tool != "debugfs" || complaints.is_empty()) {
        return Ok(());
    }
    Err(ImageDiskError::Tool {
        tool,
        path: out.to_path_buf(),
        stderr: complaints.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    fn overlay(lowers: &str) -> MountSpec {
        MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "workdir=/w".into(),
                "upperdir=/u".into(),
                format!("lowerdir={lowers}"),
            ],
        }
    }

    #[test]
    fn the_key_names_the_layers_and_changes_with_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let both = format!("{}:{}", a.display(), b.display());
        let k = key(&[overlay(&both)]).unwrap();
        assert_eq!(k.len(), 64);
        assert_eq!(key(&[overlay(&both)]), Some(k.clone()), "stable");
        // The writable part does not count: the same image with another upper layer.
        let mut other = overlay(&both);
        other.options[1] = "upperdir=/elsewhere".into();
        assert_eq!(key(&[other]), Some(k.clone()));
        assert_ne!(key(&[overlay(&a.display().to_string())]), Some(k.clone()));
        // A layer made again at the same path is another image.
        std::fs::remove_dir(&b).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("new"), "x").unwrap();
        assert_ne!(key(&[overlay(&both)]), Some(k));
        // Not committed layers: no key.
        assert_eq!(key(&[]), None);
        let tmpfs = MountSpec {
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec![],
        };
        assert_eq!(key(&[tmpfs]), None);
        assert_eq!(key(&[overlay("/no/such/layer")]), None);
    }

    #[test]
    fn the_size_covers_the_files_with_room() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/big"), vec![0u8; 100_000]).unwrap();
        std::fs::write(tmp.path().join("small"), "x").unwrap();
        std::os::unix::fs::symlink("small", tmp.path().join("l")).unwrap();
        let u = usage(tmp.path()).unwrap();
        assert_eq!(u.inodes, 5, "two dirs, two files, one symlink");
        // 100,000 bytes take 25 blocks, "x" one, each directory one.
        assert_eq!(u.bytes, (25 + 1 + 2) * BLOCK);
        assert!(u.fs_bytes() >= u.bytes + SLACK_BYTES);
        assert_eq!(u.fs_bytes() % (1 << 20), 0);
    }

    #[test]
    fn the_disk_holds_exactly_the_image() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipped: mkfs.ext4 not installed (e2fsprogs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("etc/passwd", root.join("link")).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o751)).unwrap();
        let cache = ImageCache {
            dir: tmp.path().join("cache"),
            max_bytes: 0,
        };
        let disk = ensure(&cache, "k1", &root).unwrap();
        assert_eq!(disk, cache.dir.join("k1.ext4"));
        let mode = std::fs::metadata(&cache.dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "the cache is private");
        let meta = std::fs::metadata(&disk).unwrap();
        assert!(meta.blocks() * 512 < meta.len(), "the free space is holes");
        let leftovers: Vec<_> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("k1.ext4")]);
        let ls = Command::new("debugfs")
            .args(["-R", "ls -l /"])
            .arg(&disk)
            .output()
            .unwrap();
        let ls = String::from_utf8_lossy(&ls.stdout);
        assert!(ls.contains(" etc") && ls.contains(" link"), "{ls}");
        assert!(!ls.contains("lost+found"), "only the image's files: {ls}");
        assert!(
            ls.contains("40751"),
            "the root keeps the image's mode: {ls}"
        );
        let cat = Command::new("debugfs")
            .args(["-R", "cat /etc/passwd"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&cat.stdout),
            "root:x:0:0::/:/bin/sh\n"
        );
        // Cached: the second call makes nothing.
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(ensure(&cache, "k1", &root).unwrap(), disk);
        // A root that cannot be read fails cleanly and leaves nothing.
        let err = ensure(&cache, "k2", &tmp.path().join("gone")).unwrap_err();
        assert!(matches!(err, ImageDiskError::Walk { .. }), "{err}");
        assert!(!cache.dir.join("k2.ext4").exists());
    }

    const MINUTE: Duration = Duration::from_secs(60);

    /// The name of cached disk `n`.
    fn disk(n: u8) -> String {
        format!("{n:064x}.ext4")
    }

    /// Writes a file of `kib` KiB in `dir`, last modified `ago` before `now`; returns its path.
    fn file(dir: &Path, name: &str, kib: usize, ago: Duration, now: SystemTime) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![1u8; kib << 10]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(now - ago).unwrap();
        path
    }

    /// The blocks the files hold, as `prune` counts them.
    fn held(paths: &[&PathBuf]) -> u64 {
        paths
            .iter()
            .map(|p| std::fs::symlink_metadata(p).unwrap().blocks() * 512)
            .sum()
    }

    /// A cache of 64 KiB disks, `disk(1)` on, last used the given minutes before now.
    fn cache_of<const N: usize>(minutes: [u32; N]) -> (TempDir, SystemTime, [PathBuf; N]) {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let disks = std::array::from_fn(|i| {
            file(tmp.path(), &disk(i as u8 + 1), 64, minutes[i] * MINUTE, now)
        });
        (tmp, now, disks)
    }

    #[test]
    fn pruning_removes_the_least_recently_used_until_the_rest_fit() {
        let (tmp, now, [a, b, c, new]) = cache_of([180, 120, 60, 1]);
        // One byte short of holding b: a goes, then b, and c stays.
        prune(tmp.path(), held(&[&b, &c, &new]) - 1, &new, now);
        assert!(!a.exists() && !b.exists());
        assert!(c.exists() && new.exists());
        // No bound: nothing goes.
        prune(tmp.path(), 0, &new, now);
        assert!(c.exists() && new.exists());
    }

    #[test]
    fn pruning_keeps_the_new_disk_and_the_recently_used() {
        let (tmp, now, [old, recent, new]) = cache_of([11, 9, 20]);
        prune(tmp.path(), 1, &new, now);
        assert!(!old.exists());
        assert!(recent.exists() && new.exists(), "kept above the bound");
    }

    #[test]
    fn pruning_leaves_symlinks_directories_and_other_names_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let (cache, outside) = (tmp.path().join("cache"), tmp.path().join("outside"));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(cache.join(disk(9))).unwrap();
        let now = SystemTime::now();
        let big = file(&outside, "big", 1024, 300 * MINUTE, now);
        let link = cache.join(disk(8));
        std::os::unix::fs::symlink(&big, &link).unwrap();
        let others = [
            file(&cache, "notes.ext4", 64, 300 * MINUTE, now),
            file(&cache, &format!("{}.bak", disk(7)), 64, 300 * MINUTE, now),
            file(
                &cache,
                &format!("{:064X}.ext4", 0xab),
                64,
                300 * MINUTE,
                now,
            ),
        ];
        let old = file(&cache, &disk(1), 64, 60 * MINUTE, now);
        let new = file(&cache, &disk(2), 64, MINUTE, now);
        // The disks fit: what is not one does not count.
        prune(&cache, held(&[&old, &new]), &new, now);
        assert!(link.symlink_metadata().is_ok() && big.exists());
        assert!(cache.join(disk(9)).is_dir());
        assert!(others.iter().all(|p| p.exists()));
        assert!(old.exists() && new.exists());
        // Over the bound, only the disk goes.
        prune(&cache, 1, &new, now);
        assert!(!old.exists());
        assert!(link.symlink_metadata().is_ok() && big.exists());
        assert!(others.iter().all(|p| p.exists()));
    }

    #[test]
    fn pruning_removes_abandoned_temporary_files() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let key = format!("{:064x}", 1);
        let stale = [
            file(tmp.path(), &format!(".{key}.41.tmp"), 4, 61 * MINUTE, now),
            file(
                tmp.path(),
                &format!(".{key}.41.debugfs"),
                4,
                61 * MINUTE,
                now,
            ),
        ];
        let kept = [
            file(tmp.path(), &format!(".{key}.42.tmp"), 4, 59 * MINUTE, now),
            file(tmp.path(), ".other.41.tmp", 4, 61 * MINUTE, now),
            file(tmp.path(), &format!(".{key}..tmp"), 4, 61 * MINUTE, now),
        ];
        prune(tmp.path(), 0, &tmp.path().join(disk(1)), now);
        assert!(stale.iter().all(|p| !p.exists()));
        assert!(kept.iter().all(|p| p.exists()));
    }

    #[test]
    fn a_cache_hit_marks_the_disk_used() {
        let tmp = tempfile::tempdir().unwrap();
        let key = format!("{:064x}", 1);
        let old = SystemTime::now() - 120 * MINUTE;
        let path = file(tmp.path(), &format!("{key}.ext4"), 4, Duration::ZERO, old);
        let cache = ImageCache {
            dir: tmp.path().to_path_buf(),
            max_bytes: 1,
        };
        let hit = ensure(&cache, &key, &tmp.path().join("no-image")).unwrap();
        assert_eq!(hit, path);
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(modified > old + 110 * MINUTE, "{modified:?}");
    }
}
