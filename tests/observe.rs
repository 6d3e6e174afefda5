//! Observability end to end: a real Prometheus server scrapes a running
//! consumer's `/metrics`; a headless Chromium loads the `/status` page of
//! a two-worker consumer; bad clients get bounded answers from the
//! endpoint while the consumer keeps consuming; the examples serve it too.
//!
//! Prometheus and Chromium are Debian's packages, installed with apt-get
//! when missing (as scripts/test.sh does). Both are started on free
//! 127.0.0.1 ports and ended by their process ids.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{
    ConsumerBuilder, MetricsHandle, MetricsLevel, MetricsServer, Payload, ShutdownHandle,
};

/// Installs Prometheus and Chromium (Debian packages) if missing.
fn install_tools() {
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("prometheus") && have("chromium") {
        return;
    }
    let script = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                  apt-get install -y -qq --no-install-recommends prometheus chromium";
    let status = Command::new("sh").args(["-c", script]).status();
    if !status.is_ok_and(|s| s.success()) || !have("prometheus") || !have("chromium") {
        common::cannot_run(
            "installing prometheus and chromium with apt-get",
            "run as root on Debian, or install them first",
        );
    }
}

/// A fresh empty directory under target/ for this test run.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(common::unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process ended (by its id) and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 GET (or any raw request): status and body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    parse_reply(&reply)
}

fn parse_reply(reply: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(reply);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// Puts `count` records over many partition keys (every shard gets some).
fn put(stream: &str, count: usize) {
    let entries: Vec<PutRecordsEntry> = (0..count)
        .map(|i| PutRecordsEntry {
            partition_key: format!("key-{i}"),
            explicit_hash_key: None,
            data: format!("record-{i}").into_bytes(),
        })
        .collect();
    for chunk in entries.chunks(500) {
        for r in common::kinesis().put_records(stream, chunk).unwrap() {
            r.unwrap();
        }
    }
}

fn shard_ids(stream: &str) -> BTreeSet<String> {
    common::kinesis()
        .list_shards(stream, None)
        .unwrap()
        .into_iter()
        .map(|s| s.shard_id)
        .collect()
}

struct Running {
    stop: ShutdownHandle,
    thread: JoinHandle<kinesis_consumer::Result<()>>,
    seen: Arc<AtomicUsize>,
    metrics: MetricsHandle,
    endpoint: MetricsServer,
    worker_id: String,
}

/// Starts a consumer counting what it sees, serving its metrics on a free
/// loopback port.
fn start(builder: ConsumerBuilder<Payload>) -> Running {
    let consumer = builder
        .metrics_level(MetricsLevel::Detailed)
        .publish_metrics(false)
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let metrics = consumer.metrics();
    let endpoint = metrics.serve("0").unwrap();
    assert!(endpoint.local_addr().ip().is_loopback(), "binds 127.0.0.1");
    let worker_id = consumer.worker_id().to_owned();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            counter.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        })
    });
    Running {
        stop,
        thread,
        seen,
        metrics,
        endpoint,
        worker_id,
    }
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    fn wait_for_records(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.seen.load(Ordering::SeqCst) < count {
            assert!(!self.thread.is_finished(), "the consumer stopped early");
            assert!(
                Instant::now() < deadline,
                "timed out: {} of {count} records seen",
                self.seen.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> MetricsServer {
        self.stop.shutdown();
        self.thread.join().unwrap().unwrap();
        self.endpoint
    }
}

/// Waits until `check` returns `Some`, or panics with `what` and the last
/// thing seen.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A Prometheus server scraping `target` every second.
fn start_prometheus(target: SocketAddr) -> (Process, SocketAddr) {
    let dir = scratch_dir("prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: kinesis-consumer\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| common::cannot_run("starting prometheus", e));
    (Process(child), addr)
}

/// A sample Prometheus answered with: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// Runs a PromQL instant query; the result vector as (labels, value).
fn query(prometheus: SocketAddr, promql: &str) -> Result<Vec<Sample>, String> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let mut stream = TcpStream::connect(prometheus).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "GET /api/v1/query?query={encoded} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let (status, body) = parse_reply(&reply);
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let results = json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(results
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let value = r["value"][1].as_str().unwrap().parse().unwrap();
            (labels, value)
        })
        .collect())
}

