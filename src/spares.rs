//! Spare buffers, handed back for reuse.
//!
//! The hot path makes buffers of megabytes on one thread that are freed
//! on another: a reply's record bytes (made by the reader, freed with the
//! last of its records, mostly on the handling thread) and the message
//! lists of chunks and batches. glibc's allocator maps fresh memory for
//! each buffer above its mmap threshold and unmaps it when freed, so every
//! reply page-faulted its buffers in again, in the reader and in the
//! handling thread alike, which then took the cores the reader and the
//! server needed. Kept spares are reused instead (see BENCHMARKS.md,
//! "Hot-path changes", for what this bought).

use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Emptied `Vec<T>`s kept for reuse, up to `max_bytes` of capacity in all.
pub(crate) struct Spares<T> {
    kept: Mutex<Vec<Vec<T>>>,
    max_bytes: usize,
}

impl<T> Spares<T> {
    /// Keeps spares of up to `max_bytes` of capacity in all.
    pub(crate) const fn new(max_bytes: usize) -> Spares<T> {
        Spares {
            kept: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// An empty `Vec` with room for at least `capacity` items: the
    /// smallest spare that has it and is at most a quarter larger, else a
    /// new one. (Memory budgets count a buffer's capacity: a small read
    /// handed a large spare would count as large.)
    pub(crate) fn take(&self, capacity: usize) -> Vec<T> {
        let largest = capacity.saturating_add(capacity / 4);
        let mut kept = self.lock();
        let fitting = kept
            .iter()
            .enumerate()
            .filter(|(_, v)| (capacity..=largest).contains(&v.capacity()))
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        match fitting {
            Some(i) => kept.swap_remove(i),
            None => Vec::with_capacity(capacity),
        }
    }

    /// Empties `spare` and keeps it, making room by dropping smaller spares
    /// when the bytes kept would pass the limit; dropped when it is itself
    /// the smallest.
    pub(crate) fn give(&self, mut spare: Vec<T>) {
        // The items are dropped outside the lock.
        spare.clear();
        let bytes = |v: &Vec<T>| v.capacity() * size_of::<T>().max(1);
        if spare.capacity() == 0 || bytes(&spare) > self.max_bytes {
            return;
        }
        let mut dropped = Vec::new();
        let mut kept = self.lock();
        let mut total: usize = kept.iter().map(bytes).sum::<usize>() + bytes(&spare);
        while total > self.max_bytes {
            let smallest = kept
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, v)| (i, v.capacity()));
            match smallest {
                Some((i, capacity)) if capacity < spare.capacity() => {
                    let old = kept.swap_remove(i);
                    total -= bytes(&old);
                    dropped.push(old);
                }
                _ => return,
            }
        }
        kept.push(spare);
        drop(kept);
        drop(dropped);
    }

    /// The capacity of the spares kept, in bytes.
    #[cfg(test)]
    pub(crate) fn kept_bytes(&self) -> usize {
        self.lock()
            .iter()
            .map(|v| v.capacity() * size_of::<T>())
            .sum()
    }

    /// The lock, even if a thread panicked holding it (spares are only
    /// reused, never trusted: each is emptied before it is kept).
    fn lock(&self) -> MutexGuard<'_, Vec<Vec<T>>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> fmt::Debug for Spares<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spares")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_given_back_is_taken_again_when_large_enough() {
        let spares = Spares::<u8>::new(1 << 20);
        let mut v = spares.take(1000);
        assert!(v.capacity() >= 1000);
        v.extend_from_slice(b"old contents");
        let at = v.as_ptr();
        spares.give(v);
        let again = spares.take(900);
        assert_eq!(again.as_ptr(), at, "the spare is reused");
        assert!(again.is_empty(), "and handed out empty");
        assert_eq!(spares.kept_bytes(), 0);
        spares.give(again);
        assert!(spares.take(2000).capacity() >= 2000, "too small: a new one");
        let small = spares.take(500);
        assert_ne!(small.as_ptr(), at, "over a quarter too large: a new one");
        assert!(spares.kept_bytes() >= 1000, "and the spare is still kept");
    }

    #[test]
    fn the_smallest_spare_that_fits_is_taken() {
        let spares = Spares::<u8>::new(1 << 20);
        for n in [1200, 1000, 1100] {
            spares.give(Vec::with_capacity(n));
        }
        assert_eq!(spares.take(1050).capacity(), 1100);
        assert_eq!(spares.take(960).capacity(), 1000);
        assert_eq!(spares.take(960).capacity(), 1200);
    }

    #[test]
    fn spares_stay_within_their_bytes_and_larger_ones_displace_smaller() {
        let spares = Spares::<u64>::new(10_000);
        spares.give(Vec::with_capacity(500)); // 4,000 bytes
        spares.give(Vec::with_capacity(500));
        assert_eq!(spares.kept_bytes(), 8_000);
        spares.give(Vec::with_capacity(400)); // smaller than both: dropped
        assert_eq!(spares.kept_bytes(), 8_000);
        spares.give(Vec::with_capacity(1000)); // 8,000: displaces both
        assert_eq!(spares.kept_bytes(), 8_000);
        assert_eq!(spares.take(1000).capacity(), 1000);
        spares.give(Vec::with_capacity(2000)); // above the limit alone
        assert_eq!(spares.kept_bytes(), 0);
    }
}
