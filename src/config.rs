//! Settings: defaults, then an optional TOML file (`--config` / `KEYSTONE_CONFIG`), then
//! `KEYSTONE_*` environment variables (sections nested with `__`, e.g.
//! `KEYSTONE_TOKENS__ACCESS_TTL=10m`). They are validated once, at start; a bad value stops the
//! process with a message naming the setting and the value (secrets masked).
//!
//! Secrets (database and Redis URLs, the bootstrap password) are held in `SecretString`, whose
//! `Debug` prints `[REDACTED]`.

use std::{net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Top-level keys: the only `KEYSTONE_*` variables read as settings (others, such as
/// `KEYSTONE_CONFIG` or the test variables, belong to something else).
const TOP_LEVEL_KEYS: &[&str] = &[
    "database_url",
    "redis_url",
    "grpc_addr",
    "http_addr",
    "admin_grpc_addr",
    "admin_http_addr",
    "issuer",
    "bootstrap_admin_username",
    "bootstrap_admin_password",
    "reflection",
    "log",
    "server",
    "database",
    "auth",
    "tokens",
    "keys",
    "clients",
    "cluster",
    "revocation",
    "ext_authz",
    "secrets",
    "limits",
    "retention",
];

/// Top-level settings that are strings: read from the environment verbatim.
const STRING_KEYS: &[&str] = &[
    "database_url",
    "redis_url",
    "grpc_addr",
    "http_addr",
    "admin_grpc_addr",
    "admin_http_addr",
    "issuer",
    "bootstrap_admin_username",
    "bootstrap_admin_password",
    "reflection",
];

/// Settings whose values never appear in messages.
const SECRET_KEYS: &[&str] = &[
    "database_url",
    "redis_url",
    "bootstrap_admin_password",
    "secrets.pepper",
    "secrets.key_encryption_key",
    "secrets.previous_key_encryption_key",
];

/// Every setting of Keystone. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `sqlite://…` (embedded) or `postgres://…` (production).
    pub database_url: SecretString,
    /// Redis for the shared revocation set; unset: revocations kept in process (single node).
    pub redis_url: Option<SecretString>,
    /// Where the gRPC server listens.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP listener (JWKS, OAuth endpoints, metrics) listens.
    pub http_addr: SocketAddr,
    /// If set, `UserAdmin` and `ClientAdmin` are served here only, not on `grpc_addr`.
    pub admin_grpc_addr: Option<SocketAddr>,
    /// If set, `/metrics` is served here only, not on `http_addr`.
    pub admin_http_addr: Option<SocketAddr>,
    /// The `iss` of every token.
    pub issuer: String,
    /// With the password: create this admin at start if no user has the name.
    pub bootstrap_admin_username: Option<String>,
    /// With the username: the bootstrap admin's password.
    pub bootstrap_admin_password: Option<SecretString>,
    /// Server reflection: open to all, admins only, or off.
    pub reflection: ReflectionMode,
    /// Log output.
    pub log: LogSettings,
    /// gRPC transport limits.
    pub server: ServerSettings,
    /// Database pool.
    pub database: DatabaseSettings,
    /// Logins and accounts.
    pub auth: AuthSettings,
    /// Token lifetimes.
    pub tokens: TokenSettings,
    /// Signing keys.
    pub keys: KeySettings,
    /// Service clients.
    pub clients: ClientSettings,
    /// Running several replicas.
    pub cluster: ClusterSettings,
    /// The revocation set.
    pub revocation: RevocationSettings,
    /// Envoy external authorization.
    pub ext_authz: ExtAuthzSettings,
    /// Server-side secrets.
    pub secrets: SecretSettings,
    /// Rate limits on the calls that check credentials.
    pub limits: LimitSettings,
    /// How long rows that no longer matter are kept.
    pub retention: RetentionSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: SecretString::from("sqlite://keystone.db?mode=rwc"),
            redis_url: None,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_grpc_addr: None,
            admin_http_addr: None,
            issuer: "http://127.0.0.1:8080".to_owned(),
            bootstrap_admin_username: None,
            bootstrap_admin_password: None,
            reflection: ReflectionMode::Open,
            log: LogSettings::default(),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            tokens: TokenSettings::default(),
            keys: KeySettings::default(),
            clients: ClientSettings::default(),
            cluster: ClusterSettings::default(),
            revocation: RevocationSettings::default(),
            ext_authz: ExtAuthzSettings::default(),
            secrets: SecretSettings::default(),
            limits: LimitSettings::default(),
            retention: RetentionSettings::default(),
        }
    }
}

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
    pub key_encryption_key: Option<SecretString>,
    /// The key-encryption key before the current one, while keys sealed with it are sealed
    /// again (at the next key refresh of any replica).
    pub previous_key_encryption_key: Option<SecretString>,
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
    /// receives the spans (one per RPC); unset: no trace export.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans.
    pub service_name: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
            otlp_endpoint: None,
            service_name: "keystone".to_owned(),
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

