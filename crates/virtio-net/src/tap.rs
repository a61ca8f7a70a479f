//! Attaching to an existing host tap device.
//!
//! Ember never creates network interfaces: the host administrator (or the orchestrator)
//! creates a persistent tap (`ip tuntap add dev tap0 mode tap user ...`) and wires it up;
//! Ember attaches to it by name. `TUNSETIFF` would silently create a missing interface, so
//! the name is checked in sysfs first.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::backend::{read_fd, writev_fd, Backend};
use crate::HDR_LEN;

/// Why a tap device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be a Linux interface name.
    #[error("invalid tap device name `{0}`: 1 to 15 bytes, no '/', ':' or whitespace")]
    InvalidName(String),
    /// No interface has this name.
    #[error(
        "tap device `{0}` does not exist (create it first, e.g. `ip tuntap add dev {0} mode tap`)"
    )]
    NotFound(String),
    /// The interface exists but is not a tap (a physical NIC, a bridge, a tun...).
    #[error("network interface `{0}` is not a tap device")]
    NotTap(String),
    /// The tap was created with `multi_queue`, which Ember does not use.
    #[error("tap device `{0}` is multi-queue; recreate it without `multi_queue`")]
    MultiQueue(String),
    /// Another process (or another Ember device) holds the tap.
    #[error("tap device `{0}` is busy (already used by another process)")]
    Busy(String),
    /// The tap belongs to another user or group.
    #[error(
        "tap device `{0}`: permission denied (the tap's owner/group or CAP_NET_ADMIN is needed)"
    )]
    PermissionDenied(String),
    /// `/dev/net/tun` is missing or not accessible.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// A setup ioctl failed.
    #[error("tap device `{name}`: {what}: {err}")]
    Setup {
        /// The tap's name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        err: io::Error,
    },
}

/// An open, attached tap device. Non-blocking, with a 12-byte virtio-net header on every
/// frame (the `virtio_net_hdr_v1` layout the guest uses).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing tap `name`. With `vnet_hdr_offload`, the tap accepts frames
    /// that need checksumming or segmentation; what it may *send* is set later from the
    /// features the guest accepts ([`Backend::set_offload`]).
    pub fn open(name: &str, vnet_hdr_offload: bool) -> Result<Tap, TapError> {
        check_name(name)?;
        let sys = Path::new("/sys/class/net").join(name);
        if !sys.exists() {
            return Err(TapError::NotFound(name.to_string()));
        }
        let flags = match std::fs::read_to_string(sys.join("tun_flags")) {
            Ok(s) => parse_tun_flags(&s),
            Err(_) => return Err(TapError::NotTap(name.to_string())),
        };
        let flags = flags.ok_or_else(|| TapError::NotTap(name.to_string()))?;
        if flags & libc::IFF_TAP == 0 {
            return Err(TapError::NotTap(name.to_string()));
        }
        if flags & libc::IFF_MULTI_QUEUE != 0 {
            return Err(TapError::MultiQueue(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.attach()?;
        tap.setup_vnet_hdr(vnet_hdr_offload)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn attach(&self) -> Result<(), TapError> {
        // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(self.name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives for the whole call; the
        // name is NUL-terminated (at most 15 bytes in a 16-byte zeroed array).
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        let name = self.name.clone();
        Err(match err.raw_os_error() {
            Some(libc::EBUSY) => TapError::Busy(name),
            Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied(name),
            _ => TapError::Setup {
                name,
                what: "cannot attach (TUNSETIFF)",
                err,
            },
        })
    }

    fn setup_vnet_hdr(&self, offload: bool) -> Result<(), TapError> {
        let size = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret != 0 {
            return Err(self.setup_err(
                "cannot set the virtio-net header size",
                io::Error::last_os_error(),
            ));
        }
        // With offload, check now that the tap supports it, so a problem shows at startup.
        // Nothing is offloaded to the guest before it accepts features (see activation).
        if offload {
            self.set_tun_offload(crate::TUN_OFFLOADS)
                .map_err(|e| self.setup_err("checksum/TSO offload not supported", e))?;
        }
        self.set_tun_offload(0)
            .map_err(|e| self.setup_err("cannot reset offloads", e))
    }

    fn setup_err(&self, what: &'static str, err: io::Error) -> TapError {
        TapError::Setup {
            name: self.name.clone(),
            what,
            err,
        }
    }

    fn set_tun_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no user memory.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.file.as_raw_fd(), buf)
    }

    unsafe fn write_frame(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: our caller guarantees the vectors are readable for the call.
        unsafe { writev_fd(self.file.as_raw_fd(), iov) }
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        self.set_tun_offload(tun_flags)
    }
}

/// Refuses names Linux would refuse (or that would escape `/sys/class/net`).
fn check_name(name: &str) -> Result<(), TapError> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if bad {
        Err(TapError::InvalidName(name.to_string()))
    } else {
        Ok(())
    }
}

/// `tun_flags` in sysfs is a hex number such as `0x1002`.
fn parse_tun_flags(s: &str) -> Option<libc::c_int> {
    let s = s.trim();
    let hex = s.strip_prefix("0x").unwrap_or(s);
    libc::c_int::from_str_radix(hex, 16).ok()
}
