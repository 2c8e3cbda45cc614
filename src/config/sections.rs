//! The sections of the settings, each with its defaults. Field names are the TOML keys; the
//! doc comments are the reference of docs/configuration.md (a test keeps the two together).

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::secrets::KeyEncryptionKey;

/// Rate limits (GCRA) on the calls that check credentials or take tokens: `IssueToken`,
/// `Introspect`, `Revoke`, `Register` and their HTTP equivalents. With Redis they are counted
/// there, for the whole cluster; without it, or while it fails, in each process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Per client IP (an IPv6 client is counted by its /64).
    pub per_ip: Quota,
    /// Per client id, once the client proved itself (client credentials, HTTP Basic), and per
    /// caller of `Introspect`.
    pub per_client: Quota,
    /// Per username or email asked for in the password grant, whether or not a user has it.
    pub per_username: Quota,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_ip: Quota {
                rate: 100,
                per: Duration::from_secs(1),
                burst: 200,
            },
            per_client: Quota {
                rate: 100,
                per: Duration::from_secs(1),
                burst: 200,
            },
            per_username: Quota {
                rate: 10,
                per: Duration::from_secs(60),
                burst: 10,
            },
        }
    }
}

impl LimitSettings {
    /// No limits (benchmarks, which call from one address with a few names).
    pub fn off() -> Self {
        Self {
            per_ip: Quota::OFF,
            per_client: Quota::OFF,
            per_username: Quota::OFF,
        }
    }
}

/// `rate` calls per `per` on average, and up to `burst` at once; `rate = 0` turns it off.
/// Written as text: `"100/s burst 200"`, `"10/1m"` (the burst is then the rate), `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Quota {
    /// Calls per period; 0: no limit.
    pub rate: u32,
    /// The period.
    pub per: Duration,
    /// Calls allowed at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl TryFrom<String> for Quota {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::str::FromStr for Quota {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "a quota is written `<calls>/<period> [burst <calls>]` (`100/s burst 200`, `10/1m`) or `off`";
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Quota::OFF);
        }
        let mut words = text.split_whitespace();
        let (rate, per) = words
            .next()
            .and_then(|rate| rate.split_once('/'))
            .ok_or_else(|| FORM.to_owned())?;
        let rate: u32 = rate.parse().map_err(|_| FORM.to_owned())?;
        if rate == 0 {
            return Ok(Quota::OFF);
        }
        // `s`, `m`, `h` alone mean one of them.
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(per)
        } else {
            humantime::parse_duration(&format!("1{per}"))
        }
        .map_err(|_| FORM.to_owned())?;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => rate,
            (Some("burst"), Some(burst), None) => burst.parse().map_err(|_| FORM.to_owned())?,
            _ => return Err(FORM.to_owned()),
        };
        Ok(Quota { rate, per, burst })
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rate == 0 {
            return f.write_str("off");
        }
        // The period in one unit, without the spaces humantime would put between units.
        let nanos = self.per.as_nanos();
        let per = if nanos.is_multiple_of(1_000_000_000) {
            format!("{}s", nanos / 1_000_000_000)
        } else if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
        write!(f, "{}/{per} burst {}", self.rate, self.burst)
    }
}

impl Quota {
    /// No limit.
    pub const OFF: Quota = Quota {
        rate: 0,
        per: Duration::from_secs(1),
        burst: 1,
    };

    /// The time between two calls at the sustained rate, if the quota is on.
    pub fn interval(&self) -> Option<Duration> {
        (self.rate > 0).then(|| self.per / self.rate)
    }
}

/// Server-side secrets, never stored in the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSettings {
    /// The pepper: the key of the client-secret hashes and of refresh-token derivation. At least
    /// 32 characters. Every replica needs the same one; changing it invalidates every client
    /// secret and refresh token.
    pub pepper: Option<SecretString>,
    /// Without `pepper`: a file holding it, created (mode 0600) with a random pepper if it does
    /// not exist. Meant for the embedded single-node default; a cluster sets `pepper`.
    pub pepper_file: std::path::PathBuf,
    /// The key that seals private signing keys in the database (32 random bytes, base64:
    /// `openssl rand -base64 32`); without it, a key derived from the pepper. Never stored.
    pub key_encryption_key: Option<KeyEncryptionKey>,
    /// The key-encryption key before the current one, while keys sealed with it are sealed
    /// again (at the next key refresh of any replica).
    pub previous_key_encryption_key: Option<KeyEncryptionKey>,
}

