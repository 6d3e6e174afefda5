//! The HTTP/1.1 client against a loopback server that serves a set
//! number of connections one after another, as each test scripts them.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;

use super::*;
use crate::aws::client::io_kind;
use crate::aws::test_server::{Message, read_message};
use crate::error::TransportKind;

/// The largest body the tests' client accepts.
const MAX_BODY: u64 = 1 << 20;

/// A server that accepts `connections` connections in turn and hands each
/// (numbered from 0) to `serve`; it returns its listener when done, for
/// [`assert_no_more_connections`].
fn server(
    connections: usize,
    serve: impl Fn(usize, Peer) + Send + 'static,
) -> (Http1, JoinHandle<TcpListener>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        for n in 0..connections {
            let (socket, _) = listener.accept().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            serve(n, Peer::new(socket));
        }
        listener
    });
    let client = Http1::new(Target {
        host: "127.0.0.1".into(),
        port,
        host_header: format!("127.0.0.1:{port}"),
        tls: None,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        max_body: MAX_BODY,
    });
    (client, thread)
}

/// Fails when a connection waits to be accepted: one the client opened
/// beyond those the server served.
fn assert_no_more_connections(server: JoinHandle<TcpListener>) {
    let listener = server.join().unwrap();
    listener.set_nonblocking(true).unwrap();
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "the client opened a connection more"
    );
}

/// The server's side of one connection.
struct Peer {
    reader: BufReader<TcpStream>,
    socket: TcpStream,
}

impl Peer {
    fn new(socket: TcpStream) -> Peer {
        Peer {
            reader: BufReader::new(socket.try_clone().unwrap()),
            socket,
        }
    }

    fn request(&mut self) -> Message {
        read_message(&mut self.reader, false).unwrap()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).unwrap();
    }

    /// Answers one request with `body`, kept alive.
    fn answer(&mut self, body: &[u8]) {
        self.request();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        self.send(head.as_bytes());
        self.send(body);
    }
}

