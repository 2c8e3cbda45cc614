//! The code generated from `proto/keystone/v1` by `build.rs`, and the encoded file descriptor
//! set that server reflection serves. Nothing here is written by hand.
//!
//! Layer: foundation. Generated; the adapters use it.

#![allow(clippy::all, missing_debug_implementations)]

/// `keystone.v1`: the public contract. Reached elsewhere as `pb::…`.
pub mod pb {
    tonic::include_proto!("keystone.v1");
}

/// The file descriptor set of every Keystone proto and its imports, with source info so that
/// `grpcurl describe` shows the doc comments.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keystone_descriptor");

/// The file descriptor set of Envoy's `envoy.service.auth.v3` (ext_authz), for reflection;
/// empty when `build.rs` could not find Envoy's `.proto` files.
pub const ENVOY_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));
