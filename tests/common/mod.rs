//! Test harness: starts the pinned emulators (kinesis-local, dynalite, and
//! moto for CloudWatch) once per test binary on free 127.0.0.1 ports. They
//! exit by themselves when the test process does (see emulators/loopback.js
//! and tests/metrics/moto_server.py).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kinesis_consumer::__test_support::DynamoDbClient;
use kinesis_consumer::aws::ClientConfig;
use kinesis_consumer::aws::credentials::Credentials;
use kinesis_consumer::aws::kinesis::{KinesisClient, PutRecordsEntry};

// The crate's own event-stream codec and HTTP/2 frames, for the front end.
#[path = "../../src/aws/event_stream.rs"]
pub mod event_stream;
pub mod fake_aws;
#[path = "../../src/aws/http2/frame.rs"]
pub mod h2_frame;
pub mod h2_front;
pub mod pinned_tls;
pub mod proxy;
// The crate's own test server and signature oracle, the same files its
// unit tests use.
#[path = "../../src/aws/test_sigcheck.rs"]
pub mod sigcheck;
#[path = "../../src/aws/test_server.rs"]
pub mod test_server;

/// Endpoints of the running emulators.
pub struct Emulators {
    pub kinesis_url: String,
    pub dynamodb_url: String,
    /// kinesis-local's TLS port (a self-signed certificate).
    pub kinesis_tls_url: String,
    /// Kept, not waited for: they exit with the test process.
    _processes: Vec<Child>,
}

/// A needle that matches the body of a worker's heartbeat (the one write
/// per round that keeps all its leases), for proxy rules.
pub const HEARTBEAT: &str = r#""UpdateExpression":"SET #type = :type, #beat = :beat"#;
/// Matches the body of a write of the leader's lock (a claim or a renewal).
pub const LOCK_WRITE: &str = r#""UpdateExpression":"SET #type = :type, #leader = :me"#;

pub fn emulators_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("emulators")
}

/// Stops a test that cannot get its emulators, saying in one line what to
/// run instead of panicking deep in a helper.
pub fn cannot_run(what: &str, why: impl std::fmt::Display) -> ! {
    panic!(
        "{what} failed ({why}): the integration tests need Node.js with npm and Python 3 with pip; run `bash scripts/test.sh`, which installs the pinned emulators and runs every test"
    )
}

/// Installs the pinned emulators if they are missing.
pub fn install_emulators() {
    let dir = emulators_dir();
    if dir.join("node_modules/kinesis-local/main.js").exists()
        && dir.join("node_modules/dynalite/cli.js").exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .unwrap_or_else(|e| cannot_run("running npm", e));
    if !status.success() {
        cannot_run(&format!("npm ci in {}", dir.display()), status);
    }
}

