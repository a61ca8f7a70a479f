//! Hardware-reduced ACPI sleep registers: the guest powers off by writing SLP_TYP = S5 with
//! SLP_EN to the sleep control port (Linux does this for `poweroff`).

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Length of the port range: sleep control, then sleep status.
pub const ACPI_PM_LEN: u64 = 2;
const SLEEP_CONTROL: u64 = 0;
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// Signals `poweroff_evt` when the guest enters the soft-off sleep type.
pub struct AcpiPm {
    s5_type: u8,
    poweroff_evt: EventFd,
}

impl AcpiPm {
    /// A device for which `s5_type` (the DSDT's `_S5_` value) means power off.
    pub fn new(s5_type: u8, poweroff_evt: EventFd) -> Self {
        Self {
            s5_type,
            poweroff_evt,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if offset == SLEEP_CONTROL && value & SLP_EN != 0 && sleep_type == self.s5_type {
            if let Err(e) = self.poweroff_evt.write(1) {
                log::error!("ACPI: cannot signal power-off: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn only_s5_with_slp_en_powers_off() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut pm = AcpiPm::new(5, evt.try_clone().unwrap());
        pm.write(0, &[5 << 2]); // no SLP_EN
        pm.write(0, &[(3 << 2) | SLP_EN]); // S3
        pm.write(1, &[(5 << 2) | SLP_EN]); // status register
        pm.write(0, &[(5 << 2) | SLP_EN, 0]); // wrong width
        assert!(evt.read().is_err());
        pm.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
