//! The credentials cache: kept until shortly before expiry, refreshed by one
//! caller while the others keep using the cached credentials.

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::{Clock, Credentials};
use crate::{Error, Result};

/// Temporary credentials are refreshed this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Credentials without an expiry are looked up again after this long, so
/// that a rotated key in the environment or the files is picked up.
const STATIC_REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Fresh credentials are kept at least this long (unless they expire sooner),
/// so that a source handing out short-lived credentials is not asked again
/// on every request.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// After a failed refresh while the current credentials are still valid,
/// wait this long before trying again.
const RETRY_AFTER_FAILED_REFRESH: Duration = Duration::from_secs(10);

/// Cached credentials and the refresh protocol around them.
///
/// Credentials are kept until 5 minutes before they expire (credentials
/// without an expiry are looked up again every 15 minutes). Inside that
/// window one caller refreshes while the others keep using the cached
/// credentials; only once they have expired do callers wait for the
/// refresh. If a refresh fails while the cached credentials are still
/// valid, they stay in use and a warning is logged.
pub(crate) struct CredentialsCache {
    clock: Clock,
    state: Mutex<State>,
    refreshed: Condvar,
}

#[derive(Default)]
struct State {
    entry: Option<Cached>,
    /// True while one caller is looking up new credentials.
    refreshing: bool,
    /// Counts finished refreshes, so that a caller waiting for one can tell
    /// when it is over.
    generation: u64,
    /// Why the last refresh failed, for callers that waited for it.
    last_error: Option<String>,
}

struct Cached {
    credentials: Credentials,
    source: &'static str,
    refresh_at: SystemTime,
}

impl Cached {
    fn new(credentials: Credentials, source: &'static str, now: SystemTime) -> Cached {
        let refresh_at = match credentials.expires_at() {
            None => now + STATIC_REFRESH_INTERVAL,
            Some(expiry) => expiry
                .checked_sub(REFRESH_BEFORE_EXPIRY)
                .unwrap_or(expiry)
                .max(now + MIN_REFRESH_INTERVAL)
                .min(expiry),
        };
        Cached {
            credentials,
            source,
            refresh_at,
        }
    }

    fn is_valid(&self, now: SystemTime) -> bool {
        self.credentials.expires_at().is_none_or(|e| now < e)
    }
}