#[test]
fn prometheus_scrapes_lag_for_every_shard_and_every_record_processed() {
    install_tools();
    let stream = common::create_stream(3);
    let app = common::unique_name("observe-prom");
    let shards = shard_ids(&stream);
    assert_eq!(shards.len(), 3);
    let count = 300;
    put(&stream, count);
    let running = start(common::consumer_builder(&stream, &app));
    running.wait_for_records(count, Duration::from_secs(60));
    let (_prometheus, prometheus) = start_prometheus(running.addr());

    let selector = format!("{{stream=\"{stream}\",application=\"{app}\"}}");
    let lag = wait_for(
        "millis_behind_latest of every shard",
        Duration::from_secs(60),
        || {
            let result = query(
                prometheus,
                &format!("kinesis_consumer_millis_behind_latest{selector}"),
            )?;
            let seen: BTreeSet<String> = result.iter().map(|(l, _)| l["shard"].clone()).collect();
            if seen == shards {
                Ok(result)
            } else {
                Err(format!("{result:?}"))
            }
        },
    );
    for (labels, value) in &lag {
        assert_eq!(labels["worker"], running.worker_id);
        assert!(*value >= 0.0, "{labels:?} {value}");
    }
    // Every shard's last record has an age (all of them got records).
    let ages = query(
        prometheus,
        &format!("kinesis_consumer_last_record_age_seconds{selector}"),
    )
    .unwrap();
    let aged: BTreeSet<String> = ages.iter().map(|(l, _)| l["shard"].clone()).collect();
    assert_eq!(aged, shards, "{ages:?}");
    let processed = wait_for("records_processed_total", Duration::from_secs(30), || {
        let result = query(
            prometheus,
            &format!("sum(kinesis_consumer_records_processed_total{selector})"),
        )?;
        match result.first() {
            Some((_, total)) if *total == count as f64 => Ok(*total),
            _ => Err(format!("{result:?}")),
        }
    });
    assert_eq!(processed, count as f64);
    // A histogram Prometheus accepted: its +Inf bucket counts every call
    // (one per shard at least), GetRecords or SubscribeToShard.
    let histogram = match common::fan_out() {
        true => "kinesis_consumer_subscribe_to_shard_duration_seconds",
        false => "kinesis_consumer_get_records_duration_seconds",
    };
    let calls = query(
        prometheus,
        &format!("sum({histogram}_bucket{{le=\"+Inf\",stream=\"{stream}\"}})"),
    )
    .unwrap();
    assert!(calls.first().is_some_and(|(_, n)| *n >= 3.0), "{calls:?}");
    // Prometheus itself saw the target up, with no failed scrapes.
    let up = query(prometheus, "up{job=\"kinesis-consumer\"}").unwrap();
    assert_eq!(up.first().map(|(_, v)| *v), Some(1.0), "{up:?}");
    running.stop();
}

/// Runs headless Chromium with `args` and then `url`; true when it exited
/// successfully within a minute (ended by its id otherwise).
fn chromium(args: &[String], url: &str) -> (bool, String) {
    let profile = scratch_dir("chromium-profile");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| common::cannot_run("starting chromium", e));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    (status.is_some_and(|s| s.success()), out)
}

/// The (shard, owner) rows of the status page's shard table, from the DOM.
fn shard_owners(dom: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for row in dom.split("<td class=\"shard\">").skip(1) {
        let shard = row.split("</td>").next().unwrap().to_owned();
        let owner = row
            .split("<td class=\"owner\">")
            .nth(1)
            .and_then(|r| r.split("</td>").next())
            .unwrap_or_default()
            .to_owned();
        rows.insert(shard, owner);
    }
    rows
}

