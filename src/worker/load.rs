//! Each held lease's load on this worker: bytes and records read per
//! second, and the handler's busy time per second, smoothed over about a
//! minute. This is the load that moves with the lease (the balancer of
//! issue 27 weighs it), measured from our own reads and handler calls
//! rather than from host CPU.
//!
//! Every figure is an exponentially weighted rate with a half-life of
//! [`LOAD_HALF_LIFE`]: a sample's weight halves every 20 s, so one a minute
//! old counts for 1/8. The clock is passed in (`now`), so tests drive it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::{LeaseLoad, LoadView};
use crate::sync::lock;

/// How fast old samples fade from a lease's load: their weight halves
/// every this long.
pub(crate) const LOAD_HALF_LIFE: Duration = Duration::from_secs(20);

/// Until a lease has been measured this long, its rate is taken over this
/// long at least, so that the first sample does not read as a burst.
const SHORTEST_SPAN: Duration = Duration::from_secs(1);

/// `e^(-λ·elapsed)` with `λ = ln 2 / LOAD_HALF_LIFE`: the weight left to a
/// sample `elapsed` old.
fn weight_after(elapsed: Duration) -> f64 {
    0.5f64.powf(elapsed.as_secs_f64() / LOAD_HALF_LIFE.as_secs_f64())
}

/// A rate per second, each sample weighted by `λ·e^(-λ·age)` (which sums
/// to 1 over all ages, so a steady rate reads as itself), and divided by
/// the weight of the span measured so far: a lease taken a few seconds ago
/// reads its true rate rather than one ramping up from zero.
#[derive(Clone, Copy, Debug)]
struct DecayingRate {
    /// When measuring began.
    since: Instant,
    /// When `level` was last brought up to date.
    at: Instant,
    /// The weighted sum of the samples as of `at`.
    level: f64,
}

impl DecayingRate {
    fn new(now: Instant) -> DecayingRate {
        DecayingRate {
            since: now,
            at: now,
            level: 0.0,
        }
    }

    fn add(&mut self, now: Instant, amount: f64) {
        // A sample from before `at` (threads race to the lock) counts as at `at`.
        let now = now.max(self.at);
        self.level *= weight_after(now - self.at);
        self.at = now;
        let lambda = std::f64::consts::LN_2 / LOAD_HALF_LIFE.as_secs_f64();
        self.level += amount * lambda;
    }

    fn rate(&self, now: Instant) -> f64 {
        let level = self.level * weight_after(now.saturating_duration_since(self.at));
        let span = now.saturating_duration_since(self.since).max(SHORTEST_SPAN);
        level / (1.0 - weight_after(span))
    }
}

/// One lease's three rates.
#[derive(Clone, Copy, Debug)]
struct Meters {
    bytes: DecayingRate,
    records: DecayingRate,
    busy_seconds: DecayingRate,
}

impl Meters {
    fn new(now: Instant) -> Meters {
        Meters {
            bytes: DecayingRate::new(now),
            records: DecayingRate::new(now),
            busy_seconds: DecayingRate::new(now),
        }
    }

    fn load(&self, now: Instant) -> LeaseLoad {
        LeaseLoad {
            bytes_per_second: self.bytes.rate(now),
            records_per_second: self.records.rate(now),
            busy_fraction: self.busy_seconds.rate(now),
        }
    }
}

/// The loads of the leases held here, shared by the readers (bytes and
/// records read), the handler's callers (busy time) and the metrics (which
/// show them). One short lock per read or handler call, never per record.
#[derive(Debug, Default)]
pub(crate) struct LoadMeter {
    leases: Mutex<HashMap<Arc<str>, Meters>>,
}

impl LoadMeter {
    /// Starts measuring `lease` afresh: a lease taken (again) carries no
    /// figures from an earlier holding.
    pub(crate) fn started(&self, lease: &Arc<str>, now: Instant) {
        lock(&self.leases).insert(lease.clone(), Meters::new(now));
    }

    /// Notes `records` records of `bytes` bytes (data and partition keys)
    /// read from `lease`.
    pub(crate) fn read(&self, lease: &Arc<str>, records: usize, bytes: u64, now: Instant) {
        let mut leases = lock(&self.leases);
        let meters = leases
            .entry(lease.clone())
            .or_insert_with(|| Meters::new(now));
        meters.records.add(now, records as f64);
        meters.bytes.add(now, bytes as f64);
    }

