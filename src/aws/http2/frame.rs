//! HTTP/2 frames (RFC 9113, section 4 and 6): the 9-byte header, reading
//! and writing whole frames, and the payloads of the control frames.

use std::io::{self, Read};

/// Frame types (RFC 9113, section 6).
pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

/// Flags.
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

/// Settings identifiers (RFC 9113, section 6.5.2).
pub(crate) const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(crate) const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub(crate) const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Error codes (RFC 9113, section 7).
pub(crate) const NO_ERROR: u32 = 0x0;
pub(crate) const PROTOCOL_ERROR: u32 = 0x1;
pub(crate) const FLOW_CONTROL_ERROR: u32 = 0x3;
pub(crate) const FRAME_SIZE_ERROR: u32 = 0x6;
pub(crate) const CANCEL: u32 = 0x8;
pub(crate) const COMPRESSION_ERROR: u32 = 0x9;

/// The client connection preface (RFC 9113, section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The default and smallest SETTINGS_MAX_FRAME_SIZE, and the largest allowed.
pub(crate) const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
pub(crate) const LARGEST_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;

/// The name of an HTTP/2 error code, for messages.
pub(crate) fn error_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "unknown error code",
    }
}

/// One frame as read off the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) payload: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection failed or ended (`UnexpectedEof` when cut inside a frame).
    Io(io::Error),
    /// The frame is longer than our SETTINGS_MAX_FRAME_SIZE.
    TooLarge { length: u32, max: u32 },
}

/// Reads one frame; `Ok(None)` when the connection ended cleanly between
/// frames.
pub(crate) fn read_frame(r: &mut impl Read, max_size: u32) -> Result<Option<Frame>, ReadError> {
    let mut header = [0u8; 9];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed inside a frame header",
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    if length > max_size {
        return Err(ReadError::TooLarge {
            length,
            max: max_size,
        });
    }
    let mut payload = vec![0u8; length as usize];
    r.read_exact(&mut payload).map_err(ReadError::Io)?;
    Ok(Some(Frame {
        kind: header[3],
        flags: header[4],
        // The reserved high bit is ignored on receipt.
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7FFF_FFFF,
        payload,
    }))
}

/// Appends a frame with this payload.
pub(crate) fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let length = payload.len() as u32;
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a SETTINGS frame with these values.
pub(crate) fn write_settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    let mut payload = Vec::with_capacity(values.len() * 6);
    for (id, value) in values {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    write_frame(out, SETTINGS, 0, 0, &payload);
}

/// Appends a WINDOW_UPDATE frame.
pub(crate) fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_frame(out, WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
}

/// Appends an RST_STREAM frame.
pub(crate) fn write_rst_stream(out: &mut Vec<u8>, stream: u32, code: u32) {
    write_frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
}

/// Appends a GOAWAY frame.
pub(crate) fn write_goaway(out: &mut Vec<u8>, last_stream: u32, code: u32, debug: &[u8]) {
    let mut payload = Vec::with_capacity(8 + debug.len());
    payload.extend_from_slice(&last_stream.to_be_bytes());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(debug);
    write_frame(out, GOAWAY, 0, 0, &payload);
}

/// The settings of a SETTINGS payload; an error when its length is not a
/// multiple of 6.
pub(crate) fn parse_settings(payload: &[u8]) -> Result<Vec<(u16, u32)>, String> {
    if payload.len() % 6 != 0 {
        return Err(format!(
            "a SETTINGS frame of {} bytes (not a multiple of 6)",
            payload.len()
        ));
    }
    Ok(payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect())
}

/// A 4-byte payload as a number (RST_STREAM, WINDOW_UPDATE).
pub(crate) fn parse_u32(kind: &str, payload: &[u8]) -> Result<u32, String> {
    <[u8; 4]>::try_from(payload)
        .map(u32::from_be_bytes)
        .map_err(|_| format!("a {kind} frame of {} bytes (must be 4)", payload.len()))
}

/// A GOAWAY payload: last stream id, error code, debug data.
pub(crate) fn parse_goaway(payload: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    if payload.len() < 8 {
        return Err(format!(
            "a GOAWAY frame of {} bytes (at least 8)",
            payload.len()
        ));
    }
    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7FFF_FFFF;
    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    Ok((last, code, payload[8..].to_vec()))
}

