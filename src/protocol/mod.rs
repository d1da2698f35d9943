//! The wire: client request parsing, the command table, and reply framing/building. No I/O.

pub mod command;
pub mod reply;
pub mod request;
pub mod scan;

pub use command::{lookup, CommandInfo, Family, Local, Pin, Route};
pub use reply::Proto;
pub use request::{Limits, ProtocolError, Request};
