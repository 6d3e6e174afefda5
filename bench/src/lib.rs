//! Shared pieces of the benchmarks: a canned Kinesis server, the emulators,
//! a counting proxy for DynamoDB, and process figures from /proc.

pub mod backlog;
pub mod canned;
pub mod capacity;
pub mod emulators;
pub mod http;
pub mod proc;
pub mod proxy;

use std::time::Duration;

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
