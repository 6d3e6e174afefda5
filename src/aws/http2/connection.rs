//! One HTTP/2 client connection: the preface and SETTINGS exchange, a
//! reader thread (`reader.rs`) that handles every frame the server sends
//! (`handler.rs`), requests as streams (`sender.rs` says what to write;
//! the reader thread writes the rest of a body as the server's windows
//! open), and flow control in both directions.
//!
//! Flow control never lets one slow stream stall the others: the
//! connection-level window is given back as soon as DATA arrives (each
//! stream's own window already bounds what can pile up), while a stream's
//! window is given back only as its reader takes the data out.
//!
//! Locks: `writer` (the order of frames on the wire, and stream ids opened
//! in increasing order) may be taken before `state`, never after it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::Shutdown;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::Http2Error;
use super::frame;
use super::hpack;
use super::reader::read_frames;
use super::sender::{self, Owed};
use super::transport::{Transport, open_socket, tls_handshake};
use super::window::Window;
use crate::time::later;

/// Each stream's receive window: what the server may send before we take
/// it out. Two seconds of a shard's fan-out rate (2 MiB/s), and no less
/// than kinesis-local needs: it sends nothing more while the window is
/// smaller than its next event (seen with a 1 MiB window and a ~1.97 MB
/// event). An open subscription reserves it from `read_memory` when that
/// is set.
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
/// The connection's receive window; given back as data arrives.
pub(super) const CONNECTION_WINDOW: u32 = 16 << 20;
/// The most header bytes (names, values, 32 per field) one block may hold.
pub(super) const MAX_HEADER_LIST: usize = 64 << 10;
/// The most bytes of HPACK one header block (HEADERS + CONTINUATION) may take.
pub(super) const MAX_HEADER_BLOCK: usize = 256 << 10;
/// The largest frame we accept (SETTINGS_MAX_FRAME_SIZE): 256 KiB, 16
/// times the default, so that a server that sends large frames moves a
/// multi-megabyte event in tens of frames rather than hundreds (each
/// frame is a hand-off from the reader thread to the stream's reader).
/// Each frame is read whole into memory: this bounds that buffer.
pub(super) const OUR_MAX_FRAME: u32 = 256 << 10;

/// Where to connect: `tls` with ALPN `h2`, or prior-knowledge cleartext.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `:authority` (host, and port when not the default).
    pub(crate) authority: String,
    /// Set for `https`: the TLS configuration (its ALPN is set to `h2` here).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) connect_timeout: Duration,
    /// How long to wait for the server's SETTINGS, a response, or room in
    /// its flow-control window.
    pub(crate) read_timeout: Duration,
}

/// The status and headers of a response.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<hpack::Field>,
}

