//! The Prometheus text exposition format (version 0.0.4) of a consumer's
//! metrics: the recorded series since the start, under Prometheus-style
//! names, and the live per-shard gauges of the leases held now. Every
//! sample carries the `application`, `stream` and `worker` labels, and
//! `shard` where it is per shard; a shard's series are shown only while
//! its lease is held here, so the number of series stays bounded. In a
//! multi-stream consumer a shard's `shard` is its bare shard id and its
//! `stream` the name of its own stream (the consumer's series that are not
//! per shard have `stream=""`).

use std::fmt::Write;

use crate::metrics::Metric;
use crate::metrics::aggregate::{DURATION_BUCKETS_MS, SeriesKey, Total};
use crate::metrics::live::ConsumerStatus;
use crate::stream::split_lease_key;

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How a recorded metric is exposed.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// The sum of the samples, as `<name>` (ending in `_total`).
    Counter,
    /// Samples of 1 (success) and 0 (failure), as a counter with an
    /// `outcome` label.
    Outcome,
    /// Durations in milliseconds, as a histogram in seconds.
    Histogram,
    /// The latest sample.
    Gauge,
    /// The sum and count of the samples.
    Summary,
}

/// The Prometheus name, kind and help of a recorded metric; `None` for
/// `MillisBehindLatest`, shown by the per-shard gauge of the same name.
fn family(metric: Metric) -> Option<(&'static str, Kind, &'static str)> {
    use Kind::*;
    use Metric::*;
    Some(match metric {
        RecordsProcessed => (
            "kinesis_consumer_records_processed_total",
            Counter,
            "Records handed to the handler and accepted.",
        ),
        DataBytesProcessed => (
            "kinesis_consumer_data_bytes_processed_total",
            Counter,
            "Bytes (data and partition keys) of the records processed.",
        ),
        MillisBehindLatest => return None,
        ProcessTaskTime => (
            "kinesis_consumer_process_task_duration_seconds",
            Histogram,
            "How long each batch handler call took.",
        ),
        BatchSize => (
            "kinesis_consumer_batch_size_records",
            Summary,
            "Records per batch handed to the handler.",
        ),
        GetRecordsSuccess => (
            "kinesis_consumer_get_records_calls_total",
            Outcome,
            "GetRecords calls, by outcome.",
        ),
        GetRecordsTime => (
            "kinesis_consumer_get_records_duration_seconds",
            Histogram,
            "How long each GetRecords call took.",
        ),
        GetRecordsThrottled => (
            "kinesis_consumer_get_records_throttled_total",
            Counter,
            "GetRecords calls throttled.",
        ),
        ExpiredIterators => (
            "kinesis_consumer_expired_iterators_total",
            Counter,
            "Shard iterators found expired.",
        ),
        SubscribeToShardSuccess => (
            "kinesis_consumer_subscribe_to_shard_calls_total",
            Outcome,
            "SubscribeToShard calls (enhanced fan-out), by outcome.",
        ),
        SubscribeToShardTime => (
            "kinesis_consumer_subscribe_to_shard_duration_seconds",
            Histogram,
            "How long each SubscribeToShard call took to be accepted.",
        ),
        SubscribeToShardErrors => (
            "kinesis_consumer_subscribe_to_shard_errors_total",
            Counter,
            "Subscriptions ended by an error after they were accepted.",
        ),
        RecordsDeaggregated => (
            "kinesis_consumer_records_deaggregated_total",
            Counter,
            "User records taken out of KPL aggregates.",
        ),
        AggregatesPassedThrough => (
            "kinesis_consumer_aggregates_passed_through_total",
            Counter,
            "Invalid KPL aggregates delivered whole.",
        ),
        RecordsDeadLettered => (
            "kinesis_consumer_records_dead_lettered_total",
            Counter,
            "Records the handler kept rejecting, passed to the dead-letter handler.",
        ),
        HandlerRetries => (
            "kinesis_consumer_handler_retries_total",
            Counter,
            "Calls of the handler (or a processor) made again after a failure.",
        ),
        CheckpointSuccess => (
            "kinesis_consumer_checkpoints_total",
            Outcome,
            "Checkpoint writes, by outcome.",
        ),
        CheckpointTime => (
            "kinesis_consumer_checkpoint_duration_seconds",
            Histogram,
            "How long each checkpoint write took.",
        ),
        LeasesHeld => (
            "kinesis_consumer_leases_held",
            Gauge,
            "Leases held at the last renewal round.",
        ),
        LeasesLost => (
            "kinesis_consumer_leases_lost_total",
            Counter,
            "Leases lost.",
        ),
        LeasesTaken => (
            "kinesis_consumer_leases_taken_total",
            Counter,
            "Unowned or expired leases taken.",
        ),
        LeasesStolen => (
            "kinesis_consumer_leases_stolen_total",
            Counter,
            "Leases taken over from busier workers.",
        ),
        BalanceMoves => (
            "kinesis_consumer_balance_moves_total",
            Counter,
            "Balance moves the leader planned (leases asked to change workers).",
        ),
        Workers => (
            "kinesis_consumer_workers",
            Gauge,
            "Workers seen in the lease table at the last take round.",
        ),
        ShardsBlockedOnParent => (
            "kinesis_consumer_shards_blocked_on_parent",
            Gauge,
            "Held shards waiting for their parents to finish.",
        ),
        ShardEndsNotCheckpointed => (
            "kinesis_consumer_shard_end_not_checkpointed_warnings_total",
            Counter,
            "Warnings about a shard read to its end whose end is not checkpointed.",
        ),
    })
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// Escapes a help text: backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

/// A sample value as Prometheus reads it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

/// Writes the exposition, one family after another.
struct Exposition<'a> {
    out: String,
    common: [(&'static str, &'a str); 3],
}

