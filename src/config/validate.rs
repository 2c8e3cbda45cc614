//! The rules a type cannot express. Every value that breaks one is reported, not only the
//! first: an operator fixes them all in one go.

use std::time::Duration;

use secrecy::ExposeSecret as _;

use super::{ConfigError, Quota, Settings};

/// The longest `act` chain `federation.max_delegation_depth` may allow: every hop makes the
/// token larger, and a token is at most 8 KiB.
const MAX_DELEGATION_DEPTH: u32 = 16;

/// Every problem of `settings`, in the order of the settings table.
pub(super) fn problems(settings: &Settings) -> Vec<ConfigError> {
    let mut problems = Vec::new();

    let database_url = settings.database_url.expose_secret();
    if !(database_url.starts_with("sqlite:")
        || database_url.starts_with("postgres://")
        || database_url.starts_with("postgresql://"))
    {
        problems.push(ConfigError::invalid(
            "database_url",
            "",
            "must start with sqlite:, postgres:// or postgresql://",
        ));
    }
    if let Some(redis_url) = &settings.redis_url {
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
            problems.push(ConfigError::invalid(
                "redis_url",
                "",
                "must start with redis://, rediss://, redis-cluster://, redis-sentinel:// or redis+unix://",
            ));
        }
    }
    if settings.log.otlp_metrics_interval < Duration::from_secs(1) {
        problems.push(ConfigError::invalid(
            "log.otlp_metrics_interval",
            humantime::format_duration(settings.log.otlp_metrics_interval),
            "must be at least 1s",
        ));
    } else {
        problems.extend(
            check_at_most(
                "log.otlp_metrics_interval",
                settings.log.otlp_metrics_interval,
                Duration::from_secs(24 * 3600),
            )
            .err(),
        );
    }
    if let Some(pepper) = &settings.secrets.pepper
        && pepper.expose_secret().chars().count() < 32
    {
        problems.push(ConfigError::invalid(
            "secrets.pepper",
            "",
            "must hold at least 32 characters",
        ));
    }
    let prefix = &settings.ext_authz.header_prefix;
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        problems.push(ConfigError::invalid(
            "ext_authz.header_prefix",
            prefix,
            "must be lowercase letters, digits and '-'",
        ));
    }
    for (setting, scopes) in settings
        .ext_authz
        .routes
        .iter()
        .map(|route| ("ext_authz.routes.scopes", &route.scopes))
        .chain([(
            "ext_authz.default_scopes",
            &settings.ext_authz.default_scopes,
        )])
    {
        if let Some(bad) = scopes
            .iter()
            .find(|scope| crate::domain::Scope::parse(scope).is_err())
        {
            problems.push(ConfigError::invalid(
                setting,
                bad,
                "must be scopes of the form resource:action",
            ));
        }
    }
    for route in &settings.ext_authz.routes {
        if let Some(bad) = route
            .roles
            .iter()
            .find(|role| crate::domain::RoleName::parse(role).is_err())
        {
            problems.push(ConfigError::invalid(
                "ext_authz.routes.roles",
                bad,
                "is not a role name (lowercase letters, digits, `-`, `_`, `.`)",
            ));
        }
        let prefix = &route.path_prefix;
        if !prefix.is_empty() && crate::domain::unambiguous_path(prefix).as_deref() != Ok(prefix) {
            problems.push(ConfigError::invalid(
                "ext_authz.routes.path_prefix",
                prefix,
                "must begin with '/' and hold no query, '%', ';', '\\', '.' or '..' segment \
                 or '//'",
            ));
        }
    }
    if settings.cluster.name.is_empty()
        || settings.cluster.name.len() > 64
        || !settings
            .cluster
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        problems.push(ConfigError::invalid(
            "cluster.name",
            &settings.cluster.name,
            "must hold 1 to 64 of ASCII letters, digits, '-', '_' and '.'",
        ));
    }
    if settings.cluster.enabled && settings.secrets.pepper.is_none() {
        problems.push(ConfigError::invalid(
            "cluster.enabled",
            true,
            "a clustered node needs secrets.pepper (KEYSTONE_SECRETS__PEPPER), the same on every replica",
        ));
    }
    if settings.cluster.enabled && settings.redis_url.is_none() {
        problems.push(ConfigError::invalid(
            "cluster.enabled",
            true,
            "a clustered node needs KEYSTONE_REDIS_URL, so that every replica sees every revocation",
        ));
    }
    match url::Url::parse(&settings.issuer) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        _ => {
            problems.push(ConfigError::invalid(
                "issuer",
                &settings.issuer,
                "must be an absolute http(s) URL",
            ));
        }
    }
    match (
        &settings.bootstrap_admin_username,
        &settings.bootstrap_admin_password,
    ) {
        (Some(_), None) | (None, Some(_)) => {
            problems.push(ConfigError(
                "settings `bootstrap_admin_username` and `bootstrap_admin_password` go together: set both or neither"
                    .to_owned(),
            ));
        }
        _ => {}
    }
    if !(8..=128).contains(&settings.auth.password_min_length) {
        problems.push(ConfigError::invalid(
            "auth.password_min_length",
            settings.auth.password_min_length,
            "must be between 8 and 128",
        ));
    }
    if settings.auth.password_min_strength > crate::domain::MAX_STRENGTH {
        problems.push(ConfigError::invalid(
            "auth.password_min_strength",
            settings.auth.password_min_strength,
            "must be between 0 and 4 (the zxcvbn score)",
        ));
    }
    if settings.auth.registration_per_minute == 0 {
        problems.push(ConfigError::invalid(
            "auth.registration_per_minute",
            0,
            "must be at least 1 (turn registration off with auth.registration = false)",
        ));
    }
    if !(1024..=64 * 1024 * 1024).contains(&settings.server.max_message_size) {
        problems.push(ConfigError::invalid(
            "server.max_message_size",
            settings.server.max_message_size,
            "must be between 1024 and 67108864 (64 MiB)",
        ));
    }
    if !(1024..=settings.server.max_message_size).contains(&settings.server.max_auth_message_size) {
        problems.push(ConfigError::invalid(
            "server.max_auth_message_size",
            settings.server.max_auth_message_size,
            "must be between 1024 and server.max_message_size",
        ));
    }
    if !(4096..=1024 * 1024).contains(&settings.server.max_header_list_size) {
        problems.push(ConfigError::invalid(
            "server.max_header_list_size",
            settings.server.max_header_list_size,
            "must be between 4096 and 1048576",
        ));
    }
    for (setting, quota) in [
        ("limits.per_ip", &settings.limits.per_ip),
        ("limits.per_client", &settings.limits.per_client),
        ("limits.per_username", &settings.limits.per_username),
    ] {
        problems.extend(check_quota(setting, quota).err());
    }
    if !(1..=MAX_DELEGATION_DEPTH).contains(&settings.federation.max_delegation_depth) {
        problems.push(ConfigError::invalid(
            "federation.max_delegation_depth",
            settings.federation.max_delegation_depth,
            &format!("must be 1 to {MAX_DELEGATION_DEPTH}"),
        ));
    }
    problems.extend(check_federation(&settings.federation));
    if settings.auth.lockout_threshold == 0 {
        problems.push(ConfigError::invalid(
            "auth.lockout_threshold",
            0,
            "must be at least 1",
        ));
    }
    let argon2 = &settings.auth.argon2;
    if argon2.memory_kib < 8 * argon2.parallelism.max(1) || argon2.memory_kib > 4 * 1024 * 1024 {
        problems.push(ConfigError::invalid(
            "auth.argon2.memory_kib",
            argon2.memory_kib,
            "must be between 8 × parallelism and 4194304 (4 GiB)",
        ));
    }
    if !(0..=19).contains(&argon2.niceness) {
        problems.push(ConfigError::invalid(
            "auth.argon2.niceness",
            argon2.niceness,
            "must be between 0 and 19",
        ));
    }
    if !(1..=64).contains(&argon2.iterations) {
        problems.push(ConfigError::invalid(
            "auth.argon2.iterations",
            argon2.iterations,
            "must be between 1 and 64",
        ));
    }
    if !(1..=16).contains(&argon2.parallelism) {
        problems.push(ConfigError::invalid(
            "auth.argon2.parallelism",
            argon2.parallelism,
            "must be between 1 and 16",
        ));
    }
    problems.extend(check_positive("auth.lockout_duration", settings.auth.lockout_duration).err());
    problems.extend(
        check_positive(
            "auth.lockout_max_duration",
            settings.auth.lockout_max_duration,
        )
        .err(),
    );
    problems.extend(
        check_at_most(
            "tokens.refresh_retry_grace",
            settings.tokens.refresh_retry_grace,
            Duration::from_secs(300),
        )
        .err(),
    );
    problems.extend(check_positive("keys.publish_ahead", settings.keys.publish_ahead).err());
    problems.extend(
        check_positive(
            "clients.max_secret_grace",
            settings.clients.max_secret_grace,
        )
        .err(),
    );
    problems.extend(
        check_at_most(
            "clients.cache_ttl",
            settings.clients.cache_ttl,
            Duration::from_secs(3600),
        )
        .err(),
    );
    problems
        .extend(check_at_most("server.drain_delay", settings.server.drain_delay, TEN_YEARS).err());
    problems.extend(
        check_at_most(
            "server.shutdown_grace",
            settings.server.shutdown_grace,
            TEN_YEARS,
        )
        .err(),
    );
    if settings.auth.lockout_max_duration < settings.auth.lockout_duration {
        problems.push(ConfigError::invalid(
            "auth.lockout_max_duration",
            humantime::format_duration(settings.auth.lockout_max_duration),
            "must not be shorter than auth.lockout_duration",
        ));
    }
    for (setting, audience) in [
        ("tokens.default_audience", &settings.tokens.default_audience),
        (
            "tokens.keystone_audience",
            &settings.tokens.keystone_audience,
        ),
    ] {
        if audience.is_empty() || audience.len() > 256 || audience.contains(' ') {
            problems.push(ConfigError::invalid(
                setting,
                audience,
                "must hold 1 to 256 characters and no space",
            ));
        }
    }
    problems.extend(check_positive("tokens.access_ttl", settings.tokens.access_ttl).err());
    problems.extend(check_positive("tokens.max_access_ttl", settings.tokens.max_access_ttl).err());
    problems.extend(check_positive("tokens.refresh_ttl", settings.tokens.refresh_ttl).err());
    problems
        .extend(check_positive("tokens.refresh_idle_ttl", settings.tokens.refresh_idle_ttl).err());
    if settings.tokens.access_ttl > settings.tokens.max_access_ttl {
        problems.push(ConfigError::invalid(
            "tokens.access_ttl",
            humantime::format_duration(settings.tokens.access_ttl),
            "must not exceed tokens.max_access_ttl",
        ));
    }
    if settings.tokens.leeway > Duration::from_secs(300) {
        problems.push(ConfigError::invalid(
            "tokens.leeway",
            humantime::format_duration(settings.tokens.leeway),
            "must be at most 5m",
        ));
    }
    problems.extend(
        check_positive(
            "tokens.dpop_proof_max_age",
            settings.tokens.dpop_proof_max_age,
        )
        .err(),
    );
    if settings.tokens.dpop_proof_max_age > Duration::from_secs(600) {
        problems.push(ConfigError::invalid(
            "tokens.dpop_proof_max_age",
            humantime::format_duration(settings.tokens.dpop_proof_max_age),
            "must be at most 10m: a proof is for one request, made just before it",
        ));
    }
    problems.extend(check_positive("keys.rotate_every", settings.keys.rotate_every).err());
    problems.extend(check_positive("keys.reload_interval", settings.keys.reload_interval).err());
    if settings.keys.publish_ahead >= settings.keys.rotate_every {
        problems.push(ConfigError::invalid(
            "keys.publish_ahead",
            humantime::format_duration(settings.keys.publish_ahead),
            "must be shorter than keys.rotate_every",
        ));
    }
    problems.extend(
        check_positive(
            "revocation.max_staleness",
            settings.revocation.max_staleness,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "revocation.poll_interval",
            settings.revocation.poll_interval,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "revocation.redis_timeout",
            settings.revocation.redis_timeout,
        )
        .err(),
    );
    if settings.revocation.poll_interval >= settings.revocation.max_staleness {
        problems.push(ConfigError::invalid(
            "revocation.poll_interval",
            humantime::format_duration(settings.revocation.poll_interval),
            "must be shorter than revocation.max_staleness",
        ));
    }
    problems
        .extend(check_positive("server.request_timeout", settings.server.request_timeout).err());
    problems.extend(
        check_at_least_one(
            "server.concurrency_limit",
            settings.server.concurrency_limit,
        )
        .err(),
    );
    problems
        .extend(check_positive("retention.audit_events", settings.retention.audit_events).err());
    problems.extend(check_positive("retention.interval", settings.retention.interval).err());
    problems.extend(
        check_at_least_one(
            "retention.batch_size",
            usize::try_from(settings.retention.batch_size).unwrap_or(usize::MAX),
        )
        .err(),
    );
    problems.extend(
        check_at_least_one(
            "server.max_concurrent_streams",
            settings.server.max_concurrent_streams as usize,
        )
        .err(),
    );
    if !(1..=1_000_000).contains(&settings.server.max_connections) {
        problems.push(ConfigError::invalid(
            "server.max_connections",
            settings.server.max_connections,
            "must be between 1 and 1000000",
        ));
    }
    problems.extend(
        check_at_least_one(
            "server.max_connections_per_ip",
            settings.server.max_connections_per_ip,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "server.handshake_timeout",
            settings.server.handshake_timeout,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "server.http_idle_timeout",
            settings.server.http_idle_timeout,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "server.max_connection_age",
            settings.server.max_connection_age,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "server.keepalive_interval",
            settings.server.keepalive_interval,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "server.keepalive_timeout",
            settings.server.keepalive_timeout,
        )
        .err(),
    );
    if settings.database.max_connections < 2
        || settings.database.min_connections > settings.database.max_connections
    {
        // Two at least: replicas take turns at migrations and keys through a lock held on
        // one connection while the work runs on another.
        problems.push(ConfigError::invalid(
            "database.max_connections",
            settings.database.max_connections,
            "must be at least 2 and at least database.min_connections",
        ));
    }
    if !(1..=1000).contains(&settings.database.admin_max_connections) {
        problems.push(ConfigError::invalid(
            "database.admin_max_connections",
            settings.database.admin_max_connections,
            "must be between 1 and 1000",
        ));
    }
    problems.extend(
        check_positive(
            "database.acquire_timeout",
            settings.database.acquire_timeout,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "database.connect_timeout",
            settings.database.connect_timeout,
        )
        .err(),
    );
    problems.extend(
        check_positive(
            "database.health_check_interval",
            settings.database.health_check_interval,
        )
        .err(),
    );
    let tls = &settings.tls;
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        problems.push(ConfigError(
            "settings `tls.cert_file` and `tls.key_file` go together: set both or neither"
                .to_owned(),
        ));
    }
    if tls.client_ca_file.is_some() && !tls.enabled() {
        problems.push(ConfigError(
            "setting `tls.client_ca_file` needs `tls.cert_file` and `tls.key_file`: client \
             certificates are asked for in a TLS handshake"
                .to_owned(),
        ));
    }
    if tls.self_signed_client_certificates && !tls.enabled() {
        problems.push(ConfigError(
            "setting `tls.self_signed_client_certificates` needs `tls.cert_file` and \
             `tls.key_file`: client certificates are asked for in a TLS handshake"
                .to_owned(),
        ));
    }
    if tls.client_auth() != super::ClientAuth::Off
        && tls.client_ca_file.is_none()
        && !tls.self_signed_client_certificates
    {
        problems.push(ConfigError(
            "setting `tls.client_auth` asks for client certificates: give the CA they chain to \
             as `tls.client_ca_file` (or accept self-signed ones with \
             `tls.self_signed_client_certificates`)"
                .to_owned(),
        ));
    }
    problems.extend(check_positive("tls.reload_interval", tls.reload_interval).err());
    problems
}

