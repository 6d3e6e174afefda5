//! DynamoDB's per-item limits and billing, for the simulated lease table:
//! a write is billed on the item's size in 1 KB write units (the larger of
//! the item before and after), a read in 4 KB read units (halved when
//! eventually consistent); each item serves at most 1,000 write units a
//! second (a partition's limit, so an item never gets more) and a write
//! beyond that is throttled; an item over 400 KB is refused. What it
//! records: per item, the write units served and asked for in each
//! simulated second (their peaks), and the largest item.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{Error, ServiceError};
use crate::lease::members::{LEADER_KEY, Lock, WorkerItem, worker_key};
use crate::lease::table::{WORKERS_KEY, Workers};
use crate::lease::{Checkpoint, Lease};
use crate::sync::lock;

/// Write units one item (one partition) serves per second.
pub(crate) const ITEM_WCU_PER_SECOND: f64 = 1_000.0;
/// DynamoDB's largest item.
pub(crate) const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Request units spent, for a cost figure.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Units {
    pub read: f64,
    pub write: f64,
    /// Writes refused for throughput.
    pub throttled: u64,
}

/// One item's write throughput.
#[derive(Default)]
struct ItemUse {
    /// Write units it may still serve (a bucket refilled at
    /// [`ITEM_WCU_PER_SECOND`], holding at most one second's worth).
    tokens: f64,
    refilled_at_ms: u64,
    /// The simulated second counted, and its units served and asked for.
    second: u64,
    served: f64,
    asked: f64,
    peak_served: f64,
    peak_asked: f64,
}

impl ItemUse {
    fn new(now_ms: u64) -> ItemUse {
        ItemUse {
            tokens: ITEM_WCU_PER_SECOND,
            refilled_at_ms: now_ms,
            second: now_ms / 1000,
            ..ItemUse::default()
        }
    }

    fn roll(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.refilled_at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * ITEM_WCU_PER_SECOND).min(ITEM_WCU_PER_SECOND);
        self.refilled_at_ms = self.refilled_at_ms.max(now_ms);
        if now_ms / 1000 != self.second {
            self.second = now_ms / 1000;
            self.served = 0.0;
            self.asked = 0.0;
        }
    }
}

/// The busiest item: its key and its peak write units in one second.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Peak {
    pub key: String,
    pub units: f64,
}

/// Per-item use of the simulated table.
#[derive(Default)]
pub(crate) struct ItemLimits {
    items: Mutex<HashMap<String, ItemUse>>,
    largest: Mutex<(String, usize)>,
    units: Mutex<Units>,
}

fn refused(operation: &'static str, code: &str, message: &str) -> Error {
    Error::Service(ServiceError {
        operation,
        code: code.to_owned(),
        message: message.to_owned(),
        status: 400,
        request_id: None,
    })
}

/// Write units for an item of `bytes` (at least one).
pub(crate) fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

/// Read units for `bytes` read at once (at least one 4 KB unit; half for
/// an eventually consistent read).
pub(crate) fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

impl ItemLimits {
    /// Bills a write of `key`, whose item is `bytes` (the larger of before
    /// and after), at `now_ms` on the simulated clock: refused for size
    /// (ValidationException) or throughput
    /// (ProvisionedThroughputExceededException), as DynamoDB would.
    pub(crate) fn write(
        &self,
        operation: &'static str,
        key: &str,
        bytes: usize,
        now_ms: u64,
    ) -> crate::Result<()> {
        if bytes > MAX_ITEM_BYTES {
            return Err(refused(
                operation,
                "ValidationException",
                "Item size has exceeded the maximum allowed size",
            ));
        }
        let units = write_units(bytes);
        {
            let mut items = lock(&self.items);
            let item = items
                .entry(key.to_owned())
                .or_insert_with(|| ItemUse::new(now_ms));
            item.roll(now_ms);
            item.asked += units;
            item.peak_asked = item.peak_asked.max(item.asked);
            if item.tokens < units {
                lock(&self.units).throttled += 1;
                return Err(refused(
                    operation,
                    "ProvisionedThroughputExceededException",
                    "The level of configured provisioned throughput for the table was exceeded",
                ));
            }
            item.tokens -= units;
            item.served += units;
            item.peak_served = item.peak_served.max(item.served);
        }
        lock(&self.units).write += units;
        let mut largest = lock(&self.largest);
        if bytes > largest.1 {
            *largest = (key.to_owned(), bytes);
        }
        Ok(())
    }

