//! Audit events as the services record them: who did what to what, from where, and how it
//! ended. Details never hold secret values.

use std::collections::BTreeMap;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was done.
    Success,
    /// It was attempted and failed (wrong password, unknown client…).
    Failure,
    /// The caller was not allowed.
    Denied,
}

impl Outcome {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// One audit event to record.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Who: a user id, a client id, the name that tried to log in, or `system`.
    pub actor: String,
    /// What, e.g. `user.create`, `login`.
    pub action: &'static str,
    /// On what.
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The caller's address, or empty.
    pub peer: String,
    /// Further facts; never secret values.
    pub details: BTreeMap<String, String>,
}

impl AuditRecord {
    /// An event with no peer and no details.
    pub fn new(
        actor: impl Into<String>,
        action: &'static str,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            actor: actor.into(),
            action,
            target: target.into(),
            outcome,
            peer: String::new(),
            details: BTreeMap::new(),
        }
    }

    /// Sets the caller's address.
    pub fn from_peer(mut self, peer: &str) -> Self {
        peer.clone_into(&mut self.peer);
        self
    }

    /// Adds a detail.
    pub fn with_detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}
