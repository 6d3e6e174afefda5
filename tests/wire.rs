//! The wire layer against the real emulators: every Kinesis and DynamoDB
//! operation, including error paths.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use kinesis_consumer::__test_support::{AttributeValue, Expression, Item};
use kinesis_consumer::Error;
use kinesis_consumer::aws::kinesis::{IteratorPosition, PutRecordsEntry, ShardFilter};

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(id: &str) -> Item {
    HashMap::from([("leaseKey".to_owned(), s(id))])
}

#[test]
fn stream_lifecycle_put_and_read_every_iterator_type() {
    let k = common::kinesis();
    let stream = common::create_stream(2);
    let summary = k.describe_stream_summary(&stream).unwrap();
    assert_eq!(
        (summary.stream_name.as_str(), summary.stream_status.as_str()),
        (stream.as_str(), "ACTIVE")
    );
    assert_eq!(summary.open_shard_count, 2);
    assert!(summary.stream_arn.contains(&stream));

    let shards = k.list_shards(&stream, None).unwrap();
    assert_eq!(shards.len(), 2);
    assert!(
        shards
            .iter()
            .all(|s| !s.is_closed() && s.parents().count() == 0)
    );
    // Route every record to shard 0 by its explicit hash key.
    let shard0 = &shards[0];
    let hash = shard0.starting_hash_key.clone();

    let first = k.put_record(&stream, "pk-a", Some(&hash), b"one").unwrap();
    assert_eq!(first.shard_id, shard0.shard_id);
    let entries: Vec<PutRecordsEntry> = (0..5)
        .map(|i| PutRecordsEntry {
            partition_key: format!("pk-{i}"),
            explicit_hash_key: Some(hash.clone()),
            data: vec![i as u8; i * 100],
        })
        .collect();
    let results = k.put_records(&stream, &entries).unwrap();
    assert_eq!(results.len(), 5);
    let seqs: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap().sequence_number)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers grow: {seqs:?}"
    );
    assert!(first.sequence_number < seqs[0]);

    let read_all = |position: IteratorPosition| {
        let it = k
            .get_shard_iterator(&stream, &shard0.shard_id, &position)
            .unwrap();
        let out = k.get_records(&shard0.shard_id, &it, 100).unwrap();
        assert!(
            out.next_shard_iterator.is_some(),
            "an open shard always has a next iterator"
        );
        out.records
    };
    let all = read_all(IteratorPosition::TrimHorizon);
    assert_eq!(all.len(), 6);
    assert_eq!(all[0].data(), b"one");
    assert_eq!(all[0].partition_key(), "pk-a");
    assert!(all[0].approximate_arrival_timestamp().is_some());
    assert_eq!(all[3].data(), vec![2u8; 200]);
    assert_eq!(all[1].data(), Vec::<u8>::new(), "empty records survive");

    let at = read_all(IteratorPosition::AtSequenceNumber(seqs[2].clone()));
    assert_eq!(at.first().map(|r| r.sequence_number()), Some(&seqs[2]));
    assert_eq!(at.len(), 3);
    let after = read_all(IteratorPosition::AfterSequenceNumber(seqs[2].clone()));
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].sequence_number(), &seqs[3]);
    assert!(read_all(IteratorPosition::Latest).is_empty());
    std::thread::sleep(Duration::from_millis(20));
    assert!(read_all(IteratorPosition::AtTimestamp(SystemTime::now())).is_empty());
    let past = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(read_all(IteratorPosition::AtTimestamp(past)).len(), 6);

    // Limit is honoured and the next iterator continues where it stopped.
    let it = k
        .get_shard_iterator(&stream, &shard0.shard_id, &IteratorPosition::TrimHorizon)
        .unwrap();
    let page = k.get_records(&shard0.shard_id, &it, 4).unwrap();
    assert_eq!(page.records.len(), 4);
    let rest = k
        .get_records(
            &shard0.shard_id,
            page.next_shard_iterator.as_deref().unwrap(),
            100,
        )
        .unwrap();
    assert_eq!(rest.records.len(), 2);
    assert_eq!(rest.records[0].sequence_number(), &seqs[3]);

    k.delete_stream(&stream).unwrap();
}

