//! Queue-level tests: requests built with virtio-queue's mock driver, served by
//! `process_queue` (or by `Block` through activation and `handle_queue`) against real files.

use std::path::PathBuf;
use std::sync::Arc;

use ember_virtio::testing::{get, put, r, raw, w, Driver, Seg};
use ember_virtio::{Activation, GuestMemory, Interrupt, QueueHandler, VirtioDevice};
use ember_virtio::{Queue, QueueOwnedT, QueueT};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::request::{drive_id, process_queue, DriveId, RequestContext};
use crate::{Block, DiskFile, SECTOR_SIZE};

const QSIZE: u16 = 16;
/// Two adjacent 1 MiB regions, so buffers can straddle a region boundary.
const REGION: u64 = 0x10_0000;
const MEM_END: u64 = 2 * REGION;
const OUTSIDE: u64 = 0x4000_0000; // nothing lives here
const IND: u64 = 0x1000; // indirect tables
const HDR: u64 = 0x1_0000; // request headers
const DATA: u64 = 0x2_0000; // data buffers
const STATUS: u64 = 0x8_0000;
const DISK_SECTORS: u64 = 64;
const DISK_BYTES: usize = (DISK_SECTORS * SECTOR_SIZE) as usize;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const IN: u32 = VIRTIO_BLK_T_IN;
const OUT: u32 = VIRTIO_BLK_T_OUT;
const FLUSH: u32 = VIRTIO_BLK_T_FLUSH;
const GET_ID: u32 = VIRTIO_BLK_T_GET_ID;

fn guest_memory() -> GuestMemory {
    let size = REGION as usize;
    GuestMemory::from_ranges(&[(GuestAddress(0), size), (GuestAddress(REGION), size)]).unwrap()
}

fn header(mem: &GuestMemory, addr: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    put(mem, addr, &h);
}

/// Recognisable bytes, different for each sector.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let byte = |i: usize| (i as u8).wrapping_mul(7) ^ (i / 512) as u8 ^ seed;
    (0..len).map(byte).collect()
}

/// A disk image under the temp dir, removed on drop.
struct TempDisk(PathBuf);

impl TempDisk {
    fn new(name: &str, contents: &[u8]) -> Self {
        let file = format!("ember-blk-{}-{name}.img", std::process::id());
        let path = std::env::temp_dir().join(file);
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn open(&self, read_only: bool) -> DiskFile {
        DiskFile::open(&self.0, read_only).unwrap()
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }

    fn sectors(&self, first: u64, count: u64) -> Vec<u8> {
        let start = (first * SECTOR_SIZE) as usize;
        self.contents()[start..start + (count * SECTOR_SIZE) as usize].to_vec()
    }

    fn set_len(&self, len: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.0)
            .unwrap();
        f.set_len(len).unwrap();
    }
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A queue served by `process_queue` from a temporary disk.
struct Harness<'a> {
    mem: &'a GuestMemory,
    drv: Driver<'a>,
    q: Queue,
    file: TempDisk,
    disk: DiskFile,
    id: DriveId,
    ctx: RequestContext,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemory, name: &str, read_only: bool) -> Self {
        let (drv, file) = (
            Driver::new(mem, QSIZE, 0),
            TempDisk::new(name, &pattern(DISK_BYTES, 0)),
        );
        let (q, disk, id) = (drv.queue(), file.open(read_only), drive_id(name));
        let ctx = RequestContext::default();
        Self {
            mem,
            drv,
            q,
            file,
            disk,
            id,
            ctx,
        }
    }

    fn try_run(&mut self) -> Result<bool, virtio_queue::Error> {
        process_queue(&mut self.q, self.mem, &self.disk, &self.id, &mut self.ctx)
    }

    fn run(&mut self) -> bool {
        self.try_run().expect("queue error")
    }

    /// Offers `segs` and serves them; returns the used length and the byte at `STATUS`.
    fn serve(&mut self, segs: &[Seg]) -> (u32, u8) {
        put(self.mem, STATUS, &[0xff]);
        let head = self.drv.push(segs);
        assert!(self.run());
        (self.drv.last_used(head), get(self.mem, STATUS, 1)[0])
    }

    /// Serves `[header at HDR, data.., status byte at STATUS]`.
    fn request(&mut self, kind: u32, sector: u64, data: &[Seg]) -> (u32, u8) {
        header(self.mem, HDR, kind, sector);
        self.serve(&[&[r(HDR, 16)], data, &[w(STATUS, 1)]].concat())
    }
}

