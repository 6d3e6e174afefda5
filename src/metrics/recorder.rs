//! Recording: the handle the readers, the ticker and the lease coordinator
//! record through. It applies the level and the dimensions as it records,
//! so what is kept is exactly what will be published.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::metrics::aggregate::{Series, SeriesKey, Statistics, Total};
use crate::metrics::live::Live;
use crate::metrics::{Metric, MetricSample, PublishStats};
use crate::metrics::{MetricsDimension, MetricsLevel};
use crate::stream::{shard_id_of, split_lease_key};
use crate::sync::lock;

/// What one consumer's metrics share.
pub(crate) struct Registry {
    level: MetricsLevel,
    dimensions: Vec<MetricsDimension>,
    /// Detailed level and `ShardId` chosen: keep one series per shard.
    per_shard: bool,
    worker_id: String,
    stream: String,
    series: Mutex<Series>,
    pub(crate) publish: Mutex<PublishStats>,
}

/// Records metrics; only the live figures (see [`Live`]) when metrics are
/// off. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    registry: Option<Arc<Registry>>,
    live: Arc<Live>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("level", &self.level())
            .field("dimensions", &self.dimensions())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics at `level` broken down by `dimensions` (duplicates ignored).
    pub(crate) fn new(
        level: MetricsLevel,
        dimensions: &[MetricsDimension],
        worker_id: &str,
        stream: &str,
    ) -> Metrics {
        if level == MetricsLevel::None {
            return Metrics::default();
        }
        let mut chosen: Vec<MetricsDimension> = Vec::new();
        for d in dimensions {
            if !chosen.contains(d) {
                chosen.push(*d);
            }
        }
        let per_shard =
            level == MetricsLevel::Detailed && chosen.contains(&MetricsDimension::ShardId);
        Metrics {
            registry: Some(Arc::new(Registry {
                level,
                dimensions: chosen,
                per_shard,
                worker_id: worker_id.to_owned(),
                stream: stream.to_owned(),
                series: Mutex::new(Series::default()),
                publish: Mutex::new(PublishStats::default()),
            })),
            live: Arc::default(),
        }
    }

    pub(crate) fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// Records one sample of each metric, for `shard` where the metric is
    /// per shard; takes the lock once. Allocates only for new series.
    #[inline]
    pub(crate) fn record(&self, shard: Option<&Arc<str>>, samples: &[(Metric, f64)]) {
        if let Some(registry) = &self.registry {
            registry.record(shard, samples);
        }
        self.live.record(shard, samples);
    }

    /// The consumer's live state (at every level).
    pub(crate) fn live(&self) -> &Live {
        &self.live
    }

    /// Every series since the start, for the Prometheus exposition.
    pub(crate) fn totals(&self) -> Vec<(SeriesKey, Total)> {
        self.registry
            .as_ref()
            .map_or_else(Vec::new, |r| lock(&r.series).totals())
    }

    pub(crate) fn level(&self) -> MetricsLevel {
        self.registry
            .as_ref()
            .map_or(MetricsLevel::None, |r| r.level)
    }

    pub(crate) fn dimensions(&self) -> Vec<MetricsDimension> {
        self.registry
            .as_ref()
            .map_or_else(Vec::new, |r| r.dimensions.clone())
    }

    pub(crate) fn snapshot(&self) -> Vec<MetricSample> {
        let Some(registry) = &self.registry else {
            return Vec::new();
        };
        let totals = lock(&registry.series).totals();
        totals
            .into_iter()
            .map(|(key, total)| registry.sample(&key, total.statistics))
            .collect()
    }

    pub(crate) fn publish_stats(&self) -> PublishStats {
        self.registry
            .as_ref()
            .map_or_else(PublishStats::default, |r| *lock(&r.publish))
    }
}

impl Registry {
    fn record(&self, shard: Option<&Arc<str>>, samples: &[(Metric, f64)]) {
        let mut series = lock(&self.series);
        for &(metric, value) in samples {
            if metric.level() == MetricsLevel::Detailed && self.level != MetricsLevel::Detailed {
                continue;
            }
            let shard = if self.per_shard && metric.per_shard() {
                shard.cloned()
            } else {
                None
            };
            series.add(SeriesKey { metric, shard }, value);
        }
    }

    /// The period that ends now: each series with samples in it, as a
    /// sample with its dimensions.
    pub(crate) fn take_period(&self) -> Vec<MetricSample> {
        let period = lock(&self.series).take_period();
        period
            .into_iter()
            .map(|(key, statistics)| self.sample(&key, statistics))
            .collect()
    }

    fn sample(&self, key: &SeriesKey, statistics: Statistics) -> MetricSample {
        MetricSample {
            name: key.metric.name(),
            dimensions: self.dimensions_of(key),
            unit: key.metric.unit(),
            statistics,
        }
    }

    /// The dimensions of a series, in the order the user chose them.
    fn dimensions_of(&self, key: &SeriesKey) -> Vec<(&'static str, String)> {
        self.dimensions
            .iter()
            .filter_map(|d| match d {
                MetricsDimension::Operation => {
                    Some(("Operation", key.metric.operation().to_owned()))
                }
                MetricsDimension::ShardId => key
                    .shard
                    .as_ref()
                    .map(|s| ("ShardId", shard_id_of(s).to_owned())),
                MetricsDimension::WorkerIdentifier => {
                    Some(("WorkerIdentifier", self.worker_id.clone()))
                }
                // A multi-stream consumer's shard names its stream; its
                // other series (`stream` empty) have no one stream.
                MetricsDimension::StreamName => {
                    match key.shard.as_deref().and_then(split_lease_key) {
                        Some((stream, _)) => Some(("StreamName", stream.name().to_owned())),
                        None if self.stream.is_empty() => None,
                        None => Some(("StreamName", self.stream.clone())),
                    }
                }
            })
            .collect()
    }

