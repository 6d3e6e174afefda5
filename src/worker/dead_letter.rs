//! Poison records ([`ErrorPolicy::RetryThenDeadLetter`]): after the
//! retries, a shard's rejected records are found by bisection, the rest
//! handed on, and each reject passed to the application's dead-letter
//! handler. The batch ticker and the shard processors share this.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, HandlerResult};
use crate::metrics::Metric;
use crate::record::Record;
use crate::worker::batch::ShardBatch;
use crate::worker::bisect::bisect;
use crate::worker::processing::{Called, Delivery, ErrorPolicy, KeptShard};

/// The application's dead-letter handler: given records the handler keeps
/// rejecting and the error of the last rejection.
pub(crate) type DeadLetterHandler = Arc<dyn Fn(&[Record], &Error) -> HandlerResult + Send + Sync>;

/// What isolating a shard's rejected records came to.
#[derive(Debug)]
pub(crate) struct Isolated {
    /// How many of the shard's records, from the first, are done: accepted
    /// by the handler or taken by the dead-letter handler.
    pub done: usize,
    /// Why the records from `done` on are not: the dead-letter handler
    /// failed, or the search was cut (shutdown, or the lease changed).
    /// `None` when every record is done.
    pub stopped: Option<Error>,
    /// True when the search was cut (a shutdown, or the lease changed)
    /// rather than stopped by the dead-letter handler.
    pub cut: bool,
}

/// Why a part of the records was not accepted.
enum Failure {
    /// The handler rejected it.
    Rejected(Error),
    /// Not tried, or its retries were ended: a shutdown, or the lease
    /// changed.
    Cut(Error),
}

/// Isolates the records of `kept` the handler rejects: `deliver` hands
/// a part of them to the handler. `failed` is the error the whole part
/// already failed with after its retries (`None`: it is tried once
/// first). Parts are tried once each, single records under the policy's
/// retries, so a passing outage does not dead-letter good records.
/// `stop` ends the search (a shutdown, or the lease changed).
///
/// The checkpointer is told what each call holds, so that a handler
/// checkpointing in a call (manual checkpoints) reaches no further than
/// that call's records; once done, the records are accepted up to where
/// the search ended: all of them (settled by the caller), or those before
/// the stop.
pub(crate) fn isolate<T>(
    delivery: &Delivery<T>,
    kept: &KeptShard,
    failed: Option<Error>,
    stop: &dyn Fn() -> bool,
    what: &str,
    deliver: &mut dyn FnMut(ShardBatch<T>) -> HandlerResult,
) -> Isolated {
    let isolated = search(delivery, kept, failed, stop, what, deliver);
    let (shard_id, epoch) = kept.lease();
    let checkpointer = &delivery.checkpointer;
    match (&isolated.stopped, kept.handed(isolated.done)) {
        // Accepted as a whole: the caller ends the call.
        (None, handed) => handed
            .into_iter()
            .for_each(|h| checkpointer.handing(shard_id, epoch, h)),
        (Some(_), Some(through)) => {
            checkpointer.handing(shard_id, epoch, through);
            checkpointer.call_ended(shard_id, epoch, true);
        }
        (Some(_), None) => checkpointer.call_ended(shard_id, epoch, false),
    }
    isolated
}

fn search<T>(
    delivery: &Delivery<T>,
    kept: &KeptShard,
    failed: Option<Error>,
    stop: &dyn Fn() -> bool,
    what: &str,
    deliver: &mut dyn FnMut(ShardBatch<T>) -> HandlerResult,
) -> Isolated {
    let n = kept.len();
    let (shard_id, epoch) = kept.lease();
    let mut attempt = |range: Range<usize>| -> Result<(), Failure> {
        if stop() {
            return Err(Failure::Cut(Error::Handler("stopped".into())));
        }
        if let Some(handed) = kept.handed(range.end) {
            delivery.checkpointer.handing(shard_id, epoch, handed);
        }
        let policy = match range.len() {
            1 => delivery.error_policy,
            _ => ErrorPolicy::Stop,
        };
        let part = || kept.part(&delivery.message_handler, range.clone());
        match delivery.call(&policy, stop, what, &mut |_| deliver(part())) {
            Ok(Called::Done) => Ok(()),
            Ok(Called::Cut(error)) => Err(Failure::Cut(error)),
            Err(error) => Err(Failure::Rejected(error)),
        }
    };
    let error = match failed {
        Some(error) => Failure::Rejected(error),
        None => match attempt(0..n) {
            Ok(()) => return Isolated::all(n),
            Err(failure) => failure,
        },
    };
    if n == 0 {
        // Only the shard's end, and the handler rejects it: nothing to
        // dead-letter, so the shard stops there.
        return Isolated::stopped_at(0, error);
    }
    let mut reject = |index: usize, failure: Failure| -> Result<(), Failure> {
        match failure {
            Failure::Cut(error) => Err(Failure::Cut(error)),
            Failure::Rejected(error) => {
                dead_letter(delivery, kept.record(index), &error).map_err(Failure::Rejected)
            }
        }
    };
    match bisect(n, error, &mut attempt, &mut reject) {
        Ok(()) => Isolated::all(n),
        Err((done, failure)) => Isolated::stopped_at(done, failure),
    }
}

