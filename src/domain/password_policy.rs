//! The password policy, after NIST SP 800-63B-4 section 3.1.1.2 for single-factor passwords:
//! a minimum length (15 by default, never under 8) and a maximum of 128, counted in code points
//! after NFKC; any Unicode; no composition rules and no truncation; not one of the common or
//! breached passwords shipped with Keystone (`data/`); not containing the username or the
//! email's local part; and hard enough to guess by the zxcvbn estimate (sequences, repeats,
//! keyboard walks, dates, dictionary words and the user's own names), at least
//! `auth.password_min_strength` on its 0–4 scale.

use secrecy::{ExposeSecret as _, SecretString};
use unicode_normalization::UnicodeNormalization as _;

use super::{Email, ParseError, Username};

mod blocklist {
    include!(concat!(env!("OUT_DIR"), "/password_blocklist.rs"));
}

/// The longest password accepted, in code points.
pub const MAX_PASSWORD_LENGTH: usize = 128;

/// The highest zxcvbn score (more than 10^10 guesses).
pub const MAX_STRENGTH: u8 = 4;

/// Checks new passwords.
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    min_length: usize,
    min_strength: u8,
}

/// The names of the account a password is for: the estimator takes them as words an attacker
/// would try first, and a password may not contain them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccountNames<'a> {
    /// The username, lowercased.
    pub username: Option<&'a str>,
    /// The email address, lowercased.
    pub email: Option<&'a str>,
}

impl<'a> AccountNames<'a> {
    /// The names of an account being created or changed.
    pub fn of(username: Option<&'a Username>, email: Option<&'a Email>) -> Self {
        Self {
            username: username.map(Username::normalized),
            email: email.map(Email::normalized),
        }
    }

    fn local_part(&self) -> Option<&'a str> {
        self.email
            .map(|email| email.rsplit_once('@').map_or(email, |(local, _)| local))
    }
}

/// What the estimator makes of a password.
#[derive(Debug, Clone, PartialEq)]
pub struct Strength {
    /// 0 (guessed in 10^3 tries or fewer) to 4 (more than 10^10).
    pub score: u8,
    /// The estimated number of guesses, as a power of ten.
    pub guesses_log10: f64,
    /// What makes it weak, if anything.
    pub warning: Option<String>,
    /// How to make it stronger.
    pub suggestions: Vec<String>,
}

/// A password measured against the whole policy.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// The estimate.
    pub strength: Strength,
    /// The first rule the password breaks, if any (never the password).
    pub problem: Option<ParseError>,
}

impl PasswordPolicy {
    /// A policy with the given minimum length (clamped to at least 8) and minimum strength
    /// (clamped to at most 4).
    pub fn new(min_length: u32, min_strength: u8) -> Self {
        Self {
            min_length: (min_length as usize).max(8),
            min_strength: min_strength.min(MAX_STRENGTH),
        }
    }

