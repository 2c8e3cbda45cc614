//! Redis through fred: the channel of the cluster's events, the shared counters of rate
//! limits (a GCRA script), and the marks of things used once (DPoP proofs). Nothing else in
//! Keystone sees fred.
//!
//! Redis is never the system of record (PostgreSQL is), so losing it loses nothing: every call
//! has a short budget (`revocation.redis_timeout`, 50 ms by default), counts as failed past it,
//! and a circuit breaker stops calls for a moment after repeated failures, so no task piles up
//! behind a slow Redis. Meanwhile replicas follow PostgreSQL.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fred::{
    clients::SubscriberClient,
    prelude::{
        Builder, Client, ClientLike as _, Config, EventInterface as _, LuaInterface as _,
        PubsubInterface as _, ReconnectPolicy,
    },
};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::mpsc;

/// Failures in a row that open the breaker.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open breaker refuses calls before letting one through.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// Why a Redis call did not happen or failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The breaker is open: Redis failed repeatedly just now.
    #[error("Redis is being avoided after repeated failures")]
    BreakerOpen,
    /// The call took longer than its budget.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis failed: {0}")]
    Failed(#[from] fred::error::Error),
}

/// One limit of [`Redis::gcra`].
#[derive(Debug, Clone, Copy)]
pub struct GcraLimit<'a> {
    /// The key counted, without the namespace.
    pub key: &'a str,
    /// The time one call uses up.
    pub interval: Duration,
    /// How many calls may come at once.
    pub burst: u32,
    /// Calls a replica admitted on its own since it last told Redis: counted whatever the
    /// state (they were answered).
    pub admitted: u32,
}

/// What [`Redis::gcra`] answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcraAnswer {
    /// The limit that refused the call (its index) and how long to wait.
    pub refused: Option<(usize, Duration)>,
    /// For each limit, how far its count runs ahead of now (zero: it has its whole burst).
    pub debts: Vec<Duration>,
}

/// A connection to Redis: a client for commands and a subscriber for the events channel.
#[derive(Clone)]
pub struct Redis {
    /// `cluster.name`: the prefix of the channel and keys.
    namespace: Arc<str>,
    /// `<namespace>:events`, which every replica publishes on and listens to.
    channel: Arc<str>,
    client: Client,
    subscriber: SubscriberClient,
    budget: Duration,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("channel", &self.channel)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects to `url` (`redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://`…).
    /// The connection is made in the background and remade after any loss; this returns
    /// once it is up or after `connect_wait`, whichever comes first, so a replica can start
    /// (following PostgreSQL) while Redis is down.
    pub async fn connect(
        url: &SecretString,
        namespace: &str,
        budget: Duration,
        connect_wait: Duration,
    ) -> Result<Self, fred::error::Error> {
        let mut config = Config::from_url(url.expose_secret())?;
        // Keep retrying the first connection too, rather than failing the start.
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .with_connection_config(|connection| {
                connection.connection_timeout = Duration::from_secs(2);
                connection.internal_command_timeout = Duration::from_secs(2);
                connection.max_command_attempts = 1;
            })
            .with_performance_config(|performance| {
                performance.default_command_timeout = budget;
            });
        let client = builder.build()?;
        // Subscribing may take longer than a publish's budget (after a reconnection, say).
        builder.with_performance_config(|performance| {
            performance.default_command_timeout = Duration::from_secs(2);
        });
        let subscriber = builder.build_subscriber_client()?;
        client.connect();
        subscriber.connect();
        let connected = tokio::time::timeout(connect_wait, async {
            let _ = client.wait_for_connect().await;
            let _ = subscriber.wait_for_connect().await;
        })
        .await;
        if connected.is_err() {
            tracing::warn!("Redis does not answer yet; following PostgreSQL until it does");
        }
        Ok(Self {
            namespace: namespace.into(),
            channel: format!("{namespace}:events").into(),
            client,
            subscriber,
            budget,
            breaker: Arc::new(Breaker::default()),
        })
    }

