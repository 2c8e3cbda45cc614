//! Rate limits (GCRA) on the calls that check credentials or hand out tokens, so that guessing
//! passwords or secrets, spraying names and flooding the token endpoint cost the attacker
//! time, and one caller cannot take the capacity everyone else needs.
//!
//! A call names its keys (the client IP, the client id, the username asked for) and is
//! counted against all of them, or refused with `RESOURCE_EXHAUSTED` (`RATE_LIMITED`) and the
//! wait. With Redis the counts live there, so they hold across replicas, and a call refused by
//! one limit uses up none of the others; a limit with a large burst is counted ahead on this
//! replica and settled with Redis in batches ([`ahead`]). Without Redis, or while it fails,
//! each process counts on its own (governor).

mod ahead;

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter,
    clock::{Clock as _, DefaultClock},
};

pub use self::ahead::SETTLE_EVERY;
use self::ahead::{Counted, Settlement, Verdict, Views};
use crate::{
    cluster::{GcraLimit, Redis, RedisError},
    config::{LimitSettings, Quota},
    error::{Error, Reason},
};

/// What a call is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// The client IP (`server.trusted_proxies` decide which one), or the peer as text when
    /// it is no IP.
    Ip(&'a str),
    /// A client id, as presented.
    Client(&'a str),
    /// A username or email, normalized.
    Username(&'a str),
    /// Sign-ups from a client IP (`auth.registration_per_minute`).
    Registration(&'a str),
}

impl Key<'_> {
    fn kind(&self) -> Kind {
        match self {
            Key::Ip(_) => Kind::Ip,
            Key::Client(_) => Kind::Client,
            Key::Username(_) => Kind::Username,
            Key::Registration(_) => Kind::Registration,
        }
    }

    /// The value counted: an IPv6 client by its /64, which one host usually holds whole; a
    /// name or client id by a digest, so that keys stay short and Redis holds no names.
    fn value(&self) -> String {
        match self {
            Key::Ip(ip) | Key::Registration(ip) => ip_key(ip),
            Key::Client(value) | Key::Username(value) => {
                let digest =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
                digest.as_ref()[..16]
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ip,
    Client,
    Username,
    Registration,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::Client => "client",
            Kind::Username => "username",
            Kind::Registration => "registration",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Kind::Ip => "too many requests from this address",
            Kind::Client => "too many requests for this client",
            Kind::Username => "too many logins for this name",
            Kind::Registration => "too many registrations from this address",
        }
    }
}

/// One limit: its quota and the in-process counts used without Redis.
#[derive(Debug)]
struct Limit {
    interval: Duration,
    burst: u32,
    local: DefaultKeyedRateLimiter<String>,
}

impl Limit {
    fn new(quota: Quota) -> Option<Self> {
        let interval = quota.interval()?;
        let burst = NonZeroU32::new(quota.burst).unwrap_or(NonZeroU32::MIN);
        let local = GovernorQuota::with_period(interval)?.allow_burst(burst);
        Some(Self {
            interval,
            burst: burst.get(),
            local: RateLimiter::keyed(local),
        })
    }
}

/// The rate limits of one process, over the cluster's Redis when there is one.
#[derive(Debug, Clone)]
pub struct RateLimits {
    inner: Arc<Limits>,
}

#[derive(Debug)]
struct Limits {
    ip: Option<Limit>,
    client: Option<Limit>,
    username: Option<Limit>,
    registration: Option<Limit>,
    /// The cluster's Redis, where counts are shared.
    redis: Option<Redis>,
    /// This replica's views of the counts in Redis.
    views: Views,
}

impl RateLimits {
    /// The limits of `settings`; `registration_per_minute` is the sign-up limit per IP.
    pub fn new(
        settings: &LimitSettings,
        registration_per_minute: u32,
        redis: Option<Redis>,
    ) -> Self {
        let per_minute = registration_per_minute.max(1);
        Self {
            inner: Arc::new(Limits {
                ip: Limit::new(settings.per_ip),
                client: Limit::new(settings.per_client),
                username: Limit::new(settings.per_username),
                registration: Limit::new(Quota {
                    rate: per_minute,
                    per: Duration::from_secs(60),
                    burst: per_minute,
                }),
                redis,
                views: Views::default(),
            }),
        }
    }

    fn limit(&self, kind: Kind) -> Option<&Limit> {
        match kind {
            Kind::Ip => self.inner.ip.as_ref(),
            Kind::Client => self.inner.client.as_ref(),
            Kind::Username => self.inner.username.as_ref(),
            Kind::Registration => self.inner.registration.as_ref(),
        }
    }

    /// Counts a call under `keys`, or refuses it with `RESOURCE_EXHAUSTED` (`RATE_LIMITED`)
    /// and how long to wait. Keys whose limit is off are not counted.
    pub async fn check(&self, keys: &[Key<'_>]) -> Result<(), Error> {
        let counted: Vec<(Kind, String, &Limit)> = keys
            .iter()
            .filter_map(|key| {
                let limit = self.limit(key.kind())?;
                Some((key.kind(), key.value(), limit))
            })
            .collect();
        if counted.is_empty() {
            return Ok(());
        }
        let refused = match self.check_in_redis(&counted).await {
            Some(refused) => refused,
            None => Self::check_locally(&counted),
        };
        match refused {
            None => Ok(()),
            Some((kind, wait)) => {
                metrics::counter!("keystone_rate_limited_total", "limit" => kind.label())
                    .increment(1);
                // A whole second at least: clients and Retry-After count in seconds.
                let wait = Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
                    .max(Duration::from_secs(1));
                Err(Error::ResourceExhausted {
                    reason: Reason::RateLimited,
                    message: format!("{}; retry in {}s", kind.message(), wait.as_secs()),
                    retry_after: Some(wait),
                })
            }
        }
    }

    /// The cluster-wide verdict (on this replica's view when it may decide alone, see
    /// [`ahead`]), or `None` without Redis or while it fails.
    async fn check_in_redis(
        &self,
        counted: &[(Kind, String, &Limit)],
    ) -> Option<Option<(Kind, Duration)>> {
        let redis = self.inner.redis.as_ref()?;
        let kind_of = |index: usize| counted.get(index).map_or(Kind::Ip, |(kind, ..)| *kind);
        let keys: Vec<Counted> = counted
            .iter()
            .map(|(kind, value, limit)| Counted {
                key: format!("{}:{value}", kind.label()),
                interval: limit.interval,
                burst: limit.burst,
            })
            .collect();
        match self.inner.views.admit(&keys, crate::clock::monotonic()) {
            Verdict::Admitted => return Some(None),
            Verdict::Refused(index, wait) => return Some(Some((kind_of(index), wait))),
            Verdict::AskRedis => {}
        }
        let settlements = self.inner.views.take(&keys);
        // Redis's answer is as of some moment after this: the view takes it as of now, so it
        // lags the cluster's count rather than runs ahead of it.
        let asked = crate::clock::monotonic();
        match redis.gcra(&gcra_limits(&settlements), true).await {
            Ok(answer) => {
                self.inner.views.heard(&settlements, &answer.debts, asked);
                Some(answer.refused.map(|(index, wait)| (kind_of(index), wait)))
            }
            Err(error) => {
                self.inner.views.unheard(&settlements, put_back(&error));
                tracing::debug!(error = %error, "rate limits counted in this process");
                None
            }
        }
    }

    /// Whether counts are shared on Redis (then [`Self::settle`] must run every
    /// [`SETTLE_EVERY`]).
    pub fn is_shared(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// Tells Redis the calls this replica admitted on its own views, and hears back each
    /// key's count.
    pub async fn settle(&self) {
        /// Keys per script call.
        const CHUNK: usize = 256;
        let Some(redis) = self.inner.redis.as_ref() else {
            return;
        };
        let settlements = self.inner.views.take_all();
        for chunk in settlements.chunks(CHUNK) {
            let asked = crate::clock::monotonic();
            match redis.gcra(&gcra_limits(chunk), false).await {
                Ok(answer) => self.inner.views.heard(chunk, &answer.debts, asked),
                Err(error) => {
                    self.inner.views.unheard(chunk, put_back(&error));
                    tracing::debug!(error = %error, "cannot settle rate limits with Redis yet");
                }
            }
        }
    }

    /// This process's verdict. A call refused by a later limit has used up the earlier ones.
    fn check_locally(counted: &[(Kind, String, &Limit)]) -> Option<(Kind, Duration)> {
        counted.iter().find_map(|(kind, value, limit)| {
            limit.local.check_key(value).err().map(|not_until| {
                (
                    *kind,
                    not_until.wait_time_from(DefaultClock::default().now()),
                )
            })
        })
    }

    /// Forgets the in-process counts of keys that have been quiet (bounded memory).
    pub fn forget_idle(&self) {
        for limit in [
            &self.inner.ip,
            &self.inner.client,
            &self.inner.username,
            &self.inner.registration,
        ]
        .into_iter()
        .flatten()
        {
            limit.local.retain_recent();
            limit.local.shrink_to_fit();
        }
        self.inner.views.forget_idle(crate::clock::monotonic());
    }
}

/// Whether calls whose telling failed with `error` are told again later: only when they
/// surely never reached Redis (the breaker was open). A call that timed out or lost its
/// connection may have been counted; telling it again could count it twice and refuse calls
/// the quota allows, so it is let go (the quota is then short by at most a share).
fn put_back(error: &RedisError) -> bool {
    matches!(error, RedisError::BreakerOpen)
}

/// The limits of a Redis call for `settlements`.
fn gcra_limits(settlements: &[Settlement]) -> Vec<GcraLimit<'_>> {
    settlements
        .iter()
        .map(|settlement| GcraLimit {
            key: &settlement.counted.key,
            interval: settlement.counted.interval,
            burst: settlement.counted.burst,
            admitted: settlement.sent,
        })
        .collect()
}

/// The key of a client IP: IPv4 whole, IPv6 by its /64 (IPv4-mapped IPv6 as IPv4); anything
/// that is no IP as it is.
fn ip_key(ip: &str) -> String {
    match ip.parse::<IpAddr>().map(crate::client_ip::network_of) {
        Ok(IpAddr::V4(ip)) => ip.to_string(),
        Ok(IpAddr::V6(network)) => format!("{network}/64"),
        Err(_) => ip.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(ip_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(ip_key("2001:db8:1:2::ffff"), "2001:db8:1:2::/64");
        assert_eq!(ip_key("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(ip_key("10.1.2.3"), "10.1.2.3");
        assert_eq!(ip_key(""), "");
    }

    #[test]
    fn a_local_limit_allows_its_burst_then_names_itself_and_the_wait() {
        let limit = Limit::new(Quota {
            rate: 1,
            per: Duration::from_secs(60),
            burst: 2,
        })
        .expect("the quota is on");
        let counted = [(Kind::Username, "alice".to_owned(), &limit)];
        assert_eq!(RateLimits::check_locally(&counted), None);
        assert_eq!(RateLimits::check_locally(&counted), None);
        let (kind, wait) = RateLimits::check_locally(&counted).expect("the third is refused");
        assert_eq!(kind, Kind::Username);
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        // Another name has its own count.
        let other = [(Kind::Username, "bob".to_owned(), &limit)];
        assert_eq!(RateLimits::check_locally(&other), None);
    }

    #[test]
    fn a_quota_with_rate_zero_is_off() {
        assert!(Limit::new(Quota::OFF).is_none());
    }
}
