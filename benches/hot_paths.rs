//! Criterion benches of the functions on Keystone's hot paths: token signing and verification
//! (EdDSA and ES256), the revocation lookup at a million entries, the client-secret check, the
//! scope check, one argon2id hash at the default parameters (the cost of a login), and the
//! password strength estimate (zxcvbn) of the longest password and of typical ones.
//!
//! Run: `cargo bench --bench hot_paths` (add `-- --quick` for a fast pass).

// A benchmark sets its scene with the machine's time (clippy.toml keeps Keystone's own code
// to `keystone::clock`).
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;

use chrono::{Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use keystone::{
    config::{KeyAlgorithm, PasswordHashSettings},
    domain::{
        AccountNames, PasswordPolicy, Revocation, RevocationKind, Scope, ScopeSet, TokenFacts,
    },
    password::PasswordHasher,
    revocation::MemoryRevocations,
    secrets::Pepper,
    token::{Audience, Claims, KeyRing, Kind, TokenIssuer, TokenVerifier},
};
use secrecy::SecretString;

fn claims() -> Claims {
    let now = Utc::now();
    Claims {
        iss: "http://127.0.0.1:8080".into(),
        sub: "0193f0c4-7b6e-7c1a-9d0e-2f1a3b4c5d6e".into(),
        aud: Audience::One("keystone".into()),
        exp: (now + Duration::minutes(15)).timestamp(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: "0193f0c4-7b6e-7c1a-9d0e-2f1a3b4c5d6f".into(),
        client_id: "keystone".into(),
        scope: "orders:read orders:write invoices:read".into(),
        kind: Kind::User,
        roles: vec!["clerk".into()],
        sid: Some("0193f0c4-7b6e-7c1a-9d0e-2f1a3b4c5d70".into()),
        preferred_username: Some("alice".into()),
        cnf: None,
        act: None,
    }
}

fn tokens(c: &mut Criterion) {
    for (name, algorithm) in [
        ("EdDSA", KeyAlgorithm::EdDSA),
        ("ES256", KeyAlgorithm::ES256),
    ] {
        let ring = KeyRing::ephemeral(algorithm).expect("a key");
        let issuer = TokenIssuer::new(ring.clone());
        let verifier = TokenVerifier::new(
            ring.clone(),
            "http://127.0.0.1:8080".into(),
            std::time::Duration::from_secs(30),
        );
        let claims = claims();
        let token = issuer.sign(&claims).expect("signed");
        c.bench_function(&format!("sign {name}"), |b| {
            b.iter(|| issuer.sign(black_box(&claims)))
        });
        c.bench_function(&format!("verify {name} (remembered)"), |b| {
            b.iter(|| verifier.verify(black_box(&token), Utc::now()))
        });
        // A new verifier per round: every verification is a first one.
        c.bench_function(&format!("verify {name} (first time)"), |b| {
            b.iter_batched(
                || {
                    TokenVerifier::new(
                        ring.clone(),
                        "http://127.0.0.1:8080".into(),
                        std::time::Duration::from_secs(30),
                    )
                },
                |fresh| fresh.verify(black_box(&token), Utc::now()),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

/// The resident set size of this process, in bytes (Linux; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn revocation_lookup(c: &mut Criterion) {
    const ENTRIES: u64 = 1_000_000;
    let before = resident_bytes();
    let set = MemoryRevocations::default();
    let expires_at = Utc::now() + Duration::hours(1);
    for n in 0..ENTRIES {
        set.insert(&Revocation {
            kind: RevocationKind::Token,
            key: format!("0193f0c4-7b6e-7c1a-9d0e-{n:012}"),
            not_before: Utc::now(),
            expires_at,
        });
    }
    if let (Some(before), Some(after)) = (before, resident_bytes()) {
        // Printed, not asserted: the memory target is checked by reading this.
        println!(
            "revocation set: {} bytes per revoked token at {ENTRIES} entries (RSS growth)",
            after.saturating_sub(before) / ENTRIES
        );
    }
    let facts = TokenFacts {
        token_id: "0193f0c4-7b6e-7c1a-9d0e-000000500000",
        session_id: Some("0193f0c4-7b6e-7c1a-9d0e-2f1a3b4c5d70"),
        subject: "0193f0c4-7b6e-7c1a-9d0e-2f1a3b4c5d6e",
        issued_at: Utc::now().timestamp(),
        actors: &[],
    };
    c.bench_function("revocation lookup, 1M entries", |b| {
        b.iter(|| set.is_revoked(black_box(facts)))
    });
}

fn client_secret(c: &mut Criterion) {
    let pepper = Pepper::from_secret(&SecretString::from("p".repeat(48)));
    let secret = "kss_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5";
    let stored = pepper.hash_client_secret(secret);
    c.bench_function("client secret check", |b| {
        b.iter(|| pepper.verify_client_secret(black_box(secret), black_box(&stored)))
    });
}

fn scope_check(c: &mut Criterion) {
    let held =
        ScopeSet::parse(["orders:admin", "invoices:read", "keystone:users.write"]).expect("scopes");
    let required = ScopeSet::parse(["orders:read", "keystone:users.read"]).expect("scopes");
    let one = Scope::parse("invoices:write").expect("scope");
    c.bench_function("scope check", |b| {
        b.iter(|| {
            (
                held.first_missing(black_box(&required)),
                held.satisfies(black_box(&one)),
            )
        })
    });
}

fn argon2(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let hasher = PasswordHasher::new(&PasswordHashSettings::default()).expect("a hasher");
    let password = SecretString::from("correct horse battery staple");
    let mut group = c.benchmark_group("argon2id");
    group.sample_size(20);
    group.bench_function("hash, default parameters (19 MiB, t=2, p=1)", |b| {
        b.iter(|| runtime.block_on(hasher.hash(black_box(&password))))
    });
    group.finish();
}

fn password_strength(c: &mut Criterion) {
    let policy = PasswordPolicy::new(15, 3);
    let names = AccountNames {
        username: Some("marguerite"),
        email: Some("m.duras@example.com"),
    };
    let mut group = c.benchmark_group("password strength (zxcvbn)");
    for (name, password) in [
        // The longest password taken: the worst case (zxcvbn reads the first 100 characters).
        (
            "128 random characters",
            "Q8#vT2m!Lr9@xW4pZ7&nB1c$Ks6^Hd3*Jf5(Gy0)Ua8_Ie2+Ob7=Pq4?Rw1~Xe9|Yt3;Zu6:Av2<Bs5>Cd8,Ef0.Gh4/Ij7-Kl1[Mn3]Op6{Qr9}St2%Uv5#Wx8!Yz1@",
        ),
        ("128 characters of a repeat", &"xy".repeat(64)),
        (
            "a four-word passphrase",
            "gravel-otter-quasar-lantern-mosaic",
        ),
        ("a guessable sixteen", "iloveyouiloveyou"),
    ] {
        let password = SecretString::from(password.to_owned());
        group.bench_function(name, |b| {
            b.iter(|| policy.assess(black_box(&password), names))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    tokens,
    revocation_lookup,
    client_secret,
    scope_check,
    argon2,
    password_strength
);
criterion_main!(benches);
