//! The consumer as it is now, for the Prometheus exposition and the status
//! page: per-shard gauges of the leases held, the handler's busy time, the
//! lease table as last read, recent errors, and whether `run` runs. Kept at
//! every metrics level (it costs one short lock per recording call, never
//! per record) and bounded: shards no longer held are pruned, and only the
//! last few errors are kept.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::Metric;
use crate::sync::lock;

/// Rates (records and bytes per second, the handler's busy fraction) are
/// measured over windows this long.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How many recent errors the status keeps.
pub(crate) const RECENT_ERRORS: usize = 10;

/// A worker falls behind only while every lease it holds is at least
/// this far behind the tip (milliseconds) and further than at the last
/// look: a caught-up reader's lag moves up and down by a read's worth,
/// well under this.
pub(crate) const FALLING_BEHIND_FLOOR_MS: f64 = 10_000.0;

/// What the lease side tells about the leases this worker holds.
pub(crate) trait LeaseView: Send + Sync {
    /// The shards held now, with when (our clock) each lease was taken.
    fn held(&self) -> Vec<(String, Instant)>;
    /// When the last heartbeat that landed was sent, if one did.
    fn alive_since(&self) -> Option<Instant>;
    /// True while that heartbeat still keeps the leases (it was sent
    /// within the fencing window).
    fn heartbeat_current(&self) -> bool;
}

/// A lease's load on the worker holding it, smoothed over about a minute:
/// what the status shows per lease, and what each checkpoint leaves on the
/// lease's row for the balancer ([`Lease::load`](crate::Lease::load)).
/// Its figures are always finite and never negative (the library makes
/// every value of this type), so it is [`Eq`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LeaseLoad {
    /// Bytes (data and partition keys) read per second.
    pub bytes_per_second: f64,
    /// Records (user records, after de-aggregation) read per second.
    pub records_per_second: f64,
    /// Seconds per second the handler spent on the lease's records: its
    /// processor's time, or its share by records of the batch handler's.
    pub busy_fraction: f64,
}

// Every `LeaseLoad` is made here (it is `non_exhaustive`), from the meter
// or a parsed row, and neither ever holds a NaN: equality is total.
impl Eq for LeaseLoad {}

/// What the worker tells about the load of the leases it holds.
pub(crate) trait LoadView: Send + Sync + std::fmt::Debug {
    /// Each lease measured, with its load now.
    fn loads(&self) -> Vec<(String, LeaseLoad)>;
    /// The load of `lease` now, if it is measured here.
    fn load_of(&self, lease: &str) -> Option<LeaseLoad> {
        self.loads()
            .into_iter()
            .find_map(|(key, load)| (key == lease).then_some(load))
    }
    /// Forgets the leases not in `held`.
    fn retain(&self, held: &[&str]);
}

/// A sum over fixed windows of [`RATE_WINDOW`], as a rate per second: the
/// last complete window's, or the current one's until one completes.
#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    sum: f64,
    last_rate: Option<f64>,
}

impl Window {
    fn add(&mut self, now: Instant, value: f64) {
        self.roll(now);
        self.sum += value;
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            self.last_rate = Some(self.sum / elapsed.as_secs_f64());
            self.start = Some(now);
            self.sum = 0.0;
        }
    }

    fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        if let Some(rate) = self.last_rate {
            return rate;
        }
        // Over at least a second, so that the first samples do not read
        // as a burst.
        let elapsed = self
            .start
            .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        self.sum / elapsed.max(1.0)
    }
}

#[derive(Debug, Default)]
struct ShardLive {
    behind_ms: Option<f64>,
    /// When `behind_ms` was read.
    behind_read: Option<Instant>,
    /// The lag at the last look for a worker falling behind.
    behind_last_look: Option<f64>,
    handed_on: Option<Instant>,
    /// The arrival time of the last record handed on.
    last_arrival: Option<SystemTime>,
    checkpointed: Option<(Instant, String)>,
    /// Milliseconds the shard's processor ran (`run_processors` only).
    busy: Window,
    records: Window,
    bytes: Window,
}