    /// Notes a handler call that took `busy` for the records of `shares`
    /// (lease, records): each lease is charged its share of the time by
    /// records. A batch handler serves every shard of its batch; a
    /// processor serves one, which then gets all of it. A call without
    /// records charges no lease.
    pub(crate) fn busy(&self, shares: &[(Arc<str>, usize)], busy: Duration, now: Instant) {
        let total: usize = shares.iter().map(|(_, records)| records).sum();
        if total == 0 {
            return;
        }
        let mut leases = lock(&self.leases);
        for (lease, records) in shares {
            let share = busy.as_secs_f64() * *records as f64 / total as f64;
            leases
                .entry(lease.clone())
                .or_insert_with(|| Meters::new(now))
                .busy_seconds
                .add(now, share);
        }
    }

    /// Each lease's load at `now`, sorted by lease key.
    pub(crate) fn loads_at(&self, now: Instant) -> Vec<(String, LeaseLoad)> {
        let mut loads: Vec<(String, LeaseLoad)> = lock(&self.leases)
            .iter()
            .map(|(lease, meters)| (lease.to_string(), meters.load(now)))
            .collect();
        loads.sort_by(|a, b| a.0.cmp(&b.0));
        loads
    }
}

impl LoadView for LoadMeter {
    fn loads(&self) -> Vec<(String, LeaseLoad)> {
        self.loads_at(Instant::now())
    }

    fn load_of(&self, lease: &str) -> Option<LeaseLoad> {
        lock(&self.leases)
            .get(lease)
            .map(|meters| meters.load(Instant::now()))
    }

    fn retain(&self, held: &[&str]) {
        lock(&self.leases).retain(|lease, _| held.contains(&&**lease));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance * expected.abs().max(1e-9)
    }

    /// Reads `bytes` every second from `from` for `seconds` seconds.
    fn steady(meter: &LoadMeter, lease: &Arc<str>, from: Instant, seconds: u64, bytes: u64) {
        for s in 1..=seconds {
            meter.read(lease, 1, bytes, from + secs(s as f64));
        }
    }

    #[test]
    fn a_steady_rate_reads_as_itself_from_the_first_seconds() {
        let lease: Arc<str> = "shard-1".into();
        let t0 = Instant::now();
        for seconds in [5, 60, 300] {
            let meter = LoadMeter::default();
            meter.started(&lease, t0);
            steady(&meter, &lease, t0, seconds, 1000);
            // Just after the last sample: sampled once a second, the rate
            // reads about λ·1 s / 2 ≈ 1.7 % high there (and as low just
            // before the next).
            let load = meter.loads_at(t0 + secs(seconds as f64))[0].1;
            assert!(
                close(load.bytes_per_second, 1000.0, 0.03),
                "after {seconds} s: {}",
                load.bytes_per_second
            );
            assert!(close(load.records_per_second, 1.0, 0.03));
        }
    }

    #[test]
    fn a_change_of_rate_shows_half_within_one_half_life() {
        let meter = LoadMeter::default();
        let lease: Arc<str> = "shard-1".into();
        let t0 = Instant::now();
        meter.started(&lease, t0);
        steady(&meter, &lease, t0, 600, 1000);
        // Then three times as fast, for one half-life.
        let t1 = t0 + secs(600.0);
        steady(&meter, &lease, t1, 20, 3000);
        let load = meter.loads_at(t1 + secs(20.0)).remove(0).1;
        assert!(close(load.bytes_per_second, 2000.0, 0.03), "{load:?}");
        // Then nothing for another: half of it left.
        let later = meter.loads_at(t1 + secs(40.0)).remove(0).1;
        assert!(close(
            later.bytes_per_second,
            load.bytes_per_second / 2.0,
            1e-9
        ));
    }

    #[test]
    fn batch_handler_time_is_split_by_records_and_a_processor_gets_all_of_its_own() {
        let meter = LoadMeter::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let t0 = Instant::now();
        for lease in [&a, &b, &c] {
            meter.started(lease, t0);
        }
        // A batch handler busy 400 ms of every second: a had 3 records of
        // each batch, b 1, c none.
        for s in 1..=120 {
            let shares = [(a.clone(), 3), (b.clone(), 1), (c.clone(), 0)];
            meter.busy(&shares, secs(0.4), t0 + secs(s as f64));
        }
        // A call without records charges nobody.
        meter.busy(&[(c.clone(), 0)], secs(5.0), t0 + secs(120.0));
        let loads = meter.loads_at(t0 + secs(120.5));
        let busy = |i: usize| loads[i].1.busy_fraction;
        assert!(close(busy(0), 0.3, 0.03), "{loads:?}");
        assert!(close(busy(1), 0.1, 0.03), "{loads:?}");
        assert_eq!(busy(2), 0.0);
        // A processor (one shard) busy 250 ms a second gets all of it.
        let processor = LoadMeter::default();
        processor.started(&a, t0);
        for s in 1..=120 {
            processor.busy(&[(a.clone(), 7)], secs(0.25), t0 + secs(s as f64));
        }
        let own = processor.loads_at(t0 + secs(120.5))[0].1.busy_fraction;
        assert!(close(own, 0.25, 0.03), "{own}");
    }

