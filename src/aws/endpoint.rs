//! Region and endpoint resolution from configuration and the standard AWS
//! environment.
//!
//! The region comes from the explicit setting, else `AWS_REGION`, else
//! `AWS_DEFAULT_REGION`, else the `region` of the active profile in the
//! shared config files. A service's endpoint comes from the explicit setting,
//! else `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`, else the
//! default AWS endpoint for the region's partition. Setting
//! `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true` makes the environment
//! endpoints be ignored (an explicit setting still applies).

use std::fmt;
use std::net::Ipv6Addr;

use super::env::Env;
use crate::{Error, Result};

/// The AWS services this crate talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub(crate) enum Service {
    /// Amazon Kinesis Data Streams.
    Kinesis,
    /// Amazon DynamoDB (the lease table).
    DynamoDb,
    /// Amazon CloudWatch (metrics).
    CloudWatch,
    /// AWS Security Token Service (temporary credentials).
    Sts,
    /// The IAM Identity Center (SSO) portal: role credentials for a
    /// signed-in user.
    Sso,
    /// IAM Identity Center OIDC: renews the token `aws sso login` cached.
    SsoOidc,
}

impl Service {
    /// The name used in SigV4 credential scopes: `kinesis`, `dynamodb`,
    /// `monitoring`, `sts`, `awsssoportal` or `sso-oauth`.
    pub(crate) fn signing_name(self) -> &'static str {
        match self {
            Service::Kinesis => "kinesis",
            Service::DynamoDb => "dynamodb",
            Service::CloudWatch => "monitoring",
            Service::Sts => "sts",
            Service::Sso => "awsssoportal",
            Service::SsoOidc => "sso-oauth",
        }
    }

    /// What precedes the region in the default endpoint's host.
    fn host_prefix(self) -> &'static str {
        match self {
            Service::Sso => "portal.sso",
            Service::SsoOidc => "oidc",
            other => other.signing_name(),
        }
    }

    /// The suffix of the service's endpoint variable, as in
    /// `AWS_ENDPOINT_URL_KINESIS`: `KINESIS`, `DYNAMODB`, `CLOUDWATCH`,
    /// `STS`, `SSO` or `SSO_OIDC`. (The tests check the variables' names
    /// against it.)
    #[cfg(test)]
    fn env_suffix(self) -> &'static str {
        match self {
            Service::Kinesis => "KINESIS",
            Service::DynamoDb => "DYNAMODB",
            Service::CloudWatch => "CLOUDWATCH",
            Service::Sts => "STS",
            Service::Sso => "SSO",
            Service::SsoOidc => "SSO_OIDC",
        }
    }

    /// The full name of the service's endpoint variable.
    fn endpoint_variable(self) -> &'static str {
        match self {
            Service::Kinesis => "AWS_ENDPOINT_URL_KINESIS",
            Service::DynamoDb => "AWS_ENDPOINT_URL_DYNAMODB",
            Service::CloudWatch => "AWS_ENDPOINT_URL_CLOUDWATCH",
            Service::Sts => "AWS_ENDPOINT_URL_STS",
            Service::Sso => "AWS_ENDPOINT_URL_SSO",
            Service::SsoOidc => "AWS_ENDPOINT_URL_SSO_OIDC",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Kinesis => "Kinesis",
            Service::DynamoDb => "DynamoDB",
            Service::CloudWatch => "CloudWatch",
            Service::Sts => "STS",
            Service::Sso => "SSO",
            Service::SsoOidc => "SSO OIDC",
        })
    }
}

/// A resolved endpoint: scheme, host and port, with the URL to send requests
/// to and the value of the `Host` header to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    https: bool,
    host: String,
    port: u16,
    url: String,
    host_header: String,
    /// Where the host came from, such as "`endpoint_url`" or "region
    /// `us-east-1` (AWS_REGION)": an error about the host says what
    /// setting to fix.
    origin: String,
    /// True for a region's default endpoint.
    from_region: bool,
}

