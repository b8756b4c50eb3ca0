//! Shim configuration: `/etc/hull/config.toml` with built-in defaults, and the
//! allowlisted `io.hull.*` annotations that may override it for one pod.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use hull_protocol::vm::{self, VmConfigError};
use serde::Deserialize;

/// Where the configuration lives unless containerd's `ConfigPath` or `HULL_CONFIG` say otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hull/config.toml";
/// Environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "HULL_CONFIG";
/// Prefix of the annotations Hull reads; every other `io.hull.` key is refused.
pub const ANNOTATION_PREFIX: &str = "io.hull.";

/// Bounds of `agent_timeout_secs`.
const MIN_AGENT_TIMEOUT_SECS: u32 = 1;
const MAX_AGENT_TIMEOUT_SECS: u32 = 3600;

/// Errors of loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value outside its bounds (those of the VM come from `hull_protocol::vm`).
    #[error(transparent)]
    OutOfRange(#[from] VmConfigError),
    #[error(
        "{field} = {value} is above the admin ceiling {ceiling} = {max} (raise {ceiling} in the \
         config file or ask for less)"
    )]
    AboveCeiling {
        field: String,
        value: u32,
        ceiling: &'static str,
        max: u32,
    },
    #[error("{field}: {path:?} must be an absolute path without `..`")]
    BadPath { field: &'static str, path: PathBuf },
    #[error(
        "vmm_user: no user {user:?} on this node for the jailed hull-vmm to run as: create it \
         (useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {user}; \
         make install does) or set vmm_uid and vmm_gid in the config (0 keeps root)"
    )]
    VmmUser { user: String },
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation {
        key: String,
        value: String,
        reason: String,
    },
}

/// The shim's configuration, after defaults and validation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Guest kernel (`vmlinux`, ELF with a PVH entry).
    pub kernel: PathBuf,
    /// Guest initramfs holding `hull-agent` as `/init`.
    pub initrd: PathBuf,
    /// vCPUs of each pod VM.
    pub vcpus: u32,
    /// Guest memory of each pod VM, in MiB.
    pub memory_mib: u32,
    /// Admin ceiling on `vcpus`, for the default and every annotation (at most
    /// `hull_protocol::vm::MAX_VCPUS`, hull-vmm's limit).
    pub max_vcpus: u32,
    /// Admin ceiling on `memory_mib`, for the default and every annotation.
    pub max_memory_mib: u32,
    /// vCPUs added to a pod's CPU limit (CRI) for its VM (see `backend::vm::sizing`).
    pub base_vcpus: u32,
    /// MiB added to a pod's memory limit (CRI) for the guest kernel and agent.
    pub base_memory_mib: u32,
    /// How long a guest agent call may take before the agent counts as hung;
    /// Kill or Delete then stops the pod's VM (see the shim README).
    pub agent_timeout_secs: u32,
    /// The `hull-vmm` binary.
    pub hull_vmm: PathBuf,
    /// The `virtiofsd` binary.
    pub virtiofsd: PathBuf,
    /// Per-pod state (shared directory, sockets, console log) lives in `<run_dir>/<sandbox-id>`.
    pub run_dir: PathBuf,
    /// Debug logs from the shim, the VMM and the agent.
    pub debug: bool,
    /// Whether `io.hull.kernel` / `io.hull.initrd` annotations may choose guest images.
    pub allow_path_annotations: bool,
    /// Whether the `io.hull.debug` annotation may turn on debug logs for one pod.
    pub allow_debug_annotation: bool,
    /// Jail each pod's hull-vmm once its VM is built: own mount, IPC and UTS namespaces, its
    /// root a tmpfs holding only the pod directory's files (see the README).
    pub vmm_jail: bool,
    /// The user (and its primary group) hull-vmm drops to inside its jail, looked up when a
    /// pod starts, unless `vmm_uid`/`vmm_gid` name ids.
    pub vmm_user: String,
    /// uid hull-vmm drops to inside its jail, instead of `vmm_user`'s (0: it stays root).
    pub vmm_uid: Option<u32>,
    /// gid hull-vmm drops to inside its jail, instead of `vmm_user`'s; the pod directory is
    /// made traversable by it.
    pub vmm_gid: Option<u32>,
    /// Where each container's writes go: an overlay upper layer in the guest (`guest`, the
    /// default) or containerd's snapshot on the host through virtio-fs (`host`).
    pub writable_layer: WritableLayer,
    /// How the guest reads the image's files when the writable layer is in the guest: from a
    /// read-only ext4 disk made once per image (`disk`, the default) or through virtio-fs
    /// (`share`).
    pub image_layers: ImageLayers,
    /// Empty virtio-blk slots each pod VM boots with, filled with images as containers
    /// come (at most [`MAX_IMAGE_DISK_SLOTS`]); images past them are read through the share.
    pub image_disk_slots: u32,
    /// Where the image disks are kept, one file per image, shared by every pod.
    pub image_cache_dir: PathBuf,
    /// MiB the image disks may take on the host (0: no bound); past it, making a disk removes
    /// the least recently used ones (at most [`MAX_IMAGE_CACHE_MIB`]).
    pub image_cache_max_mib: u64,
}

