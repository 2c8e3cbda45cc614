//! Keystone: the identity service other services trust. It issues and checks access tokens
//! (signed JWTs), keeps users, roles, scopes and service clients, and answers over gRPC.
//!
//! # Layout
//!
//! - [`config`]: settings from defaults, an optional TOML file and `KEYSTONE_*` variables.
//! - [`app`]: builds the whole server from settings and runs it until shutdown.
//! - [`grpc`]: the tonic adapters, the layer stack, health and reflection.
//! - [`http`]: the HTTP listener: JWKS and discovery, the OAuth endpoints, probes, metrics.
//! - [`metrics`]: Prometheus metrics and the gRPC layer that counts calls.
//! - [`error`]: the crate error and its single mapping onto `tonic::Status`.
//! - [`store`]: persistence over sea-orm; entities never leave it.
//! - [`domain`]: types that only hold valid values (usernames, emails, scopes…).
//! - [`password`]: argon2id hashing off the async runtime, and password generation.
//! - [`service`]: the use cases; every policy decision, no transport types.
//! - [`clock`]: the only reader of wall time.
//! - [`token`]: signing keys, and issuing and verifying access tokens.
//! - [`revocation`]: what is refused although signed: tokens, sessions, subjects.
//! - [`secrets`]: the pepper and what derives from it (client-secret hashes, refresh tokens).
//! - [`proto`]: the generated code of `proto/keystone/v1`.
//! - [`cli`], [`telemetry`], [`shutdown`]: the process around the server.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_debug_implementations)]

pub mod app;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
#[cfg(fuzzing)]
pub mod fuzz;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod password;
pub mod proto;
pub mod revocation;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod token;

pub use app::App;
pub use config::Settings;
pub use error::Error;