/// A setting that could not be read or is out of range. The message names the setting and the
/// value, masked for secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn invalid(setting: &str, value: impl std::fmt::Display, rule: &str) -> Self {
        let value = if SECRET_KEYS.contains(&setting) {
            "[REDACTED]".to_owned()
        } else {
            value.to_string()
        };
        ConfigError(format!("invalid setting `{setting}` = `{value}`: {rule}"))
    }
}

impl Settings {
    /// Reads the settings: defaults, then the TOML file if given, then `KEYSTONE_*` variables;
    /// then validates them.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file `{}` does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        if let Some(unknown) = unknown_variable(std::env::vars_os().map(|(name, _)| name)) {
            return Err(ConfigError(format!(
                "the environment variable {unknown} names no setting (a section's settings are \
                 KEYSTONE_<SECTION>__<KEY>; see the README's configuration table)"
            )));
        }
        figment = figment.merge(Env::prefixed("KEYSTONE_").split("__").filter(|key| {
            // figment may filter before it lowercases and splits the key.
            let key = key.as_str().to_ascii_lowercase();
            let top = key.split('.').next().unwrap_or_default();
            let top = top.split("__").next().unwrap_or_default();
            TOP_LEVEL_KEYS.contains(&top) && !STRING_KEYS.contains(&top)
        }));
        // figment parses variable values ("0123" would become the number 123): string
        // settings, secrets among them, are taken exactly as written.
        for key in STRING_KEYS {
            if let Ok(value) = std::env::var(format!("KEYSTONE_{}", key.to_ascii_uppercase())) {
                figment = figment.merge(Serialized::default(key, value));
            }
        }
        Self::from_figment(figment)
    }

    /// Extracts and validates settings from any figment (tests build their own).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment
            .extract()
            .map_err(|error| describe_figment_error(&figment, error))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every rule that a type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let database_url = self.database_url.expose_secret();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "database_url",
                "",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if let Some(redis_url) = &self.redis_url {
            let redis_url = redis_url.expose_secret();
            if ![
                "redis://",
                "rediss://",
                "redis-sentinel://",
                "rediss-sentinel://",
                "redis-cluster://",
                "rediss-cluster://",
                "redis+unix://",
            ]
            .iter()
            .any(|scheme| redis_url.starts_with(scheme))
            {
                return Err(ConfigError::invalid(
                    "redis_url",
                    "",
                    "must start with redis://, rediss://, redis-cluster://, redis-sentinel:// or redis+unix://",
                ));
            }
        }
        if let Some(pepper) = &self.secrets.pepper
            && pepper.expose_secret().chars().count() < 32
        {
            return Err(ConfigError::invalid(
                "secrets.pepper",
                "",
                "must hold at least 32 characters",
            ));
        }
        for (setting, value) in [
            (
                "secrets.key_encryption_key",
                &self.secrets.key_encryption_key,
            ),
            (
                "secrets.previous_key_encryption_key",
                &self.secrets.previous_key_encryption_key,
            ),
        ] {
            if let Some(value) = value
                && let Err(rule) = crate::token::sealing::check_kek(value)
            {
                return Err(ConfigError::invalid(setting, "", rule));
            }
        }
        let prefix = &self.ext_authz.header_prefix;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(ConfigError::invalid(
                "ext_authz.header_prefix",
                prefix,
                "must be lowercase letters, digits and '-'",
            ));
        }
        for (setting, scopes) in self
            .ext_authz
            .routes
            .iter()
            .map(|route| ("ext_authz.routes.scopes", &route.scopes))
            .chain([("ext_authz.default_scopes", &self.ext_authz.default_scopes)])
        {
            if let Some(bad) = scopes
                .iter()
                .find(|scope| crate::domain::Scope::parse(scope).is_err())
            {
                return Err(ConfigError::invalid(
                    setting,
                    bad,
                    "must be scopes of the form resource:action",
                ));
            }
        }
        for route in &self.ext_authz.routes {
            let prefix = &route.path_prefix;
            if !prefix.is_empty()
                && crate::domain::unambiguous_path(prefix).as_deref() != Ok(prefix)
            {
                return Err(ConfigError::invalid(
                    "ext_authz.routes.path_prefix",
                    prefix,
                    "must begin with '/' and hold no query, '%', ';', '\\', '.' or '..' segment \
                     or '//'",
                ));
            }
        }
        if self.cluster.name.is_empty()
            || self.cluster.name.len() > 64
            || !self
                .cluster
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::invalid(
                "cluster.name",
                &self.cluster.name,
                "must hold 1 to 64 of ASCII letters, digits, '-', '_' and '.'",
            ));
        }
        if self.cluster.enabled && self.secrets.pepper.is_none() {
            return Err(ConfigError::invalid(
                "cluster.enabled",
                true,
                "a clustered node needs secrets.pepper (KEYSTONE_SECRETS__PEPPER), the same on every replica",
            ));
        }
        if self.cluster.enabled && self.redis_url.is_none() {
            return Err(ConfigError::invalid(
                "cluster.enabled",
                true,
                "a clustered node needs KEYSTONE_REDIS_URL, so that every replica sees every revocation",
            ));
        }
        match url::Url::parse(&self.issuer) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "issuer",
                    &self.issuer,
                    "must be an absolute http(s) URL",
                ));
            }
        }
        match (
            &self.bootstrap_admin_username,
            &self.bootstrap_admin_password,
        ) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError(
                    "settings `bootstrap_admin_username` and `bootstrap_admin_password` go together: set both or neither"
                        .to_owned(),
                ));
            }
            _ => {}
        }
        if !(8..=128).contains(&self.auth.password_min_length) {
            return Err(ConfigError::invalid(
                "auth.password_min_length",
                self.auth.password_min_length,
                "must be between 8 and 128",
            ));
        }
        if self.auth.registration_per_minute == 0 {
            return Err(ConfigError::invalid(
                "auth.registration_per_minute",
                0,
                "must be at least 1 (turn registration off with auth.registration = false)",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.server.max_message_size) {
            return Err(ConfigError::invalid(
                "server.max_message_size",
                self.server.max_message_size,
                "must be between 1024 and 67108864 (64 MiB)",
            ));
        }
        if !(1024..=self.server.max_message_size).contains(&self.server.max_auth_message_size) {
            return Err(ConfigError::invalid(
                "server.max_auth_message_size",
                self.server.max_auth_message_size,
                "must be between 1024 and server.max_message_size",
            ));
        }
        if !(4096..=1024 * 1024).contains(&self.server.max_header_list_size) {
            return Err(ConfigError::invalid(
                "server.max_header_list_size",
                self.server.max_header_list_size,
                "must be between 4096 and 1048576",
            ));
        }
        for (setting, quota) in [
            ("limits.per_ip", &self.limits.per_ip),
            ("limits.per_client", &self.limits.per_client),
            ("limits.per_username", &self.limits.per_username),
        ] {
            check_quota(setting, quota)?;
        }
        if self.auth.lockout_threshold == 0 {
            return Err(ConfigError::invalid(
                "auth.lockout_threshold",
                0,
                "must be at least 1",
            ));
        }
        let argon2 = &self.auth.argon2;
        if argon2.memory_kib < 8 * argon2.parallelism.max(1) || argon2.memory_kib > 4 * 1024 * 1024
        {
            return Err(ConfigError::invalid(
                "auth.argon2.memory_kib",
                argon2.memory_kib,
                "must be between 8 × parallelism and 4194304 (4 GiB)",
            ));
        }
        if !(0..=19).contains(&argon2.niceness) {
            return Err(ConfigError::invalid(
                "auth.argon2.niceness",
                argon2.niceness,
                "must be between 0 and 19",
            ));
        }
        if !(1..=64).contains(&argon2.iterations) {
            return Err(ConfigError::invalid(
                "auth.argon2.iterations",
                argon2.iterations,
                "must be between 1 and 64",
            ));
        }
        if !(1..=16).contains(&argon2.parallelism) {
            return Err(ConfigError::invalid(
                "auth.argon2.parallelism",
                argon2.parallelism,
                "must be between 1 and 16",
            ));
        }
        check_positive("auth.lockout_duration", self.auth.lockout_duration)?;
        check_positive("auth.lockout_max_duration", self.auth.lockout_max_duration)?;
        check_at_most(
            "tokens.refresh_retry_grace",
            self.tokens.refresh_retry_grace,
            Duration::from_secs(300),
        )?;
        check_positive("keys.publish_ahead", self.keys.publish_ahead)?;
        check_positive("clients.max_secret_grace", self.clients.max_secret_grace)?;
        check_at_most(
            "clients.cache_ttl",
            self.clients.cache_ttl,
            Duration::from_secs(3600),
        )?;
        check_at_most("server.drain_delay", self.server.drain_delay, TEN_YEARS)?;
        check_at_most(
            "server.shutdown_grace",
            self.server.shutdown_grace,
            TEN_YEARS,
        )?;
        if self.auth.lockout_max_duration < self.auth.lockout_duration {
            return Err(ConfigError::invalid(
                "auth.lockout_max_duration",
                humantime::format_duration(self.auth.lockout_max_duration),
                "must not be shorter than auth.lockout_duration",
            ));
        }
        for (setting, audience) in [
            ("tokens.default_audience", &self.tokens.default_audience),
            ("tokens.keystone_audience", &self.tokens.keystone_audience),
        ] {
            if audience.is_empty() || audience.len() > 256 || audience.contains(' ') {
                return Err(ConfigError::invalid(
                    setting,
                    audience,
                    "must hold 1 to 256 characters and no space",
                ));
            }
        }
        check_positive("tokens.access_ttl", self.tokens.access_ttl)?;
        check_positive("tokens.max_access_ttl", self.tokens.max_access_ttl)?;
        check_positive("tokens.refresh_ttl", self.tokens.refresh_ttl)?;
        check_positive("tokens.refresh_idle_ttl", self.tokens.refresh_idle_ttl)?;
        if self.tokens.access_ttl > self.tokens.max_access_ttl {
            return Err(ConfigError::invalid(
                "tokens.access_ttl",
                humantime::format_duration(self.tokens.access_ttl),
                "must not exceed tokens.max_access_ttl",
            ));
        }
        if self.tokens.leeway > Duration::from_secs(300) {
            return Err(ConfigError::invalid(
                "tokens.leeway",
                humantime::format_duration(self.tokens.leeway),
                "must be at most 5m",
            ));
        }
        check_positive("keys.rotate_every", self.keys.rotate_every)?;
        check_positive("keys.reload_interval", self.keys.reload_interval)?;
        if self.keys.publish_ahead >= self.keys.rotate_every {
            return Err(ConfigError::invalid(
                "keys.publish_ahead",
                humantime::format_duration(self.keys.publish_ahead),
                "must be shorter than keys.rotate_every",
            ));
        }
        check_positive("revocation.max_staleness", self.revocation.max_staleness)?;
        check_positive("revocation.poll_interval", self.revocation.poll_interval)?;
        check_positive("revocation.redis_timeout", self.revocation.redis_timeout)?;
        if self.revocation.poll_interval >= self.revocation.max_staleness {
            return Err(ConfigError::invalid(
                "revocation.poll_interval",
                humantime::format_duration(self.revocation.poll_interval),
                "must be shorter than revocation.max_staleness",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.server.max_message_size) {
            return Err(ConfigError::invalid(
                "server.max_message_size",
                self.server.max_message_size,
                "must be between 1024 and 67108864 bytes",
            ));
        }
        check_positive("server.request_timeout", self.server.request_timeout)?;
        check_at_least_one("server.concurrency_limit", self.server.concurrency_limit)?;
        check_positive("retention.audit_events", self.retention.audit_events)?;
        check_positive("retention.interval", self.retention.interval)?;
        check_at_least_one(
            "retention.batch_size",
            usize::try_from(self.retention.batch_size).unwrap_or(usize::MAX),
        )?;
        check_at_least_one(
            "server.max_concurrent_streams",
            self.server.max_concurrent_streams as usize,
        )?;
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            return Err(ConfigError::invalid(
                "server.max_connections",
                self.server.max_connections,
                "must be between 1 and 1000000",
            ));
        }
        check_at_least_one(
            "server.max_connections_per_ip",
            self.server.max_connections_per_ip,
        )?;
        check_positive("server.handshake_timeout", self.server.handshake_timeout)?;
        check_positive("server.http_idle_timeout", self.server.http_idle_timeout)?;
        check_positive("server.max_connection_age", self.server.max_connection_age)?;
        check_positive("server.keepalive_interval", self.server.keepalive_interval)?;
        check_positive("server.keepalive_timeout", self.server.keepalive_timeout)?;
        if self.database.max_connections < 2
            || self.database.min_connections > self.database.max_connections
        {
            // Two at least: replicas take turns at migrations and keys through a lock held on
            // one connection while the work runs on another.
            return Err(ConfigError::invalid(
                "database.max_connections",
                self.database.max_connections,
                "must be at least 2 and at least database.min_connections",
            ));
        }
        if !(1..=1000).contains(&self.database.admin_max_connections) {
            return Err(ConfigError::invalid(
                "database.admin_max_connections",
                self.database.admin_max_connections,
                "must be between 1 and 1000",
            ));
        }
        check_positive("database.acquire_timeout", self.database.acquire_timeout)?;
        check_positive("database.connect_timeout", self.database.connect_timeout)?;
        check_positive(
            "database.health_check_interval",
            self.database.health_check_interval,
        )?;
        Ok(())
    }

    /// Whether the database is the embedded SQLite one.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose_secret().starts_with("sqlite:")
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

fn check_quota(setting: &str, quota: &Quota) -> Result<(), ConfigError> {
    if quota.rate == 0 {
        return Ok(());
    }
    if quota.burst == 0 || quota.burst > 1_000_000 {
        return Err(ConfigError::invalid(
            setting,
            quota,
            "the burst must be between 1 and 1000000 (turn the limit off with `off`)",
        ));
    }
    if quota.per.is_zero() || quota.per > Duration::from_secs(24 * 3600) {
        return Err(ConfigError::invalid(
            setting,
            quota,
            "the period must be more than 0 and at most 24h",
        ));
    }
    if quota.per / quota.rate < Duration::from_micros(1) {
        return Err(ConfigError::invalid(
            setting,
            quota,
            "the rate must leave at least a microsecond between calls",
        ));
    }
    Ok(())
}

fn check_at_least_one(setting: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(setting, 0, "must be at least 1"));
    }
    Ok(())
}

