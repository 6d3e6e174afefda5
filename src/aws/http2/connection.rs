//! One HTTP/2 client connection: the preface and SETTINGS exchange, a
//! reader thread that handles every frame the server sends, requests as
//! streams, and flow control in both directions.
//!
//! Flow control never lets one slow stream stall the others: the
//! connection-level window is given back as soon as DATA arrives (each
//! stream's own window already bounds what can pile up), while a stream's
//! window is given back only as its reader takes the data out.
//!
//! Locks: `writer` (the order of frames on the wire, and stream ids opened
//! in increasing order) may be taken before `state`, never after it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::frame::{self, Frame, ReadError};
use super::hpack;
use crate::error::TransportKind;

/// Each stream's receive window: what the server may send before we take
/// it out. Two seconds of a shard's fan-out rate (2 MiB/s).
const STREAM_WINDOW: u32 = 4 << 20;
/// The connection's receive window; given back as data arrives.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// The most header bytes (names, values, 32 per field) one block may hold.
const MAX_HEADER_LIST: usize = 64 << 10;
/// The most bytes of HPACK one header block (HEADERS + CONTINUATION) may take.
const MAX_HEADER_BLOCK: usize = 256 << 10;
/// The largest frame we accept: the default, which we never raise.
const OUR_MAX_FRAME: u32 = frame::DEFAULT_MAX_FRAME_SIZE;

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
    /// The TLS handshake or a TLS record failed.
    Tls(String),
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

    fn io(e: &io::Error) -> Http2Error {
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

/// The socket, plain or wrapped in TLS.
enum Transport {
    Plain(TcpStream),
    Tls {
        // Boxed: a TLS session is a kilobyte, a socket a few bytes.
        session: Box<Mutex<rustls::ClientConnection>>,
        socket: TcpStream,
    },
}

impl Transport {
    fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls { socket, .. } => socket,
        }
    }

    /// Writes all of `bytes` (the caller holds the writer lock).
    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(s) => (&*s).write_all(bytes),
            Transport::Tls { session, socket } => {
                let mut session = lock(session);
                session.writer().write_all(bytes)?;
                while session.wants_write() {
                    session.write_tls(&mut &*socket)?;
                }
                Ok(())
            }
        }
    }

    /// Reads decrypted bytes (only the reader thread calls this). TLS
    /// records are read off the socket without holding the session lock,
    /// so writers are never blocked by a read waiting for the server.
    fn read(&self, pending: &mut Vec<u8>, buf: &mut [u8]) -> io::Result<usize> {
        let (session, socket) = match self {
            Transport::Plain(s) => return (&*s).read(buf),
            Transport::Tls { session, socket } => (session, socket),
        };
        loop {
            {
                let mut s = lock(session);
                if !pending.is_empty() {
                    let fed = s.read_tls(&mut &pending[..])?;
                    pending.drain(..fed);
                    s.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    while s.wants_write() {
                        s.write_tls(&mut &*socket)?;
                    }
                }
                match s.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if !pending.is_empty() {
                    continue;
                }
            }
            let mut raw = [0u8; 16 * 1024];
            let n = (&*socket).read(&mut raw)?;
            if n == 0 {
                // Tell rustls the stream ended: a close_notify reads as 0,
                // a cut connection as UnexpectedEof.
                let mut s = lock(session);
                s.read_tls(&mut &[][..])?;
                s.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                return match s.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
            pending.extend_from_slice(&raw[..n]);
        }
    }
}

/// `Read` over the transport, for the reader thread's buffer.
struct TransportReader {
    inner: Arc<Inner>,
    pending: Vec<u8>,
}

impl Read for TransportReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.transport.read(&mut self.pending, buf)
    }
}

/// The server's settings that matter to a client.
struct PeerSettings {
    initial_window: u32,
    max_frame: u32,
    max_streams: u32,
}

struct StreamState {
    response: Option<Response>,
    /// The response head arrived (later HEADERS are trailers).
    headers_done: bool,
    data: VecDeque<Vec<u8>>,
    /// END_STREAM arrived.
    end: bool,
    error: Option<Http2Error>,
    /// What we may still send (the server's window for this stream).
    send_window: i64,
    /// What the server may still send.
    recv_window: i64,
    /// Bytes taken out (or padding) not yet given back with WINDOW_UPDATE.
    unacked: u32,
}

