//! AWS credentials and the standard provider chain.
//!
//! [`DefaultCredentialsChain`] looks for credentials where the AWS SDKs and
//! the AWS CLI look, in the same order, and caches temporary credentials
//! until shortly before they expire.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::transport_error;
use super::endpoint::{Service, parse_url, region_from_env, resolve_endpoint_with};
use super::env::Env;
use crate::{Error, Result, ServiceError};

/// An access key, its secret, and for temporary credentials a session token
/// and expiry. `Debug` never prints the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    expires_at: Option<SystemTime>,
}

impl Credentials {
    /// Long-lived credentials: an access key id and its secret.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            expires_at: None,
        }
    }

    /// Adds a session token, as temporary credentials have.
    pub fn with_session_token(mut self, token: impl Into<String>) -> Credentials {
        self.session_token = Some(token.into());
        self
    }

    /// Sets when these credentials stop working.
    pub fn with_expiry(mut self, expires_at: SystemTime) -> Credentials {
        self.expires_at = Some(expires_at);
        self
    }

    /// The access key id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The session token of temporary credentials.
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }

    /// When these credentials expire, if they do.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Something that hands out credentials: the default chain, a fixed pair, or
/// your own source. Called before every request, so it must be cheap when
/// nothing needs refreshing.
pub trait ProvideCredentials: Send + Sync + fmt::Debug {
    /// Returns credentials that are valid now.
    fn credentials(&self) -> Result<Credentials>;
}

impl ProvideCredentials for Credentials {
    fn credentials(&self) -> Result<Credentials> {
        Ok(self.clone())
    }
}

/// Temporary credentials are refreshed this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Credentials without an expiry are looked up again after this long, so
/// that a rotated key in the environment or the files is picked up.
const STATIC_REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Fresh credentials are kept at least this long (unless they expire sooner),
/// so that a source handing out short-lived credentials is not asked again
/// on every request.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// After a failed refresh while the current credentials are still valid,
/// wait this long before trying again.
const RETRY_AFTER_FAILED_REFRESH: Duration = Duration::from_secs(10);

/// The ECS task credentials endpoint that relative URIs are joined to.
const ECS_CREDENTIALS_BASE: &str = "http://169.254.170.2";
/// The EC2 instance metadata service.
const IMDS_BASE_IPV4: &str = "http://169.254.169.254";
const IMDS_BASE_IPV6: &str = "http://[fd00:ec2::254]";
/// How long an IMDSv2 session token is requested for (6 hours).
const IMDS_TOKEN_TTL_SECONDS: &str = "21600";

/// A source of the current time, injectable for tests.
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The standard AWS credential provider chain, with caching.
///
/// Each time credentials are needed and the cached ones are missing or due
/// for refresh, the sources below are tried in order. The first source that
/// is *configured* is used; if it fails, its error is returned rather than
/// falling through to the next one, so a broken setup is reported instead of
/// being silently replaced by other credentials.
///
/// 1. Environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally
///    `AWS_SESSION_TOKEN`.
/// 2. Shared files: the profile named by [`profile`](Self::profile), else
///    `AWS_PROFILE`, else `default`, from `AWS_SHARED_CREDENTIALS_FILE`
///    (default `~/.aws/credentials`, sections `[name]`) and `AWS_CONFIG_FILE`
///    (default `~/.aws/config`, sections `[profile name]` and `[default]`);
///    the credentials file wins for keys set in both. A profile supplies
///    `aws_access_key_id`, `aws_secret_access_key` and optionally
///    `aws_session_token`, or `role_arn` with `web_identity_token_file` (and
///    optionally `role_session_name`). Profiles that assume a role from
///    another profile (`source_profile`), use SSO or `credential_process`
///    are reported as unsupported.
/// 3. Web identity: `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` (and
///    optionally `AWS_ROLE_SESSION_NAME`), exchanged with STS
///    `AssumeRoleWithWebIdentity` (as on EKS with IAM roles for service
///    accounts). The STS endpoint is `AWS_ENDPOINT_URL_STS`, else
///    `AWS_ENDPOINT_URL`, else the regional endpoint of the configured
///    region (default `us-east-1`).
/// 4. Container: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS) or
///    `AWS_CONTAINER_CREDENTIALS_FULL_URI` (EKS Pod Identity and others),
///    with the `Authorization` header taken from the file named by
///    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, else from
///    `AWS_CONTAINER_AUTHORIZATION_TOKEN`. A full URI must be `https`, or
///    `http` to a loopback address or to the ECS/EKS addresses
///    `169.254.170.2`, `169.254.170.23` or `fd00:ec2::23`.
/// 5. EC2 instance metadata (IMDSv2), unless `AWS_EC2_METADATA_DISABLED` is
///    `true`. The endpoint is `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
///    `http://169.254.169.254` (or `http://[fd00:ec2::254]` when
///    `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE` is `IPv6`). An unreachable
///    metadata service means "no credentials found"; its timeouts are short
///    so that this fails fast off EC2.
///
/// When nothing is found the error lists what was tried.
///
/// Caching: credentials are kept until 5 minutes before they expire
/// (credentials without an expiry are looked up again every 15 minutes).
/// Inside that window one caller refreshes while the others keep using the
/// cached credentials; only once they have expired do callers wait for the
/// refresh. If a refresh fails while the cached credentials are still valid,
/// they stay in use and a warning is logged.
///
/// `Debug` shows the cached access key id but never a secret.
pub struct DefaultCredentialsChain {
    env: Env,
    profile: Option<String>,
    clock: Clock,
    container_base: String,
    metadata_agent: ureq::Agent,
    sts_agent: ureq::Agent,
    cache: Mutex<Cache>,
    refreshed: Condvar,
}

#[derive(Default)]
struct Cache {
    entry: Option<Cached>,
    /// True while one caller is looking up new credentials.
    refreshing: bool,
    /// Counts finished refreshes, so that a caller waiting for one can tell
    /// when it is over.
    generation: u64,
    /// Why the last refresh failed, for callers that waited for it.
    last_error: Option<String>,
}

