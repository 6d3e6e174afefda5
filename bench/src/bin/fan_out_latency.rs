//! End-to-end latency, put -> batch handler, with enhanced fan-out against
//! polling, on kinesis-local (kinesalite has no SubscribeToShard), for
//! batch intervals of 200 ms and 1 s. Three readers take the same puts at
//! the same time: a polling consumer (idle time between reads 1 s, the
//! default), a fan-out consumer, and a bare `Subscription` with no
//! consumer around it (put -> event: the emulator's own share). A producer
//! puts 20 records per second, each carrying the time it was put.
//!
//! Usage: fan_out_latency [--seconds S]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kinesis_consumer::aws::fan_out::Polled;
use kinesis_consumer::aws::kinesis::{IteratorPosition, KinesisClient};
use kinesis_consumer_bench::{
    arg, client_config, consumer, emulators, secs, spawn_consumer, unique,
};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// What one reader saw: whether any record arrived (warm-up records
/// included) and, per timed record, microseconds from put to the handler
/// and from the shard reader (the message handler, run as the reader maps
/// each record) to the handler.
#[derive(Default)]
struct Seen {
    any: bool,
    /// Events with timed records (bare subscription only).
    events: usize,
    total: Vec<u64>,
    after_reader: Vec<u64>,
}

type Sink = Arc<Mutex<Seen>>;

/// The put time a record carries (warm-up records carry none).
fn put_time(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn record(sink: &Sink, now: u64, sent: Option<u64>, at_reader: u64) {
    let mut s = sink.lock().unwrap();
    s.any = true;
    if let Some(sent) = sent {
        s.total.push(now.saturating_sub(sent));
        s.after_reader.push(now.saturating_sub(at_reader));
    }
}

/// Reads the stream's only shard through a bare subscription until `stop`,
/// subscribing again after the last continuation if the stream ends.
fn raw_subscriber(
    kinesis: KinesisClient,
    stream: String,
    sink: Sink,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let arn = kinesis.describe_stream_summary(&stream).unwrap().stream_arn;
        let consumer = kinesis
            .ensure_stream_consumer(&arn, &unique("raw"), Duration::from_secs(30))
            .unwrap();
        let shard = kinesis
            .list_shards(&stream, None)
            .unwrap()
            .remove(0)
            .shard_id;
        let mut position = IteratorPosition::TrimHorizon;
        while !stop.load(Ordering::Relaxed) {
            let mut sub =
                match kinesis.subscribe_to_shard(&consumer.consumer_arn, &shard, &position) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("raw subscription: {e}; again in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
            while !stop.load(Ordering::Relaxed) {
                match sub.poll(Duration::from_millis(100)) {
                    Ok(Polled::Event(event)) => {
                        let now = now_micros();
                        if event.records.iter().any(|r| put_time(r.data()).is_some()) {
                            sink.lock().unwrap().events += 1;
                        }
                        for r in &event.records {
                            record(&sink, now, put_time(r.data()), now);
                        }
                    }
                    Ok(Polled::Idle) => {}
                    Ok(Polled::Ended) => break,
                    Err(e) => {
                        eprintln!("raw subscription: {e}");
                        break;
                    }
                }
            }
            if let Some(seq) = sub.continuation_sequence_number() {
                position = IteratorPosition::AfterSequenceNumber(seq.clone());
            }
        }
    })
}

/// Count, p50, p99 and max in milliseconds.
fn percentiles(mut l: Vec<u64>) -> (usize, f64, f64, f64) {
    assert!(!l.is_empty(), "no timed record arrived");
    l.sort_unstable();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
    (l.len(), pct(0.50), pct(0.99), pct(1.0))
}

