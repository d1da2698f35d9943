//! Write strategies: what happens to writes of declared keys besides reaching Redis. Counters
//! ([`counter`]): INCR-family commands served by Redis whose deltas a background flusher moves
//! to PostgreSQL, exactly once across sidecars and crashes.

pub mod counter;
mod keys;

pub(crate) use keys::tagged;
