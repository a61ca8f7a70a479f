//! The one place where a [`VmConfig`] becomes a running-ready [`Vm`]: KVM VM and irqchip,
//! guest memory, legacy devices, ACPI tables, kernel/initrd and vCPU state.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ember_arch::acpi::{create_acpi_tables, AcpiConfig, AcpiError};
use ember_arch::boot::{self, BootError, BootInfo};
use ember_arch::cpuid;
use ember_arch::layout::{ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT, COM1_IRQ, MAX_GUEST_PHYS};
use ember_arch::memory::{create_guest_memory, MemoryError};
use ember_arch::mptable::{setup_mptable, MptableError};
use ember_arch::regs::{self, RegsError};
use ember_devices::acpi_pm::{AcpiPm, ACPI_PM_LEN};
use ember_devices::boot_timer::{BootTimer, BOOT_TIMER_PORT};
use ember_devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use ember_devices::serial::{SerialInput, SerialPort, COM1_BASE, COM1_LEN};
use ember_devices::{Bus, BusError};
use ember_memory::GuestRam;
use ember_vcpu::{milestone, register_kick_signal, RunControl, Vcpu};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{SerialConfig, VmConfig};
use crate::devices::{setup_virtio_devices, DeviceError};
use crate::event_loop::EventLoop;
use crate::exit::{ExitLatch, ExitReason};
use crate::vm::Vm;

/// Highest vCPU count Ember builds (xAPIC IDs, one-byte MADT processor IDs).
pub const MAX_VCPUS: u8 = 254;

