//! Assuming a role on top of any credentials, as Spark's `stsCredentials`:
//! [`AssumeRole`] says which role, [`AssumeRoleProvider`] hands out the
//! role's credentials, cached and refreshed before they expire.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::cache::CredentialsCache;
use super::sts::{self, RoleRequest};
use super::{Clock, Context, Credentials, ProvideCredentials};
use crate::aws::endpoint::region_from_env;
use crate::aws::env::Env;
use crate::{Error, Result};

/// An IAM role to assume with STS `AssumeRole`: its ARN, the session name,
/// and optionally an external id and a session duration. Give it to
/// [`ConsumerBuilder::assume_role`](crate::ConsumerBuilder::assume_role)
/// (or one of the per-service setters), or turn it into a provider with
/// [`provider`](Self::provider).
#[derive(Clone, PartialEq, Eq)]
pub struct AssumeRole {
    role_arn: String,
    session_name: String,
    external_id: Option<String>,
    duration: Option<Duration>,
    endpoint_url: Option<String>,
}

impl fmt::Debug for AssumeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssumeRole")
            .field("role_arn", &self.role_arn)
            .field("session_name", &self.session_name)
            .field("external_id", &self.external_id)
            .field("duration", &self.duration)
            .field(
                "endpoint_url",
                &self
                    .endpoint_url
                    .as_deref()
                    .map(crate::aws::endpoint::redact_url),
            )
            .finish()
    }
}

impl AssumeRole {
    /// The role `role_arn` (such as `arn:aws:iam::123456789012:role/reader`),
    /// in sessions named `session_name` (2 to 64 letters, digits and
    /// `_+=,.@-`).
    pub fn new(role_arn: impl Into<String>, session_name: impl Into<String>) -> AssumeRole {
        AssumeRole {
            role_arn: role_arn.into(),
            session_name: session_name.into(),
            external_id: None,
            duration: None,
            endpoint_url: None,
        }
    }

    /// The external id the role's trust policy asks for. Defaults to none.
    pub fn external_id(mut self, id: impl Into<String>) -> AssumeRole {
        self.external_id = Some(id.into());
        self
    }

    /// How long the role's credentials last (15 minutes to 12 hours, within
    /// the role's maximum); they are renewed 5 minutes before they expire.
    /// Defaults to STS's default, one hour.
    pub fn duration(mut self, duration: Duration) -> AssumeRole {
        self.duration = Some(duration);
        self
    }

    /// The STS endpoint URL. Defaults to `AWS_ENDPOINT_URL_STS`, then
    /// `AWS_ENDPOINT_URL`, then the regional endpoint of the region.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> AssumeRole {
        self.endpoint_url = Some(url.into());
        self
    }

    /// The role's ARN.
    pub fn role_arn(&self) -> &str {
        &self.role_arn
    }

    /// A provider of this role's credentials, assumed with `source`'s.
    pub fn provider(self, source: impl ProvideCredentials + 'static) -> Result<AssumeRoleProvider> {
        AssumeRoleProvider::new(self, Arc::new(source))
    }

    /// Checks the settings; the error names `setting`.
    pub(crate) fn validate(&self, setting: &'static str) -> Result<()> {
        if !self.role_arn.starts_with("arn:") || self.role_arn.split(':').count() < 6 {
            return Err(Error::config(
                setting,
                format!("{:?} is not a role ARN", self.role_arn),
            ));
        }
        let name = &self.session_name;
        let valid = (2..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
        if !valid {
            return Err(Error::config(
                setting,
                format!(
                    "session name {name:?} must be 2 to 64 letters, digits and _+=,.@- characters"
                ),
            ));
        }
        if let Some(d) = self.duration {
            if !(900..=43_200).contains(&d.as_secs()) {
                return Err(Error::config(
                    setting,
                    "duration must be from 15 minutes to 12 hours",
                ));
            }
        }
        if let Some(url) = &self.endpoint_url {
            crate::aws::endpoint::parse_endpoint(url, setting)?;
        }
        Ok(())
    }
}

/// Credentials of an assumed role: STS `AssumeRole` called with the source
/// provider's credentials, cached until 5 minutes before they expire, then
/// renewed by one caller while the others keep using the cached ones.
///
/// The STS region is the one given to [`region`](Self::region), else
/// `AWS_REGION`, `AWS_DEFAULT_REGION` or the active profile's, else
/// `us-east-1`. `Debug` never shows a secret.
pub struct AssumeRoleProvider {
    ctx: Context,
    role: AssumeRole,
    source: Arc<dyn ProvideCredentials>,
    region: Option<String>,
    cache: CredentialsCache,
}

impl AssumeRoleProvider {
    /// A provider of `role`'s credentials, assumed with `source`'s.
    pub fn new(
        role: AssumeRole,
        source: Arc<dyn ProvideCredentials>,
    ) -> Result<AssumeRoleProvider> {
        role.validate("assume_role")?;
        Ok(AssumeRoleProvider::with_env(
            role,
            source,
            Env::process(),
            Arc::new(SystemTime::now),
        ))
    }

