//! Credentials from a profile of the shared config and credentials files,
//! with the AWS CLI's semantics:
//!
//! - `role_arn` with `source_profile` assumes the role with the source
//!   profile's credentials (which may themselves come from a role: chains
//!   are followed, and a cycle is an error naming it). A source profile's
//!   static keys end the chain, even when it also sets `role_arn`; a
//!   profile naming itself as `source_profile` uses its own static keys.
//! - `role_arn` with `credential_source` (`Environment`,
//!   `Ec2InstanceMetadata`, `EcsContainer`) assumes the role with those
//!   credentials.
//! - `role_arn` with `web_identity_token_file` uses STS
//!   `AssumeRoleWithWebIdentity`.
//! - Role profiles may set `external_id`, `role_session_name` and
//!   `duration_seconds`; `mfa_serial` needs an interactive code and is
//!   refused.
//! - Otherwise the profile's own credentials: SSO (`sso_session` or
//!   `sso_start_url`), else static keys (`aws_access_key_id`,
//!   `aws_secret_access_key`, `aws_session_token`), else
//!   `credential_process`.

use std::path::PathBuf;

use super::sts::{self, RoleRequest};
use super::{
    Context, Credentials, Outcome, container, environment, imds, process, sso, web_identity,
};
use crate::aws::env::Profile;
use crate::{Error, Result};

pub(super) fn load(ctx: &Context, profile: Option<&str>) -> Result<Outcome> {
    let explicit = profile
        .map(str::to_string)
        .or_else(|| ctx.env.get("AWS_PROFILE"));
    let name = explicit.clone().unwrap_or_else(|| "default".to_string());
    let profile = match ctx.env.load_profile(&name).map_err(Error::Credentials)? {
        Some(profile) => profile,
        None if explicit.is_some() => {
            return Err(Error::Credentials(format!(
                "profile `{name}` was asked for but is not in {}",
                describe_files(ctx)
            )));
        }
        None => {
            return Ok(Outcome::NotConfigured(format!(
                "no profile `{name}` in {}",
                describe_files(ctx)
            )));
        }
    };
    resolve(ctx, name, profile)
}

/// The two shared files, for messages.
fn describe_files(ctx: &Context) -> String {
    let show = |p: Option<PathBuf>| {
        p.map_or_else(|| "(no home directory)".into(), |p| p.display().to_string())
    };
    format!(
        "{} and {}",
        show(ctx.env.credentials_file()),
        show(ctx.env.config_file())
    )
}

