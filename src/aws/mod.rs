//! The AWS wire layer: signing, credentials, endpoints, one JSON-protocol
//! call path, and typed Kinesis and DynamoDB operations. It knows nothing
//! of leases or batches.

pub(crate) mod client;
pub mod credentials;
pub mod dynamodb;
pub mod endpoint;
mod env;
pub mod kinesis;
pub mod sigv4;

pub use client::ClientConfig;
#[cfg(feature = "fuzzing")]
pub(crate) use env::{FileKind, parse_profile_file};
