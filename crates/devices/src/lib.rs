//! Legacy platform devices for Ember (16550 serial console, i8042 reset controller, ACPI
//! power-off port) and the
//! address-range bus that routes vCPU port I/O and MMIO exits to devices.

pub mod acpi_pm;
pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError};
