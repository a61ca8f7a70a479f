//! Reads Firecracker's JSON config-file schema into a [`VmConfig`], so existing Firecracker
//! configs run unchanged. Sections Ember does not implement yet are rejected by name.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

mod devices;

use crate::config::{BootConfig, MachineConfig, VmConfig};

/// Errors from reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// Not JSON, or a section has the wrong shape.
    #[error("malformed config file {path}: {msg}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// serde's description, with line and column.
        msg: String,
    },
    /// A Firecracker section Ember does not support yet.
    #[error("config file section `{0}` is not supported by this version of Ember")]
    Unsupported(String),
    /// A section Firecracker does not define either.
    #[error("unknown config file section `{0}`")]
    UnknownSection(String),
    /// A required section is missing.
    #[error("config file has no `{0}` section")]
    Missing(&'static str),
    /// A setting Ember does not support.
    #[error("config file setting `{0}` is not supported by this version of Ember")]
    UnsupportedSetting(String),
}

/// Sections of the Firecracker schema that Ember does not implement yet. An absent, `null` or
/// empty-list section asks for nothing and is accepted.
const NOT_YET: &[&str] = &[
    "balloon",
    "logger",
    "metrics",
    "mmds-config",
    "cpu-config",
    "serial",
    "memory-hotplug",
    "pmem",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcBootSource {
    kernel_image_path: PathBuf,
    #[serde(default)]
    initrd_path: Option<PathBuf>,
    #[serde(default)]
    boot_args: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcMachineConfig {
    vcpu_count: u8,
    mem_size_mib: u64,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    #[serde(default)]
    huge_pages: Option<String>,
    #[serde(default)]
    cpu_template: Option<String>,
}

/// Parses a Firecracker-schema config from `text`; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<VmConfig, ConfigFileError> {
    let malformed = |e: serde_json::Error| ConfigFileError::Malformed {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let root: Map<String, Value> = serde_json::from_str(text).map_err(malformed)?;
    for (key, value) in &root {
        match key.as_str() {
            "boot-source" | "machine-config" | "drives" | "entropy" | "network-interfaces"
            | "vsock" => {}
            k if NOT_YET.contains(&k) => {
                let empty = value.is_null() || value.as_array().is_some_and(|a| a.is_empty());
                if !empty {
                    return Err(ConfigFileError::Unsupported(k.to_string()));
                }
            }
            k => return Err(ConfigFileError::UnknownSection(k.to_string())),
        }
    }
    let section = |name: &str| -> Result<Value, ConfigFileError> {
        Ok(root.get(name).cloned().unwrap_or(Value::Null))
    };
    let boot = section("boot-source")?;
    if boot.is_null() {
        return Err(ConfigFileError::Missing("boot-source"));
    }
    let boot: FcBootSource =
        serde_json::from_value(boot).map_err(|e| in_section(path, "boot-source", e))?;
    let mut config = VmConfig {
        boot: BootConfig {
            kernel: boot.kernel_image_path,
            initrd: boot.initrd_path,
            cmdline: boot.boot_args,
            device_discovery: Default::default(),
        },
        ..VmConfig::new("")
    };
    let machine = section("machine-config")?;
    if !machine.is_null() {
        let m: FcMachineConfig =
            serde_json::from_value(machine).map_err(|e| in_section(path, "machine-config", e))?;
        if m.track_dirty_pages {
            return Err(ConfigFileError::UnsupportedSetting(
                "machine-config.track_dirty_pages".into(),
            ));
        }
        if m.huge_pages.as_deref().is_some_and(|h| h != "None") {
            return Err(ConfigFileError::UnsupportedSetting(
                "machine-config.huge_pages".into(),
            ));
        }
        if m.cpu_template.as_deref().is_some_and(|t| t != "None") {
            return Err(ConfigFileError::UnsupportedSetting(
                "machine-config.cpu_template".into(),
            ));
        }
        config.machine = MachineConfig {
            vcpus: m.vcpu_count,
            mem_size_mib: m.mem_size_mib,
            smt: m.smt,
            ..MachineConfig::default()
        };
    }
    devices::parse(&section, path, &mut config)?;
    Ok(config)
}

pub(crate) fn in_section(path: &Path, section: &str, e: serde_json::Error) -> ConfigFileError {
    ConfigFileError::Malformed {
        path: path.to_path_buf(),
        msg: format!("in `{section}`: {e}"),
    }
}

/// Reads and parses a Firecracker-schema config file.
pub fn load(path: &Path) -> Result<VmConfig, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigFileError::Read {
        path: path.to_path_buf(),
        err,
    })?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<VmConfig, ConfigFileError> {
        parse(text, Path::new("vm.json"))
    }

    #[test]
    fn firecracker_example_config_parses() {
        let c = p(r#"{
            "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 reboot=k", "initrd_path": null},
            "drives": [],
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false},
            "network-interfaces": [], "vsock": null, "logger": null
        }"#)
        .unwrap();
        assert_eq!(c.boot.kernel, PathBuf::from("vmlinux"));
        assert_eq!(c.boot.cmdline.as_deref(), Some("console=ttyS0 reboot=k"));
        assert_eq!((c.machine.vcpus, c.machine.mem_size_mib), (2, 256));
    }

    #[test]
    fn unsupported_and_unknown_sections_are_named() {
        let balloon =
            r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": {"amount_mib": 3}}"#;
        assert_eq!(
            p(balloon).unwrap_err().to_string(),
            "config file section `balloon` is not supported by this version of Ember"
        );
        let unknown = r#"{"boot-source": {"kernel_image_path": "k"}, "bogus": 1}"#;
        assert_eq!(
            p(unknown).unwrap_err().to_string(),
            "unknown config file section `bogus`"
        );
    }

    #[test]
    fn malformed_input_is_reported_with_context() {
        assert!(matches!(p("{"), Err(ConfigFileError::Malformed { .. })));
        assert!(matches!(p("[]"), Err(ConfigFileError::Malformed { .. })));
        assert!(matches!(
            p("{}"),
            Err(ConfigFileError::Missing("boot-source"))
        ));
        let err = p(r#"{"boot-source": {"kernel_image_path": "k", "typo": 1}}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("in `boot-source`: unknown field `typo`"),
            "{err}"
        );
        let err = p(r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 300, "mem_size_mib": 1}}"#).unwrap_err();
        assert!(err.to_string().contains("machine-config"), "{err}");
        let err = p(r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 1, "huge_pages": "2M"}}"#).unwrap_err();
        assert!(err.to_string().contains("huge_pages"), "{err}");
    }
}