    /// Bills a read of `bytes`.
    pub(crate) fn read(&self, bytes: usize, consistent: bool) {
        lock(&self.units).read += read_units(bytes, consistent);
    }

    /// The units spent so far.
    pub(crate) fn units(&self) -> Units {
        *lock(&self.units)
    }

    /// The item with the most write units served in one second, and the
    /// one with the most asked for (throttled writes included).
    pub(crate) fn peaks(&self) -> (Peak, Peak) {
        let items = lock(&self.items);
        let peak = |of: fn(&ItemUse) -> f64| {
            items
                .iter()
                .map(|(key, item)| Peak {
                    key: key.clone(),
                    units: of(item),
                })
                .fold(
                    Peak::default(),
                    |best, p| {
                        if p.units > best.units { p } else { best }
                    },
                )
        };
        (peak(|i| i.peak_served), peak(|i| i.peak_asked))
    }

    /// Forgets the peaks so far (to measure from a settled start).
    pub(crate) fn reset_peaks(&self) {
        for item in lock(&self.items).values_mut() {
            item.peak_served = item.served;
            item.peak_asked = item.asked;
        }
    }

    /// The largest item written: its key and size in bytes.
    pub(crate) fn largest(&self) -> (String, usize) {
        lock(&self.largest).clone()
    }
}

/// A number's size as DynamoDB counts it: about one byte per two
/// significant digits, plus one.
fn number_bytes(n: u64) -> usize {
    n.to_string().len().div_ceil(2) + 1
}

/// A lease row's size in the KCL's layout: each attribute's name plus its
/// value.
pub(crate) fn lease_bytes(lease: &Lease) -> usize {
    let text = |name: &str, value: &str| name.len() + value.len();
    let number = |name: &str, value: u64| name.len() + number_bytes(value);
    let set = |name: &str, values: &[String]| {
        if values.is_empty() {
            0
        } else {
            name.len() + values.iter().map(String::len).sum::<usize>()
        }
    };
    let (checkpoint, sub) = lease.checkpoint.to_columns();
    let timestamp = match lease.checkpoint {
        Checkpoint::AtTimestamp(Some(_)) => number("checkpointTimestamp", 1 << 40),
        _ => 0,
    };
    text("leaseKey", &lease.shard_id)
        + lease.owner.as_deref().map_or(0, |o| text("leaseOwner", o))
        + lease
            .handoff_to
            .as_deref()
            .map_or(0, |t| text("handoffTo", t))
        + number("leaseCounter", lease.counter)
        + text("checkpoint", checkpoint)
        + number("checkpointSubSequenceNumber", sub)
        + number(
            "ownerSwitchesSinceCheckpoint",
            lease.owner_switches_since_checkpoint,
        )
        + set("parentShardId", &lease.parents)
        + set("childShardIds", &lease.children)
        + lease.hash_range.as_ref().map_or(0, |(start, end)| {
            text("startingHashKey", start) + text("endingHashKey", end)
        })
        + timestamp
}

/// The workers row's size, as the real table writes it.
pub(crate) fn workers_bytes(workers: &Workers) -> usize {
    let numbers = |prefix: &str, entries: &std::collections::BTreeMap<String, u64>| {
        entries
            .iter()
            .map(|(id, n)| prefix.len() + id.len() + number_bytes(*n))
            .sum::<usize>()
    };
    "leaseKey".len()
        + WORKERS_KEY.len()
        + "entityType".len()
        + "WORKERS".len()
        + "version".len()
        + number_bytes(workers.version)
        + numbers("beat:", &workers.beats)
        + numbers("inbox:", &workers.inboxes)
        + numbers("cap:", &workers.caps)
}

