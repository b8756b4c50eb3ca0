//! Attributes: user extended attributes, and mtime/ctime that follow writes,
//! metadata changes, explicit times and directory changes.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::sys;

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

pub fn xattr(dir: &Path, _: crate::Sizes) -> Result<String> {
    let f = dir.join("f");
    fs::write(&f, "data")?;
    for target in [f.as_path(), dir] {
        let name = "user.hull.check";
        sys::setxattr(target, name, b"value-1", 0)
            .with_context(|| format!("setxattr {name} on {}", target.display()))?;
        ensure!(
            sys::getxattr(target, name)? == b"value-1",
            "getxattr returns another value"
        );
        ensure!(
            sys::getxattr_size(target, name)? == 7,
            "getxattr with an empty buffer reports another size"
        );
        ensure!(
            errno(sys::setxattr(target, name, b"x", libc::XATTR_CREATE)) == Some(libc::EEXIST),
            "XATTR_CREATE over an existing attribute did not fail with EEXIST"
        );
        ensure!(
            errno(sys::setxattr(
                target,
                "user.hull.none",
                b"x",
                libc::XATTR_REPLACE
            )) == Some(libc::ENODATA),
            "XATTR_REPLACE of a missing attribute did not fail with ENODATA"
        );
        sys::setxattr(target, name, &[7u8; 2000], libc::XATTR_REPLACE).context("XATTR_REPLACE")?;
        ensure!(
            sys::getxattr(target, name)? == [7u8; 2000],
            "the replaced 2000-byte value differs"
        );
        ensure!(
            sys::listxattr(target)?.iter().any(|n| n == name),
            "listxattr does not name {name}"
        );
        sys::removexattr(target, name).context("removexattr")?;
        ensure!(
            errno(sys::getxattr(target, name)) == Some(libc::ENODATA),
            "a removed attribute is still there"
        );
        ensure!(
            !sys::listxattr(target)?.iter().any(|n| n == name),
            "listxattr still names a removed attribute"
        );
    }
    Ok("user.* on a file and a directory: set, get, CREATE, REPLACE, list, remove".into())
}

fn mtime(p: &Path) -> Result<(i64, i64)> {
    let m = fs::symlink_metadata(p)?;
    Ok((m.mtime(), m.mtime_nsec()))
}

fn ctime(p: &Path) -> Result<(i64, i64)> {
    let m = fs::symlink_metadata(p)?;
    Ok((m.ctime(), m.ctime_nsec()))
}

/// Longer than any timestamp granularity a kernel uses (a jiffy, or 1 s for cached attributes is not allowed).
fn nap() {
    std::thread::sleep(Duration::from_millis(30));
}

pub fn times(dir: &Path, _: crate::Sizes) -> Result<String> {
    let f = dir.join("f");
    fs::write(&f, "v1")?;
    let (m0, c0) = (mtime(&f)?, ctime(&f)?);
    nap();
    OpenOptions::new().append(true).open(&f)?.write_all(b"+")?;
    let (m1, c1) = (mtime(&f)?, ctime(&f)?);
    ensure!(m1 > m0, "a write did not advance mtime ({m0:?} -> {m1:?})");
    ensure!(
        c1 > c0 && c1 >= m1,
        "a write did not advance ctime ({c0:?} -> {c1:?})"
    );
    nap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600))?;
    ensure!(mtime(&f)? == m1, "chmod changed mtime");
    let c2 = ctime(&f)?;
    ensure!(c2 > c1, "chmod did not advance ctime ({c1:?} -> {c2:?})");
    nap();
    let mut s = String::new();
    fs::File::open(&f)?.read_to_string(&mut s)?;
    ensure!(
        mtime(&f)? == m1 && ctime(&f)? == c2,
        "a read changed mtime or ctime"
    );
    nap();
    sys::utimens(&f, (1_000_000_000, 5), (1_234_567_890, 123_456_789)).context("utimensat")?;
    ensure!(
        mtime(&f)? == (1_234_567_890, 123_456_789),
        "utimensat set mtime {:?}",
        mtime(&f)?
    );
    let c3 = ctime(&f)?;
    ensure!(
        c3 > c2,
        "utimensat did not advance ctime ({c2:?} -> {c3:?})"
    );
    nap();
    fs::hard_link(&f, dir.join("link"))?;
    ensure!(ctime(&f)? > c3, "link did not advance the file's ctime");
    // Directory times follow entries coming and going.
    let d = dir.join("d");
    fs::create_dir(&d)?;
    let (dm0, dc0) = (mtime(&d)?, ctime(&d)?);
    nap();
    fs::write(d.join("new"), "")?;
    let dm1 = mtime(&d)?;
    ensure!(
        dm1 > dm0 && ctime(&d)? > dc0,
        "creating an entry did not advance the directory's mtime and ctime"
    );
    nap();
    fs::remove_file(d.join("new"))?;
    ensure!(
        mtime(&d)? > dm1,
        "removing an entry did not advance the directory's mtime"
    );
    Ok("write, chmod, read, utimensat (ns), link, directory entries".into())
}
