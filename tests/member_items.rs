//! The items of a leader-run fleet (issue 25) on dynalite: a worker's own
//! item and the lock item, written with the DynamoDB expressions the
//! library sends (conditions, set additions and deletions), and never
//! read as leases, by the library or by a reader of the KCL's layout.

mod common;

use kinesis_consumer::__test_support::{AttributeValue, MemberItems};

/// Nothing settled.
const NONE: (&[String], &[String]) = (&[], &[]);

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn members() -> (String, MemberItems) {
    let table = common::unique_name("members");
    common::create_lease_table(&table);
    (table.clone(), MemberItems::new(common::dynamodb(), &table))
}

#[test]
fn a_worker_item_takes_notes_and_its_heartbeat_settles_them() {
    let (_, items) = members();
    let (take, give) = items.beat("w1", 1, None, NONE).unwrap();
    assert!(take.is_empty() && give.is_empty());
    assert!(
        items
            .note("w1", true, &ids(&["shardId-1", "shardId-2"]))
            .unwrap()
    );
    assert!(items.note("w1", false, &ids(&["shardId-3"])).unwrap());
    let (take, give) = items.beat("w1", 2, Some(1), NONE).unwrap();
    assert_eq!(take.len(), 2);
    assert_eq!(give.into_iter().collect::<Vec<_>>(), ["shardId-3"]);
    // Settling a lease of each set empties `give` (DynamoDB drops the
    // empty set) and leaves the other lease to take.
    let (take, give) = items
        .beat(
            "w1",
            3,
            Some(2),
            (&ids(&["shardId-1"]), &ids(&["shardId-3"])),
        )
        .unwrap();
    assert_eq!(take.into_iter().collect::<Vec<_>>(), ["shardId-2"]);
    assert!(give.is_empty());
    // A lease in both sets (taken, then asked for before the next
    // heartbeat): settling its take leaves its give.
    items.note("w1", false, &ids(&["shardId-2"])).unwrap();
    let (take, give) = items
        .beat("w1", 4, Some(3), (&ids(&["shardId-2"]), &[]))
        .unwrap();
    assert!(take.is_empty());
    assert_eq!(give.into_iter().collect::<Vec<_>>(), ["shardId-2"]);
    // Settling what is in no set is no error.
    let nine = ids(&["shardId-9"]);
    items.beat("w1", 5, Some(4), (&nine, &nine)).unwrap();
}

#[test]
fn a_second_process_under_one_id_is_refused() {
    let (_, items) = members();
    items.beat("w1", 5, None, NONE).unwrap();
    items.beat("w1", 6, Some(5), NONE).unwrap();
    // A retry of a beat whose reply was lost is ours.
    items.beat("w1", 6, Some(5), NONE).unwrap();
    let namesake = items.beat("w1", 2, Some(1), NONE).unwrap_err();
    assert!(namesake.to_string().contains("worker_id"), "{namesake}");
}

#[test]
fn a_forgotten_worker_gets_no_notes_until_it_beats_again() {
    let (_, items) = members();
    items.beat("w1", 1, None, NONE).unwrap();
    // A dead worker's item goes only if its beat stood where it was seen.
    items.forget("w1", Some(0)).unwrap();
    assert!(items.note("w1", true, &ids(&["shardId-1"])).unwrap());
    items.forget("w1", Some(1)).unwrap();
    assert!(!items.note("w1", true, &ids(&["shardId-2"])).unwrap());
    let workers = items.survey().unwrap().workers;
    assert!(workers.is_empty(), "{workers:?}");
    // A worker that was only paused beats its item back.
    let (take, _) = items.beat("w1", 2, Some(1), NONE).unwrap();
    assert!(take.is_empty());
}

#[test]
fn the_lock_goes_to_one_claimer_and_moves_only_on_the_beat_seen() {
    let (_, items) = members();
    let successors = ids(&["w2", "w3"]);
    assert!(items.lead("w1", 1, None, &successors).unwrap());
    assert!(!items.lead("w2", 1, None, &[]).unwrap());
    // The leader's retry after a lost reply, then its renewal.
    assert!(items.lead("w1", 1, None, &successors).unwrap());
    assert!(items.lead("w1", 2, Some(("w1", 1)), &successors).unwrap());
    assert_eq!(
        items.leader().unwrap(),
        Some(("w1".to_owned(), 2, successors.clone()))
    );
    // A successor that saw beat 1 is too late; one that saw 2 stood still
    // takes the lock, and the old leader's next renewal fails.
    assert!(!items.lead("w2", 7, Some(("w1", 1)), &[]).unwrap());
    assert!(items.lead("w2", 7, Some(("w1", 2)), &[]).unwrap());
    assert!(!items.lead("w1", 3, Some(("w1", 2)), &successors).unwrap());
    assert_eq!(items.leader().unwrap().map(|l| l.0), Some("w2".to_owned()));
}

#[test]
fn member_items_are_never_leases() {
    let (table, items) = members();
    // A lease row as the KCL writes one.
    let row = std::collections::HashMap::from([
        (
            "leaseKey".to_owned(),
            AttributeValue::S("shardId-000000000000".into()),
        ),
        ("leaseOwner".to_owned(), AttributeValue::S("w1".into())),
        ("leaseCounter".to_owned(), AttributeValue::N("1".into())),
        (
            "checkpoint".to_owned(),
            AttributeValue::S("TRIM_HORIZON".into()),
        ),
    ]);
    common::dynamodb().put_item(&table, &row, None).unwrap();
    items.beat("w1", 1, None, NONE).unwrap();
    items
        .note("w1", true, &ids(&["shardId-000000000000"]))
        .unwrap();
    assert!(items.lead("w1", 1, None, &ids(&["w2"])).unwrap());
    let survey = items.survey().unwrap();
    assert_eq!(survey.leases, ["shardId-000000000000"]);
    let workers: Vec<_> = survey.workers.into_iter().collect();
    assert_eq!(workers, [("w1".to_owned(), 1)]);
    assert_eq!(survey.leader.as_deref(), Some("w1"));
    let listed =
        kinesis_consumer::list_leases(&common::config(&common::emulators().dynamodb_url), &table)
            .unwrap();
    assert_eq!(listed.len(), 1);
    // A reader of the KCL's layout skips every row whose entityType is
    // there and not LEASE: each of ours names one.
    let all = common::dynamodb().scan(&table).unwrap();
    assert_eq!(all.len(), 3);
    for item in all.iter().filter(|i| {
        i.get("leaseKey")
            .and_then(AttributeValue::as_s)
            .is_some_and(|k| k.starts_with("kinesis-consumer:"))
    }) {
        let kind = item.get("entityType").and_then(AttributeValue::as_s);
        assert!(matches!(kind, Some("WORKER" | "LEADER")), "{item:?}");
    }
}
