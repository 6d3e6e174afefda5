//! HTTP plumbing shared by the sources: a client, replies read into
//! memory, safe descriptions of error bodies, and JSON credentials.

use std::time::Duration;

use super::Credentials;
use crate::aws::client::describe_body;
use crate::{Error, Result};

/// An HTTP client for the credential endpoints. Statuses are not errors;
/// redirects are not followed. Metadata endpoints never go through a proxy.
pub(crate) fn agent(connect: Duration, total: Duration, env_proxy: bool) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(connect))
        .timeout_global(Some(total));
    if !env_proxy {
        config = config.proxy(None);
    }
    config.build().new_agent()
}

/// A response read into memory.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) request_id: Option<String>,
}

pub(crate) fn read_reply(
    response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> std::result::Result<Reply, ureq::Error> {
    let mut response = response?;
    let status = response.status().as_u16();
    let request_id = crate::aws::client::request_id(response.headers());
    let body = response
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .lossy_utf8(true)
        .read_to_string()?;
    Ok(Reply {
        status,
        body,
        request_id,
    })
}

/// The `message` (or `Message`) of a JSON error body, else the body itself.
pub(crate) fn json_error_message(body: &str) -> String {
    let value: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let get = |k: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    match (
        get("code").or_else(|| get("Code")),
        get("message").or_else(|| get("Message")),
    ) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (None, Some(message)) => message,
        (Some(code), None) => code,
        (None, None) => describe_body(body.as_bytes()),
    }
}

/// Credentials from the JSON the container and instance metadata endpoints
/// return: `AccessKeyId`, `SecretAccessKey`, the token field, `Expiration`.
pub(crate) fn parse_json_credentials(
    body: &str,
    token_field: &str,
    operation: &'static str,
) -> Result<Credentials> {
    let decode = |message: String| Error::Decode { operation, message };
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| decode(format!("invalid JSON: {e}")))?;
    let field = |name: &str| -> Option<&str> {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(code) = field("Code") {
        if code != "Success" {
            return Err(Error::Credentials(format!(
                "{operation} answered Code {code:?}: {}",
                field("Message").unwrap_or("no message")
            )));
        }
    }
    let required =
        |name: &str| field(name).ok_or_else(|| decode(format!("no {name} in the response")));
    let mut credentials = Credentials::new(required("AccessKeyId")?, required("SecretAccessKey")?);
    if let Some(token) = field(token_field) {
        credentials = credentials.with_session_token(token);
    }
    if let Some(expiration) = field("Expiration") {
        let expires_at = crate::time::parse_iso8601(expiration)
            .ok_or_else(|| decode(format!("Expiration {expiration:?} is not an ISO 8601 time")))?;
        credentials = credentials.with_expiry(expires_at);
    }
    Ok(credentials)
}