impl Response {
    /// The first value of header `name` (lowercase), as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// The server's settings that matter to a client.
pub(super) struct PeerSettings {
    pub(super) initial_window: u32,
    pub(super) max_frame: u32,
    pub(super) max_streams: u32,
}

pub(super) struct StreamState {
    pub(super) response: Option<Response>,
    /// The response head arrived (later HEADERS are trailers).
    pub(super) headers_done: bool,
    pub(super) data: VecDeque<Vec<u8>>,
    /// When the reader thread last received a DATA frame for the stream
    /// (or the stream opened): silence is measured from here, not from
    /// when someone took the data out.
    pub(super) last_arrival: Instant,
    /// END_STREAM arrived.
    pub(super) end: bool,
    pub(super) error: Option<Http2Error>,
    /// What we may still send (the server's window for this stream).
    pub(super) send_window: Window,
    /// What the server may still send.
    pub(super) recv_window: Window,
    /// Bytes taken out (or padding) not yet given back with WINDOW_UPDATE.
    pub(super) unacked: u32,
    /// The request body not sent yet (`sender.rs`); `None` once sent.
    pub(super) owed: Option<Owed>,
}

impl StreamState {
    /// A stream just opened, while the server's initial window is
    /// `initial_window`.
    pub(super) fn new(initial_window: u32) -> StreamState {
        StreamState {
            response: None,
            headers_done: false,
            data: VecDeque::new(),
            last_arrival: Instant::now(),
            end: false,
            error: None,
            send_window: Window::new(initial_window),
            recv_window: Window::new(STREAM_WINDOW),
            unacked: 0,
            owed: None,
        }
    }
}

pub(super) struct State {
    pub(super) streams: HashMap<u32, StreamState>,
    pub(super) next_id: u32,
    pub(super) send_window: Window,
    pub(super) recv_window: Window,
    pub(super) recv_unacked: u32,
    pub(super) peer: PeerSettings,
    pub(super) settings_received: bool,
    /// A frame (or the start of one) arrived from the server.
    pub(super) anything_received: bool,
    pub(super) goaway: Option<Http2Error>,
    /// A write failed: nothing more is written.
    pub(super) write_failed: Option<Http2Error>,
    /// Set once the connection is over; every stream without an error of
    /// its own reports this.
    pub(super) closed: Option<Http2Error>,
}

pub(super) struct Inner {
    pub(super) transport: Transport,
    pub(super) writer: Mutex<()>,
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
    pub(super) authority: String,
    pub(super) scheme: &'static str,
    pub(super) read_timeout: Duration,
}

impl State {
    /// A connection just opened: the protocol's defaults until the
    /// server's SETTINGS, our connection window as our preface sets it.
    pub(super) fn new() -> State {
        State {
            streams: HashMap::new(),
            next_id: 1,
            send_window: Window::new(65_535),
            recv_window: Window::new(CONNECTION_WINDOW),
            recv_unacked: 0,
            peer: PeerSettings {
                initial_window: 65_535,
                max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
                max_streams: u32::MAX,
            },
            settings_received: false,
            anything_received: false,
            goaway: None,
            write_failed: None,
            closed: None,
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Writes frames (the writer lock keeps them whole and in order).
    ///
    /// Any write error ends the connection: a partial frame would corrupt
    /// the framing, and a lost WINDOW_UPDATE would stall the server, so
    /// nothing more may be written after one, and every stream reports it.
    pub(super) fn send(&self, bytes: &[u8]) -> Result<(), Http2Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        let writer = lock(&self.writer);
        self.write_locked(&writer, bytes)
    }

    /// Writes `bytes` while the caller holds the writer lock (`_writer`).
    pub(super) fn write_locked(
        &self,
        _writer: &MutexGuard<'_, ()>,
        bytes: &[u8],
    ) -> Result<(), Http2Error> {
        if let Some(e) = lock(&self.state).write_failed.clone() {
            return Err(e);
        }
        match self.transport.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.write_failed(&e)),
        }
    }

    /// Ends the connection after a failed write: the error every stream
    /// reports from now on.
    fn write_failed(&self, e: &io::Error) -> Http2Error {
        let error = Http2Error::Io {
            kind: e.kind(),
            message: format!("writing to the connection failed, so it was closed: {e}"),
        };
        log::debug!("HTTP/2 connection to {}: {error}", self.authority);
        {
            let mut state = lock(&self.state);
            state.write_failed.get_or_insert(error.clone());
            state.closed.get_or_insert(error.clone());
        }
        self.changed.notify_all();
        let _ = self.transport.socket().shutdown(Shutdown::Both);
        error
    }

