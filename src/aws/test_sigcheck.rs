//! Checks a request's SigV4 signature with the aws-sigv4 crate, an oracle
//! independent of the library's signer, and plays STS `AssumeRole` for
//! requests that pass. Unit tests use it as `crate::aws::test_sigcheck`;
//! the integration tests compile this same file into `tests/common`
//! (`#[path]`), so it uses only std, the dev-dependencies and
//! [`Request`](super::test_server::Request).
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;

use super::test_server::Request;

/// Expected credentials.
#[derive(Clone, Debug)]
pub(crate) struct Key {
    pub id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl Key {
    pub(crate) fn new(id: &str, secret: &str, token: Option<&str>) -> Key {
        Key {
            id: id.into(),
            secret: secret.into(),
            token: token.map(str::to_string),
        }
    }
}

/// `Ok` when the request is signed by `key` for `region` and `service`;
/// the error says what differs.
pub(crate) fn check(r: &Request, key: &Key, region: &str, service: &str) -> Result<(), String> {
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
    if scope.len() != 5 || scope[0] != key.id || scope[2] != region || scope[3] != service {
        return Err(format!(
            "signed as {credential}, expected key {}, region {region}, service {service}",
            key.id
        ));
    }
    if r.header("x-amz-security-token") != key.token.as_deref() {
        return Err("not the expected session token".into());
    }
    let amz_date = r.header("x-amz-date").ok_or("no x-amz-date")?;
    let time = amz_date_time(amz_date).ok_or("bad x-amz-date")?;
    let headers: Vec<(&str, &str)> = signed_headers
        .split(';')
        .filter(|h| !matches!(*h, "x-amz-date" | "x-amz-security-token"))
        .map(|h| (h, r.header(h).unwrap_or_default()))
        .collect();
    let uri = format!("http://{}{}", r.header("host").unwrap_or_default(), r.path);
    let identity = aws_credential_types::Credentials::new(
        &key.id,
        &key.secret,
        key.token.clone(),
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
        .ok_or("the oracle gave no authorization")?;
    if expected == auth {
        Ok(())
    } else {
        Err(format!(
            "signature mismatch for key {}: got {auth}, expected {expected}",
            key.id
        ))
    }
}

/// `YYYYMMDDTHHMMSSZ` as a time. Written here, not borrowed from the
/// library, so that the oracle depends on none of the code it checks.
fn amz_date_time(text: &str) -> Option<SystemTime> {
    let digits = |range: std::ops::Range<usize>| text.get(range)?.parse::<u64>().ok();
    if text.len() != 16 || text.as_bytes()[8] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let leap = |y: u64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let days = (1970..year)
        .map(|y| if leap(y) { 366 } else { 365 })
        .sum::<u64>()
        + month_days[..month as usize - 1].iter().sum::<u64>()
        + day
        - 1;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// A fake STS `AssumeRole` answer: for a request whose signature the
/// oracle accepts with credentials it knows (`known`, or a set it issued),
/// the role `arn:…:role/NAME` gets key `ASIA-NAME`, secret `secret-NAME`,
/// token `token-NAME`, expiring at `expiration`; anything else gets 403
/// `SignatureDoesNotMatch`, or 400 when it is not an AssumeRole. Returns
/// the status, the XML body, and a line saying what was done.
pub(crate) fn assume_role_reply(
    r: &Request,
    known: &[Key],
    region: &str,
    expiration: &str,
) -> (u16, String, String) {
    let form = r.form();
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
        None => match known.iter().find(|k| k.id == key_id) {
            Some(k) => k.clone(),
            None => Key::new(&key_id, "", None),
        },
    };
    if let Err(why) = check(r, &key, region, "sts") {
        return (
            403,
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>\
                 <Message>{why}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>"
            ),
            format!("AssumeRole refused: {why}"),
        );
    }
    let role = form.get("RoleArn").cloned().unwrap_or_default();
    let name = role.rsplit('/').next().unwrap_or_default();
    let external = form.get("ExternalId").cloned().unwrap_or_default();
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
      <Expiration>{expiration}</Expiration>
    </Credentials>
    <PackedPolicySize>6</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
        ),
        format!("AssumeRole {role} by {key_id} external_id={external}"),
    )
}
