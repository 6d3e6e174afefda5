//! EC2 instance metadata (IMDSv2).

use super::http::{Reply, parse_json_credentials, read_reply};
use super::{Context, Outcome};
use crate::aws::client::describe_body;
use crate::aws::client::transport_error;
use crate::{Error, Result};

/// The EC2 instance metadata service.
const IMDS_BASE_IPV4: &str = "http://169.254.169.254";
const IMDS_BASE_IPV6: &str = "http://[fd00:ec2::254]";
/// How long an IMDSv2 session token is requested for (6 hours).
const IMDS_TOKEN_TTL_SECONDS: &str = "21600";

pub(super) fn load(ctx: &Context) -> Result<Outcome> {
    const OPERATION: &str = "EC2InstanceMetadata";
    if ctx.env.is_true("AWS_EC2_METADATA_DISABLED") {
        return Ok(Outcome::NotConfigured(
            "disabled by AWS_EC2_METADATA_DISABLED".into(),
        ));
    }
    let base = match ctx.env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => match ctx.env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
            Some(mode) if mode.eq_ignore_ascii_case("ipv6") => IMDS_BASE_IPV6.to_string(),
            _ => IMDS_BASE_IPV4.to_string(),
        },
    };
    let token_response = ctx
        .metadata_agent
        .put(format!("{base}/latest/api/token"))
        .header(
            "X-aws-ec2-metadata-token-ttl-seconds",
            IMDS_TOKEN_TTL_SECONDS,
        )
        .send_empty();
    let reply = match read_reply(token_response) {
        Ok(reply) => reply,
        Err(e) => {
            return Ok(Outcome::NotConfigured(format!("{base} unreachable: {e}")));
        }
    };
    let failed = |what: &str, reply: &Reply| {
        Error::Credentials(format!(
            "EC2 instance metadata at {base}: {what} answered HTTP {}: {}",
            reply.status,
            describe_body(reply.body.as_bytes())
        ))
    };
    if reply.status != 200 {
        return Err(failed("the IMDSv2 token request", &reply));
    }
    let token = reply.body.trim().to_string();
    let get = |path: &str| {
        read_reply(
            ctx.metadata_agent
                .get(format!("{base}{path}"))
                .header("X-aws-ec2-metadata-token", &token)
                .call(),
        )
        .map_err(|e| transport_error(OPERATION, &format!("{base}{path}"), e))
    };
    const ROLES: &str = "/latest/meta-data/iam/security-credentials/";
    let reply = get(ROLES)?;
    if reply.status == 404 {
        return Ok(Outcome::NotConfigured(
            "no IAM role attached to this instance".into(),
        ));
    }
    if reply.status != 200 {
        return Err(failed("the IAM role request", &reply));
    }
    let Some(role) = reply.body.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Ok(Outcome::NotConfigured(
            "no IAM role attached to this instance".into(),
        ));
    };
    let reply = get(&format!("{ROLES}{role}"))?;
    if reply.status != 200 {
        return Err(failed("the role credentials request", &reply));
    }
    parse_json_credentials(&reply.body, "Token", OPERATION).map(Outcome::Found)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::aws::credentials::ProvideCredentials;
    use crate::aws::test_server::FakeServer;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    #[test]
    fn imds_v2_flow() {
        let server = imds_server(Arc::new(AtomicBool::new(false)));
        let c = chain(&[
            ("AWS_EC2_METADATA_DISABLED", "false"),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                &format!("{}/", server.url),
            ),
        ]);
        let creds = c.credentials().unwrap();
        assert_eq!(creds.access_key_id(), "IMDS");
        assert_eq!(creds.session_token(), Some("token-IMDS"));
        let requests = server.requests();
        let summary: Vec<_> = requests
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("PUT", "/latest/api/token"),
                ("GET", "/latest/meta-data/iam/security-credentials/"),
                ("GET", "/latest/meta-data/iam/security-credentials/my-role"),
            ]
        );
        assert_eq!(
            requests[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
            Some("21600")
        );
        for r in &requests[1..] {
            assert_eq!(r.header("x-aws-ec2-metadata-token"), Some("imds-token-1"));
        }
    }

    #[test]
    fn imds_without_role_finds_nothing() {
        let server = FakeServer::start(|r| match r.method.as_str() {
            "PUT" => (200, "t".into()),
            _ => (404, "Not Found".into()),
        });
        let m = expect_credentials_error(
            chain(&[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &server.url),
            ])
            .credentials(),
        );
        assert!(m.contains("no IAM role attached"), "{m}");
    }

    #[test]
    fn an_imds_answering_badly_still_lists_every_source_tried() {
        let server = imds_server(Arc::new(AtomicBool::new(true)));
        let m = expect_credentials_error(
            chain(&[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &server.url),
            ])
            .credentials(),
        );
        for part in [
            "environment variables (AWS_ACCESS_KEY_ID not set)",
            "AWS_WEB_IDENTITY_TOKEN_FILE not set",
            "EC2 instance metadata (failed:",
            "HTTP 500",
        ] {
            assert!(m.contains(part), "{part:?} missing from {m}");
        }
    }

    #[test]
    fn unreachable_imds_means_none_found() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let m = expect_credentials_error(
            chain(&[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url),
            ])
            .credentials(),
        );
        assert!(m.starts_with("none found; tried"), "{m}");
        assert!(
            m.contains("EC2 instance metadata") && m.contains("unreachable"),
            "{m}"
        );
    }
}
