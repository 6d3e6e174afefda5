//! Scale: 1, 10, 100 and 500 shards in one consumer process against the
//! canned server (idle time shortened to 100 ms, reads paced as against
//! Kinesis): aggregate records/s, CPU per million records, RSS, threads.
//! Then 500 idle shards: RSS and CPU when nothing arrives.
//!
//! Each level runs in a child process so /proc figures are its own; the
//! parent serves the canned stream and runs dynalite.
//!
//! Usage: scale [--seconds S] [--shards 1,10,100,500]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kinesis_consumer_bench::canned::CannedServer;
use kinesis_consumer_bench::{arg, consumer, emulators, flag, proc, rate, secs, spawn_consumer};

fn main() {
    if flag("--child") {
        return child();
    }
    let seconds: f64 = arg("--seconds", 8.0);
    let levels: String = arg("--shards", "1,10,100,500".to_string());
    let (records, size) = (1000usize, 100usize);
    let dynamo = emulators::dynalite();
    println!(
        "# scale: {records} records x {size} B per GetRecords, idle time 100 ms, batch interval 200 ms, buffer_records 1M, reads paced (5/s/shard), {seconds} s per level"
    );
    for shards in levels.split(',').map(|s| s.parse::<usize>().unwrap()) {
        let server = CannedServer::start(shards, records, size);
        run_child(&server.url, &dynamo.url, shards, seconds, false);
    }
    let server = CannedServer::start(500, records, size);
    server.set_empty(true);
    run_child(&server.url, &dynamo.url, 500, seconds, true);
}

fn run_child(kinesis: &str, dynamodb: &str, shards: usize, seconds: f64, idle: bool) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--child", "--kinesis", kinesis, "--dynamodb", dynamodb])
        .args([
            "--shards",
            &shards.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]);
    if idle {
        cmd.arg("--idle");
    }
    let out = cmd.output().expect("run a scale level");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        println!("shards={shards}: FAILED ({})", out.status);
    }
}

fn child() {
    let kinesis: String = arg("--kinesis", String::new());
    let dynamodb: String = arg("--dynamodb", String::new());
    let shards: usize = arg("--shards", 1);
    let seconds: f64 = arg("--seconds", 8.0);
    let idle = flag("--idle");
    let built = consumer(&kinesis, &dynamodb, "bench")
        .idle_time_between_reads(Duration::from_millis(100))
        // 200 ms batches and room for 1M records: the default 100,000-record
        // bound with 1 s batches would cap the whole process at 100k/s.
        .batch_interval(Duration::from_millis(200))
        .buffer_records(1_000_000)
        .message_handler(|r| r.data().len() as u64)
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let shards_seen = Arc::new(AtomicU64::new(0));
    let (c, s) = (count.clone(), shards_seen.clone());
    let mut seen = std::collections::HashSet::new();
    let (stop, thread) = spawn_consumer(built, move |batch| {
        let mut sum = 0u64;
        for m in batch.messages() {
            sum += *m.value();
        }
        assert!(sum > 0 || batch.is_empty());
        for sb in batch.shards() {
            seen.insert(sb.shard_id().to_owned());
        }
        s.store(seen.len() as u64, Ordering::Relaxed);
        c.fetch_add(batch.len() as u64, Ordering::Relaxed);
    });
    // Wait until every shard has a reader (and, when busy, has delivered).
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        let ready = if idle {
            proc::threads() as usize >= shards + 2
        } else {
            shards_seen.load(Ordering::Relaxed) as usize >= shards
        };
        if ready {
            break;
        }
        if Instant::now() > deadline {
            println!("shards={shards}: not all shards read after 90 s");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ramp = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (n0, cpu0, t0) = (
        count.load(Ordering::Relaxed),
        proc::cpu_seconds(),
        Instant::now(),
    );
    std::thread::sleep(secs(seconds));
    let (n1, cpu1, elapsed) = (
        count.load(Ordering::Relaxed),
        proc::cpu_seconds(),
        t0.elapsed().as_secs_f64(),
    );
    let (rss, hwm, threads) = (proc::rss_mib(), proc::peak_rss_mib(), proc::threads());
    stop.shutdown();
    let _ = thread.join();
    let records = (n1 - n0) as f64;
    let cpu = cpu1 - cpu0;
    if idle {
        println!(
            "shards={shards} IDLE: RSS {rss:.1} MiB (peak {hwm:.1} MiB), {threads} threads, CPU {:.1}% of one core, all readers up after {ramp:.1} s",
            cpu / elapsed * 100.0
        );
    } else {
        println!(
            "shards={shards}: {} records/s, CPU {:.2} s per million records ({:.0}% of one core), RSS {rss:.1} MiB (peak {hwm:.1} MiB), {threads} threads, all shards delivering after {ramp:.1} s",
            rate(records / elapsed),
            if records > 0.0 {
                cpu / records * 1e6
            } else {
                f64::NAN
            },
            cpu / elapsed * 100.0
        );
    }
}
