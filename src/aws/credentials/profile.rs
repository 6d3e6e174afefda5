//! Credentials from a profile of the shared config and credentials files.

use std::path::PathBuf;

use super::{Context, Credentials, Outcome, process, web_identity};
use crate::{Error, Result};

pub(super) fn load(ctx: &Context, profile: Option<&str>) -> Result<Outcome> {
    let explicit = profile
        .map(str::to_string)
        .or_else(|| ctx.env.get("AWS_PROFILE"));
    let name = explicit.clone().unwrap_or_else(|| "default".to_string());
    let files = || {
        let show = |p: Option<PathBuf>| {
            p.map_or_else(|| "(no home directory)".into(), |p| p.display().to_string())
        };
        format!(
            "{} and {}",
            show(ctx.env.credentials_file()),
            show(ctx.env.config_file())
        )
    };
    let profile = match ctx.env.load_profile(&name).map_err(Error::Credentials)? {
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
            let token_file = ctx.env.expand_path(token_file).ok_or_else(|| {
                Error::Credentials(format!(
                    "{whence}: web_identity_token_file {token_file:?} needs a home directory"
                ))
            })?;
            return web_identity::assume_role_with_web_identity(
                ctx,
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
    if let Some(command) = profile.get("credential_process") {
        return process::run(command, &name).map(Outcome::Found);
    }
    const UNSUPPORTED: &[&str] = &[
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::aws::credentials::ProvideCredentials;
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
}
