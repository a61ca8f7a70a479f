//! Puts the controlling terminal in raw mode while the guest owns the console, and restores
//! it on every exit path (normal return, error, signal, panic).

use std::sync::Mutex;

static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Restores the terminal when dropped.
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; `None` otherwise.
    pub fn enter() -> Option<Self> {
        // SAFETY: isatty only inspects the file descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // Like cfmakeraw, but keep output post-processing so guest "\n" still returns the carriage
        // the way the guest's own tty layer expects (it sends "\r\n" already).
        raw.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        raw.c_cflag = (raw.c_cflag & !(libc::CSIZE | libc::PARENB)) | libc::CS8;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        // SAFETY: `raw` is a valid termios derived from the current settings.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) };
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Some(RawTerminal(()))
    }
}

/// Restores the saved terminal settings, if any. Safe to call more than once.
pub fn restore() {
    if let Some(saved) = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take() {
        // SAFETY: `saved` came from tcgetattr on the same fd.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}
