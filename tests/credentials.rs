//! Credentials as users configure them, end to end: the `tail` example run
//! unchanged with `AWS_PROFILE` set to each profile shape (role from a
//! source profile, chained roles, credential_source, SSO in both styles
//! with a token refresh, credential_process, region from the profile, a
//! stream given by ARN), and the builder's per-service assume role.
//!
//! STS, the SSO portal, OIDC and the container endpoint are fakes on
//! 127.0.0.1 (tests/common/fake_aws.rs) that check each STS request's
//! SigV4 signature with aws-sigv4 and hand out distinct credentials; a
//! proxy in front of the emulators checks, again with aws-sigv4, that
//! every Kinesis and DynamoDB request is signed with the credentials the
//! profile should end in, and refuses any other.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake_aws::FakeAws;
use common::proxy::Proxy;
use common::sigcheck::{Key, check};
use kinesis_consumer::aws::credentials::{AssumeRole, Credentials};

const RECORDS: usize = 5;

fn base_key() -> Key {
    Key::new("BASEKEY", "base-secret", None)
}

/// A proxy in front of the emulators that forwards only requests signed
/// with `kinesis` (Kinesis) and `dynamodb` (DynamoDB) for us-east-1.
fn signing_proxy(kinesis: Key, dynamodb: Key) -> Proxy {
    let proxy = Proxy::for_emulators();
    proxy.check_signatures(move |r| {
        let target = r.header("x-amz-target").unwrap_or_default();
        let (key, service) = if target.starts_with("DynamoDB") {
            (&dynamodb, "dynamodb")
        } else {
            (&kinesis, "kinesis")
        };
        check(r, key, "us-east-1", service)?;
        Ok(key.id.clone())
    });
    proxy
}

