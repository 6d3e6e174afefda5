//! The one small HTTP/1.1 test-support server, on 127.0.0.1: an HTTP
//! message reader, and a fake server that records requests and answers
//! each on its own thread with `Connection: close`, as a handler says.
//!
//! Unit tests use it as `crate::aws::test_server`; the integration tests
//! compile this same file into `tests/common` (`#[path]`), and the
//! fault-injecting proxy there reads messages with [`read_message`]. So it
//! uses only std, and each side uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest body read.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;
/// How long a socket read or write may wait.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP message: start line, headers (as sent), body.
pub(crate) struct Message {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Serializes with a Content-Length of `declared_len` for `body` and
    /// `Connection: close`.
    pub(crate) fn to_bytes(&self, body: &[u8], declared_len: usize) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (n, v) in &self.headers {
            if ["content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|h| n.eq_ignore_ascii_case(h))
            {
                continue;
            }
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {declared_len}\r\nConnection: close\r\n\r\n"
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads one request (`is_response` false) or reply: a Content-Length or
/// chunked body, or for a reply without either, everything to the end.
pub(crate) fn read_message(
    reader: &mut impl BufRead,
    is_response: bool,
) -> std::io::Result<Message> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut start = String::new();
    if reader.read_line(&mut start)? == 0 {
        return Err(bad("connection closed before a message"));
    }
    let start = start.trim_end().to_owned();
    let mut headers = Vec::new();
    for _ in 0..200 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut message = Message {
        start,
        headers,
        body: Vec::new(),
    };
    let chunked = message
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                let mut trailer = String::new();
                while reader.read_line(&mut trailer)? > 2 {
                    trailer.clear();
                }
                break;
            }
            if message.body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            chunk.truncate(size);
            message.body.extend(chunk);
        }
    } else if let Some(len) = message.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        message.body = vec![0; len];
        reader.read_exact(&mut message.body)?;
    } else if is_response {
        reader
            .take(MAX_BODY as u64)
            .read_to_end(&mut message.body)?;
    }
    Ok(message)
}

/// One request as a fake server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    /// The request a message holds (its body as text, lossily).
    pub(crate) fn from_message(message: &Message) -> Request {
        let mut parts = message.start.split_whitespace();
        Request {
            method: parts.next().unwrap_or_default().to_owned(),
            path: parts.next().unwrap_or_default().to_owned(),
            headers: message.headers.clone(),
            body: String::from_utf8_lossy(&message.body).into_owned(),
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The operation named by `X-Amz-Target` (`GetRecords` for
    /// `Kinesis_20131202.GetRecords`).
    pub(crate) fn operation(&self) -> &str {
        let target = self.header("x-amz-target").unwrap_or_default();
        target.split_once('.').map_or(target, |(_, op)| op)
    }

    /// The access key id the request says it is signed with.
    pub(crate) fn access_key(&self) -> Option<String> {
        let auth = self.header("authorization")?;
        let credential = auth.split("Credential=").nth(1)?;
        Some(credential.split('/').next()?.to_string())
    }

    /// The body as form fields (Query-protocol requests).
    pub(crate) fn form(&self) -> HashMap<String, String> {
        self.body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match s.get(i + 1..i + 3).filter(|_| bytes[i] == b'%') {
            Some(hex) => {
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// The running server; it keeps accepting for the rest of the test process.
pub(crate) struct FakeServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    /// Starts a server that answers each request with `handler`'s status
    /// and body (the handler may sleep to play a slow service).
    pub(crate) fn start(
        handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, handler) = (seen.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, &seen, &*handler));
            }
        });
        FakeServer { url, requests }
    }

    /// Every request so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub(crate) fn hits(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Request>>, handler: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let request = Request::from_message(&read_message(&mut reader, false)?);
    seen.lock().unwrap().push(request.clone());
    let (status, body) = handler(&request);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\
         x-amzn-RequestId: req-1\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
