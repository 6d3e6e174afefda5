//! The AWS wire layer: how a service is reached ([`ClientConfig`]),
//! [`credentials`], and a small [`kinesis`] client for producers and tools
//! (put records, read a shard, list and manage streams).
//!
//! Signing, endpoint resolution, and the DynamoDB and CloudWatch operations
//! the consumer uses are internal: the consumer manages its lease table and
//! publishes its metrics itself, and [`list_leases`](crate::list_leases)
//! and [`inspect_leases`](crate::inspect_leases) read the lease table.

pub(crate) mod client;
pub(crate) mod cloudwatch;
pub mod credentials;
pub(crate) mod dynamodb;
pub(crate) mod endpoint;
mod env;
pub(crate) mod event_stream;
pub mod fan_out;
pub(crate) mod get_records;
pub(crate) mod http1;
pub(crate) mod http2;
pub mod kinesis;
pub(crate) mod sigv4;
mod socket;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
pub(crate) mod test_sigcheck;

pub use client::ClientConfig;
#[cfg(feature = "fuzzing")]
pub(crate) use env::{FileKind, parse_profile_file};
/// The rustls crate this one uses, to build a [`ClientConfig::fan_out_tls`]
/// (same version, no extra dependency).
pub use rustls;
