//! Publishing: a flush thread turns each period's statistic sets into
//! CloudWatch metric data and puts them in a bounded queue; a sender thread
//! sends what is queued with PutMetricData, in requests within the API's
//! limits. Neither ever blocks a reader, the ticker or the coordinator: a
//! full queue or a failed request drops data, counted and logged.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde_json::json;

use crate::aws::cloudwatch::{
    CloudWatchClient, Dimension, MAX_DATUMS_PER_REQUEST, MAX_REQUEST_BYTES, MetricDatum,
    StatisticSet,
};
use crate::error::{Error, Result};
use crate::metrics::MetricSample;
use crate::metrics::recorder::{Metrics, Registry};
use crate::sync::lock;

/// How many periods of data may wait for the sender.
const QUEUE_PERIODS: usize = 8;

/// The sender's progress, shared with `stop` so that data still unsent when
/// the publisher is abandoned is counted exactly once.
#[derive(Debug, Default)]
struct SenderState {
    in_flight: usize,
    abandoned: bool,
}

/// The running publisher of one consumer.
pub(crate) struct Publisher {
    registry: Arc<Registry>,
    stop: Sender<()>,
    flusher: JoinHandle<()>,
    /// Disconnected once the sender thread is done.
    done: Receiver<()>,
    queue: Receiver<Vec<MetricDatum>>,
    state: Arc<Mutex<SenderState>>,
}

impl Publisher {
    /// Starts publishing `metrics` every `period`; `None` when metrics are off.
    pub(crate) fn start(
        metrics: &Metrics,
        client: CloudWatchClient,
        namespace: String,
        period: Duration,
    ) -> Result<Option<Publisher>> {
        let Some(registry) = metrics.registry().cloned() else {
            return Ok(None);
        };
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (queue_tx, queue) = crossbeam_channel::bounded::<Vec<MetricDatum>>(QUEUE_PERIODS);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let state = Arc::new(Mutex::new(SenderState::default()));
        let spawn_error =
            |e: std::io::Error| Error::Internal(format!("cannot start a metrics thread: {e}"));
        let flusher = {
            let registry = registry.clone();
            std::thread::Builder::new()
                .name("kinesis-metrics-flush".into())
                .spawn(move || flush_loop(&registry, &stop_rx, &queue_tx, period))
                .map_err(spawn_error)?
        };
        {
            let registry = registry.clone();
            let queue = queue.clone();
            let state = state.clone();
            let namespace = namespace.clone();
            std::thread::Builder::new()
                .name("kinesis-metrics-publish".into())
                .spawn(move || {
                    send_loop(&registry, &client, &namespace, &queue, &state);
                    drop(done_tx);
                })
                .map_err(spawn_error)?;
        }
        log::info!(
            "publishing metrics at level {:?} to CloudWatch namespace {namespace} every {period:?}",
            metrics.level()
        );
        Ok(Some(Publisher {
            registry,
            stop,
            flusher,
            done,
            queue,
            state,
        }))
    }

    /// Flushes the last partial period and gives the sender up to `grace`
    /// to send what is queued; what is still unsent then is counted as
    /// dropped and the sender is left to finish on its own.
    pub(crate) fn stop(self, grace: Duration) {
        let _ = self.stop.send(());
        let _ = self.flusher.join();
        if let Err(RecvTimeoutError::Timeout) = self.done.recv_timeout(grace) {
            let mut dropped = {
                let mut state = lock(&self.state);
                state.abandoned = true;
                state.in_flight
            };
            dropped += self.queue.try_iter().map(|d| d.len()).sum::<usize>();
            self.registry
                .update_publish_stats(|s| s.datums_dropped += dropped as u64);
            log::warn!(
                "CloudWatch did not take the last metrics within {grace:?} of shutdown; dropped {dropped} metric data"
            );
        }
        let stats = *lock(&self.registry.publish);
        log::info!(
            "metrics publisher stopped: {} PutMetricData request(s) ({} failed), {} metric data sent, {} dropped",
            stats.requests,
            stats.failed_requests,
            stats.datums_sent,
            stats.datums_dropped
        );
    }
}