impl Endpoint {
    fn new(https: bool, host: String, port: Option<u16>, origin: String) -> Endpoint {
        let default_port = if https { 443 } else { 80 };
        let port = port.unwrap_or(default_port);
        let host_header = if port == default_port {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let scheme = if https { "https" } else { "http" };
        Endpoint {
            https,
            url: format!("{scheme}://{host_header}"),
            host,
            port,
            host_header,
            origin,
            from_region: false,
        }
    }

    /// The setting the host came from, such as "`endpoint_url`",
    /// "`AWS_ENDPOINT_URL_KINESIS`" or "region `us-east-1` (`AWS_REGION`)".
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// This endpoint, its host said to come from `origin`.
    pub(crate) fn with_origin(mut self, origin: String) -> Endpoint {
        self.origin = origin;
        self
    }

    /// The base URL without a trailing slash, such as
    /// `https://kinesis.us-east-1.amazonaws.com` or `http://127.0.0.1:4567`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The `Host` header value: the host, and the port when it is not the
    /// scheme's default, such as `127.0.0.1:4567`.
    pub(crate) fn host_header(&self) -> &str {
        &self.host_header
    }

    /// The host as written in a URL (lowercase; an IPv6 address in brackets).
    /// This and the next two are for our clients, which open their own
    /// connections (HTTP/1.1 and HTTP/2).
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The port, explicit or the scheme's default.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// True for `https`.
    pub(crate) fn is_https(&self) -> bool {
        self.https
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Resolves the region: `explicit` (the configured value), else
/// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the `region` of the profile
/// named by `AWS_PROFILE` (default `default`) in the shared config files.
///
/// Fails with [`Error::Config`] for setting `region` when none is found, and
/// when a region is not made of lowercase letters, digits and dashes.
pub(crate) fn resolve_region(explicit: Option<&str>) -> Result<String> {
    resolve_region_with(explicit, &Env::process())
}

/// [`resolve_region`] with the given environment.
pub(crate) fn resolve_region_with(explicit: Option<&str>, env: &Env) -> Result<String> {
    if let Some(region) = explicit {
        return validate_region(region, "region", "the configured region");
    }
    match region_from_env(env)? {
        Some(region) => Ok(region),
        None => Err(Error::config(
            "region",
            format!(
                "no region configured: set it explicitly, or set AWS_REGION, or set \
                 `region` in profile `{}` of the AWS config file",
                env.profile_name()
            ),
        )),
    }
}

/// The region from `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile;
/// `Ok(None)` when none of them sets one, `Err` when the one found is invalid.
pub(crate) fn region_from_env(env: &Env) -> Result<Option<String>> {
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(region) = env.get(var) {
            return validate_region(&region, var, var).map(Some);
        }
    }
    let profile_name = env.profile_name();
    match env.load_profile(&profile_name) {
        Ok(Some(profile)) => {
            if let Some(region) = profile.get("region") {
                let origin = format!(
                    "the region of profile `{profile_name}` in {}",
                    profile.describe_files()
                );
                return validate_region(region, "region", &origin).map(Some);
            }
        }
        Ok(None) => {}
        Err(e) => log::warn!("ignoring the shared AWS config files: {e}"),
    }
    Ok(None)
}

/// The setting a region came from, for messages: `explicit` (a builder
/// method) when the region was configured, else the first of `AWS_REGION`
/// and `AWS_DEFAULT_REGION` that is set, else the profile's `region`
/// (the order [`resolve_region`] looks in).
pub(crate) fn region_setting(explicit: Option<&str>, env: &Env) -> String {
    if let Some(setting) = explicit {
        return format!("`{setting}`");
    }
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if env.get(var).is_some() {
            return format!("`{var}`");
        }
    }
    format!("the `region` of AWS profile `{}`", env.profile_name())
}

/// Checks a region's syntax.
fn validate_region(region: &str, setting: &'static str, origin: &str) -> Result<String> {
    let region = region.trim();
    let valid = !region.is_empty()
        && region.len() <= 63
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if valid {
        Ok(region.to_string())
    } else {
        Err(Error::config(
            setting,
            format!(
                "{origin} {region:?} is not a valid region name \
                 (expected lowercase letters, digits and dashes, such as `us-east-1`)"
            ),
        ))
    }
}

/// Resolves a service endpoint: `explicit` (the configured endpoint URL),
/// else `AWS_ENDPOINT_URL_<SERVICE>` (`KINESIS`, `DYNAMODB`, ...), else
/// `AWS_ENDPOINT_URL`, else the default AWS endpoint for the region:
/// `https://{service}.{region}.amazonaws.com`, with the domain of the
/// region's partition (`amazonaws.com.cn` for `cn-` regions, and the
/// isolated partitions' domains for `us-iso-`, `us-isob-`, `us-isof-`,
/// `eu-isoe-` and `eusc-` regions).
///
/// An endpoint URL is `http://` or `https://`, a host name or IP address
/// (IPv6 in brackets), an optional port, and an optional `/`. Anything else
/// is an [`Error::Config`] naming the setting (`endpoint_url` or the
/// variable).
///
/// `configured_region_setting` names the setting a configured `region`
/// came from (`None`: it came from the environment); the endpoint says it
/// (see [`Endpoint::origin`]).
pub(crate) fn resolve_endpoint(
    service: Service,
    explicit: Option<&str>,
    region: &str,
    configured_region_setting: Option<&str>,
) -> Result<Endpoint> {
    let env = Env::process();
    let endpoint = resolve_endpoint_with(service, explicit, region, &env)?;
    // A default endpoint's host is made of the region: say which setting
    // gave the region, so a typo in it is found where it was made.
    Ok(if endpoint.from_region {
        let setting = region_setting(configured_region_setting, &env);
        endpoint.with_origin(format!("region `{region}` ({setting})"))
    } else {
        endpoint
    })
}

/// [`resolve_endpoint`] with the given environment.
pub(crate) fn resolve_endpoint_with(
    service: Service,
    explicit: Option<&str>,
    region: &str,
    env: &Env,
) -> Result<Endpoint> {
    if let Some(url) = explicit {
        return parse_endpoint(url, "endpoint_url");
    }
    if !env.is_true("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") {
        let service_var = service.endpoint_variable();
        if let Some(url) = env.get(service_var) {
            return parse_endpoint(&url, service_var);
        }
        if let Some(url) = env.get("AWS_ENDPOINT_URL") {
            return parse_endpoint(&url, "AWS_ENDPOINT_URL");
        }
    }
    let region = validate_region(region, "region", "the region")?;
    let host = format!(
        "{}.{region}.{}",
        service.host_prefix(),
        partition_domain(&region)
    );
    let mut endpoint = Endpoint::new(true, host, None, format!("region `{region}`"));
    endpoint.from_region = true;
    Ok(endpoint)
}

/// The DNS suffix of the partition a region belongs to.
fn partition_domain(region: &str) -> &'static str {
    const PARTITIONS: &[(&str, &str)] = &[
        ("cn-", "amazonaws.com.cn"),
        ("us-iso-", "c2s.ic.gov"),
        ("us-isob-", "sc2s.sgov.gov"),
        ("us-isof-", "csp.hci.ic.gov"),
        ("eu-isoe-", "cloud.adc-e.uk"),
        ("eusc-", "amazonaws.eu"),
    ];
    PARTITIONS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("amazonaws.com", |(_, domain)| domain)
}

