//! COM1: a 16550A UART (vm-superio) whose output goes to any writer and whose input is pumped
//! from a file descriptor by the event loop, with backpressure when the guest's FIFO is full.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::{serial::SerialEvents, Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

/// COM1 base port.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of UART registers.
pub const COM1_LEN: u64 = 8;

/// Raises the UART interrupt by writing an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the input pump that the guest emptied the receive FIFO.
pub struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {
        log::debug!("serial: lost an output byte");
    }
    fn in_buffer_empty(&self) {
        // Ignore errors: the eventfd counter cannot overflow with one write per drain.
        let _ = self.0.write(1);
    }
}

type Uart = Serial<IrqTrigger, InputDrained, Box<dyn Write + Send>>;

/// The serial port as a bus device.
pub struct SerialPort {
    uart: Uart,
}

impl SerialPort {
    /// A port writing guest output to `out` and raising `irq` for interrupts. Returns the
    /// port and an eventfd signalled whenever the guest empties the input FIFO.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> std::io::Result<(Self, EventFd)> {
        let drained = EventFd::new(EFD_NONBLOCK)?;
        let uart = Serial::with_events(IrqTrigger(irq), InputDrained(drained.try_clone()?), out);
        Ok((Self { uart }, drained))
    }

    /// Queues as many input bytes as the FIFO takes; returns how many were queued.
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: dropping input: {e:?}");
                room
            }
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), &mut *data) {
            *byte = self.uart.read(off);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(off, *byte) {
                log::debug!("serial: write failed: {e:?}");
            }
        }
    }
}

const INPUT: u32 = 0;
const DRAINED: u32 = 1;

/// Event-loop glue: reads the input fd and feeds the UART, pausing while its FIFO is full.
pub struct SerialInput {
    port: Arc<Mutex<SerialPort>>,
    input: RawFd,
    drained: EventFd,
    pending: Vec<u8>,
    input_registered: bool,
    /// Keeps `input` open when the pump owns it.
    _owned: Option<OwnedFd>,
}

impl SerialInput {
    /// Pumps bytes from `input` (which must stay open while the event loop runs) into `port`.
    pub fn new(port: Arc<Mutex<SerialPort>>, input: RawFd, drained: EventFd) -> Self {
        Self {
            port,
            input,
            drained,
            pending: Vec::with_capacity(64),
            input_registered: false,
            _owned: None,
        }
    }

    /// Like [`SerialInput::new`], taking ownership of the input fd.
    pub fn with_owned_input(
        port: Arc<Mutex<SerialPort>>,
        input: OwnedFd,
        drained: EventFd,
    ) -> Self {
        let mut pump = Self::new(port, input.as_raw_fd(), drained);
        pump._owned = Some(input);
        pump
    }

    fn push_pending(&mut self) {
        let mut port = self.port.lock().unwrap_or_else(|p| p.into_inner());
        let n = port.enqueue(&self.pending);
        self.pending.drain(..n);
    }

    fn set_input_interest(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.input_registered {
            return;
        }
        let ev = Events::with_data_raw(self.input, INPUT, EventSet::IN);
        let res = if on { ops.add(ev) } else { ops.remove(ev) };
        match res {
            Ok(()) => self.input_registered = on,
            Err(e) => log::debug!("serial: input fd not pollable, no console input: {e:?}"),
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: `buf` is a valid writable buffer of the given length; `input` is an open fd.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            n if n > 0 => {
                self.pending.extend_from_slice(&buf[..n as usize]);
                self.push_pending();
                if !self.pending.is_empty() {
                    self.set_input_interest(ops, false);
                }
            }
            0 => self.set_input_interest(ops, false),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::WouldBlock
                    && err.kind() != std::io::ErrorKind::Interrupted
                {
                    log::debug!("serial: input closed: {err}");
                    self.set_input_interest(ops, false);
                }
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.drained, DRAINED, EventSet::IN)) {
            log::error!("serial: cannot watch input FIFO: {e:?}");
        }
        self.set_input_interest(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            INPUT => {
                if events.event_set().intersects(EventSet::IN) {
                    self.read_input(ops);
                } else {
                    self.set_input_interest(ops, false);
                }
            }
            DRAINED => {
                let _ = self.drained.read();
                self.push_pending();
                if self.pending.is_empty() {
                    self.set_input_interest(ops, true);
                }
            }
            _ => {}
        }
    }
}

impl AsRawFd for SerialInput {
    fn as_raw_fd(&self) -> RawFd {
        self.input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_writer_and_input_fifo_backpressures() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let (mut port, drained) =
            SerialPort::new(irq.try_clone().unwrap(), Box::new(sink.clone())).unwrap();
        for b in b"hi" {
            port.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        let input = vec![b'x'; 100];
        assert_eq!(port.enqueue(&input), 64, "FIFO holds 64 bytes");
        assert_eq!(port.enqueue(&input), 0);
        let mut byte = [0u8];
        for _ in 0..64 {
            port.read(0, &mut byte);
            assert_eq!(byte[0], b'x');
        }
        assert_eq!(drained.read().unwrap(), 1, "draining the FIFO is signalled");
    }
}