struct Cached {
    credentials: Credentials,
    source: &'static str,
    refresh_at: SystemTime,
}

impl Cached {
    fn new(credentials: Credentials, source: &'static str, now: SystemTime) -> Cached {
        let refresh_at = match credentials.expires_at() {
            None => now + STATIC_REFRESH_INTERVAL,
            Some(expiry) => expiry
                .checked_sub(REFRESH_BEFORE_EXPIRY)
                .unwrap_or(expiry)
                .max(now + MIN_REFRESH_INTERVAL)
                .min(expiry),
        };
        Cached {
            credentials,
            source,
            refresh_at,
        }
    }

    fn is_valid(&self, now: SystemTime) -> bool {
        self.credentials.expires_at().is_none_or(|e| now < e)
    }
}

impl Default for DefaultCredentialsChain {
    fn default() -> Self {
        DefaultCredentialsChain::new()
    }
}

impl DefaultCredentialsChain {
    /// A chain reading the process environment and the shared AWS files.
    /// Nothing is read until credentials are first asked for.
    pub fn new() -> DefaultCredentialsChain {
        DefaultCredentialsChain::with_env(Env::process(), Arc::new(SystemTime::now))
    }

    /// A chain with the given environment and clock.
    pub(crate) fn with_env(env: Env, clock: Clock) -> DefaultCredentialsChain {
        DefaultCredentialsChain {
            env,
            profile: None,
            clock,
            container_base: ECS_CREDENTIALS_BASE.to_string(),
            metadata_agent: http_agent(Duration::from_secs(1), Duration::from_secs(3), false),
            sts_agent: http_agent(Duration::from_secs(3), Duration::from_secs(10), true),
            cache: Mutex::new(Cache::default()),
            refreshed: Condvar::new(),
        }
    }

