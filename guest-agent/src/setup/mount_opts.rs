//! OCI mount options (`fstab` words) to mount(2) flags and a data string.

use nix::mount::MsFlags;

#[derive(Debug, PartialEq)]
pub struct MountOpts {
    pub flags: MsFlags,
    /// Propagation to set after mounting (MS_PRIVATE, MS_SLAVE, ...).
    pub propagation: MsFlags,
    pub bind: bool,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
}

impl MountOpts {
    pub fn parse(options: &[String]) -> MountOpts {
        let mut out = MountOpts {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            bind: false,
            data: String::new(),
        };
        let mut data = Vec::new();
        for opt in options {
            let (set, clear) = match opt.as_str() {
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
                "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
                "bind" => {
                    out.bind = true;
                    (MsFlags::MS_BIND, MsFlags::empty())
                }
                "rbind" => {
                    out.bind = true;
                    (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
                }
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                | "unbindable" | "runbindable" => {
                    let base = match opt.trim_start_matches('r') {
                        "private" => MsFlags::MS_PRIVATE,
                        "shared" => MsFlags::MS_SHARED,
                        "slave" => MsFlags::MS_SLAVE,
                        _ => MsFlags::MS_UNBINDABLE,
                    };
                    let rec = if opt.starts_with('r') {
                        MsFlags::MS_REC
                    } else {
                        MsFlags::empty()
                    };
                    out.propagation = base | rec;
                    continue;
                }
                other => {
                    data.push(other.to_owned());
                    continue;
                }
            };
            out.flags.insert(set);
            out.flags.remove(clear);
        }
        out.data = data.join(",");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(words: &[&str]) -> MountOpts {
        MountOpts::parse(&words.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_and_data_split() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
    }

    #[test]
    fn bind_ro_and_propagation() {
        let o = opts(&["rbind", "ro", "rprivate"]);
        assert!(o.bind);
        assert!(o
            .flags
            .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
    }
}