    pub(crate) fn with_env(
        role: AssumeRole,
        source: Arc<dyn ProvideCredentials>,
        env: Env,
        clock: Clock,
    ) -> AssumeRoleProvider {
        AssumeRoleProvider {
            cache: CredentialsCache::new(clock.clone()),
            ctx: Context::new(env, clock),
            role,
            source,
            region: None,
        }
    }

    /// The region whose STS endpoint is called. Defaults to `AWS_REGION`,
    /// then `AWS_DEFAULT_REGION`, then the active profile's region, then
    /// `us-east-1`.
    pub fn region(mut self, region: impl Into<String>) -> AssumeRoleProvider {
        self.region = Some(region.into());
        self
    }

    fn assume(&self) -> Result<(Credentials, &'static str)> {
        let source = self.source.credentials()?;
        let region = match &self.region {
            Some(region) => region.clone(),
            None => region_from_env(&self.ctx.env)?.unwrap_or_else(|| "us-east-1".to_string()),
        };
        let request = RoleRequest {
            role_arn: self.role.role_arn.clone(),
            session_name: Some(self.role.session_name.clone()),
            external_id: self.role.external_id.clone(),
            duration_seconds: self.role.duration.map(|d| d.as_secs() as u32),
        };
        let credentials = sts::assume_role(
            &self.ctx,
            &source,
            &request,
            &region,
            self.role.endpoint_url.as_deref(),
        )?;
        log::debug!(
            "assumed role {} (access key {})",
            self.role.role_arn,
            credentials.access_key_id()
        );
        Ok((credentials, "assumed role"))
    }
}

impl ProvideCredentials for AssumeRoleProvider {
    fn credentials(&self) -> Result<Credentials> {
        self.cache.get(|| self.assume())
    }
}

impl fmt::Debug for AssumeRoleProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssumeRoleProvider")
            .field("role", &self.role)
            .field("source", &self.source)
            .field("region", &self.region)
            .field("cached", &self.cache)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::aws::test_sigcheck::{Key, check};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn provider(
        role: AssumeRole,
        source: Credentials,
        secs: &Arc<AtomicU64>,
    ) -> AssumeRoleProvider {
        AssumeRoleProvider::with_env(
            role,
            Arc::new(source),
            Env::from_pairs(&[("HOME", "/nonexistent/kinesis-consumer-home")]),
            clock_at(secs),
        )
    }

    #[test]
    fn assumes_the_role_with_the_source_credentials_and_refreshes() {
        let sts = fake_sts(
            &[("SRCKEY", "src-secret", Some("src-token"))],
            "eu-central-1",
        );
        let secs = Arc::new(AtomicU64::new(T0));
        let p = provider(
            AssumeRole::new("arn:aws:iam::222233334444:role/reader", "spark-like")
                .external_id("ext-9")
                .duration(Duration::from_secs(900))
                .endpoint_url(&sts.url),
            Credentials::new("SRCKEY", "src-secret").with_session_token("src-token"),
            &secs,
        )
        .region("eu-central-1");
        let c = p.credentials().unwrap();
        assert_eq!(c.access_key_id(), "ASIA-reader");
        assert_eq!(p.credentials().unwrap(), c);
        let r = &sts.requests()[0];
        check(
            r,
            &Key::new("SRCKEY", "src-secret", Some("src-token")),
            "eu-central-1",
            "sts",
        )
        .unwrap();
        let form = r.form();
        assert_eq!(form["RoleSessionName"], "spark-like");
        assert_eq!(form["ExternalId"], "ext-9");
        assert_eq!(form["DurationSeconds"], "900");
        assert_eq!(sts.hits(), 1);
        secs.store(T0 + 56 * 60, Ordering::SeqCst);
        p.credentials().unwrap();
        assert_eq!(sts.hits(), 2);
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("src-secret") && !shown.contains("secret-reader"),
            "{shown}"
        );
    }

    #[test]
    fn invalid_roles_are_config_errors() {
        for (role, expected) in [
            (AssumeRole::new("reader", "s1"), "not a role ARN"),
            (
                AssumeRole::new("arn:aws:iam::1:role/r", "x"),
                "session name",
            ),
            (
                AssumeRole::new("arn:aws:iam::1:role/r", "has space"),
                "session name",
            ),
            (
                AssumeRole::new("arn:aws:iam::1:role/r", "s1").duration(Duration::from_secs(60)),
                "duration",
            ),
            (
                AssumeRole::new("arn:aws:iam::1:role/r", "s1").endpoint_url("ftp://x"),
                "http",
            ),
        ] {
            match role.validate("assume_role") {
                Err(Error::Config { setting, reason }) => {
                    assert_eq!(setting, "assume_role");
                    assert!(reason.contains(expected), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
