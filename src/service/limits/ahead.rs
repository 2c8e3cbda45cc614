//! Counting ahead of Redis. Asking Redis on every call makes a rate limit cost a round trip;
//! for a limit whose burst is large that buys nothing, since no single call decides whether
//! it is exceeded. So each replica keeps a view of the keys it has counted: the count as Redis
//! last told it (the theoretical arrival time of GCRA), plus the calls it admitted since. It
//! admits on that view up to a sixteenth of the burst ([`AHEAD_SHARE`]) before it must ask
//! Redis again, and tells Redis what it admitted every [`SETTLE_EVERY`].
//!
//! The view lags the cluster's count (other replicas only add to it, and Redis's answer is
//! taken as of when it was asked), so a refusal on the view is right, and what an admission
//! can be wrong by is bounded: across N replicas a key's count passes its quota by at most
//! N × ⌊burst / 16⌋ calls. Calls whose telling timed out are let go rather than told twice
//! (Redis may have counted them): the view then holds up to a share Redis may not. A limit with a burst under
//! 16 (the login and registration limits) asks Redis on every call and never overshoots.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The share of a burst a replica may admit before it asks Redis: one sixteenth.
pub(super) const AHEAD_SHARE: u32 = 16;
/// How often admitted calls are told to Redis.
pub const SETTLE_EVERY: Duration = Duration::from_millis(50);
/// The most keys viewed at once; past it, new keys ask Redis on every call.
const MAX_VIEWS: usize = 65_536;

/// A key as counted: its name in Redis and its limit's quota.
#[derive(Debug, Clone)]
pub(super) struct Counted {
    /// `<kind>:<value>`.
    pub key: String,
    /// The time one call uses up.
    pub interval: Duration,
    /// How many calls may come at once.
    pub burst: u32,
}

impl Counted {
    /// How many calls this replica may admit before it asks Redis (0: ask on every call).
    fn ahead(&self) -> u32 {
        self.burst / AHEAD_SHARE
    }

    /// How far a count may run ahead of now and still admit a call.
    fn tolerance(&self) -> Duration {
        self.interval.saturating_mul(self.burst.saturating_sub(1))
    }
}

/// What the views say of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Admitted and counted here, to be told to Redis.
    Admitted,
    /// Refused by the limit at this index, with the wait.
    Refused(usize, Duration),
    /// Redis must decide: a key is unknown here, its limit is small, or this replica has
    /// admitted its share already.
    AskRedis,
}

/// One key's view.
#[derive(Debug, Clone, Copy)]
struct View {
    /// When the key's count will have drained: Redis's as last heard, plus what this replica
    /// admitted since.
    tat: Instant,
    interval: Duration,
    burst: u32,
    /// Calls admitted here and not yet sent to Redis.
    unsettled: u32,
    /// Calls sent to Redis whose answer has not come.
    sending: u32,
}

/// Calls admitted here, on their way to Redis.
#[derive(Debug, Clone)]
pub(super) struct Settlement {
    /// The key and its quota.
    pub counted: Counted,
    /// How many calls are told.
    pub sent: u32,
}

/// This replica's views of the keys it counts.
#[derive(Debug, Default)]
pub(super) struct Views {
    views: Mutex<HashMap<String, View>>,
}

impl Views {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, View>> {
        self.views.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides a call on the views, counted against every key or against none.
    pub(super) fn admit(&self, counted: &[Counted], now: Instant) -> Verdict {
        let mut views = self.lock();
        let mut refused: Option<(usize, Duration)> = None;
        for (index, key) in counted.iter().enumerate() {
            let Some(view) = views.get(&key.key) else {
                return Verdict::AskRedis;
            };
            if view.unsettled.saturating_add(view.sending) >= key.ahead() {
                return Verdict::AskRedis;
            }
            let debt = view.tat.saturating_duration_since(now);
            if let Some(wait) = debt.checked_sub(key.tolerance())
                && !wait.is_zero()
                && refused.is_none_or(|(_, longest)| wait > longest)
            {
                refused = Some((index, wait));
            }
        }
        if let Some((index, wait)) = refused {
            return Verdict::Refused(index, wait);
        }
        for key in counted {
            if let Some(view) = views.get_mut(&key.key) {
                view.tat = view.tat.max(now) + key.interval;
                view.unsettled += 1;
            }
        }
        Verdict::Admitted
    }

    /// Takes what these keys admitted, to send with a question to Redis.
    pub(super) fn take(&self, counted: &[Counted]) -> Vec<Settlement> {
        let mut views = self.lock();
        counted
            .iter()
            .map(|key| {
                let sent = views.get_mut(&key.key).map_or(0, |view| {
                    let sent = view.unsettled;
                    view.unsettled = 0;
                    view.sending += sent;
                    sent
                });
                Settlement {
                    counted: key.clone(),
                    sent,
                }
            })
            .collect()
    }

    /// Takes what every key admitted, to tell Redis.
    pub(super) fn take_all(&self) -> Vec<Settlement> {
        let mut views = self.lock();
        views
            .iter_mut()
            .filter(|(_, view)| view.unsettled > 0)
            .map(|(key, view)| {
                let sent = view.unsettled;
                view.unsettled = 0;
                view.sending += sent;
                Settlement {
                    counted: Counted {
                        key: key.clone(),
                        interval: view.interval,
                        burst: view.burst,
                    },
                    sent,
                }
            })
            .collect()
    }

