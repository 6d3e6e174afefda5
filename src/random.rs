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

/// One step of xorshift64*: the next state and the value it yields.
fn step(mut x: u64) -> (u64, u64) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    (x, x.wrapping_mul(0x2545_F491_4F6C_DD1D))
}

/// A uniformly distributed u64 (xorshift64*).
pub(crate) fn next_u64() -> u64 {
    STATE.with(|s| {
        let (state, value) = step(s.get());
        s.set(state);
        value
    })
}

/// A seeded generator, for runs that must replay exactly (the lease
/// simulation).
#[cfg(any(test, feature = "simulation"))]
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

#[cfg(any(test, feature = "simulation"))]
impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        // Spread small seeds over the state; the state must not be 0.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let (state, value) = step(self.0);
        self.0 = state;
        value
    }

    /// A number in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
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
