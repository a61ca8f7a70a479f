//! The vCPU run loop.

use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::thread::JoinHandle;

use ember_devices::Bus;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::control::{RunControl, RunState};
use crate::kick::{kick_signal, set_immediate_exit_ptr};

/// Why a vCPU left its run loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The VMM asked it to stop.
    Stopped,
    /// The guest asked for a reset through KVM (PSCI-style system event).
    Reset,
    /// The guest powered off through KVM.
    PowerOff,
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// The guest reported a crash.
    Crash,
    /// `KVM_EXIT_INTERNAL_ERROR`, with KVM's sub-error code.
    InternalError(u32),
    /// `KVM_EXIT_FAIL_ENTRY`, with the hardware reason.
    FailEntry(u64),
    /// An exit Ember does not handle.
    UnexpectedExit(String),
    /// `KVM_RUN` itself failed.
    RunFailed(String),
}

/// A vCPU ready to run: its KVM handle and the buses its exits go to.
pub struct Vcpu {
    index: usize,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// Forces the thread out of `KVM_RUN` so it re-reads the run state.
    pub fn kick(&self) {
        let tid = self.thread.as_pthread_t();
        // SAFETY: `tid` is a thread we spawned and have not joined yet; the kick signal has a
        // handler installed by `register_kick_signal` before any vCPU started.
        let ret = unsafe { libc::pthread_kill(tid, kick_signal()) };
        if ret != 0 && ret != libc::ESRCH {
            log::warn!(
                "cannot kick vCPU thread: {}",
                std::io::Error::from_raw_os_error(ret)
            );
        }
    }

    /// Waits for the thread to end.
    pub fn join(self) {
        if self.thread.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

impl Vcpu {
    /// Wraps a configured vCPU.
    pub fn new(index: usize, fd: VcpuFd, pio: Arc<Bus>, mmio: Arc<Bus>) -> Self {
        Self {
            index,
            fd,
            pio,
            mmio,
        }
    }

    /// Starts the vCPU thread. `on_stop` is called once, from the vCPU thread, when the loop
    /// ends for any reason other than a VMM stop.
    pub fn start<F>(self, control: Arc<RunControl>, on_stop: F) -> std::io::Result<VcpuHandle>
    where
        F: Fn(usize, VcpuStop) + Send + 'static,
    {
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || {
                let index = self.index;
                let reason = self.run(&control);
                control.retire();
                if reason != VcpuStop::Stopped {
                    on_stop(index, reason);
                }
            })?;
        Ok(VcpuHandle { thread })
    }

    fn run(mut self, control: &RunControl) -> VcpuStop {
        let ptr = std::ptr::addr_of_mut!(self.fd.get_kvm_run().immediate_exit);
        set_immediate_exit_ptr(ptr);
        if log::log_enabled!(target: "ember::startup", log::Level::Debug) {
            crate::milestone(&format!("vCPU {}: first KVM_RUN", self.index));
        }
        let reason = loop {
            match control.state() {
                RunState::Running => {}
                RunState::Paused => {
                    if control.park() == RunState::Stopped {
                        break VcpuStop::Stopped;
                    }
                    continue;
                }
                RunState::Stopped => {
                    // Where the guest was when the VMM stopped it: what a post-mortem of a
                    // hung guest needs first.
                    self.log_state("stopped by the VMM");
                    break VcpuStop::Stopped;
                }
            }
            if let Some(stop) = self.run_once() {
                break stop;
            }
        };
        set_immediate_exit_ptr(std::ptr::null_mut());
        reason
    }

    /// One `KVM_RUN`; `Some` when the vCPU must stop.
    fn run_once(&mut self) -> Option<VcpuStop> {
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.pio.write(u64::from(port), data) {
                    log::trace!("unhandled port write {port:#x}");
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    log::debug!("unhandled MMIO read at {addr:#x}");
                    data.fill(0);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    log::debug!("unhandled MMIO write at {addr:#x}");
                }
                None
            }
            Ok(VcpuExit::Hlt) => Some(VcpuStop::UnexpectedExit(
                "HLT with no in-kernel irqchip".into(),
            )),
            Ok(VcpuExit::Shutdown) => {
                self.log_state("triple fault");
                Some(VcpuStop::TripleFault)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::PowerOff,
                KVM_SYSTEM_EVENT_CRASH => VcpuStop::Crash,
                other => VcpuStop::UnexpectedExit(format!("system event {other}")),
            }),
            Ok(VcpuExit::InternalError) => {
                self.log_state("KVM internal error");
                let suberror = self.internal_suberror();
                Some(VcpuStop::InternalError(suberror))
            }
            Ok(VcpuExit::FailEntry(reason, _)) => Some(VcpuStop::FailEntry(reason)),
            Ok(VcpuExit::Intr) => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Ok(other) => Some(VcpuStop::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VcpuStop::RunFailed(e.to_string())),
        }
    }

    /// Logs the vCPU's registers at debug level, for post-mortems of guest crashes.
    fn log_state(&self, what: &str) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => log::debug!(
                "vCPU {} {what}: rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} gs.base={:#x} idt={:#x}/{:#x}",
                self.index, r.rip, r.rsp, r.rflags, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.gs.base, s.idt.base, s.idt.limit
            ),
            _ => log::debug!("vCPU {} {what}: registers unavailable", self.index),
        }
    }

    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: on KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member of the union.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }
}
