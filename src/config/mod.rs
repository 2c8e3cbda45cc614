//! Settings: defaults, then an optional TOML file (`--config` / `KEYSTONE_CONFIG`), then
//! `KEYSTONE_*` environment variables (sections nested with `__`, e.g.
//! `KEYSTONE_TOKENS__ACCESS_TTL=10m`). They are validated once, at start; a bad value stops the
//! process with a message naming the setting and the value (secrets masked).
//!
//! Secrets (database and Redis URLs, the bootstrap password) are held in `SecretString`, whose
//! `Debug` prints `[REDACTED]`.
//!
//! Layer: foundation. Uses [`crate::domain`] (to check values) and [`crate::secrets`] (the
//! key-encryption key's type); every module above may read its sections.

use std::{net::SocketAddr, path::Path};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use self::{
    sections::*,
    tls::{ClientAuth, TlsSettings},
};

mod sections;
#[cfg(test)]
mod tests;
mod tls;
mod validate;

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
    "federation",
    "cluster",
    "revocation",
    "ext_authz",
    "secrets",
    "limits",
    "retention",
    "tls",
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
    /// Workload identity and delegation (token exchange).
    pub federation: FederationSettings,
    /// Running several replicas.
    pub cluster: ClusterSettings,
    /// The revocation set.
    pub revocation: RevocationSettings,
    /// TLS on every listener.
    pub tls: TlsSettings,
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
            federation: FederationSettings::default(),
            cluster: ClusterSettings::default(),
            revocation: RevocationSettings::default(),
            tls: TlsSettings::default(),
            ext_authz: ExtAuthzSettings::default(),
            secrets: SecretSettings::default(),
            limits: LimitSettings::default(),
            retention: RetentionSettings::default(),
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
        Self::from_figment(Self::sources(config_file)?)
    }

    /// Where the settings come from, in order: the TOML file if given, then the `KEYSTONE_*`
    /// variables of the process (the defaults are the struct's own).
    pub fn sources(config_file: Option<&Path>) -> Result<Figment, ConfigError> {
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
                 KEYSTONE_<SECTION>__<KEY>; see docs/configuration.md)"
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
        Ok(figment)
    }

    /// Extracts and validates settings from any figment (tests build their own).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment
            .extract()
            .map_err(|error| describe_figment_error(&figment, error))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every rule that a type cannot express, and reports every value that breaks one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = validate::problems(self);
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigError(
            problems
                .into_iter()
                .map(|problem| problem.0)
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }

    /// Whether the database is the embedded SQLite one.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose_secret().starts_with("sqlite:")
    }
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
                // A rule of Keystone's own names no value; serde's messages may.
                let rule = match &error.kind {
                    figment::error::Kind::Message(rule) => rule.as_str(),
                    _ => "the value is not valid",
                };
                format!("invalid setting `{setting}`{source}: {rule} (not shown: it is secret)")
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
