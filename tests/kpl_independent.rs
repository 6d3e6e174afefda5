//! Cross-checks `kpl` against an independent implementation: the Python
//! package `aws-kinesis-agg`, driven by `tests/kpl/make_agg.py`.
//!
//! Requires `python3` with the packages of `tests/kpl/requirements.txt`:
//! `pip install -r tests/kpl/requirements.txt`.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kinesis_consumer::kpl::{AggregatedRecord, Aggregator, deaggregate};
use serde_json::{Value, json};

const INSTALL_HINT: &str = "this test needs python3 with aws-kinesis-agg: \
     run `pip install -r tests/kpl/requirements.txt` from the crate root";

/// Runs `python3 tests/kpl/make_agg.py [args]`, feeding `stdin`, and parses
/// its JSON output.
fn run_script(args: &[&str], stdin: Option<&Value>) -> Value {
    let mut child = Command::new("python3")
        .arg("tests/kpl/make_agg.py")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HINT}"));
    let input = stdin.map(|v| v.to_string()).unwrap_or_default();
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // Write from another thread so a large output cannot deadlock us.
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("wait for python3");
    writer
        .join()
        .expect("stdin writer")
        .expect("write to make_agg.py");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "make_agg.py failed ({}): {stderr}\n{INSTALL_HINT}",
        output.status
    );
    serde_json::from_slice(&output.stdout).expect("make_agg.py prints JSON")
}

fn b64(value: &Value) -> Vec<u8> {
    STANDARD
        .decode(value.as_str().expect("base64 string"))
        .expect("valid base64")
}

/// An owned user record, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: Vec<u8>,
}

impl Rec {
    fn from_json(v: &Value) -> Rec {
        Rec {
            partition_key: v["partition_key"]
                .as_str()
                .expect("partition_key")
                .to_owned(),
            explicit_hash_key: v["explicit_hash_key"].as_str().map(str::to_owned),
            data: b64(&v["data_base64"]),
        }
    }
}

#[test]
fn python_aggregates_deaggregate_here() {
    let out = run_script(&[], None);
    eprintln!("generator: {}", out["generator"]);
    let aggregates = out["aggregates"].as_array().expect("aggregates");
    let mut user_records = 0;
    let mut multi_record_aggregates = 0;
    for (i, aggregate) in aggregates.iter().enumerate() {
        let group = aggregate["group"].as_str().expect("group");
        let blob = b64(&aggregate["data_base64"]);
        let expected: Vec<Rec> = aggregate["user_records"]
            .as_array()
            .expect("user_records")
            .iter()
            .map(Rec::from_json)
            .collect();
        let got: Vec<Rec> = deaggregate(&blob)
            .unwrap_or_else(|e| panic!("aggregate {i} ({group}): {e}"))
            .iter()
            .map(|r| Rec {
                partition_key: r.partition_key.to_owned(),
                explicit_hash_key: r.explicit_hash_key.map(str::to_owned),
                data: r.data.to_vec(),
            })
            .collect();
        assert_eq!(got, expected, "aggregate {i} ({group})");
        // The aggregate is put with its first user record's partition key.
        assert_eq!(
            aggregate["partition_key"].as_str(),
            Some(expected[0].partition_key.as_str()),
            "aggregate {i} ({group})"
        );
        user_records += got.len();
        if got.len() > 1 {
            multi_record_aggregates += 1;
        }
    }
    eprintln!(
        "checked {} aggregates from aws-kinesis-agg ({user_records} user records)",
        aggregates.len()
    );
    assert!(aggregates.len() > 5);
    assert!(multi_record_aggregates > 5);
}

