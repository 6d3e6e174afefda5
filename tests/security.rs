//! Secrets stay secret and TLS is checked: credentials never appear in
//! Debug output, errors or logs (a whole consumer run, with faults, logged
//! at trace level), and an HTTPS endpoint with a self-signed certificate is
//! refused. Failing credential setups users configure (a role STS refuses,
//! SSO tokens that expired or are refused, a refresh that fails, a
//! credential_process that fails after printing secrets) end the `tail`
//! example with an error, and neither the error nor its trace-level log
//! holds a secret key, a session token, an SSO token, a refresh token, a
//! client secret or the token cache's contents. (Credential provider errors
//! and the container-credentials host rules are also unit-tested in
//! src/aws/credentials/.)

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::fake_aws::FakeAws;
use common::proxy::{Fault, Proxy, Trigger};
use common::sigcheck::Key;
use kinesis_consumer::aws::ClientConfig;
use kinesis_consumer::aws::credentials::{AssumeRole, Credentials, DefaultCredentialsChain};
use kinesis_consumer::aws::kinesis::KinesisClient;
use kinesis_consumer::{Consumer, Error, InitialPosition};

const KEY_ID: &str = "AKIDSECURITYTEST";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY-SECRET-9f3a";
const TOKEN: &str = "FwoGZXIvYXdzE-SESSION-TOKEN-77c1";

fn credentials() -> Credentials {
    Credentials::new(KEY_ID, SECRET).with_session_token(TOKEN)
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET) && !text.contains(TOKEN),
        "{what} shows a secret: {text}"
    );
}

/// Every log record of this test binary, at every level.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        LOG.lock()
            .unwrap()
            .push(format!("{} {} {}", r.level(), r.target(), r.args()));
    }
    fn flush(&self) {}
}

