//! Lease table options: its name, billing mode, tags, point-in-time
//! recovery and deletion protection reach CreateTable (requests recorded by
//! the test proxy); a table whose key schema is not a lease table's is
//! refused with an error naming the table and what is wrong.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Trigger};
use kinesis_consumer::{BillingMode, ConsumerBuilder, Error, Payload};
use serde_json::{Value, json};

/// Runs `builder`'s consumer until `table` has a lease with an owner (or
/// `run` ends), then stops it; returns what `run` returned.
fn run_until_leased(
    builder: ConsumerBuilder<Payload>,
    table: &str,
) -> kinesis_consumer::Result<()> {
    let consumer = builder.build().unwrap();
    let stop = consumer.shutdown_handle();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(consumer.run(|_batch| Ok(())));
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(result) = finished.try_recv() {
            return result;
        }
        let leases = kinesis_consumer::list_leases(
            &common::config(&common::emulators().dynamodb_url),
            table,
        )
        .unwrap_or_default();
        if leases.iter().any(|l| l.owner.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.shutdown();
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("run returns after shutdown")
}

fn recorded_one(proxy: &Proxy, operation: &str) -> Value {
    let bodies = proxy.recorded(operation);
    assert_eq!(bodies.len(), 1, "{operation} requests: {bodies:?}");
    serde_json::from_str(&bodies[0]).unwrap()
}

#[test]
fn table_options_reach_create_table() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let table = common::unique_name("leases");
    let proxy = Proxy::for_emulators();
    proxy.record("CreateTable");
    proxy.record("UpdateContinuousBackups");
    // dynalite has no UpdateContinuousBackups: answer as DynamoDB does.
    proxy.add(
        "UpdateContinuousBackups",
        Trigger::Always,
        Fault::Body(
            r#"{"ContinuousBackupsDescription":{"ContinuousBackupsStatus":"ENABLED","PointInTimeRecoveryDescription":{"PointInTimeRecoveryStatus":"ENABLED"}}}"#,
        ),
    );
    let builder = common::consumer_builder_at(proxy.url(), proxy.url(), &stream, &app)
        .lease_table_name(&table)
        .lease_table_billing_mode(BillingMode::Provisioned {
            read_capacity_units: 5,
            write_capacity_units: 7,
        })
        .lease_table_tags([("team", "data"), ("cost-center", "42")])
        .lease_table_point_in_time_recovery(true)
        .lease_table_deletion_protection(true);
    run_until_leased(builder, &table).unwrap();

    let create = recorded_one(&proxy, "CreateTable");
    assert_eq!(create["TableName"], json!(table));
    assert_eq!(create["BillingMode"], json!("PROVISIONED"));
    assert_eq!(
        create["ProvisionedThroughput"],
        json!({"ReadCapacityUnits": 5, "WriteCapacityUnits": 7})
    );
    assert_eq!(
        create["Tags"],
        json!([{"Key": "team", "Value": "data"}, {"Key": "cost-center", "Value": "42"}])
    );
    assert_eq!(create["DeletionProtectionEnabled"], json!(true));
    assert_eq!(
        create["KeySchema"],
        json!([{"AttributeName": "leaseKey", "KeyType": "HASH"}])
    );
    let backups = recorded_one(&proxy, "UpdateContinuousBackups");
    assert_eq!(backups["TableName"], json!(table));
    assert_eq!(
        backups["PointInTimeRecoverySpecification"],
        json!({"PointInTimeRecoveryEnabled": true})
    );
    // The leases are in the named table; none under the application name.
    assert!(
        !kinesis_consumer::list_leases(&common::config(&common::emulators().dynamodb_url), &table)
            .unwrap()
            .is_empty()
    );
    let missing = common::dynamodb().describe_table(&app).unwrap_err();
    assert_eq!(missing.code(), Some("ResourceNotFoundException"));
}

