//! `credential_process`: a command whose standard output is a JSON
//! document with the credentials (`Version` 1).
//!
//! As in the AWS CLI, the value is split into words (single and double
//! quotes and backslashes as in a POSIX shell) and run directly; a value
//! that needs a shell (pipes, redirections, variables, globs, `~`, `;`, `&`)
//! is handed to `sh -c` (`cmd /C` on Windows). The command's standard
//! output holds secrets: it is parsed and never shown, logged or put in an
//! error. A failing command is reported with its exit status and the first
//! line of its standard error.

use std::fmt;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Credentials;
use crate::{Error, Result};

/// How long the command may run before it is killed.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The most output read from the command.
const MAX_OUTPUT: u64 = 1024 * 1024;

/// Runs `command` (the `credential_process` of `profile`) and parses its
/// output.
pub(super) fn run(command: &str, profile: &str) -> Result<Credentials> {
    run_within(command, profile, TIMEOUT)
}

/// [`run`], stopping the command after `timeout`.
///
/// The command starts in a process group of its own (on Unix), so that
/// what it starts (the shell's children, a background process) can be
/// stopped with it: at the deadline the whole group is killed. The
/// deadline bounds the wait for its output too, which a process it left
/// behind can hold open after it exited.
fn run_within(command: &str, profile: &str, timeout: Duration) -> Result<Credentials> {
    let mut cmd = command_for(command).map_err(|why| {
        Error::Credentials(format!(
            "profile `{profile}`: credential_process cannot be parsed: {why}"
        ))
    })?;
    let program = program_name(command);
    let fail = |why: String| {
        Error::Credentials(format!(
            "profile `{profile}`: credential_process `{program}` {why}"
        ))
    };
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let deadline = Instant::now() + timeout;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not be started: {e}")))?;
    log::debug!("running the credential_process `{program}` of profile `{profile}`");
    let group = child.id();
    // Read both pipes on their own threads so neither can fill up and
    // block the command.
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let timed_out = || {
        fail(format!(
            "did not finish within {} s and was stopped",
            timeout.as_secs()
        ))
    };
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_group(group);
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        }
        Err(e) => return Err(fail(format!("could not be waited for: {e}"))),
    };
    let output = (receive(&stdout, deadline), receive(&stderr, deadline));
    let (Some(stdout), Some(stderr)) = output else {
        // It exited, but something it started still holds a pipe open.
        kill_group(group);
        return Err(timed_out());
    };
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        let first_line = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map_or_else(
                || "nothing on standard error".to_string(),
                |l| l.chars().take(300).collect(),
            );
        let status = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("{status}"),
        };
        return Err(fail(format!("failed ({status}): {first_line}")));
    }
    parse_output(&stdout).map_err(|why| fail(format!("printed unusable credentials: {why}")))
}

/// Reads `pipe` to its end (at most [`MAX_OUTPUT`]) on a thread of its
/// own; what it read arrives on the channel.
fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(pipe) = pipe {
            let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut out);
        }
        let _ = sender.send(out);
    });
    receiver
}