fn capture_log() {
    static LOGGER: Capture = Capture;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

#[test]
fn debug_output_never_shows_credentials() {
    let builder = Consumer::builder()
        .app_name("app")
        .stream_name("stream")
        .region("us-east-1")
        .endpoint_url("http://127.0.0.1:1")
        .dynamodb_endpoint_url("http://127.0.0.1:1")
        .cloudwatch_endpoint_url("http://127.0.0.1:1")
        .credentials(credentials())
        .dynamodb_credentials(credentials())
        .cloudwatch_credentials(credentials());
    assert_clean("ConsumerBuilder", &format!("{builder:?} {builder:#?}"));
    let consumer = builder.build().unwrap();
    assert_clean("Consumer", &format!("{consumer:?} {consumer:#?}"));
    let config = ClientConfig::new()
        .region("us-east-1")
        .credentials(credentials());
    assert_clean("ClientConfig", &format!("{config:?} {config:#?}"));
    let client = KinesisClient::new(&config.clone().endpoint_url("http://127.0.0.1:1")).unwrap();
    assert_clean("KinesisClient", &format!("{client:?}"));
    let c = credentials();
    let shown = format!("{c:?} {c:#?}");
    assert_clean("Credentials", &shown);
    assert!(shown.contains(KEY_ID), "the key id may show: {shown}");
    let chain = DefaultCredentialsChain::new().profile("nonexistent-profile-for-test");
    assert_clean("DefaultCredentialsChain", &format!("{chain:?} {chain:#?}"));
}

#[test]
fn endpoint_urls_show_no_user_information_or_query() {
    const URL: &str = "https://user:URL-PASSWORD@kinesis.example/?X-Token=URL-QUERY-SECRET";
    let assert_url_clean = |what: &str, text: &str| {
        assert!(
            !text.contains("URL-PASSWORD") && !text.contains("URL-QUERY-SECRET"),
            "{what} shows a secret of the URL: {text}"
        );
    };
    let builder = Consumer::builder()
        .app_name("app")
        .stream_name("stream")
        .region("us-east-1")
        .endpoint_url(URL)
        .credentials(credentials());
    assert_url_clean("ConsumerBuilder", &format!("{builder:?} {builder:#?}"));
    let err = builder.build().unwrap_err();
    assert_url_clean("the build error", &format!("{err} {err:?}"));
    let config = ClientConfig::new().region("us-east-1").endpoint_url(URL);
    assert_url_clean("ClientConfig", &format!("{config:?} {config:#?}"));
    let err = KinesisClient::new(&config).unwrap_err();
    assert_url_clean("the client error", &format!("{err} {err:?}"));
    let role = AssumeRole::new("arn:aws:iam::1:role/r", "s").endpoint_url(URL);
    assert_url_clean("AssumeRole", &format!("{role:?} {role:#?}"));
}

#[test]
fn a_whole_consumer_run_with_faults_logs_no_secret() {
    capture_log();
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    // Error paths log too: throttling, resets, HTML errors, garbled replies.
    proxy.add("GetRecords", Trigger::Next(3), Fault::throughput_exceeded());
    proxy.add("GetRecords", Trigger::Next(1), Fault::ResetAfterForward);
    proxy.add("UpdateItem", Trigger::Next(1), Fault::html(500));
    proxy.add("Scan", Trigger::Next(1), Fault::TruncatedJson);
    let k = common::kinesis();
    for i in 0..30 {
        k.put_record(&stream, &format!("k{i}"), None, format!("r{i}").as_bytes())
            .unwrap();
    }
    let consumer = Consumer::builder()
        .app_name(&app)
        .stream_name(&stream)
        .region("us-east-1")
        .endpoint_url(proxy.url())
        .dynamodb_endpoint_url(proxy.url())
        .cloudwatch_endpoint_url("http://127.0.0.1:9")
        .credentials(credentials())
        .initial_position(InitialPosition::TrimHorizon)
        .batch_interval(Duration::from_millis(200))
        .idle_time_between_reads(Duration::from_millis(100))
        .failover_time(Duration::from_secs(3))
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let mut delivered = 0;
    let started = Instant::now();
    let result = consumer.run(|batch| {
        delivered += batch.messages().count();
        if delivered >= 30 || started.elapsed() > Duration::from_secs(30) {
            stop.shutdown();
        }
        Ok(())
    });
    result.unwrap();
    assert_eq!(delivered, 30);
    // A failing run: the error returned carries no secret either.
    proxy.add(
        "*",
        Trigger::Always,
        Fault::aws(403, "UnrecognizedClientException"),
    );
    let err = Consumer::builder()
        .app_name(&app)
        .stream_name(&stream)
        .region("us-east-1")
        .endpoint_url(proxy.url())
        .dynamodb_endpoint_url(proxy.url())
        .cloudwatch_endpoint_url("http://127.0.0.1:9")
        .credentials(credentials())
        .build()
        .unwrap()
        .run(|_b| Ok(()))
        .unwrap_err();
    assert_clean("the error", &format!("{err} {err:?}"));

    let log = LOG.lock().unwrap().join("\n");
    let lines = log.lines().count();
    assert!(lines > 10, "the run logged ({lines} lines)");
    assert!(
        log.contains("throttled") || log.contains("retrying"),
        "error paths logged"
    );
    assert_clean("the log", &log);
    println!(
        "SECURITY | secret and session token in a traced consumer run with faults | a_whole_consumer_run_with_faults_logs_no_secret | {lines} log lines, 0 with a secret"
    );
}

#[test]
fn an_https_endpoint_with_a_self_signed_certificate_is_refused() {
    let e = common::emulators();
    let config = common::config(&e.kinesis_tls_url).max_attempts(1);
    let started = Instant::now();
    let err = KinesisClient::new(&config)
        .unwrap()
        .describe_stream_summary("any")
        .unwrap_err();
    let shown = err.to_string();
    println!(
        "SECURITY | HTTPS endpoint with a self-signed certificate | an_https_endpoint_with_a_self_signed_certificate_is_refused | {shown}"
    );
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The same endpoint with its certificate pinned: the JSON calls go over
/// TLS (HTTP/1.1, our own client) and succeed.
#[test]
fn an_https_endpoint_whose_certificate_is_pinned_serves_the_json_calls() {
    let e = common::emulators();
    let certificate = common::pinned_tls::kinesis_local_certificate(&common::emulators_dir());
    let config = common::config(&e.kinesis_tls_url)
        .fan_out_tls(common::pinned_tls::trusting_only(certificate));
    let tls = KinesisClient::new(&config).unwrap();
    let stream = common::create_stream(1);
    let put = tls.put_record(&stream, "key", None, b"over TLS").unwrap();
    let iterator = tls
        .get_shard_iterator(
            &stream,
            &put.shard_id,
            &kinesis_consumer::aws::kinesis::IteratorPosition::TrimHorizon,
        )
        .unwrap();
    let read = tls.get_records(&put.shard_id, &iterator, 10).unwrap();
    let data: Vec<&[u8]> = read.records.iter().map(|r| r.data()).collect();
    assert_eq!(data, [b"over TLS".as_slice()]);
    assert_eq!(read.records[0].partition_key(), "key");
}

/// Whoever can write the lease table cannot write to an operator's
/// terminal: the `leases` example prints the table's strings with their
/// control characters escaped.
#[test]
fn the_leases_example_escapes_control_characters_from_the_table() {
    use kinesis_consumer::__test_support::AttributeValue;
    let app = common::unique_name("app");
    common::create_lease_table(&app);
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: &str| AttributeValue::N(v.to_owned());
    let row = std::collections::HashMap::from([
        (
            "leaseKey".to_owned(),
            s("shardId-000000000001\u{1b}]0;title\u{7}"),
        ),
        (
            "leaseOwner".to_owned(),
            s("worker\u{1b}[2J\u{1b}[31m\u{9b}1m"),
        ),
        ("leaseCounter".to_owned(), n("1")),
        ("checkpoint".to_owned(), s("TRIM_HORIZON")),
        ("checkpointSubSequenceNumber".to_owned(), n("0")),
        ("ownerSwitchesSinceCheckpoint".to_owned(), n("0")),
        (
            "parentShardId".to_owned(),
            AttributeValue::SS(vec!["p\u{1b}[1m".to_owned()]),
        ),
    ]);
    common::dynamodb().put_item(&app, &row, None).unwrap();
    let e = common::emulators();
    let out = std::process::Command::new(common::example_binary("leases"))
        .args(["--app", &app, "--observe-ms", "0"])
        .env("AWS_ENDPOINT_URL_DYNAMODB", &e.dynamodb_url)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("shardId-000000000001\\u{1b}]0;title\\u{7}"),
        "the row is shown, escaped: {text:?}"
    );
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        raw.is_empty(),
        "control characters printed raw {raw:?}: {text:?}"
    );
}

