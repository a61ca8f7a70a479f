//! The network device as the transport and the event loop see it.

use std::sync::Arc;

use ember_virtio::{
    read_config_bytes, warn_limited, ActivateError, Activation, GuestMemory, Interrupt, LogLimiter,
    Queue, QueueT, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use event_manager::EventSet;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::Backend;
use crate::header::Offloads;
use crate::rx::{process_rx, RxConfig, RxContext, RxState};
use crate::tap::Tap;
use crate::tx::{process_tx, TxContext, TxState};
use crate::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE};

/// `virtio_net_config` up to `max_virtqueue_pairs`: mac, status (u16), pairs (u16).
const CONFIG_LEN: usize = 10;

/// How the guest NIC looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Offer checksum and TSO offloads (both directions) to the guest; the tap does the rest.
    pub offload: bool,
}

/// Traffic counters since the device was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes, without the virtio-net header.
    pub rx_bytes: u64,
    /// Frames from the host the guest could not be given.
    pub rx_dropped: u64,
    /// Frames sent to the host.
    pub tx_frames: u64,
    /// Their bytes, without the virtio-net header.
    pub tx_bytes: u64,
    /// Guest frames refused or lost.
    pub tx_dropped: u64,
}

/// What activation set up.
struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    rx_cfg: RxConfig,
    tx_offloads: Offloads,
    rx_deferred: bool,
    tx_blocked: bool,
    /// The driver broke a queue: nothing is served until it resets the device.
    broken: bool,
}

/// A virtio-net device with two queues (RX 0, TX 1), backed by a tap (or, in tests, any
/// [`Backend`]).
pub struct Net<B: Backend = Tap> {
    backend: B,
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_evts: [EventFd; 2],
    active: Option<Active>,
    backend_failed: bool,
    /// What the subscriber registered for the backend fd.
    pub(crate) registered: EventSet,
    rx: RxContext,
    tx: TxContext,
    counters: NetCounters,
    limiter: LogLimiter,
}

/// The checksum and segmentation offloads offered when [`NetConfig::offload`] is set.
pub const OFFLOAD_FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN;

impl Net<Tap> {
    /// A device on `tap`.
    pub fn new(tap: Tap, config: NetConfig) -> std::io::Result<Self> {
        Self::with_backend(tap, config)
    }
}

impl<B: Backend> Net<B> {
    /// A device on any backend (the tests use a socket pair).
    pub fn with_backend(backend: B, config: NetConfig) -> std::io::Result<Self> {
        let bit = |b: u32| 1u64 << b;
        // INDIRECT_DESC: a TSO frame is up to 19 descriptors; through an indirect table it
        // takes one ring slot, so the guest keeps many more frames in flight.
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF);
        if config.offload {
            features |= OFFLOAD_FEATURES;
        }
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[0..6].copy_from_slice(&config.mac);
        cfg[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Self {
            backend,
            features,
            config: cfg,
            queue_evts: [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?],
            active: None,
            backend_failed: false,
            registered: EventSet::empty(),
            rx: RxContext::default(),
            tx: TxContext::default(),
            counters: NetCounters::default(),
            limiter: LogLimiter::default(),
        })
    }

    /// The backend (the tap).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Traffic counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The events the device needs from the backend now: `IN` while it can take a frame,
    /// `OUT` while transmission waits for room. Empty before activation, after a reset, and
    /// once the backend failed.
    pub fn tap_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        match &self.active {
            Some(a) if !a.broken && !self.backend_failed => {
                if !a.rx_deferred {
                    set |= EventSet::IN;
                }
                if a.tx_blocked {
                    set |= EventSet::OUT;
                }
            }
            _ => {}
        }
        set
    }

    /// The driver added RX buffers.
    pub fn handle_rx_queue(&mut self) {
        self.run_rx();
    }

    /// The driver added TX frames.
    pub fn handle_tx_queue(&mut self) {
        self.run_tx();
    }

    /// The backend reported `events`.
    pub fn handle_tap(&mut self, events: EventSet) {
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            if !self.backend_failed {
                log::error!(
                    "virtio-net: the host network device failed ({events:?}); no more traffic"
                );
            }
            self.backend_failed = true;
            return;
        }
        if events.contains(EventSet::OUT) {
            if let Some(a) = self.active.as_mut() {
                a.tx_blocked = false;
            }
            self.run_tx();
        }
        if events.contains(EventSet::IN) {
            self.run_rx();
        }
    }

    fn run_rx(&mut self) {
        let read = !self.backend_failed;
        let Some(a) = self.active.as_mut().filter(|a| !a.broken) else {
            return;
        };
        let result = process_rx(
            &mut a.rx,
            &a.mem,
            &mut self.backend,
            read,
            &a.rx_cfg,
            &mut self.rx,
            &mut self.counters,
        );
        match result {
            Ok((state, notify)) => {
                a.rx_deferred = state == RxState::Deferred;
                if notify {
                    a.interrupt.signal_used_queue();
                }
            }
            Err(e) => Self::break_queue(a, &mut self.limiter, "rx", e),
        }
    }

    fn run_tx(&mut self) {
        let Some(a) = self.active.as_mut().filter(|a| !a.broken && !a.tx_blocked) else {
            return;
        };
        let result = process_tx(
            &mut a.tx,
            &a.mem,
            &mut self.backend,
            &a.tx_offloads,
            &mut self.tx,
            &mut self.counters,
        );
        match result {
            Ok((state, notify)) => {
                a.tx_blocked = state == TxState::Blocked;
                if state == TxState::MoreWork {
                    // Come back after the rest of the event loop had its turn.
                    let _ = self.queue_evts[TX_QUEUE].write(1);
                }
                if notify {
                    a.interrupt.signal_used_queue();
                }
            }
            Err(e) => Self::break_queue(a, &mut self.limiter, "tx", e),
        }
    }

    fn break_queue(a: &mut Active, limiter: &mut LogLimiter, which: &str, e: virtio_queue::Error) {
        a.broken = true;
        warn_limited!(
            limiter,
            "virtio-net: {which} queue unusable until the driver resets the device: {e}"
        );
    }
}

impl<B: Backend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let got = activation.queues.len();
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        if !rx.ready() || !tx.ready() {
            return Err(ActivateError::Device(
                "virtio-net needs both the rx and the tx queue".into(),
            ));
        }
        let features = activation.features;
        let rx_cfg = RxConfig {
            mergeable: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            offloads: Offloads::to_guest(features),
        };
        self.backend
            .set_offload(rx_cfg.offloads.tun_flags())
            .map_err(|e| ActivateError::Device(format!("cannot set tap offloads: {e}")))?;
        self.rx.clear();
        self.active = Some(Active {
            mem: activation.mem,
            rx,
            tx,
            interrupt: activation.interrupt,
            rx_cfg,
            tx_offloads: Offloads::from_guest(features),
            rx_deferred: false,
            tx_blocked: false,
            broken: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx.clear();
    }
}

// Queue indexes as the subscriber uses them.
const _: () = assert!(RX_QUEUE == 0 && TX_QUEUE == 1);