/// Follows the profile's chain of roles down to credentials, then assumes
/// each role in turn, the innermost first.
fn resolve(ctx: &Context, start: String, first: Profile) -> Result<Outcome> {
    // The region of STS calls: the environment's, else the profile's.
    let region = ctx
        .env
        .get("AWS_REGION")
        .or_else(|| ctx.env.get("AWS_DEFAULT_REGION"))
        .or_else(|| first.get("region").map(str::to_string))
        .unwrap_or_else(|| "us-east-1".to_string());
    // Profiles whose roles are to be assumed, outermost first.
    let mut roles: Vec<(String, RoleRequest)> = Vec::new();
    let mut visited = vec![start.clone()];
    let mut name = start;
    let mut profile = first;
    let base = loop {
        let whence = format!("profile `{name}` in {}", profile.describe_files());
        let is_first = visited.len() == 1;
        if !is_first {
            if let Some(credentials) = static_credentials(&profile, &whence)? {
                break credentials;
            }
        }
        if let Some(role_arn) = profile.get("role_arn") {
            if profile.get("mfa_serial").is_some() {
                return Err(Error::Credentials(format!(
                    "{whence} sets mfa_serial: assuming role {role_arn} needs an interactive \
                     MFA code, which this crate does not support; get temporary credentials \
                     with `aws sts assume-role ... --serial-number ... --token-code ...` and \
                     export them instead"
                )));
            }
            let source_profile = profile.get("source_profile");
            let credential_source = profile.get("credential_source");
            let token_file = profile.get("web_identity_token_file");
            match (source_profile, credential_source, token_file) {
                (Some(_), Some(_), _) => {
                    return Err(Error::Credentials(format!(
                        "{whence} sets both source_profile and credential_source; set one"
                    )));
                }
                (None, None, Some(token_file)) => {
                    let token_file = ctx.env.expand_path(token_file).ok_or_else(|| {
                        Error::Credentials(format!(
                            "{whence}: web_identity_token_file {token_file:?} needs a home directory"
                        ))
                    })?;
                    break web_identity::assume_role_with_web_identity(
                        ctx,
                        role_arn,
                        &token_file,
                        profile.get("role_session_name"),
                    )?;
                }
                (None, Some(source), _) => {
                    roles.push((name.clone(), role_request(&profile, role_arn, &whence)?));
                    break named_source(ctx, source, &whence)?;
                }
                (Some(source), None, _) => {
                    roles.push((name.clone(), role_request(&profile, role_arn, &whence)?));
                    if source == name {
                        // A profile that is its own source: its static keys.
                        match static_credentials(&profile, &whence)? {
                            Some(credentials) => break credentials,
                            None => {
                                return Err(Error::Credentials(format!(
                                    "{whence} names itself as source_profile but has no \
                                     aws_access_key_id and aws_secret_access_key"
                                )));
                            }
                        }
                    }
                    if visited.iter().any(|v| v == source) {
                        visited.push(source.to_string());
                        return Err(Error::Credentials(format!(
                            "the source_profile settings form a cycle: {}",
                            visited
                                .iter()
                                .map(|v| format!("`{v}`"))
                                .collect::<Vec<_>>()
                                .join(" -> ")
                        )));
                    }
                    let source = source.to_string();
                    profile = ctx
                        .env
                        .load_profile(&source)
                        .map_err(Error::Credentials)?
                        .ok_or_else(|| {
                            Error::Credentials(format!(
                                "{whence} names source_profile `{source}`, which is not in {}",
                                describe_files(ctx)
                            ))
                        })?;
                    visited.push(source.clone());
                    name = source;
                    continue;
                }
                (None, None, None) => {
                    return Err(Error::Credentials(format!(
                        "{whence} sets role_arn but none of source_profile, credential_source \
                         and web_identity_token_file"
                    )));
                }
            }
        }
        match own_credentials(ctx, &name, &profile, &whence)? {
            Some(credentials) => break credentials,
            None if is_first => {
                return Ok(Outcome::NotConfigured(format!(
                    "{whence} has no credentials"
                )));
            }
            None => {
                return Err(Error::Credentials(format!(
                    "{whence} is the source_profile of `{}` but has no credentials",
                    visited[visited.len() - 2]
                )));
            }
        }
    };
    let mut credentials = base;
    for (profile_name, role) in roles.iter().rev() {
        credentials =
            sts::assume_role(ctx, &credentials, role, &region, None).map_err(|e| match e {
                Error::Credentials(why) => {
                    Error::Credentials(format!("profile `{profile_name}`: {why}"))
                }
                other => other,
            })?;
    }
    Ok(Outcome::Found(credentials))
}

/// The role settings of a profile.
fn role_request(profile: &Profile, role_arn: &str, whence: &str) -> Result<RoleRequest> {
    let duration_seconds = match profile.get("duration_seconds") {
        None => None,
        Some(text) => match text.parse::<u32>() {
            Ok(d) if (900..=43_200).contains(&d) => Some(d),
            _ => {
                return Err(Error::Credentials(format!(
                    "{whence}: duration_seconds {text:?} is not a number of seconds \
                     from 900 to 43200"
                )));
            }
        },
    };
    Ok(RoleRequest {
        role_arn: role_arn.to_string(),
        session_name: profile.get("role_session_name").map(str::to_string),
        external_id: profile.get("external_id").map(str::to_string),
        duration_seconds,
    })
}

/// The credentials a `credential_source` names.
fn named_source(ctx: &Context, source: &str, whence: &str) -> Result<Credentials> {
    let outcome = match source {
        "Environment" => environment::load(ctx)?,
        "Ec2InstanceMetadata" => imds::load(ctx)?,
        "EcsContainer" => container::load(ctx)?,
        other => {
            return Err(Error::Credentials(format!(
                "{whence}: credential_source {other:?} is not one of Environment, \
                 Ec2InstanceMetadata and EcsContainer"
            )));
        }
    };
    match outcome {
        Outcome::Found(credentials) => Ok(credentials),
        Outcome::NotConfigured(why) => Err(Error::Credentials(format!(
            "{whence}: credential_source {source} found no credentials ({why})"
        ))),
    }
}

