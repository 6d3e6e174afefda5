//! Enhanced fan-out: registered stream consumers, and `SubscribeToShard`,
//! whose HTTP/2 response pushes a shard's records as event-stream messages
//! for up to 5 minutes.
//!
//! Each subscription has its own HTTP/2 connection (and reader thread),
//! rather than many subscriptions as streams of one connection: the
//! service ends every subscription after 5 minutes, so a connection's
//! setup (tens of milliseconds on kinesis-local; `tests/fan_out.rs`
//! measures it) is paid once per shard per 5 minutes; a GOAWAY, reset or
//! stalled socket then affects one shard only; and a shard reader already
//! is a thread of its own. The HTTP/2 client does carry many streams on
//! one connection (its tests do), so sharing would be a change in this
//! file only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

use crate::aws::client::{reply_error, wait_until_active};
use crate::aws::event_stream::{self, Message};
use crate::aws::get_records::decode_subscribe_event;
use crate::aws::http2::{BodyRead, Connection, Http2Error, ResponseBody, Target};
use crate::aws::kinesis::{ChildShard, IteratorPosition, KinesisClient, bad_reply};
use crate::error::{Error, Result, ServiceError};
use crate::record::{Record, SequenceNumber};
use crate::time::later;

const SUBSCRIBE: &str = "SubscribeToShard";

/// The exception events (and error codes) of `SubscribeToShard` that
/// retrying cannot mend: the stream's KMS key cannot be used. A reader
/// that gets one fails, and the consumer stops with it.
/// `ResourceNotFoundException` is handled apart (see [`SharedConsumer`]).
pub(crate) const FATAL_EXCEPTIONS: &[&str] = &[
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
    "KMSOptInRequired",
];

/// The exception events AWS documents for `SubscribeToShard` that end one
/// subscription only: the reader subscribes again after the last
/// continuation, with backoff. An exception event of any other type is
/// retried the same way and logged at warn.
pub(crate) const RETRIED_EXCEPTIONS: &[&str] = &[
    "InternalFailureException",
    "KMSThrottlingException",
    "LimitExceededException",
    "ResourceInUseException",
];

/// What a fan-out reader does after a failed `SubscribeToShard` (its
/// reply, or an exception event inside the subscription).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterSubscribeError {
    /// Subscribe again after the last continuation, waiting at least
    /// `floor` (with backoff); `warn`: log it at warn (an exception type we
    /// do not know, or a configuration refusal), else at debug.
    Resubscribe { floor: Duration, warn: bool },
    /// `ResourceInUseException`: the consumer is still subscribed, or
    /// subscribed within the last 5 s: wait until 5 s after the last
    /// successful subscribe.
    InUse,
    /// `ResourceNotFoundException`: the stream consumer may have been
    /// deregistered or registered again; look it up before resubscribing.
    CheckConsumer,
    /// Retrying cannot help: the reader fails with the error.
    Fail,
}

/// The decision after a failed subscription or event (a pure function of
/// the error; see [`FATAL_EXCEPTIONS`] and [`RETRIED_EXCEPTIONS`]).
pub(crate) fn after_subscribe_error(e: &Error) -> AfterSubscribeError {
    let code = e.code().unwrap_or_default();
    if code == "ResourceNotFoundException" {
        return AfterSubscribeError::CheckConsumer;
    }
    if code == "ResourceInUseException" {
        return AfterSubscribeError::InUse;
    }
    if FATAL_EXCEPTIONS.contains(&code) {
        return AfterSubscribeError::Fail;
    }
    let resubscribe = |warn| AfterSubscribeError::Resubscribe {
        floor: Duration::from_millis(200),
        warn,
    };
    match e {
        // An exception event inside the 200 response: it ends this
        // subscription only, whatever its type.
        Error::Service(s) if s.status == 200 => resubscribe(!RETRIED_EXCEPTIONS.contains(&code)),
        _ if is_refusal(e) => AfterSubscribeError::Resubscribe {
            floor: Duration::from_secs(1),
            warn: true,
        },
        _ if e.is_retryable() || RETRIED_EXCEPTIONS.contains(&code) => resubscribe(false),
        _ => AfterSubscribeError::Fail,
    }
}

