//! The file sink example (manual checkpoints after fsync) killed with
//! SIGKILL at random moments while a producer writes, in both processing
//! models: the flushed files still hold every record put, in order within
//! each file.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use kinesis_consumer::SequenceNumber;

fn spawn_sink(stream: &str, app: &str, dir: &Path, extra: &[&str]) -> Child {
    common::aws_env(Command::new(common::example_binary("file_sink")))
        .args([
            "--stream",
            stream,
            "--app",
            app,
            "--position",
            "trim-horizon",
        ])
        .args(["--flush-secs", "1", "--worker-id", "sink-1"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the sink starts reading a shard (its log says so): a
/// restart under the same worker id first waits out a heartbeat period
/// for the killed process's heartbeat to stand still.
fn wait_reading(sink: &mut Child) {
    let stderr = BufReader::new(sink.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("starting shard") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the sink started reading a shard");
}

/// The records in the flushed (`.jsonl`) files, checking that each file
/// holds complete lines of one shard in sequence order.
fn flushed(dir: &Path) -> HashSet<String> {
    let mut data = HashSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'), "{} ends mid-line", path.display());
        let mut shard: Option<String> = None;
        let mut last: Option<SequenceNumber> = None;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let this = v["shard_id"].as_str().unwrap().to_owned();
            assert_eq!(
                shard.get_or_insert(this.clone()),
                &this,
                "one shard per file"
            );
            let seq = SequenceNumber::parse(v["sequence_number"].as_str().unwrap()).unwrap();
            assert!(
                last.as_ref().is_none_or(|l| *l < seq),
                "{}: out of order",
                path.display()
            );
            last = Some(seq);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["data_base64"].as_str().unwrap())
                .unwrap();
            data.insert(String::from_utf8(bytes).unwrap());
        }
    }
    data
}

#[test]
fn every_record_is_in_the_flushed_files_after_kill_9_at_random_moments() {
    every_record_survives_kill_9(&[]);
}

#[test]
fn with_processors_every_record_is_in_the_flushed_files_after_kill_9_at_random_moments() {
    every_record_survives_kill_9(&["--processors"]);
}

/// The file sink (its batch handler, or its processors with `extra`)
/// killed four times, then run until every record put is in a flushed file.
fn every_record_survives_kill_9(extra: &[&str]) {
    let stream = common::create_stream(2);
    let app = common::unique_name("sink");
    let dir = std::env::temp_dir().join(common::unique_name("file-sink"));
    std::fs::create_dir_all(&dir).unwrap();
    let producer = common::produce(&stream, "r");
    // Kill moments between 0.3 s and 3 s after it starts reading: before
    // the first flush, during one, and between flushes, differently on
    // every run.
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..4 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after = Duration::from_millis(300 + (seed >> 33) % 2700);
        eprintln!("round {round}: SIGKILL after {after:?}");
        let mut sink = spawn_sink(&stream, &app, &dir, extra);
        wait_reading(&mut sink);
        std::thread::sleep(after);
        sink.kill().unwrap(); // SIGKILL
        sink.wait().unwrap();
    }
    let put = producer.finish();
    let mut sink = spawn_sink(&stream, &app, &dir, extra);
    wait_reading(&mut sink); // and drain its log
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = flushed(&dir);
        let missing = put.iter().filter(|r| !have.contains(*r)).count();
        if missing == 0 {
            break;
        }
        assert!(
            sink.try_wait().unwrap().is_none(),
            "the sink exited with {missing} records missing"
        );
        assert!(
            Instant::now() < deadline,
            "{missing} of {} records never reached a flushed file",
            put.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = sink.wait().unwrap();
    assert!(exit.success(), "SIGTERM: {exit}");
    assert!(flushed(&dir).len() >= put.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_the_sink_refuses_go_to_the_dead_letter_directory() {
    refused_records_are_dead_lettered(&[]);
}

#[test]
fn with_processors_records_the_sink_refuses_go_to_the_dead_letter_directory() {
    refused_records_are_dead_lettered(&["--processors"]);
}

/// The data of the lines of the dead-letter files in `dir`, each line
/// checked to name the sink's reason.
fn dead_lettered(dir: &Path) -> Vec<String> {
    let mut data = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let error = v["error"].as_str().unwrap();
            assert!(error.contains("--max-record-bytes 100"), "{error}");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["data_base64"].as_str().unwrap())
                .unwrap();
            data.push(String::from_utf8(bytes).unwrap());
        }
    }
    data.sort();
    data
}

