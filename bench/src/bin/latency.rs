//! End-to-end latency, put -> batch handler, against kinesalite, for batch
//! intervals of 200 ms and 1 s (idle time between reads at its default,
//! 1 s). A producer puts 20 records per second, each carrying the time it
//! was put; the handler measures how long ago that was.
//!
//! Usage: latency [--seconds S]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kinesis_consumer::aws::kinesis::KinesisClient;
use kinesis_consumer_bench::{
    arg, client_config, consumer, emulators, secs, spawn_consumer, unique,
};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn main() {
    let seconds: f64 = arg("--seconds", 15.0);
    let kinesis_emu = emulators::kinesalite();
    let dynamo = emulators::dynalite();
    let kinesis = KinesisClient::new(&client_config(&kinesis_emu.url)).unwrap();
    let idle = Duration::from_secs(1);
    println!(
        "# latency put -> handler: kinesalite, 1 shard, 20 puts/s for {seconds} s, idle time between reads {} ms (default)",
        idle.as_millis()
    );
    for batch_ms in [200u64, 1000] {
        let stream = unique("latency");
        kinesis.create_stream(&stream, 1).unwrap();
        kinesis
            .wait_until_active(&stream, Duration::from_secs(30))
            .unwrap();
        let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
        let l = latencies.clone();
        let built = consumer(&kinesis_emu.url, &dynamo.url, &stream)
            .batch_interval(Duration::from_millis(batch_ms))
            .idle_time_between_reads(idle)
            .build()
            .unwrap();
        let (stop, thread) = spawn_consumer(built, move |batch| {
            let now = now_micros();
            let mut l = l.lock().unwrap();
            for m in batch.messages() {
                let sent: u64 = std::str::from_utf8(m.value()).unwrap().parse().unwrap();
                l.push(now.saturating_sub(sent));
            }
        });
        // Let the consumer take its lease and start reading.
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
        // Let the last records arrive.
        std::thread::sleep(Duration::from_millis(batch_ms) + idle + Duration::from_secs(1));
        stop.shutdown();
        thread.join().unwrap().unwrap();
        let mut l = latencies.lock().unwrap().clone();
        l.sort_unstable();
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
        let bound = batch_ms as f64 + idle.as_millis() as f64 + 100.0;
        println!(
            "batch interval {batch_ms} ms: {} of {puts} records delivered; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 <= {bound:.0} ms: {})",
            l.len(),
            pct(0.50),
            pct(0.99),
            pct(1.0),
            if pct(0.99) <= bound { "met" } else { "MISSED" }
        );
    }
}