    /// Publishes `payload` on the events channel.
    pub async fn publish(&self, payload: String) -> Result<(), RedisError> {
        self.call(async {
            self.client
                .publish::<(), _, _>(&*self.channel, payload)
                .await
        })
        .await
    }

    /// Subscribes to the events channel (again after every reconnection) and sends every
    /// message's payload to `sink`. After each (re)subscription, and whenever messages may have
    /// been lost, it sends `None`: the follower must catch up from the database then. Runs
    /// until `sink` closes.
    pub async fn follow(&self, sink: mpsc::Sender<Option<String>>) {
        use tokio::sync::broadcast::error::RecvError;
        let mut messages = self.subscriber.message_rx();
        let mut reconnections = self.subscriber.reconnect_rx();
        let mut subscribed = false;
        loop {
            if !subscribed {
                match self.subscriber.subscribe(&*self.channel).await {
                    Ok(()) => {
                        subscribed = true;
                        if sink.send(None).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(error = %error, "cannot subscribe to Redis events yet");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                            () = sink.closed() => return,
                        }
                    }
                }
            }
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(message) => {
                        let Ok(payload) = message.value.convert::<String>() else {
                            continue;
                        };
                        if sink.send(Some(payload)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        if sink.send(None).await.is_err() {
                            return;
                        }
                    }
                    // The client is gone: nothing more will come; the database still will.
                    Err(RecvError::Closed) => return,
                },
                reconnected = reconnections.recv() => match reconnected {
                    // A new connection has no subscription yet.
                    Ok(_) | Err(RecvError::Lagged(_)) => subscribed = false,
                    Err(RecvError::Closed) => return,
                },
                () = sink.closed() => return,
            }
        }
    }

    /// GCRA (the generic cell rate algorithm) on several limits at once, with Redis's own
    /// clock so that every replica counts alike. Each limit first takes the calls a replica
    /// already admitted on its own ([`GcraLimit::admitted`], see [`crate::service::limits`]);
    /// then, when `count_a_call`, one more call is counted against all of them or, if any is
    /// exhausted, against none. The answer names the limit that refused it (the one with the
    /// longest wait) and how long to wait, and gives each limit's debt: how far its count
    /// runs ahead of now. Keys share one hash slot (`{namespace:limit}`), so that a Redis
    /// Cluster runs the script too.
    pub async fn gcra(
        &self,
        limits: &[GcraLimit<'_>],
        count_a_call: bool,
    ) -> Result<GcraAnswer, RedisError> {
        const SCRIPT: &str = r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
            local tats = {}
            for i, key in ipairs(KEYS) do
                local tat = tonumber(redis.call('GET', key) or now) or now
                if tat < now then tat = now end
                tats[i] = tat + tonumber(ARGV[3 * i - 1]) * tonumber(ARGV[3 * i + 1])
            end
            local wait, which = -1, 0
            if ARGV[1] == '1' then
                for i = 1, #KEYS do
                    local over = tats[i] - now - tonumber(ARGV[3 * i])
                    if over > 0 and over > wait then wait, which = over, i end
                end
                if which == 0 then
                    for i = 1, #KEYS do tats[i] = tats[i] + tonumber(ARGV[3 * i - 1]) end
                end
            end
            local answer = {wait, which}
            for i, key in ipairs(KEYS) do
                if tats[i] > now then
                    redis.call('SET', key, string.format('%d', tats[i]), 'PX',
                        math.max(1, math.ceil((tats[i] - now) / 1000)))
                end
                answer[i + 2] = tats[i] - now
            end
            return answer";
        let mut answer = GcraAnswer {
            refused: None,
            debts: Vec::new(),
        };
        if limits.is_empty() {
            return Ok(answer);
        }
        let mut keys = Vec::with_capacity(limits.len());
        let mut args = Vec::with_capacity(1 + limits.len() * 3);
        args.push(if count_a_call { "1" } else { "0" }.to_owned());
        for limit in limits {
            let interval_us = u64::try_from(limit.interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            keys.push(format!("{{{}:limit}}:{}", self.namespace, limit.key));
            args.push(interval_us.to_string());
            args.push(
                interval_us
                    .saturating_mul(u64::from(limit.burst.saturating_sub(1)))
                    .to_string(),
            );
            args.push(limit.admitted.to_string());
        }
        let reply: Vec<i64> = self
            .call(async { self.client.eval(SCRIPT, keys, args).await })
            .await?;
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or_default());
        if let [wait, which, debts @ ..] = reply.as_slice() {
            if *which > 0 {
                let index = usize::try_from(*which - 1).unwrap_or_default();
                answer.refused = Some((index.min(limits.len() - 1), micros(*wait)));
            }
            answer.debts = debts.iter().copied().map(micros).collect();
        }
        Ok(answer)
    }

    /// Marks `key` used for `ttl`: `Ok(true)` the first time, `Ok(false)` while it stays
    /// marked (a DPoP proof's `jti` seen on any replica). One `SET NX PX`.
    pub async fn first_use(&self, key: &str, ttl: Duration) -> Result<bool, RedisError> {
        const SCRIPT: &str = r"
            if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
            return 0";
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let first: i64 = self
            .call(async {
                self.client
                    .eval(
                        SCRIPT,
                        vec![format!("{{{}:used}}:{key}", self.namespace)],
                        vec![ttl_ms.to_string()],
                    )
                    .await
            })
            .await?;
        Ok(first == 1)
    }

    /// Whether both connections are up.
    pub fn is_up(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected()
    }

    /// Closes both connections.
    pub async fn quit(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.client.quit().await;
    }

    /// Runs one call within the budget, through the breaker.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, RedisError> {
        if self.breaker.is_open() {
            return Err(RedisError::BreakerOpen);
        }
        let result = match tokio::time::timeout(self.budget, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(RedisError::Failed(error)),
            Err(_) => Err(RedisError::Timeout(self.budget)),
        };
        match &result {
            Ok(_) => self.breaker.succeeded(),
            Err(_) => self.breaker.failed(),
        }
        result
    }
}

