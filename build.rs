//! Compiles the public contract in `proto/` with protox (pure Rust: no system `protoc` needed) and
//! generates the tonic servers and clients. The file descriptor set, with source info so that
//! `grpcurl describe` shows the doc comments, is written to `OUT_DIR` for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

/// Messages with a secret field; keep in step with `src/grpc/redact.rs`.
const SECRET_BEARING_MESSAGES: &[&str] = &[
    "PasswordGrant",
    "ClientCredentialsGrant",
    "RefreshTokenGrant",
    "TokenResponse",
    "AuthenticateRequest",
    "IntrospectRequest",
    "RevokeRequest",
    "RegisterRequest",
    "LogoutRequest",
    "ChangePasswordRequest",
    "CreateUserRequest",
    "CreateUserResponse",
    "SetPasswordRequest",
    "SetPasswordResponse",
    "CreateClientResponse",
    "RotateClientSecretResponse",
];

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

    write_password_blocklist(&out_dir)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs that no issue has built yet answer UNIMPLEMENTED through the generated defaults.
        .generate_default_stubs(true)
        // Messages that carry secrets get a hand-written Debug (src/grpc/redact.rs) that prints
        // [REDACTED] in their place.
        .skip_debug(
            SECRET_BEARING_MESSAGES
                .iter()
                .map(|name| format!(".keystone.v1.{name}")),
        )
        .compile_fds(fds)?;
    Ok(())
}

/// Compiles `data/common-passwords-100k.txt` into a sorted `&[&str]` of its entries that are at
/// least 8 characters long (the shortest minimum the policy allows), lowercased.
fn write_password_blocklist(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let source = "data/common-passwords-100k.txt";
    println!("cargo:rerun-if-changed={source}");
    let text = fs::read_to_string(source)?;
    let mut entries: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| line.chars().count() >= 8)
        .map(str::to_lowercase)
        .collect();
    entries.sort();
    entries.dedup();
    let mut code = String::from(
        "/// Common and breached passwords, lowercased and sorted.\npub static BLOCKLIST: &[&str] = &[\n",
    );
    for entry in &entries {
        code.push_str(&format!("    {entry:?},\n"));
    }
    code.push_str("];\n");
    fs::write(out_dir.join("password_blocklist.rs"), code)?;
    Ok(())
}