#[test]
fn by_default_the_table_is_the_application_name_on_demand_untagged() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    proxy.record("CreateTable");
    proxy.record("UpdateContinuousBackups");
    let builder = common::consumer_builder_at(proxy.url(), proxy.url(), &stream, &app);
    run_until_leased(builder, &app).unwrap();
    let create = recorded_one(&proxy, "CreateTable");
    assert_eq!(create["TableName"], json!(app));
    assert_eq!(create["BillingMode"], json!("PAY_PER_REQUEST"));
    for absent in ["ProvisionedThroughput", "Tags", "DeletionProtectionEnabled"] {
        assert!(create.get(absent).is_none(), "{absent} in {create}");
    }
    assert!(proxy.recorded("UpdateContinuousBackups").is_empty());
}

fn refused(builder: ConsumerBuilder<Payload>, table: &str) -> (&'static str, String) {
    let started = Instant::now();
    match run_until_leased(builder, table) {
        Err(Error::Config { setting, reason }) => {
            // Refused at startup, not after the minute of startup retries.
            assert!(started.elapsed() < Duration::from_secs(10));
            (setting, reason)
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn a_table_with_another_hash_key_is_refused_naming_it() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let table = common::unique_name("not-leases");
    common::dynamodb().create_table(&table, "shardId").unwrap();
    let builder = common::consumer_builder(&stream, &app).lease_table_name(&table);
    let (setting, reason) = refused(builder, &table);
    assert_eq!(setting, "lease_table_name");
    assert!(reason.contains(&table), "{reason}");
    assert!(reason.contains("hash key is \"shardId\""), "{reason}");
    assert!(reason.contains("\"leaseKey\""), "{reason}");
}

#[test]
fn a_table_with_a_sort_key_is_refused_naming_it() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    // dynalite's table would be fine; DescribeTable shows a composite key.
    let description: &'static str = Box::leak(
        format!(
            r#"{{"Table":{{"TableName":"{app}","TableStatus":"ACTIVE","KeySchema":[{{"AttributeName":"leaseKey","KeyType":"HASH"}},{{"AttributeName":"at","KeyType":"RANGE"}}],"AttributeDefinitions":[{{"AttributeName":"leaseKey","AttributeType":"S"}},{{"AttributeName":"at","AttributeType":"N"}}]}}}}"#
        )
        .into_boxed_str(),
    );
    proxy.add("DescribeTable", Trigger::Always, Fault::Body(description));
    let builder = common::consumer_builder_at(proxy.url(), proxy.url(), &stream, &app);
    let (setting, reason) = refused(builder, &app);
    assert_eq!(setting, "lease_table_name");
    assert!(reason.contains(&app), "{reason}");
    assert!(reason.contains("sort key \"at\""), "{reason}");
    assert!(proxy.requests("Scan") == 0, "no lease was read");
}

#[test]
fn bad_table_options_fail_the_build_naming_the_setting() {
    let base = || {
        kinesis_consumer::Consumer::builder()
            .app_name("app")
            .stream_name("s")
            .region("us-east-1")
            .endpoint_url("http://127.0.0.1:9")
    };
    let setting = |b: ConsumerBuilder<Payload>| match b.build() {
        Err(Error::Config { setting, .. }) => setting,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    assert_eq!(setting(base().lease_table_name("a b")), "lease_table_name");
    assert_eq!(setting(base().lease_table_name("ab")), "lease_table_name");
    let zero = BillingMode::Provisioned {
        read_capacity_units: 0,
        write_capacity_units: 1,
    };
    assert_eq!(
        setting(base().lease_table_billing_mode(zero)),
        "lease_table_billing_mode"
    );
    assert_eq!(
        setting(base().lease_table_tags([("aws:x", "y")])),
        "lease_table_tags"
    );
    let many: Vec<(String, String)> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
    assert_eq!(setting(base().lease_table_tags(many)), "lease_table_tags");
    assert!(base().lease_table_name("my.leases-1").build().is_ok());
}

// ---- a table the KCL wrote ----

use kinesis_consumer::__test_support::{AttributeValue, Item};
use kinesis_consumer::aws::kinesis::{PutRecordsEntry, Shard};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Puts `count` records named `{prefix}-{i}` into the shard whose range
/// starts at `hash_key`; their sequence numbers, in order.
fn put_at(stream: &str, hash_key: &str, prefix: &str, count: usize) -> Vec<String> {
    let entries: Vec<PutRecordsEntry> = (0..count)
        .map(|i| PutRecordsEntry {
            partition_key: format!("{prefix}-{i}"),
            explicit_hash_key: Some(hash_key.to_owned()),
            data: format!("{prefix}-{i}").into_bytes(),
        })
        .collect();
    common::kinesis()
        .put_records(stream, &entries)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().sequence_number.as_str().to_owned())
        .collect()
}