/// A port that is free now, for a server a test starts. Chosen below
/// Linux's ephemeral range (32768-60999): test binaries run side by side,
/// and a port from that range can be taken by any process's outgoing
/// connection before the server binds it, or be connected to itself by a
/// `connect` made while nothing listens (so a wait for the server would
/// see a listener that is not there).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 20_000 + (random % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts a server with `spawn` on `count` free ports and waits until it
/// listens on all of them. Another process may bind a port between the
/// check and the server's bind; the server then exits, and it is started
/// again on other ports.
fn start_listening(what: &str, count: usize, spawn: impl Fn(&[u16]) -> Child) -> (Vec<u16>, Child) {
    for _ in 0..5 {
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let mut child = spawn(&ports);
        if ports
            .iter()
            .all(|&port| wait_for_port(port, what, &mut child))
            && child.try_wait().unwrap().is_none()
        {
            return (ports, child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{what} exited at start five times (ports taken?)")
}

/// Waits until something listens on `port`; false if `child` exited first.
fn wait_for_port(port: u16, what: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Starts kinesis-local on a free port; its plain-HTTP URL and process.
pub fn start_kinesis() -> (String, Child) {
    let (plain, _tls, child) = start_kinesis_with_tls();
    (plain, child)
}

/// Starts kinesis-local; its plain-HTTP URL, its HTTPS URL (self-signed
/// certificate) and its process.
pub fn start_kinesis_with_tls() -> (String, String, Child) {
    let dir = emulators_dir();
    let pkg = dir.join("node_modules/kinesis-local");
    let (ports, child) = start_listening("kinesis-local", 2, |ports| {
        let mut cmd = Command::new("node");
        cmd.arg("-r")
            .arg(dir.join("loopback.js"))
            .arg(pkg.join("main.js"))
            .current_dir(&pkg)
            .env("KINESIS_MOCK_CERT_PATH", pkg.join("server.json"))
            .env("KINESIS_MOCK_PLAIN_PORT", ports[0].to_string())
            .env("KINESIS_MOCK_TLS_PORT", ports[1].to_string())
            .env("LOG_LEVEL", "WARN")
            .env("SHARD_LIMIT", "1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for var in [
            "CREATE_STREAM_DURATION",
            "DELETE_STREAM_DURATION",
            "MERGE_SHARDS_DURATION",
            "SPLIT_SHARD_DURATION",
            "UPDATE_SHARD_COUNT_DURATION",
        ] {
            cmd.env(var, "50ms");
        }
        cmd.spawn()
            .unwrap_or_else(|e| cannot_run("starting kinesis-local with node", e))
    });
    let (plain, tls) = (ports[0], ports[1]);
    (
        format!("http://127.0.0.1:{plain}"),
        format!("https://127.0.0.1:{tls}"),
        child,
    )
}

/// Starts dynalite on a free port; its URL and process.
pub fn start_dynamodb() -> (String, Child) {
    start_dynamodb_creating_tables_in(0)
}

/// Starts dynalite on a free port, its tables CREATING for `ms`
/// milliseconds after CreateTable as on DynamoDB; its URL and process.
pub fn start_dynamodb_creating_tables_in(ms: u32) -> (String, Child) {
    let dir = emulators_dir();
    let (ports, child) = start_listening("dynalite", 1, |ports| {
        Command::new("node")
            .arg("-r")
            .arg(dir.join("loopback.js"))
            .arg(dir.join("node_modules/dynalite/cli.js"))
            .args(["--host", "127.0.0.1", "--port", &ports[0].to_string()])
            .args(["--createTableMs", &ms.to_string()])
            .args(["--deleteTableMs", "0", "--updateTableMs", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| cannot_run("starting dynalite with node", e))
    });
    let port = ports[0];
    (format!("http://127.0.0.1:{port}"), child)
}

/// Installs the pinned moto (tests/metrics/requirements.txt) if it is missing.
pub fn install_moto() {
    let has_moto = |python: &str| {
        Command::new(python)
            .args([
                "-c",
                "import moto, moto.server, flask; assert moto.__version__ == '5.2.5'",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_moto("python3") {
        return;
    }
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics/requirements.txt");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .status()
        .unwrap_or_else(|e| cannot_run("running python3 -m pip", e));
    if !status.success() {
        cannot_run(
            &format!("pip install -r {}", requirements.display()),
            status,
        );
    }
}

/// Starts moto's server (CloudWatch and more) on a free port; its URL and
/// process. It exits when this process does.
pub fn start_moto() -> (String, Child) {
    install_moto();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics/moto_server.py");
    let (ports, child) = start_listening("moto", 1, |ports| {
        Command::new("python3")
            .arg(&script)
            .arg(ports[0].to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| cannot_run("starting moto with python3", e))
    });
    let port = ports[0];
    (format!("http://127.0.0.1:{port}"), child)
}

/// moto of this test binary, started on first use: its URL.
pub fn moto() -> &'static str {
    static MOTO: OnceLock<(String, Child)> = OnceLock::new();
    &MOTO.get_or_init(start_moto).0
}

/// The emulators of this test binary, started on first use.
pub fn emulators() -> &'static Emulators {
    static EMULATORS: OnceLock<Emulators> = OnceLock::new();
    EMULATORS.get_or_init(|| {
        install_emulators();
        let (kinesis_url, kinesis_tls_url, kinesis) = start_kinesis_with_tls();
        let (dynamodb_url, dynamodb) = start_dynamodb();
        Emulators {
            kinesis_url,
            dynamodb_url,
            kinesis_tls_url,
            _processes: vec![kinesis, dynamodb],
        }
    })
}

/// Client settings for an emulator: fixed region and dummy credentials.
pub fn config(endpoint: &str) -> ClientConfig {
    ClientConfig::new()
        .region("us-east-1")
        .endpoint_url(endpoint)
        .credentials(Credentials::new("AKIDTESTEXAMPLE", "test-secret"))
}

pub fn kinesis() -> KinesisClient {
    KinesisClient::new(&config(&emulators().kinesis_url)).unwrap()
}

pub fn dynamodb() -> DynamoDbClient {
    DynamoDbClient::new(&config(&emulators().dynamodb_url)).unwrap()
}

/// The lease rows of an application's table (its workers row left out).
pub fn lease_rows(
    app: &str,
) -> kinesis_consumer::Result<Vec<kinesis_consumer::__test_support::Item>> {
    Ok(dynamodb()
        .scan(app)?
        .into_iter()
        .filter(|i| {
            i.get("entityType")
                .is_none_or(|t| t.as_s() == Some("LEASE"))
        })
        .collect())
}

/// A name no other test of this run uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a stream with `shards` shards and waits until it is active.
pub fn create_stream(shards: u32) -> String {
    let name = unique_name("stream");
    let k = kinesis();
    k.create_stream(&name, shards).unwrap();
    k.wait_until_active(&name, Duration::from_secs(30)).unwrap();
    name
}

/// Prints the library's log to stderr when `TEST_LOG` is set (`info`, `debug`).
pub fn init_log() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target().starts_with("kinesis_consumer")
        }
        fn log(&self, r: &log::Record) {
            if !self.enabled(r.metadata()) {
                return;
            }
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            eprintln!(
                "{}.{:03} {} {}",
                t.as_secs() % 1000,
                t.subsec_millis(),
                r.level(),
                r.args()
            );
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if let Ok(level) = std::env::var("TEST_LOG") {
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level.parse().unwrap_or(log::LevelFilter::Info));
        }
    }
}

/// A consumer on the given endpoints with the tests' short timings: batches
/// of 200 ms, 100 ms between empty reads, failover 3 s, shard sync every 2 s,
/// from the trim horizon, CloudWatch on a closed port, leases balanced by
/// count (the tests check shares and moves in leases; tests/balance_load.rs
/// balances by load, the library's default).
pub fn consumer_builder_at(
    kinesis_url: &str,
    dynamodb_url: &str,
    stream: &str,
    app: &str,
) -> kinesis_consumer::ConsumerBuilder<kinesis_consumer::Payload> {
    init_log();
    kinesis_consumer::Consumer::builder()
        .app_name(app)
        .stream_name(stream)
        .region("us-east-1")
        .endpoint_url(kinesis_url)
        .dynamodb_endpoint_url(dynamodb_url)
        .cloudwatch_endpoint_url("http://127.0.0.1:9")
        .credentials(Credentials::new("AKIDTEST", "secret"))
        .initial_position(kinesis_consumer::InitialPosition::TrimHorizon)
        .batch_interval(Duration::from_millis(200))
        .idle_time_between_reads(Duration::from_millis(100))
        .failover_time(Duration::from_secs(3))
        .shard_sync_interval(Duration::from_secs(2))
        .coordination(coordination())
        .balance_by(kinesis_consumer::BalanceBy::LeaseCount)
}

/// How the tests' workers share leases: through worker items and an
/// elected leader (the library's default), or with
/// `KINESIS_TEST_COORDINATION=workers-row` through the workers row;
/// scripts/test.sh runs the scale-out tests both ways.
pub fn coordination() -> kinesis_consumer::Coordination {
    match std::env::var("KINESIS_TEST_COORDINATION").as_deref() {
        Ok("leader") | Err(_) => kinesis_consumer::Coordination::Leader,
        Ok("workers-row") => kinesis_consumer::Coordination::WorkersRow,
        Ok(other) => panic!("KINESIS_TEST_COORDINATION={other}: use workers-row or leader"),
    }
}

/// The `tail` example's arguments for [`coordination`]. The leader
/// balances by lease count here: the scale-out tests check shares in
/// leases (a joiner gets half of them); balancing by load, the default,
/// has its own test (balance_load).
pub fn coordination_args() -> Vec<&'static str> {
    match coordination() {
        kinesis_consumer::Coordination::WorkersRow => vec!["--coordination", "workers-row"],
        kinesis_consumer::Coordination::Leader => vec!["--balance-by", "lease-count"],
        _ => vec![],
    }
}

/// [`consumer_builder_at`] on this test binary's emulators, reading through
/// enhanced fan-out when [`fan_out`] says so.
pub fn consumer_builder(
    stream: &str,
    app: &str,
) -> kinesis_consumer::ConsumerBuilder<kinesis_consumer::Payload> {
    let e = emulators();
    let builder = consumer_builder_at(&e.kinesis_url, &e.dynamodb_url, stream, app);
    match fan_out() {
        true => builder.enhanced_fan_out(app),
        false => builder,
    }
}

/// True when the tests read through enhanced fan-out
/// (`KINESIS_TEST_RETRIEVAL=fan-out`, h2c on kinesis-local) rather than by
/// polling (the default): scripts/test.sh runs the consumer, scale-out,
/// processing, dead-letter and replay tests both ways. Tests through the
/// fault proxy (HTTP/1.1) always poll.
pub fn fan_out() -> bool {
    match std::env::var("KINESIS_TEST_RETRIEVAL").as_deref() {
        Ok("fan-out") => true,
        Ok("polling") | Err(_) => false,
        Ok(other) => panic!("KINESIS_TEST_RETRIEVAL={other}: use polling or fan-out"),
    }
}

/// Splits the stream's first shard at the middle of its hash range and
/// waits until the stream is active again; returns the split shard.
pub fn split_first_shard(stream: &str) -> kinesis_consumer::aws::kinesis::Shard {
    let k = kinesis();
    let first = k.list_shards(stream, None).unwrap().remove(0);
    let lo: u128 = first.starting_hash_key.parse().unwrap();
    let hi: u128 = first.ending_hash_key.parse().unwrap();
    k.split_shard(stream, &first.shard_id, &(lo + (hi - lo) / 2).to_string())
        .unwrap();
    k.wait_until_active(stream, Duration::from_secs(30))
        .unwrap();
    first
}

/// Merges the upper child of `parent` (a shard split by
/// [`split_first_shard`]) with the stream's second original shard, and
/// waits until the stream is active; returns the two merged shards.
pub fn merge_upper_child(
    stream: &str,
    parent: &kinesis_consumer::aws::kinesis::Shard,
) -> (
    kinesis_consumer::aws::kinesis::Shard,
    kinesis_consumer::aws::kinesis::Shard,
) {
    let k = kinesis();
    let shards = k.list_shards(stream, None).unwrap();
    let upper = shards
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(parent.shard_id.as_str()))
        .max_by_key(|s| s.starting_hash_key.parse::<u128>().unwrap())
        .unwrap()
        .clone();
    let neighbour = shards[1].clone();
    k.merge_shards(stream, &upper.shard_id, &neighbour.shard_id)
        .unwrap();
    k.wait_until_active(stream, Duration::from_secs(30))
        .unwrap();
    (upper, neighbour)
}

/// The path of an example program, built first: a test run of one test
/// binary does not rebuild the examples, and a stale one would be tested.
/// Building an example that is up to date takes a fraction of a second.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // In the profile this test binary was built in: its examples
        // folder is the one `path` names (`cargo test --release` too).
        let release = (!cfg!(debug_assertions)).then_some("--release");
        let status = Command::new(cargo)
            .args(["build", "--example", name])
            .args(release)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(
            status.success() && path.exists(),
            "could not build the {name} example"
        );
        built.push(name.to_owned());
    }
    path
}

