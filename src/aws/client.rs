//! One JSON-protocol call path shared by every operation: sign, send, parse
//! the reply or the error, retry with backoff and jitter.

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::aws::credentials::{DefaultCredentialsChain, ProvideCredentials};
use crate::aws::endpoint::{self, Endpoint, Service};
use crate::aws::http1::{self, Http1};
use crate::aws::sigv4::{self, SignableRequest, SigningOptions};
use crate::error::{Error, Result, ServiceError, TransportKind};
use crate::random;

/// Largest reply we read: a GetRecords reply holds up to 10 MiB of data,
/// which base64 and JSON grow by about a third.
const MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;

/// How to reach an AWS service: region, endpoint, credentials, timeouts and
/// retries. One `ClientConfig` can serve Kinesis, DynamoDB and CloudWatch.
///
/// ```
/// use std::time::Duration;
/// use kinesis_consumer::aws::ClientConfig;
///
/// let config = ClientConfig::new()
///     .region("eu-west-1")
///     .retry_wait(Duration::from_millis(200))
///     .max_attempts(5);
/// # drop(config);
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) region: Option<String>,
    pub(crate) endpoint_url: Option<String>,
    /// The setting an invalid `endpoint_url` is reported as: the consumer
    /// builder's per-service overrides have names of their own.
    pub(crate) endpoint_setting: &'static str,
    /// The setting a configured `region` is reported as: the consumer's
    /// Kinesis region may come from its `stream_arn`.
    pub(crate) region_setting: &'static str,
    pub(crate) credentials: Option<Arc<dyn ProvideCredentials>>,
    pub(crate) retry_wait: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    /// Once set, a failed request is not retried (the consumer's shutdown).
    pub(crate) stop_retrying: Option<Arc<AtomicBool>>,
    pub(crate) fan_out_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::new()
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("region", &self.region)
            .field(
                "endpoint_url",
                &self.endpoint_url.as_deref().map(endpoint::redact_url),
            )
            .field("credentials", &self.credentials)
            .field("retry_wait", &self.retry_wait)
            .field("max_attempts", &self.max_attempts)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("fan_out_tls", &self.fan_out_tls.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl ClientConfig {
    /// A configuration that takes everything from the standard AWS
    /// environment.
    pub fn new() -> ClientConfig {
        ClientConfig {
            region: None,
            endpoint_url: None,
            endpoint_setting: "endpoint_url",
            region_setting: "region",
            credentials: None,
            retry_wait: Duration::from_millis(100),
            max_attempts: 3,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(10),
            stop_retrying: None,
            fan_out_tls: None,
        }
    }

    /// The AWS region, such as `us-east-1`.
    ///
    /// Defaults to `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the region of
    /// the active profile in the AWS config file.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The endpoint URL, such as `http://127.0.0.1:4567` for an emulator.
    ///
    /// Defaults to `AWS_ENDPOINT_URL_<SERVICE>`, then `AWS_ENDPOINT_URL`, then
    /// the region's standard endpoint.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// The credentials to sign with.
    ///
    /// Defaults to the standard chain: environment, shared files, web
    /// identity, container, EC2 instance metadata.
    pub fn credentials(mut self, credentials: impl ProvideCredentials + 'static) -> Self {
        self.credentials = Some(Arc::new(credentials));
        self
    }

    /// The base wait before retrying a failed request; it doubles with each
    /// attempt, with jitter. Defaults to 100 ms (Spark's default).
    pub fn retry_wait(mut self, wait: Duration) -> Self {
        self.retry_wait = wait;
        self
    }

    /// How many times a request is tried in all before its error is
    /// returned. Defaults to 3 (Spark's default).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// How long to wait for a connection. Defaults to 3 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for each reply. Defaults to 10 s.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The TLS settings of the client's connections to an `https`
    /// endpoint, for example to trust a private certificate authority or
    /// pin a test server's certificate: enhanced fan-out's HTTP/2 ones
    /// (`SubscribeToShard`; ALPN protocols replaced with `h2`) and the
    /// other calls' HTTP/1.1 ones (replaced with `http/1.1`). A client
    /// whose endpoint is reached through a proxy (`HTTPS_PROXY` and the
    /// like) sends its other calls through ureq, with the default settings.
    ///
    /// Defaults to the Mozilla root certificates of `webpki-roots`, with
    /// rustls's safe default protocol versions and the `ring` provider.
    pub fn fan_out_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.fan_out_tls = Some(config);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if self.read_timeout.is_zero() {
            return Err(Error::config("read_timeout", "must be greater than zero"));
        }
        Ok(())
    }
}