impl CredentialsCache {
    pub(crate) fn new(clock: Clock) -> CredentialsCache {
        CredentialsCache {
            clock,
            state: Mutex::new(State::default()),
            refreshed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the cache inconsistent: every
        // update is a single assignment.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached credentials, or those `resolve` finds (named after the
    /// source it reports) when none are cached or they are due for refresh.
    pub(crate) fn get(
        &self,
        resolve: impl FnOnce() -> Result<(Credentials, &'static str)>,
    ) -> Result<Credentials> {
        let mut cache = self.lock();
        let mut waited_on: Option<u64> = None;
        loop {
            let now = (self.clock)();
            if let Some(entry) = &cache.entry {
                if entry.is_valid(now) {
                    if now < entry.refresh_at || cache.refreshing {
                        return Ok(entry.credentials.clone());
                    }
                    // Due for refresh and nobody is at it: this caller does
                    // it, while others keep using the cached credentials.
                    break;
                }
            }
            if let Some(generation) = waited_on {
                if generation != cache.generation && !cache.refreshing {
                    // The refresh we waited for failed.
                    let why = cache.last_error.clone().unwrap_or_default();
                    return Err(Error::Credentials(format!("refresh failed: {why}")));
                }
            }
            if !cache.refreshing {
                break;
            }
            waited_on = Some(cache.generation);
            cache = self
                .refreshed
                .wait(cache)
                .unwrap_or_else(|p| p.into_inner());
        }
        cache.refreshing = true;
        drop(cache);

        // If the lookup panics, clear the flag so that waiters do not hang.
        struct Reset<'a>(&'a CredentialsCache, bool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                if self.1 {
                    let mut cache = self.0.lock();
                    cache.refreshing = false;
                    cache.generation = cache.generation.wrapping_add(1);
                    cache.last_error = Some("the credential lookup panicked".into());
                    self.0.refreshed.notify_all();
                }
            }
        }
        let mut reset = Reset(self, true);
        let result = resolve();
        reset.1 = false;
        self.finish_refresh(result)
    }

    /// Ends a refresh: stores its result and wakes the callers waiting for it.
    fn finish_refresh(&self, result: Result<(Credentials, &'static str)>) -> Result<Credentials> {
        let now = (self.clock)();
        let mut cache = self.lock();
        cache.refreshing = false;
        cache.generation = cache.generation.wrapping_add(1);
        self.refreshed.notify_all();
        match result {
            Ok((credentials, source)) => {
                cache.last_error = None;
                cache.entry = Some(Cached::new(credentials.clone(), source, now));
                Ok(credentials)
            }
            Err(e) => {
                if let Some(entry) = cache.entry.as_mut() {
                    if entry.is_valid(now) {
                        let expiry = entry.credentials.expires_at();
                        log::warn!(
                            "could not refresh AWS credentials (still using those from {} \
                             for access key {}, valid until {}): {e}",
                            entry.source,
                            entry.credentials.access_key_id(),
                            expiry.map_or_else(
                                || "revoked".to_string(),
                                |t| crate::time::format_rfc3339(t, false)
                            ),
                        );
                        let retry = now + RETRY_AFTER_FAILED_REFRESH;
                        entry.refresh_at = expiry.map_or(retry, |x| retry.min(x));
                        return Ok(entry.credentials.clone());
                    }
                }
                cache.entry = None;
                cache.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// Shows the source, access key id and expiry of the cached credentials
/// (never a secret), or `<busy>` while the cache is locked.
impl fmt::Debug for CredentialsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state.try_lock() {
            Ok(cache) => {
                let cached = cache.entry.as_ref().map(|e| {
                    (
                        e.source,
                        e.credentials.access_key_id().to_string(),
                        e.credentials.expires_at(),
                    )
                });
                fmt::Debug::fmt(&cached, f)
            }
            Err(_) => f.write_str("<busy>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::test_server::FakeServer;
    use super::super::test_support::*;
    use super::*;
    use crate::aws::credentials::ProvideCredentials;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    #[test]
    fn expiring_credentials_are_refreshed() {
        let server = imds_server(Arc::new(AtomicBool::new(false)));
        let secs = Arc::new(AtomicU64::new(T0));
        let c = chain_at(
            &[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &server.url),
            ],
            &secs,
        );
        c.credentials().unwrap();
        assert_eq!(server.hits(), 3);
        // 54 minutes later (expiry at 60): still cached.
        secs.store(T0 + 54 * 60, Ordering::SeqCst);
        c.credentials().unwrap();
        assert_eq!(server.hits(), 3);
        // Inside the 5-minute window: refreshed.
        secs.store(T0 + 56 * 60, Ordering::SeqCst);
        c.credentials().unwrap();
        assert_eq!(server.hits(), 6);
    }

    #[test]
    fn static_credentials_are_cached() {
        let (config, creds) = write_files(
            "",
            "[default]\naws_access_key_id = A\naws_secret_access_key = S\n",
        );
        let secs = Arc::new(AtomicU64::new(T0));
        let c = chain_at(
            &[
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ],
            &secs,
        );
        assert_eq!(c.credentials().unwrap().access_key_id(), "A");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = B\naws_secret_access_key = S\n",
        )
        .unwrap();
        assert_eq!(c.credentials().unwrap().access_key_id(), "A");
        secs.store(T0 + 16 * 60, Ordering::SeqCst);
        assert_eq!(c.credentials().unwrap().access_key_id(), "B");
    }

    #[test]
    fn failed_refresh_keeps_valid_credentials() {
        let fail = Arc::new(AtomicBool::new(false));
        let server = imds_server(fail.clone());
        let secs = Arc::new(AtomicU64::new(T0));
        let c = chain_at(
            &[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &server.url),
            ],
            &secs,
        );
        let first = c.credentials().unwrap();
        fail.store(true, Ordering::SeqCst);
        secs.store(T0 + 57 * 60, Ordering::SeqCst);
        assert_eq!(c.credentials().unwrap(), first);
        assert_eq!(server.hits(), 6, "a refresh was attempted");
        // The next attempt waits a little rather than hammering the source.
        assert_eq!(c.credentials().unwrap(), first);
        assert_eq!(server.hits(), 6);
        secs.store(T0 + 57 * 60 + 11, Ordering::SeqCst);
        assert_eq!(c.credentials().unwrap(), first);
        assert_eq!(server.hits(), 9);
        // Once expired, the failure surfaces.
        secs.store(T0 + 61 * 60, Ordering::SeqCst);
        let err = c.credentials().unwrap_err();
        assert!(err.to_string().contains("HTTP 500"), "{err}");
        // And recovery works.
        fail.store(false, Ordering::SeqCst);
        assert_eq!(c.credentials().unwrap().access_key_id(), "IMDS");
    }

    /// A container endpoint that holds each request until released.
    struct Gate {
        released: Mutex<bool>,
        cond: Condvar,
    }

    fn gated_container(
        expiry: &'static str,
    ) -> (FakeServer, Arc<Gate>, crossbeam_channel::Receiver<()>) {
        let gate = Arc::new(Gate {
            released: Mutex::new(true),
            cond: Condvar::new(),
        });
        let (arrived_tx, arrived_rx) = crossbeam_channel::unbounded();
        let g = gate.clone();
        let count = Arc::new(AtomicU64::new(0));
        let server = FakeServer::start(move |_| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let _ = arrived_tx.send(());
            let mut released = g.released.lock().unwrap();
            while !*released {
                released = g.cond.wait(released).unwrap();
            }
            (200, creds_json(&format!("KEY{n}"), expiry))
        });
        (server, gate, arrived_rx)
    }

    fn set_gate(gate: &Gate, open: bool) {
        *gate.released.lock().unwrap() = open;
        gate.cond.notify_all();
    }

    #[test]
    fn refresh_window_does_not_block_other_callers() {
        let (server, gate, arrived) = gated_container("2030-01-01T01:00:00Z");
        let secs = Arc::new(AtomicU64::new(T0));
        let full = format!("{}/creds", server.url);
        let c = Arc::new(chain_at(
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full)],
            &secs,
        ));
        assert_eq!(c.credentials().unwrap().access_key_id(), "KEY0");
        arrived.recv().unwrap();

        set_gate(&gate, false);
        secs.store(T0 + 56 * 60, Ordering::SeqCst);
        let refresher = {
            let c = c.clone();
            std::thread::spawn(move || c.credentials().unwrap())
        };
        arrived.recv().unwrap(); // the refresh is in flight, held by the gate
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            let c = c.clone();
            std::thread::spawn(move || tx.send(c.credentials().unwrap()).unwrap());
        }
        let other = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a caller blocked behind the refresh");
        assert_eq!(other.access_key_id(), "KEY0");
        set_gate(&gate, true);
        assert_eq!(refresher.join().unwrap().access_key_id(), "KEY1");
        assert_eq!(c.credentials().unwrap().access_key_id(), "KEY1");
        assert_eq!(server.hits(), 2);
    }

    #[test]
    fn expired_credentials_make_callers_wait_for_one_refresh() {
        let (server, gate, arrived) = gated_container("2030-01-01T01:00:00Z");
        let secs = Arc::new(AtomicU64::new(T0));
        let full = format!("{}/creds", server.url);
        let c = Arc::new(chain_at(
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full)],
            &secs,
        ));
        set_gate(&gate, false);
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.credentials().unwrap())
            })
            .collect();
        arrived.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        set_gate(&gate, true);
        for caller in callers {
            assert_eq!(caller.join().unwrap().access_key_id(), "KEY0");
        }
        assert_eq!(server.hits(), 1, "only one caller refreshed");
    }
}
