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

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::sigcheck::{Key, Received, check};

pub struct FakeAws {
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

struct Config {
    known: Vec<Key>,
    region: String,
    sso_tokens: Vec<String>,
}

impl FakeAws {
    pub fn start(known: Vec<Key>, region: &str, sso_tokens: &[&str]) -> FakeAws {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = Arc::new(Config {
            known,
            region: region.to_string(),
            sso_tokens: sso_tokens.iter().map(|s| s.to_string()).collect(),
        });
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (config, seen) = (config.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &config, &seen);
                });
            }
        });
        FakeAws { url, log }
    }

    /// One line per request: what was asked and what was answered.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The expiry of STS and container credentials: far ahead, so no date
/// code is needed here (the library's refresh is unit-tested).
const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

fn form(body: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if let Some(hex) = s.get(i + 1..i + 3).filter(|_| bytes[i] == b'%') {
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn serve(
    stream: std::net::TcpStream,
    config: &Config,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let request = Received {
        method: &method,
        path: &path,
        headers: &headers,
        body: &body,
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let (status, reply, what) = answer(&request, &text, config);
    log.lock()
        .unwrap()
        .push(format!("{method} {path} -> {status} {what}"));
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\
         x-amzn-RequestId: fake-1\r\n\r\n{reply}",
        reply.len()
    )?;
    stream.flush()
}

fn answer(r: &Received, body: &str, config: &Config) -> (u16, String, String) {
    if r.method == "POST" && r.path == "/" {
        let form = form(body);
        if form.get("Action").map(String::as_str) != Some("AssumeRole") {
            return (400, "<ErrorResponse/>".into(), "not AssumeRole".into());
        }
        let key_id = r.access_key().unwrap_or_default();
        let key = match key_id.strip_prefix("ASIA-") {
            Some(name) => Key::new(
                &key_id,
                &format!("secret-{name}"),
                Some(&format!("token-{name}")),
            ),
            None => match config.known.iter().find(|k| k.id == key_id) {
                Some(k) => k.clone(),
                None => Key::new(&key_id, "", None),
            },
        };
        if let Err(why) = check(r, &key, &config.region, "sts") {
            return (
                403,
                format!(
                    "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>{why}</Message></Error></ErrorResponse>"
                ),
                format!("AssumeRole refused: {why}"),
            );
        }
        let role = form.get("RoleArn").cloned().unwrap_or_default();
        let name = role.rsplit('/').next().unwrap_or_default().to_string();
        let external = form.get("ExternalId").cloned().unwrap_or_default();
        return (
            200,
            format!(
                "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
                 <AccessKeyId>ASIA-{name}</AccessKeyId><SecretAccessKey>secret-{name}</SecretAccessKey>\
                 <SessionToken>token-{name}</SessionToken><Expiration>{}</Expiration>\
                 </Credentials></AssumeRoleResult></AssumeRoleResponse>",
                FAR_FUTURE
            ),
            format!("AssumeRole {role} by {key_id} external_id={external}"),
        );
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
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
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
