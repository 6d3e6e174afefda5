//! IAM Identity Center (SSO) profiles: the token `aws sso login` cached,
//! exchanged for role credentials at the portal's `GetRoleCredentials`.
//!
//! Two profile styles, as the AWS CLI:
//! - `sso_session = NAME` with a `[sso-session NAME]` section holding
//!   `sso_start_url` and `sso_region`; the token cache file is named after
//!   the SHA-1 of the session name;
//! - legacy: `sso_start_url` and `sso_region` in the profile itself; the
//!   cache file is named after the SHA-1 of the start URL.
//!
//! Both need `sso_account_id` and `sso_role_name`. The cache file is
//! `~/.aws/sso/cache/<sha1 hex>.json` with `accessToken` and `expiresAt`;
//! when it also holds `refreshToken`, `clientId`, `clientSecret` and a
//! `registrationExpiresAt` in the future, a token that has expired (or
//! expires within 5 minutes) is renewed with the OIDC `CreateToken`
//! refresh grant and written back. The token, the refresh token, the
//! client secret and the file's contents never appear in errors or logs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha1::{Digest, Sha1};

use super::http::{json_error_message, read_reply};
use super::{Context, Credentials};
use crate::aws::client::transport_error;
use crate::aws::endpoint::{Service, resolve_endpoint_with};
use crate::aws::env::Profile;
use crate::{Error, Result};

/// A token is renewed this long before it expires, when it can be.
const REFRESH_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The SSO settings of a profile.
struct SsoConfig {
    /// The `sso_session` name, or `None` for a legacy profile.
    session: Option<String>,
    start_url: String,
    region: String,
    account_id: String,
    role_name: String,
}

/// True when the profile is an SSO profile.
pub(super) fn is_sso_profile(profile: &Profile) -> bool {
    profile.get("sso_session").is_some() || profile.get("sso_start_url").is_some()
}

/// The role credentials of an SSO profile `name`.
pub(super) fn load(ctx: &Context, name: &str, profile: &Profile) -> Result<Credentials> {
    let config = sso_config(ctx, name, profile)?;
    let cache_key = config.session.as_deref().unwrap_or(&config.start_url);
    let login = format!("run `aws sso login --profile {name}`");
    let what = match &config.session {
        Some(session) => format!("profile `{name}` (SSO session `{session}`)"),
        None => format!("profile `{name}` (SSO start URL {})", config.start_url),
    };
    let path = cache_file(ctx, cache_key).ok_or_else(|| {
        Error::Credentials(format!(
            "{what}: the SSO token cache ~/.aws/sso/cache needs a home directory"
        ))
    })?;
    let token = cached_token(ctx, &path, &config, &what, &login)?;
    get_role_credentials(ctx, &config, &token, &what, &login)
}

fn sso_config(ctx: &Context, name: &str, profile: &Profile) -> Result<SsoConfig> {
    let whence = format!("profile `{name}` in {}", profile.describe_files());
    let need = |key: &str| {
        profile.get(key).map(str::to_string).ok_or_else(|| {
            Error::Credentials(format!("{whence} is an SSO profile but has no {key}"))
        })
    };
    let (session, start_url, region) = match profile.get("sso_session") {
        Some(session) => {
            let section = ctx
                .env
                .load_sso_session(session)
                .map_err(Error::Credentials)?
                .ok_or_else(|| {
                    Error::Credentials(format!(
                        "{whence} names sso_session `{session}`, but the config file has no \
                         [sso-session {session}] section"
                    ))
                })?;
            let get = |key: &str| {
                section.get(key).map(str::to_string).ok_or_else(|| {
                    Error::Credentials(format!("the [sso-session {session}] section has no {key}"))
                })
            };
            (
                Some(session.to_string()),
                get("sso_start_url")?,
                get("sso_region")?,
            )
        }
        None => (None, need("sso_start_url")?, need("sso_region")?),
    };
    Ok(SsoConfig {
        session,
        start_url,
        region,
        account_id: need("sso_account_id")?,
        role_name: need("sso_role_name")?,
    })
}

