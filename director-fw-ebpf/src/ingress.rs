//! The ingress side of the XDP and TC contexts.

use aya_ebpf::programs::{TcContext, XdpContext};

use crate::parse::Frame;

/// Where a packet came in. The interface counts every packet (its counter row); the VLAN is
/// read only when a drop event is sent, so that no other packet pays for it.
pub trait Ingress {
    /// The frame, read from the context. A drop event reads it again rather than keep the
    /// pointers `parse` used: the verifier knows how far each parse path checked those, so
    /// pointers live past parsing would keep it from merging the states of those paths.
    fn frame(&self) -> Frame;
    fn ifindex(&self) -> u32;
    /// A VLAN id the kernel moved from the frame into metadata, 0 for none.
    fn offloaded_vlan(&self) -> u16;
}

impl Ingress for XdpContext {
    fn frame(&self) -> Frame {
        // LLVM must not learn that `len == end - start`: it would then prove the pointer
        // bounds checks redundant against the length checks and drop them, and the verifier
        // needs them.
        Frame {
            start: self.data(),
            end: self.data_end(),
            len: core::hint::black_box(self.data_end() - self.data()),
        }
    }

    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    /// Native XDP sees the frame as the driver hands it: a tag the NIC took off is not known.
    fn offloaded_vlan(&self) -> u16 {
        0
    }
}

impl Ingress for TcContext {
    /// `len` is the whole packet's; the readable data may end before it.
    fn frame(&self) -> Frame {
        Frame {
            start: self.data(),
            end: self.data_end(),
            len: self.len() as usize,
        }
    }

    fn ifindex(&self) -> u32 {
        // SAFETY: the context's skb is valid for the program's run.
        unsafe { (*self.skb.skb).ifindex }
    }

    /// Before TC ingress the kernel moves an outer tag into the skb's metadata.
    fn offloaded_vlan(&self) -> u16 {
        // SAFETY: as above.
        unsafe {
            if (*self.skb.skb).vlan_present != 0 {
                ((*self.skb.skb).vlan_tci & 0x0fff) as u16
            } else {
                0
            }
        }
    }
}