impl Default for SecretSettings {
    fn default() -> Self {
        Self {
            pepper: None,
            pepper_file: std::path::PathBuf::from("keystone.pepper"),
            key_encryption_key: None,
            previous_key_encryption_key: None,
        }
    }
}

/// Who may use server reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReflectionMode {
    /// Anyone (the embedded default, for grpcurl on a laptop).
    Open,
    /// Callers with a `keystone:admin` token.
    Admin,
    /// Not served.
    Off,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `keystone=debug,tower=warn`; `RUST_LOG` wins if set.
    pub filter: String,
    /// An OpenTelemetry collector (OTLP over gRPC, e.g. `http://otel-collector:4317`) that
    /// receives the spans (one per RPC or HTTP request) and the metrics; unset: no export.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans and metrics.
    pub service_name: String,
    /// With `otlp_endpoint`, how often the metrics are pushed there.
    #[serde(with = "humantime_serde")]
    pub otlp_metrics_interval: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
            otlp_endpoint: None,
            service_name: "keystone".to_owned(),
            otlp_metrics_interval: Duration::from_secs(60),
        }
    }
}

/// gRPC transport limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Largest request message accepted, in bytes (admin services and Envoy's `Check`).
    pub max_message_size: usize,
    /// Largest request message accepted by `keystone.v1.Auth`, in bytes: its requests carry
    /// a few short strings.
    pub max_auth_message_size: usize,
    /// Largest header block of a request (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`), in bytes.
    pub max_header_list_size: u32,
    /// Calls without a shorter deadline are cut after this long.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Calls handled at once across all connections; beyond it, calls are shed with
    /// RESOURCE_EXHAUSTED rather than queued.
    pub concurrency_limit: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Connections open at once on each listener (gRPC and HTTP alike); a connection beyond
    /// it is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64) on each listener;
    /// the `trusted_proxies` are not capped.
    pub max_connections_per_ip: usize,
    /// A new connection must open its protocol within this (gRPC: the whole HTTP/2 preface;
    /// HTTP: its first bytes), or it is closed: silent sockets cannot hold the slots.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// HTTP/1.1: a connection waiting for a request's head (idle between requests, or a head
    /// arriving slowly) is closed after this long. Longer than the idle timeouts of common
    /// load balancers (60 s), so that they close first.
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    /// gRPC: a connection older than this is asked to go (GOAWAY; its calls, streams
    /// included, get a minute more, or this long when it is shorter, then it is cut) and the
    /// client reconnects, so that no connection is held forever.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// gRPC: an HTTP/2 PING after this long without a frame from the client...
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// ...and the connection is closed when it is not answered within this.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// After a shutdown signal: how long health reports NOT_SERVING before the listener
    /// closes, so load balancers stop sending calls first.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How long calls in flight may take to finish after the listener closes.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed: the client IP
    /// is the rightmost address in it that is not one of them. From anyone else the header
    /// is ignored and the client IP is the peer's. A bare address is that one address.
    #[serde(deserialize_with = "proxies_from_text")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Proxies (addresses or CIDR blocks) that terminate their clients' TLS and whose
    /// `X-Forwarded-Client-Cert` `Hash=` is believed as the caller's certificate (a resource
    /// server that terminated its caller's TLS and calls `Authenticate` is one). Keep it to
    /// those very hosts: whoever sends from here can name any certificate. Their own
    /// certificate never speaks for the caller.
    #[serde(deserialize_with = "proxies_from_text")]
    pub client_certificate_proxies: Vec<ipnet::IpNet>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_message_size: 1024 * 1024,
            max_auth_message_size: 64 * 1024,
            max_header_list_size: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            concurrency_limit: 1024,
            max_concurrent_streams: 256,
            max_connections: 4096,
            max_connections_per_ip: 256,
            handshake_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(75),
            max_connection_age: Duration::from_secs(30 * 60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(20),
            trusted_proxies: Vec::new(),
            client_certificate_proxies: Vec::new(),
        }
    }
}

