//! Checks on paths the host hands us: everything it sends is hostile.
//!
//! A container rootfs must stay inside the agent's containers root, and a
//! mount destination must stay inside the rootfs, whatever `..` or symlinks
//! the host planted on the way.

use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution may follow before giving up (as Linux).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{0:?} is not an absolute path")]
    NotAbsolute(PathBuf),
    #[error("{0:?} contains a `..` component")]
    DotDot(PathBuf),
    #[error("{path:?} escapes {root:?} through a symlink")]
    Escapes { path: PathBuf, root: PathBuf },
    #[error("too many symlinks while resolving {0:?}")]
    TooManyLinks(PathBuf),
    #[error("cannot resolve {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Rejects relative paths and any `..` component, without touching the disk.
pub fn check_lexical(path: &Path) -> Result<(), PathError> {
    if !path.is_absolute() {
        return Err(PathError::NotAbsolute(path.into()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(PathError::DotDot(path.into()));
    }
    Ok(())
}

/// Resolves the container rootfs `rootfs` and checks that it stays inside `base`
/// once every symlink is followed. Returns the resolved path.
pub fn check_rootfs(base: &Path, rootfs: &Path) -> Result<PathBuf, PathError> {
    check_lexical(rootfs)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PathError::Io { path, source }
    };
    let base = base.canonicalize().map_err(io(base))?;
    let real = rootfs.canonicalize().map_err(io(rootfs))?;
    if !real.starts_with(&base) || real == base {
        return Err(PathError::Escapes {
            path: rootfs.into(),
            root: base,
        });
    }
    Ok(real)
}

/// Joins `dest` (an absolute path as the container sees it) onto `root`,
/// following symlinks as if `root` were `/`: absolute targets restart at
/// `root`, and a relative target that climbs above `root` is an error.
/// Components that do not exist yet are appended as they are.
pub fn secure_join(root: &Path, dest: &Path) -> Result<PathBuf, PathError> {
    check_lexical(dest)?;
    let mut pending: Vec<PathBuf> = dest
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            _ => None,
        })
        .rev()
        .collect();
    let mut resolved: Vec<PathBuf> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        // Only a symlink target can bring `..` here: never let it climb out.
        if part == Path::new("..") {
            if resolved.pop().is_none() {
                return Err(PathError::Escapes {
                    path: dest.into(),
                    root: root.into(),
                });
            }
            continue;
        }
        let candidate = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                resolved.push(part);
                continue;
            }
            Err(source) => {
                return Err(PathError::Io {
                    path: candidate,
                    source,
                })
            }
        };
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(PathError::TooManyLinks(dest.into()));
        }
        let target = std::fs::read_link(&candidate).map_err(|source| PathError::Io {
            path: candidate.clone(),
            source,
        })?;
        if target.is_absolute() {
            resolved.clear();
        }
        for c in target.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.into()),
                Component::ParentDir => pending.push("..".into()),
                _ => {}
            }
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hull-paths-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lexical_rejects_relative_and_dotdot() {
        assert!(matches!(
            check_lexical(Path::new("a/b")),
            Err(PathError::NotAbsolute(_))
        ));
        assert!(matches!(
            check_lexical(Path::new("/a/../b")),
            Err(PathError::DotDot(_))
        ));
        assert!(check_lexical(Path::new("/a/b")).is_ok());
    }

    #[test]
    fn secure_join_keeps_links_inside_root() {
        let root = tempdir("join");
        std::fs::create_dir_all(root.join("run")).unwrap();
        symlink("/run", root.join("abs")).unwrap();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        symlink("../run", root.join("sub/rel")).unwrap();
        symlink("../../../../etc", root.join("out")).unwrap();
        assert_eq!(
            secure_join(&root, Path::new("/abs/x")).unwrap(),
            root.join("run/x")
        );
        assert_eq!(
            secure_join(&root, Path::new("/sub/rel")).unwrap(),
            root.join("run")
        );
        assert_eq!(
            secure_join(&root, Path::new("/new/dir")).unwrap(),
            root.join("new/dir")
        );
        assert!(matches!(
            secure_join(&root, Path::new("/out/passwd")),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            secure_join(&root, Path::new("/../etc")),
            Err(PathError::DotDot(_))
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn secure_join_stops_link_loops() {
        let root = tempdir("loop");
        symlink("/b", root.join("a")).unwrap();
        symlink("/a", root.join("b")).unwrap();
        assert!(matches!(
            secure_join(&root, Path::new("/a")),
            Err(PathError::TooManyLinks(_))
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn rootfs_must_stay_under_base() {
        let base = tempdir("base");
        std::fs::create_dir_all(base.join("c1/rootfs")).unwrap();
        symlink("/etc", base.join("evil")).unwrap();
        assert!(check_rootfs(&base, &base.join("c1/rootfs")).is_ok());
        assert!(matches!(
            check_rootfs(&base, &base.join("evil")),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            check_rootfs(&base, &base.join("missing")),
            Err(PathError::Io { .. })
        ));
        std::fs::remove_dir_all(base).unwrap();
    }
}
