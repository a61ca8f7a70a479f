//! Kicking a vCPU thread out of `KVM_RUN`: a real-time signal whose handler sets the thread's
//! `kvm_run.immediate_exit`, so a signal that lands just before `KVM_RUN` is not lost.

use std::cell::Cell;
use std::sync::Once;

use vmm_sys_util::signal::register_signal_handler;

thread_local! {
    /// The `immediate_exit` byte of this thread's `kvm_run`, null on non-vCPU threads.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with` because the thread may be exiting; a const-initialised Cell needs no lazy init.
    let _ = IMMEDIATE_EXIT.try_with(|ptr| {
        let p = ptr.get();
        if !p.is_null() {
            // SAFETY: `p` points into this thread's kvm_run mapping, set by `set_immediate_exit_ptr`
            // and cleared before that mapping can go away; a byte store is async-signal-safe.
            unsafe { p.write_volatile(1) };
        }
    });
}

/// Installs the kick signal handler (once per process). The VMM calls this before starting
/// vCPUs; embedders must not use `SIGRTMIN` for anything else.
pub fn register_kick_signal() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Points this thread's kick target at `ptr` (null to clear).
pub(crate) fn set_immediate_exit_ptr(ptr: *mut u8) {
    IMMEDIATE_EXIT.with(|c| c.set(ptr));
}
