//! The datapath in the kernel: the only module that uses aya. One file per job:
//! - `load`: create the maps and verify the programs of a new object;
//! - `attach`: attach a program to an interface so that the attachment can outlive the agent;
//! - `filter`: TC mode without TCX, as a netlink filter;
//! - `pins`: the instance's pins under bpffs, adopting them, checking a pinned map's layout,
//!   and `detach`;
//! - `swap`: the one seam through which a live policy changes (a generation switch);
//! - `counters`: reading and zeroing counter slots; `events`: the drop events' ring buffer,
//!   budget and counts; `logs`: the kernel program's rare events;
//! - `testrun`: running the programs on test packets (BPF_PROG_TEST_RUN).

mod attach;
mod counters;
mod events;
mod filter;
mod load;
mod logs;
mod mmap;
mod pins;
mod swap;
mod testrun;

pub use attach::{AttachMode, Attachment};
pub use counters::Counters;
pub use events::{DropEvents, EventCounts};
pub use load::{object_id, Capacity, Datapath, Programs, OBJECT};
pub use logs::KernelLog;
pub use pins::{detach, Adopted, Hold, LinkPin, Pins};
pub use swap::{Installed, PolicyMaps, Snapshot};
pub use testrun::PinnedProgram;

use aya::programs::ProgramError;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("eBPF link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("the eBPF object has no map or program {0:?}; it does not match this agent")]
    Missing(&'static str),
    #[error("cannot attach to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
    #[error("{iface}: the kernel attached the XDP program through netlink, not as a BPF link, so it could not outlive the agent; director-fw refuses to run without that guarantee (XDP links need Linux 5.9; use --mode tc)")]
    NotALink { iface: String },
    #[error("no network interface {0:?} in this network namespace")]
    NoInterface(String),
    #[error("the policy does not fit the loaded maps: {0}")]
    DoesNotFit(String),
    #[error("the pinned map {path} does not have the layout this agent needs ({found}; needs {needs}). {advice}")]
    Layout {
        path: String,
        found: String,
        needs: String,
        advice: &'static str,
    },
    #[error("{0}")]
    Pins(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |err| DatapathError::Io(what.to_string(), err)
}

/// Possible CPUs: per-CPU maps have a value for each.
fn possible_cpus() -> Result<usize, DatapathError> {
    aya::util::nr_cpus().map_err(|(what, err)| DatapathError::Io(what.to_string(), err))
}

/// `value` on every possible CPU, as a per-CPU map takes it.
fn on_every_cpu<T: aya::Pod>(value: T) -> Result<aya::maps::PerCpuValues<T>, DatapathError> {
    per_cpu(vec![value; possible_cpus()?])
}

/// One value per possible CPU, in CPU order.
fn per_cpu<T: aya::Pod>(values: Vec<T>) -> Result<aya::maps::PerCpuValues<T>, DatapathError> {
    aya::maps::PerCpuValues::try_from(values)
        .map_err(|err| DatapathError::Io("per-CPU values".into(), err))
}
