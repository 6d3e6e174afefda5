//! The SubscribeToShard side of the canned server: HTTP/2 over cleartext
//! (prior knowledge, as both our client and the SDK's hyper client speak
//! to an `http` endpoint), served by the `h2` crate on a tokio runtime of
//! the connection's own thread. Every request on the connection is taken
//! for a SubscribeToShard: a 200 with the event-stream content type, an
//! `initial-response` message, then the same prebuilt
//! `SubscribeToShardEvent` message again and again, as fast as the
//! client's flow-control windows let it, until the client resets the
//! stream or closes the connection.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use h2::SendStream;

use crate::canned::initial_response;

/// What every subscription streams, and how much of it went out.
pub struct Events {
    initial: Bytes,
    event: Bytes,
    sent: AtomicU64,
}

impl Events {
    /// Streams `event` (one whole event-stream message) after the
    /// `initial-response`.
    pub fn new(event: Vec<u8>) -> Events {
        Events {
            initial: Bytes::from(initial_response()),
            event: Bytes::from(event),
            sent: AtomicU64::new(0),
        }
    }

    /// The event message.
    pub fn event(&self) -> &[u8] {
        &self.event
    }

    /// Event messages handed to HTTP/2 so far, over all subscriptions.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Whether the client opened the connection with the HTTP/2 preface
/// (`PRI * HTTP/2.0`) rather than an HTTP/1.1 request line.
pub fn opens_http2(stream: &TcpStream) -> bool {
    let mut first = [0u8; 3];
    // A peek may see fewer bytes than sent so far: wait for three.
    loop {
        match stream.peek(&mut first) {
            Ok(3) => return &first == b"PRI",
            Ok(0) | Err(_) => return false,
            Ok(_) => std::thread::yield_now(),
        }
    }
}

/// Serves one HTTP/2 connection until the client goes away.
pub fn serve(stream: TcpStream, events: Arc<Events>) {
    // tokio's futures want a larger stack than the connection thread's.
    let served = std::thread::Builder::new()
        .name("canned-h2".into())
        .stack_size(4 << 20)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("tokio runtime");
            runtime.block_on(connection(stream, events));
        });
    if let Ok(thread) = served {
        let _ = thread.join();
    }
}

async fn connection(stream: TcpStream, events: Arc<Events>) {
    let _ = stream.set_nodelay(true);
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(socket) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((_request, mut respond))) = connection.accept().await {
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/vnd.amazon.eventstream")
            .header("x-amzn-requestid", "bench")
            .body(())
            .expect("a response head");
        let Ok(send) = respond.send_response(response, false) else {
            continue;
        };
        tokio::spawn(subscription(send, events.clone()));
    }
}

/// Streams the initial response, then events until the client stops it.
async fn subscription(mut send: SendStream<Bytes>, events: Arc<Events>) {
    if send_all(&mut send, events.initial.clone()).await.is_err() {
        return;
    }
    while send_all(&mut send, events.event.clone()).await.is_ok() {
        events.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `data` as the stream's windows open (no copy: slices of it).
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, false)?;
    }
    Ok(())
}
