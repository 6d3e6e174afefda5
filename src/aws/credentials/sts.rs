//! AWS STS over the Query protocol: `AssumeRole` (signed with the source
//! credentials) and `AssumeRoleWithWebIdentity` (unsigned), both answered
//! in XML with `Credentials` (`AccessKeyId`, `SecretAccessKey`,
//! `SessionToken`, `Expiration`).
//!
//! The endpoint is `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, else the
//! regional endpoint `https://sts.<region>.amazonaws.com` (the region's
//! partition domain elsewhere).

use super::http::read_reply;
use super::query::{form_encode, xml_text};
use super::{Context, Credentials, unix_millis};
use crate::aws::client::describe_body;
use crate::aws::client::transport_error;
use crate::aws::endpoint::{Service, resolve_endpoint_with};
use crate::aws::sigv4::{self, SignableRequest, SigningOptions};
use crate::{Error, Result, ServiceError};

/// The STS API version of the Query protocol.
const VERSION: &str = "2011-06-15";
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// What `AssumeRole` needs besides the source credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RoleRequest {
    pub(crate) role_arn: String,
    /// Defaults to `kinesis-consumer-<milliseconds since the epoch>`.
    pub(crate) session_name: Option<String>,
    pub(crate) external_id: Option<String>,
    /// 900 to 43,200; STS's default (one hour) when unset.
    pub(crate) duration_seconds: Option<u32>,
}

/// The session name to use when none is configured.
pub(crate) fn default_session_name(ctx: &Context) -> String {
    format!("kinesis-consumer-{}", unix_millis(ctx.now()))
}

/// STS `AssumeRole` signed with `source`, at the STS endpoint of `region`.
pub(crate) fn assume_role(
    ctx: &Context,
    source: &Credentials,
    role: &RoleRequest,
    region: &str,
    endpoint_url: Option<&str>,
) -> Result<Credentials> {
    let session_name = role
        .session_name
        .clone()
        .unwrap_or_else(|| default_session_name(ctx));
    let duration = role.duration_seconds.map(|d| d.to_string());
    let mut params = vec![
        ("Action", "AssumeRole"),
        ("Version", VERSION),
        ("RoleArn", role.role_arn.as_str()),
        ("RoleSessionName", session_name.as_str()),
    ];
    if let Some(id) = &role.external_id {
        params.push(("ExternalId", id));
    }
    if let Some(duration) = &duration {
        params.push(("DurationSeconds", duration));
    }
    log::debug!(
        "assuming role {} as session {session_name} with access key {}",
        role.role_arn,
        source.access_key_id()
    );
    call(
        ctx,
        "STS.AssumeRole",
        &params,
        Some(source),
        region,
        endpoint_url,
    )
}

/// STS `AssumeRoleWithWebIdentity` (unsigned: the token is the proof).
pub(crate) fn assume_role_with_web_identity(
    ctx: &Context,
    role_arn: &str,
    session_name: &str,
    token: &str,
    region: &str,
) -> Result<Credentials> {
    log::debug!("assuming role {role_arn} with a web identity token");
    let params = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", VERSION),
        ("RoleArn", role_arn),
        ("RoleSessionName", session_name),
        ("WebIdentityToken", token),
    ];
    call(
        ctx,
        "STS.AssumeRoleWithWebIdentity",
        &params,
        None,
        region,
        None,
    )
}

/// One Query-protocol call; the credentials of a successful reply.
fn call(
    ctx: &Context,
    operation: &'static str,
    params: &[(&str, &str)],
    sign_with: Option<&Credentials>,
    region: &str,
    endpoint_url: Option<&str>,
) -> Result<Credentials> {
    let endpoint = resolve_endpoint_with(Service::Sts, endpoint_url, region, &ctx.env)?;
    let body = form_encode(params);
    let url = format!("{}/", endpoint.url());
    let mut request = ctx
        .sts_agent
        .post(&url)
        .header("Content-Type", CONTENT_TYPE)
        .header("Accept", "text/xml");
    if let Some(credentials) = sign_with {
        let headers = [
            ("content-type", CONTENT_TYPE),
            ("host", endpoint.host_header()),
        ];
        let signable = SignableRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: body.as_bytes(),
        };
        let signed = sigv4::sign(
            &signable,
            credentials,
            region,
            Service::Sts.signing_name(),
            std::time::SystemTime::now(),
            &SigningOptions::default(),
        );
        for (name, value) in &signed {
            request = request.header(*name, value.as_str());
        }
    }
    let reply =
        read_reply(request.send(body.as_str())).map_err(|e| transport_error(operation, &url, e))?;
    if reply.status != 200 {
        let code = xml_text(&reply.body, "Code").unwrap_or_default();
        let message = xml_text(&reply.body, "Message")
            .unwrap_or_else(|| describe_body(reply.body.as_bytes()));
        return Err(Error::Service(ServiceError {
            operation,
            code,
            message,
            status: reply.status,
            request_id: reply
                .request_id
                .or_else(|| xml_text(&reply.body, "RequestId")),
        }));
    }
    parse_credentials(operation, &reply.body)
}

/// The credentials in a successful reply of `operation` (XML).
pub(super) fn parse_credentials(operation: &'static str, body: &str) -> Result<Credentials> {
    let field = |name: &str| {
        xml_text(body, name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::Decode {
                operation,
                message: format!("no {name} in the response"),
            })
    };
    let expiration = field("Expiration")?;
    let expires_at = crate::time::parse_iso8601(&expiration).ok_or_else(|| Error::Decode {
        operation,
        message: format!("Expiration {expiration:?} is not an ISO 8601 time"),
    })?;
    Ok(
        Credentials::new(field("AccessKeyId")?, field("SecretAccessKey")?)
            .with_session_token(field("SessionToken")?)
            .with_expiry(expires_at),
    )
}