#[test]
fn a_table_the_kcl_wrote_is_continued_from() {
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let k = common::kinesis();
    let listed = k.list_shards(&stream, None).unwrap();
    let (first, second) = (listed[0].clone(), listed[1].clone());
    put_at(&stream, &first.starting_hash_key, "parent", 10);
    let second_seqs = put_at(&stream, &second.starting_hash_key, "second", 10);
    common::split_first_shard(&stream);
    let children: Vec<Shard> = k
        .list_shards(&stream, None)
        .unwrap()
        .into_iter()
        .filter(|s| s.parents().any(|p| p == first.shard_id))
        .collect();
    assert_eq!(children.len(), 2);
    put_at(&stream, &first.starting_hash_key, "child", 10);

    // The KCL's fleet stopped (kill -9) with: the parent read to its end,
    // its children's leases created but not started, the second shard
    // checkpointed at its 5th record by a worker that is gone.
    let d = common::dynamodb();
    common::create_lease_table(&app);
    let mut parent = common::kcl_lease_row(&first, Some("kcl-host:1f3a"), 41, "SHARD_END");
    let ids: Vec<String> = children.iter().map(|c| c.shard_id.clone()).collect();
    parent.insert("childShardIds".into(), AttributeValue::SS(ids));
    d.put_item(&app, &parent, None).unwrap();
    for child in &children {
        d.put_item(
            &app,
            &common::kcl_lease_row(child, None, 0, "TRIM_HORIZON"),
            None,
        )
        .unwrap();
    }
    let fifth = &second_seqs[4];
    d.put_item(
        &app,
        &common::kcl_lease_row(&second, Some("kcl-host:77c0"), 17, fifth),
        None,
    )
    .unwrap();

    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g = got.clone();
    let consumer = common::consumer_builder(&stream, &app).build().unwrap();
    let stop = consumer.shutdown_handle();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            let mut g = g.lock().unwrap();
            for m in batch.messages() {
                g.push(String::from_utf8_lossy(m.value()).into_owned());
            }
            Ok(())
        })
    });
    let expected: BTreeSet<String> = (5..10)
        .map(|i| format!("second-{i}"))
        .chain((0..10).map(|i| format!("child-{i}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    while got.lock().unwrap().len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Time for anything that should not come to come.
    std::thread::sleep(Duration::from_secs(2));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let got = got.lock().unwrap().clone();
    let delivered: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(delivered, expected, "delivered {got:?}");
    assert_eq!(got.len(), expected.len(), "nothing twice: {got:?}");

    let rows: HashMap<String, Item> = d
        .scan(&app)
        .unwrap()
        .into_iter()
        .map(|i| (i["leaseKey"].as_s().unwrap().to_owned(), i))
        .collect();
    let row = &rows[&second.shard_id];
    // The KCL's counter went on; the checkpoint is the shard's last record.
    let counter: u64 = row["leaseCounter"].as_n().unwrap().parse().unwrap();
    assert!(counter > 17, "{row:?}");
    assert_eq!(row["checkpoint"].as_s(), Some(second_seqs[9].as_str()));
    // The parent stays finished (or is deleted once its children started).
    if let Some(p) = rows.get(&first.shard_id) {
        assert_eq!(p["checkpoint"].as_s(), Some("SHARD_END"));
    }
}

/// A KCL worker still running on the table: it renews its lease (bumps the
/// counter) and writes no heartbeat. Sharing a table with it is unsafe, so
/// the consumer stops with an error naming the setting and that worker,
/// having taken nothing from it.
#[test]
fn a_live_kcl_worker_on_the_table_is_refused_by_name() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let shard = common::kinesis().list_shards(&stream, None).unwrap()[0].clone();
    let d = common::dynamodb();
    common::create_lease_table(&app);
    d.put_item(
        &app,
        &common::kcl_lease_row(&shard, Some("kcl-host:5e21"), 1, "TRIM_HORIZON"),
        None,
    )
    .unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = std::thread::spawn({
        let (d, app, done, shard_id) =
            (d.clone(), app.clone(), done.clone(), shard.shard_id.clone());
        move || {
            let key = HashMap::from([("leaseKey".to_owned(), AttributeValue::S(shard_id))]);
            let mut counter = 1u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                counter += 1;
                let renew =
                    kinesis_consumer::__test_support::Expression::new("SET leaseCounter = :n")
                        .value(":n", AttributeValue::N(counter.to_string()));
                d.update_item(&app, &key, &renew, None).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    });
    let consumer = common::consumer_builder(&stream, &app).build().unwrap();
    let started = Instant::now();
    let result = consumer.run(|batch| {
        assert!(
            batch.is_empty(),
            "a record of the KCL worker's shard was delivered"
        );
        Ok(())
    });
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    renewer.join().unwrap();
    let e = result.expect_err("the consumer refuses to share the table");
    assert!(
        matches!(&e, Error::Config { setting, .. } if *setting == "lease_table_name"),
        "{e}"
    );
    assert!(e.to_string().contains("kcl-host:5e21"), "{e}");
    // Refused once it has watched the owner renew for the failover time
    // (3 s), and not much later.
    assert!(took < Duration::from_secs(15), "refused after {took:?}");
    let row = common::lease_rows(&app)
        .unwrap()
        .into_iter()
        .find(|i| i["leaseKey"].as_s() == Some(shard.shard_id.as_str()))
        .unwrap();
    assert_eq!(row["leaseOwner"].as_s(), Some("kcl-host:5e21"));
}

/// A KCL worker started on our table takes a lease of ours (to the KCL it
/// looks expired: we renew no lease, we beat in the workers row) and renews
/// it. Our next checkpoint of that shard is refused, so we read the table
/// at once and stop with an error naming the KCL worker within the failover
/// time of the take; records of its shard stop at the refused checkpoint.
#[test]
fn a_kcl_worker_taking_a_lease_of_ours_is_refused_within_the_failover_time() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let producer = common::produce(&stream, "k");
    let failover = Duration::from_secs(3);
    let consumer = common::consumer_builder(&stream, &app)
        .failover_time(failover)
        .build()
        .unwrap();
    let d = common::dynamodb();
    let taken_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kcl = std::thread::spawn({
        let (d, app, done, taken_at) = (d.clone(), app.clone(), done.clone(), taken_at.clone());
        move || {
            use kinesis_consumer::__test_support::Expression;
            // Wait until our worker holds the lease and has checkpointed.
            let (key, mut counter) = loop {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let rows = common::lease_rows(&app).unwrap_or_default();
                let held = rows.into_iter().find(|r| {
                    r.get("leaseOwner").is_some()
                        && r["checkpoint"]
                            .as_s()
                            .is_some_and(|c| c.chars().all(|c| c.is_ascii_digit()))
                });
                if let Some(row) = held {
                    let counter: u64 = row["leaseCounter"].as_n().unwrap().parse().unwrap();
                    let key = HashMap::from([("leaseKey".to_owned(), row["leaseKey"].clone())]);
                    break (key, counter);
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            // The take, as the KCL writes it, then a renewal every third of
            // the failover time.
            let take = Expression::new("SET leaseOwner = :o, leaseCounter = :n")
                .value(":o", AttributeValue::S("kcl-host:9a1b".into()))
                .value(":n", AttributeValue::N((counter + 1).to_string()));
            d.update_item(&app, &key, &take, None).unwrap();
            *taken_at.lock().unwrap() = Some(Instant::now());
            counter += 1;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1000));
                counter += 1;
                let renew = Expression::new("SET leaseCounter = :n")
                    .value(":n", AttributeValue::N(counter.to_string()));
                d.update_item(&app, &key, &renew, None).unwrap();
            }
        }
    });
    let mut delivered_at: Vec<Instant> = Vec::new();
    let result = consumer.run(|batch| {
        if !batch.is_empty() {
            delivered_at.push(Instant::now());
        }
        Ok(())
    });
    let stopped = Instant::now();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    kcl.join().unwrap();
    producer.finish();
    let e = result.expect_err("the consumer refuses to share the table");
    assert!(
        matches!(&e, Error::Config { setting, .. } if *setting == "lease_table_name"),
        "{e}"
    );
    assert!(e.to_string().contains("kcl-host:9a1b"), "{e}");
    let taken = taken_at
        .lock()
        .unwrap()
        .expect("the KCL worker took the lease");
    let detected = stopped - taken;
    let last = delivered_at.iter().max().copied().unwrap_or(taken);
    let after = last.saturating_duration_since(taken);
    println!(
        "KCL worker: refused {:.2} s after its take (failover {failover:?}); last batch handed on {:.2} s after the take",
        detected.as_secs_f64(),
        after.as_secs_f64()
    );
    // Nominally a checkpoint interval and three rounds (3.2 s); 4.8 s
    // before a refused checkpoint made the worker read the table.
    assert!(
        detected <= failover + Duration::from_millis(1500),
        "{detected:?}"
    );
    // One checkpoint interval (the batch interval, 200 ms) and the batch
    // in hand, at most.
    assert!(after <= Duration::from_millis(600), "{after:?}");
}

