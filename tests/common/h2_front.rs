//! A fault-injecting HTTP/2 front end for enhanced fan-out tests: it sits
//! between the consumer and kinesis-local on 127.0.0.1 and relays the real
//! event stream, frame by frame, and on request spoils one subscription
//! the way AWS's front end does (an exception event, a clean early end, a
//! reset, GOAWAY, silence, heavy padding, a byte at a time).
//!
//! One port serves both protocols: a connection that starts with the
//! HTTP/2 preface is relayed frame by frame to kinesis-local's cleartext
//! port (header blocks pass untouched, so both HPACK tables stay in step);
//! anything else (the consumer's HTTP/1.1 control-plane calls) is copied
//! byte for byte to `http_upstream` (kinesis-local, or a fault proxy).
//!
//! A fault is armed for the next subscription to a shard ([`H2Front::inject`]):
//! it lets `after_events` event-stream messages through, then acts. The
//! relay knows a subscription's shard from its request body (`"ShardId"`),
//! and counts the messages of a stream by their event-stream prelude.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::event_stream::crc32;
use super::h2_frame as frame;

/// What happens to a subscription once its `after_events` messages passed.
#[derive(Clone, Debug)]
pub enum H2Fault {
    /// An event of `:message-type exception` with this `:exception-type`,
    /// then the end of the stream (as AWS ends a subscription with one).
    Exception(String),
    /// END_STREAM: the subscription ends early and cleanly.
    End,
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY (NO_ERROR), then the connection closes.
    GoAway,
    /// Nothing more on this stream, the connection left open.
    StopSending,
    /// Every later message sent one data byte per frame, each frame
    /// carrying 255 bytes of padding.
    Pad,
    /// The next message one byte at a time, `Duration` apart.
    Dribble(Duration),
    /// A SETTINGS frame changing SETTINGS_INITIAL_WINDOW_SIZE to this
    /// value mid-stream (the client's ACK is not passed on: the server
    /// behind never sent it). Above 2^31-1 it is a flow-control error.
    InitialWindow(u32),
}

impl H2Fault {
    /// True when the subscription the fault acts on ends (padding and a
    /// window size within the limit leave it going).
    pub fn ends_subscription(&self) -> bool {
        match self {
            H2Fault::Pad => false,
            H2Fault::InitialWindow(size) => *size > i32::MAX as u32,
            _ => true,
        }
    }
}

struct Plan {
    shard: String,
    after_events: u32,
    fault: H2Fault,
}

#[derive(Default)]
struct Counts {
    /// Subscriptions seen, by shard.
    subscriptions: HashMap<String, u64>,
    /// Faults that acted.
    applied: u64,
}

/// The subscriptions of one relayed connection, by stream id.
type Streams = Arc<Mutex<HashMap<u32, StreamPlan>>>;

/// A relayed subscription: its shard, its stream id, and its connection's
/// streams (gone once the connection ends).
type Live = (
    String,
    u32,
    std::sync::Weak<Mutex<HashMap<u32, StreamPlan>>>,
);

struct Shared {
    /// Every relayed connection's streams, with the shard of each stream.
    live: Mutex<Vec<Live>>,
    h2_upstream: String,
    http_upstream: String,
    plans: Mutex<Vec<Plan>>,
    /// When each record (by its data) was written to the consumer.
    forwarded: Mutex<HashMap<Vec<u8>, Instant>>,
    counts: Mutex<Counts>,
    changed: Condvar,
    stop: AtomicBool,
}

