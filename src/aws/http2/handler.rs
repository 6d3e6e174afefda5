//! The connection state machine of the HTTP/2 client, without I/O: each
//! frame from the server in, the connection's state updated (responses,
//! data, settings, resets, GOAWAY, window updates) and the frames to send
//! in reply out, or the connection error to end it with.

use std::sync::Mutex;

use super::connection::{
    CONNECTION_WINDOW, MAX_HEADER_BLOCK, MAX_HEADER_LIST, Response, STREAM_WINDOW, State, lock,
};
use super::error::Http2Error;
use super::frame::{self, Frame};
use super::hpack;
use super::sender;
use super::window::MAX_WINDOW;

/// A connection error found while handling a frame: the GOAWAY code to
/// send, and what was wrong.
#[derive(Debug)]
pub(super) struct ConnectionError {
    pub(super) code: u32,
    pub(super) message: String,
    /// The server's first frame was not SETTINGS: it is no HTTP/2 server.
    pub(super) not_http2: bool,
}

fn protocol_error<T>(code: u32, message: impl Into<String>) -> Result<T, ConnectionError> {
    Err(ConnectionError {
        code,
        message: message.into(),
        not_http2: false,
    })
}

/// The connection state machine: takes the server's frames one at a time,
/// updates the connection's [`State`], and says what to send in reply. It
/// touches no socket: the reader thread feeds it, a test or a fuzz target
/// can too.
pub(super) struct FrameHandler<'a> {
    state: &'a Mutex<State>,
    /// The server, for log lines.
    authority: &'a str,
    decoder: hpack::Decoder,
    /// A header block still waiting for CONTINUATION: stream, flags,
    /// bytes, and how many CONTINUATION frames it took so far.
    continuation: Option<(u32, u8, Vec<u8>, usize)>,
    /// No frame handled yet (the server's first must be SETTINGS).
    first: bool,
}