fn flush_loop(
    registry: &Registry,
    stop: &Receiver<()>,
    queue: &Sender<Vec<MetricDatum>>,
    period: Duration,
) {
    let mut next = Instant::now() + period;
    let mut full_streak = 0u64;
    loop {
        let stopping = match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        };
        let data: Vec<MetricDatum> = registry
            .take_period()
            .into_iter()
            .map(|s| datum(s, SystemTime::now()))
            .collect();
        if !data.is_empty() {
            let count = data.len();
            match queue.try_send(data) {
                Ok(()) => {
                    if full_streak > 0 {
                        log::info!(
                            "the metrics queue has room again after {full_streak} dropped period(s)"
                        );
                    }
                    full_streak = 0;
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    registry.update_publish_stats(|s| s.datums_dropped += count as u64);
                    full_streak += 1;
                    if full_streak.is_power_of_two() {
                        log::warn!(
                            "CloudWatch is not keeping up: the metrics queue is full; dropped {count} metric data ({full_streak} period(s) in a row)"
                        );
                    }
                }
            }
        }
        if stopping {
            return;
        }
        next += period;
        let now = Instant::now();
        if next < now {
            next = now + period;
        }
    }
}

fn send_loop(
    registry: &Registry,
    client: &CloudWatchClient,
    namespace: &str,
    queue: &Receiver<Vec<MetricDatum>>,
    state: &Mutex<SenderState>,
) {
    let mut failures = 0u64;
    while let Ok(mut data) = queue.recv() {
        // Whatever else waits goes out in the same requests.
        for more in queue.try_iter() {
            data.extend(more);
        }
        {
            let mut state = lock(state);
            if state.abandoned {
                drop(state);
                registry.update_publish_stats(|s| s.datums_dropped += data.len() as u64);
                return;
            }
            state.in_flight = data.len();
        }
        for request in split_requests(namespace, data) {
            let count = request.len() as u64;
            let result = client.put_metric_data(namespace, &request);
            let mut state = lock(state);
            if state.abandoned {
                // `stop` counted everything in flight as dropped.
                return;
            }
            state.in_flight = state.in_flight.saturating_sub(request.len());
            drop(state);
            match result {
                Ok(()) => {
                    registry.update_publish_stats(|s| {
                        s.requests += 1;
                        s.datums_sent += count;
                    });
                    if failures > 0 {
                        log::info!(
                            "CloudWatch publishing works again after {failures} failed request(s)"
                        );
                    }
                    failures = 0;
                }
                Err(e) => {
                    registry.update_publish_stats(|s| {
                        s.failed_requests += 1;
                        s.datums_dropped += count;
                    });
                    failures += 1;
                    if failures.is_power_of_two() {
                        log::warn!(
                            "publishing metrics failed {failures} time(s) in a row; dropped {count} metric data: {e}"
                        );
                    } else {
                        log::debug!("publishing metrics failed; dropped {count} metric data: {e}");
                    }
                }
            }
        }
    }
}

/// A period's sample as a CloudWatch datum.
fn datum(sample: MetricSample, at: SystemTime) -> MetricDatum {
    let s = sample.statistics;
    MetricDatum {
        metric_name: sample.name.to_owned(),
        dimensions: sample
            .dimensions
            .into_iter()
            .map(|(name, value)| Dimension::new(name, value))
            .collect(),
        statistic_values: StatisticSet {
            sample_count: s.sample_count as f64,
            sum: s.sum,
            minimum: s.minimum,
            maximum: s.maximum,
        },
        unit: sample.unit.as_str(),
        timestamp: at,
    }
}

