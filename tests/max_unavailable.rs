//! `max_unavailable`: with the lease table out of reach (DynamoDB behind a
//! proxy that is stopped under a running consumer), `run` returns
//! `Error::LeaseTableUnavailable` after the bound instead of running on.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use kinesis_consumer::Error;

#[test]
fn run_returns_once_the_lease_table_is_gone_for_the_bound() {
    let stream = common::create_stream(1);
    let app = common::unique_name("unavailable-app");
    let proxy = Proxy::for_emulators();
    let bound = Duration::from_secs(4);
    let consumer =
        common::consumer_builder_at(&common::emulators().kinesis_url, proxy.url(), &stream, &app)
            .failover_time(Duration::from_secs(3))
            .max_unavailable(bound)
            .build()
            .unwrap();
    let batches = Arc::new(AtomicU64::new(0));
    let seen = batches.clone();
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = consumer.run(move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        let _ = done.send((outcome, Instant::now()));
    });
    // Running: batches delivered and the lease held.
    let started = Instant::now();
    while batches.load(Ordering::Relaxed) < 5 || common::lease_rows(&app).unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    // DynamoDB vanishes: the proxy stops accepting.
    drop(proxy);
    let gone = Instant::now();
    let (outcome, returned) = result
        .recv_timeout(Duration::from_secs(30))
        .expect("run did not return within 30 s of the table vanishing");
    let after = returned - gone;
    eprintln!("run returned {after:?} after the table vanished: {outcome:?}");
    let error = outcome.expect_err("run must fail");
    assert!(
        matches!(error, Error::LeaseTableUnavailable { duration, .. } if duration >= bound),
        "{error:?}"
    );
    // The last heartbeat that landed was sent up to a heartbeat period
    // (1 s) before the table vanished; the check runs once a period, and
    // shutting down tries the last checkpoints for up to the failover time.
    assert!(
        after >= bound - Duration::from_secs(1) && after < bound + Duration::from_secs(8),
        "returned {after:?} after the table vanished"
    );
    assert!(error.to_string().contains("max_unavailable"), "{error}");
}