    /// Redis took `settlements` and answered each key's debt, taken as of `now` (when it was
    /// asked: the answer is as of later, so the view lags rather than leads).
    pub(super) fn heard(&self, settlements: &[Settlement], debts: &[Duration], now: Instant) {
        let mut views = self.lock();
        for (settlement, debt) in settlements.iter().zip(debts) {
            let key = &settlement.counted;
            if key.ahead() == 0 {
                continue;
            }
            let full = views.len() >= MAX_VIEWS;
            let view = match views.get_mut(&key.key) {
                Some(view) => view,
                None if full => continue,
                None => views.entry(key.key.clone()).or_insert(View {
                    tat: now,
                    interval: key.interval,
                    burst: key.burst,
                    unsettled: 0,
                    sending: 0,
                }),
            };
            view.sending = view.sending.saturating_sub(settlement.sent);
            // What Redis holds now, plus what was admitted here while it answered.
            let heard = now + *debt + key.interval.saturating_mul(view.unsettled);
            view.tat = view.tat.max(heard);
        }
    }

    /// Redis could not be told. With `put_back` (nothing reached it) the calls are told with
    /// the next settlement; otherwise they are let go, since Redis may have counted them.
    pub(super) fn unheard(&self, settlements: &[Settlement], put_back: bool) {
        let mut views = self.lock();
        for settlement in settlements {
            if let Some(view) = views.get_mut(&settlement.counted.key) {
                view.sending = view.sending.saturating_sub(settlement.sent);
                if put_back {
                    view.unsettled = view.unsettled.saturating_add(settlement.sent);
                }
            }
        }
    }

    /// Forgets keys whose count has drained and that have nothing to tell.
    pub(super) fn forget_idle(&self, now: Instant) {
        let mut views = self.lock();
        views.retain(|_, view| view.tat > now || view.unsettled > 0 || view.sending > 0);
        views.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(burst: u32) -> Counted {
        Counted {
            key: "ip:10.0.0.1".to_owned(),
            interval: Duration::from_secs(1),
            burst,
        }
    }

    /// Asks "Redis" (an empty count) once, as `RateLimits::check` does.
    fn heard_fresh(views: &Views, counted: &Counted, now: Instant) {
        let taken = views.take(std::slice::from_ref(counted));
        // Redis counted the asking call: one interval of debt.
        views.heard(&taken, &[counted.interval], now);
    }

    #[test]
    fn an_unknown_key_or_a_small_burst_asks_redis() {
        let views = Views::default();
        let now = crate::clock::monotonic();
        assert_eq!(views.admit(&[key(64)], now), Verdict::AskRedis);
        heard_fresh(&views, &key(8), now);
        assert_eq!(views.admit(&[key(8)], now), Verdict::AskRedis);
    }

    #[test]
    fn a_replica_admits_its_share_then_asks_and_tells_redis_what_it_admitted() {
        let views = Views::default();
        let now = crate::clock::monotonic();
        let counted = key(64);
        heard_fresh(&views, &counted, now);
        // A sixteenth of 64: four calls ahead of Redis.
        for _ in 0..4 {
            assert_eq!(
                views.admit(std::slice::from_ref(&counted), now),
                Verdict::Admitted
            );
        }
        assert_eq!(
            views.admit(std::slice::from_ref(&counted), now),
            Verdict::AskRedis
        );
        let taken = views.take_all();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].sent, 4);
        // Sent, not answered yet: still its share out.
        assert_eq!(
            views.admit(std::slice::from_ref(&counted), now),
            Verdict::AskRedis
        );
        views.heard(&taken, &[Duration::from_secs(5)], now);
        assert_eq!(
            views.admit(std::slice::from_ref(&counted), now),
            Verdict::Admitted
        );
        assert!(views.take_all()[0].sent == 1);
    }

    #[test]
    fn a_count_heard_past_the_burst_is_refused_here_with_the_wait() {
        let views = Views::default();
        let now = crate::clock::monotonic();
        let counted = key(32);
        let taken = views.take(std::slice::from_ref(&counted));
        // Other replicas spent the burst: the count runs 40 s ahead; 31 s are tolerated.
        views.heard(&taken, &[Duration::from_secs(40)], now);
        assert_eq!(
            views.admit(std::slice::from_ref(&counted), now),
            Verdict::Refused(0, Duration::from_secs(9))
        );
        // Nothing was counted for the refusal.
        assert!(views.take_all().is_empty());
        // Once the count drains below the tolerance, calls are admitted again.
        let later = now + Duration::from_secs(10);
        assert_eq!(
            views.admit(std::slice::from_ref(&counted), later),
            Verdict::Admitted
        );
    }

    #[test]
    fn what_never_reached_redis_is_told_next_time_and_drained_keys_are_forgotten() {
        let views = Views::default();
        let now = crate::clock::monotonic();
        let counted = key(64);
        heard_fresh(&views, &counted, now);
        assert_eq!(
            views.admit(std::slice::from_ref(&counted), now),
            Verdict::Admitted
        );
        let taken = views.take_all();
        views.unheard(&taken, true);
        let again = views.take_all();
        assert_eq!(again[0].sent, 1);
        views.unheard(&again, true);
        // Not forgotten while calls wait to be told.
        views.forget_idle(now + Duration::from_secs(3600));
        let last = views.take_all();
        assert_eq!(last.len(), 1);
        views.heard(&last, &[Duration::ZERO], now);
        views.forget_idle(now + Duration::from_secs(3600));
        assert_eq!(
            views.admit(std::slice::from_ref(&counted), now),
            Verdict::AskRedis
        );
    }
}
