//! How a VM ended, and the latch that records the first reason.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ember_vcpu::VcpuStop;

/// Why a VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest rebooted (i8042 reset, `reboot=k`, or a KVM reset event).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// [`crate::Vm::stop`] was called.
    Stopped,
    /// A vCPU triple-faulted.
    TripleFault {
        /// The vCPU.
        vcpu: usize,
    },
    /// The guest reported a crash.
    Crash {
        /// The vCPU.
        vcpu: usize,
    },
    /// KVM could not run a vCPU (internal error, failed entry, unexpected exit).
    VcpuError {
        /// The vCPU.
        vcpu: usize,
        /// What KVM reported.
        message: String,
    },
}

impl ExitReason {
    /// Whether the guest ended on its own terms (reboot or power-off).
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::Reset | ExitReason::PowerOff)
    }

    pub(crate) fn from_vcpu(vcpu: usize, stop: VcpuStop) -> Self {
        let error = |message: String| ExitReason::VcpuError { vcpu, message };
        match stop {
            VcpuStop::Stopped => ExitReason::Stopped,
            VcpuStop::Reset => ExitReason::Reset,
            VcpuStop::PowerOff => ExitReason::PowerOff,
            VcpuStop::TripleFault => ExitReason::TripleFault { vcpu },
            VcpuStop::Crash => ExitReason::Crash { vcpu },
            VcpuStop::InternalError(sub) => error(format!("KVM internal error (suberror {sub})")),
            VcpuStop::FailEntry(reason) => error(format!(
                "KVM failed to enter the guest (hardware reason {reason:#x})"
            )),
            VcpuStop::UnexpectedExit(what) => error(format!("unexpected exit: {what}")),
            VcpuStop::RunFailed(err) => error(format!("KVM_RUN failed: {err}")),
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest rebooted"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Stopped => write!(f, "VM stopped"),
            ExitReason::TripleFault { vcpu } => write!(f, "guest triple fault on vCPU {vcpu}"),
            ExitReason::Crash { vcpu } => write!(f, "guest crashed on vCPU {vcpu}"),
            ExitReason::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu} failed: {message}"),
        }
    }
}

/// Records the first exit reason and wakes waiters.
#[derive(Default)]
pub(crate) struct ExitLatch {
    reason: Mutex<Option<ExitReason>>,
    set: Condvar,
}

impl ExitLatch {
    /// Records `reason` unless one is already recorded.
    pub fn set(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            ember_vcpu::milestone("exit: reason recorded");
            log::info!("{reason}");
            *r = Some(reason);
            self.set.notify_all();
        }
    }

    /// The recorded reason, if any.
    pub fn get(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for a reason, up to `timeout` (forever when `None`).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let r = match timeout {
            None => self
                .set
                .wait_while(r, |r| r.is_none())
                .unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.set
                    .wait_timeout_while(r, t, |r| r.is_none())
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        r.clone()
    }
}
