//! A pass-through proxy in front of dynalite that asks DynamoDB's own
//! question for every request (it adds `"ReturnConsumedCapacity":"TOTAL"`
//! to the body) and tallies requests and capacity units by purpose: what
//! the lease code meant by the request, read off its expressions.
//!
//! dynalite bills as DynamoDB documents: reads in 4 KB units (half for an
//! eventually consistent read; a Scan sums the bytes of the items of each
//! page), writes in 1 KB units of the larger of the item before and after.
//! It returns no capacity for a write whose condition failed; DynamoDB bills
//! one (at least 1 write unit), so each failed condition counts 1 unit here.
//! dynalite 4.0.0 halves every Scan's units, consistent or not (seen: 100
//! items of 233 B, 3 units either way, where DynamoDB bills 6 consistent
//! and 3 eventually consistent), so a consistent Scan's units are doubled.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crate::http::read_request;

/// Requests and units of one purpose.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Requests sent.
    pub requests: u64,
    /// Read capacity units consumed.
    pub read_units: f64,
    /// Write capacity units consumed (failed conditions counted as 1).
    pub write_units: f64,
    /// Writes refused by their condition.
    pub failed_conditions: u64,
}

/// Tallies by purpose.
pub type Tallies = BTreeMap<&'static str, Tally>;

/// A running proxy.
pub struct CapacityProxy {
    pub url: String,
    tallies: Arc<Mutex<Tallies>>,
}