/// `~/.aws/sso/cache/<sha1 hex of key>.json`.
fn cache_file(ctx: &Context, key: &str) -> Option<PathBuf> {
    let digest = Sha1::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(
        ctx.env
            .expand_path("~/.aws/sso/cache")?
            .join(format!("{hex}.json")),
    )
}

/// A valid access token from the cache file, renewed first if it expired
/// (or is about to) and the file allows it.
fn cached_token(
    ctx: &Context,
    path: &Path,
    config: &SsoConfig,
    what: &str,
    login: &str,
) -> Result<String> {
    let text = ctx.env.read_file(path).map_err(|e| {
        Error::Credentials(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{what}: no cached SSO token ({} does not exist); {login}",
                path.display()
            )
        } else {
            format!(
                "{what}: cannot read the SSO token cache {}: {e}",
                path.display()
            )
        })
    })?;
    // The file holds secrets: errors say what is wrong, never what is in it.
    let mut cache: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        Error::Credentials(format!(
            "{what}: the SSO token cache {} is not valid JSON; {login}",
            path.display()
        ))
    })?;
    let field = |cache: &serde_json::Value, key: &str| -> Option<String> {
        cache
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let time = |cache: &serde_json::Value, key: &str| {
        field(cache, key).and_then(|t| crate::time::parse_iso8601(&t))
    };
    let token = field(&cache, "accessToken");
    let expires_at = time(&cache, "expiresAt");
    let now = ctx.now();
    let fresh = |at: Option<SystemTime>| at.is_some_and(|at| now + REFRESH_WINDOW < at);
    let valid = token.is_some() && expires_at.is_some_and(|at| now < at);
    if valid && fresh(expires_at) {
        return Ok(token.unwrap_or_default());
    }
    let refresh = (
        field(&cache, "refreshToken"),
        field(&cache, "clientId"),
        field(&cache, "clientSecret"),
    );
    let registration_valid = time(&cache, "registrationExpiresAt").is_some_and(|at| now < at);
    if let ((Some(refresh_token), Some(client_id), Some(client_secret)), true) =
        (refresh, registration_valid)
    {
        match create_token(ctx, config, &client_id, &client_secret, &refresh_token) {
            Ok(renewed) => {
                cache["accessToken"] = renewed.access_token.clone().into();
                cache["expiresAt"] =
                    crate::time::format_rfc3339(now + renewed.expires_in, false).into();
                if let Some(new_refresh) = renewed.refresh_token {
                    cache["refreshToken"] = new_refresh.into();
                }
                if let Err(e) = write_cache(path, &cache) {
                    log::warn!(
                        "{what}: renewed the SSO token but could not save it to {}: {e}",
                        path.display()
                    );
                }
                log::debug!("{what}: renewed the SSO token");
                return Ok(renewed.access_token);
            }
            Err(e) if valid => {
                log::warn!("{what}: could not renew the SSO token (still valid): {e}");
                return Ok(token.unwrap_or_default());
            }
            Err(e) => {
                return Err(Error::Credentials(format!(
                    "{what}: the cached SSO token expired and renewing it failed ({e}); {login}"
                )));
            }
        }
    }
    if valid {
        return Ok(token.unwrap_or_default());
    }
    let when = match expires_at {
        Some(at) => format!("expired at {}", crate::time::format_rfc3339(at, false)),
        None => "has no usable accessToken and expiresAt".to_string(),
    };
    Err(Error::Credentials(format!(
        "{what}: the cached SSO token {when} and cannot be renewed; {login}"
    )))
}

