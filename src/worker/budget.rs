//! A bound on memory, in bytes and in count, that waiters share in arrival
//! order. Two are used: the buffer of records read but not yet handled (a
//! reader waits for room, so a slow handler slows the readers instead of
//! growing memory), and `read_memory`, the GetRecords replies being
//! fetched and decoded.
//!
//! Waiters are served first come, first served: one at the head of the
//! line that does not fit yet holds back those behind it, so a large
//! request is never starved by a stream of small ones.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a waiter looks at its stop condition.
const STOP_CHECK: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub(crate) struct Budget {
    max_bytes: u64,
    max_records: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    bytes: u64,
    records: u64,
    /// The waiters in arrival order, each woken through its own condition
    /// variable: only the first is woken when room is given back, not all.
    line: VecDeque<Arc<Condvar>>,
}

impl State {
    fn wake_first(&self) {
        if let Some(first) = self.line.front() {
            first.notify_one();
        }
    }

    fn is_first(&self, waiter: &Arc<Condvar>) -> bool {
        self.line.front().is_some_and(|w| Arc::ptr_eq(w, waiter))
    }
}

impl Budget {
    pub(crate) fn new(max_bytes: u64, max_records: u64) -> Budget {
        Budget {
            max_bytes,
            max_records,
            state: Mutex::new(State::default()),
        }
    }

