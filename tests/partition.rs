//! A worker cut off from DynamoDB (the test proxy answers each of its
//! lease-table requests with a 500) stops handing records on before a peer
//! takes its lease; records keep arriving throughout.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Trigger};
use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{ConsumerBuilder, Payload, ShutdownHandle};

/// Times at which the handler got a non-empty batch.
type Deliveries = Arc<Mutex<Vec<Instant>>>;

fn start(
    builder: ConsumerBuilder<Payload>,
) -> (
    ShutdownHandle,
    Deliveries,
    std::thread::JoinHandle<kinesis_consumer::Result<()>>,
) {
    let consumer = builder.build().unwrap();
    let stop = consumer.shutdown_handle();
    let delivered: Deliveries = Arc::default();
    let d = delivered.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            if !batch.is_empty() {
                d.lock().unwrap().push(Instant::now());
            }
            Ok(())
        })
    });
    (stop, delivered, thread)
}

fn owners(app: &str) -> Vec<(String, Option<String>)> {
    kinesis_consumer::list_leases(&common::config(&common::emulators().dynamodb_url), app)
        .unwrap_or_default()
        .into_iter()
        .map(|l| (l.shard_id, l.owner))
        .collect()
}

fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "waited {bound:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_cut_off_from_dynamodb_stops_delivering_before_its_lease_is_taken() {
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let e = common::emulators();
    // Records for both shards every 50 ms until the end.
    let producing = Arc::new(AtomicBool::new(true));
    let p = producing.clone();
    let s = stream.clone();
    let producer = std::thread::spawn(move || {
        let mut i = 0u64;
        while p.load(Ordering::Relaxed) {
            let entries: Vec<PutRecordsEntry> = (0..4)
                .map(|k| PutRecordsEntry {
                    partition_key: format!("key-{i}-{k}"),
                    explicit_hash_key: None,
                    data: format!("r{i}-{k}").into_bytes(),
                })
                .collect();
            let _ = common::kinesis().put_records(&s, &entries);
            i += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let proxy = Proxy::for_emulators();
    let (stop_a, a_delivered, a) = start(
        common::consumer_builder_at(&e.kinesis_url, proxy.url(), &stream, &app).worker_id("A"),
    );
    wait_until("A to hold both leases", Duration::from_secs(30), || {
        let o = owners(&app);
        o.len() == 2 && o.iter().all(|(_, w)| w.as_deref() == Some("A"))
    });
    let (stop_b, _b_delivered, b) = start(common::consumer_builder(&stream, &app).worker_id("B"));
    let mut a_shard = String::new();
    wait_until("one lease each", Duration::from_secs(30), || {
        let o = owners(&app);
        let of = |w: &str| o.iter().filter(|(_, x)| x.as_deref() == Some(w)).count();
        if of("A") == 1 && of("B") == 1 {
            a_shard = o
                .iter()
                .find(|(_, x)| x.as_deref() == Some("A"))
                .unwrap()
                .0
                .clone();
            return true;
        }
        false
    });
    wait_until("A to deliver", Duration::from_secs(10), || {
        !a_delivered.lock().unwrap().is_empty()
    });

    // Cut A off from DynamoDB; Kinesis still answers it.
    for operation in ["UpdateItem", "Scan", "GetItem", "PutItem", "DeleteItem"] {
        proxy.add(
            operation,
            Trigger::Always,
            Fault::aws(500, "InternalServerError"),
        );
    }
    let cut = Instant::now();
    let mut taken = cut;
    wait_until("B to take A's lease", Duration::from_secs(20), || {
        taken = Instant::now();
        owners(&app)
            .iter()
            .any(|(id, w)| *id == a_shard && w.as_deref() == Some("B"))
    });
    let last = *a_delivered.lock().unwrap().last().unwrap();
    let secs = |t: Instant| t.saturating_duration_since(cut).as_secs_f64();
    println!(
        "PARTITION: A cut off at 0; A's last batch at +{:.2} s; its lease seen taken by B at +{:.2} s",
        secs(last),
        secs(taken)
    );
    assert!(
        last < taken,
        "A handed a batch on at +{:.2} s, after B took its lease (seen at +{:.2} s)",
        secs(last),
        secs(taken)
    );
    // A kept delivering for a while after the cut: the test saw fencing,
    // not a worker that had stopped anyway.
    assert!(last > cut, "A delivered nothing after the cut");

    proxy.clear();
    producing.store(false, Ordering::Relaxed);
    producer.join().unwrap();
    stop_a.shutdown();
    stop_b.shutdown();
    let _ = a.join().unwrap();
    b.join().unwrap().unwrap();
}
