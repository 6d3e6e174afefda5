//! Which workers are alive, judged from the workers row every heartbeat
//! returns: a worker is dead once its heartbeat has stood still for the
//! failover time on our own clock (no clock of another host is compared),
//! exactly as the KCL judges a lease by its counter.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::lease::held::ROUND_SLACK;
use crate::lease::table::Workers;

/// The most live workers a [`Coordination::WorkersRow`] fleet runs
/// (issue 25): each beats about 0.3 times a second into the one row, which
/// grows about 52 B a worker, so the row takes about `0.015 N²` WCU/s. At
/// 64 workers that is about 77 WCU/s on a 4 KB item, under the 100 WCU/s
/// and 64 KB an item may take without becoming a hot spot; past it, the
/// workers after the first 64 by id stop with a configuration error.
///
/// [`Coordination::WorkersRow`]: crate::Coordination::WorkersRow
pub(crate) const WORKERS_ROW_MAX: usize = 64;

/// True once `waited` is `limit`, allowing for [`ROUND_SLACK`]: rounds come
/// every third of the failover time, so the third round after a change was
/// seen is the failover time later, give or take a few milliseconds either
/// way; without slack it would count at the third round or at the fourth
/// (3.3 s later) by chance.
pub(crate) fn has_waited(waited: Duration, limit: Duration) -> bool {
    waited + ROUND_SLACK >= limit
}

/// What a starting worker makes of a heartbeat already in the workers row
/// under its own id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Namesake {
    /// None there, or it stood still for longer than a live process beats
    /// (a predecessor that died): start, and take its leases as our own.
    Clear,
    /// There and may be live: wait and look again (a predecessor still
    /// draining leaves the row when it is done).
    Wait,
    /// It kept moving for the failover time: another live process uses
    /// this id.
    Live,
}

/// A starting worker's watch over a heartbeat under its own id.
#[derive(Debug, Default)]
pub(crate) struct NamesakeWatch {
    /// When we first looked, and the beat with since when it stood still.
    seen: Option<(Instant, u64, Instant)>,
}

impl NamesakeWatch {
    /// Notes the beat under our id (`None`: not in the row) and judges it.
    /// A live process beats every `interval`; one still for half as long
    /// again is taken for dead (if it was only slow, its next heartbeat is
    /// refused and it stops: see the lease table's heartbeat).
    pub(crate) fn observe(
        &mut self,
        beat: Option<u64>,
        now: Instant,
        interval: Duration,
        failover: Duration,
    ) -> Namesake {
        let Some(beat) = beat else {
            return Namesake::Clear;
        };
        let (first, seen, since) = self.seen.get_or_insert((now, beat, now));
        if *seen != beat {
            (*seen, *since) = (beat, now);
            if has_waited(now.saturating_duration_since(*first), failover) {
                return Namesake::Live;
            }
        } else if has_waited(
            now.saturating_duration_since(*since),
            interval + interval / 2,
        ) {
            return Namesake::Clear;
        }
        Namesake::Wait
    }
}

/// The other workers as this one has seen them.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    /// Each worker's last heartbeat, and since when (our clock) it stood still.
    seen: HashMap<String, (u64, Instant)>,
    /// Workers whose heartbeat stood still for the failover time.
    dead: HashSet<String>,
    version: Option<u64>,
    inbox: Option<u64>,
    /// Workers that left the row without a word (it was deleted, emptied
    /// or restored from a backup), and since when (our clock): unknown,
    /// not dead, until they have had the failover time to beat again.
    vanished: HashMap<String, Instant>,
    /// The caps of the capped workers, as the row last said.
    caps: BTreeMap<String, u64>,
    /// Every worker ever seen in the row: one missing from it now (the row
    /// was deleted, twice in a row say) is still one of ours, never taken
    /// for a worker that writes no heartbeat (the KCL).
    ever: HashSet<String>,
}

impl Peers {
    /// Notes the workers row a heartbeat returned. True when the lease
    /// table should be read now: a worker joined, left, died or came back,
    /// or someone bumped the version or this worker's inbox.
    pub(crate) fn observe(
        &mut self,
        workers: &Workers,
        me: &str,
        now: Instant,
        failover: Duration,
    ) -> bool {
        let before = self.seen.len();
        let vanished = &mut self.vanished;
        self.seen.retain(|id, _| {
            let kept = workers.beats.contains_key(id);
            if !kept {
                vanished.insert(id.clone(), now);
            }
            kept
        });
        self.vanished.retain(|id, since| {
            !workers.beats.contains_key(id)
                && !has_waited(now.saturating_duration_since(*since), failover * 2)
        });
        let mut changed = self.seen.len() != before;
        for (id, beat) in &workers.beats {
            if !self.ever.contains(id) {
                self.ever.insert(id.clone());
            }
            match self.seen.get_mut(id) {
                Some(seen) if seen.0 == *beat => {}
                Some(seen) => *seen = (*beat, now),
                None => {
                    changed = true;
                    self.seen.insert(id.clone(), (*beat, now));
                }
            }
        }
        let dead: HashSet<String> = self
            .seen
            .iter()
            .filter(|(id, (_, since))| {
                id.as_str() != me && has_waited(now.saturating_duration_since(*since), failover)
            })
            .map(|(id, _)| id.clone())
            .collect();
        changed |= dead != self.dead;
        self.dead = dead;
        self.caps.clone_from(&workers.caps);
        let inbox = workers.inboxes.get(me).copied().unwrap_or(0);
        changed |= self.version != Some(workers.version) || self.inbox != Some(inbox);
        self.version = Some(workers.version);
        self.inbox = Some(inbox);
        changed
    }

