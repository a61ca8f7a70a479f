//! A minimal `log` backend writing one line per record to stderr.

use std::io::Write;

struct StderrLogger {
    /// End lines with CR LF, so lines stay readable while the terminal is in raw mode.
    crlf: bool,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let end = if self.crlf { "\r\n" } else { "\n" };
            let _ = write!(
                std::io::stderr().lock(),
                "ember: [{}] {}{end}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`.
pub fn init(level: log::LevelFilter) {
    // SAFETY: isatty only inspects the file descriptor.
    let crlf = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
    if log::set_boxed_logger(Box::new(StderrLogger { crlf })).is_ok() {
        log::set_max_level(level);
        ember_vcpu::milestone("logger ready (command line parsed)");
    }
}
