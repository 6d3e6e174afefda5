//! The simulated table's worker items and lock item (see
//! [`members`](crate::lease::members)): the same conditions as the
//! DynamoDB expressions, judged in memory, billed and limited per item as
//! DynamoDB bills them (a write whose condition fails is billed too).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::limits::{lock_bytes, worker_item_bytes};
use super::{Fault, SimTable, injected, trace};
use crate::error::Result;
use crate::lease::LeaseStore;
use crate::lease::members::{
    LEADER_KEY, Lead, Lock, MemberStore, Notes, Settled, Survey, WorkerItem, worker_key,
};
use crate::lease::plan::Row;
use crate::lease::table::{Beat, namesake_error};
use crate::sync::lock;

/// The worker items (by worker id) and the lock item.
#[derive(Default)]
pub(super) struct Members {
    pub workers: BTreeMap<String, WorkerItem>,
    pub lock: Option<Lock>,
    /// When the lock was last written (clock milliseconds).
    pub lock_written: u64,
}

impl Members {
    fn bytes(&self) -> usize {
        self.workers
            .iter()
            .map(|(id, item)| worker_item_bytes(id, item))
            .sum::<usize>()
            + self.lock.as_ref().map_or(0, lock_bytes)
    }
}

impl SimTable {
    /// Bills a write of a member item of `bytes` (the larger of before and
    /// after), refused as DynamoDB would refuse it.
    fn bill_member_write(&self, key: &str, bytes: usize) -> Result<()> {
        let now = self.clock.load(Ordering::Relaxed);
        self.limits.write("UpdateItem", key, bytes, now)
    }

    /// A fault for a write of `key`: an error before it is applied, or
    /// after (a lost reply; a late write lands at once here).
    fn member_fault(&self, key: &str) -> Result<Fault> {
        match self.faults.draw(key) {
            Fault::Fail => Err(injected("UpdateItem")),
            fault => Ok(fault),
        }
    }

    /// The size of everything besides the leases, for a Scan's bill.
    pub(super) fn members_bytes(&self) -> usize {
        lock(&self.members).bytes()
    }
}

/// The reply of a write applied with `fault`.
fn replied<T>(fault: Fault, value: T) -> Result<T> {
    match fault {
        Fault::None => Ok(value),
        _ => Err(injected("UpdateItem")),
    }
}

impl MemberStore for SimTable {
    fn beat_in_item(&self, beat: &Beat<'_>, settled: &Settled) -> Result<WorkerItem> {
        let key = worker_key(beat.worker);
        let fault = self.member_fault(&key)?;
        let mut members = lock(&self.members);
        let before = members.workers.get(beat.worker).cloned();
        let mut after = before.clone().unwrap_or_default();
        after.beat = beat.number;
        after.cap = beat.cap;
        if settled.held.is_some() {
            after.held = settled.held;
        }
        after.falling_behind = settled.falling_behind;
        for id in &settled.took {
            after.take.remove(id);
        }
        for id in &settled.gave {
            after.give.remove(id);
        }
        after.unread.extend(settled.unread.iter().cloned());
        if settled.unread.is_empty() {
            for id in &settled.read {
                after.unread.remove(id);
            }
        }
        let bytes = before
            .as_ref()
            .map_or(0, |b| worker_item_bytes(beat.worker, b))
            .max(worker_item_bytes(beat.worker, &after));
        self.bill_member_write(&key, bytes)?;
        if !beat.may_replace(before.map(|b| b.beat)) {
            return Err(namesake_error(beat.worker));
        }
        trace(|| format!("  beat in item {} {}", beat.worker, beat.number));
        members
            .workers
            .insert(beat.worker.to_owned(), after.clone());
        replied(fault, after)
    }

    fn worker_item(&self, worker: &str) -> Result<Option<WorkerItem>> {
        let item = lock(&self.members).workers.get(worker).cloned();
        let bytes = item.as_ref().map_or(0, |i| worker_item_bytes(worker, i));
        self.limits.read(bytes, true);
        Ok(item)
    }

