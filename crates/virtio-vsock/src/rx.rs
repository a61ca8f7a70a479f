//! Filling the guest's RX buffers: control packets first, then host data, one packet per
//! connection in turn so a busy connection cannot starve the others. Host bytes are read
//! straight into the buffer, never more than the guest's credit allows.

use virtio_vsock::packet::VsockPacket;

use crate::conn::{ConnKey, HostRead};
use crate::muxer::{Ctrl, Muxer};
use crate::packet::*;
use crate::MAX_CTRL;

impl Muxer {
    /// Queues `ctrl`; false if the queue is full.
    pub(crate) fn push_ctrl(&mut self, ctrl: Ctrl) -> bool {
        if self.ctrl.len() >= MAX_CTRL {
            return false;
        }
        self.ctrl.push_back(ctrl);
        true
    }

    /// A control packet from the host for connection `key` (which may be gone already).
    pub(crate) fn conn_ctrl(&self, key: ConnKey, op: u16) -> Ctrl {
        let conn_id = self.conns.get(&key).map_or(0, |c| c.id);
        Ctrl {
            src_cid: HOST_CID,
            key,
            op,
            flags: 0,
            conn_id,
        }
    }

    /// Whether anything may be waiting for an RX buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.ctrl.is_empty() || !self.rx_ready.is_empty()
    }

    /// Writes the next packet into `pkt`; returns its length, or `None` if there was nothing
    /// to send after all (the buffer stays unused).
    pub fn fill_rx(&mut self, pkt: &mut VsockPacket<'_, ()>) -> Option<u32> {
        while let Some(c) = self.ctrl.pop_front() {
            let mut hdr = Header {
                src_cid: c.src_cid,
                dst_cid: self.guest_cid,
                src_port: c.key.local_port,
                dst_port: c.key.peer_port,
                type_: TYPE_STREAM,
                op: c.op,
                flags: c.flags,
                ..Header::default()
            };
            match self.conns.get_mut(&c.key) {
                // Queued for an earlier connection between the same ports.
                Some(conn) if c.conn_id != 0 && conn.id != c.conn_id => continue,
                Some(conn) => {
                    match c.op {
                        OP_CREDIT_UPDATE => conn.credit_update_queued = false,
                        // The request is only worth sending if credit is still short.
                        OP_CREDIT_REQUEST if conn.peer_credit() > 0 => continue,
                        _ => {}
                    }
                    conn.stamp(&mut hdr);
                }
                // The connection went away after this packet was queued.
                None if c.op != OP_RST => continue,
                None => {}
            }
            log::trace!(
                "virtio-vsock: host op {} {}->{} flags {} fwd_cnt {}",
                hdr.op,
                hdr.src_port,
                hdr.dst_port,
                hdr.flags,
                hdr.fwd_cnt
            );
            pkt.set_header_from_raw(&hdr.to_bytes()).ok()?;
            return Some(HEADER_LEN);
        }
        let data = *pkt.data_slice()?;
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rx_ready = false;
            self.dirty.push(conn.fd());
            if !conn.can_read_host() {
                continue;
            }
            let mut hdr = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                type_: TYPE_STREAM,
                ..Header::default()
            };
            let used = match conn.read_host(&data) {
                HostRead::WouldBlock => continue,
                HostRead::Data(n) => {
                    hdr.op = OP_RW;
                    hdr.len = n;
                    conn.stamp(&mut hdr);
                    if conn.peer_credit() > 0 {
                        conn.in_rx_ready = true;
                        self.rx_ready.push_back(key);
                    } else if !conn.credit_requested {
                        conn.credit_requested = true;
                        self.queue_conn_ctrl(key, OP_CREDIT_REQUEST);
                    }
                    HEADER_LEN + n
                }
                HostRead::Eof if !conn.finished() => {
                    hdr.op = OP_SHUTDOWN;
                    hdr.flags = SHUTDOWN_SEND;
                    conn.stamp(&mut hdr);
                    HEADER_LEN
                }
                HostRead::Eof | HostRead::Failed => {
                    hdr.op = OP_RST;
                    self.remove_conn(key);
                    HEADER_LEN
                }
            };
            pkt.set_header_from_raw(&hdr.to_bytes()).ok()?;
            return Some(used);
        }
        None
    }
}