/// The JSON protocol of one service: its `X-Amz-Target` prefix and content type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Protocol {
    pub service: Service,
    pub target_prefix: &'static str,
    pub content_type: &'static str,
}

pub(crate) const KINESIS: Protocol = Protocol {
    service: Service::Kinesis,
    target_prefix: "Kinesis_20131202",
    content_type: "application/x-amz-json-1.1",
};

pub(crate) const DYNAMODB: Protocol = Protocol {
    service: Service::DynamoDb,
    target_prefix: "DynamoDB_20120810",
    content_type: "application/x-amz-json-1.0",
};

pub(crate) const CLOUDWATCH: Protocol = Protocol {
    service: Service::CloudWatch,
    target_prefix: "GraniteServiceVersion20100801",
    content_type: "application/x-amz-json-1.0",
};

/// A signed JSON-protocol client for one service.
#[derive(Clone)]
pub(crate) struct Client {
    /// Our HTTP/1.1 client, which requests go through unless the
    /// environment names a proxy for the endpoint; then `agent` (ureq)
    /// does, as it reads `ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY` and
    /// `NO_PROXY` itself.
    http1: Option<Arc<Http1>>,
    agent: ureq::Agent,
    protocol: Protocol,
    endpoint: Endpoint,
    region: String,
    credentials: Arc<dyn ProvideCredentials>,
    retry_wait: Duration,
    max_attempts: u32,
    stop_retrying: Option<Arc<AtomicBool>>,
    /// The `Date` of the latest reply that had one, in seconds since the
    /// epoch (0: none yet).
    service_time: Arc<AtomicU64>,
    connect_timeout: Duration,
    read_timeout: Duration,
    fan_out_tls: Option<Arc<rustls::ClientConfig>>,
    /// The buffer the last hot-path reply body (GetRecords) was read into,
    /// lent to the next call when free: a multi-megabyte buffer fresh from
    /// the allocator costs its zeroing and a page fault per 4 KiB page on
    /// every call. Shared by the clones (one per consumer), so at most one
    /// is kept, the largest.
    spare_body: Arc<Mutex<Vec<u8>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.protocol.service)
            .field("endpoint", &self.endpoint.url())
            .field("region", &self.region)
            .finish()
    }
}

impl Client {
    pub(crate) fn new(protocol: Protocol, config: &ClientConfig) -> Result<Client> {
        config.validate()?;
        let region = endpoint::resolve_region(config.region.as_deref())?;
        let endpoint = match &config.endpoint_url {
            Some(url) => endpoint::parse_endpoint(url, config.endpoint_setting)?,
            None => endpoint::resolve_endpoint(
                protocol.service,
                None,
                &region,
                config.region.as_ref().map(|_| config.region_setting),
            )?,
        };
        let credentials = match &config.credentials {
            Some(c) => c.clone(),
            None => Arc::new(DefaultCredentialsChain::new()),
        };
        // Redirects are never followed: ureq would resend the request
        // (with its session token header) to whatever host a `Location`
        // names. A 3xx is a service error instead, see `reply_error`.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_recv_response(Some(config.read_timeout))
            .timeout_recv_body(Some(config.read_timeout))
            .timeout_send_body(Some(config.read_timeout))
            .user_agent(http1::USER_AGENT)
            .build()
            .into();
        let http1 = match proxied(&endpoint) {
            true => None,
            false => Some(Arc::new(Http1::new(http1::Target {
                host: endpoint.host().to_owned(),
                port: endpoint.port(),
                host_header: endpoint.host_header().to_owned(),
                tls: match endpoint.is_https() {
                    true => Some(http1_tls(config.fan_out_tls.as_ref())?),
                    false => None,
                },
                connect_timeout: config.connect_timeout,
                read_timeout: config.read_timeout,
                max_body: MAX_RESPONSE_BYTES,
            }))),
        };
        Ok(Client {
            http1,
            agent,
            protocol,
            endpoint,
            region,
            credentials,
            retry_wait: config.retry_wait,
            max_attempts: config.max_attempts,
            stop_retrying: config.stop_retrying.clone(),
            service_time: Arc::default(),
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            fan_out_tls: config.fan_out_tls.clone(),
            spare_body: Arc::default(),
        })
    }

