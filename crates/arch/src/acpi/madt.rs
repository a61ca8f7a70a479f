//! The MADT ("APIC" table): local APICs, the IO-APIC and how LINT1 is wired.
//!
//! Built on `acpi_tables::sdt::Sdt` rather than `acpi_tables::madt::MADT` because the latter
//! cannot set the MADT flags (PCAT_COMPAT). Local APIC and IO-APIC entries use the
//! `acpi_tables` types; the NMI and x2APIC entries, which it lacks, are laid out here.
//!
//! No Interrupt Source Override is emitted, deliberately. KVM's default GSI routing (installed
//! by KVM_CREATE_IRQCHIP) wires GSI n to IO-APIC pin n, and the in-kernel PIT raises GSI 0,
//! so ISA IRQ n *is* GSI n: exactly the ACPI default when no override exists. The classic
//! "IRQ0 -> GSI2" override describes chipsets (and QEMU's custom routing) where the PIT
//! reaches pin 2; declaring it here would point the guest at a pin nothing drives. ISA IRQs
//! keep their bus default, edge-triggered and active high. On Linux with a hardware-reduced
//! FADT none of this is even consulted for legacy IRQs (there are none); devices get their
//! trigger and polarity from the DSDT `_CRS`.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
pub(super) use crate::layout::IOAPIC_PINS;
use crate::layout::{APIC_ADDR, IOAPIC_ADDR};

/// MADT revision of ACPI 6.3 and later.
const MADT_REVISION: u8 = 5;
/// Header (36 bytes) plus Local Interrupt Controller Address and Flags.
const MADT_HEADER_LEN: u32 = 44;
/// MADT flag: the system also has a PC-AT dual 8259, which the OS must mask when it uses the
/// APICs. True with KVM's in-kernel irqchip, which always includes the PIC.
const PCAT_COMPAT: u32 = 1;

/// IO-APIC ID; matches the reset value of KVM's IO-APIC ID register.
const IOAPIC_ID: u8 = 0;
/// xAPIC IDs stop at 254 (0xff is the broadcast ID); from 255 on a CPU needs an x2APIC entry.
const MAX_XAPIC_ID: u32 = 254;

const TYPE_LOCAL_APIC_NMI: u8 = 4;
const TYPE_LOCAL_X2APIC: u8 = 9;
const TYPE_LOCAL_X2APIC_NMI: u8 = 0xa;
/// Local APIC flags: the processor is enabled.
const LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags "conforms to the bus": for NMI that is edge-triggered, active high.
const INTI_CONFORMING: u16 = 0;
/// Processor UID meaning "all processors" in a Local APIC NMI entry.
const ALL_CPUS_UID: u8 = 0xff;
/// Processor UID meaning "all processors" in a Local x2APIC NMI entry.
const ALL_CPUS_UID_X2: u32 = u32::MAX;
/// The local APIC input KVM (like real hardware) wires NMI to.
const NMI_LINT: u8 = 1;

/// Builds the MADT for `num_cpus` vCPUs with APIC IDs (and ACPI processor UIDs)
/// `0..num_cpus`, all enabled.
///
/// CPUs with IDs up to 254 get Processor Local APIC entries, later ones Local x2APIC entries
/// (the public API caps CPUs at 255, so only the former occur today). Then come one IO-APIC
/// (ID 0 at `IOAPIC_ADDR`, GSIs 0..=23) and the LINT1 NMI entries.
pub(super) fn build(num_cpus: u32) -> Vec<u8> {
    let mut entries = Vec::new();
    for id in 0..num_cpus {
        match u8::try_from(id) {
            Ok(id8) if id <= MAX_XAPIC_ID => {
                let lapic = ProcessorLocalApic::new(id8, id8, EnabledStatus::Enabled);
                lapic.to_aml_bytes(&mut entries);
            }
            _ => entries.extend_from_slice(&local_x2apic(id)),
        }
    }
    IoApic::new(IOAPIC_ID, IOAPIC_ADDR as u32, 0).to_aml_bytes(&mut entries);
    entries.extend_from_slice(&local_apic_nmi());
    if num_cpus > MAX_XAPIC_ID + 1 {
        entries.extend_from_slice(&local_x2apic_nmi());
    }

    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_bytes(36, &(APIC_ADDR as u32).to_le_bytes());
    madt.write_bytes(40, &PCAT_COMPAT.to_le_bytes());
    madt.append_slice(&entries);
    madt.as_slice().to_vec()
}

/// Local APIC NMI entry (type 4, 6 bytes): LINT1 of every processor is the NMI input.
fn local_apic_nmi() -> [u8; 6] {
    let [f0, f1] = INTI_CONFORMING.to_le_bytes();
    [TYPE_LOCAL_APIC_NMI, 6, ALL_CPUS_UID, f0, f1, NMI_LINT]
}

/// Processor Local x2APIC entry (type 9, 16 bytes): reserved u16, x2APIC ID u32, flags u32,
/// ACPI processor UID u32. The UID equals the APIC ID.
fn local_x2apic(apic_id: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0] = TYPE_LOCAL_X2APIC;
    e[1] = 16;
    e[4..8].copy_from_slice(&apic_id.to_le_bytes());
    e[8..12].copy_from_slice(&LAPIC_ENABLED.to_le_bytes());
    e[12..16].copy_from_slice(&apic_id.to_le_bytes());
    e
}

/// Local x2APIC NMI entry (type 0xa, 12 bytes): flags u16, UID u32, LINT u8, 3 reserved.
fn local_x2apic_nmi() -> [u8; 12] {
    let mut e = [0u8; 12];
    e[0] = TYPE_LOCAL_X2APIC_NMI;
    e[1] = 12;
    e[2..4].copy_from_slice(&INTI_CONFORMING.to_le_bytes());
    e[4..8].copy_from_slice(&ALL_CPUS_UID_X2.to_le_bytes());
    e[8] = NMI_LINT;
    e
}
