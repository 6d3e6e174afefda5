//! Spark's Kinesis word producer: puts records of random words at a given
//! rate, then prints the totals.
//!
//! ```text
//! cargo run --example producer -- --stream S [--records-per-sec N] [--words-per-record W]
//!     [--duration-secs D] [--aggregate] [--create-shards N]
//! ```
//!
//! `--aggregate` packs the records into KPL aggregates (up to 1 MiB each), as
//! the Kinesis Producer Library does. `--create-shards N` creates the stream
//! with N shards when it does not exist. Endpoint, region and credentials
//! come from the standard AWS environment.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kinesis_consumer::aws::ClientConfig;
use kinesis_consumer::aws::kinesis::{KinesisClient, PutRecordsEntry};
use kinesis_consumer::kpl::Aggregator;

const USAGE: &str = "usage: producer --stream S [--records-per-sec N (100)] [--words-per-record W (10)] \
[--duration-secs D (10)] [--aggregate] [--create-shards N]";

const WORDS: &[&str] = &[
    "spark", "kinesis", "stream", "shard", "lease", "record", "batch", "window", "river", "delta",
    "ocean", "cloud", "rust", "thread", "queue", "signal",
];

/// A small xorshift generator: the words need not be unpredictable.
struct Words(u64);

impl Words {
    fn next(&mut self) -> &'static str {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        WORDS[(self.0 % WORDS.len() as u64) as usize]
    }
}

fn main() {
    support::init_logging();
    let args = support::Args::parse(
        USAGE,
        &[
            "stream",
            "records-per-sec",
            "words-per-record",
            "duration-secs",
            "create-shards",
        ],
        &["aggregate"],
    );
    let stream = args.required(USAGE, "stream");
    let rate = args.number(USAGE, "records-per-sec", 100).max(1);
    let words_per_record = args.number(USAGE, "words-per-record", 10).max(1);
    let duration = Duration::from_secs(args.number(USAGE, "duration-secs", 10));
    let kinesis = KinesisClient::new(&ClientConfig::new())
        .unwrap_or_else(|e| support::fail(USAGE, &e.to_string()));
    if let Some(shards) = args.get("create-shards") {
        let shards = shards
            .parse()
            .unwrap_or_else(|_| support::fail(USAGE, "--create-shards must be a number"));
        if let Err(e) = kinesis.describe_stream_summary(&stream) {
            if e.code() != Some("ResourceNotFoundException") {
                support::fail(USAGE, &e.to_string());
            }
            kinesis
                .create_stream(&stream, shards)
                .unwrap_or_else(|e| support::fail(USAGE, &e.to_string()));
        }
        kinesis
            .wait_until_active(&stream, Duration::from_secs(60))
            .unwrap_or_else(|e| support::fail(USAGE, &e.to_string()));
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        | 1;
    let mut words = Words(seed);
    let mut aggregator = args.flag("aggregate").then(Aggregator::new);
    let (mut records, mut word_count, mut puts, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let tick = Duration::from_millis(100);
    let mut next = started;
    while started.elapsed() < duration {
        // Each tick sends what the rate allows since the start.
        let due = (rate as f64 * started.elapsed().as_secs_f64()).ceil() as u64;
        let mut entries = Vec::new();
        while records < due {
            let text: Vec<&str> = (0..words_per_record).map(|_| words.next()).collect();
            let partition_key = format!("pk-{}", records % 64);
            records += 1;
            word_count += words_per_record;
            let data = text.join(" ").into_bytes();
            match &mut aggregator {
                None => entries.push(PutRecordsEntry {
                    partition_key,
                    explicit_hash_key: None,
                    data,
                }),
                Some(agg) => {
                    if let Some(full) = agg
                        .add(&partition_key, None, &data)
                        .expect("a record of words fits in 1 MiB")
                    {
                        entries.push(entry(full));
                    }
                }
            }
        }
        if let Some(agg) = &mut aggregator {
            entries.extend(agg.flush().map(entry));
        }
        for chunk in entries.chunks(500) {
            let (ok, bad) = put(&kinesis, &stream, chunk);
            puts += ok;
            failed += bad;
        }
        next += tick;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    println!(
        "put {records} records ({word_count} words) as {puts} Kinesis records in {:.1} s; {failed} Kinesis records failed",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

fn entry(a: kinesis_consumer::kpl::AggregatedRecord) -> PutRecordsEntry {
    PutRecordsEntry {
        partition_key: a.partition_key,
        explicit_hash_key: a.explicit_hash_key,
        data: a.data,
    }
}

/// Puts a chunk, retrying refused records a few times; (put, failed).
fn put(kinesis: &KinesisClient, stream: &str, entries: &[PutRecordsEntry]) -> (u64, u64) {
    let mut pending = entries.to_vec();
    let mut sent = 0;
    for attempt in 0..4 {
        if pending.is_empty() {
            break;
        }
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100 << attempt));
        }
        match kinesis.put_records(stream, &pending) {
            Ok(results) => {
                let refused: Vec<PutRecordsEntry> = pending
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_err())
                    .map(|(e, _)| e.clone())
                    .collect();
                sent += (pending.len() - refused.len()) as u64;
                pending = refused;
            }
            Err(e) => {
                eprintln!("error: PutRecords failed: {e}");
                if !e.is_retryable() {
                    std::process::exit(1);
                }
            }
        }
    }
    (sent, pending.len() as u64)
}
