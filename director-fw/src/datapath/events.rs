//! The drop events' side in the agent (see `director_fw_common::events`): reading the ring
//! buffer, refilling each CPU's budget, and the counts of events sent, suppressed and lost.

use std::os::fd::{AsRawFd, RawFd};

use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf},
    util::online_cpus,
};
use director_fw_common::{
    events::{EVENTS_LOST, EVENTS_SENT, EVENTS_SUPPRESSED},
    maps, DropEvent,
};

use super::{per_cpu, possible_cpus, DatapathError, Pins};

/// Events sent, suppressed by the budget, and lost to a full ring buffer, since the datapath
/// was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub sent: u64,
    pub suppressed: u64,
    pub lost: u64,
}

pub struct DropEvents {
    ring: RingBuf<MapData>,
    budget: Map,
    stats: Map,
    cpus: u32,
}

impl DropEvents {
    /// The pinned event maps of a running datapath.
    pub fn open(pins: &Pins) -> Result<DropEvents, DatapathError> {
        let ring = match pins.open(maps::EVENTS)? {
            Map::RingBuf(data) => RingBuf::try_from(Map::RingBuf(data))?,
            other => {
                return Err(DatapathError::Pins(format!(
                    "the pinned EVENTS map is a {other:?}, not a ring buffer"
                )))
            }
        };
        let cpus = possible_cpus()?;
        Ok(DropEvents {
            ring,
            budget: pins.open(maps::EVENT_BUDGET)?,
            stats: pins.open(maps::EVENT_STATS)?,
            cpus: cpus as u32,
        })
    }

    /// Gives every online CPU its share of `per_sec` events for the next second, the shares
    /// adding up to `per_sec` exactly, and replaces what is left of the last shares.
    pub fn refill(&mut self, per_sec: u32) -> Result<(), DatapathError> {
        let online =
            online_cpus().map_err(|(what, err)| DatapathError::Io(what.to_string(), err))?;
        let n = online.len().max(1) as u32;
        let mut shares = vec![0u32; self.cpus as usize];
        for (i, &cpu) in online.iter().enumerate() {
            if let Some(share) = shares.get_mut(cpu as usize) {
                *share = per_sec / n + u32::from((i as u32) < per_sec % n);
            }
        }
        let values = per_cpu(shares)?;
        let mut budget: PerCpuArray<_, u32> = PerCpuArray::try_from(&mut self.budget)?;
        budget.set(0, values, 0)?;
        Ok(())
    }

    pub fn counts(&self) -> Result<EventCounts, DatapathError> {
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(&self.stats)?;
        let sum = |slot| -> Result<u64, DatapathError> { Ok(stats.get(&slot, 0)?.iter().sum()) };
        Ok(EventCounts {
            sent: sum(EVENTS_SENT)?,
            suppressed: sum(EVENTS_SUPPRESSED)?,
            lost: sum(EVENTS_LOST)?,
        })
    }

    /// The next event waiting in the ring buffer; a record too short to be one is skipped.
    pub fn next_event(&mut self) -> Option<DropEvent> {
        loop {
            let item = self.ring.next()?;
            if item.len() >= std::mem::size_of::<DropEvent>() {
                // SAFETY: the kernel wrote a whole DropEvent (checked length); read unaligned.
                return Some(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>())
                });
            }
        }
    }
}

impl AsRawFd for DropEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
