//! Builds the tables into guest memory and parses them back the way a guest would:
//! RSDP -> XSDT -> FADT / MADT, FADT -> DSDT.

use super::*;
use crate::layout::{APIC_ADDR, COM1_IRQ, IOAPIC_ADDR, MMIO_DEVICES_START};
use ember_memory::GuestRam;

fn guest_mem() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc.wrapping_add(*b))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Reads the table at `addr` and checks signature, placement, OEM ID and checksum.
fn read_table(mem: &GuestRam, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    let mut header = [0u8; 36];
    mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
    assert_eq!(&header[..4], sig);
    let mut table = vec![0u8; u32_at(&header, 4) as usize];
    mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
    let name = String::from_utf8_lossy(sig);
    assert_eq!(sum(&table), 0, "{name} checksum");
    assert_eq!(&table[10..16], b"EMBER ", "{name} OEM ID");
    assert_eq!(addr % TABLE_ALIGN, 0, "{name} alignment");
    assert!(addr >= ACPI_START && addr + table.len() as u64 <= ACPI_START + ACPI_SIZE);
    table
}

struct Tables {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

/// Creates the tables in fresh guest memory and follows the pointers from the RSDP.
fn build_and_parse(num_cpus: u8, mmio_devices: &[MmioDevice]) -> Tables {
    let mem = guest_mem();
    let cfg = AcpiConfig {
        num_cpus,
        mmio_devices,
    };
    let rsdp_addr = create_acpi_tables(&mem, &cfg).unwrap();
    assert_eq!(rsdp_addr, GuestAddress(ACPI_START));

    let mut rsdp = [0u8; 36];
    mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "extended RSDP checksum");
    assert_eq!(&rsdp[9..15], b"EMBER ");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 16), 0, "no RSDT");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");

    let xsdt = read_table(&mem, u64_at(&rsdp, 24), b"XSDT");
    let entries: Vec<u64> = xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect();
    assert_eq!(entries.len(), 2);
    let fadt = read_table(&mem, entries[0], b"FACP");
    let madt = read_table(&mem, entries[1], b"APIC");
    let dsdt = read_table(&mem, u64_at(&fadt, 140), b"DSDT");
    Tables { fadt, madt, dsdt }
}

/// A MADT entry: type and body (including the type and length bytes).
fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
    let mut entries = Vec::new();
    let mut off = 44;
    while off < madt.len() {
        let len = madt[off + 1] as usize;
        assert!(len >= 2 && off + len <= madt.len(), "MADT entry overruns");
        entries.push((madt[off], &madt[off..off + len]));
        off += len;
    }
    entries
}

fn of_type<'a>(entries: &[(u8, &'a [u8])], ty: u8) -> Vec<&'a [u8]> {
    entries
        .iter()
        .filter(|(t, _)| *t == ty)
        .map(|(_, e)| *e)
        .collect()
}

/// Checks MADT header and the IO-APIC/NMI entries; returns the (UID, APIC ID) of each CPU in
/// table order, from Local APIC and Local x2APIC entries.
fn madt_cpus(madt: &[u8]) -> Vec<(u32, u32)> {
    assert_eq!(madt[8], 5, "MADT revision");
    assert_eq!(u32_at(madt, 36), APIC_ADDR as u32);
    assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
    let entries = madt_entries(madt);
    assert!(
        of_type(&entries, 2).is_empty(),
        "no interrupt source overrides"
    );
    let ioapics = of_type(&entries, 1);
    assert_eq!(ioapics.len(), 1);
    let ioapic = ioapics[0];
    assert_eq!((ioapic[1], ioapic[2]), (12, 0), "IO-APIC length and ID");
    assert_eq!(u32_at(ioapic, 4), IOAPIC_ADDR as u32);
    assert_eq!(u32_at(ioapic, 8), 0, "GSI base");
    assert_eq!(of_type(&entries, 4), vec![&[4u8, 6, 0xff, 0, 0, 1][..]]);

    let mut cpus = Vec::new();
    for (ty, e) in entries {
        match ty {
            0 => {
                assert_eq!(e.len(), 8);
                assert_eq!(u32_at(e, 4), 1, "enabled");
                cpus.push((u32::from(e[2]), u32::from(e[3])));
            }
            9 => {
                assert_eq!(e.len(), 16);
                assert_eq!(u32_at(e, 8), 1, "enabled");
                cpus.push((u32_at(e, 12), u32_at(e, 4)));
            }
            _ => {}
        }
    }
    cpus
}

fn virtio(index: u64, irq: u32) -> MmioDevice {
    MmioDevice {
        addr: MMIO_DEVICES_START + index * 0x1000,
        len: 0x1000,
        irq,
    }
}

#[test]
fn rsdp_xsdt_and_table_checksums() {
    build_and_parse(1, &[]);
    build_and_parse(4, &[virtio(0, 5), virtio(1, 6)]);
}

