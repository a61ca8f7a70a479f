//! The virtio-net header (`virtio_net_hdr_v1`, 12 bytes) and the offloads each direction
//! negotiated. Headers cross between guest and tap after being checked here, so neither side
//! gets a checksum or segmentation request it did not agree to.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

use crate::{HDR_LEN, MAX_FRAME_LEN, MTU_FRAME_LEN};

/// A raw header.
pub type Header = [u8; HDR_LEN];

const FLAGS: usize = 0;
const GSO_TYPE: usize = 1;
const NUM_BUFFERS: usize = 10;

/// The offloads one direction may use. Built from feature bits with the spec's
/// dependencies enforced (TSO needs checksum offload, ECN needs TSO), whatever the driver
/// accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Partial checksums (`NEEDS_CSUM`).
    pub csum: bool,
    /// TCPv4 segmentation.
    pub tso4: bool,
    /// TCPv6 segmentation.
    pub tso6: bool,
    /// Segmentation with the ECN bit.
    pub ecn: bool,
}

impl Offloads {
    /// What the device may send to the guest (the `GUEST_*` features).
    pub fn to_guest(features: u64) -> Self {
        Self::from_bits(
            features,
            [
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_ECN,
            ],
        )
    }

    /// What the guest may send to the device (`CSUM`, `HOST_*`).
    pub fn from_guest(features: u64) -> Self {
        Self::from_bits(
            features,
            [
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
                VIRTIO_NET_F_HOST_ECN,
            ],
        )
    }

    fn from_bits(features: u64, [csum, tso4, tso6, ecn]: [u32; 4]) -> Self {
        let has = |bit: u32| features & (1 << bit) != 0;
        let csum = has(csum);
        let tso4 = csum && has(tso4);
        let tso6 = csum && has(tso6);
        let ecn = (tso4 || tso6) && has(ecn);
        Self {
            csum,
            tso4,
            tso6,
            ecn,
        }
    }

    /// The `TUN_F_*` flags telling a tap what it may hand us.
    pub fn tun_flags(&self) -> u32 {
        let mut flags = 0;
        for (on, flag) in [
            (self.csum, libc::TUN_F_CSUM),
            (self.tso4, libc::TUN_F_TSO4),
            (self.tso6, libc::TUN_F_TSO6),
            (self.ecn, libc::TUN_F_TSO_ECN),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }

    /// Largest frame (without header) this direction carries.
    pub fn max_frame(&self) -> usize {
        if self.tso4 || self.tso6 {
            MAX_FRAME_LEN
        } else {
            MTU_FRAME_LEN
        }
    }

    /// Checks `hdr` against these offloads and clears what the receiver must not see:
    /// `DATA_VALID` without checksum offload, any flag but `NEEDS_CSUM` towards the host,
    /// and `num_buffers` (the receiver's business). False if the frame must be dropped.
    pub fn sanitize(&self, hdr: &mut Header, towards_guest: bool) -> bool {
        let flags = u32::from(hdr[FLAGS]);
        let needs_csum = flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
        if needs_csum && !self.csum {
            return false;
        }
        let gso = u32::from(hdr[GSO_TYPE]);
        if gso & VIRTIO_NET_HDR_GSO_ECN != 0 && !self.ecn {
            return false;
        }
        let allowed = match gso & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => gso == VIRTIO_NET_HDR_GSO_NONE,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.tso4,
            VIRTIO_NET_HDR_GSO_TCPV6 => self.tso6,
            _ => false,
        };
        if !allowed {
            return false;
        }
        let mut keep = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        if towards_guest && self.csum {
            keep |= VIRTIO_NET_HDR_F_DATA_VALID;
        }
        hdr[FLAGS] = (flags & keep) as u8;
        set_num_buffers(hdr, 0);
        true
    }
}

/// Sets `num_buffers`, the number of buffers a received frame spans.
pub fn set_num_buffers(hdr: &mut [u8], n: u16) {
    hdr[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&n.to_le_bytes());
}
