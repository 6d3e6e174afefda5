//! A scripted HTTP/2 server on 127.0.0.1 for tests: it accepts one
//! connection and plays a script against it, frame by frame, so tests can
//! send what a real server rarely does (GOAWAY mid-stream, resets, tiny
//! windows, Huffman and dynamic-table headers, bad event checksums).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use super::frame::{self, Frame};
use super::{hpack, huffman};

/// The server side of one connection, as a script sees it.
pub(crate) struct Peer {
    pub(crate) socket: TcpStream,
    pub(crate) decoder: hpack::Decoder,
    /// Close gracefully after the script (read what the client sent
    /// last): closing a socket with unread data resets the connection,
    /// and the client's kernel then drops what it had not read yet.
    pub(crate) graceful: bool,
}

/// A request as the server read it.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) stream: u32,
    pub(crate) headers: Vec<hpack::Field>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

impl Peer {
    /// Reads the client preface and its SETTINGS, and sends ours (`settings`).
    pub(crate) fn handshake(&mut self, settings: &[(u16, u32)]) {
        let mut preface = [0u8; 24];
        self.socket.read_exact(&mut preface).unwrap();
        assert_eq!(&preface[..], frame::PREFACE, "client preface");
        let first = self.read_frame();
        assert_eq!(first.kind, frame::SETTINGS, "the client's first frame");
        let mut out = Vec::new();
        frame::write_settings(&mut out, settings);
        frame::write_frame(&mut out, frame::SETTINGS, frame::ACK, 0, &[]);
        self.send(&out);
    }

    pub(crate) fn read_frame(&mut self) -> Frame {
        frame::read_frame(&mut self.socket, 1 << 20)
            .unwrap()
            .expect("a frame from the client")
    }

    /// Reads frames until a whole request (HEADERS, CONTINUATION, DATA up
    /// to END_STREAM) arrived, skipping control frames.
    pub(crate) fn read_request(&mut self) -> Request {
        let mut block = Vec::new();
        let mut body = Vec::new();
        let mut headers = None;
        loop {
            let f = self.read_frame();
            match f.kind {
                frame::HEADERS | frame::CONTINUATION => {
                    block.extend_from_slice(&f.payload);
                    if f.flags & frame::END_HEADERS != 0 {
                        headers = Some(self.decoder.decode(&block).unwrap());
                    }
                    if f.kind == frame::HEADERS && f.flags & frame::END_STREAM != 0 {
                        return Request {
                            stream: f.stream,
                            headers: headers.unwrap_or_default(),
                            body,
                        };
                    }
                }
                frame::DATA => {
                    body.extend_from_slice(&f.payload);
                    if f.flags & frame::END_STREAM != 0 {
                        return Request {
                            stream: f.stream,
                            headers: headers.expect("HEADERS before DATA"),
                            body,
                        };
                    }
                }
                _ => {}
            }
        }
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).unwrap();
    }

    /// Sends a header block as HEADERS (+ CONTINUATION when `split` is
    /// given: the byte where HEADERS stops).
    pub(crate) fn headers(&mut self, stream: u32, block: &[u8], split: Option<usize>, end: bool) {
        let end_stream = if end { frame::END_STREAM } else { 0 };
        let mut out = Vec::new();
        match split {
            None => frame::write_frame(
                &mut out,
                frame::HEADERS,
                frame::END_HEADERS | end_stream,
                stream,
                block,
            ),
            Some(at) => {
                frame::write_frame(&mut out, frame::HEADERS, end_stream, stream, &block[..at]);
                frame::write_frame(
                    &mut out,
                    frame::CONTINUATION,
                    frame::END_HEADERS,
                    stream,
                    &block[at..],
                );
            }
        }
        self.send(&out);
    }

    /// A `200` with the event-stream content type, as plain literals.
    pub(crate) fn ok_headers(&mut self, stream: u32) {
        let mut block = vec![0x88];
        hpack::encode_literal(
            &mut block,
            "content-type",
            b"application/vnd.amazon.eventstream",
        );
        hpack::encode_literal(&mut block, "x-amzn-requestid", b"req-1");
        self.headers(stream, &block, None, false);
    }

    /// Sends `bytes` as DATA frames of at most 16 KiB.
    pub(crate) fn data(&mut self, stream: u32, bytes: &[u8], end: bool) {
        let mut out = Vec::new();
        let mut chunks = bytes.chunks(16_384).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if end && chunks.peek().is_none() {
                frame::END_STREAM
            } else {
                0
            };
            frame::write_frame(&mut out, frame::DATA, flags, stream, chunk);
        }
        if bytes.is_empty() && end {
            frame::write_frame(&mut out, frame::DATA, frame::END_STREAM, stream, &[]);
        }
        self.send(&out);
    }

    /// Sends GOAWAY.
    pub(crate) fn goaway(&mut self, last_stream: u32, code: u32, debug: &str) {
        let mut out = Vec::new();
        frame::write_goaway(&mut out, last_stream, code, debug.as_bytes());
        self.send(&out);
    }
}

/// A field with incremental indexing whose name is static entry
/// `name_index` (0: a new name) and whose value is Huffman-coded.
pub(crate) fn indexed_huffman(out: &mut Vec<u8>, name_index: usize, name: &str, value: &str) {
    hpack::encode_integer(out, 0x40, 6, name_index);
    if name_index == 0 {
        let coded = huffman::encode(name.as_bytes());
        hpack::encode_integer(out, 0x80, 7, coded.len());
        out.extend_from_slice(&coded);
    }
    let coded = huffman::encode(value.as_bytes());
    hpack::encode_integer(out, 0x80, 7, coded.len());
    out.extend_from_slice(&coded);
}

/// A scripted server: its URL, and the script's thread (join it to see
/// the script's own assertion failures).
pub(crate) struct ScriptedServer {
    pub(crate) url: String,
    script: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Accepts one connection on 127.0.0.1 and runs `script` on it.
    pub(crate) fn start(script: impl FnOnce(&mut Peer) + Send + 'static) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut peer = Peer {
                socket,
                decoder: hpack::Decoder::new(4096, 1 << 20),
                graceful: true,
            };
            script(&mut peer);
            if peer.graceful {
                let _ = peer.socket.shutdown(std::net::Shutdown::Write);
                let _ = peer
                    .socket
                    .set_read_timeout(Some(Duration::from_millis(200)));
                let mut sink = [0u8; 4096];
                while matches!(peer.socket.read(&mut sink), Ok(n) if n > 0) {}
            }
        });
        ScriptedServer {
            url,
            script: Some(script),
        }
    }

    /// Waits for the script to finish; its panic, if any, becomes ours.
    pub(crate) fn finish(mut self) {
        if let Some(script) = self.script.take() {
            if let Err(panic) = script.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}
