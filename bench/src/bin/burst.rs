//! Burst after idle: a consumer over 64 idle shards, then 5,000 x 1 KiB
//! records (5.1 MB) made available in every shard at once, with a batch
//! handler slow enough that the buffer fills (900 ms per 1 s batch; the
//! reads could bring twice what it drains). Peak RSS (VmHWM) against
//! `buffer_bytes` + `read_memory` + the fixed overhead: the same
//! consumer's RSS while idle just before the burst, plus 4 MiB.
//!
//! The consumer runs in a child process so /proc figures are its own; the
//! parent serves the fake stream (`bench/src/backlog.rs`: GetRecords
//! honours Limit and Kinesis's 10,000 records / 10 MiB per reply) and runs
//! dynalite. Two runs: glibc's malloc with its defaults, which keeps some
//! freed memory, then with `MALLOC_TRIM_THRESHOLD_=131072`, which gives it
//! back, so RSS shows what the consumer itself holds.
//!
//! Usage: burst [--shards N] [--records R] [--record-bytes B]
//!              [--buffer-mib M] [--read-memory-mib M] [--handler-ms MS]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kinesis_consumer_bench::backlog::BacklogServer;
use kinesis_consumer_bench::{arg, consumer, emulators, flag, proc, spawn_consumer};

/// The most the burst may take to be consumed before the child gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// Freed memory an allocator that gives memory back still keeps (glibc:
/// up to 128 KiB at the top of each of its arenas, 16 on 2 cores) and
/// what small allocations outside the two budgets hold: the stated fixed
/// overhead on top of the idle consumer's RSS.
const SLACK_MIB: f64 = 4.0;