    fn note(&self, worker: &str, notes: Notes, shard_ids: &[String]) -> Result<bool> {
        if shard_ids.is_empty() {
            return Ok(true);
        }
        let key = worker_key(worker);
        let fault = self.member_fault(&key)?;
        let mut members = lock(&self.members);
        let Some(item) = members.workers.get_mut(worker) else {
            self.bill_member_write(&key, 0)?;
            return Ok(false);
        };
        let mut after = item.clone();
        let set = match notes {
            Notes::Take => &mut after.take,
            Notes::Give => &mut after.give,
        };
        set.extend(shard_ids.iter().cloned());
        self.bill_member_write(&key, worker_item_bytes(worker, &after))?;
        trace(|| format!("  note {worker} {notes:?} {shard_ids:?}"));
        *item = after;
        replied(fault, true)
    }

    fn forget_item(&self, worker: &str, seen_beat: Option<u64>) -> Result<()> {
        let key = worker_key(worker);
        let fault = self.member_fault(&key)?;
        let mut members = lock(&self.members);
        let item = members.workers.get(worker);
        let bytes = item.map_or(0, |i| worker_item_bytes(worker, i));
        self.bill_member_write(&key, bytes)?;
        if seen_beat.is_none_or(|seen| item.is_some_and(|i| i.beat == seen)) {
            trace(|| format!("  forget item {worker}"));
            members.workers.remove(worker);
        }
        replied(fault, ())
    }

    fn lock(&self) -> Result<Option<Lock>> {
        let held = lock(&self.members).lock.clone();
        self.limits.read(held.as_ref().map_or(0, lock_bytes), true);
        Ok(held)
    }

    fn unlock(&self, worker: &str, beat: u64) -> Result<()> {
        let fault = self.member_fault(LEADER_KEY)?;
        let mut members = lock(&self.members);
        let before = members.lock.as_ref().map_or(0, lock_bytes);
        self.bill_member_write(LEADER_KEY, before)?;
        if members
            .lock
            .as_ref()
            .is_some_and(|l| l.leader == worker && l.beat == beat)
        {
            trace(|| format!("  unlock {worker}"));
            members.lock = None;
        }
        replied(fault, ())
    }

    fn lease_row(&self, key: &str) -> Result<Option<Row>> {
        if matches!(self.faults.draw(""), Fault::Fail | Fault::Lost) {
            return Err(injected("GetItem"));
        }
        let row = lock(&self.rows).get(key).cloned();
        let bytes = row
            .as_ref()
            .and_then(Row::lease)
            .map_or(0, super::limits::lease_bytes);
        self.limits.read(bytes, true);
        Ok(row)
    }

    fn lead(&self, lead: &Lead<'_>) -> Result<bool> {
        let fault = self.member_fault(LEADER_KEY)?;
        let mut members = lock(&self.members);
        let after = Lock {
            leader: lead.worker.to_owned(),
            beat: lead.beat,
            successors: lead.successors.to_vec(),
            halt: lead.halt.map(str::to_owned),
            round_at: Some(lead.round_at),
        };
        let before = members.lock.as_ref().map_or(0, lock_bytes);
        self.bill_member_write(LEADER_KEY, before.max(lock_bytes(&after)))?;
        let holds = |l: &Lock, (holder, beat): (&str, u64)| l.leader == holder && l.beat == beat;
        let there = members.lock.as_ref();
        let as_seen = match lead.seen {
            None => there.is_none(),
            Some(seen) => there.is_some_and(|l| holds(l, seen)),
        };
        let landed = there.is_some_and(|l| holds(l, (lead.worker, lead.beat)));
        if !(as_seen || landed) {
            trace(|| format!("  lead {} {}: refused", lead.worker, lead.beat));
            return Ok(false);
        }
        trace(|| format!("  lead {} {}", lead.worker, lead.beat));
        members.lock = Some(after);
        members.lock_written = self.clock.load(Ordering::Relaxed);
        replied(fault, true)
    }

