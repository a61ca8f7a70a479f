//! Ember: a KVM-based microVM monitor.
//!
//! Build a [`VmConfig`] (by hand, from the CLI, or from a Firecracker-schema JSON file with
//! [`firecracker::load`]), turn it into a [`Vm`] with [`build`], then [`Vm::start`] it and
//! [`Vm::wait`] for the [`ExitReason`]. Several VMs can live in one process.
//!
//! ```no_run
//! let mut config = ember::VmConfig::new("vmlinux");
//! config.machine.vcpus = 2;
//! let vm = ember::build(&config)?;
//! vm.start()?;
//! println!("{}", vm.wait());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
pub mod config;
mod devices;
mod event_loop;
mod exit;
pub mod firecracker;
mod vm;

pub use builder::{build, BuildError, MAX_VCPUS};
pub use config::{
    BootConfig, DeviceDiscovery, DriveConfig, EntropyConfig, MacAddr, MachineConfig, NetConfig,
    SerialConfig, VmConfig, VsockConfig,
};
pub use devices::DeviceError;
pub use exit::ExitReason;
pub use vm::{Vm, VmError, VmState};
