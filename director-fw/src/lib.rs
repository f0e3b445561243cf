//! director-fw: an eBPF packet filter that enforces the Lync Server 2013 and Skype for
//! Business Director and Edge port policies on Linux gateways. This library holds everything the `director-fw` binary
//! does; each subcommand is a thin call into it.
//!
//! - `policy`, `compile`, `model`, `explain`: the policy and its meaning (pure);
//! - `datapath`: the kernel side, the only module that uses aya;
//! - `instance`: every path of an instance;
//! - `agent`: the running agent; `control`: its socket protocol, server and client;
//! - `telemetry`: counters as operators read them (`stats`), and as Prometheus scrapes them.

pub mod agent;
pub mod compile;
pub mod control;
pub mod datapath;
pub mod explain;
pub mod instance;
pub mod model;
pub mod policy;
pub mod telemetry;

pub use compile::{compile, Compiled};
pub use datapath::{AttachMode, Datapath};
pub use model::Model;
pub use policy::Policy;