/// The profile's static keys, if it sets them; half a pair is an error.
fn static_credentials(profile: &Profile, whence: &str) -> Result<Option<Credentials>> {
    let id = profile.get("aws_access_key_id");
    let secret = profile.get("aws_secret_access_key");
    match (id, secret) {
        (Some(id), Some(secret)) => {
            let mut credentials = Credentials::new(id, secret);
            if let Some(token) = profile.get("aws_session_token") {
                credentials = credentials.with_session_token(token);
            }
            Ok(Some(credentials))
        }
        (Some(_), None) => Err(Error::Credentials(format!(
            "{whence} has aws_access_key_id but no aws_secret_access_key"
        ))),
        (None, Some(_)) => Err(Error::Credentials(format!(
            "{whence} has aws_secret_access_key but no aws_access_key_id"
        ))),
        (None, None) => Ok(None),
    }
}

/// A profile's own credentials: SSO, else static keys, else
/// `credential_process`. `None` when it has none of them.
fn own_credentials(
    ctx: &Context,
    name: &str,
    profile: &Profile,
    whence: &str,
) -> Result<Option<Credentials>> {
    if sso::is_sso_profile(profile) {
        return sso::load(ctx, name, profile).map(Some);
    }
    if let Some(credentials) = static_credentials(profile, whence)? {
        return Ok(Some(credentials));
    }
    if let Some(command) = profile.get("credential_process") {
        return process::run(command, name).map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::Error;
    use crate::aws::credentials::ProvideCredentials;
    use crate::aws::test_server::FakeServer;
    use crate::aws::test_sigcheck::{Key, check};
    use std::path::Path;
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

    // ---- assume role ----

    const BASE: (&str, &str, Option<&str>) = ("BASEKEY", "base-secret", None);

    fn role_env<'a>(
        config: &'a Path,
        creds: &'a Path,
        sts: &'a str,
        profile: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", sts),
            ("AWS_PROFILE", profile),
        ]
    }

    const BASE_CREDS: &str =
        "[base]\naws_access_key_id = BASEKEY\naws_secret_access_key = base-secret\n";

    #[test]
    fn role_from_source_profile() {
        let sts = fake_sts(&[BASE], "eu-west-2");
        let (config, creds) = write_files(
            "[profile app]\nrole_arn = arn:aws:iam::111122223333:role/app\nsource_profile = base\n\
             external_id = ext-7\nrole_session_name = my-session\nduration_seconds = 1800\n\
             region = eu-west-2\n",
            BASE_CREDS,
        );
        let c = chain(&role_env(&config, &creds, &sts.url, "app"))
            .credentials()
            .unwrap();
        assert_eq!(c.access_key_id(), "ASIA-app");
        assert_eq!(c.secret_access_key(), "secret-app");
        assert_eq!(c.session_token(), Some("token-app"));
        assert_eq!(
            c.expires_at(),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0 + 3600))
        );
        let requests = sts.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        check(
            r,
            &Key::new("BASEKEY", "base-secret", None),
            "eu-west-2",
            "sts",
        )
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"));
        let form = r.form();
        assert_eq!(form["Action"], "AssumeRole");
        assert_eq!(form["Version"], "2011-06-15");
        assert_eq!(form["RoleArn"], "arn:aws:iam::111122223333:role/app");
        assert_eq!(form["RoleSessionName"], "my-session");
        assert_eq!(form["ExternalId"], "ext-7");
        assert_eq!(form["DurationSeconds"], "1800");
    }

    #[test]
    fn chained_roles_are_assumed_innermost_first() {
        let sts = fake_sts(&[BASE], "us-east-1");
        let (config, creds) = write_files(
            "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = mid\n\
             [profile mid]\nrole_arn = arn:aws:iam::2:role/mid\nsource_profile = base\n",
            BASE_CREDS,
        );
        let c = chain(&role_env(&config, &creds, &sts.url, "app"))
            .credentials()
            .unwrap();
        assert_eq!(c.access_key_id(), "ASIA-app");
        let requests = sts.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].form()["RoleArn"], "arn:aws:iam::2:role/mid");
        check(
            &requests[0],
            &Key::new("BASEKEY", "base-secret", None),
            "us-east-1",
            "sts",
        )
        .unwrap();
        assert_eq!(requests[1].form()["RoleArn"], "arn:aws:iam::1:role/app");
        check(
            &requests[1],
            &Key::new("ASIA-mid", "secret-mid", Some("token-mid")),
            "us-east-1",
            "sts",
        )
        .unwrap();
        // No external id or duration unless set; a generated session name.
        assert!(!requests[1].form().contains_key("ExternalId"));
        assert!(!requests[1].form().contains_key("DurationSeconds"));
        assert!(requests[1].form()["RoleSessionName"].starts_with("kinesis-consumer-"));
    }

    #[test]
    fn source_profile_static_keys_end_the_chain_and_self_reference() {
        let sts = fake_sts(&[BASE, ("SELFKEY", "self-secret", None)], "us-east-1");
        let (config, creds) = write_files(
            "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = base\n\
             [profile base]\nrole_arn = arn:aws:iam::1:role/never\nsource_profile = app\n\
             [profile selfish]\nrole_arn = arn:aws:iam::1:role/selfish\nsource_profile = selfish\n\
             aws_access_key_id = SELFKEY\naws_secret_access_key = self-secret\n",
            BASE_CREDS,
        );
        let c = chain(&role_env(&config, &creds, &sts.url, "app"))
            .credentials()
            .unwrap();
        assert_eq!(c.access_key_id(), "ASIA-app");
        assert_eq!(sts.hits(), 1);
        let c = chain(&role_env(&config, &creds, &sts.url, "selfish"))
            .credentials()
            .unwrap();
        assert_eq!(c.access_key_id(), "ASIA-selfish");
        check(
            &sts.requests()[1],
            &Key::new("SELFKEY", "self-secret", None),
            "us-east-1",
            "sts",
        )
        .unwrap();
    }

    #[test]
    fn a_profile_cycle_is_an_error_naming_it() {
        let sts = fake_sts(&[BASE], "us-east-1");
        let (config, creds) = write_files(
            "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n\
             [profile b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = c\n\
             [profile c]\nrole_arn = arn:aws:iam::1:role/c\nsource_profile = a\n",
            "",
        );
        let m = expect_credentials_error(
            chain(&role_env(&config, &creds, &sts.url, "a")).credentials(),
        );
        assert!(m.contains("cycle: `a` -> `b` -> `c` -> `a`"), "{m}");
        assert_eq!(sts.hits(), 0);
    }

    #[test]
    fn role_profile_misconfigurations() {
        let sts = fake_sts(&[BASE], "us-east-1");
        for (config, expected) in [
            (
                "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = base\nmfa_serial = arn:aws:iam::1:mfa/me\n",
                "needs an interactive MFA code",
            ),
            (
                "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = base\ncredential_source = Environment\n",
                "both source_profile and credential_source",
            ),
            (
                "[profile app]\nrole_arn = arn:aws:iam::1:role/app\n",
                "none of source_profile, credential_source",
            ),
            (
                "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = missing\n",
                "source_profile `missing`, which is not in",
            ),
            (
                "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = empty\n[profile empty]\nregion = us-east-1\n",
                "is the source_profile of `app` but has no credentials",
            ),
            (
                "[profile app]\nrole_arn = arn:aws:iam::1:role/app\ncredential_source = Ec2\n",
                "not one of Environment, Ec2InstanceMetadata and EcsContainer",
            ),
            (
                "[profile app]\nrole_arn = arn:aws:iam::1:role/app\ncredential_source = Environment\n",
                "credential_source Environment found no credentials",
            ),
            (
                "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = base\nduration_seconds = 60\n",
                "duration_seconds \"60\"",
            ),
        ] {
            let (config, creds) = write_files(config, BASE_CREDS);
            let m = expect_credentials_error(
                chain(&role_env(&config, &creds, &sts.url, "app")).credentials(),
            );
            assert!(m.contains(expected), "{expected:?} not in {m}");
        }
        assert_eq!(sts.hits(), 0);
    }

    #[test]
    fn credential_source_environment_and_explicit_profile_precedence() {
        let sts = fake_sts(&[("ENVKEY", "env-secret", Some("env-token"))], "us-east-1");
        let (config, creds) = write_files(
            "[profile app]\nrole_arn = arn:aws:iam::1:role/app\ncredential_source = Environment\n",
            "",
        );
        let mut env = role_env(&config, &creds, &sts.url, "app");
        env.extend([
            ("AWS_ACCESS_KEY_ID", "ENVKEY"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
        ]);
        // AWS_PROFILE does not beat credentials in the environment (as in
        // the AWS CLI)...
        assert_eq!(chain(&env).credentials().unwrap().access_key_id(), "ENVKEY");
        assert_eq!(sts.hits(), 0);
        // ...a profile chosen in code does (as the CLI's --profile), and
        // its credential_source reads the environment.
        let c = chain(&env).profile("app").credentials().unwrap();
        assert_eq!(c.access_key_id(), "ASIA-app");
        check(
            &sts.requests()[0],
            &Key::new("ENVKEY", "env-secret", Some("env-token")),
            "us-east-1",
            "sts",
        )
        .unwrap();
    }

    #[test]
    fn credential_source_instance_metadata_and_container() {
        let imds = imds_server(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            false,
        )));
        let container =
            FakeServer::start(|_| (200, creds_json("CONTAINER", "2030-01-01T06:00:00Z")));
        let sts = fake_sts(
            &[
                ("IMDS", "secret-IMDS", Some("token-IMDS")),
                ("CONTAINER", "secret-CONTAINER", Some("token-CONTAINER")),
            ],
            "us-east-1",
        );
        let (config, creds) = write_files(
            "[profile onec2]\nrole_arn = arn:aws:iam::1:role/onec2\ncredential_source = Ec2InstanceMetadata\n\
             [profile onecs]\nrole_arn = arn:aws:iam::1:role/onecs\ncredential_source = EcsContainer\n",
            "",
        );
        let full = format!("{}/creds", container.url);
        let mut env = role_env(&config, &creds, &sts.url, "onec2");
        env.extend([
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.as_str()),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full.as_str()),
        ]);
        assert_eq!(
            chain(&env).credentials().unwrap().access_key_id(),
            "ASIA-onec2"
        );
        let c = chain(&env).profile("onecs").credentials().unwrap();
        assert_eq!(c.access_key_id(), "ASIA-onecs");
        let requests = sts.requests();
        check(
            &requests[0],
            &Key::new("IMDS", "secret-IMDS", Some("token-IMDS")),
            "us-east-1",
            "sts",
        )
        .unwrap();
        check(
            &requests[1],
            &Key::new("CONTAINER", "secret-CONTAINER", Some("token-CONTAINER")),
            "us-east-1",
            "sts",
        )
        .unwrap();
    }

    #[test]
    fn assumed_role_credentials_are_cached_and_refreshed() {
        let sts = fake_sts(&[BASE], "us-east-1");
        let (config, creds) = write_files(
            "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = base\n",
            BASE_CREDS,
        );
        let secs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(T0));
        let c = chain_at(&role_env(&config, &creds, &sts.url, "app"), &secs);
        for _ in 0..3 {
            assert_eq!(c.credentials().unwrap().access_key_id(), "ASIA-app");
        }
        assert_eq!(sts.hits(), 1);
        secs.store(T0 + 56 * 60, std::sync::atomic::Ordering::SeqCst);
        c.credentials().unwrap();
        assert_eq!(sts.hits(), 2, "refreshed inside the 5-minute window");
    }

    #[test]
    fn sts_refusing_a_bad_signature_is_a_service_error() {
        // The fake knows another secret for BASEKEY: the signature fails.
        let sts = fake_sts(&[("BASEKEY", "other-secret", None)], "us-east-1");
        let (config, creds) = write_files(
            "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = base\n",
            BASE_CREDS,
        );
        match chain(&role_env(&config, &creds, &sts.url, "app")).credentials() {
            Err(Error::Service(e)) => {
                assert_eq!(e.operation, "STS.AssumeRole");
                assert_eq!(e.code, "SignatureDoesNotMatch");
                assert_eq!(e.status, 403);
            }
            other => panic!("expected a service error, got {other:?}"),
        }
    }
}
