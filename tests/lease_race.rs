//! The lease-loss race: another worker takes a lease while a batch of that
//! shard is still in the old owner's handler. The old owner's checkpoint
//! must be refused by DynamoDB, and the new owner's checkpoint must never
//! move backwards.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use kinesis_consumer::__test_support::{AttributeValue, Expression, Item};
use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{ConsumerBuilder, Payload, SequenceNumber};

fn builder(kinesis: &str, dynamodb: &str, stream: &str, app: &str) -> ConsumerBuilder<Payload> {
    // The default failover time: nothing expires during the race.
    common::consumer_builder_at(kinesis, dynamodb, stream, app)
        .failover_time(Duration::from_secs(10))
}

fn put(stream: &str, prefix: &str, count: usize) -> Vec<(String, SequenceNumber)> {
    let entries: Vec<PutRecordsEntry> = (0..count)
        .map(|i| PutRecordsEntry {
            partition_key: format!("k{i}"),
            explicit_hash_key: None,
            data: format!("{prefix}-{i}").into_bytes(),
        })
        .collect();
    common::kinesis()
        .put_records(stream, &entries)
        .unwrap()
        .into_iter()
        .zip(&entries)
        .map(|(r, e)| {
            (
                String::from_utf8(e.data.clone()).unwrap(),
                r.unwrap().sequence_number,
            )
        })
        .collect()
}

fn lease_row(app: &str, shard: &str) -> Item {
    let key: Item = HashMap::from([("leaseKey".to_owned(), AttributeValue::S(shard.into()))]);
    common::dynamodb().get_item(app, &key).unwrap().unwrap()
}

fn checkpoint_of(row: &Item) -> String {
    row["checkpoint"].as_s().unwrap().to_owned()
}

type Got = Arc<Mutex<Vec<String>>>;