/// Every record of a shard, from its trim horizon to its tip, as
/// (position, data as text), read straight from the stream.
pub fn shard_records(
    stream: &str,
    shard_id: &str,
) -> Vec<(kinesis_consumer::ExtendedSequenceNumber, String)> {
    use kinesis_consumer::aws::kinesis::IteratorPosition;
    let k = kinesis();
    let mut iterator = k
        .get_shard_iterator(stream, shard_id, &IteratorPosition::TrimHorizon)
        .unwrap();
    let mut records = Vec::new();
    loop {
        let reply = k.get_records(shard_id, &iterator, 10_000).unwrap();
        let empty = reply.records.is_empty();
        records.extend(reply.records.iter().map(|r| {
            (
                r.position().clone(),
                String::from_utf8_lossy(r.data()).into_owned(),
            )
        }));
        match reply.next_shard_iterator {
            Some(next) if !empty => iterator = next,
            _ => return records,
        }
    }
}

/// The data of a shard's records, in order.
pub fn read_shard(stream: &str, shard_id: &str) -> Vec<String> {
    shard_records(stream, shard_id)
        .into_iter()
        .map(|(_, data)| data)
        .collect()
}

/// Where the record with `data` is in the shard.
pub fn position_of(
    stream: &str,
    shard_id: &str,
    data: &str,
) -> kinesis_consumer::ExtendedSequenceNumber {
    shard_records(stream, shard_id)
        .into_iter()
        .find(|(_, d)| d == data)
        .map(|(p, _)| p)
        .unwrap_or_else(|| panic!("no record {data:?} in {shard_id}"))
}