/// What a pipe's reader read, if it finished by `deadline`.
fn receive(reader: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Option<Vec<u8>> {
    let left = deadline.saturating_duration_since(Instant::now());
    reader.recv_timeout(left).ok()
}

/// The child's exit status, or `None` if it is still running at `deadline`.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every process of process group `group` (the command and what it
/// started), with the `kill` utility: the crate has no libc binding. On
/// other systems the command alone is killed.
fn kill_group(group: u32) {
    #[cfg(unix)]
    {
        let killed = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{group}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !killed.is_ok_and(|s| s.success()) {
            log::debug!("could not kill process group {group} of a credential_process");
        }
    }
    #[cfg(not(unix))]
    let _ = group;
}

/// Why the command's output holds no credentials. It never quotes the
/// output (it holds secrets).
#[derive(Debug)]
pub(super) enum OutputError {
    /// Not JSON: serde_json's error kind and position (never its text).
    NotJson(String),
    NotAnObject,
    /// A `Version` other than 1 (the number as printed).
    UnsupportedVersion(String),
    VersionNotANumber,
    NoVersion,
    NotAString(&'static str),
    Missing(&'static str),
    BadExpiration,
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputError::NotJson(why) => write!(f, "not a JSON document ({why})"),
            OutputError::NotAnObject => f.write_str("not a JSON object"),
            OutputError::UnsupportedVersion(v) => {
                write!(f, "Version {v} is not supported (only 1)")
            }
            OutputError::VersionNotANumber => f.write_str("Version is not a number"),
            OutputError::NoVersion => f.write_str("no Version (expected 1)"),
            OutputError::NotAString(name) => write!(f, "{name} is not a string"),
            OutputError::Missing(name) => write!(f, "no {name}"),
            OutputError::BadExpiration => {
                f.write_str("Expiration is not an ISO 8601 time such as 2030-01-01T00:00:00Z")
            }
        }
    }
}

/// Credentials from the command's output.
pub(super) fn parse_output(stdout: &[u8]) -> std::result::Result<Credentials, OutputError> {
    let value: serde_json::Value = serde_json::from_slice(stdout)
        .map_err(|e| OutputError::NotJson(describe_json_error(&e)))?;
    if !value.is_object() {
        return Err(OutputError::NotAnObject);
    }
    match value.get("Version") {
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) if v.is_number() => return Err(OutputError::UnsupportedVersion(v.to_string())),
        Some(_) => return Err(OutputError::VersionNotANumber),
        None => return Err(OutputError::NoVersion),
    }
    let field = |name: &'static str| -> std::result::Result<Option<&str>, OutputError> {
        match value.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(OutputError::NotAString(name)),
        }
    };
    let required = |name: &'static str| field(name)?.ok_or(OutputError::Missing(name));
    let mut credentials = Credentials::new(required("AccessKeyId")?, required("SecretAccessKey")?);
    if let Some(token) = field("SessionToken")? {
        credentials = credentials.with_session_token(token);
    }
    if let Some(expiration) = field("Expiration")? {
        let at = crate::time::parse_iso8601(expiration).ok_or(OutputError::BadExpiration)?;
        credentials = credentials.with_expiry(at);
    }
    Ok(credentials)
}

/// A serde_json error's kind and position, never the text around it.
fn describe_json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "ends early",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// The program's name, for messages: the base name of the command's first
/// word that is not a variable assignment (`TOKEN=… helper` is a shell's
/// way to pass a secret), never its directories or arguments, which may
/// hold secrets too.
fn program_name(command: &str) -> String {
    // Shell syntax splits into words too (operators become words of their
    // own); a command that does not split has no name to show.
    let words = split_words(command).unwrap_or_default();
    let program = words
        .iter()
        .find(|w| !is_assignment(w))
        .map(|w| w.rsplit('/').next().unwrap_or_default())
        .unwrap_or_default();
    // A name with `=` in it may still be a secret: it is not shown.
    if program.is_empty() || program.contains('=') {
        return "(command)".to_owned();
    }
    program.to_owned()
}

/// True for a shell variable assignment such as `TOKEN=abc`.
fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// Why a command line cannot be split into words.
#[derive(Debug, PartialEq, Eq)]
enum CommandError {
    /// A quote (`'` or `"`) that is not closed.
    UnclosedQuote(char),
    TrailingBackslash,
    Empty,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::UnclosedQuote('\'') => f.write_str("a single quote is not closed"),
            CommandError::UnclosedQuote(_) => f.write_str("a double quote is not closed"),
            CommandError::TrailingBackslash => f.write_str("the command ends with a backslash"),
            CommandError::Empty => f.write_str("the command is empty"),
        }
    }
}