/// The data of a DATA frame, or the header block fragment of a HEADERS
/// frame, without padding (and without the priority fields of HEADERS).
pub(crate) fn strip_padding_and_priority(frame: &Frame) -> Result<&[u8], String> {
    let mut body = &frame.payload[..];
    let mut padding = 0usize;
    if frame.flags & PADDED != 0 {
        let (&pad, rest) = body
            .split_first()
            .ok_or("a padded frame without a pad length")?;
        padding = usize::from(pad);
        body = rest;
    }
    if frame.kind == HEADERS && frame.flags & PRIORITY_FLAG != 0 {
        body = body
            .get(5..)
            .ok_or("a HEADERS frame too short for its priority fields")?;
    }
    if padding > body.len() {
        return Err(format!(
            "{padding} bytes of padding in a frame with {} bytes left",
            body.len()
        ));
    }
    Ok(&body[..body.len() - padding])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        write_frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 3, b"abc");
        assert_eq!(out[..9], [0, 0, 3, 1, 5, 0, 0, 0, 3]);
        let frame = read_frame(&mut &out[..], 16_384).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame {
                kind: HEADERS,
                flags: 5,
                stream: 3,
                payload: b"abc".to_vec()
            }
        );
        assert!(read_frame(&mut &[][..], 16_384).unwrap().is_none());
    }

    #[test]
    fn frames_too_large_or_cut_short_are_errors() {
        let mut out = Vec::new();
        write_frame(&mut out, DATA, 0, 1, &[0u8; 20]);
        assert!(matches!(
            read_frame(&mut &out[..], 16),
            Err(ReadError::TooLarge {
                length: 20,
                max: 16
            })
        ));
        assert!(matches!(
            read_frame(&mut &out[..5], 100),
            Err(ReadError::Io(_))
        ));
        assert!(matches!(
            read_frame(&mut &out[..15], 100),
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn the_reserved_bit_of_the_stream_id_is_ignored() {
        let bytes = [0, 0, 0, DATA, 0, 0x80, 0, 0, 5];
        assert_eq!(read_frame(&mut &bytes[..], 10).unwrap().unwrap().stream, 5);
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        let frame = |kind, flags, payload: &[u8]| Frame {
            kind,
            flags,
            stream: 1,
            payload: payload.to_vec(),
        };
        assert_eq!(
            strip_padding_and_priority(&frame(DATA, PADDED, &[2, b'h', b'i', 0, 0])).unwrap(),
            b"hi"
        );
        let headers = frame(
            HEADERS,
            PADDED | PRIORITY_FLAG,
            &[1, 0, 0, 0, 3, 16, 0x82, 0],
        );
        assert_eq!(strip_padding_and_priority(&headers).unwrap(), [0x82]);
        assert!(strip_padding_and_priority(&frame(DATA, PADDED, &[5, 1])).is_err());
        assert!(strip_padding_and_priority(&frame(DATA, PADDED, &[])).is_err());
        assert!(strip_padding_and_priority(&frame(HEADERS, PRIORITY_FLAG, &[0, 0])).is_err());
    }

    #[test]
    fn control_payloads() {
        let mut out = Vec::new();
        write_settings(
            &mut out,
            &[(SETTINGS_INITIAL_WINDOW_SIZE, 7), (SETTINGS_ENABLE_PUSH, 0)],
        );
        let f = read_frame(&mut &out[..], 100).unwrap().unwrap();
        assert_eq!(
            parse_settings(&f.payload).unwrap(),
            [(SETTINGS_INITIAL_WINDOW_SIZE, 7), (SETTINGS_ENABLE_PUSH, 0)]
        );
        assert!(parse_settings(&[0; 5]).is_err());
        out.clear();
        write_goaway(&mut out, 7, PROTOCOL_ERROR, b"bye");
        let f = read_frame(&mut &out[..], 100).unwrap().unwrap();
        assert_eq!(parse_goaway(&f.payload).unwrap(), (7, 1, b"bye".to_vec()));
        assert!(parse_goaway(&[0; 7]).is_err());
        out.clear();
        write_window_update(&mut out, 3, 1000);
        write_rst_stream(&mut out, 3, CANCEL);
        let mut r = &out[..];
        let w = read_frame(&mut r, 100).unwrap().unwrap();
        assert_eq!(
            (w.kind, parse_u32("WINDOW_UPDATE", &w.payload).unwrap()),
            (WINDOW_UPDATE, 1000)
        );
        let rst = read_frame(&mut r, 100).unwrap().unwrap();
        assert_eq!(parse_u32("RST_STREAM", &rst.payload).unwrap(), CANCEL);
        assert!(parse_u32("RST_STREAM", &[0; 3]).is_err());
        assert_eq!(error_name(0xb), "ENHANCE_YOUR_CALM");
    }
}
