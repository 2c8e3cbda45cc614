//! The one place that reads wall time. Everything that needs "now" (token issue and expiry,
//! lockouts, revocation lifetimes) takes it from a [`Clock`], so tests can move time without
//! sleeping. Two readings do not follow a test's clock, and say so: [`system_now`], for write
//! stamps that replicas compare with each other, and [`monotonic`], for how long something
//! took. Clippy refuses `Utc::now`, `SystemTime::now` and `Instant::now` anywhere else
//! (`clippy.toml`).
//!
//! Layer: uses nothing of Keystone's.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// A shared clock, as the services hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        system_now()
    }
}

/// The machine's time, whatever clock the server runs on: for stamps that other replicas read
/// (when a row was written, for their catch-up), never for a decision about a token.
#[allow(clippy::disallowed_methods)]
pub fn system_now() -> DateTime<Utc> {
    Utc::now()
}

/// A monotonic instant, for measuring how long something took (timeouts, breakers, metrics).
#[allow(clippy::disallowed_methods)]
pub fn monotonic() -> Instant {
    Instant::now()
}

/// A clock that only moves when told to: for tests and benchmarks that need to cross an
/// expiry without waiting for it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::seconds(90));
        assert_eq!(clock.now(), start + Duration::seconds(90));
        let shared = clock.clone();
        shared.set(start);
        assert_eq!(clock.now(), start);
    }
}