/// A worker item's size, as the real table writes it.
pub(crate) fn worker_item_bytes(worker: &str, item: &WorkerItem) -> usize {
    let set = |name: &str, ids: &std::collections::BTreeSet<String>| {
        if ids.is_empty() {
            0
        } else {
            name.len() + ids.iter().map(String::len).sum::<usize>()
        }
    };
    "leaseKey".len()
        + worker_key(worker).len()
        + "entityType".len()
        + "WORKER".len()
        + "beat".len()
        + number_bytes(item.beat)
        + item.cap.map_or(0, |cap| "cap".len() + number_bytes(cap))
        + item
            .held
            .map_or(0, |held| "held".len() + number_bytes(held))
        + set("take", &item.take)
        + set("give", &item.give)
        + set("unread", &item.unread)
}

/// The lock item's size (a list costs 3 bytes, and 1 per element).
pub(crate) fn lock_bytes(lock: &Lock) -> usize {
    "leaseKey".len()
        + LEADER_KEY.len()
        + "entityType".len()
        + "LEADER".len()
        + "leader".len()
        + lock.leader.len()
        + "beat".len()
        + number_bytes(lock.beat)
        + "successors".len()
        + 3
        + lock.successors.iter().map(|w| w.len() + 1).sum::<usize>()
        + "roundAt".len()
        + number_bytes(1_800_000_000_000) // a time in milliseconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bills_by_size_and_throttles_an_item_past_1000_units_a_second() {
        let limits = ItemLimits::default();
        // 10 KB: 10 units a write; 100 writes fill one second's 1,000.
        for _ in 0..100 {
            limits.write("UpdateItem", "hot", 10 * 1024, 0).unwrap();
        }
        let throttled = limits.write("UpdateItem", "hot", 10 * 1024, 0).unwrap_err();
        assert!(throttled.is_throttling(), "{throttled}");
        // Another item is not limited by this one.
        limits.write("UpdateItem", "cold", 100, 0).unwrap();
        // Half a second refills 500 units.
        for _ in 0..50 {
            limits.write("UpdateItem", "hot", 10 * 1024, 500).unwrap();
        }
        assert!(limits.write("UpdateItem", "hot", 10 * 1024, 500).is_err());
        let (served, asked) = limits.peaks();
        assert_eq!((served.key.as_str(), served.units), ("hot", 1_500.0));
        assert_eq!((asked.key.as_str(), asked.units), ("hot", 1_520.0));
        assert_eq!(limits.units().throttled, 2);
        assert_eq!(limits.units().write, 1_501.0);
        // Measuring from a later second forgets the earlier peak.
        limits.write("UpdateItem", "hot", 10 * 1024, 2_000).unwrap();
        limits.reset_peaks();
        assert_eq!(limits.peaks().0.units, 10.0);
    }

    #[test]
    fn refuses_items_over_400_kb_and_rounds_units_up() {
        let limits = ItemLimits::default();
        let too_big = limits.write("PutItem", "big", MAX_ITEM_BYTES + 1, 0);
        assert_eq!(too_big.unwrap_err().code(), Some("ValidationException"));
        limits.write("PutItem", "big", MAX_ITEM_BYTES, 0).unwrap();
        assert_eq!(limits.largest(), ("big".to_owned(), MAX_ITEM_BYTES));
        assert_eq!(write_units(1), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(10, false), 0.5);
    }

    #[test]
    fn the_workers_row_grows_about_25_bytes_a_worker_with_short_ids() {
        let mut workers = Workers::default();
        let empty = workers_bytes(&workers);
        for i in 0..100 {
            workers.beats.insert(format!("w{i:04}"), 123_456);
            workers.inboxes.insert(format!("w{i:04}"), 3);
        }
        let per_worker = (workers_bytes(&workers) - empty) / 100;
        assert_eq!(per_worker, 5 + 5 + 4 + 6 + 5 + 2);
    }
}
