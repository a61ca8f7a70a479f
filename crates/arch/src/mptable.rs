//! Intel MultiProcessor Specification 1.4 tables, for guests that do not use ACPI (Linux with
//! `acpi=off`, or built without ACPI) and still need to find every vCPU and the IO-APIC.
//!
//! Two structures are written into guest memory:
//!
//! ```text
//! EBDA_START (0x9fc00)      MP floating pointer "_MP_", 16 bytes -> configuration table
//! MPTABLE_START (0xc0000)   MP configuration table "PCMP":
//!                             header (44 bytes)
//!                             processor entry per vCPU (20 bytes each), APIC ID = index
//!                             bus 0 "ISA   "
//!                             IO-APIC (ID = num_cpus, at IOAPIC_ADDR)
//!                             IO interrupt entry per IO-APIC pin: ISA IRQ n -> pin n
//!                             local interrupts: ExtINT -> LINT0, NMI -> LINT1, all CPUs
//! ```
//!
//! The floating pointer must lie where guests scan for it; Linux looks at the first KiB of
//! memory, the last KiB of base memory (`0x9fc00`), the BIOS ROM (`0xf0000`) and the EBDA
//! named by the BDA. `0x9fc00` is the one that is free here: the first KiB is not reserved
//! and the BIOS ROM range belongs to the ACPI tables. The configuration table may live
//! anywhere the OS will not overwrite; for 254 vCPUs it is over 5 KiB, more than the 1 KiB
//! below `0xa0000`, so it goes to the option-ROM area at `MPTABLE_START` (see `layout.rs`).
//! Both sit in the range from `EBDA_START` to 1 MiB that the e820 map does not list as RAM.
//!
//! Interrupt routing matches KVM's default GSI routing (installed by `KVM_CREATE_IRQCHIP`):
//! GSI n drives IO-APIC pin n (and, for n < 16, PIC input n), and the in-kernel PIT raises
//! GSI 0. So ISA IRQ 0 is on pin 0, not on pin 2 as on PC chipsets, and every pin is an
//! ISA IRQ with the bus defaults (edge-triggered, active high), like the MADT, which has no
//! interrupt source overrides. The 8259 output reaches the local APICs' LINT0 (KVM's
//! virtual-wire wiring), not an IO-APIC pin, hence the ExtINT local interrupt entry and no
//! ExtINT IO interrupt entry.
//!
//! The IO-APIC gets the first ID after the local APICs, as the MP spec wants APIC IDs to be
//! unique. (The MADT gives it ID 0; a guest reads one table or the other, never both, and on
//! 64-bit Linux the ID only links the IO interrupt entries to their IO-APIC.)

use ember_memory::GuestRam;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::layout::{
    ACPI_START, APIC_ADDR, EBDA_START, IOAPIC_ADDR, IOAPIC_PINS, IRQ_DEVICES_END, MPTABLE_SIZE,
    MPTABLE_START,
};

/// Most vCPUs the MP table can describe: xAPIC IDs stop at 254 (0xff is the broadcast ID),
/// and the IO-APIC takes the ID after the last vCPU.
pub const MAX_CPUS: u8 = 254;

/// Floating pointer signature.
const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
/// Floating pointer size in bytes; its LENGTH field counts 16-byte paragraphs.
const MPF_LEN: usize = 16;
/// Configuration table signature.
const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
/// Configuration table header size in bytes.
const MPC_HEADER_LEN: usize = 44;
/// SPEC_REV of both structures: MP specification 1.4.
const SPEC_REV: u8 = 4;
/// OEM ID of the configuration table (8 bytes, space padded).
const OEM_ID: [u8; 8] = *b"EMBER   ";
/// Product ID of the configuration table (12 bytes, space padded).
const PRODUCT_ID: [u8; 12] = *b"EMBERVM     ";

/// Entry types and their sizes.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const PROCESSOR_ENTRY_LEN: usize = 20;
const OTHER_ENTRY_LEN: usize = 8;

/// Local APIC version KVM's in-kernel LAPIC reports (integrated xAPIC).
const LAPIC_VERSION: u8 = 0x14;
/// IO-APIC version KVM's in-kernel IO-APIC reports.
const IOAPIC_VERSION: u8 = 0x11;
/// Processor entry CPU FLAGS: the processor is usable ...
const CPU_ENABLED: u8 = 1 << 0;
/// ... and it is the bootstrap processor.
const CPU_BSP: u8 = 1 << 1;
/// CPU signature (family 6, model 0, stepping 0). Informational: guests read the real one
/// from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX feature flags in the processor entries: FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// IO-APIC entry flags: the IO-APIC is usable.
const IOAPIC_ENABLED: u8 = 1;

/// The one bus: ISA, ID 0.
const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: [u8; 6] = *b"ISA   ";

