//! The process environment, seen through a small abstraction so that tests
//! can supply their own variables instead of mutating the real environment,
//! and the shared AWS config and credentials files (profiles).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Where environment variables come from: the real process environment, or
/// (in tests) a fixed map. Files named by variables are read from disk in
/// both cases.
#[derive(Clone)]
pub(crate) struct Env {
    map: Option<HashMap<String, String>>,
}

impl fmt::Debug for Env {
    // Variables may hold secrets: show only where they come from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.map {
            None => f.write_str("Env::Process"),
            Some(m) => write!(f, "Env::Map({} variables)", m.len()),
        }
    }
}

impl Env {
    /// The environment of this process.
    pub(crate) fn process() -> Env {
        Env { map: None }
    }

    /// A fixed set of variables; the process environment is not consulted.
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Env {
        Env {
            map: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    /// The value of a variable, trimmed; empty or unset values are `None`.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        let value = match &self.map {
            None => std::env::var(name).ok()?,
            Some(m) => m.get(name)?.clone(),
        };
        let value = value.trim();
        if value.is_empty() {
            None
        } else {
            Some(value.to_string())
        }
    }

    /// True when the variable is set to `true` (any case).
    pub(crate) fn is_true(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The user's home directory: `HOME`, else `USERPROFILE`, else
    /// `HOMEDRIVE` + `HOMEPATH`.
    pub(crate) fn home_dir(&self) -> Option<PathBuf> {
        if let Some(home) = self.get("HOME").or_else(|| self.get("USERPROFILE")) {
            return Some(PathBuf::from(home));
        }
        match (self.get("HOMEDRIVE"), self.get("HOMEPATH")) {
            (Some(drive), Some(path)) => Some(PathBuf::from(format!("{drive}{path}"))),
            _ => None,
        }
    }

    /// A path from a variable or a default, with a leading `~/` replaced by
    /// the home directory. `None` when `~` is needed but there is no home.
    pub(crate) fn expand_path(&self, path: &str) -> Option<PathBuf> {
        if path == "~" {
            return self.home_dir();
        }
        match path.strip_prefix("~/").or_else(|| path.strip_prefix("~\\")) {
            Some(rest) => Some(self.home_dir()?.join(rest)),
            None => Some(PathBuf::from(path)),
        }
    }

    /// Reads a whole file as UTF-8.
    pub(crate) fn read_file(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    /// The profile to use: `AWS_PROFILE`, else `default`.
    pub(crate) fn profile_name(&self) -> String {
        self.get("AWS_PROFILE")
            .unwrap_or_else(|| "default".to_string())
    }

    /// `AWS_CONFIG_FILE`, else `~/.aws/config`.
    pub(crate) fn config_file(&self) -> Option<PathBuf> {
        let path = self
            .get("AWS_CONFIG_FILE")
            .unwrap_or_else(|| "~/.aws/config".to_string());
        self.expand_path(&path)
    }

    /// `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`.
    pub(crate) fn credentials_file(&self) -> Option<PathBuf> {
        let path = self
            .get("AWS_SHARED_CREDENTIALS_FILE")
            .unwrap_or_else(|| "~/.aws/credentials".to_string());
        self.expand_path(&path)
    }

    /// The named profile, merged from the config file and the credentials
    /// file (the credentials file wins for keys both set). `Ok(None)` when
    /// neither file has the profile; missing files count as empty. `Err`
    /// describes a file that exists but cannot be read.
    pub(crate) fn load_profile(&self, name: &str) -> Result<Option<Profile>, String> {
        let mut profile = Profile {
            properties: HashMap::new(),
            files: Vec::new(),
        };
        let mut found = false;
        let files = [
            (self.config_file(), FileKind::Config),
            (self.credentials_file(), FileKind::Credentials),
        ];
        for (path, kind) in files {
            let Some(path) = path else { continue };
            let text = match self.read_file(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            let mut sections = parse_profile_file(&text, kind);
            if let Some(props) = sections.remove(name) {
                found = true;
                profile.properties.extend(props);
                profile.files.push(path);
            }
        }
        Ok(found.then_some(profile))
    }
}

impl Env {
    /// The `[sso-session name]` section of the config file; `Ok(None)` when
    /// there is none.
    pub(crate) fn load_sso_session(&self, name: &str) -> Result<Option<Profile>, String> {
        let Some(path) = self.config_file() else {
            return Ok(None);
        };
        let text = match self.read_file(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(parse_profile_file(&text, FileKind::SsoSessions)
            .remove(name)
            .map(|properties| Profile {
                properties,
                files: vec![path],
            }))
    }
}

/// One profile's properties, merged from the shared files.
pub(crate) struct Profile {
    properties: HashMap<String, String>,
    /// The files that contributed to this profile, config file first.
    pub(crate) files: Vec<PathBuf>,
}

impl Profile {
    /// A property by its (lowercase) name; empty values are `None`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The files this profile came from, for messages.
    pub(crate) fn describe_files(&self) -> String {
        self.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// Which shared file is being parsed; they name sections differently.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FileKind {
    /// `~/.aws/config`: `[default]` and `[profile name]`.
    Config,
    /// `~/.aws/credentials`: `[name]`.
    Credentials,
    /// The `[sso-session name]` sections of `~/.aws/config`.
    SsoSessions,
}

/// Parses an INI-style shared config or credentials file into profiles.
///
/// Comment lines start with `#` or `;`; a value's trailing comment must be
/// preceded by whitespace. Keys are lowercased. A line indented deeper than
/// the property before it continues that property's value (AWS uses this for
/// nested settings such as `s3 =`). Sections that are not profiles (such as
/// `[sso-session x]` in the config file) are skipped.
pub(crate) fn parse_profile_file(
    text: &str,
    kind: FileKind,
) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    // The last property seen and the indentation of its line.
    let mut last: Option<(String, usize)> = None;

    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if let Some(header) = trimmed.strip_prefix('[') {
            last = None;
            current = header
                .split_once(']')
                .and_then(|(name, _)| section_profile_name(name.trim(), kind));
            if let Some(name) = &current {
                sections.entry(name.clone()).or_default();
            }
            continue;
        }
        let Some(section) = current.as_ref().and_then(|name| sections.get_mut(name)) else {
            continue;
        };
        if let Some((key, key_indent)) = &last {
            if indent > *key_indent {
                let value = section.entry(key.clone()).or_default();
                if !value.is_empty() {
                    value.push('\n');
                }
                value.push_str(strip_inline_comment(trimmed));
                continue;
            }
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() {
            continue;
        }
        section.insert(key.clone(), strip_inline_comment(value.trim()).to_string());
        last = Some((key, indent));
    }
    sections
}

/// The profile a section header names, if it names one.
fn section_profile_name(header: &str, kind: FileKind) -> Option<String> {
    let name = match kind {
        FileKind::Credentials => header,
        FileKind::SsoSessions => {
            let rest = header.strip_prefix("sso-session")?;
            if !rest.starts_with([' ', '\t']) {
                return None;
            }
            rest.trim()
        }
        FileKind::Config => {
            if header == "default" {
                header
            } else {
                let rest = header.strip_prefix("profile")?;
                if !rest.starts_with([' ', '\t']) {
                    return None;
                }
                rest.trim()
            }
        }
    };
    (!name.is_empty() && !name.contains(char::is_whitespace)).then(|| name.to_string())
}

/// Removes a trailing ` # comment` or ` ; comment` from a value.
fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for i in 1..bytes.len() {
        if (bytes[i] == b'#' || bytes[i] == b';') && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t')
        {
            return value[..i].trim_end();
        }
    }
    value
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh empty directory under the system temp dir for one test.
    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "kinesis-consumer-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::temp_dir;
    use super::*;

    #[test]
    fn empty_and_blank_values_are_absent() {
        let env = Env::from_pairs(&[("A", ""), ("B", "  "), ("C", " x ")]);
        assert_eq!(env.get("A"), None);
        assert_eq!(env.get("B"), None);
        assert_eq!(env.get("C").as_deref(), Some("x"));
        assert_eq!(env.get("D"), None);
    }

    #[test]
    fn debug_shows_no_values() {
        let env = Env::from_pairs(&[("AWS_SECRET_ACCESS_KEY", "sekrit")]);
        assert!(!format!("{env:?}").contains("sekrit"));
    }

    #[test]
    fn expands_home() {
        let env = Env::from_pairs(&[("HOME", "/home/me")]);
        assert_eq!(
            env.expand_path("~/.aws/config"),
            Some(PathBuf::from("/home/me/.aws/config"))
        );
        assert_eq!(env.expand_path("/etc/x"), Some(PathBuf::from("/etc/x")));
        assert_eq!(Env::from_pairs(&[]).expand_path("~/.aws/config"), None);
        let win = Env::from_pairs(&[("HOMEDRIVE", "C:"), ("HOMEPATH", "\\Users\\me")]);
        assert_eq!(win.home_dir(), Some(PathBuf::from("C:\\Users\\me")));
    }

    #[test]
    fn parses_config_sections() {
        let text = "\
# leading comment
; another
[default]
region = eu-west-1
[profile  dev ]   # comment after header
region=us-west-2
  \t
[dev]
region = ignored-in-config
[sso-session corp]
sso_region = us-east-1
[profile prod]
Region = ap-south-1 ; inline
output = json#not-a-comment
";
        let s = parse_profile_file(text, FileKind::Config);
        assert_eq!(s["default"]["region"], "eu-west-1");
        assert_eq!(s["dev"]["region"], "us-west-2");
        assert_eq!(s["prod"]["region"], "ap-south-1");
        assert_eq!(s["prod"]["output"], "json#not-a-comment");
        assert!(!s.contains_key("corp"));
        assert!(!s.contains_key("sso-session corp"));
        assert_eq!(s.len(), 3);
        let sessions = parse_profile_file(text, FileKind::SsoSessions);
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions["corp"]["sso_region"], "us-east-1");
    }

    #[test]
    fn parses_credentials_sections_and_continuations() {
        let text = "\
[default]
aws_access_key_id = AKID
  aws_secret_access_key = deeper-is-continuation
[other]
   aws_access_key_id = A2
   aws_secret_access_key = S2
s3 =
    max_concurrent_requests = 20
[profile x]
aws_access_key_id = literal-name
";
        let s = parse_profile_file(text, FileKind::Credentials);
        assert_eq!(
            s["default"]["aws_access_key_id"],
            "AKID\naws_secret_access_key = deeper-is-continuation"
        );
        assert_eq!(s["other"]["aws_access_key_id"], "A2");
        assert_eq!(s["other"]["aws_secret_access_key"], "S2");
        assert_eq!(s["other"]["s3"], "max_concurrent_requests = 20");
        // Profile names have no whitespace; this section is skipped.
        assert!(!s.contains_key("profile x") && !s.contains_key("x"));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn properties_outside_sections_and_crlf() {
        let text = "orphan = 1\r\n[default]\r\naws_access_key_id = A\r\n";
        let s = parse_profile_file(text, FileKind::Credentials);
        assert_eq!(s.len(), 1);
        assert_eq!(s["default"]["aws_access_key_id"], "A");
    }

    #[test]
    fn credentials_file_wins_over_config_file() {
        let dir = temp_dir("merge");
        std::fs::write(
            dir.join("config"),
            "[profile p]\nregion = eu-west-1\naws_access_key_id = FROM_CONFIG\n",
        )
        .unwrap();
        std::fs::write(dir.join("creds"), "[p]\naws_access_key_id = FROM_CREDS\n").unwrap();
        let env = Env::from_pairs(&[
            ("AWS_CONFIG_FILE", dir.join("config").to_str().unwrap()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.join("creds").to_str().unwrap(),
            ),
        ]);
        let p = env.load_profile("p").unwrap().unwrap();
        assert_eq!(p.get("aws_access_key_id"), Some("FROM_CREDS"));
        assert_eq!(p.get("region"), Some("eu-west-1"));
        assert_eq!(p.files.len(), 2);
        assert!(env.load_profile("missing").unwrap().is_none());
    }

    #[test]
    fn default_files_under_home() {
        let dir = temp_dir("home");
        std::fs::create_dir_all(dir.join(".aws")).unwrap();
        std::fs::write(dir.join(".aws/config"), "[default]\nregion = sa-east-1\n").unwrap();
        let env = Env::from_pairs(&[("HOME", dir.to_str().unwrap())]);
        let p = env.load_profile("default").unwrap().unwrap();
        assert_eq!(p.get("region"), Some("sa-east-1"));
        // No credentials file: still fine.
        assert_eq!(p.files, vec![dir.join(".aws/config")]);
    }
}
