//! Keystone: the identity service other services trust. It issues and checks access tokens
//! (signed JWTs), keeps users, roles, scopes and service clients, and answers over gRPC.
//!
//! # Layout
//!
//! Dependencies run one way, from the adapters down; a module uses only those below it.
//!
//! - Top: [`app`] composes the server from settings and runs it; [`cli`], [`telemetry`] and
//!   [`shutdown`] are the process around it.
//! - Adapters: [`grpc`] (tonic services, the layer stack, health, reflection, Envoy `Check`),
//!   [`http`] (JWKS, discovery, the OAuth endpoints, probes, metrics), [`listener`]
//!   (connection limits), [`metrics`], [`trace_context`]; they translate and decide nothing.
//! - Use cases: [`service`]: every policy decision, no transport types.
//! - State kept in step: [`revocation`] (what is refused although signed), [`token`]
//!   (keys, issuing and verifying) and [`federation`] (the keys of trusted workload
//!   issuers).
//! - Infrastructure: [`store`] (sea-orm; entities never leave it) and [`cluster`] (the event
//!   bus between replicas over Redis). Neither knows the other.
//! - Foundations: [`domain`] (types that only hold valid values), [`config`], [`tls`]
//!   (certificates for every listener, reloaded when they change), [`secrets`],
//!   [`password`], [`error`], [`client_ip`], [`clock`] (the only reader of wall time), and
//!   [`proto`] (the generated code of `proto/keystone/v1`).
//!
//! Each module's documentation ends with the layer it belongs to.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::disallowed_methods
    )
)]
#![warn(missing_debug_implementations)]

pub mod app;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod federation;
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
pub mod tls;
pub mod token;
pub mod trace_context;

pub use app::App;
pub use config::Settings;
pub use error::Error;
