//! The `Vm` handle: a built VM that can be started, paused, resumed, stopped and waited on,
//! without taking over the embedding process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_memory::GuestRam;
use ember_vcpu::{milestone, RunControl, RunState, Vcpu, VcpuHandle};
use kvm_ioctls::VmFd;

use crate::event_loop::EventLoop;
use crate::exit::{ExitLatch, ExitReason};

/// Errors from VM lifecycle operations.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `start` was called twice.
    #[error("the VM was already started")]
    AlreadyStarted,
    /// The VM has not been started.
    #[error("the VM is not running")]
    NotRunning,
    /// A thread could not be created.
    #[error("cannot start VM thread: {0}")]
    Thread(std::io::Error),
    /// vCPUs did not park in time.
    #[error("vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
}

/// Lifecycle state of a [`Vm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, not started.
    Created,
    /// vCPUs are running.
    Running,
    /// vCPUs are parked.
    Paused,
    /// The VM ended; see [`Vm::exit_reason`].
    Exited,
}

/// A running (or runnable) microVM. Dropping it stops it.
pub struct Vm {
    pub(crate) memory: GuestRam,
    pub(crate) _vm_fd: VmFd,
    pub(crate) pending: Mutex<Vec<Vcpu>>,
    pub(crate) handles: Mutex<Vec<VcpuHandle>>,
    pub(crate) control: Arc<RunControl>,
    pub(crate) latch: Arc<ExitLatch>,
    pub(crate) events: Mutex<EventLoop>,
}

const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Vm {
    /// Starts all vCPU threads and the event loop.
    ///
    /// vCPUs go first, so the guest's first `KVM_RUN` does not wait for the event loop's
    /// thread to be created: anything the guest signals before the loop runs (a reset, a
    /// queue notification) stays pending in its eventfd until the loop reads it.
    pub fn start(&self) -> Result<(), VmError> {
        let vcpus = std::mem::take(&mut *lock(&self.pending));
        if vcpus.is_empty() {
            return Err(VmError::AlreadyStarted);
        }
        milestone("start: begin");
        let mut handles = lock(&self.handles);
        for vcpu in vcpus {
            let latch = self.latch.clone();
            let started = vcpu.start(self.control.clone(), move |index, stop| {
                latch.set(ExitReason::from_vcpu(index, stop));
            });
            match started {
                Ok(handle) => handles.push(handle),
                Err(e) => return Err(self.abort_start(handles, e)),
            }
        }
        milestone("start: vCPU threads spawned");
        // (Not `if let Err(e) = lock(..).start()`: the guard would live through the branch,
        // and teardown locks the event loop again.)
        let started = lock(&self.events).start();
        if let Err(e) = started {
            return Err(self.abort_start(handles, e));
        }
        milestone("start: event loop thread spawned");
        Ok(())
    }

    /// Stops whatever `start` had started when it failed with `err`.
    fn abort_start(
        &self,
        handles: std::sync::MutexGuard<'_, Vec<VcpuHandle>>,
        err: std::io::Error,
    ) -> VmError {
        drop(handles);
        self.latch.set(ExitReason::Stopped);
        self.teardown();
        VmError::Thread(err)
    }

    /// The current lifecycle state.
    pub fn state(&self) -> VmState {
        if self.latch.get().is_some() {
            return VmState::Exited;
        }
        if !lock(&self.pending).is_empty() {
            return VmState::Created;
        }
        match self.control.state() {
            RunState::Paused => VmState::Paused,
            RunState::Running => VmState::Running,
            RunState::Stopped => VmState::Exited,
        }
    }

    /// Parks all vCPUs outside `KVM_RUN`; returns once all are parked.
    pub fn pause(&self) -> Result<(), VmError> {
        if self.state() != VmState::Running {
            return Err(VmError::NotRunning);
        }
        self.control.set(RunState::Paused);
        self.kick_all();
        if self.control.wait_all_parked(PAUSE_TIMEOUT) {
            Ok(())
        } else {
            Err(VmError::PauseTimeout(PAUSE_TIMEOUT))
        }
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) -> Result<(), VmError> {
        if self.state() != VmState::Paused {
            return Err(VmError::NotRunning);
        }
        self.control.set(RunState::Running);
        Ok(())
    }

    /// Stops the VM (if it still runs) and releases its threads. Idempotent.
    pub fn stop(&self) {
        self.latch.set(ExitReason::Stopped);
        self.teardown();
    }

    /// Blocks until the VM ends, then releases its threads.
    pub fn wait(&self) -> ExitReason {
        let reason = self.latch.wait(None).unwrap_or(ExitReason::Stopped);
        milestone("wait: woken");
        self.teardown();
        milestone("wait: threads joined");
        reason
    }

    /// Like [`Vm::wait`] with a timeout; `None` if the VM is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        let reason = self.latch.wait(Some(timeout))?;
        self.teardown();
        Some(reason)
    }

    /// Why the VM ended, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.latch.get()
    }

    /// Guest memory, for embedders that inspect or seed it.
    pub fn memory(&self) -> &GuestRam {
        &self.memory
    }

    fn kick_all(&self) {
        for h in lock(&self.handles).iter() {
            h.kick();
        }
    }

    fn teardown(&self) {
        self.control.set(RunState::Stopped);
        let handles = std::mem::take(&mut *lock(&self.handles));
        for h in &handles {
            h.kick();
        }
        for h in handles {
            h.join();
        }
        lock(&self.events).stop();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.latch.set(ExitReason::Stopped);
        self.teardown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
