//! AWS credentials and the standard provider chain.
//!
//! [`DefaultCredentialsChain`] looks for credentials where the AWS SDKs and
//! the AWS CLI look, in the same order, and caches temporary credentials
//! until shortly before they expire. Each source lives in its own module;
//! the cache that refreshes on one thread while others keep using the
//! cached credentials is in `cache`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::env::Env;
use crate::{Error, Result};

mod assume_role;
mod cache;
mod container;
mod environment;
mod http;
mod imds;
mod process;
mod profile;
mod query;
mod sso;
mod sts;
#[cfg(test)]
mod test_support;
mod web_identity;

pub use assume_role::{AssumeRole, AssumeRoleProvider};
use cache::CredentialsCache;

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

/// Every credential source's reply parser over `body`, for the fuzz
/// targets in `fuzz/` (feature `fuzzing`): credential_process output,
/// container and instance metadata JSON, STS XML, SSO role credentials and
/// an OIDC `CreateToken` reply (its expiry added to now). Each accepts it
/// or returns an error, never panics; how many accepted it.
#[cfg(feature = "fuzzing")]
pub(crate) fn parse_replies_for_fuzzing(body: &[u8]) -> usize {
    let text = String::from_utf8_lossy(body);
    let accepted = [
        process::parse_output(body).is_ok(),
        http::parse_json_credentials(&text, "Token", "Fuzz").is_ok(),
        sts::parse_credentials("Fuzz", &text).is_ok(),
        sso::parse_role_credentials(&text).is_ok(),
        sso::parse_create_token(&text)
            .map(|token| SystemTime::now() + token.expires_in)
            .is_ok(),
    ];
    accepted.into_iter().filter(|ok| *ok).count()
}

/// A source of the current time, injectable for tests.
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What the sources need: the environment, the clock and HTTP clients.
pub(crate) struct Context {
    pub(crate) env: Env,
    pub(crate) clock: Clock,
    /// The ECS task credentials endpoint that relative URIs are joined to.
    pub(crate) container_base: String,
    /// For the container and instance metadata endpoints: short timeouts,
    /// never through a proxy.
    pub(crate) metadata_agent: ureq::Agent,
    /// For STS and other AWS endpoints: the environment's proxy applies.
    pub(crate) sts_agent: ureq::Agent,
}

impl Context {
    pub(crate) fn new(env: Env, clock: Clock) -> Context {
        Context {
            env,
            clock,
            container_base: container::ECS_CREDENTIALS_BASE.to_string(),
            metadata_agent: http::agent(Duration::from_secs(1), Duration::from_secs(3), false),
            sts_agent: http::agent(Duration::from_secs(3), Duration::from_secs(10), true),
        }
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }
}

