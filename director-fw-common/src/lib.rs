//! The vocabulary of director-fw, shared by the kernel programs, the agent, the CLI and the
//! reference model: map names, map keys and values, verdicts and counter slots. Every type here
//! is `#[repr(C)]` with explicit padding, because implicit padding bytes in a map key are stack
//! garbage and make lookups miss.
#![no_std]

pub mod config;
pub mod events;
pub mod flow;
pub mod hosts;
pub mod interfaces;
pub mod maps;
pub mod rules;
pub mod verdict;

pub use config::Config;
pub use events::DropEvent;
pub use flow::{FlowKey, FlowState, FragKey, FragState};
pub use hosts::{HostAddr, HostV4, HostV6, TableMasks};
pub use rules::{port_slot, RuleKey, PORT_SLOTS};
pub use verdict::{Counter, DropReason, PassKind, Verdict};

/// TCP header flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// IP protocol numbers the datapath knows.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], Copy, and has no implicit padding (checked by the
    // size assertions next to each definition).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragState {}
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for HostV4 {}
    unsafe impl aya::Pod for HostV6 {}
    unsafe impl aya::Pod for interfaces::InterfaceRows {}
}
