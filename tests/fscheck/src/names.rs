//! Names: renames across directories (plain, replacing, RENAME_NOREPLACE,
//! RENAME_EXCHANGE), hard links and unlinked open files, and O_TMPFILE.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::sys;

fn errno(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

pub fn rename(dir: &Path, _: crate::Sizes) -> Result<String> {
    let (a, b) = (dir.join("a"), dir.join("b"));
    fs::create_dir(&a)?;
    fs::create_dir(&b)?;
    // A file moves to another directory.
    fs::write(a.join("f"), "moved")?;
    fs::rename(a.join("f"), b.join("f")).context("rename a/f b/f")?;
    ensure!(!a.join("f").exists(), "a/f still exists after its rename");
    ensure!(
        fs::read_to_string(b.join("f"))? == "moved",
        "b/f lost its content"
    );
    // A directory with content moves; its `..` follows.
    fs::create_dir(a.join("sub"))?;
    fs::write(a.join("sub/inner"), "inner")?;
    fs::rename(a.join("sub"), b.join("sub")).context("rename a/sub b/sub")?;
    ensure!(
        fs::read_to_string(b.join("sub/inner"))? == "inner",
        "b/sub/inner lost"
    );
    ensure!(
        fs::metadata(b.join("sub/.."))?.ino() == fs::metadata(&b)?.ino(),
        "b/sub/.. is not b after the move"
    );
    // Replacing rename: a reader of the old file keeps reading it.
    fs::write(b.join("old"), "old")?;
    fs::write(a.join("new"), "new")?;
    let mut reader = fs::File::open(b.join("old"))?;
    fs::rename(a.join("new"), b.join("old")).context("rename over an existing file")?;
    let mut s = String::new();
    reader.read_to_string(&mut s)?;
    ensure!(s == "old", "an open reader of the replaced file read {s:?}");
    ensure!(
        fs::read_to_string(b.join("old"))? == "new",
        "the replacing file is not in place"
    );
    // renameat2 flags.
    fs::write(a.join("x"), "x")?;
    fs::write(b.join("y"), "y")?;
    let noreplace = sys::renameat2(&a.join("x"), &b.join("y"), libc::RENAME_NOREPLACE);
    ensure!(
        errno(noreplace) == Some(libc::EEXIST),
        "RENAME_NOREPLACE over an existing file did not fail with EEXIST"
    );
    sys::renameat2(&a.join("x"), &b.join("y"), libc::RENAME_EXCHANGE).context("RENAME_EXCHANGE")?;
    ensure!(
        fs::read_to_string(a.join("x"))? == "y" && fs::read_to_string(b.join("y"))? == "x",
        "RENAME_EXCHANGE did not swap the files"
    );
    // A directory cannot replace a non-empty one.
    fs::create_dir(a.join("d"))?;
    let r = fs::rename(a.join("d"), &b);
    ensure!(
        matches!(errno(r), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)),
        "renaming a directory over a non-empty one did not fail with ENOTEMPTY"
    );
    Ok("across directories, replacing, NOREPLACE, EXCHANGE, ENOTEMPTY".into())
}

pub fn hard_links(dir: &Path, _: crate::Sizes) -> Result<String> {
    let (a, b) = (dir.join("a"), dir.join("b"));
    fs::create_dir(&a)?;
    fs::create_dir(&b)?;
    let (f, g) = (a.join("f"), b.join("g"));
    fs::write(&f, "one")?;
    fs::hard_link(&f, &g).context("link a/f b/g")?;
    let (mf, mg) = (fs::metadata(&f)?, fs::metadata(&g)?);
    ensure!(mf.ino() == mg.ino(), "the link has another inode");
    ensure!(
        mf.nlink() == 2 && mg.nlink() == 2,
        "st_nlink {} and {}, not 2",
        mf.nlink(),
        mg.nlink()
    );
    fs::OpenOptions::new()
        .append(true)
        .open(&g)?
        .write_all(b"+two")?;
    ensure!(
        fs::read_to_string(&f)? == "one+two",
        "a write through one name is not seen through the other"
    );
    fs::remove_file(&f)?;
    ensure!(
        fs::metadata(&g)?.nlink() == 1,
        "st_nlink is not 1 after unlinking one name"
    );
    ensure!(
        errno(fs::hard_link(&a, b.join("dirlink"))) == Some(libc::EPERM),
        "a hard link to a directory did not fail with EPERM"
    );
    // An open file outlives its last name.
    let mut open = fs::OpenOptions::new().read(true).append(true).open(&g)?;
    fs::remove_file(&g)?;
    ensure!(
        open.metadata()?.nlink() == 0,
        "st_nlink of an unlinked open file is not 0"
    );
    open.write_all(b"!")?;
    open.seek(SeekFrom::Start(0))?;
    let mut s = String::new();
    open.read_to_string(&mut s)?;
    ensure!(s == "one+two!", "the unlinked open file reads {s:?}");
    ensure!(!g.exists(), "the unlinked name still resolves");
    Ok("shared inode, st_nlink, EPERM on directories, unlinked open file".into())
}

pub fn o_tmpfile(dir: &Path, _: crate::Sizes) -> Result<String> {
    let mut f = sys::open_tmpfile(dir).context("open O_TMPFILE")?;
    f.write_all(b"anonymous")?;
    ensure!(f.metadata()?.nlink() == 0, "an O_TMPFILE has a name");
    ensure!(
        fs::read_dir(dir)?.next().is_none(),
        "the O_TMPFILE shows in its directory"
    );
    let named = dir.join("named");
    sys::link_fd(&f, &named).context("linkat an O_TMPFILE into its directory")?;
    ensure!(
        fs::read_to_string(&named)? == "anonymous",
        "the linked O_TMPFILE lost its content"
    );
    ensure!(
        fs::metadata(&named)?.nlink() == 1,
        "st_nlink is not 1 after linkat"
    );
    Ok("unnamed, written, then linked".into())
}