fn main() {
    let seconds: f64 = arg("--seconds", 15.0);
    let kinesis_emu = emulators::kinesis_local();
    let dynamo = emulators::dynalite();
    let kinesis = KinesisClient::new(&client_config(&kinesis_emu.url)).unwrap();
    let idle = Duration::from_secs(1);
    println!(
        "# latency put -> handler, fan-out vs polling: kinesis-local, 1 shard, 20 puts/s for {seconds} s, polling idle time between reads {} ms (default); the three readers take the same puts at once",
        idle.as_millis()
    );
    for batch_ms in [200u64, 1000] {
        let batch = Duration::from_millis(batch_ms);
        let stream = unique("latency");
        kinesis.create_stream(&stream, 1).unwrap();
        kinesis
            .wait_until_active(&stream, Duration::from_secs(30))
            .unwrap();
        let (polling, fan_out, raw): (Sink, Sink, Sink) = Default::default();
        let mut consumers = Vec::new();
        for (sink, efo) in [(polling.clone(), false), (fan_out.clone(), true)] {
            let mut builder = consumer(&kinesis_emu.url, &dynamo.url, &stream)
                .batch_interval(batch)
                .idle_time_between_reads(idle);
            if efo {
                builder = builder.enhanced_fan_out(unique("efo"));
            }
            // The message handler runs on the shard reader as it maps each
            // record: the time records reached the consumer's reader.
            let built = builder
                .message_handler(|r| (put_time(r.data()), now_micros()))
                .build()
                .unwrap();
            consumers.push(spawn_consumer(built, move |b| {
                let now = now_micros();
                for m in b.messages() {
                    let (sent, at_reader) = *m.value();
                    record(&sink, now, sent, at_reader);
                }
            }));
        }
        let stop_raw = Arc::new(AtomicBool::new(false));
        let raw_thread = raw_subscriber(
            KinesisClient::new(&client_config(&kinesis_emu.url)).unwrap(),
            stream.clone(),
            raw.clone(),
            stop_raw.clone(),
        );
        // Until every reader has delivered a record: leases taken,
        // consumers registered, subscriptions open.
        let warm = Instant::now();
        while ![&polling, &fan_out, &raw]
            .iter()
            .all(|s| s.lock().unwrap().any)
        {
            assert!(
                warm.elapsed() < Duration::from_secs(60),
                "the readers did not start"
            );
            kinesis.put_record(&stream, "warm", None, b"warm").unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
        let warm_up = warm.elapsed();
        // Let the warm-up records drain before timing.
        std::thread::sleep(Duration::from_secs(3));
        let started = Instant::now();
        let mut puts = 0u64;
        while started.elapsed() < secs(seconds) {
            let t = now_micros();
            kinesis
                .put_record(
                    &stream,
                    &format!("pk{puts}"),
                    None,
                    t.to_string().as_bytes(),
                )
                .unwrap();
            puts += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the last records arrive (kinesis-local holds fan-out events
        // about 2 s).
        std::thread::sleep(batch + idle + Duration::from_secs(4));
        stop_raw.store(true, Ordering::Relaxed);
        for (stop, thread) in consumers {
            stop.shutdown();
            thread.join().unwrap().unwrap();
        }
        raw_thread.join().unwrap();
        println!(
            "\n## batch interval {batch_ms} ms ({puts} puts; readers ready after {:.1} s of warm-up)",
            warm_up.as_secs_f64()
        );
        let target_polling = (batch + idle).as_millis() as f64 + 100.0;
        let target_fan_out = batch.as_millis() as f64 + 150.0;
        for (name, sink, target) in [
            ("polling consumer", &polling, Some(target_polling)),
            ("fan-out consumer", &fan_out, Some(target_fan_out)),
            ("bare subscription, put -> event", &raw, None),
        ] {
            let seen = sink.lock().unwrap();
            let (n, p50, p99, max) = percentiles(seen.total.clone());
            let verdict = match target {
                Some(t) => format!(
                    " (target p99 <= {t:.0} ms: {})",
                    if p99 <= t { "met" } else { "MISSED" }
                ),
                None => String::new(),
            };
            println!(
                "{name}: {n} of {puts} delivered; put -> handler p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms{verdict}"
            );
            if target.is_none() {
                println!(
                    "  in {} events with timed records, {:.1} records per event",
                    seen.events,
                    n as f64 / seen.events.max(1) as f64
                );
            } else {
                let (_, p50, p99, max) = percentiles(seen.after_reader.clone());
                println!(
                    "  of which shard reader -> handler: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"
                );
            }
        }
    }
}
