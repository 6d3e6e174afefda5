//! A fault-injecting HTTP proxy for tests: it sits between the library and
//! the emulators on 127.0.0.1, forwards each request to kinesis-local or
//! dynalite by its `X-Amz-Target` prefix, and replaces or spoils replies as
//! scripted per operation (the name after the dot in `X-Amz-Target`).
//!
//! Scripts: "the next N GetRecords get X" ([`Trigger::Next`]), "every
//! GetRecords for 3 s gets X" ([`Trigger::For`], timed from the first
//! request it hits), "with probability p" ([`Trigger::Chance`]). A rule may
//! also require a substring of the request body (for example a checkpoint
//! write is an `UpdateItem` whose body sets `#checkpoint`).
//!
//! Every request is counted per operation, every fault per operation and
//! per rule, and every upstream status per operation, so tests can bound
//! how often the library called while a fault lasted.
//!
//! Each connection gets one request and one reply (`Connection: close`).
//! All socket waits have timeouts; the accept loop ends when the proxy is
//! dropped.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::test_server::{IO_TIMEOUT, Message, read_message};

/// What a faulted request gets instead of (or on top of) the real reply.
#[derive(Clone, Debug)]
pub enum Fault {
    /// A reply with this status, content type and body; nothing is forwarded.
    Reply {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// Forward, then send the real reply's headers and half its body, and
    /// close the connection: the request took effect but the reply was cut.
    ResetAfterForward,
    /// Do not forward; send headers promising a body, a few bytes of it,
    /// and close.
    ResetBeforeForward,
    /// Forward, then wait this long before answering (longer than the
    /// client's read timeout, the client gives up first).
    Delay(Duration),
    /// Hold the request this long, then forward it and answer: a write
    /// that lands late (a slow network, a paused sender), perhaps after
    /// the client gave up on it.
    Hold(Duration),
    /// Forward, then answer 200 with the first half of the real body (with a
    /// matching Content-Length): well-formed HTTP, truncated JSON.
    TruncatedJson,
    /// Do not forward; answer 200 with this body.
    Body(&'static str),
    /// Forward, then answer with the real reply's status and headers and
    /// the body this function makes of the real one (for example a
    /// ListShards reply that leaves a shard out).
    Rewrite(Rewrite),
}

/// Makes a new reply body of the real one.
pub type RewriteFn = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// A reply-body rewriting function, for [`Fault::Rewrite`].
#[derive(Clone)]
pub struct Rewrite(pub Arc<RewriteFn>);

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rewrite(..)")
    }
}

impl Fault {
    /// A JSON error reply such as AWS sends: `{"__type": code, "message": ..}`.
    pub fn aws(status: u16, code: &str) -> Fault {
        Fault::Reply {
            status,
            content_type: "application/x-amz-json-1.1",
            body: format!(r#"{{"__type":"{code}","message":"injected {code}"}}"#),
        }
    }

    /// Kinesis: ProvisionedThroughputExceededException.
    pub fn throughput_exceeded() -> Fault {
        Fault::aws(400, "ProvisionedThroughputExceededException")
    }

    pub fn html(status: u16) -> Fault {
        Fault::Reply {
            status,
            content_type: "text/html",
            body: format!("<html><body><h1>{status} Injected</h1></body></html>"),
        }
    }

    /// Forward, and rewrite the real reply's body with `f`.
    pub fn rewrite(f: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) -> Fault {
        Fault::Rewrite(Rewrite(Arc::new(f)))
    }

    pub fn empty(status: u16) -> Fault {
        Fault::Reply {
            status,
            content_type: "text/plain",
            body: String::new(),
        }
    }

    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Fault::Reply { status, body, .. } => {
                let code = body
                    .split("\"__type\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next());
                match code {
                    Some(code) => format!("{status} {code}"),
                    None if body.is_empty() => format!("{status} empty body"),
                    None => format!("{status} HTML body"),
                }
            }
            Fault::ResetAfterForward => "reset mid-reply (after forwarding)".into(),
            Fault::ResetBeforeForward => "reset mid-reply (not forwarded)".into(),
            Fault::Delay(d) => format!("reply delayed {d:?}"),
            Fault::Hold(d) => format!("request held {d:?}"),
            Fault::TruncatedJson => "truncated JSON".into(),
            Fault::Body(_) => "malformed JSON".into(),
            Fault::Rewrite(_) => "reply rewritten".into(),
        }
    }
}

/// When a rule applies to a matching request.
#[derive(Clone, Debug)]
pub enum Trigger {
    /// To the next `n` matching requests.
    Next(u32),
    /// To every matching request for this long after the first one it hits.
    For(Duration),
    /// To each matching request with probability `p` (0 to 1), until cleared.
    Chance(f64),
    /// To every matching request until cleared.
    Always,
    /// To every matching request after the first `n` (which pass), until
    /// cleared.
    After(u32),
}

