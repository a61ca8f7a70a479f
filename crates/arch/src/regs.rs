//! Initial vCPU state: segment descriptors, identity page tables, registers, FPU, MSRs and
//! local APIC wiring.

use ember_memory::GuestRam;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::boot::{EntryMode, EntryPoint};
use crate::layout::*;

/// Errors from setting up vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM vCPU ioctl failed.
    #[error("cannot set up vCPU {what}: {err}")]
    Kvm {
        /// What was being configured.
        what: &'static str,
        /// The ioctl error.
        err: kvm_ioctls::Error,
    },
    /// Writing GDT or page tables failed.
    #[error("cannot write boot page tables or GDT: {0}")]
    GuestMemory(vm_memory::GuestMemoryError),
    /// KVM accepted fewer MSRs than requested.
    #[error("KVM accepted only {0} of the boot MSRs")]
    Msrs(usize),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |err| RegsError::Kvm { what, err }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit, in the packed x86 layout.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

/// Expands a GDT entry into the segment register KVM wants.
fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let limit = ((entry & 0x000f_0000_0000_0000) >> 32 | (entry & 0xffff)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT for `mode` and loads segment registers into `sregs`.
fn setup_segments(mem: &GuestRam, sregs: &mut kvm_sregs, mode: EntryMode) -> Result<(), RegsError> {
    let code = match mode {
        EntryMode::Linux64 => gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
        EntryMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),     // 32-bit flat code
    };
    let gdt = [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff), // flat data
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::GuestMemory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::GuestMemory)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = segment_from_gdt(gdt[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    Ok(())
}

/// Identity-maps the low 4 GiB with 2 MiB pages: PML4 → one PDPT → four page directories.
fn setup_page_tables(mem: &GuestRam, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let write = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(RegsError::GuestMemory)
    };
    write(PDPTE_START | 0x03, PML4_START)?;
    for dir in 0..4u64 {
        let pd = PDE_START + dir * 0x1000;
        write(pd | 0x03, PDPTE_START + dir * 8)?;
        for i in 0..512u64 {
            let phys = ((dir << 9) + i) << 21;
            write(phys | 0x83, pd + i * 8)?;
        }
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// Sets registers, segments and paging for the boot vCPU to enter `entry`.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestRam, entry: EntryPoint) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    setup_segments(mem, &mut sregs, entry.mode)?;
    sregs.cr0 = (sregs.cr0 & !X86_CR0_PG) | X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 &= !X86_CR4_PAE;
    sregs.efer &= !(EFER_LME | EFER_LMA);
    if entry.mode == EntryMode::Linux64 {
        setup_page_tables(mem, &mut sregs)?;
    }
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.addr.0,
        ..Default::default()
    };
    match entry.mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    vcpu.set_regs(&regs).map_err(kvm("registers"))
}

/// Sets the FPU, boot MSRs and local APIC LINT pins of any vCPU.
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU"))?;
    setup_msrs(vcpu)?;
    setup_lapic(vcpu)
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs(0))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs(set));
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC firmware would.
fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    let set_lvt = |regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32| {
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = regs[offset + i] as u8;
        }
        let val = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            regs[offset + i] = *b as std::os::raw::c_char;
        }
    };
    set_lvt(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_into_segments() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.db, code.g, code.present), (1, 0, 1, 1));
        assert_eq!(
            (code.selector, code.type_, code.limit),
            (8, 0xb, 0xffff_ffff)
        );
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let tss = segment_from_gdt(gdt_entry(0x808b, 0, 0xfffff), 3);
        assert_eq!((tss.s, tss.type_, tss.selector), (0, 0xb, 24));
    }
}
