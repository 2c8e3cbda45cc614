//! Usernames, emails and role names, normalized in one documented way: Unicode NFKC, then
//! lowercase. The normalized form is what uniqueness and logins compare; the display form is
//! kept as given (after NFKC).
//!
//! Usernames also refuse mixed scripts beyond what UTS #39 calls "highly restrictive" (Latin
//! with Cyrillic or Greek, say), and carry a skeleton (UTS #39 confusable detection) that is
//! unique among users, so no name can pass for another one.

use unicode_normalization::UnicodeNormalization as _;
use unicode_security::{RestrictionLevel, RestrictionLevelDetection as _};

use super::ParseError;

/// NFKC, then lowercase: the form stored in `*_normalized` columns and compared on login.
pub fn normalize(value: &str) -> String {
    value.nfkc().collect::<String>().to_lowercase()
}

/// A username: 1 to 64 characters after NFKC; letters, digits (any script), `.`, `_` and `-`;
/// starting with a letter or digit. No `@`, so a login name is never mistaken for an email.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username {
    display: String,
    normalized: String,
}

impl Username {
    /// Longest username, in characters.
    pub const MAX_LEN: usize = 64;

    /// Checks and normalizes a username.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let display: String = value.nfkc().collect();
        let length = display.chars().count();
        if length == 0 {
            return Err(ParseError::new("must not be empty"));
        }
        if length > Self::MAX_LEN {
            return Err(ParseError::new(format!(
                "must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        if !display.chars().next().is_some_and(char::is_alphanumeric) {
            return Err(ParseError::new("must start with a letter or a digit"));
        }
        if let Some(bad) = display
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(ParseError::new(format!(
                "may hold only letters, digits, '.', '_' and '-', not {}",
                describe(bad)
            )));
        }
        if !display
            .as_str()
            .check_restriction_level(RestrictionLevel::HighlyRestrictive)
        {
            return Err(ParseError::new(
                "must not mix scripts that look alike (such as Latin with Cyrillic or Greek)",
            ));
        }
        let normalized = display.to_lowercase();
        Ok(Self {
            display,
            normalized,
        })
    }

    /// A username as the database holds it, both forms: it was checked when it was written
    /// (and a rule added since must not lock its owner out).
    pub(crate) fn stored(display: String, normalized: String) -> Self {
        Self {
            display,
            normalized,
        }
    }

    /// The UTS #39 skeleton of the normalized name: two names with the same skeleton look
    /// alike (`bob` and `b0b`, `paypal` and `pаypal`), and only one of them may exist.
    pub fn skeleton(&self) -> String {
        unicode_security::skeleton(&self.normalized)
            .collect::<String>()
            .to_lowercase()
    }

    /// The username as given (after NFKC).
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The form compared for uniqueness and login.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }
}

/// An email address: `local@domain`, at most 254 characters, the local part at most 64, the
/// domain made of dot-separated labels. No control characters or spaces. Deliverability is
/// not checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email {
    display: String,
    normalized: String,
}

impl Email {
    /// Checks and normalizes an email address.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let display: String = value.nfkc().collect();
        if display.is_empty() {
            return Err(ParseError::new("must not be empty"));
        }
        if display.chars().count() > 254 {
            return Err(ParseError::new("must be at most 254 characters"));
        }
        if let Some(bad) = display
            .chars()
            .find(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ParseError::new(format!(
                "must not contain {}",
                describe(bad)
            )));
        }
        let Some((local, domain)) = display.rsplit_once('@') else {
            return Err(ParseError::new("must be of the form name@domain"));
        };
        if local.is_empty() || local.chars().count() > 64 || local.contains('@') {
            return Err(ParseError::new(
                "the part before '@' must hold 1 to 64 characters and no '@'",
            ));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|label| {
                label.is_empty()
                    || label.starts_with('-')
                    || label.ends_with('-')
                    || !label.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
        {
            return Err(ParseError::new(
                "the part after '@' must be a domain such as example.com",
            ));
        }
        let normalized = display.to_lowercase();
        Ok(Self {
            display,
            normalized,
        })
    }

    /// An address as the database holds it, both forms: it was checked when it was written.
    pub(crate) fn stored(display: String, normalized: String) -> Self {
        Self {
            display,
            normalized,
        }
    }

    /// The address as given (after NFKC).
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The form compared for uniqueness and login.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    /// The part before the `@`, normalized (the password policy refuses passwords holding it).
    pub fn local_part(&self) -> &str {
        self.normalized
            .rsplit_once('@')
            .map(|(local, _)| local)
            .unwrap_or(&self.normalized)
    }
}