    /// True when `worker` is in the workers row (alive or not).
    pub(crate) fn is_member(&self, worker: &str) -> bool {
        self.seen.contains_key(worker)
    }

    /// True when `worker` was ever seen in the workers row.
    pub(crate) fn was_ever_member(&self, worker: &str) -> bool {
        self.ever.contains(worker)
    }

    /// True when `worker`'s heartbeat stood still for the failover time.
    pub(crate) fn is_dead(&self, worker: &str) -> bool {
        self.dead.contains(worker)
    }

    /// The workers of the row not judged dead.
    pub(crate) fn live(&self) -> BTreeSet<String> {
        self.seen
            .keys()
            .filter(|id| !self.dead.contains(*id))
            .cloned()
            .collect()
    }

    /// Why `me` must stop: the workers row names more live workers than
    /// [`WORKERS_ROW_MAX`] and `me` is not among the first that many by
    /// id (so that the fleet goes on with them, the same ones whoever
    /// judges). `None` while the fleet fits.
    pub(crate) fn over_cap(&self, me: &str) -> Option<String> {
        let live = self.live();
        let rank = live.iter().position(|id| id == me)?;
        (rank >= WORKERS_ROW_MAX).then(|| {
            format!(
                "the workers row names {} live workers, and Coordination::WorkersRow serves at most {WORKERS_ROW_MAX} (every heartbeat rewrites that one item, whose writes grow with the square of the fleet: about 77 WCU/s at 64 workers); worker {me:?} stops. Use Coordination::Leader (the default) for a larger fleet",
                live.len()
            )
        })
    }

    /// How long `worker`'s heartbeat has stood still as we saw it (zero
    /// for a worker not in the row).
    pub(crate) fn still_for(&self, worker: &str, now: Instant) -> Duration {
        self.seen.get(worker).map_or(Duration::ZERO, |(_, since)| {
            now.saturating_duration_since(*since)
        })
    }

    /// How long ago `worker` left the workers row, if it did lately: its
    /// leases may not count as standing still for longer than that (a
    /// worker that left gracefully released its leases first).
    pub(crate) fn vanished_for(&self, worker: &str, now: Instant) -> Option<Duration> {
        self.vanished
            .get(worker)
            .map(|since| now.saturating_duration_since(*since))
    }

    /// The most leases each capped worker may hold.
    pub(crate) fn caps(&self) -> &BTreeMap<String, u64> {
        &self.caps
    }