#[test]
fn chromium_shows_every_shard_with_its_owner_on_the_status_page() {
    install_tools();
    let stream = common::create_stream(4);
    let app = common::unique_name("observe-status");
    let shards = shard_ids(&stream);
    put(&stream, 100);
    let first = start(common::consumer_builder(&stream, &app).worker_id("worker-a"));
    first.wait_for_records(100, Duration::from_secs(60));
    // The first worker has series for every shard before it shares them.
    let before = first.metrics.prometheus();
    for shard in &shards {
        assert!(
            before.contains(&format!("shard=\"{shard}\"")),
            "{shard}: {before}"
        );
    }
    let second = start(common::consumer_builder(&stream, &app).worker_id("worker-b"));
    // Both hold leases, and the first worker's page knows every owner.
    let expected = wait_for(
        "two workers sharing the shards",
        Duration::from_secs(90),
        || {
            let (a, b) = (first.metrics.status(), second.metrics.status());
            let held = |s: &kinesis_consumer::ConsumerStatus| -> BTreeSet<String> {
                s.shards
                    .iter()
                    .filter(|s| s.held_here)
                    .map(|s| s.shard_id.clone())
                    .collect()
            };
            let (held_a, held_b) = (held(&a), held(&b));
            let owners: BTreeMap<String, String> = a
                .shards
                .iter()
                .map(|s| (s.shard_id.clone(), s.owner.clone().unwrap_or_default()))
                .collect();
            let agree = shards.iter().all(|id| {
                let owner = owners.get(id).map(String::as_str);
                (held_a.contains(id) && owner == Some("worker-a"))
                    || (held_b.contains(id) && owner == Some("worker-b"))
            });
            if !held_a.is_empty() && !held_b.is_empty() && agree {
                Ok(owners)
            } else {
                Err(format!(
                    "a holds {held_a:?}, b holds {held_b:?}, a's page: {owners:?}"
                ))
            }
        },
    );
    // The shards it gave up have no series in its /metrics any more.
    let (status, text) = get(first.addr(), "/metrics");
    assert_eq!(status, 200);
    for (shard, owner) in &expected {
        let shown = text.contains(&format!("shard=\"{shard}\""));
        assert_eq!(
            shown,
            owner == "worker-a",
            "{shard} ({owner}) in worker-a's /metrics:\n{text}"
        );
    }
    let url = format!("http://{}/status", first.addr());
    let (ok, dom) = chromium(&["--dump-dom".to_owned()], &url);
    assert!(ok, "chromium --dump-dom failed: {dom}");
    assert!(dom.contains(&app), "the application is named: {dom}");
    let rows = shard_owners(&dom);
    assert_eq!(rows, expected, "every shard with its owner: {dom}");
    assert!(rows.values().any(|o| o == "worker-a") && rows.values().any(|o| o == "worker-b"));
    // The screenshot is kept for people to look at.
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/observe/status.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    let (ok, out) = chromium(
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,720".to_owned(),
        ],
        &url,
    );
    assert!(ok, "chromium --screenshot failed: {out}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "a PNG at {}",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());
    second.stop();
    first.stop();
}