#[test]
fn fadt_is_hardware_reduced() {
    let Tables { fadt, .. } = build_and_parse(1, &[]);
    assert_eq!(fadt.len(), 276);
    assert_eq!((fadt[8], fadt[131]), (6, 5), "FADT revision 6.5");
    let flags = u32_at(&fadt, 112);
    assert_ne!(flags & 1 << 20, 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & 1 << 10, 0, "RESET_REG_SUP");
    assert_ne!(flags & 1 << 4, 0, "PWR_BUTTON");
    assert_ne!(flags & 1 << 5, 0, "SLP_BUTTON");
    assert_eq!(u16_at(&fadt, 109), 0b11_1100, "IAPC_BOOT_ARCH");
    // RESET_REG: SystemIO, 8 bits, offset 0, byte access, port 0x64; RESET_VALUE 0xfe.
    assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
    assert_eq!(u64_at(&fadt, 120), 0x64);
    assert_eq!(fadt[128], 0xfe);
    // SLEEP_CONTROL_REG and SLEEP_STATUS_REG: byte I/O ports 0x600 and 0x601.
    assert_eq!(&fadt[244..248], &[1, 8, 0, 1]);
    assert_eq!(u64_at(&fadt, 248), 0x600);
    assert_eq!(&fadt[256..260], &[1, 8, 0, 1]);
    assert_eq!(u64_at(&fadt, 260), 0x601);
    assert_eq!(u32_at(&fadt, 36), 0, "FIRMWARE_CTRL: no FACS");
    assert_eq!(u64_at(&fadt, 132), 0, "X_FIRMWARE_CTRL: no FACS");
    assert_eq!(u32_at(&fadt, 40), 0, "only X_DSDT is used");
    assert_eq!(u16_at(&fadt, 46), 0, "no SCI");
}

#[test]
fn madt_has_one_local_apic_per_cpu() {
    for n in [1u8, 2, 32, 255] {
        let Tables { madt, .. } = build_and_parse(n, &[]);
        let expected: Vec<(u32, u32)> = (0..u32::from(n)).map(|i| (i, i)).collect();
        assert_eq!(madt_cpus(&madt), expected, "{n} CPUs");
        let entries = madt_entries(&madt);
        assert_eq!(of_type(&entries, 0).len(), usize::from(n));
        assert!(
            of_type(&entries, 9).is_empty(),
            "no x2APIC entries for {n} CPUs"
        );
    }
}

#[test]
fn madt_switches_to_x2apic_above_id_254() {
    let madt = madt::build(300);
    assert_eq!(sum(&madt), 0);
    assert_eq!(u32_at(&madt, 4) as usize, madt.len());
    let expected: Vec<(u32, u32)> = (0..300).map(|i| (i, i)).collect();
    assert_eq!(madt_cpus(&madt), expected);
    let entries = madt_entries(&madt);
    assert_eq!(of_type(&entries, 0).len(), 255, "xAPIC IDs 0..=254");
    assert_eq!(of_type(&entries, 9).len(), 45, "x2APIC IDs 255..300");
    let x2nmi = of_type(&entries, 0xa);
    assert_eq!(
        x2nmi,
        vec![&[0xau8, 12, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0][..]]
    );
}

