//! Shared pieces of the benchmarks: a canned Kinesis server, the emulators,
//! a counting proxy for DynamoDB, and process figures from /proc.

pub mod backlog;
pub mod canned;
pub mod canned_h2;
pub mod capacity;
pub mod emulators;
pub mod http;
pub mod proc;
pub mod proxy;

use std::time::{Duration, Instant};

use kinesis_consumer::Payload;
use kinesis_consumer::aws::ClientConfig;
use kinesis_consumer::aws::credentials::Credentials;

/// Client settings for a local server: fixed region, dummy credentials.
pub fn client_config(endpoint: &str) -> ClientConfig {
    ClientConfig::new()
        .region("us-east-1")
        .endpoint_url(endpoint)
        .credentials(Credentials::new("AKIDBENCH", "bench-secret"))
}

/// The value of `--name VALUE` on the command line, or `default`.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad value for {name}: {v}"))
        })
        .unwrap_or(default)
}

/// True when `--name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Seconds as a `Duration`.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A name unique to this process.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Records per second as a short text: `1.23 M`.
pub fn rate(records: f64) -> String {
    if records >= 1e6 {
        format!("{:.2} M", records / 1e6)
    } else {
        format!("{:.1} k", records / 1e3)
    }
}

/// A consumer builder pointed at `kinesis` and `dynamodb`, reading from the
/// trim horizon, with a fresh application name.
pub fn consumer(
    kinesis: &str,
    dynamodb: &str,
    stream: &str,
) -> kinesis_consumer::ConsumerBuilder<Payload> {
    kinesis_consumer::Consumer::builder()
        .app_name(unique("bench"))
        .stream_name(stream)
        .region("us-east-1")
        .endpoint_url(kinesis)
        .dynamodb_endpoint_url(dynamodb)
        .credentials(kinesis_consumer::aws::credentials::Credentials::new(
            "AKIDBENCH",
            "bench-secret",
        ))
        .initial_position(kinesis_consumer::InitialPosition::TrimHorizon)
}

/// Runs `consumer` on its own thread; stop it with the returned handle.
pub fn spawn_consumer<T: Send + 'static>(
    consumer: kinesis_consumer::Consumer<T>,
    mut handler: impl FnMut(kinesis_consumer::Batch<T>) + Send + 'static,
) -> (
    kinesis_consumer::ShutdownHandle,
    std::thread::JoinHandle<kinesis_consumer::Result<()>>,
) {
    let stop = consumer.shutdown_handle();
    let thread = std::thread::spawn(move || {
        consumer.run(|batch| {
            handler(batch);
            Ok(())
        })
    });
    (stop, thread)
}

/// Logs the library's warnings and errors (and with `debug`, everything
/// down to debug) to stderr, for looking into a benchmark run.
pub fn log_to_stderr(debug: bool) {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            eprintln!("{} {}: {}", record.level(), record.target(), record.args());
        }
        fn flush(&self) {}
    }
    let _ = log::set_logger(&Stderr);
    log::set_max_level(if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
}

/// Runs the SDK benchmark program (`bench/sdk`) with `args`: its records/s
/// and ms per call (per event of a subscription).
pub fn sdk_rate(sdk: &str, args: &[&str]) -> (f64, f64) {
    let out = std::process::Command::new(sdk)
        .args(args)
        .output()
        .expect("run the SDK benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "SDK output lacks {name}: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    (
        field("records") / field("seconds"),
        field("seconds") / field("calls") * 1e3,
    )
}

/// Records/s of the whole consumer built from `builder` (a [`consumer`],
/// polling or fan-out), over `seconds` once records flow: fetch, decode,
/// de-aggregation check, a message handler touching each record's data,
/// the channel, a batch handler touching each record. Read pacing off
/// (the canned server never throttles).
pub fn full_path_rate(builder: kinesis_consumer::ConsumerBuilder<Payload>, seconds: f64) -> f64 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let built = builder
        // Short batches and large record and byte bounds, so that the
        // buffer does not throttle a reader that is faster than a real
        // shard (with the default 64 MiB, a 50 ms batch of 1 KiB records
        // filled it and the reader waited a third of the time).
        .batch_interval(Duration::from_millis(50))
        .buffer_records(1_000_000)
        .buffer_bytes(1 << 30)
        .idle_time_between_reads(Duration::from_millis(10))
        .pace_reads(false)
        // The message handler touches the data: its length, its first byte.
        .message_handler(|r| {
            r.data().len() as u64 + u64::from(r.data().first().copied().unwrap_or(0))
        })
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let touched = Arc::new(AtomicU64::new(0));
    let (c, t) = (count.clone(), touched.clone());
    let (stop, thread) = spawn_consumer(built, move |batch| {
        // The batch handler touches each record too.
        let mut sum = 0;
        for m in batch.messages() {
            sum += *m.value() + m.record().partition_key().len() as u64;
        }
        c.fetch_add(batch.len() as u64, Ordering::Relaxed);
        t.fetch_add(sum, Ordering::Relaxed);
    });
    // Warm up until records flow, then one more second.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no records arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (start_count, started) = (count.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(secs(seconds));
    let (end_count, elapsed) = (count.load(Ordering::Relaxed), started.elapsed());
    stop.shutdown();
    thread.join().unwrap().unwrap();
    assert!(touched.load(Ordering::Relaxed) > 0);
    (end_count - start_count) as f64 / elapsed.as_secs_f64()
}

/// The floor in memory: records/s if a reply (or event) of `records`
/// records cost only a copy of its body.
pub fn memcpy_rate(body: &[u8], records: usize, seconds: f64) -> f64 {
    let mut copy = vec![0u8; body.len()];
    let (started, mut calls) = (Instant::now(), 0u64);
    while started.elapsed().as_secs_f64() < seconds {
        copy.copy_from_slice(std::hint::black_box(body));
        std::hint::black_box(&mut copy);
        calls += 1;
    }
    calls as f64 * records as f64 / started.elapsed().as_secs_f64()
}