/// Splits data into PutMetricData requests of at most
/// [`MAX_DATUMS_PER_REQUEST`] data and [`MAX_REQUEST_BYTES`] bytes, in order.
pub(crate) fn split_requests(namespace: &str, data: Vec<MetricDatum>) -> Vec<Vec<MetricDatum>> {
    let envelope = serde_json::to_vec(&json!({"Namespace": namespace, "MetricData": []}))
        .map(|v| v.len())
        .unwrap_or(0);
    let mut requests = Vec::new();
    let mut current: Vec<MetricDatum> = Vec::new();
    let mut bytes = envelope;
    for d in data {
        let size = d.encoded_len();
        if !current.is_empty()
            && (current.len() == MAX_DATUMS_PER_REQUEST || bytes + size > MAX_REQUEST_BYTES)
        {
            requests.push(std::mem::take(&mut current));
            bytes = envelope;
        }
        bytes += size;
        current.push(d);
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ClientConfig;
    use crate::aws::credentials::Credentials;
    use crate::metrics::Metric;
    use crate::metrics::{MetricsDimension, MetricsLevel};

    fn datum_with(name: &str, dimension_value_len: usize) -> MetricDatum {
        MetricDatum {
            metric_name: name.to_owned(),
            dimensions: vec![
                Dimension::new("Operation", "ProcessTask"),
                Dimension::new("ShardId", "x".repeat(dimension_value_len)),
            ],
            statistic_values: StatisticSet {
                sample_count: 3.0,
                sum: 42.0,
                minimum: 1.0,
                maximum: 40.0,
            },
            unit: "Count",
            timestamp: SystemTime::now(),
        }
    }

    fn encoded_request(namespace: &str, data: &[MetricDatum]) -> usize {
        serde_json::to_vec(&json!({"Namespace": namespace, "MetricData": data}))
            .unwrap()
            .len()
    }

    #[test]
    fn requests_hold_at_most_1000_data() {
        let data: Vec<MetricDatum> = (0..2500)
            .map(|i| datum_with(&format!("M{i}"), 20))
            .collect();
        let requests = split_requests("ns", data);
        let sizes: Vec<usize> = requests.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
        // In order, nothing lost.
        assert_eq!(requests[0][0].metric_name, "M0");
        assert_eq!(requests[2][499].metric_name, "M2499");
        assert!(split_requests("ns", Vec::new()).is_empty());
    }

    #[test]
    fn requests_stay_under_the_size_limit() {
        // About 1.1 KB each: the byte limit binds before the count limit.
        let data: Vec<MetricDatum> = (0..2000)
            .map(|i| datum_with(&format!("M{i}"), 1024))
            .collect();
        let total = data.len();
        let requests = split_requests("my-namespace", data);
        assert!(requests.len() >= 3);
        assert_eq!(requests.iter().map(Vec::len).sum::<usize>(), total);
        for r in &requests {
            let bytes = encoded_request("my-namespace", r);
            assert!(bytes <= MAX_REQUEST_BYTES, "{bytes} bytes");
            assert!(r.len() <= MAX_DATUMS_PER_REQUEST);
        }
        // Filled close to the limit, not split needlessly.
        let first = encoded_request("my-namespace", &requests[0]);
        assert!(first > MAX_REQUEST_BYTES - 2 * requests[0][0].encoded_len());
    }

    #[test]
    fn samples_become_data_with_their_dimensions() {
        let m = Metrics::new(
            MetricsLevel::Detailed,
            &[MetricsDimension::Operation, MetricsDimension::ShardId],
            "w",
            "s",
        );
        let shard: Arc<str> = Arc::from("shardId-0");
        m.record(
            Some(&shard),
            &[(Metric::GetRecordsTime, 4.0), (Metric::GetRecordsTime, 8.0)],
        );
        let samples = m.registry().unwrap().take_period();
        let at = SystemTime::now();
        let d = datum(samples[0].clone(), at);
        assert_eq!(d.metric_name, "GetRecords.Time");
        assert_eq!(d.unit, "Milliseconds");
        assert_eq!(
            d.dimensions,
            vec![
                Dimension::new("Operation", "GetRecords"),
                Dimension::new("ShardId", "shardId-0")
            ]
        );
        assert_eq!(
            d.statistic_values,
            StatisticSet {
                sample_count: 2.0,
                sum: 12.0,
                minimum: 4.0,
                maximum: 8.0
            }
        );
        assert_eq!(d.timestamp, at);
    }

    #[test]
    fn unreachable_cloudwatch_drops_and_counts_without_blocking() {
        let m = Metrics::new(
            MetricsLevel::Summary,
            &[MetricsDimension::Operation],
            "w",
            "s",
        );
        let client = CloudWatchClient::new(
            &ClientConfig::new()
                .region("us-east-1")
                .endpoint_url("http://127.0.0.1:9")
                .credentials(Credentials::new("a", "b"))
                .max_attempts(1),
        )
        .unwrap();
        let publisher = Publisher::start(&m, client, "ns".into(), Duration::from_millis(50))
            .unwrap()
            .unwrap();
        let started = Instant::now();
        for _ in 0..1000 {
            m.record(None, &[(Metric::BatchSize, 1.0)]);
        }
        assert!(started.elapsed() < Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(200));
        publisher.stop(Duration::from_secs(2));
        let stats = m.publish_stats();
        assert_eq!(stats.requests, 0);
        assert_eq!(stats.datums_sent, 0);
        assert!(stats.failed_requests >= 1, "{stats:?}");
        assert!(stats.datums_dropped >= 1, "{stats:?}");
        assert_eq!(m.snapshot()[0].statistics.sum, 1000.0);
    }
}
