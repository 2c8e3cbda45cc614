//! Request paths as an authorization decision may read them: only those that no server behind
//! a proxy can read as another path.

/// The path as routes are matched against it (without query or fragment, percent-decoded),
/// or why it is refused: anything a server behind Envoy might read as another path. Paths
/// are never resolved here (`/a/../admin` is refused, not taken as `/admin`): Keystone cannot
/// know how an upstream resolves them, so it lets none through. (Envoy's `normalize_path` and
/// `merge_slashes` help upstreams too: turn them on.)
pub fn unambiguous_path(raw: &str) -> Result<String, &'static str> {
    let raw = raw.split(['?', '#']).next().unwrap_or(raw);
    if raw.is_empty() {
        return Ok("/".to_owned());
    }
    if !raw.starts_with('/') {
        return Err("the path must begin with '/'");
    }
    let lower = raw.to_ascii_lowercase();
    if raw.contains([';', '\\']) || lower.contains("%2f") || lower.contains("%5c") {
        return Err("the path holds ';', '\\' or an encoded '/' or '\\'");
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "the path is not UTF-8 once decoded")?;
    if decoded.contains([';', '\\', '%']) || decoded.chars().any(char::is_control) {
        return Err("the path holds ';', '\\', a control character or a double encoding");
    }
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => return Err("the path holds a '.' or '..' segment"),
            "" if i != last => return Err("the path holds '//'"),
            _ => {}
        }
    }
    Ok(decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::unambiguous_path;

    #[test]
    fn plain_paths_are_decoded_and_kept() {
        for (raw, path) in [
            ("/admin/users", "/admin/users"),
            ("/%61dmin/x?y=1", "/admin/x"),
            ("/admin/", "/admin/"),
            ("", "/"),
            ("/", "/"),
            ("/caf%C3%A9", "/café"),
        ] {
            assert_eq!(unambiguous_path(raw).as_deref(), Ok(path), "{raw}");
        }
    }

    #[test]
    fn paths_an_upstream_may_read_otherwise_are_refused() {
        for raw in [
            "/static/..;/admin",
            "/admin;jsessionid=1",
            "/static/%2e%2e/admin",
            "/a/../admin",
            "/./admin",
            "/admin/.",
            "/admin/..",
            "//admin",
            "/api//admin",
            "/admin%2Fusers",
            "/admin%2fusers",
            "/admin%5Cusers",
            "/admin%5cusers",
            "/admin\\users",
            "/admin%3Busers",
            "/%252e%252e/admin",
            "/admin%00",
            "admin",
            "/%ff",
        ] {
            assert!(unambiguous_path(raw).is_err(), "{raw} was let through");
        }
    }
}