/// The most empty image slots a pod VM boots with.
pub const MAX_IMAGE_DISK_SLOTS: u32 = 16;
/// The highest `image_cache_max_mib`: its bytes fit in a u64.
pub const MAX_IMAGE_CACHE_MIB: u64 = u64::MAX >> 20;

/// How the guest reads the image's files (see the README, "The container root").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageLayers {
    /// A read-only ext4 file made from the image once, handed to the guest on a virtio-blk
    /// slot: the guest's page cache keeps the image's files.
    #[default]
    Disk,
    /// The image's layers through virtio-fs, as the volumes.
    Share,
}

/// Where a container's writable layer lives (see the README, "The container root").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WritableLayer {
    /// The image's layers are served read-only and the guest stacks an overlay on them
    /// with a tmpfs upper layer: file writes and metadata never cross virtio-fs.
    #[default]
    Guest,
    /// containerd's snapshot (its upper directory) is the root, served read-write
    /// through virtio-fs: writes land on the host, where `ctr snapshot diff` sees them.
    Host,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Where `make setup` installs them.
            kernel: PathBuf::from("/usr/local/share/hull/vmlinux"),
            initrd: PathBuf::from("/usr/local/share/hull/initramfs.cpio"),
            vcpus: 1,
            memory_mib: 512,
            max_vcpus: vm::MAX_VCPUS.into(),
            max_memory_mib: 16 * 1024,
            base_vcpus: 0,
            base_memory_mib: 128,
            agent_timeout_secs: 120,
            hull_vmm: PathBuf::from("/usr/local/bin/hull-vmm"),
            virtiofsd: PathBuf::from("/usr/local/bin/virtiofsd"),
            run_dir: PathBuf::from("/run/hull"),
            debug: false,
            allow_path_annotations: false,
            allow_debug_annotation: false,
            vmm_jail: true,
            vmm_user: DEFAULT_VMM_USER.into(),
            vmm_uid: None,
            vmm_gid: None,
            writable_layer: WritableLayer::Guest,
            image_layers: ImageLayers::Disk,
            image_disk_slots: 4,
            image_cache_dir: PathBuf::from("/var/lib/hull/images"),
            image_cache_max_mib: 10 * 1024,
        }
    }
}

/// The unprivileged user hull-vmm runs as by default (`make setup` / `make install` create it).
pub const DEFAULT_VMM_USER: &str = "hull-vmm";

impl Config {
    /// Whether containers' images go to the guest on image disks: the writable layer in the
    /// guest, `image_layers = "disk"` and at least one slot.
    pub fn image_disks(&self) -> bool {
        self.writable_layer == WritableLayer::Guest
            && self.image_layers == ImageLayers::Disk
            && self.image_disk_slots > 0
    }

    /// The uid and gid hull-vmm drops to in its jail: `vmm_uid`/`vmm_gid` when either is set
    /// (the other then 0), else `vmm_user`'s uid and primary group from the user database.
    pub fn vmm_ids(&self) -> Result<(u32, u32), ConfigError> {
        if self.vmm_uid.is_some() || self.vmm_gid.is_some() {
            return Ok((self.vmm_uid.unwrap_or(0), self.vmm_gid.unwrap_or(0)));
        }
        let missing = || ConfigError::VmmUser {
            user: self.vmm_user.clone(),
        };
        match nix::unistd::User::from_name(&self.vmm_user) {
            Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
            _ => Err(missing()),
        }
    }