/// Every secret the credential setups below hold.
const CONFIG_SECRETS: &[&str] = &[
    "base-secret-77f0",
    "SSO-TOKEN-EXPIRED-31aa",
    "SSO-TOKEN-REVOKED-42bb",
    "REFRESH-TOKEN-53cc",
    "CLIENT-SECRET-64dd",
    "PROCESS-SECRET-75ee",
    "PROCESS-TOKEN-86ff",
];

/// Runs `tail` with `config` as `~/.aws/config`, `credentials` as
/// `~/.aws/credentials`, the SSO cache files given, and `env`; it must
/// fail. Returns its stderr (the error and the trace-level log).
fn tail_fails(
    config: &str,
    credentials: &str,
    cache: &[(&str, &str)],
    env: &[(&str, &str)],
) -> String {
    let home = std::env::temp_dir().join(common::unique_name("security-home"));
    std::fs::create_dir_all(home.join(".aws/sso/cache")).unwrap();
    std::fs::write(home.join(".aws/config"), config).unwrap();
    std::fs::write(home.join(".aws/credentials"), credentials).unwrap();
    for (name, text) in cache {
        std::fs::write(home.join(".aws/sso/cache").join(name), text).unwrap();
    }
    let e = common::emulators();
    let mut child = std::process::Command::new(common::example_binary("tail"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("AWS_ENDPOINT_URL_KINESIS", &e.kinesis_url)
        .env("AWS_ENDPOINT_URL_DYNAMODB", &e.dynamodb_url)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "trace")
        .envs(env.iter().copied())
        .args(["--stream", "any-stream", "--app", "security-app"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("tail did not fail within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "tail should have failed: {stderr}");
    stderr
}

fn assert_no_config_secret(what: &str, text: &str) {
    for secret in CONFIG_SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

#[test]
fn failing_credential_setups_show_no_secret_in_errors_or_logs() {
    // STS refuses the role (it knows no such key): the source's secret
    // must not show.
    let sts = FakeAws::start(vec![Key::new("OTHER", "x", None)], "us-east-1", &[]);
    let shown = tail_fails(
        "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = base\n",
        "[base]\naws_access_key_id = BASEKEY\naws_secret_access_key = base-secret-77f0\n",
        &[],
        &[("AWS_PROFILE", "app"), ("AWS_ENDPOINT_URL_STS", &sts.url)],
    );
    assert!(shown.contains("SignatureDoesNotMatch"), "{shown}");
    assert_no_config_secret("a refused AssumeRole", &shown);

    // SSO: an expired token without refresh, a revoked token, a failing
    // refresh. sha1("corp") names the cache file.
    const CORP: &str = "ee0bfd2552fbd840c02cc48b6e823320543c450f.json";
    let sso_config = "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\n\
        sso_role_name = ReadOnly\n[sso-session corp]\nsso_region = us-east-1\n\
        sso_start_url = https://corp.awsapps.com/start\n";
    let portal = FakeAws::start(vec![], "us-east-1", &["SOME-OTHER-TOKEN"]);
    let sso_env = [
        ("AWS_PROFILE", "dev"),
        ("AWS_ENDPOINT_URL_SSO", portal.url.as_str()),
        ("AWS_ENDPOINT_URL_SSO_OIDC", portal.url.as_str()),
    ];
    let shown = tail_fails(
        sso_config,
        "",
        &[(
            CORP,
            r#"{"accessToken":"SSO-TOKEN-EXPIRED-31aa","expiresAt":"2000-01-01T00:00:00Z","clientSecret":"CLIENT-SECRET-64dd"}"#,
        )],
        &sso_env,
    );
    assert!(shown.contains("aws sso login --profile dev"), "{shown}");
    assert_no_config_secret("an expired SSO token", &shown);
    let shown = tail_fails(
        sso_config,
        "",
        &[(
            CORP,
            r#"{"accessToken":"SSO-TOKEN-REVOKED-42bb","expiresAt":"2099-01-01T00:00:00Z"}"#,
        )],
        &sso_env,
    );
    assert!(shown.contains("refused the cached token"), "{shown}");
    assert_no_config_secret("a refused SSO token", &shown);
    let shown = tail_fails(
        sso_config,
        "",
        &[(
            CORP,
            r#"{"accessToken":"SSO-TOKEN-EXPIRED-31aa","expiresAt":"2000-01-01T00:00:00Z",
                "clientId":"CLIENT-ID","clientSecret":"CLIENT-SECRET-64dd",
                "registrationExpiresAt":"2099-01-01T00:00:00Z","refreshToken":"REFRESH-TOKEN-53cc"}"#,
        )],
        &sso_env,
    );
    assert!(shown.contains("renewing it failed"), "{shown}");
    assert_no_config_secret("a failing SSO token refresh", &shown);

    // A credential_process that prints credentials, then fails.
    let shown = tail_fails(
        "[profile proc]\ncredential_process = sh -c 'echo \"{\\\"Version\\\":1,\\\"AccessKeyId\\\":\\\"A\\\",\\\"SecretAccessKey\\\":\\\"PROCESS-SECRET-75ee\\\",\\\"SessionToken\\\":\\\"PROCESS-TOKEN-86ff\\\"}\"; echo denied by policy >&2; exit 4'\n",
        "",
        &[],
        &[("AWS_PROFILE", "proc")],
    );
    assert!(
        shown.contains("exit status 4") && shown.contains("denied by policy"),
        "{shown}"
    );
    assert_no_config_secret("a failing credential_process", &shown);
    println!(
        "SECURITY | secrets of failing role, SSO and credential_process setups | failing_credential_setups_show_no_secret_in_errors_or_logs | 5 setups, errors and trace logs without a secret"
    );
}