/// How long to wait after `ResourceInUseException` before subscribing
/// again: until 5 s after the last successful subscribe (AWS refuses a
/// second subscription within 5 s of the last one), and at least `floor`.
pub(crate) fn in_use_wait(
    last_subscribed: Option<Instant>,
    now: Instant,
    floor: Duration,
) -> Duration {
    let until_free = last_subscribed.map_or(Duration::ZERO, |at| {
        (at + RESUBSCRIBE_AFTER).saturating_duration_since(now)
    });
    until_free.max(floor)
}

/// AWS refuses a subscription within this long of the last one by the
/// same consumer to the same shard.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(5);

/// True for a transport error that retrying cannot mend: the endpoint's
/// TLS certificate is not trusted (or the handshake fails otherwise), or
/// the endpoint does not speak HTTP/2 (no ALPN `h2`, an HTTP/1.1 reply).
pub(crate) fn is_refusal(e: &Error) -> bool {
    match e {
        Error::Transport { source, .. } => source
            .downcast_ref::<Http2Error>()
            .is_some_and(Http2Error::is_refusal),
        _ => false,
    }
}
/// A whole event-stream message must arrive within this many read
/// timeouts of its first bytes.
const EVENT_DEADLINE_TIMEOUTS: u32 = 3;
/// The most of an error reply's body we read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A consumer registered on a stream for enhanced fan-out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConsumer {
    /// The name it was registered with.
    pub consumer_name: String,
    /// Its ARN, which `SubscribeToShard` takes.
    pub consumer_arn: String,
    /// CREATING, DELETING or ACTIVE.
    pub consumer_status: String,
    /// When it was registered.
    pub creation_time: Option<SystemTime>,
    /// The stream's ARN, when the reply gave it.
    pub stream_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConsumerJson {
    consumer_name: String,
    #[serde(rename = "ConsumerARN")]
    consumer_arn: String,
    consumer_status: String,
    consumer_creation_timestamp: Option<f64>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

impl From<ConsumerJson> for StreamConsumer {
    fn from(c: ConsumerJson) -> StreamConsumer {
        StreamConsumer {
            consumer_name: c.consumer_name,
            consumer_arn: c.consumer_arn,
            consumer_status: c.consumer_status,
            creation_time: c
                .consumer_creation_timestamp
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| UNIX_EPOCH + Duration::from_secs_f64(t)),
            stream_arn: c.stream_arn,
        }
    }
}

/// One `SubscribeToShardEvent`: records pushed by the service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeToShardEvent {
    /// The records, in sequence order, not de-aggregated (as GetRecords
    /// returns them).
    pub records: Vec<Record>,
    /// Where the shard's reading stands, records or not: resubscribe with
    /// [`IteratorPosition::AfterSequenceNumber`] of it (as the KCL does).
    /// `None` at the end of a closed shard.
    pub continuation_sequence_number: Option<SequenceNumber>,
    /// How far behind the tip of the shard the event is.
    pub millis_behind_latest: Option<u64>,
    /// The shard's children, once the subscription reached the end of a
    /// closed shard.
    pub child_shards: Vec<ChildShard>,
}

/// What [`Subscription::poll`] found.
#[derive(Debug)]
pub enum Polled {
    /// An event arrived.
    Event(SubscribeToShardEvent),
    /// Nothing within the wait; the subscription is still open.
    Idle,
    /// The service ended the subscription (it does after 5 minutes):
    /// subscribe again from the last continuation sequence number.
    Ended,
}

