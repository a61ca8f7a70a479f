//! The run state shared by the VMM and all vCPU threads.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// What the VMM wants the vCPUs to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Run the guest.
    Running,
    /// Park outside `KVM_RUN` until resumed.
    Paused,
    /// Leave the run loop for good.
    Stopped,
}

struct Inner {
    state: RunState,
    /// vCPU threads currently parked (or gone), so the VMM can wait for a full pause.
    parked: usize,
}

/// Shared run state with a condition variable for parking.
pub struct RunControl {
    inner: Mutex<Inner>,
    changed: Condvar,
    vcpus: usize,
}

impl RunControl {
    /// Control for `vcpus` threads, initially running.
    pub fn new(vcpus: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: RunState::Running,
                parked: 0,
            }),
            changed: Condvar::new(),
            vcpus,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The requested state.
    pub fn state(&self) -> RunState {
        self.lock().state
    }

    /// Requests `state`; returns the previous one. `Stopped` is final.
    pub fn set(&self, state: RunState) -> RunState {
        let mut inner = self.lock();
        let old = inner.state;
        if old != RunState::Stopped {
            inner.state = state;
        }
        self.changed.notify_all();
        old
    }

    /// Called by a vCPU thread that saw `Paused`: parks until the state changes. Returns the
    /// new state.
    pub fn park(&self) -> RunState {
        let mut inner = self.lock();
        inner.parked += 1;
        self.changed.notify_all();
        while inner.state == RunState::Paused {
            inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        inner.parked -= 1;
        inner.state
    }

    /// Called by a vCPU thread when it exits its loop for good.
    pub fn retire(&self) {
        let mut inner = self.lock();
        inner.parked += 1;
        self.changed.notify_all();
    }

    /// Waits until every vCPU is parked or gone, or `timeout` passes. Returns whether all are.
    pub fn wait_all_parked(&self, timeout: Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| {
                i.parked < self.vcpus && i.state == RunState::Paused
            })
            .unwrap_or_else(|p| p.into_inner());
        inner.parked >= self.vcpus
    }
}
