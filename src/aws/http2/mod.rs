//! A small HTTP/2 client (RFC 9113) for one use: enhanced fan-out's
//! `SubscribeToShard`, a request whose response streams events for minutes.
//!
//! Prior-knowledge cleartext (h2c) or TLS with ALPN `h2` (rustls), blocking
//! I/O, one reader thread per connection. Only what a client needs: no
//! server push (disabled in our SETTINGS), no priorities, HPACK encoding
//! without indexing.

mod connection;
mod error;
pub(crate) mod frame;
mod handler;
pub(crate) mod hpack;
pub(crate) mod huffman;
mod reader;
mod sender;
#[cfg(test)]
pub(crate) mod test_server;
mod transport;
mod window;

pub(crate) use connection::{BodyRead, Connection, ResponseBody, STREAM_WINDOW, Target};
pub(crate) use error::Http2Error;
#[cfg(feature = "fuzzing")]
pub(crate) use handler::drive;
