//! A minimal HTTP/1.1 client for the JSON calls: one `POST /` at a time on
//! a kept-alive connection, the reply body read from the socket straight
//! into the caller's buffer. (ureq copies every body byte out of its own
//! buffer and checks its log level every 16 bytes: an eighth of a small
//! GetRecords loop.)
//!
//! Plain TCP or TLS (rustls, ALPN `http/1.1`). Bodies are framed by
//! Content-Length, chunked, or read to the connection's close. Idle
//! connections wait in a small pool for the next request.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::aws::client::lock;
use crate::aws::socket;

/// How many idle connections are kept: a few threads share a client.
const MAX_IDLE: usize = 4;
/// The buffer a reply's head (and the start of its body) is read into.
const HEAD_BUFFER: usize = 16 * 1024;
/// The largest reply head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The `User-Agent` of every request.
pub(crate) const USER_AGENT: &str = concat!("kinesis-consumer/", env!("CARGO_PKG_VERSION"));

/// Where requests go and how long they may wait.
#[derive(Clone)]
pub(crate) struct Target {
    /// The host as a URL writes it (an IPv6 address in brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `Host` header: what the request is signed with.
    pub(crate) host_header: String,
    /// Set for `https`: the TLS settings, their ALPN protocols already set.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) connect_timeout: Duration,
    /// How long each socket read or write may wait.
    pub(crate) read_timeout: Duration,
    /// The largest reply body accepted.
    pub(crate) max_body: u64,
}

/// A reply's status and headers.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Content-Length`, when there is one and it is a number.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.parse().ok()
    }

    /// True when a header `name` holds `token` in its comma-separated list.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// How the body ends (RFC 9112 section 6.3).
    fn framing(&self) -> io::Result<Framing> {
        if matches!(self.status, 204 | 304) {
            return Ok(Framing::Length(0));
        }
        if let Some(codings) = self.header("transfer-encoding") {
            let last = codings.rsplit(',').next().unwrap_or_default().trim();
            return Ok(match last.eq_ignore_ascii_case("chunked") {
                true => Framing::Chunked,
                false => Framing::UntilClose,
            });
        }
        let mut lengths = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<u64>());
        match lengths.next() {
            None => Ok(Framing::UntilClose),
            Some(Ok(first)) if lengths.all(|l| l.is_ok_and(|l| l == first)) => {
                Ok(Framing::Length(first))
            }
            Some(_) => Err(invalid("the reply has an invalid Content-Length")),
        }
    }
}

/// How a reply body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// An HTTP/1.1 client for one target, its idle connections pooled.
pub(crate) struct Http1 {
    target: Target,
    idle: Mutex<Vec<Connection>>,
}

