//! The password policy, after NIST SP 800-63B-4 section 3.1.1.2 for single-factor passwords:
//! a minimum length (15 by default, never under 8) and a maximum of 128, counted in code points
//! after NFKC; any Unicode; no composition rules and no truncation; not one of the common or
//! breached passwords shipped with Keystone (`data/`); not containing the username or the
//! email's local part.

use secrecy::{ExposeSecret as _, SecretString};
use unicode_normalization::UnicodeNormalization as _;

use super::{Email, ParseError, Username};

mod blocklist {
    include!(concat!(env!("OUT_DIR"), "/password_blocklist.rs"));
}

/// The longest password accepted, in code points.
pub const MAX_PASSWORD_LENGTH: usize = 128;

/// Checks new passwords.
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    min_length: usize,
}

impl PasswordPolicy {
    /// A policy with the given minimum length (clamped to at least 8).
    pub fn new(min_length: u32) -> Self {
        Self {
            min_length: (min_length as usize).max(8),
        }
    }

    /// Checks a new password for an account. The message names the rule that failed and never
    /// the password.
    pub fn check(
        &self,
        password: &SecretString,
        username: Option<&Username>,
        email: Option<&Email>,
    ) -> Result<(), ParseError> {
        let normalized: String = password.expose_secret().nfkc().collect();
        let length = normalized.chars().count();
        if length < self.min_length {
            return Err(ParseError::new(format!(
                "must be at least {} characters long",
                self.min_length
            )));
        }
        if length > MAX_PASSWORD_LENGTH {
            return Err(ParseError::new(format!(
                "must be at most {MAX_PASSWORD_LENGTH} characters long"
            )));
        }
        let lowered = normalized.to_lowercase();
        if is_common(&lowered) {
            return Err(ParseError::new(
                "is one of the most common or breached passwords; choose another",
            ));
        }
        if let Some(username) = username
            && username.normalized().chars().count() >= 3
            && lowered.contains(username.normalized())
        {
            return Err(ParseError::new("must not contain the username"));
        }
        if let Some(email) = email
            && email.local_part().chars().count() >= 3
            && lowered.contains(email.local_part())
        {
            return Err(ParseError::new(
                "must not contain the email address's name part",
            ));
        }
        Ok(())
    }
}

/// Whether a lowercased password is on the shipped blocklist.
fn is_common(lowered: &str) -> bool {
    blocklist::BLOCKLIST
        .binary_search_by(|entry| (*entry).cmp(lowered))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: PasswordPolicy, password: &str) -> Result<(), ParseError> {
        policy.check(&SecretString::from(password), None, None)
    }

    #[test]
    fn the_blocklist_is_sorted_and_large() {
        assert!(blocklist::BLOCKLIST.len() > 30_000);
        assert!(blocklist::BLOCKLIST.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn common_passwords_are_refused_whatever_their_case() {
        let policy = PasswordPolicy::new(8);
        for common in [
            "password",
            "12345678",
            "Password1",
            "QWERTYUIOP",
            "iloveyou",
        ] {
            let error = check(policy, common).unwrap_err();
            assert!(error.0.contains("common"), "{common}: {error}");
        }
        assert!(check(policy, "plum-violet-sofa").is_ok());
    }

    #[test]
    fn length_is_counted_in_code_points_after_nfkc() {
        let policy = PasswordPolicy::new(15);
        assert!(
            check(policy, "short one")
                .unwrap_err()
                .0
                .contains("at least 15")
        );
        // 15 code points, 30 bytes: long enough.
        assert!(check(policy, "ééééééééééééééé").is_ok());
        assert!(
            check(policy, &"x".repeat(129))
                .unwrap_err()
                .0
                .contains("at most 128")
        );
        assert!(check(policy, &"xy".repeat(64)).is_ok());
        // Any character is allowed, spaces and emoji included; nothing is required.
        assert!(check(policy, "correct horse 🐎 battery").is_ok());
    }

    #[test]
    fn the_minimum_is_never_below_eight() {
        assert!(check(PasswordPolicy::new(4), "abcdxyz").is_err());
    }

    #[test]
    fn passwords_holding_the_username_or_email_name_are_refused() {
        let policy = PasswordPolicy::new(8);
        let username = Username::parse("Marguerite").unwrap();
        let email = Email::parse("m.duras@example.com").unwrap();
        let with = |p: &str| policy.check(&SecretString::from(p), Some(&username), Some(&email));
        assert!(
            with("my name is MARGUERITE ok")
                .unwrap_err()
                .0
                .contains("username")
        );
        assert!(
            with("hello m.duras, again")
                .unwrap_err()
                .0
                .contains("email")
        );
        assert!(with("a quiet river at dusk").is_ok());
    }

    #[test]
    fn errors_never_repeat_the_password() {
        let error = check(PasswordPolicy::new(20), "hunter2hunter2").unwrap_err();
        assert!(!error.0.contains("hunter2"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_password_gets_a_verdict_that_never_repeats_it(password in ".{0,200}") {
                if let Err(error) = check(PasswordPolicy::new(15), &password) {
                    prop_assume!(password.chars().count() >= 4);
                    prop_assert!(!error.to_string().contains(&password));
                }
            }
        }
    }
}