struct State {
    streams: HashMap<u32, StreamState>,
    next_id: u32,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    peer: PeerSettings,
    settings_received: bool,
    goaway: Option<Http2Error>,
    /// Set once the connection is over; every stream without an error of
    /// its own reports this.
    closed: Option<Http2Error>,
}

struct Inner {
    transport: Transport,
    writer: Mutex<()>,
    state: Mutex<State>,
    changed: Condvar,
    authority: String,
    scheme: &'static str,
    read_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Writes frames (the writer lock keeps them whole and in order).
    fn send(&self, bytes: &[u8]) -> Result<(), Http2Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        let _writer = lock(&self.writer);
        self.transport
            .write_all(bytes)
            .map_err(|e| Http2Error::io(&e))
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
        let state = State {
            streams: HashMap::new(),
            next_id: 1,
            send_window: 65_535,
            recv_window: i64::from(CONNECTION_WINDOW),
            recv_unacked: 0,
            peer: PeerSettings {
                initial_window: 65_535,
                max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
                max_streams: u32::MAX,
            },
            settings_received: false,
            goaway: None,
            closed: None,
        };
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
        let deadline = Instant::now() + target.read_timeout;
        let state = lock(&connection.inner.state);
        let (state, ready) = connection.inner.wait_until(state, deadline, |s| {
            s.settings_received || s.closed.is_some()
        });
        if let Some(e) = &state.closed {
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
        let id;
        {
            // Ids must reach the wire in increasing order: allocate and
            // send HEADERS under the writer lock.
            let _writer = lock(&inner.writer);
            let mut state = lock(&inner.state);
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
            id = state.next_id;
            if id > i32::MAX as u32 {
                return Err(Http2Error::Refused(
                    "this HTTP/2 connection has used all its stream ids".into(),
                ));
            }
            state.next_id += 2;
            let stream = StreamState {
                response: None,
                headers_done: false,
                data: VecDeque::new(),
                end: false,
                error: None,
                send_window: i64::from(state.peer.initial_window),
                recv_window: i64::from(STREAM_WINDOW),
                unacked: 0,
            };
            state.streams.insert(id, stream);
            let max_frame = state.peer.max_frame as usize;
            drop(state);
            let mut block = Vec::new();
            hpack::encode_literal(&mut block, ":method", method.as_bytes());
            hpack::encode_literal(&mut block, ":scheme", inner.scheme.as_bytes());
            hpack::encode_literal(&mut block, ":authority", inner.authority.as_bytes());
            hpack::encode_literal(&mut block, ":path", path.as_bytes());
            for (name, value) in headers {
                hpack::encode_literal(&mut block, name, value.as_bytes());
            }
            let mut out = Vec::with_capacity(block.len() + 64);
            let mut chunks = block.chunks(max_frame).peekable();
            let mut first = true;
            while let Some(chunk) = chunks.next() {
                let last = chunks.peek().is_none();
                let kind = if first {
                    frame::HEADERS
                } else {
                    frame::CONTINUATION
                };
                let mut flags = if last { frame::END_HEADERS } else { 0 };
                if first && body.is_empty() {
                    flags |= frame::END_STREAM;
                }
                frame::write_frame(&mut out, kind, flags, id, chunk);
                first = false;
            }
            inner
                .transport
                .write_all(&out)
                .map_err(|e| Http2Error::io(&e))?;
        }
        let stream = ResponseBody {
            inner: self.inner.clone(),
            id,
        };
        stream.send_body(body)?;
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
    /// Sends the request body as DATA frames within the server's windows.
    fn send_body(&self, mut body: &[u8]) -> Result<(), Http2Error> {
        let inner = &self.inner;
        while !body.is_empty() {
            let deadline = Instant::now() + inner.read_timeout;
            let state = lock(&inner.state);
            let id = self.id;
            let (mut state, ready) = inner.wait_until(state, deadline, |s| {
                let stream_window = s.streams.get(&id).map_or(1, |st| st.send_window);
                s.closed.is_some()
                    || s.streams.get(&id).is_none_or(|st| st.error.is_some())
                    || (s.send_window > 0 && stream_window > 0)
            });
            if let Some(e) = stream_error(&state, id) {
                return Err(e);
            }
            if !ready {
                return Err(Http2Error::Timeout(format!(
                    "room in the server's flow-control window to send the request body ({:?})",
                    inner.read_timeout
                )));
            }
            let stream_window = state.streams.get(&id).map_or(0, |s| s.send_window);
            let n = (body.len() as i64)
                .min(state.send_window)
                .min(stream_window)
                .min(i64::from(state.peer.max_frame)) as usize;
            state.send_window -= n as i64;
            if let Some(s) = state.streams.get_mut(&id) {
                s.send_window -= n as i64;
            }
            drop(state);
            let (chunk, rest) = body.split_at(n);
            body = rest;
            let flags = if body.is_empty() {
                frame::END_STREAM
            } else {
                0
            };
            let mut out = Vec::with_capacity(chunk.len() + 9);
            frame::write_frame(&mut out, frame::DATA, flags, id, chunk);
            inner.send(&out)?;
        }
        Ok(())
    }

    /// Waits for the response's status and headers (1xx skipped), for up
    /// to the read timeout.
    pub(crate) fn response(&mut self) -> Result<Response, Http2Error> {
        let inner = &self.inner;
        let id = self.id;
        let deadline = Instant::now() + inner.read_timeout;
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
        let deadline = Instant::now() + wait;
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
                stream.recv_window += i64::from(stream.unacked);
                stream.unacked = 0;
            }
            drop(state);
            // A failed write shows up as the connection's error on the next read.
            let _ = inner.send(&out);
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

/// Resolves and connects, trying each address in turn.
fn open_socket(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Http2Error> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addresses: Vec<_> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| Http2Error::HostNotFound(format!("{host}: {e}")))?
        .collect();
    let mut last = Http2Error::HostNotFound(format!("{host} has no address"));
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(socket) => return Ok(socket),
            Err(e) => last = Http2Error::io(&e),
        }
    }
    Err(last)
}

