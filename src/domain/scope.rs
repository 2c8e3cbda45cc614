//! Scopes are `resource:action` (RFC 6749 section 3.3 scope tokens, further constrained).
//! A granted `R:admin` satisfies every `R:…` scope (so `R:write` and `R:read`, and for
//! `keystone:admin` every Keystone scope); `R:write` satisfies `R:read`. An action may name a
//! part of the resource before its verb (`keystone:users.write`): the same rule then applies
//! within that part (`keystone:users.write` satisfies `keystone:users.read`).

use std::collections::BTreeSet;

use super::ParseError;

/// The resource of Keystone's own scopes.
pub const KEYSTONE_RESOURCE: &str = "keystone";

/// One scope, `resource:action`: the resource is 1 to 64 of `a-z 0-9 . _ -`, the action
/// 1 to 64 of the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Checks a scope.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let Some((resource, action)) = value.split_once(':') else {
            return Err(ParseError::new("must be of the form resource:action"));
        };
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 64
                && part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        };
        if !valid(resource) || !valid(action) {
            return Err(ParseError::new(
                "resource and action must each hold 1 to 64 of a-z, 0-9, '.', '_' and '-'",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The scope as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the colon.
    pub fn resource(&self) -> &str {
        self.0.split_once(':').map(|(r, _)| r).unwrap_or(&self.0)
    }

    /// Whether this is one of Keystone's own scopes (`keystone:…`), which are never implied:
    /// a token carries one only when it was asked for by name, for Keystone's audience.
    pub fn is_keystones(&self) -> bool {
        self.resource() == KEYSTONE_RESOURCE
    }

    /// The part after the colon.
    pub fn action(&self) -> &str {
        self.0.split_once(':').map(|(_, a)| a).unwrap_or_default()
    }

    /// Whether holding `self` allows what `required` allows (see the module doc).
    pub fn satisfies(&self, required: &Scope) -> bool {
        if self == required {
            return true;
        }
        if self.resource() != required.resource() {
            return false;
        }
        if self.action() == "admin" {
            return true;
        }
        let split = |action: &'_ str| -> (String, String) {
            match action.rsplit_once('.') {
                Some((part, verb)) => (part.to_owned(), verb.to_owned()),
                None => (String::new(), action.to_owned()),
            }
        };
        let (held_part, held_verb) = split(self.action());
        let (required_part, required_verb) = split(required.action());
        held_part == required_part
            && matches!(
                (held_verb.as_str(), required_verb.as_str()),
                ("admin", "write" | "read") | ("write", "read")
            )
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of scopes, kept sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses each scope; the first bad one fails the whole set.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, ParseError> {
        values
            .into_iter()
            .map(|value| {
                Scope::parse(value).map_err(|error| ParseError::new(format!("`{value}`: {error}")))
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    /// Parses a space-separated list (the `scope` claim of RFC 9068 and RFC 7662).
    pub fn parse_space_separated(value: &str) -> Result<Self, ParseError> {
        Self::parse(value.split(' ').filter(|s| !s.is_empty()))
    }

    /// Whether some scope of the set satisfies `required`.
    pub fn satisfies(&self, required: &Scope) -> bool {
        self.0.iter().any(|held| held.satisfies(required))
    }

    /// The first of `required` that the set does not satisfy.
    pub fn first_missing<'a>(&self, required: &'a ScopeSet) -> Option<&'a Scope> {
        required.0.iter().find(|scope| !self.satisfies(scope))
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds a scope.
    pub fn insert(&mut self, scope: Scope) {
        self.0.insert(scope);
    }

    /// The scopes as space-separated text.
    pub fn to_space_separated(&self) -> String {
        self.0
            .iter()
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The scopes as strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.as_str().to_owned()).collect()
    }

    /// The set without Keystone's own scopes: what a grant that names no scope gets.
    pub fn without_keystones(&self) -> Self {
        self.0
            .iter()
            .filter(|s| !s.is_keystones())
            .cloned()
            .collect()
    }

    /// What both sets allow: each scope of either that the other satisfies (`orders:admin`
    /// and `orders:read` meet in `orders:read`).
    pub fn meet(&self, other: &ScopeSet) -> Self {
        let within = |from: &ScopeSet, to: &ScopeSet| {
            from.0
                .iter()
                .filter(|scope| to.satisfies(scope))
                .cloned()
                .collect::<Vec<_>>()
        };
        within(self, other)
            .into_iter()
            .chain(within(other, self))
            .collect()
    }

    /// The first of Keystone's own scopes in the set, if any.
    pub fn first_keystones(&self) -> Option<&Scope> {
        self.0.iter().find(|s| s.is_keystones())
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> Scope {
        Scope::parse(s).unwrap()
    }

    #[test]
    fn admin_satisfies_write_and_read_and_write_satisfies_read() {
        assert!(scope("keystone:admin").satisfies(&scope("keystone:users.read")));
        assert!(scope("keystone:admin").satisfies(&scope("keystone:introspect")));
        assert!(scope("keystone:users.write").satisfies(&scope("keystone:users.read")));
        assert!(!scope("keystone:users.write").satisfies(&scope("keystone:clients.read")));
        assert!(!scope("keystone:users.read").satisfies(&scope("keystone:users.write")));
        assert!(!scope("keystone:users.write").satisfies(&scope("keystone:admin")));
        assert!(scope("orders:admin").satisfies(&scope("orders:write")));
        assert!(scope("orders:admin").satisfies(&scope("orders:read")));
        assert!(scope("orders:write").satisfies(&scope("orders:read")));
        assert!(!scope("orders:read").satisfies(&scope("orders:write")));
        assert!(!scope("orders:write").satisfies(&scope("orders:admin")));
        assert!(!scope("orders:admin").satisfies(&scope("invoices:read")));
        assert!(scope("orders:refund").satisfies(&scope("orders:refund")));
        assert!(scope("orders:admin").satisfies(&scope("orders:refund")));
        assert!(!scope("orders:write").satisfies(&scope("orders:refund")));
    }

    #[test]
    fn two_sets_meet_in_what_both_allow() {
        let set = |s: &str| ScopeSet::parse_space_separated(s).unwrap();
        let meet = |a: &str, b: &str| set(a).meet(&set(b)).to_space_separated();
        assert_eq!(
            meet("orders:admin", "orders:read orders:write"),
            "orders:read orders:write"
        );
        assert_eq!(meet("orders:read", "orders:admin"), "orders:read");
        assert_eq!(
            meet("orders:write invoices:read", "orders:read"),
            "orders:read"
        );
        assert_eq!(meet("orders:read", "invoices:read"), "");
        assert_eq!(meet("a:read b:read", "b:read a:read"), "a:read b:read");
        for (a, b) in [("orders:admin x:read", "orders:write y:read"), ("a:b", "")] {
            assert_eq!(set(a).meet(&set(b)), set(b).meet(&set(a)), "symmetric");
        }
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for bad in [
            "",
            "orders",
            ":read",
            "orders:",
            "Orders:read",
            "orders:read write",
            "a:b:c",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn keystones_own_scopes_are_told_apart_and_left_out_when_implied() {
        let set = ScopeSet::parse(["keystone:admin", "orders:read", "keystone-x:read"]).unwrap();
        assert_eq!(
            set.without_keystones().to_strings(),
            ["keystone-x:read", "orders:read"]
        );
        assert_eq!(
            set.first_keystones().map(Scope::as_str),
            Some("keystone:admin")
        );
        assert!(
            ScopeSet::parse(["orders:read"])
                .unwrap()
                .first_keystones()
                .is_none()
        );
        assert!(scope("keystone:password.change").is_keystones());
    }

    #[test]
    fn sets_find_the_first_missing_scope() {
        let held = ScopeSet::parse(["orders:write", "invoices:read"]).unwrap();
        let required = ScopeSet::parse(["orders:read", "invoices:write"]).unwrap();
        assert_eq!(
            held.first_missing(&required).map(Scope::as_str),
            Some("invoices:write")
        );
        assert_eq!(
            ScopeSet::parse_space_separated("b:x  a:y")
                .unwrap()
                .to_space_separated(),
            "a:y b:x"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_scope_either_round_trips_or_is_refused(value in "[a-z0-9:._ -]{0,40}|.{0,40}") {
                if let Ok(parsed) = Scope::parse(&value) {
                    prop_assert_eq!(parsed.as_str(), value.as_str());
                    prop_assert_eq!(Scope::parse(parsed.as_str()).ok(), Some(parsed.clone()));
                    prop_assert!(parsed.satisfies(&parsed));
                    prop_assert_eq!(format!("{}:{}", parsed.resource(), parsed.action()), value);
                }
            }

            #[test]
            fn a_scope_list_round_trips_through_its_text(values in proptest::collection::vec("[a-z]{1,8}:[a-z]{1,8}(\\.[a-z]{1,8})?", 0..20)) {
                let set = ScopeSet::parse(values.iter().map(String::as_str)).expect("valid scopes");
                let text = set.to_space_separated();
                let again = ScopeSet::parse_space_separated(&text).expect("its own text parses");
                prop_assert_eq!(again.to_strings(), set.to_strings());
                prop_assert!(set.first_missing(&again).is_none());
            }

            #[test]
            fn any_scope_text_never_panics(text in ".{0,200}") {
                let _ = ScopeSet::parse_space_separated(&text);
                let _ = ScopeSet::parse(text.split(',')) ;
            }
        }
    }
}
