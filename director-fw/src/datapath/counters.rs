//! The per-CPU counter maps: one slot per rule, and a row per interface of every verdict (see
//! `director_fw_common::verdict` and `director_fw_common::interfaces`).

use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues};
use director_fw_common::{
    interfaces::{
        interface_counter, InterfaceRow, InterfaceRows, ANY_RULE, IFINDEX_LIMIT, INTERFACE_ROWS,
        INTERFACE_SLOTS,
    },
    maps, Counter,
};

use super::{attach::interface_index, on_every_cpu, per_cpu, DatapathError};

pub struct Counters {
    rules: Map,
    interfaces: Map,
    rows: Map,
}

impl Counters {
    pub(super) fn open(
        take: &mut dyn FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<Counters, DatapathError> {
        Ok(Counters {
            rules: take(maps::COUNTERS)?,
            interfaces: take(maps::IFACE_COUNTERS)?,
            rows: take(maps::IFACE_ROWS)?,
        })
    }

    pub(super) fn maps(&self) -> [(&'static str, &Map); 3] {
        [
            (maps::COUNTERS, &self.rules),
            (maps::IFACE_COUNTERS, &self.interfaces),
            (maps::IFACE_ROWS, &self.rows),
        ]
    }

    /// Packets and bytes of one rule's counter slot, summed over CPUs.
    pub fn rule(&self, slot: u32) -> Result<Counter, DatapathError> {
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(&self.rules)?;
        Ok(array.get(&slot, 0)?.iter().copied().sum())
    }

    /// Packets and bytes of a verdict slot (`Verdict::slot`), summed over CPUs and, for a
    /// verdict without a rule, over interfaces.
    pub fn total(&self, slot: u32) -> Result<Counter, DatapathError> {
        if slot >= ANY_RULE {
            return self.rule(slot);
        }
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(&self.interfaces)?;
        let mut total = Counter::default();
        for row in 0..INTERFACE_ROWS {
            let counts = array.get(&interface_counter(row, slot), 0)?;
            total = total + counts.iter().copied().sum();
        }
        Ok(total)
    }

    /// Sets a rule slot to zero on every CPU: a rule that is new to the policy starts from zero.
    pub fn zero_rule(&mut self, slot: u32) -> Result<(), DatapathError> {
        let mut array: PerCpuArray<_, Counter> = PerCpuArray::try_from(&mut self.rules)?;
        array.set(slot, on_every_cpu(Counter::default())?, 0)?;
        Ok(())
    }

    /// One interface row, summed over CPUs.
    pub fn row(&self, row: u8) -> Result<InterfaceRow, DatapathError> {
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(&self.interfaces)?;
        let mut out = [Counter::default(); INTERFACE_SLOTS as usize];
        for (slot, counter) in (0..INTERFACE_SLOTS).zip(&mut out) {
            let index = interface_counter(u32::from(row), slot);
            *counter = array.get(&index, 0)?.iter().copied().sum();
        }
        Ok(out)
    }

    /// Points each interface of `assigned` (that exists now) at its row, every other ifindex
    /// at row 0, in one map update (a packet may see a mix of the old and the new rows while
    /// it is written, which only moves its count between rows). Returns the interfaces whose
    /// ifindex is too large to have a row.
    pub fn assign_rows<'a>(
        &mut self,
        assigned: impl IntoIterator<Item = (&'a str, u8)>,
    ) -> Result<Vec<&'a str>, DatapathError> {
        let mut rows = Box::new(InterfaceRows([0; IFINDEX_LIMIT]));
        let mut too_large = Vec::new();
        for (iface, row) in assigned {
            match interface_index(iface) {
                0 => {}
                ifindex => match rows.0.get_mut(ifindex as usize) {
                    Some(entry) => *entry = row,
                    None => too_large.push(iface),
                },
            }
        }
        let mut array: Array<_, InterfaceRows> = Array::try_from(&mut self.rows)?;
        array.set(0, rows.as_ref(), 0)?;
        Ok(too_large)
    }

    /// Adds every row but `keep` (and row 0) into row 0 and zeroes it, so that a row an
    /// interface no longer has is free for another, and the totals over rows keep what it
    /// counted. A packet counted in row 0 during the fold itself may be lost: no interface
    /// points at the folded rows then, but row 0 counts on. Also folds in what an object
    /// from before the counters per interface counted for verdicts without a rule, in the
    /// low slots of `COUNTERS`, which this object never writes.
    pub fn fold_rows_except(&mut self, keep: &[u8]) -> Result<(), DatapathError> {
        let mut rows: PerCpuArray<_, Counter> = PerCpuArray::try_from(&mut self.interfaces)?;
        // What an older object counted without a rule, in `COUNTERS`' low slots.
        let mut rules: PerCpuArray<_, Counter> = PerCpuArray::try_from(&mut self.rules)?;
        for slot in 0..ANY_RULE {
            let counts = rules.get(&slot, 0)?;
            if add_to_row_0(&mut rows, slot, &counts)? {
                rules.set(slot, on_every_cpu(Counter::default())?, 0)?;
            }
        }
        for row in (1..INTERFACE_ROWS).filter(|r| !keep.iter().any(|&k| u32::from(k) == *r)) {
            for slot in 0..INTERFACE_SLOTS {
                let index = interface_counter(row, slot);
                let counts = rows.get(&index, 0)?;
                if add_to_row_0(&mut rows, slot, &counts)? {
                    rows.set(index, on_every_cpu(Counter::default())?, 0)?;
                }
            }
        }
        Ok(())
    }
}

/// Adds per-CPU `counts` into `slot` of row 0; whether there was anything to add.
fn add_to_row_0(
    rows: &mut PerCpuArray<&mut MapData, Counter>,
    slot: u32,
    counts: &PerCpuValues<Counter>,
) -> Result<bool, DatapathError> {
    if counts.iter().all(|c| c.packets == 0 && c.bytes == 0) {
        return Ok(false);
    }
    let into = interface_counter(0, slot);
    let folded: Vec<Counter> = rows
        .get(&into, 0)?
        .iter()
        .zip(counts.iter())
        .map(|(a, b)| *a + *b)
        .collect();
    rows.set(into, per_cpu(folded)?, 0)?;
    Ok(true)
}
