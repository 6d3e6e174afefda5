//! Just enough HTTP/1.1 to read requests off a socket.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// One request: its head (request line and headers, as sent) and body.
pub struct Request {
    pub head: Vec<u8>,
    pub target: String,
    pub body: Vec<u8>,
}

/// Reads one request; `None` at a clean end of the connection.
pub fn read_request<R: Read>(reader: &mut BufReader<R>) -> std::io::Result<Option<Request>> {
    let mut head = Vec::new();
    let mut length = 0usize;
    let mut target = String::new();
    loop {
        let start = head.len();
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let text = String::from_utf8_lossy(line);
        if let Some((name, value)) = text.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("x-amz-target") {
                target = value.to_owned();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request { head, target, body }))
}

/// Answers the Kinesis requests of one kept-alive connection: `answer`
/// gets the operation (the name after the dot in `X-Amz-Target`) and the
/// request body, and gives the 200 reply's body, or `None` for an
/// operation it does not know (400 `UnknownOperationException`). A borrowed
/// body is written without a copy.
pub fn serve_operations<'a>(
    stream: TcpStream,
    answer: impl Fn(&str, &[u8]) -> Option<Cow<'a, [u8]>>,
) {
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    while let Ok(Some(request)) = read_request(&mut reader) {
        let operation = request.target.rsplit('.').next().unwrap_or("");
        let Some(body) = answer(operation, &request.body) else {
            let body =
                format!(r#"{{"__type":"UnknownOperationException","message":"{operation}"}}"#);
            let reply = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = writer.write_all(reply.as_bytes());
            continue;
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: bench\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
            return;
        }
    }
}

/// Serves connections on a free 127.0.0.1 port, one thread each (named
/// `{name}-conn`, small stacks) calling `serve` with the shared `state`;
/// returns the server's URL.
pub fn spawn_server<S: Send + Sync + 'static>(
    name: &str,
    state: Arc<S>,
    serve: fn(TcpStream, &S),
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let conn_name = format!("{name}-conn");
    std::thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                let _ = std::thread::Builder::new()
                    .name(conn_name.clone())
                    .stack_size(256 * 1024)
                    .spawn(move || serve(stream, &state));
            }
        })
        .unwrap();
    url
}