fn activate(dev: &mut dyn VirtioDevice, mem: &GuestMemory, queue: Queue) -> Arc<Interrupt> {
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let (mem, queues, features) = (mem.clone(), vec![queue], dev.features());
    let interrupt = irq.clone();
    dev.activate(Activation {
        mem,
        queues,
        interrupt,
        features,
    })
    .unwrap();
    irq
}

/// Whether the irqfd fired since the last call (drains it).
fn fired(irq: &Interrupt) -> bool {
    irq.irqfd().read().is_ok()
}

#[test]
fn out_then_in_round_trip_with_any_layout() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "roundtrip", false);
    let before = t.file.contents();
    // OUT of three sectors at sector 3, the header merged with the start of the data.
    let data = pattern(1536, 0x5a);
    header(&mem, DATA, OUT, 3);
    put(&mem, DATA + 16, &data);
    let out = [r(DATA, 316), r(DATA + 316, 700), r(DATA + 1016, 536)];
    assert_eq!(t.serve(&[&out[..], &[w(STATUS, 1)]].concat()), (1, OK));
    let after = t.file.contents();
    assert_eq!(&after[3 * 512..6 * 512], &data[..]);
    assert_eq!(&after[..3 * 512], &before[..3 * 512]);
    assert_eq!(&after[6 * 512..], &before[6 * 512..]);

    // IN of the same sectors: a split header, a buffer straddling the two memory regions, an
    // empty descriptor, and the status byte merged with the end of the data.
    let a = REGION - 600;
    header(&mem, HDR, IN, 3);
    let segs = [
        r(HDR, 8),
        r(HDR + 8, 8),
        w(a, 1000),
        w(OUTSIDE, 0),
        w(DATA, 537),
    ];
    assert_eq!(t.serve(&segs).0, 1537);
    assert_eq!(get(&mem, a, 1000), &data[..1000]);
    assert_eq!(get(&mem, DATA, 537), [&data[1000..], &[OK]].concat());
    // Nothing new: no completion, no interrupt.
    assert!(!t.run());
}

#[test]
fn flush_and_get_id() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "get-id", false);
    assert_eq!(t.request(FLUSH, 0, &[]), (1, OK));
    // A short name is NUL-padded to 20 bytes; bytes past 20 are left alone.
    put(&mem, DATA, &[0xaa; 40]);
    assert_eq!(t.request(GET_ID, 0, &[w(DATA, 32)]), (21, OK));
    let mut expected = b"get-id".to_vec();
    expected.resize(20, 0);
    expected.resize(32, 0xaa);
    assert_eq!(get(&mem, DATA, 32), expected);
    // A long name is truncated to 20 bytes; a smaller buffer gets what fits.
    t.id = drive_id("a-drive-name-longer-than-twenty-bytes");
    assert_eq!(t.request(GET_ID, 0, &[w(DATA, 20)]), (21, OK));
    assert_eq!(get(&mem, DATA, 20), b"a-drive-name-longer-");
    assert_eq!(t.request(GET_ID, 0, &[w(DATA + 100, 8)]), (9, OK));
    assert_eq!(get(&mem, DATA + 100, 8), b"a-drive-");
}

