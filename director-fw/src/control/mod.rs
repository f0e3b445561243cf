//! The control socket: versioned request and response types (no aya), the server the agent
//! runs, and the client every other command uses.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{Client, ClientError};
pub use protocol::{Request, Response, PROTOCOL_VERSION};