/// Writes the cache file back through a temporary file and a rename. The
/// file holds the access token, the refresh token and the client secret:
/// the temporary file is created new (never an existing file or link) and
/// readable by its owner only, as the AWS CLI keeps it, whatever the umask.
fn write_cache(path: &Path, cache: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string(cache).map_err(std::io::Error::other)?;
    // Unique per process and attempt: two writers never share a file.
    let tmp = path.with_extension(format!(
        "json.{}-{:016x}.tmp",
        std::process::id(),
        crate::random::next_u64()
    ));
    let written = write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates `path` (it must not exist) with mode 0600 on Unix, writes
/// `bytes` and syncs them to disk.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A token `CreateToken` renewed.
pub(super) struct RenewedToken {
    access_token: String,
    /// At most [`MAX_EXPIRES_IN`].
    pub(super) expires_in: Duration,
    refresh_token: Option<String>,
}

/// The OIDC operation that renews a token, as errors name it.
const CREATE_TOKEN: &str = "SSOOIDC.CreateToken";

/// The portal operation that gives role credentials, as errors name it.
const GET_ROLE_CREDENTIALS: &str = "SSO.GetRoleCredentials";

/// OIDC `CreateToken` with the refresh grant.
fn create_token(
    ctx: &Context,
    config: &SsoConfig,
    client_id: &str,
    client_secret: &str,
    refresh_token: &str,
) -> Result<RenewedToken> {
    let endpoint = resolve_endpoint_with(Service::SsoOidc, None, &config.region, &ctx.env)?;
    let url = format!("{}/token", endpoint.url());
    let body = serde_json::json!({
        "clientId": client_id,
        "clientSecret": client_secret,
        "grantType": "refresh_token",
        "refreshToken": refresh_token,
    })
    .to_string();
    let reply = read_reply(
        ctx.sts_agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body.as_str()),
    )
    .map_err(|e| transport_error(CREATE_TOKEN, &url, e))?;
    if reply.status != 200 {
        return Err(Error::Credentials(format!(
            "{url} answered HTTP {}: {}",
            reply.status,
            json_error_message(&reply.body)
        )));
    }
    parse_create_token(&reply.body)
}

/// The longest `expiresIn` taken from a `CreateToken` reply: a year (the
/// service gives hours). A larger number would overflow the expiry time.
const MAX_EXPIRES_IN: u64 = 365 * 24 * 3600;

