//! The settings read from TOML and the environment, and their rules.

use std::time::Duration;

use super::{validate::check_quota, *};

fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
    Settings::from_figment(Figment::new().merge(Toml::string(toml)))
}

#[test]
fn defaults_are_valid_and_match_the_contract() {
    let settings = from_toml("").unwrap();
    assert_eq!(settings.grpc_addr.to_string(), "127.0.0.1:50051");
    assert_eq!(settings.http_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.issuer, "http://127.0.0.1:8080");
    assert_eq!(settings.tokens.access_ttl, Duration::from_secs(900));
    assert_eq!(settings.tokens.refresh_ttl, Duration::from_secs(30 * 86400));
    assert_eq!(settings.keys.publish_ahead, Duration::from_secs(25 * 60));
    assert_eq!(settings.auth.password_min_length, 15);
    assert_eq!(settings.reflection, ReflectionMode::Open);
    assert!(settings.is_sqlite());
}

#[test]
fn durations_are_read_in_human_form() {
    let settings = from_toml("[tokens]\naccess_ttl = \"10m\"\nrefresh_ttl = \"7d\"").unwrap();
    assert_eq!(settings.tokens.access_ttl, Duration::from_secs(600));
    assert_eq!(settings.tokens.refresh_ttl, Duration::from_secs(7 * 86400));
}