#[test]
fn bad_clients_get_bounded_answers_and_never_block_the_consumer() {
    let stream = common::create_stream(1);
    let app = common::unique_name("observe-bad");
    let running = start(common::consumer_builder(&stream, &app));
    let addr = running.addr();
    put(&stream, 10);
    running.wait_for_records(10, Duration::from_secs(60));
    let healthy = wait_for("healthz 200", Duration::from_secs(10), || {
        match get(addr, "/healthz") {
            (200, body) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(healthy, "ok\n");

    // A client that sends half a request and stalls holds no one up...
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    let started = Instant::now();
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("kinesis_consumer_records_processed_total"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // ...and is told 408 once its time is up (5 s).
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = slow.read_to_end(&mut reply);
    assert_eq!(parse_reply(&reply).0, 408);
    assert!(started.elapsed() >= Duration::from_secs(4));

    // A huge request head: 431, without reading it all.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let mut stream_huge = TcpStream::connect(addr).unwrap();
    stream_huge
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = stream_huge.write_all(&huge); // may fail once the server closed
    let mut reply = Vec::new();
    let _ = stream_huge.read_to_end(&mut reply);
    assert_eq!(parse_reply(&reply).0, 431);

    // Unknown paths, other methods, bodies and garbage.
    assert_eq!(get(addr, "/nope").0, 404);
    assert_eq!(http(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(
        http(
            addr,
            b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        )
        .0,
        413
    );
    assert_eq!(http(addr, b"\x16\x03\x01 hello\r\n\r\n").0, 400);

    // Many idle connections: past the bound (16) the rest are told 503
    // at once; records keep flowing meanwhile.
    let idle: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    put(&stream, 20);
    let mut refused = 0;
    for mut c in idle.iter().skip(16) {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut reply = Vec::new();
        let _ = c.read_to_end(&mut reply);
        if !reply.is_empty() && parse_reply(&reply).0 == 503 {
            refused += 1;
        }
    }
    assert!(refused >= 20, "{refused} of 24 over the bound refused");
    running.wait_for_records(30, Duration::from_secs(30));
    drop(idle);
    let (status, _) = wait_for(
        "the endpoint back after the flood",
        Duration::from_secs(10),
        || match get(addr, "/status.json") {
            (200, body) => Ok((200, body)),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(status, 200);

    // Stopped: not healthy any more (the endpoint outlives the consumer).
    let endpoint = running.stop();
    let (status, body) = get(endpoint.local_addr(), "/healthz");
    assert_eq!(
        (status, body.as_str()),
        (503, "the consumer is not running\n")
    );
    endpoint.stop();
}

#[test]
fn the_examples_serve_metrics_on_metrics_addr() {
    let stream = common::create_stream(2);
    put(&stream, 25);
    let port = common::free_port();
    let dir = scratch_dir("file-sink-out");
    let runs: [(&str, Vec<String>); 3] = [
        ("tail", vec![]),
        ("word_count", vec![]),
        ("file_sink", vec!["--dir".into(), dir.display().to_string()]),
    ];
    for (example, extra) in runs {
        let app = common::unique_name(example);
        let mut command = common::aws_env(Command::new(common::example_binary(example)));
        command
            .args([
                "--stream",
                &stream,
                "--app",
                &app,
                "--position",
                "trim-horizon",
            ])
            .args(["--metrics-addr", &port.to_string()])
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _child = Process(command.spawn().unwrap());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let total = wait_for(
            &format!("{example}'s records_processed_total"),
            Duration::from_secs(60),
            || {
                let (status, body) = TcpStream::connect(addr)
                    .map(|_| get(addr, "/metrics"))
                    .map_err(|e| e.to_string())?;
                let total: f64 = body
                    .lines()
                    .filter(|l| l.starts_with("kinesis_consumer_records_processed_total{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                if status == 200 && total == 25.0 {
                    Ok(total)
                } else {
                    Err(format!("{status}, {total}"))
                }
            },
        );
        assert_eq!(total, 25.0);
        assert_eq!(get(addr, "/healthz").0, 200, "{example}");
    }
}

/// The fenced block after the line `# {name}` in docs/observability.md.
fn documented_block(name: &str) -> String {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observability.md"),
    )
    .unwrap();
    let start = page
        .find(&format!("# {name}\n"))
        .unwrap_or_else(|| panic!("no block for {name}"));
    let block = &page[start..];
    block[..block.find("```").unwrap()].to_owned()
}

#[test]
fn the_documented_scrape_config_and_alert_rules_pass_promtool() {
    install_tools();
    let dir = scratch_dir("promtool");
    for (name, kind) in [("prometheus.yml", "config"), ("rules.yml", "rules")] {
        let path = dir.join(name);
        std::fs::write(&path, documented_block(name)).unwrap();
        let out = Command::new("promtool")
            .args(["check", kind])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check {kind} {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