#[test]
fn refused_requests_get_ioerr_and_leave_disk_and_memory_alone() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "refusals", false);
    let disk_before = t.file.contents();
    let edge = MEM_END - 256;
    #[rustfmt::skip]
    let cases: &[(&str, u32, u64, &[Seg])] = &[
        ("write past the end", OUT, DISK_SECTORS - 1, &[r(DATA, 1024)]),
        ("read past the end", IN, DISK_SECTORS, &[w(DATA, 512)]),
        ("write sector overflow", OUT, u64::MAX, &[r(DATA, 512)]),
        ("read sector overflow", IN, u64::MAX, &[w(DATA, 512)]),
        ("read nothing at a huge sector", IN, u64::MAX / 512 + 1, &[]),
        ("write part of a sector", OUT, 0, &[r(DATA, 100)]),
        ("read part of a sector", IN, 0, &[w(DATA, 513)]),
        ("write data outside memory", OUT, 0, &[r(OUTSIDE, 512)]),
        ("read data outside memory", IN, 0, &[w(OUTSIDE, 512)]),
        ("write data partly outside", OUT, 0, &[r(edge, 512)]),
        ("read data partly outside", IN, 0, &[w(edge, 512)]),
        ("read with a later buffer outside", IN, 0, &[w(DATA, 512), w(OUTSIDE, 512)]),
    ];
    for &(what, kind, sector, data) in cases {
        put(&mem, DATA, &[0x5a; 1024]);
        put(&mem, edge, &[0x5a; 256]);
        assert_eq!(t.request(kind, sector, data), (1, IOERR), "{what}");
        let untouched = get(&mem, DATA, 1024) == [0x5a; 1024];
        assert!(untouched && get(&mem, edge, 256) == [0x5a; 256], "{what}");
        assert!(t.file.contents() == disk_before, "{what}: disk changed");
    }
    // Headers shorter than 16 bytes, or outside memory.
    header(&mem, HDR, OUT, 0);
    #[rustfmt::skip]
    let chains: &[&[Seg]] = &[
        &[r(HDR, 15), w(STATUS, 1)],
        &[r(HDR, 8), r(HDR + 8, 7), w(DATA, 512), w(STATUS, 1)],
        &[r(OUTSIDE, 16), r(DATA, 512), w(STATUS, 1)],
        &[r(MEM_END - 8, 16), r(DATA, 512), w(STATUS, 1)],
    ];
    for segs in chains {
        assert_eq!(t.serve(segs), (1, IOERR), "{segs:?}");
    }
    // Unknown types are UNSUPP.
    for kind in [99, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_SCSI_CMD, u32::MAX] {
        assert_eq!(t.request(kind, 0, &[r(DATA, 512)]), (1, UNSUPP), "{kind}");
    }
    assert!(t.file.contents() == disk_before);
}

#[test]
fn read_only_disk_refuses_writes_only() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "read-only", true);
    let before = t.file.contents();
    put(&mem, DATA, &[0x77; 512]);
    assert_eq!(t.request(OUT, 0, &[r(DATA, 512)]), (1, IOERR));
    assert!(t.file.contents() == before);
    assert_eq!(t.request(IN, 1, &[w(DATA, 512)]), (513, OK));
    assert_eq!(get(&mem, DATA, 512), t.file.sectors(1, 1));
    assert_eq!(t.request(FLUSH, 0, &[]), (1, OK));
}

#[test]
fn malformed_chains_are_dropped() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "dropped", false);
    let before = t.file.contents();
    header(&mem, HDR, OUT, 0);
    header(&mem, HDR + 16, IN, 0);
    put(&mem, DATA, &[0x11; 1024]);
    put(&mem, STATUS, &[0xff]);
    #[rustfmt::skip]
    let chains: &[&[Seg]] = &[
        &[r(HDR, 16), r(DATA, 512)], // no status byte
        &[r(HDR, 16), r(DATA, 512), w(OUTSIDE, 0)], // an empty one
        &[r(HDR + 16, 16), w(DATA, 512), w(OUTSIDE, 1)], // status outside memory
        &[r(HDR + 16, 16), w(DATA, 512), w(MEM_END, 1)],
        &[r(HDR, 16), w(DATA, 512), r(DATA + 512, 512), w(STATUS, 1)], // readable after writable
        &[r(HDR, 16), r(DATA, 512), w(OUTSIDE, 1)], // a write with nowhere to report: not run
    ];
    for segs in chains {
        t.drv.push(segs);
    }
    assert!(t.run());
    let used: Vec<_> = (0..6).map(|n| t.drv.used(n).1).collect();
    assert_eq!(used, [0; 6]);
    assert!(t.file.contents() == before);
    assert_eq!(get(&mem, STATUS, 1), [0xff]);
    assert_eq!(get(&mem, DATA + 512, 512), [0x11; 512]);
}

