//! The one error type of the crate.

use std::fmt;

/// Everything that can go wrong in this crate.
///
/// Service errors keep what AWS said (code, message, HTTP status, request id)
/// so they can be logged and matched on. Use [`Error::is_throttling`] and
/// [`Error::is_retryable`] rather than matching codes by hand.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A configuration setting is missing or invalid; `setting` names it.
    Config {
        /// The builder method or environment variable at fault.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No credentials could be found or refreshed.
    Credentials(String),
    /// AWS (or an emulator) answered with an error.
    Service(ServiceError),
    /// The request did not get an answer: connect failure, reset, timeout.
    #[non_exhaustive]
    Transport {
        /// The operation that was being called, such as `GetRecords`.
        operation: &'static str,
        /// The URL the request went to.
        url: String,
        /// What kind of failure, for callers that branch on it.
        kind: TransportKind,
        /// The underlying error (also [`std::error::Error::source`]).
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A request was not sent because it cannot be: it breaks a service's
    /// limits (too many metric data or dimensions, too large) or cannot be
    /// encoded. Sending it again does not help.
    InvalidRequest {
        /// The operation that was refused, such as `PutMetricData`.
        operation: &'static str,
        /// What is wrong with the request.
        reason: String,
    },
    /// A response arrived but could not be understood.
    Decode {
        /// The operation whose response was malformed.
        operation: &'static str,
        /// What could not be decoded.
        message: String,
    },
    /// The user's batch handler (or a shard processor) returned an error;
    /// what it was given was not checkpointed.
    Handler(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The user's batch or message handler panicked; the batch was not checkpointed.
    HandlerPanicked(String),
    /// A checkpoint was asked for a shard whose lease this worker does not
    /// hold: another worker took it, it was handed over or released, or it
    /// was never gained. Nothing was written.
    #[non_exhaustive]
    LeaseLost {
        /// The shard.
        shard_id: String,
    },
    /// A checkpoint position was refused: it was not handed on yet, or it
    /// is behind the shard's checkpoint. Nothing was written.
    #[non_exhaustive]
    InvalidCheckpoint {
        /// The shard.
        shard_id: String,
        /// Why the position was refused.
        reason: String,
    },
    /// The last checkpoints (at shutdown, or of a lease being handed over
    /// at shutdown) could not be written within the failover time:
    /// records of these shards after their checkpoint in the lease table
    /// will be delivered again. Their leases were not released as if
    /// saved: they expire (after the failover time) and the next owner
    /// reads from the checkpoint in the table.
    #[non_exhaustive]
    CheckpointsNotSaved {
        /// The shards whose last checkpoint was not written.
        shard_ids: Vec<String>,
        /// The last failure of a write (also [`std::error::Error::source`]).
        source: Box<Error>,
    },
    /// No lease-table request succeeded for longer than the consumer's
    /// [`max_unavailable`](crate::ConsumerBuilder::max_unavailable) bound
    /// (opt-in): `run` stopped, so that a supervisor can restart the
    /// program or page someone. Without the bound the consumer keeps
    /// trying for ever.
    #[non_exhaustive]
    LeaseTableUnavailable {
        /// How long no lease-table request had succeeded.
        duration: std::time::Duration,
        /// The last failure (also [`std::error::Error::source`]).
        source: Box<Error>,
    },
    /// A resource is not ready yet, such as a table or stream still being
    /// created; what it is and its state. Startup waits it out.
    NotReady(String),
    /// A thread of the consumer could not be started or stopped
    /// unexpectedly.
    Internal(String),
}

/// What kind of transport failure an [`Error::Transport`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// Nothing listens at the endpoint: the connection was refused.
    ConnectionRefused,
    /// The endpoint's host name does not resolve.
    HostNotFound,
    /// No connection or no answer within the connect or read timeout.
    Timeout,
    /// The connection failed or broke otherwise (reset, closed early, TLS).
    Broken,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::ConnectionRefused => "connection refused",
            TransportKind::HostNotFound => "host not found",
            TransportKind::Timeout => "timed out",
            TransportKind::Broken => "connection failed",
        })
    }
}

