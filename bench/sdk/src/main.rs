//! The official SDK's GetRecords loop against a canned Kinesis server.
//!
//! Usage: kinesis-sdk-bench ENDPOINT_URL STREAM SHARD_ID SECONDS
//!
//! Prints one line: `sdk records=N bytes=B seconds=S calls=C`.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::ShardIteratorType;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: kinesis-sdk-bench ENDPOINT_URL STREAM SHARD_ID SECONDS");
        std::process::exit(2);
    }
    let endpoint = args[1].clone();
    let stream = args[2].clone();
    let shard = args[3].clone();
    let seconds: f64 = args[4].parse().expect("SECONDS");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(
        endpoint,
        stream,
        shard,
        Duration::from_secs_f64(seconds),
    ));
}

async fn run(endpoint: String, stream: String, shard: String, duration: Duration) {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "AKIDBENCH",
            "bench-secret",
            None,
            None,
            "bench",
        ))
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(config);
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("GetShardIterator")
        .shard_iterator
        .expect("an iterator");
    // Warm up: connection, first allocations.
    for _ in 0..3 {
        let out = client
            .get_records()
            .shard_iterator(&iterator)
            .limit(10_000)
            .send()
            .await
            .expect("GetRecords");
        iterator = out.next_shard_iterator.expect("next iterator");
    }
    let (mut records, mut bytes, mut calls) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < duration {
        let out = client
            .get_records()
            .shard_iterator(&iterator)
            .limit(10_000)
            .send()
            .await
            .expect("GetRecords");
        // Touch each record, as the handler of the other side does.
        for r in out.records() {
            records += 1;
            bytes += r.data().as_ref().len() as u64 + r.partition_key().map_or(0, str::len) as u64;
        }
        calls += 1;
        iterator = out.next_shard_iterator.expect("next iterator");
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("sdk records={records} bytes={bytes} seconds={seconds:.4} calls={calls}");
}
