//! The request side of the HTTP/2 client, without I/O: opening a stream
//! gives the HEADERS (+ CONTINUATION) frames and as much of the body as
//! the server's windows allow; the rest is owed, and is given out as the
//! server's WINDOW_UPDATE and SETTINGS frames make room. The caller writes
//! the bytes returned, in the order they were returned.

use super::connection::{State, StreamState};
use super::error::Http2Error;
use super::frame;

/// The part of a request body not yet sent.
pub(super) struct Owed {
    body: Vec<u8>,
    /// How many bytes of `body` went out already.
    sent: usize,
}

impl Owed {
    fn rest(&self) -> &[u8] {
        &self.body[self.sent..]
    }
}

/// Opens a stream for a request whose HPACK header block is `block`:
/// its id, and the bytes to write now (the header block split to the
/// server's largest frame, then the body's DATA within the windows).
/// What the windows do not allow yet stays owed on the stream.
pub(super) fn open(
    state: &mut State,
    block: &[u8],
    body: &[u8],
) -> Result<(u32, Vec<u8>), Http2Error> {
    if let Some(e) = state.closed.clone().or_else(|| state.goaway.clone()) {
        return Err(e);
    }
    let open = state.streams.values().filter(|s| !s.end).count();
    if open as u64 >= u64::from(state.peer.max_streams) {
        return Err(Http2Error::Refused(format!(
            "the server allows {} concurrent HTTP/2 streams and all are in use",
            state.peer.max_streams
        )));
    }
    let id = state.next_id;
    if id > i32::MAX as u32 {
        return Err(Http2Error::Refused(
            "this HTTP/2 connection has used all its stream ids".into(),
        ));
    }
    state.next_id += 2;
    let mut stream = StreamState::new(state.peer.initial_window);
    if !body.is_empty() {
        stream.owed = Some(Owed {
            body: body.to_vec(),
            sent: 0,
        });
    }
    state.streams.insert(id, stream);
    let mut out = Vec::with_capacity(block.len() + 64);
    let max_frame = state.peer.max_frame as usize;
    let pieces: Vec<&[u8]> = block.chunks(max_frame).collect();
    let count = pieces.len().max(1);
    for i in 0..count {
        let piece = pieces.get(i).copied().unwrap_or_default();
        let kind = if i == 0 {
            frame::HEADERS
        } else {
            frame::CONTINUATION
        };
        let mut flags = if i + 1 == count {
            frame::END_HEADERS
        } else {
            0
        };
        if i == 0 && body.is_empty() {
            flags |= frame::END_STREAM;
        }
        frame::write_frame(&mut out, kind, flags, id, piece);
    }
    stream_data(state, id, &mut out);
    Ok((id, out))
}

/// The DATA frames every stream may send now (after a WINDOW_UPDATE or a
/// SETTINGS frame made room), streams in the order they were opened.
/// A stream in error (reset by the server, past its GOAWAY) owes nothing
/// any more.
pub(super) fn owed_data(state: &mut State) -> Vec<u8> {
    let mut ids: Vec<u32> = state
        .streams
        .iter()
        .filter(|(_, s)| s.owed.is_some())
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        stream_data(state, id, &mut out);
    }
    out
}

/// How many body bytes stream `id` still owes (0 once all went out, or
/// the stream is gone or in error).
pub(super) fn owed_bytes(state: &State, id: u32) -> usize {
    state
        .streams
        .get(&id)
        .and_then(|s| s.owed.as_ref())
        .map_or(0, |o| o.rest().len())
}

