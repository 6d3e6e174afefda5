//! Typed CloudWatch operations over the AWS JSON 1.0 protocol: publishing
//! metric data as statistic sets, and reading it back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};

use crate::aws::client::{CLOUDWATCH, Client, ClientConfig};
use crate::error::{Error, Result};

/// The most metric data one PutMetricData request may carry.
pub(crate) const MAX_DATUMS_PER_REQUEST: usize = 1000;
/// The largest PutMetricData request body, in bytes (the API allows 1 MB).
pub(crate) const MAX_REQUEST_BYTES: usize = 1_000_000;
/// The most dimensions one metric may have.
pub(crate) const MAX_DIMENSIONS: usize = 30;

/// A CloudWatch client.
#[derive(Clone, Debug)]
pub struct CloudWatchClient {
    client: Client,
}

/// A name and value a metric is broken down by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Dimension {
    /// The dimension's name, such as `ShardId`.
    pub name: String,
    /// Its value, such as `shardId-000000000000`.
    pub value: String,
}

impl Dimension {
    /// A dimension from a name and a value.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Dimension {
        Dimension {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Many samples of one metric summed up: how many, their sum, least and
/// greatest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StatisticSet {
    /// The number of samples.
    pub sample_count: f64,
    /// Their sum.
    pub sum: f64,
    /// The least sample.
    pub minimum: f64,
    /// The greatest sample.
    pub maximum: f64,
}

/// One metric datum of PutMetricData: a statistic set of one metric with
/// its dimensions, unit and time.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricDatum {
    /// The metric's name, such as `RecordsProcessed`.
    pub metric_name: String,
    /// Its dimensions, at most [`MAX_DIMENSIONS`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<Dimension>,
    /// The samples.
    pub statistic_values: StatisticSet,
    /// A CloudWatch unit, such as `Count`, `Milliseconds` or `Bytes`.
    pub unit: &'static str,
    /// The time the samples belong to.
    #[serde(serialize_with = "epoch_seconds")]
    pub timestamp: SystemTime,
}

impl MetricDatum {
    /// The bytes this datum adds to a PutMetricData request body.
    pub fn encoded_len(&self) -> usize {
        // One comma separates it from its neighbour.
        serde_json::to_vec(self).map(|v| v.len()).unwrap_or(0) + 1
    }
}

/// The JSON protocols carry times as seconds since the epoch.
fn epoch_seconds<S: Serializer>(t: &SystemTime, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(seconds(*t))
}

fn seconds(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    // Milliseconds are all CloudWatch keeps.
    d.as_millis() as f64 / 1000.0
}

/// A metric as ListMetrics describes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricDescription {
    /// The namespace.
    pub namespace: String,
    /// The metric's name.
    pub metric_name: String,
    /// Its dimensions.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub dimensions: Vec<Dimension>,
}

/// One data point of GetMetricStatistics.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Datapoint {
    /// The start of the data point's period, in seconds since the epoch.
    pub timestamp: f64,
    /// The number of samples.
    pub sample_count: Option<f64>,
    /// Their sum.
    pub sum: Option<f64>,
    /// The least sample.
    pub minimum: Option<f64>,
    /// The greatest sample.
    pub maximum: Option<f64>,
    /// The unit.
    pub unit: Option<String>,
}

