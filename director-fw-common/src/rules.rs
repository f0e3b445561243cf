//! Rules, as the kernel looks them up, so that it never loops over rules or peers. The
//! protocol and port index an array of the destination roles that any rule opens that port
//! on ([`port_slot`]): traffic to a closed port is judged without a hash lookup. Adding the
//! source's and destination's role bits gives an exact-match key that finds the rule
//! ([`RuleKey`]). Role bits in keys are masked to the roles rules actually use
//! (`Config::to_roles` / `Config::from_roles`), which keeps the number of combinations small.

use crate::{config::GENERATIONS, proto};

/// Entries of the `PORTS` array per policy generation: TCP and UDP, 65,536 ports each.
pub const PORTS_PER_GENERATION: u32 = 2 * 65_536;
/// Entries of the `PORTS` array: every generation's.
pub const PORT_SLOTS: u32 = GENERATIONS * PORTS_PER_GENERATION;

/// Index into the `PORTS` array. Only TCP and UDP have ports; any other protocol maps to
/// TCP's slots, so callers check the protocol first.
#[inline(always)]
pub fn port_slot(generation: u32, protocol: u8, port: u16) -> u32 {
    let udp = u32::from(protocol == proto::UDP);
    (generation % GENERATIONS) * PORTS_PER_GENERATION + (udp << 16) + u32::from(port)
}

/// Key of the `RULES` map. Value: the counter slot of the first rule, in policy order, that
/// matches (a rule keeps its slot across reloads, see `Verdict::Rule`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub dst_roles: u32,
    pub src_roles: u32,
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub generation: u8,
}
const _: () = assert!(core::mem::size_of::<RuleKey>() == 12);

/// At most 32 roles: role sets are `u32` bit masks.
pub const MAX_ROLES: usize = 32;
