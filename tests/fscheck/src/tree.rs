//! Directory listings stay exact while entries are removed (the `rm -rf`
//! failure of issue 14) and in a directory of many entries.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::sys;

/// Removes `path` as `rm -rf` does: unlinks each entry while the directory is
/// being read, then removes the directory, which must then be empty. Returns
/// how many entries it removed (the directory itself not counted).
pub fn remove_tree(path: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("list {}", path.display()))? {
        let entry = entry.with_context(|| format!("read {}", path.display()))?;
        let child = entry.path();
        if entry.file_type()?.is_dir() {
            removed += remove_tree(&child)? + 1;
        } else {
            std::fs::remove_file(&child).with_context(|| format!("unlink {}", child.display()))?;
            removed += 1;
        }
    }
    if let Err(e) = std::fs::remove_dir(path) {
        let left: Vec<String> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let shown = &left[..left.len().min(5)];
        anyhow::bail!(
            "rmdir {} after one pass that removed {removed} entries: {e}; {} entries left, e.g. {shown:?}",
            path.display(),
            left.len()
        );
    }
    Ok(removed)
}

/// One listing of `dir`; errors if an entry comes twice.
fn list_once(dir: &Path) -> io::Result<Vec<String>> {
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !seen.insert(name.clone()) {
            return Err(io::Error::other(format!(
                "{name} listed twice in one pass of {}",
                dir.display()
            )));
        }
        names.push(name);
    }
    Ok(names)
}

/// A tree of `sizes.files` files in 10 directories, removed in one pass while
/// another thread keeps listing it.
pub fn delete_while_listing(dir: &Path, sizes: crate::Sizes) -> Result<String> {
    let tree = dir.join("tree");
    const DIRS: usize = 10;
    for d in 0..DIRS {
        std::fs::create_dir_all(tree.join(format!("d{d}")))?;
    }
    for i in 0..sizes.files {
        let f = tree.join(format!("d{}/file-with-a-longish-name-{i:06}", i % DIRS));
        sys::mknod_file(&f).with_context(|| format!("create {}", f.display()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let lister = {
        let (stop, tree) = (stop.clone(), tree.clone());
        std::thread::spawn(move || -> Result<usize> {
            let mut passes = 0;
            while !stop.load(Ordering::Relaxed) {
                for d in 0..DIRS {
                    match list_once(&tree.join(format!("d{d}"))) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).context("listing while deleting"),
                    }
                }
                passes += 1;
            }
            Ok(passes)
        })
    };
    let removed = remove_tree(&tree);
    stop.store(true, Ordering::Relaxed);
    let passes = lister
        .join()
        .map_err(|_| anyhow::anyhow!("the lister thread panicked"))??;
    let removed = removed?;
    ensure!(
        removed == sizes.files + DIRS,
        "removed {removed} entries of {}",
        sizes.files + DIRS
    );
    ensure!(!tree.exists(), "{} still exists", tree.display());
    Ok(format!(
        "{} files removed in one pass during {passes} concurrent listings",
        sizes.files
    ))
}

/// One directory of `sizes.entries` entries: each listed exactly once, then
/// all removed in one pass.
pub fn big_dir(dir: &Path, sizes: crate::Sizes) -> Result<String> {
    let big = dir.join("big");
    std::fs::create_dir(&big)?;
    let name = |i: usize| format!("entry-{i:07}");
    let t = Instant::now();
    for i in 0..sizes.entries {
        let f = big.join(name(i));
        sys::mknod_file(&f).with_context(|| format!("create {}", f.display()))?;
    }
    let create = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let names = list_once(&big)?;
    let list = t.elapsed().as_secs_f64();
    ensure!(
        names.len() == sizes.entries,
        "listed {} of {} entries",
        names.len(),
        sizes.entries
    );
    let names: HashSet<String> = names.into_iter().collect();
    if let Some(missing) = (0..sizes.entries).map(name).find(|n| !names.contains(n)) {
        anyhow::bail!("{missing} is missing from the listing");
    }
    for i in [0, sizes.entries / 2, sizes.entries.saturating_sub(1)] {
        std::fs::symlink_metadata(big.join(name(i)))
            .with_context(|| format!("stat {}", name(i)))?;
    }
    let t = Instant::now();
    let removed = remove_tree(&big)?;
    ensure!(
        removed == sizes.entries,
        "removed {removed} of {} entries",
        sizes.entries
    );
    Ok(format!(
        "{} entries: create {create:.1} s, list {list:.1} s, delete {:.1} s",
        sizes.entries,
        t.elapsed().as_secs_f64()
    ))
}
