//! Memory under pressure: 200 shards at full rate (1,000 x 1 KiB records
//! per read, reads paced as against Kinesis) and a slow batch handler.
//! Peak RSS against the configured buffer bound.
//!
//! Usage: pressure [--seconds S] [--buffer-mib M]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kinesis_consumer_bench::canned::CannedServer;
use kinesis_consumer_bench::{arg, consumer, emulators, flag, proc, rate, secs, spawn_consumer};

fn main() {
    let seconds: f64 = arg("--seconds", 15.0);
    let buffer_mib: u64 = arg("--buffer-mib", 64);
    let shards: usize = arg("--shards", 200);
    if flag("--child") {
        return child(shards, seconds, buffer_mib);
    }
    let dynamo = emulators::dynalite();
    let server = CannedServer::start(shards, 1000, 1024);
    println!(
        "# pressure: {shards} shards, 1000 x 1 KiB records per read, batch handler sleeping 1.5 s per 1 s batch, buffer_bytes {buffer_mib} MiB (read_memory default: 8 MiB), {seconds} s"
    );
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--child",
            "--kinesis",
            &server.url,
            "--dynamodb",
            &dynamo.url,
        ])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--buffer-mib",
            &buffer_mib.to_string(),
        ])
        .args(["--shards", &shards.to_string()])
        .output()
        .expect("run the pressure child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        println!("FAILED ({})", out.status);
    }
}

fn child(_shards: usize, seconds: f64, buffer_mib: u64) {
    let kinesis: String = arg("--kinesis", String::new());
    let dynamodb: String = arg("--dynamodb", String::new());
    let built = consumer(&kinesis, &dynamodb, "bench")
        .idle_time_between_reads(Duration::from_millis(100))
        .buffer_bytes(buffer_mib * 1024 * 1024)
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let max_batch = Arc::new(AtomicU64::new(0));
    let (c, mb) = (count.clone(), max_batch.clone());
    let (stop, thread) = spawn_consumer(built, move |batch| {
        let bytes: usize = batch.messages().map(|m| m.value().len()).sum();
        mb.fetch_max(bytes as u64, Ordering::Relaxed);
        c.fetch_add(batch.len() as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1500));
    });
    let started = Instant::now();
    let mut peak_sampled = 0f64;
    while started.elapsed() < secs(seconds) {
        std::thread::sleep(Duration::from_millis(100));
        peak_sampled = peak_sampled.max(proc::rss_mib());
    }
    let (hwm, threads) = (proc::peak_rss_mib(), proc::threads());
    let elapsed = started.elapsed().as_secs_f64();
    stop.shutdown();
    let _ = thread.join();
    let bound = buffer_mib as f64 + 64.0;
    println!(
        "peak RSS {hwm:.1} MiB (VmHWM; sampled max {peak_sampled:.1} MiB) vs buffer bound {buffer_mib} MiB + 64 MiB = {bound:.0} MiB: {}",
        if hwm <= bound { "within" } else { "OVER" }
    );
    println!(
        "largest batch {:.1} MiB of data; delivered {} records/s under the slow handler; {threads} threads",
        max_batch.load(Ordering::Relaxed) as f64 / 1048576.0,
        rate(count.load(Ordering::Relaxed) as f64 / elapsed)
    );
}