fn check_positive(setting: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(
            setting,
            "0s",
            "must be longer than zero",
        ));
    }
    check_at_most(setting, value, TEN_YEARS)
}

/// The longest duration any setting takes: time arithmetic stays far from overflow.
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn check_at_most(setting: &str, value: Duration, max: Duration) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::invalid(
            setting,
            humantime::format_duration(value),
            &format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(())
}

/// Turns figment's errors into messages that name the setting, masking secret values.
/// The first `KEYSTONE_<SECTION>__<KEY>` variable whose section is not one of Keystone's: a
/// typo there would leave a server running without the setting its operator believes it has.
/// Names without `__` are left alone (`KEYSTONE_CONFIG`, the tests' variables, and those
/// Kubernetes injects for a Service named `keystone`: `KEYSTONE_SERVICE_HOST`,
/// `KEYSTONE_PORT_50051_TCP`, …); unknown keys within a known section are refused by the
/// settings themselves.
fn unknown_variable(names: impl Iterator<Item = std::ffi::OsString>) -> Option<String> {
    names
        .filter_map(|name| name.into_string().ok())
        .find(|name| {
            // figment matches the prefix without regard to case.
            let Some(rest) = name
                .get(.."KEYSTONE_".len())
                .filter(|prefix| prefix.eq_ignore_ascii_case("KEYSTONE_"))
                .and_then(|_| name.get("KEYSTONE_".len()..))
            else {
                return false;
            };
            let Some((section, _)) = rest.split_once("__") else {
                return false;
            };
            let section = section.to_ascii_lowercase();
            !TOP_LEVEL_KEYS.contains(&section.as_str()) || STRING_KEYS.contains(&section.as_str())
        })
}