#[test]
fn looping_and_truncated_chains_terminate() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "loops", false);
    header(&mem, HDR, IN, 0);
    header(&mem, HDR + 16, FLUSH, 0);
    let d = |i, addr, len, flags, next| t.drv.set_desc(i, raw(addr, len, flags, next));
    // 0 -> 1 -> 1 -> ...: a status byte pointing to itself.
    d(0, HDR, 16, NEXT, 1);
    d(1, STATUS, 1, WRITE | NEXT, 1);
    // 2 -> 3 -> 4 -> 3 -> ...: a cycle of two writable descriptors (ends on 3).
    d(2, HDR, 16, NEXT, 3);
    d(3, STATUS + 1, 1, WRITE | NEXT, 4);
    d(4, DATA, 512, WRITE | NEXT, 3);
    // 5 -> 5 -> ...: a header pointing to itself; 6 -> 7 -> 6: back to a readable one.
    d(5, HDR, 16, NEXT, 5);
    d(6, HDR, 16, NEXT, 7);
    d(7, STATUS + 2, 1, WRITE | NEXT, 6);
    // 8 -> 9 -> (16): the chain ends after the status byte: a complete FLUSH.
    d(8, HDR + 16, 16, NEXT, 9);
    d(9, STATUS + 3, 1, WRITE | NEXT, QSIZE);
    // 10 -> (200): a header alone.
    d(10, HDR, 16, NEXT, 200);
    put(&mem, STATUS, &[0xff; 4]);
    for head in [0, 2, 5, 6, 8, 10] {
        t.drv.offer(head);
    }
    assert!(t.run());
    let used: Vec<_> = (0..6).map(|n| t.drv.used(n)).collect();
    assert_eq!(used, [(0, 1), (2, 1), (5, 0), (6, 0), (8, 1), (10, 0)]);
    // The loops got an answer (their data length is not whole sectors).
    assert_eq!(get(&mem, STATUS, 4), [IOERR, IOERR, 0xff, OK]);
}

#[test]
fn indirect_tables() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "indirect", false);
    header(&mem, HDR, IN, 5);
    let entry = |table: u64, i: u64, d| mem.write_obj(d, GuestAddress(table + 16 * i)).unwrap();
    entry(IND, 0, raw(HDR, 16, NEXT, 1));
    entry(IND, 1, raw(DATA, 512, WRITE | NEXT, 2));
    entry(IND, 2, raw(STATUS, 1, WRITE, 0));
    // A table inside a table ends the chain after the header.
    entry(IND + 0x100, 0, raw(HDR, 16, NEXT, 1));
    entry(IND + 0x100, 1, raw(IND, 48, INDIRECT, 0));
    t.drv.set_desc(0, raw(IND, 48, INDIRECT, 0));
    t.drv.set_desc(1, raw(IND, 40, INDIRECT, 0)); // not a multiple of 16
    t.drv.set_desc(2, raw(IND + 0x100, 32, INDIRECT, 0));
    t.drv.set_desc(3, raw(OUTSIDE, 48, INDIRECT, 0));
    t.drv.set_desc(4, raw(IND, 0, INDIRECT, 0));
    for head in 0..5 {
        t.drv.offer(head);
    }
    put(&mem, STATUS, &[0xff]);
    assert!(t.run());
    let used: Vec<_> = (0..5).map(|n| t.drv.used(n)).collect();
    assert_eq!(used, [(0, 513), (1, 0), (2, 0), (3, 0), (4, 0)]);
    assert_eq!(get(&mem, STATUS, 1), [OK]);
    assert_eq!(get(&mem, DATA, 512), t.file.sectors(5, 1));
}

#[test]
fn impossible_avail_ring_is_a_queue_error() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "avail-index", false);
    t.drv.set_avail_idx(QSIZE + 1);
    let result = t.try_run();
    assert!(matches!(
        result,
        Err(virtio_queue::Error::InvalidAvailRingIndex)
    ));
    // So is a head index past the table.
    t.drv = Driver::new(&mem, QSIZE, 0);
    t.q = t.drv.queue();
    t.drv.offer(QSIZE);
    assert!(t.try_run().is_err());
}

#[test]
fn block_device_stops_serving_a_broken_queue_until_reset() {
    let mem = guest_memory();
    let file = TempDisk::new("device", &pattern(DISK_BYTES, 3));
    let mut dev = Block::new(file.open(false), "device").unwrap();
    let mut config = [0u8; 16];
    dev.read_config(0, &mut config);
    assert_eq!(config[..8], DISK_SECTORS.to_le_bytes());
    assert_eq!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    dev.handle_queue(0); // not active yet: nothing happens

    let mut drv = Driver::new(&mem, QSIZE, 0);
    let irq = activate(&mut dev, &mem, drv.queue());
    header(&mem, HDR, IN, 2);
    let request = [r(HDR, 16), w(DATA, 512), w(STATUS, 1)];
    let head = drv.push(&request);
    dev.handle_queue(0);
    assert!(fired(&irq));
    assert_ne!(irq.status() & VIRTIO_MMIO_INT_VRING, 0);
    assert_eq!(drv.last_used(head), 513);
    assert_eq!(get(&mem, DATA, 512), file.sectors(2, 1));

    // An avail index more than a queue ahead breaks the queue; valid requests then wait.
    drv.set_avail_idx(1 + QSIZE + 1);
    dev.handle_queue(0);
    drv.set_avail_idx(1);
    drv.push(&request);
    dev.handle_queue(0);
    assert!(!fired(&irq));
    assert_eq!(drv.used_idx(), 1);

    dev.reset();
    dev.handle_queue(0);
    assert_eq!(drv.used_idx(), 1);
    let mut drv = Driver::new(&mem, QSIZE, 0);
    let irq = activate(&mut dev, &mem, drv.queue());
    let head = drv.push(&request);
    dev.handle_queue(0);
    assert!(fired(&irq));
    assert_eq!(drv.last_used(head), 513);
}

