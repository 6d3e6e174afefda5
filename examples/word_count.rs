//! Spark's Kinesis word count: for each batch, prints the batch time, the
//! number of records and the most frequent words.
//!
//! ```text
//! cargo run --example word_count -- --stream S --app A [--position trim-horizon|latest|<RFC 3339 time>]
//!     [--batch-interval-ms N (2000)] [--top N (10)] [--metrics-level none|summary|detailed (none)] [--metrics-addr [HOST:]PORT]
//! ```
//!
//! Endpoints, region and credentials come from the standard AWS environment;
//! metrics go to CloudWatch (namespace: the application name) at the
//! standard endpoint or `AWS_ENDPOINT_URL_CLOUDWATCH`.
//! SIGINT or SIGTERM stops it gracefully.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kinesis_consumer::{Batch, Consumer, Record};

const USAGE: &str = "usage: word_count --stream S --app A [--position trim-horizon|latest|<RFC 3339 time>] \
[--batch-interval-ms N (2000)] [--top N (10)] [--metrics-level none|summary|detailed (none)] [--metrics-addr [HOST:]PORT]";

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
            "metrics-addr",
        ],
        &[],
    );
    let position = support::position(args.get("position").unwrap_or("trim-horizon"))
        .unwrap_or_else(|e| support::fail(USAGE, &e));
    let top = args.number(USAGE, "top", 10) as usize;
    let (metrics_level, publish_metrics) =
        support::metrics_settings(args.get("metrics-level"), args.get("metrics-addr"))
            .unwrap_or_else(|e| support::fail(USAGE, &e));
    let consumer = Consumer::builder()
        .app_name(args.required(USAGE, "app"))
        .stream_name(args.required(USAGE, "stream"))
        .initial_position(position)
        .metrics_level(metrics_level)
        .publish_metrics(publish_metrics)
        .batch_interval(Duration::from_millis(args.number(
            USAGE,
            "batch-interval-ms",
            2000,
        )))
        // Split on the reader threads, so the batch handler only counts.
        .message_handler(words)
        .build()
        .unwrap_or_else(|e| support::fail(USAGE, &e.to_string()));
    support::stop_on_signals(consumer.shutdown_handle());
    let _endpoint = support::serve_metrics(&args, consumer.metrics());
    let result = consumer.run(|batch: Batch<Vec<String>>| {
        let words: Vec<String> = top_words(&batch, top)
            .iter()
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

/// The message handler: a record's words.
fn words(record: &Record) -> Vec<String> {
    String::from_utf8_lossy(record.data())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The `top` most frequent words of a batch with their counts, most
/// frequent first, ties in alphabetical order.
fn top_words(batch: &Batch<Vec<String>>, top: usize) -> Vec<(&str, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for message in batch.messages() {
        for word in message.value() {
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked.truncate(top);
    ranked
}

// Unit tests with the public test kit only (`kinesis_consumer::testing`):
// `cargo test --example word_count`.
#[cfg(test)]
mod tests {
    use super::*;
    use kinesis_consumer::testing::{BatchBuilder, BatchHarness, checkpoint_at, record};

    #[test]
    fn counts_the_words_of_every_record_of_every_shard() {
        let batch = BatchBuilder::new()
            .records_with(
                [
                    record("shardId-1", "1", "the cat and the hat"),
                    record("shardId-2", "1", "a cat"),
                ],
                words,
            )
            .build();
        assert_eq!(top_words(&batch, 2), [("cat", 2), ("the", 2)]);
        assert_eq!(top_words(&batch, 10).len(), 5);
    }

    #[test]
    fn each_batch_is_counted_alone_and_checkpointed_once_counted() {
        let mut harness = BatchHarness::with_message_handler(words);
        let batches = vec![
            harness.records("shardId-1", ["x y", "y"]),
            harness.records("shardId-1", ["z"]),
        ];
        let mut tops = Vec::new();
        harness
            .run(batches, |batch: Batch<Vec<String>>| {
                let top: Vec<(String, u64)> = top_words(&batch, 1)
                    .into_iter()
                    .map(|(w, c)| (w.to_owned(), c))
                    .collect();
                tops.push(top);
                Ok(())
            })
            .unwrap();
        // The last batch, at shutdown, has no records.
        assert_eq!(
            tops,
            [vec![("y".to_owned(), 2)], vec![("z".to_owned(), 1)], vec![]]
        );
        assert_eq!(harness.checkpoint("shardId-1"), Some(checkpoint_at("3", 0)));
    }
}