#[test]
fn a_bad_value_names_the_setting_and_the_value() {
    let error = from_toml("[auth]\npassword_min_length = 4")
        .unwrap_err()
        .to_string();
    assert!(error.contains("auth.password_min_length"), "{error}");
    assert!(error.contains('4'), "{error}");

    let error = from_toml("[[ext_authz.routes]]\npath_prefix = \"/x\"\nroles = [\"Not A Role\"]")
        .unwrap_err()
        .to_string();
    assert!(error.contains("ext_authz.routes.roles"), "{error}");

    for strength in ["5", "-1", "255"] {
        let error = from_toml(&format!("[auth]\npassword_min_strength = {strength}"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("auth.password_min_strength"), "{error}");
    }

    for interval in ["0s", "500ms", "25h"] {
        let error = from_toml(&format!("[log]\notlp_metrics_interval = \"{interval}\""))
            .unwrap_err()
            .to_string();
        assert!(error.contains("log.otlp_metrics_interval"), "{error}");
    }

    let error = from_toml("[tokens]\naccess_ttl = \"soon\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("tokens.access_ttl"), "{error}");
    assert!(error.contains("`soon`"), "{error}");
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let error = from_toml(
        "issuer = \"not a url\"\n[auth]\npassword_min_length = 4\n[server]\nmax_message_size = 10\n\
         [cluster]\nname = \"\"",
    )
    .unwrap_err()
    .to_string();
    for setting in [
        "issuer",
        "auth.password_min_length",
        "server.max_message_size",
        "cluster.name",
    ] {
        assert!(
            error.contains(&format!("`{setting}`")),
            "{setting}: {error}"
        );
    }
    assert_eq!(
        error.matches("server.max_message_size` =").count(),
        1,
        "each rule once: {error}"
    );
}

#[test]
fn an_unknown_section_in_the_environment_is_refused_and_kubernetes_names_are_not() {
    let names = |names: &[&str]| unknown_variable(names.iter().map(std::ffi::OsString::from));
    assert_eq!(
        names(&["KEYSTONE_TOKENS__ACCESS_TTL", "KEYSTONE_TSL__CERT_FILE"]).as_deref(),
        Some("KEYSTONE_TSL__CERT_FILE")
    );
    assert_eq!(
        names(&["KEYSTONE_GRPC_ADDR__X"]).as_deref(),
        Some("KEYSTONE_GRPC_ADDR__X"),
        "a plain setting has no keys"
    );
    assert_eq!(
        names(&[
            "KEYSTONE_SERVICE_HOST",
            "KEYSTONE_SERVICE_PORT",
            "KEYSTONE_PORT_50051_TCP",
            "KEYSTONE_PORT_50051_TCP_ADDR",
            "KEYSTONE_CONFIG",
            "KEYSTONE_TEST_DATABASE_URL",
            "KEYSTONE_LIMITS__PER_IP",
            "keystone_tokens__x",
            "OTHER__THING",
        ]),
        None
    );
}

#[test]
fn a_bad_address_from_the_environment_names_the_variable_and_the_value() {
    // What `Settings::load` does with KEYSTONE_GRPC_ADDR=not-an-address.
    let error = Settings::from_figment(
        Figment::new().merge(Serialized::default("grpc_addr", "not-an-address")),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("`grpc_addr` = `not-an-address`"), "{error}");
    assert!(error.contains("KEYSTONE_GRPC_ADDR"), "{error}");
    assert!(!error.contains("::"), "a Rust type in {error}");
}

#[test]
fn a_bad_secret_is_never_shown() {
    let error =
        Settings::from_figment(Figment::new().merge(Serialized::default("database_url", 42_u32)))
            .unwrap_err()
            .to_string();
    assert!(error.contains("database_url"), "{error}");
    assert!(!error.contains("42"), "{error}");
}

#[test]
fn quotas_are_read_as_text() {
    let settings = from_toml(
        "[limits]\nper_ip = \"50/s burst 80\"\nper_client = \"off\"\nper_username = \"5/10m\"",
    )
    .unwrap();
    assert_eq!(
        settings.limits.per_ip,
        Quota {
            rate: 50,
            per: Duration::from_secs(1),
            burst: 80
        }
    );
    assert_eq!(settings.limits.per_client.interval(), None);
    assert_eq!(
        settings.limits.per_username,
        Quota {
            rate: 5,
            per: Duration::from_secs(600),
            burst: 5
        }
    );
    assert_eq!(
        settings.limits.per_username.interval(),
        Some(Duration::from_secs(120))
    );
    for bad in [
        "per_ip = \"50\"",
        "per_ip = \"50/fortnight\"",
        "per_ip = \"x/s\"",
        "per_ip = \"5/s burst\"",
        "per_ip = \"5/s burst 0\"",
        "per_ip = \"5/s rush 9\"",
        "per_ip = \"5/0s\"",
        "per_ip = \"5/2d\"",
        "per_ip = \"4000000000/1ms\"",
        "per_ip = 50",
    ] {
        let error = from_toml(&format!("[limits]\n{bad}"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("limits.per_ip"), "{bad}: {error}");
    }
}

#[test]
fn trusted_proxies_are_addresses_or_blocks() {
    let settings =
        from_toml("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"::1\"]").unwrap();
    let nets: Vec<String> = settings
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
    let error = from_toml("[server]\ntrusted_proxies = [\"proxy.internal\"]")
        .unwrap_err()
        .to_string();
    assert!(error.contains("trusted_proxies"), "{error}");
}

#[test]
fn a_quota_prints_as_it_is_written() {
    for text in [
        "100/1s burst 200",
        "10/60s burst 10",
        "5/1500ms burst 1",
        "off",
    ] {
        let quota: Quota = text.parse().unwrap();
        assert_eq!(quota.to_string(), text);
    }
}

#[test]
fn unknown_keys_in_a_section_are_rejected() {
    let error = from_toml("[tokens]\nacess_ttl = \"10m\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("acess_ttl"), "{error}");
}

#[test]
fn secrets_are_masked_in_errors_and_debug() {
    let error = from_toml("database_url = \"mysql://root:hunter2@db/keystone\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("database_url"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");

    let error = Settings::from_figment(Figment::new().merge(Serialized::default(
        "bootstrap_admin_password",
        123_456_789_012_u64,
    )))
    .unwrap_err()
    .to_string();
    assert!(!error.contains("123456789012"), "{error}");

    let settings = from_toml("database_url = \"postgres://k:hunter2@db/k\"").unwrap();
    assert!(!format!("{settings:?}").contains("hunter2"));
}

#[test]
fn a_cluster_without_redis_refuses_to_start() {
    let error = from_toml("[cluster]\nenabled = true")
        .unwrap_err()
        .to_string();
    assert!(error.contains("cluster.enabled"), "{error}");
    let clustered = "redis_url = \"redis://127.0.0.1:6379\"\n[cluster]\nenabled = true";
    let error = from_toml(clustered).unwrap_err().to_string();
    assert!(error.contains("secrets.pepper"), "{error}");
    let pepper = "\n[secrets]\npepper = \"0123456789abcdef0123456789abcdef\"";
    assert!(from_toml(&format!("{clustered}{pepper}")).is_ok());
}

#[test]
fn durations_have_an_upper_bound() {
    let error = from_toml("[tokens]\nrefresh_ttl = \"1000000y\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("tokens.refresh_ttl"), "{error}");
    let error = from_toml("[auth]\nlockout_max_duration = \"100y\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("auth.lockout_max_duration"), "{error}");
}

#[test]
fn bootstrap_credentials_go_together() {
    assert!(from_toml("bootstrap_admin_username = \"root\"").is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_quota_text_parses_or_is_refused_with_the_form(text in "[0-9]{0,11}/[0-9]{0,3}[a-z]{0,4}( burst [0-9]{0,11})?|.{0,40}") {
            match text.parse::<Quota>() {
                Ok(quota) => {
                    let again: Quota = quota.to_string().parse().expect("a quota's text parses");
                    prop_assert_eq!(again, quota);
                    let _ = check_quota("limits.per_ip", &quota);
                }
                Err(message) => prop_assert!(message.contains("burst")),
            }
        }
    }
}

/// Every setting's path (`tokens.access_ttl`), read off the settings struct itself: serde
/// names a section's fields when it refuses an unknown one. Lists (`ext_authz.routes`,
/// `server.trusted_proxies`) count as one setting.
fn setting_paths() -> Vec<String> {
    fn fields(section: &str) -> Option<&'static [&'static str]> {
        let probe = if section.is_empty() {
            "zz_probe".to_owned()
        } else {
            format!("{section}.zz_probe")
        };
        let error = Figment::new()
            .merge(Serialized::default(&probe, 1))
            .extract::<Settings>()
            .err()?;
        error.into_iter().find_map(|error| match error.kind {
            figment::error::Kind::UnknownField(_, expected) => Some(expected),
            _ => None,
        })
    }
    fn walk(section: &str, paths: &mut Vec<String>) {
        for field in fields(section).unwrap_or_default() {
            let path = if section.is_empty() {
                (*field).to_owned()
            } else {
                format!("{section}.{field}")
            };
            if fields(&path).is_some() {
                walk(&path, paths);
            } else {
                paths.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk("", &mut paths);
    paths
}

#[test]
fn the_lists_of_top_level_keys_are_the_structs_own() {
    let paths = setting_paths();
    assert!(paths.len() > 80, "{paths:?}");
    let mut tops: Vec<&str> = paths
        .iter()
        .map(|path| path.split('.').next().unwrap_or_default())
        .collect();
    tops.dedup();
    let mut listed = TOP_LEVEL_KEYS.to_vec();
    listed.sort_unstable();
    tops.sort_unstable();
    assert_eq!(listed, tops, "TOP_LEVEL_KEYS");
    for key in STRING_KEYS {
        assert!(
            paths.iter().any(|path| path == key),
            "{key} is no plain setting"
        );
    }
    for key in SECRET_KEYS {
        assert!(paths.iter().any(|path| path == key), "{key} is no setting");
    }
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail decides the closure's error type.
fn every_setting_is_reachable_from_toml_and_from_the_environment() {
    let paths = setting_paths();
    figment::Jail::expect_with(|jail| {
        // TOML: every setting in one file.
        let mut sections: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for path in &paths {
            let (section, key) = path.rsplit_once('.').unwrap_or(("", path));
            sections.entry(section).or_default().push(key);
        }
        let mut toml = String::new();
        for (section, keys) in &sections {
            if !section.is_empty() {
                toml.push_str(&format!("[{section}]\n"));
            }
            for key in keys {
                toml.push_str(&format!("{key} = \"reached\"\n"));
            }
        }
        jail.create_file("keystone.toml", &toml)?;
        let figment = Settings::sources(Some(Path::new("keystone.toml")))
            .map_err(|error| error.to_string())?;
        for path in &paths {
            assert_eq!(
                figment.find_value(path).ok().and_then(|v| v.into_string()),
                Some("reached".to_owned()),
                "{path} from TOML"
            );
        }
        // The environment: one variable per setting, KEYSTONE_<SECTION>__<KEY>.
        for path in &paths {
            let name = format!("KEYSTONE_{}", path.to_ascii_uppercase().replace('.', "__"));
            jail.set_env(&name, "from-the-environment");
        }
        let figment = Settings::sources(None).map_err(|error| error.to_string())?;
        for path in &paths {
            assert_eq!(
                figment.find_value(path).ok().and_then(|v| v.into_string()),
                Some("from-the-environment".to_owned()),
                "{path} from the environment"
            );
        }
        Ok(())
    });
}

#[test]
fn docs_configuration_names_every_setting_and_no_other() {
    let doc = include_str!("../../docs/configuration.md");
    let paths = setting_paths();
    // The first column of each table row names one setting or more, in backticks.
    let documented: Vec<String> = doc
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| {
            let first = line.split('|').nth(1).unwrap_or_default();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|name| {
                    name.trim_start_matches("[[")
                        .trim_end_matches("]]")
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let undocumented: Vec<&String> = paths.iter().filter(|p| !documented.contains(p)).collect();
    assert!(
        undocumented.is_empty(),
        "docs/configuration.md has no row for {undocumented:?}"
    );
    let unknown: Vec<&String> = documented.iter().filter(|d| !paths.contains(d)).collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents {unknown:?}, which are no settings"
    );
}

/// `keystone.example.toml`: parsed, it is exactly the defaults; every setting is named in it
/// (set, or commented out when unset by default), each under a comment of its own.
#[test]
fn the_example_file_holds_every_setting_at_its_default() {
    use secrecy::ExposeSecret as _;
    let text = include_str!("../../keystone.example.toml");
    let parsed = from_toml(text).expect("the example parses and is valid");
    let defaults = Settings::default();
    assert_eq!(format!("{parsed:?}"), format!("{defaults:?}"));
    // Debug redacts secrets: the one set in the example is compared as well.
    assert_eq!(
        parsed.database_url.expose_secret(),
        defaults.database_url.expose_secret()
    );

    let is_key = |key: &str| {
        !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let mut named = std::collections::BTreeSet::new();
    let mut section = String::new();
    let mut in_list = false;
    let mut previous = "";
    for line in text.lines().map(str::trim) {
        let bare = line.trim_start_matches('#').trim();
        if let Some(list) = bare.strip_prefix("[[").and_then(|b| b.strip_suffix("]]")) {
            assert!(previous.starts_with('#'), "no comment before {line}");
            named.insert(list.to_owned());
            in_list = true;
        } else if let Some(table) = bare.strip_prefix('[').and_then(|b| b.strip_suffix(']')) {
            section = table.to_owned();
            in_list = false;
        } else if let Some((key, _)) = bare.split_once('=')
            && is_key(key.trim())
            && !in_list
        {
            let key = key.trim();
            let path = if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            };
            let described = previous.starts_with('#')
                && !previous
                    .trim_start_matches('#')
                    .split_once('=')
                    .is_some_and(|(k, _)| is_key(k.trim()));
            assert!(described, "no comment of its own before `{path}`");
            named.insert(path);
        }
        previous = line;
    }
    let settings: std::collections::BTreeSet<String> = setting_paths().into_iter().collect();
    let missing: Vec<_> = settings.difference(&named).collect();
    let unknown: Vec<_> = named.difference(&settings).collect();
    assert!(
        missing.is_empty(),
        "not in keystone.example.toml: {missing:?}"
    );
    assert!(unknown.is_empty(), "not settings: {unknown:?}");
}

#[test]
fn trusted_issuers_are_read_and_each_broken_rule_is_named() {
    let settings = from_toml(
        "[[federation.issuers]]\nname = \"cluster\"\nissuer = \"https://kubernetes.default.svc\"\n\
         jwks_uri = \"https://kubernetes.default.svc/openid/v1/jwks\"\n\
         ca_file = \"/var/run/secrets/kubernetes.io/serviceaccount/ca.crt\"\n\
         [[federation.issuers]]\nname = \"spire\"\nissuer = \"https://oidc.example.org\"\n\
         jwks_file = \"/etc/spire/bundle.json\"\naudience = \"keystone\"\nmax_assertion_age = \"5m\"",
    )
    .unwrap();
    let issuers = &settings.federation.issuers;
    assert_eq!(issuers.len(), 2);
    assert_eq!(issuers[0].max_assertion_age, Duration::from_secs(3600));
    assert_eq!(issuers[1].max_assertion_age, Duration::from_secs(300));
    assert_eq!(issuers[1].audience, "keystone");
    // Loopback may be plain HTTP (a sidecar, the tests).
    for uri in [
        "http://127.0.0.1:9000/jwks",
        "http://[::1]/jwks",
        "http://localhost/k",
    ] {
        let toml =
            format!("[[federation.issuers]]\nname = \"a\"\nissuer = \"i\"\njwks_uri = \"{uri}\"");
        assert!(from_toml(&toml).is_ok(), "{uri}");
    }
    let issuer = |body: &str| format!("[[federation.issuers]]\n{body}");
    for (case, toml, setting) in [
        (
            "plain HTTP over a network",
            issuer("name = \"a\"\nissuer = \"i\"\njwks_uri = \"http://keys.example.com/jwks\""),
            "federation.issuers.jwks_uri",
        ),
        (
            "credentials in the URI",
            issuer("name = \"a\"\nissuer = \"i\"\njwks_uri = \"https://u:p@keys.example.com/\""),
            "federation.issuers.jwks_uri",
        ),
        (
            "no keys",
            issuer("name = \"a\"\nissuer = \"i\""),
            "federation.issuers.jwks_uri",
        ),
        (
            "both sources",
            issuer("name = \"a\"\nissuer = \"i\"\njwks_uri = \"https://k/\"\njwks_file = \"/k\""),
            "federation.issuers.jwks_uri",
        ),
        (
            "a CA for a file",
            issuer("name = \"a\"\nissuer = \"i\"\njwks_file = \"/k\"\nca_file = \"/ca\""),
            "federation.issuers.ca_file",
        ),
        (
            "a name with capitals",
            issuer("name = \"Cluster\"\nissuer = \"i\"\njwks_file = \"/k\""),
            "federation.issuers.name",
        ),
        (
            "no issuer",
            issuer("name = \"a\"\nissuer = \"\"\njwks_file = \"/k\""),
            "federation.issuers.issuer",
        ),
        (
            "a name twice",
            format!(
                "{}\n{}",
                issuer("name = \"a\"\nissuer = \"i\"\njwks_file = \"/k\""),
                issuer("name = \"a\"\nissuer = \"j\"\njwks_file = \"/k\"")
            ),
            "federation.issuers.name",
        ),
        (
            "an issuer twice",
            format!(
                "{}\n{}",
                issuer("name = \"a\"\nissuer = \"i\"\njwks_file = \"/k\""),
                issuer("name = \"b\"\nissuer = \"i\"\njwks_file = \"/k\"")
            ),
            "federation.issuers.issuer",
        ),
        (
            "a day-old token",
            issuer("name = \"a\"\nissuer = \"i\"\njwks_file = \"/k\"\nmax_assertion_age = \"2d\""),
            "federation.issuers.max_assertion_age",
        ),
        (
            "keys kept shorter than the refetch interval",
            "[federation]\nrefetch_interval = \"10m\"\nkeys_max_age = \"5m\"".to_owned(),
            "federation.keys_max_age",
        ),
        (
            "no time to fetch",
            "[federation]\nfetch_timeout = \"1ms\"".to_owned(),
            "federation.fetch_timeout",
        ),
    ] {
        let error = from_toml(&toml).expect_err(case).to_string();
        assert!(error.contains(setting), "{case}: {error}");
        assert!(
            !error.contains("u:p@"),
            "{case}: credentials shown: {error}"
        );
    }
}