/// A running front end; it stops accepting when dropped.
pub struct H2Front {
    url: String,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

impl H2Front {
    /// A front end relaying HTTP/2 to `h2_upstream` (kinesis-local's
    /// cleartext URL) and HTTP/1.1 to `http_upstream`.
    pub fn start(h2_upstream: &str, http_upstream: &str) -> H2Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            h2_upstream: host_port(h2_upstream),
            http_upstream: host_port(http_upstream),
            plans: Mutex::new(Vec::new()),
            forwarded: Mutex::new(HashMap::new()),
            live: Mutex::new(Vec::new()),
            counts: Mutex::new(Counts::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("h2-front".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if accepting.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = accepting.clone();
                    let _ = std::thread::Builder::new()
                        .name("h2-front-conn".into())
                        .spawn(move || serve(&shared, conn));
                }
            })
            .unwrap();
        H2Front {
            url: format!("http://{addr}"),
            addr,
            shared,
        }
    }

    /// In front of this test binary's kinesis-local (both protocols).
    pub fn for_kinesis() -> H2Front {
        let e = super::emulators();
        H2Front::start(&e.kinesis_url, &e.kinesis_url)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Arms `fault` for the next subscription to `shard`, acting after
    /// `after_events` event-stream messages.
    pub fn inject(&self, shard: &str, after_events: u32, fault: H2Fault) {
        self.shared.plans.lock().unwrap().push(Plan {
            shard: shard.to_owned(),
            after_events,
            fault,
        });
    }

    /// Applies `fault` to the subscriptions to `shard` open now, at their
    /// next event-stream message.
    pub fn cut_now(&self, shard: &str, fault: H2Fault) {
        let live = self.shared.live.lock().unwrap();
        for (s, stream, streams) in live.iter() {
            if s != shard {
                continue;
            }
            if let Some(streams) = streams.upgrade() {
                if let Some(plan) = streams.lock().unwrap().get_mut(stream) {
                    if !plan.dead {
                        plan.after_events = 0;
                        plan.fault = Some(fault.clone());
                    }
                }
            }
        }
    }

    /// When the event carrying the record with this data was written to
    /// the consumer (the first time), if it was.
    pub fn forwarded_at(&self, data: &[u8]) -> Option<Instant> {
        self.shared.forwarded.lock().unwrap().get(data).copied()
    }

    /// How many subscriptions to `shard` went through so far.
    pub fn subscriptions(&self, shard: &str) -> u64 {
        let counts = self.shared.counts.lock().unwrap();
        counts.subscriptions.get(shard).copied().unwrap_or(0)
    }

    /// How many armed faults acted so far.
    pub fn applied(&self) -> u64 {
        self.shared.counts.lock().unwrap().applied
    }

    /// Waits until `done` holds of the counts (subscriptions by shard,
    /// faults applied), for up to `timeout`; false if it never did.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&HashMap<String, u64>, u64) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut counts = self.shared.counts.lock().unwrap();
        loop {
            if done(&counts.subscriptions, counts.applied) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            counts = self.shared.changed.wait_timeout(counts, left).unwrap().0;
        }
    }
}

