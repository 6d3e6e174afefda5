//! The AWS wire layer: signing, credentials, endpoints, one JSON-protocol
//! call path, and typed Kinesis, DynamoDB and CloudWatch operations. It knows
//! nothing of leases or batches.

pub mod credentials;
pub mod endpoint;
mod env;
pub mod sigv4;