/// An open `SubscribeToShard`: a blocking source of the shard's events.
///
/// Iterating yields events until the service ends the subscription
/// (`None`) or something fails (one `Err`, then `None`). Each wait is
/// bounded by the client's read timeout: a server that stops sending is
/// an [`Error::Transport`] of kind `Timeout`. Dropping it cancels the
/// stream and closes its connection.
pub struct Subscription {
    // Dropped first: resets the stream before the connection closes.
    body: ResponseBody,
    _connection: Connection,
    decoder: event_stream::Decoder,
    shard_id: Arc<str>,
    url: String,
    request_id: Option<String>,
    read_timeout: Duration,
    /// When data was last taken out of the stream: the server cannot send
    /// while the stream's window is shut, so silence counts from the later
    /// of this and the last arrival.
    last_take: Instant,
    /// Since when (the arrival of its first bytes) an incomplete message
    /// waits in the decoder.
    partial_since: Option<Instant>,
    /// The arrival of the bytes last pushed into the decoder.
    last_push_arrival: Instant,
    continuation: Option<SequenceNumber>,
    done: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("shard_id", &self.shard_id)
            .field("url", &self.url)
            .field("request_id", &self.request_id)
            .field("continuation", &self.continuation)
            .field("done", &self.done)
            .finish()
    }
}

fn http2_error(url: &str, e: Http2Error) -> Error {
    Error::transport(SUBSCRIBE, url, e.kind(), e)
}

impl Subscription {
    /// Names the shard of the records this subscription hands on `key`
    /// (a multi-stream consumer's lease key) rather than the shard id.
    pub(crate) fn tag_records(&mut self, key: &Arc<str>) {
        self.shard_id = key.clone();
    }

    /// The shard this subscription reads.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The request id the service gave the subscription, if any.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The continuation sequence number of the latest event: subscribe
    /// again after it (see
    /// [`SubscribeToShardEvent::continuation_sequence_number`]).
    pub fn continuation_sequence_number(&self) -> Option<&SequenceNumber> {
        self.continuation.as_ref()
    }

    /// Waits up to `wait` for the next event. An error ends the
    /// subscription: a bad checksum or malformed event is an
    /// [`Error::Decode`] (never a skipped record), an exception event an
    /// [`Error::Service`] (its code, such as `ResourceInUseException`; its
    /// status the 200 of the response that carried it), a reset, GOAWAY or
    /// silence longer than the read timeout an [`Error::Transport`]. After
    /// an error, subscribe again after
    /// [`continuation_sequence_number`](Self::continuation_sequence_number):
    /// nothing after it was delivered.
    pub fn poll(&mut self, wait: Duration) -> Result<Polled> {
        let result = self.poll_inner(wait);
        if !matches!(result, Ok(Polled::Event(_) | Polled::Idle)) {
            self.done = true;
        }
        result
    }

    /// The most time one event-stream message may take to arrive whole,
    /// from its first bytes: a server dribbling a message one byte at a
    /// time never goes silent, yet must not hold a subscription for ever.
    fn event_deadline(&self) -> Duration {
        self.read_timeout.saturating_mul(EVENT_DEADLINE_TIMEOUTS)
    }

