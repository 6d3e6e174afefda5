//! Checks a request's SigV4 signature with the aws-sigv4 crate, an oracle
//! independent of the library's signer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;

/// One received request.
pub struct Received<'a> {
    pub method: &'a str,
    /// Path and query as sent.
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Received<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The access key id the request says it is signed with.
    pub fn access_key(&self) -> Option<String> {
        let auth = self.header("authorization")?;
        let credential = auth.split("Credential=").nth(1)?;
        Some(credential.split('/').next()?.to_string())
    }
}

/// Expected credentials.
#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl Key {
    pub fn new(id: &str, secret: &str, token: Option<&str>) -> Key {
        Key {
            id: id.into(),
            secret: secret.into(),
            token: token.map(str::to_string),
        }
    }
}

/// `Ok` when the request is signed by `key` for `region` and `service`.
pub fn check(r: &Received, key: &Key, region: &str, service: &str) -> Result<(), String> {
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
    // The signing time is the request's x-amz-date: the oracle's own date
    // for candidate times near now is compared with it (no date parsing).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for back in 0..900u64 {
        let time = UNIX_EPOCH + Duration::from_secs(now + 5 - back);
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
            r.method,
            uri.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(r.body),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let header = |name: &str| {
            instructions
                .headers()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
        };
        if header("x-amz-date").as_deref() != Some(amz_date) {
            continue;
        }
        let expected = header("authorization").ok_or("the oracle gave no authorization")?;
        return if expected == auth {
            Ok(())
        } else {
            Err(format!("signature mismatch for key {}", key.id))
        };
    }
    Err(format!(
        "x-amz-date {amz_date} is not within 15 minutes of now"
    ))
}