    /// Loads the configuration: `explicit` (containerd's `ConfigPath`) first, then
    /// `$HULL_CONFIG`, then [`DEFAULT_CONFIG_PATH`]. Only the default file may be absent.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let env = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
        match (explicit, env) {
            (Some(path), _) => Self::from_file(path),
            (None, Some(path)) => Self::from_file(Path::new(&path)),
            (None, None) => match Self::from_file(Path::new(DEFAULT_CONFIG_PATH)) {
                Err(ConfigError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(Self::default())
                }
                other => other,
            },
        }
    }

    /// Reads and validates one TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_range("max_vcpus", self.max_vcpus, vm::MIN_VCPUS, vm::MAX_VCPUS)?;
        check_range(
            "max_memory_mib",
            self.max_memory_mib,
            vm::MIN_POD_MEMORY_MIB,
            vm::MAX_MEMORY_MIB,
        )?;
        check_range(
            "agent_timeout_secs",
            self.agent_timeout_secs,
            MIN_AGENT_TIMEOUT_SECS,
            MAX_AGENT_TIMEOUT_SECS,
        )?;
        check_ceiling("base_vcpus", self.base_vcpus, "max_vcpus", self.max_vcpus)?;
        check_ceiling(
            "base_memory_mib",
            self.base_memory_mib,
            "max_memory_mib",
            self.max_memory_mib,
        )?;
        check_ceiling("vcpus", self.vcpus, "max_vcpus", self.max_vcpus)?;
        check_ceiling(
            "memory_mib",
            self.memory_mib,
            "max_memory_mib",
            self.max_memory_mib,
        )?;
        check_range("vcpus", self.vcpus, vm::MIN_VCPUS, self.max_vcpus)?;
        check_range(
            "image_disk_slots",
            self.image_disk_slots,
            0u32,
            MAX_IMAGE_DISK_SLOTS,
        )?;
        check_range(
            "image_cache_max_mib",
            self.image_cache_max_mib,
            0u64,
            MAX_IMAGE_CACHE_MIB,
        )?;
        check_range(
            "memory_mib",
            self.memory_mib,
            vm::MIN_POD_MEMORY_MIB,
            self.max_memory_mib,
        )?;
        for (field, path) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("hull_vmm", &self.hull_vmm),
            ("virtiofsd", &self.virtiofsd),
            ("run_dir", &self.run_dir),
            ("image_cache_dir", &self.image_cache_dir),
        ] {
            check_path(field, path)?;
        }
        Ok(())
    }

    /// Returns this configuration with the pod's `io.hull.*` annotations applied.
    /// Unknown `io.hull.*` keys and invalid values are refused, not ignored.
    pub fn with_annotations(
        &self,
        annotations: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = self.clone();
        let mut keys: Vec<_> = annotations
            .iter()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .collect();
        keys.sort();
        for (key, value) in keys {
            let bad = |reason: &str| ConfigError::Annotation {
                key: key.clone(),
                value: value.clone(),
                reason: reason.to_string(),
            };
            match &key[ANNOTATION_PREFIX.len()..] {
                "vcpus" => {
                    config.vcpus = value.parse().map_err(|_| bad("not a number"))?;
                    check_ceiling(key, config.vcpus, "max_vcpus", self.max_vcpus)?;
                }
                "memory_mib" => {
                    config.memory_mib = value.parse().map_err(|_| bad("not a number"))?;
                    check_ceiling(
                        key,
                        config.memory_mib,
                        "max_memory_mib",
                        self.max_memory_mib,
                    )?;
                }
                "debug" => {
                    if !self.allow_debug_annotation {
                        return Err(bad("debug logs from annotations are refused; set \
                             allow_debug_annotation = true in the config to allow them"));
                    }
                    config.debug = value.parse().map_err(|_| bad("not true or false"))?
                }
                "writable_layer" => {
                    config.writable_layer = word(value).ok_or_else(|| bad("not guest or host"))?;
                }
                "image_layers" => {
                    config.image_layers = word(value).ok_or_else(|| bad("not disk or share"))?;
                }
                name @ ("kernel" | "initrd") => {
                    if !self.allow_path_annotations {
                        return Err(bad("guest image paths from annotations are refused; set \
                             allow_path_annotations = true in the config to allow them"));
                    }
                    let path = PathBuf::from(value);
                    if name == "kernel" {
                        config.kernel = path;
                    } else {
                        config.initrd = path;
                    }
                }
                _ => {
                    return Err(bad(
                        "unknown Hull annotation (allowed: io.hull.vcpus, io.hull.memory_mib, \
                         io.hull.debug, io.hull.kernel, io.hull.initrd, io.hull.writable_layer, \
                         io.hull.image_layers)",
                    ))
                }
            }
        }
        config.validate()?;
        Ok(config)
    }
}

/// An annotation's value as one of a setting's words, spelled as in the config file.
fn word<'a, T: Deserialize<'a>>(value: &'a str) -> Option<T> {
    use serde::de::{value::Error, IntoDeserializer};
    T::deserialize(IntoDeserializer::<Error>::into_deserializer(value)).ok()
}

