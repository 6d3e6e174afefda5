//! Secrets stay secret and TLS is checked: credentials never appear in
//! Debug output, errors or logs (a whole consumer run, with faults, logged
//! at trace level), and an HTTPS endpoint with a self-signed certificate is
//! refused. (Credential provider errors and the container-credentials host
//! rules are unit-tested in src/aws/credentials/.)

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Trigger};
use kinesis_consumer::aws::ClientConfig;
use kinesis_consumer::aws::credentials::{Credentials, DefaultCredentialsChain};
use kinesis_consumer::aws::kinesis::KinesisClient;
use kinesis_consumer::{Consumer, Error, InitialPosition};

const KEY_ID: &str = "AKIDSECURITYTEST";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY-SECRET-9f3a";
const TOKEN: &str = "FwoGZXIvYXdzE-SESSION-TOKEN-77c1";

fn credentials() -> Credentials {
    Credentials::new(KEY_ID, SECRET).with_session_token(TOKEN)
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET) && !text.contains(TOKEN),
        "{what} shows a secret: {text}"
    );
}

/// Every log record of this test binary, at every level.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        LOG.lock()
            .unwrap()
            .push(format!("{} {} {}", r.level(), r.target(), r.args()));
    }
    fn flush(&self) {}
}

fn capture_log() {
    static LOGGER: Capture = Capture;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

#[test]
fn debug_output_never_shows_credentials() {
    let builder = Consumer::builder()
        .app_name("app")
        .stream_name("stream")
        .region("us-east-1")
        .endpoint_url("http://127.0.0.1:1")
        .dynamodb_endpoint_url("http://127.0.0.1:1")
        .cloudwatch_endpoint_url("http://127.0.0.1:1")
        .credentials(credentials())
        .dynamodb_credentials(credentials())
        .cloudwatch_credentials(credentials());
    assert_clean("ConsumerBuilder", &format!("{builder:?} {builder:#?}"));
    let consumer = builder.build().unwrap();
    assert_clean("Consumer", &format!("{consumer:?} {consumer:#?}"));
    let config = ClientConfig::new()
        .region("us-east-1")
        .credentials(credentials());
    assert_clean("ClientConfig", &format!("{config:?} {config:#?}"));
    let client = KinesisClient::new(&config.clone().endpoint_url("http://127.0.0.1:1")).unwrap();
    assert_clean("KinesisClient", &format!("{client:?}"));
    let c = credentials();
    let shown = format!("{c:?} {c:#?}");
    assert_clean("Credentials", &shown);
    assert!(shown.contains(KEY_ID), "the key id may show: {shown}");
    let chain = DefaultCredentialsChain::new().profile("nonexistent-profile-for-test");
    assert_clean("DefaultCredentialsChain", &format!("{chain:?} {chain:#?}"));
}

#[test]
fn a_whole_consumer_run_with_faults_logs_no_secret() {
    capture_log();
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    // Error paths log too: throttling, resets, HTML errors, garbled replies.
    proxy.add("GetRecords", Trigger::Next(3), Fault::throughput_exceeded());
    proxy.add("GetRecords", Trigger::Next(1), Fault::ResetAfterForward);
    proxy.add("UpdateItem", Trigger::Next(1), Fault::html(500));
    proxy.add("Scan", Trigger::Next(1), Fault::TruncatedJson);
    let k = common::kinesis();
    for i in 0..30 {
        k.put_record(&stream, &format!("k{i}"), None, format!("r{i}").as_bytes())
            .unwrap();
    }
    let consumer = Consumer::builder()
        .app_name(&app)
        .stream_name(&stream)
        .region("us-east-1")
        .endpoint_url(proxy.url())
        .dynamodb_endpoint_url(proxy.url())
        .cloudwatch_endpoint_url("http://127.0.0.1:9")
        .credentials(credentials())
        .initial_position(InitialPosition::TrimHorizon)
        .batch_interval(Duration::from_millis(200))
        .idle_time_between_reads(Duration::from_millis(100))
        .failover_time(Duration::from_secs(3))
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let mut delivered = 0;
    let started = Instant::now();
    let result = consumer.run(|batch| {
        delivered += batch.messages().count();
        if delivered >= 30 || started.elapsed() > Duration::from_secs(30) {
            stop.shutdown();
        }
        Ok(())
    });
    result.unwrap();
    assert_eq!(delivered, 30);
    // A failing run: the error returned carries no secret either.
    proxy.add(
        "*",
        Trigger::Always,
        Fault::aws(403, "UnrecognizedClientException"),
    );
    let err = Consumer::builder()
        .app_name(&app)
        .stream_name(&stream)
        .region("us-east-1")
        .endpoint_url(proxy.url())
        .dynamodb_endpoint_url(proxy.url())
        .cloudwatch_endpoint_url("http://127.0.0.1:9")
        .credentials(credentials())
        .build()
        .unwrap()
        .run(|_b| Ok(()))
        .unwrap_err();
    assert_clean("the error", &format!("{err} {err:?}"));

    let log = LOG.lock().unwrap().join("\n");
    let lines = log.lines().count();
    assert!(lines > 10, "the run logged ({lines} lines)");
    assert!(
        log.contains("throttled") || log.contains("retrying"),
        "error paths logged"
    );
    assert_clean("the log", &log);
    println!(
        "SECURITY | secret and session token in a traced consumer run with faults | a_whole_consumer_run_with_faults_logs_no_secret | {lines} log lines, 0 with a secret"
    );
}

#[test]
fn an_https_endpoint_with_a_self_signed_certificate_is_refused() {
    let e = common::emulators();
    let config = common::config(&e.kinesis_tls_url).max_attempts(1);
    let started = Instant::now();
    let err = KinesisClient::new(&config)
        .unwrap()
        .describe_stream_summary("any")
        .unwrap_err();
    let shown = err.to_string();
    println!(
        "SECURITY | HTTPS endpoint with a self-signed certificate | an_https_endpoint_with_a_self_signed_certificate_is_refused | {shown}"
    );
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
