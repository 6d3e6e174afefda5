//! Decode + deliver throughput on one shard: our full path (fetch, decode,
//! de-aggregation check, message handler, channel, batch handler touching
//! each record) against the official SDK's get_records loop, same canned
//! server, same run. The floor: a copy of the reply body in memory, and
//! the reply read off a plain socket (no HTTP client, nothing decoded);
//! each path's time per reply is shown as a multiple of the socket read's.
//!
//! Usage: throughput --sdk PATH [--seconds S] [--rounds N] [--size BYTES]
//! (`--size 100` or `--size 1024`: that record size only)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use kinesis_consumer::aws::kinesis::{IteratorPosition, KinesisClient};
use kinesis_consumer_bench::canned::CannedServer;
use kinesis_consumer_bench::{
    arg, client_config, consumer, emulators, full_path_rate, memcpy_rate, rate, sdk_rate, secs,
};

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let sdk: String = arg("--sdk", String::new());
    let seconds: f64 = arg("--seconds", 2.0);
    let rounds: u32 = arg("--rounds", 3);
    let only_size: usize = arg("--size", 0);
    let dynamo = emulators::dynalite();
    println!(
        "# throughput: one shard, canned GetRecords replies, {seconds} s per measurement, best of {rounds} interleaved rounds"
    );
    for (records, size) in [(10_000usize, 100usize), (5_000, 1024)] {
        if only_size != 0 && size != only_size {
            continue;
        }
        let server = CannedServer::start(1, records, size);
        println!(
            "\n## {records} records x {size} B per GetRecords (reply body {:.2} MiB)",
            server.body_bytes() as f64 / MIB
        );
        let payload = (records * size) as f64;
        // The machine is shared: run the three measurements in turn, three
        // rounds, and keep each one's best round.
        let (mut wire_best, mut ours_best, mut sdk_best) = (0f64, 0f64, 0f64);
        let (mut memcpy_best, mut socket_best) = (0f64, 0f64);
        let mut sdk_ms = f64::NAN;
        for round in 1..=rounds {
            memcpy_best = memcpy_best.max(memcpy_rate(server.body(), records, seconds / 4.0));
            let socket = socket_rate(&server.url, records, seconds / 2.0);
            socket_best = socket_best.max(socket);
            let (wire, _) = wire_loop(&server.url, seconds);
            let o = full_path_rate(consumer(&server.url, &dynamo.url, "bench"), seconds);
            let w = wire.records / wire.elapsed;
            let mut line = format!(
                "  round {round}: socket read {}, get_records only {}, full path {}",
                rate(socket),
                rate(w),
                rate(o)
            );
            wire_best = wire_best.max(w);
            ours_best = ours_best.max(o);
            if !sdk.is_empty() {
                let (r, ms) = sdk_rate(
                    &sdk,
                    &[
                        &server.url,
                        "bench",
                        "shardId-000000000000",
                        &seconds.to_string(),
                    ],
                );
                line += &format!(", sdk {}", rate(r));
                if r > sdk_best {
                    sdk_ms = ms;
                }
                sdk_best = sdk_best.max(r);
            }
            println!("{line}");
        }
        println!(
            "ours, get_records only (fetch + decode): {} records/s, {:.1} MiB/s of data, {:.2} ms per call",
            rate(wire_best),
            wire_best * size as f64 / MIB,
            records as f64 / wire_best * 1e3
        );
        println!(
            "ours, full path: {} records/s, {:.1} MiB/s of data, {:.2} ms per {records} records",
            rate(ours_best),
            ours_best * size as f64 / MIB,
            records as f64 / ours_best * 1e3
        );
        let _ = payload;
        let body_mib = server.body_bytes() as f64 / MIB;
        println!(
            "floor, memcpy of the body: {} records/s, {:.0} MiB/s of body, {:.3} ms per reply",
            rate(memcpy_best),
            memcpy_best / records as f64 * body_mib,
            records as f64 / memcpy_best * 1e3
        );
        println!(
            "floor, plain socket read of the reply: {} records/s, {:.0} MiB/s of body, {:.2} ms per reply",
            rate(socket_best),
            socket_best / records as f64 * body_mib,
            records as f64 / socket_best * 1e3
        );
        let floor = |best: f64| socket_best / best;
        let mut multiples = format!(
            "time per record as a multiple of the socket read: get_records only {:.2}x, full path {:.2}x",
            floor(wire_best),
            floor(ours_best)
        );
        if sdk.is_empty() {
            println!("{multiples}");
            println!("sdk: skipped (no --sdk)");
            continue;
        }
        multiples += &format!(", sdk {:.2}x", floor(sdk_best));
        println!("{multiples}");
        println!(
            "sdk (aws-sdk-kinesis, tokio current-thread): {} records/s, {:.1} MiB/s of data, {sdk_ms:.2} ms per call",
            rate(sdk_best),
            sdk_best * size as f64 / MIB,
        );
        println!(
            "RATIO full path / sdk: {:.2}x   (get_records only / sdk: {:.2}x)",
            ours_best / sdk_best,
            wire_best / sdk_best
        );
    }
}

