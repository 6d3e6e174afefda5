//! The errors of the HTTP/2 client.

use std::fmt;
use std::io;

use super::frame;
use crate::error::TransportKind;

/// What went wrong on an HTTP/2 connection or stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Http2Error {
    /// The host name did not resolve.
    HostNotFound(String),
    /// A socket operation failed.
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    /// The TLS handshake failed (a certificate the client does not trust,
    /// no protocol version or cipher in common): a configuration error.
    Tls(String),
    /// The server does not speak HTTP/2: its TLS handshake did not agree
    /// to ALPN `h2`, or its first bytes are not an HTTP/2 SETTINGS frame
    /// (an HTTP/1.1 server). A configuration error.
    NotHttp2(String),
    /// The server broke the protocol; we sent GOAWAY with this code.
    Protocol { code: u32, message: String },
    /// The server sent GOAWAY: the stream was not processed (its id is
    /// above `last_stream`) or the connection closed before it finished.
    GoAway {
        code: u32,
        last_stream: u32,
        debug: String,
    },
    /// The server reset the stream.
    Reset { code: u32 },
    /// Nothing came within the time allowed; what we waited for.
    Timeout(String),
    /// The server closed the connection.
    Closed,
    /// The request could not be sent on this connection.
    Refused(String),
}

impl Http2Error {
    /// The transport kind callers branch on.
    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            Http2Error::HostNotFound(_) => TransportKind::HostNotFound,
            Http2Error::Io {
                kind: io::ErrorKind::ConnectionRefused,
                ..
            } => TransportKind::ConnectionRefused,
            Http2Error::Io {
                kind: io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock,
                ..
            }
            | Http2Error::Timeout(_) => TransportKind::Timeout,
            _ => TransportKind::Broken,
        }
    }

    /// True for the failures that retrying cannot mend: the endpoint
    /// refused TLS (its certificate) or does not speak HTTP/2.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Http2Error::Tls(_) | Http2Error::NotHttp2(_))
    }

    pub(super) fn io(e: &io::Error) -> Http2Error {
        Http2Error::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl fmt::Display for Http2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Http2Error::HostNotFound(m) => write!(f, "host not found: {m}"),
            Http2Error::Io { message, .. } => write!(f, "HTTP/2 connection: {message}"),
            Http2Error::Tls(m) => write!(f, "TLS: {m}"),
            Http2Error::NotHttp2(m) => write!(f, "not an HTTP/2 server: {m}"),
            Http2Error::Protocol { code, message } => write!(
                f,
                "HTTP/2 protocol error by the server: {message} (we closed the connection with {})",
                frame::error_name(*code)
            ),
            Http2Error::GoAway {
                code,
                last_stream,
                debug,
            } => {
                write!(
                    f,
                    "the server closed the HTTP/2 connection (GOAWAY {}, last stream {last_stream})",
                    frame::error_name(*code)
                )?;
                if !debug.is_empty() {
                    write!(f, ": {debug}")?;
                }
                Ok(())
            }
            Http2Error::Reset { code } => write!(
                f,
                "the server reset the HTTP/2 stream (RST_STREAM {})",
                frame::error_name(*code)
            ),
            Http2Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Http2Error::Closed => f.write_str("the server closed the HTTP/2 connection"),
            Http2Error::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Http2Error {}
