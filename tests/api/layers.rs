//! Dependencies run one way: each module of `src/` uses only the modules below it in
//! [`LAYERS`], so the import graph has no cycle (the sea-orm entities live inside `store`).
//! A new module must take its place in the list, and a use that climbs fails here.

use std::{collections::BTreeSet, path::Path};

/// Keystone's modules, from the bottom up (`src/lib.rs` describes the layers).
const LAYERS: &[&str] = &[
    "clock",
    "error",
    "client_ip",
    "proto",
    "metrics",
    "trace_context",
    "domain",
    "secrets",
    "config",
    "tls",
    "password",
    "store",
    "cluster",
    "revocation",
    "token",
    "federation",
    "service",
    "listener",
    "http",
    "grpc",
    "telemetry",
    "shutdown",
    "app",
    "cli",
    "fuzz",
];

/// The code of a file that counts: no comments, no unit tests.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("a source file");
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(tests) => &text[..tests],
        None => &text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`.
fn uses_of(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first segment of each top-level entry.
            let (mut depth, mut entry, mut end) = (0, String::new(), group.len());
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
                if c == ',' && depth == 0 {
                    used.insert(first_segment(&entry));
                    entry.clear();
                } else {
                    entry.push(c);
                }
            }
            used.insert(first_segment(&entry));
            rest = &group[end..];
        } else {
            used.insert(first_segment(rest));
        }
    }
    used.retain(|name| !name.is_empty() && name != "self");
    used.into_iter()
        .map(|name| match name.as_str() {
            "Error" => "error".to_owned(),
            "Settings" => "config".to_owned(),
            "App" => "app".to_owned(),
            _ => name,
        })
        .collect()
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|name| name != "tests.rs")
        {
            found.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    for module in lib
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
    {
        let module = module.trim_end_matches(';');
        assert!(
            LAYERS.contains(&module),
            "`{module}` has no place in LAYERS (tests/api/layers.rs)"
        );
    }
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut climbs = Vec::new();
    let mut edges = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        let module = first.trim_end_matches(".rs");
        let Some(level) = LAYERS.iter().position(|layer| *layer == module) else {
            // lib.rs, main.rs and the load generator stand outside the layers.
            continue;
        };
        for used in uses_of(&code_of(file)) {
            if used == module {
                continue;
            }
            edges += 1;
            match LAYERS.iter().position(|layer| *layer == used) {
                Some(below) if below < level => {}
                _ => climbs.push(format!("{} uses {used}", relative.display())),
            }
        }
    }
    assert!(edges > 100, "the uses were not found ({edges})");
    assert!(
        climbs.is_empty(),
        "dependencies must run one way (tests/api/layers.rs):\n{}",
        climbs.join("\n")
    );
}

#[test]
fn uses_are_read_from_groups_and_paths() {
    let code =
        "use crate::{a, b::{c, d}, e::f as _};\nfn x() { crate::g::h(); crate::Error::x(); }";
    let used: Vec<String> = uses_of(code).into_iter().collect();
    assert_eq!(used, ["a", "b", "e", "error", "g"]);
}