#[test]
fn dsdt_describes_com1_and_virtio_devices() {
    let devices = [virtio(0, 5), virtio(1, 6), virtio(2, 23)];
    let Tables { dsdt, .. } = build_and_parse(2, &devices);
    assert_eq!(dsdt[8], 2, "DSDT revision");
    let aml = &dsdt[36..];
    // Name (_S5_, Package (2) { 5, 0 }), then Scope (\_SB_).
    assert_eq!(&aml[..5], &[0x08, b'_', b'S', b'5', b'_']);
    assert_eq!(&aml[5..11], &[0x12, 5, 2, 0x0a, 5, 0]);
    assert_eq!(aml[11], 0x10, "then a Scope");
    assert_eq!(count(aml, b"_SB_"), 1);

    // COM1: _HID EisaId("PNP0501"), IO 0x3f8-0x3ff, Interrupt {4} edge/high/exclusive.
    assert_eq!(count(aml, b"COM1"), 1);
    assert_eq!(count(aml, &[0x0c, 0x41, 0xd0, 0x05, 0x01]), 1);
    assert_eq!(count(aml, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
    let mut irq = vec![0x89, 6, 0, 0b0011, 1];
    irq.extend_from_slice(&COM1_IRQ.to_le_bytes());
    assert_eq!(count(aml, &irq), 1);

    assert_eq!(count(aml, b"LNRO0005\0"), devices.len());
    for (i, dev) in devices.iter().enumerate() {
        assert_eq!(count(aml, format!("V{i:03X}").as_bytes()), 1);
        let mut window = vec![0x86, 9, 0, 1];
        window.extend_from_slice(&(dev.addr as u32).to_le_bytes());
        window.extend_from_slice(&(dev.len as u32).to_le_bytes());
        assert_eq!(count(aml, &window), 1, "Memory32Fixed of V{i:03X}");
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend_from_slice(&dev.irq.to_le_bytes());
        assert_eq!(count(aml, &irq), 1, "Interrupt of V{i:03X}");
    }
}

#[test]
fn mmio_window_may_end_exactly_at_4g() {
    let dev = MmioDevice {
        addr: 0xffff_f000,
        len: 0x1000,
        irq: 5,
    };
    build_and_parse(1, &[dev]);
}

fn create(mem: &GuestRam, num_cpus: u8, devices: &[MmioDevice]) -> AcpiError {
    let cfg = AcpiConfig {
        num_cpus,
        mmio_devices: devices,
    };
    create_acpi_tables(mem, &cfg).unwrap_err()
}

#[test]
fn invalid_configurations_are_rejected() {
    let mem = guest_mem();
    assert!(matches!(create(&mem, 0, &[]), AcpiError::NoCpus));
    assert!(matches!(
        create(&mem, 1, &[virtio(0, 24)]),
        AcpiError::InvalidIrq(24)
    ));
    for (addr, len) in [
        (0x1000, 0),
        (0xffff_f000, 0x2000),
        (0, 1 << 32),
        (1 << 32, 0x1000),
        (u64::MAX, 2),
    ] {
        let dev = MmioDevice { addr, len, irq: 5 };
        assert!(
            matches!(create(&mem, 1, &[dev]), AcpiError::InvalidMmioRange { .. }),
            "{addr:#x}+{len:#x}"
        );
    }
    let too_many = vec![virtio(0, 5); dsdt::MAX_DEVICES + 1];
    assert!(matches!(
        create(&mem, 1, &too_many),
        AcpiError::TooManyDevices(n) if n == dsdt::MAX_DEVICES + 1
    ));
}

#[test]
fn tables_larger_than_the_acpi_area_are_an_error() {
    let mem = guest_mem();
    let devices: Vec<MmioDevice> = (0..dsdt::MAX_DEVICES as u64)
        .map(|i| virtio(i, 5))
        .collect();
    match create(&mem, 255, &devices) {
        AcpiError::TablesTooLarge { needed, available } => {
            assert_eq!(available, ACPI_SIZE);
            assert!(needed > ACPI_SIZE);
        }
        e => panic!("unexpected error {e}"),
    }
    // Nothing was written.
    let mut area = vec![0xaau8; ACPI_SIZE as usize];
    mem.read_slice(&mut area, GuestAddress(ACPI_START)).unwrap();
    assert!(area.iter().all(|b| *b == 0));
}

#[test]
fn missing_guest_memory_is_an_error() {
    let mem = GuestRam::from_ranges(&[(GuestAddress(0x10_0000), 1 << 20)]).unwrap();
    assert!(matches!(create(&mem, 1, &[]), AcpiError::GuestMemory(_)));
}

/// Disassembles every table with `iasl -d` (Debian package `acpica-tools`) when it is
/// installed and fails on any error or warning it reports; then loads them with `acpiexec`
/// (ACPICA, the interpreter Linux uses) and evaluates a `_CRS`.
#[test]
fn acpica_tools_accept_the_tables() {
    use std::process::Command;
    if Command::new("iasl").arg("-v").output().is_err() {
        eprintln!("iasl not installed, skipping the ACPICA checks");
        return;
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?}: {log}");
        log
    };
    let devices = [virtio(0, 5), virtio(1, 6)];
    let tables = build_and_parse(4, &devices);
    let dir = std::env::temp_dir().join(format!("ember-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in [
        ("facp", &tables.fadt),
        ("apic", &tables.madt),
        ("apicx2", &madt::build(300)),
        ("dsdt", &tables.dsdt),
    ] {
        let file = dir.join(format!("{name}.dat"));
        std::fs::write(&file, bytes).unwrap();
        let log = run(Command::new("iasl").arg("-d").arg(&file));
        for bad in ["Error", "Warning", "Invalid", "Unknown"] {
            assert!(!log.contains(bad), "iasl -d {name}: {log}");
        }
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        for bad in ["Invalid", "Unknown", "**** "] {
            assert!(!dsl.contains(bad), "{name}.dsl contains {bad:?}:\n{dsl}");
        }
    }
    if Command::new("acpiexec").arg("-v").output().is_ok() {
        let log = run(Command::new("acpiexec")
            .current_dir(&dir)
            .args(["-b", "Evaluate \\_SB.V001._CRS"])
            .args(["facp.dat", "apic.dat", "dsdt.dat"]));
        assert!(log.contains("successfully acquired and loaded"), "{log}");
        assert!(log.contains("86 09 00 01 00 10 00 D0 00 10 00 00"), "{log}");
        for bad in ["Error", "Warning"] {
            assert!(!log.contains(bad), "acpiexec: {log}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