    /// The connect and read timeouts.
    pub(crate) fn timeouts(&self) -> (Duration, Duration) {
        (self.connect_timeout, self.read_timeout)
    }

    /// The TLS settings for HTTP/2 (fan-out) connections: the configured
    /// ones, else webpki-roots.
    pub(crate) fn fan_out_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        match &self.fan_out_tls {
            Some(config) => Ok(config.clone()),
            None => default_tls(),
        }
    }

    /// The headers of a signed `POST /` request for `operation` with
    /// `body`: content type, target, and the SigV4 ones (no `host`; HTTP/2
    /// sends it as `:authority`, the same value).
    pub(crate) fn signed_headers(
        &self,
        operation: &'static str,
        body: &[u8],
    ) -> Result<Vec<(String, String)>> {
        let credentials = self.credentials.credentials()?;
        let target = format!("{}.{}", self.protocol.target_prefix, operation);
        let headers = [
            ("content-type", self.protocol.content_type),
            ("host", self.endpoint.host_header()),
            ("x-amz-target", target.as_str()),
        ];
        let request = SignableRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let signed = sigv4::sign(
            &request,
            &credentials,
            &self.region,
            self.protocol.service.signing_name(),
            SystemTime::now(),
            &SigningOptions::default(),
        );
        let mut out: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| *n != "host")
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        out.extend(signed.into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)));
        Ok(out)
    }

    /// The service's clock as of the latest reply that carried a `Date`
    /// header (whole seconds, so never later than the service's time then).
    pub(crate) fn service_time(&self) -> Option<SystemTime> {
        match self.service_time.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }

    /// The endpoint requests go to.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Calls `operation` with `input` and decodes the reply, retrying
    /// retryable failures.
    pub(crate) fn call<I: Serialize, O: DeserializeOwned>(
        &self,
        operation: &'static str,
        input: &I,
    ) -> Result<O> {
        let body = serde_json::to_vec(input).map_err(|e| Error::InvalidRequest {
            operation,
            reason: format!("cannot be encoded as JSON: {e}"),
        })?;
        self.with_retries(operation, || {
            let reply = self.send(operation, &body)?;
            decode(operation, &reply)
        })
    }

    /// Calls `operation` once per attempt and hands the raw reply body to
    /// `decode`, so hot paths can decode in place.
    pub(crate) fn call_with<T>(
        &self,
        operation: &'static str,
        body: &[u8],
        decode: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let out = self.call_admitting(operation, body, |_| true, decode)?;
        out.ok_or_else(|| Error::Internal(format!("{operation}: a reply admitted was dropped")))
    }

    /// Like [`call_with`](Self::call_with), and before a successful reply's
    /// body is read, hands its length (Content-Length; 0 when the server did
    /// not say) to `admit`, which may wait, for example for room in a memory
    /// budget. When `admit` returns false the reply is dropped unread and
    /// the call returns `Ok(None)`. Called once per attempt. The body is
    /// read into the client's spare buffer when it is free.
    pub(crate) fn call_admitting<T>(
        &self,
        operation: &'static str,
        body: &[u8],
        mut admit: impl FnMut(u64) -> bool,
        decode: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<Option<T>> {
        self.with_retries(operation, || {
            let mut buffer = std::mem::take(&mut *lock(&self.spare_body));
            let out = match self.send_admitting(operation, body, &mut admit, &mut buffer) {
                Ok(Some(len)) => decode(&buffer[..len]).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            let mut spare = lock(&self.spare_body);
            if buffer.len() > spare.len() {
                *spare = buffer;
            }
            out
        })
    }

    fn with_retries<T>(
        &self,
        operation: &'static str,
        mut attempt: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let mut tries = 1;
        loop {
            match attempt() {
                Err(e) if e.is_retryable() && tries < self.max_attempts && !self.stopping() => {
                    let wait = backoff(self.retry_wait, tries);
                    log::debug!("{operation}: attempt {tries} failed ({e}); retrying in {wait:?}");
                    std::thread::sleep(wait);
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop_retrying
            .as_ref()
            .is_some_and(|stop| stop.load(Ordering::Relaxed))
    }

    /// One signed request; the reply body when the status is 2xx.
    fn send(&self, operation: &'static str, body: &[u8]) -> Result<Vec<u8>> {
        let mut buffer = Vec::new();
        let len = self.send_admitting(operation, body, &mut |_| true, &mut buffer)?;
        buffer.truncate(len.unwrap_or(0));
        Ok(buffer)
    }

    /// [`send`](Self::send), asking `admit` before reading a 2xx reply's
    /// body (see [`call_admitting`](Self::call_admitting)), and reading it
    /// into `buffer` (what `buffer` holds is overwritten, not zeroed
    /// again); the body's length, `None` when `admit` said no.
    fn send_admitting(
        &self,
        operation: &'static str,
        body: &[u8],
        admit: &mut dyn FnMut(u64) -> bool,
        buffer: &mut Vec<u8>,
    ) -> Result<Option<usize>> {
        let headers = self.signed_headers(operation, body)?;
        let url = self.endpoint.url();
        let sent = match &self.http1 {
            Some(http1) => {
                // A 2xx reply's Content-Length is within the limit here:
                // `post` refuses a longer one before asking.
                let mut admit_head = |head: &http1::Head| {
                    !(200..300).contains(&head.status) || admit(head.content_length().unwrap_or(0))
                };
                http1
                    .post(&headers, body, &mut admit_head, buffer)
                    .map(|(head, len)| (ReplyHead::new(head.status, |n| head.header(n)), len))
                    .map_err(|e| Error::transport(operation, url, io_kind(&e), e))
            }
            None => self.send_through_ureq(operation, &headers, body, admit, buffer),
        };
        let (head, len) = sent.map_err(|e| name_the_setting(e, &self.endpoint))?;
        if let Some(date) = head.date {
            self.service_time.store(date, Ordering::Relaxed);
        }
        let Some(len) = len else {
            // Dropped unread: the connection is closed, not reused.
            return Ok(None);
        };
        if (200..300).contains(&head.status) {
            return Ok(Some(len));
        }
        Err(Error::Service(reply_error(
            operation,
            head.status,
            head.request_id,
            head.error_type,
            head.location.as_deref(),
            &buffer[..len],
        )))
    }

    /// [`send_admitting`](Self::send_admitting)'s request through ureq
    /// (when a proxy is to be used): the reply's head and the body's
    /// length, none when `admit` said no.
    fn send_through_ureq(
        &self,
        operation: &'static str,
        headers: &[(String, String)],
        body: &[u8],
        admit: &mut dyn FnMut(u64) -> bool,
        buffer: &mut Vec<u8>,
    ) -> Result<(ReplyHead, Option<usize>)> {
        let url = self.endpoint.url();
        let mut req = self.agent.post(url);
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let mut reply = req
            .send(body)
            .map_err(|e| transport_error(operation, url, e))?;
        let head = ReplyHead::new(reply.status().as_u16(), |name| {
            reply.headers().get(name).and_then(|v| v.to_str().ok())
        });
        // Read into a buffer sized from Content-Length: no regrowing and
        // copying of multi-megabyte GetRecords replies.
        let length = reply
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0)
            .min(MAX_RESPONSE_BYTES);
        if (200..300).contains(&head.status) && !admit(length) {
            return Ok((head, None));
        }
        let mut reader = reply
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .reader();
        let len = read_into(&mut reader, buffer, length as usize)
            .map_err(|e| Error::transport(operation, url, io_kind(&e), e))?;
        Ok((head, Some(len)))
    }
}

/// What a reply's status and headers say that the caller needs.
struct ReplyHead {
    status: u16,
    request_id: Option<String>,
    /// The `Date`, in seconds since the epoch.
    date: Option<u64>,
    error_type: Option<String>,
    location: Option<String>,
}

impl ReplyHead {
    /// The head of a reply with `status`, its headers looked up with
    /// `header` (by lowercase name).
    fn new<'a>(status: u16, header: impl Fn(&str) -> Option<&'a str>) -> ReplyHead {
        ReplyHead {
            status,
            request_id: request_id_in(&header),
            date: header("date").and_then(crate::time::http_date_seconds),
            error_type: header("x-amzn-errortype").map(str::to_owned),
            location: header("location").map(str::to_owned),
        }
    }
}

/// The default TLS settings: the Mozilla roots of webpki-roots, rustls's
/// safe default protocol versions, no ALPN protocol.
fn default_tls() -> Result<Arc<rustls::ClientConfig>> {
    static DEFAULT: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(config) = DEFAULT.get() {
        return Ok(config.clone());
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // The application's process-wide provider when it installed one
    // (say aws-lc-rs, for post-quantum key exchange), else ring: the
    // order ureq follows for its requests. rustls 0.23.48
    // deprecates ring's `default_provider` because ring has no
    // post-quantum algorithms; ring is what ureq brings and the only
    // provider our dependencies allow (aws-lc-rs needs a C toolchain),
    // and nothing else builds a ring provider, so the call stays and
    // only its warning is silenced.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| {
            #[allow(deprecated)]
            Arc::new(rustls::crypto::ring::default_provider())
        });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(DEFAULT.get_or_init(|| Arc::new(config)).clone())
}

/// The TLS settings of our HTTP/1.1 requests: the configured ones (the
/// endpoint fan-out subscribes to is the same host), else the default
/// ones, offering ALPN `http/1.1`.
fn http1_tls(configured: Option<&Arc<rustls::ClientConfig>>) -> Result<Arc<rustls::ClientConfig>> {
    let mut config = match configured {
        Some(config) => (**config).clone(),
        None => (*default_tls()?).clone(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// True when the environment names a proxy (`ALL_PROXY`, `HTTPS_PROXY`,
/// `HTTP_PROXY`, read as ureq reads them) that `NO_PROXY` does not exempt
/// `endpoint` from: requests then go through ureq, which speaks to proxies.
fn proxied(endpoint: &Endpoint) -> bool {
    goes_through(ureq::Proxy::try_from_env().as_ref(), endpoint)
}

/// True when requests to `endpoint` go through `proxy`.
fn goes_through(proxy: Option<&ureq::Proxy>, endpoint: &Endpoint) -> bool {
    let Some(proxy) = proxy else {
        return false;
    };
    endpoint
        .url()
        .parse::<ureq::http::Uri>()
        .map_or(true, |uri| !proxy.is_no_proxy(&uri))
}

/// Reads `reader` to its end into `buffer`, from its start; the length
/// read. `buffer` grows (zeroed) only past what it already holds:
/// `expected` (the Content-Length) bytes and one more, so that the end is
/// seen without growing.
fn read_into(
    reader: &mut impl Read,
    buffer: &mut Vec<u8>,
    expected: usize,
) -> std::io::Result<usize> {
    if buffer.len() <= expected {
        buffer.resize(expected + 1, 0);
    }
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            buffer.resize(buffer.len().max(4096) * 2, 0);
        }
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => return Ok(filled),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The lock, even if a thread panicked holding it (what it guards, a
/// spare buffer or idle connections, is only reused, never trusted).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decodes a JSON reply; an empty body counts as `{}`.
pub(crate) fn decode<O: DeserializeOwned>(operation: &'static str, body: &[u8]) -> Result<O> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| Error::Decode {
        operation,
        message: explain_decode_error(e, body),
    })
}

/// A decode error's text; when the body is not JSON at all (an HTML page
/// from something that is not the AWS service), its first characters too.
pub(crate) fn explain_decode_error(e: serde_json::Error, body: &[u8]) -> String {
    let looks_like_json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['));
    if looks_like_json {
        e.to_string()
    } else {
        format!(
            "{e}: the reply is not JSON (is the endpoint an AWS service?): {}",
            describe_body(body)
        )
    }
}

/// The error of a non-2xx reply: for a redirect (3xx), one that names
/// where it pointed; else what the body says (see [`service_error`]).
pub(crate) fn reply_error(
    operation: &'static str,
    status: u16,
    request_id: Option<String>,
    error_type_header: Option<String>,
    location: Option<&str>,
    body: &[u8],
) -> ServiceError {
    if (300..400).contains(&status) {
        return redirect_error(operation, status, request_id, location);
    }
    service_error(operation, status, request_id, error_type_header, body)
}

/// The error of a redirect, which is never followed: it would take the
/// signed request, session token included, to another host. It names the
/// status and the host the `Location` points at (never its path or query,
/// which may hold secrets).
fn redirect_error(
    operation: &'static str,
    status: u16,
    request_id: Option<String>,
    location: Option<&str>,
) -> ServiceError {
    let target = match location.map(endpoint::parse_url) {
        Some(Ok(url)) => match url.port {
            Some(port) => format!("to host {}:{port}", url.host),
            None => format!("to host {}", url.host),
        },
        Some(Err(_)) => "to a location that is not an absolute http(s) URL".to_owned(),
        None => "without a Location".to_owned(),
    };
    ServiceError {
        operation,
        code: String::new(),
        message: format!("the endpoint redirected {target}; redirects are not followed"),
        status,
        request_id,
    }
}

/// Builds the error of a non-2xx reply from whatever the body holds: JSON
/// with `__type` and `message`, HTML, or nothing.
pub(crate) fn service_error(
    operation: &'static str,
    status: u16,
    request_id: Option<String>,
    error_type_header: Option<String>,
    body: &[u8],
) -> ServiceError {
    #[derive(serde::Deserialize, Default)]
    struct ErrorBody {
        #[serde(rename = "__type", alias = "code", alias = "Code")]
        kind: Option<String>,
        #[serde(alias = "Message", alias = "errorMessage")]
        message: Option<String>,
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (kind, message) = match parsed {
        Some(b) => (b.kind, b.message),
        None => (None, None),
    };
    let code = kind
        .or_else(|| error_type_header.map(|h| h.split(':').next().unwrap_or_default().to_owned()))
        .map(|c| strip_code_prefix(&c).to_owned())
        .unwrap_or_default();
    let message = message.unwrap_or_else(|| describe_body(body));
    ServiceError {
        operation,
        code,
        message,
        status,
        request_id,
    }
}

/// `com.amazonaws.kinesis#ResourceNotFoundException` → `ResourceNotFoundException`.
fn strip_code_prefix(code: &str) -> &str {
    let code = code.rsplit('#').next().unwrap_or(code);
    code.split(':').next().unwrap_or(code).trim()
}

/// A short description of a reply body that is not the JSON we expect,
/// for error messages: what it starts with (control characters left out),
/// or that it is empty. Credential sources use it too.
pub(crate) fn describe_body(body: &[u8]) -> String {
    const SHOWN: usize = 120;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty reply body".to_owned();
    }
    let mut chars = text.chars().filter(|c| !c.is_control());
    let mut snippet: String = chars.by_ref().take(SHOWN).collect();
    if chars.next().is_some() {
        snippet.push('…');
    }
    format!("unparsed reply body: {snippet}")
}

/// The request id AWS gave a reply (`x-amzn-RequestId`, or S3-style
/// `x-amz-request-id`), if any.
pub(crate) fn request_id(headers: &ureq::http::HeaderMap) -> Option<String> {
    request_id_in(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

/// [`request_id`] from headers looked up with `header` (by lowercase name).
fn request_id_in<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    ["x-amzn-requestid", "x-amz-request-id"]
        .iter()
        .find_map(|h| header(h))
        .map(str::to_owned)
}

/// A failed request of `operation` to `url` as an [`Error::Transport`]
/// that says what kind of failure it was.
pub(crate) fn transport_error(operation: &'static str, url: &str, e: ureq::Error) -> Error {
    let kind = match &e {
        ureq::Error::HostNotFound => TransportKind::HostNotFound,
        ureq::Error::Timeout(_) => TransportKind::Timeout,
        ureq::Error::Io(io) => io_kind(io),
        _ => TransportKind::Broken,
    };
    Error::transport(operation, url, kind, e)
}

/// The kind of an I/O failure on a connection.
pub(crate) fn io_kind(e: &std::io::Error) -> TransportKind {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => TransportKind::ConnectionRefused,
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => TransportKind::Timeout,
        _ if is_lookup_failure(e) => TransportKind::HostNotFound,
        _ => TransportKind::Broken,
    }
}

/// True when `e` is a failed host name lookup. ureq's resolver hands on
/// the standard library's error, an `io::Error` of an unstable kind
/// (`Uncategorized`) that only its message tells apart: on Unix,
/// "failed to lookup address information: <gai_strerror>", whether the
/// name does not exist ("Name or service not known") or no resolver
/// answers ("Temporary failure in name resolution"). Both fail startup at
/// once: a host that does not resolve is almost always a typo in a region
/// or an endpoint, and a minute of retries only hides it. Once running,
/// every transport error is retried anyway.
fn is_lookup_failure(e: &std::io::Error) -> bool {
    e.to_string()
        .starts_with("failed to lookup address information")
}

/// `e`, when it says the endpoint's host does not resolve, naming the
/// setting the host came from.
fn name_the_setting(e: Error, endpoint: &Endpoint) -> Error {
    match e {
        Error::Transport {
            operation,
            url,
            kind: TransportKind::HostNotFound,
            source,
        } => Error::transport(
            operation,
            url,
            TransportKind::HostNotFound,
            UnknownHost {
                host: endpoint.host().to_owned(),
                origin: endpoint.origin().to_owned(),
                source,
            },
        ),
        other => other,
    }
}

/// A host that does not resolve and the setting it came from.
#[derive(Debug)]
struct UnknownHost {
    host: String,
    origin: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for UnknownHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` does not resolve; the host comes from {}, check its spelling ({})",
            self.host, self.origin, self.source
        )
    }
}

impl std::error::Error for UnknownHost {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Describes a resource every 100 ms until its status is `ACTIVE`, for up
/// to `timeout`; [`Error::NotReady`] naming `what` after that. `describe`
/// returns the description and its status.
pub(crate) fn wait_until_active<T>(
    what: &str,
    timeout: Duration,
    mut describe: impl FnMut() -> Result<(T, String)>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (description, status) = describe()?;
        if status == "ACTIVE" {
            return Ok(description);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::NotReady(format!(
                "{what} is still {status} after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The wait before retry number `attempt` (1-based): `base` doubled per
/// attempt, capped at 20 s, half of it fixed and half random so that many
/// readers throttled together do not retry together.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let cap = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(20));
    let half = cap.as_millis() as u64 / 2;
    Duration::from_millis(half + random::up_to(half))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn bodies_are_read_whole_into_a_reused_buffer_whatever_its_past() {
        // A chunked reply has no Content-Length (expected 0): the buffer
        // grows; a buffer left longer by a past reply gives only this one.
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for expected in [0, 10, body.len(), body.len() + 5] {
            for past in [0, 7, 300_000] {
                let mut buffer = vec![0xAA; past];
                let len = read_into(&mut &body[..], &mut buffer, expected).unwrap();
                assert_eq!(&buffer[..len], &body[..], "{expected} {past}");
            }
        }
        let mut buffer = vec![1; 5];
        assert_eq!(read_into(&mut &b""[..], &mut buffer, 0).unwrap(), 0);
    }

    #[test]
    fn failed_name_lookups_are_host_not_found() {
        // The messages the standard library gives a failed getaddrinfo.
        for message in [
            "failed to lookup address information: Name or service not known",
            "failed to lookup address information: Temporary failure in name resolution",
        ] {
            let e = std::io::Error::other(message);
            assert_eq!(io_kind(&e), TransportKind::HostNotFound, "{message}");
        }
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(io_kind(&reset), TransportKind::Broken);
    }

    #[test]
    fn error_from_json_strips_prefix_and_keeps_request_id() {
        let body = br#"{"__type":"com.amazonaws.kinesis.v20131202#ResourceNotFoundException","message":"Stream x not found"}"#;
        let e = service_error("DescribeStreamSummary", 400, Some("rid".into()), None, body);
        assert_eq!(e.code, "ResourceNotFoundException");
        assert_eq!(e.message, "Stream x not found");
        assert_eq!(e.request_id.as_deref(), Some("rid"));
        let body = br#"{"__type":"ProvisionedThroughputExceededException","Message":null}"#;
        let e = service_error("GetRecords", 400, None, None, body);
        assert!(e.is_throttling());
        assert_eq!(
            e.message,
            format!("unparsed reply body: {}", String::from_utf8_lossy(body))
        );
    }

    #[test]
    fn bodies_are_described_briefly() {
        assert_eq!(describe_body(b" \r\n"), "empty reply body");
        assert_eq!(
            describe_body(b" <h1>\x07502</h1>\n"),
            "unparsed reply body: <h1>502</h1>"
        );
        let long = "x".repeat(500);
        assert_eq!(
            describe_body(long.as_bytes()),
            format!("unparsed reply body: {}…", "x".repeat(120))
        );
    }

    #[test]
    fn error_from_html_or_empty_body_or_header() {
        let e = service_error(
            "GetRecords",
            503,
            None,
            None,
            b"<html><body>Service Unavailable</body></html>",
        );
        assert_eq!(e.code, "");
        assert!(e.message.contains("Service Unavailable"));
        assert!(e.is_retryable() && !e.is_throttling());
        let e = service_error("GetRecords", 500, None, None, b"");
        assert_eq!(e.message, "empty reply body");
        let e = service_error(
            "PutItem",
            400,
            None,
            Some("ThrottlingException:http://internal".into()),
            b"",
        );
        assert_eq!(e.code, "ThrottlingException");
        assert!(e.is_throttling());
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..40 {
            let cap = (100u64 << (attempt - 1).min(16)).min(20_000);
            let w = backoff(base, attempt).as_millis() as u64;
            assert!(
                w >= cap / 2 && w <= cap,
                "attempt {attempt}: {w} not in [{}, {cap}]",
                cap / 2
            );
        }
    }

    #[test]
    fn admit_sees_the_body_length_before_the_body_is_read() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            // One connection per call: a refused reply closes its connection.
            for _ in 0..2 {
                let (mut socket, _) = listener.accept().unwrap();
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).unwrap();
                let body = br#"{"x":7}"#;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                socket.write_all(head.as_bytes()).unwrap();
                let _ = socket.write_all(body);
            }
        });
        let config = ClientConfig::new()
            .region("us-east-1")
            .endpoint_url(url)
            .credentials(crate::aws::credentials::Credentials::new("AKID", "secret"));
        let client = Client::new(KINESIS, &config).unwrap();
        let mut seen = Vec::new();
        let refused = client.call_admitting(
            "GetRecords",
            b"{}",
            |length| {
                seen.push(length);
                false
            },
            |_| -> Result<()> { panic!("a refused body is not decoded") },
        );
        assert!(matches!(refused, Ok(None)));
        let admitted = client.call_admitting(
            "GetRecords",
            b"{}",
            |length| {
                seen.push(length);
                true
            },
            |body| Ok(body.to_vec()),
        );
        assert_eq!(admitted.unwrap().unwrap(), br#"{"x":7}"#);
        assert_eq!(seen, [7, 7]);
        server.join().unwrap();
    }

    #[test]
    fn a_redirect_is_not_followed_and_names_its_host() {
        use std::io::{Read, Write};
        // Where the redirect points: it must never see a connection.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let elsewhere_addr = elsewhere.local_addr().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).unwrap();
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: http://{elsewhere_addr}/steal?q=LOCATION-SECRET\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).unwrap();
        });
        let config = ClientConfig::new()
            .region("us-east-1")
            .endpoint_url(url)
            .max_attempts(1)
            .read_timeout(Duration::from_secs(1))
            .credentials(
                crate::aws::credentials::Credentials::new("AKID", "secret")
                    .with_session_token("SESSION-TOKEN-1"),
            );
        let client = Client::new(KINESIS, &config).unwrap();
        let err = client
            .call::<_, serde_json::Value>("ListShards", &serde_json::json!({}))
            .unwrap_err();
        server.join().unwrap();
        // A followed redirect would have connected (and sent the token).
        elsewhere.set_nonblocking(true).unwrap();
        assert!(
            matches!(elsewhere.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the redirect was followed"
        );
        let Error::Service(e) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(e.status, 302);
        let shown = err.to_string();
        assert!(
            shown.contains("HTTP 302") && shown.contains(&format!("to host {elsewhere_addr}")),
            "{shown}"
        );
        assert!(!shown.contains("LOCATION-SECRET"), "{shown}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn only_an_endpoint_a_proxy_applies_to_goes_through_ureq() {
        let endpoint = |url| endpoint::parse_endpoint(url, "endpoint_url").unwrap();
        let local = endpoint("http://127.0.0.1:4567");
        let aws = endpoint("https://kinesis.us-east-1.amazonaws.com");
        assert!(!goes_through(None, &local) && !goes_through(None, &aws));
        let proxy = ureq::Proxy::builder(ureq::ProxyProtocol::Http)
            .host("proxy.internal")
            .port(3128)
            .no_proxy("127.0.0.1")
            .build()
            .unwrap();
        assert!(!goes_through(Some(&proxy), &local));
        assert!(goes_through(Some(&proxy), &aws));
    }

    #[test]
    fn empty_reply_decodes_as_empty_object() {
        #[derive(serde::Deserialize)]
        struct Out {
            x: Option<u32>,
        }
        let out: Out = decode("DeleteStream", b"").unwrap();
        assert!(out.x.is_none());
        assert!(matches!(
            decode::<Out>("X", b"{\"x\":"),
            Err(Error::Decode { .. })
        ));
    }
}
