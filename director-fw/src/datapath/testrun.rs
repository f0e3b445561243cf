//! Running the loaded programs on test packets (BPF_PROG_TEST_RUN), for the kernel tests, the
//! differential test and the kernel bench. The programs run against the real maps.

use std::time::Duration;

use aya::{
    maps::{HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use director_fw_common::{maps, FlowKey, FlowState, FragKey, FragState, Verdict};

use super::{on_every_cpu, Datapath, DatapathError};

fn options(frame: &[u8], repeat: u32) -> TestRunOptions<'_> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.repeat = repeat;
    options
}

impl Datapath {
    /// Runs the XDP program once on `frame`; returns the XDP action.
    pub fn run_xdp(&self, frame: &[u8]) -> Result<u32, DatapathError> {
        Ok(self.test_run_xdp(frame, 1)?.0)
    }

    /// Runs the XDP program `repeat` times; returns the action and the kernel's mean time.
    pub fn test_run_xdp(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), DatapathError> {
        let program: &Xdp = self
            .ebpf
            .program(maps::XDP_PROGRAM)
            .ok_or(DatapathError::Missing(maps::XDP_PROGRAM))?
            .try_into()?;
        let result = program.test_run(options(frame, repeat))?;
        Ok((result.return_value, result.duration))
    }

    /// Runs the TC program once on `frame`; returns the TC action.
    pub fn run_tc(&self, frame: &[u8]) -> Result<u32, DatapathError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(maps::TC_PROGRAM)
            .ok_or(DatapathError::Missing(maps::TC_PROGRAM))?
            .try_into()?;
        Ok(program.test_run(options(frame, 1))?.return_value)
    }

    /// The verdict of the last packet run (needs `trace`); `None` when no packet ran since
    /// [`Datapath::clear_last_verdict`].
    pub fn last_verdict(&self) -> Result<Option<Verdict>, DatapathError> {
        let map = self
            .ebpf
            .map(maps::LAST_VERDICT)
            .ok_or(DatapathError::Missing(maps::LAST_VERDICT))?;
        let array: PerCpuArray<_, u32> = PerCpuArray::try_from(map)?;
        let values = array.get(&0, 0)?;
        Ok(values
            .iter()
            .find(|&&slot| slot != u32::MAX)
            .and_then(|&slot| Verdict::from_slot(slot)))
    }

    pub fn clear_last_verdict(&mut self) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(maps::LAST_VERDICT)
            .ok_or(DatapathError::Missing(maps::LAST_VERDICT))?;
        let mut array: PerCpuArray<_, u32> = PerCpuArray::try_from(map)?;
        array.set(0, on_every_cpu(u32::MAX)?, 0)?;
        Ok(())
    }

    /// Forgets every tracked flow and fragment.
    pub fn clear_flows(&mut self) -> Result<(), DatapathError> {
        let mut flows: HashMap<_, FlowKey, FlowState> = HashMap::try_from(&mut self.state.flows)?;
        let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = flows.remove(&key);
        }
        let mut frags: HashMap<_, FragKey, FragState> = HashMap::try_from(&mut self.state.frags)?;
        let keys: Vec<_> = frags.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = frags.remove(&key);
        }
        Ok(())
    }
}

/// The program a running instance has attached, opened from its pin, to run test packets
/// through the live datapath: its maps are the ones the agent changes.
pub struct PinnedProgram {
    program: Xdp,
}

impl PinnedProgram {
    /// The instance's pinned XDP program.
    pub fn open(pins: &super::Pins) -> Result<PinnedProgram, DatapathError> {
        let path = pins
            .program_path(maps::XDP_PROGRAM)
            .ok_or(DatapathError::Missing(maps::XDP_PROGRAM))?;
        let program = Xdp::from_pin(path, aya_obj::programs::XdpAttachType::Interface)?;
        Ok(PinnedProgram { program })
    }

    /// Runs the program once on `frame`; returns the XDP action.
    pub fn run(&self, frame: &[u8]) -> Result<u32, DatapathError> {
        Ok(self.program.test_run(options(frame, 1))?.return_value)
    }
}

impl Datapath {
    /// Gives every CPU a budget of `n` drop events, as the agent's refill would.
    pub fn set_event_budget(&mut self, n: u32) -> Result<(), DatapathError> {
        let map = self.state.event_map(maps::EVENT_BUDGET)?;
        let mut budget: PerCpuArray<_, u32> = PerCpuArray::try_from(map)?;
        budget.set(0, on_every_cpu(n)?, 0)?;
        Ok(())
    }

    /// Reads and forgets every drop event waiting in the ring buffer; returns how many.
    pub fn drain_events(&mut self) -> Result<usize, DatapathError> {
        let mut ring = aya::maps::RingBuf::try_from(self.state.event_map(maps::EVENTS)?)?;
        let mut n = 0;
        while ring.next().is_some() {
            n += 1;
        }
        Ok(n)
    }
}
