//! VM configuration: plain serde structs, independent of any runtime object. The CLI, the
//! Firecracker-schema config file and (later) the API all produce a [`VmConfig`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEM_MIB: u64 = 128;

/// Everything needed to build a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, initrd and command line.
    pub boot: BootConfig,
    /// vCPUs and memory.
    #[serde(default)]
    pub machine: MachineConfig,
    /// Where the serial console goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// Block devices, in the order the guest sees them (the root drive, if any, is always
    /// presented first, as `/dev/vda`).
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// An entropy device (virtio-rng) when present.
    #[serde(default)]
    pub entropy: Option<EntropyConfig>,
    /// Network interfaces, in the order the guest sees them (`eth0`, `eth1`, ...).
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device when present.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// The boot timer port (0x3f0): a guest write of 123 there is logged with its time.
    #[serde(default)]
    pub boot_timer: bool,
}

/// A virtio-net interface on an existing tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Unique name of the interface.
    pub id: String,
    /// The host tap device (it must exist; Ember does not create taps, bridges or routes).
    pub tap: String,
    /// The guest's MAC address; a random locally administered one when absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Checksum and segmentation offloads between guest and tap (on by default).
    #[serde(default = "default_true")]
    pub offload: bool,
}

fn default_true() -> bool {
    true
}

/// A virtio-vsock device whose host side is a Unix socket, as in Firecracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub guest_cid: u32,
    /// Host processes connect here (`CONNECT <port>`); guest connections to the host's
    /// port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// A MAC address, written `02:00:00:00:00:01` in configs and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

pub use ember_virtio_net::MacError;

impl std::str::FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        ember_virtio_net::parse_mac(s).map(MacAddr)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = MacError;

    fn try_from(s: String) -> Result<Self, MacError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&ember_virtio_net::format_mac(&self.0))
    }
}

/// A virtio-blk drive backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Unique name; also what the guest's `GET_ID` (`/sys/block/vdX/serial`) returns.
    pub id: String,
    /// The image file (or block device).
    pub path: PathBuf,
    /// Open read-only and advertise the disk as read-only to the guest.
    #[serde(default)]
    pub read_only: bool,
    /// The guest's root filesystem: adds `root=/dev/vda ro|rw` to the command line.
    #[serde(default)]
    pub root: bool,
}

/// A virtio-rng device serving the host's `getrandom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {}

/// How the guest kernel learns about virtio-mmio devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceDiscovery {
    /// ACPI (the DSDT), unless the command line has `acpi=off`, then the command line.
    #[default]
    Auto,
    /// `LNRO0005` devices in the DSDT only; for kernels that read ACPI (stock distro kernels).
    Acpi,
    /// `virtio_mmio.device=` on the kernel command line only; for kernels built with
    /// `VIRTIO_MMIO_CMDLINE_DEVICES`, with or without ACPI.
    Cmdline,
}

impl DeviceDiscovery {
    /// Resolves `Auto` against the kernel command line.
    pub fn resolve(self, cmdline: &str) -> Self {
        match self {
            Self::Auto if cmdline.split_whitespace().any(|w| w == "acpi=off") => Self::Cmdline,
            Self::Auto => Self::Acpi,
            other => other,
        }
    }
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// ELF `vmlinux` (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; [`DEFAULT_CMDLINE`] when absent.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// How the kernel finds virtio devices.
    #[serde(default)]
    pub device_discovery: DeviceDiscovery,
}

impl BootConfig {
    /// A boot configuration for `kernel` with no initrd and the default command line.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            device_discovery: DeviceDiscovery::Auto,
        }
    }

    /// The command line the guest gets.
    pub fn effective_cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }
}

/// vCPU and memory sizing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Present vCPUs as hyper-thread pairs (two threads per core).
    #[serde(default)]
    pub smt: bool,
    /// Back guest RAM with transparent huge pages where the host allows (the default): a
    /// faster guest, at the price of host memory in 2 MiB steps as the guest touches it.
    #[serde(default = "huge_pages_default")]
    pub huge_pages: bool,
}

fn huge_pages_default() -> bool {
    true
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpus: DEFAULT_VCPUS,
            mem_size_mib: DEFAULT_MEM_MIB,
            smt: false,
            huge_pages: true,
        }
    }
}

/// Serial console wiring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialConfig {
    /// Guest output to stdout, stdin to the guest.
    #[default]
    Stdio,
    /// Guest output written to a file (created or truncated); no input.
    File(PathBuf),
    /// No console at all (the UART still exists, its output is discarded).
    None,
}

impl VmConfig {
    /// A configuration for `kernel` with defaults everywhere else.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            boot: BootConfig::new(kernel),
            machine: MachineConfig::default(),
            serial: SerialConfig::default(),
            drives: Vec::new(),
            entropy: None,
            nets: Vec::new(),
            vsock: None,
            boot_timer: false,
        }
    }
}

/// Errors from parsing sizes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size `{0}`: expected a number of bytes or a number with K, M, G or T (e.g. 256M)")]
pub struct SizeError(pub String);

/// Parses `128M`, `1G`, `512MiB`, `536870912` (bytes) into bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let err = || SizeError(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last().ok_or_else(err)?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("536870912"), Ok(536_870_912));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        for bad in ["", "M", "-1M", "1.5G", "12X", "99999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let mut c = VmConfig::new("/k");
        c.serial = SerialConfig::File("/tmp/out".into());
        c.drives.push(DriveConfig {
            id: "root".into(),
            path: "/img".into(),
            read_only: true,
            root: true,
        });
        c.entropy = Some(EntropyConfig {});
        c.nets.push(NetConfig {
            id: "net0".into(),
            tap: "tap0".into(),
            mac: Some("02:aa:bb:cc:dd:0e".parse().unwrap()),
            offload: true,
        });
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/run/v.sock".into(),
        });
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), c);
        assert_eq!(c.boot.effective_cmdline(), DEFAULT_CMDLINE);
    }

    #[test]
    fn mac_addresses() {
        let mac: MacAddr = "02:AA:bb:0c:0d:ef".parse().unwrap();
        assert_eq!(mac.0, [2, 0xaa, 0xbb, 0x0c, 0x0d, 0xef]);
        assert_eq!(mac.to_string(), "02:aa:bb:0c:0d:ef");
        for bad in [
            "",
            "02:aa:bb:cc:dd",
            "02:aa:bb:cc:dd:ee:ff",
            "2:aa:bb:cc:dd:ee",
            "zz:aa:bb:cc:dd:ee",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let multicast = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();
        assert!(multicast.to_string().contains("multicast"), "{multicast}");
    }

    #[test]
    fn discovery_follows_acpi_off() {
        let auto = DeviceDiscovery::Auto;
        assert_eq!(auto.resolve("console=ttyS0"), DeviceDiscovery::Acpi);
        assert_eq!(auto.resolve("quiet acpi=off"), DeviceDiscovery::Cmdline);
        assert_eq!(auto.resolve("xacpi=offx"), DeviceDiscovery::Acpi);
        let acpi = DeviceDiscovery::Acpi;
        assert_eq!(acpi.resolve("acpi=off"), DeviceDiscovery::Acpi);
    }
}