fn describe_figment_error(figment: &Figment, error: figment::Error) -> ConfigError {
    let messages: Vec<String> = error
        .into_iter()
        .map(|error| {
            let setting = error.path.join(".");
            // String settings come from the environment through a provider in the code
            // (named after a Rust type): the reader is told the variable instead.
            let source = match error.metadata.as_ref() {
                Some(metadata) if matches!(metadata.source, Some(figment::Source::Code(_))) => {
                    format!(
                    " (from the environment variable KEYSTONE_{})",
                        setting.to_ascii_uppercase().replace('.', "__")
                    )
                }
                Some(metadata) => format!(" (from {})", metadata.name),
                None => String::new(),
            };
            if SECRET_KEYS.contains(&setting.as_str()) {
                format!("invalid setting `{setting}`{source}: the value is not valid (not shown: it is secret)")
            } else if setting.is_empty() {
                format!("invalid settings{source}: {}", error.kind)
            } else {
                let value = figment
                    .find_value(&setting)
                    .ok()
                    .map(|value| match value.as_str() {
                        Some(text) => format!(" = `{text}`"),
                        None => serde_json::to_string(&value)
                            .map(|json| format!(" = `{json}`"))
                            .unwrap_or_default(),
                    })
                    .unwrap_or_default();
                format!("invalid setting `{setting}`{value}{source}: {}", error.kind)
            }
        })
        .collect();
    ConfigError(messages.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
        Settings::from_figment(Figment::new().merge(Toml::string(toml)))
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let settings = from_toml("").unwrap();
        assert_eq!(settings.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(settings.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.issuer, "http://127.0.0.1:8080");
        assert_eq!(settings.tokens.access_ttl, Duration::from_secs(900));
        assert_eq!(settings.tokens.refresh_ttl, Duration::from_secs(30 * 86400));
        assert_eq!(settings.keys.publish_ahead, Duration::from_secs(25 * 60));
        assert_eq!(settings.auth.password_min_length, 15);
        assert_eq!(settings.reflection, ReflectionMode::Open);
        assert!(settings.is_sqlite());
    }

    #[test]
    fn durations_are_read_in_human_form() {
        let settings = from_toml("[tokens]\naccess_ttl = \"10m\"\nrefresh_ttl = \"7d\"").unwrap();
        assert_eq!(settings.tokens.access_ttl, Duration::from_secs(600));
        assert_eq!(settings.tokens.refresh_ttl, Duration::from_secs(7 * 86400));
    }

    #[test]
    fn a_bad_value_names_the_setting_and_the_value() {
        let error = from_toml("[auth]\npassword_min_length = 4")
            .unwrap_err()
            .to_string();
        assert!(error.contains("auth.password_min_length"), "{error}");
        assert!(error.contains('4'), "{error}");

        let error = from_toml("[tokens]\naccess_ttl = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("tokens.access_ttl"), "{error}");
        assert!(error.contains("`soon`"), "{error}");
    }

    #[test]
    fn an_unknown_section_in_the_environment_is_refused_and_kubernetes_names_are_not() {
        let names = |names: &[&str]| unknown_variable(names.iter().map(std::ffi::OsString::from));
        assert_eq!(
            names(&["KEYSTONE_TOKENS__ACCESS_TTL", "KEYSTONE_TLS__CERT_FILE"]).as_deref(),
            Some("KEYSTONE_TLS__CERT_FILE")
        );
        assert_eq!(
            names(&["KEYSTONE_GRPC_ADDR__X"]).as_deref(),
            Some("KEYSTONE_GRPC_ADDR__X"),
            "a plain setting has no keys"
        );
        assert_eq!(
            names(&[
                "KEYSTONE_SERVICE_HOST",
                "KEYSTONE_SERVICE_PORT",
                "KEYSTONE_PORT_50051_TCP",
                "KEYSTONE_PORT_50051_TCP_ADDR",
                "KEYSTONE_CONFIG",
                "KEYSTONE_TEST_DATABASE_URL",
                "KEYSTONE_LIMITS__PER_IP",
                "keystone_tokens__x",
                "OTHER__THING",
            ]),
            None
        );
    }

    #[test]
    fn a_bad_address_from_the_environment_names_the_variable_and_the_value() {
        // What `Settings::load` does with KEYSTONE_GRPC_ADDR=not-an-address.
        let error = Settings::from_figment(
            Figment::new().merge(Serialized::default("grpc_addr", "not-an-address")),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`grpc_addr` = `not-an-address`"), "{error}");
        assert!(error.contains("KEYSTONE_GRPC_ADDR"), "{error}");
        assert!(!error.contains("::"), "a Rust type in {error}");
    }

    #[test]
    fn a_bad_secret_is_never_shown() {
        let error = Settings::from_figment(
            Figment::new().merge(Serialized::default("database_url", 42_u32)),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("database_url"), "{error}");
        assert!(!error.contains("42"), "{error}");
    }

    #[test]
    fn quotas_are_read_as_text() {
        let settings = from_toml(
            "[limits]\nper_ip = \"50/s burst 80\"\nper_client = \"off\"\nper_username = \"5/10m\"",
        )
        .unwrap();
        assert_eq!(
            settings.limits.per_ip,
            Quota {
                rate: 50,
                per: Duration::from_secs(1),
                burst: 80
            }
        );
        assert_eq!(settings.limits.per_client.interval(), None);
        assert_eq!(
            settings.limits.per_username,
            Quota {
                rate: 5,
                per: Duration::from_secs(600),
                burst: 5
            }
        );
        assert_eq!(
            settings.limits.per_username.interval(),
            Some(Duration::from_secs(120))
        );
        for bad in [
            "per_ip = \"50\"",
            "per_ip = \"50/fortnight\"",
            "per_ip = \"x/s\"",
            "per_ip = \"5/s burst\"",
            "per_ip = \"5/s burst 0\"",
            "per_ip = \"5/s rush 9\"",
            "per_ip = \"5/0s\"",
            "per_ip = \"5/2d\"",
            "per_ip = \"4000000000/1ms\"",
            "per_ip = 50",
        ] {
            let error = from_toml(&format!("[limits]\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("limits.per_ip"), "{bad}: {error}");
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_or_blocks() {
        let settings =
            from_toml("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"::1\"]")
                .unwrap();
        let nets: Vec<String> = settings
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        let error = from_toml("[server]\ntrusted_proxies = [\"proxy.internal\"]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("trusted_proxies"), "{error}");
    }

    #[test]
    fn a_quota_prints_as_it_is_written() {
        for text in [
            "100/1s burst 200",
            "10/60s burst 10",
            "5/1500ms burst 1",
            "off",
        ] {
            let quota: Quota = text.parse().unwrap();
            assert_eq!(quota.to_string(), text);
        }
    }

    #[test]
    fn unknown_keys_in_a_section_are_rejected() {
        let error = from_toml("[tokens]\nacess_ttl = \"10m\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("acess_ttl"), "{error}");
    }

    #[test]
    fn secrets_are_masked_in_errors_and_debug() {
        let error = from_toml("database_url = \"mysql://root:hunter2@db/keystone\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("database_url"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");

        let error = Settings::from_figment(Figment::new().merge(Serialized::default(
            "bootstrap_admin_password",
            123_456_789_012_u64,
        )))
        .unwrap_err()
        .to_string();
        assert!(!error.contains("123456789012"), "{error}");

        let settings = from_toml("database_url = \"postgres://k:hunter2@db/k\"").unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn a_cluster_without_redis_refuses_to_start() {
        let error = from_toml("[cluster]\nenabled = true")
            .unwrap_err()
            .to_string();
        assert!(error.contains("cluster.enabled"), "{error}");
        let clustered = "redis_url = \"redis://127.0.0.1:6379\"\n[cluster]\nenabled = true";
        let error = from_toml(clustered).unwrap_err().to_string();
        assert!(error.contains("secrets.pepper"), "{error}");
        let pepper = "\n[secrets]\npepper = \"0123456789abcdef0123456789abcdef\"";
        assert!(from_toml(&format!("{clustered}{pepper}")).is_ok());
    }

    #[test]
    fn durations_have_an_upper_bound() {
        let error = from_toml("[tokens]\nrefresh_ttl = \"1000000y\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("tokens.refresh_ttl"), "{error}");
        let error = from_toml("[auth]\nlockout_max_duration = \"100y\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("auth.lockout_max_duration"), "{error}");
    }

    #[test]
    fn bootstrap_credentials_go_together() {
        assert!(from_toml("bootstrap_admin_username = \"root\"").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_quota_text_parses_or_is_refused_with_the_form(text in "[0-9]{0,11}/[0-9]{0,3}[a-z]{0,4}( burst [0-9]{0,11})?|.{0,40}") {
                match text.parse::<Quota>() {
                    Ok(quota) => {
                        let again: Quota = quota.to_string().parse().expect("a quota's text parses");
                        prop_assert_eq!(again, quota);
                        let _ = check_quota("limits.per_ip", &quota);
                    }
                    Err(message) => prop_assert!(message.contains("burst")),
                }
            }
        }
    }
}
