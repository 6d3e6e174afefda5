//! A normal start logs nothing at warn or error, and its info lines read
//! as a person reads them (no `Some(..)`, no Debug of positions): the
//! `tail` example's first seconds on the emulators, with the lease table
//! CREATING for a while after it is created, as on DynamoDB.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_normal_start_logs_no_warning() {
    let stream = common::create_stream(2);
    let producer = common::produce(&stream, "quiet");
    // DynamoDB takes seconds to create a table; dynalite, told so, 1.5 s.
    let (dynamodb_url, mut dynalite) = common::start_dynamodb_creating_tables_in(1500);
    let app = common::unique_name("quiet-app");
    let mut command = common::aws_env(Command::new(common::example_binary("tail")));
    let mut tail = command
        .env("AWS_ENDPOINT_URL_DYNAMODB", &dynamodb_url)
        .args(["--stream", &stream, "--app", &app])
        .args(["--position", "trim-horizon", "--batch-interval-ms", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = tail.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        BufReader::new(stderr).read_to_string(&mut text).unwrap();
        text
    });
    // Running normally: records printed (so the table was waited for and
    // the leases taken), then a few seconds more.
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let first = lines.next();
    assert!(
        matches!(first, Some(Ok(_))),
        "tail printed no record: {first:?}"
    );
    while started.elapsed() < Duration::from_secs(4) && lines.next().is_some() {}
    let status = Command::new("kill")
        .args(["-INT", &tail.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Drain what is left so tail is never blocked on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let exit = tail.wait().unwrap();
    producer.finish();
    let _ = dynalite.kill();
    let _ = dynalite.wait();
    let log = log.join().unwrap();
    eprintln!("{log}");
    assert!(exit.success(), "tail exited with {exit}");
    assert!(
        log.contains("creating lease table"),
        "the table was not created by this start"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("[WARN") && !line.starts_with("[ERROR"),
            "a normal start logged: {line}"
        );
        for debug in ["Some(", "None", "ExtendedSequenceNumber", "At("] {
            assert!(!line.contains(debug), "Debug form ({debug}) in: {line}");
        }
    }
}
