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

use std::sync::Arc;
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

const SUBSCRIBE: &str = "SubscribeToShard";
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
    last_data: Instant,
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

    fn poll_inner(&mut self, wait: Duration) -> Result<Polled> {
        if self.done {
            return Ok(Polled::Ended);
        }
        let deadline = Instant::now() + wait;
        loop {
            while let Some(message) = self
                .decoder
                .next_message()
                .map_err(|e| bad_reply(SUBSCRIBE, e.to_string()))?
            {
                if let Some(event) = self.handle(message)? {
                    return Ok(Polled::Event(event));
                }
            }
            let now = Instant::now();
            let silent_until = self.last_data + self.read_timeout;
            if now >= silent_until {
                return Err(http2_error(
                    &self.url,
                    Http2Error::Timeout(format!(
                        "the next SubscribeToShard event ({:?} without data)",
                        self.read_timeout
                    )),
                ));
            }
            if now >= deadline {
                return Ok(Polled::Idle);
            }
            match self.body.read(deadline.min(silent_until) - now) {
                Ok(BodyRead::Data(bytes)) => {
                    self.last_data = Instant::now();
                    self.decoder.push(&bytes);
                }
                Ok(BodyRead::Nothing) => {}
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

    /// Turns a message into an event, an error, or nothing (an
    /// `initial-response` or an event type we do not know).
    fn handle(&mut self, message: Message) -> Result<Option<SubscribeToShardEvent>> {
        match message.header_str(":message-type") {
            Some("event") => {}
            Some("exception") => {
                let code = message.header_str(":exception-type").unwrap_or_default();
                return Err(self.exception(code, None, &message.payload));
            }
            Some("error") => {
                let code = message.header_str(":error-code").unwrap_or_default();
                let text = message.header_str(":error-message").map(str::to_owned);
                return Err(self.exception(code, text, &message.payload));
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
                let (records, fields) = decode_subscribe_event(&message.payload, &self.shard_id)?;
                if let Some(seq) = &fields.continuation_sequence_number {
                    self.continuation = Some(seq.clone());
                }
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
    fn exception(&self, code: &str, text: Option<String>, payload: &[u8]) -> Error {
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
            request_id: self.request_id.clone(),
        })
    }
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
        let (connect_timeout, read_timeout) = client.timeouts();
        let tls = match endpoint.is_https() {
            true => Some(client.fan_out_tls()?),
            false => None,
        };
        let target = Target {
            host: endpoint.host().to_owned(),
            port: endpoint.port(),
            authority: endpoint.host_header().to_owned(),
            tls,
            connect_timeout,
            read_timeout,
        };
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
            last_data: Instant::now(),
            continuation: None,
            done: false,
        })
    }
}

/// As much of an error reply's body as arrives within the read timeout
/// (up to 64 KiB); what is missing only shortens the error's message.
fn read_error_body(stream: &mut ResponseBody, read_timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + read_timeout;
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