/// A circuit breaker: open after `BREAKER_THRESHOLD` failures in a row, for
/// `BREAKER_COOLDOWN`; then one call at a time tries again (half open).
#[derive(Debug)]
struct Breaker {
    started: Instant,
    failures: AtomicU32,
    /// Milliseconds since `started` until which the breaker is open.
    open_until: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            started: crate::clock::monotonic(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        let now = self.now_ms();
        if now < until {
            return true;
        }
        // Half open: the first caller after the cooldown tries; others wait one more round.
        self.open_until
            .compare_exchange(
                until,
                now + u64::try_from(BREAKER_COOLDOWN.as_millis()).unwrap_or(1_000),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until.store(0, Ordering::Relaxed);
    }

    fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= BREAKER_THRESHOLD {
            let until =
                self.now_ms() + u64::try_from(BREAKER_COOLDOWN.as_millis()).unwrap_or(1_000);
            self.open_until.store(until, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_closes_on_success() {
        let breaker = Breaker::default();
        assert!(!breaker.is_open());
        breaker.failed();
        breaker.failed();
        assert!(!breaker.is_open(), "two failures are not enough");
        breaker.failed();
        assert!(breaker.is_open());
        breaker.succeeded();
        assert!(!breaker.is_open());
    }

    #[test]
    fn an_open_breaker_lets_one_call_through_after_the_cooldown() {
        let breaker = Breaker {
            started: Instant::now() - Duration::from_secs(10),
            ..Breaker::default()
        };
        breaker.failures.store(BREAKER_THRESHOLD, Ordering::Relaxed);
        // Opened "long ago": the cooldown is over.
        breaker.open_until.store(1, Ordering::Relaxed);
        assert!(!breaker.is_open(), "the first caller tries");
        assert!(breaker.is_open(), "the next waits for that try");
    }
}