struct Measured {
    records: f64,
    elapsed: f64,
}

/// The bare client loop: GetRecords + decode, nothing else.
fn wire_loop(url: &str, seconds: f64) -> (Measured, u64) {
    let client = KinesisClient::new(&client_config(url)).unwrap();
    let mut it = client
        .get_shard_iterator(
            "bench",
            "shardId-000000000000",
            &IteratorPosition::TrimHorizon,
        )
        .unwrap();
    for _ in 0..3 {
        it = client
            .get_records("shardId-000000000000", &it, 10_000)
            .unwrap()
            .next_shard_iterator
            .unwrap();
    }
    let (mut records, mut calls, mut touched) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < secs(seconds) {
        let out = client
            .get_records("shardId-000000000000", &it, 10_000)
            .unwrap();
        // Touch each record, as the SDK's loop does (its data and key).
        for r in &out.records {
            records += 1;
            touched += (r.data().len() + r.partition_key().len()) as u64;
        }
        calls += 1;
        it = out.next_shard_iterator.unwrap();
    }
    std::hint::black_box(touched);
    let m = Measured {
        records: records as f64,
        elapsed: started.elapsed().as_secs_f64(),
    };
    (m, calls)
}

/// The floor over loopback: GetRecords requests written on a plain socket
/// and each reply read whole into one reused buffer, nothing decoded, no
/// HTTP client; records/s.
fn socket_rate(url: &str, records: usize, seconds: f64) -> f64 {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let body = r#"{"ShardIterator":"AAAAAAAAAAEbenchiterator","Limit":10000}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: Kinesis_20131202.GetRecords\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = vec![0u8; 32 << 20];
    let mut read_reply = |stream: &mut TcpStream| {
        let (mut filled, mut end) = (0, None);
        loop {
            let n = stream.read(&mut buf[filled..]).unwrap();
            assert!(n > 0, "the canned server closed the connection");
            filled += n;
            if end.is_none() {
                end = head_end(&buf[..filled]);
            }
            if let Some((head, length)) = end
                && filled >= head + length
            {
                assert_eq!(filled, head + length);
                return length;
            }
        }
    };
    stream.write_all(request.as_bytes()).unwrap();
    read_reply(&mut stream);
    let (started, mut calls) = (Instant::now(), 0u64);
    while started.elapsed().as_secs_f64() < seconds {
        stream.write_all(request.as_bytes()).unwrap();
        assert!(read_reply(&mut stream) > 0);
        calls += 1;
    }
    calls as f64 * records as f64 / started.elapsed().as_secs_f64()
}

/// The length of an HTTP reply's head and its Content-Length, once the
/// head is whole.
fn head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&bytes[..head]).ok()?;
    let length = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    Some((head, length))
}
