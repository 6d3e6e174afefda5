//! Finding the records a handler keeps rejecting: halve the rejected part,
//! then halve again, in order. Pure: it knows nothing of records, shards
//! or handlers, only of index ranges.

use std::ops::Range;

/// Splits `0..n`, a range `attempt` already failed on with `error`, into
/// the smallest parts `attempt` rejects, in order: a half is tried, and
/// halved again if it fails, down to single indexes, each passed to
/// `reject` with the error it failed with. Parts `attempt` accepted and
/// indexes `reject` returned `Ok` for are done; the first `Err` of
/// `reject` stops the search there, and is returned with its index:
/// every index before it is done, none after it was tried.
///
/// For `k` rejected indexes, `attempt` is called at most
/// `2·k·⌈log2 n⌉` times (two halves per level of each failing path).
pub(crate) fn bisect<E, F>(
    n: usize,
    error: E,
    attempt: &mut impl FnMut(Range<usize>) -> Result<(), E>,
    reject: &mut impl FnMut(usize, E) -> Result<(), F>,
) -> Result<(), (usize, F)> {
    split(0..n, error, attempt, reject)
}

fn split<E, F>(
    range: Range<usize>,
    error: E,
    attempt: &mut impl FnMut(Range<usize>) -> Result<(), E>,
    reject: &mut impl FnMut(usize, E) -> Result<(), F>,
) -> Result<(), (usize, F)> {
    if range.len() <= 1 {
        return match range.start < range.end {
            true => reject(range.start, error).map_err(|f| (range.start, f)),
            false => Ok(()),
        };
    }
    let middle = range.start + range.len() / 2;
    // Left first: records are handed on in order.
    for half in [range.start..middle, middle..range.end] {
        if let Err(error) = attempt(half.clone()) {
            split(half, error, attempt, reject)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the bisect over `n` indexes of which `poison` fail; returns
    /// the accepted indexes in the order they were accepted, the rejected
    /// ones, and the number of attempts.
    fn run(n: usize, poison: &[usize]) -> (Vec<usize>, Vec<usize>, usize) {
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        let mut calls = 0;
        let result = bisect(
            n,
            "whole",
            &mut |range: Range<usize>| {
                calls += 1;
                if poison.iter().any(|p| range.contains(p)) {
                    return Err("bad");
                }
                accepted.extend(range);
                Ok(())
            },
            &mut |index, error| {
                assert_eq!(error, if n == 1 { "whole" } else { "bad" });
                rejected.push(index);
                Ok::<(), ()>(())
            },
        );
        assert_eq!(result, Ok(()));
        (accepted, rejected, calls)
    }

    fn bound(n: usize, k: usize) -> usize {
        2 * k * (n as f64).log2().ceil() as usize
    }

    #[test]
    fn isolates_each_poison_and_accepts_the_rest_in_order() {
        for (n, poison) in [
            (1000, vec![17, 901]),
            (1000, vec![0]),
            (1000, vec![999]),
            (1000, vec![500, 501]),
            (7, vec![3]),
            (2, vec![0, 1]),
            (1, vec![0]),
            (1024, vec![1, 2, 3, 1000]),
        ] {
            let (accepted, rejected, calls) = run(n, &poison);
            assert_eq!(rejected, poison, "n={n}");
            let expected: Vec<usize> = (0..n).filter(|i| !poison.contains(i)).collect();
            assert_eq!(accepted, expected, "n={n} poison={poison:?}");
            let k = poison.len();
            assert!(
                calls <= bound(n, k),
                "n={n} k={k}: {calls} calls, bound {}",
                bound(n, k)
            );
        }
    }

    #[test]
    fn calls_stay_within_two_k_log_n_for_every_single_poison() {
        let n = 1000;
        let mut most = 0;
        for p in 0..n {
            let (_, rejected, calls) = run(n, &[p]);
            assert_eq!(rejected, vec![p]);
            assert!(calls <= bound(n, 1), "poison at {p}: {calls} calls");
            most = most.max(calls);
        }
        // A power of two meets 2·log2 n exactly, no rounding.
        let (_, _, calls) = run(1024, &[1023]);
        assert_eq!(calls, 2 * 10);
        assert!(most >= 2 * 9, "{most}");
    }

    #[test]
    fn nothing_rejected_when_every_half_passes() {
        // A failure that does not come back (transient, or the records
        // only fail together): nothing is dead-lettered.
        let (accepted, rejected, calls) = run(8, &[]);
        assert_eq!(accepted, (0..8).collect::<Vec<_>>());
        assert!(rejected.is_empty());
        assert_eq!(calls, 2);
    }

    #[test]
    fn a_failed_reject_stops_there_and_nothing_after_is_tried() {
        let mut tried = Vec::new();
        let result = bisect(
            100,
            "whole",
            &mut |range: Range<usize>| {
                tried.push(range.clone());
                if range.contains(&40) || range.contains(&60) {
                    return Err("bad");
                }
                Ok(())
            },
            &mut |index, _| {
                if index == 40 {
                    Err("dead letter down")
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(result, Err((40, "dead letter down")));
        assert!(tried.iter().all(|r| r.start <= 40), "{tried:?}");
        // Everything before 40 was accepted.
        let accepted: usize = tried
            .iter()
            .filter(|r| !r.contains(&40))
            .map(|r| r.len())
            .sum();
        assert_eq!(accepted, 40);
    }

    #[test]
    fn empty_range_needs_no_call() {
        let result = bisect(
            0,
            (),
            &mut |_| -> Result<(), ()> { panic!("no call expected") },
            &mut |_, _| -> Result<(), ()> { panic!("no reject expected") },
        );
        assert_eq!(result, Ok(()));
    }
}
