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
    "TokenExchangeGrant",
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
    "EstimatePasswordStrengthRequest",
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
    write_envoy_descriptor(&out_dir)?;

    tonic_prost_build::configure()
        // A request that does not decode is INVALID_ARGUMENT, not INTERNAL (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::Codec")
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

/// Compiles Envoy's `envoy.service.auth.v3` (ext_authz) from the `.proto` files the
/// `envoy-types` crate ships, so that server reflection can describe `Authorization/Check`
/// too. The crate's sources are found in Cargo's registry; where they are not (a vendored
/// build), the descriptor is left empty and reflection simply does not list the service.
fn write_envoy_descriptor(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let target = out_dir.join("envoy_descriptor.bin");
    let Some(root) = envoy_types_protos() else {
        println!(
            "cargo:warning=envoy-types sources not found: reflection will not list Envoy's Authorization service"
        );
        fs::write(&target, [])?;
        return Ok(());
    };
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "googleapis",
        "xds",
        "protoc-gen-validate",
        "cel-spec",
    ]
    .iter()
    .map(|dir| root.join(dir))
    .filter(|dir| dir.is_dir())
    .collect();
    let fds = protox::compile(["envoy/service/auth/v3/external_auth.proto"], &includes)?;
    fs::write(&target, fds.encode_to_vec())?;
    Ok(())
}

/// `<cargo home>/registry/src/<index>/envoy-types-<locked version>/proto`.
fn envoy_types_protos() -> Option<PathBuf> {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = fs::read_to_string("Cargo.lock").ok()?;
    let version = lock
        .split("[[package]]")
        .find(|package| package.contains("name = \"envoy-types\""))?
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))?
        .trim_end_matches('"')
        .to_owned();
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    fs::read_dir(cargo_home.join("registry/src"))
        .ok()?
        .filter_map(Result::ok)
        .map(|index| index.path().join(format!("envoy-types-{version}/proto")))
        .find(|path| path.is_dir())
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
