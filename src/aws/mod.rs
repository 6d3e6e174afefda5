//! The AWS wire layer: signing, credentials, endpoints, one JSON-protocol
//! call path, and typed Kinesis, DynamoDB and CloudWatch operations. It
//! knows nothing of leases, batches or metrics levels.

pub(crate) mod client;
pub mod cloudwatch;
pub mod credentials;
pub mod dynamodb;
pub mod endpoint;
mod env;
pub(crate) mod event_stream;
pub mod fan_out;
pub(crate) mod get_records;
pub(crate) mod http2;
pub mod kinesis;
pub mod sigv4;
#[cfg(test)]
pub(crate) mod test_server;

pub use client::ClientConfig;
#[cfg(feature = "fuzzing")]
pub(crate) use env::{FileKind, parse_profile_file};
/// The rustls crate this one uses, to build a [`ClientConfig::fan_out_tls`]
/// (same version, no extra dependency).
pub use rustls;