/// Parses an endpoint URL, allowing no path beyond `/`; an error names
/// `setting`.
pub(crate) fn parse_endpoint(url: &str, setting: &'static str) -> Result<Endpoint> {
    let parsed = parse_url(url).map_err(|e| Error::config(setting, e.to_string()))?;
    if !(parsed.path.is_empty() || parsed.path == "/") {
        return Err(Error::config(
            setting,
            format!(
                "endpoint URL {:?} has a path, query or fragment; \
                 give only scheme, host and port",
                redact_url(url)
            ),
        ));
    }
    Ok(Endpoint::new(
        parsed.https,
        parsed.host,
        parsed.port,
        format!("`{setting}`"),
    ))
}

/// `url` as an error message or `Debug` may show it: user information
/// (`user:password@`) and everything from a `?` or `#` on (a query string
/// can hold a token) are replaced with `…`. Everything before the last `@`
/// counts as user information, even where a password has a `/` in it.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let (rest, query) = match rest.find(['?', '#']) {
        Some(at) => (&rest[..at], "?…"),
        None => (rest, ""),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}…@{}{query}", &rest[at + 1..]),
        None => format!("{scheme}{rest}{query}"),
    }
}

/// An `http` or `https` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    pub(crate) https: bool,
    /// Lowercase; an IPv6 address keeps its brackets.
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    /// Everything after the authority (path, query, fragment); may be empty.
    pub(crate) path: String,
}

impl ParsedUrl {
    /// The host without IPv6 brackets.
    pub(crate) fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }
}

/// Why a URL was refused; its `Display` is a sentence quoting the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlError {
    url: String,
    kind: UrlErrorKind,
}