/// The standard AWS credential provider chain, with caching.
///
/// Each time credentials are needed and the cached ones are missing or due
/// for refresh, the sources below are tried in order. The first source that
/// is *configured* is used; if it fails, its error is returned rather than
/// falling through to the next one, so a broken setup is reported instead of
/// being silently replaced by other credentials.
///
/// 1. Environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally
///    `AWS_SESSION_TOKEN`. Skipped when a profile is chosen with
///    [`profile`](Self::profile) (as the AWS CLI's `--profile`), but not for
///    `AWS_PROFILE`.
/// 2. Shared files: the profile named by [`profile`](Self::profile), else
///    `AWS_PROFILE`, else `default`, from `AWS_SHARED_CREDENTIALS_FILE`
///    (default `~/.aws/credentials`, sections `[name]`) and `AWS_CONFIG_FILE`
///    (default `~/.aws/config`, sections `[profile name]` and `[default]`);
///    the credentials file wins for keys set in both. With the AWS CLI's
///    semantics, a profile supplies:
///    - `role_arn` with `source_profile` (another profile, whose
///      credentials may come from a role in turn; a cycle is an error
///      naming it) or `credential_source` (`Environment`,
///      `Ec2InstanceMetadata`, `EcsContainer`): STS `AssumeRole` signed
///      with those credentials, with `external_id`, `role_session_name`
///      and `duration_seconds` when set. `mfa_serial` is refused (it needs
///      an interactive code). STS is reached at `AWS_ENDPOINT_URL_STS`,
///      else `AWS_ENDPOINT_URL`, else the regional endpoint of
///      `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's `region`
///      (default `us-east-1`);
///    - `role_arn` with `web_identity_token_file` (and optionally
///      `role_session_name`): STS `AssumeRoleWithWebIdentity`;
///    - IAM Identity Center (SSO): `sso_session` (with a `[sso-session
///      NAME]` section holding `sso_start_url` and `sso_region`) or, in
///      legacy profiles, `sso_start_url` and `sso_region`; with
///      `sso_account_id` and `sso_role_name`. The token `aws sso login`
///      cached in `~/.aws/sso/cache/<sha1>.json` is exchanged at the portal
///      (`AWS_ENDPOINT_URL_SSO`, else `portal.sso.<sso_region>`), and
///      renewed with its refresh token (`AWS_ENDPOINT_URL_SSO_OIDC`, else
///      `oidc.<sso_region>`) when it expired and the cache allows;
///    - `aws_access_key_id`, `aws_secret_access_key` and optionally
///      `aws_session_token`; a source profile's keys end a chain even when
///      it sets `role_arn` too;
///    - `credential_process`: a command printing JSON credentials
///      (`Version` 1), run directly (through a shell only when the value
///      needs one); its standard output is never shown.
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
    ctx: Context,
    profile: Option<String>,
    cache: CredentialsCache,
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
            cache: CredentialsCache::new(clock.clone()),
            ctx: Context::new(env, clock),
            profile: None,
        }
    }

    /// Uses this profile of the shared config and credentials files; as
    /// with the AWS CLI's `--profile`, credentials in the environment are
    /// then not used. Defaults to `AWS_PROFILE` (which does not override
    /// the environment's credentials), else `default`.
    pub fn profile(mut self, name: impl Into<String>) -> DefaultCredentialsChain {
        self.profile = Some(name.into());
        self
    }

    /// Looks the credentials up through the chain, without the cache.
    fn resolve(&self) -> Result<(Credentials, &'static str)> {
        let ctx = &self.ctx;
        let profile = self.profile.as_deref();
        let sources: [(&'static str, &dyn Fn() -> Result<Outcome>); 5] = [
            ("environment variables", &|| {
                if profile.is_some() {
                    // As the AWS CLI's --profile: the chosen profile wins.
                    return Ok(Outcome::NotConfigured(
                        "skipped: a profile was chosen with DefaultCredentialsChain::profile"
                            .into(),
                    ));
                }
                environment::load(ctx)
            }),
            ("shared config files", &|| profile::load(ctx, profile)),
            ("web identity token", &|| web_identity::load(ctx)),
            ("container credentials", &|| container::load(ctx)),
            ("EC2 instance metadata", &|| imds::load(ctx)),
        ];
        let mut tried = Vec::new();
        for (name, source) in sources {
            let outcome = source().map_err(|e| match e {
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
}

impl ProvideCredentials for DefaultCredentialsChain {
    fn credentials(&self) -> Result<Credentials> {
        self.cache.get(|| self.resolve())
    }
}

impl fmt::Debug for DefaultCredentialsChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultCredentialsChain")
            .field("profile", &self.profile)
            .field("cached", &self.cache)
            .finish_non_exhaustive()
    }
}

/// What one source of the chain found.
pub(crate) enum Outcome {
    Found(Credentials),
    /// The source is not set up here; the reason goes into the final error.
    NotConfigured(String),
}

fn unix_millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::super::test_server::FakeServer;
    use super::test_support::*;
    use super::*;
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
}