/// A small deterministic pseudo-random generator (64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Groups of user records, each aggregated with its own `Aggregator`.
///
/// Within a group either every record has an explicit hash key or none has:
/// aws-kinesis-agg 1.2.3's de-aggregator reports `explicit_hash_key_table[0]`
/// for a record without an explicit hash key whenever the table is not empty,
/// so mixed aggregates cannot be checked against it. (Mixed aggregates it
/// writes are checked in `python_aggregates_deaggregate_here`.)
fn our_groups() -> Vec<(usize, Vec<Rec>)> {
    let mut rng = Lcg(4242);
    let rec = |pk: String, ehk: Option<String>, data: Vec<u8>| Rec {
        partition_key: pk,
        explicit_hash_key: ehk,
        data,
    };
    let mut groups = Vec::new();

    let small = (0..60)
        .map(|i| {
            let len = (rng.next() % 200) as usize;
            rec(format!("user-{}", i % 7), None, rng.bytes(len))
        })
        .chain([rec("user-0".into(), None, Vec::new())])
        .collect();
    groups.push((1_048_576, small));

    let max_ehk = u128::MAX.to_string();
    let with_ehk = (0..25)
        .map(|i| {
            let ehk = match i % 4 {
                0 => "0".to_owned(),
                1 => max_ehk.clone(),
                2 => (u128::from(rng.next()) << 64 | u128::from(rng.next())).to_string(),
                _ => "170141183460469231731687303715884105728".to_owned(),
            };
            let len = (rng.next() % 100) as usize;
            rec(format!("ключ-{}", i % 9), Some(ehk), rng.bytes(len))
        })
        .collect();
    groups.push((1_048_576, with_ehk));

    let split = (0..120)
        .map(|i| {
            let len = (rng.next() % 300) as usize;
            rec(format!("split-{}", i % 13), None, rng.bytes(len))
        })
        .collect();
    groups.push((2048, split));

    let split_ehk = (0..80)
        .map(|i| {
            let len = (rng.next() % 250) as usize;
            rec(
                format!("se-{}", i % 5),
                Some((rng.next() * 1_000_003).to_string()),
                rng.bytes(len),
            )
        })
        .collect();
    groups.push((1500, split_ehk));

    let large = (0..5)
        .map(|i| rec(format!("large-{i}"), None, rng.bytes(300_000)))
        .collect();
    groups.push((1_048_576, large));

    let near = vec![rec("k".into(), None, rng.bytes(1_048_576 - 100))];
    groups.push((1_048_576, near));
    groups
}

#[test]
fn our_aggregates_deaggregate_in_python() {
    let mut aggregates: Vec<(AggregatedRecord, Vec<Rec>)> = Vec::new();
    for (max, records) in our_groups() {
        let mut aggregator = Aggregator::with_max_bytes(max);
        let mut pending: Vec<Rec> = Vec::new();
        for r in records {
            let done = aggregator
                .add(&r.partition_key, r.explicit_hash_key.as_deref(), &r.data)
                .expect("record fits");
            if let Some(done) = done {
                assert_eq!(done.user_records, pending.len());
                aggregates.push((done, std::mem::take(&mut pending)));
            }
            pending.push(r);
        }
        let done = aggregator.flush().expect("records pending");
        assert_eq!(done.user_records, pending.len());
        aggregates.push((done, pending));
    }
    for (a, _) in &aggregates {
        assert!(a.data.len() + a.partition_key.len() <= 1_048_576);
    }

    let request = json!({
        "records": aggregates
            .iter()
            .map(|(a, _)| json!({
                "partition_key": a.partition_key,
                "data_base64": STANDARD.encode(&a.data),
            }))
            .collect::<Vec<_>>(),
    });
    let out = run_script(&["deaggregate"], Some(&request));
    let results = out["results"].as_array().expect("results");
    assert_eq!(results.len(), aggregates.len());
    let mut user_records = 0;
    for (i, (result, (_, expected))) in results.iter().zip(&aggregates).enumerate() {
        assert_eq!(
            result["aggregated"],
            Value::Bool(true),
            "aggregate {i}: aws-kinesis-agg did not see it as a valid aggregate"
        );
        let got: Vec<Rec> = result["user_records"]
            .as_array()
            .expect("user_records")
            .iter()
            .map(Rec::from_json)
            .collect();
        assert_eq!(&got, expected, "aggregate {i}");
        user_records += got.len();
    }
    eprintln!(
        "aws-kinesis-agg de-aggregated {} of our aggregates ({user_records} user records)",
        aggregates.len()
    );
    assert!(aggregates.len() > 5);
}
