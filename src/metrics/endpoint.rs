//! A small HTTP/1.1 endpoint for a consumer's metrics and status, on one
//! thread of its own, with std::net only: `/metrics` (Prometheus),
//! `/status` (HTML), `/status.json` and `/healthz`.
//!
//! It never blocks the consumer: it only reads the metrics (short locks,
//! copied out). It bounds what a client can take: at most
//! [`MAX_CONNECTIONS`] open at once (one more is told 503 and closed), a
//! request head of at most [`MAX_REQUEST_BYTES`] (431), no request body
//! (413), and [`REQUEST_TIMEOUT`] to send the head (408). Connections are
//! read without blocking, so a slow client delays no other.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::metrics::{MetricsHandle, prometheus, status_page};

/// Connections served at once; more are answered 503 and closed.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// The largest request head accepted, in bytes; a larger one is answered 431.
pub(crate) const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head; then it is answered 408.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing an answer may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the thread sleeps when nothing happened.
const IDLE_SLEEP: Duration = Duration::from_millis(10);

/// A running metrics endpoint; stops when dropped (or with
/// [`stop`](Self::stop)). Start one with
/// [`MetricsHandle::serve`](crate::MetricsHandle::serve).
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread to end (at most about the
    /// write timeout, 5 s, when an answer is being written).
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Resolves `addr`; a bare port (`9464` or `:9464`) means 127.0.0.1.
fn resolve(addr: &str) -> Result<SocketAddr> {
    let port = addr.strip_prefix(':').unwrap_or(addr);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::config("metrics_addr", format!("{addr:?} is not an address")))
}

/// Binds `addr` and serves `handle` on a thread of its own.
pub(crate) fn serve(handle: MetricsHandle, addr: &str) -> Result<MetricsServer> {
    let addr = resolve(addr)?;
    let bind_error =
        |e: io::Error| Error::config("metrics_addr", format!("cannot listen on {addr}: {e}"));
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("kinesis-metrics-endpoint".into())
            .spawn(move || run(listener, handle, &stop))
            .map_err(|e| {
                Error::Internal(format!("cannot start the metrics endpoint thread: {e}"))
            })?
    };
    log::info!("serving metrics and status on http://{addr}/");
    Ok(MetricsServer {
        addr,
        stop,
        thread: Some(thread),
    })
}

/// How long an answered connection is read and discarded from before it
/// is closed: closing a socket with unread input resets the connection,
/// and the client could lose the answer (a 431 to a huge request).
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// An open connection: its request head still arriving, or answered and
/// draining until the client closes (or [`DRAIN_TIME`] passes).
struct Connection {
    stream: TcpStream,
    head: Vec<u8>,
    since: Instant,
    answered: bool,
}

fn run(listener: TcpListener, handle: MetricsHandle, stop: &AtomicBool) {
    let mut open: Vec<Connection> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    busy = true;
                    if open.len() >= MAX_CONNECTIONS {
                        answer(
                            &stream,
                            &reply(503, "too many connections; try again\n"),
                            false,
                        );
                    } else if stream.set_nonblocking(true).is_ok() {
                        open.push(Connection {
                            stream,
                            head: Vec::new(),
                            since: Instant::now(),
                            answered: false,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("metrics endpoint: accept failed: {e}");
                    break;
                }
            }
        }
        let mut i = 0;
        while i < open.len() {
            let c = &mut open[i];
            let progress = read_some(c);
            let response = match progress {
                _ if c.answered => None,
                Progress::Waiting if c.since.elapsed() >= REQUEST_TIMEOUT => {
                    Some((reply(408, "request timeout\n"), false))
                }
                Progress::Waiting | Progress::Closed => None,
                Progress::TooLarge => {
                    Some((reply(431, "request header fields too large\n"), false))
                }
                Progress::Complete => Some(respond(&handle, &c.head)),
            };
            if let Some((response, head_only)) = response {
                busy = true;
                answer(&c.stream, &response, head_only);
                c.answered = true;
                c.since = Instant::now();
                c.head = Vec::new();
            }
            let done = match progress {
                Progress::Closed => true,
                _ => c.answered && c.since.elapsed() >= DRAIN_TIME,
            };
            if done {
                open.swap_remove(i);
                busy = true;
            } else {
                i += 1;
            }
        }
        if !busy {
            std::thread::sleep(IDLE_SLEEP);
        }
    }
}

