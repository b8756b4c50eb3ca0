//! Space: sparse files (holes, SEEK_DATA/SEEK_HOLE), fallocate (allocate,
//! KEEP_SIZE, PUNCH_HOLE) and statfs figures that follow writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::sys;

const MIB: i64 = 1 << 20;
/// Blocks a hole punch may spend on file-system metadata instead of freeing (16 of 4 KiB).
const PUNCH_SLACK: i64 = 64 << 10;

fn allocated(f: &File) -> Result<i64> {
    Ok(f.metadata()?.blocks() as i64 * 512)
}

fn rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

pub fn sparse_fallocate(dir: &Path, _: crate::Sizes) -> Result<String> {
    // A 4 KiB write at 64 MiB leaves a hole before it.
    let sparse = rw(&dir.join("sparse"))?;
    sparse.write_all_at(&[b'x'; 4096], 64 * MIB as u64)?;
    sparse.sync_all()?;
    ensure!(
        sparse.metadata()?.len() == 64 * MIB as u64 + 4096,
        "size {} after a write at 64 MiB",
        sparse.metadata()?.len()
    );
    ensure!(
        allocated(&sparse)? < MIB,
        "{} bytes allocated for a 4 KiB write: the hole was filled",
        allocated(&sparse)?
    );
    let mut buf = [1u8; 4096];
    sparse.read_exact_at(&mut buf, MIB as u64)?;
    ensure!(buf.iter().all(|b| *b == 0), "a hole does not read as zeros");
    let data = sys::seek(&sparse, 0, libc::SEEK_DATA).context("SEEK_DATA")?;
    ensure!(
        (60 * MIB..=64 * MIB).contains(&data),
        "SEEK_DATA from 0 found data at {data}, the write is at 64 MiB"
    );
    ensure!(
        sys::seek(&sparse, 0, libc::SEEK_HOLE).context("SEEK_HOLE")? == 0,
        "SEEK_HOLE from 0 is not 0"
    );

    // fallocate reserves blocks; KEEP_SIZE does not grow the file; PUNCH_HOLE frees.
    let full = rw(&dir.join("full"))?;
    sys::fallocate(&full, 0, 0, 8 * MIB).context("fallocate 8 MiB")?;
    ensure!(
        full.metadata()?.len() == 8 * MIB as u64,
        "size {} after fallocate of 8 MiB",
        full.metadata()?.len()
    );
    ensure!(
        allocated(&full)? >= 8 * MIB,
        "only {} bytes allocated by fallocate of 8 MiB",
        allocated(&full)?
    );
    sys::fallocate(&full, libc::FALLOC_FL_KEEP_SIZE, 8 * MIB, 4 * MIB)
        .context("fallocate KEEP_SIZE")?;
    ensure!(
        full.metadata()?.len() == 8 * MIB as u64,
        "FALLOC_FL_KEEP_SIZE changed the size"
    );
    ensure!(
        allocated(&full)? >= 12 * MIB,
        "FALLOC_FL_KEEP_SIZE allocated nothing past EOF"
    );
    full.write_all_at(&vec![b'y'; 2 * MIB as usize], MIB as u64)?;
    // Counted after a sync on both sides: a write still in a page cache (the
    // guest's, under virtio-fs) has no blocks on the backing file yet, and a
    // count taken then is off by the blocks that land later.
    full.sync_all().context("fsync before PUNCH_HOLE")?;
    let before = allocated(&full)?;
    sys::fallocate(
        &full,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        MIB,
        MIB,
    )
    .context("fallocate PUNCH_HOLE")?;
    full.sync_all().context("fsync after PUNCH_HOLE")?;
    full.read_exact_at(&mut buf, MIB as u64 + 4096)?;
    ensure!(
        buf.iter().all(|b| *b == 0),
        "a punched hole does not read as zeros"
    );
    full.read_exact_at(&mut buf, 2 * MIB as u64)?;
    ensure!(
        buf.iter().all(|b| *b == b'y'),
        "data after the punched range changed"
    );
    // The file system may spend a few blocks of the freed space on its own bookkeeping: the
    // hole splits an extent, and ext4 then allocates an extent-tree block (1 MiB - 4 KiB
    // freed, measured on ext4 after the sync).
    ensure!(
        allocated(&full)? <= before - (MIB - PUNCH_SLACK),
        "PUNCH_HOLE of 1 MiB freed {} bytes",
        before - allocated(&full)?
    );
    Ok("holes, SEEK_DATA/SEEK_HOLE, fallocate, KEEP_SIZE, PUNCH_HOLE".into())
}

pub fn statfs(dir: &Path, _: crate::Sizes) -> Result<String> {
    let st = sys::statvfs(dir).context("statvfs")?;
    ensure!(
        st.f_bsize > 0 && st.f_frsize > 0,
        "block sizes {} / {}",
        st.f_bsize,
        st.f_frsize
    );
    ensure!(
        st.f_blocks > 0 && st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_bfree,
        "blocks {} free {} avail {}",
        st.f_blocks,
        st.f_bfree,
        st.f_bavail
    );
    ensure!(st.f_namemax >= 255, "f_namemax {}", st.f_namemax);
    // 32 MiB written and synced show up as used space, and come back when deleted.
    let frsize = st.f_frsize as i64;
    let path = dir.join("fill");
    let mut f = rw(&path)?;
    let chunk = vec![b'z'; MIB as usize];
    for _ in 0..32 {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    drop(f);
    let after = sys::statvfs(dir)?;
    let used = (st.f_bfree as i64 - after.f_bfree as i64) * frsize;
    ensure!(
        used >= 16 * MIB,
        "32 MiB written, but free space fell by only {used} bytes"
    );
    fs::remove_file(&path)?;
    let mut freed = 0;
    // Freeing can lag behind unlink (deferred on some file systems): wait a little.
    for _ in 0..50 {
        freed = (sys::statvfs(dir)?.f_bfree as i64 - after.f_bfree as i64) * frsize;
        if freed >= 16 * MIB {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ensure!(
        freed >= 16 * MIB,
        "32 MiB deleted, but free space grew by only {freed} bytes"
    );
    Ok(format!(
        "{} MiB of {} MiB free; writes and deletes move it",
        st.f_bfree as i64 * frsize / MIB,
        st.f_blocks as i64 * frsize / MIB
    ))
}
