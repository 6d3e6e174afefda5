//! Aggregation: samples summed into statistic sets per series, both for the
//! current publishing period and since the start.

use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::Metric;

/// Samples summed up: how many, their sum, least and greatest.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Statistics {
    /// The number of samples.
    pub sample_count: u64,
    /// Their sum.
    pub sum: f64,
    /// The least sample (0 when there is none).
    pub minimum: f64,
    /// The greatest sample (0 when there is none).
    pub maximum: f64,
}

impl Statistics {
    /// Adds one sample.
    pub(crate) fn add(&mut self, value: f64) {
        if self.sample_count == 0 {
            self.minimum = value;
            self.maximum = value;
        } else {
            self.minimum = self.minimum.min(value);
            self.maximum = self.maximum.max(value);
        }
        self.sample_count += 1;
        self.sum += value;
    }

    /// The mean sample, if there is any.
    pub fn average(&self) -> Option<f64> {
        (self.sample_count > 0).then(|| self.sum / self.sample_count as f64)
    }
}

/// What a series is told apart by besides the metric: the shard, when
/// per-shard detail is kept. The other dimensions are the same for every
/// series of a consumer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SeriesKey {
    pub metric: Metric,
    pub shard: Option<Arc<str>>,
}

/// Upper bounds, in milliseconds, of the histogram buckets durations are
/// counted in since the start (for the Prometheus exposition); a last
/// bucket counts what lies above them all.
pub(crate) const DURATION_BUCKETS_MS: [f64; 12] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// A series since the start: its statistics, its latest sample (for
/// gauges), and for durations how many samples fell in each bucket of
/// [`DURATION_BUCKETS_MS`] (not cumulative; one more for above them all).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Total {
    pub statistics: Statistics,
    pub last: f64,
    pub buckets: Vec<u64>,
}

#[derive(Debug, Default)]
struct Entry {
    period: Statistics,
    total: Total,
}

/// Every series seen, with its statistics for the current period and since
/// the start. Memory grows with the number of series, never with samples.
#[derive(Debug, Default)]
pub(crate) struct Series {
    entries: HashMap<SeriesKey, Entry>,
}

impl Series {
    /// Adds a sample. Allocates only for a series not seen before.
    pub(crate) fn add(&mut self, key: SeriesKey, value: f64) {
        let is_duration = key.metric.is_duration();
        let entry = self.entries.entry(key).or_default();
        entry.period.add(value);
        entry.total.statistics.add(value);
        entry.total.last = value;
        if is_duration {
            let buckets = &mut entry.total.buckets;
            if buckets.is_empty() {
                buckets.resize(DURATION_BUCKETS_MS.len() + 1, 0);
            }
            let at = DURATION_BUCKETS_MS
                .iter()
                .position(|bound| value <= *bound)
                .unwrap_or(DURATION_BUCKETS_MS.len());
            buckets[at] += 1;
        }
    }

    /// The statistics of the period that ends now, for every series that
    /// had samples in it, in a stable order; starts the next period.
    pub(crate) fn take_period(&mut self) -> Vec<(SeriesKey, Statistics)> {
        let mut out: Vec<(SeriesKey, Statistics)> = self
            .entries
            .iter_mut()
            .filter(|(_, e)| e.period.sample_count > 0)
            .map(|(k, e)| (k.clone(), std::mem::take(&mut e.period)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every series since the start, in a stable order.
    pub(crate) fn totals(&self) -> Vec<(SeriesKey, Total)> {
        let mut out: Vec<(SeriesKey, Total)> = self
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), e.total.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(metric: Metric, shard: Option<&str>) -> SeriesKey {
        SeriesKey {
            metric,
            shard: shard.map(Arc::from),
        }
    }

    #[test]
    fn samples_sum_into_statistic_sets() {
        let mut s = Statistics::default();
        assert_eq!(s.average(), None);
        for v in [5.0, 2.0, 9.0, 4.0] {
            s.add(v);
        }
        assert_eq!(
            s,
            Statistics {
                sample_count: 4,
                sum: 20.0,
                minimum: 2.0,
                maximum: 9.0
            }
        );
        assert_eq!(s.average(), Some(5.0));
        let mut negative = Statistics::default();
        negative.add(-3.0);
        assert_eq!((negative.minimum, negative.maximum), (-3.0, -3.0));
    }

    #[test]
    fn periods_reset_and_totals_accumulate() {
        let mut series = Series::default();
        let a = key(Metric::RecordsProcessed, Some("shard-a"));
        let b = key(Metric::RecordsProcessed, Some("shard-b"));
        series.add(a.clone(), 10.0);
        series.add(a.clone(), 30.0);
        series.add(b.clone(), 1.0);
        let first = series.take_period();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].0, a);
        assert_eq!(
            first[0].1,
            Statistics {
                sample_count: 2,
                sum: 40.0,
                minimum: 10.0,
                maximum: 30.0
            }
        );
        assert_eq!(first[1].1.sum, 1.0);
        // Nothing new: an empty period publishes nothing.
        assert!(series.take_period().is_empty());
        series.add(b.clone(), 5.0);
        let second = series.take_period();
        assert_eq!(second.len(), 1);
        assert_eq!(
            second[0].1,
            Statistics {
                sample_count: 1,
                sum: 5.0,
                minimum: 5.0,
                maximum: 5.0
            }
        );
        let totals = series.totals();
        assert_eq!(totals[0].1.statistics.sum, 40.0);
        assert_eq!(totals[1].1.last, 5.0);
        assert!(totals[1].1.buckets.is_empty(), "a count has no buckets");
        assert_eq!(
            totals[1].1.statistics,
            Statistics {
                sample_count: 2,
                sum: 6.0,
                minimum: 1.0,
                maximum: 5.0
            }
        );
    }

    #[test]
    fn durations_fall_in_buckets() {
        let mut series = Series::default();
        let k = key(Metric::GetRecordsTime, None);
        for v in [0.5, 1.0, 3.0, 10_000.0, 10_001.0] {
            series.add(k.clone(), v);
        }
        let total = &series.totals()[0].1;
        let mut expected = vec![0; DURATION_BUCKETS_MS.len() + 1];
        expected[0] = 2; // 0.5 and 1.0: bounds are inclusive
        expected[1] = 1;
        expected[DURATION_BUCKETS_MS.len() - 1] = 1;
        expected[DURATION_BUCKETS_MS.len()] = 1;
        assert_eq!(total.buckets, expected);
        assert_eq!(total.last, 10_001.0);
    }
}