    fn poll_inner(&mut self, wait: Duration) -> Result<Polled> {
        if self.done {
            return Ok(Polled::Ended);
        }
        let deadline = later(Instant::now(), wait);
        // Whether everything received was taken out since the deadlines
        // were last checked: only then can the server be blamed (a slow
        // handler leaves data waiting in the stream).
        let mut caught_up = false;
        loop {
            while let Some(message) = self
                .decoder
                .next_message()
                .map_err(|e| bad_reply(SUBSCRIBE, e.to_string()))?
            {
                // The payload is lent by the decoder: decoded in place.
                let handled = handle(&message, &self.shard_id, self.request_id.as_deref());
                // What is left began no earlier than the last bytes pushed.
                self.partial_since =
                    (self.decoder.buffered() > 0).then_some(self.last_push_arrival);
                if let Some(event) = handled? {
                    if let Some(seq) = &event.continuation_sequence_number {
                        self.continuation = Some(seq.clone());
                    }
                    return Ok(Polled::Event(event));
                }
            }
            if std::mem::take(&mut caught_up) {
                self.check_deadlines()?;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Polled::Idle);
            }
            // Every wait is bounded by what could time out, measured from
            // what the connection received, not from when it was taken.
            let heard = self.body.last_arrival().max(self.last_take);
            let silent_until = later(heard, self.read_timeout);
            let mut until = deadline.min(silent_until.max(now + Duration::from_millis(1)));
            if let Some(since) = self.partial_since {
                until = until
                    .min(later(since, self.event_deadline()).max(now + Duration::from_millis(1)));
            }
            match self.body.read(until - now) {
                Ok(BodyRead::Data(bytes)) => {
                    let taken = Instant::now();
                    self.last_take = taken;
                    let arrival = self.body.last_arrival().min(taken);
                    if self.decoder.buffered() == 0 {
                        self.partial_since = Some(arrival);
                    }
                    self.last_push_arrival = arrival;
                    self.decoder.push(&bytes);
                    caught_up = self.body.drained();
                }
                Ok(BodyRead::Nothing) => caught_up = true,
                Ok(BodyRead::End) if self.decoder.buffered() > 0 => {
                    return Err(bad_reply(
                        SUBSCRIBE,
                        format!(
                            "the stream ended inside an event message ({} bytes of it)",
                            self.decoder.buffered()
                        ),
                    ));
                }
                Ok(BodyRead::End) => return Ok(Polled::Ended),
                Err(e) => return Err(http2_error(&self.url, e)),
            }
        }
    }

    /// Fails the subscription when the server went silent for the read
    /// timeout, or an incomplete message is older than the event deadline.
    fn check_deadlines(&self) -> Result<()> {
        let now = Instant::now();
        if let Some(since) = self.partial_since {
            if now.saturating_duration_since(since) >= self.event_deadline() {
                return Err(http2_error(
                    &self.url,
                    Http2Error::Timeout(format!(
                        "the rest of a SubscribeToShard event ({} bytes of it arrived, the first {:?} ago; a whole event must arrive within {:?})",
                        self.decoder.buffered(),
                        now.saturating_duration_since(since),
                        self.event_deadline()
                    )),
                ));
            }
        }
        let heard = self.body.last_arrival().max(self.last_take);
        if now.saturating_duration_since(heard) >= self.read_timeout {
            return Err(http2_error(
                &self.url,
                Http2Error::Timeout(format!(
                    "the next SubscribeToShard event ({:?} without data)",
                    self.read_timeout
                )),
            ));
        }
        Ok(())
    }
}

/// Turns a message of the subscription to `shard_id` into an event, an
/// error, or nothing (an `initial-response` or an event type we do not
/// know).
fn handle(
    message: &Message<'_>,
    shard_id: &Arc<str>,
    request_id: Option<&str>,
) -> Result<Option<SubscribeToShardEvent>> {
    match message.header_str(":message-type") {
        Some("event") => {}
        Some("exception") => {
            let code = message.header_str(":exception-type").unwrap_or_default();
            return Err(exception(code, None, message.payload, request_id));
        }
        Some("error") => {
            let code = message.header_str(":error-code").unwrap_or_default();
            let text = message.header_str(":error-message").map(str::to_owned);
            return Err(exception(code, text, message.payload, request_id));
        }
        other => {
            return Err(bad_reply(
                SUBSCRIBE,
                format!("an event-stream message of type {other:?}"),
            ));
        }
    }
    match message.header_str(":event-type") {
        Some("SubscribeToShardEvent") => {
            let (records, fields) = decode_subscribe_event(message.payload, shard_id)?;
            Ok(Some(SubscribeToShardEvent {
                records: records.into_iter().collect(),
                continuation_sequence_number: fields.continuation_sequence_number,
                millis_behind_latest: fields.millis_behind_latest,
                child_shards: fields.child_shards,
            }))
        }
        Some("initial-response") => Ok(None),
        other => {
            log::debug!("SubscribeToShard: ignoring an event of type {other:?}");
            Ok(None)
        }
    }
}

