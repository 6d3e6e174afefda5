//! A small, fast, non-cryptographic random source for jitter and worker ids.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // RandomState is seeded from the OS once per process and varies per instance.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() | 1
}

/// A uniformly distributed u64 (xorshift64*).
pub(crate) fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A number in `0..=max`.
pub(crate) fn up_to(max: u64) -> u64 {
    if max == u64::MAX {
        next_u64()
    } else {
        next_u64() % (max + 1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stays_in_range_and_varies() {
        let values: Vec<u64> = (0..1000).map(|_| super::up_to(9)).collect();
        assert!(values.iter().all(|&v| v <= 9));
        assert!((0..=9).all(|d| values.contains(&d)));
    }
}