/// An error reply from an AWS service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceError {
    /// The operation called, such as `GetRecords`.
    pub operation: &'static str,
    /// The error code, such as `ProvisionedThroughputExceededException`,
    /// with any `prefix#` removed. Empty when the reply carried none.
    pub code: String,
    /// The message AWS gave, or a description of the body when there was none.
    pub message: String,
    /// The HTTP status code.
    pub status: u16,
    /// The `x-amzn-RequestId` (or `x-amz-request-id`) of the reply, if any.
    pub request_id: Option<String>,
}

/// Error codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "TransactionInProgressException",
    "EC2ThrottledException",
    "BandwidthLimitExceeded",
    "PriorRequestNotComplete",
];

/// Error codes that are worth retrying although they are not throttling.
const TRANSIENT_CODES: &[&str] = &[
    "InternalFailure",
    "InternalServerError",
    "InternalServerErrorException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "KMSThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "IDPCommunicationError",
];

impl ServiceError {
    /// True when the service asked us to slow down.
    pub fn is_throttling(&self) -> bool {
        self.status == 429 || THROTTLING_CODES.contains(&self.code.as_str())
    }

    /// True when the same request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        self.is_throttling() || self.status >= 500 || TRANSIENT_CODES.contains(&self.code.as_str())
    }
}

impl Error {
    /// True when AWS asked us to slow down (throttling or limit exceeded).
    pub fn is_throttling(&self) -> bool {
        matches!(self, Error::Service(e) if e.is_throttling())
    }

    /// True when the same request may succeed later: throttling, 5xx,
    /// connection failures, timeouts, and replies cut short or garbled.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Service(e) => e.is_retryable(),
            Error::Transport { .. } | Error::Decode { .. } | Error::NotReady(_) => true,
            _ => false,
        }
    }

    /// True for failures worth waiting out at startup, the same rule for
    /// every service: throttling, 5xx, timeouts, broken connections and
    /// resources still being created may pass; a refused connection, an
    /// unknown host, refused credentials, a bad request or an endpoint that
    /// does not speak the protocol (after the client's own retries) will
    /// not, and fail at once.
    pub(crate) fn may_pass(&self) -> bool {
        match self {
            // A refused TLS handshake (a certificate not trusted) or an
            // endpoint that does not speak the protocol will not pass.
            Error::Transport { source, .. } if is_tls_or_protocol_refusal(&**source) => false,
            Error::Transport { kind, .. } => !matches!(
                kind,
                TransportKind::ConnectionRefused | TransportKind::HostNotFound
            ),
            Error::Decode { .. } => false,
            other => other.is_retryable(),
        }
    }

    /// A transport error of `operation` to `url`.
    pub(crate) fn transport(
        operation: &'static str,
        url: impl Into<String>,
        kind: TransportKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        Error::Transport {
            operation,
            url: url.into(),
            kind,
            source: source.into(),
        }
    }

    /// True when a DynamoDB condition did not hold
    /// (`ConditionalCheckFailedException`): for a lease, someone else has it.
    pub fn is_condition_failed(&self) -> bool {
        self.code() == Some("ConditionalCheckFailedException")
    }

    /// The AWS error code, when this is a service error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Service(e) => Some(&e.code),
            _ => None,
        }
    }

    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Error {
        Error::Config {
            setting,
            reason: reason.into(),
        }
    }
}

