//! Enhanced fan-out's registered consumers of a multi-stream consumer, one
//! per stream: those registered at startup, and those of streams added
//! (or recreated) while running, registered by the first reader of a
//! shard of the stream (on its own thread, so that the lease coordinator
//! never waits for a registration to become ACTIVE).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::aws::fan_out::SharedConsumer;
use crate::aws::kinesis::KinesisClient;
use crate::error::Result;
use crate::stream::StreamIdentifier;
use crate::sync::lock;

/// How a reader of a multi-stream shard reads it.
pub(crate) enum ReadBy {
    /// Through the stream's registered consumer.
    FanOut(Arc<SharedConsumer>),
    /// By polling (the consumer does not use enhanced fan-out).
    Polling,
    /// The stream is no longer the one the lease key names (deleted, or
    /// deleted and recreated): the shard is not read.
    StreamGone,
}

/// The registered consumers by stream identifier (as lease keys start).
pub(crate) struct StreamConsumers {
    /// The consumer name to register; `None`: polling.
    name: Option<String>,
    /// How long a registration may take to become ACTIVE.
    active_wait: Duration,
    by_stream: RwLock<HashMap<String, Arc<SharedConsumer>>>,
    /// One registration at a time: the other readers of a new stream wait
    /// for the first and then use its consumer.
    registering: Mutex<()>,
}

impl StreamConsumers {
    /// Consumers named `name` (`None`: polling), those in `registered`
    /// already registered.
    pub(crate) fn new(
        name: Option<String>,
        registered: HashMap<String, Arc<SharedConsumer>>,
        active_wait: Duration,
    ) -> StreamConsumers {
        StreamConsumers {
            name,
            active_wait,
            by_stream: RwLock::new(registered),
            registering: Mutex::new(()),
        }
    }

    /// No fan-out: every shard is polled.
    #[cfg(test)]
    pub(crate) fn polling() -> StreamConsumers {
        StreamConsumers::new(None, HashMap::new(), Duration::ZERO)
    }

    fn registered(&self, stream: &str) -> Option<Arc<SharedConsumer>> {
        let by_stream = self.by_stream.read().unwrap_or_else(|e| e.into_inner());
        by_stream.get(stream).cloned()
    }

    /// How to read a shard of `stream` (requests name it `request`): its
    /// registered consumer, registered now when it has none yet (a stream
    /// added or recreated while running). A registration the service
    /// refuses is the error.
    pub(crate) fn retrieval(
        &self,
        kinesis: &KinesisClient,
        stream: &StreamIdentifier,
        request: &str,
    ) -> Result<ReadBy> {
        let Some(name) = &self.name else {
            return Ok(ReadBy::Polling);
        };
        let key = stream.to_string();
        if let Some(consumer) = self.registered(&key) {
            return Ok(ReadBy::FanOut(consumer));
        }
        let _one = lock(&self.registering);
        if let Some(consumer) = self.registered(&key) {
            return Ok(ReadBy::FanOut(consumer));
        }
        let described = match kinesis.describe_stream_summary(request) {
            Ok(described) => described,
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                return Ok(ReadBy::StreamGone);
            }
            Err(e) => return Err(e),
        };
        // Registering on a stream recreated under the name would read the
        // new stream's shard under the old stream's lease.
        if described.stream_identifier()? != *stream {
            return Ok(ReadBy::StreamGone);
        }
        let arn = &described.stream_arn;
        let registered = kinesis.ensure_stream_consumer(arn, name, self.active_wait)?;
        log::info!(
            "reading {arn} (added while running) through enhanced fan-out as {}",
            registered.consumer_arn
        );
        let consumer = Arc::new(SharedConsumer::new(
            arn,
            name,
            &registered.consumer_arn,
            self.active_wait,
        ));
        let mut by_stream = self.by_stream.write().unwrap_or_else(|e| e.into_inner());
        by_stream.insert(key, consumer.clone());
        Ok(ReadBy::FanOut(consumer))
    }
}
