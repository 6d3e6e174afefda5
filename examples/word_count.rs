//! Spark's Kinesis word count: for each batch, prints the batch time, the
//! number of records and the most frequent words.
//!
//! ```text
//! cargo run --example word_count -- --stream S --app A [--position trim-horizon|latest|<RFC 3339 time>]
//!     [--batch-interval-ms N (2000)] [--top N (10)] [--metrics-level none|summary|detailed (none)]
//! ```
//!
//! Endpoints, region and credentials come from the standard AWS environment;
//! metrics go to CloudWatch (namespace: the application name) at the
//! standard endpoint or `AWS_ENDPOINT_URL_CLOUDWATCH`.
//! SIGINT or SIGTERM stops it gracefully.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kinesis_consumer::{Batch, Consumer};

const USAGE: &str = "usage: word_count --stream S --app A [--position trim-horizon|latest|<RFC 3339 time>] \
[--batch-interval-ms N (2000)] [--top N (10)] [--metrics-level none|summary|detailed (none)]";

fn main() {
    support::init_logging();
    let args = support::Args::parse(
        USAGE,
        &[
            "stream",
            "app",
            "position",
            "batch-interval-ms",
            "top",
            "metrics-level",
        ],
        &[],
    );
    let position = support::position(args.get("position").unwrap_or("trim-horizon"))
        .unwrap_or_else(|e| support::fail(USAGE, &e));
    let top = args.number(USAGE, "top", 10) as usize;
    let metrics_level = support::metrics_level(args.get("metrics-level").unwrap_or("none"))
        .unwrap_or_else(|e| support::fail(USAGE, &e));
    let consumer = Consumer::builder()
        .app_name(args.required(USAGE, "app"))
        .stream_name(args.required(USAGE, "stream"))
        .initial_position(position)
        .metrics_level(metrics_level)
        .batch_interval(Duration::from_millis(args.number(
            USAGE,
            "batch-interval-ms",
            2000,
        )))
        // Split on the reader threads, so the batch handler only counts.
        .message_handler(|r| {
            String::from_utf8_lossy(r.data())
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .build()
        .unwrap_or_else(|e| support::fail(USAGE, &e.to_string()));
    support::stop_on_signals(consumer.shutdown_handle());
    let result = consumer.run(|batch: Batch<Vec<String>>| {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for message in batch.messages() {
            for word in message.value() {
                *counts.entry(word).or_default() += 1;
            }
        }
        let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let words: Vec<String> = ranked
            .iter()
            .take(top)
            .map(|(w, c)| format!("{w}={c}"))
            .collect();
        println!(
            "batch {} UTC: {} records; top words: {}",
            support::time_of_day(batch.time()),
            batch.len(),
            words.join(" ")
        );
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