/// The TLS handshake, offering only `h2`; an error unless the server
/// chose it.
fn tls_handshake(
    socket: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    target: &Target,
) -> Result<Transport, Http2Error> {
    let mut config = (**config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let bare = target
        .host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&target.host);
    let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
        .map_err(|e| Http2Error::Tls(format!("{bare:?} is not a valid server name: {e}")))?;
    let mut session = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| Http2Error::Tls(e.to_string()))?;
    let io = |e: io::Error| Http2Error::io(&e);
    socket
        .set_read_timeout(Some(target.connect_timeout.max(target.read_timeout)))
        .map_err(io)?;
    while session.is_handshaking() {
        session.complete_io(&mut &socket).map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => Http2Error::Tls(tls.to_string()),
                None => Http2Error::io(&e),
            }
        })?;
    }
    if session.alpn_protocol() != Some(b"h2") {
        return Err(Http2Error::Refused(
            "the TLS server did not agree to HTTP/2 (ALPN h2)".into(),
        ));
    }
    // The reader thread blocks until data or the socket's shutdown.
    socket.set_read_timeout(None).map_err(io)?;
    Ok(Transport::Tls {
        session: Box::new(Mutex::new(session)),
        socket,
    })
}

/// A connection error found while handling a frame: the GOAWAY code to
/// send, and what was wrong.
struct ConnectionError {
    code: u32,
    message: String,
}

fn protocol_error<T>(code: u32, message: impl Into<String>) -> Result<T, ConnectionError> {
    Err(ConnectionError {
        code,
        message: message.into(),
    })
}