/// The command to run: the words themselves, or a shell when needed.
fn command_for(command: &str) -> std::result::Result<Command, CommandError> {
    if needs_shell(command) {
        let mut cmd = if cfg!(windows) {
            let mut c = Command::new("cmd");
            c.arg("/C");
            c
        } else {
            let mut c = Command::new("sh");
            c.arg("-c");
            c
        };
        cmd.arg(command);
        return Ok(cmd);
    }
    let words = split_words(command)?;
    let Some((program, args)) = words.split_first() else {
        return Err(CommandError::Empty);
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    Ok(cmd)
}

/// True when the command uses shell syntax outside quotes: operators,
/// redirections, expansions, globs, or a leading `~`.
fn needs_shell(command: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut word_start = true;
    for c in command.chars() {
        if escaped {
            escaped = false;
            word_start = false;
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (Some('"'), '"') => quote = None,
            // Inside double quotes a shell still expands these.
            (Some('"'), '$' | '`') => return true,
            (Some('"'), '\\') => escaped = true,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') => escaped = true,
            (None, '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' | '[') => {
                return true;
            }
            (None, '\n') => return true,
            (None, '~' | '#') if word_start => return true,
            (None, _) => {}
        }
        word_start = quote.is_none() && c.is_whitespace();
    }
    false
}

/// Splits a command into words as a POSIX shell would, without expansions:
/// whitespace separates words, single quotes keep everything, double quotes
/// keep everything but `\"` and `\\`, a backslash outside quotes keeps the
/// next character.
fn split_words(command: &str) -> std::result::Result<Vec<String>, CommandError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(CommandError::UnclosedQuote('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(CommandError::UnclosedQuote('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(CommandError::UnclosedQuote('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(CommandError::TrailingBackslash),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_like_a_shell() {
        assert_eq!(
            split_words(r#"/usr/bin/get-creds --profile "my prof" 'a b' c\ d "x\"y""#).unwrap(),
            [
                "/usr/bin/get-creds",
                "--profile",
                "my prof",
                "a b",
                "c d",
                "x\"y"
            ]
        );
        assert_eq!(split_words("  a   b ").unwrap(), ["a", "b"]);
        assert_eq!(split_words("a ''").unwrap(), ["a", ""]);
        assert_eq!(split_words("a 'b"), Err(CommandError::UnclosedQuote('\'')));
        assert_eq!(split_words("a \"b"), Err(CommandError::UnclosedQuote('"')));
        assert_eq!(split_words("a\\"), Err(CommandError::TrailingBackslash));
    }

    #[test]
    fn shell_only_when_needed() {
        for plain in [
            "/bin/creds",
            "creds --a=b --c d",
            "creds 'x|y' \"a;b\"",
            "creds a\\|b",
            "creds a#b",
            "creds key~1",
        ] {
            assert!(!needs_shell(plain), "{plain}");
        }
        for shell in [
            "creds | jq .",
            "creds > /tmp/x",
            "creds; other",
            "creds && other",
            "creds $HOME",
            "creds \"$HOME\"",
            "creds `date`",
            "creds *.json",
            "~/bin/creds",
            "creds ~/x",
            "creds # comment",
            "(creds)",
        ] {
            assert!(needs_shell(shell), "{shell}");
        }
    }

    #[test]
    fn the_program_is_named_by_its_base_name_only() {
        for (command, name) in [
            ("/usr/local/bin/get-creds --token SECRET-ARG", "get-creds"),
            ("TOKEN=SECRET-VALUE helper --x", "helper"),
            ("A=1 TOKEN='SECRET VALUE' /opt/bin/helper | jq .", "helper"),
            ("'/opt/my tools/helper' arg", "helper"),
            ("TOKEN=SECRET-VALUE", "(command)"),
            ("--opt=SECRET-VALUE", "(command)"),
        ] {
            assert_eq!(program_name(command), name, "{command}");
        }
    }

    #[test]
    fn errors_show_no_assignment_or_path() {
        // Not found: the error names the program, not what precedes it.
        let err = run_within(
            "TOKEN=SECRET-VALUE /no/SECRET-DIR/such-helper",
            "proc",
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`such-helper`"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn parses_version_1_output() {
        let c = parse_output(
            br#"{"Version":1,"AccessKeyId":"AKID","SecretAccessKey":"S","SessionToken":"T","Expiration":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKID");
        assert_eq!(c.session_token(), Some("T"));
        assert!(c.expires_at().is_some());
        let c = parse_output(br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S"}"#).unwrap();
        assert_eq!((c.session_token(), c.expires_at()), (None, None));
    }

    #[test]
    fn bad_output_is_described_without_its_content() {
        for (out, expected) in [
            (&br#"{"AccessKeyId":"A","SecretAccessKey":"SECRET-1"}"#[..], "no Version"),
            (br#"{"Version":2,"AccessKeyId":"A","SecretAccessKey":"SECRET-1"}"#, "Version 2"),
            (br#"{"Version":1,"AccessKeyId":"A"}"#, "no SecretAccessKey"),
            (br#"{"Version":1,"SecretAccessKey":"SECRET-1"}"#, "no AccessKeyId"),
            (br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"SECRET-1","Expiration":"SECRET-1"}"#, "Expiration"),
            (b"SECRET-1 not json", "not a JSON document"),
            (br#"["SECRET-1"]"#, "not a JSON object"),
        ] {
            let why = parse_output(out).unwrap_err().to_string();
            assert!(why.contains(expected), "{why}");
            assert!(!why.contains("SECRET-1"), "{why}");
        }
    }

    /// A profile whose credential_process is a shell script in a temp dir.
    #[cfg(unix)]
    mod end_to_end {
        use super::super::super::test_support::*;
        use crate::aws::credentials::ProvideCredentials;
        use crate::aws::env::test_support::temp_dir;
        use std::os::unix::fs::PermissionsExt;
        use std::path::PathBuf;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::{Duration, Instant};

        use super::super::run_within;

        fn script(body: &str) -> PathBuf {
            let path = temp_dir("process").join("creds.sh");
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        }

        fn files_for(command: &str) -> (PathBuf, PathBuf) {
            write_files(
                &format!("[profile proc]\ncredential_process = {command}\n"),
                "",
            )
        }

        #[test]
        fn good_process() {
            let s = script(
                r#"[ "$1" = "--role" ] && [ "$2" = "two words" ] || exit 9
echo '{"Version": 1, "AccessKeyId": "PROCKEY", "SecretAccessKey": "PROCSECRET",'
echo ' "SessionToken": "PROCTOKEN", "Expiration": "2030-01-01T01:00:00Z"}'"#,
            );
            let (config, creds) = files_for(&format!("{} --role 'two words'", s.display()));
            let c = chain(&[
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
                ("AWS_PROFILE", "proc"),
            ])
            .credentials()
            .unwrap();
            assert_eq!(c.access_key_id(), "PROCKEY");
            assert_eq!(c.secret_access_key(), "PROCSECRET");
            assert_eq!(c.session_token(), Some("PROCTOKEN"));
        }

        #[test]
        fn failing_process_shows_status_and_stderr_never_stdout() {
            let s = script(
                "echo '{\"Version\":1,\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"STDOUT-SECRET\"}'\n\
                 echo 'token expired, run login' >&2\necho 'second line' >&2\nexit 3",
            );
            let (config, creds) = files_for(&s.display().to_string());
            let m = expect_credentials_error(
                chain(&[
                    ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                    ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
                    ("AWS_PROFILE", "proc"),
                ])
                .credentials(),
            );
            assert!(m.contains("exit status 3"), "{m}");
            assert!(m.contains("token expired, run login"), "{m}");
            assert!(!m.contains("second line"), "{m}");
            assert!(!m.contains("STDOUT-SECRET"), "{m}");
            assert!(m.contains("profile `proc`"), "{m}");
        }

        #[test]
        fn garbled_output_is_an_error_without_the_output() {
            let s = script("echo 'STDOUT-SECRET garbage'");
            let (config, creds) = files_for(&s.display().to_string());
            let m = expect_credentials_error(
                chain(&[
                    ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                    ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
                    ("AWS_PROFILE", "proc"),
                ])
                .credentials(),
            );
            assert!(m.contains("not a JSON document"), "{m}");
            assert!(!m.contains("STDOUT-SECRET"), "{m}");
        }

        /// Live processes (not zombies, which only wait to be reaped)
        /// among `pids` or in process group `group`, from /proc.
        #[cfg(target_os = "linux")]
        fn live(pids: &[u32], group: u32) -> Vec<u32> {
            let mut found = Vec::new();
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                // After the command name in parentheses: state, parent, group.
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    continue;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let in_group = fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(group);
                if fields.first() != Some(&"Z") && (pids.contains(&pid) || in_group) {
                    found.push(pid);
                }
            }
            found
        }

        /// The command's processes, as it recorded them in `file`: its
        /// process group, then pids. Each is gone within 5 s (SIGKILL
        /// takes effect as the processes next run).
        #[cfg(target_os = "linux")]
        fn assert_none_left(file: &std::path::Path) {
            let text = std::fs::read_to_string(file).unwrap();
            let mut numbers = text.split_whitespace().map(|n| n.parse::<u32>().unwrap());
            let group = numbers.next().unwrap();
            let pids: Vec<u32> = numbers.collect();
            assert!(pids.len() >= 2, "{text}");
            let started = Instant::now();
            while !live(&pids, group).is_empty() && started.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let left = live(&pids, group);
            assert!(
                left.is_empty(),
                "still running: {left:?} (group {group}, pids {pids:?})"
            );
        }

        /// A script that records its process group and its pid in
        /// `file`, then runs `rest`.
        #[cfg(target_os = "linux")]
        fn recording_script(file: &std::path::Path, rest: &str) -> PathBuf {
            script(&format!(
                "cut -d' ' -f5 /proc/$$/stat > {f}\necho $$ >> {f}\n{rest}",
                f = file.display()
            ))
        }

        #[cfg(target_os = "linux")]
        #[test]
        fn a_process_left_holding_the_output_is_stopped_at_the_deadline() {
            let file = temp_dir("process-pids").join("pids");
            // Prints credentials and exits, but leaves `sleep` holding
            // its standard output.
            let s = recording_script(
                &file,
                "sleep 30 &\necho $! >> FILE\n\
                 echo '{\"Version\":1,\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"S\"}'"
                    .replace("FILE", &file.display().to_string())
                    .as_str(),
            );
            let timeout = Duration::from_secs(1);
            let started = Instant::now();
            let err = run_within(&s.display().to_string(), "proc", timeout).unwrap_err();
            let took = started.elapsed();
            assert!(took < timeout + Duration::from_secs(3), "took {took:?}");
            assert!(
                err.to_string().contains("did not finish within 1 s"),
                "{err}"
            );
            assert_none_left(&file);
        }

        #[cfg(target_os = "linux")]
        #[test]
        fn a_process_past_its_deadline_is_stopped_with_all_it_started() {
            let file = temp_dir("process-pids").join("pids");
            let s = recording_script(
                &file,
                // The shell that runs it is its parent.
                &format!(
                    "echo $PPID >> {f}\nsleep 30 &\necho $! >> {f}\nwait",
                    f = file.display()
                ),
            );
            // Needs a shell: run as `sh -c`, whose children must be
            // stopped too.
            let command = format!("{} 2>/dev/null", s.display());
            let timeout = Duration::from_secs(1);
            let started = Instant::now();
            let err = run_within(&command, "proc", timeout).unwrap_err();
            let took = started.elapsed();
            assert!(took < timeout + Duration::from_secs(3), "took {took:?}");
            assert!(
                err.to_string().contains("did not finish within 1 s"),
                "{err}"
            );
            assert_none_left(&file);
        }

        #[test]
        fn expiring_process_credentials_are_refreshed() {
            let dir = temp_dir("process-count");
            let count = dir.join("count");
            // Each run prints a new key, valid for an hour from T0.
            let s = script(&format!(
                "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
                 echo \"{{\\\"Version\\\":1,\\\"AccessKeyId\\\":\\\"KEY$n\\\",\\\"SecretAccessKey\\\":\\\"S\\\",\\\"Expiration\\\":\\\"2030-01-01T01:00:00Z\\\"}}\"",
                c = count.display()
            ));
            // A value that needs a shell: run through sh -c.
            let (config, creds) = files_for(&format!("{} 2>/dev/null", s.display()));
            let secs = Arc::new(AtomicU64::new(T0));
            let c = chain_at(
                &[
                    ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                    ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
                    ("AWS_PROFILE", "proc"),
                ],
                &secs,
            );
            assert_eq!(c.credentials().unwrap().access_key_id(), "KEY1");
            secs.store(T0 + 30 * 60, Ordering::SeqCst);
            assert_eq!(c.credentials().unwrap().access_key_id(), "KEY1");
            secs.store(T0 + 56 * 60, Ordering::SeqCst);
            assert_eq!(c.credentials().unwrap().access_key_id(), "KEY2");
            assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "2");
        }
    }
}
