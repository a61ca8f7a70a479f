//! Rate limiting for log lines a guest can trigger at will.

use std::time::{Duration, Instant};

/// Lets through up to `burst` events per `period`, and reports how many were suppressed.
/// A hostile guest that sends malformed requests in a loop gets a few log lines per period
/// instead of filling the host's disk.
#[derive(Debug)]
pub struct LogLimiter {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), 10)
    }
}

impl LogLimiter {
    /// A limiter allowing `burst` events per `period`.
    pub const fn new(period: Duration, burst: u32) -> Self {
        Self {
            period,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Records one event. Returns `Some(n)` when it may be logged, `n` being the number of
    /// events suppressed since the last one allowed through; `None` when it must be dropped.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < self.period => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Logs a warning through a [`LogLimiter`], mentioning suppressed repeats.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.allow() {
            if suppressed > 0 {
                log::warn!("{} ({} similar messages suppressed)", format_args!($($arg)+), suppressed);
            } else {
                log::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_then_reports() {
        let mut l = LogLimiter::new(Duration::from_millis(50), 2);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow(), Some(2));
    }
}
