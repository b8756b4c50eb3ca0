//! The diagnostics bundle (`hull-check bundle`): one tar.gz with what a bug report
//! about a pod (or the node) needs: Hull's config, versions, the node check, the
//! pods' state directory listings (names, modes and sizes only: no file contents,
//! and two levels deep at most, so the share shows container ids, never their
//! files), their host processes and VMM figures,
//! and their lines from containerd's log. No environment values and no container
//! data are collected.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::pods::{self, Pod};

/// Levels of the pod directory listed: its entries and theirs. The share
/// (`shared`, `share-root`) holds container ids at the second level and the
/// containers' files below, which stay out.
const MAX_DEPTH: usize = 2;
/// Most entries listed per pod.
const MAX_ENTRIES: usize = 5000;
/// Most log lines kept (the newest).
const MAX_LOG_LINES: usize = 20_000;
/// Longest log line kept.
const MAX_LOG_LINE: usize = 4096;

/// What to collect.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// One pod's id; None: the node and every pod.
    pub pod: Option<String>,
    /// containerd's log as a file, instead of `journalctl -u containerd`.
    pub log: Option<PathBuf>,
    /// The archive to write.
    pub out: PathBuf,
}

/// What the caller already knows about the node.
#[derive(Debug, Clone)]
pub struct Node {
    pub config_path: PathBuf,
    pub run_dir: PathBuf,
    /// The node check's lines.
    pub check: String,
    /// `--version` lines of Hull's binaries, containerd and virtiofsd.
    pub versions: String,
}

/// Writes the bundle to `opts.out`; returns the pods it covered.
pub fn create(opts: &Options, node: &Node) -> anyhow::Result<Vec<Pod>> {
    let all = pods::list(&node.run_dir)
        .with_context(|| format!("list pods under {}", node.run_dir.display()))?;
    let chosen: Vec<Pod> = match &opts.pod {
        Some(id) => {
            let found: Vec<Pod> = all.into_iter().filter(|p| &p.id == id).collect();
            if found.is_empty() {
                bail!(
                    "no pod {id:?} under {} (hull-monitor or `ls {0}/*` lists the pods)",
                    node.run_dir.display()
                );
            }
            found
        }
        None => all,
    };
    let staging = tempfile::tempdir().context("create a staging directory")?;
    let name = format!(
        "hull-bundle-{}",
        opts.pod.as_deref().map_or("node".to_string(), sanitize)
    );
    let root = staging.path().join(&name);
    std::fs::create_dir(&root).context("create the bundle directory")?;
    let write = |file: &str, text: &str| {
        std::fs::write(root.join(file), text).with_context(|| format!("write {file}"))
    };
    write("README.txt", &readme(opts, node, &chosen))?;
    write("versions.txt", &node.versions)?;
    write("node-check.txt", &node.check)?;
    write("config.toml", &config_text(&node.config_path))?;
    for pod in &chosen {
        let dir = root
            .join("pods")
            .join(sanitize(&pod.namespace))
            .join(sanitize(&pod.id));
        std::fs::create_dir_all(&dir).context("create a pod directory in the bundle")?;
        std::fs::write(dir.join("listing.txt"), listing(&pod.dir)).context("write listing.txt")?;
        std::fs::write(dir.join("vmm.txt"), vmm_figures(pod)).context("write vmm.txt")?;
    }
    let needle = opts.pod.clone().unwrap_or_else(|| "hull".to_string());
    write("containerd.log", &log_lines(opts.log.as_deref(), &needle))?;
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&opts.out)
        .arg("-C")
        .arg(staging.path())
        .arg(&name)
        .stdin(Stdio::null())
        .status()
        .context("run tar (install tar)")?;
    if !status.success() {
        bail!("tar could not write {} ({status})", opts.out.display());
    }
    Ok(chosen)
}

/// A name safe as one path component.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn readme(opts: &Options, node: &Node, pods: &[Pod]) -> String {
    let mut out = String::from(
        "Hull diagnostics bundle (hull-check bundle).\n\
         versions.txt: --version of Hull's binaries, containerd and virtiofsd\n\
         node-check.txt: hull-check's findings\n\
         config.toml: Hull's configuration file\n\
         pods/<namespace>/<pod>/listing.txt: the pod's state directory (mode, size, name, two levels deep; no contents)\n\
         pods/<namespace>/<pod>/vmm.txt: the pod's host processes and hull-vmm's figures\n\
         containerd.log: containerd's log lines naming the pod (or \"hull\" for the node)\n\n",
    );
    let _ = writeln!(out, "config: {}", node.config_path.display());
    let _ = writeln!(out, "run dir: {}", node.run_dir.display());
    let _ = writeln!(
        out,
        "pod: {}",
        opts.pod.as_deref().unwrap_or("(node: all pods)")
    );
    for p in pods {
        let _ = writeln!(out, "covers: {}/{}", p.namespace, p.id);
    }
    out
}