/// The reader thread: handles frames until the connection ends, then
/// fails every unfinished stream with the reason.
fn read_frames(inner: Arc<Inner>) {
    let mut reader = BufReader::with_capacity(
        64 * 1024,
        TransportReader {
            inner: inner.clone(),
            pending: Vec::new(),
        },
    );
    let mut handler = FrameHandler {
        inner: &inner,
        decoder: hpack::Decoder::new(4096, MAX_HEADER_LIST),
        continuation: None,
        first: true,
    };
    let error = loop {
        let frame = match frame::read_frame(&mut reader, OUR_MAX_FRAME) {
            Ok(Some(f)) => f,
            Ok(None) => break Http2Error::Closed,
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
                break Http2Error::Tls(e.to_string());
            }
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break Http2Error::Closed;
            }
            Err(ReadError::Io(e)) => break Http2Error::io(&e),
            Err(ReadError::TooLarge { length, max }) => {
                let hint = if handler.first {
                    " (the first bytes from the server are not an HTTP/2 frame: does it speak HTTP/2?)"
                } else {
                    ""
                };
                let message = format!("a frame of {length} bytes, above the {max} allowed{hint}");
                break fail_with_goaway(&inner, frame::FRAME_SIZE_ERROR, message);
            }
        };
        match handler.handle(frame) {
            Ok(reply) => {
                if let Err(e) = inner.send(&reply) {
                    break e;
                }
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

struct FrameHandler<'a> {
    inner: &'a Inner,
    decoder: hpack::Decoder,
    /// A header block still waiting for CONTINUATION: stream, flags, bytes.
    continuation: Option<(u32, u8, Vec<u8>)>,
    /// No frame handled yet (the server's first must be SETTINGS).
    first: bool,
}

impl FrameHandler<'_> {
    /// Handles one frame; the frames to send in reply.
    fn handle(&mut self, f: Frame) -> Result<Vec<u8>, ConnectionError> {
        if std::mem::replace(&mut self.first, false) && f.kind != frame::SETTINGS {
            return protocol_error(
                frame::PROTOCOL_ERROR,
                format!(
                    "the server's first frame is of type {} instead of SETTINGS (does it speak HTTP/2?)",
                    f.kind
                ),
            );
        }
        if let Some((stream, _, _)) = &self.continuation {
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
            frame::DATA => self.data(&f, &mut out)?,
            frame::HEADERS => {
                if f.stream == 0 {
                    return protocol_error(frame::PROTOCOL_ERROR, "HEADERS on stream 0");
                }
                let fragment = frame::strip_padding_and_priority(&f)
                    .map_err(|m| ConnectionError {
                        code: frame::PROTOCOL_ERROR,
                        message: m,
                    })?
                    .to_vec();
                if f.flags & frame::END_HEADERS != 0 {
                    self.header_block(f.stream, f.flags, &fragment)?;
                } else {
                    self.continuation = Some((f.stream, f.flags, fragment));
                }
            }
            frame::CONTINUATION => {
                let Some((stream, flags, mut block)) = self.continuation.take() else {
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
                if f.flags & frame::END_HEADERS != 0 {
                    self.header_block(stream, flags, &block)?;
                } else {
                    self.continuation = Some((stream, flags, block));
                }
            }
            frame::PRIORITY => {}
            frame::RST_STREAM => {
                if f.stream == 0 {
                    return protocol_error(frame::PROTOCOL_ERROR, "RST_STREAM on stream 0");
                }
                let code =
                    frame::parse_u32("RST_STREAM", &f.payload).map_err(|m| ConnectionError {
                        code: frame::FRAME_SIZE_ERROR,
                        message: m,
                    })?;
                let mut state = lock(&self.inner.state);
                if let Some(s) = state.streams.get_mut(&f.stream) {
                    s.error.get_or_insert(Http2Error::Reset { code });
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
                    })?;
                let goaway = Http2Error::GoAway {
                    code,
                    last_stream,
                    debug: String::from_utf8_lossy(&debug).chars().take(200).collect(),
                };
                log::debug!("HTTP/2 server {}: {goaway}", self.inner.authority);
                let mut state = lock(&self.inner.state);
                // Streams above the last one were not processed: fail them now.
                for (id, s) in state.streams.iter_mut() {
                    if *id > last_stream && !s.end {
                        s.error.get_or_insert(goaway.clone());
                    }
                }
                state.goaway = Some(goaway);
            }
            frame::WINDOW_UPDATE => self.window_update(&f, &mut out)?,
            // Unknown frame types are ignored (RFC 9113, section 4.1).
            _ => {}
        }
        self.inner.changed.notify_all();
        Ok(out)
    }

    fn data(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), ConnectionError> {
        if f.stream == 0 {
            return protocol_error(frame::PROTOCOL_ERROR, "DATA on stream 0");
        }
        let data = frame::strip_padding_and_priority(f).map_err(|m| ConnectionError {
            code: frame::PROTOCOL_ERROR,
            message: m,
        })?;
        let length = f.payload.len() as u32;
        let mut state = lock(&self.inner.state);
        state.recv_window -= i64::from(length);
        if state.recv_window < 0 {
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
            state.recv_window += i64::from(unacked);
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
        stream.recv_window -= i64::from(length);
        if stream.recv_window < 0 {
            stream.error = Some(Http2Error::Protocol {
                code: frame::FLOW_CONTROL_ERROR,
                message: format!("DATA beyond the flow-control window of stream {id}"),
            });
            frame::write_rst_stream(out, id, frame::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        // Padding is never read by anyone: it is given back with the data.
        stream.unacked += length - data.len() as u32;
        if !data.is_empty() {
            stream.data.push_back(data.to_vec());
        }
        if f.flags & frame::END_STREAM != 0 {
            stream.end = true;
        }
        Ok(())
    }

    fn header_block(&mut self, id: u32, flags: u8, block: &[u8]) -> Result<(), ConnectionError> {
        // Always decode: the dynamic table must follow every block.
        let fields = self.decoder.decode(block).map_err(|e| ConnectionError {
            code: frame::COMPRESSION_ERROR,
            message: e.to_string(),
        })?;
        let mut state = lock(&self.inner.state);
        let Some(stream) = state.streams.get_mut(&id) else {
            return Ok(());
        };
        if !stream.headers_done && !stream.end {
            let status = fields
                .iter()
                .find(|(n, _)| n == ":status")
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
            match status {
                Some(status) if (100..200).contains(&status) => {}
                Some(status) => {
                    stream.headers_done = true;
                    stream.response = Some(Response {
                        status,
                        headers: fields,
                    });
                }
                None => {
                    stream.error = Some(Http2Error::Protocol {
                        code: frame::PROTOCOL_ERROR,
                        message: "a response without a valid :status".into(),
                    });
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
        })?;
        let mut state = lock(&self.inner.state);
        for (id, value) in values {
            match id {
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::MAX_WINDOW {
                        return protocol_error(
                            frame::FLOW_CONTROL_ERROR,
                            format!("SETTINGS_INITIAL_WINDOW_SIZE {value} above 2^31-1"),
                        );
                    }
                    // Open streams' windows move by the difference (6.9.2).
                    let delta = i64::from(value) - i64::from(state.peer.initial_window);
                    for s in state.streams.values_mut() {
                        s.send_window += delta;
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
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
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
        Ok(())
    }

    fn window_update(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), ConnectionError> {
        let increment =
            frame::parse_u32("WINDOW_UPDATE", &f.payload).map_err(|m| ConnectionError {
                code: frame::FRAME_SIZE_ERROR,
                message: m,
            })? & 0x7FFF_FFFF;
        let mut state = lock(&self.inner.state);
        if f.stream == 0 {
            if increment == 0 {
                return protocol_error(frame::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0");
            }
            state.send_window += i64::from(increment);
            if state.send_window > frame::MAX_WINDOW {
                return protocol_error(
                    frame::FLOW_CONTROL_ERROR,
                    "the connection's window grew above 2^31-1",
                );
            }
            return Ok(());
        }
        let Some(stream) = state.streams.get_mut(&f.stream) else {
            return Ok(());
        };
        stream.send_window += i64::from(increment);
        if increment == 0 || stream.send_window > frame::MAX_WINDOW {
            let code = if increment == 0 {
                frame::PROTOCOL_ERROR
            } else {
                frame::FLOW_CONTROL_ERROR
            };
            stream.error.get_or_insert(Http2Error::Protocol {
                code,
                message: format!("a bad WINDOW_UPDATE of {increment} on stream {}", f.stream),
            });
            frame::write_rst_stream(out, f.stream, code);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Condvar, Mutex};

    use super::*;
    use crate::aws::http2::test_server::{ScriptedServer, indexed_huffman};

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
    fn large_header_blocks_use_continuation_and_oversized_frames_end_the_connection() {
        let big = "v".repeat(40_000);
        let expected = big.clone();
        let server = ScriptedServer::start(move |peer| {
            peer.handshake(&[]);
            let request = peer.read_request();
            assert_eq!(request.header("x-big"), Some(expected.as_str()));
            peer.ok_headers(request.stream);
            // A DATA frame above our SETTINGS_MAX_FRAME_SIZE (16384).
            let mut out = Vec::new();
            frame::write_frame(&mut out, frame::DATA, 0, request.stream, &[0u8; 20_000]);
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
        assert!(err.to_string().contains("20000 bytes"), "{err}");
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
}
