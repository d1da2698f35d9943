//! Storage tiers behind the router: the in-process hot tier and the upstream Redis.

pub mod hot;
pub mod redis;
pub mod store;