impl Http1 {
    pub(crate) fn new(target: Target) -> Http1 {
        Http1 {
            target,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `POST /` with `headers` (to which `host`, `content-length` and
    /// `user-agent` are added) and `body`, reads the reply's head, asks
    /// `admit` whether to read its body, and reads the body into `buffer`
    /// from its start (`buffer` grows, zeroed, only past what it holds).
    /// The head and the body's length, no length when `admit` said no (the
    /// connection is then closed: its unread body cannot be skipped).
    ///
    /// A request on a pooled connection that fails before any byte of the
    /// reply came (the server closed the idle connection) is sent again,
    /// once, on a new connection.
    pub(crate) fn post(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        admit: &mut dyn FnMut(&Head) -> bool,
        buffer: &mut Vec<u8>,
    ) -> io::Result<(Head, Option<usize>)> {
        let request = self.request(headers, body);
        let pooled = lock(&self.idle).pop();
        let reused = pooled.is_some();
        let mut connection = match pooled {
            Some(c) => c,
            None => self.open()?,
        };
        let head = match connection.exchange(&request) {
            Ok(head) => head,
            Err(Failure::Unanswered(e)) if reused => {
                log::debug!("an idle connection was closed ({e}); sending again on a new one");
                connection = self.open()?;
                connection.exchange(&request).map_err(Failure::into_io)?
            }
            Err(failure) => return Err(failure.into_io()),
        };
        let framing = head.framing()?;
        if let Framing::Length(length) = framing {
            if length > self.target.max_body {
                return Err(too_large(self.target.max_body));
            }
        }
        if !admit(&head) {
            return Ok((head, None));
        }
        let len = connection.read_body(framing, buffer, self.target.max_body)?;
        let reusable = framing != Framing::UntilClose
            && !head.has_token("connection", "close")
            && connection.is_drained();
        if reusable {
            let mut idle = lock(&self.idle);
            if idle.len() < MAX_IDLE {
                idle.push(connection);
            }
        }
        Ok((head, Some(len)))
    }

    /// The request's bytes: head and body in one buffer, one write.
    fn request(&self, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
        let mut head = format!(
            "POST / HTTP/1.1\r\nhost: {}\r\nuser-agent: {USER_AGENT}\r\ncontent-length: {}\r\n",
            self.target.host_header,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        request
    }

    /// A new connection to the target.
    fn open(&self) -> io::Result<Connection> {
        let target = &self.target;
        let addresses = socket::resolve(&target.host, target.port)?;
        let tcp = socket::connect(&addresses, target.connect_timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(target.read_timeout))?;
        tcp.set_write_timeout(Some(target.read_timeout))?;
        let stream = match &target.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let mut session = socket::tls_session(config.clone(), &target.host)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                socket::handshake(&mut session, &tcp)?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
            }
        };
        Ok(Connection {
            stream,
            incoming: vec![0; HEAD_BUFFER],
            start: 0,
            end: 0,
        })
    }
}

/// A failed exchange: whether the reply had begun.
enum Failure {
    /// Nothing of the reply came: the request could not be written, or
    /// the connection closed (or was reset) before the first byte.
    Unanswered(io::Error),
    /// Anything else.
    Failed(io::Error),
}

impl Failure {
    fn into_io(self) -> io::Error {
        match self {
            Failure::Unanswered(e) | Failure::Failed(e) => e,
        }
    }
}

/// The socket, plain or in TLS.
enum Stream {
    Plain(TcpStream),
    // Boxed: a TLS session is a kilobyte, a socket a few bytes.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One connection and the bytes read from it not yet used: between
/// `start` and `end` of `incoming`.
struct Connection {
    stream: Stream,
    incoming: Vec<u8>,
    start: usize,
    end: usize,
}

impl Connection {
    /// Writes `request` and reads the reply's head (1xx replies skipped).
    fn exchange(&mut self, request: &[u8]) -> Result<Head, Failure> {
        self.start = 0;
        self.end = 0;
        let written = self
            .stream
            .write_all(request)
            .and_then(|()| self.stream.flush());
        written.map_err(Failure::Unanswered)?;
        let mut first = true;
        loop {
            let head = self.read_head(&mut first)?;
            if !(100..200).contains(&head.status) {
                return Ok(head);
            }
        }
    }

    /// Reads one head; `first` is true until the reply's first byte came.
    fn read_head(&mut self, first: &mut bool) -> Result<Head, Failure> {
        // How far the received bytes were searched, from `start`.
        let mut scanned = 0;
        loop {
            let received = &self.incoming[self.start..self.end];
            if let Some(at) = find_head_end(received, scanned) {
                let head = parse_head(&received[..at]).map_err(Failure::Failed)?;
                self.start += at;
                return Ok(head);
            }
            scanned = received.len().saturating_sub(3);
            if self.end - self.start >= MAX_HEAD {
                return Err(Failure::Failed(invalid(
                    "the reply's headers are larger than 64 KiB",
                )));
            }
            self.make_room();
            let read = self.stream.read(&mut self.incoming[self.end..]);
            match read {
                Ok(0) if *first => {
                    return Err(Failure::Unanswered(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed before a reply",
                    )));
                }
                Ok(0) => {
                    return Err(Failure::Failed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed in the reply's headers",
                    )));
                }
                Ok(n) => {
                    self.end += n;
                    *first = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if *first && is_closed(&e) => return Err(Failure::Unanswered(e)),
                Err(e) => return Err(Failure::Failed(e)),
            }
        }
    }

    /// Room to read into at `end`: what is unused moves to the front, and
    /// the buffer doubles when it is full of it.
    fn make_room(&mut self) {
        if self.end < self.incoming.len() {
            return;
        }
        if self.start > 0 {
            self.incoming.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else {
            self.incoming.resize(self.incoming.len() * 2, 0);
        }
    }

    /// Reads more into `incoming`; an error at the connection's end.
    fn fill(&mut self) -> io::Result<()> {
        self.make_room();
        loop {
            match self.stream.read(&mut self.incoming[self.end..]) {
                Ok(0) => return Err(cut("the connection closed in a chunked body")),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills `out` with the bytes that follow: those already read first,
    /// then straight from the socket.
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let have = (self.end - self.start).min(out.len());
        out[..have].copy_from_slice(&self.incoming[self.start..self.start + have]);
        self.start += have;
        let mut filled = have;
        while filled < out.len() {
            match self.stream.read(&mut out[filled..]) {
                Ok(0) => {
                    return Err(cut(&format!(
                        "the connection closed {} bytes before the end of the reply body",
                        out.len() - filled
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next line (without its CRLF) as a range of `incoming`.
    fn read_line(&mut self) -> io::Result<std::ops::Range<usize>> {
        loop {
            let received = &self.incoming[self.start..self.end];
            if let Some(at) = received.windows(2).position(|w| w == b"\r\n") {
                let line = self.start..self.start + at;
                self.start += at + 2;
                return Ok(line);
            }
            if self.end - self.start >= HEAD_BUFFER {
                return Err(invalid("a chunked body has a line longer than 16 KiB"));
            }
            self.fill()?;
        }
    }

    /// Reads the body into `buffer` from its start; its length.
    fn read_body(&mut self, framing: Framing, buffer: &mut Vec<u8>, max: u64) -> io::Result<usize> {
        match framing {
            Framing::Length(length) => {
                let length = length as usize;
                if buffer.len() < length {
                    buffer.resize(length, 0);
                }
                self.read_exact(&mut buffer[..length])?;
                Ok(length)
            }
            Framing::Chunked => self.read_chunked(buffer, max),
            Framing::UntilClose => self.read_to_close(buffer, max),
        }
    }

    /// Decodes a chunked body into `buffer`; trailers are skipped.
    fn read_chunked(&mut self, buffer: &mut Vec<u8>, max: u64) -> io::Result<usize> {
        let mut len = 0;
        loop {
            let line = self.read_line()?;
            let size = chunk_size(&self.incoming[line])?;
            if size == 0 {
                while !self.read_line()?.is_empty() {}
                return Ok(len);
            }
            if len as u64 + size > max {
                return Err(too_large(max));
            }
            let end = len + size as usize;
            if buffer.len() < end {
                buffer.resize(end, 0);
            }
            self.read_exact(&mut buffer[len..end])?;
            len = end;
            if !self.read_line()?.is_empty() {
                return Err(invalid("a chunk of the reply body is longer than it said"));
            }
        }
    }

    /// Reads the body to the connection's end.
    fn read_to_close(&mut self, buffer: &mut Vec<u8>, max: u64) -> io::Result<usize> {
        let mut len = self.end - self.start;
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        buffer[..len].copy_from_slice(&self.incoming[self.start..self.end]);
        self.start = self.end;
        loop {
            if len as u64 > max {
                return Err(too_large(max));
            }
            if len == buffer.len() {
                buffer.resize(buffer.len().max(4096) * 2, 0);
            }
            match self.stream.read(&mut buffer[len..]) {
                Ok(0) => return Ok(len),
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// True when nothing was read past the reply (a server that sends
    /// more than it said cannot be trusted with the next request).
    fn is_drained(&self) -> bool {
        self.start == self.end
    }
}

/// Where the head of `received` ends (after its blank line), searching
/// from `from`.
fn find_head_end(received: &[u8], from: usize) -> Option<usize> {
    received[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// The status and headers of a head (status line, header lines, blank line).
fn parse_head(bytes: &[u8]) -> io::Result<Head> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or_else(|| {
            let shown: String = status_line.chars().take(60).collect();
            invalid(&format!("the reply is not HTTP/1.1 (it starts {shown:?})"))
        })?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("the reply has a header line without a colon"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let head = Head { status, headers };
    // HTTP/1.0 closes after each reply unless it says otherwise.
    if status_line.starts_with("HTTP/1.0") && !head.has_token("connection", "keep-alive") {
        let mut head = head;
        head.headers.push(("connection".into(), "close".into()));
        return Ok(head);
    }
    Ok(head)
}

/// The size a chunk's line gives (hex; extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let text = String::from_utf8_lossy(line);
    let digits = text.split(';').next().unwrap_or_default().trim();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("a chunk of the reply body has an invalid size"));
    }
    u64::from_str_radix(digits, 16)
        .map_err(|_| invalid("a chunk of the reply body has an invalid size"))
}

/// True for the errors of a connection the server closed.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

fn cut(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, message.to_owned())
}

fn too_large(max: u64) -> io::Error {
    invalid(&format!(
        "the reply body is larger than the {} MiB allowed",
        max >> 20
    ))
}

#[cfg(test)]
mod tests;
