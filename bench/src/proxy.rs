//! A counting pass-through proxy: forwards every request to an upstream
//! server unchanged and counts requests by `X-Amz-Target` operation.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crate::http::read_request;

/// A running proxy.
pub struct CountingProxy {
    pub url: String,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl CountingProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream_port`.
    pub fn start(upstream_port: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let c = counts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let counts = c.clone();
                std::thread::spawn(move || pump(client, upstream_port, &counts));
            }
        });
        CountingProxy { url, counts }
    }

    /// Requests so far, by operation.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }
}

fn pump(client: TcpStream, upstream_port: u16, counts: &Mutex<BTreeMap<String, u64>>) {
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    // Replies flow back byte for byte on their own thread.
    let (Ok(mut up_read), Ok(mut client_write)) = (upstream.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut client_write);
        let _ = client_write.shutdown(std::net::Shutdown::Both);
    });
    let mut up_write = upstream;
    let mut reader = BufReader::new(client);
    while let Ok(Some(request)) = read_request(&mut reader) {
        let op = request.target.rsplit('.').next().unwrap_or("?").to_owned();
        *counts.lock().unwrap().entry(op).or_default() += 1;
        if up_write.write_all(&request.head).is_err() || up_write.write_all(&request.body).is_err()
        {
            break;
        }
    }
    let _ = up_write.shutdown(std::net::Shutdown::Write);
}