/// Two records too large for `--max-record-bytes` among 200: they reach
/// the dead-letter directory (once each), every other record a flushed
/// file, and the sink goes on.
fn refused_records_are_dead_lettered(extra: &[&str]) {
    let stream = common::create_stream(2);
    let app = common::unique_name("sink-dead");
    let dir = std::env::temp_dir().join(common::unique_name("file-sink"));
    let dead_dir = std::env::temp_dir().join(common::unique_name("file-sink-dead"));
    std::fs::create_dir_all(&dir).unwrap();
    let big = |i: usize| format!("big-{i}-{}", "x".repeat(200));
    let mut data: Vec<String> = (0..200).map(|i| format!("r-{i}")).collect();
    data.insert(50, big(1));
    data.insert(150, big(2));
    let entries: Vec<kinesis_consumer::aws::kinesis::PutRecordsEntry> = data
        .iter()
        .enumerate()
        .map(|(i, d)| kinesis_consumer::aws::kinesis::PutRecordsEntry {
            partition_key: format!("key-{}", i % 16),
            explicit_hash_key: None,
            data: d.clone().into_bytes(),
        })
        .collect();
    for r in common::kinesis().put_records(&stream, &entries).unwrap() {
        r.unwrap();
    }
    let mut args = vec!["--max-record-bytes", "100", "--dead-letter"];
    args.push(dead_dir.to_str().unwrap());
    args.extend(extra);
    let mut sink = spawn_sink(&stream, &app, &dir, &args);
    wait_reading(&mut sink);
    let small: HashSet<String> = (0..200).map(|i| format!("r-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while flushed(&dir) != small || dead_lettered(&dead_dir).len() < 2 {
        assert!(sink.try_wait().unwrap().is_none(), "the sink exited");
        assert!(
            Instant::now() < deadline,
            "flushed {} of 200, dead-lettered {:?}",
            flushed(&dir).len(),
            dead_lettered(&dead_dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(sink.wait().unwrap().success());
    assert_eq!(dead_lettered(&dead_dir), [big(1), big(2)]);
    assert_eq!(flushed(&dir), small);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dead_dir);
}

#[test]
fn several_streams_are_written_to_files_named_after_their_lease_keys() {
    let (a, b) = (common::create_stream(1), common::create_stream(1));
    let k = common::kinesis();
    let mut put = HashSet::new();
    for (stream, prefix) in [(&a, "a"), (&b, "b")] {
        for n in 0..3 {
            let data = format!("{prefix}-{n}");
            k.put_record(stream, "pk", None, data.as_bytes()).unwrap();
            put.insert(data);
        }
    }
    for extra in [&[][..], &["--processors"][..]] {
        let app = common::unique_name("sink-multi");
        let dir = std::env::temp_dir().join(common::unique_name("file-sink-multi"));
        std::fs::create_dir_all(&dir).unwrap();
        let args = [&["--stream", b.as_str()][..], extra].concat();
        let mut sink = spawn_sink(&a, &app, &dir, &args);
        wait_reading(&mut sink);
        let deadline = Instant::now() + Duration::from_secs(60);
        while flushed(&dir) != put {
            assert!(
                Instant::now() < deadline,
                "{extra:?}: flushed {:?}",
                flushed(&dir)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &sink.id().to_string()])
            .status();
        assert!(sink.wait().unwrap().success());
        // Each file is named after its shard's lease key, `+` for `:`,
        // and holds that stream's records.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let parts: Vec<&str> = name.splitn(4, '+').collect();
            assert_eq!(parts.len(), 4, "{name}");
            let stream = parts[1];
            assert!(stream == a || stream == b, "{name}");
            assert!(parts[3].starts_with("shardId-000000000000-"), "{name}");
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["stream"], stream, "{name}: {line}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