fn check_range(
    field: &'static str,
    value: impl Into<u64>,
    min: impl Into<u64>,
    max: impl Into<u64>,
) -> Result<(), ConfigError> {
    Ok(vm::check_range(
        field,
        value.into(),
        min.into(),
        max.into(),
    )?)
}

fn check_ceiling(
    field: &str,
    value: u32,
    ceiling: &'static str,
    max: u32,
) -> Result<(), ConfigError> {
    if value <= max {
        Ok(())
    } else {
        Err(ConfigError::AboveCeiling {
            field: field.to_string(),
            value,
            ceiling,
            max,
        })
    }
}

fn check_path(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    let clean = path.is_absolute() && path.components().all(|c| c != Component::ParentDir);
    if clean {
        Ok(())
    } else {
        Err(ConfigError::BadPath {
            field,
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn values_override_defaults() {
        let c =
            Config::parse("vcpus = 2\nmemory_mib = 1024\nkernel = \"/k\"\ndebug = true\n").unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.debug), (2, 1024, true));
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Config::default().initrd);
        let d = Config::default();
        assert_eq!((d.vmm_jail, d.vmm_user.as_str()), (true, DEFAULT_VMM_USER));
        let c = Config::parse("vmm_uid = 997\nvmm_gid = 996\nvmm_jail = true\n").unwrap();
        assert_eq!((c.vmm_jail, c.vmm_ids().unwrap()), (true, (997, 996)));
        let root = Config::parse("vmm_uid = 0\n").unwrap();
        assert_eq!(root.vmm_ids().unwrap(), (0, 0));
        let nobody = Config::parse("vmm_user = \"hull-no-such-user\"\n").unwrap();
        let err = nobody.vmm_ids().unwrap_err().to_string();
        assert!(
            err.contains("\"hull-no-such-user\"") && err.contains("useradd"),
            "{err}"
        );
        let by_name = Config::parse("vmm_user = \"root\"\n").unwrap();
        assert_eq!(by_name.vmm_ids().unwrap(), (0, 0));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(matches!(
            Config::parse("vcpu = 2"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::parse("vcpus = 0"),
            Err(ConfigError::OutOfRange(VmConfigError::OutOfRange {
                field: "vcpus",
                ..
            }))
        ));
        assert!(matches!(
            Config::parse("memory_mib = 1"),
            Err(ConfigError::OutOfRange(VmConfigError::OutOfRange {
                field: "memory_mib",
                ..
            }))
        ));
        assert!(matches!(
            Config::parse("kernel = \"vmlinux\""),
            Err(ConfigError::BadPath {
                field: "kernel",
                ..
            })
        ));
        assert!(matches!(
            Config::parse("run_dir = \"/run/../etc\""),
            Err(ConfigError::BadPath {
                field: "run_dir",
                ..
            })
        ));
    }

    #[test]
    fn explicit_path_must_exist_and_default_may_be_absent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert!(matches!(
            Config::load(Some(&missing)),
            Err(ConfigError::Read { .. })
        ));
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "vcpus = 3\n").unwrap();
        assert_eq!(Config::load(Some(&file)).unwrap().vcpus, 3);
        let err = Config::from_file(&{
            std::fs::write(&missing, "vcpus = \"x\"").unwrap();
            missing.clone()
        })
        .unwrap_err();
        assert!(err.to_string().contains("none.toml"), "{err}");
    }

    #[test]
    fn allowlisted_annotations_apply() {
        let c = Config::default()
            .with_annotations(&annotations(&[
                ("io.hull.vcpus", "4"),
                ("io.hull.memory_mib", "2048"),
                ("io.kubernetes.cri.sandbox-id", "abc"),
            ]))
            .unwrap();
        assert_eq!((c.vcpus, c.memory_mib), (4, 2048));
        assert_eq!(c.writable_layer, WritableLayer::Guest, "the default");
        let host = annotations(&[("io.hull.writable_layer", "host")]);
        let c = Config::default().with_annotations(&host).unwrap();
        assert_eq!(c.writable_layer, WritableLayer::Host);
        let file = Config::parse("writable_layer = \"host\"\n").unwrap();
        assert_eq!(file.writable_layer, WritableLayer::Host);
        assert!(Config::parse("writable_layer = \"disk\"\n").is_err());
        assert_eq!(c.image_layers, ImageLayers::Disk, "the default");
        let share = annotations(&[("io.hull.image_layers", "share")]);
        let c = Config::default().with_annotations(&share).unwrap();
        assert_eq!(c.image_layers, ImageLayers::Share);
        let file = Config::parse("image_layers = \"share\"\nimage_disk_slots = 0\n").unwrap();
        assert_eq!(
            (file.image_layers, file.image_disk_slots),
            (ImageLayers::Share, 0)
        );
        assert!(Config::parse("image_disk_slots = 17\n").is_err());
        assert!(Config::parse("image_cache_dir = \"relative\"\n").is_err());
        assert_eq!(Config::default().image_cache_max_mib, 10240);
        let unbounded = Config::parse("image_cache_max_mib = 0\n").unwrap();
        assert_eq!(unbounded.image_cache_max_mib, 0);
        assert!(matches!(
            Config::parse(&format!(
                "image_cache_max_mib = {}\n",
                MAX_IMAGE_CACHE_MIB + 1
            )),
            Err(ConfigError::OutOfRange(VmConfigError::OutOfRange {
                field: "image_cache_max_mib",
                ..
            }))
        ));
        assert!(Config::parse("image_cache_max_mib = -1\n").is_err());
    }

    #[test]
    fn bad_annotations_are_refused_with_the_key() {
        for (key, value) in [
            ("io.hull.vcpus", "many"),
            ("io.hull.vcpus", "0"),
            ("io.hull.memory_mib", "-5"),
            ("io.hull.cpus", "2"),
            ("io.hull.writable_layer", "disk"),
            ("io.hull.image_layers", "guest"),
            ("io.hull.image_cache_max_mib", "0"),
        ] {
            let err = Config::default()
                .with_annotations(&annotations(&[(key, value)]))
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Annotation { .. } | ConfigError::OutOfRange(_)
                ),
                "{key}={value}: {err}"
            );
        }
    }

    #[test]
    fn ceilings_bound_annotations_and_defaults_without_clamping() {
        let admin = Config::parse("max_vcpus = 4\nmax_memory_mib = 2048\n").unwrap();
        let ok = admin
            .with_annotations(&annotations(&[
                ("io.hull.vcpus", "4"),
                ("io.hull.memory_mib", "2048"),
            ]))
            .unwrap();
        assert_eq!(
            (ok.vcpus, ok.memory_mib),
            (4, 2048),
            "at the ceiling is fine"
        );
        for (key, value, ceiling) in [
            ("io.hull.vcpus", "5", "max_vcpus = 4"),
            ("io.hull.vcpus", "64", "max_vcpus = 4"),
            ("io.hull.memory_mib", "2049", "max_memory_mib = 2048"),
        ] {
            let err = admin
                .with_annotations(&annotations(&[(key, value)]))
                .unwrap_err();
            assert!(
                matches!(err, ConfigError::AboveCeiling { .. }),
                "{key}={value}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(key) && msg.contains(value) && msg.contains(ceiling),
                "{msg}"
            );
        }
        // The default itself is bounded too, and hull-vmm's 8 vCPUs bound the ceiling.
        let err = Config::parse("vcpus = 6\nmax_vcpus = 4\n").unwrap_err();
        assert!(err.to_string().contains("max_vcpus = 4"), "{err}");
        assert!(matches!(
            Config::parse("max_vcpus = 9"),
            Err(ConfigError::OutOfRange(VmConfigError::OutOfRange {
                field: "max_vcpus",
                ..
            }))
        ));
        assert!(matches!(
            Config::parse("memory_mib = 32768"),
            Err(ConfigError::AboveCeiling { .. })
        ));
    }

    #[test]
    fn the_debug_annotation_needs_the_admin_switch() {
        let a = annotations(&[("io.hull.debug", "true")]);
        let err = Config::default().with_annotations(&a).unwrap_err();
        assert!(err.to_string().contains("allow_debug_annotation"), "{err}");
        let allowed = Config::parse("allow_debug_annotation = true\n").unwrap();
        assert!(allowed.with_annotations(&a).unwrap().debug);
    }

    #[test]
    fn path_annotations_need_explicit_permission() {
        let a = annotations(&[("io.hull.kernel", "/tmp/evil")]);
        let err = Config::default().with_annotations(&a).unwrap_err();
        assert!(err.to_string().contains("allow_path_annotations"), "{err}");
        let allowed = Config {
            allow_path_annotations: true,
            ..Config::default()
        };
        assert_eq!(
            allowed.with_annotations(&a).unwrap().kernel,
            PathBuf::from("/tmp/evil")
        );
        let relative = annotations(&[("io.hull.initrd", "../x")]);
        assert!(matches!(
            allowed.with_annotations(&relative),
            Err(ConfigError::BadPath {
                field: "initrd",
                ..
            })
        ));
    }
}