/// An exception event as a service error: its code, its message (from
/// the header, else the JSON payload), and the HTTP status of the
/// response that carried it (200).
fn exception(code: &str, text: Option<String>, payload: &[u8], request_id: Option<&str>) -> Error {
    #[derive(Deserialize)]
    struct Body {
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let message = text
        .or_else(|| {
            serde_json::from_slice::<Body>(payload)
                .ok()
                .and_then(|b| b.message)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(payload).chars().take(200).collect());
    Error::Service(ServiceError {
        operation: SUBSCRIBE,
        code: code.rsplit('#').next().unwrap_or(code).to_owned(),
        message,
        status: 200,
        request_id: request_id.map(str::to_owned),
    })
}

impl Iterator for Subscription {
    type Item = Result<SubscribeToShardEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.poll(self.read_timeout) {
                Ok(Polled::Event(e)) => return Some(Ok(e)),
                Ok(Polled::Idle) => {}
                Ok(Polled::Ended) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn starting_position(position: &IteratorPosition) -> serde_json::Value {
    match position {
        IteratorPosition::TrimHorizon => json!({"Type": "TRIM_HORIZON"}),
        IteratorPosition::Latest => json!({"Type": "LATEST"}),
        IteratorPosition::AtSequenceNumber(s) => {
            json!({"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": s.as_str()})
        }
        IteratorPosition::AfterSequenceNumber(s) => {
            json!({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": s.as_str()})
        }
        IteratorPosition::AtTimestamp(t) => json!({
            "Type": "AT_TIMESTAMP",
            "Timestamp": t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
        }),
    }
}

impl KinesisClient {
    /// Registers a consumer named `consumer_name` on the stream (given by
    /// ARN) for enhanced fan-out; it starts CREATING (see
    /// [`wait_for_consumer_active`](Self::wait_for_consumer_active)).
    pub fn register_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            consumer: ConsumerJson,
        }
        let input = json!({"StreamARN": stream_arn, "ConsumerName": consumer_name});
        let reply: Reply = self.call("RegisterStreamConsumer", &input)?;
        Ok(reply.consumer.into())
    }

    /// Describes a consumer by its ARN.
    pub fn describe_stream_consumer(&self, consumer_arn: &str) -> Result<StreamConsumer> {
        self.describe_consumer(json!({"ConsumerARN": consumer_arn}))
    }

    /// Describes the consumer named `consumer_name` of the stream.
    pub fn describe_stream_consumer_by_name(
        &self,
        stream_arn: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer> {
        self.describe_consumer(json!({"StreamARN": stream_arn, "ConsumerName": consumer_name}))
    }

    fn describe_consumer(&self, input: serde_json::Value) -> Result<StreamConsumer> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            consumer_description: ConsumerJson,
        }
        let reply: Reply = self.call("DescribeStreamConsumer", &input)?;
        Ok(reply.consumer_description.into())
    }

    /// Lists the consumers registered on the stream, following every page.
    pub fn list_stream_consumers(&self, stream_arn: &str) -> Result<Vec<StreamConsumer>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Page {
            #[serde(default)]
            consumers: Option<Vec<ConsumerJson>>,
            next_token: Option<String>,
        }
        let mut consumers: Vec<StreamConsumer> = Vec::new();
        let mut input = json!({"StreamARN": stream_arn});
        loop {
            let page: Page = self.call("ListStreamConsumers", &input)?;
            let before = consumers.len();
            for c in page.consumers.unwrap_or_default() {
                // Some emulators repeat the last page: keep the first copy.
                if consumers.iter().all(|k| k.consumer_arn != c.consumer_arn) {
                    consumers.push(c.into());
                }
            }
            match page.next_token.filter(|t| !t.is_empty()) {
                Some(token) if consumers.len() > before => input["NextToken"] = json!(token),
                _ => return Ok(consumers),
            }
        }
    }

    /// Deregisters a consumer: its subscriptions end and its name is free
    /// again. The library never calls this by itself: a consumer is
    /// shared by every worker of an application, and one worker stopping
    /// (or a restart) must not end the others' subscriptions; removing it
    /// is an operator's decision (the `leases` example has
    /// `--deregister-consumer`).
    pub fn deregister_stream_consumer(&self, consumer_arn: &str) -> Result<()> {
        let _: serde_json::Value = self.call(
            "DeregisterStreamConsumer",
            &json!({"ConsumerARN": consumer_arn}),
        )?;
        Ok(())
    }

    /// Polls DescribeStreamConsumer until the consumer is ACTIVE, for at
    /// most `timeout`; [`Error::NotReady`] after that. A consumer not found
    /// yet (just registered) is waited for too.
    pub fn wait_for_consumer_active(
        &self,
        consumer_arn: &str,
        timeout: Duration,
    ) -> Result<StreamConsumer> {
        self.wait_for_consumer(consumer_arn, timeout, || {
            self.describe_stream_consumer(consumer_arn)
        })
    }

    /// Describes with `describe` every 100 ms until the consumer is ACTIVE;
    /// "not found" counts as not ready, since a consumer just registered
    /// may not be visible at once.
    fn wait_for_consumer(
        &self,
        what: &str,
        timeout: Duration,
        describe: impl Fn() -> Result<StreamConsumer>,
    ) -> Result<StreamConsumer> {
        let found = wait_until_active(&format!("consumer {what}"), timeout, || match describe() {
            Ok(c) => {
                let status = c.consumer_status.clone();
                Ok((Some(c), status))
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                Ok((None, "not found yet".to_owned()))
            }
            Err(e) => Err(e),
        })?;
        found.ok_or_else(|| Error::NotReady(format!("consumer {what} is not found")))
    }

    /// The consumer named `consumer_name` of the stream, registered first
    /// if it does not exist, once ACTIVE (waiting up to `timeout`).
    pub fn ensure_stream_consumer(
        &self,
        stream_arn: &str,
        consumer_name: &str,
        timeout: Duration,
    ) -> Result<StreamConsumer> {
        match self.describe_stream_consumer_by_name(stream_arn, consumer_name) {
            Ok(c) if c.consumer_status == "ACTIVE" => return Ok(c),
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                match self.register_stream_consumer(stream_arn, consumer_name) {
                    Ok(_) => {}
                    // Another worker registered it first.
                    Err(e) if e.code() == Some("ResourceInUseException") => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        // By name, not by the ARN a reply gave: the name is what every
        // worker of the application agrees on.
        self.wait_for_consumer(&format!("{consumer_name} of {stream_arn}"), timeout, || {
            self.describe_stream_consumer_by_name(stream_arn, consumer_name)
        })
    }

    /// Where fan-out's HTTP/2 connections go: the Kinesis endpoint.
    fn fan_out_target(&self) -> Result<Target> {
        let client = self.client();
        let endpoint = client.endpoint();
        let (connect_timeout, read_timeout) = client.timeouts();
        let tls = match endpoint.is_https() {
            true => Some(client.fan_out_tls()?),
            false => None,
        };
        Ok(Target {
            host: endpoint.host().to_owned(),
            port: endpoint.port(),
            authority: endpoint.host_header().to_owned(),
            tls,
            connect_timeout,
            read_timeout,
        })
    }

    /// Opens and closes one HTTP/2 connection to the endpoint (TLS
    /// handshake with ALPN `h2` for `https`, then the SETTINGS exchange),
    /// as a consumer reading through enhanced fan-out does at startup: a
    /// certificate the client does not trust, or an endpoint that does not
    /// speak HTTP/2, fails here (an [`Error::Transport`] naming the
    /// endpoint and the reason) rather than as readers that retry for ever.
    pub fn check_fan_out_endpoint(&self) -> Result<()> {
        let url = self.client().endpoint().url().to_owned();
        let target = self.fan_out_target()?;
        Connection::connect(&target)
            .map(drop)
            .map_err(|e| http2_error(&url, e))
    }

    /// Subscribes `consumer_arn` to shard `shard_id` from `position`, over
    /// a new HTTP/2 connection (h2c for `http` endpoints, TLS with ALPN
    /// `h2` for `https`), signed like every other call. Returns once the
    /// service accepted the subscription; errors are not retried here (a
    /// reader resubscribes from its last continuation sequence number with
    /// backoff; `ResourceInUseException` means this consumer already
    /// subscribed to the shard within the last 5 seconds or is still
    /// subscribed).
    pub fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Subscription> {
        let client = self.client();
        let endpoint = client.endpoint();
        let url = endpoint.url().to_owned();
        let body = serde_json::to_vec(&json!({
            "ConsumerARN": consumer_arn,
            "ShardId": shard_id,
            "StartingPosition": starting_position(position),
        }))
        .map_err(|e| Error::Internal(e.to_string()))?;
        let headers = client.signed_headers(SUBSCRIBE, &body)?;
        let target = self.fan_out_target()?;
        let read_timeout = target.read_timeout;
        let connection = Connection::connect(&target).map_err(|e| http2_error(&url, e))?;
        let mut refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        refs.push((
            "user-agent",
            concat!("kinesis-consumer/", env!("CARGO_PKG_VERSION")),
        ));
        let mut stream = connection
            .request("POST", "/", &refs, &body)
            .map_err(|e| http2_error(&url, e))?;
        let response = stream.response().map_err(|e| http2_error(&url, e))?;
        let request_id = ["x-amzn-requestid", "x-amz-request-id"]
            .iter()
            .find_map(|h| response.header(h))
            .map(str::to_owned);
        if response.status != 200 {
            let error_type = response.header("x-amzn-errortype").map(str::to_owned);
            let location = response.header("location").map(str::to_owned);
            let body = read_error_body(&mut stream, read_timeout);
            return Err(Error::Service(reply_error(
                SUBSCRIBE,
                response.status,
                request_id,
                error_type,
                location.as_deref(),
                &body,
            )));
        }
        log::debug!("SubscribeToShard {shard_id} from {position:?}: subscribed");
        Ok(Subscription {
            body: stream,
            _connection: connection,
            decoder: event_stream::Decoder::default(),
            shard_id: Arc::from(shard_id),
            url,
            request_id,
            read_timeout,
            last_take: Instant::now(),
            partial_since: None,
            last_push_arrival: Instant::now(),
            continuation: None,
            done: false,
        })
    }
}

/// The application's registered stream consumer, as all its readers share
/// it. Its ARN changes when the consumer is deregistered and registered
/// again (by an operator, or by [`refresh`](Self::refresh)).
#[derive(Debug)]
pub(crate) struct SharedConsumer {
    stream_arn: String,
    name: String,
    arn: Mutex<Arc<str>>,
    /// How long a registration may take to become ACTIVE.
    active_wait: Duration,
}

/// What DescribeStreamConsumer says of the consumer after a subscription
/// with ARN `tried` was refused with `ResourceNotFoundException`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConsumerFound {
    /// ACTIVE under the ARN tried: the consumer is fine, the shard is what
    /// the service does not know.
    Same,
    /// ACTIVE under another ARN: it was registered again; use that one.
    Replaced(String),
    /// Gone, being deleted or being created: register it (again) and wait
    /// until it is ACTIVE.
    Missing,
}

/// Judges a description of the consumer (`None`: not found) after the ARN
/// `tried` was refused (a pure function, see [`SharedConsumer::refresh`]).
pub(crate) fn judge_consumer(described: Option<&StreamConsumer>, tried: &str) -> ConsumerFound {
    match described {
        Some(c) if c.consumer_status == "ACTIVE" && c.consumer_arn == tried => ConsumerFound::Same,
        Some(c) if c.consumer_status == "ACTIVE" => ConsumerFound::Replaced(c.consumer_arn.clone()),
        _ => ConsumerFound::Missing,
    }
}

impl SharedConsumer {
    pub(crate) fn new(
        stream_arn: &str,
        name: &str,
        arn: &str,
        active_wait: Duration,
    ) -> SharedConsumer {
        SharedConsumer {
            stream_arn: stream_arn.to_owned(),
            name: name.to_owned(),
            arn: Mutex::new(Arc::from(arn)),
            active_wait,
        }
    }

    /// The ARN to subscribe with now.
    pub(crate) fn arn(&self) -> Arc<str> {
        self.arn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After `SubscribeToShard` with ARN `tried` said
    /// `ResourceNotFoundException`: looks the consumer up by name, and
    /// returns the ARN to subscribe with from now on (the consumer was
    /// registered again, by someone else or here), or `None` when the
    /// consumer is ACTIVE under `tried` (then the shard is what is
    /// missing). A registration the service refuses is an error naming the
    /// consumer. One reader looks at a time; the others then see the new
    /// ARN at once.
    pub(crate) fn refresh(&self, kinesis: &KinesisClient, tried: &str) -> Result<Option<Arc<str>>> {
        let mut arn = self.arn.lock().unwrap_or_else(|e| e.into_inner());
        if &**arn != tried {
            return Ok(Some(arn.clone()));
        }
        let described = match kinesis.describe_stream_consumer_by_name(&self.stream_arn, &self.name)
        {
            Ok(c) => Some(c),
            Err(e) if e.code() == Some("ResourceNotFoundException") => None,
            Err(e) => return Err(e),
        };
        let new = match judge_consumer(described.as_ref(), tried) {
            ConsumerFound::Same => return Ok(None),
            ConsumerFound::Replaced(new) => {
                log::warn!(
                    "stream consumer {} of {} was registered again as {new} (was {tried}): subscribing with the new ARN",
                    self.name,
                    self.stream_arn
                );
                new
            }
            ConsumerFound::Missing => {
                log::warn!(
                    "stream consumer {} of {} ({tried}) is gone (deregistered?): registering it again",
                    self.name,
                    self.stream_arn
                );
                let c = kinesis
                    .ensure_stream_consumer(&self.stream_arn, &self.name, self.active_wait)
                    .map_err(|e| self.naming(e))?;
                log::info!(
                    "stream consumer {} registered again as {}",
                    self.name,
                    c.consumer_arn
                );
                c.consumer_arn
            }
        };
        *arn = Arc::from(new.as_str());
        Ok(Some(arn.clone()))
    }

    /// A refused registration, its message naming the consumer.
    fn naming(&self, e: Error) -> Error {
        match e {
            Error::Service(mut s) if !s.is_retryable() => {
                s.message = format!(
                    "registering stream consumer {} on {} again (it was deregistered) was refused: {}",
                    self.name, self.stream_arn, s.message
                );
                Error::Service(s)
            }
            other => other,
        }
    }
}

/// As much of an error reply's body as arrives within the read timeout
/// (up to 64 KiB); what is missing only shortens the error's message.
fn read_error_body(stream: &mut ResponseBody, read_timeout: Duration) -> Vec<u8> {
    let deadline = later(Instant::now(), read_timeout);
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.read(left) {
            Ok(BodyRead::Data(bytes)) => body.extend_from_slice(&bytes),
            Ok(BodyRead::Nothing) if !left.is_zero() => {}
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    body
}

#[cfg(test)]
mod tests;
