//! Storage tiers behind the router: the upstream Redis (and, later, the in-process hot tier).

pub mod redis;
