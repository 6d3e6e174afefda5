//! Helpers shared by the credentials tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use super::super::env::Env;
use super::super::env::test_support::temp_dir;
use super::super::test_server::FakeServer;
use super::{Clock, Credentials, DefaultCredentialsChain};
use crate::{Error, Result};

/// 2030-01-01T00:00:00Z.
pub(crate) const T0: u64 = 1_893_456_000;

pub(crate) fn clock_at(secs: &Arc<AtomicU64>) -> Clock {
    let secs = secs.clone();
    Arc::new(move || UNIX_EPOCH + Duration::from_secs(secs.load(Ordering::SeqCst)))
}

pub(crate) fn chain(pairs: &[(&str, &str)]) -> DefaultCredentialsChain {
    chain_at(pairs, &Arc::new(AtomicU64::new(T0)))
}

pub(crate) fn chain_at(pairs: &[(&str, &str)], secs: &Arc<AtomicU64>) -> DefaultCredentialsChain {
    // Keep the tests away from the real home directory and metadata.
    let mut all: Vec<(&str, &str)> = vec![
        ("HOME", "/nonexistent/kinesis-consumer-home"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    all.extend_from_slice(pairs);
    DefaultCredentialsChain::with_env(Env::from_pairs(&all), clock_at(secs))
}

pub(crate) fn creds_json(key: &str, expiration: &str) -> String {
    format!(
        r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{key}",
           "SecretAccessKey":"secret-{key}","Token":"token-{key}",
           "Expiration":"{expiration}","RoleArn":"arn:aws:iam::1:role/r"}}"#
    )
}

pub(crate) fn expect_credentials_error(result: Result<Credentials>) -> String {
    match result {
        Err(Error::Credentials(m)) => m,
        other => panic!("expected a credentials error, got {other:?}"),
    }
}

pub(crate) fn write_files(config: &str, credentials: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir("creds");
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(dir.join("credentials"), credentials).unwrap();
    (dir.join("config"), dir.join("credentials"))
}

pub(crate) const STS_OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
<SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>
<Credentials>
  <SessionToken>FwoG&amp;token/+=</SessionToken>
  <SecretAccessKey>wJalr/secret+key</SecretAccessKey>
  <Expiration>2030-01-01T01:00:00Z</Expiration>
  <AccessKeyId>ASIASTS</AccessKeyId>
</Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>abc</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

pub(crate) fn token_file(contents: &str) -> PathBuf {
    let path = temp_dir("token").join("token");
    std::fs::write(&path, contents).unwrap();
    path
}

pub(crate) fn imds_server(fail_creds: Arc<AtomicBool>) -> FakeServer {
    FakeServer::start(move |r| match (r.method.as_str(), r.path.as_str()) {
        ("PUT", "/latest/api/token") => (200, "imds-token-1".into()),
        (_, _) if r.header("x-aws-ec2-metadata-token") != Some("imds-token-1") => {
            (401, String::new())
        }
        ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "my-role\n".into()),
        ("GET", "/latest/meta-data/iam/security-credentials/my-role") => {
            if fail_creds.load(Ordering::SeqCst) {
                (500, "boom".into())
            } else {
                (200, creds_json("IMDS", "2030-01-01T01:00:00Z"))
            }
        }
        _ => (404, String::new()),
    })
}

/// Checks a request's SigV4 signature with the aws-sigv4 crate (an oracle
/// independent of our signer): signed by `key` / `secret` (and `token`) for
/// `region` and `service`. The error says what differs.
pub(crate) fn check_signature(
    r: &crate::aws::test_server::Request,
    key: &str,
    secret: &str,
    token: Option<&str>,
    region: &str,
    service: &str,
) -> std::result::Result<(), String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4::SigningParams;

    let auth = r
        .header("authorization")
        .ok_or("the request is not signed")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .ok_or("not an AWS4-HMAC-SHA256 authorization")?;
    let (credential, rest) = rest
        .split_once(", SignedHeaders=")
        .ok_or("no SignedHeaders")?;
    let (signed_headers, _) = rest.split_once(", Signature=").ok_or("no Signature")?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[0] != key || scope[2] != region || scope[3] != service {
        return Err(format!(
            "signed as {credential}, expected key {key}, region {region}, service {service}"
        ));
    }
    if r.header("x-amz-security-token") != token {
        return Err("the session token is not the expected one".into());
    }
    let date = r.header("x-amz-date").ok_or("no x-amz-date")?;
    let time = crate::time::parse_amz_date(date).ok_or("bad x-amz-date")?;
    let headers: Vec<(&str, &str)> = signed_headers
        .split(';')
        .filter(|h| !matches!(*h, "x-amz-date" | "x-amz-security-token"))
        .map(|h| (h, r.header(h).unwrap_or_default()))
        .collect();
    let uri = format!("http://{}{}", r.header("host").unwrap_or_default(), r.path);
    let identity = aws_credential_types::Credentials::new(
        key,
        secret,
        token.map(str::to_string),
        None,
        "expected",
    )
    .into();
    let params = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new(
        &r.method,
        uri.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(r.body.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let expected = instructions
        .headers()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_string())
        .ok_or("the oracle produced no authorization")?;
    if expected == auth {
        Ok(())
    } else {
        Err(format!(
            "signature mismatch: got {auth}, expected {expected}"
        ))
    }
}

/// A fake STS on 127.0.0.1. It answers `AssumeRole` for requests whose
/// signature the oracle accepts with credentials it knows: `known` (key,
/// secret, token) and every set it issued. The role `arn:…:role/NAME`
/// gets key `ASIA-NAME`, secret `secret-NAME`, token `token-NAME`, valid
/// until 2030-01-01T01:00:00Z. Requests failing the check get 403
/// `SignatureDoesNotMatch`.
pub(crate) fn fake_sts(known: &[(&str, &str, Option<&str>)], region: &'static str) -> FakeServer {
    let known: Vec<(String, String, Option<String>)> = known
        .iter()
        .map(|(k, s, t)| (k.to_string(), s.to_string(), t.map(str::to_string)))
        .collect();
    FakeServer::start(move |r| {
        let form = r.form();
        let key = r
            .header("authorization")
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').next())
            .unwrap_or_default()
            .to_string();
        let (secret, token) = match key.strip_prefix("ASIA-") {
            Some(name) => (format!("secret-{name}"), Some(format!("token-{name}"))),
            None => match known.iter().find(|(k, _, _)| *k == key) {
                Some((_, s, t)) => (s.clone(), t.clone()),
                None => (String::new(), None),
            },
        };
        if let Err(why) = check_signature(r, &key, &secret, token.as_deref(), region, "sts") {
            return (
                403,
                format!(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>\
                     <Message>{why}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>"
                ),
            );
        }
        let role = form.get("RoleArn").cloned().unwrap_or_default();
        let name = role.rsplit('/').next().unwrap_or_default();
        (
            200,
            format!(
                r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>x</SourceIdentity>
    <AssumedRoleUser><Arn>{role}/s</Arn><AssumedRoleId>ARO:s</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIA-{name}</AccessKeyId>
      <SecretAccessKey>secret-{name}</SecretAccessKey>
      <SessionToken>token-{name}</SessionToken>
      <Expiration>2030-01-01T01:00:00Z</Expiration>
    </Credentials>
    <PackedPolicySize>6</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
            ),
        )
    })
}
