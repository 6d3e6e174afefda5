//! Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_SESSION_TOKEN`.

use super::{Context, Credentials, Outcome};
use crate::{Error, Result};

pub(super) fn load(ctx: &Context) -> Result<Outcome> {
    let id = ctx.env.get("AWS_ACCESS_KEY_ID");
    let secret = ctx.env.get("AWS_SECRET_ACCESS_KEY");
    match (id, secret) {
        (Some(id), Some(secret)) => {
            let mut credentials = Credentials::new(id, secret);
            if let Some(token) = ctx.env.get("AWS_SESSION_TOKEN") {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::aws::credentials::ProvideCredentials;
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
}
