//! Test harness: a mock guest driving the three queues of a real [`Vsock`] that runs on a real
//! event loop, with real Unix sockets on the host side.

mod guest_init;
mod host_init;
mod robust;
mod streams;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_virtio::testing::{get, put, r, w, Seg};
use ember_virtio::{Activation, GuestMemory, Interrupt, Queue, QueueT, VirtioDevice};
use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::{MockSplitQueue, UsedRing};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::packet::*;
use crate::{Vsock, VsockSubscriber, RX_QUEUE, TX_QUEUE};

pub const CID: u64 = 3;
const MEM_SIZE: usize = 0x200_0000;
const RX_SLOTS: u64 = 64;
const RX_BUF: u64 = 0x100_0000;
const RX_DATA: u32 = 4096;
const TX_BUF: u64 = 0x180_0000;

/// A fresh directory under the system temp dir.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ember-vsock-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One split queue of the mock driver, placed at `base` with its own used ring.
pub struct Vq {
    vq: MockSplitQueue<'static, GuestMemory>,
    used: UsedRing<'static, GuestMemory>,
    size: u16,
    avail: u16,
    free: u16,
    seen: u16,
}

impl Vq {
    fn new(mem: &'static GuestMemory, base: u64, size: u16) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(base), size);
        let used = UsedRing::new(mem, GuestAddress(base + 0x8000), size);
        Self {
            vq,
            used,
            size,
            avail: 0,
            free: 0,
            seen: 0,
        }
    }

    fn queue(&self, base: u64) -> Queue {
        let mut q: Queue = self.vq.create_queue().unwrap();
        q.set_used_ring_address(Some((base + 0x8000) as u32), Some(0));
        q
    }

    /// Writes `segs` as one chain in the next table slots and offers it.
    pub fn push(&mut self, segs: &[Seg]) -> u16 {
        let head = self.free;
        for (i, &(addr, len, write)) in segs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < segs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = (index + 1) % self.size;
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            self.vq.desc_table().store(index, d).unwrap();
        }
        self.free = (head + segs.len() as u16) % self.size;
        self.offer(head);
        head
    }

    /// Stores a raw descriptor.
    pub fn set_desc(&self, index: u16, d: RawDescriptor) {
        self.vq.desc_table().store(index, d).unwrap();
    }

    /// Offers chain `head`.
    pub fn offer(&mut self, head: u16) {
        let slot = usize::from(self.avail % self.size);
        self.vq.avail().ring().ref_at(slot).unwrap().store(head);
        self.avail = self.avail.wrapping_add(1);
        self.vq.avail().idx().store(self.avail);
    }

    /// Used entries not seen yet, as (head, len).
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx = self.used.idx().load();
        let mut out = Vec::new();
        while self.seen != idx {
            let e = self
                .used
                .ring()
                .ref_at(usize::from(self.seen % self.size))
                .unwrap();
            let e = e.load();
            out.push((e.id() as u16, e.len()));
            self.seen = self.seen.wrapping_add(1);
        }
        out
    }

    /// Chains offered and not completed.
    pub fn outstanding(&self) -> u16 {
        self.avail.wrapping_sub(self.used.idx().load())
    }
}

/// A packet the guest received.
#[derive(Debug, Clone)]
pub struct Rx {
    pub hdr: Header,
    pub data: Vec<u8>,
}

/// The mock guest, the device and its event loop.
pub struct Harness {
    pub mem: &'static GuestMemory,
    pub rx: Vq,
    pub tx: Vq,
    pub evq: Vq,
    rx_addr: HashMap<u16, u64>,
    next_rx_slot: u64,
    tx_slot: u64,
    pub dev: Arc<Mutex<Vsock>>,
    pub em: EventManager<VsockSubscriber>,
    pub dir: PathBuf,
    pub uds: PathBuf,
    /// Packets received and not yet looked at.
    pub inbox: Vec<Rx>,
    /// Re-post RX buffers as they are used.
    pub repost: bool,
}