/// Interrupt types of IO and local interrupt entries.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Interrupt entry flags: polarity and trigger mode conform to the bus (ISA: active high,
/// edge-triggered).
const INT_FLAGS_CONFORMING: u16 = 0;
/// Local interrupt destination: every local APIC.
const ALL_LOCAL_APICS: u8 = 0xff;

// The floating pointer must be in the last KiB of the 640 KiB of base memory, paragraph
// aligned; the configuration table must be paragraph aligned, addressable with 32 bits and
// clear of the floating pointer and the ACPI area; every pin must fit the u8 pin fields, and
// every device GSI must be an IO-APIC pin.
const _: () = {
    assert!(EBDA_START >= 639 * 1024 && EBDA_START + MPF_LEN as u64 <= 640 * 1024);
    assert!(EBDA_START.is_multiple_of(16));
    assert!(MPTABLE_START.is_multiple_of(16));
    assert!(MPTABLE_START >= 640 * 1024);
    assert!(MPTABLE_START + MPTABLE_SIZE <= ACPI_START);
    assert!(IOAPIC_PINS <= 256);
    assert!(IRQ_DEVICES_END < IOAPIC_PINS);
};

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// `num_cpus` was 0.
    #[error("the VM needs at least one vCPU")]
    NoCpus,
    /// More vCPUs than xAPIC IDs left once the IO-APIC has one.
    #[error("{0} vCPUs requested, the MP table can describe at most {MAX_CPUS}")]
    TooManyCpus(u8),
    /// The configuration table needs more room than its area has.
    #[error("MP configuration table needs {needed} bytes, its area has {available}")]
    TableTooLarge {
        /// Size of the configuration table in bytes.
        needed: usize,
        /// Size of the area at `MPTABLE_START`.
        available: u64,
    },
    /// Writing the table into guest memory failed.
    #[error("cannot write the MP table into guest memory: {0}")]
    GuestMemory(#[from] GuestMemoryError),
}

/// Writes the MP floating pointer at `EBDA_START` and the MP configuration table at
/// `MPTABLE_START`, describing `num_cpus` vCPUs with APIC IDs `0..num_cpus` (vCPU 0 is the
/// BSP), the ISA bus, the IO-APIC and its interrupt routing. See the module documentation.
///
/// Nothing is written unless the table is valid and fits, and the floating pointer is written
/// last, so a failed write never leaves a guest-visible pointer to a partial table.
pub fn setup_mptable(mem: &GuestRam, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let table = config_table(num_cpus);
    if table.len() as u64 > MPTABLE_SIZE {
        return Err(MptableError::TableTooLarge {
            needed: table.len(),
            available: MPTABLE_SIZE,
        });
    }
    mem.write_slice(&table, GuestAddress(MPTABLE_START))?;
    mem.write_slice(&floating_pointer(), GuestAddress(EBDA_START))?;
    Ok(())
}

/// The configuration table: header and base entries, in ascending entry type order as the
/// spec asks. No extended entries.
fn config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut push = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        count += 1;
    };
    for apic_id in 0..num_cpus {
        push(&processor_entry(apic_id, apic_id == 0));
    }
    push(&bus_entry(ISA_BUS_ID, ISA_BUS_TYPE));
    push(&ioapic_entry(ioapic_id));
    for pin in 0..IOAPIC_PINS as u8 {
        push(&interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            pin,
            ioapic_id,
            pin,
        ));
    }
    push(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ALL_LOCAL_APICS,
        0,
    ));
    push(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        ALL_LOCAL_APICS,
        1,
    ));

    // At most 268 + 20 * 254 bytes, so the length fits in u16; the caller checks it against
    // the area anyway.
    let len = u16::try_from(MPC_HEADER_LEN + entries.len()).expect("MP table under 64 KiB");
    let mut table = vec![0u8; MPC_HEADER_LEN];
    table[0..4].copy_from_slice(&MPC_SIGNATURE);
    table[4..6].copy_from_slice(&len.to_le_bytes());
    table[6] = SPEC_REV;
    // table[7]: checksum, below.
    table[8..16].copy_from_slice(&OEM_ID);
    table[16..28].copy_from_slice(&PRODUCT_ID);
    // table[28..32]: OEM table pointer, table[32..34]: OEM table size: none.
    table[34..36].copy_from_slice(&count.to_le_bytes());
    table[36..40].copy_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    // table[40..44]: extended table length and checksum (no extended entries), reserved.
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The floating pointer structure: points at the configuration table, no default
/// configuration (feature byte 1 = 0), IMCR bit (feature byte 2, bit 7) clear: the system
/// runs in virtual wire mode and the OS must not touch the IMCR.
fn floating_pointer() -> [u8; MPF_LEN] {
    let mut mpf = [0u8; MPF_LEN];
    mpf[0..4].copy_from_slice(&MPF_SIGNATURE);
    mpf[4..8].copy_from_slice(&(MPTABLE_START as u32).to_le_bytes());
    mpf[8] = (MPF_LEN / 16) as u8;
    mpf[9] = SPEC_REV;
    // mpf[10]: checksum, below; mpf[11..16]: feature bytes 1-5, all zero.
    mpf[10] = checksum(&mpf);
    mpf
}

