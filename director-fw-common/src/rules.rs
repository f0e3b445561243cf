//! Rule keys. Rules are compiled to exact-match keys so that the kernel never loops over rules
//! or peers: a destination's role bits, the protocol and the port find out whether any rule
//! opens that port there ([`PortKey`]); adding the source's role bits finds the rule
//! ([`RuleKey`]). Role bits in keys are masked to the roles rules actually use
//! (`Config::to_roles` / `Config::from_roles`), which keeps the number of combinations small.

/// Key of the `PORTS` map. Value: a `u32` that is always 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub dst_roles: u32,
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub generation: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);

/// Key of the `RULES` map. Value: the index of the first rule, in policy order, that matches.
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