/// Puts numbered records (`{prefix}-{n}`, partition key `pk-{n % 128}`, enough keys that every shard gets records) at
/// about 50 per second until stopped; returns what it put, in order.
pub struct Producer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

pub fn produce(stream: &str, prefix: &str) -> Producer {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, stream, prefix) = (stop.clone(), stream.to_owned(), prefix.to_owned());
    let thread = std::thread::spawn(move || {
        let k = kinesis();
        let mut put = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let entries: Vec<PutRecordsEntry> = (put.len()..put.len() + 10)
                .map(|n| PutRecordsEntry {
                    partition_key: format!("pk-{}", n % 128),
                    explicit_hash_key: None,
                    data: format!("{prefix}-{n}").into_bytes(),
                })
                .collect();
            for (entry, result) in entries
                .iter()
                .zip(k.put_records(&stream, &entries).unwrap())
            {
                result.unwrap();
                put.push(String::from_utf8(entry.data.clone()).unwrap());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        put
    });
    Producer { stop, thread }
}

impl Producer {
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Runs the `leases` example on this binary's emulators with `args`; its
/// standard output (panics, with its standard error, if it failed).
pub fn leases_example(args: &[&str]) -> String {
    let out = aws_env(Command::new(example_binary("leases")))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "leases {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The emulators' endpoints and dummy credentials, through the standard
/// AWS environment variables, as a user would set them.
pub fn aws_env(mut command: Command) -> Command {
    let e = emulators();
    command
        .env("AWS_ENDPOINT_URL_KINESIS", &e.kinesis_url)
        .env("AWS_ENDPOINT_URL_DYNAMODB", &e.dynamodb_url)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info")
        .env_remove("AWS_PROFILE");
    command
}

/// Creates a lease table the way the library does (key `leaseKey`), so
/// that rows can be written before a consumer starts.
pub fn create_lease_table(table: &str) {
    let d = dynamodb();
    d.create_table(table, "leaseKey").unwrap();
    d.wait_until_active(table, Duration::from_secs(10)).unwrap();
}

/// A lease row in the KCL's layout (its columns only), as a worker of an
/// earlier run, or a KCL worker, left it.
pub fn kcl_lease_row(
    shard: &kinesis_consumer::aws::kinesis::Shard,
    owner: Option<&str>,
    counter: u64,
    checkpoint: &str,
) -> kinesis_consumer::__test_support::Item {
    use kinesis_consumer::__test_support::AttributeValue;
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: u64| AttributeValue::N(v.to_string());
    let mut item: kinesis_consumer::__test_support::Item = std::collections::HashMap::from([
        ("leaseKey".to_owned(), s(&shard.shard_id)),
        ("leaseCounter".to_owned(), n(counter)),
        ("checkpoint".to_owned(), s(checkpoint)),
        ("checkpointSubSequenceNumber".to_owned(), n(0)),
        ("ownerSwitchesSinceCheckpoint".to_owned(), n(0)),
        ("startingHashKey".to_owned(), s(&shard.starting_hash_key)),
        ("endingHashKey".to_owned(), s(&shard.ending_hash_key)),
    ]);
    if let Some(owner) = owner {
        item.insert("leaseOwner".into(), s(owner));
    }
    let parents: Vec<String> = shard.parents().map(str::to_owned).collect();
    if !parents.is_empty() {
        item.insert("parentShardId".into(), AttributeValue::SS(parents));
    }
    item
}