/// Processor entry (type 0): local APIC ID and version, flags, CPU signature, feature flags,
/// 8 reserved bytes.
fn processor_entry(apic_id: u8, bsp: bool) -> [u8; PROCESSOR_ENTRY_LEN] {
    let mut e = [0u8; PROCESSOR_ENTRY_LEN];
    e[0] = ENTRY_PROCESSOR;
    e[1] = apic_id;
    e[2] = LAPIC_VERSION;
    e[3] = CPU_ENABLED | if bsp { CPU_BSP } else { 0 };
    e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
    e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
    e
}

/// Bus entry (type 1): bus ID and 6-byte type string.
fn bus_entry(id: u8, bus_type: [u8; 6]) -> [u8; OTHER_ENTRY_LEN] {
    let mut e = [0u8; OTHER_ENTRY_LEN];
    e[0] = ENTRY_BUS;
    e[1] = id;
    e[2..8].copy_from_slice(&bus_type);
    e
}

/// IO-APIC entry (type 2): ID, version, flags, base address.
fn ioapic_entry(id: u8) -> [u8; OTHER_ENTRY_LEN] {
    let mut e = [0u8; OTHER_ENTRY_LEN];
    e[0] = ENTRY_IOAPIC;
    e[1] = id;
    e[2] = IOAPIC_VERSION;
    e[3] = IOAPIC_ENABLED;
    e[4..8].copy_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    e
}

/// IO (type 3) or local (type 4) interrupt assignment entry: interrupt type, flags, source
/// ISA IRQ `irq`, destination IO-APIC ID and pin (type 3) or local APIC ID and LINTn (type 4).
/// The two layouts are identical.
fn interrupt_entry(
    entry_type: u8,
    int_type: u8,
    irq: u8,
    dest_id: u8,
    dest_pin: u8,
) -> [u8; OTHER_ENTRY_LEN] {
    let [f0, f1] = INT_FLAGS_CONFORMING.to_le_bytes();
    [
        entry_type, int_type, f0, f1, ISA_BUS_ID, irq, dest_id, dest_pin,
    ]
}