/// The rules of `[federation]` and its trusted issuers.
fn check_federation(federation: &super::FederationSettings) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    for (setting, value, least, most) in [
        (
            "federation.refetch_interval",
            federation.refetch_interval,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        ),
        (
            "federation.keys_max_age",
            federation.keys_max_age,
            federation.refetch_interval,
            Duration::from_secs(7 * 24 * 3600),
        ),
        (
            "federation.fetch_timeout",
            federation.fetch_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        ),
    ] {
        if value < least || value > most {
            problems.push(ConfigError::invalid(
                setting,
                humantime::format_duration(value),
                &format!(
                    "must be between {} and {}",
                    humantime::format_duration(least),
                    humantime::format_duration(most)
                ),
            ));
        }
    }
    let mut names = std::collections::HashSet::new();
    let mut issuers = std::collections::HashSet::new();
    for issuer in &federation.issuers {
        let name = &issuer.name;
        if !crate::domain::FederatedIdentity::is_issuer_name(name) {
            problems.push(ConfigError::invalid(
                "federation.issuers.name",
                name,
                "must be 1 to 64 lowercase letters, digits, `-`, `_` or `.`",
            ));
        } else if !names.insert(name) {
            problems.push(ConfigError::invalid(
                "federation.issuers.name",
                name,
                "names two issuers",
            ));
        }
        if issuer.issuer.is_empty()
            || issuer.issuer.len() > 512
            || issuer.issuer.chars().any(char::is_control)
        {
            problems.push(ConfigError::invalid(
                "federation.issuers.issuer",
                &issuer.issuer,
                "must be the issuer's `iss`: 1 to 512 bytes",
            ));
        } else if !issuers.insert(&issuer.issuer) {
            problems.push(ConfigError::invalid(
                "federation.issuers.issuer",
                &issuer.issuer,
                "is trusted twice: one `iss` has one set of keys",
            ));
        }
        match (issuer.jwks_uri.is_empty(), issuer.jwks_file.is_empty()) {
            (false, true) => {
                if let Err(why) = check_jwks_uri(&issuer.jwks_uri) {
                    problems.push(ConfigError::invalid(
                        "federation.issuers.jwks_uri",
                        without_credentials(&issuer.jwks_uri),
                        why,
                    ));
                }
            }
            (true, false) => {
                for (setting, value) in [
                    ("federation.issuers.ca_file", &issuer.ca_file),
                    (
                        "federation.issuers.bearer_token_file",
                        &issuer.bearer_token_file,
                    ),
                ] {
                    if !value.is_empty() {
                        problems.push(ConfigError::invalid(
                            setting,
                            value,
                            "is for fetching jwks_uri: a jwks_file is read as it is",
                        ));
                    }
                }
            }
            _ => problems.push(ConfigError::invalid(
                "federation.issuers.jwks_uri",
                &issuer.jwks_uri,
                &format!(
                    "issuer `{name}` needs one of jwks_uri and jwks_file, not both and not neither"
                ),
            )),
        }
        if issuer.max_assertion_age < Duration::from_secs(60)
            || issuer.max_assertion_age > Duration::from_secs(24 * 3600)
        {
            problems.push(ConfigError::invalid(
                "federation.issuers.max_assertion_age",
                humantime::format_duration(issuer.max_assertion_age),
                "must be between 1m and 24h",
            ));
        }
    }
    problems
}

/// A URL as it may be shown: any user name and password replaced.
fn without_credentials(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("[REDACTED]");
            let _ = url.set_password(None);
            url.to_string()
        }
        _ => uri.to_owned(),
    }
}

/// Where an issuer's keys may come from: `https://`, or `http://` on a loopback address (keys
/// read over a network in the clear could be anyone's).
pub(crate) fn check_jwks_uri(uri: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(uri).map_err(|_| "must be an absolute https:// URL")?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err("must name a host"),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must hold no credentials (use bearer_token_file)");
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must be https:// (http:// only on a loopback address)"),
        _ => Err("must be an https:// URL"),
    }
}

pub(super) fn check_quota(setting: &str, quota: &Quota) -> Result<(), ConfigError> {
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