/// Appends the DATA frames stream `id` may send now to `out`: each within
/// the server's largest frame, the connection's and the stream's send
/// windows; END_STREAM on the last.
fn stream_data(state: &mut State, id: u32, out: &mut Vec<u8>) {
    if state.closed.is_some() {
        return;
    }
    let max_frame = state.peer.max_frame;
    let State {
        streams,
        send_window,
        ..
    } = state;
    let Some(stream) = streams.get_mut(&id) else {
        return;
    };
    if stream.error.is_some() {
        stream.owed = None;
        return;
    }
    let Some(owed) = stream.owed.as_mut() else {
        return;
    };
    loop {
        let rest = owed.rest();
        let n = u32::try_from(rest.len())
            .unwrap_or(u32::MAX)
            .min(send_window.available())
            .min(stream.send_window.available())
            .min(max_frame);
        if n == 0 {
            return;
        }
        // Within both windows by construction.
        let _ = send_window.consume(n);
        let _ = stream.send_window.consume(n);
        let n = n as usize;
        let last = n == rest.len();
        let flags = if last { frame::END_STREAM } else { 0 };
        frame::write_frame(out, frame::DATA, flags, id, &rest[..n]);
        owed.sent += n;
        if last {
            stream.owed = None;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::aws::http2::connection::lock;
    use crate::aws::http2::frame::Frame;
    use crate::aws::http2::handler::FrameHandler;

    /// The frames in `bytes`, all whole.
    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        let mut list = Vec::new();
        while !bytes.is_empty() {
            list.push(frame::read_frame(&mut bytes, u32::MAX).unwrap().unwrap());
        }
        list
    }

    /// The DATA frames in `bytes`: their payloads joined, each frame's
    /// length, and whether the last ended the stream.
    fn data(bytes: &[u8], stream: u32) -> (Vec<u8>, Vec<usize>, bool) {
        let mut joined = Vec::new();
        let mut lengths = Vec::new();
        let mut end = false;
        for f in frames(bytes) {
            if f.kind == frame::DATA && f.stream == stream {
                assert!(!end, "DATA after END_STREAM");
                end = f.flags & frame::END_STREAM != 0;
                lengths.push(f.payload.len());
                joined.extend_from_slice(&f.payload);
            }
        }
        (joined, lengths, end)
    }

    fn server_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Frame {
        Frame {
            kind,
            flags,
            stream,
            payload: payload.to_vec(),
        }
    }

    fn window_update(stream: u32, increment: u32) -> Frame {
        server_frame(frame::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
    }

    fn settings(values: &[(u16, u32)]) -> Frame {
        let mut payload = Vec::new();
        for (id, value) in values {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        server_frame(frame::SETTINGS, 0, 0, &payload)
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// A connection at the protocol's defaults (65,535-byte windows,
    /// 16 KiB frames) whose handler took the server's first SETTINGS.
    fn connection(state: &Mutex<State>) -> FrameHandler<'_> {
        let mut handler = FrameHandler::new(state, "test");
        handler.handle(settings(&[])).unwrap();
        handler
    }

    #[test]
    fn a_body_larger_than_the_send_window_is_split_and_resumed_on_window_update() {
        let state = Mutex::new(State::new());
        let mut handler = connection(&state);
        let request = body(100_000);
        let (id, out) = open(&mut lock(&state), b"block", &request).unwrap();
        let sent = frames(&out);
        assert_eq!(
            (sent[0].kind, sent[0].flags),
            (frame::HEADERS, frame::END_HEADERS)
        );
        let (first, lengths, end) = data(&out, id);
        assert_eq!((first.len(), end), (65_535, false));
        assert!(lengths.iter().all(|&n| n <= 16_384), "{lengths:?}");
        assert_eq!(owed_bytes(&lock(&state), id), 100_000 - 65_535);
        // The stream's window opens, the connection's does not: nothing.
        let out = handler.handle(window_update(id, 50_000)).unwrap();
        assert!(out.is_empty());
        // Both open: the rest, ending the stream.
        let out = handler.handle(window_update(0, 50_000)).unwrap();
        let (rest, _, end) = data(&out, id);
        assert!(end);
        assert_eq!([first, rest].concat(), request);
        assert_eq!(owed_bytes(&lock(&state), id), 0);
        // Nothing more is owed whatever opens.
        assert!(handler.handle(window_update(0, 1_000)).unwrap().is_empty());
    }

    #[test]
    fn a_header_block_larger_than_the_largest_frame_takes_continuation_frames() {
        let state = Mutex::new(State::new());
        let _handler = connection(&state);
        let block = body(40_000);
        let (id, out) = open(&mut lock(&state), &block, b"").unwrap();
        let sent = frames(&out);
        let kinds: Vec<(u8, u8, usize)> = sent
            .iter()
            .map(|f| (f.kind, f.flags, f.payload.len()))
            .collect();
        assert_eq!(
            kinds,
            [
                (frame::HEADERS, frame::END_STREAM, 16_384),
                (frame::CONTINUATION, 0, 16_384),
                (frame::CONTINUATION, frame::END_HEADERS, 40_000 - 2 * 16_384),
            ]
        );
        assert!(sent.iter().all(|f| f.stream == id));
        let joined: Vec<u8> = sent.iter().flat_map(|f| f.payload.clone()).collect();
        assert_eq!(joined, block);
        // A small block: one HEADERS frame.
        let (_, out) = open(&mut lock(&state), b"small", b"x").unwrap();
        let sent = frames(&out);
        assert_eq!(
            (sent[0].kind, sent[0].flags),
            (frame::HEADERS, frame::END_HEADERS)
        );
        assert_eq!(sent.len(), 2);
    }

    #[test]
    fn new_settings_apply_to_what_is_owed() {
        let state = Mutex::new(State::new());
        let mut handler = connection(&state);
        let request = body(200_000);
        let (id, out) = open(&mut lock(&state), b"block", &request).unwrap();
        let (mut sent, _, _) = data(&out, id);
        assert_eq!(sent.len(), 65_535);
        // A larger connection window alone: the stream's is used up.
        assert!(
            handler
                .handle(window_update(0, 1 << 20))
                .unwrap()
                .is_empty()
        );
        // A larger initial window and frame size: the stream may send
        // 40,000 more bytes, in frames up to 32 KiB.
        let out = handler
            .handle(settings(&[
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, 65_535 + 40_000),
                (frame::SETTINGS_MAX_FRAME_SIZE, 32_768),
            ]))
            .unwrap();
        assert_eq!(frames(&out)[0].kind, frame::SETTINGS, "the ACK first");
        let (more, lengths, end) = data(&out, id);
        assert_eq!((lengths, end), (vec![32_768, 40_000 - 32_768], false));
        sent.extend(more);
        // A smaller initial window takes the stream's below zero: a
        // WINDOW_UPDATE smaller than the deficit sends nothing.
        let out = handler
            .handle(settings(&[(frame::SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]))
            .unwrap();
        assert_eq!(data(&out, id).1, Vec::<usize>::new());
        assert!(
            handler
                .handle(window_update(id, 39_999))
                .unwrap()
                .is_empty()
        );
        let out = handler.handle(window_update(id, 1 << 20)).unwrap();
        let (rest, lengths, end) = data(&out, id);
        assert!(end);
        assert!(lengths.iter().all(|&n| n <= 32_768), "{lengths:?}");
        sent.extend(rest);
        assert_eq!(sent, request);
    }

    #[test]
    fn a_stream_reset_by_the_server_drops_what_it_owed() {
        let state = Mutex::new(State::new());
        let mut handler = connection(&state);
        let (reset, _) = open(&mut lock(&state), b"block", &body(100_000)).unwrap();
        let (other, out) = open(&mut lock(&state), b"block", &body(1_000)).unwrap();
        assert!(
            data(&out, other).0.is_empty(),
            "the connection window is used up"
        );
        let code = frame::CANCEL.to_be_bytes();
        let out = handler
            .handle(server_frame(frame::RST_STREAM, 0, reset, &code))
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(owed_bytes(&lock(&state), reset), 0);
        // Room opens: only the other stream sends, all of its body.
        handler.handle(window_update(reset, 1 << 20)).unwrap();
        let out = handler.handle(window_update(0, 1 << 20)).unwrap();
        assert!(data(&out, reset).1.is_empty());
        let (rest, _, end) = data(&out, other);
        assert_eq!((rest, end), (body(1_000), true));
    }
}