/// Asserts that Kinesis reads and lease-table writes went through signed
/// with the expected keys, and nothing was refused.
fn assert_signed(proxy: &Proxy, kinesis: &str, dynamodb: &str) {
    let signed = proxy.signed_by();
    let count = |op: &str, key: &str| {
        signed
            .get(&(op.to_string(), key.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert!(count("GetRecords", kinesis) > 0, "{signed:?}");
    assert!(count("ListShards", kinesis) > 0, "{signed:?}");
    assert!(count("UpdateItem", dynamodb) > 0, "{signed:?}");
    assert!(
        proxy.signature_failures().is_empty(),
        "{:?}",
        proxy.signature_failures()
    );
}

/// A stream with records `r0`..`r4`.
fn stream_with_records() -> String {
    let stream = common::create_stream(1);
    let k = common::kinesis();
    for i in 0..RECORDS {
        k.put_record(&stream, &format!("k{i}"), None, format!("r{i}").as_bytes())
            .unwrap();
    }
    stream
}

/// A home directory with `.aws/config` and `.aws/credentials`.
fn home_with(config: &str, credentials: &str) -> PathBuf {
    let home = std::env::temp_dir().join(common::unique_name("creds-home"));
    std::fs::create_dir_all(home.join(".aws/sso/cache")).unwrap();
    std::fs::write(home.join(".aws/config"), config).unwrap();
    std::fs::write(home.join(".aws/credentials"), credentials).unwrap();
    home
}

/// Runs `tail` with only `env` (and PATH) until it printed every record,
/// then stops it with SIGTERM. Returns what it printed on stderr.
fn run_tail(home: &Path, env: &[(&str, &str)], stream_args: &[&str], proxy: &Proxy) -> String {
    let app = common::unique_name("creds-app");
    let mut child = Command::new(common::example_binary("tail"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_ENDPOINT_URL_KINESIS", proxy.url())
        .env("AWS_ENDPOINT_URL_DYNAMODB", proxy.url())
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .args(stream_args)
        .args(["--app", &app, "--position", "trim-horizon"])
        .args(["--batch-interval-ms", "200"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let sink = stderr.clone();
        let pipe = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in pipe.lines().map_while(|l| l.ok()) {
                sink.lock().unwrap().push(line);
            }
        });
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    while printed.len() < RECORDS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tail printed {} of {RECORDS} records; its stderr:\n{}",
                    printed.len(),
                    stderr.lock().unwrap().join("\n")
                );
            }
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let log = stderr.lock().unwrap().join("\n");
    assert!(status.success(), "tail exited with {status}: {log}");
    let mut data: Vec<String> = printed
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["partition_key"].as_str().unwrap().to_string()
        })
        .collect();
    data.sort();
    assert_eq!(data, ["k0", "k1", "k2", "k3", "k4"]);
    log
}

const BASE_CREDENTIALS: &str =
    "[base]\naws_access_key_id = BASEKEY\naws_secret_access_key = base-secret\n";

#[test]
fn tail_with_a_role_from_a_source_profile_and_the_profile_region() {
    let fake = FakeAws::start(vec![base_key()], "us-east-1", &[]);
    let home = home_with(
        "[profile app]\nrole_arn = arn:aws:iam::111122223333:role/app\nsource_profile = base\n\
         external_id = ext-1\nrole_session_name = tail-test\nregion = us-east-1\n",
        BASE_CREDENTIALS,
    );
    let issued = Key::new("ASIA-app", "secret-app", Some("token-app"));
    let proxy = signing_proxy(issued.clone(), issued);
    let stream = stream_with_records();
    run_tail(
        &home,
        &[("AWS_PROFILE", "app"), ("AWS_ENDPOINT_URL_STS", &fake.url)],
        &["--stream", &stream],
        &proxy,
    );
    assert_signed(&proxy, "ASIA-app", "ASIA-app");
    let log = fake.log();
    assert!(
        log.iter().any(|l| l.contains(
            "AssumeRole arn:aws:iam::111122223333:role/app by BASEKEY external_id=ext-1"
        )),
        "{log:?}"
    );
}

#[test]
fn tail_with_chained_roles() {
    let fake = FakeAws::start(vec![base_key()], "us-east-1", &[]);
    let home = home_with(
        "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = mid\nregion = us-east-1\n\
         [profile mid]\nrole_arn = arn:aws:iam::2:role/mid\nsource_profile = base\n",
        BASE_CREDENTIALS,
    );
    let issued = Key::new("ASIA-app", "secret-app", Some("token-app"));
    let proxy = signing_proxy(issued.clone(), issued);
    let stream = stream_with_records();
    run_tail(
        &home,
        &[("AWS_PROFILE", "app"), ("AWS_ENDPOINT_URL_STS", &fake.url)],
        &["--stream", &stream],
        &proxy,
    );
    assert_signed(&proxy, "ASIA-app", "ASIA-app");
    let log = fake.log();
    assert!(
        log.iter()
            .any(|l| l.contains("AssumeRole arn:aws:iam::2:role/mid by BASEKEY")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("AssumeRole arn:aws:iam::1:role/app by ASIA-mid")),
        "{log:?}"
    );
}

#[test]
fn tail_with_a_credential_source() {
    let fake = FakeAws::start(
        vec![Key::new(
            "CONTAINER",
            "secret-CONTAINER",
            Some("token-CONTAINER"),
        )],
        "us-east-1",
        &[],
    );
    let home = home_with(
        "[profile ecs]\nrole_arn = arn:aws:iam::1:role/ecs\ncredential_source = EcsContainer\n\
         region = us-east-1\n",
        "",
    );
    let issued = Key::new("ASIA-ecs", "secret-ecs", Some("token-ecs"));
    let proxy = signing_proxy(issued.clone(), issued);
    let stream = stream_with_records();
    let container = format!("{}/container", fake.url);
    run_tail(
        &home,
        &[
            ("AWS_PROFILE", "ecs"),
            ("AWS_ENDPOINT_URL_STS", &fake.url),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &container),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth"),
        ],
        &["--stream", &stream],
        &proxy,
    );
    assert_signed(&proxy, "ASIA-ecs", "ASIA-ecs");
}

/// sha1("corp") and sha1("https://legacy.awsapps.com/start"), computed
/// independently of the library.
const CORP_CACHE: &str = "ee0bfd2552fbd840c02cc48b6e823320543c450f.json";
const LEGACY_CACHE: &str = "79e435d7a515078e81c9dffc35f38d5687ebd3a7.json";