/// Database pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Most connections held open for logins, tokens and writes (SQLite: at most 4).
    pub max_connections: u32,
    /// Most connections of the separate pool that admin listings and audit reads use, so
    /// that they never take the connections logins need (SQLite: 1).
    pub admin_max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// How long a call waits for a free connection before UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long to wait for a new connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Apply pending migrations at start (the embedded default). In a cluster, run
    /// `keystone migrate up` from one place instead and set this to false.
    pub migrate_on_start: bool,
    /// How often the health check pings the database.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            admin_max_connections: 4,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            migrate_on_start: true,
            health_check_interval: Duration::from_secs(5),
        }
    }
}

/// Logins and accounts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Whether `Auth/Register` is open.
    pub registration: bool,
    /// Registrations allowed per client IP and minute (bursts up to the same number).
    pub registration_per_minute: u32,
    /// Wrong passwords in a row before a name is locked.
    pub lockout_threshold: u32,
    /// Shortest password accepted, in code points (at least 8).
    pub password_min_length: u32,
    /// Lowest zxcvbn score a new password needs, 0 (anything the other rules allow) to 4.
    pub password_min_strength: u8,
    /// Password hashing.
    pub argon2: PasswordHashSettings,
    /// The first lockout's length; each further lockout of the same name doubles it.
    #[serde(with = "humantime_serde")]
    pub lockout_duration: Duration,
    /// The longest lockout.
    #[serde(with = "humantime_serde")]
    pub lockout_max_duration: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            registration: false,
            registration_per_minute: 10,
            lockout_threshold: 5,
            password_min_length: 15,
            password_min_strength: 3,
            argon2: PasswordHashSettings::default(),
            lockout_duration: Duration::from_secs(60),
            lockout_max_duration: Duration::from_secs(3600),
        }
    }
}

/// argon2id parameters and the hashing pool. The defaults are OWASP's minimum (19 MiB, two
/// passes, one lane); raising them rehashes each password at its next successful login.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordHashSettings {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Hashes at once; 0: from the cores and `memory_budget_mib`.
    pub concurrency: usize,
    /// Memory all concurrent hashes may take together, in MiB.
    pub memory_budget_mib: u32,
    /// Calls that may wait for a hash slot; beyond, RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// How much lower than the rest of the server the hashing threads are scheduled (a
    /// `nice` increment, 0 to 19): under a login flood, token validation keeps its CPU.
    pub niceness: i32,
}

impl Default for PasswordHashSettings {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            concurrency: 0,
            memory_budget_mib: 256,
            max_queue: 64,
            niceness: 19,
        }
    }
}

/// Token lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Lifetime of users' access tokens.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// No access token lives longer, whatever a client asks.
    #[serde(with = "humantime_serde")]
    pub max_access_ttl: Duration,
    /// Absolute lifetime of a session's refresh tokens.
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// A retry of a just-rotated refresh token within this window gets the same successor.
    #[serde(with = "humantime_serde")]
    pub refresh_retry_grace: Duration,
    /// A refresh token unused for this long expires (within `refresh_ttl`).
    #[serde(with = "humantime_serde")]
    pub refresh_idle_ttl: Duration,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The `aud` of tokens for which no audience was asked.
    pub default_audience: String,
    /// Further audiences users may ask for with the password grant (clients have their own
    /// `allowed_audiences`).
    pub user_audiences: Vec<String>,
    /// Keystone's own audience: `UserAdmin`, `ClientAdmin`, bearer callers of `Introspect`,
    /// `WatchRevocations` and admin reflection accept only tokens whose `aud` includes it, and
    /// `keystone:*` scopes are granted only in tokens for it.
    pub keystone_audience: String,
    /// How old a DPoP proof may be (its `iat`, give or take `leeway`); its `jti` is
    /// remembered that long, so a proof is used once.
    #[serde(with = "humantime_serde")]
    pub dpop_proof_max_age: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(15 * 60),
            max_access_ttl: Duration::from_secs(24 * 3600),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_retry_grace: Duration::from_secs(10),
            refresh_idle_ttl: Duration::from_secs(7 * 24 * 3600),
            leeway: Duration::from_secs(30),
            default_audience: "keystone".to_owned(),
            user_audiences: Vec::new(),
            keystone_audience: "keystone".to_owned(),
            dpop_proof_max_age: Duration::from_secs(60),
        }
    }
}