/// Errors from building a VM. Each names the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible to this user?)")]
    KvmUnavailable(kvm_ioctls::Error),
    /// A KVM capability Ember relies on is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM failed to {what}: {err}")]
    Kvm {
        /// What was attempted.
        what: &'static str,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// vCPU count out of range.
    #[error("invalid vCPU count {count}: must be between 1 and {max}")]
    VcpuCount {
        /// Requested.
        count: u8,
        /// Highest supported on this host.
        max: u8,
    },
    /// More memory than the host has.
    #[error("guest memory of {requested} MiB exceeds the host's {host} MiB of RAM")]
    MemoryExceedsHost {
        /// Requested MiB.
        requested: u64,
        /// Host MiB.
        host: u64,
    },
    /// Memory size rejected or not mappable.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A file (kernel, initrd, serial output) cannot be opened.
    #[error("cannot open {what} {path}: {err}")]
    Open {
        /// Which file.
        what: &'static str,
        /// Path given.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// Kernel or initrd loading failed.
    #[error("{path}: {err}")]
    Boot {
        /// The file involved.
        path: PathBuf,
        /// What went wrong.
        err: BootError,
    },
    /// Writing the boot information failed.
    #[error(transparent)]
    BootInfo(BootError),
    /// ACPI tables could not be built.
    #[error("cannot build ACPI tables: {0}")]
    Acpi(#[from] AcpiError),
    /// The MP table (CPUs and IO-APIC for kernels booted with `acpi=off`) could not be built.
    #[error("cannot build the MP table: {0}")]
    Mptable(#[from] MptableError),
    /// vCPU register setup failed.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// Device setup failed.
    #[error("cannot set up {what}: {err}")]
    Device {
        /// Which device.
        what: &'static str,
        /// Why.
        err: std::io::Error,
    },
    /// Two devices claim the same addresses.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Devices(#[from] DeviceError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |err| BuildError::Kvm { what, err }
}

fn device_err(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |err| BuildError::Device { what, err }
}

fn open(what: &'static str, path: &Path) -> Result<File, BuildError> {
    let file = File::open(path).map_err(|err| BuildError::Open {
        what,
        path: path.to_path_buf(),
        err,
    })?;
    match file.metadata() {
        Ok(m) if m.is_dir() => Err(BuildError::Open {
            what,
            path: path.to_path_buf(),
            err: std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a directory"),
        }),
        _ => Ok(file),
    }
}

/// Total host RAM in MiB.
fn host_ram_mib() -> u64 {
    // SAFETY: sysinfo only writes into the zeroed struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) >> 20
}

/// Builds a VM from `config`. Nothing runs until [`Vm::start`].
pub fn build(config: &VmConfig) -> Result<Vm, BuildError> {
    let build_start = ember_vcpu::monotonic_ns();
    milestone("build: start");
    let machine = &config.machine;
    let kvm = Kvm::new().map_err(BuildError::KvmUnavailable)?;
    for (cap, name) in [
        (Cap::Irqchip, "irqchip"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::UserMemory, "user memory"),
        (Cap::ImmediateExit, "immediate exit"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(BuildError::MissingCap(name));
        }
    }
    let max_vcpus = kvm.get_max_vcpus().min(usize::from(MAX_VCPUS)) as u8;
    if machine.vcpus == 0 || machine.vcpus > max_vcpus {
        return Err(BuildError::VcpuCount {
            count: machine.vcpus,
            max: max_vcpus,
        });
    }
    let host = host_ram_mib();
    if machine.mem_size_mib > host {
        return Err(BuildError::MemoryExceedsHost {
            requested: machine.mem_size_mib,
            host,
        });
    }
    milestone("build: /dev/kvm opened, capabilities checked");
    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("read supported CPUID"))?;
    milestone("build: supported CPUID read");
    let phys_bits = cpuid::phys_bits(&supported_cpuid).min(MAX_GUEST_PHYS.trailing_zeros() as u8);
    let mem_bytes = machine
        .mem_size_mib
        .checked_mul(1 << 20)
        .ok_or(MemoryError::TooLarge {
            size: machine.mem_size_mib,
            max: 1 << (phys_bits - 20),
        })?;
    let mut kernel_file = open("kernel", &config.boot.kernel)?;
    let mut initrd_file = config
        .boot
        .initrd
        .as_deref()
        .map(|p| open("initrd", p))
        .transpose()?;

    let vm_fd = kvm.create_vm().map_err(kvm_err("create the VM"))?;
    milestone("build: VM created");
    let memory = create_guest_memory(mem_bytes, phys_bits, machine.huge_pages)?;
    register_memory(&vm_fd, &memory)?;
    milestone("build: guest memory mapped and registered");
    vm_fd
        .set_tss_address(0xfffb_d000)
        .map_err(kvm_err("set the TSS address"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("create the interrupt controller"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
    milestone("build: irqchip and PIT created");

    let latch = Arc::new(ExitLatch::default());
    let (mut pio, mut events) = setup_platform_devices(latch.clone())?;
    setup_serial(&vm_fd, &config.serial, &mut pio, &mut events)?;
    if config.boot_timer {
        let timer = BootTimer::new(build_start, ember_vcpu::monotonic_ns);
        pio.insert(Arc::new(Mutex::new(timer)), BOOT_TIMER_PORT, 1)?;
    }
    let mut mmio = Bus::new();
    let devices = setup_virtio_devices(&vm_fd, &memory, config, &mut mmio, &mut events)?;
    milestone("build: devices set up");

    let rsdp = create_acpi_tables(
        &memory,
        &AcpiConfig {
            num_cpus: machine.vcpus,
            mmio_devices: if devices.in_dsdt {
                &devices.mmio_devices
            } else {
                &[]
            },
        },
    )?;
    setup_mptable(&memory, machine.vcpus)?;
    milestone("build: ACPI and MP tables written");
    let kernel = boot::load_kernel(&memory, &mut kernel_file).map_err(|err| BuildError::Boot {
        path: config.boot.kernel.clone(),
        err,
    })?;
    log::debug!(
        "kernel entry {:#x} ({:?})",
        kernel.entry.addr.0,
        kernel.entry.mode
    );
    let initrd =
        match (&mut initrd_file, &config.boot.initrd) {
            (Some(f), Some(path)) => Some(boot::load_initrd(&memory, &kernel, f).map_err(
                |err| BuildError::Boot {
                    path: path.clone(),
                    err,
                },
            )?),
            _ => None,
        };
    let cmdline = match devices.cmdline.as_str() {
        "" => config.boot.effective_cmdline().to_string(),
        extra => format!("{} {extra}", config.boot.effective_cmdline()),
    };
    log::debug!("kernel command line: {cmdline}");
    let info = BootInfo {
        cmdline: cmdline.as_bytes(),
        initrd,
        rsdp,
    };
    boot::write_boot_info(&memory, &kernel, &info).map_err(BuildError::BootInfo)?;
    milestone("build: kernel, initrd and boot information loaded");

    register_kick_signal().map_err(device_err("vCPU kick signal"))?;
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let mut vcpus = Vec::with_capacity(usize::from(machine.vcpus));
    for index in 0..machine.vcpus {
        let fd = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        let mut cpuid = supported_cpuid.clone();
        cpuid::normalize(
            &mut cpuid,
            u32::from(index),
            u32::from(machine.vcpus),
            machine.smt,
        );
        fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        regs::setup_common(&fd)?;
        if index == 0 {
            regs::setup_boot_vcpu(&fd, &memory, kernel.entry)?;
        }
        vcpus.push(Vcpu::new(usize::from(index), fd, pio.clone(), mmio.clone()));
    }
    milestone("build: vCPUs created and configured");
    Ok(Vm {
        memory,
        _vm_fd: vm_fd,
        pending: Mutex::new(vcpus),
        handles: Mutex::new(Vec::new()),
        control: Arc::new(RunControl::new(usize::from(machine.vcpus))),
        latch,
        events: Mutex::new(events),
    })
}

fn register_memory(vm_fd: &VmFd, memory: &GuestRam) -> Result<(), BuildError> {
    for (slot, region) in memory.iter().enumerate() {
        let mem_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `memory`, which the returned Vm keeps
        // for as long as the VM fd exists, and slots do not overlap.
        unsafe { vm_fd.set_user_memory_region(mem_region) }
            .map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}

/// The i8042 reset port and the ACPI power-off port, and the event loop that turns their
/// signals into exit reasons.
fn setup_platform_devices(latch: Arc<ExitLatch>) -> Result<(Bus, EventLoop), BuildError> {
    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(device_err("i8042"))?;
    let poweroff_evt = EventFd::new(EFD_NONBLOCK).map_err(device_err("ACPI power-off"))?;
    let guest_requests = vec![
        (
            reset_evt.try_clone().map_err(device_err("i8042"))?,
            ExitReason::Reset,
        ),
        (
            poweroff_evt
                .try_clone()
                .map_err(device_err("ACPI power-off"))?,
            ExitReason::PowerOff,
        ),
    ];
    let events = EventLoop::new(guest_requests, latch).map_err(device_err("event loop"))?;
    let mut pio = Bus::new();
    pio.insert(
        Arc::new(Mutex::new(I8042::new(reset_evt))),
        I8042_BASE,
        I8042_LEN,
    )?;
    let acpi_pm = AcpiPm::new(ACPI_S5_SLEEP_TYPE, poweroff_evt);
    pio.insert(
        Arc::new(Mutex::new(acpi_pm)),
        u64::from(ACPI_SLEEP_CONTROL_PORT),
        ACPI_PM_LEN,
    )?;
    Ok((pio, events))
}

/// epoll cannot watch a regular file, so when stdin is one (`ember run < commands.txt`), a
/// thread copies it into a pipe the event loop can watch; `None` when stdin is pollable as is.
/// The pipe's capacity bounds how far the copy runs ahead of the guest.
fn stdin_as_pipe() -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let stdin = std::io::stdin();
    let Ok(meta) = std::fs::File::from(stdin.as_fd().try_clone_to_owned()?).metadata() else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut source = std::fs::File::from(stdin.as_fd().try_clone_to_owned()?);
    let mut sink = std::fs::File::from(write);
    std::thread::Builder::new()
        .name("ember-stdin".into())
        .spawn(move || {
            // Ends at EOF, or with EPIPE once the VM is gone and the read end closed.
            let _ = std::io::copy(&mut source, &mut sink);
        })?;
    Ok(Some(read))
}

fn setup_serial(
    vm_fd: &VmFd,
    config: &SerialConfig,
    pio: &mut Bus,
    events: &mut EventLoop,
) -> Result<(), BuildError> {
    let out: Box<dyn Write + Send> = match config {
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::File(path) => {
            Box::new(File::create(path).map_err(|err| BuildError::Open {
                what: "serial output file",
                path: path.clone(),
                err,
            })?)
        }
        SerialConfig::None => Box::new(std::io::sink()),
    };
    let irq = EventFd::new(EFD_NONBLOCK).map_err(device_err("serial"))?;
    vm_fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(kvm_err("wire the serial interrupt"))?;
    let (port, drained) = SerialPort::new(irq, out).map_err(device_err("serial"))?;
    let port = Arc::new(Mutex::new(port));
    pio.insert(port.clone(), COM1_BASE, COM1_LEN)?;
    if *config == SerialConfig::Stdio {
        let pump = match stdin_as_pipe().map_err(device_err("console input"))? {
            Some(pipe) => SerialInput::with_owned_input(port, pipe, drained),
            None => SerialInput::new(port, libc::STDIN_FILENO, drained),
        };
        events.add(Arc::new(Mutex::new(pump)));
    }
    Ok(())
}