    /// Uses this profile of the shared config and credentials files.
    /// Defaults to `AWS_PROFILE`, else `default`.
    pub fn profile(mut self, name: impl Into<String>) -> DefaultCredentialsChain {
        self.profile = Some(name.into());
        self
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A panic elsewhere cannot leave the cache inconsistent: every
        // update is a single assignment.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks the credentials up through the chain, without the cache.
    fn resolve(&self) -> Result<(Credentials, &'static str)> {
        type Source = fn(&DefaultCredentialsChain) -> Result<Outcome>;
        let sources: [(&'static str, Source); 5] = [
            (
                "environment variables",
                DefaultCredentialsChain::source_environment,
            ),
            (
                "shared config files",
                DefaultCredentialsChain::source_profile,
            ),
            (
                "web identity token",
                DefaultCredentialsChain::source_web_identity,
            ),
            (
                "container credentials",
                DefaultCredentialsChain::source_container,
            ),
            (
                "EC2 instance metadata",
                DefaultCredentialsChain::source_imds,
            ),
        ];
        let mut tried = Vec::new();
        for (name, source) in sources {
            let outcome = source(self).map_err(|e| match e {
                // Say what was tried before the source that failed, too
                // (service and transport errors keep their own type).
                Error::Credentials(why) => {
                    let mut tried = tried.clone();
                    tried.push(format!("{name} (failed: {why})"));
                    Error::Credentials(format!("none usable; tried {}", tried.join(", ")))
                }
                other => other,
            })?;
            match outcome {
                Outcome::Found(credentials) => {
                    log::debug!(
                        "loaded AWS credentials for access key {} from {name}",
                        credentials.access_key_id()
                    );
                    return Ok((credentials, name));
                }
                Outcome::NotConfigured(why) => tried.push(format!("{name} ({why})")),
            }
        }
        Err(Error::Credentials(format!(
            "none found; tried {}",
            tried.join(", ")
        )))
    }

    /// Ends a refresh: stores its result and wakes the callers waiting for it.
    fn finish_refresh(&self, result: Result<(Credentials, &'static str)>) -> Result<Credentials> {
        let now = (self.clock)();
        let mut cache = self.lock();
        cache.refreshing = false;
        cache.generation = cache.generation.wrapping_add(1);
        self.refreshed.notify_all();
        match result {
            Ok((credentials, source)) => {
                cache.last_error = None;
                cache.entry = Some(Cached::new(credentials.clone(), source, now));
                Ok(credentials)
            }
            Err(e) => {
                if let Some(entry) = cache.entry.as_mut() {
                    if entry.is_valid(now) {
                        let expiry = entry.credentials.expires_at();
                        log::warn!(
                            "could not refresh AWS credentials (still using those from {} \
                             for access key {}, valid until {}): {e}",
                            entry.source,
                            entry.credentials.access_key_id(),
                            expiry.map_or_else(
                                || "revoked".to_string(),
                                |t| crate::time::format_rfc3339(t, false)
                            ),
                        );
                        let retry = now + RETRY_AFTER_FAILED_REFRESH;
                        entry.refresh_at = expiry.map_or(retry, |x| retry.min(x));
                        return Ok(entry.credentials.clone());
                    }
                }
                cache.entry = None;
                cache.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    // ---- the sources ----

    fn source_environment(&self) -> Result<Outcome> {
        let id = self.env.get("AWS_ACCESS_KEY_ID");
        let secret = self.env.get("AWS_SECRET_ACCESS_KEY");
        match (id, secret) {
            (Some(id), Some(secret)) => {
                let mut credentials = Credentials::new(id, secret);
                if let Some(token) = self.env.get("AWS_SESSION_TOKEN") {
                    credentials = credentials.with_session_token(token);
                }
                Ok(Outcome::Found(credentials))
            }
            (Some(_), None) => Err(Error::Credentials(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
            )),
            (None, Some(_)) => Err(Error::Credentials(
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
            )),
            (None, None) => Ok(Outcome::NotConfigured("AWS_ACCESS_KEY_ID not set".into())),
        }
    }

    fn source_profile(&self) -> Result<Outcome> {
        let explicit = self.profile.clone().or_else(|| self.env.get("AWS_PROFILE"));
        let name = explicit.clone().unwrap_or_else(|| "default".to_string());
        let files = || {
            let show = |p: Option<PathBuf>| {
                p.map_or_else(|| "(no home directory)".into(), |p| p.display().to_string())
            };
            format!(
                "{} and {}",
                show(self.env.credentials_file()),
                show(self.env.config_file())
            )
        };
        let profile = match self.env.load_profile(&name).map_err(Error::Credentials)? {
            Some(profile) => profile,
            None if explicit.is_some() => {
                return Err(Error::Credentials(format!(
                    "profile `{name}` was asked for but is not in {}",
                    files()
                )));
            }
            None => {
                return Ok(Outcome::NotConfigured(format!(
                    "no profile `{name}` in {}",
                    files()
                )));
            }
        };
        let whence = format!("profile `{name}` in {}", profile.describe_files());

        if let Some(role_arn) = profile.get("role_arn") {
            if let Some(token_file) = profile.get("web_identity_token_file") {
                let token_file = self.env.expand_path(token_file).ok_or_else(|| {
                    Error::Credentials(format!(
                        "{whence}: web_identity_token_file {token_file:?} needs a home directory"
                    ))
                })?;
                return self
                    .assume_role_with_web_identity(
                        role_arn,
                        &token_file,
                        profile.get("role_session_name"),
                    )
                    .map(Outcome::Found);
            }
            return Err(Error::Credentials(format!(
                "{whence} sets role_arn without web_identity_token_file; assuming a role \
                 from source_profile or credential_source is not supported by this crate"
            )));
        }
        let id = profile.get("aws_access_key_id");
        let secret = profile.get("aws_secret_access_key");
        match (id, secret) {
            (Some(id), Some(secret)) => {
                let mut credentials = Credentials::new(id, secret);
                if let Some(token) = profile.get("aws_session_token") {
                    credentials = credentials.with_session_token(token);
                }
                return Ok(Outcome::Found(credentials));
            }
            (Some(_), None) => {
                return Err(Error::Credentials(format!(
                    "{whence} has aws_access_key_id but no aws_secret_access_key"
                )));
            }
            (None, Some(_)) => {
                return Err(Error::Credentials(format!(
                    "{whence} has aws_secret_access_key but no aws_access_key_id"
                )));
            }
            (None, None) => {}
        }
        const UNSUPPORTED: &[&str] = &[
            "credential_process",
            "sso_session",
            "sso_start_url",
            "source_profile",
            "credential_source",
        ];
        if let Some(key) = UNSUPPORTED.iter().find(|k| profile.get(k).is_some()) {
            return Err(Error::Credentials(format!(
                "{whence} uses {key}, which this crate does not support; \
                 export the credentials to the environment instead"
            )));
        }
        Ok(Outcome::NotConfigured(format!(
            "{whence} has no credentials"
        )))
    }

    fn source_web_identity(&self) -> Result<Outcome> {
        let token_file = self.env.get("AWS_WEB_IDENTITY_TOKEN_FILE");
        let role_arn = self.env.get("AWS_ROLE_ARN");
        match (token_file, role_arn) {
            (Some(token_file), Some(role_arn)) => {
                let token_file = self.env.expand_path(&token_file).ok_or_else(|| {
                    Error::Credentials(format!(
                        "AWS_WEB_IDENTITY_TOKEN_FILE {token_file:?} needs a home directory"
                    ))
                })?;
                let session = self.env.get("AWS_ROLE_SESSION_NAME");
                self.assume_role_with_web_identity(&role_arn, &token_file, session.as_deref())
                    .map(Outcome::Found)
            }
            (Some(_), None) => Err(Error::Credentials(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not".into(),
            )),
            (None, _) => Ok(Outcome::NotConfigured(
                "AWS_WEB_IDENTITY_TOKEN_FILE not set".into(),
            )),
        }
    }

    /// STS `AssumeRoleWithWebIdentity`: an unsigned Query-protocol POST.
    fn assume_role_with_web_identity(
        &self,
        role_arn: &str,
        token_file: &std::path::Path,
        session_name: Option<&str>,
    ) -> Result<Credentials> {
        const OPERATION: &str = "STS.AssumeRoleWithWebIdentity";
        let token = self.env.read_file(token_file).map_err(|e| {
            Error::Credentials(format!(
                "cannot read the web identity token file {}: {e}",
                token_file.display()
            ))
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::Credentials(format!(
                "the web identity token file {} is empty",
                token_file.display()
            )));
        }
        let region = region_from_env(&self.env)?.unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = resolve_endpoint_with(Service::Sts, None, &region, &self.env)?;
        let session_name = match session_name {
            Some(name) => name.to_string(),
            None => format!("kinesis-consumer-{}", unix_millis((self.clock)())),
        };
        let body = form_encode(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role_arn),
            ("RoleSessionName", &session_name),
            ("WebIdentityToken", token),
        ]);
        let url = format!("{}/", endpoint.url());
        log::debug!("assuming role {role_arn} with a web identity token at {url}");
        let response = self
            .sts_agent
            .post(&url)
            .content_type("application/x-www-form-urlencoded; charset=utf-8")
            .header("Accept", "text/xml")
            .send(body.as_str());
        let reply = read_reply(response).map_err(|e| transport_error(OPERATION, &url, e))?;
        if reply.status != 200 {
            let code = xml_text(&reply.body, "Code").unwrap_or_default();
            let message =
                xml_text(&reply.body, "Message").unwrap_or_else(|| describe_body(&reply.body));
            return Err(Error::Service(ServiceError {
                operation: OPERATION,
                code,
                message,
                status: reply.status,
                request_id: reply
                    .request_id
                    .or_else(|| xml_text(&reply.body, "RequestId")),
            }));
        }
        let field = |name: &str| {
            xml_text(&reply.body, name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Decode {
                    operation: OPERATION,
                    message: format!("no {name} in the response"),
                })
        };
        let expiration = field("Expiration")?;
        let expires_at = crate::time::parse_iso8601(&expiration).ok_or_else(|| Error::Decode {
            operation: OPERATION,
            message: format!("Expiration {expiration:?} is not an ISO 8601 time"),
        })?;
        Ok(
            Credentials::new(field("AccessKeyId")?, field("SecretAccessKey")?)
                .with_session_token(field("SessionToken")?)
                .with_expiry(expires_at),
        )
    }

    fn source_container(&self) -> Result<Outcome> {
        const OPERATION: &str = "ContainerCredentials";
        let url = if let Some(relative) = self.env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            let slash = if relative.starts_with('/') { "" } else { "/" };
            format!("{}{slash}{relative}", self.container_base)
        } else if let Some(full) = self.env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            check_container_full_uri(&full)?;
            full
        } else {
            return Ok(Outcome::NotConfigured(
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and _FULL_URI not set".into(),
            ));
        };
        let token = if let Some(file) = self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            let path = self
                .env
                .expand_path(&file)
                .unwrap_or_else(|| PathBuf::from(&file));
            let token = self.env.read_file(&path).map_err(|e| {
                Error::Credentials(format!(
                    "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {}: {e}",
                    path.display()
                ))
            })?;
            Some(token.trim().to_string())
        } else {
            self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        };
        if token.as_deref().is_some_and(|t| t.contains(['\r', '\n'])) {
            return Err(Error::Credentials(
                "the container authorization token contains a line break".into(),
            ));
        }
        let mut request = self
            .metadata_agent
            .get(&url)
            .header("Accept", "application/json");
        if let Some(token) = token.as_deref().filter(|t| !t.is_empty()) {
            request = request.header("Authorization", token);
        }
        let reply = read_reply(request.call()).map_err(|e| transport_error(OPERATION, &url, e))?;
        if reply.status != 200 {
            return Err(Error::Credentials(format!(
                "the container credentials endpoint {url} answered HTTP {}: {}",
                reply.status,
                json_error_message(&reply.body)
            )));
        }
        parse_json_credentials(&reply.body, "Token", OPERATION).map(Outcome::Found)
    }

    fn source_imds(&self) -> Result<Outcome> {
        const OPERATION: &str = "EC2InstanceMetadata";
        if self.env.is_true("AWS_EC2_METADATA_DISABLED") {
            return Ok(Outcome::NotConfigured(
                "disabled by AWS_EC2_METADATA_DISABLED".into(),
            ));
        }
        let base = match self.env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => match self.env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
                Some(mode) if mode.eq_ignore_ascii_case("ipv6") => IMDS_BASE_IPV6.to_string(),
                _ => IMDS_BASE_IPV4.to_string(),
            },
        };
        let token_response = self
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
                describe_body(&reply.body)
            ))
        };
        if reply.status != 200 {
            return Err(failed("the IMDSv2 token request", &reply));
        }
        let token = reply.body.trim().to_string();
        let get = |path: &str| {
            read_reply(
                self.metadata_agent
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
}

impl ProvideCredentials for DefaultCredentialsChain {
    fn credentials(&self) -> Result<Credentials> {
        let mut cache = self.lock();
        let mut waited_on: Option<u64> = None;
        loop {
            let now = (self.clock)();
            if let Some(entry) = &cache.entry {
                if entry.is_valid(now) {
                    if now < entry.refresh_at || cache.refreshing {
                        return Ok(entry.credentials.clone());
                    }
                    // Due for refresh and nobody is at it: this caller does
                    // it, while others keep using the cached credentials.
                    break;
                }
            }
            if let Some(generation) = waited_on {
                if generation != cache.generation && !cache.refreshing {
                    // The refresh we waited for failed.
                    let why = cache.last_error.clone().unwrap_or_default();
                    return Err(Error::Credentials(format!("refresh failed: {why}")));
                }
            }
            if !cache.refreshing {
                break;
            }
            waited_on = Some(cache.generation);
            cache = self
                .refreshed
                .wait(cache)
                .unwrap_or_else(|p| p.into_inner());
        }
        cache.refreshing = true;
        drop(cache);

        // If the lookup panics, clear the flag so that waiters do not hang.
        struct Reset<'a>(&'a DefaultCredentialsChain, bool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                if self.1 {
                    let mut cache = self.0.lock();
                    cache.refreshing = false;
                    cache.generation = cache.generation.wrapping_add(1);
                    cache.last_error = Some("the credential lookup panicked".into());
                    self.0.refreshed.notify_all();
                }
            }
        }
        let mut reset = Reset(self, true);
        let result = self.resolve();
        reset.1 = false;
        self.finish_refresh(result)
    }
}