struct Rule {
    operation: String,
    body_contains: Option<String>,
    trigger: Trigger,
    fault: Fault,
    hits: u64,
    /// Matching requests seen, fired or not.
    seen: u64,
    first_hit: Option<Instant>,
}

impl Rule {
    /// Whether the rule fires for this request (and consumes a use if so).
    fn fires(&mut self, operation: &str, body: &[u8], rng: &mut u64) -> bool {
        if self.operation != operation && self.operation != "*" {
            return false;
        }
        if let Some(needle) = &self.body_contains {
            if !String::from_utf8_lossy(body).contains(needle.as_str()) {
                return false;
            }
        }
        self.seen += 1;
        let fire = match self.trigger {
            Trigger::Next(n) => self.hits < n as u64,
            Trigger::After(n) => self.seen > n as u64,
            Trigger::For(d) => self.first_hit.is_none_or(|t| t.elapsed() < d),
            Trigger::Chance(p) => next_f64(rng) < p,
            Trigger::Always => true,
        };
        if fire {
            self.hits += 1;
            self.first_hit.get_or_insert_with(Instant::now);
        }
        fire
    }

    fn finished(&self) -> bool {
        match self.trigger {
            Trigger::Next(n) => self.hits >= n as u64,
            Trigger::For(d) => self.first_hit.is_some_and(|t| t.elapsed() >= d),
            Trigger::Chance(_) | Trigger::Always | Trigger::After(_) => false,
        }
    }
}

fn next_f64(state: &mut u64) -> f64 {
    // xorshift64*
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Default)]
struct Counts {
    requests: HashMap<String, u64>,
    faults: HashMap<String, u64>,
    /// (operation, status) of replies that came from upstream unchanged.
    statuses: HashMap<(String, u16), u64>,
}

/// Decides whether a request is signed as it should be: `Ok` with the
/// access key id, `Err` with why not.
pub type SignatureCheck =
    dyn Fn(&super::test_server::Request) -> Result<String, String> + Send + Sync;

struct State {
    kinesis: String,
    dynamodb: String,
    signature_check: Mutex<Option<Arc<SignatureCheck>>>,
    /// (operation, access key id) of requests that passed the check.
    signed_by: Mutex<HashMap<(String, String), u64>>,
    /// Why requests failed the check.
    signature_failures: Mutex<Vec<String>>,
    rules: Mutex<Vec<Rule>>,
    counts: Mutex<Counts>,
    rng: Mutex<u64>,
    stop: AtomicBool,
    /// Request bodies of the operations asked to be recorded (see
    /// `record`), with when each arrived.
    recorded: Mutex<HashMap<String, Vec<(Instant, String)>>>,
}

/// A running proxy; it stops accepting when dropped.
pub struct Proxy {
    url: String,
    addr: std::net::SocketAddr,
    state: Arc<State>,
}

/// A handle on one rule, to read how often it fired.
#[derive(Clone, Copy, Debug)]
pub struct RuleId(usize);

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