/// A lease as the table showed it when last read.
#[derive(Clone, Debug)]
pub(crate) struct LeaseRow {
    pub shard_id: String,
    pub owner: Option<String>,
    pub checkpoint: String,
}

#[derive(Debug, Default)]
struct State {
    shards: HashMap<Arc<str>, ShardLive>,
    /// Milliseconds the batch handler ran.
    handler: Window,
    table: Vec<LeaseRow>,
    table_read: Option<SystemTime>,
    errors: VecDeque<RecentError>,
}

#[derive(Debug)]
struct Names {
    application: String,
    stream: String,
    worker: String,
}

/// The live state one consumer's threads share (through `Metrics`).
#[derive(Default)]
pub(crate) struct Live {
    names: OnceLock<Names>,
    leases: OnceLock<Arc<dyn LeaseView>>,
    loads: OnceLock<Arc<dyn LoadView>>,
    running: AtomicBool,
    state: Mutex<State>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// A recent error, as the status page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RecentError {
    /// When it happened, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// What failed and why.
    pub message: String,
}

/// One shard as this worker sees it: from the lease table as last read,
/// and for the leases it holds, their live figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shard id (the lease key).
    pub shard_id: String,
    /// The lease's owner: this worker for the leases it holds, otherwise
    /// the table's `leaseOwner` as last read (`None`: unowned).
    pub owner: Option<String>,
    /// The checkpoint: a sequence number, or `TRIM_HORIZON`, `LATEST`,
    /// `AT_TIMESTAMP`, `SHARD_END`. This worker's last write for the
    /// leases it holds, otherwise the table's as last read.
    pub checkpoint: Option<String>,
    /// True when this worker holds the lease now; the figures below are
    /// only known for those.
    pub held_here: bool,
    /// When this worker took the lease, in milliseconds since the Unix epoch.
    pub lease_held_since_unix_ms: Option<u64>,
    /// How far behind the tip of the shard the last read was.
    pub millis_behind_latest: Option<f64>,
    /// The age of the last record handed on to the handler and accepted:
    /// seconds since its approximate arrival in the stream.
    pub last_record_age_seconds: Option<f64>,
    /// Seconds since a record of the shard was last handed on to the
    /// handler and accepted.
    pub seconds_since_last_record: Option<f64>,
    /// Seconds since this worker last wrote the shard's checkpoint.
    pub seconds_since_checkpoint: Option<f64>,
    /// Records handed on per second, over the last rate window (10 s).
    pub records_per_second: Option<f64>,
    /// Bytes handed on per second, over the last rate window (10 s).
    pub bytes_per_second: Option<f64>,
    /// The fraction of the last rate window the shard's handler was busy:
    /// its processor's with `run_processors`; with `run`, the batch
    /// handler's, which serves every shard of a batch (so every shard held
    /// shows the same fraction).
    pub handler_busy_fraction: Option<f64>,
    /// Bytes (data and partition keys) read per second, smoothed with a
    /// 20 s half-life: the lease's load as the balancer weighs it. Unlike
    /// `bytes_per_second` it counts what was read, before the handler.
    pub load_bytes_per_second: Option<f64>,
    /// Records read per second, smoothed with a 20 s half-life.
    pub load_records_per_second: Option<f64>,
    /// Seconds per second the handler spent on this shard's records,
    /// smoothed with a 20 s half-life: its processor's time with
    /// `run_processors`; with `run`, its share of the batch handler's time
    /// by records.
    pub load_busy_fraction: Option<f64>,
}