impl fmt::Debug for DefaultCredentialsChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("DefaultCredentialsChain");
        s.field("profile", &self.profile);
        match self.cache.try_lock() {
            Ok(cache) => {
                let cached = cache.entry.as_ref().map(|e| {
                    (
                        e.source,
                        e.credentials.access_key_id().to_string(),
                        e.credentials.expires_at(),
                    )
                });
                s.field("cached", &cached);
            }
            Err(_) => {
                s.field("cached", &"<busy>");
            }
        }
        s.finish_non_exhaustive()
    }
}

/// What one source of the chain found.
enum Outcome {
    Found(Credentials),
    /// The source is not set up here; the reason goes into the final error.
    NotConfigured(String),
}

/// Checks that `AWS_CONTAINER_CREDENTIALS_FULL_URI` may be sent a token:
/// `https`, or `http` to loopback or the ECS/EKS link-local addresses.
fn check_container_full_uri(uri: &str) -> Result<()> {
    const SETTING: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
    let parsed = parse_url(uri).map_err(|reason| Error::config(SETTING, reason))?;
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
                "{uri:?} is not allowed: an http:// URL must point at a loopback address \
                 (127.0.0.0/8, [::1], localhost) or at 169.254.170.2, 169.254.170.23 or \
                 [fd00:ec2::23]; use https:// for any other host"
            ),
        ))
    }
}