    /// Waits on the state until `ready` says yes or `deadline` passes.
    fn wait_until<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        deadline: Instant,
        mut ready: impl FnMut(&mut State) -> bool,
    ) -> (MutexGuard<'a, State>, bool) {
        loop {
            if ready(&mut state) {
                return (state, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (state, false);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// An open HTTP/2 connection. Dropping it closes the socket and ends its
/// reader thread.
pub(crate) struct Connection {
    inner: Arc<Inner>,
    reader: Option<JoinHandle<()>>,
}

impl Connection {
    /// Connects, sends the preface and our SETTINGS, and waits for the
    /// server's SETTINGS.
    pub(crate) fn connect(target: &Target) -> Result<Connection, Http2Error> {
        let socket = open_socket(&target.host, target.port, target.connect_timeout)?;
        let io = |e: io::Error| Http2Error::io(&e);
        socket.set_nodelay(true).map_err(io)?;
        socket
            .set_write_timeout(Some(target.read_timeout))
            .map_err(io)?;
        let (transport, scheme) = match &target.tls {
            None => (Transport::Plain(socket), "http"),
            Some(config) => (tls_handshake(socket, config, target)?, "https"),
        };
        let state = State::new();
        let inner = Arc::new(Inner {
            transport,
            writer: Mutex::new(()),
            state: Mutex::new(state),
            changed: Condvar::new(),
            authority: target.authority.clone(),
            scheme,
            read_timeout: target.read_timeout,
        });
        let mut preface = frame::PREFACE.to_vec();
        frame::write_settings(
            &mut preface,
            &[
                (frame::SETTINGS_ENABLE_PUSH, 0),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
                (frame::SETTINGS_MAX_FRAME_SIZE, OUR_MAX_FRAME),
            ],
        );
        frame::write_window_update(&mut preface, 0, CONNECTION_WINDOW - 65_535);
        inner.send(&preface)?;
        let reader_inner = inner.clone();
        let reader = std::thread::Builder::new()
            .name("kinesis-http2-reader".into())
            .spawn(move || read_frames(reader_inner))
            .map_err(|e| Http2Error::io(&e))?;
        let connection = Connection {
            inner,
            reader: Some(reader),
        };
        let deadline = later(Instant::now(), target.read_timeout);
        let state = lock(&connection.inner.state);
        let (state, ready) = connection.inner.wait_until(state, deadline, |s| {
            s.settings_received || s.closed.is_some()
        });
        if let Some(e) = &state.closed {
            // An HTTP/2 server answers the preface with SETTINGS; one that
            // closes without a byte (an HTTP/1.1 server refusing
            // "PRI * HTTP/2.0") does not speak HTTP/2.
            if *e == Http2Error::Closed && !state.anything_received {
                return Err(Http2Error::NotHttp2(
                    "the server closed the connection after the HTTP/2 preface without a byte: does it speak HTTP/2?".into(),
                ));
            }
            return Err(e.clone());
        }
        if !ready {
            return Err(Http2Error::Timeout(format!(
                "the server's HTTP/2 SETTINGS ({:?})",
                target.read_timeout
            )));
        }
        drop(state);
        Ok(connection)
    }

    /// Sends a request (`headers` are lowercase names, no pseudo-headers)
    /// with `body`, waiting for room in the server's flow-control windows
    /// as needed; the stream to read the response from.
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<ResponseBody, Http2Error> {
        let inner = &self.inner;
        let block = request_block(method, inner.scheme, &inner.authority, path, headers);
        let id = {
            // Ids must reach the wire in increasing order, and a stream's
            // HEADERS before its DATA (which the reader thread may send
            // once the windows open): open and write under the writer lock.
            let writer = lock(&inner.writer);
            let (id, out) = sender::open(&mut lock(&inner.state), &block, body)?;
            inner.write_locked(&writer, &out)?;
            id
        };
        let stream = ResponseBody {
            inner: self.inner.clone(),
            id,
        };
        stream.wait_body_sent()?;
        Ok(stream)
    }

    /// The number of streams open now (for tests and measurements).
    #[cfg(test)]
    pub(crate) fn open_streams(&self) -> usize {
        lock(&self.inner.state).streams.len()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut goodbye = Vec::new();
        frame::write_goaway(&mut goodbye, 0, frame::NO_ERROR, b"");
        let _ = self.inner.send(&goodbye);
        {
            let mut state = lock(&self.inner.state);
            state.closed.get_or_insert(Http2Error::Refused(
                "this client closed the HTTP/2 connection".into(),
            ));
        }
        self.inner.changed.notify_all();
        let _ = self.inner.transport.socket().shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// What [`ResponseBody::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyRead {
    /// Bytes of the body.
    Data(Vec<u8>),
    /// The server ended the stream.
    End,
    /// Nothing within the wait.
    Nothing,
}

/// One request's stream: its response and body. Dropping it before the
/// end resets the stream (CANCEL).
pub(crate) struct ResponseBody {
    inner: Arc<Inner>,
    id: u32,
}

impl ResponseBody {
    /// Waits until the request body went out: the reader thread sends what
    /// is owed as the server's windows open. Times out when no room comes
    /// for the read timeout.
    fn wait_body_sent(&self) -> Result<(), Http2Error> {
        let inner = &self.inner;
        let id = self.id;
        let mut state = lock(&inner.state);
        loop {
            let owed = sender::owed_bytes(&state, id);
            if owed == 0 {
                break;
            }
            let deadline = later(Instant::now(), inner.read_timeout);
            let (s, ready) = inner.wait_until(state, deadline, |s| {
                s.closed.is_some()
                    || s.streams.get(&id).is_none_or(|st| st.error.is_some())
                    || sender::owed_bytes(s, id) < owed
            });
            state = s;
            if let Some(e) = stream_error(&state, id) {
                return Err(e);
            }
            if !ready {
                return Err(Http2Error::Timeout(format!(
                    "room in the server's flow-control window to send the request body ({:?})",
                    inner.read_timeout
                )));
            }
        }
        Ok(())
    }

    /// Waits for the response's status and headers (1xx skipped), for up
    /// to the read timeout.
    pub(crate) fn response(&mut self) -> Result<Response, Http2Error> {
        let inner = &self.inner;
        let id = self.id;
        let deadline = later(Instant::now(), inner.read_timeout);
        let state = lock(&inner.state);
        let (mut state, _) = inner.wait_until(state, deadline, |s| {
            s.streams
                .get(&id)
                .is_none_or(|st| st.response.is_some() || st.end || st.error.is_some())
                || s.closed.is_some()
        });
        if let Some(response) = state.streams.get_mut(&id).and_then(|s| s.response.take()) {
            return Ok(response);
        }
        if let Some(e) = stream_error(&state, id) {
            return Err(e);
        }
        if state.streams.get(&id).is_some_and(|s| s.end) {
            return Err(Http2Error::Refused(
                "the server ended the HTTP/2 stream without a response".into(),
            ));
        }
        Err(Http2Error::Timeout(format!(
            "the response headers ({:?})",
            inner.read_timeout
        )))
    }

    /// The next bytes of the body, waiting up to `wait`. Data that arrived
    /// before a reset or the connection's end is read before its error.
    pub(crate) fn read(&mut self, wait: Duration) -> Result<BodyRead, Http2Error> {
        let inner = &self.inner;
        let id = self.id;
        let deadline = later(Instant::now(), wait);
        let state = lock(&inner.state);
        let (mut state, _) = inner.wait_until(state, deadline, |s| {
            s.closed.is_some()
                || s.streams
                    .get(&id)
                    .is_none_or(|st| !st.data.is_empty() || st.end || st.error.is_some())
        });
        let Some(stream) = state.streams.get_mut(&id) else {
            return Err(Http2Error::Refused("the HTTP/2 stream is gone".into()));
        };
        if let Some(chunk) = stream.data.pop_front() {
            stream.unacked += chunk.len() as u32;
            let mut out = Vec::new();
            // Give the window back in large steps, not per frame.
            if !stream.end && stream.unacked >= STREAM_WINDOW / 4 {
                frame::write_window_update(&mut out, id, stream.unacked);
                stream.recv_window.give_back(stream.unacked);
                stream.unacked = 0;
            }
            drop(state);
            // A failed write closes the connection: the server would wait
            // for this credit for ever.
            inner.send(&out)?;
            return Ok(BodyRead::Data(chunk));
        }
        if stream.end {
            return Ok(BodyRead::End);
        }
        if let Some(e) = stream_error(&state, id) {
            return Err(e);
        }
        Ok(BodyRead::Nothing)
    }

    /// When the connection last received DATA for this stream (or the
    /// stream opened), whether or not anyone took it out yet.
    pub(crate) fn last_arrival(&self) -> Instant {
        let state = lock(&self.inner.state);
        state
            .streams
            .get(&self.id)
            .map_or_else(Instant::now, |s| s.last_arrival)
    }

    /// True when no received data waits to be read.
    pub(crate) fn drained(&self) -> bool {
        let state = lock(&self.inner.state);
        state
            .streams
            .get(&self.id)
            .is_none_or(|s| s.data.is_empty())
    }
}

/// The HPACK block of a request: pseudo-headers, then `headers`, each a
/// literal never added to a table; the credentials (`authorization`, the
/// session token) as never-indexed literals (RFC 7541, section 7.1.3), so
/// that no intermediary compresses them where an attacker could probe.
fn request_block(
    method: &str,
    scheme: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut block = Vec::new();
    hpack::encode_literal(&mut block, ":method", method.as_bytes());
    hpack::encode_literal(&mut block, ":scheme", scheme.as_bytes());
    hpack::encode_literal(&mut block, ":authority", authority.as_bytes());
    hpack::encode_literal(&mut block, ":path", path.as_bytes());
    for (name, value) in headers {
        if matches!(*name, "authorization" | "x-amz-security-token") {
            hpack::encode_never_indexed(&mut block, name, value.as_bytes());
        } else {
            hpack::encode_literal(&mut block, name, value.as_bytes());
        }
    }
    block
}

/// The error a stream reports: its own, else the connection's.
fn stream_error(state: &State, id: u32) -> Option<Http2Error> {
    match state.streams.get(&id) {
        Some(s) if s.error.is_some() => s.error.clone(),
        Some(s) if s.end => None,
        _ => state.closed.clone(),
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        let Some(stream) = state.streams.remove(&self.id) else {
            return;
        };
        let mut out = Vec::new();
        if state.closed.is_none() && !stream.end && stream.error.is_none() {
            frame::write_rst_stream(&mut out, self.id, frame::CANCEL);
        }
        drop(state);
        let _ = self.inner.send(&out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Condvar, Mutex};

    use std::io::Write;
    use std::net::TcpStream;

    use super::*;
    use crate::aws::http2::test_server::{ScriptedServer, indexed_huffman};
    use crate::aws::http2::window::MAX_WINDOW;

    fn target(url: &str) -> Target {
        let address = url.trim_start_matches("http://");
        let (host, port) = address.split_once(':').unwrap();
        Target {
            host: host.into(),
            port: port.parse().unwrap(),
            authority: address.into(),
            tls: None,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
        }
    }

    /// Credit the client gave, by stream (0: the connection).
    type Windows = Arc<(Mutex<HashMap<u32, i64>>, Condvar)>;

    /// Sends `total` bytes on `stream` without ever exceeding the client's
    /// windows; panics when no WINDOW_UPDATE comes for 5 s (a deadlock).
    fn send_within_windows(
        socket: &mut TcpStream,
        windows: &Windows,
        stream: u32,
        total: usize,
        end: bool,
    ) {
        let chunk = [0u8; 16_384];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            let (lock, changed) = &**windows;
            let mut w = lock.lock().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while w[&0] < n as i64 || w[&stream] < n as i64 {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "stream {stream}: no window after {sent} bytes (deadlock)"
                );
                w = changed.wait_timeout(w, left).unwrap().0;
            }
            *w.get_mut(&0).unwrap() -= n as i64;
            *w.get_mut(&stream).unwrap() -= n as i64;
            drop(w);
            sent += n;
            let flags = if end && sent == total {
                frame::END_STREAM
            } else {
                0
            };
            let mut out = Vec::new();
            frame::write_frame(&mut out, frame::DATA, flags, stream, &chunk[..n]);
            socket.write_all(&out).unwrap();
        }
    }

    /// Four streams nobody reads hold 4 x 4 MiB, the whole connection
    /// window: a client that gave the connection's credit back only as
    /// data is read would stall every other stream here.
    #[test]
    fn streams_nobody_reads_do_not_stall_another_on_the_same_connection() {
        const B_BYTES: usize = 20 << 20;
        const UNREAD: usize = (CONNECTION_WINDOW / STREAM_WINDOW) as usize;
        let server = ScriptedServer::start(|peer| {
            peer.handshake(&[]);
            let unread: Vec<u32> = (0..UNREAD).map(|_| peer.read_request().stream).collect();
            let b = peer.read_request().stream;
            // The first response adds an entry to the dynamic table; the
            // others use it.
            let mut block = vec![0x88];
            indexed_huffman(&mut block, 0, "x-amzn-requestid", "shared-id");
            peer.headers(unread[0], &block, None, false);
            for &id in unread[1..].iter().chain([&b]) {
                peer.headers(id, &[0x88, 0x80 | 62], None, false);
            }
            let mut credit = HashMap::from([(0, i64::from(CONNECTION_WINDOW))]);
            for &id in unread.iter().chain([&b]) {
                credit.insert(id, i64::from(STREAM_WINDOW));
            }
            let windows: Windows = Arc::new((Mutex::new(credit), Condvar::new()));
            let mut updates = peer.socket.try_clone().unwrap();
            let seen = windows.clone();
            std::thread::spawn(move || {
                while let Ok(Some(f)) = frame::read_frame(&mut updates, 1 << 20) {
                    if f.kind == frame::WINDOW_UPDATE {
                        let n = frame::parse_u32("WINDOW_UPDATE", &f.payload).unwrap();
                        *seen.0.lock().unwrap().entry(f.stream).or_default() += i64::from(n);
                        seen.1.notify_all();
                    }
                }
            });
            for &id in &unread {
                send_within_windows(
                    &mut peer.socket,
                    &windows,
                    id,
                    STREAM_WINDOW as usize,
                    false,
                );
            }
            send_within_windows(&mut peer.socket, &windows, b, B_BYTES, true);
        });
        let connection = Connection::connect(&target(&server.url)).unwrap();
        let mut unread: Vec<ResponseBody> = (0..UNREAD)
            .map(|_| connection.request("POST", "/", &[], b"a").unwrap())
            .collect();
        let mut b = connection.request("POST", "/", &[], b"b").unwrap();
        for stream in unread.iter_mut().chain([&mut b]) {
            assert_eq!(
                stream.response().unwrap().header("x-amzn-requestid"),
                Some("shared-id")
            );
        }
        assert_eq!(connection.open_streams(), UNREAD + 1);
        let mut received = 0;
        loop {
            match b.read(Duration::from_secs(5)).unwrap() {
                BodyRead::Data(bytes) => received += bytes.len(),
                BodyRead::End => break,
                BodyRead::Nothing => panic!("stream B stalled after {received} bytes"),
            }
        }
        assert_eq!(received, B_BYTES);
        server.finish();
    }

    #[test]
    fn requests_after_goaway_are_refused_and_headers_need_a_status() {
        let server = ScriptedServer::start(|peer| {
            peer.handshake(&[]);
            let request = peer.read_request();
            // A response without :status is a stream error.
            let mut block = Vec::new();
            hpack::encode_literal(&mut block, "content-type", b"x");
            peer.headers(request.stream, &block, None, false);
            peer.goaway(request.stream, frame::NO_ERROR, "");
            std::thread::sleep(Duration::from_millis(300));
        });
        let connection = Connection::connect(&target(&server.url)).unwrap();
        let mut stream = connection.request("GET", "/", &[], b"").unwrap();
        let err = stream.response().unwrap_err();
        assert!(err.to_string().contains(":status"), "{err}");
        std::thread::sleep(Duration::from_millis(100));
        let refused = connection.request("GET", "/", &[], b"").err().unwrap();
        assert!(matches!(refused, Http2Error::GoAway { .. }), "{refused:?}");
        server.finish();
    }

    #[test]
    fn data_frames_up_to_our_max_frame_size_arrive_whole() {
        let server = ScriptedServer::start(move |peer| {
            peer.handshake(&[]);
            let request = peer.read_request();
            peer.ok_headers(request.stream);
            // 256 KiB, above the 16 KiB default: allowed by the SETTINGS
            // we sent.
            let mut out = Vec::new();
            let largest = vec![7u8; 256 << 10];
            frame::write_frame(
                &mut out,
                frame::DATA,
                frame::END_STREAM,
                request.stream,
                &largest,
            );
            peer.send(&out);
        });
        let connection = Connection::connect(&target(&server.url)).unwrap();
        let mut stream = connection.request("POST", "/", &[], b"{}").unwrap();
        stream.response().unwrap();
        match stream.read(Duration::from_secs(5)).unwrap() {
            BodyRead::Data(data) => {
                assert_eq!(data.len(), 256 << 10);
                assert!(data.iter().all(|&b| b == 7));
            }
            other => panic!("{other:?}"),
        }
        server.finish();
    }

    #[test]
    fn large_header_blocks_use_continuation_and_oversized_frames_end_the_connection() {
        let big = "v".repeat(40_000);
        let expected = big.clone();
        let server = ScriptedServer::start(move |peer| {
            peer.handshake(&[]);
            let request = peer.read_request();
            assert_eq!(request.header("x-big"), Some(expected.as_str()));
            peer.ok_headers(request.stream);
            // A DATA frame above our SETTINGS_MAX_FRAME_SIZE.
            let mut out = Vec::new();
            let too_large = vec![0u8; OUR_MAX_FRAME as usize + 1];
            frame::write_frame(&mut out, frame::DATA, 0, request.stream, &too_large);
            peer.send(&out);
            loop {
                let f = peer.read_frame();
                if f.kind == frame::GOAWAY {
                    let (_, code, _) = frame::parse_goaway(&f.payload).unwrap();
                    assert_eq!(code, frame::FRAME_SIZE_ERROR);
                    break;
                }
            }
        });
        let connection = Connection::connect(&target(&server.url)).unwrap();
        let mut stream = connection
            .request("POST", "/", &[("x-big", big.as_str())], b"{}")
            .unwrap();
        stream.response().unwrap();
        let err = stream.read(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(
                err,
                Http2Error::Protocol {
                    code: frame::FRAME_SIZE_ERROR,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("{} bytes", OUR_MAX_FRAME + 1)),
            "{err}"
        );
        server.finish();
    }

    #[test]
    fn push_promise_is_a_protocol_error_answered_with_goaway() {
        let server = ScriptedServer::start(|peer| {
            peer.handshake(&[]);
            let request = peer.read_request();
            let mut out = Vec::new();
            frame::write_frame(
                &mut out,
                frame::PUSH_PROMISE,
                frame::END_HEADERS,
                request.stream,
                &[0, 0, 0, 2, 0x82],
            );
            peer.send(&out);
            loop {
                let f = peer.read_frame();
                if f.kind == frame::GOAWAY {
                    let (last, code, _) = frame::parse_goaway(&f.payload).unwrap();
                    assert_eq!((last, code), (0, frame::PROTOCOL_ERROR));
                    break;
                }
            }
        });
        let connection = Connection::connect(&target(&server.url)).unwrap();
        let mut stream = connection.request("GET", "/", &[], b"").unwrap();
        let err = stream.response().unwrap_err();
        assert!(err.to_string().contains("PUSH_PROMISE"), "{err}");
        server.finish();
    }

    /// Runs `script` after the handshake and the request, and returns the
    /// error the response ends in.
    fn response_error(
        settings: &'static [(u16, u32)],
        script: impl FnOnce(&mut crate::aws::http2::test_server::Peer, u32) + Send + 'static,
    ) -> Http2Error {
        let server = ScriptedServer::start(move |peer| {
            peer.handshake(settings);
            let request = peer.read_request();
            script(peer, request.stream);
            std::thread::sleep(Duration::from_millis(300));
        });
        let connection = match Connection::connect(&target(&server.url)) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut stream = connection.request("GET", "/", &[], b"").unwrap();
        let result = stream.response();
        drop(stream);
        drop(connection);
        match result {
            Ok(r) => panic!("a response: {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn what_a_strict_client_refuses_of_a_server() {
        let protocol = |e: &Http2Error, code: u32, text: &str| {
            assert!(
                matches!(e, Http2Error::Protocol { code: c, .. } if *c == code),
                "{e:?}"
            );
            assert!(e.to_string().contains(text), "{e}");
        };
        // A server enabling push.
        let e = response_error(&[(frame::SETTINGS_ENABLE_PUSH, 1)], |_, _| {});
        protocol(&e, frame::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH 1");
        // DATA on a stream we never opened; HEADERS on an even stream.
        let e = response_error(&[], |peer, stream| peer.data(stream + 2, b"x", false));
        protocol(&e, frame::PROTOCOL_ERROR, "never opened");
        let e = response_error(&[], |peer, _| peer.headers(2, &[0x88], None, false));
        protocol(&e, frame::PROTOCOL_ERROR, "push is disabled");
        // A window pushed above 2^31-1 by a new initial window size.
        let e = response_error(&[], |peer, stream| {
            let mut out = Vec::new();
            frame::write_window_update(&mut out, stream, MAX_WINDOW - 65_535);
            frame::write_settings(&mut out, &[(frame::SETTINGS_INITIAL_WINDOW_SIZE, 65_536)]);
            peer.send(&out);
        });
        protocol(&e, frame::FLOW_CONTROL_ERROR, "above 2^31-1");
        // A PRIORITY frame of the wrong length: a stream error.
        let e = response_error(&[], |peer, stream| {
            let mut out = Vec::new();
            frame::write_frame(&mut out, frame::PRIORITY, 0, stream, &[0, 0, 0, 0]);
            peer.send(&out);
            peer.ok_headers(stream);
        });
        protocol(&e, frame::FRAME_SIZE_ERROR, "PRIORITY frame of 4 bytes");
        // Two :status pseudo-headers; a :status that is not three digits.
        let e = response_error(&[], |peer, stream| {
            peer.headers(stream, &[0x88, 0x88], None, false)
        });
        protocol(&e, frame::PROTOCOL_ERROR, "two :status");
        let e = response_error(&[], |peer, stream| {
            let mut block = Vec::new();
            hpack::encode_literal(&mut block, ":status", b"+20");
            peer.headers(stream, &block, None, false);
        });
        protocol(&e, frame::PROTOCOL_ERROR, "three digits");
        // Endless empty CONTINUATION frames.
        let e = response_error(&[], |peer, stream| {
            let mut out = Vec::new();
            frame::write_frame(&mut out, frame::HEADERS, 0, stream, &[0x88]);
            for _ in 0..1000 {
                frame::write_frame(&mut out, frame::CONTINUATION, 0, stream, &[]);
            }
            let _ = peer.socket.write_all(&out);
        });
        protocol(&e, 0xb, "CONTINUATION frames");
    }

    /// Frames of nothing but padding are never read by anyone: their
    /// credit must still go back, or the server stalls.
    #[test]
    fn padding_only_frames_give_their_credit_back() {
        let server = ScriptedServer::start(|peer| {
            peer.handshake(&[]);
            let request = peer.read_request();
            peer.ok_headers(request.stream);
            let mut padding = vec![255u8];
            padding.extend_from_slice(&[0u8; 255]);
            let mut out = Vec::new();
            for _ in 0..(STREAM_WINDOW as usize / 2 / padding.len()) {
                frame::write_frame(
                    &mut out,
                    frame::DATA,
                    frame::PADDED,
                    request.stream,
                    &padding,
                );
            }
            peer.send(&out);
            // The client gives the stream's credit back before any data.
            loop {
                let f = peer.read_frame();
                if f.kind == frame::WINDOW_UPDATE && f.stream == request.stream {
                    break;
                }
            }
            peer.data(request.stream, b"hello", true);
        });
        let connection = Connection::connect(&target(&server.url)).unwrap();
        let mut stream = connection.request("GET", "/", &[], b"").unwrap();
        stream.response().unwrap();
        assert_eq!(
            stream.read(Duration::from_secs(5)).unwrap(),
            BodyRead::Data(b"hello".to_vec())
        );
        server.finish();
    }

    /// A write that fails (here: the socket's write side shut) ends the
    /// connection at once: a lost WINDOW_UPDATE would stall the server.
    #[test]
    fn a_failed_write_closes_the_connection() {
        let server = ScriptedServer::start(|peer| {
            peer.handshake(&[]);
            let request = peer.read_request();
            peer.ok_headers(request.stream);
            // Half the stream window: the client owes a WINDOW_UPDATE.
            let _ = std::io::Write::write_all(&mut peer.socket, &{
                let mut out = Vec::new();
                for _ in 0..(STREAM_WINDOW as usize / 2 / 16_384) {
                    frame::write_frame(&mut out, frame::DATA, 0, request.stream, &[0u8; 16_384]);
                }
                out
            });
            std::thread::sleep(Duration::from_secs(6));
        });
        let connection = Connection::connect(&target(&server.url)).unwrap();
        let mut stream = connection.request("GET", "/", &[], b"").unwrap();
        stream.response().unwrap();
        connection
            .inner
            .transport
            .socket()
            .shutdown(Shutdown::Write)
            .unwrap();
        let mut received = 0;
        let err = loop {
            match stream.read(Duration::from_secs(5)) {
                Ok(BodyRead::Data(b)) => received += b.len(),
                Ok(other) => panic!("{other:?} after {received} bytes"),
                Err(e) => break e,
            }
        };
        assert!(
            err.to_string().contains("writing to the connection failed"),
            "{err}"
        );
        assert!(received < STREAM_WINDOW as usize / 2, "{received}");
        // The connection is over: nothing more is sent on it.
        let again = connection.request("GET", "/", &[], b"").err().unwrap();
        assert!(
            again
                .to_string()
                .contains("writing to the connection failed"),
            "{again}"
        );
    }

    #[test]
    fn credentials_are_never_indexed() {
        let block = request_block(
            "POST",
            "https",
            "h",
            "/",
            &[
                ("authorization", "AWS4-HMAC-SHA256 Credential=x"),
                ("x-amz-security-token", "token"),
                ("x-amz-date", "20260101T000000Z"),
            ],
        );
        let at = |name: &str| {
            block
                .windows(name.len())
                .position(|w| w == name.as_bytes())
                .unwrap()
        };
        // The representation byte, then the name's length, then the name.
        assert_eq!(block[at("authorization") - 2], 0x10);
        assert_eq!(block[at("x-amz-security-token") - 2], 0x10);
        assert_eq!(block[at("x-amz-date") - 2], 0x00);
        let fields = hpack::Decoder::new(4096, 1 << 16).decode(&block).unwrap();
        assert_eq!(fields.len(), 7);
        assert_eq!(
            fields[4],
            (
                "authorization".to_owned(),
                b"AWS4-HMAC-SHA256 Credential=x".to_vec()
            )
        );
    }
}