/// The consumer as it is now: what the status page and `/status.json`
/// show. Get it with [`MetricsHandle::status`](crate::MetricsHandle::status).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// The application name.
    pub application: String,
    /// The stream name.
    pub stream: String,
    /// This worker's identifier.
    pub worker: String,
    /// True while [`Consumer::run`](crate::Consumer::run) (or
    /// `run_processors`) runs.
    pub running: bool,
    /// True while the last heartbeat that landed in the lease table still
    /// keeps this worker's leases.
    pub heartbeat_current: bool,
    /// Seconds since the last heartbeat that landed was sent.
    pub seconds_since_heartbeat: Option<f64>,
    /// Running with a current heartbeat: what `/healthz` answers 200 for.
    pub healthy: bool,
    /// The fraction of the last rate window the batch handler was busy
    /// (0 with `run_processors`: see each shard's).
    pub handler_busy_fraction: f64,
    /// The sum of `load_bytes_per_second` over the leases held: this
    /// worker's load.
    pub load_bytes_per_second: f64,
    /// The sum of `load_records_per_second` over the leases held.
    pub load_records_per_second: f64,
    /// The sum of `load_busy_fraction` over the leases held.
    pub load_busy_fraction: f64,
    /// Seconds since the lease table was last read (owners and checkpoints
    /// of the leases this worker does not hold are that old).
    pub seconds_since_table_read: Option<f64>,
    /// Every shard of the lease table as last read, and every lease held,
    /// sorted by shard id.
    pub shards: Vec<ShardStatus>,
    /// The last few errors, oldest first.
    pub recent_errors: Vec<RecentError>,
}

fn retain_held(state: &mut State, held: &[(String, Instant)]) {
    state
        .shards
        .retain(|id, _| held.iter().any(|(h, _)| h.as_str() == &**id));
}