enum Progress {
    Waiting,
    Closed,
    TooLarge,
    Complete,
}

/// Reads what the client sent so far, without blocking; once answered,
/// discards it.
fn read_some(c: &mut Connection) -> Progress {
    let mut buf = [0u8; 4096];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return Progress::Closed,
            // Answered: discard, a read at a time (the loop bounds it).
            Ok(_) if c.answered => return Progress::Waiting,
            Ok(n) => {
                c.head.extend_from_slice(&buf[..n]);
                if let Some(end) = find(&c.head, b"\r\n\r\n") {
                    c.head.truncate(end + 4);
                    return Progress::Complete;
                }
                if c.head.len() > MAX_REQUEST_BYTES {
                    return Progress::TooLarge;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Progress::Closed,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An answer: status, content type, body.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn reply(status: u16, body: &str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.to_owned(),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The answer to a complete request head; true for a HEAD request.
fn respond(handle: &MetricsHandle, head: &[u8]) -> (Response, bool) {
    let Ok(text) = std::str::from_utf8(head) else {
        return (reply(400, "bad request: not UTF-8\n"), false);
    };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (reply(400, "bad request: malformed request line\n"), false);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return (reply(400, "bad request: malformed request line\n"), false);
    }
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return (reply(400, "bad request: malformed header\n"), false);
        };
        let has_body = (name.eq_ignore_ascii_case("content-length") && value.trim() != "0")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if has_body {
            return (reply(413, "request bodies are not accepted\n"), false);
        }
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (reply(405, "only GET and HEAD\n"), false);
    }
    let path = target.split('?').next().unwrap_or(target);
    let response = match path {
        "/metrics" => Response {
            status: 200,
            content_type: prometheus::CONTENT_TYPE,
            body: handle.prometheus(),
        },
        "/status" | "/" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: status_page::render(&handle.status()),
        },
        "/status.json" => Response {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_string_pretty(&handle.status()).unwrap_or_default() + "\n",
        },
        "/healthz" => {
            let status = handle.status();
            if status.healthy {
                reply(200, "ok\n")
            } else if status.running {
                reply(503, "no current heartbeat in the lease table\n")
            } else {
                reply(503, "the consumer is not running\n")
            }
        }
        _ => reply(
            404,
            "not found; try /metrics, /status, /status.json or /healthz\n",
        ),
    };
    (response, head_only)
}

/// Writes an answer and ends the sending side. The whole answer gets
/// [`WRITE_TIMEOUT`]: a client that reads slowly loses it, and holds the
/// thread no longer than that.
fn answer(stream: &TcpStream, response: &Response, head_only: bool) {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    let body = if head_only { "" } else { &response.body };
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let _ = stream.set_nonblocking(false);
    let _ = write_by(stream, head.as_bytes(), deadline)
        .and_then(|()| write_by(stream, body.as_bytes(), deadline));
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_nonblocking(true);
}

/// Writes all of `bytes` before `deadline`, or fails.
fn write_by(mut stream: &TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> MetricsHandle {
        MetricsHandle {
            metrics: crate::metrics::Metrics::default(),
        }
    }

    fn status_of(request: &str) -> u16 {
        respond(&handle(), request.as_bytes()).0.status
    }

    #[test]
    fn requests_get_clear_answers() {
        assert_eq!(status_of("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(status_of("GET /status?x=1 HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status_of("GET /status.json HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(
            status_of("GET /healthz HTTP/1.1\r\n\r\n"),
            503,
            "not running"
        );
        assert_eq!(status_of("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status_of("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(
            status_of("GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            413
        );
        assert_eq!(status_of("GET /metrics\r\n\r\n"), 400);
        assert_eq!(status_of("GET metrics HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status_of("GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        let (response, head_only) = respond(&handle(), b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head_only);
        assert_eq!(response.content_type, prometheus::CONTENT_TYPE);
    }

    #[test]
    fn a_client_that_never_reads_is_given_up_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        // Far more than the socket buffers hold: the writes must block.
        let result = write_by(&server_side, &vec![b'x'; 32 << 20], deadline);
        assert!(result.is_err());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn bare_ports_bind_loopback() {
        assert_eq!(resolve("9464").unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(resolve(":0").unwrap(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            resolve("0.0.0.0:80").unwrap(),
            "0.0.0.0:80".parse().unwrap()
        );
        assert!(resolve("not an address").is_err());
    }
}
