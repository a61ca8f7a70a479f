//! CPUID as the guest sees it: what KVM supports, normalised for one vCPU of an N-vCPU VM
//! (APIC IDs, topology, cache sharing, hypervisor bit, no host PMU).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_INTEL: u32 = 0x4;
const LEAF_THERMAL: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_TOPOLOGY_AMD: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// AMD CmpLegacy: "HTT means multi-core, not SMT".
const ECX_CMP_LEGACY: u32 = 1 << 1;
/// AMD TopologyExtensions (leaf 0x8000001e valid).
const ECX_TOPOEXT: u32 = 1 << 22;

/// Number of bits needed to hold `n` distinct IDs.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The topology presented to the guest: one socket of `count` logical CPUs, grouped into cores
/// of `threads` (1, or 2 with SMT).
#[derive(Debug, Clone, Copy)]
struct Topology {
    index: u32,
    count: u32,
    threads: u32,
    /// APIC ID bits for the thread level.
    thread_bits: u32,
    /// APIC ID bits for thread + core levels.
    core_bits: u32,
}

/// Normalises `cpuid` in place for vCPU `index` of `count`: one socket, APIC ID = `index`,
/// and with `smt` two threads per core (when `count` is even), else one.
pub fn normalize(cpuid: &mut CpuId, index: u32, count: u32, smt: bool) {
    let threads = if smt && count.is_multiple_of(2) { 2 } else { 1 };
    let topo = Topology {
        index,
        count,
        threads,
        thread_bits: id_bits(threads),
        core_bits: id_bits(count),
    };
    for e in cpuid.as_mut_slice().iter_mut() {
        normalize_entry(e, &topo);
    }
}

fn normalize_entry(e: &mut kvm_cpuid_entry2, t: &Topology) {
    let (index, count, core_bits) = (t.index, t.count, t.core_bits);
    match e.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per package, [15:8] CLFLUSH.
            e.ebx = (index << 24) | ((count.min(255)) << 16) | (8 << 8);
            e.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_INTEL => {
            // EAX [31:26]: cores per package - 1; [25:14]: logical processors sharing - 1.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { t.threads - 1 };
            let cores = count / t.threads;
            e.eax = (e.eax & 0x3fff) | ((cores - 1).min(63) << 26) | ((sharing & 0xfff) << 14);
        }
        LEAF_THERMAL => {
            // No turbo, no energy/performance bias hints the host cannot honour.
            e.eax &= !(1 << 1);
            e.ecx &= !(1 << 3);
        }
        LEAF_PMU => {
            // No architectural PMU in the guest.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            // Sub-leaf 0: SMT level (1 thread); 1: core level (count cores); above: invalid.
            e.edx = index;
            match e.index {
                0 => {
                    e.eax = t.thread_bits;
                    e.ebx = t.threads;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = count;
                    e.ecx = (2 << 8) | 1;
                }
                sub => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = sub;
                }
            }
        }
        LEAF_EXT_FEATURES => {
            if count > 1 {
                e.ecx |= ECX_CMP_LEGACY;
            } else {
                e.ecx &= !ECX_CMP_LEGACY;
            }
        }
        LEAF_EXT_SIZES => {
            // ECX: [15:12] APIC ID bits for cores, [7:0] cores - 1.
            e.ecx = (e.ecx & !0xf0ff) | (core_bits.max(1) << 12) | ((count - 1) & 0xff);
        }
        LEAF_EXT_TOPOLOGY_AMD => {
            e.eax = index;
            e.ebx = ((t.threads - 1) << 8) | ((index >> t.thread_bits) & 0xff);
            e.ecx = 0;
        }
        _ => {}
    }
}

/// Whether the CPUID table says an AMD CPU with topology extensions.
pub fn has_topoext(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_EXT_FEATURES && e.ecx & ECX_TOPOEXT != 0)
}

/// Guest physical address width from leaf 0x80000008, or 36 bits when absent.
pub fn phys_bits(cpuid: &CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_EXT_SIZES)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CpuId {
        let leaves = [
            (1, 0),
            (0xb, 0),
            (0xb, 1),
            (0xb, 2),
            (0x8000_0008, 0),
            (0xa, 0),
        ];
        let entries: Vec<kvm_cpuid_entry2> = leaves
            .iter()
            .map(|&(function, index)| kvm_cpuid_entry2 {
                function,
                index,
                eax: 0xffff_ffff,
                ebx: 0xffff_ffff,
                ..Default::default()
            })
            .collect();
        CpuId::from_entries(&entries).unwrap()
    }

    fn leaf(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_ids_and_topology_follow_the_vcpu() {
        let mut c = table();
        normalize(&mut c, 5, 8, false);
        assert_eq!(leaf(&c, 1, 0).ebx >> 24, 5);
        assert_eq!((leaf(&c, 1, 0).ebx >> 16) & 0xff, 8);
        assert_ne!(leaf(&c, 1, 0).ecx & ECX_HYPERVISOR, 0);
        assert_eq!(leaf(&c, 0xb, 1).ebx, 8);
        assert_eq!(leaf(&c, 0xb, 1).eax, 3);
        assert_eq!(leaf(&c, 0xb, 0).edx, 5);
        assert_eq!(leaf(&c, 0xb, 2).ebx, 0);
        assert_eq!(leaf(&c, 0x8000_0008, 0).ecx & 0xff, 7);
        assert_eq!(leaf(&c, 0xa, 0).eax, 0);
    }

    #[test]
    fn smt_pairs_threads_into_cores() {
        let mut c = table();
        normalize(&mut c, 3, 4, true);
        assert_eq!((leaf(&c, 0xb, 0).eax, leaf(&c, 0xb, 0).ebx), (1, 2));
        assert_eq!((leaf(&c, 0xb, 1).eax, leaf(&c, 0xb, 1).ebx), (2, 4));
        let mut odd = table();
        normalize(&mut odd, 0, 3, true);
        assert_eq!(leaf(&odd, 0xb, 0).ebx, 1, "odd counts cannot pair threads");
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [id_bits(1), id_bits(2), id_bits(3), id_bits(32), id_bits(33)],
            [0, 1, 2, 5, 6]
        );
    }
}