/// Busy milliseconds per second as a fraction of the time.
fn fraction(busy_ms_per_second: f64) -> f64 {
    (busy_ms_per_second / 1000.0).clamp(0.0, 1.0)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Live {
    /// Names the consumer; the first call wins.
    pub(crate) fn set_names(&self, application: &str, stream: &str, worker: &str) {
        let _ = self.names.set(Names {
            application: application.to_owned(),
            stream: stream.to_owned(),
            worker: worker.to_owned(),
        });
    }

    /// Attaches the leases held; the first call wins.
    pub(crate) fn set_leases(&self, leases: Arc<dyn LeaseView>) {
        let _ = self.leases.set(leases);
    }

    /// Attaches the loads of the leases held; the first call wins.
    pub(crate) fn set_loads(&self, loads: Arc<dyn LoadView>) {
        let _ = self.loads.set(loads);
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    /// Notes the samples that feed the live figures: the handler's time
    /// and each read's lag.
    pub(crate) fn record(&self, shard: Option<&Arc<str>>, samples: &[(Metric, f64)]) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        for &(metric, value) in samples {
            match (metric, shard) {
                (Metric::ProcessTaskTime, None) => state.handler.add(now, value),
                (Metric::ProcessTaskTime, Some(s)) => {
                    state
                        .shards
                        .entry(s.clone())
                        .or_default()
                        .busy
                        .add(now, value);
                }
                (Metric::MillisBehindLatest, Some(s)) => {
                    let live = state.shards.entry(s.clone()).or_default();
                    live.behind_ms = Some(value);
                    live.behind_read = Some(now);
                }
                _ => {}
            }
        }
    }

    /// True when this worker cannot keep up: every lease it holds (one at
    /// least) is at least [`FALLING_BEHIND_FLOOR_MS`] behind and further
    /// behind than at the last call. A lease's lag is its last read's
    /// MillisBehindLatest plus the time since that read, so that a reader
    /// held back (its handler too slow to take more) counts as falling
    /// behind though it reads nothing. Called at each heartbeat.
    pub(crate) fn falling_behind(&self) -> bool {
        self.falling_behind_at(Instant::now())
    }

    fn falling_behind_at(&self, now: Instant) -> bool {
        let held = self.leases.get().map(|l| l.held()).unwrap_or_default();
        let mut state = lock(&self.state);
        let mut all = !held.is_empty();
        for (shard, _) in &held {
            let Some(live) = state.shards.get_mut(shard.as_str()) else {
                all = false;
                continue;
            };
            let lag = match (live.behind_ms, live.behind_read) {
                (Some(ms), Some(read)) => {
                    Some(ms + now.saturating_duration_since(read).as_secs_f64() * 1000.0)
                }
                _ => None,
            };
            let rising = match (lag, live.behind_last_look) {
                (Some(lag), Some(last)) => lag >= FALLING_BEHIND_FLOOR_MS && lag > last,
                _ => false,
            };
            all &= rising;
            live.behind_last_look = lag;
        }
        all
    }

    /// Notes records of a shard handed on and accepted; `last_arrival`:
    /// the arrival time of the last of them.
    pub(crate) fn handed_on(
        &self,
        shard: &Arc<str>,
        records: usize,
        bytes: u64,
        last_arrival: Option<SystemTime>,
    ) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let live = state.shards.entry(shard.clone()).or_default();
        live.records.add(now, records as f64);
        live.bytes.add(now, bytes as f64);
        if records > 0 {
            live.handed_on = Some(now);
            live.last_arrival = last_arrival.or(live.last_arrival);
        }
    }

    /// Notes a checkpoint written (its `checkpoint` column).
    pub(crate) fn checkpointed(&self, shard: &Arc<str>, checkpoint: &str) {
        let mut state = lock(&self.state);
        state.shards.entry(shard.clone()).or_default().checkpointed =
            Some((Instant::now(), checkpoint.to_owned()));
    }

    /// Keeps the lease table as just read.
    pub(crate) fn table_read(&self, rows: Vec<LeaseRow>) {
        let mut state = lock(&self.state);
        state.table = rows;
        state.table_read = Some(SystemTime::now());
    }

    /// Keeps an error for the status page (the last [`RECENT_ERRORS`]).
    pub(crate) fn error(&self, message: String) {
        let mut state = lock(&self.state);
        if state.errors.len() == RECENT_ERRORS {
            state.errors.pop_front();
        }
        state.errors.push_back(RecentError {
            at_unix_ms: unix_ms(SystemTime::now()),
            message,
        });
    }

    /// Forgets the figures of shards no longer held, so that they stay
    /// bounded by the leases held (`status` does it too).
    pub(crate) fn forget_released(&self) {
        let held = self.leases.get().map(|l| l.held()).unwrap_or_default();
        self.retain_loads(&held);
        retain_held(&mut lock(&self.state), &held);
    }

    fn retain_loads(&self, held: &[(String, Instant)]) {
        if let Some(loads) = self.loads.get() {
            let held: Vec<&str> = held.iter().map(|(h, _)| h.as_str()).collect();
            loads.retain(&held);
        }
    }

    /// The consumer as it is now. Forgets the figures of shards no longer
    /// held.
    pub(crate) fn status(&self) -> ConsumerStatus {
        let now = Instant::now();
        let wall = SystemTime::now();
        let held = self.leases.get().map(|l| l.held()).unwrap_or_default();
        let alive_since = self.leases.get().and_then(|l| l.alive_since());
        let heartbeat_current = self.leases.get().is_some_and(|l| l.heartbeat_current());
        let running = self.running.load(Ordering::Relaxed);
        self.retain_loads(&held);
        let loads = self.loads.get().map(|l| l.loads()).unwrap_or_default();
        let mut state = lock(&self.state);
        let state = &mut *state;
        retain_held(state, &held);
        let busy = fraction(state.handler.rate(now));
        let mut shards: Vec<ShardStatus> = state
            .table
            .iter()
            .filter(|row| !held.iter().any(|(h, _)| *h == row.shard_id))
            .map(|row| ShardStatus {
                shard_id: row.shard_id.clone(),
                owner: row.owner.clone(),
                checkpoint: Some(row.checkpoint.clone()),
                ..ShardStatus::default()
            })
            .collect();
        for (shard_id, since) in &held {
            let live = state.shards.get_mut(shard_id.as_str());
            let table_checkpoint = state
                .table
                .iter()
                .find(|r| r.shard_id == *shard_id)
                .map(|r| r.checkpoint.clone());
            let age = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
            let held_since = wall - now.saturating_duration_since(*since);
            let mut status = ShardStatus {
                shard_id: shard_id.clone(),
                owner: self.names.get().map(|n| n.worker.clone()),
                checkpoint: table_checkpoint,
                held_here: true,
                lease_held_since_unix_ms: Some(unix_ms(held_since)),
                handler_busy_fraction: Some(busy),
                records_per_second: Some(0.0),
                bytes_per_second: Some(0.0),
                ..ShardStatus::default()
            };
            if let Some(live) = live {
                status.millis_behind_latest = live.behind_ms;
                status.seconds_since_last_record = live.handed_on.map(age);
                status.last_record_age_seconds = live
                    .last_arrival
                    .map(|t| wall.duration_since(t).unwrap_or_default().as_secs_f64());
                if let Some((at, checkpoint)) = &live.checkpointed {
                    status.seconds_since_checkpoint = Some(age(*at));
                    status.checkpoint = Some(checkpoint.clone());
                }
                if live.busy.start.is_some() {
                    status.handler_busy_fraction = Some(fraction(live.busy.rate(now)));
                }
                status.records_per_second = Some(live.records.rate(now));
                status.bytes_per_second = Some(live.bytes.rate(now));
            }
            if let Some((_, load)) = loads.iter().find(|(l, _)| l == shard_id) {
                status.load_bytes_per_second = Some(load.bytes_per_second);
                status.load_records_per_second = Some(load.records_per_second);
                status.load_busy_fraction = Some(load.busy_fraction);
            }
            shards.push(status);
        }
        shards.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        let names = self.names.get();
        let name = |f: fn(&Names) -> &String| names.map(|n| f(n).clone()).unwrap_or_default();
        let held_loads = || {
            loads
                .iter()
                .filter(|(l, _)| held.iter().any(|(h, _)| h == l))
                .map(|(_, load)| load)
        };
        ConsumerStatus {
            load_bytes_per_second: held_loads().map(|l| l.bytes_per_second).sum(),
            load_records_per_second: held_loads().map(|l| l.records_per_second).sum(),
            load_busy_fraction: held_loads().map(|l| l.busy_fraction).sum(),
            application: name(|n| &n.application),
            stream: name(|n| &n.stream),
            worker: name(|n| &n.worker),
            running,
            heartbeat_current,
            seconds_since_heartbeat: alive_since
                .map(|a| now.saturating_duration_since(a).as_secs_f64()),
            healthy: running && heartbeat_current,
            handler_busy_fraction: busy,
            seconds_since_table_read: state
                .table_read
                .map(|t| wall.duration_since(t).unwrap_or_default().as_secs_f64()),
            shards,
            recent_errors: state.errors.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Holding(Vec<String>);

    impl LeaseView for Holding {
        fn held(&self) -> Vec<(String, Instant)> {
            self.0.iter().map(|s| (s.clone(), Instant::now())).collect()
        }
        fn alive_since(&self) -> Option<Instant> {
            Some(Instant::now())
        }
        fn heartbeat_current(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_worker_falls_behind_when_every_lease_lags_further_at_each_look() {
        let live = Live::default();
        live.set_leases(Arc::new(Holding(vec!["a".into(), "b".into()])));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let lag = |shard: &Arc<str>, ms: f64| {
            live.record(Some(shard), &[(Metric::MillisBehindLatest, ms)]);
        };
        let start = Instant::now();
        let look = |secs: u64| live.falling_behind_at(start + Duration::from_secs(secs));
        lag(&a, 20_000.0);
        lag(&b, 20_000.0);
        assert!(!look(0), "no earlier look to compare with");
        lag(&a, 30_000.0);
        lag(&b, 15_000.0);
        assert!(!look(1), "b catches up");
        lag(&b, 40_000.0);
        assert!(look(2), "both further behind");
        // No read since: the lag grows with the time (a reader held back).
        assert!(look(10));
        // Far behind but caught up at once: not falling behind.
        lag(&a, 0.0);
        lag(&b, 0.0);
        assert!(!look(11));
        let idle = Live::default();
        assert!(!idle.falling_behind(), "no lease held");
    }

    #[test]
    fn status_shows_held_shards_and_forgets_released_ones() {
        let live = Live::default();
        live.set_names("app", "stream", "w1");
        live.set_leases(Arc::new(Holding(vec!["shard-a".into()])));
        let (a, b): (Arc<str>, Arc<str>) = ("shard-a".into(), "shard-b".into());
        live.record(Some(&a), &[(Metric::MillisBehindLatest, 250.0)]);
        // A processor of shard-a busy for 500 ms.
        live.record(Some(&a), &[(Metric::ProcessTaskTime, 500.0)]);
        let arrived = SystemTime::now() - Duration::from_secs(30);
        live.handed_on(&a, 4, 40, Some(arrived));
        live.record(Some(&b), &[(Metric::MillisBehindLatest, 9.0)]);
        live.checkpointed(&a, "49590");
        live.table_read(vec![
            LeaseRow {
                shard_id: "shard-a".into(),
                owner: Some("w1".into()),
                checkpoint: "TRIM_HORIZON".into(),
            },
            LeaseRow {
                shard_id: "shard-b".into(),
                owner: Some("w2".into()),
                checkpoint: "123".into(),
            },
        ]);
        for i in 0..RECENT_ERRORS + 3 {
            live.error(format!("error {i}"));
        }
        let status = live.status();
        assert!(!status.healthy, "not running");
        assert_eq!(status.shards.len(), 2);
        let held = &status.shards[0];
        assert!(held.held_here);
        assert_eq!(held.owner.as_deref(), Some("w1"));
        assert_eq!(held.millis_behind_latest, Some(250.0));
        assert_eq!(held.checkpoint.as_deref(), Some("49590"));
        assert!(held.seconds_since_last_record.is_some_and(|s| s < 5.0));
        assert!(held.last_record_age_seconds.is_some_and(|s| s >= 30.0));
        assert!(held.records_per_second.is_some_and(|r| r > 0.0));
        // Its own processor's fraction; no batch handler ran.
        assert!(held.handler_busy_fraction.is_some_and(|f| f > 0.0));
        assert_eq!(status.handler_busy_fraction, 0.0);
        let other = &status.shards[1];
        assert!(!other.held_here);
        assert_eq!(other.owner.as_deref(), Some("w2"));
        assert_eq!(other.millis_behind_latest, None, "not held here");
        assert_eq!(status.recent_errors.len(), RECENT_ERRORS);
        assert_eq!(status.recent_errors[0].message, "error 3");
        // shard-b's figures were pruned: not held.
        assert_eq!(lock(&live.state).shards.len(), 1);
        live.set_running(true);
        assert!(live.status().healthy);
    }

    #[derive(Debug)]
    struct Loads(Mutex<Vec<(String, LeaseLoad)>>);

    impl LoadView for Loads {
        fn loads(&self) -> Vec<(String, LeaseLoad)> {
            lock(&self.0).clone()
        }
        fn retain(&self, held: &[&str]) {
            lock(&self.0).retain(|(l, _)| held.contains(&l.as_str()));
        }
    }

    #[test]
    fn status_shows_each_held_lease_load_and_the_worker_total() {
        let live = Live::default();
        live.set_leases(Arc::new(Holding(vec!["a".into(), "b".into()])));
        let load = |bytes: f64| LeaseLoad {
            bytes_per_second: bytes,
            records_per_second: bytes / 100.0,
            busy_fraction: bytes / 10_000.0,
        };
        let loads = Arc::new(Loads(Mutex::new(vec![
            ("a".into(), load(1000.0)),
            ("b".into(), load(3000.0)),
            ("released".into(), load(50.0)),
        ])));
        live.set_loads(loads.clone());
        let status = live.status();
        let a = &status.shards[0];
        assert_eq!(a.load_bytes_per_second, Some(1000.0));
        assert_eq!(a.load_records_per_second, Some(10.0));
        assert_eq!(a.load_busy_fraction, Some(0.1));
        assert_eq!(status.load_bytes_per_second, 4000.0);
        assert_eq!(status.load_records_per_second, 40.0);
        assert_eq!(status.load_busy_fraction, 0.4);
        // The released lease's load is forgotten.
        assert_eq!(loads.loads().len(), 2);
    }

    #[test]
    fn windows_give_rates() {
        let mut w = Window::default();
        let t0 = Instant::now();
        w.add(t0, 10.0);
        w.add(t0 + Duration::from_secs(5), 40.0);
        assert_eq!(w.rate(t0 + Duration::from_secs(5)), 10.0);
        assert_eq!(
            w.rate(t0 + Duration::from_millis(100)),
            50.0,
            "over 1 s at least"
        );
        assert_eq!(w.rate(t0 + Duration::from_secs(10)), 5.0);
        // The next window has nothing yet: the last complete one counts.
        assert_eq!(w.rate(t0 + Duration::from_secs(12)), 5.0);
    }
}