fn null_as_empty<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl CloudWatchClient {
    /// A client for the CloudWatch endpoint that `config` resolves to.
    pub fn new(config: &ClientConfig) -> Result<CloudWatchClient> {
        Ok(CloudWatchClient {
            client: Client::new(CLOUDWATCH, config)?,
        })
    }

    /// Publishes `data` in one PutMetricData request. It must hold at most
    /// [`MAX_DATUMS_PER_REQUEST`] data of at most [`MAX_DIMENSIONS`]
    /// dimensions each, and encode to at most [`MAX_REQUEST_BYTES`].
    pub fn put_metric_data(&self, namespace: &str, data: &[MetricDatum]) -> Result<()> {
        if data.len() > MAX_DATUMS_PER_REQUEST {
            return Err(Error::InvalidRequest {
                operation: "PutMetricData",
                reason: format!(
                    "{} metric data in one request; at most {MAX_DATUMS_PER_REQUEST}",
                    data.len()
                ),
            });
        }
        if let Some(d) = data.iter().find(|d| d.dimensions.len() > MAX_DIMENSIONS) {
            return Err(Error::InvalidRequest {
                operation: "PutMetricData",
                reason: format!(
                    "metric {} has {} dimensions; at most {MAX_DIMENSIONS}",
                    d.metric_name,
                    d.dimensions.len()
                ),
            });
        }
        let body = serde_json::to_vec(&json!({"Namespace": namespace, "MetricData": data}))
            .map_err(|e| Error::InvalidRequest {
                operation: "PutMetricData",
                reason: format!("cannot be encoded as JSON: {e}"),
            })?;
        if body.len() > MAX_REQUEST_BYTES {
            return Err(Error::InvalidRequest {
                operation: "PutMetricData",
                reason: format!(
                    "a request of {} bytes; at most {MAX_REQUEST_BYTES}",
                    body.len()
                ),
            });
        }
        self.client.call_with("PutMetricData", &body, |_| Ok(()))
    }

    /// Lists the metrics of a namespace, optionally only those of one name
    /// (every page).
    pub fn list_metrics(
        &self,
        namespace: &str,
        metric_name: Option<&str>,
    ) -> Result<Vec<MetricDescription>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            #[serde(default, deserialize_with = "null_as_empty")]
            metrics: Vec<MetricDescription>,
            next_token: Option<String>,
        }
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut input = json!({"Namespace": namespace});
            if let Some(name) = metric_name {
                input["MetricName"] = json!(name);
            }
            if let Some(t) = &token {
                input["NextToken"] = json!(t);
            }
            let reply: Reply = self.client.call("ListMetrics", &input)?;
            all.extend(reply.metrics);
            match reply.next_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }

    /// The SampleCount, Sum, Minimum and Maximum of one metric with exactly
    /// these dimensions, per `period`, between `start` and `end`.
    pub fn get_metric_statistics(
        &self,
        namespace: &str,
        metric_name: &str,
        dimensions: &[Dimension],
        start: SystemTime,
        end: SystemTime,
        period: Duration,
    ) -> Result<Vec<Datapoint>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            #[serde(default, deserialize_with = "null_as_empty")]
            datapoints: Vec<Datapoint>,
        }
        let input: Value = json!({
            "Namespace": namespace,
            "MetricName": metric_name,
            "Dimensions": dimensions,
            "StartTime": seconds(start),
            "EndTime": seconds(end),
            "Period": period.as_secs().max(1),
            "Statistics": ["SampleCount", "Sum", "Minimum", "Maximum"],
        });
        let reply: Reply = self.client.call("GetMetricStatistics", &input)?;
        Ok(reply.datapoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datum_encodes_as_the_json_protocol_wants() {
        let d = MetricDatum {
            metric_name: "RecordsProcessed".into(),
            dimensions: vec![Dimension::new("ShardId", "shardId-0")],
            statistic_values: StatisticSet {
                sample_count: 2.0,
                sum: 10.0,
                minimum: 3.0,
                maximum: 7.0,
            },
            unit: "Count",
            timestamp: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
        };
        let v: Value = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v,
            json!({
                "MetricName": "RecordsProcessed",
                "Dimensions": [{"Name": "ShardId", "Value": "shardId-0"}],
                "StatisticValues": {"SampleCount": 2.0, "Sum": 10.0, "Minimum": 3.0, "Maximum": 7.0},
                "Unit": "Count",
                "Timestamp": 1_700_000_000.25,
            })
        );
        assert_eq!(d.encoded_len(), serde_json::to_vec(&d).unwrap().len() + 1);
        let no_dims = MetricDatum {
            dimensions: vec![],
            ..d
        };
        assert!(
            serde_json::to_value(&no_dims)
                .unwrap()
                .get("Dimensions")
                .is_none()
        );
    }

    #[test]
    fn requests_over_the_limits_are_refused_before_sending() {
        let client = CloudWatchClient::new(
            &ClientConfig::new()
                .region("us-east-1")
                .endpoint_url("http://127.0.0.1:9")
                .credentials(crate::aws::credentials::Credentials::new("a", "b")),
        )
        .unwrap();
        let d = MetricDatum {
            metric_name: "M".into(),
            dimensions: vec![],
            statistic_values: StatisticSet {
                sample_count: 1.0,
                sum: 1.0,
                minimum: 1.0,
                maximum: 1.0,
            },
            unit: "Count",
            timestamp: SystemTime::now(),
        };
        let too_many = vec![d.clone(); MAX_DATUMS_PER_REQUEST + 1];
        assert!(matches!(
            client.put_metric_data("ns", &too_many),
            Err(Error::InvalidRequest { .. })
        ));
        let wide = MetricDatum {
            dimensions: (0..31)
                .map(|i| Dimension::new(format!("d{i}"), "v"))
                .collect(),
            ..d
        };
        assert!(matches!(
            client.put_metric_data("ns", &[wide]),
            Err(Error::InvalidRequest { .. })
        ));
    }
}