/// The byte that makes `bytes` (with the checksum byte still 0) sum to 0 modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::{create_acpi_tables, AcpiConfig};
    use crate::memory::create_guest_memory;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0, |acc, b| acc.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// Finds the floating pointer the way Linux does in the last KiB of base memory: a
    /// paragraph-aligned "_MP_" with LENGTH 1, a valid checksum and SPEC_REV 1 or 4.
    fn scan_floating_pointer(mem: &GuestRam) -> Option<(u64, [u8; MPF_LEN])> {
        let base = 639 * 1024;
        (base..base + 1024).step_by(16).find_map(|addr| {
            let mut mpf = [0u8; MPF_LEN];
            mem.read_slice(&mut mpf, GuestAddress(addr)).unwrap();
            let valid = mpf[0..4] == *b"_MP_"
                && mpf[8] == 1
                && sum(&mpf) == 0
                && (mpf[9] == 1 || mpf[9] == 4);
            valid.then_some((addr, mpf))
        })
    }

    #[derive(Debug, Default)]
    struct Parsed {
        /// (APIC ID, version, flags)
        cpus: Vec<(u8, u8, u8)>,
        /// (ID, type)
        buses: Vec<(u8, [u8; 6])>,
        /// (ID, version, flags, address)
        ioapics: Vec<(u8, u8, u8, u32)>,
        /// (type, flags, source bus, source IRQ, destination IO-APIC, pin)
        io_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
        /// (type, flags, source bus, source IRQ, destination LAPIC, LINTn)
        local_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
    }

    /// Follows the floating pointer to the configuration table, checks both structures and
    /// decodes the entries.
    fn parse(mem: &GuestRam) -> Parsed {
        let (mpf_addr, mpf) = scan_floating_pointer(mem).expect("floating pointer found");
        assert_eq!(mpf_addr, EBDA_START);
        assert_eq!(mpf[9], 4, "spec revision 1.4");
        assert_eq!(mpf[11], 0, "no default configuration");
        assert_eq!(mpf[12] & 0x80, 0, "IMCR bit clear");
        assert_eq!(&mpf[13..16], &[0, 0, 0]);
        let table_addr = u64::from(u32_at(&mpf, 4));
        assert_eq!(table_addr, MPTABLE_START);
        assert!(table_addr.is_multiple_of(16));

        let mut header = [0u8; MPC_HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(&header[0..4], b"PCMP");
        assert_eq!(header[6], 4, "spec revision 1.4");
        assert_eq!(&header[8..16], b"EMBER   ");
        assert_eq!(u32_at(&header, 28), 0, "no OEM table");
        assert_eq!(u32_at(&header, 36), 0xfee0_0000);
        assert_eq!(u16_at(&header, 40), 0, "no extended entries");
        let len = usize::from(u16_at(&header, 4));
        assert!(table_addr + len as u64 <= MPTABLE_START + MPTABLE_SIZE);
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(sum(&table), 0, "configuration table checksum");

        let mut parsed = Parsed::default();
        let mut off = MPC_HEADER_LEN;
        let mut entries = 0;
        let mut last_type = 0;
        while off < len {
            let e = &table[off..];
            assert!(e[0] >= last_type, "entries sorted by type");
            last_type = e[0];
            let int = || (e[1], u16_at(e, 2), e[4], e[5], e[6], e[7]);
            off += match e[0] {
                0 => {
                    parsed.cpus.push((e[1], e[2], e[3]));
                    20
                }
                1 => {
                    parsed.buses.push((e[1], e[2..8].try_into().unwrap()));
                    8
                }
                2 => {
                    parsed.ioapics.push((e[1], e[2], e[3], u32_at(e, 4)));
                    8
                }
                3 => {
                    parsed.io_ints.push(int());
                    8
                }
                4 => {
                    parsed.local_ints.push(int());
                    8
                }
                t => panic!("unknown entry type {t}"),
            };
            entries += 1;
        }
        assert_eq!(off, len, "entries fill the base table exactly");
        assert_eq!(u16_at(&header, 34), entries, "entry count");
        parsed
    }

    fn check(num_cpus: u8) {
        let mem = create_guest_memory(128 << 20, 39, true).unwrap();
        setup_mptable(&mem, num_cpus).unwrap();
        let p = parse(&mem);

        assert_eq!(p.cpus.len(), usize::from(num_cpus));
        for (i, &(apic_id, version, flags)) in p.cpus.iter().enumerate() {
            assert_eq!(
                usize::from(apic_id),
                i,
                "APIC ID = vCPU index, as in the MADT"
            );
            assert_eq!(version, 0x14);
            assert_eq!(flags & 1, 1, "enabled");
            assert_eq!(flags & 2 != 0, i == 0, "BSP flag only on CPU 0");
        }

        assert_eq!(p.buses, vec![(0, *b"ISA   ")]);

        let ioapic_id = num_cpus;
        assert_eq!(p.ioapics, vec![(ioapic_id, 0x11, 1, 0xfec0_0000)]);

        assert_eq!(p.io_ints.len(), 24);
        for (pin, &int) in p.io_ints.iter().enumerate() {
            let pin = pin as u8;
            assert_eq!(int, (0, 0, 0, pin, ioapic_id, pin), "ISA IRQ n -> pin n");
        }
        // Every device GSI has its entry.
        for gsi in crate::layout::IRQ_DEVICES_START..=IRQ_DEVICES_END {
            assert!(p.io_ints.iter().any(|i| u32::from(i.5) == gsi));
        }

        assert_eq!(
            p.local_ints,
            vec![(3, 0, 0, 0, 0xff, 0), (1, 0, 0, 0, 0xff, 1)],
            "ExtINT on LINT0, NMI on LINT1, all local APICs"
        );
    }

    #[test]
    fn one_cpu() {
        check(1);
    }

    #[test]
    fn two_cpus() {
        check(2);
    }

    #[test]
    fn most_cpus() {
        check(MAX_CPUS);
        // The largest table still fits its area.
        assert!(config_table(MAX_CPUS).len() as u64 <= MPTABLE_SIZE);
    }

    #[test]
    fn bad_cpu_counts_are_rejected() {
        let mem = create_guest_memory(2 << 20, 39, true).unwrap();
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
        assert!(matches!(
            setup_mptable(&mem, 255),
            Err(MptableError::TooManyCpus(255))
        ));
        assert!(scan_floating_pointer(&mem).is_none(), "nothing written");
    }

    #[test]
    fn failed_write_leaves_no_floating_pointer() {
        // RAM ends below the configuration table.
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0xa0000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 2),
            Err(MptableError::GuestMemory(_))
        ));
        assert!(scan_floating_pointer(&mem).is_none());
    }

    #[test]
    fn coexists_with_acpi_tables() {
        let mem = create_guest_memory(2 << 20, 39, true).unwrap();
        let cfg = AcpiConfig {
            num_cpus: 4,
            mmio_devices: &[],
        };
        let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
        setup_mptable(&mem, 4).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, rsdp).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        assert_eq!(parse(&mem).cpus.len(), 4);
    }
}