impl Exposition<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A sample with the common labels, then `labels`; a label of
    /// `labels` named as a common one (a shard's `stream`) takes its place.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.out.push('{');
        let given = |label: &str| labels.iter().find(|(l, _)| *l == label);
        let common = self.common.iter().map(|c| given(c.0).unwrap_or(c));
        let rest = labels
            .iter()
            .filter(|(l, _)| !self.common.iter().any(|c| c.0 == *l));
        let all: Vec<&(&str, &str)> = common.chain(rest).collect();
        for (i, (label, value)) in all.into_iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
        }
        let _ = writeln!(self.out, "}} {}", number(value));
    }

    fn recorded(&mut self, name: &str, kind: Kind, shard: &[(&str, &str)], total: &Total) {
        let stats = &total.statistics;
        match kind {
            Kind::Counter => self.sample(name, shard, stats.sum),
            Kind::Gauge => self.sample(name, shard, total.last),
            Kind::Outcome => {
                let failures = stats.sample_count as f64 - stats.sum;
                let with = |outcome| [shard, &[("outcome", outcome)]].concat();
                self.sample(name, &with("success"), stats.sum);
                self.sample(name, &with("failure"), failures);
            }
            Kind::Summary => {
                self.sample(&format!("{name}_sum"), shard, stats.sum);
                self.sample(&format!("{name}_count"), shard, stats.sample_count as f64);
            }
            Kind::Histogram => {
                let bucket = format!("{name}_bucket");
                let mut cumulative = 0;
                for (i, bound) in DURATION_BUCKETS_MS.iter().enumerate() {
                    cumulative += total.buckets.get(i).copied().unwrap_or(0);
                    let le = number(bound / 1000.0);
                    let labels = [shard, &[("le", le.as_str())]].concat();
                    self.sample(&bucket, &labels, cumulative as f64);
                }
                let labels = [shard, &[("le", "+Inf")]].concat();
                self.sample(&bucket, &labels, stats.sample_count as f64);
                self.sample(&format!("{name}_sum"), shard, stats.sum / 1000.0);
                self.sample(&format!("{name}_count"), shard, stats.sample_count as f64);
            }
        }
    }
}

/// The labels of a shard: `shard`, and in a multi-stream consumer (a
/// lease key) the bare shard id with its own `stream`.
fn shard_labels(key: &str) -> Vec<(&'static str, &str)> {
    match split_lease_key(key) {
        Some((stream, shard_id)) => {
            // The name as a part of `key` (`account:name:epoch:shardId`).
            let name = &key[stream.account().len() + 1..][..stream.name().len()];
            vec![("stream", name), ("shard", shard_id)]
        }
        None => vec![("shard", key)],
    }
}