    /// The bound in bytes.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The bound in count.
    pub(crate) fn max_records(&self) -> u64 {
        self.max_records
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `bytes` and `records` fit now. Whatever its size, a request
    /// fits into an empty budget, so an oversized one cannot wait forever.
    fn fits(&self, s: &State, bytes: u64, records: u64) -> bool {
        (s.bytes == 0 && s.records == 0)
            || (s.bytes + bytes <= self.max_bytes && s.records + records <= self.max_records)
    }

    /// Waits in line for room for `bytes` and `records` and takes it; false
    /// when `stop` returns true first (looked at every 50 ms).
    pub(crate) fn acquire(&self, bytes: u64, records: u64, stop: impl Fn() -> bool) -> bool {
        if self.try_acquire(bytes, records) {
            return true;
        }
        let mut s = self.lock();
        let me = Arc::new(Condvar::new());
        s.line.push_back(me.clone());
        loop {
            if s.is_first(&me) && self.fits(&s, bytes, records) {
                s.line.pop_front();
                s.bytes += bytes;
                s.records += records;
                // The next in line may fit as well.
                s.wake_first();
                return true;
            }
            if stop() {
                let was_first = s.is_first(&me);
                s.line.retain(|w| !Arc::ptr_eq(w, &me));
                if was_first {
                    s.wake_first();
                }
                return false;
            }
            s = me
                .wait_timeout(s, STOP_CHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits in line for room as [`acquire`](Self::acquire) does, and
    /// returns it as a [`Room`] that gives it back when dropped.
    pub(crate) fn take_room(
        self: &Arc<Self>,
        bytes: u64,
        records: u64,
        stop: impl Fn() -> bool,
    ) -> Option<Room> {
        self.acquire(bytes, records, stop).then(|| Room {
            budget: self.clone(),
            bytes,
            records,
            share: None,
        })
    }

    /// Takes room for `bytes` at once, past the bound if need be (see
    /// [`force`](Self::force)), as a [`Room`] that gives it back when dropped.
    pub(crate) fn force_room(self: &Arc<Self>, bytes: u64) -> Room {
        self.force(bytes, 0);
        Room {
            budget: self.clone(),
            bytes,
            records: 0,
            share: None,
        }
    }

    /// Takes room for `bytes` and `records` if it fits now and nobody is
    /// waiting; false, taking nothing, otherwise.
    pub(crate) fn try_acquire(&self, bytes: u64, records: u64) -> bool {
        let mut s = self.lock();
        if s.line.is_empty() && self.fits(&s, bytes, records) {
            s.bytes += bytes;
            s.records += records;
            return true;
        }
        false
    }

    /// Takes `bytes` and `records` at once, past the bound if need be: for
    /// memory already in use that must be counted. Later requests wait
    /// until it is given back.
    pub(crate) fn force(&self, bytes: u64, records: u64) {
        let mut s = self.lock();
        s.bytes += bytes;
        s.records += records;
    }

    /// Gives back what a handled (or dropped) chunk or a finished read held.
    pub(crate) fn release(&self, bytes: u64, records: u64) {
        let mut s = self.lock();
        s.bytes = s.bytes.saturating_sub(bytes);
        s.records = s.records.saturating_sub(records);
        s.wake_first();
    }

    /// Bytes and records held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> (u64, u64) {
        let s = self.lock();
        (s.bytes, s.records)
    }

    /// How many are waiting in line.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().line.len()
    }
}

/// Room taken in a budget, given back when dropped. A chunk of records
/// carries the room it holds in the buffer, so that the room comes back
/// however the chunk goes: handled, or dropped with a queue that nothing
/// reads any more (a processor's task ended, a stale reader's queue).
#[derive(Debug)]
pub(crate) struct Room {
    budget: Arc<Budget>,
    bytes: u64,
    records: u64,
    /// The shard's share it also counts in, if any.
    share: Option<Arc<Share>>,
}

impl Room {
    /// Counts this room in `share` too, until it is given back.
    pub(crate) fn counted_in(mut self, share: &Arc<Share>) -> Room {
        share.bytes.fetch_add(self.bytes, Ordering::Relaxed);
        share.records.fetch_add(self.records, Ordering::Relaxed);
        self.share = Some(share.clone());
        self
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some(share) = &self.share {
            share.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
            share.records.fetch_sub(self.records, Ordering::Relaxed);
        }
        self.budget.release(self.bytes, self.records);
    }
}

/// The room one shard's chunks hold in a budget, queued for its processor
/// or being processed (per-shard queues).
#[derive(Debug, Default)]
pub(crate) struct Share {
    bytes: AtomicU64,
    records: AtomicU64,
}

impl Share {
    /// Bytes and records held now.
    pub(crate) fn held(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.records.load(Ordering::Relaxed),
        )
    }
}

/// Whether a shard holding `held` (bytes, records) of a budget bounded by
/// `max` may take `wanted` more, with `shards` shards sharing it: always
/// when it holds nothing (one read, whatever its size), otherwise only
/// within its even share, `max / shards`. So one slow shard never holds
/// the room the others need.
pub(crate) fn within_share(
    held: (u64, u64),
    wanted: (u64, u64),
    max: (u64, u64),
    shards: usize,
) -> bool {
    if held == (0, 0) {
        return true;
    }
    let shards = shards.max(1) as u64;
    held.0 + wanted.0 <= max.0 / shards && held.1 + wanted.1 <= max.1 / shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// A stop condition that turns true after `wait`.
    fn after(wait: Duration) -> impl Fn() -> bool {
        let until = Instant::now() + wait;
        move || Instant::now() >= until
    }

    #[test]
    fn waits_for_room_and_admits_oversized_requests_alone() {
        let b = Arc::new(Budget::new(100, 10));
        assert!(
            b.acquire(1000, 1, after(Duration::ZERO)),
            "an empty budget takes anything"
        );
        assert!(!b.acquire(1, 1, after(Duration::from_millis(20))));
        b.release(1000, 1);
        assert!(b.acquire(60, 5, after(Duration::ZERO)));
        assert!(
            !b.acquire(60, 1, after(Duration::from_millis(10))),
            "byte bound"
        );
        assert!(
            !b.acquire(1, 6, after(Duration::from_millis(10))),
            "count bound"
        );
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.acquire(60, 5, after(Duration::from_secs(5))))
        };
        std::thread::sleep(Duration::from_millis(50));
        b.release(60, 5);
        assert!(waiter.join().unwrap());
        assert_eq!(b.used(), (60, 5));
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_line() {
        let b = Budget::new(100, u64::MAX);
        assert!(b.acquire(100, 0, after(Duration::ZERO)));
        assert!(!b.acquire(50, 0, after(Duration::from_millis(20))));
        b.release(100, 0);
        // Nobody is left in line ahead of this one.
        assert!(b.acquire(10, 0, after(Duration::ZERO)));
    }

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let b = Arc::new(Budget::new(100, u64::MAX));
        assert!(b.acquire(100, 0, after(Duration::ZERO)));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (i, bytes) in [(0, 80), (1, 10), (2, 50)] {
            let (waiter, order) = (b.clone(), order.clone());
            waiters.push(std::thread::spawn(move || {
                assert!(waiter.acquire(bytes, 0, after(Duration::from_secs(10))));
                order.lock().unwrap().push(i);
            }));
            // Each one queues before the next.
            let deadline = Instant::now() + Duration::from_secs(5);
            while b.waiting() < i + 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(b.waiting(), i + 1);
        }
        // Room for 10 bytes: the small second waiter would fit, but the
        // first is ahead of it.
        b.release(10, 0);
        std::thread::sleep(Duration::from_millis(100));
        assert!(order.lock().unwrap().is_empty());
        assert_eq!(b.used(), (90, 0));
        b.release(90, 0);
        // 80 and 10 fit together; 50 waits for room.
        let deadline = Instant::now() + Duration::from_secs(5);
        while order.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        // Both were served by one release: their threads note it in either order.
        let mut served = order.lock().unwrap().clone();
        served.sort();
        assert_eq!(served, vec![0, 1]);
        assert_eq!(b.used(), (90, 0));
        b.release(90, 0);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(order.lock().unwrap()[2], 2);
        assert_eq!(b.used(), (50, 0));
    }

    #[test]
    fn a_large_request_is_not_starved_by_small_ones() {
        // Four threads keep the budget busy with small pieces, never all
        // at once given back, so it is never empty; a request for the
        // whole budget still gets in.
        let b = Arc::new(Budget::new(100, u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let small_ones = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..4 {
            let (b, stop, n) = (b.clone(), stop.clone(), small_ones.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if b.acquire(30, 0, || stop.load(Ordering::Relaxed)) {
                        std::thread::sleep(Duration::from_millis(2));
                        b.release(30, 0);
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        let got = b.acquire(100, 0, after(Duration::from_secs(10)));
        let waited = started.elapsed();
        assert!(got, "the large request was starved");
        assert!(waited < Duration::from_secs(1), "waited {waited:?}");
        assert_eq!(b.used(), (100, 0), "it holds the budget alone");
        b.release(100, 0);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert!(small_ones.load(Ordering::Relaxed) > 10);
        assert_eq!(b.used(), (0, 0));
    }

    #[test]
    fn room_is_given_back_when_dropped() {
        let b = Arc::new(Budget::new(100, 10));
        let room = b.take_room(60, 4, after(Duration::ZERO)).unwrap();
        assert_eq!(b.used(), (60, 4));
        assert!(
            b.take_room(60, 1, after(Duration::from_millis(10)))
                .is_none()
        );
        drop(room);
        assert_eq!(b.used(), (0, 0));
    }

    #[test]
    fn a_shard_takes_room_within_its_even_share_or_for_one_read() {
        let max = (1000, 100);
        assert!(within_share((0, 0), (5000, 500), max, 4), "one read always");
        assert!(within_share((100, 10), (150, 15), max, 4));
        assert!(!within_share((100, 10), (151, 1), max, 4), "bytes");
        assert!(!within_share((100, 10), (1, 16), max, 4), "records");
        assert!(
            within_share((100, 10), (900, 90), max, 1),
            "alone: the whole budget"
        );
        assert!(
            within_share((100, 10), (900, 90), max, 0),
            "no reader counted yet"
        );
    }

    #[test]
    fn room_counted_in_a_share_leaves_it_when_dropped() {
        let b = Arc::new(Budget::new(100, 10));
        let share = Arc::new(Share::default());
        let room = b
            .take_room(60, 4, after(Duration::ZERO))
            .unwrap()
            .counted_in(&share);
        assert_eq!(share.held(), (60, 4));
        drop(room);
        assert_eq!(share.held(), (0, 0));
        assert_eq!(b.used(), (0, 0));
    }

    #[test]
    fn forced_memory_holds_back_later_requests() {
        let b = Budget::new(100, u64::MAX);
        assert!(b.acquire(50, 0, after(Duration::ZERO)));
        b.force(80, 0);
        assert_eq!(b.used(), (130, 0));
        assert!(!b.acquire(1, 0, after(Duration::from_millis(20))));
        b.release(80, 0);
        assert!(b.acquire(50, 0, after(Duration::ZERO)));
    }
}