#[test]
fn block_device_honours_event_idx() {
    let mem = guest_memory();
    let file = TempDisk::new("event-idx", &pattern(DISK_BYTES, 0));
    let mut dev = Block::new(file.open(true), "event-idx").unwrap();
    assert_ne!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mut drv = Driver::new(&mem, QSIZE, 0);
    let mut queue = drv.queue();
    queue.set_event_idx(true);
    let irq = activate(&mut dev, &mem, queue);
    // used_event = 1: interrupt once the second request is done.
    put(&mem, drv.used_event(), &1u16.to_le_bytes());
    header(&mem, HDR, FLUSH, 0);
    drv.push(&[r(HDR, 16), w(STATUS, 1)]);
    dev.handle_queue(0);
    assert_eq!((drv.used_idx(), fired(&irq)), (1, false));
    drv.push(&[r(HDR, 16), w(STATUS, 1)]);
    dev.handle_queue(0);
    assert_eq!((drv.used_idx(), fired(&irq)), (2, true));
}

#[test]
fn host_io_error_is_reported_and_the_device_keeps_going() {
    let mem = guest_memory();
    let file = TempDisk::new("host-eof", &pattern(DISK_BYTES, 9));
    let mut dev = Block::new(file.open(false), "host-eof").unwrap();
    let mut drv = Driver::new(&mem, QSIZE, 0);
    let irq = activate(&mut dev, &mem, drv.queue());
    file.set_len(0);
    header(&mem, HDR, IN, 2);
    let request = [r(HDR, 16), w(DATA, 1024), w(STATUS, 1)];
    let head = drv.push(&request);
    dev.handle_queue(0);
    assert!(fired(&irq));
    assert_eq!(
        (drv.last_used(head), get(&mem, STATUS, 1)),
        (1, vec![IOERR])
    );

    file.set_len(DISK_BYTES as u64);
    put(&mem, DATA, &[0xee; 1024]);
    let head = drv.push(&request);
    dev.handle_queue(0);
    assert!(fired(&irq));
    assert_eq!(
        (drv.last_used(head), get(&mem, STATUS, 1)),
        (1025, vec![OK])
    );
    assert_eq!(get(&mem, DATA, 1024), [0; 1024]); // the truncation zeroed the file
}

/// xorshift64: deterministic and dependency-free.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

const FUZZ_TABLES: u64 = 4;
const FUZZ_TABLE_LEN: u16 = 32;
const FUZZ_SLOTS: u64 = 8;

/// A random descriptor. Device-writable buffers only ever lie at or above `HDR` (or outside
/// memory), so serving one chain cannot change the tables of the next.
fn random_desc(rng: &mut XorShift, table_len: u16) -> RawDescriptor {
    let mut flags = rng.pick(&[0, NEXT, NEXT, WRITE, WRITE | NEXT, WRITE | NEXT]);
    let next = rng.below(u64::from(table_len) + 2) as u16;
    if rng.below(8) == 0 {
        flags |= INDIRECT;
        let addr = match rng.below(8) {
            0 => OUTSIDE,
            1 => MEM_END - 8,
            _ => IND + rng.below(FUZZ_TABLES) * 0x400 + rng.below(8) * 16,
        };
        let len = match rng.below(6) {
            0 => rng.below(600),
            _ => 16 * (1 + rng.below(u64::from(FUZZ_TABLE_LEN))),
        };
        return raw(addr, len as u32, flags, next);
    }
    let addr = match rng.below(10) {
        0..=2 => HDR + rng.below(FUZZ_SLOTS) * 16,
        3 => OUTSIDE + rng.below(0x1000),
        4 => MEM_END - rng.below(1024),
        5 => u64::MAX - rng.below(0x1000),
        6 => REGION - rng.below(1024),
        _ => DATA + rng.below(0x1_0000),
    };
    let len = match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => 16,
        3 | 4 => 512,
        5 => 1024,
        6 => u32::MAX - rng.below(4) as u32,
        _ => rng.below(2048) as u32,
    };
    raw(addr, len, flags, next)
}

