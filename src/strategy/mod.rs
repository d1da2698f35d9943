//! Write strategies of `[[mapping]]`s: which writes of mapped keys cacheside runs itself instead
//! of forwarding (write-through SET/HSET/DEL, and DELs whose related keys it invalidates), and
//! the work each one is.
//!
//! A planned write is a future: the database statement first, in a transaction that also
//! reads the row before and after it when related keys need them; only after the commit, one
//! script in Redis that writes the key and deletes its fill lease, its "not found" marker and
//! its related keys (with theirs) atomically; then the hot tier and, in broadcast mode, the
//! other sidecars; then the reply. The session awaits it before the client's next request, so a
//! client reads its own writes even in a pipeline.

mod delete;
mod related;
mod set_args;
mod through;

pub use related::needs_rows;
pub use through::{plan, Planned};

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

/// A reply that needs work first (a write-through), started by the session at dispatch.
pub struct Pending(pub Pin<Box<dyn Future<Output = Bytes> + Send>>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}
