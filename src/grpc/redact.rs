//! `Debug` for the generated messages that carry secrets (build.rs skips their derived one):
//! secret fields print `[REDACTED]`, the rest as usual. A request logged by mistake then shows
//! no password, client secret, token or refresh token.

use std::fmt;

use crate::proto::pb;

/// Writes `Debug` for a message, redacting the named secret fields.
macro_rules! redacted_debug {
    ($message:ident { $($field:ident),* $(,)? } secret { $($secret:ident),+ $(,)? }) => {
        impl fmt::Debug for pb::$message {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($message))
                    $(.field(stringify!($field), &self.$field))*
                    $(.field(stringify!($secret), &Redacted(self.$secret.is_empty())))+
                    .finish()
            }
        }
    };
}

/// Shows only whether a secret was given.
struct Redacted(bool);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "\"\"" } else { "[REDACTED]" })
    }
}

redacted_debug!(PasswordGrant { username } secret { password });
redacted_debug!(ClientCredentialsGrant { client_id, client_assertion_type } secret { client_secret, client_assertion });
redacted_debug!(TokenExchangeGrant { subject_token_type, actor_token_type, client_id, client_assertion_type, ttl } secret { subject_token, actor_token, client_secret, client_assertion });
redacted_debug!(RefreshTokenGrant {} secret { refresh_token });
redacted_debug!(TokenResponse { token_type, expires_in, scopes, expires_at } secret { access_token, refresh_token });
redacted_debug!(AuthenticateRequest { required_scopes, audience } secret { token });
redacted_debug!(IntrospectRequest { token_type_hint } secret { token });
redacted_debug!(RevokeRequest { token_type_hint } secret { token });
redacted_debug!(RegisterRequest { username, email } secret { password });
redacted_debug!(LogoutRequest {} secret { refresh_token });
redacted_debug!(ChangePasswordRequest {} secret { current_password, new_password });
redacted_debug!(CreateUserRequest { username, email, roles, enabled, email_verified } secret { password });
redacted_debug!(CreateUserResponse { user } secret { generated_password });
redacted_debug!(SetPasswordRequest { id } secret { password });
redacted_debug!(SetPasswordResponse {} secret { generated_password });
redacted_debug!(CreateClientResponse { client } secret { client_secret });
redacted_debug!(EstimatePasswordStrengthRequest { username, email } secret { password });
redacted_debug!(RotateClientSecretResponse { previous_secret_expires_at } secret { client_secret });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_print_redacted() {
        let grant = pb::IssueTokenRequest {
            grant: Some(pb::issue_token_request::Grant::Password(
                pb::PasswordGrant {
                    username: "alice".into(),
                    password: "hunter2hunter2hunter2".into(),
                },
            )),
            ..Default::default()
        };
        let printed = format!("{grant:?}");
        assert!(printed.contains("alice"));
        assert!(printed.contains("[REDACTED]"));
        assert!(!printed.contains("hunter2"));

        let response = pb::TokenResponse {
            access_token: "eyJ.secret.jwt".into(),
            refresh_token: "ksr_secret".into(),
            ..Default::default()
        };
        let printed = format!("{response:?}");
        assert!(!printed.contains("secret"), "{printed}");

        let exchange = pb::TokenExchangeGrant {
            subject_token: "eyJ.subject.jwt".into(),
            actor_token: "eyJ.actor.jwt".into(),
            client_id: "orders".into(),
            client_secret: "kss_exchange".into(),
            client_assertion: "eyJ.assertion.jwt".into(),
            ..Default::default()
        };
        let printed = format!("{exchange:?}");
        assert!(printed.contains("orders"));
        for secret in [
            "eyJ.subject.jwt",
            "eyJ.actor.jwt",
            "kss_exchange",
            "eyJ.assertion.jwt",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }

        let created = pb::CreateClientResponse {
            client: None,
            client_secret: "kss_abc".into(),
        };
        assert!(!format!("{created:?}").contains("kss_abc"));
    }
}
