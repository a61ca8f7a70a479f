//! The device sections of Firecracker's schema: `drives`, `entropy`, `network-interfaces`
//! and `vsock`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{in_section, ConfigFileError};
use crate::config::{DriveConfig, EntropyConfig, MacAddr, NetConfig, VmConfig, VsockConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcDrive {
    drive_id: String,
    path_on_host: PathBuf,
    is_root_device: bool,
    #[serde(default)]
    is_read_only: Option<bool>,
    #[serde(default)]
    partuuid: Option<String>,
    #[serde(default)]
    cache_type: Option<String>,
    #[serde(default)]
    io_engine: Option<String>,
    #[serde(default)]
    rate_limiter: Option<Value>,
    #[serde(default)]
    socket: Option<String>,
}

impl FcDrive {
    /// Ember's drive, or the first setting it cannot honour.
    fn into_drive(self) -> Result<DriveConfig, ConfigFileError> {
        let unsupported = |what: &str| {
            Err(ConfigFileError::UnsupportedSetting(format!(
                "drives.{what}"
            )))
        };
        if self.partuuid.is_some() {
            return unsupported("partuuid");
        }
        if self.io_engine.as_deref().is_some_and(|e| e != "Sync") {
            return unsupported("io_engine");
        }
        // Flushes always reach the host disk; "Unsafe" only allowed Firecracker to skip them.
        if self
            .cache_type
            .as_deref()
            .is_some_and(|c| c != "Unsafe" && c != "Writeback")
        {
            return unsupported("cache_type");
        }
        if self.rate_limiter.is_some_and(|r| !r.is_null()) {
            return unsupported("rate_limiter");
        }
        if self.socket.is_some() {
            return unsupported("socket");
        }
        Ok(DriveConfig {
            id: self.drive_id,
            path: self.path_on_host,
            read_only: self.is_read_only.unwrap_or(false),
            root: self.is_root_device,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcEntropy {
    #[serde(default)]
    rate_limiter: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcNet {
    iface_id: String,
    host_dev_name: String,
    #[serde(default)]
    guest_mac: Option<MacAddr>,
    #[serde(default)]
    rx_rate_limiter: Option<Value>,
    #[serde(default)]
    tx_rate_limiter: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcVsock {
    guest_cid: u32,
    uds_path: PathBuf,
    /// Deprecated in Firecracker and ignored there too.
    #[serde(default)]
    #[allow(dead_code)]
    vsock_id: Option<String>,
}

fn unsupported(what: &str) -> ConfigFileError {
    ConfigFileError::UnsupportedSetting(what.into())
}

/// Reads the device sections into `config`; `section` returns a section or `null`.
pub(super) fn parse(
    section: &dyn Fn(&str) -> Result<Value, ConfigFileError>,
    path: &Path,
    config: &mut VmConfig,
) -> Result<(), ConfigFileError> {
    let drives = section("drives")?;
    if !drives.is_null() {
        let drives: Vec<FcDrive> =
            serde_json::from_value(drives).map_err(|e| in_section(path, "drives", e))?;
        config.drives = drives
            .into_iter()
            .map(FcDrive::into_drive)
            .collect::<Result<_, _>>()?;
    }
    let entropy = section("entropy")?;
    if !entropy.is_null() {
        let e: FcEntropy =
            serde_json::from_value(entropy).map_err(|e| in_section(path, "entropy", e))?;
        if e.rate_limiter.is_some_and(|r| !r.is_null()) {
            return Err(unsupported("entropy.rate_limiter"));
        }
        config.entropy = Some(EntropyConfig {});
    }
    let nets = section("network-interfaces")?;
    if !nets.is_null() {
        let nets: Vec<FcNet> =
            serde_json::from_value(nets).map_err(|e| in_section(path, "network-interfaces", e))?;
        for n in nets {
            for (name, limiter) in [("rx", &n.rx_rate_limiter), ("tx", &n.tx_rate_limiter)] {
                if limiter.as_ref().is_some_and(|r| !r.is_null()) {
                    return Err(unsupported(&format!(
                        "network-interfaces.{name}_rate_limiter"
                    )));
                }
            }
            config.nets.push(NetConfig {
                id: n.iface_id,
                tap: n.host_dev_name,
                mac: n.guest_mac,
                offload: true,
            });
        }
    }
    let vsock = section("vsock")?;
    if !vsock.is_null() {
        let v: FcVsock = serde_json::from_value(vsock).map_err(|e| in_section(path, "vsock", e))?;
        config.vsock = Some(VsockConfig {
            guest_cid: v.guest_cid,
            uds_path: v.uds_path,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse as parse_file;
    use super::*;

    fn p(text: &str) -> Result<VmConfig, ConfigFileError> {
        parse_file(text, Path::new("vm.json"))
    }

    #[test]
    fn drives_and_entropy() {
        let c = p(r#"{"boot-source": {"kernel_image_path": "k"},
            "drives": [
                {"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false, "cache_type": "Unsafe", "rate_limiter": null},
                {"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false, "is_read_only": true}
            ],
            "entropy": {"rate_limiter": null}}"#)
        .unwrap();
        assert_eq!(c.drives.len(), 2);
        assert_eq!(
            c.drives[0],
            DriveConfig {
                id: "rootfs".into(),
                path: "/r.ext4".into(),
                read_only: false,
                root: true
            }
        );
        assert!(c.drives[1].read_only && !c.drives[1].root);
        assert_eq!(c.entropy, Some(EntropyConfig {}));
        for (bad, what) in [
            (r#""partuuid": "0eaa91a0-01""#, "drives.partuuid"),
            (r#""io_engine": "Async""#, "drives.io_engine"),
            (r#""socket": "/vhost.sock""#, "drives.socket"),
        ] {
            let text = format!(
                r#"{{"boot-source": {{"kernel_image_path": "k"}}, "drives": [{{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, {bad}}}]}}"#
            );
            assert!(p(&text).unwrap_err().to_string().contains(what), "{what}");
        }
        let missing =
            r#"{"boot-source": {"kernel_image_path": "k"}, "drives": [{"drive_id": "root"}]}"#;
        assert!(p(missing).unwrap_err().to_string().contains("in `drives`"));
    }

    #[test]
    fn network_interfaces_and_vsock() {
        let c = p(r#"{"boot-source": {"kernel_image_path": "k"},
            "network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02", "rx_rate_limiter": null},
                {"iface_id": "eth1", "host_dev_name": "tap1"}
            ],
            "vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/run/v.sock"}}"#)
        .unwrap();
        assert_eq!(c.nets.len(), 2);
        assert_eq!(
            c.nets[0],
            NetConfig {
                id: "eth0".into(),
                tap: "tap0".into(),
                mac: Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])),
                offload: true,
            }
        );
        assert_eq!((c.nets[1].tap.as_str(), c.nets[1].mac), ("tap1", None));
        assert_eq!(
            c.vsock,
            Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/v.sock".into()
            })
        );
        for (bad, what) in [
            (
                r#""tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}"#,
                "network-interfaces.tx_rate_limiter",
            ),
            (
                r#""guest_mac": "06:00:ac""#,
                "invalid MAC address `06:00:ac`",
            ),
            (
                r#""allow_mmds_requests": true"#,
                "unknown field `allow_mmds_requests`",
            ),
        ] {
            let text = format!(
                r#"{{"boot-source": {{"kernel_image_path": "k"}}, "network-interfaces": [{{"iface_id": "a", "host_dev_name": "t", {bad}}}]}}"#
            );
            let err = p(&text).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
        let err = p(r#"{"boot-source": {"kernel_image_path": "k"}, "vsock": {"guest_cid": -1, "uds_path": "/v"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("in `vsock`"), "{err}");
    }
}