#[test]
fn resharding_operations_and_shard_filters() {
    let k = common::kinesis();
    let stream = common::create_stream(2);
    let shards = k.list_shards(&stream, None).unwrap();
    let (a, b) = (&shards[0], &shards[1]);

    // Split shard 0 in the middle of its range.
    let start: u128 = a.starting_hash_key.parse().unwrap();
    let end: u128 = a.ending_hash_key.parse().unwrap();
    let middle = (start + (end - start) / 2).to_string();
    k.split_shard(&stream, &a.shard_id, &middle).unwrap();
    k.wait_until_active(&stream, Duration::from_secs(30))
        .unwrap();
    let after_split = k.list_shards(&stream, None).unwrap();
    assert_eq!(after_split.len(), 4);
    let children: Vec<_> = after_split
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(&a.shard_id))
        .collect();
    assert_eq!(children.len(), 2);
    assert!(
        after_split
            .iter()
            .any(|s| s.shard_id == a.shard_id && s.is_closed())
    );

    // The closed parent reaches its end: no next iterator.
    let it = k
        .get_shard_iterator(&stream, &a.shard_id, &IteratorPosition::TrimHorizon)
        .unwrap();
    let mut next = Some(it);
    let mut reads = 0;
    while let Some(it) = next {
        next = k
            .get_records(&a.shard_id, &it, 100)
            .unwrap()
            .next_shard_iterator;
        reads += 1;
        assert!(reads < 50, "a closed shard must end");
    }

    // Merge the second child with shard 1's neighbour.
    let upper_child = children
        .iter()
        .max_by_key(|s| s.starting_hash_key.parse::<u128>().unwrap())
        .unwrap();
    k.merge_shards(&stream, &upper_child.shard_id, &b.shard_id)
        .unwrap();
    k.wait_until_active(&stream, Duration::from_secs(30))
        .unwrap();
    let after_merge = k.list_shards(&stream, None).unwrap();
    let merged = after_merge
        .iter()
        .find(|s| s.adjacent_parent_shard_id.is_some())
        .expect("a merged shard");
    let parents: Vec<_> = merged.parents().collect();
    assert!(
        parents.contains(&upper_child.shard_id.as_str()) && parents.contains(&b.shard_id.as_str())
    );

    let open = k
        .list_shards(&stream, Some(&ShardFilter::AtLatest))
        .unwrap();
    assert_eq!(
        open.len(),
        2,
        "two open shards after split + merge: {open:?}"
    );
    assert!(open.iter().all(|s| !s.is_closed()));

    k.update_shard_count(&stream, 4).unwrap();
    let summary = k
        .wait_until_active(&stream, Duration::from_secs(30))
        .unwrap();
    assert_eq!(summary.open_shard_count, 4);
    k.delete_stream(&stream).unwrap();
}

#[test]
fn kinesis_error_paths_carry_code_status_and_request_id() {
    let k = common::kinesis();
    let missing = common::unique_name("missing");
    let err = k.describe_stream_summary(&missing).unwrap_err();
    let Error::Service(e) = &err else {
        panic!("expected a service error, got {err:?}")
    };
    assert_eq!(e.code, "ResourceNotFoundException");
    assert_eq!(e.status, 400);
    assert!(e.request_id.is_some(), "request id kept: {e:?}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("ResourceNotFoundException"),
        "{err}"
    );

    let err = k.list_shards(&missing, None).unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"));

    // kinesis-local answers a garbled iterator with a bare 500 (AWS says
    // InvalidArgumentException); either way it is a service error that names the call.
    let err = k
        .get_records("shardId-000000000000", "not-an-iterator", 10)
        .unwrap_err();
    let Error::Service(e) = &err else {
        panic!("expected a service error, got {err:?}")
    };
    assert!(e.status >= 400, "{e:?}");
    assert!(err.to_string().starts_with("GetRecords: "), "{err}");

    let stream = common::create_stream(1);
    let err = k
        .get_shard_iterator(
            &stream,
            "shardId-999999999999",
            &IteratorPosition::TrimHorizon,
        )
        .unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"));
    let err = k.create_stream(&stream, 1).unwrap_err();
    assert_eq!(err.code(), Some("ResourceInUseException"));
    k.delete_stream(&stream).unwrap();
}

