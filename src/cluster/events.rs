//! The messages replicas send each other on Redis (`<cluster.name>:events`): small JSON
//! objects, so that other tools can read the channel too.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{Revocation, RevocationKind};

/// One message on the events channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A revocation was recorded.
    Revocation(RevocationEvent),
    /// The signing keys changed: reload them.
    Keys,
    /// A client changed (its secrets, scopes, audiences or state): forget its cached copy.
    Client {
        /// The client's public id.
        client_id: String,
    },
    /// Any client may have changed (a scope was deleted, or a change was not published):
    /// forget every cached copy.
    AllClients,
    /// A replica is alive (and the bus works). `behind`: it has revocations it could not
    /// publish yet, so Redis alone cannot vouch for anyone's set.
    Heartbeat {
        /// Whether the sender has unpublished revocations.
        #[serde(default)]
        behind: bool,
    },
}

/// A revocation as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    /// `token`, `session` or `subject`.
    pub kind: String,
    /// The `jti`, `sid` or `sub`.
    pub key: String,
    /// Not before, in milliseconds since the epoch.
    pub not_before_ms: i64,
    /// Expiry, in seconds since the epoch.
    pub expires_at: i64,
}

impl From<&Revocation> for RevocationEvent {
    fn from(revocation: &Revocation) -> Self {
        Self {
            kind: revocation.kind.as_str().to_owned(),
            key: revocation.key.clone(),
            not_before_ms: revocation.not_before.timestamp_millis(),
            expires_at: revocation.expires_at.timestamp(),
        }
    }
}

impl RevocationEvent {
    /// The revocation, if the message is well formed.
    pub fn to_revocation(&self) -> Option<Revocation> {
        Some(Revocation {
            kind: RevocationKind::parse(&self.kind)?,
            key: self.key.clone(),
            not_before: DateTime::<Utc>::from_timestamp_millis(self.not_before_ms)?,
            expires_at: DateTime::<Utc>::from_timestamp(self.expires_at, 0)?,
        })
    }
}

impl Event {
    /// The message's text.
    pub fn to_payload(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a message; `None` for anything else on the channel.
    pub fn parse(payload: &str) -> Option<Self> {
        serde_json::from_str(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_as_written() {
        let revocation = Revocation {
            kind: RevocationKind::Subject,
            key: "user-1".into(),
            not_before: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            expires_at: DateTime::from_timestamp(1_700_000_900, 0).unwrap(),
        };
        let event = Event::Revocation((&revocation).into());
        let payload = event.to_payload();
        assert!(payload.contains("\"type\":\"revocation\""), "{payload}");
        let Some(Event::Revocation(read)) = Event::parse(&payload) else {
            panic!("{payload}");
        };
        assert_eq!(read.to_revocation(), Some(revocation));
        assert_eq!(Event::parse(&Event::Keys.to_payload()), Some(Event::Keys));
        let client = Event::Client {
            client_id: "kc_abc".to_owned(),
        };
        assert_eq!(Event::parse(&client.to_payload()), Some(client));
        assert_eq!(
            Event::parse(&Event::AllClients.to_payload()),
            Some(Event::AllClients)
        );
        assert_eq!(
            Event::parse(r#"{"type":"heartbeat"}"#),
            Some(Event::Heartbeat { behind: false })
        );
        assert_eq!(Event::parse("not json"), None);
        assert_eq!(
            Event::parse(
                r#"{"type":"revocation","kind":"nope","key":"k","not_before_ms":0,"expires_at":0}"#
            )
            .and_then(|e| match e {
                Event::Revocation(r) => r.to_revocation(),
                _ => None,
            }),
            None
        );
    }
}
