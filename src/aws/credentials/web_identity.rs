//! Web identity: a token file exchanged with STS
//! `AssumeRoleWithWebIdentity` (EKS IAM roles for service accounts).

use std::path::Path;

use super::{Context, Credentials, Outcome, sts};
use crate::aws::endpoint::region_from_env;
use crate::{Error, Result};

pub(super) fn load(ctx: &Context) -> Result<Outcome> {
    let token_file = ctx.env.get("AWS_WEB_IDENTITY_TOKEN_FILE");
    let role_arn = ctx.env.get("AWS_ROLE_ARN");
    match (token_file, role_arn) {
        (Some(token_file), Some(role_arn)) => {
            let token_file = ctx.env.expand_path(&token_file).ok_or_else(|| {
                Error::Credentials(format!(
                    "AWS_WEB_IDENTITY_TOKEN_FILE {token_file:?} needs a home directory"
                ))
            })?;
            let session = ctx.env.get("AWS_ROLE_SESSION_NAME");
            assume_role_with_web_identity(ctx, &role_arn, &token_file, session.as_deref())
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
pub(super) fn assume_role_with_web_identity(
    ctx: &Context,
    role_arn: &str,
    token_file: &Path,
    session_name: Option<&str>,
) -> Result<Credentials> {
    let token = ctx.env.read_file(token_file).map_err(|e| {
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
    let region = region_from_env(&ctx.env)?.unwrap_or_else(|| "us-east-1".to_string());
    let session_name = match session_name {
        Some(name) => name.to_string(),
        None => sts::default_session_name(ctx),
    };
    sts::assume_role_with_web_identity(ctx, role_arn, &session_name, token, &region)
}

#[cfg(test)]
mod tests {
    use super::super::super::test_server::FakeServer;
    use super::super::test_support::*;
    use super::*;
    use crate::aws::credentials::ProvideCredentials;
    use std::time::{Duration, UNIX_EPOCH};
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
}