impl<'a> FrameHandler<'a> {
    /// A handler of a connection's frames, before the server's first.
    pub(super) fn new(state: &'a Mutex<State>, authority: &'a str) -> FrameHandler<'a> {
        FrameHandler {
            state,
            authority,
            decoder: hpack::Decoder::new(4096, MAX_HEADER_LIST),
            continuation: None,
            first: true,
        }
    }

    /// True before the server's first frame was handled.
    pub(super) fn before_first(&self) -> bool {
        self.first
    }

    /// Handles one frame; the frames to send in reply.
    pub(super) fn handle(&mut self, f: Frame) -> Result<Vec<u8>, ConnectionError> {
        if std::mem::replace(&mut self.first, false) && f.kind != frame::SETTINGS {
            return Err(ConnectionError {
                code: frame::PROTOCOL_ERROR,
                message: format!(
                    "the server's first frame is of type {} instead of SETTINGS (does it speak HTTP/2?)",
                    f.kind
                ),
                not_http2: true,
            });
        }
        if let Some((stream, _, _, _)) = &self.continuation {
            if f.kind != frame::CONTINUATION || f.stream != *stream {
                return protocol_error(
                    frame::PROTOCOL_ERROR,
                    format!(
                        "a frame of type {} on stream {} inside the header block of stream {stream}",
                        f.kind, f.stream
                    ),
                );
            }
        }
        let mut out = Vec::new();
        match f.kind {
            frame::DATA => self.data(f, &mut out)?,
            frame::HEADERS => {
                if f.stream == 0 {
                    return protocol_error(frame::PROTOCOL_ERROR, "HEADERS on stream 0");
                }
                not_idle(&lock(self.state), &f)?;
                let fragment = frame::strip_padding_and_priority(&f)
                    .map_err(|m| ConnectionError {
                        code: frame::PROTOCOL_ERROR,
                        message: m,
                        not_http2: false,
                    })?
                    .to_vec();
                if f.flags & frame::END_HEADERS != 0 {
                    self.header_block(f.stream, f.flags, &fragment, &mut out)?;
                } else {
                    self.continuation = Some((f.stream, f.flags, fragment, 0));
                }
            }
            frame::CONTINUATION => {
                let Some((stream, flags, mut block, frames)) = self.continuation.take() else {
                    return protocol_error(
                        frame::PROTOCOL_ERROR,
                        "CONTINUATION without HEADERS before it",
                    );
                };
                block.extend_from_slice(&f.payload);
                if block.len() > MAX_HEADER_BLOCK {
                    return protocol_error(
                        frame::PROTOCOL_ERROR,
                        format!("a header block over {MAX_HEADER_BLOCK} bytes"),
                    );
                }
                // Endless (empty) CONTINUATION frames would hold every
                // stream of the connection: no frame may come between them.
                if frames + 1 > MAX_CONTINUATIONS {
                    return protocol_error(
                        ENHANCE_YOUR_CALM,
                        format!("a header block in over {MAX_CONTINUATIONS} CONTINUATION frames"),
                    );
                }
                if f.flags & frame::END_HEADERS != 0 {
                    self.header_block(stream, flags, &block, &mut out)?;
                } else {
                    self.continuation = Some((stream, flags, block, frames + 1));
                }
            }
            frame::PRIORITY => {
                if f.stream == 0 {
                    return protocol_error(frame::PROTOCOL_ERROR, "PRIORITY on stream 0");
                }
                if f.payload.len() != 5 {
                    // A stream error (RFC 9113, section 6.3).
                    let mut state = lock(self.state);
                    if let Some(s) = state.streams.get_mut(&f.stream) {
                        s.error.get_or_insert(Http2Error::Protocol {
                            code: frame::FRAME_SIZE_ERROR,
                            message: format!(
                                "a PRIORITY frame of {} bytes (must be 5)",
                                f.payload.len()
                            ),
                        });
                    }
                    frame::write_rst_stream(&mut out, f.stream, frame::FRAME_SIZE_ERROR);
                }
            }
            frame::RST_STREAM => {
                if f.stream == 0 {
                    return protocol_error(frame::PROTOCOL_ERROR, "RST_STREAM on stream 0");
                }
                not_idle(&lock(self.state), &f)?;
                let code =
                    frame::parse_u32("RST_STREAM", &f.payload).map_err(|m| ConnectionError {
                        code: frame::FRAME_SIZE_ERROR,
                        message: m,
                        not_http2: false,
                    })?;
                let mut state = lock(self.state);
                if let Some(s) = state.streams.get_mut(&f.stream) {
                    s.error.get_or_insert(Http2Error::Reset { code });
                    // The server wants no more of the request body.
                    s.owed = None;
                }
            }
            frame::SETTINGS => self.settings(&f, &mut out)?,
            frame::PUSH_PROMISE => {
                return protocol_error(
                    frame::PROTOCOL_ERROR,
                    "PUSH_PROMISE although our SETTINGS disabled push",
                );
            }
            frame::PING => {
                if f.stream != 0 {
                    return protocol_error(frame::PROTOCOL_ERROR, "PING on a stream");
                }
                if f.payload.len() != 8 {
                    return protocol_error(
                        frame::FRAME_SIZE_ERROR,
                        format!("a PING of {} bytes (must be 8)", f.payload.len()),
                    );
                }
                if f.flags & frame::ACK == 0 {
                    frame::write_frame(&mut out, frame::PING, frame::ACK, 0, &f.payload);
                }
            }
            frame::GOAWAY => {
                if f.stream != 0 {
                    return protocol_error(frame::PROTOCOL_ERROR, "GOAWAY on a stream");
                }
                let (last_stream, code, debug) =
                    frame::parse_goaway(&f.payload).map_err(|m| ConnectionError {
                        code: frame::FRAME_SIZE_ERROR,
                        message: m,
                        not_http2: false,
                    })?;
                let goaway = Http2Error::GoAway {
                    code,
                    last_stream,
                    debug: String::from_utf8_lossy(&debug).chars().take(200).collect(),
                };
                log::debug!("HTTP/2 server {}: {goaway}", self.authority);
                let mut state = lock(self.state);
                // Streams above the last one were not processed: fail them now.
                for (id, s) in state.streams.iter_mut() {
                    if *id > last_stream && !s.end {
                        s.error.get_or_insert(goaway.clone());
                        s.owed = None;
                    }
                }
                state.goaway = Some(goaway);
            }
            frame::WINDOW_UPDATE => self.window_update(&f, &mut out)?,
            // Unknown frame types are ignored (RFC 9113, section 4.1).
            _ => {}
        }
        Ok(out)
    }

    fn data(&mut self, f: Frame, out: &mut Vec<u8>) -> Result<(), ConnectionError> {
        if f.stream == 0 {
            return protocol_error(frame::PROTOCOL_ERROR, "DATA on stream 0");
        }
        not_idle(&lock(self.state), &f)?;
        let data = frame::strip_padding_and_priority(&f).map_err(|m| ConnectionError {
            code: frame::PROTOCOL_ERROR,
            message: m,
            not_http2: false,
        })?;
        let length = f.payload.len() as u32;
        let mut state = lock(self.state);
        if state.recv_window.consume(length).is_err() {
            return protocol_error(
                frame::FLOW_CONTROL_ERROR,
                "DATA beyond the connection's flow-control window",
            );
        }
        // The connection window comes back at once: a slow stream is held
        // by its own window, never the others.
        state.recv_unacked += length;
        if state.recv_unacked >= CONNECTION_WINDOW / 4 {
            let unacked = std::mem::take(&mut state.recv_unacked);
            state.recv_window.give_back(unacked);
            frame::write_window_update(out, 0, unacked);
        }
        let id = f.stream;
        let Some(stream) = state.streams.get_mut(&id) else {
            // A stream we reset or gave up: its data is dropped.
            return Ok(());
        };
        if stream.end || stream.error.is_some() {
            return Ok(());
        }
        if stream.recv_window.consume(length).is_err() {
            stream.error = Some(Http2Error::Protocol {
                code: frame::FLOW_CONTROL_ERROR,
                message: format!("DATA beyond the flow-control window of stream {id}"),
            });
            frame::write_rst_stream(out, id, frame::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        stream.last_arrival = std::time::Instant::now();
        // Padding is never read by anyone: its credit goes back with the
        // data's, or from here once it adds up (frames of nothing but
        // padding are never read, so nothing else would give it back).
        stream.unacked += length - data.len() as u32;
        if !data.is_empty() {
            // The frame's own buffer when it has no padding (no copy).
            let data = match data.len() == f.payload.len() {
                true => f.payload,
                false => data.to_vec(),
            };
            stream.data.push_back(data);
        } else if stream.unacked >= STREAM_WINDOW / 4 && f.flags & frame::END_STREAM == 0 {
            frame::write_window_update(out, id, stream.unacked);
            stream.recv_window.give_back(stream.unacked);
            stream.unacked = 0;
        }
        if f.flags & frame::END_STREAM != 0 {
            stream.end = true;
        }
        Ok(())
    }

    fn header_block(
        &mut self,
        id: u32,
        flags: u8,
        block: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ConnectionError> {
        // Always decode: the dynamic table must follow every block.
        let fields = self.decoder.decode(block).map_err(|e| ConnectionError {
            code: frame::COMPRESSION_ERROR,
            message: e.to_string(),
            not_http2: false,
        })?;
        let mut state = lock(self.state);
        let Some(stream) = state.streams.get_mut(&id) else {
            return Ok(());
        };
        // A stream already in error (reset by us) takes no response.
        if !stream.headers_done && !stream.end && stream.error.is_none() {
            match response_status(&fields) {
                Ok(status) if (100..200).contains(&status) => {}
                Ok(status) => {
                    stream.headers_done = true;
                    stream.response = Some(Response {
                        status,
                        headers: fields,
                    });
                }
                Err(why) => {
                    // A malformed response: a stream error (RFC 9113, 8.1.1).
                    stream.error = Some(Http2Error::Protocol {
                        code: frame::PROTOCOL_ERROR,
                        message: format!("a malformed response: {why}"),
                    });
                    frame::write_rst_stream(out, id, frame::PROTOCOL_ERROR);
                }
            }
        }
        // Otherwise these are trailers: nothing in them is needed.
        if flags & frame::END_STREAM != 0 {
            stream.end = true;
        }
        Ok(())
    }

    fn settings(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), ConnectionError> {
        if f.stream != 0 {
            return protocol_error(frame::PROTOCOL_ERROR, "SETTINGS on a stream");
        }
        if f.flags & frame::ACK != 0 {
            if !f.payload.is_empty() {
                return protocol_error(frame::FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload");
            }
            return Ok(());
        }
        let values = frame::parse_settings(&f.payload).map_err(|m| ConnectionError {
            code: frame::FRAME_SIZE_ERROR,
            message: m,
            not_http2: false,
        })?;
        let mut state = lock(self.state);
        for (id, value) in values {
            match id {
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if value > MAX_WINDOW {
                        return protocol_error(
                            frame::FLOW_CONTROL_ERROR,
                            format!("SETTINGS_INITIAL_WINDOW_SIZE {value} above 2^31-1"),
                        );
                    }
                    // Open streams' windows move by the difference (6.9.2);
                    // one pushed above 2^31-1 is a connection error.
                    let old = state.peer.initial_window;
                    for (id, s) in state.streams.iter_mut() {
                        if s.send_window.resize(old, value).is_err() {
                            return protocol_error(
                                frame::FLOW_CONTROL_ERROR,
                                format!(
                                    "SETTINGS_INITIAL_WINDOW_SIZE {value} takes the window of stream {id} above 2^31-1"
                                ),
                            );
                        }
                    }
                    state.peer.initial_window = value;
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME_SIZE..=frame::LARGEST_MAX_FRAME_SIZE)
                        .contains(&value)
                    {
                        return protocol_error(
                            frame::PROTOCOL_ERROR,
                            format!("SETTINGS_MAX_FRAME_SIZE {value} out of range"),
                        );
                    }
                    state.peer.max_frame = value;
                }
                frame::SETTINGS_MAX_CONCURRENT_STREAMS => state.peer.max_streams = value,
                // A server never enables push (RFC 9113, section 6.5.2).
                frame::SETTINGS_ENABLE_PUSH if value != 0 => {
                    return protocol_error(
                        frame::PROTOCOL_ERROR,
                        format!("SETTINGS_ENABLE_PUSH {value}"),
                    );
                }
                // The encoder never indexes, so the server's table size
                // does not matter; nor do the rest.
                _ => {}
            }
        }
        state.settings_received = true;
        frame::write_frame(out, frame::SETTINGS, frame::ACK, 0, &[]);
        // A larger initial window or frame size lets owed bodies go on.
        out.extend(sender::owed_data(&mut state));
        Ok(())
    }

    fn window_update(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), ConnectionError> {
        let increment =
            frame::parse_u32("WINDOW_UPDATE", &f.payload).map_err(|m| ConnectionError {
                code: frame::FRAME_SIZE_ERROR,
                message: m,
                not_http2: false,
            })? & 0x7FFF_FFFF;
        let mut state = lock(self.state);
        if f.stream != 0 {
            not_idle(&state, f)?;
        }
        if f.stream == 0 {
            if increment == 0 {
                return protocol_error(frame::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0");
            }
            if state.send_window.grant(increment).is_err() {
                return protocol_error(
                    frame::FLOW_CONTROL_ERROR,
                    "the connection's window grew above 2^31-1",
                );
            }
            out.extend(sender::owed_data(&mut state));
            return Ok(());
        }
        let Some(stream) = state.streams.get_mut(&f.stream) else {
            return Ok(());
        };
        if increment == 0 || stream.send_window.grant(increment).is_err() {
            let code = if increment == 0 {
                frame::PROTOCOL_ERROR
            } else {
                frame::FLOW_CONTROL_ERROR
            };
            stream.error.get_or_insert(Http2Error::Protocol {
                code,
                message: format!("a bad WINDOW_UPDATE of {increment} on stream {}", f.stream),
            });
            stream.owed = None;
            frame::write_rst_stream(out, f.stream, code);
            return Ok(());
        }
        out.extend(sender::owed_data(&mut state));
        Ok(())
    }
}

/// The most CONTINUATION frames one header block may take (a block needs
/// at most 16 of the largest frames to reach [`MAX_HEADER_BLOCK`]).
const MAX_CONTINUATIONS: usize = 64;
/// The HTTP/2 error code ENHANCE_YOUR_CALM.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame on a stream that is idle (we never opened it) or that the
/// server would have opened (even: push is disabled) is a connection error
/// of type PROTOCOL_ERROR (RFC 9113, sections 5.1 and 5.1.1).
fn not_idle(state: &State, f: &Frame) -> Result<(), ConnectionError> {
    if f.stream % 2 == 0 || f.stream >= state.next_id {
        let which = if f.stream % 2 == 0 {
            "a stream the server would have opened (push is disabled)"
        } else {
            "a stream this client never opened"
        };
        return protocol_error(
            frame::PROTOCOL_ERROR,
            format!("a frame of type {} on stream {}, {which}", f.kind, f.stream),
        );
    }
    Ok(())
}

/// The `:status` of a response's header fields, or why they are malformed
/// (RFC 9113, section 8.3): exactly one `:status` of three digits, no other
/// pseudo-header, no pseudo-header after a regular one.
pub(super) fn response_status(fields: &[hpack::Field]) -> Result<u16, String> {
    let mut status = None;
    let mut regular_seen = false;
    for (name, value) in fields {
        if !name.starts_with(':') {
            regular_seen = true;
            continue;
        }
        if regular_seen {
            return Err(format!("pseudo-header {name} after a regular header"));
        }
        if name != ":status" {
            return Err(format!("pseudo-header {name} in a response"));
        }
        if status.is_some() {
            return Err("two :status pseudo-headers".into());
        }
        let valid = value.len() == 3 && value.iter().all(u8::is_ascii_digit) && value[0] != b'0';
        if !valid {
            return Err(format!(
                ":status {:?} is not three digits",
                String::from_utf8_lossy(value)
            ));
        }
        status = Some(value.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')));
    }
    status.ok_or_else(|| "no :status".to_owned())
}

/// What [`drive`] saw: how many frames were handled, what the client
/// would have sent in reply, how many request body bytes it sent, and the
/// connection error that ended it.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug)]
pub(crate) struct Driven {
    pub(crate) frames: usize,
    pub(crate) reply: Vec<u8>,
    pub(crate) body_sent: usize,
    pub(crate) error: Option<String>,
}

/// The request body [`drive`] sends on stream 1: larger than the default
/// windows, so that its sending depends on what the server grants.
#[cfg(any(test, feature = "fuzzing"))]
const DRIVEN_BODY: usize = 100_000;

/// Feeds `bytes`, as everything a server sends, to the state machine of
/// a connection with one request open on stream 1 (opened by `sender.rs`,
/// its body larger than the default windows), with no socket: the frames
/// are handled until the bytes end or a connection error. Checks what must
/// hold whatever the server sends (panics otherwise): no more data is
/// buffered than the stream's window allows, every reply is whole frames,
/// and the body goes out in order, never past the connection's send
/// window (what it started with plus what the server granted) nor beyond
/// its end.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn drive(bytes: &[u8]) -> Driven {
    use super::connection::OUR_MAX_FRAME;
    let mut opened = State::new();
    let body: Vec<u8> = (0..DRIVEN_BODY).map(|i| i as u8).collect();
    let (id, first) = sender::open(&mut opened, &[0x82], &body).expect("a new connection opens");
    let state = Mutex::new(opened);
    // What the connection window allowed: its start, then each grant.
    let mut granted = 65_535u64;
    let mut ended = false;
    let mut sent_body = Vec::new();
    let mut take_data = |reply: &[u8]| {
        let mut frames = reply;
        while !frames.is_empty() {
            let Ok(Some(f)) = frame::read_frame(&mut frames, u32::MAX) else {
                panic!("a reply that is not whole frames");
            };
            if f.kind == frame::DATA {
                assert!(
                    f.stream == id && !ended,
                    "DATA on stream {} or after its end",
                    f.stream
                );
                ended = f.flags & frame::END_STREAM != 0;
                sent_body.extend_from_slice(&f.payload);
            }
        }
    };
    take_data(&first);
    let mut handler = FrameHandler::new(&state, "fuzz");
    let mut input = bytes;
    let mut driven = Driven {
        frames: 0,
        reply: Vec::new(),
        body_sent: 0,
        error: None,
    };
    while let Ok(Some(f)) = frame::read_frame(&mut input, OUR_MAX_FRAME) {
        driven.frames += 1;
        let grant = match (f.kind, f.stream, f.payload.as_slice()) {
            (frame::WINDOW_UPDATE, 0, &[a, b, c, d]) => {
                u64::from(u32::from_be_bytes([a, b, c, d]) & 0x7FFF_FFFF)
            }
            _ => 0,
        };
        match handler.handle(f) {
            Ok(reply) => {
                granted += grant;
                take_data(&reply);
                driven.reply.extend_from_slice(&reply);
            }
            Err(e) => {
                driven.error = Some(e.message);
                break;
            }
        }
        let state = lock(&state);
        if let Some(stream) = state.streams.get(&1) {
            let buffered: usize = stream.data.iter().map(Vec::len).sum();
            assert!(
                buffered <= STREAM_WINDOW as usize,
                "{buffered} bytes buffered past the stream's window"
            );
        }
    }
    assert!(
        sent_body.len() as u64 <= granted,
        "DATA past the connection window"
    );
    assert!(body.starts_with(&sent_body), "the body out of order");
    assert!(
        !ended || sent_body.len() == body.len(),
        "END_STREAM before the body's end"
    );
    driven.body_sent = sent_body.len();
    driven
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Vec<hpack::Field> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_response_needs_exactly_one_three_digit_status_first() {
        assert_eq!(
            response_status(&fields(&[(":status", "200"), ("a", "b")])),
            Ok(200)
        );
        for bad in [
            vec![("a", "b")],
            vec![(":status", "+20")],
            vec![(":status", "2000")],
            vec![(":status", "20x")],
            vec![(":status", "099")],
            vec![(":status", "200"), (":status", "200")],
            vec![("a", "b"), (":status", "200")],
            vec![(":status", "200"), (":path", "/")],
        ] {
            assert!(response_status(&fields(&bad)).is_err(), "{bad:?}");
        }
    }

    /// A frame as a server writes it.
    fn server_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::write_frame(&mut out, kind, flags, stream, payload);
        out
    }

    #[test]
    fn frames_in_make_a_response_and_replies_out_without_a_socket() {
        let mut bytes = Vec::new();
        frame::write_settings(&mut bytes, &[(frame::SETTINGS_MAX_FRAME_SIZE, 32_768)]);
        // HPACK 0x88: `:status 200` from the static table.
        bytes.extend(server_frame(frame::HEADERS, frame::END_HEADERS, 1, &[0x88]));
        bytes.extend(server_frame(frame::DATA, 0, 1, b"hello"));
        bytes.extend(server_frame(frame::PING, 0, 0, &[7; 8]));
        let driven = drive(&bytes);
        assert_eq!((driven.frames, driven.error), (4, None));
        let mut replies = driven.reply.as_slice();
        let ack = frame::read_frame(&mut replies, u32::MAX).unwrap().unwrap();
        assert_eq!((ack.kind, ack.flags), (frame::SETTINGS, frame::ACK));
        let pong = frame::read_frame(&mut replies, u32::MAX).unwrap().unwrap();
        assert_eq!(
            (pong.kind, pong.flags, pong.payload),
            (frame::PING, frame::ACK, vec![7; 8])
        );
        assert!(replies.is_empty());
    }

    #[test]
    fn the_driven_request_body_goes_out_as_the_server_grants_room() {
        let mut bytes = Vec::new();
        frame::write_settings(&mut bytes, &[]);
        let driven = drive(&bytes);
        assert_eq!(driven.body_sent, 65_535, "the default windows");
        frame::write_window_update(&mut bytes, 0, 1 << 20);
        frame::write_window_update(&mut bytes, 1, 1 << 20);
        let driven = drive(&bytes);
        assert_eq!((driven.body_sent, driven.error), (DRIVEN_BODY, None));
    }

    #[test]
    fn data_past_the_stream_window_resets_the_stream() {
        let mut bytes = Vec::new();
        frame::write_settings(&mut bytes, &[]);
        bytes.extend(server_frame(frame::HEADERS, frame::END_HEADERS, 1, &[0x88]));
        // 16 KiB frames on stream 1 past its 4 MiB window, then on.
        let chunk = vec![0u8; 16_384];
        for _ in 0..(STREAM_WINDOW as usize / chunk.len() + 2) {
            bytes.extend(server_frame(frame::DATA, 0, 1, &chunk));
        }
        let driven = drive(&bytes);
        assert_eq!(driven.error, None, "a stream error, not a connection error");
        // The stream was reset with FLOW_CONTROL_ERROR.
        let mut replies = driven.reply.as_slice();
        let mut reset = None;
        while let Ok(Some(f)) = frame::read_frame(&mut replies, u32::MAX) {
            if f.kind == frame::RST_STREAM {
                reset = Some(frame::parse_u32("RST_STREAM", &f.payload).unwrap());
            }
        }
        assert_eq!(reset, Some(frame::FLOW_CONTROL_ERROR));
        // A first frame that is not SETTINGS: no HTTP/2 server.
        let driven = drive(&server_frame(frame::PING, 0, 0, &[0; 8]));
        assert!(driven.error.unwrap().contains("instead of SETTINGS"));
    }
}