#[test]
fn a_lease_taken_during_the_handler_refuses_the_old_owners_checkpoint() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let shard = common::kinesis().list_shards(&stream, None).unwrap()[0]
        .shard_id
        .clone();
    let first = put(&stream, "first", 50);

    // Worker A, through a proxy that counts its DynamoDB replies. A long
    // failover time keeps its own renewal from noticing the loss before
    // the handler returns, so the refusal comes from the checkpoint write.
    let proxy = Proxy::for_emulators();
    let a = builder(proxy.url(), proxy.url(), &stream, &app)
        .worker_id("worker-A")
        .failover_time(Duration::from_secs(30))
        .build()
        .unwrap();
    let a_stop = a.shutdown_handle();
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, release_rx) = mpsc::channel::<()>();
    let a_got: Got = Arc::default();
    let a_sink = a_got.clone();
    let blocked_once = Arc::new(AtomicBool::new(false));
    let a_thread = std::thread::spawn(move || {
        a.run(move |batch| {
            if batch.is_empty() {
                return Ok(());
            }
            a_sink.lock().unwrap().extend(
                batch
                    .messages()
                    .map(|m| String::from_utf8(m.value().to_vec()).unwrap()),
            );
            if !blocked_once.swap(true, Ordering::Relaxed) {
                entered_tx.send(()).unwrap();
                // Bounded: the test releases it within seconds.
                let _ = release_rx.recv_timeout(Duration::from_secs(30));
            }
            Ok(())
        })
    });
    entered
        .recv_timeout(Duration::from_secs(30))
        .expect("worker A delivers a batch");
    let a_first_batch = a_got.lock().unwrap().len();
    assert!(a_first_batch > 0);

    // Watch the shard's checkpoint from now on: it must never move back.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (app, shard, watching) = (app.clone(), shard.clone(), watching.clone());
        std::thread::spawn(move || {
            let mut history: Vec<String> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while watching.load(Ordering::Relaxed) && Instant::now() < deadline {
                let cp = checkpoint_of(&lease_row(&app, &shard));
                if history.last() != Some(&cp) {
                    history.push(cp);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            history
        })
    };

    // Worker B takes the lease while A's handler still holds the batch:
    // the row now names B, with the counter bumped.
    let d = common::dynamodb();
    let row = lease_row(&app, &shard);
    assert_eq!(row["leaseOwner"].as_s(), Some("worker-A"));
    assert_eq!(
        checkpoint_of(&row),
        "TRIM_HORIZON",
        "nothing checkpointed yet"
    );
    let counter: u64 = row["leaseCounter"].as_n().unwrap().parse().unwrap();
    let key: Item = HashMap::from([("leaseKey".to_owned(), AttributeValue::S(shard.clone()))]);
    let update = Expression::new("SET #o = :b, #c = :next")
        .name("#o", "leaseOwner")
        .name("#c", "leaseCounter")
        .value(":b", AttributeValue::S("worker-B".into()))
        .value(":next", AttributeValue::N((counter + 1).to_string()));
    let unchanged = Expression::new("#c = :seen")
        .name("#c", "leaseCounter")
        .value(":seen", AttributeValue::N(counter.to_string()));
    d.update_item(&app, &key, &update, Some(&unchanged))
        .unwrap();

    let e = common::emulators();
    let b = builder(&e.kinesis_url, &e.dynamodb_url, &stream, &app)
        .worker_id("worker-B")
        .failover_time(Duration::from_secs(3))
        .build()
        .unwrap();
    let b_stop = b.shutdown_handle();
    let b_got: Got = Arc::default();
    let b_sink = b_got.clone();
    let b_thread = std::thread::spawn(move || {
        b.run(move |batch| {
            b_sink.lock().unwrap().extend(
                batch
                    .messages()
                    .map(|m| String::from_utf8(m.value().to_vec()).unwrap()),
            );
            Ok(())
        })
    });
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let last_first = first.last().unwrap().1.as_str().to_owned();
    wait(
        "worker B to process and checkpoint the first records",
        &|| checkpoint_of(&lease_row(&app, &shard)) == last_first,
    );

    // Now A's handler returns: A's checkpoint must be refused.
    let refused_before = proxy.upstream_status("UpdateItem", 400);
    release.send(()).unwrap();
    wait("worker A's checkpoint attempt", &|| {
        proxy.upstream_status("UpdateItem", 400) > refused_before
    });
    let second = put(&stream, "second", 20);
    let last_second = second.last().unwrap().1.as_str().to_owned();
    wait("worker B to checkpoint the second records", &|| {
        checkpoint_of(&lease_row(&app, &shard)) == last_second
    });
    std::thread::sleep(Duration::from_millis(600));

    a_stop.shutdown();
    b_stop.shutdown();
    a_thread.join().unwrap().unwrap();
    b_thread.join().unwrap().unwrap();
    watching.store(false, Ordering::Relaxed);
    let history = watcher.join().unwrap();

    let row = lease_row(&app, &shard);
    assert_eq!(checkpoint_of(&row), last_second, "B's checkpoint stands");
    let a_got = a_got.lock().unwrap().clone();
    let b_got = b_got.lock().unwrap().clone();
    assert_eq!(
        a_got.len(),
        a_first_batch,
        "A delivered nothing after losing the lease"
    );
    let all: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|(d, _)| d.clone())
        .collect();
    assert_eq!(b_got, all, "B delivered every record once, in order");
    // The checkpoint only ever went forwards.
    let ranks: Vec<Option<SequenceNumber>> =
        history.iter().map(|c| SequenceNumber::parse(c)).collect();
    for w in ranks.windows(2) {
        assert!(
            match (&w[0], &w[1]) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a < b,
            },
            "checkpoint history went backwards: {history:?}"
        );
    }
    println!(
        "RACE | lease taken while a batch is in the handler | a_lease_taken_during_the_handler_refuses_the_old_owners_checkpoint | put {} | A delivered {} (its blocked batch) | B delivered {} | lost 0 | A's refused checkpoint writes {} | checkpoint history {:?}",
        all.len(),
        a_got.len(),
        b_got.len(),
        proxy.upstream_status("UpdateItem", 400) - refused_before,
        history
            .iter()
            .map(|c| if c.len() > 12 {
                format!("…{}", &c[c.len() - 6..])
            } else {
                c.clone()
            })
            .collect::<Vec<_>>()
    );
}