#[test]
fn tail_with_an_sso_session_profile() {
    let fake = FakeAws::start(vec![], "us-east-1", &["SSO-TOKEN-1"]);
    let home = home_with(
        "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\n\
         sso_role_name = ReadOnly\nregion = us-east-1\n\
         [sso-session corp]\nsso_region = eu-west-1\nsso_start_url = https://corp.awsapps.com/start\n",
        "",
    );
    std::fs::write(
        home.join(".aws/sso/cache").join(CORP_CACHE),
        r#"{"startUrl":"https://corp.awsapps.com/start","region":"eu-west-1",
            "accessToken":"SSO-TOKEN-1","expiresAt":"2099-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let issued = Key::new(
        "SSO-ReadOnly",
        "secret-SSO-ReadOnly",
        Some("token-SSO-ReadOnly"),
    );
    let proxy = signing_proxy(issued.clone(), issued);
    let stream = stream_with_records();
    let log = run_tail(
        &home,
        &[("AWS_PROFILE", "dev"), ("AWS_ENDPOINT_URL_SSO", &fake.url)],
        &["--stream", &stream],
        &proxy,
    );
    assert_signed(&proxy, "SSO-ReadOnly", "SSO-ReadOnly");
    assert!(!log.contains("SSO-TOKEN-1"), "the token was logged: {log}");
}

#[test]
fn tail_with_a_legacy_sso_profile_whose_token_is_refreshed() {
    let fake = FakeAws::start(vec![], "us-east-1", &["RENEWED-TOKEN"]);
    let home = home_with(
        "[profile legacy]\nsso_start_url = https://legacy.awsapps.com/start\nsso_region = eu-west-1\n\
         sso_account_id = 444455556666\nsso_role_name = Admin\nregion = us-east-1\n",
        "",
    );
    let cache = home.join(".aws/sso/cache").join(LEGACY_CACHE);
    std::fs::write(
        &cache,
        r#"{"accessToken":"OLD-TOKEN","expiresAt":"2000-01-01T00:00:00Z",
            "clientId":"CLIENT-ID","clientSecret":"CLIENT-SECRET",
            "registrationExpiresAt":"2099-01-01T00:00:00Z","refreshToken":"REFRESH-1"}"#,
    )
    .unwrap();
    let issued = Key::new("SSO-Admin", "secret-SSO-Admin", Some("token-SSO-Admin"));
    let proxy = signing_proxy(issued.clone(), issued);
    let stream = stream_with_records();
    let log = run_tail(
        &home,
        &[
            ("AWS_PROFILE", "legacy"),
            ("AWS_ENDPOINT_URL_SSO", &fake.url),
            ("AWS_ENDPOINT_URL_SSO_OIDC", &fake.url),
        ],
        &["--stream", &stream],
        &proxy,
    );
    assert_signed(&proxy, "SSO-Admin", "SSO-Admin");
    assert!(
        fake.log()
            .iter()
            .any(|l| l.contains("CreateToken refreshed")),
        "{:?}",
        fake.log()
    );
    let saved = std::fs::read_to_string(&cache).unwrap();
    assert!(
        saved.contains("RENEWED-TOKEN"),
        "the renewed token was saved"
    );
    for secret in ["OLD-TOKEN", "RENEWED-TOKEN", "CLIENT-SECRET", "REFRESH-1"] {
        assert!(!log.contains(secret), "{secret} was logged: {log}");
    }
}

#[test]
#[cfg(unix)]
fn tail_with_credential_process() {
    use std::os::unix::fs::PermissionsExt;
    let home = home_with("", "");
    let script = home.join("get-creds.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"PROCKEY\", \
         \"SecretAccessKey\": \"proc-secret\", \"SessionToken\": \"proc-token\", \
         \"Expiration\": \"2099-01-01T00:00:00Z\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        home.join(".aws/config"),
        format!(
            "[profile proc]\ncredential_process = {} --profile proc\nregion = us-east-1\n",
            script.display()
        ),
    )
    .unwrap();
    let issued = Key::new("PROCKEY", "proc-secret", Some("proc-token"));
    let proxy = signing_proxy(issued.clone(), issued);
    let stream = stream_with_records();
    let log = run_tail(
        &home,
        &[("AWS_PROFILE", "proc")],
        &["--stream", &stream],
        &proxy,
    );
    assert_signed(&proxy, "PROCKEY", "PROCKEY");
    assert!(!log.contains("proc-secret") && !log.contains("proc-token"));
}

