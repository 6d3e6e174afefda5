//! Fake STS, IAM Identity Center portal, OIDC and container-credentials
//! endpoints on one 127.0.0.1 port, for credential tests through the
//! standard environment variables (`AWS_ENDPOINT_URL_STS`, `_SSO`,
//! `_SSO_OIDC`, `AWS_CONTAINER_CREDENTIALS_FULL_URI`).
//!
//! - STS `AssumeRole` (`POST /`): the request's signature must check out
//!   (aws-sigv4) with credentials the fake knows (`known`, or any it
//!   issued); the role `arn:…:role/NAME` gets key `ASIA-NAME`, secret
//!   `secret-NAME`, token `token-NAME`, valid for an hour.
//! - Portal `GET /federation/credentials`: the `x-amz-sso_bearer_token`
//!   must be one of `sso_tokens`; role `R` gets key `SSO-R`.
//! - OIDC `POST /token` refresh grant with refresh token `REFRESH-1`,
//!   client `CLIENT-ID` / `CLIENT-SECRET`: new token `RENEWED-TOKEN`.
//! - `GET /container`: key `CONTAINER` (with `Authorization: container-auth`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::sigcheck::{Key, assume_role_reply};
use super::test_server::{FakeServer, Request};

pub struct FakeAws {
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
    _server: FakeServer,
}

struct Config {
    known: Vec<Key>,
    region: String,
    sso_tokens: Vec<String>,
}

impl FakeAws {
    pub fn start(known: Vec<Key>, region: &str, sso_tokens: &[&str]) -> FakeAws {
        let config = Config {
            known,
            region: region.to_string(),
            sso_tokens: sso_tokens.iter().map(|s| s.to_string()).collect(),
        };
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = log.clone();
        let server = FakeServer::start(move |r| {
            let (status, reply, what) = answer(r, &config);
            seen.lock()
                .unwrap()
                .push(format!("{} {} -> {status} {what}", r.method, r.path));
            (status, reply)
        });
        FakeAws {
            url: server.url.clone(),
            log,
            _server: server,
        }
    }

    /// One line per request: what was asked and what was answered.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The expiry of STS and container credentials: far ahead, so no date
/// code is needed here (the library's refresh is unit-tested).
const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

fn answer(r: &Request, config: &Config) -> (u16, String, String) {
    if r.method == "POST" && r.path == "/" {
        return assume_role_reply(r, &config.known, &config.region, FAR_FUTURE);
    }
    if r.method == "GET" && r.path.starts_with("/federation/credentials?") {
        let token = r.header("x-amz-sso_bearer_token").unwrap_or_default();
        if !config.sso_tokens.iter().any(|t| t == token) {
            return (
                401,
                r#"{"message":"Session token not found or invalid"}"#.into(),
                "GetRoleCredentials refused".into(),
            );
        }
        let role = r
            .path
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("role_name="))
            .unwrap_or_default()
            .to_string();
        let expiration = (SystemTime::now() + Duration::from_secs(3600))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        return (
            200,
            format!(
                r#"{{"roleCredentials":{{"accessKeyId":"SSO-{role}","secretAccessKey":"secret-SSO-{role}","sessionToken":"token-SSO-{role}","expiration":{expiration}}}}}"#
            ),
            format!("GetRoleCredentials {}", r.path),
        );
    }
    if r.method == "POST" && r.path == "/token" {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        if v["grantType"] == "refresh_token"
            && v["refreshToken"] == "REFRESH-1"
            && v["clientId"] == "CLIENT-ID"
            && v["clientSecret"] == "CLIENT-SECRET"
        {
            return (
                200,
                r#"{"accessToken":"RENEWED-TOKEN","expiresIn":3600,"tokenType":"Bearer"}"#.into(),
                "CreateToken refreshed".into(),
            );
        }
        return (
            400,
            r#"{"error":"invalid_grant"}"#.into(),
            "CreateToken refused".into(),
        );
    }
    if r.method == "GET" && r.path == "/container" {
        if r.header("authorization") != Some("container-auth") {
            return (401, "{}".into(), "container refused".into());
        }
        return (
            200,
            format!(
                r#"{{"AccessKeyId":"CONTAINER","SecretAccessKey":"secret-CONTAINER","Token":"token-CONTAINER","Expiration":"{}"}}"#,
                FAR_FUTURE
            ),
            "container credentials".into(),
        );
    }
    (
        404,
        String::new(),
        format!("unknown {} {}", r.method, r.path),
    )
}