/// A leader-run fleet of two workers: a KCL worker takes the lease of the
/// one that does not lead (it renews no lease row and reads no table, so
/// it cannot see the take itself). The leader sees the outsider renew,
/// writes why into the lock and stops; the other reads the lock at its
/// next heartbeat and stops with the same error. Both within the failover
/// time and two heartbeat periods of the take.
#[test]
fn a_kcl_worker_stops_every_worker_of_a_leader_run_fleet() {
    use kinesis_consumer::__test_support::{Expression, MemberItems};
    use kinesis_consumer::Coordination;
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let producer = common::produce(&stream, "k");
    let failover = Duration::from_secs(3);
    let (done, results) = mpsc::channel();
    for id in ["a", "b"] {
        let consumer = common::consumer_builder(&stream, &app)
            .worker_id(id)
            .coordination(Coordination::Leader)
            .failover_time(failover)
            .build()
            .unwrap();
        let done = done.clone();
        std::thread::spawn(move || {
            let result = consumer.run(|_batch| Ok(()));
            let _ = done.send((id, result, Instant::now()));
        });
    }
    // Wait until the follower holds a lease it checkpointed.
    let d = common::dynamodb();
    let members = MemberItems::new(d.clone(), &app);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (key, counter) = loop {
        assert!(Instant::now() < deadline, "no lease of the follower");
        let leader = members.leader().ok().flatten().map(|l| l.0);
        let rows = common::lease_rows(&app).unwrap_or_default();
        let follower_row = rows.into_iter().find(|r| {
            let owner = r.get("leaseOwner").and_then(|o| o.as_s());
            owner.is_some()
                && leader.is_some()
                && owner != leader.as_deref()
                && r["checkpoint"]
                    .as_s()
                    .is_some_and(|c| c.chars().all(|c| c.is_ascii_digit()))
        });
        if let Some(row) = follower_row {
            let counter: u64 = row["leaseCounter"].as_n().unwrap().parse().unwrap();
            break (
                HashMap::from([("leaseKey".to_owned(), row["leaseKey"].clone())]),
                counter,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let take = Expression::new("SET leaseOwner = :o, leaseCounter = :n")
        .value(":o", AttributeValue::S("kcl-host:77c3".into()))
        .value(":n", AttributeValue::N((counter + 1).to_string()));
    d.update_item(&app, &key, &take, None).unwrap();
    let taken = Instant::now();
    let mut stopped = Vec::new();
    let mut renewal = counter + 1;
    while stopped.len() < 2 {
        assert!(
            taken.elapsed() < Duration::from_secs(30),
            "still running 30 s after the take: {stopped:?}"
        );
        // The KCL renews every third of the failover time.
        if let Ok((id, result, at)) = results.recv_timeout(failover / 3) {
            stopped.push((id, result, at));
        }
        renewal += 1;
        let renew = Expression::new("SET leaseCounter = :n")
            .value(":n", AttributeValue::N(renewal.to_string()));
        d.update_item(&app, &key, &renew, None).unwrap();
    }
    producer.finish();
    // The leader watches the renewal for a heartbeat period (up to three
    // of its rounds); the follower reads the lock at its next round.
    let bound = failover + failover / 3 * 2;
    assert_fleet_stopped(
        stopped,
        "lease_table_name",
        "kcl-host:77c3",
        taken,
        bound,
        "the take",
    );
}

/// A worker of a stopped fleet: its id, what `run` returned, and when.
type Stopped = (&'static str, kinesis_consumer::Result<()>, Instant);

/// Every worker of `stopped` ended with a configuration error for
/// `setting` naming `culprit`, within `bound` of `since` (`what`).
fn assert_fleet_stopped(
    stopped: Vec<Stopped>,
    setting: &str,
    culprit: &str,
    since: Instant,
    bound: Duration,
    what: &str,
) {
    for (id, result, at) in stopped {
        let e = result.expect_err("every worker of the fleet refuses to go on");
        assert!(
            matches!(&e, Error::Config { setting: s, .. } if *s == setting),
            "{id}: {e}"
        );
        assert!(e.to_string().contains(culprit), "{id}: {e}");
        let after = at - since;
        println!(
            "worker {id} stopped {:.2} s after {what}",
            after.as_secs_f64()
        );
        assert!(after <= bound, "{id}: {after:?}");
    }
}

/// A worker of the workers-row coordination (a rolling upgrade from a
/// version whose default it was) joins a leader-run fleet: the leader
/// sees its beats move in the workers row and stops the whole fleet with
/// an error naming it and the `coordination` setting, before either side
/// takes the other's leases for expired.
#[test]
fn a_workers_row_worker_stops_every_worker_of_a_leader_run_fleet() {
    use kinesis_consumer::Coordination;
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let producer = common::produce(&stream, "k");
    let failover = Duration::from_secs(3);
    let (done, results) = mpsc::channel();
    let start = |id: &'static str, coordination| {
        let consumer = common::consumer_builder(&stream, &app)
            .worker_id(id)
            .coordination(coordination)
            .failover_time(failover)
            .build()
            .unwrap();
        let shutdown = consumer.shutdown_handle();
        let done = done.clone();
        std::thread::spawn(move || {
            let result = consumer.run(|_batch| Ok(()));
            let _ = done.send((id, result, Instant::now()));
        });
        shutdown
    };
    start("a", Coordination::Leader);
    start("b", Coordination::Leader);
    // Both leader-run workers beat in their items before the other kind
    // arrives.
    let members = kinesis_consumer::__test_support::MemberItems::new(common::dynamodb(), &app);
    let deadline = Instant::now() + Duration::from_secs(30);
    while members.survey().map_or(0, |s| s.workers.len()) < 2 {
        assert!(
            Instant::now() < deadline,
            "the leader-run fleet never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let joined = Instant::now();
    let other = start("c", Coordination::WorkersRow);
    let mut stopped = Vec::new();
    while stopped.len() < 2 {
        let left = Duration::from_secs(30).saturating_sub(joined.elapsed());
        let (id, result, at) = results
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("still running 30 s after c joined: {stopped:?}"));
        assert_ne!(id, "c", "the workers-row worker stopped: {result:?}");
        stopped.push((id, result, at));
    }
    other.shutdown();
    let (id, result, _) = results.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(id, "c");
    result.expect("the workers-row worker runs on and stops when told");
    producer.finish();
    // Two leader rounds see its beat move; a follower reads the lock at
    // its next round: within the failover time, before anyone takes a
    // lease of the other kind for expired.
    let what = "the workers-row worker started";
    assert_fleet_stopped(stopped, "coordination", "\"c\"", joined, failover, what);
}