fn config_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        format!(
            "# cannot read {}: {e} (built-in defaults)\n",
            path.display()
        )
    })
}

/// `mode size path` for the pod directory's entries, [`MAX_DEPTH`] levels deep:
/// the share shows its container ids, never their contents.
pub fn listing(dir: &Path) -> String {
    let mut out = String::new();
    let mut count = 0;
    walk(dir, dir, 1, &mut out, &mut count);
    if count >= MAX_ENTRIES {
        let _ = writeln!(out, "(stopped after {MAX_ENTRIES} entries)");
    }
    out
}

fn walk(base: &Path, dir: &Path, depth: usize, out: &mut String, count: &mut usize) {
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).collect(),
        Err(e) => {
            let _ = writeln!(out, "? ? {} ({e})", dir.display());
            return;
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if *count >= MAX_ENTRIES {
            return;
        }
        *count += 1;
        let path = entry.path();
        let rel = path.strip_prefix(base).unwrap_or(&path);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let _ = writeln!(
            out,
            "{:07o} {:>10} {}",
            meta.mode(),
            meta.size(),
            rel.display()
        );
        if meta.is_dir() && depth < MAX_DEPTH {
            walk(base, &path, depth + 1, out, count);
        }
    }
}

/// The pod's recorded host processes and hull-vmm's answer.
fn vmm_figures(pod: &Pod) -> String {
    let mut out = String::new();
    for (pid, start) in pods::recorded(&pod.dir) {
        match pods::process(pid, start) {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "process {} pid={} rss_bytes={} user_cpu_s={:.2} system_cpu_s={:.2}",
                    p.name, p.pid, p.rss_bytes, p.user_cpu_s, p.system_cpu_s
                );
            }
            None => {
                let _ = writeln!(out, "process pid={pid} gone");
            }
        }
    }
    match pod.vmm_stats() {
        Ok(s) => {
            let _ = writeln!(out, "vmm {s:?}");
        }
        Err(e) => {
            let _ = writeln!(out, "vmm: no figures ({})", hull_protocol::error::chain(&e));
        }
    }
    out
}

/// containerd's log lines holding `needle`: from `file`, else from journald.
fn log_lines(file: Option<&Path>, needle: &str) -> String {
    let (source, reader): (String, Box<dyn BufRead>) = match file {
        Some(path) => match std::fs::File::open(path) {
            Ok(f) => (path.display().to_string(), Box::new(BufReader::new(f))),
            Err(e) => return format!("# cannot read {}: {e}\n", path.display()),
        },
        None => match journal() {
            Some(r) => ("journalctl -u containerd".to_string(), r),
            None => {
                return "# no journald log of containerd here; pass --log FILE (the file \
                        containerd logs to)\n"
                    .to_string()
            }
        },
    };
    let mut kept = std::collections::VecDeque::new();
    for line in reader.split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        if line.contains(needle) {
            if kept.len() == MAX_LOG_LINES {
                kept.pop_front();
            }
            kept.push_back(line.chars().take(MAX_LOG_LINE).collect::<String>());
        }
    }
    let mut out = format!("# lines of {source} holding {needle:?} (newest {MAX_LOG_LINES})\n");
    for line in kept {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// containerd's journal, if journald has one.
fn journal() -> Option<Box<dyn BufRead>> {
    let journalctl = crate::check::which("journalctl")?;
    let output = Command::new(journalctl)
        .args(["-u", "containerd", "--no-pager", "-o", "short-iso"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() || output.stdout.is_empty() {
        return None;
    }
    Some(Box::new(std::io::Cursor::new(output.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_listed_one_level_deep_without_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shared/c1/rootfs/etc")).unwrap();
        std::fs::write(dir.path().join("shared/c1/rootfs/etc/passwd"), "root:x:0:0").unwrap();
        std::fs::create_dir_all(dir.path().join("share-root/c1/rootfs")).unwrap();
        std::fs::write(dir.path().join("host-pids"), "1 2\n").unwrap();
        let text = listing(dir.path());
        assert!(text.contains(" host-pids\n"), "{text}");
        assert!(text.contains(" shared/c1\n"), "{text}");
        assert!(text.contains(" share-root/c1\n"), "{text}");
        assert!(!text.contains("rootfs"), "{text}");
        assert!(!text.contains("root:x"), "{text}");
    }

    #[test]
    fn log_lines_are_filtered_by_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        std::fs::write(&log, "a sandbox=p1 x\nb sandbox=p2 y\nc sandbox=p1 z\n").unwrap();
        let text = log_lines(Some(&log), "sandbox=p1");
        assert!(text.contains("a sandbox=p1 x\nc sandbox=p1 z\n"), "{text}");
        assert!(!text.contains("p2"));
        assert!(log_lines(Some(&dir.path().join("none")), "x").starts_with("# cannot read"));
    }

    #[test]
    fn names_become_single_components() {
        assert_eq!(sanitize("../a b/c"), ".._a_b_c");
    }
}