/// Signature algorithms Keystone signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyAlgorithm {
    /// Ed25519 (the default).
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

/// Signing keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// `EdDSA` or `ES256`.
    pub algorithm: KeyAlgorithm,
    /// A new key is published this long before it signs (longer than JWKS caches keep).
    #[serde(with = "humantime_serde")]
    pub publish_ahead: Duration,
    /// How often the signing key is replaced.
    #[serde(with = "humantime_serde")]
    pub rotate_every: Duration,
    /// How often each replica reloads the keys and takes due lifecycle steps.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            algorithm: KeyAlgorithm::EdDSA,
            publish_ahead: Duration::from_secs(25 * 60),
            rotate_every: Duration::from_secs(30 * 24 * 3600),
            reload_interval: Duration::from_secs(10),
        }
    }
}

/// Service clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// Longest grace period a rotated-out secret may keep working.
    #[serde(with = "humantime_serde")]
    pub max_secret_grace: Duration,
    /// How long a replica may use its copy of a client (secrets, scopes, audiences) for the
    /// client credentials grant before reading it again; `0s` reads it on every call. A
    /// change on this replica applies at once; on the others, as soon as Redis tells them (a
    /// disabled or deleted client also as soon as its revocation arrives), and within this
    /// time when neither reaches them.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Write an audit event for every token a client credentials grant issues (refusals and
    /// failures are written whatever this says; issued tokens are counted in
    /// `keystone_tokens_issued_total` either way). A busy service mints thousands a second.
    pub audit_tokens: bool,
    /// The audiences a `keystone:clients.write` caller may give clients. Audiences are a
    /// power (a token for an audience passes the routes that require it): such a caller may
    /// not change, rotate, disable or delete a client holding any other audience. A caller
    /// holding `keystone:admin` may give and manage any.
    pub delegable_audiences: Vec<String>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            max_secret_grace: Duration::from_secs(7 * 24 * 3600),
            cache_ttl: Duration::from_secs(10),
            audit_tokens: true,
            delegable_audiences: Vec::new(),
        }
    }
}

/// Workload identity and delegation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationSettings {
    /// The most actors a token from a token exchange may name (the `act` chain, RFC 8693):
    /// an exchange that would make the chain longer is refused (`DELEGATION_TOO_DEEP`).
    pub max_delegation_depth: u32,
    /// The issuers whose tokens (Kubernetes service-account tokens, SPIRE JWT-SVIDs) a client
    /// may prove itself with, through its `federated_identities`.
    pub issuers: Vec<TrustedIssuerSettings>,
    /// The least time between two fetches of one issuer's keys: an assertion naming a `kid`
    /// the cached keys lack fetches them again only this long after the last attempt.
    #[serde(with = "humantime_serde")]
    pub refetch_interval: Duration,
    /// How long fetched keys are used before they are fetched again (in the background; the
    /// old ones serve until new ones arrive, and go on serving when the fetch fails).
    #[serde(with = "humantime_serde")]
    pub keys_max_age: Duration,
    /// The budget of one fetch of an issuer's keys: connection, TLS, request and body.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            max_delegation_depth: 4,
            issuers: Vec::new(),
            refetch_interval: Duration::from_secs(60),
            keys_max_age: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// An issuer of workload tokens Keystone trusts (`[[federation.issuers]]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerSettings {
    /// The name clients' `federated_identities` use for it (`issuer_name`).
    pub name: String,
    /// Its `iss`, exactly as its tokens carry it.
    pub issuer: String,
    /// Where its public keys (a JWK Set) are fetched: `https://`, or `http://` on loopback
    /// only. One of `jwks_uri` and `jwks_file`.
    #[serde(default)]
    pub jwks_uri: String,
    /// A file holding its JWK Set (a mounted ConfigMap, say); read again as `jwks_uri` is.
    #[serde(default)]
    pub jwks_file: String,
    /// PEM certificates to trust for `jwks_uri` instead of the system's roots (a cluster's
    /// CA, `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`).
    #[serde(default)]
    pub ca_file: String,
    /// A file whose content is sent as a bearer token with each fetch, read again every time
    /// (a pod's own projected service-account token, for a cluster that does not publish its
    /// keys to everyone).
    #[serde(default)]
    pub bearer_token_file: String,
    /// What its tokens must be addressed to (`aud`); empty: `KEYSTONE_ISSUER`.
    #[serde(default)]
    pub audience: String,
    /// The oldest a token may be (by its `iat`).
    #[serde(default = "default_max_assertion_age", with = "humantime_serde")]
    pub max_assertion_age: Duration,
}

