//! Helpers shared by the credentials tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use super::super::env::Env;
use super::super::env::test_support::temp_dir;
use super::super::test_server::FakeServer;
use super::super::test_sigcheck::{Key, assume_role_reply};
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

/// A fake STS on 127.0.0.1. It answers `AssumeRole` for requests whose
/// signature the oracle accepts with credentials it knows: `known` (key,
/// secret, token) and every set it issued. The role `arn:…:role/NAME`
/// gets key `ASIA-NAME`, secret `secret-NAME`, token `token-NAME`, valid
/// until 2030-01-01T01:00:00Z. Requests failing the check get 403
/// `SignatureDoesNotMatch`.
pub(crate) fn fake_sts(known: &[(&str, &str, Option<&str>)], region: &'static str) -> FakeServer {
    let known: Vec<Key> = known.iter().map(|(k, s, t)| Key::new(k, s, *t)).collect();
    FakeServer::start(move |r| {
        let (status, body, _) = assume_role_reply(r, &known, region, "2030-01-01T01:00:00Z");
        (status, body)
    })
}
