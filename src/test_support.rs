//! Internals this crate's own integration tests, benchmarks and fuzz
//! targets reach past the public API: the lease table's DynamoDB
//! operations (to stage and read rows), CloudWatch reads (to see what was
//! published) and the SigV4 signer (to check it against an independent
//! one). Not a stable API: anything here may change in any release.
//!
//! Always compiled (it only re-exports), so a bare `cargo test` builds the
//! tests without a feature flag.

pub use crate::aws::cloudwatch::{CloudWatchClient, Dimension, MetricDescription};
pub use crate::aws::dynamodb::{AttributeValue, DynamoDbClient, Expression, Item};
pub use crate::aws::sigv4::{SignableRequest, SigningOptions, sign};
