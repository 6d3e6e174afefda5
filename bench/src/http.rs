//! Just enough HTTP/1.1 to read requests off a socket.

use std::io::{BufRead, BufReader, Read};
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