/// The renewed token in a `CreateToken` reply.
pub(super) fn parse_create_token(body: &str) -> Result<RenewedToken> {
    let decode = |message: String| Error::Decode {
        operation: CREATE_TOKEN,
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|_| decode("the reply is not JSON".into()))?;
    let access_token = value
        .get("accessToken")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| decode("no accessToken in the reply".into()))?;
    let expires_in = value
        .get("expiresIn")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| decode("no expiresIn in the reply".into()))?;
    if expires_in > MAX_EXPIRES_IN {
        return Err(decode(format!(
            "expiresIn {expires_in} is out of range (at most {MAX_EXPIRES_IN} seconds)"
        )));
    }
    Ok(RenewedToken {
        access_token: access_token.to_string(),
        expires_in: Duration::from_secs(expires_in),
        refresh_token: value
            .get("refreshToken")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}

/// The portal's `GetRoleCredentials`.
fn get_role_credentials(
    ctx: &Context,
    config: &SsoConfig,
    token: &str,
    what: &str,
    login: &str,
) -> Result<Credentials> {
    let endpoint = resolve_endpoint_with(Service::Sso, None, &config.region, &ctx.env)?;
    let url = format!("{}/federation/credentials", endpoint.url());
    log::debug!(
        "{what}: getting credentials for role {} in account {} from {url}",
        config.role_name,
        config.account_id
    );
    let reply = read_reply(
        ctx.sts_agent
            .get(&url)
            .query("role_name", &config.role_name)
            .query("account_id", &config.account_id)
            .header("x-amz-sso_bearer_token", token)
            .header("Accept", "application/json")
            .call(),
    )
    .map_err(|e| transport_error(GET_ROLE_CREDENTIALS, &url, e))?;
    if reply.status == 401 || reply.status == 403 {
        return Err(Error::Credentials(format!(
            "{what}: the SSO portal refused the cached token (HTTP {}: {}); {login}",
            reply.status,
            json_error_message(&reply.body)
        )));
    }
    if reply.status != 200 {
        return Err(Error::Service(crate::aws::client::service_error(
            GET_ROLE_CREDENTIALS,
            reply.status,
            reply.request_id,
            None,
            reply.body.as_bytes(),
        )));
    }
    parse_role_credentials(&reply.body)
}

/// The credentials in a `GetRoleCredentials` reply.
pub(super) fn parse_role_credentials(body: &str) -> Result<Credentials> {
    let decode = |message: &str| Error::Decode {
        operation: GET_ROLE_CREDENTIALS,
        message: message.to_string(),
    };
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|_| decode("the reply is not JSON"))?;
    let role = value
        .get("roleCredentials")
        .ok_or_else(|| decode("no roleCredentials in the reply"))?;
    let field = |key: &str| {
        role.get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| decode(&format!("no {key} in the reply")))
    };
    let expiration = role
        .get("expiration")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| decode("no expiration in the reply"))?;
    Ok(
        Credentials::new(field("accessKeyId")?, field("secretAccessKey")?)
            .with_session_token(field("sessionToken")?)
            .with_expiry(UNIX_EPOCH + Duration::from_millis(expiration)),
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::aws::credentials::ProvideCredentials;
    use crate::aws::env::test_support::temp_dir;
    use crate::aws::test_server::FakeServer;
    use std::path::PathBuf;
    use std::time::{Duration, UNIX_EPOCH};

    /// sha1("corp") and sha1 of the legacy start URL, computed elsewhere.
    const CORP_CACHE: &str = "ee0bfd2552fbd840c02cc48b6e823320543c450f.json";
    const LEGACY_CACHE: &str = "79e435d7a515078e81c9dffc35f38d5687ebd3a7.json";

    const CONFIG: &str = "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\n\
        sso_role_name = ReadOnly\nregion = us-west-2\n\
        [sso-session corp]\nsso_region = eu-west-1\nsso_start_url = https://corp.awsapps.com/start\n\
        sso_registration_scopes = sso:account:access\n\
        [profile legacy]\nsso_start_url = https://legacy.awsapps.com/start\nsso_region = eu-west-1\n\
        sso_account_id = 444455556666\nsso_role_name = Admin\n";

    /// A portal that gives credentials for `token` only.
    fn portal(token: &'static str) -> FakeServer {
        FakeServer::start(move |r| {
            if r.header("x-amz-sso_bearer_token") != Some(token) {
                return (
                    401,
                    r#"{"message":"Session token not found or invalid"}"#.to_string(),
                );
            }
            let role = if r
                .path
                .contains("role_name=ReadOnly&account_id=111122223333")
            {
                "SSODEV"
            } else if r.path.contains("role_name=Admin&account_id=444455556666") {
                "SSOLEGACY"
            } else {
                return (404, format!("no such role: {}", r.path));
            };
            // 2030-01-01T01:00:00Z in milliseconds.
            (
                200,
                format!(
                    r#"{{"roleCredentials":{{"accessKeyId":"{role}","secretAccessKey":"secret-{role}",
                    "sessionToken":"token-{role}","expiration":{}}}}}"#,
                    (T0 + 3600) * 1000
                ),
            )
        })
    }

    struct Setup {
        home: PathBuf,
        config: PathBuf,
        creds: PathBuf,
    }

    fn setup(cache_name: &str, cache: &str) -> Setup {
        let home = temp_dir("sso-home");
        let dir = home.join(".aws/sso/cache");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(cache_name), cache).unwrap();
        let (config, creds) = write_files(CONFIG, "");
        Setup {
            home,
            config,
            creds,
        }
    }

    fn env<'a>(s: &'a Setup, profile: &'a str, portal: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("HOME", s.home.to_str().unwrap()),
            ("AWS_CONFIG_FILE", s.config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", s.creds.to_str().unwrap()),
            ("AWS_PROFILE", profile),
            ("AWS_ENDPOINT_URL_SSO", portal),
        ]
    }

    fn chain_with(pairs: &[(&str, &str)]) -> crate::aws::credentials::DefaultCredentialsChain {
        // `chain` sets HOME first; ours comes later and wins.
        chain(pairs)
    }

    #[test]
    fn sso_session_profile() {
        let portal = portal("ACCESS-TOKEN-1");
        let s = setup(
            CORP_CACHE,
            r#"{"startUrl":"https://corp.awsapps.com/start","region":"eu-west-1",
               "accessToken":"ACCESS-TOKEN-1","expiresAt":"2030-01-01T08:00:00Z"}"#,
        );
        let c = chain_with(&env(&s, "dev", &portal.url))
            .credentials()
            .unwrap();
        assert_eq!(c.access_key_id(), "SSODEV");
        assert_eq!(c.secret_access_key(), "secret-SSODEV");
        assert_eq!(c.session_token(), Some("token-SSODEV"));
        assert_eq!(
            c.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(T0 + 3600))
        );
        let r = &portal.requests()[0];
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.path,
            "/federation/credentials?role_name=ReadOnly&account_id=111122223333"
        );
    }

    #[test]
    fn legacy_sso_profile() {
        let portal = portal("LEGACY-TOKEN");
        let s = setup(
            LEGACY_CACHE,
            r#"{"startUrl":"https://legacy.awsapps.com/start","region":"eu-west-1",
               "accessToken":"LEGACY-TOKEN","expiresAt":"2030-01-01T08:00:00UTC"}"#,
        );
        // Older AWS CLIs end the time with "UTC" instead of "Z".
        let c = chain_with(&env(&s, "legacy", &portal.url))
            .credentials()
            .unwrap();
        assert_eq!(c.access_key_id(), "SSOLEGACY");
    }

    #[test]
    fn expired_token_is_renewed_with_the_refresh_grant() {
        let portal = portal("RENEWED-TOKEN");
        let oidc = FakeServer::start(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            if r.path != "/token"
                || body["grantType"] != "refresh_token"
                || body["refreshToken"] != "REFRESH-1"
                || body["clientId"] != "CLIENT-ID"
                || body["clientSecret"] != "CLIENT-SECRET"
            {
                return (400, r#"{"error":"invalid_grant"}"#.to_string());
            }
            (
                200,
                r#"{"accessToken":"RENEWED-TOKEN","expiresIn":28800,"refreshToken":"REFRESH-2","tokenType":"Bearer"}"#
                    .to_string(),
            )
        });
        let s = setup(
            CORP_CACHE,
            r#"{"startUrl":"https://corp.awsapps.com/start","region":"eu-west-1",
               "accessToken":"OLD-TOKEN","expiresAt":"2029-12-31T23:00:00Z",
               "clientId":"CLIENT-ID","clientSecret":"CLIENT-SECRET",
               "registrationExpiresAt":"2030-03-01T00:00:00Z","refreshToken":"REFRESH-1"}"#,
        );
        let mut pairs = env(&s, "dev", &portal.url);
        pairs.push(("AWS_ENDPOINT_URL_SSO_OIDC", &oidc.url));
        let c = chain_with(&pairs).credentials().unwrap();
        assert_eq!(c.access_key_id(), "SSODEV");
        assert_eq!(oidc.hits(), 1);
        let saved: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(s.home.join(".aws/sso/cache").join(CORP_CACHE)).unwrap(),
        )
        .unwrap();
        assert_eq!(saved["accessToken"], "RENEWED-TOKEN");
        assert_eq!(saved["refreshToken"], "REFRESH-2");
        assert_eq!(saved["expiresAt"], "2030-01-01T08:00:00Z");
        assert_eq!(saved["clientSecret"], "CLIENT-SECRET");
        assert_eq!(saved["startUrl"], "https://corp.awsapps.com/start");
    }

    /// An OIDC server that renews `REFRESH-1` with the reply `body`.
    fn oidc_answering(body: &'static str) -> FakeServer {
        FakeServer::start(move |_| (200, body.to_string()))
    }

    /// A cache whose token expired and can be renewed.
    const RENEWABLE: &str = r#"{"accessToken":"OLD-TOKEN","expiresAt":"2029-12-31T23:00:00Z",
        "clientId":"CLIENT-ID","clientSecret":"CLIENT-SECRET",
        "registrationExpiresAt":"2030-03-01T00:00:00Z","refreshToken":"REFRESH-1"}"#;

    #[cfg(unix)]
    #[test]
    fn the_renewed_cache_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let portal = portal("RENEWED-TOKEN");
        let oidc = oidc_answering(r#"{"accessToken":"RENEWED-TOKEN","expiresIn":28800}"#);
        let s = setup(CORP_CACHE, RENEWABLE);
        let file = s.home.join(".aws/sso/cache").join(CORP_CACHE);
        // As `aws sso login` would leave it under a 0022 umask at worst.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut pairs = env(&s, "dev", &portal.url);
        pairs.push(("AWS_ENDPOINT_URL_SSO_OIDC", &oidc.url));
        chain_with(&pairs).credentials().unwrap();
        let saved = std::fs::read_to_string(&file).unwrap();
        assert!(saved.contains("RENEWED-TOKEN"), "the cache was renewed");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CORP_CACHE], "{names:?}");
    }

    #[test]
    fn an_out_of_range_expires_in_is_a_decode_error() {
        let portal = portal("RENEWED-TOKEN");
        let oidc =
            oidc_answering(r#"{"accessToken":"RENEWED-TOKEN","expiresIn":18446744073709551615}"#);
        let s = setup(CORP_CACHE, RENEWABLE);
        let mut pairs = env(&s, "dev", &portal.url);
        pairs.push(("AWS_ENDPOINT_URL_SSO_OIDC", &oidc.url));
        let m = expect_credentials_error(chain_with(&pairs).credentials());
        assert!(
            m.contains("renewing it failed")
                && m.contains("expiresIn 18446744073709551615 is out of range"),
            "{m}"
        );
        assert_eq!(portal.hits(), 0);
        for body in [
            r#"{"accessToken":"T","expiresIn":31536001}"#,
            r#"{"accessToken":"T","expiresIn":-1}"#,
            r#"{"accessToken":"T","expiresIn":1e300}"#,
        ] {
            assert!(
                matches!(
                    super::parse_create_token(body),
                    Err(crate::Error::Decode { .. })
                ),
                "{body}"
            );
        }
        let renewed = super::parse_create_token(r#"{"accessToken":"T","expiresIn":31536000}"#);
        assert_eq!(renewed.unwrap().expires_in, Duration::from_secs(31_536_000));
    }

    #[test]
    fn expired_token_without_refresh_is_one_clear_error_without_secrets() {
        let portal = portal("never");
        let s = setup(
            CORP_CACHE,
            r#"{"accessToken":"EXPIRED-TOKEN-VALUE","expiresAt":"2029-12-31T23:00:00Z",
               "clientSecret":"CLIENT-SECRET-VALUE"}"#,
        );
        let m = expect_credentials_error(chain_with(&env(&s, "dev", &portal.url)).credentials());
        assert!(
            m.contains("profile `dev` (SSO session `corp`)")
                && m.contains("expired at 2029-12-31T23:00:00Z")
                && m.contains("run `aws sso login --profile dev`"),
            "{m}"
        );
        assert!(
            !m.contains("EXPIRED-TOKEN-VALUE") && !m.contains("CLIENT-SECRET-VALUE"),
            "{m}"
        );
        assert_eq!(portal.hits(), 0);
    }

    #[test]
    fn missing_cache_bad_cache_and_refused_token() {
        let portal = portal("GOOD");
        let s = setup(CORP_CACHE, "{not json TOKEN-IN-BROKEN-FILE");
        let m = expect_credentials_error(chain_with(&env(&s, "dev", &portal.url)).credentials());
        assert!(
            m.contains("not valid JSON") && m.contains("aws sso login"),
            "{m}"
        );
        assert!(!m.contains("TOKEN-IN-BROKEN-FILE"), "{m}");
        let m = expect_credentials_error(chain_with(&env(&s, "legacy", &portal.url)).credentials());
        assert!(
            m.contains("no cached SSO token") && m.contains(LEGACY_CACHE),
            "{m}"
        );
        std::fs::write(
            s.home.join(".aws/sso/cache").join(CORP_CACHE),
            r#"{"accessToken":"REVOKED-TOKEN","expiresAt":"2030-01-01T08:00:00Z"}"#,
        )
        .unwrap();
        let m = expect_credentials_error(chain_with(&env(&s, "dev", &portal.url)).credentials());
        assert!(m.contains("refused the cached token (HTTP 401"), "{m}");
        assert!(!m.contains("REVOKED-TOKEN"), "{m}");
    }
}