fn main() {
    let shards: usize = arg("--shards", 64);
    let records: u64 = arg("--records", 5_000);
    let record_bytes: usize = arg("--record-bytes", 1024);
    let buffer_mib: u64 = arg("--buffer-mib", 64);
    let read_memory_mib: u64 = arg("--read-memory-mib", 8);
    let handler_ms: u64 = arg("--handler-ms", 900);
    if flag("--child") {
        return child(shards, records, buffer_mib, read_memory_mib, handler_ms);
    }
    let dynamo = emulators::dynalite();
    println!(
        "# burst: {shards} idle shards, then {records} x {record_bytes} B ({:.1} MiB) in each at once; buffer_bytes {buffer_mib} MiB, read_memory {read_memory_mib} MiB, batch handler sleeping {handler_ms} ms per 1 s batch, reads paced as against Kinesis",
        (records * record_bytes as u64) as f64 / 1048576.0
    );
    // glibc's malloc as configured by default, then told to give freed
    // memory back (what it keeps shows as RSS above what the consumer holds).
    for malloc in [None, Some(("MALLOC_TRIM_THRESHOLD_", "131072"))] {
        match malloc {
            None => println!("## malloc: glibc defaults"),
            Some((name, value)) => println!("## malloc: {name}={value}"),
        }
        let server = BacklogServer::start(shards, record_bytes);
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--child",
                "--kinesis",
                &server.url,
                "--dynamodb",
                &dynamo.url,
            ])
            .args(["--shards", &shards.to_string()])
            .args(["--records", &records.to_string()])
            .args(["--buffer-mib", &buffer_mib.to_string()])
            .args(["--read-memory-mib", &read_memory_mib.to_string()])
            .args(["--handler-ms", &handler_ms.to_string()])
            .args(std::env::args().filter(|a| a == "--log" || a == "--debug"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some((name, value)) = malloc {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start the burst child");
        let mut to_child = child.stdin.take().unwrap();
        let mut from_child = BufReader::new(child.stdout.take().unwrap());
        // Idle: every shard polled a few times (readers up, leases held).
        let deadline = Instant::now() + Duration::from_secs(90);
        while server.least_polls() < 3 {
            if Instant::now() > deadline {
                println!("not every shard polled after 90 s; going on");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        writeln!(to_child, "idle").unwrap();
        let mut line = String::new();
        from_child.read_line(&mut line).unwrap();
        print!("{line}");
        server.fill(records);
        writeln!(to_child, "filled").unwrap();
        for line in from_child.lines() {
            println!("{}", line.unwrap());
        }
        let status = child.wait().unwrap();
        if !status.success() {
            println!("FAILED ({status})");
        }
        println!(
            "server: {:.1} MiB of GetRecords replies sent",
            server.backlog.bytes_sent.load(Ordering::Relaxed) as f64 / 1048576.0
        );
    }
}

fn child(shards: usize, records: u64, buffer_mib: u64, read_memory_mib: u64, handler_ms: u64) {
    let kinesis: String = arg("--kinesis", String::new());
    let dynamodb: String = arg("--dynamodb", String::new());
    if flag("--log") {
        kinesis_consumer_bench::log_to_stderr(flag("--debug"));
    }
    let built = consumer(&kinesis, &dynamodb, "bench")
        .buffer_bytes(buffer_mib * 1024 * 1024)
        .read_memory(read_memory_mib * 1024 * 1024)
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let max_batch = Arc::new(AtomicU64::new(0));
    let (c, mb) = (count.clone(), max_batch.clone());
    let (stop, thread) = spawn_consumer(built, move |batch| {
        let (mut bytes, mut sum) = (0u64, 0u64);
        for m in batch.messages() {
            // Touch the data, as a real handler would.
            bytes += m.value().len() as u64;
            sum = sum.wrapping_add(m.value().iter().map(|&b| b as u64).sum::<u64>());
        }
        std::hint::black_box(sum);
        log::debug!("batch of {} records, {bytes} bytes", batch.len());
        mb.fetch_max(bytes, Ordering::Relaxed);
        c.fetch_add(batch.len() as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(handler_ms));
    });
    // Sample RSS every 20 ms as well as reading the kernel's high-water mark.
    let sampled = Arc::new(AtomicU64::new(0));
    let s = sampled.clone();
    std::thread::spawn(move || {
        loop {
            s.fetch_max((proc::rss_mib() * 1024.0) as u64, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line).unwrap();
    let (idle_rss, idle_hwm, threads) = (proc::rss_mib(), proc::peak_rss_mib(), proc::threads());
    println!(
        "idle: RSS {idle_rss:.1} MiB, peak {idle_hwm:.1} MiB (VmHWM), {threads} threads, {} records delivered",
        count.load(Ordering::Relaxed)
    );
    std::io::stdout().flush().unwrap();
    line.clear();
    stdin.read_line(&mut line).unwrap();
    let filled_at = Instant::now();
    let total = shards as u64 * records;
    while count.load(Ordering::Relaxed) < total && filled_at.elapsed() < DRAIN_LIMIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let drained = filled_at.elapsed().as_secs_f64();
    let delivered = count.load(Ordering::Relaxed);
    let hwm = proc::peak_rss_mib();
    let sampled = sampled.load(Ordering::Relaxed) as f64 / 1024.0;
    stop.shutdown();
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("the consumer failed: {e}"),
        Err(_) => println!("the consumer thread panicked"),
    }
    let budget = (buffer_mib + read_memory_mib) as f64;
    let bound = budget + idle_rss + SLACK_MIB;
    println!(
        "delivered {delivered} / {total} records in {drained:.1} s after the fill; largest batch {:.1} MiB of data",
        max_batch.load(Ordering::Relaxed) as f64 / 1048576.0
    );
    println!(
        "peak RSS {hwm:.1} MiB (VmHWM; sampled max {sampled:.1} MiB); above idle RSS: {:.1} MiB vs buffer_bytes + read_memory = {budget:.0} MiB",
        hwm - idle_rss
    );
    println!(
        "bound buffer_bytes + read_memory + idle RSS + {SLACK_MIB} MiB = {bound:.1} MiB: {}",
        if hwm <= bound { "within" } else { "OVER" }
    );
}
