//! The bound on records read but not yet handled, in bytes and in count:
//! a reader waits for room, so a slow handler slows the readers instead of
//! growing memory.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Budget {
    max_bytes: u64,
    max_records: u64,
    used: Mutex<(u64, u64)>,
    freed: Condvar,
}

impl Budget {
    pub(crate) fn new(max_bytes: u64, max_records: u64) -> Budget {
        Budget {
            max_bytes,
            max_records,
            used: Mutex::new((0, 0)),
            freed: Condvar::new(),
        }
    }

    /// Waits up to `timeout` for room for `bytes` and `records`; true when
    /// reserved. Whatever its size, a chunk fits into an empty buffer, so an
    /// oversized read cannot block forever.
    pub(crate) fn acquire(&self, bytes: u64, records: u64, timeout: Duration) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let fits = |u: &(u64, u64)| {
            (u.0 == 0 && u.1 == 0)
                || (u.0 + bytes <= self.max_bytes && u.1 + records <= self.max_records)
        };
        if !fits(&used) {
            let (guard, _) = self
                .freed
                .wait_timeout_while(used, timeout, |u| !fits(u))
                .unwrap_or_else(|e| e.into_inner());
            used = guard;
            if !fits(&used) {
                return false;
            }
        }
        used.0 += bytes;
        used.1 += records;
        true
    }

    /// Gives back what a handled (or dropped) chunk held.
    pub(crate) fn release(&self, bytes: u64, records: u64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.0 = used.0.saturating_sub(bytes);
        used.1 = used.1.saturating_sub(records);
        self.freed.notify_all();
    }

    /// Bytes and records held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> (u64, u64) {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_for_room_and_admits_oversized_chunks_alone() {
        let b = Arc::new(Budget::new(100, 10));
        assert!(
            b.acquire(1000, 1, Duration::ZERO),
            "an empty buffer takes anything"
        );
        assert!(!b.acquire(1, 1, Duration::from_millis(20)));
        b.release(1000, 1);
        assert!(b.acquire(60, 5, Duration::ZERO));
        assert!(!b.acquire(60, 1, Duration::from_millis(10)), "byte bound");
        assert!(!b.acquire(1, 6, Duration::from_millis(10)), "count bound");
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.acquire(60, 5, Duration::from_secs(5)))
        };
        std::thread::sleep(Duration::from_millis(50));
        b.release(60, 5);
        assert!(waiter.join().unwrap());
        assert_eq!(b.used(), (60, 5));
    }
}
