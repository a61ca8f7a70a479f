//! Virtio devices: each gets an MMIO window and a GSI from the allocators, a virtio-mmio
//! transport on the MMIO bus, KVM ioeventfds on its `QueueNotify` register and an irqfd on
//! its GSI, and a subscription to the event loop. The result says where each device lives,
//! for the DSDT or the kernel command line (never both).

use std::sync::{Arc, Mutex};

use ember_arch::acpi::MmioDevice;
use ember_arch::layout::{
    IRQ_DEVICES_END, IRQ_DEVICES_START, MMIO_DEVICES_END, MMIO_DEVICES_START,
};
use ember_devices::Bus;
use ember_virtio::{
    GuestMemory, Interrupt, MmioTransport, QueueHandler, QueueSubscriber, VirtioDevice,
    MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use ember_virtio_blk::{Block, DiskError, DiskFile};
use ember_virtio_net::{random_mac, Net, NetConfig as NetDeviceConfig, NetSubscriber, Tap};
use ember_virtio_rng::Rng;
use ember_virtio_vsock::{Vsock, VsockSubscriber};
use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{DeviceDiscovery, DriveConfig, NetConfig, VmConfig};
use crate::event_loop::EventLoop;

/// Errors from setting up devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A drive's image cannot be used.
    #[error("drive `{id}`: {err}")]
    Disk {
        /// The drive's id.
        id: String,
        /// Why.
        err: DiskError,
    },
    /// The drive list is inconsistent.
    #[error("invalid drives: {0}")]
    Drives(String),
    /// A network interface cannot be set up.
    #[error("network interface `{id}`: {err}")]
    Net {
        /// The interface's id.
        id: String,
        /// Why.
        err: ember_virtio_net::TapError,
    },
    /// The interface list is inconsistent.
    #[error("invalid network interfaces: {0}")]
    Nets(String),
    /// The vsock device cannot be set up.
    #[error("{0}")]
    Vsock(#[from] ember_virtio_vsock::VsockError),
    /// More devices than MMIO windows or interrupt lines.
    #[error("too many devices: no free {0} left")]
    OutOfResources(&'static str),
    /// Creating a device, an eventfd, or registering it with KVM failed.
    #[error("cannot set up {what}: {err}")]
    Setup {
        /// What was being set up.
        what: String,
        /// Why.
        err: std::io::Error,
    },
}

/// Where the guest finds the devices, and what it must be told on its command line.
pub(crate) struct Devices {
    /// Windows and GSIs, in registration order (the guest's probe order).
    pub mmio_devices: Vec<MmioDevice>,
    /// Extra kernel command line (root device, `virtio_mmio.device=` entries); may be empty.
    pub cmdline: String,
    /// Whether the DSDT describes the devices.
    pub in_dsdt: bool,
}

struct Allocators {
    mmio: AddressAllocator,
    irq: IdAllocator,
}

fn setup_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeviceError {
    let what = what.into();
    move |err| DeviceError::Setup { what, err }
}

fn kvm_setup_err(what: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> DeviceError {
    let what = what.into();
    move |err| DeviceError::Setup {
        what,
        err: std::io::Error::from_raw_os_error(err.errno()),
    }
}

/// Drives in guest order: the root drive first (it becomes `/dev/vda`), then the others as
/// given. Checks ids are unique and non-empty and that at most one drive is the root.
fn ordered_drives(drives: &[DriveConfig]) -> Result<Vec<&DriveConfig>, DeviceError> {
    for (i, d) in drives.iter().enumerate() {
        if d.id.is_empty() {
            return Err(DeviceError::Drives("a drive has an empty id".into()));
        }
        if drives[..i].iter().any(|o| o.id == d.id) {
            return Err(DeviceError::Drives(format!(
                "drive id `{}` is used twice",
                d.id
            )));
        }
    }
    if drives.iter().filter(|d| d.root).count() > 1 {
        return Err(DeviceError::Drives("more than one root drive".into()));
    }
    let (root, rest): (Vec<_>, Vec<_>) = drives.iter().partition(|d| d.root);
    Ok(root.into_iter().chain(rest).collect())
}

/// Checks interface ids and taps are unique and ids non-empty (a tap opened twice would only
/// fail later, with a less helpful "busy").
fn check_nets(nets: &[NetConfig]) -> Result<(), DeviceError> {
    for (i, n) in nets.iter().enumerate() {
        if n.id.is_empty() {
            return Err(DeviceError::Nets("an interface has an empty id".into()));
        }
        if let Some(o) = nets[..i].iter().find(|o| o.id == n.id) {
            return Err(DeviceError::Nets(format!(
                "interface id `{}` is used twice",
                o.id
            )));
        }
        if let Some(o) = nets[..i].iter().find(|o| o.tap == n.tap) {
            return Err(DeviceError::Nets(format!(
                "tap `{}` is used by both `{}` and `{}`",
                n.tap, o.id, n.id
            )));
        }
        if let Some(o) = nets[..i].iter().find(|o| o.mac.is_some() && o.mac == n.mac) {
            return Err(DeviceError::Nets(format!(
                "`{}` and `{}` have the same MAC address",
                o.id, n.id
            )));
        }
    }
    Ok(())
}

/// Creates every virtio device of `config` on `mmio`, wired to KVM and the event loop.
pub(crate) fn setup_virtio_devices(
    vm_fd: &VmFd,
    mem: &GuestMemory,
    config: &VmConfig,
    mmio: &mut Bus,
    events: &mut EventLoop,
) -> Result<Devices, DeviceError> {
    let mut alloc = Allocators {
        mmio: AddressAllocator::new(MMIO_DEVICES_START, MMIO_DEVICES_END - MMIO_DEVICES_START)
            .map_err(|_| DeviceError::OutOfResources("MMIO space"))?,
        irq: IdAllocator::new(IRQ_DEVICES_START, IRQ_DEVICES_END)
            .map_err(|_| DeviceError::OutOfResources("interrupt lines"))?,
    };
    let mut cmdline = Vec::new();
    let mut mmio_devices = Vec::new();
    let user_cmdline = config.boot.effective_cmdline();
    for drive in ordered_drives(&config.drives)? {
        if drive.root {
            if user_cmdline
                .split_whitespace()
                .any(|w| w.starts_with("root="))
            {
                return Err(DeviceError::Drives(format!(
                    "drive `{}` is the root drive but the command line already sets root=",
                    drive.id
                )));
            }
            cmdline.push(format!(
                "root=/dev/vda {}",
                if drive.read_only { "ro" } else { "rw" }
            ));
        }
        let disk =
            DiskFile::open(&drive.path, drive.read_only).map_err(|err| DeviceError::Disk {
                id: drive.id.clone(),
                err,
            })?;
        log::info!(
            "drive `{}`: {} ({} sectors{})",
            drive.id,
            drive.path.display(),
            disk.sectors(),
            if drive.read_only { ", read-only" } else { "" }
        );
        let block =
            Block::new(disk, &drive.id).map_err(setup_err(format!("drive `{}`", drive.id)))?;
        mmio_devices.push(attach(vm_fd, mem, &mut alloc, mmio, events, block)?);
    }
    if config.entropy.is_some() {
        let rng = Rng::new().map_err(setup_err("the entropy device"))?;
        mmio_devices.push(attach(vm_fd, mem, &mut alloc, mmio, events, rng)?);
    }
    check_nets(&config.nets)?;
    for net in &config.nets {
        let tap = Tap::open(&net.tap, net.offload).map_err(|err| DeviceError::Net {
            id: net.id.clone(),
            err,
        })?;
        let mac = net.mac.map(|m| m.0).unwrap_or_else(random_mac);
        log::info!(
            "network interface `{}`: tap {}, MAC {}",
            net.id,
            net.tap,
            crate::config::MacAddr(mac)
        );
        let dev = Net::new(
            tap,
            NetDeviceConfig {
                mac,
                offload: net.offload,
            },
        )
        .map_err(setup_err(format!("network interface `{}`", net.id)))?;
        let dev = Arc::new(Mutex::new(dev));
        let sub = Arc::new(Mutex::new(NetSubscriber(dev.clone())));
        mmio_devices.push(attach_with(vm_fd, mem, &mut alloc, mmio, events, dev, sub)?);
    }
    if let Some(vsock) = &config.vsock {
        let dev = Vsock::new(u64::from(vsock.guest_cid), &vsock.uds_path)?;
        log::info!(
            "vsock: guest CID {}, host socket {}",
            vsock.guest_cid,
            vsock.uds_path.display()
        );
        let dev = Arc::new(Mutex::new(dev));
        let sub = Arc::new(Mutex::new(VsockSubscriber(dev.clone())));
        mmio_devices.push(attach_with(vm_fd, mem, &mut alloc, mmio, events, dev, sub)?);
    }
    let discovery = config.boot.device_discovery.resolve(user_cmdline);
    if discovery == DeviceDiscovery::Cmdline {
        cmdline.extend(mmio_devices.iter().map(|d| {
            format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                d.len >> 10,
                d.addr,
                d.irq
            )
        }));
    }
    Ok(Devices {
        mmio_devices,
        cmdline: cmdline.join(" "),
        in_dsdt: discovery == DeviceDiscovery::Acpi,
    })
}

/// Places a device whose only event sources are its queues; see [`attach_with`].
fn attach<D: QueueHandler + 'static>(
    vm_fd: &VmFd,
    mem: &GuestMemory,
    alloc: &mut Allocators,
    mmio: &mut Bus,
    events: &mut EventLoop,
    device: D,
) -> Result<MmioDevice, DeviceError> {
    let device = Arc::new(Mutex::new(device));
    let subscriber = Arc::new(Mutex::new(QueueSubscriber(device.clone())));
    attach_with(vm_fd, mem, alloc, mmio, events, device, subscriber)
}

/// Places one device: window, GSI, irqfd, ioeventfds, transport, and `subscriber` (which
/// watches the device's queue eventfds and any backend fds) on the event loop.
fn attach_with<D: VirtioDevice + 'static>(
    vm_fd: &VmFd,
    mem: &GuestMemory,
    alloc: &mut Allocators,
    mmio: &mut Bus,
    events: &mut EventLoop,
    device: Arc<Mutex<D>>,
    subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>,
) -> Result<MmioDevice, DeviceError> {
    let window = alloc
        .mmio
        .allocate(MMIO_WINDOW_SIZE, MMIO_WINDOW_SIZE, AllocPolicy::FirstMatch)
        .map_err(|_| DeviceError::OutOfResources("MMIO space"))?;
    let irq = alloc
        .irq
        .allocate_id()
        .map_err(|_| DeviceError::OutOfResources("interrupt lines"))?;
    let base = window.start();
    let name = format!("virtio device at {base:#x}");
    let irqfd = EventFd::new(EFD_NONBLOCK).map_err(setup_err(name.clone()))?;
    vm_fd
        .register_irqfd(&irqfd, irq)
        .map_err(kvm_setup_err(format!("{name}: interrupt")))?;
    {
        let dev = device.lock().unwrap_or_else(|p| p.into_inner());
        let notify = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
        for (index, evt) in dev.queue_events().iter().enumerate() {
            vm_fd
                .register_ioevent(evt, &notify, index as u32)
                .map_err(kvm_setup_err(format!("{name}: queue notification")))?;
        }
    }
    let transport =
        MmioTransport::new(device.clone(), mem.clone(), Arc::new(Interrupt::new(irqfd)))
            .map_err(setup_err(name.clone()))?;
    mmio.insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)
        .map_err(|e| DeviceError::Setup {
            what: name,
            err: std::io::Error::other(e),
        })?;
    events.add(subscriber);
    Ok(MmioDevice {
        addr: base,
        len: MMIO_WINDOW_SIZE,
        irq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool) -> DriveConfig {
        DriveConfig {
            id: id.into(),
            path: "/x".into(),
            read_only: false,
            root,
        }
    }

    #[test]
    fn root_drive_comes_first_and_ids_are_unique() {
        let drives = [drive("a", false), drive("r", true), drive("b", false)];
        let order: Vec<_> = ordered_drives(&drives)
            .unwrap()
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(order, ["r", "a", "b"]);
        assert!(ordered_drives(&[drive("a", false), drive("a", false)]).is_err());
        assert!(ordered_drives(&[drive("a", true), drive("b", true)]).is_err());
        assert!(ordered_drives(&[drive("", false)]).is_err());
    }
}
