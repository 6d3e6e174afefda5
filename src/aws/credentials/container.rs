//! Container credentials: ECS task roles (relative URI) and EKS Pod
//! Identity and others (full URI).

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use super::http::{json_error_message, parse_json_credentials, read_reply};
use super::{Context, Outcome};
use crate::aws::client::transport_error;
use crate::aws::endpoint::{parse_url, redact_url};
use crate::{Error, Result};

/// The ECS task credentials endpoint that relative URIs are joined to.
pub(super) const ECS_CREDENTIALS_BASE: &str = "http://169.254.170.2";

pub(super) fn load(ctx: &Context) -> Result<Outcome> {
    const OPERATION: &str = "ContainerCredentials";
    let url = if let Some(relative) = ctx.env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        let slash = if relative.starts_with('/') { "" } else { "/" };
        format!("{}{slash}{relative}", ctx.container_base)
    } else if let Some(full) = ctx.env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        check_container_full_uri(&full)?;
        full
    } else {
        return Ok(Outcome::NotConfigured(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and _FULL_URI not set".into(),
        ));
    };
    let token = if let Some(file) = ctx.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        let path = ctx
            .env
            .expand_path(&file)
            .unwrap_or_else(|| PathBuf::from(&file));
        let token = ctx.env.read_file(&path).map_err(|e| {
            Error::Credentials(format!(
                "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {}: {e}",
                path.display()
            ))
        })?;
        Some(token.trim().to_string())
    } else {
        ctx.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    };
    if token.as_deref().is_some_and(|t| t.contains(['\r', '\n'])) {
        return Err(Error::Credentials(
            "the container authorization token contains a line break".into(),
        ));
    }
    let mut request = ctx
        .metadata_agent
        .get(&url)
        .header("Accept", "application/json");
    if let Some(token) = token.as_deref().filter(|t| !t.is_empty()) {
        request = request.header("Authorization", token);
    }
    // The URI can hold a token in its query or user information: errors
    // show it without them.
    let shown = redact_url(&url);
    let reply = read_reply(request.call()).map_err(|e| transport_error(OPERATION, &shown, e))?;
    if reply.status != 200 {
        return Err(Error::Credentials(format!(
            "the container credentials endpoint {shown} answered HTTP {}: {}",
            reply.status,
            json_error_message(&reply.body)
        )));
    }
    parse_json_credentials(&reply.body, "Token", OPERATION).map(Outcome::Found)
}

fn check_container_full_uri(uri: &str) -> Result<()> {
    const SETTING: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
    let parsed = parse_url(uri).map_err(|e| Error::config(SETTING, e.to_string()))?;
    if parsed.https {
        return Ok(());
    }
    let host = parsed.bare_host();
    let allowed = host.eq_ignore_ascii_case("localhost")
        || match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                ip.is_loopback()
                    || ip.octets() == [169, 254, 170, 2]
                    || ip.octets() == [169, 254, 170, 23]
            }
            Ok(IpAddr::V6(ip)) => {
                ip.is_loopback() || ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
            }
            Err(_) => false,
        };
    if allowed {
        Ok(())
    } else {
        Err(Error::config(
            SETTING,
            format!(
                "{:?} is not allowed: an http:// URL must point at a loopback address \
                 (127.0.0.0/8, [::1], localhost) or at 169.254.170.2, 169.254.170.23 or \
                 [fd00:ec2::23]; use https:// for any other host",
                redact_url(uri)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::test_server::FakeServer;
    use super::super::test_support::*;
    use super::*;
    use crate::Error;
    use crate::aws::credentials::ProvideCredentials;
    use std::time::{Duration, UNIX_EPOCH};
    #[test]
    fn container_relative_uri() {
        let server = FakeServer::start(|_| (200, creds_json("REL", "2030-01-01T06:00:00Z")));
        let mut c = chain(&[(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/7e1c-uuid",
        )]);
        c.ctx.container_base = server.url.clone();
        let creds = c.credentials().unwrap();
        assert_eq!(creds.access_key_id(), "REL");
        assert_eq!(creds.secret_access_key(), "secret-REL");
        assert_eq!(creds.session_token(), Some("token-REL"));
        assert_eq!(
            creds.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(T0 + 6 * 3600))
        );
        let r = &server.requests()[0];
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/v2/credentials/7e1c-uuid")
        );
        assert!(r.header("authorization").is_none());
    }

    #[test]
    fn container_full_uri_with_token() {
        let server = FakeServer::start(|_| (200, creds_json("FULL", "2030-01-01T06:00:00Z")));
        let full = format!("{}/get-credentials?a=1", server.url);
        let c = chain(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Basic abc"),
        ]);
        assert_eq!(c.credentials().unwrap().access_key_id(), "FULL");
        let r = &server.requests()[0];
        assert_eq!(r.path, "/get-credentials?a=1");
        assert_eq!(r.header("authorization"), Some("Basic abc"));
    }

    #[test]
    fn container_token_file_wins_over_token() {
        let server = FakeServer::start(|_| (200, creds_json("FULL", "2030-01-01T06:00:00Z")));
        let file = token_file("pod-identity-token\n");
        let full = format!(
            "{}/v1/credentials",
            server.url.replace("127.0.0.1", "localhost")
        );
        let c = chain(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "from-env"),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                file.to_str().unwrap(),
            ),
        ]);
        assert_eq!(c.credentials().unwrap().access_key_id(), "FULL");
        assert_eq!(
            server.requests()[0].header("authorization"),
            Some("pod-identity-token")
        );
    }

    #[test]
    fn container_error_reply() {
        let server = FakeServer::start(|_| {
            (
                403,
                r#"{"code":"AccessDenied","message":"bad token"}"#.to_string(),
            )
        });
        let full = format!("{}/creds", server.url);
        let m = expect_credentials_error(
            chain(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full)]).credentials(),
        );
        assert!(
            m.contains("HTTP 403") && m.contains("AccessDenied: bad token"),
            "{m}"
        );
    }

    #[test]
    fn container_uri_errors_show_no_secret() {
        // A refused host, an error reply, a refused connection: the query
        // and user information of the URI never show.
        let server = FakeServer::start(|_| (500, "{}".to_string()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        for uri in [
            "http://user:PASSWORD@creds.example.com/x?token=SECRET".to_owned(),
            format!("{}/creds?token=SECRET", server.url),
            format!("{refused}/creds?token=SECRET"),
        ] {
            let err = chain(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri)])
                .credentials()
                .unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains("PASSWORD") && !shown.contains("SECRET"),
                "{shown}"
            );
        }
    }

    #[test]
    fn container_full_uri_hosts() {
        for ok in [
            "http://127.0.0.1/x",
            "http://127.1.2.3:80/x",
            "http://localhost:8080/",
            "http://[::1]:9/x",
            "http://169.254.170.2/v2",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "https://creds.example.com/x",
        ] {
            assert!(check_container_full_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://creds.example.com/x",
            "http://10.0.0.1/x",
            "http://169.254.169.254/latest",
            "http://[fd00:ec2::254]/",
            "http://127.0.0.1.evil.com/",
        ] {
            match check_container_full_uri(bad) {
                Err(Error::Config { setting, reason }) => {
                    assert_eq!(setting, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
                    assert!(reason.contains("not allowed"), "{reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let err = chain(&[(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://example.com/creds",
        )])
        .credentials()
        .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(check_container_full_uri("not a url").is_err());
    }
}