/// Posts `{}` and reads the whole reply into a new buffer.
fn post(client: &Http1) -> io::Result<(Head, Vec<u8>)> {
    let mut buffer = Vec::new();
    let (head, len) = client.post(&[], b"{}", &mut |_| true, &mut buffer)?;
    buffer.truncate(len.unwrap());
    Ok((head, buffer))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_content_length_body_is_read_whole_into_a_reused_buffer() {
    // Longer than the head buffer: most of it is read straight from the
    // socket.
    let body = pattern(100_000);
    let sent = body.clone();
    let (client, server) = server(1, move |_, mut peer| {
        let request = peer.request();
        assert_eq!(request.start, "POST / HTTP/1.1");
        assert_eq!(request.body, b"{\"a\":1}");
        assert_eq!(request.header("x-amz-target"), Some("T.Op"));
        assert!(request.header("host").unwrap().starts_with("127.0.0.1:"));
        assert_eq!(request.header("user-agent"), Some(USER_AGENT));
        let head = format!(
            "HTTP/1.1 200 OK\r\nx-amzn-RequestId: rid-1\r\nContent-Length: {}\r\n\r\n",
            sent.len()
        );
        peer.send(head.as_bytes());
        peer.send(&sent[..10]);
        std::thread::sleep(Duration::from_millis(20));
        peer.send(&sent[10..]);
    });
    let mut buffer = vec![0xAA; 300_000];
    let mut admitted = Vec::new();
    let headers = [("x-amz-target".to_owned(), "T.Op".to_owned())];
    let (head, len) = client
        .post(
            &headers,
            b"{\"a\":1}",
            &mut |head| {
                admitted.push((head.status, head.content_length()));
                true
            },
            &mut buffer,
        )
        .unwrap();
    assert_eq!(admitted, [(200, Some(100_000))]);
    assert_eq!(head.header("X-AMZN-REQUESTID"), Some("rid-1"));
    assert_eq!(&buffer[..len.unwrap()], &body[..]);
    assert_no_more_connections(server);
}

#[test]
fn a_chunked_body_is_decoded_and_its_connection_reused() {
    let body = pattern(40_000);
    let sent = body.clone();
    let (client, server) = server(1, move |_, mut peer| {
        peer.request();
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        // Chunks of several sizes, one with an extension, cut across writes.
        let mut at = 0;
        for (i, size) in [1, 4096, 30_000, 5903].into_iter().enumerate() {
            let line = match i {
                1 => format!("{size:x};name=value\r\n"),
                _ => format!("{size:X}\r\n"),
            };
            peer.send(line.as_bytes());
            peer.send(&sent[at..at + size / 2]);
            peer.send(&sent[at + size / 2..at + size]);
            peer.send(b"\r\n");
            at += size;
        }
        peer.send(b"0\r\nx-trailer: 1\r\n\r\n");
        peer.answer(b"second");
    });
    let (_, first) = post(&client).unwrap();
    assert_eq!(first, body);
    let (_, second) = post(&client).unwrap();
    assert_eq!(second, b"second");
    assert_no_more_connections(server);
}

#[test]
fn a_kept_alive_connection_is_reused() {
    let (client, server) = server(1, |_, mut peer| {
        for i in 0..3 {
            peer.answer(format!("reply {i}").as_bytes());
        }
    });
    for i in 0..3 {
        assert_eq!(post(&client).unwrap().1, format!("reply {i}").as_bytes());
    }
    assert_no_more_connections(server);
}

#[test]
fn a_connection_the_reply_closes_is_not_reused() {
    // The server says close but would serve on: only the header stops reuse.
    let (client, server) = server(2, |_, mut peer| {
        peer.request();
        peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
        let _ = read_message(&mut peer.reader, false);
    });
    assert_eq!(post(&client).unwrap().1, b"ok");
    drop(post(&client).unwrap());
    drop(client);
    assert_no_more_connections(server);
}

#[test]
fn a_refused_body_closes_its_connection() {
    let (client, server) = server(2, |_, mut peer| {
        peer.answer(b"12345");
        let _ = read_message(&mut peer.reader, false);
    });
    let mut buffer = Vec::new();
    let (head, len) = client
        .post(&[], b"{}", &mut |_| false, &mut buffer)
        .unwrap();
    assert_eq!((head.status, len), (200, None));
    assert_eq!(post(&client).unwrap().1, b"12345");
    drop(client);
    assert_no_more_connections(server);
}

#[test]
fn a_stale_pooled_connection_is_retried_once_on_a_new_one() {
    // The first connection serves one request and closes, as a server
    // closes an idle connection.
    let (client, server) = server(2, |n, mut peer| {
        peer.answer(format!("connection {n}").as_bytes());
        if n == 1 {
            let _ = read_message(&mut peer.reader, false);
        }
    });
    assert_eq!(post(&client).unwrap().1, b"connection 0");
    // Let the server's close arrive before the pooled connection is used.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(post(&client).unwrap().1, b"connection 1");
    drop(client);
    assert_no_more_connections(server);
}

#[test]
fn a_new_connection_closed_before_a_reply_is_not_retried() {
    let (client, server) = server(1, |_, mut peer| {
        peer.request();
    });
    let e = post(&client).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    assert_no_more_connections(server);
}

#[test]
fn a_body_cut_short_is_an_error_not_a_short_body() {
    let (client, server) = server(2, |n, mut peer| {
        peer.request();
        match n {
            0 => peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this"),
            _ => peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly this"),
        }
    });
    for _ in 0..2 {
        let e = post(&client).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert_eq!(io_kind(&e), TransportKind::Broken);
    }
    assert_no_more_connections(server);
}

#[test]
fn a_body_without_length_is_read_to_the_close() {
    let (client, server) = server(2, |_, mut peer| {
        peer.request();
        peer.send(b"HTTP/1.1 500 Oops\r\n\r\n<html>down</html>");
    });
    for _ in 0..2 {
        let (head, body) = post(&client).unwrap();
        assert_eq!((head.status, &body[..]), (500, &b"<html>down</html>"[..]));
    }
    assert_no_more_connections(server);
}

#[test]
fn a_silent_server_times_out() {
    let (mut client, server) = server(1, |_, mut peer| {
        peer.request();
        // Nothing more until the client gives up and closes.
        let _ = read_message(&mut peer.reader, false);
    });
    client.target.read_timeout = Duration::from_millis(200);
    let e = post(&client).unwrap_err();
    assert_eq!(io_kind(&e), TransportKind::Timeout, "{e}");
    assert_no_more_connections(server);
}

#[test]
fn an_oversized_body_is_refused_before_it_is_read() {
    let (client, server) = server(2, |n, mut peer| {
        peer.request();
        match n {
            0 => peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\n\r\n"),
            _ => peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n"),
        }
        // Nothing of the body is sent: a client reading it would time out.
        let _ = read_message(&mut peer.reader, false);
    });
    // A Content-Length is checked before `admit` is asked, a chunk's size
    // as the chunk comes.
    for expected_asked in [false, true] {
        let mut asked = false;
        let e = client
            .post(
                &[],
                b"{}",
                &mut |_| {
                    asked = true;
                    true
                },
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("larger than the 1 MiB"), "{e}");
        assert_eq!(asked, expected_asked);
    }
    assert_no_more_connections(server);
}

#[test]
fn heads_are_parsed_or_refused() {
    let head = parse_head(b"HTTP/1.1 404 Not Found\r\nA: 1\r\nb:2 \r\n\r\n").unwrap();
    assert_eq!(
        (head.status, head.header("a"), head.header("B")),
        (404, Some("1"), Some("2"))
    );
    let old = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
    assert!(old.has_token("connection", "close"));
    for bad in [
        &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    ] {
        assert_eq!(
            parse_head(bad).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
    let lengths = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
    assert!(lengths.unwrap().framing().is_err());
    assert_eq!(chunk_size(b"1aF;x=y").unwrap(), 0x1af);
    assert!(chunk_size(b"").is_err() && chunk_size(b"zz").is_err());
}
