//! Startup milestones: one debug-level log line per step of building and starting a VM,
//! carrying the `CLOCK_MONOTONIC` time in nanoseconds, so that a harness that started the
//! process (`resources/bench/startup.sh`) can place each step on its own clock.
//!
//! Free when debug logging is off: `log::debug!` evaluates its arguments (including the
//! clock read) only when the record is enabled.

/// The `CLOCK_MONOTONIC` time in nanoseconds (the clock `clock_gettime` and
/// `std::time::Instant` use on Linux).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Logs `what` as a startup milestone: `startup: t=<ns> <what>` at debug level, target
/// `ember::startup`.
#[inline]
pub fn milestone(what: &str) {
    log::debug!(target: "ember::startup", "startup: t={} {what}", monotonic_ns());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_monotonic_and_matches_instant_scale() {
        let a = monotonic_ns();
        let start = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b > a);
        assert!(b - a >= 2_000_000);
        assert!(u128::from(b - a) <= start.elapsed().as_nanos() + 1_000_000);
        milestone("test");
    }
}
