//! Small helpers shared by the examples: argument parsing, a stderr logger,
//! initial positions (RFC 3339 times are parsed by the library), metrics
//! levels, records as JSON lines, text from a server made safe to print,
//! and signal handling.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use kinesis_consumer::{
    InitialPosition, MetricsHandle, MetricsLevel, MetricsServer, Record, ShutdownHandle,
};

/// `--name value` (or `--name=value`) options and `--flag`s, each declared
/// by the example: anything else is an error.
pub struct Args {
    values: HashMap<String, Vec<String>>,
    flags: Vec<String>,
    declared: Vec<String>,
}

impl Args {
    /// Parses the process arguments. `options` lists the options that take
    /// a value, `flags` those that take none; `--help` prints the usage, and
    /// anything undeclared prints an error and the usage and exits with 2.
    pub fn parse(usage: &str, options: &[&str], flags: &[&str]) -> Args {
        Args::parse_repeating(usage, options, &[], flags)
    }

    /// [`parse`](Self::parse) where the options in `repeatable` may be
    /// given more than once (see [`all`](Self::all)).
    pub fn parse_repeating(
        usage: &str,
        options: &[&str],
        repeatable: &[&str],
        flags: &[&str],
    ) -> Args {
        match Args::parse_from_repeating(std::env::args().skip(1), options, repeatable, flags) {
            Ok(Some(args)) => args,
            Ok(None) => {
                println!("{usage}");
                std::process::exit(0);
            }
            Err(message) => fail(usage, &message),
        }
    }

    /// The same over given arguments: `Ok(None)` when help was asked for.
    pub fn parse_from(
        args: impl IntoIterator<Item = String>,
        options: &[&str],
        flags: &[&str],
    ) -> Result<Option<Args>, String> {
        Args::parse_from_repeating(args, options, &[], flags)
    }

    /// The same, with options that may repeat.
    pub fn parse_from_repeating(
        args: impl IntoIterator<Item = String>,
        options: &[&str],
        repeatable: &[&str],
        flags: &[&str],
    ) -> Result<Option<Args>, String> {
        let mut values = HashMap::new();
        let mut found = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Ok(None);
            }
            let Some(option) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (name, inline) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (option, None),
            };
            if flags.contains(&name) {
                if inline.is_some() {
                    return Err(format!("--{name} takes no value"));
                }
                found.push(name.to_owned());
            } else if options.contains(&name) || repeatable.contains(&name) {
                let value = inline
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("--{name} needs a value"))?;
                let given: &mut Vec<String> = values.entry(name.to_owned()).or_default();
                if !given.is_empty() && !repeatable.contains(&name) {
                    return Err(format!("--{name} is given twice"));
                }
                given.push(value);
            } else {
                return Err(format!("unknown option --{name}"));
            }
        }
        let declared = options
            .iter()
            .chain(repeatable)
            .chain(flags)
            .map(|&n| n.to_owned())
            .collect();
        Ok(Some(Args {
            values,
            flags: found,
            declared,
        }))
    }

    /// Panics on a name the example did not declare: a bug in the example.
    fn declared(&self, name: &str) {
        assert!(
            self.declared.iter().any(|d| d == name),
            "--{name} is used but not declared in Args::parse"
        );
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.declared(name);
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value of an option, in the order given.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.declared(name);
        self.values
            .get(name)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn required(&self, usage: &str, name: &str) -> String {
        self.get(name)
            .map(str::to_owned)
            .unwrap_or_else(|| fail(usage, &format!("--{name} is required")))
    }

    pub fn number(&self, usage: &str, name: &str, default: u64) -> u64 {
        match self.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                fail(
                    usage,
                    &format!("--{name} must be a whole number, not {v:?}"),
                )
            }),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.declared(name);
        self.flags.iter().any(|f| f == name)
    }
}

/// Prints a one-line error and the usage, and exits with status 2.
pub fn fail(usage: &str, message: &str) -> ! {
    eprintln!("error: {message}\n{usage}");
    std::process::exit(2);
}

/// `trim-horizon`, `latest`, or an RFC 3339 time (parsed by the library).
pub fn position(text: &str) -> Result<InitialPosition, String> {
    text.parse::<InitialPosition>().map_err(|_| {
        format!(
            "{text:?} is not trim-horizon, latest or an RFC 3339 time such as 2024-05-01T12:00:00Z"
        )
    })
}

/// `none`, `summary` or `detailed` (the KCL's metrics levels).
pub fn metrics_level(text: &str) -> Result<MetricsLevel, String> {
    match text {
        "none" => Ok(MetricsLevel::None),
        "summary" => Ok(MetricsLevel::Summary),
        "detailed" => Ok(MetricsLevel::Detailed),
        other => Err(format!(
            "--metrics-level must be none, summary or detailed, not {other:?}"
        )),
    }
}