/// What is wrong with a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UrlErrorKind {
    Whitespace,
    Scheme,
    UserInfo,
    UnterminatedIpv6,
    InvalidIpv6(String),
    JunkAfterIpv6,
    NoHost,
    InvalidHost(String),
    InvalidPort(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &redact_url(&self.url);
        match &self.kind {
            UrlErrorKind::Whitespace => write!(f, "URL {url:?} contains whitespace"),
            UrlErrorKind::Scheme => write!(f, "URL {url:?} must start with http:// or https://"),
            UrlErrorKind::UserInfo => write!(f, "URL {url:?} must not contain user information"),
            UrlErrorKind::UnterminatedIpv6 => {
                write!(f, "URL {url:?} has an unterminated IPv6 address")
            }
            UrlErrorKind::InvalidIpv6(addr) => {
                write!(f, "URL {url:?} has an invalid IPv6 address {addr:?}")
            }
            UrlErrorKind::JunkAfterIpv6 => write!(f, "URL {url:?} has junk after the IPv6 address"),
            UrlErrorKind::NoHost => write!(f, "URL {url:?} has no host"),
            UrlErrorKind::InvalidHost(host) => {
                write!(f, "URL {url:?} has an invalid host {host:?}")
            }
            UrlErrorKind::InvalidPort(port) => {
                write!(f, "URL {url:?} has an invalid port {port:?}")
            }
        }
    }
}

