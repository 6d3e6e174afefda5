//! A synchronous Amazon Kinesis Data Streams consumer.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aws;
mod error;
pub mod kpl;

pub use error::{Error, Result, ServiceError};