/// The metrics level and whether to publish to CloudWatch, from
/// `--metrics-level` (default none) and `--metrics-addr`: with an address
/// and no level, everything is kept in-process for the endpoint (detailed,
/// not published).
pub fn metrics_settings(
    level: Option<&str>,
    addr: Option<&str>,
) -> Result<(MetricsLevel, bool), String> {
    match (level, addr) {
        (None, Some(_)) => Ok((MetricsLevel::Detailed, false)),
        (level, _) => Ok((metrics_level(level.unwrap_or("none"))?, true)),
    }
}

/// Serves `/metrics`, `/status`, `/status.json` and `/healthz` on
/// `--metrics-addr` if given (a bare port binds 127.0.0.1); exits with 2 if
/// it cannot listen there. Keep the server alive while the consumer runs.
pub fn serve_metrics(args: &Args, metrics: MetricsHandle) -> Option<MetricsServer> {
    let addr = args.get("metrics-addr")?;
    match metrics.serve(addr) {
        Ok(server) => {
            eprintln!(
                "metrics on http://{0}/metrics, status on http://{0}/status",
                server.local_addr()
            );
            Some(server)
        }
        Err(e) => {
            eprintln!("error: --metrics-addr: {e}");
            std::process::exit(2)
        }
    }
}

/// A UTC time of day, `HH:MM:SS.mmm`.
pub fn time_of_day(t: SystemTime) -> String {
    let ms = epoch_millis(t) % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Milliseconds since the epoch.
pub fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A record as one JSON object (the output line of `tail` and `file_sink`).
pub fn record_json(r: &Record) -> String {
    record_json_in(r, None)
}

/// [`record_json`] naming `stream` when the record does not name its own
/// (a single-stream consumer's).
pub fn record_json_in(r: &Record, stream: Option<&str>) -> String {
    use base64::Engine;
    let own = r.stream();
    serde_json::json!({
        "stream": own.as_ref().map(|s| s.name()).or(stream),
        "shard_id": r.kinesis_shard_id(),
        "sequence_number": r.sequence_number().as_str(),
        "sub_sequence_number": r.sub_sequence_number(),
        "partition_key": r.partition_key(),
        "explicit_hash_key": r.explicit_hash_key(),
        "arrival_timestamp_ms": r.approximate_arrival_timestamp().map(epoch_millis),
        "data_base64": base64::engine::general_purpose::STANDARD.encode(r.data()),
    })
    .to_string()
}

/// `text` from a server (a lease table, a stream) made safe to print to a
/// terminal: control characters, which could be escape sequences from
/// whoever wrote the text, are shown escaped (`\u{1b}`), as the JSON
/// lines of `tail` escape them.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Logs the library's `info` (or `RUST_LOG`'s level) to stderr.
pub fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target().starts_with("kinesis_consumer")
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// SIGINT and SIGTERM ask the consumer to stop gracefully.
pub fn stop_on_signals(handle: ShutdownHandle) {
    ctrlc::set_handler(move || handle.shutdown()).expect("install the SIGINT/SIGTERM handler");
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        use super::*;
        assert_eq!(
            position("1970-01-01T00:00:00Z"),
            Ok(InitialPosition::AtTimestamp(UNIX_EPOCH))
        );
        assert_eq!(
            position("2024-05-01T12:00:00.5+02:00").map(|p| match p {
                InitialPosition::AtTimestamp(t) => epoch_millis(t),
                _ => 0,
            }),
            Ok(1_714_557_600_500)
        );
        assert!(position("yesterday").is_err());
        assert_eq!(
            metrics_level("summary"),
            Ok(kinesis_consumer::MetricsLevel::Summary)
        );
        assert!(metrics_level("all").is_err());
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            super::printable("shard\u{1b}]0;title\u{7}\u{9b}31m\u{7f}\tété"),
            "shard\\u{1b}]0;title\\u{7}\\u{9b}31m\\u{7f}\\tété"
        );
        assert_eq!(
            super::printable("shardId-0 ~ worker-1"),
            "shardId-0 ~ worker-1"
        );
    }

    #[test]
    fn undeclared_options_are_rejected() {
        use super::Args;
        let parse = |args: &[&str]| {
            Args::parse_from(
                args.iter().map(|a| a.to_string()),
                &["stream", "app"],
                &["aggregate"],
            )
        };
        let args = parse(&["--stream", "s", "--app=a", "--aggregate"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (args.get("stream"), args.get("app")),
            (Some("s"), Some("a"))
        );
        assert!(args.flag("aggregate"));
        assert!(parse(&["--help"]).unwrap().is_none());
        for (bad, why) in [
            (
                &["--stream", "s", "--enhanced-fan-out", "x"][..],
                "unknown option --enhanced-fan-out",
            ),
            (&["--stream"], "--stream needs a value"),
            (
                &["--stream", "s", "--stream", "t"],
                "--stream is given twice",
            ),
            (&["--aggregate=yes"], "--aggregate takes no value"),
            (&["stray"], "unexpected argument \"stray\""),
        ] {
            assert_eq!(parse(bad).err().as_deref(), Some(why), "{bad:?}");
        }
    }
}
