//! Keystone's integration tests: one binary, so tonic, sea-orm and friends link once.
//! Each test starts its own server on port 0 with its own database (see `helpers`).

// Tests read the machine's time to set their scenes and bound their waits; Keystone's own
// code reads it through `keystone::clock` only (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod helpers;

mod assertions;
mod auth;
mod authority;
mod bench;
mod bootstrap;
mod bulkheads;
mod cli;
mod client_admin;
mod client_secrets;
mod clients;
mod cluster;
mod crash;
mod devices;
mod dpop;
mod envoy;
mod exchange;
mod ext_authz;
mod faults;
mod federation;
mod grpcurl;
mod health;
mod hostile;
mod http;
mod keys;
mod layers;
mod limits;
mod log_canary;
mod mtls;
mod observability;
mod otlp;
mod parity;
mod reflection;
mod register;
mod roles;
mod sessions;
mod shutdown;
mod strength;
mod tls;
mod transport;
mod user_admin;
mod watch;
