//! The reader thread of a connection: a thin loop that reads frames off
//! the socket, hands each to the [`FrameHandler`] and writes its reply; on
//! a protocol error by the server it sends GOAWAY and ends the connection.

use std::io::{self, BufReader, Read};
use std::net::Shutdown;
use std::sync::Arc;

use super::connection::{Inner, OUR_MAX_FRAME, lock};
use super::error::Http2Error;
use super::frame::{self, ReadError};
use super::handler::FrameHandler;

/// `Read` over the transport, for the reader thread's buffer.
struct TransportReader {
    inner: Arc<Inner>,
    pending: Vec<u8>,
}

impl Read for TransportReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let inner = &*self.inner;
        inner.transport.read(&inner.writer, &mut self.pending, buf)
    }
}

/// The reader thread: handles frames until the connection ends, then
/// fails every unfinished stream with the reason.
pub(super) fn read_frames(inner: Arc<Inner>) {
    let mut reader = BufReader::with_capacity(
        64 * 1024,
        TransportReader {
            inner: inner.clone(),
            pending: Vec::new(),
        },
    );
    let mut handler = FrameHandler::new(&inner.state, &inner.authority);
    let error = loop {
        let frame = match frame::read_frame(&mut reader, OUR_MAX_FRAME) {
            Ok(Some(f)) => {
                if handler.before_first() {
                    lock(&inner.state).anything_received = true;
                }
                f
            }
            Ok(None) => break Http2Error::Closed,
            // A TLS record that fails after the handshake: the connection
            // broke (not a configuration error).
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
                break Http2Error::Io {
                    kind: e.kind(),
                    message: format!("TLS: {e}"),
                };
            }
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break Http2Error::Closed;
            }
            Err(ReadError::Io(e)) => break Http2Error::io(&e),
            Err(ReadError::TooLarge { length, max }) => {
                lock(&inner.state).anything_received = true;
                let message = format!("a frame of {length} bytes, above the {max} allowed");
                let error = fail_with_goaway(&inner, frame::FRAME_SIZE_ERROR, message.clone());
                if handler.before_first() {
                    break Http2Error::NotHttp2(format!(
                        "its first bytes are not an HTTP/2 frame (read as {message}): does it speak HTTP/2?"
                    ));
                }
                break error;
            }
        };
        match handler.handle(frame) {
            Ok(reply) => {
                inner.changed.notify_all();
                if let Err(e) = inner.send(&reply) {
                    break e;
                }
            }
            Err(e) if e.not_http2 => {
                fail_with_goaway(&inner, e.code, e.message.clone());
                break Http2Error::NotHttp2(e.message);
            }
            Err(e) => break fail_with_goaway(&inner, e.code, e.message),
        }
    };
    let mut state = lock(&inner.state);
    // After GOAWAY, the end of the connection is best explained by it.
    let error = match (&error, &state.goaway) {
        (Http2Error::Closed | Http2Error::Io { .. }, Some(goaway)) => goaway.clone(),
        _ => error,
    };
    log::debug!("HTTP/2 connection to {} ended: {error}", inner.authority);
    state.closed.get_or_insert(error);
    drop(state);
    inner.changed.notify_all();
    let _ = inner.transport.socket().shutdown(Shutdown::Both);
}

/// Sends GOAWAY for a connection error we found; the error streams report.
fn fail_with_goaway(inner: &Inner, code: u32, message: String) -> Http2Error {
    let mut out = Vec::new();
    // The last stream the server opened and we handled: it opens none.
    frame::write_goaway(&mut out, 0, code, message.as_bytes());
    let _ = inner.send(&out);
    Http2Error::Protocol { code, message }
}