#[test]
fn dynamodb_items_conditions_and_scan_paging() {
    let d = common::dynamodb();
    let table = common::unique_name("leases");
    d.create_table(&table, "leaseKey").unwrap();
    let desc = d
        .wait_until_active(&table, Duration::from_secs(10))
        .unwrap();
    assert_eq!(desc.hash_key.as_deref(), Some("leaseKey"));
    assert_eq!(
        d.create_table(&table, "leaseKey").unwrap_err().code(),
        Some("ResourceInUseException")
    );

    let mut item = key("shardId-0");
    item.insert("leaseCounter".into(), n(1));
    item.insert("leaseOwner".into(), s("worker-a"));
    item.insert(
        "parentShardId".into(),
        AttributeValue::SS(vec!["p1".into(), "p2".into()]),
    );
    let absent = Expression::new("attribute_not_exists(leaseKey)");
    d.put_item(&table, &item, Some(&absent)).unwrap();
    let err = d.put_item(&table, &item, Some(&absent)).unwrap_err();
    assert!(err.is_condition_failed(), "{err}");
    assert!(!err.is_retryable());

    let got = d.get_item(&table, &key("shardId-0")).unwrap().unwrap();
    assert_eq!(got, item);
    assert!(d.get_item(&table, &key("nope")).unwrap().is_none());

    let bump = Expression::new("SET #c = #c + :one")
        .name("#c", "leaseCounter")
        .value(":one", n(1));
    let owned_by = |owner: &str| {
        Expression::new("#o = :owner AND #c = :old")
            .name("#o", "leaseOwner")
            .name("#c", "leaseCounter")
            .value(":owner", s(owner))
            .value(":old", n(1))
    };
    let after = d
        .update_item(
            &table,
            &key("shardId-0"),
            &bump,
            Some(&owned_by("worker-a")),
        )
        .unwrap();
    assert_eq!(after["leaseCounter"].as_n(), Some("2"));
    let err = d
        .update_item(
            &table,
            &key("shardId-0"),
            &bump,
            Some(&owned_by("worker-a")),
        )
        .unwrap_err();
    assert!(err.is_condition_failed(), "stale counter refused: {err}");

    let wrong_owner = Expression::new("#o = :owner")
        .name("#o", "leaseOwner")
        .value(":owner", s("worker-b"));
    assert!(
        d.delete_item(&table, &key("shardId-0"), Some(&wrong_owner))
            .unwrap_err()
            .is_condition_failed()
    );

    // Enough items (~400 KiB each page limit is 1 MiB) to force several scan pages.
    let filler = "x".repeat(100_000);
    for i in 1..=25 {
        let mut it = key(&format!("shardId-{i}"));
        it.insert("pad".into(), s(&filler));
        d.put_item(&table, &it, None).unwrap();
    }
    let all = d.scan(&table).unwrap();
    assert_eq!(all.len(), 26);
    d.delete_item(&table, &key("shardId-0"), None).unwrap();
    assert_eq!(d.scan(&table).unwrap().len(), 25);

    let missing = common::unique_name("no-table");
    assert_eq!(
        d.describe_table(&missing).unwrap_err().code(),
        Some("ResourceNotFoundException")
    );
    d.delete_table(&table).unwrap();
}

#[test]
fn unreachable_endpoint_is_a_transport_error_after_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = common::config(&format!("http://127.0.0.1:{port}"))
        .max_attempts(3)
        .retry_wait(Duration::from_millis(10));
    let k = kinesis_consumer::aws::kinesis::KinesisClient::new(&config).unwrap();
    let started = std::time::Instant::now();
    let err = k.describe_stream_summary("x").unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
}
