//! director-fw: an eBPF packet filter that enforces the Lync Server 2013 single-Director
//! port policy on Linux gateways. This library holds everything the `director-fw` binary
//! does; each subcommand is a thin call into it.

pub mod compile;
pub mod explain;
pub mod host_table;
pub mod instance;
pub mod loader;
pub mod model;
pub mod policy;
pub mod stats;

pub use compile::{compile, Compiled};
pub use loader::{AttachMode, Datapath};
pub use model::Model;
pub use policy::Policy;