    #[test]
    fn a_lease_taken_again_starts_afresh_and_released_ones_are_forgotten() {
        let meter = LoadMeter::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let t0 = Instant::now();
        steady(&meter, &a, t0, 60, 5000);
        steady(&meter, &b, t0, 60, 10);
        meter.started(&a, t0 + secs(60.0));
        let loads = meter.loads_at(t0 + secs(61.0));
        assert_eq!(loads[0].0, "a");
        assert_eq!(loads[0].1.bytes_per_second, 0.0);
        meter.retain(&["a"]);
        let kept: Vec<String> = meter.loads().into_iter().map(|(l, _)| l).collect();
        assert_eq!(kept, ["a"]);
    }

    /// Leases held over a fake DynamoDB that notes every request body.
    fn held_noting_requests() -> (
        crate::aws::test_server::FakeServer,
        Arc<crate::lease::HeldLeases>,
        Arc<Mutex<Vec<serde_json::Value>>>,
    ) {
        let requests: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let noted = requests.clone();
        let (server, held) = crate::worker::test_support::held_leases_answering(move |r| {
            lock(&noted).push(serde_json::from_str(&r.body).unwrap_or_default());
            (
                200,
                r#"{"Attributes":{"leaseCounter":{"N":"1"}}}"#.to_owned(),
            )
        });
        (server, held, requests)
    }

    #[test]
    fn a_checkpoint_carries_its_lease_s_load_in_its_one_write() {
        let (_server, held, requests) = held_noting_requests();
        let meter = Arc::new(LoadMeter::default());
        held.publish_loads_from(meter.clone());
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        // A minute of 2,048 bytes (one record) a second, up to now.
        let lease: Arc<str> = "shard-1".into();
        let t0 = Instant::now().checked_sub(secs(60.0)).unwrap();
        meter.started(&lease, t0);
        steady(&meter, &lease, t0, 60, 2048);
        lock(&requests).clear();
        let end = crate::lease::Checkpoint::ShardEnd;
        assert!(held.checkpoint("shard-1", epoch, &end).unwrap());
        let sent = lock(&requests).clone();
        assert_eq!(sent.len(), 1, "{sent:?}");
        let values = &sent[0]["ExpressionAttributeValues"];
        let number = |name: &str| values[name]["N"].as_str().unwrap().parse::<f64>().unwrap();
        assert!(close(number(":throughput"), 2.0, 0.05), "{values}");
        assert!(close(number(":records"), 1.0, 0.05), "{values}");
        assert_eq!(number(":busy"), 0.0);
        assert_eq!(values[":checkpoint"]["S"], "SHARD_END");
        // Without a meter (the simulation), the checkpoint writes no load.
        let (_server, bare, requests) = held_noting_requests();
        let epoch = bare.take("shard-1", 0, false).unwrap().unwrap();
        lock(&requests).clear();
        assert!(bare.checkpoint("shard-1", epoch, &end).unwrap());
        let sent = lock(&requests).clone();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(sent[0]["ExpressionAttributeValues"][":throughput"].is_null());
        assert!(sent[0]["ExpressionAttributeValues"][":checkpoint"].is_object());
    }

    #[test]
    fn the_first_sample_reads_over_a_second_at_least() {
        let meter = LoadMeter::default();
        let lease: Arc<str> = "a".into();
        let t0 = Instant::now();
        meter.started(&lease, t0);
        meter.read(&lease, 10, 1000, t0 + secs(0.01));
        let load = meter.loads_at(t0 + secs(0.01))[0].1;
        // 1000 bytes in the first 10 ms read as about 1000 per second, not 100,000.
        assert!(close(load.bytes_per_second, 1000.0, 0.02), "{load:?}");
    }
}
