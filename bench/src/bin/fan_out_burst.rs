//! Burst through enhanced fan-out on kinesis-local: a stream whose every
//! shard holds a backlog of 1 KiB records, read from its trim horizon by a
//! consumer whose batch handler is slow enough that the buffer fills (900
//! ms per 1 s batch) and whose `read_memory` holds fewer 4 MiB stream
//! windows than there are shards (subscriptions take turns). Peak RSS
//! (VmHWM) against `buffer_bytes` + `read_memory` + the RSS of the same
//! consumer idle over an empty stream of as many shards, plus a stated
//! slack. (kinesis-local takes about 2.5 ms per record put, so the
//! backlog is put before the consumer starts, not while it is idle.)
//!
//! Each consumer runs in a child process so /proc figures are its own,
//! with `MALLOC_TRIM_THRESHOLD_=131072` (glibc gives freed memory back, so
//! RSS shows what the consumer holds); the parent runs the emulators and
//! puts.
//!
//! Usage: fan_out_burst [--shards N] [--records R] [--buffer-mib M]
//!                      [--read-memory-mib M] [--handler-ms MS]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kinesis_consumer::aws::kinesis::{KinesisClient, PutRecordsEntry};
use kinesis_consumer_bench::{
    arg, client_config, consumer, emulators, flag, proc, spawn_consumer, unique,
};

/// The most the burst may take to be consumed before the child gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);

/// What the consumer holds outside the two budgets, stated: allocator
/// slack (as in the polling burst) and, per open subscription, what
/// `read_memory` does not count (the part of an event taken out while the
/// rest arrives, and the connection's read buffer); kinesis-local's
/// events stay under 2 MiB.
const SLACK_MIB: f64 = 4.0;
const PER_SUBSCRIPTION_SLACK_MIB: f64 = 2.0;

const RECORD_BYTES: usize = 1024;

fn main() {
    let shards: u32 = arg("--shards", 16);
    let records: u64 = arg("--records", 1_000);
    let buffer_mib: u64 = arg("--buffer-mib", 8);
    let read_memory_mib: u64 = arg("--read-memory-mib", 16);
    let handler_ms: u64 = arg("--handler-ms", 900);
    if flag("--idle") || flag("--burst") {
        return child(shards, records, buffer_mib, read_memory_mib, handler_ms);
    }
    let kinesis_emu = emulators::kinesis_local();
    let dynamo = emulators::dynalite();
    let kinesis = KinesisClient::new(&client_config(&kinesis_emu.url)).unwrap();
    let (empty, full) = (unique("fan-out-idle"), unique("fan-out-burst"));
    for stream in [&empty, &full] {
        kinesis.create_stream(stream, shards).unwrap();
        kinesis
            .wait_until_active(stream, Duration::from_secs(60))
            .unwrap();
    }
    println!(
        "# fan-out burst: kinesis-local, {shards} shards holding about {records} x {RECORD_BYTES} B ({:.1} MiB) each, read from the trim horizon; buffer_bytes {buffer_mib} MiB, read_memory {read_memory_mib} MiB ({} stream windows of 4 MiB), batch handler sleeping {handler_ms} ms per 1 s batch; malloc: MALLOC_TRIM_THRESHOLD_=131072",
        (records * RECORD_BYTES as u64) as f64 / 1048576.0,
        read_memory_mib / 4
    );
    let run = |mode: &str, stream: &str, idle_rss: f64| {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                mode,
                "--kinesis",
                &kinesis_emu.url,
                "--dynamodb",
                &dynamo.url,
            ])
            .args(["--stream", stream, "--idle-rss", &idle_rss.to_string()])
            .args(["--shards", &shards.to_string()])
            .args(["--records", &records.to_string()])
            .args(["--buffer-mib", &buffer_mib.to_string()])
            .args(["--read-memory-mib", &read_memory_mib.to_string()])
            .args(["--handler-ms", &handler_ms.to_string()])
            .args(std::env::args().filter(|a| a == "--log" || a == "--debug"))
            .env("MALLOC_TRIM_THRESHOLD_", "131072")
            .stderr(Stdio::inherit())
            .output()
            .expect("run a child consumer");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{text}");
        if !output.status.success() {
            println!("FAILED ({})", output.status);
        }
        text
    };
    // The idle consumer's RSS: every shard subscribed, nothing to read.
    let idle = run("--idle", &empty, 0.0);
    let idle_rss: f64 = idle
        .split("RSS ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let put_at = Instant::now();
    let total = u64::from(shards) * records;
    let data = vec![b'x'; RECORD_BYTES];
    let mut put = 0u64;
    while put < total {
        let n = (total - put).min(500);
        let entries: Vec<PutRecordsEntry> = (put..put + n)
            .map(|i| PutRecordsEntry {
                partition_key: format!("key-{i}"),
                explicit_hash_key: None,
                data: data.clone(),
            })
            .collect();
        let refused = kinesis
            .put_records(&full, &entries)
            .unwrap()
            .iter()
            .filter(|r| r.is_err())
            .count();
        put += n - refused as u64;
    }
    println!(
        "put {put} records in {:.1} s",
        put_at.elapsed().as_secs_f64()
    );
    run("--burst", &full, idle_rss);
}