    fn survey(&self, consistent: bool) -> Result<Survey> {
        let rows: Vec<Row> = self.list(consistent)?;
        let members = lock(&self.members);
        Ok(Survey {
            rows,
            workers: members.workers.clone(),
            lock: members.lock.clone(),
            row_beats: lock(&self.workers).beats.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Odds, Sim};
    use super::*;

    fn quiet_table() -> std::sync::Arc<SimTable> {
        let sim = Sim::new(1);
        *lock(&sim.faults.odds) = Odds::default();
        sim.table.clone()
    }

    fn beat(worker: &str, number: u64, since: Option<u64>) -> Beat<'_> {
        Beat {
            worker,
            number,
            since,
            over: None,
            cap: None,
        }
    }

    #[test]
    fn a_worker_beats_in_its_own_item_and_a_namesake_is_refused() {
        let table = quiet_table();
        let first = table
            .beat_in_item(&beat("w1", 1, None), &Settled::default())
            .unwrap();
        assert_eq!(first.beat, 1);
        let capped = Beat {
            cap: Some(4),
            ..beat("w1", 2, Some(1))
        };
        assert_eq!(
            table
                .beat_in_item(&capped, &Settled::default())
                .unwrap()
                .cap,
            Some(4)
        );
        // Another process under the same id: its beat 1 finds our 2.
        let namesake = table.beat_in_item(&beat("w1", 1, Some(1)), &Settled::default());
        assert!(namesake.unwrap_err().to_string().contains("worker_id"));
        // Other workers' items are apart: the item holds one worker.
        table
            .beat_in_item(&beat("w2", 1, None), &Settled::default())
            .unwrap();
        let item = table.worker_item("w1").unwrap().unwrap();
        assert_eq!((item.beat, item.cap), (2, Some(4)));
    }

    #[test]
    fn notes_reach_a_live_worker_and_are_settled_by_its_heartbeat() {
        let table = quiet_table();
        table
            .beat_in_item(&beat("w1", 1, None), &Settled::default())
            .unwrap();
        let ids = ["shardId-1".to_owned(), "shardId-2".to_owned()];
        assert!(table.note("w1", Notes::Take, &ids).unwrap());
        assert!(table.note("w1", Notes::Give, &ids[..1]).unwrap());
        let item = table
            .beat_in_item(&beat("w1", 2, Some(1)), &Settled::default())
            .unwrap();
        assert_eq!(item.take.len(), 2);
        assert_eq!(item.give.len(), 1);
        // shardId-1 is in both sets (taken, then asked for): starting to
        // read it settles only its take; handing it over, its give.
        let took = Settled {
            took: ids[..1].to_vec(),
            ..Settled::default()
        };
        let item = table.beat_in_item(&beat("w1", 3, Some(2)), &took).unwrap();
        assert_eq!(item.take.iter().collect::<Vec<_>>(), ["shardId-2"]);
        assert_eq!(item.give.iter().collect::<Vec<_>>(), ["shardId-1"]);
        let gave = Settled {
            gave: ids[..1].to_vec(),
            ..Settled::default()
        };
        let item = table.beat_in_item(&beat("w1", 4, Some(3)), &gave).unwrap();
        assert!(item.give.is_empty());
        // A forgotten worker's item is not made again by a note.
        table.forget_item("w1", Some(3)).unwrap();
        assert!(table.worker_item("w1").unwrap().is_some(), "beat moved on");
        table.forget_item("w1", Some(4)).unwrap();
        assert!(!table.note("w1", Notes::Take, &ids).unwrap());
        assert_eq!(table.worker_item("w1").unwrap(), None);
    }

    #[test]
    fn a_first_beat_replaces_only_what_the_start_up_check_saw() {
        let table = quiet_table();
        let first = |number, over| Beat {
            worker: "w1",
            number,
            since: Some(number),
            over,
            cap: None,
        };
        // A dead predecessor's beat, seen by the check: replaced.
        table
            .beat_in_item(&beat("w1", 40, None), &Settled::default())
            .unwrap();
        table
            .beat_in_item(&first(900, Some(40)), &Settled::default())
            .unwrap();
        // A second process that passed the check at the same time (it saw
        // the same beat, or none) finds ours there: refused.
        for over in [Some(40), None] {
            let refused = table.beat_in_item(&first(500, over), &Settled::default());
            assert!(refused.unwrap_err().to_string().contains("worker_id"));
        }
        // A retry of our first attempt after a lost reply is ours.
        let retry = Beat {
            since: Some(900),
            ..first(901, Some(40))
        };
        table.beat_in_item(&retry, &Settled::default()).unwrap();
    }

    #[test]
    fn one_worker_holds_the_lock_and_a_successor_claims_only_what_it_saw() {
        let table = quiet_table();
        let lead = |worker, beat, seen| Lead {
            worker,
            beat,
            seen,
            successors: &[],
            halt: None,
            round_at: std::time::UNIX_EPOCH,
        };
        assert!(table.lead(&lead("w1", 5, None)).unwrap());
        // A second claim of a free lock comes too late.
        assert!(!table.lead(&lead("w2", 1, None)).unwrap());
        // A retry of a write that landed counts as landed.
        assert!(table.lead(&lead("w1", 5, None)).unwrap());
        assert!(table.lead(&lead("w1", 6, Some(("w1", 5)))).unwrap());
        // A claim on a beat seen before the leader's last renewal fails.
        assert!(!table.lead(&lead("w2", 1, Some(("w1", 5)))).unwrap());
        assert!(table.lead(&lead("w2", 1, Some(("w1", 6)))).unwrap());
        // The old leader, paused meanwhile, renews no more.
        assert!(!table.lead(&lead("w1", 7, Some(("w1", 6)))).unwrap());
        assert_eq!(table.lock().unwrap().unwrap().leader, "w2");
    }

    #[test]
    fn the_leader_surveys_leases_and_members_in_one_read_and_list_stays_leases() {
        let sim = Sim::idle_fleet(3, 0);
        let table = sim.table.clone();
        table
            .beat_in_item(&beat("w1", 1, None), &Settled::default())
            .unwrap();
        let successors = ["w2".to_owned()];
        let claim = Lead {
            worker: "w1",
            beat: 1,
            seen: None,
            successors: &successors,
            halt: None,
            round_at: std::time::UNIX_EPOCH,
        };
        assert!(table.lead(&claim).unwrap());
        let survey = table.survey(true).unwrap();
        assert_eq!(survey.rows.len(), 3);
        assert_eq!(survey.workers.keys().collect::<Vec<_>>(), ["w1"]);
        assert_eq!(survey.lock.unwrap().successors, successors);
        assert_eq!(table.list(true).unwrap().len(), 3);
    }

    #[test]
    fn member_items_stay_small_and_cold() {
        // A worker beating every F/3 = 3.3 s with a cold start's ten
        // assigned leases in its item: one write unit a beat.
        let table = quiet_table();
        let keys: Vec<String> = (0..10)
            .map(|i| format!("123456789012:orders:1700000000:shardId-{i:012}"))
            .collect();
        let id = "worker-3f2c9a7e-5b1d-4c6e-8a0f-1234567890ab";
        table
            .beat_in_item(&beat(id, 1, None), &Settled::default())
            .unwrap();
        table.note(id, Notes::Take, &keys).unwrap();
        let item = table.worker_item(id).unwrap().unwrap();
        assert!(worker_item_bytes(id, &item) < 1024);
        let before = table.limits.units().write;
        table
            .beat_in_item(&beat(id, 2, Some(1)), &Settled::default())
            .unwrap();
        assert_eq!(table.limits.units().write - before, 1.0);
    }
}
