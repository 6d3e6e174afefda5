//! Writes every record of a stream as a JSON line (the fields `tail`
//! prints) to per-shard files in a directory, and checkpoints a shard only
//! once its records are durable: files are rolled and fsynced every
//! `--flush-secs`, and checkpoints are manual.
//!
//! ```text
//! cargo run --example file_sink -- --stream S... --app A --dir D [--position trim-horizon|latest]
//!     [--flush-secs N (10)] [--worker-id ID] [--processors]
//!     [--max-record-bytes N] [--dead-letter DIR] [--metrics-addr [HOST:]PORT]
//! ```
//!
//! `--stream` given more than once reads the streams with one consumer in
//! the multi-stream lease layout (docs/multi-stream.md); a shard's files
//! are then named after its lease key with `+` for `:`
//! (`111122223333+orders+1700000000+shardId-000000000001-…`).
//!
//! Each file holds records of one shard in sequence order. A file is first
//! written as `<shard>-<n>.jsonl.partial`; at a flush it is fsynced, renamed
//! to `<shard>-<n>.jsonl` and the directory fsynced, and only then is the
//! shard checkpointed at the file's last record. So the `.jsonl` files hold
//! every record at least once whatever moment the process is killed at; a
//! `.partial` file is what a killed process had not flushed (its records
//! were not checkpointed and are written again after a restart).
//! SIGINT or SIGTERM flushes, checkpoints and exits 0. Endpoints, region
//! and credentials come from the standard AWS environment, as for `tail`.
//!
//! `--processors` does the same the KCL's way: one `ShardProcessor` per
//! shard (`Consumer::run_processors`) appends the shard's records to its
//! file, and a flusher thread of its own makes the file durable and
//! checkpoints it every `--flush-secs`, from that other thread: the
//! checkpointer accepts only records whose `process` call returned `Ok`.
//! `shard_ended` and `shutdown_requested` flush and checkpoint at once;
//! `lease_lost` drops the unflushed file.
//!
//! `--max-record-bytes N` makes the sink refuse a call holding a record
//! whose data is larger (a record it cannot take: the same on every try).
//! Alone, that stops the sink, as any error does. With `--dead-letter DIR`
//! the consumer runs under `ErrorPolicy::RetryThenDeadLetter`: after two
//! retries the refused records are isolated, written as JSON lines (the
//! `tail` fields and the error) to `DIR/dead-letters-<time>-<pid>.jsonl`
//! and fsynced there before the shard's checkpoint may pass them; the
//! other records are written to the sink's files as usual.

mod support;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use kinesis_consumer::aws::kinesis::is_valid_shard_id;
use kinesis_consumer::{
    Batch, Checkpoint, Checkpointer, Checkpointing, Consumer, Error, ErrorPolicy,
    ExtendedSequenceNumber, HandlerResult, Message, Record, ShardBatch, ShardEvent, ShardProcessor,
    StreamIdentifier,
};

