//! Startup, one rule for every service: failures that may pass (throttling,
//! 5xx, timeouts, broken connections, a lease table still being created)
//! are retried with backoff for up to a minute; the rest (a refused
//! connection, an unknown host, refused credentials, a missing stream) fail
//! at once. Every wait ends as soon as shutdown is asked for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::aws::client::backoff;
use crate::error::{Error, Result};

/// How long startup waits out failures that may pass.
pub(crate) const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

/// How often startup looks again at what is not ready yet.
const NOT_READY_POLL: Duration = Duration::from_millis(500);

/// How often a waiting thread looks at the shutdown flag.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(50);

/// Runs `attempt` until it succeeds (`Some`), fails with what cannot pass
/// or for longer than [`STARTUP_PATIENCE`] (the error), or shutdown is
/// asked for (`None`). Each retry is logged at warn with the error, which
/// names the endpoint; what is only not ready yet, at info.
pub(crate) fn until_ready<T>(
    what: &str,
    shutdown: &AtomicBool,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<Option<T>> {
    let started = Instant::now();
    let mut failures = 0;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match attempt() {
            Ok(value) => return Ok(Some(value)),
            // Something expected to come (a table being created, a
            // predecessor stopping): looked at again soon, said at info.
            Err(e @ Error::NotReady(_)) if started.elapsed() < STARTUP_PATIENCE => {
                log::info!("{what}: {e}; looking again in {NOT_READY_POLL:?}");
                if sleep_unless_shutdown(shutdown, NOT_READY_POLL) {
                    return Ok(None);
                }
            }
            Err(e) if e.may_pass() && started.elapsed() < STARTUP_PATIENCE => {
                failures += 1;
                let wait = backoff(Duration::from_millis(500), failures);
                log::warn!(
                    "{what} failed, retrying in {wait:.1?} (for up to {STARTUP_PATIENCE:?} in all): {e}"
                );
                if sleep_unless_shutdown(shutdown, wait) {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps up to `duration`, waking early when shutdown is asked for; true
/// when it was.
pub(crate) fn sleep_unless_shutdown(shutdown: &AtomicBool, duration: Duration) -> bool {
    let until = Instant::now() + duration;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(SHUTDOWN_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, TransportKind};

    fn broken() -> Error {
        Error::transport("X", "http://h", TransportKind::Broken, "reset")
    }

    #[test]
    fn waits_out_what_may_pass_and_fails_at_once_on_the_rest() {
        let shutdown = AtomicBool::new(false);
        let mut calls = 0;
        let value = until_ready("x", &shutdown, || {
            calls += 1;
            if calls < 3 { Err(broken()) } else { Ok(7) }
        });
        assert_eq!(value.unwrap(), Some(7));
        let started = Instant::now();
        let refused = until_ready("x", &shutdown, || -> Result<()> {
            Err(Error::transport(
                "X",
                "http://h",
                TransportKind::ConnectionRefused,
                "refused",
            ))
        });
        assert!(refused.is_err());
        assert!(started.elapsed() < Duration::from_millis(100), "at once");
    }

    #[test]
    fn shutdown_ends_the_wait() {
        let shutdown = std::sync::Arc::new(AtomicBool::new(false));
        let flag = shutdown.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            flag.store(true, Ordering::Relaxed);
        });
        let started = Instant::now();
        let result = until_ready("x", &shutdown, || -> Result<()> { Err(broken()) });
        assert!(matches!(result, Ok(None)), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
