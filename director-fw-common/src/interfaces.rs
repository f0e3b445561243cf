//! Counters per interface. Each attached interface has a row of its own in `IFACE_COUNTERS`,
//! found through `IFACE_ROWS` by the packet's ingress ifindex; row 0 counts every interface
//! without a row: one the agent no longer attaches, or one whose ifindex is too large.
//!
//! A row counts each verdict slot below [`RULE_BASE`] (pass kinds, drops, audit drops) and
//! the passes of all rules together in slot [`RULE_BASE`]. Rules alone are counted one by one,
//! in `COUNTERS`, for every interface together. So a packet moves one counter, two when a rule
//! passes it, and the totals of the verdicts without a rule are the sums over the rows.

use crate::verdict::{Counter, RULE_BASE};

/// Interfaces with an ifindex from here on count in row 0.
pub const IFINDEX_LIMIT: usize = 65_536;
/// Rows of `IFACE_COUNTERS`, row 0 included.
pub const INTERFACE_ROWS: u32 = 64;
/// Slots of one row: the verdicts without a rule, then every rule together.
pub const INTERFACE_SLOTS: u32 = RULE_BASE + 1;
/// Entries of `IFACE_COUNTERS`.
pub const INTERFACE_COUNTERS: u32 = INTERFACE_ROWS * INTERFACE_SLOTS;
/// Slot of a row where the passes by any rule count.
pub const ANY_RULE: u32 = RULE_BASE;

/// One row, summed over CPUs: every verdict slot below `RULE_BASE`, then every rule together.
pub type InterfaceRow = [Counter; INTERFACE_SLOTS as usize];

/// The value of `IFACE_ROWS`' one entry: the counter row of each ifindex.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InterfaceRows(pub [u8; IFINDEX_LIMIT]);

/// The `IFACE_COUNTERS` index of a verdict slot (`Verdict::slot`) in `row`.
#[inline(always)]
pub const fn interface_counter(row: u32, slot: u32) -> u32 {
    let slot = if slot < RULE_BASE { slot } else { ANY_RULE };
    row * INTERFACE_SLOTS + slot
}

const _: () = assert!(INTERFACE_ROWS <= u8::MAX as u32 + 1);
