//! The official SDK's GetRecords loop, or its SubscribeToShard
//! subscription, against a canned Kinesis server.
//!
//! Usage: kinesis-sdk-bench ENDPOINT_URL STREAM SHARD_ID SECONDS
//!        kinesis-sdk-bench subscribe ENDPOINT_URL CONSUMER_ARN SHARD_ID SECONDS
//!
//! Prints one line: `sdk records=N bytes=B seconds=S calls=C` (calls are
//! GetRecords calls, or events of the subscription).

use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StartingPosition, SubscribeToShardEventStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 6 && args[1] == "subscribe" {
        let seconds: f64 = args[5].parse().expect("SECONDS");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(subscribe(
            &args[2],
            &args[3],
            &args[4],
            Duration::from_secs_f64(seconds),
        ));
        return;
    }
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

/// The client's settings for the canned server: region, endpoint, dummy
/// credentials.
fn config(endpoint: &str) -> aws_sdk_kinesis::config::Builder {
    aws_sdk_kinesis::Config::builder()
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
}

/// Reads one subscription from the trim horizon for `duration` after its
/// first three events, touching each record.
async fn subscribe(endpoint: &str, consumer_arn: &str, shard: &str, duration: Duration) {
    let mut h2c = hyper::Client::builder();
    h2c.http2_only(true);
    let http_client = aws_smithy_http_client::hyper_014::HyperClientBuilder::new()
        .hyper_builder(h2c)
        .build(hyper::client::HttpConnector::new());
    let client =
        aws_sdk_kinesis::Client::from_conf(config(endpoint).http_client(http_client).build());
    let mut out = client
        .subscribe_to_shard()
        .consumer_arn(consumer_arn)
        .shard_id(shard)
        .starting_position(
            StartingPosition::builder()
                .r#type(ShardIteratorType::TrimHorizon)
                .build()
                .expect("a starting position"),
        )
        .send()
        .await
        .expect("SubscribeToShard");
    let (mut records, mut bytes, mut events) = (0u64, 0u64, 0u64);
    let mut started = None;
    let mut warm_up = 3;
    loop {
        let event = out
            .event_stream
            .recv()
            .await
            .expect("an event")
            .expect("the subscription goes on");
        let SubscribeToShardEventStream::SubscribeToShardEvent(event) = event else {
            continue;
        };
        if warm_up > 0 {
            warm_up -= 1;
            if warm_up == 0 {
                started = Some(Instant::now());
            }
            continue;
        }
        // Touch each record, as the handler of the other side does.
        for r in event.records() {
            records += 1;
            bytes += r.data().as_ref().len() as u64 + r.partition_key().map_or(0, str::len) as u64;
        }
        events += 1;
        if started.is_some_and(|s| s.elapsed() >= duration) {
            break;
        }
    }
    let seconds = started.expect("warmed up").elapsed().as_secs_f64();
    println!("sdk records={records} bytes={bytes} seconds={seconds:.4} calls={events}");
}

async fn run(endpoint: String, stream: String, shard: String, duration: Duration) {
    let client = aws_sdk_kinesis::Client::from_conf(config(&endpoint).build());
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
