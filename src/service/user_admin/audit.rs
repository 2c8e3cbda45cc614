//! The audit trail, newest first.

use uuid::Uuid;

use super::{AuditQuery, Page, UserAdminService};
use crate::{domain::AuditEvent, error::Error, store::AuditFilter};

impl UserAdminService {
    /// `ListAuditEvents`, newest first.
    pub async fn list_audit_events(
        &self,
        page_size: i32,
        page_token: &str,
        query: AuditQuery,
    ) -> Result<Page<AuditEvent>, Error> {
        for (field, value) in [
            ("actor", &query.actor),
            ("action", &query.action),
            ("target", &query.target),
        ] {
            if value.len() > 320 || value.chars().any(char::is_control) {
                return Err(Error::invalid_argument(
                    field,
                    "must be at most 320 bytes with no control characters",
                ));
            }
        }
        let listing = format!(
            "audit\0{}\0{}\0{}\0{}",
            query.actor,
            query.action,
            query.target,
            query.since.map(|s| s.to_rfc3339()).unwrap_or_default()
        );
        let page = self.pager.request(page_size, page_token, &listing)?;
        let before = page
            .after
            .as_deref()
            .map(Uuid::parse_str)
            .transpose()
            .map_err(|_| Error::invalid_argument("page_token", "is not a page token"))?;
        let non_empty = |value: String| (!value.is_empty()).then_some(value);
        let filter = AuditFilter {
            actor: non_empty(query.actor),
            action: non_empty(query.action),
            target: non_empty(query.target),
            since: query.since,
        };
        let events = self
            .store
            .list_audit_events(&filter, before, page.size + 1)
            .await?;
        Ok(self.page(events, &page, &listing, |e| e.id.to_string()))
    }
}
