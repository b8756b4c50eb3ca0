//! Cost figures measured inside the container: syscall loops, file I/O, stdout blast.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::probe_data::{FileIo, Work, BLAST_MARKER};

/// How much work the probe does; every loop is bounded by time or size.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How long each per-operation loop runs.
    pub loop_time: Duration,
    pub seq_mib: u32,
    pub small_files: u32,
}

/// Runs `op` in batches until `loop_time` has passed; nanoseconds per call.
pub fn ns_per_op(loop_time: Duration, batch: u64, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..batch {
            op();
        }
        n += batch;
        let took = start.elapsed();
        if took >= loop_time {
            return took.as_nanos() as f64 / n as f64;
        }
    }
}

fn getppid() {
    // SAFETY: getppid has no arguments, cannot fail and touches no memory.
    unsafe { libc::getppid() };
}

/// create + write 4 KiB + close + unlink of one file in `dir`, ns per cycle.
fn file_cycle_ns(dir: &Path, loop_time: Duration) -> std::io::Result<f64> {
    let path = dir.join("cycle");
    let data = [0x5au8; 4096];
    let mut err = None;
    let ns = ns_per_op(loop_time, 10, || {
        let r = File::create(&path)
            .and_then(|mut f| f.write_all(&data))
            .and_then(|()| fs::remove_file(&path));
        if let Err(e) = r {
            err.get_or_insert(e);
        }
    });
    err.map_or(Ok(ns), Err)
}

fn mib_per_s(mib: u32, took: Duration) -> f64 {
    f64::from(mib) / took.as_secs_f64().max(1e-9)
}

/// Sequential write (with fsync) then read (after dropping the cached pages) of `mib` MiB.
fn sequential(dir: &Path, mib: u32) -> std::io::Result<(f64, f64)> {
    let path = dir.join("seq");
    let chunk = vec![0xa5u8; 1 << 20];
    let start = Instant::now();
    let mut f = File::create(&path)?;
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    let write = mib_per_s(mib, start.elapsed());
    // SAFETY: fadvise on an fd we own; it only drops clean cached pages.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    drop(f);
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut f = File::open(&path)?;
    let mut total = 0usize;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    let read = mib_per_s(mib, start.elapsed());
    fs::remove_file(&path)?;
    if total != (mib as usize) << 20 {
        return Err(std::io::Error::other(format!(
            "read back {total} bytes of {mib} MiB"
        )));
    }
    Ok((write, read))
}

/// `count` files of 4 KiB: created, read back, deleted; whole cycles per second.
fn small_files(dir: &Path, count: u32) -> std::io::Result<f64> {
    let sub = dir.join("small");
    let _ = fs::remove_dir_all(&sub);
    fs::create_dir(&sub)?;
    let data = [0x3cu8; 4096];
    let mut buf = Vec::with_capacity(4096);
    let start = Instant::now();
    for i in 0..count {
        File::create(sub.join(i.to_string()))?.write_all(&data)?;
    }
    for i in 0..count {
        buf.clear();
        File::open(sub.join(i.to_string()))?.read_to_end(&mut buf)?;
    }
    for i in 0..count {
        fs::remove_file(sub.join(i.to_string()))?;
    }
    let took = start.elapsed();
    fs::remove_dir(&sub)?;
    Ok(f64::from(count) / took.as_secs_f64().max(1e-9))
}

/// File I/O figures in `dir` (created if missing).
pub fn file_io(dir: &Path, plan: &Plan) -> std::io::Result<FileIo> {
    fs::create_dir_all(dir)?;
    let (seq_write_mibs, seq_read_mibs) = sequential(dir, plan.seq_mib)?;
    Ok(FileIo {
        dir: dir.display().to_string(),
        seq_mib: plan.seq_mib,
        seq_write_mibs,
        seq_read_mibs,
        small_files: plan.small_files,
        small_files_per_s: small_files(dir, plan.small_files)?,
    })
}

/// All cost figures; a failing part is listed in `errors` and the rest still runs.
pub fn measure(scratch: &Path, volume: Option<&Path>, plan: &Plan) -> Work {
    let mut work = Work {
        getppid_ns: ns_per_op(plan.loop_time, 1000, getppid),
        ..Default::default()
    };
    if let Err(e) = fs::create_dir_all(scratch) {
        work.errors
            .push(format!("mkdir {}: {e}", scratch.display()));
    }
    match file_cycle_ns(scratch, plan.loop_time) {
        Ok(ns) => work.file_cycle_ns = ns,
        Err(e) => work
            .errors
            .push(format!("file cycle in {}: {e}", scratch.display())),
    }
    match file_io(scratch, plan) {
        Ok(io) => work.rootfs = Some(io),
        Err(e) => work
            .errors
            .push(format!("file I/O in {}: {e}", scratch.display())),
    }
    if let Some(vol) = volume {
        let dir = vol.join("hull-bench");
        match file_io(&dir, plan) {
            Ok(io) => work.volume = Some(io),
            Err(e) => work
                .errors
                .push(format!("file I/O in {}: {e}", dir.display())),
        }
        let _ = fs::remove_dir_all(&dir);
    }
    work
}

/// Prints the blast marker, then `bytes` bytes on stdout as fast as it can.
pub fn blast(bytes: u64) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{BLAST_MARKER}{bytes}")?;
    out.flush()?;
    let mut chunk = vec![b'x'; 1 << 16];
    chunk[(1 << 16) - 1] = b'\n';
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_per_op_counts_every_call() {
        let mut calls = 0u64;
        let ns = ns_per_op(Duration::from_millis(5), 7, || calls += 1);
        assert!(ns > 0.0);
        assert_eq!(calls % 7, 0);
    }

    #[test]
    fn measures_file_io_in_a_temp_dir_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("hull-bench-test-{}", std::process::id()));
        let plan = Plan {
            loop_time: Duration::from_millis(5),
            seq_mib: 2,
            small_files: 5,
        };
        let work = measure(&dir.join("scratch"), Some(&dir.join("vol")), &plan);
        assert!(work.errors.is_empty(), "{:?}", work.errors);
        assert!(work.getppid_ns > 0.0 && work.file_cycle_ns > 0.0);
        let vol = work.volume.unwrap();
        assert!(vol.seq_write_mibs > 0.0 && vol.small_files_per_s > 0.0);
        assert_eq!(fs::read_dir(dir.join("vol")).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