/// One default chain per consumer: Kinesis, the lease table and
/// CloudWatch share it, so the credential_process runs once (it ran once
/// per service, three times, and an SSO token was renewed three times in
/// a race on its refresh token and cache file).
#[test]
#[cfg(unix)]
fn one_credential_process_run_for_kinesis_dynamodb_and_cloudwatch() {
    use std::os::unix::fs::PermissionsExt;
    let home = home_with("", "");
    let runs = home.join("runs");
    let script = home.join("get-creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> {}\necho '{{\"Version\": 1, \"AccessKeyId\": \"PROCKEY\", \
             \"SecretAccessKey\": \"proc-secret\", \"SessionToken\": \"proc-token\", \
             \"Expiration\": \"2099-01-01T00:00:00Z\"}}'\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        home.join(".aws/config"),
        format!(
            "[profile proc]\ncredential_process = {}\nregion = us-east-1\n",
            script.display()
        ),
    )
    .unwrap();
    let issued = Key::new("PROCKEY", "proc-secret", Some("proc-token"));
    let proxy = signing_proxy(issued.clone(), issued);
    let stream = stream_with_records();
    // Metrics on: the publisher signs its last PutMetricData at shutdown
    // (CloudWatch itself is unreachable here).
    let log = run_tail(
        &home,
        &[("AWS_PROFILE", "proc")],
        &["--stream", &stream, "--metrics-level", "summary"],
        &proxy,
    );
    assert_signed(&proxy, "PROCKEY", "PROCKEY");
    assert!(
        log.contains("PutMetricData to http://127.0.0.1:9"),
        "CloudWatch was called (signed, then refused): {log}"
    );
    let runs = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(runs.lines().count(), 1, "credential_process runs: {runs:?}");
}

#[test]
fn tail_with_a_stream_arn_and_a_role_profile() {
    let fake = FakeAws::start(vec![base_key()], "us-east-1", &[]);
    let home = home_with(
        "[profile app]\nrole_arn = arn:aws:iam::111122223333:role/app\nsource_profile = base\n",
        BASE_CREDENTIALS,
    );
    let issued = Key::new("ASIA-app", "secret-app", Some("token-app"));
    let proxy = signing_proxy(issued.clone(), issued);
    let stream = stream_with_records();
    let arn = common::kinesis()
        .describe_stream_summary(&stream)
        .unwrap()
        .stream_arn;
    assert!(arn.starts_with("arn:aws:kinesis:us-east-1:"), "{arn}");
    // No region anywhere but in the ARN.
    run_tail(
        &home,
        &[("AWS_PROFILE", "app"), ("AWS_ENDPOINT_URL_STS", &fake.url)],
        &["--stream-arn", &arn],
        &proxy,
    );
    assert_signed(&proxy, "ASIA-app", "ASIA-app");
}

#[test]
fn builder_assume_role_for_kinesis_only() {
    let fake = FakeAws::start(vec![base_key()], "us-east-1", &[]);
    let reader = Key::new("ASIA-reader", "secret-reader", Some("token-reader"));
    let proxy = signing_proxy(reader, base_key());
    let stream = stream_with_records();
    let app = common::unique_name("creds-app");
    let consumer = common::consumer_builder_at(proxy.url(), proxy.url(), &stream, &app)
        .credentials(Credentials::new("BASEKEY", "base-secret"))
        .kinesis_assume_role(
            AssumeRole::new("arn:aws:iam::222233334444:role/reader", "spark-like")
                .external_id("ext-2")
                .endpoint_url(&fake.url),
        )
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let mut seen = 0;
    let started = Instant::now();
    consumer
        .run(|batch| {
            seen += batch.messages().count();
            if seen >= RECORDS || started.elapsed() > Duration::from_secs(60) {
                stop.shutdown();
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, RECORDS);
    assert_signed(&proxy, "ASIA-reader", "BASEKEY");
    let log = fake.log();
    assert_eq!(
        log.iter().filter(|l| l.contains("AssumeRole")).count(),
        1,
        "assumed once, then cached: {log:?}"
    );
    assert!(
        log[0].contains(
            "AssumeRole arn:aws:iam::222233334444:role/reader by BASEKEY external_id=ext-2"
        ),
        "{log:?}"
    );
}
