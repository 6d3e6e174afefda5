//! Prints every record of a stream as one JSON object per line, like
//! `tail -f`, checkpointing in the lease table of `--app`.
//!
//! ```text
//! cargo run --example tail -- (--stream S | --stream-arn ARN)... --app A [--position trim-horizon|latest|<RFC 3339 time>]
//!     [--batch-interval-ms N] [--worker-id ID] [--metrics-level none|summary|detailed (none)] [--metrics-addr [HOST:]PORT]
//!     [--enhanced-fan-out CONSUMER_NAME] [--processors] [--coordination workers-row|leader (leader)] [--balance-by load|lease-count (load)]
//! ```
//!
//! Endpoints, region and credentials come from the standard AWS environment
//! (AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL_DYNAMODB, AWS_REGION,
//! AWS_PROFILE with any profile shape: keys, roles, SSO, credential_process);
//! `--stream-arn` reads a stream by ARN (another account's, through its
//! resource policy), in the ARN's region. Both may be given more than once
//! (and together): the streams are then read by one consumer in the KCL 3's
//! multi-stream lease layout (see docs/multi-stream.md). Each JSON line
//! names its `stream`;
//! metrics go to CloudWatch (namespace: the application name) at the
//! standard endpoint or AWS_ENDPOINT_URL_CLOUDWATCH.
//! SIGINT or SIGTERM stops it gracefully (exit 0); a failure, such as a last
//! checkpoint that could not be written, exits 1 saying so.
//!
//! `--processors` prints through one `ShardProcessor` per shard
//! (`Consumer::run_processors`, the KCL's model) instead of one batch
//! handler: the same lines, each shard's in order, printed before they are
//! checkpointed. `--balance-by` says what the leader of a leader-run
//! fleet evens out (`ConsumerBuilder::balance_by`).

mod support;

use std::io::Write;
use std::time::Duration;

use kinesis_consumer::{
    BalanceBy, Batch, Checkpointer, Consumer, Coordination, HandlerResult, Message, ShardBatch,
    ShardProcessor,
};

const USAGE: &str = "usage: tail (--stream S | --stream-arn ARN)... --app A [--position trim-horizon|latest|<RFC 3339 time>] \
[--batch-interval-ms N] [--worker-id ID] [--metrics-level none|summary|detailed (none)] [--metrics-addr [HOST:]PORT] \
[--enhanced-fan-out CONSUMER_NAME] [--processors] [--coordination workers-row|leader (leader)] [--balance-by load|lease-count (load)]";

fn main() {
    support::init_logging();
    let args = support::Args::parse_repeating(
        USAGE,
        &[
            "app",
            "position",
            "batch-interval-ms",
            "worker-id",
            "metrics-level",
            "metrics-addr",
            "enhanced-fan-out",
            "coordination",
            "balance-by",
        ],
        &["stream", "stream-arn"],
        &["processors"],
    );
    let position = support::position(args.get("position").unwrap_or("latest"))
        .unwrap_or_else(|e| support::fail(USAGE, &e));
    let (metrics_level, publish_metrics) =
        support::metrics_settings(args.get("metrics-level"), args.get("metrics-addr"))
            .unwrap_or_else(|e| support::fail(USAGE, &e));
    let mut builder = Consumer::builder()
        .app_name(args.required(USAGE, "app"))
        .initial_position(position)
        .metrics_level(metrics_level)
        .publish_metrics(publish_metrics)
        .batch_interval(Duration::from_millis(args.number(
            USAGE,
            "batch-interval-ms",
            1000,
        )))
        .message_handler(support::record_json);
    let streams: Vec<&str> = args
        .all("stream")
        .into_iter()
        .chain(args.all("stream-arn"))
        .collect();
    builder = match (&streams[..], args.get("stream-arn")) {
        ([], _) => support::fail(USAGE, "--stream or --stream-arn is required"),
        ([arn], Some(_)) => builder.stream_arn(*arn).message_handler(in_stream(arn)),
        ([name], None) => builder.stream_name(*name).message_handler(in_stream(name)),
        (several, _) => builder.streams(several.iter().copied()),
    };
    if let Some(id) = args.get("worker-id") {
        builder = builder.worker_id(id);
    }
    if let Some(name) = args.get("enhanced-fan-out") {
        builder = builder.enhanced_fan_out(name);
    }
    builder = match args.get("coordination") {
        Some("workers-row") => builder.coordination(Coordination::WorkersRow),
        None | Some("leader") => builder.coordination(Coordination::Leader),
        Some(other) => support::fail(
            USAGE,
            &format!("--coordination {other}: use workers-row or leader"),
        ),
    };
    builder = match args.get("balance-by") {
        None | Some("load") => builder.balance_by(BalanceBy::Load),
        Some("lease-count") => builder.balance_by(BalanceBy::LeaseCount),
        Some(other) => support::fail(
            USAGE,
            &format!("--balance-by {other}: use load or lease-count"),
        ),
    };
    let consumer = builder.build().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    support::stop_on_signals(consumer.shutdown_handle());
    let _endpoint = support::serve_metrics(&args, consumer.metrics());
    let result = if args.flag("processors") {
        consumer.run_processors(|_shard_id: &str| Printer)
    } else {
        consumer.run(|batch: Batch<String>| print(batch.messages()))
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The JSON line of a single-stream consumer's record, naming `stream`
/// (its name, or the end of its ARN).
fn in_stream(stream: &str) -> impl Fn(&kinesis_consumer::Record) -> String + Send + Sync + 'static {
    let name = stream.rsplit('/').next().unwrap_or(stream).to_owned();
    move |r| support::record_json_in(r, Some(&name))
}

/// Prints `messages`, one JSON line each, and flushes: printed before they
/// are checkpointed, so nothing acknowledged is unprinted.
fn print<'a>(messages: impl Iterator<Item = &'a Message<String>>) -> HandlerResult {
    let mut out = std::io::stdout().lock();
    for message in messages {
        writeln!(out, "{}", message.value())?;
    }
    out.flush()?;
    Ok(())
}

/// One shard's printer (`--processors`); checkpoints are automatic.
struct Printer;

impl ShardProcessor<String> for Printer {
    fn process(&mut self, records: ShardBatch<String>, _: &Checkpointer) -> HandlerResult {
        print(records.messages().iter())
    }
}
