//! hull-fscheck: file-system stress cases that container workloads rely on,
//! run inside a container on its root or on a volume, the same under runc and
//! Hull (issue 14). Each case prints `fscheck: ok NAME: detail` or
//! `fscheck: FAILED NAME: reason`, then `fscheck: stress PASSED/TOTAL`.
//!
//! usage: hull-fscheck [--files N] [--entries N] DIR [CASE...]

mod attrs;
mod locks;
mod names;
mod space;
mod sys;
mod tree;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// How big the tree cases are.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Files in the tree deleted while it is listed.
    pub files: usize,
    /// Entries in the one big directory.
    pub entries: usize,
}

type CaseFn = fn(&Path, Sizes) -> Result<String>;

/// Every case, by name, in the order they run.
const CASES: &[(&str, CaseFn)] = &[
    ("delete-while-listing", tree::delete_while_listing),
    ("big-dir", tree::big_dir),
    ("rename", names::rename),
    ("hard-links", names::hard_links),
    ("o-tmpfile", names::o_tmpfile),
    ("flock", locks::flock),
    ("fcntl-locks", locks::fcntl_locks),
    ("sparse-fallocate", space::sparse_fallocate),
    ("xattr", attrs::xattr),
    ("times", attrs::times),
    ("statfs", space::statfs),
];

struct Args {
    dir: PathBuf,
    sizes: Sizes,
    only: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut sizes = Sizes {
        files: 3000,
        entries: 10_000,
    };
    let mut dir = None;
    let mut only = Vec::new();
    while let Some(a) = args.next() {
        let mut number = |what: &str| -> Result<usize> {
            let v = args
                .next()
                .with_context(|| format!("{what} needs a number"))?;
            v.parse()
                .with_context(|| format!("{what} {v:?} is not a number"))
        };
        match a.as_str() {
            "--files" => sizes.files = number("--files")?,
            "--entries" => sizes.entries = number("--entries")?,
            _ if a.starts_with('-') => bail!("unknown option {a}"),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => {
                if !CASES.iter().any(|(n, _)| *n == a) {
                    let names: Vec<_> = CASES.iter().map(|(n, _)| *n).collect();
                    bail!("no case {a:?}; cases: {}", names.join(" "));
                }
                only.push(a)
            }
        }
    }
    let dir = dir.context("usage: hull-fscheck [--files N] [--entries N] DIR [CASE...]")?;
    Ok(Args { dir, sizes, only })
}

/// Runs the chosen cases, each in a fresh directory under `dir`; returns (passed, run).
fn run(args: &Args) -> Result<(usize, usize)> {
    let base = args.dir.join(format!("fscheck.{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let (mut passed, mut total) = (0, 0);
    for (name, case) in CASES {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        total += 1;
        let dir = base.join(name);
        let started = Instant::now();
        let result = std::fs::create_dir(&dir)
            .with_context(|| format!("create {}", dir.display()))
            .and_then(|()| case(&dir, args.sizes));
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(detail) => {
                passed += 1;
                println!("fscheck: ok {name}: {detail} ({secs:.1} s)");
            }
            Err(e) => println!("fscheck: FAILED {name}: {e:#} ({secs:.1} s)"),
        }
        // Leftovers of a failed case must not hide the next case's result.
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok((passed, total))
}

fn main() -> Result<()> {
    let args = parse(std::env::args().skip(1))?;
    let (passed, total) = run(&args)?;
    println!("fscheck: stress {passed}/{total}");
    if passed != total {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args> {
        parse(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_sizes_dir_and_cases() {
        let a = args(&["--files", "10", "/d", "xattr", "--entries", "5"]).unwrap();
        assert_eq!((a.sizes.files, a.sizes.entries), (10, 5));
        assert_eq!(a.dir, PathBuf::from("/d"));
        assert_eq!(a.only, ["xattr"]);
        assert!(args(&["/d", "nonesuch"]).is_err());
        assert!(args(&["--files"]).is_err());
        assert!(args(&[]).is_err());
    }

    /// Every case passes on the local file system the unit tests run on.
    #[test]
    fn every_case_passes_on_a_local_file_system() {
        let dir = std::env::temp_dir().join(format!("hull-fscheck-unit.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Args {
            dir: dir.clone(),
            sizes: Sizes {
                files: 500,
                entries: 2000,
            },
            only: Vec::new(),
        };
        let (passed, total) = run(&a).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(total, CASES.len());
        assert_eq!(passed, total, "see the FAILED lines above");
    }
}