impl Drop for H2Front {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(shared: &Arc<Shared>, client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let mut first = vec![0u8; frame::PREFACE.len()];
    let mut got = 0;
    // An HTTP/1.1 request is longer than the preface, so reading this
    // much never waits for bytes that will not come.
    while got < first.len() {
        match (&client).read(&mut first[got..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => got += n,
        }
        if first[..got] != frame::PREFACE[..got] {
            break;
        }
    }
    first.truncate(got);
    if first == frame::PREFACE {
        relay_h2(shared, client);
    } else {
        relay_bytes(&shared.http_upstream, client, &first);
    }
}

/// Copies bytes both ways until either side closes.
fn relay_bytes(upstream: &str, client: TcpStream, first: &[u8]) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    if server.write_all(first).is_err() {
        return;
    }
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let mut c_write = client;
    let _ = std::io::copy(&mut server, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// A socket's write half, shared by the two relay threads.
type Writer = Arc<Mutex<TcpStream>>;

fn send(w: &Writer, bytes: &[u8]) -> bool {
    w.lock().unwrap().write_all(bytes).is_ok()
}

/// A subscription's stream as the server-to-client thread sees it.
struct StreamPlan {
    shard: String,
    after_events: u32,
    fault: Option<H2Fault>,
    /// Event-stream bytes not yet forwarded (a message arrives in pieces).
    pending: Vec<u8>,
    messages: u32,
    /// Pad every later message (a `Pad` fault acted).
    padding: bool,
    /// Drop everything later for this stream.
    dead: bool,
}

fn relay_h2(shared: &Arc<Shared>, client: TcpStream) {
    let Ok(server) = TcpStream::connect(&shared.h2_upstream) else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let to_server: Writer = Arc::new(Mutex::new(server.try_clone().unwrap()));
    let to_client: Writer = Arc::new(Mutex::new(client.try_clone().unwrap()));
    if !send(&to_server, frame::PREFACE) {
        return;
    }
    let streams: Streams = Arc::default();
    // The client's acknowledgements of SETTINGS the front end sent itself.
    let own_settings: Arc<AtomicU32> = Arc::default();
    // Client to server: frames as they come; a request body naming a
    // shard picks up the fault armed for it.
    let up = {
        let (shared, streams, to_server) = (shared.clone(), streams.clone(), to_server.clone());
        let own_settings = own_settings.clone();
        let mut from_client = client.try_clone().unwrap();
        std::thread::spawn(move || {
            while let Ok(Some(f)) = frame::read_frame(&mut from_client, 1 << 24) {
                if f.kind == frame::SETTINGS
                    && f.flags & frame::ACK != 0
                    && own_settings
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    continue;
                }
                if f.kind == frame::DATA {
                    if let Some(shard) = shard_of(&f.payload) {
                        let plan = {
                            let mut plans = shared.plans.lock().unwrap();
                            let at = plans.iter().position(|p| p.shard == shard);
                            at.map(|i| plans.remove(i))
                        };
                        streams.lock().unwrap().insert(
                            f.stream,
                            StreamPlan {
                                shard: shard.clone(),
                                after_events: plan.as_ref().map_or(0, |p| p.after_events),
                                fault: plan.map(|p| p.fault),
                                pending: Vec::new(),
                                messages: 0,
                                padding: false,
                                dead: false,
                            },
                        );
                        shared.live.lock().unwrap().push((
                            shard.clone(),
                            f.stream,
                            Arc::downgrade(&streams),
                        ));
                        let mut counts = shared.counts.lock().unwrap();
                        *counts.subscriptions.entry(shard).or_default() += 1;
                        shared.changed.notify_all();
                    }
                }
                let mut out = Vec::new();
                frame::write_frame(&mut out, f.kind, f.flags, f.stream, &f.payload);
                if !send(&to_server, &out) {
                    break;
                }
            }
            let _ = to_server.lock().unwrap().shutdown(Shutdown::Write);
        })
    };
    let mut from_server = server;
    while let Ok(Some(f)) = frame::read_frame(&mut from_server, 1 << 24) {
        let mut steps = Vec::new();
        {
            let mut streams = streams.lock().unwrap();
            match streams.get_mut(&f.stream) {
                Some(s) if f.kind == frame::DATA => {
                    if s.dead {
                        continue;
                    }
                    let data = frame::strip_padding_and_priority(&f).unwrap_or(&[]);
                    s.pending.extend_from_slice(data);
                    while let Some(len) = whole_message(&s.pending) {
                        let message: Vec<u8> = s.pending.drain(..len).collect();
                        if s.messages >= s.after_events {
                            if let Some(fault) = s.fault.take() {
                                match fault {
                                    H2Fault::Pad => {
                                        s.padding = true;
                                        steps.push(Step::Applied);
                                    }
                                    H2Fault::Dribble(gap) => {
                                        s.messages += 1;
                                        steps.push(Step::Applied);
                                        steps.push(Step::Dribble(f.stream, message, gap));
                                        continue;
                                    }
                                    other => {
                                        s.dead = true;
                                        steps.push(Step::Fault(f.stream, other));
                                        break;
                                    }
                                }
                            }
                        }
                        s.messages += 1;
                        let mut out = Vec::new();
                        forward(&mut out, f.stream, &message, s.padding);
                        steps.push(Step::Event(out, record_data(&message)));
                    }
                    if f.flags & frame::END_STREAM != 0 {
                        rearm(shared, s);
                    }
                    if f.flags & frame::END_STREAM != 0 && !s.dead {
                        let mut out = Vec::new();
                        frame::write_frame(&mut out, frame::DATA, frame::END_STREAM, f.stream, &[]);
                        steps.push(Step::Bytes(out));
                    }
                }
                Some(s) if s.dead && f.kind != frame::HEADERS => continue,
                _ => {
                    let mut out = Vec::new();
                    frame::write_frame(&mut out, f.kind, f.flags, f.stream, &f.payload);
                    steps.push(Step::Bytes(out));
                }
            }
        }
        let mut go_on = true;
        for step in steps {
            go_on = match step {
                Step::Bytes(out) => send(&to_client, &out),
                Step::Event(out, data) => {
                    let sent = send(&to_client, &out);
                    let at = Instant::now();
                    let mut forwarded = shared.forwarded.lock().unwrap();
                    for d in data {
                        forwarded.entry(d).or_insert(at);
                    }
                    sent
                }
                Step::Dribble(stream, message, gap) => {
                    let mut ok = true;
                    for byte in message {
                        std::thread::sleep(gap);
                        let mut out = Vec::new();
                        frame::write_frame(&mut out, frame::DATA, 0, stream, &[byte]);
                        ok = send(&to_client, &out);
                        if !ok {
                            break;
                        }
                    }
                    ok
                }
                Step::Fault(stream, fault) => {
                    if matches!(fault, H2Fault::InitialWindow(_)) {
                        own_settings.fetch_add(1, Ordering::SeqCst);
                    }
                    let go_on = act(&to_client, &to_server, stream, &fault);
                    applied(shared);
                    go_on
                }
                Step::Applied => {
                    applied(shared);
                    true
                }
            };
            if !go_on {
                break;
            }
        }
        if !go_on {
            break;
        }
    }
    let _ = to_client.lock().unwrap().shutdown(Shutdown::Both);
    let _ = to_server.lock().unwrap().shutdown(Shutdown::Both);
    let _ = up.join();
    for s in streams.lock().unwrap().values_mut() {
        rearm(shared, s);
    }
}

/// A fault that never acted (the subscription ended first: refused, or
/// cut by the server) waits for the next subscription to its shard.
fn rearm(shared: &Shared, s: &mut StreamPlan) {
    if let Some(fault) = s.fault.take() {
        shared.plans.lock().unwrap().insert(
            0,
            Plan {
                shard: s.shard.clone(),
                after_events: s.after_events,
                fault,
            },
        );
    }
}

fn applied(shared: &Shared) {
    let mut counts = shared.counts.lock().unwrap();
    counts.applied += 1;
    shared.changed.notify_all();
}

enum Step {
    /// A fault that acts on the messages (padding, dribbling) took effect.
    Applied,
    Bytes(Vec<u8>),
    /// An event-stream message as frames, and the data of its records.
    Event(Vec<u8>, Vec<Vec<u8>>),
    Dribble(u32, Vec<u8>, Duration),
    Fault(u32, H2Fault),
}

/// Does what `fault` says to `stream`; false when the connection is to end.
fn act(to_client: &Writer, to_server: &Writer, stream: u32, fault: &H2Fault) -> bool {
    let mut out = Vec::new();
    let mut cancel = Vec::new();
    frame::write_rst_stream(&mut cancel, stream, frame::CANCEL);
    match fault {
        H2Fault::Exception(kind) => {
            let message = encode(
                &[
                    (":message-type", "exception"),
                    (":exception-type", kind),
                    (":content-type", "application/json"),
                ],
                format!(r#"{{"message":"injected {kind}"}}"#).as_bytes(),
            );
            frame::write_frame(&mut out, frame::DATA, frame::END_STREAM, stream, &message);
        }
        H2Fault::End => frame::write_frame(&mut out, frame::DATA, frame::END_STREAM, stream, &[]),
        H2Fault::Reset(code) => frame::write_rst_stream(&mut out, stream, *code),
        H2Fault::GoAway => {
            frame::write_goaway(&mut out, stream, frame::NO_ERROR, b"injected GOAWAY");
            let _ = send(to_client, &out);
            return false;
        }
        H2Fault::StopSending => return true,
        H2Fault::InitialWindow(size) => {
            let mut setting = frame::SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
            setting.extend_from_slice(&size.to_be_bytes());
            frame::write_frame(&mut out, frame::SETTINGS, 0, 0, &setting);
            return send(to_client, &out);
        }
        H2Fault::Pad | H2Fault::Dribble(_) => unreachable!("acts on messages"),
    }
    send(to_server, &cancel) && send(to_client, &out)
}

/// Appends `message` as DATA frames: whole (up to 16 KiB a frame), or one
/// byte per frame with 255 bytes of padding.
fn forward(out: &mut Vec<u8>, stream: u32, message: &[u8], padding: bool) {
    if padding {
        for &byte in message {
            let mut payload = vec![255u8, byte];
            payload.extend_from_slice(&[0u8; 255]);
            frame::write_frame(out, frame::DATA, frame::PADDED, stream, &payload);
        }
    } else {
        for chunk in message.chunks(16_384) {
            frame::write_frame(out, frame::DATA, 0, stream, chunk);
        }
    }
}

/// The length of the whole event-stream message at the start of `bytes`,
/// once all of it is there.
fn whole_message(bytes: &[u8]) -> Option<usize> {
    let total = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    (total >= 16 && bytes.len() >= total).then_some(total)
}

/// The `ShardId` of a SubscribeToShard request body.
fn shard_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(value.get("ShardId")?.as_str()?.to_owned())
}

/// An event-stream message with string headers.
fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = (12 + h.len() + payload.len() + 4) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32(&out[..8]).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32(&out).to_be_bytes());
    out
}

/// The data of the records of a SubscribeToShardEvent message (none for
/// other messages).
fn record_data(message: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let Some(headers) = message.get(4..8) else {
        return Vec::new();
    };
    let headers = u32::from_be_bytes(headers.try_into().unwrap()) as usize;
    let Some(payload) = message.get(12 + headers..message.len().saturating_sub(4)) else {
        return Vec::new();
    };
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Vec::new();
    };
    let Some(records) = event.get("Records").and_then(|r| r.as_array()) else {
        return Vec::new();
    };
    records
        .iter()
        .filter_map(|r| r.get("Data")?.as_str())
        .filter_map(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .collect()
}
