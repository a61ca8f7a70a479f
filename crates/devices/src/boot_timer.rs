//! The boot timer: a one-byte I/O port the guest writes [`BOOT_DONE`] to when it reaches the
//! point a benchmark cares about (its `/init`, typically), and the VMM logs when that
//! happened, on the host's `CLOCK_MONOTONIC`. Present only when asked for (`--boot-timer`).
//!
//! Firecracker's equivalent is an MMIO byte; Ember uses a port so a guest can signal it with
//! `/dev/port` and no helper binary:
//! `printf '\173' | dd of=/dev/port bs=1 seek=1008 count=1` (port 0x3f0, value 123).

/// The port.
pub const BOOT_TIMER_PORT: u64 = 0x3f0;
/// The value that marks the moment.
pub const BOOT_DONE: u8 = 123;

/// The boot timer device.
pub struct BootTimer {
    start_ns: u64,
    now: fn() -> u64,
}

impl BootTimer {
    /// A timer measuring from `start_ns` (a `CLOCK_MONOTONIC` time in nanoseconds, usually
    /// when the VM build started) with the clock `now`.
    pub fn new(start_ns: u64, now: fn() -> u64) -> Self {
        Self { start_ns, now }
    }

    /// The message for a signal at `now_ns`.
    fn message(&self, now_ns: u64) -> String {
        let ms = now_ns.saturating_sub(self.start_ns) as f64 / 1e6;
        format!(
            "boot timer: guest signalled at t={now_ns} ns, {ms:.1} ms after the VM build started"
        )
    }
}

impl crate::BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data == [BOOT_DONE] {
            log::info!(target: "ember::boot_timer", "{}", self.message((self.now)()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_time_since_start() {
        let t = BootTimer::new(1_000_000, || 3_500_000);
        assert_eq!(
            t.message(3_500_000),
            "boot timer: guest signalled at t=3500000 ns, 2.5 ms after the VM build started"
        );
    }
}