/// A client's public identifier: 1 to 128 of ASCII letters, digits, `.`, `_`, `-` and `:`,
/// starting with a letter or digit. Compared exactly (case matters, as in RFC 6749).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    /// Checks a client id.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        if value.is_empty() || value.len() > 128 {
            return Err(ParseError::new("must hold 1 to 128 characters"));
        }
        if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(ParseError::new("must start with a letter or a digit"));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return Err(ParseError::new(format!(
                "may hold only ASCII letters, digits, '.', '_', '-' and ':', not {}",
                describe(bad)
            )));
        }
        Ok(Self(value.to_owned()))
    }

    /// A client id as the database holds it: it was checked when it was written (and a rule
    /// added since must not lock its client out).
    pub(crate) fn stored(value: String) -> Self {
        Self(value)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a free-text description: at most `max` characters, no control characters other
/// than newlines and tabs.
pub fn check_description(value: &str, max: usize) -> Result<(), ParseError> {
    if value.chars().count() > max {
        return Err(ParseError::new(format!("must be at most {max} characters")));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(ParseError::new(format!(
            "must not contain {}",
            describe(bad)
        )));
    }
    Ok(())
}

/// A role name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName(String);

impl RoleName {
    /// Checks a role name.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        if value.is_empty() || value.len() > 64 {
            return Err(ParseError::new("must hold 1 to 64 characters"));
        }
        if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(ParseError::new("must start with a lowercase letter"));
        }
        if let Some(bad) = value.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        }) {
            return Err(ParseError::new(format!(
                "may hold only a-z, 0-9, '-', '_' and '.', not {}",
                describe(bad)
            )));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A character as a caller can read it in an error: printable ones quoted, others as U+XXXX.
fn describe(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("'{c}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalized_with_nfkc_and_lowercase() {
        let fullwidth = Username::parse("Ａｌｉｃｅ").unwrap();
        let plain = Username::parse("alice").unwrap();
        assert_eq!(fullwidth.normalized(), plain.normalized());
        assert_eq!(Username::parse("Alice").unwrap().as_str(), "Alice");
        assert_eq!(
            Username::parse("Zoë.o-k_1").unwrap().normalized(),
            "zoë.o-k_1"
        );
    }

    #[test]
    fn usernames_refuse_what_could_confuse() {
        for bad in [
            "",
            " alice",
            "alice\u{0}",
            "al ice",
            "alice@example.com",
            "-alice",
            "a\u{202e}b",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Username::parse(&"a".repeat(65)).is_err());
        assert!(Username::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn look_alike_usernames_share_a_skeleton_or_are_refused() {
        let skeleton = |name: &str| Username::parse(name).unwrap().skeleton();
        assert_eq!(skeleton("bob"), skeleton("b0b"));
        assert_eq!(skeleton("Alice"), skeleton("alice"));
        assert_ne!(skeleton("alice"), skeleton("alicia"));
        // Latin with a Cyrillic `а`: mixed scripts that look alike are refused outright…
        assert!(Username::parse("p\u{0430}ypal").is_err());
        // …and an all-Cyrillic look-alike collides through its skeleton.
        assert_eq!(
            skeleton("\u{0441}\u{043e}\u{0440}\u{0435}"),
            skeleton("cope")
        );
        // One script, or Latin with Han, is fine.
        assert!(Username::parse("\u{043c}\u{0438}\u{0440}").is_ok());
        assert!(Username::parse("li\u{674e}").is_ok());
    }

    #[test]
    fn client_ids_are_plain_ascii() {
        assert!(ClientId::parse("billing-api:prod_2").is_ok());
        for bad in ["", "-x", "a b", "a/b", "ünï", &"a".repeat(129)] {
            assert!(ClientId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn descriptions_refuse_control_characters() {
        assert!(check_description("line one\nline two", 100).is_ok());
        assert!(check_description("bell\u{7}", 100).is_err());
        assert!(check_description(&"x".repeat(101), 100).is_err());
    }

    #[test]
    fn emails_need_a_local_part_and_a_domain() {
        let email = Email::parse("Alice.Smith@Example.COM").unwrap();
        assert_eq!(email.normalized(), "alice.smith@example.com");
        assert_eq!(email.local_part(), "alice.smith");
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "a b@example.com",
            "alice@exa_mple.com",
            "alice@-x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn role_names_are_plain_lowercase() {
        assert!(RoleName::parse("admin").is_ok());
        assert!(RoleName::parse("billing.read-only_2").is_ok());
        for bad in ["", "Admin", "1admin", "ad min", "ad:min"] {
            assert!(RoleName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_name_either_parses_to_a_stable_normal_form_or_is_refused(value in "\\PC{0,80}|.{0,80}") {
                if let Ok(name) = Username::parse(&value) {
                    prop_assert!(!name.normalized().chars().any(char::is_control));
                    prop_assert!(name.normalized().chars().count() <= 64);
                    let again = Username::parse(name.as_str()).expect("a parsed name parses again");
                    prop_assert_eq!(again.normalized(), name.normalized());
                    prop_assert_eq!(normalize(name.normalized()), name.normalized());
                }
                if let Ok(email) = Email::parse(&value) {
                    prop_assert!(email.as_str().len() <= 254);
                    prop_assert!(email.normalized().contains('@'));
                    prop_assert!(!email.as_str().chars().any(|c| c.is_control() || c.is_whitespace()));
                }
                if let Ok(role) = RoleName::parse(&value) {
                    prop_assert_eq!(RoleName::parse(role.as_str()).map(|r| r.as_str().to_owned()).ok(), Some(role.as_str().to_owned()));
                }
                let _ = ClientId::parse(&value);
                let _ = check_description(&value, 16);
            }

            #[test]
            fn emails_of_any_shape_never_panic(local in "[^@]{0,70}", domain in ".{0,200}") {
                let _ = Email::parse(&format!("{local}@{domain}"));
            }
        }
    }
}