/// Parses an absolute `http://` or `https://` URL by hand.
pub(crate) fn parse_url(url: &str) -> std::result::Result<ParsedUrl, UrlError> {
    let fail = |kind| {
        Err(UrlError {
            url: url.to_owned(),
            kind,
        })
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail(UrlErrorKind::Whitespace);
    }
    let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
        (true, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
        (false, rest)
    } else {
        return fail(UrlErrorKind::Scheme);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.contains('@') {
        return fail(UrlErrorKind::UserInfo);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return fail(UrlErrorKind::UnterminatedIpv6);
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return fail(UrlErrorKind::InvalidIpv6(addr.to_owned()));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return fail(UrlErrorKind::JunkAfterIpv6),
            },
        };
        (format!("[{}]", addr.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            return fail(UrlErrorKind::NoHost);
        }
        let host_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !host.starts_with(['.', '-'])
            && !host.contains("..");
        if !host_ok {
            return fail(UrlErrorKind::InvalidHost(host.to_owned()));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return fail(UrlErrorKind::InvalidPort(p.to_owned())),
        },
    };
    Ok(ParsedUrl {
        https,
        host,
        port,
        path: path.to_string(),
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::super::env::test_support::temp_dir;
    use super::*;

    fn setting_of(e: Error) -> &'static str {
        match e {
            Error::Config { setting, .. } => setting,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn service_names() {
        assert_eq!(Service::CloudWatch.signing_name(), "monitoring");
        assert_eq!(Service::DynamoDb.env_suffix(), "DYNAMODB");
        for s in [
            Service::Kinesis,
            Service::DynamoDb,
            Service::CloudWatch,
            Service::Sts,
            Service::Sso,
            Service::SsoOidc,
        ] {
            assert_eq!(
                s.endpoint_variable(),
                format!("AWS_ENDPOINT_URL_{}", s.env_suffix())
            );
        }
    }

    #[test]
    fn region_precedence() {
        let dir = temp_dir("region");
        std::fs::write(
            dir.join("config"),
            "[default]\nregion = eu-west-1\n[profile other]\nregion = ap-northeast-1\n",
        )
        .unwrap();
        let config = dir.join("config");
        let config = config.to_str().unwrap();
        let full = Env::from_pairs(&[
            ("AWS_REGION", "us-west-2"),
            ("AWS_DEFAULT_REGION", "us-east-2"),
            ("AWS_CONFIG_FILE", config),
        ]);
        assert_eq!(
            resolve_region_with(Some("ca-central-1"), &full).unwrap(),
            "ca-central-1"
        );
        assert_eq!(resolve_region_with(None, &full).unwrap(), "us-west-2");
        let env = Env::from_pairs(&[
            ("AWS_DEFAULT_REGION", "us-east-2"),
            ("AWS_CONFIG_FILE", config),
        ]);
        assert_eq!(resolve_region_with(None, &env).unwrap(), "us-east-2");
        let env = Env::from_pairs(&[("AWS_CONFIG_FILE", config)]);
        assert_eq!(resolve_region_with(None, &env).unwrap(), "eu-west-1");
        let env = Env::from_pairs(&[("AWS_CONFIG_FILE", config), ("AWS_PROFILE", "other")]);
        assert_eq!(resolve_region_with(None, &env).unwrap(), "ap-northeast-1");
        let env = Env::from_pairs(&[("AWS_CONFIG_FILE", config), ("AWS_PROFILE", "nope")]);
        assert_eq!(
            setting_of(resolve_region_with(None, &env).unwrap_err()),
            "region"
        );
    }

    #[test]
    fn missing_region_is_a_config_error() {
        let env = Env::from_pairs(&[("AWS_CONFIG_FILE", "/nonexistent/kc/config")]);
        let err = resolve_region_with(None, &env).unwrap_err();
        assert!(err.to_string().contains("AWS_REGION"), "{err}");
        assert_eq!(setting_of(err), "region");
    }

    #[test]
    fn invalid_regions_are_rejected() {
        let env = Env::from_pairs(&[]);
        for bad in [
            "US-EAST-1",
            "us_east_1",
            "-us",
            "us-",
            "eu west 1",
            "us.east",
        ] {
            let err = resolve_region_with(Some(bad), &env).unwrap_err();
            assert!(err.to_string().contains("not a valid region"), "{err}");
        }
        let env = Env::from_pairs(&[("AWS_REGION", "Eu-West-1")]);
        assert_eq!(
            setting_of(resolve_region_with(None, &env).unwrap_err()),
            "AWS_REGION"
        );
        assert_eq!(
            resolve_region_with(Some(" us-east-1 "), &env).unwrap(),
            "us-east-1"
        );
    }

    #[test]
    fn default_endpoints_by_partition() {
        let env = Env::from_pairs(&[]);
        let url = |service, region| {
            resolve_endpoint_with(service, None, region, &env)
                .unwrap()
                .url()
                .to_string()
        };
        assert_eq!(
            url(Service::Kinesis, "us-east-1"),
            "https://kinesis.us-east-1.amazonaws.com"
        );
        assert_eq!(
            url(Service::CloudWatch, "eu-west-1"),
            "https://monitoring.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            url(Service::DynamoDb, "cn-north-1"),
            "https://dynamodb.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            url(Service::Sts, "us-gov-west-1"),
            "https://sts.us-gov-west-1.amazonaws.com"
        );
        assert_eq!(
            url(Service::Sso, "eu-west-1"),
            "https://portal.sso.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            url(Service::SsoOidc, "eu-west-1"),
            "https://oidc.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            url(Service::Kinesis, "us-iso-east-1"),
            "https://kinesis.us-iso-east-1.c2s.ic.gov"
        );
        assert_eq!(
            url(Service::Kinesis, "us-isob-east-1"),
            "https://kinesis.us-isob-east-1.sc2s.sgov.gov"
        );
        let ep = resolve_endpoint_with(Service::Kinesis, None, "us-east-1", &env).unwrap();
        assert!(ep.is_https());
        assert_eq!(ep.port(), 443);
        assert_eq!(ep.host_header(), "kinesis.us-east-1.amazonaws.com");
        assert!(resolve_endpoint_with(Service::Kinesis, None, "Bad", &env).is_err());
    }

    #[test]
    fn endpoint_precedence() {
        let env = Env::from_pairs(&[
            ("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4567"),
            ("AWS_ENDPOINT_URL", "http://localhost:5000/"),
        ]);
        let ep = resolve_endpoint_with(
            Service::Kinesis,
            Some("https://x.test:8443"),
            "us-east-1",
            &env,
        )
        .unwrap();
        assert_eq!(ep.url(), "https://x.test:8443");
        let ep = resolve_endpoint_with(Service::Kinesis, None, "us-east-1", &env).unwrap();
        assert_eq!(ep.url(), "http://127.0.0.1:4567");
        assert_eq!(ep.host_header(), "127.0.0.1:4567");
        assert!(!ep.is_https());
        let ep = resolve_endpoint_with(Service::DynamoDb, None, "us-east-1", &env).unwrap();
        assert_eq!(ep.url(), "http://localhost:5000");
        let ignoring = Env::from_pairs(&[
            ("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4567"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "TRUE"),
        ]);
        let ep = resolve_endpoint_with(Service::Kinesis, None, "us-east-1", &ignoring).unwrap();
        assert_eq!(ep.url(), "https://kinesis.us-east-1.amazonaws.com");
    }

    #[test]
    fn endpoint_url_forms() {
        let env = Env::from_pairs(&[]);
        let ep = |u: &str| resolve_endpoint_with(Service::Kinesis, Some(u), "us-east-1", &env);
        let e = ep("HTTP://LocalHost:80/").unwrap();
        assert_eq!(
            (e.url(), e.host_header(), e.port()),
            ("http://localhost", "localhost", 80)
        );
        let e = ep("https://[::1]:4567").unwrap();
        assert_eq!(e.url(), "https://[::1]:4567");
        assert_eq!(e.host_header(), "[::1]:4567");
        assert_eq!(e.host(), "[::1]");
        let e = ep("https://[FD00:EC2::23]").unwrap();
        assert_eq!(e.host_header(), "[fd00:ec2::23]");
        assert_eq!(e.port(), 443);
        assert_eq!(e.to_string(), "https://[fd00:ec2::23]");
    }

    #[test]
    fn endpoint_url_errors_name_the_setting() {
        let env = Env::from_pairs(&[]);
        for bad in [
            "localhost:4567",
            "ftp://host",
            "http://",
            "http://:80",
            "http://host:0",
            "http://host:99999",
            "http://host:8a",
            "http://host:",
            "http://user@host",
            "http://[::1",
            "http://[zz::1]",
            "http://[::1]x",
            "http://ho st",
            "http://host/path",
            "http://host/?q=1",
            "http://host#frag",
            "http://ho%st",
        ] {
            let err = resolve_endpoint_with(Service::Kinesis, Some(bad), "us-east-1", &env)
                .expect_err(bad);
            assert_eq!(setting_of(err), "endpoint_url", "{bad}");
        }
        let env = Env::from_pairs(&[("AWS_ENDPOINT_URL_KINESIS", "kinesis.local")]);
        let err = resolve_endpoint_with(Service::Kinesis, None, "us-east-1", &env).unwrap_err();
        assert!(
            err.to_string().contains("AWS_ENDPOINT_URL_KINESIS"),
            "{err}"
        );
        let env = Env::from_pairs(&[("AWS_ENDPOINT_URL", "http://h/x")]);
        let err = resolve_endpoint_with(Service::Sts, None, "us-east-1", &env).unwrap_err();
        assert_eq!(setting_of(err), "AWS_ENDPOINT_URL");
    }

    #[test]
    fn urls_are_shown_without_user_information_or_query() {
        for (url, shown) in [
            ("https://user:PASSWORD@host:8443/", "https://…@host:8443/"),
            ("https://u:PASS/WORD@host/x", "https://…@host/x"),
            ("http://host/path?token=SECRET#f", "http://host/path?…"),
            ("http://host#SECRET", "http://host?…"),
            ("http://user:PASSWORD@host/?q=SECRET@x", "http://…@host/?…"),
            (
                "https://kinesis.us-east-1.amazonaws.com",
                "https://kinesis.us-east-1.amazonaws.com",
            ),
            ("not a url PASSWORD@x", "…@x"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        // In every error about an endpoint URL, and in ClientConfig's Debug.
        let env = Env::from_pairs(&[]);
        for bad in [
            "https://user:PASSWORD@kinesis.example",
            "https://kinesis.example/x?X-Token=SECRET",
            "https://kinesis.example/?token=SECRET",
            "ftp://user:PASSWORD@kinesis.example",
            "http://user:PASSWORD@[zz::1]",
            "http://user:PASSWORD@host:99999",
            "http://ho st/?token=SECRET",
        ] {
            let err = resolve_endpoint_with(Service::Kinesis, Some(bad), "us-east-1", &env)
                .expect_err(bad);
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains("PASSWORD") && !shown.contains("SECRET"),
                "{shown}"
            );
        }
        let config = crate::aws::ClientConfig::new()
            .endpoint_url("https://user:PASSWORD@kinesis.example/?token=SECRET");
        let shown = format!("{config:?} {config:#?}");
        assert!(
            !shown.contains("PASSWORD")
                && !shown.contains("SECRET")
                && shown.contains("kinesis.example"),
            "{shown}"
        );
    }

    #[test]
    fn parse_url_keeps_paths() {
        let u = parse_url("http://169.254.170.2/v2/credentials?id=1").unwrap();
        assert_eq!(u.host, "169.254.170.2");
        assert_eq!(u.port, None);
        assert_eq!(u.path, "/v2/credentials?id=1");
        let u = parse_url("http://[fd00:ec2::23]:8080/x").unwrap();
        assert_eq!(u.bare_host(), "fd00:ec2::23");
        assert_eq!(u.port, Some(8080));
    }
}