fn child(shards: u32, records: u64, buffer_mib: u64, read_memory_mib: u64, handler_ms: u64) {
    let kinesis: String = arg("--kinesis", String::new());
    let dynamodb: String = arg("--dynamodb", String::new());
    let stream: String = arg("--stream", String::new());
    if flag("--log") {
        kinesis_consumer_bench::log_to_stderr(flag("--debug"));
    }
    let built = consumer(&kinesis, &dynamodb, &stream)
        .enhanced_fan_out(unique("burst"))
        .buffer_bytes(buffer_mib * 1024 * 1024)
        .read_memory(read_memory_mib * 1024 * 1024)
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let (stop, thread) = spawn_consumer(built, move |batch| {
        let mut sum = 0u64;
        for m in batch.messages() {
            // Touch the data, as a real handler would.
            sum = sum.wrapping_add(m.value().iter().map(|&b| b as u64).sum::<u64>());
        }
        std::hint::black_box(sum);
        c.fetch_add(batch.len() as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(handler_ms));
    });
    if flag("--idle") {
        // Leases taken and subscriptions open.
        std::thread::sleep(Duration::from_secs(15));
        let (rss, threads) = (proc::rss_mib(), proc::threads());
        println!("idle: RSS {rss:.1} MiB, {threads} threads");
        stop.shutdown();
        let _ = thread.join();
        return;
    }
    let idle_rss: f64 = arg("--idle-rss", 0.0);
    let filled_at = Instant::now();
    let total = u64::from(shards) * records;
    while count.load(Ordering::Relaxed) < total && filled_at.elapsed() < DRAIN_LIMIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let drained = filled_at.elapsed().as_secs_f64();
    let delivered = count.load(Ordering::Relaxed);
    let hwm = proc::peak_rss_mib();
    stop.shutdown();
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("the consumer failed: {e}"),
        Err(_) => println!("the consumer thread panicked"),
    }
    let budget = (buffer_mib + read_memory_mib) as f64;
    let open = (read_memory_mib / 4).max(1) as f64;
    let slack = SLACK_MIB + open * PER_SUBSCRIPTION_SLACK_MIB;
    let bound = budget + idle_rss + slack;
    println!("delivered {delivered} / {total} records in {drained:.1} s from the start");
    println!(
        "peak RSS {hwm:.1} MiB (VmHWM); above the idle consumer's RSS: {:.1} MiB vs buffer_bytes + read_memory = {budget:.0} MiB",
        hwm - idle_rss
    );
    println!(
        "bound buffer_bytes + read_memory + idle RSS + {slack:.0} MiB ({SLACK_MIB} + {PER_SUBSCRIPTION_SLACK_MIB} per open subscription) = {bound:.1} MiB: {}",
        if hwm <= bound { "within" } else { "OVER" }
    );
}