    pub(crate) fn update_publish_stats(&self, update: impl FnOnce(&mut PublishStats)) {
        update(&mut lock(&self.publish));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetricsDimension::*;

    fn shard(id: &str) -> Arc<str> {
        Arc::from(id)
    }

    fn record_workload(m: &Metrics) {
        let (a, b) = (shard("shardId-a"), shard("shardId-b"));
        m.record(
            Some(&a),
            &[
                (Metric::RecordsProcessed, 10.0),
                (Metric::GetRecordsTime, 12.0),
            ],
        );
        m.record(
            Some(&b),
            &[
                (Metric::RecordsProcessed, 5.0),
                (Metric::GetRecordsTime, 30.0),
            ],
        );
        m.record(None, &[(Metric::ProcessTaskTime, 3.0)]);
    }

    fn find<'a>(samples: &'a [MetricSample], name: &str) -> Vec<&'a MetricSample> {
        samples.iter().filter(|s| s.name == name).collect()
    }

    #[test]
    fn a_multi_stream_shard_gets_its_stream_and_bare_shard_id() {
        let m = Metrics::new(MetricsLevel::Detailed, &[StreamName, ShardId], "w", "");
        let key: Arc<str> = Arc::from("123456789012:orders:1700000000:shardId-7");
        m.record(Some(&key), &[(Metric::RecordsProcessed, 1.0)]);
        m.record(None, &[(Metric::ProcessTaskTime, 1.0)]);
        let samples = m.snapshot();
        let processed = samples
            .iter()
            .find(|s| s.dimension("ShardId").is_some())
            .unwrap();
        assert_eq!(processed.dimension("ShardId"), Some("shardId-7"));
        assert_eq!(processed.dimension("StreamName"), Some("orders"));
        let handler = samples
            .iter()
            .find(|s| s.dimension("ShardId").is_none())
            .unwrap();
        assert_eq!(handler.dimension("StreamName"), None);
    }

    #[test]
    fn level_none_records_nothing() {
        let m = Metrics::new(MetricsLevel::None, &[Operation, ShardId], "w", "s");
        assert!(m.registry().is_none());
        record_workload(&m);
        assert!(m.snapshot().is_empty());
        assert_eq!(m.publish_stats(), PublishStats::default());
    }

    #[test]
    fn summary_drops_shard_detail_and_detailed_only_metrics() {
        let m = Metrics::new(
            MetricsLevel::Summary,
            &[Operation, ShardId, WorkerIdentifier],
            "worker-1",
            "stream-1",
        );
        record_workload(&m);
        let samples = m.snapshot();
        assert!(samples.iter().all(|s| s.dimension("ShardId").is_none()));
        assert!(find(&samples, "GetRecords.Time").is_empty());
        let processed = find(&samples, "RecordsProcessed");
        assert_eq!(processed.len(), 1, "one series across shards");
        assert_eq!(processed[0].statistics.sum, 15.0);
        assert_eq!(processed[0].statistics.sample_count, 2);
        assert_eq!(
            processed[0].dimensions,
            vec![
                ("Operation", "ProcessTask".to_owned()),
                ("WorkerIdentifier", "worker-1".to_owned())
            ]
        );
        assert_eq!(find(&samples, "ProcessTask.Time").len(), 1);
    }

    #[test]
    fn detailed_keeps_shards_and_the_chosen_dimensions_in_order() {
        let m = Metrics::new(
            MetricsLevel::Detailed,
            &[StreamName, ShardId, Operation, ShardId],
            "worker-1",
            "stream-1",
        );
        assert_eq!(m.dimensions(), vec![StreamName, ShardId, Operation]);
        record_workload(&m);
        let samples = m.snapshot();
        let processed = find(&samples, "RecordsProcessed");
        assert_eq!(processed.len(), 2);
        assert_eq!(
            processed[0].dimensions,
            vec![
                ("StreamName", "stream-1".to_owned()),
                ("ShardId", "shardId-a".to_owned()),
                ("Operation", "ProcessTask".to_owned()),
            ]
        );
        assert_eq!(processed[1].dimension("ShardId"), Some("shardId-b"));
        assert_eq!(processed[1].statistics.sum, 5.0);
        assert_eq!(find(&samples, "GetRecords.Time").len(), 2);
        // Not a per-shard metric: no ShardId even at the detailed level.
        let handler = find(&samples, "ProcessTask.Time");
        assert_eq!(handler.len(), 1);
        assert_eq!(handler[0].dimension("ShardId"), None);
    }

    #[test]
    fn detailed_without_shard_dimension_merges_shards() {
        let m = Metrics::new(MetricsLevel::Detailed, &[Operation], "w", "s");
        record_workload(&m);
        let samples = m.snapshot();
        let processed = find(&samples, "RecordsProcessed");
        assert_eq!(processed.len(), 1);
        assert_eq!(processed[0].statistics.sum, 15.0);
        assert_eq!(
            find(&samples, "GetRecords.Time")[0].statistics.maximum,
            30.0
        );
    }

    #[test]
    fn periods_are_taken_apart_from_totals() {
        let m = Metrics::new(MetricsLevel::Summary, &[Operation], "w", "s");
        record_workload(&m);
        let registry = m.registry().unwrap();
        assert_eq!(registry.take_period().len(), 2);
        assert!(registry.take_period().is_empty());
        assert_eq!(m.snapshot().len(), 2);
    }
}
