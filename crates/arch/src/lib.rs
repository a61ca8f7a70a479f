//! x86_64 platform setup for Ember: guest memory layout, kernel loading and boot
//! protocols (PVH and the Linux 64-bit boot protocol), initial vCPU state, ACPI tables, and
//! the MP table for guests without ACPI.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod regs;