fn default_max_assertion_age() -> Duration {
    Duration::from_secs(3600)
}

/// Running several replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node is one of several; it then needs Redis.
    pub enabled: bool,
    /// The prefix of everything this deployment keeps on Redis (its events channel is
    /// `<name>:events`), so that several deployments can share one Redis.
    pub name: String,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            name: "keystone".to_owned(),
        }
    }
}

/// Envoy external authorization (`envoy.service.auth.v3.Authorization/Check`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtAuthzSettings {
    /// The prefix of the headers added for the upstream (`<prefix>subject`, …). Headers with
    /// this prefix sent by the client are always removed first.
    pub header_prefix: String,
    /// Whether the `authorization` header is removed before the request goes upstream.
    pub remove_authorization: bool,
    /// What requests need, by host and path prefix (the longest matching prefix wins; a
    /// route's `context_extensions` in Envoy add to it).
    pub routes: Vec<ExtAuthzRoute>,
    /// The audience a request that matches no route needs; empty: any.
    pub default_audience: String,
    /// The scopes a request that matches no route needs; empty: a valid token is enough.
    pub default_scopes: Vec<String>,
}

impl Default for ExtAuthzSettings {
    fn default() -> Self {
        Self {
            header_prefix: "x-keystone-".to_owned(),
            remove_authorization: false,
            routes: Vec::new(),
            default_audience: String::new(),
            default_scopes: Vec::new(),
        }
    }
}

/// What requests to a host and path prefix need.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtAuthzRoute {
    /// The `:authority` (without port); empty: any host.
    pub host: String,
    /// The path prefix, matched on whole segments (`/admin` covers `/admin` and `/admin/x`,
    /// not `/administrator`); empty or `/`: every path.
    pub path_prefix: String,
    /// Match `path_prefix` without regard to case (for upstreams that route `/ADMIN` to
    /// `/admin`, as ASP.NET and IIS do).
    pub case_insensitive: bool,
    /// The audience the token must carry; empty: any.
    pub audience: String,
    /// The scopes the token must hold.
    pub scopes: Vec<String>,
    /// The roles the token's subject must hold, all of them (a missing one is 403).
    pub roles: Vec<String>,
}

/// Retention: how long rows that no longer matter are kept, and how they are deleted.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// How long audit events are kept.
    #[serde(with = "humantime_serde")]
    pub audit_events: Duration,
    /// How often one replica deletes what has expired: ended sessions' refresh tokens,
    /// expired revocations, settled login failures and old audit events.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per statement (each a short transaction of its own).
    pub batch_size: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            audit_events: Duration::from_secs(400 * 24 * 3600),
            interval: Duration::from_secs(60),
            batch_size: 500,
        }
    }
}

/// The revocation set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RevocationSettings {
    /// In a cluster: if neither Redis nor the database has confirmed the set for this long,
    /// tokens are refused (UNAVAILABLE) rather than trusted.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// In a cluster: how often the database is polled for revocations made elsewhere (the
    /// backstop of Redis pub/sub).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The budget of one Redis call; past it the call counts as failed.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            max_staleness: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            redis_timeout: Duration::from_millis(50),
        }
    }
}

/// Addresses or CIDR blocks: `10.0.0.0/8`, `127.0.0.1` (a /32), `::1` (a /128).
fn proxies_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ipnet::IpNet>, D::Error> {
    use serde::de::Error as _;
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    D::Error::custom(format!("`{item}` is neither an address nor a CIDR block"))
                })
        })
        .collect()
}