impl Proxy {
    /// Starts a proxy in front of the two emulators (plain-HTTP URLs).
    pub fn start(kinesis_url: &str, dynamodb_url: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            kinesis: host_port(kinesis_url),
            dynamodb: host_port(dynamodb_url),
            signature_check: Mutex::new(None),
            signed_by: Mutex::new(HashMap::new()),
            signature_failures: Mutex::new(Vec::new()),
            rules: Mutex::new(Vec::new()),
            counts: Mutex::new(Counts::default()),
            rng: Mutex::new(0x9E37_79B9_7F4A_7C15 ^ addr.port() as u64),
            stop: AtomicBool::new(false),
            recorded: Mutex::new(HashMap::new()),
        });
        let shared = state.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("fault-proxy-conn".into())
                        .spawn(move || {
                            let _ = serve(&shared, conn);
                        });
                }
            })
            .unwrap();
        Proxy {
            url: format!("http://{addr}"),
            addr,
            state,
        }
    }

    /// Starts a proxy in front of this test binary's emulators.
    pub fn for_emulators() -> Proxy {
        let e = super::emulators();
        Proxy::start(&e.kinesis_url, &e.dynamodb_url)
    }

    /// The URL to give the library (for Kinesis and for DynamoDB).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// From now on, keeps the body of every `operation` request.
    pub fn record(&self, operation: &str) {
        let mut recorded = self.state.recorded.lock().unwrap();
        recorded.entry(operation.to_owned()).or_default();
    }

    /// The bodies of the `operation` requests kept since `record`.
    pub fn recorded(&self, operation: &str) -> Vec<String> {
        self.recorded_at(operation)
            .into_iter()
            .map(|(_, body)| body)
            .collect()
    }

    /// The `operation` requests kept since `record`, with when each arrived.
    pub fn recorded_at(&self, operation: &str) -> Vec<(Instant, String)> {
        let recorded = self.state.recorded.lock().unwrap();
        recorded.get(operation).cloned().unwrap_or_default()
    }

    /// Adds a rule; rules are tried in the order added, the first that
    /// fires wins.
    pub fn add(&self, operation: &str, trigger: Trigger, fault: Fault) -> RuleId {
        self.add_matching(operation, None, trigger, fault)
    }

    /// Adds a rule that applies only when the request body contains `needle`.
    pub fn add_matching(
        &self,
        operation: &str,
        needle: Option<&str>,
        trigger: Trigger,
        fault: Fault,
    ) -> RuleId {
        let mut rules = self.state.rules.lock().unwrap();
        rules.push(Rule {
            operation: operation.to_owned(),
            body_contains: needle.map(str::to_owned),
            trigger,
            fault,
            hits: 0,
            seen: 0,
            first_hit: None,
        });
        RuleId(rules.len() - 1)
    }

    /// Removes every rule (counts are kept); rule ids stay valid for `hits`.
    pub fn clear(&self) {
        for rule in self.state.rules.lock().unwrap().iter_mut() {
            rule.trigger = Trigger::Next(0);
        }
    }

    /// How many requests a rule faulted.
    pub fn hits(&self, rule: RuleId) -> u64 {
        self.state.rules.lock().unwrap()[rule.0].hits
    }

    /// How many requests a rule matched, fired or not (a rule that never
    /// fires, `Trigger::Next(0)`, added first counts them).
    pub fn seen(&self, rule: RuleId) -> u64 {
        self.state.rules.lock().unwrap()[rule.0].seen
    }

    /// When a rule first fired (a forwarding fault forwards right then).
    pub fn first_hit(&self, rule: RuleId) -> Option<Instant> {
        self.state.rules.lock().unwrap()[rule.0].first_hit
    }

    /// True once a `Next` rule is used up or a `For` rule's time is over.
    pub fn finished(&self, rule: RuleId) -> bool {
        self.state.rules.lock().unwrap()[rule.0].finished()
    }

    /// Requests seen for `operation` (faulted or not).
    pub fn requests(&self, operation: &str) -> u64 {
        let counts = self.state.counts.lock().unwrap();
        counts.requests.get(operation).copied().unwrap_or(0)
    }

    /// Requests of `operation` that got a fault.
    pub fn faults(&self, operation: &str) -> u64 {
        let counts = self.state.counts.lock().unwrap();
        counts.faults.get(operation).copied().unwrap_or(0)
    }

    /// Replies from upstream for `operation` with this status.
    pub fn upstream_status(&self, operation: &str, status: u16) -> u64 {
        let counts = self.state.counts.lock().unwrap();
        counts
            .statuses
            .get(&(operation.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }

    /// From now on, requests failing `check` get 403
    /// `InvalidSignatureException` instead of being forwarded.
    pub fn check_signatures(
        &self,
        check: impl Fn(&super::test_server::Request) -> Result<String, String> + Send + Sync + 'static,
    ) {
        *self.state.signature_check.lock().unwrap() = Some(Arc::new(check));
    }

    /// How many requests of each (operation, access key id) passed the check.
    pub fn signed_by(&self) -> HashMap<(String, String), u64> {
        self.state.signed_by.lock().unwrap().clone()
    }

    /// Why requests failed the signature check.
    pub fn signature_failures(&self) -> Vec<String> {
        self.state.signature_failures.lock().unwrap().clone()
    }

    /// Every operation's request count.
    pub fn all_requests(&self) -> HashMap<String, u64> {
        self.state.counts.lock().unwrap().requests.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Sleeps for `d`, in slices so that a dropped proxy does not hold
/// threads long.
fn sleep_unless_stopped(state: &State, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !state.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve(state: &State, client: TcpStream) -> std::io::Result<()> {
    if state.stop.load(Ordering::Relaxed) {
        return Ok(());
    }
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let request = read_message(&mut reader, false)?;
    let target = request.header("x-amz-target").unwrap_or("").to_owned();
    let (prefix, operation) = target.split_once('.').unwrap_or(("", target.as_str()));
    let operation = operation.to_owned();
    if let Some(bodies) = state.recorded.lock().unwrap().get_mut(&operation) {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        bodies.push((Instant::now(), body));
    }
    let upstream = if prefix.starts_with("DynamoDB") {
        state.dynamodb.clone()
    } else {
        state.kinesis.clone()
    };
    let check = state.signature_check.lock().unwrap().clone();
    if let Some(check) = check {
        match check(&super::test_server::Request::from_message(&request)) {
            Ok(key) => {
                *state
                    .signed_by
                    .lock()
                    .unwrap()
                    .entry((operation.clone(), key))
                    .or_default() += 1;
            }
            Err(why) => {
                state
                    .signature_failures
                    .lock()
                    .unwrap()
                    .push(format!("{operation}: {why}"));
                let body = format!(
                    r#"{{"__type":"InvalidSignatureException","message":"{}"}}"#,
                    why.replace('"', "'")
                );
                let reply = Message {
                    start: "HTTP/1.1 403 Forbidden".into(),
                    headers: vec![("Content-Type".into(), "application/x-amz-json-1.1".into())],
                    body: Vec::new(),
                };
                let mut client = client;
                client.write_all(&reply.to_bytes(body.as_bytes(), body.len()))?;
                client.flush()?;
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
    let fault = {
        let mut rules = state.rules.lock().unwrap();
        let mut rng = state.rng.lock().unwrap();
        rules.iter_mut().find_map(|r| {
            r.fires(&operation, &request.body, &mut rng)
                .then(|| r.fault.clone())
        })
    };
    {
        let mut counts = state.counts.lock().unwrap();
        *counts.requests.entry(operation.clone()).or_default() += 1;
        if fault.is_some() {
            *counts.faults.entry(operation.clone()).or_default() += 1;
        }
    }
    let mut client = client;
    let forward = || -> std::io::Result<Message> {
        let mut up = TcpStream::connect(&upstream)?;
        up.set_read_timeout(Some(IO_TIMEOUT))?;
        up.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut raw = request.to_bytes(&request.body, request.body.len());
        // The request line and Host header pass through unchanged.
        up.write_all(&raw)?;
        raw.clear();
        let mut up_reader = BufReader::new(up);
        read_message(&mut up_reader, true)
    };
    let status_of = |m: &Message| -> u16 {
        m.start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    match fault {
        None => {
            let reply = forward()?;
            {
                let mut counts = state.counts.lock().unwrap();
                *counts
                    .statuses
                    .entry((operation.clone(), status_of(&reply)))
                    .or_default() += 1;
            }
            client.write_all(&reply.to_bytes(&reply.body, reply.body.len()))?;
        }
        Some(Fault::Reply {
            status,
            content_type,
            body,
        }) => {
            let reply = Message {
                start: format!("HTTP/1.1 {status} Injected"),
                headers: vec![
                    ("Content-Type".into(), content_type.into()),
                    ("x-amzn-RequestId".into(), "injected-by-fault-proxy".into()),
                ],
                body: Vec::new(),
            };
            client.write_all(&reply.to_bytes(body.as_bytes(), body.len()))?;
        }
        Some(Fault::Body(body)) => {
            let reply = Message {
                start: "HTTP/1.1 200 OK".into(),
                headers: vec![("Content-Type".into(), "application/x-amz-json-1.1".into())],
                body: Vec::new(),
            };
            client.write_all(&reply.to_bytes(body.as_bytes(), body.len()))?;
        }
        Some(Fault::ResetAfterForward) => {
            let reply = forward()?;
            let half = &reply.body[..reply.body.len() / 2];
            let bytes = reply.to_bytes(half, reply.body.len().max(1));
            client.write_all(&bytes)?;
        }
        Some(Fault::ResetBeforeForward) => {
            let reply = Message {
                start: "HTTP/1.1 200 OK".into(),
                headers: vec![("Content-Type".into(), "application/x-amz-json-1.1".into())],
                body: Vec::new(),
            };
            client.write_all(&reply.to_bytes(b"{\"Rec", 4096))?;
        }
        Some(Fault::Delay(d)) => {
            let reply = forward()?;
            sleep_unless_stopped(state, d);
            client.write_all(&reply.to_bytes(&reply.body, reply.body.len()))?;
        }
        Some(Fault::Hold(d)) => {
            sleep_unless_stopped(state, d);
            let reply = forward()?;
            client.write_all(&reply.to_bytes(&reply.body, reply.body.len()))?;
        }
        Some(Fault::Rewrite(Rewrite(f))) => {
            let reply = forward()?;
            let body = f(&reply.body);
            client.write_all(&reply.to_bytes(&body, body.len()))?;
        }
        Some(Fault::TruncatedJson) => {
            let reply = forward()?;
            let half = &reply.body[..reply.body.len() / 2];
            client.write_all(&reply.to_bytes(half, half.len()))?;
        }
    }
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
