//! Refused admin calls are audit events, but nobody may grow the audit trail at will by
//! sending them: of the refusals of one call (action) for one caller (the token's subject, or
//! none) from one address, the first of each minute is written at once and the rest of that
//! minute's are counted, then written as one event saying how many there were. Memory is
//! bounded: past [`MAX_WINDOWS`] windows in one minute, the others share one.

use std::{collections::HashMap, sync::Mutex};

use chrono::{DateTime, Utc};

use crate::domain::AuditRecord;

/// How long one address's window lasts.
const WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// The most windows at once.
const MAX_WINDOWS: usize = 10_000;

/// What a window counts: the address, the action and the caller.
type Key = (String, &'static str, String);

/// The key of the window all share once [`MAX_WINDOWS`] are taken.
fn overflow() -> Key {
    ("(many)".to_owned(), "admin.refused", String::new())
}

/// One address's minute.
#[derive(Debug)]
struct Window {
    started: DateTime<Utc>,
    /// The first refusal of the window, written when it came: the model of its summary.
    first: AuditRecord,
    /// Refusals after the first, not written yet.
    repeated: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<Key, Window>>,
}

impl RefusalLog {
    /// The events to write for a refusal at `now` (none, one, or the summary of a window
    /// that ended and the refusal opening the next).
    pub fn refused(&self, event: AuditRecord, now: DateTime<Utc>) -> Vec<AuditRecord> {
        let mut windows = self.lock();
        let key = (event.peer.clone(), event.action, event.actor.clone());
        let key = if windows.len() >= MAX_WINDOWS && !windows.contains_key(&key) {
            overflow()
        } else {
            key
        };
        let mut written = Vec::new();
        if let Some(window) = windows.get_mut(&key)
            && now >= window.started
            && now - window.started < WINDOW
        {
            window.repeated += 1;
            return written;
        }
        if let Some(ended) = windows.remove(&key) {
            written.extend(summary(ended));
        }
        windows.insert(
            key,
            Window {
                started: now,
                first: event.clone(),
                repeated: 0,
            },
        );
        written.push(event);
        written
    }

    /// The summaries of the windows that ended by `now`, which are forgotten.
    pub fn ended(&self, now: DateTime<Utc>) -> Vec<AuditRecord> {
        let mut windows = self.lock();
        let ended: Vec<Key> = windows
            .iter()
            .filter(|(_, window)| now < window.started || now - window.started >= WINDOW)
            .map(|(key, _)| key.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|key| windows.remove(&key))
            .filter_map(summary)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one call.
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The event that says how many refusals followed the first of a window, if any did.
fn summary(window: Window) -> Option<AuditRecord> {
    (window.repeated > 0).then(|| {
        let mut event = window
            .first
            .with_detail("repeated", window.repeated.to_string())
            .with_detail("window_started", window.started.to_rfc3339());
        event.details.remove("reason");
        event.with_detail("reason", "repeated refusals of this call from this address")
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;
    use crate::domain::Outcome;

    fn refusal(peer: &str) -> AuditRecord {
        AuditRecord::new("", "user.create", "", Outcome::Denied)
            .from_peer(peer)
            .with_detail("reason", "TOKEN_MISSING")
    }

    #[test]
    fn a_flood_from_one_address_is_one_event_a_minute_with_a_count() {
        let log = RefusalLog::default();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut written = Vec::new();
        for i in 0..10_000 {
            let now = start + chrono::TimeDelta::milliseconds(i * 10);
            written.extend(log.refused(refusal("192.0.2.1"), now));
        }
        // 100 s: a first event and a summary for the first minute, a first event for the
        // second, whose summary is written when it ends.
        assert_eq!(written.len(), 3, "{written:#?}");
        assert_eq!(written[1].details["repeated"], "5999");
        written.extend(log.ended(start + chrono::TimeDelta::minutes(3)));
        assert_eq!(written.len(), 4);
        assert_eq!(written[3].details["repeated"], "3999");
        assert!(log.ended(start + chrono::TimeDelta::minutes(10)).is_empty());
    }

    #[test]
    fn addresses_calls_and_callers_have_windows_of_their_own() {
        let log = RefusalLog::default();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(log.refused(refusal("192.0.2.1"), now).len(), 1);
        assert_eq!(log.refused(refusal("192.0.2.2"), now).len(), 1);
        assert!(log.refused(refusal("192.0.2.1"), now).is_empty());
        let mut other_call = refusal("192.0.2.1");
        other_call.action = "user.delete";
        assert_eq!(log.refused(other_call, now).len(), 1);
        let mut other_caller = refusal("192.0.2.1");
        other_caller.actor = "someone".to_owned();
        assert_eq!(log.refused(other_caller, now).len(), 1);
    }

    #[test]
    fn memory_is_bounded_by_the_number_of_windows() {
        let log = RefusalLog::default();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut written = 0;
        for i in 0..(MAX_WINDOWS + 500) {
            written += log.refused(refusal(&format!("2001:db8::{i:x}")), now).len();
        }
        assert_eq!(written, MAX_WINDOWS + 1);
        assert_eq!(log.lock().len(), MAX_WINDOWS + 1);
    }
}