    /// The dead workers, with the heartbeat each stopped at.
    pub(crate) fn dead(&self) -> Vec<(String, u64)> {
        let mut dead: Vec<(String, u64)> = self
            .dead
            .iter()
            .filter_map(|id| self.seen.get(id).map(|(beat, _)| (id.clone(), *beat)))
            .collect();
        dead.sort();
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Duration = Duration::from_secs(10);

    fn row(beats: &[(&str, u64)], version: u64, inboxes: &[(&str, u64)]) -> Workers {
        Workers {
            beats: beats.iter().map(|(w, b)| ((*w).to_owned(), *b)).collect(),
            inboxes: inboxes.iter().map(|(w, b)| ((*w).to_owned(), *b)).collect(),
            version,
            caps: BTreeMap::new(),
        }
    }

    #[test]
    fn a_worker_is_dead_once_its_heartbeat_stood_still_for_the_failover_time() {
        let t0 = Instant::now();
        let mut peers = Peers::default();
        assert!(peers.observe(&row(&[("me", 1), ("a", 7)], 0, &[]), "me", t0, F));
        // Nothing new: no need to read the table.
        let t1 = t0 + F / 3;
        assert!(!peers.observe(&row(&[("me", 2), ("a", 7)], 0, &[]), "me", t1, F));
        assert!(!peers.is_dead("a"));
        // Still at 7 a failover time after it was first seen: dead, and
        // that is news.
        let t3 = t0 + F;
        assert!(peers.observe(&row(&[("me", 4), ("a", 7)], 0, &[]), "me", t3, F));
        assert!(peers.is_dead("a"));
        assert_eq!(peers.dead(), [("a".to_owned(), 7)]);
        assert_eq!(peers.still_for("a", t3), F);
        assert_eq!(peers.live(), BTreeSet::from(["me".to_owned()]));
        // It beats again: alive, also news.
        let t4 = t3 + F / 3;
        assert!(peers.observe(&row(&[("me", 5), ("a", 8)], 0, &[]), "me", t4, F));
        assert!(!peers.is_dead("a"));
        // Our own heartbeat is never judged: we know whether we live.
        assert!(!peers.is_dead("me"));
    }

    #[test]
    fn a_workers_row_fleet_past_its_cap_stops_the_workers_after_the_first_64_by_id() {
        let t = Instant::now();
        let ids: Vec<String> = (0..66).map(|i| format!("w{i:02}")).collect();
        let beats: Vec<(&str, u64)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
        let mut peers = Peers::default();
        peers.observe(&row(&beats, 0, &[]), "w00", t, F);
        let stopped: Vec<&String> = ids
            .iter()
            .filter(|id| peers.over_cap(id).is_some())
            .collect();
        assert_eq!(stopped, [&ids[64], &ids[65]]);
        let why = peers.over_cap("w65").unwrap();
        assert!(
            why.contains("66 live workers") && why.contains("Coordination::Leader"),
            "{why}"
        );
        // Dead workers do not count: with two of them dead, all fit.
        let beats: Vec<(&str, u64)> = ids
            .iter()
            .map(|id| {
                (
                    id.as_str(),
                    if ["w01", "w02"].contains(&id.as_str()) {
                        1
                    } else {
                        2
                    },
                )
            })
            .collect();
        peers.observe(&row(&beats, 0, &[]), "w00", t + F, F);
        assert!(peers.is_dead("w01") && peers.is_dead("w02"));
        assert!(ids.iter().all(|id| peers.over_cap(id).is_none()));
    }

    #[test]
    fn joins_leaves_versions_and_our_inbox_call_for_a_read() {
        let t = Instant::now();
        let mut peers = Peers::default();
        peers.observe(&row(&[("me", 1)], 3, &[("me", 1)]), "me", t, F);
        let cases = [
            row(&[("me", 2), ("b", 1)], 3, &[("me", 1)]),
            row(&[("me", 3)], 3, &[("me", 1)]),
            row(&[("me", 4)], 4, &[("me", 1)]),
            row(&[("me", 5)], 4, &[("me", 2)]),
        ];
        for (i, workers) in cases.iter().enumerate() {
            assert!(peers.observe(workers, "me", t, F), "case {i}");
        }
        // Another worker's inbox is not ours to read for.
        let other = row(&[("me", 6)], 4, &[("me", 2), ("x", 9)]);
        assert!(!peers.observe(&other, "me", t, F));
        assert!(peers.is_member("me") && !peers.is_member("b"));
    }

    #[test]
    fn a_namesake_that_keeps_beating_is_live_one_that_stands_still_or_leaves_is_not() {
        let (t, i) = (Instant::now(), F / 3);
        assert_eq!(
            NamesakeWatch::default().observe(None, t, i, F),
            Namesake::Clear
        );
        // Stands still for one and a half heartbeat periods: dead.
        let mut watch = NamesakeWatch::default();
        assert_eq!(watch.observe(Some(4), t, i, F), Namesake::Wait);
        assert_eq!(watch.observe(Some(4), t + i, i, F), Namesake::Wait);
        assert_eq!(watch.observe(Some(4), t + i * 3 / 2, i, F), Namesake::Clear);
        // Beats, then leaves the row (a predecessor done draining).
        let mut watch = NamesakeWatch::default();
        assert_eq!(watch.observe(Some(4), t, i, F), Namesake::Wait);
        assert_eq!(watch.observe(Some(5), t + i, i, F), Namesake::Wait);
        assert_eq!(watch.observe(None, t + i * 2, i, F), Namesake::Clear);
        // Keeps beating for the failover time: live.
        let mut watch = NamesakeWatch::default();
        for n in 0..3 {
            assert_eq!(
                watch.observe(Some(n), t + i * n as u32, i, F),
                Namesake::Wait
            );
        }
        assert_eq!(watch.observe(Some(3), t + F, i, F), Namesake::Live);
    }

    #[test]
    fn a_worker_that_left_the_row_is_unknown_for_the_failover_time_not_dead() {
        let t0 = Instant::now();
        let mut peers = Peers::default();
        peers.observe(&row(&[("me", 1), ("a", 7)], 0, &[]), "me", t0, F);
        // The row is deleted and written again by our heartbeat alone.
        let t1 = t0 + F / 3;
        assert!(peers.observe(&row(&[("me", 2)], 0, &[]), "me", t1, F));
        assert!(!peers.is_member("a") && !peers.is_dead("a"));
        assert_eq!(peers.vanished_for("a", t1 + F / 2), Some(F / 2));
        assert!(peers.was_ever_member("a"));
        // It beats again: a member, no longer vanished.
        peers.observe(&row(&[("me", 3), ("a", 8)], 0, &[]), "me", t1 + F / 3, F);
        assert!(peers.is_member("a"));
        assert_eq!(peers.vanished_for("a", t1 + F), None);
        // Gone for good: forgotten after twice the failover time.
        peers.observe(&row(&[("me", 4)], 0, &[]), "me", t1 + F, F);
        peers.observe(&row(&[("me", 5)], 0, &[]), "me", t1 + F * 3, F);
        assert_eq!(peers.vanished_for("a", t1 + F * 3), None);
    }
}
