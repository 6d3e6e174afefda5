//! The metrics endpoint's overhead (issue 29): records/s of the full
//! consumer path on a canned stream with the endpoint off, and with it on
//! and scraped every second (`/metrics` and `/status.json`, as Prometheus
//! and a person with the status page open would), same run, interleaved
//! rounds, best of each kept. Both modes record at the detailed level.
//!
//! Usage: observe [--shards N (4)] [--seconds S (3)] [--rounds R (3)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kinesis_consumer::MetricsLevel;
use kinesis_consumer_bench::canned::CannedServer;
use kinesis_consumer_bench::{arg, consumer, emulators, rate, secs, spawn_consumer};

/// One GET; the reply's size in bytes.
fn get(addr: SocketAddr, path: &str) -> usize {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{path} did not answer 200"
    );
    reply.len()
}

struct Round {
    records_per_second: f64,
    /// Scrape times (both paths), milliseconds.
    scrapes_ms: Vec<f64>,
    metrics_bytes: usize,
}

fn round(url: &str, dynamodb: &str, seconds: f64, endpoint: bool) -> Round {
    let built = consumer(url, dynamodb, "bench")
        .batch_interval(Duration::from_millis(50))
        .buffer_records(1_000_000)
        .idle_time_between_reads(Duration::from_millis(10))
        .pace_reads(false)
        .metrics_level(MetricsLevel::Detailed)
        .publish_metrics(false)
        .build()
        .unwrap();
    let server = endpoint.then(|| built.metrics().serve("0").unwrap());
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let (stop, thread) = spawn_consumer(built, move |batch| {
        c.fetch_add(batch.len() as u64, Ordering::Relaxed);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no records arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = server.as_ref().map(|s| {
        let (addr, scraping) = (s.local_addr(), scraping.clone());
        std::thread::spawn(move || {
            let (mut times, mut bytes) = (Vec::new(), 0);
            while scraping.load(Ordering::Relaxed) {
                let started = Instant::now();
                bytes = get(addr, "/metrics");
                get(addr, "/status.json");
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
            (times, bytes)
        })
    });
    let (start_count, started) = (count.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(secs(seconds));
    let (end_count, elapsed) = (count.load(Ordering::Relaxed), started.elapsed());
    scraping.store(false, Ordering::Relaxed);
    let (scrapes_ms, metrics_bytes) = scraper.map_or((Vec::new(), 0), |t| t.join().unwrap());
    stop.shutdown();
    thread.join().unwrap().unwrap();
    drop(server);
    Round {
        records_per_second: (end_count - start_count) as f64 / elapsed.as_secs_f64(),
        scrapes_ms,
        metrics_bytes,
    }
}

fn main() {
    let shards: usize = arg("--shards", 4);
    let seconds: f64 = arg("--seconds", 3.0);
    let rounds: usize = arg("--rounds", 3);
    let dynamo = emulators::dynalite();
    let server = CannedServer::start(shards, 1000, 100);
    println!(
        "# observe: endpoint off against on and scraped every second (/metrics + /status.json); \
         {shards} shards of canned 1,000 x 100 B reads, detailed metrics, {rounds} interleaved rounds of {seconds} s"
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut scrapes = Vec::new();
    let mut metrics_bytes = 0;
    for _ in 0..rounds {
        off.push(round(&server.url, &dynamo.url, seconds, false).records_per_second);
        let r = round(&server.url, &dynamo.url, seconds, true);
        on.push(r.records_per_second);
        scrapes.extend(r.scrapes_ms);
        metrics_bytes = r.metrics_bytes;
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let list = |v: &[f64]| v.iter().map(|r| rate(*r)).collect::<Vec<_>>().join(", ");
    println!("| endpoint | best records/s | rounds |");
    println!("|---|---|---|");
    println!("| off | {} | {} |", rate(best(&off)), list(&off));
    println!(
        "| on, scraped every 1 s | {} | {} |",
        rate(best(&on)),
        list(&on)
    );
    println!("on / off (best): {:.3}", best(&on) / best(&off));
    scrapes.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (scrapes.first(), scrapes.last()) {
        println!(
            "scrapes: {}, /metrics + /status.json took {first:.2}-{last:.2} ms (median {:.2}); /metrics reply {metrics_bytes} B",
            scrapes.len(),
            scrapes[scrapes.len() / 2]
        );
    }
}