impl CapacityProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream_port`.
    pub fn start(upstream_port: u16) -> CapacityProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tallies: Arc<Mutex<Tallies>> = Arc::default();
        let t = tallies.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let tallies = t.clone();
                let _ = std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || pump(client, upstream_port, &tallies));
            }
        });
        CapacityProxy { url, tallies }
    }

    /// The tallies so far.
    pub fn tallies(&self) -> Tallies {
        self.tallies.lock().unwrap().clone()
    }
}

/// `after - before`, purpose by purpose.
pub fn difference(after: &Tallies, before: &Tallies) -> Tallies {
    after
        .iter()
        .map(|(purpose, a)| {
            let b = before.get(purpose).copied().unwrap_or_default();
            let d = Tally {
                requests: a.requests - b.requests,
                read_units: a.read_units - b.read_units,
                write_units: a.write_units - b.write_units,
                failed_conditions: a.failed_conditions - b.failed_conditions,
            };
            (*purpose, d)
        })
        .collect()
}

/// What a lease-table request is for, from its operation and expressions
/// (the texts `src/lease/table.rs` sends).
pub fn purpose(operation: &str, body: &str) -> &'static str {
    match operation {
        "Scan" => "scan",
        // Reading a row back after a failed condition (a lost reply).
        "GetItem" => "read-back",
        "PutItem" => "shard sync",
        "DeleteItem" => "cleanup",
        "DescribeTable" | "CreateTable" => "setup",
        "UpdateItem" => {
            if body.contains("#checkpoint = :checkpoint") {
                "checkpoint"
            } else if body.contains("#beat = :beat") {
                // The one write per worker that keeps all its leases.
                "heartbeat"
            } else if body.contains("ADD #count :one") {
                // Telling a worker (or all) to read the table.
                "notify"
            } else if body.contains("REMOVE #beat, #inbox") {
                "forget worker"
            } else if body.contains("SET #owner = :owner") {
                "take"
            } else if body.contains("SET #handoff = :to") {
                // Asking an owner to hand a lease over: part of taking.
                "take (ask)"
            } else if body.contains("SET #owner = :to") || body.contains("REMOVE #owner") {
                "release"
            } else if body.contains("#children") {
                "shard sync"
            } else {
                "other"
            }
        }
        _ => "other",
    }
}

fn is_read(operation: &str) -> bool {
    matches!(operation, "Scan" | "GetItem" | "Query" | "BatchGetItem")
}

fn pump(client: TcpStream, upstream_port: u16, tallies: &Mutex<Tallies>) {
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    // Head and body go out in one write, and without Nagle's delay: two
    // small writes would otherwise wait for a delayed ACK (40 ms each way).
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let Ok(mut client_write) = client.try_clone() else {
        return;
    };
    let mut up_write = match upstream.try_clone() {
        Ok(u) => u,
        Err(_) => return,
    };
    let mut up_read = BufReader::new(upstream);
    let mut reader = BufReader::new(client);
    while let Ok(Some(request)) = read_request(&mut reader) {
        let operation = request.target.rsplit('.').next().unwrap_or("?").to_owned();
        let text = String::from_utf8_lossy(&request.body).into_owned();
        let purpose = purpose(&operation, &text);
        let body = with_consumed_capacity(&text);
        let mut message = with_length(&request.head, body.len());
        message.extend_from_slice(&body);
        if up_write.write_all(&message).is_err() {
            break;
        }
        let Ok((mut reply, reply_body, status)) = read_reply(&mut up_read) else {
            break;
        };
        let mut units = consumed(&reply_body);
        if operation == "Scan" && text.contains(r#""ConsistentRead":true"#) {
            units *= 2.0;
        }
        let failed = status == 400
            && String::from_utf8_lossy(&reply_body).contains("ConditionalCheckFailed");
        {
            let mut t = tallies.lock().unwrap();
            let tally = t.entry(purpose).or_default();
            tally.requests += 1;
            if is_read(&operation) {
                tally.read_units += units;
            } else {
                tally.write_units += units;
            }
            if failed {
                tally.failed_conditions += 1;
                tally.write_units += 1.0;
            }
        }
        reply.extend_from_slice(&reply_body);
        if client_write.write_all(&reply).is_err() {
            break;
        }
    }
    let _ = up_write.shutdown(std::net::Shutdown::Both);
    let _ = client_write.shutdown(std::net::Shutdown::Both);
}

/// The request body with `ReturnConsumedCapacity` set to `TOTAL`.
fn with_consumed_capacity(body: &str) -> Vec<u8> {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("ReturnConsumedCapacity".into(), "TOTAL".into());
            serde_json::to_vec(&map).unwrap()
        }
        _ => body.as_bytes().to_vec(),
    }
}

/// The request head with its Content-Length set to `length`.
fn with_length(head: &[u8], length: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        if line
            .split_once(':')
            .is_some_and(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        {
            out.push_str(&format!("Content-Length: {length}\r\n"));
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

/// Reads one reply: its head as sent, its body, and its status.
fn read_reply<R: Read>(reader: &mut BufReader<R>) -> std::io::Result<(Vec<u8>, Vec<u8>, u16)> {
    let mut head = Vec::new();
    let mut length = 0usize;
    let mut status = 0u16;
    loop {
        let start = head.len();
        if reader.read_until(b'\n', &mut head)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = String::from_utf8_lossy(&head[start..]).into_owned();
        if start == 0 {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((head, body, status))
}

/// `ConsumedCapacity.CapacityUnits` of a reply, or 0.
fn consumed(body: &[u8]) -> f64 {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["ConsumedCapacity"]["CapacityUnits"].as_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_follow_the_lease_tables_expressions() {
        let heartbeat = r##"{"UpdateExpression":"SET #type = :type, #beat = :beat REMOVE #cap"}"##;
        assert_eq!(purpose("UpdateItem", heartbeat), "heartbeat");
        let notify = r##"{"UpdateExpression":"SET #type = :type ADD #count :one"}"##;
        assert_eq!(purpose("UpdateItem", notify), "notify");
        let checkpoint = r##"{"UpdateExpression":"SET #checkpoint = :checkpoint, #sub = :sub, #switches = :zero, #counter = :next"}"##;
        assert_eq!(purpose("UpdateItem", checkpoint), "checkpoint");
        let take = r##"{"UpdateExpression":"SET #owner = :owner, #counter = :next"}"##;
        assert_eq!(purpose("UpdateItem", take), "take");
        let ask = r##"{"UpdateExpression":"SET #handoff = :to"}"##;
        assert_eq!(purpose("UpdateItem", ask), "take (ask)");
        let release = r##"{"UpdateExpression":"SET #counter = :next REMOVE #owner, #handoff"}"##;
        assert_eq!(purpose("UpdateItem", release), "release");
        assert_eq!(purpose("Scan", "{}"), "scan");
    }

    #[test]
    fn the_length_follows_the_rewritten_body() {
        let head = b"POST / HTTP/1.1\r\ncontent-length: 2\r\nx: y\r\n\r\n";
        let out = String::from_utf8(with_length(head, 40)).unwrap();
        assert!(out.contains("Content-Length: 40\r\n"), "{out}");
        assert!(out.ends_with("x: y\r\n\r\n"), "{out}");
        let body = with_consumed_capacity(r#"{"TableName":"t"}"#);
        assert!(String::from_utf8(body).unwrap().contains("TOTAL"));
    }
}
