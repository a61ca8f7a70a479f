//! vCPU threads for Ember. Each vCPU runs `KVM_RUN` on its own thread, routes port I/O and
//! MMIO exits to the device buses, and reports why it stopped. A shared [`RunControl`] lets
//! the VMM pause, resume and stop all vCPUs; threads are kicked out of `KVM_RUN` with a
//! real-time signal that sets `immediate_exit`, so a kick can never be lost.

mod control;
mod kick;
mod milestone;
mod run;

pub use control::{RunControl, RunState};
pub use kick::register_kick_signal;
pub use milestone::{milestone, monotonic_ns};
pub use run::{Vcpu, VcpuHandle, VcpuStop};
