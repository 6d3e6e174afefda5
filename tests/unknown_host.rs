//! A misspelled region or endpoint host fails startup at once, naming the
//! setting the host came from and the host.
//!
//! A real name lookup must not leave the machine, so each case runs this
//! test binary again inside a network namespace of its own (`unshare -n`,
//! which needs root or user namespaces): there the lookup fails at once
//! without a packet sent. Where no namespace can be made the test says so
//! and passes without looking anything up.

use std::process::Command;
use std::time::{Duration, Instant};

use kinesis_consumer::{Consumer, Error, Payload, TransportKind};

/// Set in the re-executed test binary: the case to run inside the namespace.
const CASE_VAR: &str = "KINESIS_CONSUMER_UNKNOWN_HOST_CASE";

/// One case: its name, extra environment, and what the error must name.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

const CASES: &[Case] = &[
    (
        "builder-region",
        &[],
        &[
            "region `us-est-1` (`region`)",
            "kinesis.us-est-1.amazonaws.com",
        ],
    ),
    (
        "env-region",
        &[("AWS_REGION", "us-est-1")],
        &[
            "region `us-est-1` (`AWS_REGION`)",
            "kinesis.us-est-1.amazonaws.com",
        ],
    ),
    (
        "builder-endpoint",
        &[("AWS_REGION", "us-east-1")],
        &["`endpoint_url`", "kinesis.typo.invalid"],
    ),
    (
        "env-endpoint",
        &[
            ("AWS_REGION", "us-east-1"),
            (
                "AWS_ENDPOINT_URL_KINESIS",
                "http://kinesis.typo.invalid:4567",
            ),
        ],
        &["`AWS_ENDPOINT_URL_KINESIS`", "kinesis.typo.invalid"],
    ),
];

#[test]
fn an_unknown_host_fails_at_once_naming_its_setting() {
    if let Ok(case) = std::env::var(CASE_VAR) {
        run_case(&case);
        return;
    }
    // `unshare -n true` tells whether a namespace can be made here.
    let usable = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!(
            "skipped: `unshare -n` is not available, and a real lookup must not leave the machine"
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (case, env, _) in CASES {
        let mut command = Command::new("unshare");
        command
            .arg("-n")
            .arg(&exe)
            .args([
                "--exact",
                "an_unknown_host_fails_at_once_naming_its_setting",
                "--nocapture",
            ])
            .env(CASE_VAR, case)
            // Nothing from the caller's AWS environment: only the case's.
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_KINESIS")
            .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
            .env_remove("AWS_ENDPOINT_URL_CLOUDWATCH")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for (name, value) in *env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "case {case}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Runs one case inside the namespace: `run` must fail within 5 s with a
/// host-not-found error naming the case's setting and host.
fn run_case(case: &str) {
    let (_, _, expected) = CASES.iter().find(|(name, _, _)| *name == case).unwrap();
    let mut builder = Consumer::<Payload>::builder()
        .app_name("unknown-host-app")
        .stream_name("unknown-host-stream");
    builder = match case {
        "builder-region" => builder.region("us-est-1"),
        "builder-endpoint" => builder.endpoint_url("http://kinesis.typo.invalid:4567"),
        _ => builder,
    };
    let consumer = builder.build().unwrap();
    let started = Instant::now();
    let result = consumer.run(|_| Ok(()));
    let took = started.elapsed();
    let error = result.expect_err("a consumer of an unknown host must fail");
    let shown = error.to_string();
    eprintln!("case {case}: failed after {took:?}: {shown}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {shown}");
    assert!(
        matches!(
            error,
            Error::Transport {
                kind: TransportKind::HostNotFound,
                ..
            }
        ),
        "{error:?}"
    );
    for part in *expected {
        assert!(shown.contains(part), "{shown:?} does not name {part:?}");
    }
}
