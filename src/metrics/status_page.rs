//! The status page: the consumer's [`ConsumerStatus`] as plain HTML that
//! needs no JavaScript and reloads itself (a meta refresh).

use std::fmt::Write;

use crate::metrics::live::ConsumerStatus;
use crate::stream::split_lease_key;

/// The page reloads itself this often, in seconds.
pub(crate) const REFRESH_SECONDS: u32 = 5;

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Milliseconds since the Unix epoch as an RFC 3339 time.
fn unix_ms_as_text(ms: u64) -> String {
    crate::time::format_rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        false,
    )
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Renders the page. In a multi-stream consumer each shard shows its
/// bare shard id with its stream in a column of its own, and the page
/// names the streams of the lease table's shards.
pub(crate) fn render(status: &ConsumerStatus) -> String {
    let mut out = String::new();
    let streams: std::collections::BTreeSet<String> = status
        .shards
        .iter()
        .filter_map(|s| split_lease_key(&s.shard_id).map(|(id, _)| id.name().to_owned()))
        .collect();
    let multi = !streams.is_empty();
    let stream = match multi {
        true => streams.into_iter().collect::<Vec<_>>().join(", "),
        false => status.stream.clone(),
    };
    let title = format!("{} on {}", escape(&status.application), escape(&stream));
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>{title}</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\
         td.shard,td.owner{{white-space:nowrap}}\
         td.checkpoint{{word-break:break-all;max-width:18em;font-family:monospace;font-size:.85em}}\
         .bad{{color:#b00}} .here{{background:#eef6ff}}</style></head><body>\n"
    );
    let health = if status.healthy {
        "<span class=\"ok\">healthy</span>"
    } else if status.running {
        "<span class=\"bad\">heartbeat not current</span>"
    } else {
        "<span class=\"bad\">not running</span>"
    };
    let _ = write!(
        out,
        "<h1>{title}</h1>\n<p>Application <b id=\"application\">{}</b>, stream <b id=\"stream\">{}</b>, \
         worker <b id=\"worker\">{}</b>: {health}. Heartbeat sent {} s ago; handler busy {:.0}%; \
         lease table read {} s ago (owners and checkpoints of leases held elsewhere are that old).</p>\n",
        escape(&status.application),
        escape(&stream),
        escape(&status.worker),
        optional(status.seconds_since_heartbeat, 1),
        status.handler_busy_fraction * 100.0,
        optional(status.seconds_since_table_read, 1),
    );
    let held = status.shards.iter().filter(|s| s.held_here).count();
    let stream_header = if multi { "<th>stream</th>" } else { "" };
    let _ = write!(
        out,
        "<h2>Shards ({} in the lease table, {held} held here)</h2>\n<table id=\"shards\">\
         <tr>{stream_header}<th>shard</th><th>owner</th><th>checkpoint</th><th>ms behind latest</th>\
         <th>last record's age (s)</th><th>last record handed on (s ago)</th><th>checkpointed (s ago)</th><th>records/s</th>\
         <th>bytes/s</th><th>held since (UTC)</th></tr>\n",
        status.shards.len()
    );
    for s in &status.shards {
        let class = if s.held_here { " class=\"here\"" } else { "" };
        let (stream_cell, shard) = match split_lease_key(&s.shard_id) {
            Some((id, shard)) => (
                format!(
                    "<td class=\"stream\" title=\"{}\">{}</td>",
                    escape(&id.to_string()),
                    escape(id.name())
                ),
                shard,
            ),
            None if multi => ("<td class=\"stream\"></td>".to_owned(), &*s.shard_id),
            None => (String::new(), &*s.shard_id),
        };
        let _ = writeln!(
            out,
            "<tr{class} data-shard=\"{key}\">{stream_cell}<td class=\"shard\">{id}</td><td class=\"owner\">{}</td>\
             <td class=\"checkpoint\">{}</td><td class=\"behind\">{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(s.owner.as_deref().unwrap_or("(none)")),
            escape(s.checkpoint.as_deref().unwrap_or("–")),
            optional(s.millis_behind_latest, 0),
            optional(s.last_record_age_seconds, 1),
            optional(s.seconds_since_last_record, 1),
            optional(s.seconds_since_checkpoint, 1),
            optional(s.records_per_second, 1),
            optional(s.bytes_per_second, 0),
            s.lease_held_since_unix_ms
                .map_or_else(|| "–".to_owned(), unix_ms_as_text),
            key = escape(&s.shard_id),
            id = escape(shard),
        );
    }
    out.push_str("</table>\n<h2>Recent errors</h2>\n");
    if status.recent_errors.is_empty() {
        out.push_str("<p id=\"errors\">None.</p>\n");
    } else {
        out.push_str("<ul id=\"errors\">\n");
        for e in &status.recent_errors {
            let at = unix_ms_as_text(e.at_unix_ms);
            let _ = writeln!(out, "<li>{at}: {}</li>", escape(&e.message));
        }
        out.push_str("</ul>\n");
    }
    let _ = write!(
        out,
        "<p>Also: <a href=\"/status.json\">/status.json</a>, <a href=\"/metrics\">/metrics</a>, \
         <a href=\"/healthz\">/healthz</a>. This page reloads every {REFRESH_SECONDS} s.</p>\n\
         </body></html>\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{RecentError, ShardStatus};

    #[test]
    fn page_escapes_and_lists_every_shard() {
        let status = ConsumerStatus {
            application: "<app>".into(),
            stream: "s".into(),
            worker: "w&1".into(),
            shards: vec![
                ShardStatus {
                    shard_id: "shard-1".into(),
                    owner: Some("w&1".into()),
                    held_here: true,
                    millis_behind_latest: Some(12.0),
                    lease_held_since_unix_ms: Some(86_400_000),
                    ..ShardStatus::default()
                },
                ShardStatus {
                    shard_id: "shard-2".into(),
                    owner: None,
                    ..ShardStatus::default()
                },
            ],
            recent_errors: vec![RecentError {
                at_unix_ms: 0,
                message: "GetRecords <failed>".into(),
            }],
            ..ConsumerStatus::default()
        };
        let page = render(&status);
        assert!(page.contains("<td>1970-01-02T00:00:00Z</td>"), "{page}");
        assert!(page.contains("<li>1970-01-01T00:00:00Z: GetRecords &lt;failed&gt;</li>"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(page.contains("&lt;app&gt;") && !page.contains("<app>"));
        assert!(page.contains("<td class=\"shard\">shard-1</td><td class=\"owner\">w&amp;1</td>"));
        assert!(page.contains("<td class=\"shard\">shard-2</td><td class=\"owner\">(none)</td>"));
        assert!(page.contains("not running"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("<th>stream</th>"), "one stream: no column");
    }

    #[test]
    fn a_multi_stream_shard_shows_its_stream_beside_its_bare_id() {
        let shard = |key: &str| ShardStatus {
            shard_id: key.into(),
            ..ShardStatus::default()
        };
        let status = ConsumerStatus {
            application: "app".into(),
            shards: vec![
                shard("111122223333:orders:1700000000:shardId-000000000001"),
                shard("111122223333:clicks:1700000005:shardId-000000000001"),
            ],
            ..ConsumerStatus::default()
        };
        let page = render(&status);
        assert!(
            page.contains("<title>app on clicks, orders</title>"),
            "{page}"
        );
        assert!(page.contains("<tr><th>stream</th><th>shard</th>"), "{page}");
        assert!(
            page.contains(
                "<tr data-shard=\"111122223333:orders:1700000000:shardId-000000000001\">\
                 <td class=\"stream\" title=\"111122223333:orders:1700000000\">orders</td>\
                 <td class=\"shard\">shardId-000000000001</td>"
            ),
            "{page}"
        );
    }
}