/// Renders the exposition of the recorded series (`totals`, sorted by
/// metric) and of the consumer's live state.
pub(crate) fn render(totals: &[(SeriesKey, Total)], status: &ConsumerStatus) -> String {
    let mut e = Exposition {
        out: String::new(),
        common: [
            ("application", &status.application),
            ("stream", &status.stream),
            ("worker", &status.worker),
        ],
    };
    let held: Vec<&str> = status
        .shards
        .iter()
        .filter(|s| s.held_here)
        .map(|s| s.shard_id.as_str())
        .collect();
    let mut current = None;
    for (key, total) in totals {
        let Some((name, kind, help)) = family(key.metric) else {
            continue;
        };
        // A released shard's series disappear with its lease.
        let shard_label = match &key.shard {
            Some(shard) if !held.contains(&&**shard) => continue,
            Some(shard) => shard_labels(shard),
            None => Vec::new(),
        };
        if current != Some(key.metric) {
            let type_name = match kind {
                Kind::Counter | Kind::Outcome => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
                Kind::Summary => "summary",
            };
            e.header(name, type_name, help);
            current = Some(key.metric);
        }
        e.recorded(name, kind, &shard_label, total);
    }
    e.header(
        "kinesis_consumer_up",
        "gauge",
        "1 while the consumer runs with a current heartbeat, else 0.",
    );
    e.sample(
        "kinesis_consumer_up",
        &[],
        f64::from(u8::from(status.healthy)),
    );
    if let Some(age) = status.seconds_since_heartbeat {
        e.header(
            "kinesis_consumer_heartbeat_age_seconds",
            "gauge",
            "Seconds since the last heartbeat that landed in the lease table was sent.",
        );
        e.sample("kinesis_consumer_heartbeat_age_seconds", &[], age);
    }
    let worker_loads: [(&str, &str, f64); 3] = [
        (
            "kinesis_consumer_worker_load_bytes_per_second",
            "Bytes read per second over the leases held (20 s half-life): this worker's load.",
            status.load_bytes_per_second,
        ),
        (
            "kinesis_consumer_worker_load_records_per_second",
            "Records read per second over the leases held (20 s half-life).",
            status.load_records_per_second,
        ),
        (
            "kinesis_consumer_worker_load_busy_ratio",
            "Seconds per second the handler spent on the leases held (20 s half-life).",
            status.load_busy_fraction,
        ),
    ];
    for (name, help, value) in worker_loads {
        e.header(name, "gauge", help);
        e.sample(name, &[], value);
    }
    type Field = fn(&crate::metrics::ShardStatus) -> Option<f64>;
    let gauges: [(&str, &str, Field); 11] = [
        (
            "kinesis_consumer_millis_behind_latest",
            "How far behind the tip of the shard the last read was, in milliseconds.",
            |s| s.millis_behind_latest,
        ),
        (
            "kinesis_consumer_last_record_age_seconds",
            "The age of the last record handed on and accepted: seconds since it arrived in the stream.",
            |s| s.last_record_age_seconds,
        ),
        (
            "kinesis_consumer_seconds_since_last_record",
            "Seconds since a record of the shard was last handed on and accepted.",
            |s| s.seconds_since_last_record,
        ),
        (
            "kinesis_consumer_checkpoint_age_seconds",
            "Seconds since the shard's checkpoint was last written by this worker.",
            |s| s.seconds_since_checkpoint,
        ),
        (
            "kinesis_consumer_records_per_second",
            "Records handed on per second, over the last 10 s window.",
            |s| s.records_per_second,
        ),
        (
            "kinesis_consumer_bytes_per_second",
            "Bytes handed on per second, over the last 10 s window.",
            |s| s.bytes_per_second,
        ),
        (
            "kinesis_consumer_lease_held_since_timestamp_seconds",
            "When this worker took the shard's lease, in seconds since the Unix epoch.",
            |s| s.lease_held_since_unix_ms.map(|ms| ms as f64 / 1000.0),
        ),
        (
            "kinesis_consumer_handler_busy_ratio",
            "The fraction of the last 10 s window the shard's handler (its processor, or the batch handler) was busy.",
            |s| s.handler_busy_fraction,
        ),
        (
            "kinesis_consumer_lease_load_bytes_per_second",
            "Bytes read per second from the shard (20 s half-life): its load as the balancer weighs it.",
            |s| s.load_bytes_per_second,
        ),
        (
            "kinesis_consumer_lease_load_records_per_second",
            "Records read per second from the shard (20 s half-life).",
            |s| s.load_records_per_second,
        ),
        (
            "kinesis_consumer_lease_load_busy_ratio",
            "Seconds per second the handler spent on the shard's records (20 s half-life).",
            |s| s.load_busy_fraction,
        ),
    ];
    for (name, help, field) in gauges {
        let values: Vec<(&str, f64)> = status
            .shards
            .iter()
            .filter(|s| s.held_here)
            .filter_map(|s| Some((s.shard_id.as_str(), field(s)?)))
            .collect();
        if values.is_empty() {
            continue;
        }
        e.header(name, "gauge", help);
        for (shard, value) in values {
            e.sample(name, &shard_labels(shard), value);
        }
    }
    e.out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::ShardStatus;
    use crate::metrics::aggregate::Series;

    fn status(held: &[&str]) -> ConsumerStatus {
        ConsumerStatus {
            application: "app \"quoted\"".into(),
            stream: "back\\slash".into(),
            worker: "line\nfeed".into(),
            running: true,
            heartbeat_current: true,
            healthy: true,
            shards: held
                .iter()
                .map(|id| ShardStatus {
                    shard_id: (*id).into(),
                    held_here: true,
                    millis_behind_latest: Some(1500.0),
                    ..ShardStatus::default()
                })
                .collect(),
            ..ConsumerStatus::default()
        }
    }

    fn key(metric: Metric, shard: Option<&str>) -> SeriesKey {
        SeriesKey {
            metric,
            shard: shard.map(Arc::from),
        }
    }

    const LABELS: &str = r#"application="app \"quoted\"",stream="back\\slash",worker="line\nfeed""#;

    #[test]
    fn label_values_are_escaped() {
        let text = render(&[], &status(&[]));
        assert!(
            text.contains(&format!("kinesis_consumer_up{{{LABELS}}} 1\n")),
            "{text}"
        );
        assert_eq!(escape_help("a\\b\nc"), r"a\\b\nc");
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let mut series = Series::default();
        series.add(key(Metric::RecordsProcessed, Some("shard-1")), 3.0);
        series.add(key(Metric::RecordsProcessed, Some("shard-2")), 4.0);
        series.add(key(Metric::LeasesHeld, None), 2.0);
        series.add(key(Metric::LeasesHeld, None), 1.0);
        series.add(key(Metric::GetRecordsSuccess, Some("shard-1")), 1.0);
        series.add(key(Metric::GetRecordsSuccess, Some("shard-1")), 0.0);
        series.add(key(Metric::GetRecordsSuccess, Some("shard-1")), 1.0);
        series.add(key(Metric::BatchSize, None), 7.0);
        let text = render(&series.totals(), &status(&["shard-1", "shard-2"]));
        let name = "kinesis_consumer_records_processed_total";
        assert_eq!(text.matches(&format!("# TYPE {name} counter\n")).count(), 1);
        assert_eq!(
            text.matches(&format!("# HELP {name} Records handed"))
                .count(),
            1
        );
        assert!(text.contains(&format!("{name}{{{LABELS},shard=\"shard-2\"}} 4\n")));
        // A gauge shows its latest sample.
        assert!(text.contains("# TYPE kinesis_consumer_leases_held gauge\n"));
        assert!(text.contains(&format!("kinesis_consumer_leases_held{{{LABELS}}} 1\n")));
        let calls = "kinesis_consumer_get_records_calls_total";
        assert!(text.contains(&format!(
            "{calls}{{{LABELS},shard=\"shard-1\",outcome=\"success\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "{calls}{{{LABELS},shard=\"shard-1\",outcome=\"failure\"}} 1\n"
        )));
        assert!(text.contains("# TYPE kinesis_consumer_batch_size_records summary\n"));
        assert!(text.contains(&format!(
            "kinesis_consumer_batch_size_records_count{{{LABELS}}} 1\n"
        )));
        assert!(text.contains(&format!(
            "kinesis_consumer_millis_behind_latest{{{LABELS},shard=\"shard-1\"}} 1500\n"
        )));
        // Every family's samples follow its own header, and every line is
        // a comment or a sample.
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("kinesis_consumer_"),
                "{line}"
            );
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
    }

    #[test]
    fn the_leaders_balance_moves_are_a_counter() {
        let mut series = Series::default();
        series.add(key(Metric::BalanceMoves, None), 3.0);
        series.add(key(Metric::BalanceMoves, None), 0.0);
        series.add(key(Metric::BalanceMoves, None), 2.0);
        let text = render(&series.totals(), &status(&[]));
        let name = "kinesis_consumer_balance_moves_total";
        assert!(
            text.contains(&format!(
                "# TYPE {name} counter
"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{name}{{{LABELS}}} 5
"
            )),
            "{text}"
        );
    }

    #[test]
    fn lease_loads_and_the_worker_load_are_gauges() {
        let mut status = status(&["shard-1"]);
        status.shards[0].load_bytes_per_second = Some(2500.0);
        status.load_bytes_per_second = 2500.0;
        let text = render(&[], &status);
        let lease = "kinesis_consumer_lease_load_bytes_per_second";
        assert!(text.contains(&format!("# TYPE {lease} gauge\n")), "{text}");
        assert!(text.contains(&format!("{lease}{{{LABELS},shard=\"shard-1\"}} 2500\n")));
        let worker = "kinesis_consumer_worker_load_bytes_per_second";
        assert!(text.contains(&format!("{worker}{{{LABELS}}} 2500\n")));
        // Not measured: no sample.
        assert!(!text.contains("kinesis_consumer_lease_load_records_per_second{"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        let mut series = Series::default();
        for ms in [0.5, 3.0, 3.0, 200.0, 60_000.0] {
            series.add(key(Metric::GetRecordsTime, None), ms);
        }
        let text = render(&series.totals(), &status(&[]));
        let name = "kinesis_consumer_get_records_duration_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        let bucket = |le: &str| {
            let prefix = format!("{name}_bucket{{{LABELS},le=\"{le}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
            line[prefix.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(bucket("0.001"), 1);
        assert_eq!(bucket("0.005"), 3);
        assert_eq!(bucket("0.1"), 3);
        assert_eq!(bucket("0.25"), 4);
        assert_eq!(bucket("10"), 4);
        assert_eq!(bucket("+Inf"), 5);
        let buckets: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), DURATION_BUCKETS_MS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        assert!(text.contains(&format!("{name}_sum{{{LABELS}}} 60.2065\n")));
        assert!(text.contains(&format!("{name}_count{{{LABELS}}} 5\n")));
    }

    #[test]
    fn a_multi_stream_shard_has_its_stream_and_bare_shard_id() {
        let lease_key = "111122223333:orders:1700000000:shardId-000000000001";
        let mut series = Series::default();
        series.add(key(Metric::RecordsProcessed, Some(lease_key)), 2.0);
        series.add(key(Metric::BatchSize, None), 7.0);
        let mut status = status(&[lease_key]);
        status.stream = String::new();
        let text = render(&series.totals(), &status);
        let labels = r#"application="app \"quoted\"",stream="orders",worker="line\nfeed",shard="shardId-000000000001""#;
        for name in [
            "kinesis_consumer_records_processed_total",
            "kinesis_consumer_millis_behind_latest",
        ] {
            assert!(text.contains(&format!("{name}{{{labels}}} ")), "{text}");
        }
        assert!(
            text.contains(r#"kinesis_consumer_batch_size_records_count{application="app \"quoted\"",stream="",worker="line\nfeed"} 1"#),
            "{text}"
        );
        assert!(!text.contains("111122223333"), "no lease key: {text}");
    }

    #[test]
    fn released_shards_disappear() {
        let mut series = Series::default();
        series.add(key(Metric::RecordsProcessed, Some("shard-kept")), 1.0);
        series.add(key(Metric::RecordsProcessed, Some("shard-gone")), 1.0);
        let text = render(&series.totals(), &status(&["shard-kept"]));
        assert!(text.contains("shard=\"shard-kept\""));
        assert!(!text.contains("shard-gone"), "{text}");
    }
}
