//! Frames built byte by byte. Valid packets could come from a packet crate, but the tests
//! need exact control to build the broken ones (short headers, lying length fields, too
//! many VLAN tags or extension headers), so one small builder serves both.

use std::net::IpAddr;

// Each test and bench binary that includes this file uses a different subset.
#[allow(unused_imports)]
pub use director_fw_common::tcp_flags::{
    ACK as TCP_ACK, FIN as TCP_FIN, PSH as TCP_PSH, RST as TCP_RST, SYN as TCP_SYN,
};

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP for IPv4, ICMPv6 for IPv6. `rest` is the 4 bytes after the checksum.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        quoted: Vec<u8>,
    },
    /// Another protocol with a few bytes of payload.
    Raw {
        proto: u8,
    },
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub vlans: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// IPv4 options, in 4-byte words (0-10).
    pub ipv4_option_words: u8,
    /// IPv6 extension headers before the L4 header: 0 hop-by-hop, 43 routing, 60 dest-opts.
    pub ipv6_ext: Vec<u8>,
    /// (id, offset in 8-byte units, more fragments)
    pub fragment: Option<(u32, u16, bool)>,
    pub payload: usize,
}

impl Frame {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Frame {
        Frame {
            vlans: 0,
            src,
            dst,
            l4,
            ipv4_option_words: 0,
            ipv6_ext: Vec::new(),
            fragment: None,
            payload: 0,
        }
    }

    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Frame {
        Frame::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Frame {
        Frame::new(src, dst, L4::Udp { sport, dport })
    }

    pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, id: u16) -> Frame {
        let id = id.to_be_bytes();
        Frame::new(
            src,
            dst,
            L4::Icmp {
                ty,
                code: 0,
                rest: [id[0], id[1], 0, 1],
                quoted: Vec::new(),
            },
        )
    }

    pub fn vlans(mut self, n: u8) -> Frame {
        self.vlans = n;
        self
    }

    pub fn fragment(mut self, id: u32, offset: u16, more: bool) -> Frame {
        self.fragment = Some((id, offset, more));
        self
    }

    pub fn payload(mut self, n: usize) -> Frame {
        self.payload = n;
        self
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } if self.src.is_ipv4() => 1,
            L4::Icmp { .. } => 58,
            L4::Raw { proto } => *proto,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend([0, 0, 0, 1, 0, 0, 0, 0]);
                b.extend([5 << 4, *flags, 0xfa, 0xf0, 0, 0, 0, 0]);
            }
            L4::Udp { sport, dport } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(((8 + self.payload) as u16).to_be_bytes());
                b.extend([0, 0]);
            }
            L4::Icmp {
                ty,
                code,
                rest,
                quoted,
            } => {
                b.extend([*ty, *code, 0, 0]);
                b.extend(rest);
                b.extend(quoted);
            }
            L4::Raw { .. } => b.extend([0u8; 8]),
        }
        b.extend(std::iter::repeat_n(0xab, self.payload));
        b
    }

    /// The IP packet (no Ethernet header).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let hlen = 20 + 4 * usize::from(self.ipv4_option_words);
                let total = hlen + l4.len();
                let mut b = vec![0x40 | (hlen / 4) as u8, 0];
                b.extend((total as u16).to_be_bytes());
                let (id, frag) = match self.fragment {
                    Some((id, offset, more)) => (id as u16, offset | if more { 0x2000 } else { 0 }),
                    None => (0x1234, 0x4000), // don't fragment
                };
                b.extend(id.to_be_bytes());
                b.extend(frag.to_be_bytes());
                b.extend([64, self.proto(), 0, 0]);
                b.extend(s.octets());
                b.extend(d.octets());
                // NOP options, then End of options.
                b.extend(std::iter::repeat_n(1u8, hlen - 20));
                b.extend(l4);
                b
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut chain = Vec::new();
                let mut headers: Vec<u8> = self.ipv6_ext.clone();
                if self.fragment.is_some() {
                    headers.push(44);
                }
                for (i, &h) in headers.iter().enumerate() {
                    let next = headers.get(i + 1).copied().unwrap_or(self.proto());
                    if h == 44 {
                        let (id, offset, more) = self.fragment.unwrap();
                        chain.extend([next, 0]);
                        chain.extend((offset << 3 | u16::from(more)).to_be_bytes());
                        chain.extend(id.to_be_bytes());
                    } else {
                        // 8 bytes: next header, length 0, six bytes of PadN.
                        chain.extend([next, 0, 1, 4, 0, 0, 0, 0]);
                    }
                }
                let first = headers.first().copied().unwrap_or(self.proto());
                let payload = chain.len() + l4.len();
                let mut b = vec![0x60, 0, 0, 0];
                b.extend((payload as u16).to_be_bytes());
                b.extend([first, 64]);
                b.extend(s.octets());
                b.extend(d.octets());
                b.extend(chain);
                b.extend(l4);
                b
            }
            _ => panic!("mixed address families"),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let ethertype: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        let mut b = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        for i in 0..self.vlans {
            let tpid: u16 = if i == 0 && self.vlans > 1 {
                0x88a8
            } else {
                0x8100
            };
            b.extend(tpid.to_be_bytes());
            b.extend((100 + u16::from(i)).to_be_bytes());
        }
        b.extend(ethertype.to_be_bytes());
        b.extend(self.ip_bytes());
        b
    }
}

/// An ICMP error quoting `inner` (an IP packet), as a router would send it.
pub fn icmp_error(src: IpAddr, dst: IpAddr, ty: u8, inner: &Frame) -> Frame {
    let mut quoted = inner.ip_bytes();
    quoted.truncate(if inner.src.is_ipv4() { 28 } else { 48 });
    Frame::new(
        src,
        dst,
        L4::Icmp {
            ty,
            code: 0,
            rest: [0; 4],
            quoted,
        },
    )
}