const USAGE: &str = "usage: file_sink --stream S... --app A --dir D [--position trim-horizon|latest] \
[--flush-secs N (10)] [--worker-id ID] [--processors] [--max-record-bytes N] [--dead-letter DIR] [--metrics-addr [HOST:]PORT]";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    support::init_logging();
    let args = support::Args::parse_repeating(
        USAGE,
        &[
            "app",
            "dir",
            "position",
            "flush-secs",
            "worker-id",
            "max-record-bytes",
            "dead-letter",
            "metrics-addr",
        ],
        &["stream"],
        &["processors"],
    );
    let position = support::position(args.get("position").unwrap_or("latest"))
        .unwrap_or_else(|e| support::fail(USAGE, &e));
    let flush_every = Duration::from_secs(args.number(USAGE, "flush-secs", 10));
    let dir = PathBuf::from(args.required(USAGE, "dir"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        std::process::exit(2);
    }
    let max_record_bytes = args.number(USAGE, "max-record-bytes", u64::MAX);
    let builder = match &args.all("stream")[..] {
        [] => support::fail(USAGE, "--stream is required"),
        [one] => Consumer::builder().stream_name(*one),
        several => Consumer::builder().streams(several.iter().copied()),
    };
    let mut builder = builder
        .app_name(args.required(USAGE, "app"))
        .initial_position(position)
        .checkpointing(Checkpointing::Manual);
    if let Some(dead_dir) = args.get("dead-letter") {
        let dead_letters = DeadLetters::open(Path::new(dead_dir)).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
        builder = builder
            .error_policy(ErrorPolicy::RetryThenDeadLetter {
                retries: 2,
                backoff: Duration::from_millis(200),
            })
            .dead_letter(move |records, error| dead_letters.write(records, error));
    }
    let mut builder = builder.message_handler(move |r: &Record| Line {
        json: support::record_json(r),
        data_bytes: r.data().len() as u64,
    });
    if let Some(id) = args.get("worker-id") {
        builder = builder.worker_id(id);
    }
    let (metrics_level, publish_metrics) =
        support::metrics_settings(None, args.get("metrics-addr"))
            .unwrap_or_else(|e| support::fail(USAGE, &e));
    builder = builder
        .metrics_level(metrics_level)
        .publish_metrics(publish_metrics);
    let consumer = builder.build().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    support::stop_on_signals(consumer.shutdown_handle());
    let _endpoint = support::serve_metrics(&args, consumer.metrics());
    let mut sink = Sink::new(dir, consumer.checkpointer(), max_record_bytes);
    if args.flag("processors") {
        let result = consumer.run_processors(move |shard_id: &str| {
            ShardSink::start(shard_id, sink.fork(), flush_every)
        });
        if let Err(e) = result {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut last_flush = Instant::now();
    let result = consumer.run(|batch: Batch<Line>| {
        sink.handle(&batch)?;
        if last_flush.elapsed() >= flush_every {
            sink.flush_all()?;
            last_flush = Instant::now();
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// A record as the sink writes it: its JSON line, and its data's size.
struct Line {
    json: String,
    data_bytes: u64,
}

/// The file records the sink refused go to (`--dead-letter`), made durable
/// before the dead-letter handler returns.
struct DeadLetters {
    dir: PathBuf,
    file: Mutex<Option<File>>,
}

impl DeadLetters {
    fn open(dir: &Path) -> Result<DeadLetters, BoxError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(DeadLetters {
            dir: dir.to_owned(),
            file: Mutex::new(None),
        })
    }

    /// Appends the records with the error, then fsyncs: only then may
    /// the consumer checkpoint past them.
    fn write(&self, records: &[Record], error: &Error) -> HandlerResult {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            let name = format!(
                "dead-letters-{}-{}.jsonl",
                support::epoch_millis(SystemTime::now()),
                std::process::id()
            );
            let path = self.dir.join(name);
            let created = OpenOptions::new().append(true).create(true).open(&path);
            *file = Some(created.map_err(|e| format!("cannot create {}: {e}", path.display()))?);
            // The new name survives a crash too.
            File::open(&self.dir)?.sync_all()?;
        }
        let out = file.as_mut().expect("opened above");
        for record in records {
            let mut line: serde_json::Value = serde_json::from_str(&support::record_json(record))?;
            line["error"] = error.to_string().into();
            writeln!(out, "{line}")?;
        }
        out.sync_all()?;
        Ok(())
    }
}

/// The file a shard's records are being written to.
struct ShardFile {
    writer: BufWriter<File>,
    partial: PathBuf,
    last: ExtendedSequenceNumber,
}

struct Sink {
    dir: PathBuf,
    checkpointer: Checkpointer,
    /// Records with more data are refused (`--max-record-bytes`).
    max_record_bytes: u64,
    files: HashMap<String, ShardFile>,
    next_file: u64,
    /// Files made durable whose checkpoint could not be written yet (the
    /// records' call had not returned when a flusher thread flushed them):
    /// the position to checkpoint at the next flush.
    unconfirmed: HashMap<String, ExtendedSequenceNumber>,
}

impl Sink {
    fn new(dir: PathBuf, checkpointer: Checkpointer, max_record_bytes: u64) -> Sink {
        Sink {
            dir,
            checkpointer,
            max_record_bytes,
            files: HashMap::new(),
            next_file: 0,
            unconfirmed: HashMap::new(),
        }
    }

    /// The batch handler's work, but for the timed flushes: appends the
    /// batch's records, and flushes and checkpoints the shards it is the
    /// last chance for.
    fn handle(&mut self, batch: &Batch<Line>) -> Result<(), BoxError> {
        // A lost shard's unflushed records were not checkpointed: its next
        // owner writes them. Before this batch's records, which may be the
        // same shard's again under a new lease.
        for event in batch.events() {
            if let ShardEvent::Lost { shard_id } = event {
                self.discard(shard_id);
            }
        }
        // Refused before anything is written: a refused call leaves no
        // record in a file.
        for shard in batch.shards() {
            self.check(shard.messages())?;
        }
        for shard in batch.shards() {
            for message in shard.messages() {
                self.append(
                    shard.shard_id(),
                    &message.value().json,
                    message.record().position(),
                )?;
            }
        }
        // The last chance to checkpoint these shards: flush them now.
        for event in batch.events() {
            match event {
                ShardEvent::Ended { shard_id } => self.flush(shard_id, true)?,
                ShardEvent::ShutdownRequested { shard_id } => self.flush(shard_id, false)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// An empty sink into the same directory, for one shard processor.
    fn fork(&self) -> Sink {
        Sink::new(
            self.dir.clone(),
            self.checkpointer.clone(),
            self.max_record_bytes,
        )
    }

    /// Refuses records with more data than `--max-record-bytes`.
    fn check(&self, messages: &[Message<Line>]) -> Result<(), BoxError> {
        let too_large = messages
            .iter()
            .find(|m| m.value().data_bytes > self.max_record_bytes);
        match too_large {
            Some(m) => Err(format!(
                "the record at {} holds {} bytes, more than --max-record-bytes {}",
                m.record().position(),
                m.value().data_bytes,
                self.max_record_bytes
            )
            .into()),
            None => Ok(()),
        }
    }

    fn append(
        &mut self,
        shard_id: &str,
        line: &str,
        position: &ExtendedSequenceNumber,
    ) -> Result<(), BoxError> {
        if !self.files.contains_key(shard_id) {
            let partial = partial_path(&self.dir, shard_id, self.next_file)?;
            self.next_file += 1;
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&partial)
                .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
            let file = ShardFile {
                writer: BufWriter::new(file),
                partial,
                last: position.clone(),
            };
            self.files.insert(shard_id.to_owned(), file);
        }
        let file = self.files.get_mut(shard_id).expect("opened above");
        writeln!(file.writer, "{line}")?;
        file.last = position.clone();
        Ok(())
    }

    /// Makes the shard's file durable, then checkpoints the shard at its
    /// last record (or at the shard's end, which follows every record).
    fn flush(&mut self, shard_id: &str, ended: bool) -> Result<(), BoxError> {
        let written = match self.files.remove(shard_id) {
            Some(file) => Some(durable(file, &self.dir)?),
            None => self.unconfirmed.remove(shard_id),
        };
        let checkpointed = match (ended, &written) {
            (true, _) => self.checkpointer.checkpoint(shard_id),
            (false, Some(last)) => self.checkpointer.checkpoint_at(shard_id, last),
            (false, None) => Ok(()),
        };
        match checkpointed {
            // Another worker has the shard: the file stays, and what it
            // holds will be written again by that worker (at least once).
            Err(Error::LeaseLost { .. }) => Ok(()),
            // Flushed from a flusher thread while the call that handed the
            // last records on had not returned yet: checkpointed next time.
            Err(Error::InvalidCheckpoint { .. }) if !ended => {
                if let Some(last) = written {
                    self.unconfirmed.insert(shard_id.to_owned(), last);
                }
                Ok(())
            }
            other => Ok(other?),
        }
    }

    fn flush_all(&mut self) -> Result<(), BoxError> {
        let shards: Vec<String> = self.files.keys().cloned().collect();
        for shard_id in shards {
            self.flush(&shard_id, false)?;
        }
        Ok(())
    }

    fn discard(&mut self, shard_id: &str) {
        self.unconfirmed.remove(shard_id);
        if let Some(file) = self.files.remove(shard_id) {
            drop(file.writer);
            let _ = std::fs::remove_file(&file.partial);
        }
    }
}

/// What names a shard's files: its shard id, or a multi-stream lease key
/// (`account:stream:epoch:shardId`) with `+` for `:` (some file systems
/// refuse `:`; no account, stream name, time or shard id holds a `+`, so
/// a name gives back one lease key). The shard id comes from the endpoint
/// or the lease table: anything else (`../x`, `/etc/x`, a key whose shard
/// part is not a shard id) is refused, so it cannot name a file outside
/// the directory. `None` when refused.
fn file_stem(shard_id: &str) -> Option<String> {
    if is_valid_shard_id(shard_id) {
        return Some(shard_id.to_owned());
    }
    // Parses only when every part is valid, the shard id included.
    StreamIdentifier::of_lease_key(shard_id)?;
    Some(shard_id.replace(':', "+"))
}

/// The path of the `n`th file this process opens for `shard_id` in `dir`,
/// unique across restarts and workers sharing the directory.
fn partial_path(dir: &Path, shard_id: &str, n: u64) -> Result<PathBuf, BoxError> {
    let Some(stem) = file_stem(shard_id) else {
        return Err(format!(
            "refusing to name a file after {shard_id:?}: it is not a Kinesis shard id"
        )
        .into());
    };
    let millis = support::epoch_millis(SystemTime::now());
    let name = format!("{stem}-{millis}-{}-{n}.jsonl.partial", std::process::id());
    Ok(dir.join(name))
}

/// Fsyncs the file, gives it its final name and fsyncs the directory, so
/// that the name survives a crash too; returns its last record's position.
fn durable(file: ShardFile, dir: &Path) -> Result<ExtendedSequenceNumber, BoxError> {
    let partial = file.partial.clone();
    let done = partial.with_extension(""); // drops ".partial"
    let file_handle = file
        .writer
        .into_inner()
        .map_err(|e| format!("writing {}: {}", partial.display(), e.error()))?;
    file_handle.sync_all()?;
    std::fs::rename(&partial, &done)?;
    File::open(dir)?.sync_all()?;
    Ok(file.last)
}

/// One shard's sink (`--processors`): its processor appends, its flusher
/// thread flushes and checkpoints every `--flush-secs`.
struct ShardSink {
    shard_id: String,
    sink: Arc<Mutex<Sink>>,
    stop: Arc<AtomicBool>,
    flusher: Option<JoinHandle<()>>,
}

impl ShardSink {
    fn start(shard_id: &str, sink: Sink, flush_every: Duration) -> ShardSink {
        let sink = Arc::new(Mutex::new(sink));
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (shard_id, sink, stop) = (shard_id.to_owned(), sink.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last_flush = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last_flush.elapsed() < flush_every {
                        continue;
                    }
                    last_flush = Instant::now();
                    let flushed = lock(&sink).flush(&shard_id, false);
                    if let Err(e) = flushed {
                        // Not checkpointed: read and written again later.
                        log::warn!("flushing {shard_id}: {e}");
                    }
                }
            })
        };
        ShardSink {
            shard_id: shard_id.to_owned(),
            sink,
            stop,
            flusher: Some(flusher),
        }
    }
}

fn lock(sink: &Mutex<Sink>) -> std::sync::MutexGuard<'_, Sink> {
    sink.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShardProcessor<Line> for ShardSink {
    fn initialize(&mut self, _shard_id: &str, _from: &Checkpoint) -> HandlerResult {
        Ok(())
    }

    fn process(&mut self, records: ShardBatch<Line>, checkpointer: &Checkpointer) -> HandlerResult {
        let mut sink = lock(&self.sink);
        sink.check(records.messages())?;
        // This processor's checkpointer: it checkpoints nothing of the
        // shard once this processor's lease is gone, also from the flusher.
        sink.checkpointer = checkpointer.clone();
        for message in records.messages() {
            sink.append(
                &self.shard_id,
                &message.value().json,
                message.record().position(),
            )?;
        }
        Ok(())
    }

    fn lease_lost(&mut self) {
        // Not checkpointed: the shard's next owner writes them.
        lock(&self.sink).discard(&self.shard_id);
    }

    fn shard_ended(&mut self, checkpointer: &Checkpointer) -> HandlerResult {
        let mut sink = lock(&self.sink);
        sink.checkpointer = checkpointer.clone();
        sink.flush(&self.shard_id, true)
    }

    fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> HandlerResult {
        let mut sink = lock(&self.sink);
        sink.checkpointer = checkpointer.clone();
        sink.flush(&self.shard_id, false)
    }
}

impl Drop for ShardSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_id_that_is_no_shard_id_names_no_file() {
        let dir = Path::new("/sink");
        for bad in ["../x", "/etc/x", "..", "a/../../b", "shard\u{1b}[2J", ""] {
            let refused = partial_path(dir, bad, 0).unwrap_err().to_string();
            assert!(
                refused.contains("not a Kinesis shard id"),
                "{bad:?}: {refused}"
            );
        }
        let path = partial_path(dir, "shardId-000000000001", 7).unwrap();
        assert_eq!(path.parent(), Some(dir));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("shardId-000000000001-") && name.ends_with("-7.jsonl.partial"),
            "{name}"
        );
    }

    #[test]
    fn a_multi_stream_lease_key_names_one_file_and_a_bad_one_none() {
        let dir = Path::new("/sink");
        let key = "111122223333:orders.v2:1700000000:shardId-000000000001";
        let path = partial_path(dir, key, 7).unwrap();
        assert_eq!(path.parent(), Some(dir));
        let name = path.file_name().unwrap().to_str().unwrap();
        let stem = "111122223333+orders.v2+1700000000+shardId-000000000001";
        assert!(
            name.starts_with(&format!("{stem}-")) && name.ends_with("-7.jsonl.partial"),
            "{name}"
        );
        assert!(!name.contains(':'), "{name}");
        // The name gives back the key.
        assert_eq!(stem.replace('+', ":"), key);
        // Other streams or times of the same shard name other files.
        let other = "111122223333:orders.v2:1700000001:shardId-000000000001";
        assert_ne!(file_stem(other), file_stem(key));
        for bad in [
            "111122223333:orders:1700000000:../x",
            "111122223333:../x:1700000000:shardId-000000000001",
            "111122223333:orders:soon:shardId-000000000001",
            "a:b:shardId-000000000001",
            "111122223333:orders/x:1700000000:shardId-000000000001",
        ] {
            let refused = partial_path(dir, bad, 0).unwrap_err().to_string();
            assert!(
                refused.contains("not a Kinesis shard id"),
                "{bad:?}: {refused}"
            );
        }
    }

    // The sink's checkpoints under the public test kit
    // (`kinesis_consumer::testing`): no emulator, no AWS.
    use kinesis_consumer::testing::{BatchHarness, ProcessorHarness, checkpoint_at};

    const SHARD: &str = "shardId-000000000001";

    fn line(r: &Record) -> Line {
        Line {
            json: support::record_json(r),
            data_bytes: r.data().len() as u64,
        }
    }

    /// A fresh directory of this test's own.
    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "file_sink-{name}-{}-{}",
            std::process::id(),
            support::epoch_millis(SystemTime::now())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The names of the files in `dir` ending with `suffix`, and their lines.
    fn files(dir: &Path, suffix: &str) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(suffix) {
                let text = std::fs::read_to_string(&path).unwrap();
                found.push(text.lines().map(str::to_owned).collect());
            }
        }
        found
    }

    /// A shard processor as `--processors` makes it, its flusher too slow
    /// to run during a test.
    fn processor(dir: &Path) -> ProcessorHarness<Line, ShardSink> {
        // The consumer's checkpointer the sink starts with (here one that
        // holds nothing); each call gives it the processor's own.
        let sink = Sink::new(dir.to_owned(), BatchHarness::new().checkpointer(), u64::MAX);
        let shard_sink = ShardSink::start(SHARD, sink, Duration::from_secs(3600));
        ProcessorHarness::with_message_handler(shard_sink, line)
            .shard_id(SHARD)
            .checkpointing(Checkpointing::Manual)
    }

    #[test]
    fn a_processor_checkpoints_only_once_its_file_is_durable_and_checkpoints_the_shard_end() {
        let dir = test_dir("processor-end");
        let mut harness = processor(&dir);
        harness.initialize(Checkpoint::TrimHorizon).unwrap();
        harness.process_data(["a", "b"]).unwrap();
        assert!(harness.checkpoints().is_empty(), "not durable yet");
        assert_eq!(files(&dir, ".partial").len(), 1);
        harness.shard_ended().unwrap();
        assert_eq!(harness.checkpoints(), [Checkpoint::ShardEnd]);
        assert!(files(&dir, ".partial").is_empty());
        let durable = files(&dir, ".jsonl");
        assert_eq!(durable.len(), 1);
        assert_eq!(durable[0].len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_flush_that_fails_checkpoints_nothing() {
        let dir = test_dir("processor-failed-flush");
        let mut harness = processor(&dir);
        harness.initialize(Checkpoint::TrimHorizon).unwrap();
        harness.process_data(["a"]).unwrap();
        // The directory is gone: the file cannot get its final name.
        std::fs::remove_dir_all(&dir).unwrap();
        let error = harness.shutdown_requested().unwrap_err();
        assert!(matches!(error, Error::Handler(_)), "{error}");
        assert!(harness.checkpoints().is_empty());
    }

    #[test]
    fn a_shutdown_checkpoints_the_last_record_flushed_and_a_lost_lease_nothing() {
        let dir = test_dir("processor-shutdown");
        let mut harness = processor(&dir);
        harness.initialize(Checkpoint::TrimHorizon).unwrap();
        harness.process_data(["a", "b", "c"]).unwrap();
        harness.shutdown_requested().unwrap();
        assert_eq!(harness.checkpoints(), [checkpoint_at("3", 0)]);

        let mut harness = processor(&dir);
        harness.initialize(checkpoint_at("3", 0)).unwrap();
        harness.process_data(["d"]).unwrap();
        harness.lease_lost();
        assert!(harness.checkpoints().is_empty());
        // The unflushed file is dropped; the flushed one stays.
        assert!(files(&dir, ".partial").is_empty());
        assert_eq!(files(&dir, ".jsonl").len(), 1);
        // Its flusher's checkpointer is refused from now on.
        let refused = harness.checkpointer().checkpoint(SHARD).unwrap_err();
        assert!(matches!(refused, Error::LeaseLost { .. }), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_batch_sink_checkpoints_ended_and_shut_down_shards_after_flushing_them() {
        let dir = test_dir("batch");
        let mut harness =
            BatchHarness::with_message_handler(line).checkpointing(Checkpointing::Manual);
        let mut sink = Sink::new(dir.clone(), harness.checkpointer(), u64::MAX);
        let mut handler = |batch: Batch<Line>| sink.handle(&batch);
        let other = "shardId-000000000002";
        let mut records = harness.records(SHARD, ["a", "b"]);
        records.extend(harness.records(other, ["c"]));
        harness.handle(records, &mut handler).unwrap();
        assert!(harness.checkpoints().is_empty(), "not durable yet");
        harness.end_shard(SHARD);
        harness.handle(Vec::new(), &mut handler).unwrap();
        assert_eq!(
            harness.checkpoints(),
            [(SHARD.to_owned(), Checkpoint::ShardEnd)]
        );
        harness.shutdown(&mut handler).unwrap();
        assert_eq!(harness.checkpoint(other), Some(checkpoint_at("1", 0)));
        assert_eq!(files(&dir, ".jsonl").len(), 2);
        assert!(files(&dir, ".partial").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
