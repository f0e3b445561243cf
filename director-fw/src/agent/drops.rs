//! Drop events in the agent: each event from the kernel becomes a readable record, kept among
//! the most recent ones for `drops` and sent to every `drops --follow`.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use director_fw_common::{proto, DropEvent, DropReason};

use crate::control::protocol::DropEventView;

use super::Agent;

/// Events kept for `drops` without `--follow`.
pub(super) const RECENT: usize = 1000;

/// Followers that fall this far behind miss events instead of holding the agent up.
pub(super) const FOLLOW_BUFFER: usize = 4096;

impl Agent {
    /// Records one event from the kernel.
    pub(super) fn record(&mut self, event: &DropEvent) {
        let view = self.view_of(event);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(view.clone());
        // No follower is no error.
        let _ = self.followers.send(view);
    }

    pub(super) fn recent(&self) -> Vec<DropEventView> {
        self.recent.iter().cloned().collect()
    }

    pub(super) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DropEventView> {
        self.followers.subscribe()
    }

    fn view_of(&mut self, e: &DropEvent) -> DropEventView {
        let iface = self.interface_name(e.ifindex);
        let roles = |bits: u32| -> Vec<String> {
            (0..32)
                .filter(|b| bits & (1 << b) != 0)
                .filter_map(|b| self.effective.roles.get(b).cloned())
                .collect()
        };
        let addr = |words: &[u32; 4]| -> Option<IpAddr> {
            match e.family {
                4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
                6 => {
                    let mut octets = [0u8; 16];
                    for (chunk, word) in octets.chunks_mut(4).zip(words) {
                        chunk.copy_from_slice(&word.to_ne_bytes());
                    }
                    Some(IpAddr::V6(Ipv6Addr::from(octets)))
                }
                _ => None,
            }
        };
        let proto = match (e.family, e.proto) {
            (0, _) => String::new(),
            (_, proto::TCP) => "tcp".into(),
            (_, proto::UDP) => "udp".into(),
            (_, proto::ICMP) => "icmp".into(),
            (_, proto::ICMPV6) => "icmpv6".into(),
            (_, other) => other.to_string(),
        };
        DropEventView {
            time: humantime::format_rfc3339_millis(wall_time(e.time_ns)).to_string(),
            iface,
            proto,
            src: addr(&e.src),
            dst: addr(&e.dst),
            sport: e.sport,
            dport: e.dport,
            vlan: e.vlan,
            reason: DropReason::ALL
                .get(usize::from(e.reason))
                .map_or("unknown", |r| r.name())
                .into(),
            audit: e.audit != 0,
            src_roles: roles(e.src_roles),
            dst_roles: roles(e.dst_roles),
        }
    }
}

/// The wall-clock time of a `bpf_ktime_get_ns` reading (CLOCK_MONOTONIC).
fn wall_time(ktime_ns: u64) -> SystemTime {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let mono = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    SystemTime::now() - Duration::from_nanos(mono.saturating_sub(ktime_ns))
}

impl Agent {
    /// The name of an interface in the agent's network namespace, or its index; looked up
    /// once per interface, not per event.
    fn interface_name(&mut self, ifindex: u32) -> String {
        self.ifnames
            .entry(ifindex)
            .or_insert_with(|| {
                let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: the buffer is IF_NAMESIZE long, as if_indextoname needs.
                let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
                if found.is_null() {
                    return format!("if{ifindex}");
                }
                // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
                unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            })
            .clone()
    }
}

/// A fresh store of recent events.
pub(super) fn recent_store() -> VecDeque<DropEventView> {
    VecDeque::with_capacity(RECENT)
}