/// True for a TLS handshake refusal (of ureq, of our HTTP/1.1 client or
/// of the HTTP/2 one) or an endpoint that does not speak HTTP/2:
/// configuration errors.
fn is_tls_or_protocol_refusal(source: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    if let Some(e) = source.downcast_ref::<crate::aws::http2::Http2Error>() {
        return e.is_refusal();
    }
    if let Some(io) = source.downcast_ref::<std::io::Error>() {
        return io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    }
    match source.downcast_ref::<ureq::Error>() {
        Some(ureq::Error::Tls(_) | ureq::Error::Rustls(_)) => true,
        Some(ureq::Error::Io(io)) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { setting, reason } => write!(f, "invalid setting `{setting}`: {reason}"),
            Error::Credentials(m) => write!(f, "no usable AWS credentials: {m}"),
            Error::Service(e) => e.fmt(f),
            Error::Transport {
                operation,
                url,
                kind,
                source,
            } => write!(f, "{operation} to {url}: {kind}: {source}"),
            Error::Decode { operation, message } => {
                write!(f, "{operation}: could not decode the response: {message}")
            }
            Error::Handler(e) => write!(f, "the handler failed: {e}"),
            Error::HandlerPanicked(m) => write!(f, "a handler panicked: {m}"),
            Error::LeaseLost { shard_id } => {
                write!(
                    f,
                    "cannot checkpoint shard {shard_id}: its lease is not held by this worker"
                )
            }
            Error::InvalidCheckpoint { shard_id, reason } => {
                write!(f, "cannot checkpoint shard {shard_id}: {reason}")
            }
            Error::InvalidRequest { operation, reason } => {
                write!(f, "{operation} request not sent: {reason}")
            }
            Error::CheckpointsNotSaved { shard_ids, source } => write!(
                f,
                "the last checkpoint of shard {} could not be written (their records after the checkpoint in the lease table will be delivered again): {source}",
                shard_ids.join(", ")
            ),
            Error::LeaseTableUnavailable { duration, source } => write!(
                f,
                "no lease-table request succeeded for {duration:.1?}, longer than max_unavailable allows: {source}"
            ),
            Error::NotReady(m) => write!(f, "not ready yet: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code.is_empty() {
            write!(f, "{}: HTTP {}", self.operation, self.status)?;
        } else {
            write!(
                f,
                "{}: {} (HTTP {})",
                self.operation, self.code, self.status
            )?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Handler(e) => Some(e.as_ref()),
            Error::Transport { source, .. } => Some(source.as_ref()),
            Error::CheckpointsNotSaved { source, .. } => Some(source.as_ref()),
            Error::LeaseTableUnavailable { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl std::error::Error for ServiceError {}

/// What a batch handler returns: `Ok(())` to have the batch checkpointed,
/// or any error (boxed; `?` converts one) to stop the consumer without
/// checkpointing it.
pub type HandlerResult =
    std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>>;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> Error {
        Error::Service(ServiceError {
            operation: "GetRecords",
            code: code.into(),
            message: String::new(),
            status,
            request_id: None,
        })
    }

    #[test]
    fn classifies_throttling_retryable_and_fatal() {
        let throttled = service("ProvisionedThroughputExceededException", 400);
        assert!(throttled.is_throttling() && throttled.is_retryable());
        assert!(service("", 429).is_throttling());
        let server = service("", 503);
        assert!(!server.is_throttling() && server.is_retryable());
        let fatal = service("ResourceNotFoundException", 400);
        assert!(!fatal.is_throttling() && !fatal.is_retryable());
        let reset = Error::transport("x", "http://h", TransportKind::Broken, "reset");
        assert!(reset.is_retryable() && reset.may_pass());
        let refused = Error::transport("x", "http://h", TransportKind::ConnectionRefused, "no");
        assert!(refused.is_retryable() && !refused.may_pass());
        assert!(!Error::Credentials("none".into()).may_pass());
        assert!(service("", 503).may_pass() && !service("AccessDeniedException", 400).may_pass());
        assert!(!Error::config("app_name", "empty").is_retryable());
    }

    #[test]
    fn display_names_code_status_and_request_id() {
        let e = Error::Service(ServiceError {
            operation: "PutItem",
            code: "ConditionalCheckFailedException".into(),
            message: "The conditional request failed".into(),
            status: 400,
            request_id: Some("abc".into()),
        });
        assert_eq!(
            e.to_string(),
            "PutItem: ConditionalCheckFailedException (HTTP 400): The conditional request failed [request id abc]"
        );
    }
}