    /// Checks a new password for an account. The message names the rule that failed, with the
    /// estimator's warning and suggestions when it is too easy to guess, and never the password.
    pub fn check(
        &self,
        password: &SecretString,
        username: Option<&Username>,
        email: Option<&Email>,
    ) -> Result<(), ParseError> {
        let normalized = normalize(password)?;
        self.rules(&normalized, AccountNames::of(username, email))?;
        let strength = estimate(&normalized, AccountNames::of(username, email));
        match self.weakness(&strength) {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Measures a password, as a registration screen shows it: the estimate, and the first
    /// rule it breaks. Refused only when it is longer than any password can be.
    pub fn assess(
        &self,
        password: &SecretString,
        names: AccountNames<'_>,
    ) -> Result<Assessment, ParseError> {
        let normalized = normalize(password)?;
        let strength = estimate(&normalized, names);
        let problem = self
            .rules(&normalized, names)
            .err()
            .or_else(|| self.weakness(&strength));
        Ok(Assessment { strength, problem })
    }

    /// The rules other than strength: length, the blocklist, the account's names.
    fn rules(&self, normalized: &str, names: AccountNames<'_>) -> Result<(), ParseError> {
        if normalized.chars().count() < self.min_length {
            return Err(ParseError::new(format!(
                "must be at least {} characters long",
                self.min_length
            )));
        }
        let lowered = normalized.to_lowercase();
        if is_common(&lowered) {
            return Err(ParseError::new(
                "is one of the most common or breached passwords; choose another",
            ));
        }
        if let Some(username) = names.username
            && username.chars().count() >= 3
            && lowered.contains(username)
        {
            return Err(ParseError::new("must not contain the username"));
        }
        if let Some(local) = names.local_part()
            && local.chars().count() >= 3
            && lowered.contains(local)
        {
            return Err(ParseError::new(
                "must not contain the email address's name part",
            ));
        }
        Ok(())
    }

    /// The refusal of a password the estimator scores under the minimum.
    fn weakness(&self, strength: &Strength) -> Option<ParseError> {
        if strength.score >= self.min_strength {
            return None;
        }
        let mut message = format!(
            "is too easy to guess (strength {} of {MAX_STRENGTH}, at least {} needed)",
            strength.score, self.min_strength
        );
        if let Some(warning) = &strength.warning {
            message.push_str(": ");
            message.push_str(warning);
        }
        if !strength.suggestions.is_empty() {
            message.push_str(". ");
            message.push_str(&strength.suggestions.join(" "));
        }
        Some(ParseError::new(message))
    }
}

/// The password after NFKC, refused when longer than [`MAX_PASSWORD_LENGTH`] (checked on the
/// bytes first, so that a huge input is not normalized).
fn normalize(password: &SecretString) -> Result<String, ParseError> {
    let too_long = || {
        ParseError::new(format!(
            "must be at most {MAX_PASSWORD_LENGTH} characters long"
        ))
    };
    // Composition shrinks text: a few code points (Hangul jamo, a letter and its combining
    // marks) become one. No input of more than 4 × 18 bytes per allowed code point can
    // normalize short enough in practice; past that it is refused unread.
    if password.expose_secret().len() > MAX_PASSWORD_LENGTH * 4 * 18 {
        return Err(too_long());
    }
    let normalized: String = password.expose_secret().nfkc().collect();
    if normalized.chars().count() > MAX_PASSWORD_LENGTH {
        return Err(too_long());
    }
    Ok(normalized)
}

/// The characters the estimator reads. zxcvbn's matching grows steeply with length (on a
/// random password: 5 ms at 32 characters, 120 ms at 64, a second at the 100 it reads
/// itself), and a prefix can only look weaker than the whole: a password whose first 32
/// characters are hard enough to guess is.
pub const ESTIMATED_PREFIX: usize = 32;

/// The zxcvbn estimate of a normalized password (its first [`ESTIMATED_PREFIX`] characters),
/// the account's names given as user inputs.
fn estimate(normalized: &str, names: AccountNames<'_>) -> Strength {
    let prefix: String = normalized.chars().take(ESTIMATED_PREFIX).collect();
    let inputs: Vec<&str> = [names.username, names.email, names.local_part()]
        .into_iter()
        .flatten()
        .collect();
    let entropy = zxcvbn::zxcvbn(&prefix, &inputs);
    let feedback = entropy.feedback();
    Strength {
        score: u8::from(entropy.score()),
        guesses_log10: entropy.guesses_log10().max(0.0),
        warning: feedback
            .and_then(|feedback| feedback.warning())
            .map(|warning| warning.to_string()),
        suggestions: feedback
            .map(|feedback| {
                feedback
                    .suggestions()
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            })
            .unwrap_or_default(),
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
        let policy = PasswordPolicy::new(8, 0);
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
        let policy = PasswordPolicy::new(15, 0);
        assert!(
            check(policy, "short one")
                .unwrap_err()
                .0
                .contains("at least 15")
        );
        // 15 code points, 30 bytes: long enough.
        assert!(check(policy, "ééééééééééééééé").is_ok());
        // 128 is the most, and taken (strength aside).
        assert!(check(policy, &"xy".repeat(64)).is_ok());
        assert!(
            check(policy, &"x".repeat(129))
                .unwrap_err()
                .0
                .contains("at most 128")
        );
        // Any character is allowed, spaces and emoji included; nothing is required.
        assert!(check(policy, "correct horse 🐎 battery").is_ok());
    }

    #[test]
    fn the_minimum_is_never_below_eight() {
        assert!(check(PasswordPolicy::new(4, 0), "abcdxyz").is_err());
    }

    #[test]
    fn passwords_holding_the_username_or_email_name_are_refused() {
        let policy = PasswordPolicy::new(8, 0);
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
        let error = check(PasswordPolicy::new(20, 0), "hunter2hunter2").unwrap_err();
        assert!(!error.0.contains("hunter2"));
    }

    #[test]
    fn guessable_passwords_are_refused_with_the_estimators_advice() {
        let policy = PasswordPolicy::new(15, 3);
        for weak in [
            "1234567890123456",
            "123456789012345",
            "abcdefghijklmnop",
            "iloveyouiloveyou",
            "xyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxyxy",
        ] {
            let error = check(policy, weak).unwrap_err();
            assert!(error.0.contains("too easy to guess"), "{weak}: {error}");
            assert!(error.0.contains("at least 3 needed"), "{weak}: {error}");
            // The estimator's advice is there (every weak pattern gets some).
            assert!(error.0.len() > 60, "{weak}: {error}");
            assert!(!error.0.contains(weak), "{weak}: {error}");
        }
        assert!(check(policy, "correct horse 🐎 battery").is_ok());
        assert!(check(policy, "tawny-quorum-glacier-mitten-oboe").is_ok());
    }

    #[test]
    fn the_accounts_names_count_as_guessable_words() {
        let policy = PasswordPolicy::new(8, 0);
        let username = Username::parse("zebulon").unwrap();
        let plain = estimate("Zebulon1979!", AccountNames::default());
        let known = estimate("Zebulon1979!", AccountNames::of(Some(&username), None));
        assert!(
            known.guesses_log10 < plain.guesses_log10,
            "{known:?} {plain:?}"
        );
        assert!(
            policy
                .check(&SecretString::from("a quiet river"), Some(&username), None)
                .is_ok()
        );
    }

    #[test]
    fn an_assessment_gives_the_estimate_and_the_first_broken_rule() {
        let policy = PasswordPolicy::new(15, 3);
        let short = policy
            .assess(&SecretString::from("Tr0ub4dor&3"), AccountNames::default())
            .unwrap();
        assert!(short.problem.unwrap().0.contains("at least 15"));
        let good = policy
            .assess(
                &SecretString::from("tawny-quorum-glacier-mitten-oboe"),
                AccountNames::default(),
            )
            .unwrap();
        assert!(good.problem.is_none());
        assert_eq!(good.strength.score, 4);
        assert!(good.strength.guesses_log10 > 10.0);
        let huge = policy.assess(
            &SecretString::from("x".repeat(1 << 20)),
            AccountNames::default(),
        );
        assert!(huge.unwrap_err().0.contains("at most 128"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_password_gets_a_verdict_that_never_repeats_it(password in ".{0,200}") {
                if let Err(error) = check(PasswordPolicy::new(15, 3), &password) {
                    prop_assume!(password.chars().count() >= 4);
                    prop_assert!(!error.to_string().contains(&password));
                }
            }
        }
    }
}
