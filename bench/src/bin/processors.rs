//! The two processing doors with a handler that waits per record (an
//! I/O-bound sink): the batch API (one handler thread for every shard)
//! against per-shard processors (`run_processors`, one thread per shard),
//! same backlog server, same run, at 1, 2, 4 and 8 shards.
//!
//! Usage: processors [--records-per-shard N (2000)] [--wait-us W (200)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kinesis_consumer::{Checkpointer, HandlerResult, Payload, ShardBatch, ShardProcessor};
use kinesis_consumer_bench::backlog::BacklogServer;
use kinesis_consumer_bench::{arg, consumer, emulators, rate};

/// Longest a drain may take before the run is reported as unfinished.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

struct Waiting {
    wait: Duration,
    done: Arc<AtomicU64>,
}

impl ShardProcessor<Payload> for Waiting {
    fn process(&mut self, records: ShardBatch<Payload>, _: &Checkpointer) -> HandlerResult {
        for _ in records.messages() {
            std::thread::sleep(self.wait);
        }
        let n = records.messages().len() as u64;
        self.done.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// Drains `shards` x `per_shard` records; returns records per second.
fn drain(dynamodb: &str, shards: usize, per_shard: u64, wait: Duration, processors: bool) -> f64 {
    let server = BacklogServer::start(shards, 100);
    let built = consumer(&server.url, dynamodb, "bench")
        .batch_interval(Duration::from_millis(100))
        .idle_time_between_reads(Duration::from_millis(50))
        .pace_reads(false)
        .build()
        .unwrap();
    let stop = built.shutdown_handle();
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let thread = std::thread::spawn(move || {
        if processors {
            built.run_processors(move |_| Waiting {
                wait,
                done: counter.clone(),
            })
        } else {
            built.run(move |batch| {
                for _ in batch.messages() {
                    std::thread::sleep(wait);
                }
                counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            })
        }
    });
    // Let every shard's lease be taken and its reader start first.
    std::thread::sleep(Duration::from_secs(1));
    let total = per_shard * shards as u64;
    let started = Instant::now();
    server.fill(per_shard);
    while done.load(Ordering::Relaxed) < total && started.elapsed() < DRAIN_LIMIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let drained = done.load(Ordering::Relaxed);
    stop.shutdown();
    thread.join().unwrap().unwrap();
    if drained < total {
        println!("  (unfinished: {drained} of {total} in {elapsed:.1} s)");
    }
    drained as f64 / elapsed
}

fn main() {
    let per_shard: u64 = arg("--records-per-shard", 2000);
    let wait_us: u64 = arg("--wait-us", 200);
    let wait = Duration::from_micros(wait_us);
    let dynamo = emulators::dynalite();
    println!(
        "# processors: a handler that sleeps {wait_us} us per record; {per_shard} records per shard made available at once"
    );
    println!("| shards | batch API (1 thread) | run_processors | ratio |");
    println!("|---|---|---|---|");
    for shards in [1usize, 2, 4, 8] {
        let batch = drain(&dynamo.url, shards, per_shard, wait, false);
        let processors = drain(&dynamo.url, shards, per_shard, wait, true);
        println!(
            "| {shards} | {} records/s | {} records/s | {:.2}x |",
            rate(batch),
            rate(processors),
            processors / batch
        );
    }
}