impl Harness {
    /// A device with `rx_bufs` RX buffers posted, activated and on its event loop.
    pub fn new(rx_bufs: usize) -> Self {
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        ));
        let dir = temp_dir();
        let uds = dir.join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::new(CID, &uds).unwrap()));
        dev.lock().unwrap().set_timeout(Duration::from_millis(300));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(VsockSubscriber(dev.clone()));
        let (rx, tx, evq) = (
            Vq::new(mem, 0, 128),
            Vq::new(mem, 0x1_0000, 128),
            Vq::new(mem, 0x2_0000, 16),
        );
        let activation = Activation {
            mem: mem.clone(),
            queues: vec![rx.queue(0), tx.queue(0x1_0000), evq.queue(0x2_0000)],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            features: 0,
        };
        dev.lock().unwrap().activate(activation).unwrap();
        let mut h = Self {
            mem,
            rx,
            tx,
            evq,
            rx_addr: HashMap::new(),
            next_rx_slot: 0,
            tx_slot: 0,
            dev,
            em,
            dir,
            uds,
            inbox: Vec::new(),
            repost: true,
        };
        h.evq.push(&[w(0x3_0000, 8)]);
        h.post_rx(rx_bufs);
        h
    }

    /// Offers `n` RX buffers (header and 4 KiB of data each).
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = RX_BUF + (self.next_rx_slot % RX_SLOTS) * 0x2000;
            self.next_rx_slot += 1;
            let head = self
                .rx
                .push(&[w(addr, HEADER_LEN), w(addr + 0x100, RX_DATA)]);
            self.rx_addr.insert(head, addr);
        }
        self.kick(RX_QUEUE);
    }

    pub fn kick(&self, queue: usize) {
        self.dev.lock().unwrap().queue_events()[queue]
            .write(1)
            .unwrap();
    }

    /// Runs the event loop until it has been idle for a few milliseconds, collecting what the
    /// guest receives.
    pub fn pump(&mut self) {
        let mut idle = 0;
        while idle < 3 {
            if self.em.run_with_timeout(2).unwrap() == 0 {
                idle += 1;
            } else {
                idle = 0;
            }
            self.collect();
        }
    }

    fn collect(&mut self) {
        let used = self.rx.take_used();
        let n = used.len();
        for (head, len) in used {
            let addr = self.rx_addr[&head];
            let hdr = Header::from_bytes(&get(self.mem, addr, HEADER_LEN as usize)).unwrap();
            assert_eq!(len, HEADER_LEN + hdr.len, "used length matches header");
            let data = get(self.mem, addr + 0x100, hdr.len as usize);
            self.inbox.push(Rx { hdr, data });
        }
        if self.repost && n > 0 {
            self.post_rx(n);
        }
    }

    /// Sends one packet on the TX queue and runs the loop.
    pub fn send(&mut self, mut hdr: Header, data: &[u8]) {
        hdr.len = data.len() as u32;
        let addr = TX_BUF + (self.tx_slot % 32) * 0x1_2000;
        self.tx_slot += 1;
        put(self.mem, addr, &hdr.to_bytes());
        put(self.mem, addr + 0x100, data);
        if data.is_empty() {
            self.tx.push(&[r(addr, HEADER_LEN)]);
        } else {
            self.tx
                .push(&[r(addr, HEADER_LEN), r(addr + 0x100, data.len() as u32)]);
        }
        self.kick(TX_QUEUE);
        self.pump();
    }

    /// Removes and returns received packets matching `pred`.
    pub fn take(&mut self, pred: impl Fn(&Rx) -> bool) -> Vec<Rx> {
        let (hit, rest) = std::mem::take(&mut self.inbox)
            .into_iter()
            .partition(|p| pred(p));
        self.inbox = rest;
        hit
    }

    /// Pumps until a packet matching `pred` arrives; panics after two seconds.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&Rx) -> bool) -> Rx {
        let start = Instant::now();
        loop {
            self.pump();
            if let Some(i) = self.inbox.iter().position(&pred) {
                return self.inbox.remove(i);
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "no {what}: {:?}",
                self.inbox
            );
        }
    }

    /// A host client connected to the device socket that sent `CONNECT <port>\n`; returns it
    /// with the guest's view of the request.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, Rx) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let req = self.expect("request", |p| {
            p.hdr.op == OP_REQUEST && p.hdr.dst_port == port
        });
        (s, req)
    }

    /// A host-initiated connection the guest accepted, with the `OK` line read.
    pub fn open_host_conn(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
        let (mut s, req) = self.host_connect(port);
        let local = req.hdr.src_port;
        self.send(guest_hdr(OP_RESPONSE, port, local, buf_alloc, 0), &[]);
        let want = format!("OK {local}\n");
        let mut got = vec![0u8; want.len()];
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
        s.set_nonblocking(true).unwrap();
        (s, local)
    }

    /// A listener for guest connects to host port `port`.
    pub fn listen(&self, port: u32) -> UnixListener {
        let mut path = self.uds.as_os_str().to_owned();
        path.push(format!("_{port}"));
        UnixListener::bind(PathBuf::from(path)).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A header from the guest (CID 3) to the host.
pub fn guest_hdr(op: u16, src_port: u32, dst_port: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc,
        fwd_cnt,
        ..Header::default()
    }
}

impl Header {
    /// The same header with `flags`.
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }
}

/// Reads what is available on a non-blocking stream; `None` at end of stream.
pub fn read_avail(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return if out.is_empty() { None } else { Some(out) },
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(out),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reads until end of stream (the stream must be blocking); `Err` on a reset.
pub fn read_to_end(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32) as u8
        })
        .collect()
}
