//! The per-CPU counter map: one slot per pass kind, drop reason and rule (see
//! `director_fw_common::verdict`).

use aya::maps::{Map, PerCpuArray};
use director_fw_common::Counter;

use super::{on_every_cpu, DatapathError};

pub struct Counters {
    map: Map,
}

impl Counters {
    pub(super) fn new(map: Map) -> Counters {
        Counters { map }
    }

    pub(super) fn map(&self) -> &Map {
        &self.map
    }

    /// Packets and bytes of one slot, summed over CPUs.
    pub fn get(&self, slot: u32) -> Result<Counter, DatapathError> {
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(&self.map)?;
        Ok(array
            .get(&slot, 0)?
            .iter()
            .fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            }))
    }

    /// Sets a slot to zero on every CPU: a rule that is new to the policy starts from zero.
    pub fn zero(&mut self, slot: u32) -> Result<(), DatapathError> {
        let mut array: PerCpuArray<_, Counter> = PerCpuArray::try_from(&mut self.map)?;
        array.set(slot, on_every_cpu(Counter::default())?, 0)?;
        Ok(())
    }
}
