//! Records/s of the two record decoders on the same records: the GetRecords
//! reply decoder (polling) against the event-stream decoder of a
//! SubscribeToShard subscription (enhanced fan-out). The records are
//! encoded once as a GetRecords JSON reply and once as one event-stream
//! `SubscribeToShardEvent` message (prelude, headers, JSON payload with
//! base64 data, both CRCs); each is decoded in a loop, in memory (no
//! network), each record touched. Interleaved rounds, best round kept.
//!
//! Usage: decoders [--seconds S] [--rounds N]

use std::time::Instant;

use kinesis_consumer::__test_support::{
    decode_get_records_reply, decode_subscribe_to_shard_events, event_stream_crc32,
};
use kinesis_consumer::Record;
use kinesis_consumer_bench::canned::{get_records_body, subscribe_event};
use kinesis_consumer_bench::{arg, rate};

const MIB: f64 = 1024.0 * 1024.0;

/// Touches every record as a handler would; a value the optimiser keeps.
fn touch(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| r.data().len() as u64 + u64::from(r.data()[0]))
        .sum()
}

/// Decodes `input` with `decode` for `seconds`; calls per second.
fn measure(
    seconds: f64,
    input: &[u8],
    decode: impl Fn(&[u8]) -> kinesis_consumer::Result<Vec<Record>>,
) -> f64 {
    let started = Instant::now();
    let (mut calls, mut sink) = (0u64, 0u64);
    while started.elapsed().as_secs_f64() < seconds {
        sink = sink.wrapping_add(touch(&decode(input).unwrap()));
        calls += 1;
    }
    std::hint::black_box(sink);
    calls as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = arg("--seconds", 2.0);
    let rounds: u32 = arg("--rounds", 3);
    println!(
        "# decoders: the same records decoded from a GetRecords reply and from a SubscribeToShardEvent message, in memory, {seconds} s per measurement, best of {rounds} interleaved rounds"
    );
    for (records, size) in [(10_000usize, 100usize), (5_000, 1024)] {
        let json = get_records_body(records, size);
        let polled = decode_get_records_reply(&json).unwrap();
        let event = subscribe_event(&json);
        // Both decoders must agree before their speeds mean anything.
        let pushed = decode_subscribe_to_shard_events(&event).unwrap();
        assert_eq!(polled.len(), records);
        assert!(
            polled.len() == pushed.len()
                && polled.iter().zip(&pushed).all(|(a, b)| {
                    a.data() == b.data()
                        && a.sequence_number() == b.sequence_number()
                        && a.partition_key() == b.partition_key()
                        && a.approximate_arrival_timestamp() == b.approximate_arrival_timestamp()
                }),
            "the decoders disagree"
        );
        println!(
            "\n## {records} records x {size} B (GetRecords body {:.2} MiB, event-stream message {:.2} MiB)",
            json.len() as f64 / MIB,
            event.len() as f64 / MIB
        );
        let (mut get_best, mut event_best) = (0f64, 0f64);
        for round in 1..=rounds {
            let get = measure(seconds, &json, decode_get_records_reply);
            let ev = measure(seconds, &event, decode_subscribe_to_shard_events);
            println!(
                "round {round}: GetRecords decoder {} records/s, event-stream decoder {} records/s",
                rate(get * records as f64),
                rate(ev * records as f64)
            );
            get_best = get_best.max(get);
            event_best = event_best.max(ev);
        }
        let payload = (records * size) as f64;
        for (name, calls, body) in [
            ("GetRecords decoder  ", get_best, json.len()),
            ("event-stream decoder", event_best, event.len()),
        ] {
            println!(
                "{name}: {} records/s, {:.1} MiB/s of record data, {:.1} MiB/s of input, {:.2} ms per reply",
                rate(calls * records as f64),
                calls * payload / MIB,
                calls * body as f64 / MIB,
                1000.0 / calls
            );
        }
        println!("event-stream / GetRecords: {:.2}x", event_best / get_best);
        // One part of the event-stream decoder's cost: the message CRC-32
        // runs over every byte (the GetRecords path has no checksum).
        let started = Instant::now();
        let mut crc_calls = 0u32;
        while started.elapsed().as_secs_f64() < seconds / 2.0 {
            std::hint::black_box(event_stream_crc32(std::hint::black_box(&event)));
            crc_calls += 1;
        }
        let crc_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(crc_calls);
        println!(
            "of which the CRC-32 over the message: {crc_ms:.2} ms ({:.0} MiB/s)",
            event.len() as f64 / MIB / crc_ms * 1000.0
        );
    }
}
