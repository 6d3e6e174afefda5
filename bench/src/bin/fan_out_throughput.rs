//! Enhanced fan-out throughput on one shard: our bare `Subscription`
//! (receive over HTTP/2 + decode) and our full path (the consumer with
//! `enhanced_fan_out`: decode, de-aggregation check, message handler,
//! channel, batch handler touching each record) against the official
//! SDK's `subscribe_to_shard` (aws-sdk-kinesis, its hyper 0.14 client
//! speaking cleartext HTTP/2), all reading the same canned server: every
//! subscription streams the same `SubscribeToShardEvent` (the throughput
//! benchmark's GetRecords records) again and again, as fast as the
//! client's flow control lets it. The floor: a copy of the event message
//! in memory.
//!
//! Usage: fan_out_throughput --sdk PATH [--seconds S] [--rounds N]

use std::time::{Duration, Instant};

use kinesis_consumer::aws::fan_out::Polled;
use kinesis_consumer::aws::kinesis::{IteratorPosition, KinesisClient};
use kinesis_consumer_bench::canned::{CONSUMER_ARN, CannedServer};
use kinesis_consumer_bench::{
    arg, client_config, consumer, emulators, full_path_rate, memcpy_rate, rate, sdk_rate, secs,
};

const MIB: f64 = 1024.0 * 1024.0;
const SHARD: &str = "shardId-000000000000";

fn main() {
    let sdk: String = arg("--sdk", String::new());
    let seconds: f64 = arg("--seconds", 2.0);
    let rounds: u32 = arg("--rounds", 3);
    let dynamo = emulators::dynalite();
    println!(
        "# fan_out_throughput: one shard, canned SubscribeToShard events over cleartext HTTP/2, {seconds} s per measurement, best of {rounds} interleaved rounds"
    );
    for (records, size) in [(10_000usize, 100usize), (5_000, 1024)] {
        let server = CannedServer::start_fan_out(1, records, size);
        let event = server.events().expect("fan-out served").event();
        println!(
            "\n## {records} records x {size} B per event (event-stream message {:.2} MiB)",
            event.len() as f64 / MIB
        );
        let (mut bare_best, mut ours_best, mut sdk_best, mut memcpy_best) =
            (0f64, 0f64, 0f64, 0f64);
        let mut sdk_ms = f64::NAN;
        for round in 1..=rounds {
            memcpy_best = memcpy_best.max(memcpy_rate(event, records, seconds / 4.0));
            let bare = subscription_rate(&server.url, seconds);
            let ours = full_path_rate(
                consumer(&server.url, &dynamo.url, "bench").enhanced_fan_out("bench-efo"),
                seconds,
            );
            let mut line = format!(
                "  round {round}: subscription only {}, full path {}",
                rate(bare),
                rate(ours)
            );
            bare_best = bare_best.max(bare);
            ours_best = ours_best.max(ours);
            if !sdk.is_empty() {
                let (r, ms) = sdk_rate(
                    &sdk,
                    &[
                        "subscribe",
                        &server.url,
                        CONSUMER_ARN,
                        SHARD,
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
        let per_event = |best: f64| records as f64 / best * 1e3;
        println!(
            "ours, subscription only (receive + decode): {} records/s, {:.1} MiB/s of data, {:.2} ms per event",
            rate(bare_best),
            bare_best * size as f64 / MIB,
            per_event(bare_best)
        );
        println!(
            "ours, full path: {} records/s, {:.1} MiB/s of data, {:.2} ms per event",
            rate(ours_best),
            ours_best * size as f64 / MIB,
            per_event(ours_best)
        );
        println!(
            "floor, memcpy of the event message: {} records/s, {:.0} MiB/s of message, {:.3} ms per event",
            rate(memcpy_best),
            memcpy_best / records as f64 * event.len() as f64 / MIB,
            per_event(memcpy_best)
        );
        if sdk.is_empty() {
            println!("sdk: skipped (no --sdk)");
            continue;
        }
        println!(
            "sdk (aws-sdk-kinesis subscribe_to_shard, hyper 0.14 h2c, tokio current-thread): {} records/s, {:.1} MiB/s of data, {sdk_ms:.2} ms per event",
            rate(sdk_best),
            sdk_best * size as f64 / MIB,
        );
        println!(
            "RATIO full path / sdk: {:.2}x   (subscription only / sdk: {:.2}x)",
            ours_best / sdk_best,
            bare_best / sdk_best
        );
    }
}

/// Records/s of a bare subscription from the trim horizon, each record
/// touched, over `seconds` after its first three events.
fn subscription_rate(url: &str, seconds: f64) -> f64 {
    let client = KinesisClient::new(&client_config(url)).unwrap();
    let mut subscription = client
        .subscribe_to_shard(CONSUMER_ARN, SHARD, &IteratorPosition::TrimHorizon)
        .unwrap();
    let mut next = || loop {
        match subscription.poll(Duration::from_secs(10)).unwrap() {
            Polled::Event(event) => return event,
            Polled::Idle => {}
            Polled::Ended => panic!("the canned subscription ended"),
        }
    };
    for _ in 0..3 {
        next();
    }
    let (mut records, mut touched) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < secs(seconds) {
        let event = next();
        records += event.records.len() as u64;
        touched += event
            .records
            .iter()
            .map(|r| r.data().len() as u64 + r.partition_key().len() as u64)
            .sum::<u64>();
    }
    assert!(touched > 0);
    records as f64 / started.elapsed().as_secs_f64()
}