/// Each offered chain's head and device-writable byte count, by the library's own chain walk;
/// `None` when the library refuses the available ring.
fn writable_per_chain(drv: &Driver, mem: &GuestMemory, q: &Queue) -> Option<Vec<(u16, u64)>> {
    let mut shadow = drv.queue();
    shadow.set_next_avail(q.next_avail());
    let writable = |c: DescriptorChain<&GuestMemory>| {
        let head = c.head_index();
        (
            head,
            c.filter(|d| d.is_write_only())
                .map(|d| u64::from(d.len()))
                .sum(),
        )
    };
    Some(shadow.iter(mem).ok()?.map(writable).collect())
}

#[test]
fn random_descriptor_tables_never_panic() {
    let mem = guest_memory();
    let mut t = Harness::new(&mem, "fuzz", false);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let noise: Vec<u8> = (0..0x2_0000).map(|_| rng.next() as u8).collect();
    put(&mem, DATA, &noise);
    t.drv = Driver::new(&mem, QSIZE, 65_000);
    t.q = t.drv.queue();
    let (mut served, mut errors) = (0, 0);
    for _ in 0..2000 {
        for i in 0..QSIZE {
            t.drv.set_desc(i, random_desc(&mut rng, QSIZE));
        }
        for i in 0..FUZZ_TABLES * 0x40 {
            let d = random_desc(&mut rng, FUZZ_TABLE_LEN);
            mem.write_obj(d, GuestAddress(IND + 16 * i)).unwrap();
        }
        for slot in 0..FUZZ_SLOTS {
            let (any_kind, any_sector) = (rng.next() as u32, rng.below(80));
            // FLUSH is rare: each one is an fsync.
            let flush = if rng.below(50) == 0 { FLUSH } else { IN };
            let kind = rng.pick(&[IN, OUT, OUT, flush, GET_ID, 99, any_kind]);
            let sector = rng.pick(&[0, 1, DISK_SECTORS, u64::MAX, any_sector]);
            header(&mem, HDR + slot * 16, kind, sector);
        }
        t.q.set_event_idx(rng.below(2) == 0);
        put(&mem, t.drv.used_event(), &rng.next().to_le_bytes()[..2]);
        // A well-formed request (unless its indexes collide) goes first.
        let [i, j, k] = [0; 3].map(|_| rng.below(u64::from(QSIZE)) as u16);
        let (hdr, data) = (HDR + rng.below(FUZZ_SLOTS) * 16, DATA + rng.below(0x1_0000));
        let (len, flags) = (512 * (1 + rng.below(4)) as u32, rng.pick(&[0, WRITE]));
        t.drv.set_desc(i, raw(hdr, 16, NEXT, j));
        t.drv.set_desc(j, raw(data, len, flags | NEXT, k));
        t.drv.set_desc(k, raw(data + u64::from(len), 1, WRITE, 0));
        t.drv.offer(i);
        // Now and then more than a queue's worth, or a head past the table.
        for _ in 0..rng.pick(&[0, 1, 2, 3, 4, 5, 8, QSIZE, QSIZE + 1]) {
            let past_the_table = rng.below(50) == 0;
            let head = rng.below(u64::from(QSIZE)) as u16;
            t.drv.offer(if past_the_table { QSIZE } else { head });
        }

        let expected = writable_per_chain(&t.drv, &mem, &t.q);
        let first = t.q.next_used();
        match (t.try_run(), expected) {
            (Ok(_), Some(expected)) => {
                assert_eq!(t.q.next_used().wrapping_sub(first), expected.len() as u16);
                assert_eq!(t.drv.used_idx(), t.q.next_used());
                for (i, &(head, writable)) in expected.iter().enumerate() {
                    let (id, len) = t.drv.used(first.wrapping_add(i as u16));
                    assert_eq!(id, u32::from(head));
                    assert!(u64::from(len) <= writable, "{len} > {writable}");
                }
                served += expected.len();
            }
            (Ok(_), None) => panic!("served a queue the library refuses"),
            (Err(_), _) => {
                errors += 1;
                t.drv = Driver::new(&mem, QSIZE, rng.next() as u16);
                t.q = t.drv.queue();
            }
        }
    }
    assert!(
        served > 2000 && errors > 20,
        "{served} served, {errors} errors"
    );
    let changed = t.file.contents() != pattern(DISK_BYTES, 0);
    assert!(changed, "no write ever succeeded");
}