/// An HTTP client for the credential endpoints. Statuses are not errors;
/// redirects are not followed. Metadata endpoints never go through a proxy.
fn http_agent(connect: Duration, total: Duration, env_proxy: bool) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(connect))
        .timeout_global(Some(total));
    if !env_proxy {
        config = config.proxy(None);
    }
    config.build().new_agent()
}

/// A response read into memory.
struct Reply {
    status: u16,
    body: String,
    request_id: Option<String>,
}

fn read_reply(
    response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> std::result::Result<Reply, ureq::Error> {
    let mut response = response?;
    let status = response.status().as_u16();
    let request_id = ["x-amzn-requestid", "x-amz-request-id"]
        .iter()
        .find_map(|h| response.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .lossy_utf8(true)
        .read_to_string()?;
    Ok(Reply {
        status,
        body,
        request_id,
    })
}

/// A short, safe description of an error body for messages.
fn describe_body(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".into();
    }
    let mut short: String = body.chars().take(200).collect();
    if short.len() < body.len() {
        short.push('…');
    }
    short
}

/// The `message` (or `Message`) of a JSON error body, else the body itself.
fn json_error_message(body: &str) -> String {
    let value: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let get = |k: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    match (
        get("code").or_else(|| get("Code")),
        get("message").or_else(|| get("Message")),
    ) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (None, Some(message)) => message,
        (Some(code), None) => code,
        (None, None) => describe_body(body),
    }
}

/// Credentials from the JSON the container and instance metadata endpoints
/// return: `AccessKeyId`, `SecretAccessKey`, the token field, `Expiration`.
fn parse_json_credentials(
    body: &str,
    token_field: &str,
    operation: &'static str,
) -> Result<Credentials> {
    let decode = |message: String| Error::Decode { operation, message };
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| decode(format!("invalid JSON: {e}")))?;
    let field = |name: &str| -> Option<&str> {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(code) = field("Code") {
        if code != "Success" {
            return Err(Error::Credentials(format!(
                "{operation} answered Code {code:?}: {}",
                field("Message").unwrap_or("no message")
            )));
        }
    }
    let required =
        |name: &str| field(name).ok_or_else(|| decode(format!("no {name} in the response")));
    let mut credentials = Credentials::new(required("AccessKeyId")?, required("SecretAccessKey")?);
    if let Some(token) = field(token_field) {
        credentials = credentials.with_session_token(token);
    }
    if let Some(expiration) = field("Expiration") {
        let expires_at = crate::time::parse_iso8601(expiration)
            .ok_or_else(|| decode(format!("Expiration {expiration:?} is not an ISO 8601 time")))?;
        credentials = credentials.with_expiry(expires_at);
    }
    Ok(credentials)
}

/// `application/x-www-form-urlencoded` with every byte but the unreserved
/// ones (`A-Z a-z 0-9 - _ . ~`) percent-encoded.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn encode(out: &mut String, s: &str) {
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(&mut out, key);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

/// The text of the first element named `tag` (attributes allowed), with
/// the XML entities decoded. Enough for the flat STS responses.
fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}");
    let mut from = 0;
    let content_start = loop {
        let at = from + doc[from..].find(&open)?;
        let after = at + open.len();
        match doc[after..].chars().next()? {
            '>' => break after + 1,
            c if c.is_whitespace() || c == '/' => {
                let gt = after + doc[after..].find('>')?;
                if doc[..gt].ends_with('/') {
                    return Some(String::new());
                }
                break gt + 1;
            }
            _ => from = after,
        }
    };
    let close = format!("</{tag}>");
    let len = doc[content_start..].find(&close)?;
    Some(xml_unescape(doc[content_start..content_start + len].trim()))
}

fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').and_then(|semi| {
            let entity = &rest[1..semi];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let code = if let Some(hex) = entity
                        .strip_prefix("#x")
                        .or_else(|| entity.strip_prefix("#X"))
                    {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        entity.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    code.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, used)) => {
                out.push(c);
                rest = &rest[used..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn unix_millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::super::env::test_support::temp_dir;
    use super::super::test_server::FakeServer;
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// 2030-01-01T00:00:00Z.
    const T0: u64 = 1_893_456_000;

    fn clock_at(secs: &Arc<AtomicU64>) -> Clock {
        let secs = secs.clone();
        Arc::new(move || UNIX_EPOCH + Duration::from_secs(secs.load(Ordering::SeqCst)))
    }

    fn chain(pairs: &[(&str, &str)]) -> DefaultCredentialsChain {
        chain_at(pairs, &Arc::new(AtomicU64::new(T0)))
    }

    fn chain_at(pairs: &[(&str, &str)], secs: &Arc<AtomicU64>) -> DefaultCredentialsChain {
        // Keep the tests away from the real home directory and metadata.
        let mut all: Vec<(&str, &str)> = vec![
            ("HOME", "/nonexistent/kinesis-consumer-home"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        all.extend_from_slice(pairs);
        DefaultCredentialsChain::with_env(Env::from_pairs(&all), clock_at(secs))
    }

    fn creds_json(key: &str, expiration: &str) -> String {
        format!(
            r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{key}",
               "SecretAccessKey":"secret-{key}","Token":"token-{key}",
               "Expiration":"{expiration}","RoleArn":"arn:aws:iam::1:role/r"}}"#
        )
    }

    fn expect_credentials_error(result: Result<Credentials>) -> String {
        match result {
            Err(Error::Credentials(m)) => m,
            other => panic!("expected a credentials error, got {other:?}"),
        }
    }

    // ---- environment and profiles ----

    #[test]
    fn environment_credentials() {
        let c = chain(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_SESSION_TOKEN", "TOKEN"),
        ])
        .credentials()
        .unwrap();
        assert_eq!(c.access_key_id(), "AKID");
        assert_eq!(c.secret_access_key(), "SECRET");
        assert_eq!(c.session_token(), Some("TOKEN"));
        assert_eq!(c.expires_at(), None);
    }

    #[test]
    fn half_set_environment_is_an_error() {
        let m = expect_credentials_error(chain(&[("AWS_ACCESS_KEY_ID", "AKID")]).credentials());
        assert!(m.contains("AWS_SECRET_ACCESS_KEY"), "{m}");
        let m = expect_credentials_error(chain(&[("AWS_SECRET_ACCESS_KEY", "S")]).credentials());
        assert!(m.contains("AWS_ACCESS_KEY_ID"), "{m}");
    }

    fn write_files(config: &str, credentials: &str) -> (PathBuf, PathBuf) {
        let dir = temp_dir("creds");
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("credentials"), credentials).unwrap();
        (dir.join("config"), dir.join("credentials"))
    }

    #[test]
    fn environment_beats_shared_files() {
        let (config, creds) = write_files(
            "",
            "[default]\naws_access_key_id = FILE\naws_secret_access_key = S\n",
        );
        let files = [
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
        ];
        let mut with_env = files.to_vec();
        with_env.extend([("AWS_ACCESS_KEY_ID", "ENV"), ("AWS_SECRET_ACCESS_KEY", "S")]);
        assert_eq!(
            chain(&with_env).credentials().unwrap().access_key_id(),
            "ENV"
        );
        assert_eq!(chain(&files).credentials().unwrap().access_key_id(), "FILE");
    }

    #[test]
    fn profile_selection_and_merging() {
        let (config, creds) = write_files(
            "[default]\nregion = us-east-1\n\
             [profile dev]\naws_access_key_id = CONFIG_DEV\naws_secret_access_key = CONFIG_S\n\
             [profile cfgonly]\naws_access_key_id = ONLY\naws_secret_access_key = ONLY_S\naws_session_token = ONLY_T\n",
            "# comment\n[dev]\n  aws_access_key_id=CREDS_DEV ; note\n\n[default]\naws_access_key_id = D\naws_secret_access_key = DS\n",
        );
        let files = [
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
        ];
        assert_eq!(chain(&files).credentials().unwrap().access_key_id(), "D");

        let mut dev = files.to_vec();
        dev.push(("AWS_PROFILE", "dev"));
        let c = chain(&dev).credentials().unwrap();
        // The credentials file wins key by key; the secret comes from config.
        assert_eq!(c.access_key_id(), "CREDS_DEV");
        assert_eq!(c.secret_access_key(), "CONFIG_S");

        let c = chain(&dev).profile("cfgonly").credentials().unwrap();
        assert_eq!(c.access_key_id(), "ONLY");
        assert_eq!(c.session_token(), Some("ONLY_T"));
    }

    #[test]
    fn missing_explicit_profile_is_an_error() {
        let (config, creds) = write_files(
            "",
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n",
        );
        let env = [
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_PROFILE", "prod"),
        ];
        let m = expect_credentials_error(chain(&env).credentials());
        assert!(m.contains("profile `prod`"), "{m}");
    }

    #[test]
    fn broken_and_unsupported_profiles_are_errors() {
        for (text, expected) in [
            (
                "[default]\naws_access_key_id = A\n",
                "no aws_secret_access_key",
            ),
            (
                "[default]\naws_secret_access_key = S\n",
                "no aws_access_key_id",
            ),
            (
                "[default]\ncredential_process = /bin/creds\n",
                "credential_process",
            ),
            ("[default]\nsso_session = corp\n", "sso_session"),
            (
                "[default]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = base\n",
                "source_profile",
            ),
        ] {
            let (config, creds) = write_files("", text);
            let env = [
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ];
            let m = expect_credentials_error(chain(&env).credentials());
            assert!(m.contains(expected), "{m}");
        }
    }

    #[test]
    fn nothing_found_lists_what_was_tried() {
        let (config, creds) = write_files("[default]\nregion = eu-west-1\n", "");
        let env = [
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
        ];
        let m = expect_credentials_error(chain(&env).credentials());
        for part in [
            "environment variables (AWS_ACCESS_KEY_ID not set)",
            "has no credentials",
            "AWS_WEB_IDENTITY_TOKEN_FILE not set",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "disabled by AWS_EC2_METADATA_DISABLED",
        ] {
            assert!(m.contains(part), "{part:?} missing from {m}");
        }
    }

    // ---- web identity ----

    const STS_OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
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

    fn token_file(contents: &str) -> PathBuf {
        let path = temp_dir("token").join("token");
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn web_identity_from_environment() {
        let sts = FakeServer::start(|_| (200, STS_OK.to_string()));
        let token = token_file("eyJ.token+/=\n");
        let c = chain(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/my role"),
            ("AWS_ROLE_SESSION_NAME", "sess-1"),
            ("AWS_ENDPOINT_URL_STS", &sts.url),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ])
        .credentials()
        .unwrap();
        assert_eq!(c.access_key_id(), "ASIASTS");
        assert_eq!(c.secret_access_key(), "wJalr/secret+key");
        assert_eq!(c.session_token(), Some("FwoG&token/+="));
        assert_eq!(
            c.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(T0 + 3600))
        );

        let requests = sts.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"));
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/x-www-form-urlencoded")
        );
        assert!(r.header("authorization").is_none(), "must be unsigned");
        assert!(r.body.contains("role%2Fmy%20role"), "{}", r.body);
        let form = r.form();
        assert_eq!(form["Action"], "AssumeRoleWithWebIdentity");
        assert_eq!(form["Version"], "2011-06-15");
        assert_eq!(form["RoleArn"], "arn:aws:iam::123456789012:role/my role");
        assert_eq!(form["RoleSessionName"], "sess-1");
        assert_eq!(form["WebIdentityToken"], "eyJ.token+/=");
    }

    #[test]
    fn web_identity_from_profile_with_generic_endpoint() {
        let sts = FakeServer::start(|_| (200, STS_OK.to_string()));
        let token = token_file("tok");
        let (config, creds) = write_files(
            &format!(
                "[profile eks]\nrole_arn = arn:aws:iam::1:role/r\nweb_identity_token_file = {}\n",
                token.display()
            ),
            "",
        );
        let c = chain(&[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_PROFILE", "eks"),
            ("AWS_ENDPOINT_URL", &sts.url),
        ])
        .credentials()
        .unwrap();
        assert_eq!(c.access_key_id(), "ASIASTS");
        let form = sts.requests()[0].form();
        assert_eq!(form["WebIdentityToken"], "tok");
        assert!(form["RoleSessionName"].starts_with("kinesis-consumer-"));
    }

    #[test]
    fn web_identity_beats_container() {
        let sts = FakeServer::start(|_| (200, STS_OK.to_string()));
        let container =
            FakeServer::start(|_| (200, creds_json("CONTAINER", "2030-01-01T06:00:00Z")));
        let token = token_file("tok");
        let full = format!("{}/creds", container.url);
        let c = chain(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_ENDPOINT_URL_STS", &sts.url),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full),
        ])
        .credentials()
        .unwrap();
        assert_eq!(c.access_key_id(), "ASIASTS");
        assert_eq!(container.hits(), 0);
    }

    #[test]
    fn sts_error_is_a_service_error() {
        let sts = FakeServer::start(|_| {
            (
                400,
                "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>\
                 <Message>Token &lt;expired&gt;</Message></Error><RequestId>r-9</RequestId></ErrorResponse>"
                    .to_string(),
            )
        });
        let token = token_file("tok");
        let err = chain(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_ENDPOINT_URL_STS", &sts.url),
        ])
        .credentials()
        .unwrap_err();
        match err {
            Error::Service(e) => {
                assert_eq!(e.operation, "STS.AssumeRoleWithWebIdentity");
                assert_eq!(e.code, "InvalidIdentityToken");
                assert_eq!(e.message, "Token <expired>");
                assert_eq!(e.status, 400);
                assert_eq!(e.request_id.as_deref(), Some("req-1"));
            }
            other => panic!("expected a service error, got {other:?}"),
        }
    }

    #[test]
    fn web_identity_misconfigurations() {
        let m = expect_credentials_error(
            chain(&[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token"),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ])
            .credentials(),
        );
        assert!(m.contains("/nonexistent/token"), "{m}");
        let m = expect_credentials_error(
            chain(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token")]).credentials(),
        );
        assert!(m.contains("AWS_ROLE_ARN"), "{m}");
        let empty = token_file("  \n");
        let m = expect_credentials_error(
            chain(&[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", empty.to_str().unwrap()),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ])
            .credentials(),
        );
        assert!(m.contains("empty"), "{m}");
    }

    // ---- container ----

    #[test]
    fn container_relative_uri() {
        let server = FakeServer::start(|_| (200, creds_json("REL", "2030-01-01T06:00:00Z")));
        let mut c = chain(&[(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/7e1c-uuid",
        )]);
        c.container_base = server.url.clone();
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

    // ---- instance metadata ----

    fn imds_server(fail_creds: Arc<AtomicBool>) -> FakeServer {
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

    // ---- caching ----

    #[test]
    fn expiring_credentials_are_refreshed() {
        let server = imds_server(Arc::new(AtomicBool::new(false)));
        let secs = Arc::new(AtomicU64::new(T0));
        let c = chain_at(
            &[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &server.url),
            ],
            &secs,
        );
        c.credentials().unwrap();
        assert_eq!(server.hits(), 3);
        // 54 minutes later (expiry at 60): still cached.
        secs.store(T0 + 54 * 60, Ordering::SeqCst);
        c.credentials().unwrap();
        assert_eq!(server.hits(), 3);
        // Inside the 5-minute window: refreshed.
        secs.store(T0 + 56 * 60, Ordering::SeqCst);
        c.credentials().unwrap();
        assert_eq!(server.hits(), 6);
    }

    #[test]
    fn static_credentials_are_cached() {
        let (config, creds) = write_files(
            "",
            "[default]\naws_access_key_id = A\naws_secret_access_key = S\n",
        );
        let secs = Arc::new(AtomicU64::new(T0));
        let c = chain_at(
            &[
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ],
            &secs,
        );
        assert_eq!(c.credentials().unwrap().access_key_id(), "A");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = B\naws_secret_access_key = S\n",
        )
        .unwrap();
        assert_eq!(c.credentials().unwrap().access_key_id(), "A");
        secs.store(T0 + 16 * 60, Ordering::SeqCst);
        assert_eq!(c.credentials().unwrap().access_key_id(), "B");
    }

    #[test]
    fn failed_refresh_keeps_valid_credentials() {
        let fail = Arc::new(AtomicBool::new(false));
        let server = imds_server(fail.clone());
        let secs = Arc::new(AtomicU64::new(T0));
        let c = chain_at(
            &[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &server.url),
            ],
            &secs,
        );
        let first = c.credentials().unwrap();
        fail.store(true, Ordering::SeqCst);
        secs.store(T0 + 57 * 60, Ordering::SeqCst);
        assert_eq!(c.credentials().unwrap(), first);
        assert_eq!(server.hits(), 6, "a refresh was attempted");
        // The next attempt waits a little rather than hammering the source.
        assert_eq!(c.credentials().unwrap(), first);
        assert_eq!(server.hits(), 6);
        secs.store(T0 + 57 * 60 + 11, Ordering::SeqCst);
        assert_eq!(c.credentials().unwrap(), first);
        assert_eq!(server.hits(), 9);
        // Once expired, the failure surfaces.
        secs.store(T0 + 61 * 60, Ordering::SeqCst);
        let err = c.credentials().unwrap_err();
        assert!(err.to_string().contains("HTTP 500"), "{err}");
        // And recovery works.
        fail.store(false, Ordering::SeqCst);
        assert_eq!(c.credentials().unwrap().access_key_id(), "IMDS");
    }

    /// A container endpoint that holds each request until released.
    struct Gate {
        released: Mutex<bool>,
        cond: Condvar,
    }

    fn gated_container(
        expiry: &'static str,
    ) -> (FakeServer, Arc<Gate>, crossbeam_channel::Receiver<()>) {
        let gate = Arc::new(Gate {
            released: Mutex::new(true),
            cond: Condvar::new(),
        });
        let (arrived_tx, arrived_rx) = crossbeam_channel::unbounded();
        let g = gate.clone();
        let count = Arc::new(AtomicU64::new(0));
        let server = FakeServer::start(move |_| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let _ = arrived_tx.send(());
            let mut released = g.released.lock().unwrap();
            while !*released {
                released = g.cond.wait(released).unwrap();
            }
            (200, creds_json(&format!("KEY{n}"), expiry))
        });
        (server, gate, arrived_rx)
    }

    fn set_gate(gate: &Gate, open: bool) {
        *gate.released.lock().unwrap() = open;
        gate.cond.notify_all();
    }

    #[test]
    fn refresh_window_does_not_block_other_callers() {
        let (server, gate, arrived) = gated_container("2030-01-01T01:00:00Z");
        let secs = Arc::new(AtomicU64::new(T0));
        let full = format!("{}/creds", server.url);
        let c = Arc::new(chain_at(
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full)],
            &secs,
        ));
        assert_eq!(c.credentials().unwrap().access_key_id(), "KEY0");
        arrived.recv().unwrap();

        set_gate(&gate, false);
        secs.store(T0 + 56 * 60, Ordering::SeqCst);
        let refresher = {
            let c = c.clone();
            std::thread::spawn(move || c.credentials().unwrap())
        };
        arrived.recv().unwrap(); // the refresh is in flight, held by the gate
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            let c = c.clone();
            std::thread::spawn(move || tx.send(c.credentials().unwrap()).unwrap());
        }
        let other = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a caller blocked behind the refresh");
        assert_eq!(other.access_key_id(), "KEY0");
        set_gate(&gate, true);
        assert_eq!(refresher.join().unwrap().access_key_id(), "KEY1");
        assert_eq!(c.credentials().unwrap().access_key_id(), "KEY1");
        assert_eq!(server.hits(), 2);
    }

    #[test]
    fn expired_credentials_make_callers_wait_for_one_refresh() {
        let (server, gate, arrived) = gated_container("2030-01-01T01:00:00Z");
        let secs = Arc::new(AtomicU64::new(T0));
        let full = format!("{}/creds", server.url);
        let c = Arc::new(chain_at(
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full)],
            &secs,
        ));
        set_gate(&gate, false);
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.credentials().unwrap())
            })
            .collect();
        arrived.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        set_gate(&gate, true);
        for caller in callers {
            assert_eq!(caller.join().unwrap().access_key_id(), "KEY0");
        }
        assert_eq!(server.hits(), 1, "only one caller refreshed");
    }

    // ---- redaction and helpers ----

    #[test]
    fn credential_errors_never_show_secrets() {
        const SECRET: &str = "SECRET-VALUE-41d7";
        const TOKEN: &str = "TOKEN-VALUE-8be2";
        let mut shown = Vec::new();
        // Half-set environment and a profile with a secret but no key id.
        shown.push(
            chain(&[
                ("AWS_SECRET_ACCESS_KEY", SECRET),
                ("AWS_SESSION_TOKEN", TOKEN),
            ])
            .credentials()
            .unwrap_err(),
        );
        let (config, creds) = write_files(
            "",
            &format!("[default]\naws_secret_access_key = {SECRET}\naws_session_token = {TOKEN}\n"),
        );
        shown.push(
            chain(&[
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ])
            .credentials()
            .unwrap_err(),
        );
        // STS refusing a web identity token, and answering garbage.
        for reply in [
            "<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>no</Message></Error></ErrorResponse>",
            "<html>oops</html>",
        ] {
            let sts = FakeServer::start(move |_| (400, reply.to_string()));
            let token = token_file(TOKEN);
            shown.push(
                chain(&[
                    ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
                    ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
                    ("AWS_ENDPOINT_URL_STS", &sts.url),
                ])
                .credentials()
                .unwrap_err(),
            );
        }
        // A container endpoint refusing the authorization token.
        let server = FakeServer::start(|_| (401, "denied".to_string()));
        shown.push(
            chain(&[
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    &format!("{}/c", server.url),
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN),
            ])
            .credentials()
            .unwrap_err(),
        );
        for e in shown {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{text}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let creds = Credentials::new("AKID", "SECRET-VALUE").with_session_token("TOKEN-VALUE");
        let shown = format!("{creds:?}");
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("SECRET-VALUE") && !shown.contains("TOKEN-VALUE"));

        let c = chain(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET-VALUE"),
            ("AWS_SESSION_TOKEN", "TOKEN-VALUE"),
        ]);
        let before = format!("{c:?}");
        c.credentials().unwrap();
        let after = format!("{c:?}");
        let pretty = format!("{c:#?}");
        for shown in [before, after.clone(), pretty] {
            assert!(
                !shown.contains("SECRET-VALUE") && !shown.contains("TOKEN-VALUE"),
                "{shown}"
            );
        }
        assert!(
            after.contains("AKID") && after.contains("environment"),
            "{after}"
        );
    }

    #[test]
    fn xml_and_form_helpers() {
        assert_eq!(xml_text(STS_OK, "AccessKeyId").as_deref(), Some("ASIASTS"));
        assert_eq!(
            xml_text(STS_OK, "Credentials").map(|s| s.contains("ASIASTS")),
            Some(true)
        );
        assert_eq!(xml_text("<A>1</A><AB>2</AB>", "AB").as_deref(), Some("2"));
        assert_eq!(
            xml_text("<AB>2</AB><A x=\"y\">1</A>", "A").as_deref(),
            Some("1")
        );
        assert_eq!(xml_text("<A/>", "A").as_deref(), Some(""));
        assert_eq!(xml_text("<A>1", "A"), None);
        assert_eq!(
            xml_unescape("a&amp;b&lt;&#65;&#x42;&bogus;&"),
            "a&b<AB&bogus;&"
        );
        assert_eq!(
            form_encode(&[("a b", "x/y+z=~"), ("k", "é")]),
            "a%20b=x%2Fy%2Bz%3D~&k=%C3%A9"
        );
    }
}
