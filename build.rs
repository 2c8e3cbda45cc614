//! Compiles the public contract in `proto/` with protox (pure Rust: no system `protoc` needed) and
//! generates the tonic servers and clients. The file descriptor set, with source info so that
//! `grpcurl describe` shows the doc comments, is written to `OUT_DIR` for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from("proto");
    let mut files = Vec::new();
    for entry in fs::read_dir(proto_root.join("keystone/v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("keystone_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs that no issue has built yet answer UNIMPLEMENTED through the generated defaults.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