impl Isolated {
    fn all(n: usize) -> Isolated {
        Isolated {
            done: n,
            stopped: None,
            cut: false,
        }
    }

    fn stopped_at(done: usize, failure: Failure) -> Isolated {
        let (error, cut) = match failure {
            Failure::Rejected(error) => (error, false),
            Failure::Cut(error) => (error, true),
        };
        Isolated {
            done,
            stopped: Some(error),
            cut,
        }
    }
}

/// Passes one rejected record to the dead-letter handler (a panic is a
/// failure); logs where it was, never its data.
fn dead_letter<T>(delivery: &Delivery<T>, record: &Record, error: &Error) -> Result<(), Error> {
    let shard_id = record.shard_id();
    let (sequence, sub) = (record.sequence_number(), record.sub_sequence_number());
    let Some(handler) = &delivery.dead_letter else {
        return Err(Error::Internal("no dead-letter handler".into()));
    };
    let what = "the dead-letter handler";
    let records = std::slice::from_ref(record);
    match delivery.call(&ErrorPolicy::Stop, &|| false, what, &mut |_| {
        handler(records, error)
    }) {
        Ok(_) => {
            log::warn!(
                "dead-lettered the record of shard {shard_id} at sequence number {sequence}, sub-sequence {sub}: the handler rejected it: {error}"
            );
            let shard_id: Arc<str> = shard_id.into();
            delivery
                .metrics
                .record(Some(&shard_id), &[(Metric::RecordsDeadLettered, 1.0)]);
            Ok(())
        }
        Err(failure) => {
            log::error!(
                "the dead-letter handler failed on the record of shard {shard_id} at sequence number {sequence}, sub-sequence {sub}; the shard stops before it: {failure}"
            );
            Err(Error::Handler(
                format!(
                    "the dead-letter handler failed on shard {shard_id} at sequence number {sequence}, sub-sequence {sub}: {failure}"
                )
                .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::lease::Checkpoint;
    use crate::worker::reader::ReaderOutput;
    use crate::worker::test_support::{delivery, held_leases, held_leases_noting};

    type Noted = Arc<Mutex<Vec<String>>>;

    /// A delivery whose dead-letter handler notes the data it is given
    /// (failing on `fail_at`, if set).
    fn setup(fail_at: Option<&'static str>) -> (Delivery<String>, Noted) {
        // Nothing is checkpointed here: the fake table is not asked.
        let (_server, held) = held_leases();
        let mut delivery = delivery(
            &held,
            ErrorPolicy::RetryThenDeadLetter {
                retries: 1,
                backoff: std::time::Duration::ZERO,
            },
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let noted = seen.clone();
        delivery.dead_letter = Some(Arc::new(move |records: &[Record], _: &Error| {
            let data = String::from_utf8_lossy(records[0].data()).into_owned();
            if fail_at == Some(data.as_str()) {
                return Err("dead-letter queue down".into());
            }
            noted.lock().unwrap().push(data);
            Ok(())
        }));
        (delivery, seen)
    }

    fn kept(values: &[&str]) -> KeptShard {
        kept_in(1, values)
    }

    /// Records 1, 2, ... holding `values`, read under `epoch`.
    fn kept_in(epoch: u64, values: &[&str]) -> KeptShard {
        let sequences: Vec<String> = (1..=values.len()).map(|i| i.to_string()).collect();
        let records: Vec<(&str, &str)> = sequences
            .iter()
            .zip(values)
            .map(|(s, v)| (s.as_str(), *v))
            .collect();
        let ReaderOutput::Chunk(chunk) =
            crate::worker::test_support::chunk("shard-1", epoch, &records)
        else {
            unreachable!()
        };
        KeptShard::of(&ShardBatch {
            shard_id: chunk.shard_id,
            messages: chunk.messages,
            millis_behind_latest: None,
            shard_ended: false,
            epoch,
            goes_back: crate::worker::batch::GoesBack::nowhere(),
        })
    }

    /// A handler rejecting every part holding a value starting with "bad",
    /// noting the values of the parts it accepts.
    fn handler(accepted: &Mutex<Vec<String>>) -> impl FnMut(ShardBatch<String>) -> HandlerResult {
        move |part| {
            if part.messages.iter().any(|m| m.value.starts_with("bad")) {
                return Err("rejected".into());
            }
            let mut accepted = accepted.lock().unwrap();
            accepted.extend(part.into_messages().into_iter().map(|m| m.value));
            Ok(())
        }
    }

    #[test]
    fn rejects_go_to_the_dead_letter_handler_the_rest_in_order() {
        let (delivery, dead) = setup(None);
        let values = ["a", "bad1", "b", "c", "d", "bad2", "e"];
        let accepted = Mutex::new(Vec::new());
        let isolated = isolate(
            &delivery,
            &kept(&values),
            None,
            &|| false,
            "test",
            &mut handler(&accepted),
        );
        assert_eq!(isolated.done, values.len());
        assert!(isolated.stopped.is_none());
        assert_eq!(*dead.lock().unwrap(), vec!["bad1", "bad2"]);
        assert_eq!(*accepted.lock().unwrap(), vec!["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn a_failing_dead_letter_handler_stops_before_the_record() {
        let (delivery, dead) = setup(Some("bad2"));
        let values = ["a", "bad1", "b", "c", "d", "bad2", "e"];
        let accepted = Mutex::new(Vec::new());
        let isolated = isolate(
            &delivery,
            &kept(&values),
            Some(Error::Handler("whole".into())),
            &|| false,
            "test",
            &mut handler(&accepted),
        );
        assert_eq!(isolated.done, 5, "stops before bad2");
        assert!(!isolated.cut);
        let stopped = isolated.stopped.expect("stopped").to_string();
        assert!(stopped.contains("dead-letter queue down"), "{stopped}");
        assert_eq!(*dead.lock().unwrap(), vec!["bad1"]);
        assert_eq!(*accepted.lock().unwrap(), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn a_panic_is_a_rejection() {
        let (delivery, dead) = setup(None);
        let isolated = isolate(
            &delivery,
            &kept(&["a", "boom", "b"]),
            None,
            &|| false,
            "test",
            &mut |part: ShardBatch<String>| {
                if part.messages.iter().any(|m| m.value == "boom") {
                    panic!("handler crashed");
                }
                Ok(())
            },
        );
        assert_eq!(isolated.done, 3);
        assert_eq!(*dead.lock().unwrap(), vec!["boom"]);
    }

    #[test]
    fn a_passing_failure_of_a_single_record_is_retried_not_dead_lettered() {
        let (delivery, dead) = setup(None);
        let failed_once = AtomicBool::new(false);
        let isolated = isolate(
            &delivery,
            &kept(&["a", "flaky"]),
            Some(Error::Handler("whole".into())),
            &|| false,
            "test",
            &mut |part: ShardBatch<String>| {
                let flaky = part.messages.iter().any(|m| m.value == "flaky");
                if flaky && !failed_once.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    return Err("once".into());
                }
                Ok(())
            },
        );
        assert_eq!(isolated.done, 2);
        assert!(isolated.stopped.is_none());
        assert!(dead.lock().unwrap().is_empty());
    }

    #[test]
    fn a_stop_ends_the_search_without_dead_lettering() {
        let (delivery, dead) = setup(None);
        let isolated = isolate(
            &delivery,
            &kept(&["a", "bad", "b"]),
            Some(Error::Handler("whole".into())),
            &|| true,
            "test",
            &mut |_: ShardBatch<String>| panic!("nothing is tried after a stop"),
        );
        assert_eq!(isolated.done, 0);
        assert!(isolated.stopped.is_some());
        assert!(isolated.cut, "cut, not stopped by the dead-letter handler");
        assert!(dead.lock().unwrap().is_empty());
    }

    #[test]
    fn a_handler_checkpointing_in_a_call_reaches_no_further_than_its_part() {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let mut delivery = delivery(
            &held,
            ErrorPolicy::RetryThenDeadLetter {
                retries: 0,
                backoff: std::time::Duration::ZERO,
            },
        );
        delivery.dead_letter = Some(Arc::new(|records: &[Record], _: &Error| {
            match records[0].data() == b"bad2" {
                true => Err("dead-letter queue down".into()),
                false => Ok(()),
            }
        }));
        let checkpointer = delivery.checkpointer.clone();
        checkpointer.gained(&Arc::from("shard-1"), epoch, &Checkpoint::TrimHorizon);
        let kept = kept_in(epoch, &["a", "bad1", "b", "c", "d", "bad2", "e"]);
        checkpointer.handing("shard-1", epoch, kept.handed(kept.len()).unwrap());
        let isolated = isolate(
            &delivery,
            &kept,
            Some(Error::Handler("whole".into())),
            &|| false,
            "test",
            &mut |part: ShardBatch<String>| {
                if part.messages.iter().any(|m| m.value.starts_with("bad")) {
                    return Err("rejected".into());
                }
                // Manual checkpoints: as far as this call's records.
                checkpointer
                    .checkpoint("shard-1")
                    .map_err(|e| e.to_string().into())
            },
        );
        assert_eq!(isolated.done, 5);
        let written: Vec<String> = written
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect();
        assert_eq!(written.last().map(String::as_str), Some("5"), "{written:?}");
        assert!(
            written.iter().all(|c| c.parse::<u32>().unwrap() < 6),
            "{written:?}"
        );
        // Past the stop, nothing is accepted.
        let after = kept.record(6).position.clone();
        let refused = checkpointer.checkpoint_at("shard-1", &after);
        assert!(
            matches!(refused, Err(Error::InvalidCheckpoint { .. })),
            "{refused:?}"
        );
    }
}
