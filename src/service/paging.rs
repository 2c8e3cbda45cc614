//! Listing one page at a time. Page sizes have a default and a cap; page tokens are opaque,
//! bound to the listing and filters they continue, and signed with a key derived from the
//! pepper, so a caller can neither forge a cursor nor reuse one with other filters. Listings
//! use keyset order (the cursor is the last key shown), never OFFSET.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::{error::Error, secrets::Pepper};

/// Items per page when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// The most items per page; larger requests are cut to it.
pub const MAX_PAGE_SIZE: u64 = 500;

/// The version byte leading every token's payload.
const VERSION: u8 = 1;

/// One page asked for: its size and the key after which it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// How many items.
    pub size: u64,
    /// The last key of the previous page; `None`: the first page.
    pub after: Option<String>,
}

/// Reads and writes page tokens.
#[derive(Debug, Clone)]
pub struct Pager {
    pepper: Pepper,
}

impl Pager {
    /// A pager signing with the pepper.
    pub fn new(pepper: Pepper) -> Self {
        Self { pepper }
    }

    /// The page asked for by `page_size` and `page_token`, for the listing described by
    /// `query` (the listing's name and its filters, exactly as the next token will be made).
    pub fn request(
        &self,
        page_size: i32,
        page_token: &str,
        query: &str,
    ) -> Result<PageRequest, Error> {
        let size = match u64::try_from(page_size) {
            Err(_) => {
                return Err(Error::invalid_argument("page_size", "must not be negative"));
            }
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
        };
        if page_token.is_empty() {
            return Ok(PageRequest { size, after: None });
        }
        let after = self.decode(page_token, query).ok_or_else(|| {
            Error::invalid_argument(
                "page_token",
                "is not a page token of this listing with these filters; start again without one",
            )
        })?;
        Ok(PageRequest {
            size,
            after: Some(after),
        })
    }

    /// The token of the page after the one that ended at `last_key`.
    pub fn next_token(&self, query: &str, last_key: &str) -> String {
        let payload = payload(query, last_key);
        let tag = self.pepper.sign_page_token(&payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Cuts a page fetched with one item too many (`size + 1`) to `size`, and makes the next
    /// page's token when there was more.
    pub fn finish<T>(
        &self,
        mut items: Vec<T>,
        page: &PageRequest,
        query: &str,
        key: impl Fn(&T) -> String,
    ) -> (Vec<T>, String) {
        let size = usize::try_from(page.size).unwrap_or(usize::MAX);
        if items.len() <= size {
            return (items, String::new());
        }
        items.truncate(size);
        let next = items
            .last()
            .map(|last| self.next_token(query, &key(last)))
            .unwrap_or_default();
        (items, next)
    }

    fn decode(&self, token: &str, query: &str) -> Option<String> {
        // A token is at most a few hundred bytes; anything longer is not one of ours.
        if token.len() > 2048 {
            return None;
        }
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !self.pepper.verify_page_token(&payload, &tag) {
            return None;
        }
        let (&version, rest) = payload.split_first()?;
        if version != VERSION || rest.len() < 8 || rest[..8] != fingerprint(query) {
            return None;
        }
        String::from_utf8(rest[8..].to_vec()).ok()
    }
}

/// Version, the query's fingerprint, then the last key.
fn payload(query: &str, last_key: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(9 + last_key.len());
    payload.push(VERSION);
    payload.extend_from_slice(&fingerprint(query));
    payload.extend_from_slice(last_key.as_bytes());
    payload
}

/// The first 8 bytes of SHA-256 of the query: enough to tell listings apart, and signed.
fn fingerprint(query: &str) -> [u8; 8] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, query.as_bytes());
    let mut out = [0_u8; 8];
    out.copy_from_slice(&digest.as_ref()[..8]);
    out
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn pager(pepper: &str) -> Pager {
        Pager::new(Pepper::from_secret(&SecretString::from(pepper.repeat(32))))
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        let pager = pager("p");
        assert_eq!(pager.request(0, "", "q").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(pager.request(7, "", "q").unwrap().size, 7);
        assert_eq!(pager.request(100_000, "", "q").unwrap().size, MAX_PAGE_SIZE);
        assert!(pager.request(-1, "", "q").is_err());
    }

    #[test]
    fn a_token_continues_only_its_own_query() {
        let own = pager("p");
        let token = own.next_token("users\0al\0", "alice");
        assert_eq!(
            own.request(10, &token, "users\0al\0")
                .unwrap()
                .after
                .as_deref(),
            Some("alice")
        );
        assert!(own.request(10, &token, "users\0bo\0").is_err());
        assert!(pager("q").request(10, &token, "users\0al\0").is_err());
    }

    #[test]
    fn forged_and_damaged_tokens_are_refused() {
        let pager = pager("p");
        let token = pager.next_token("roles", "admin");
        let (payload, tag) = token.split_once('.').unwrap();
        let mut forged = URL_SAFE_NO_PAD.decode(payload).unwrap();
        forged.extend_from_slice(b"zzz");
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(forged));
        for bad in [
            forged.as_str(),
            "x",
            ".",
            "a.b",
            &token[1..],
            &"a".repeat(5000),
        ] {
            assert!(
                pager.request(10, bad, "roles").is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn finish_cuts_the_extra_item_and_points_past_the_last_shown() {
        let pager = pager("p");
        let page = pager.request(2, "", "q").unwrap();
        let (items, next) = pager.finish(vec!["a", "b", "c"], &page, "q", |s| (*s).to_owned());
        assert_eq!(items, ["a", "b"]);
        assert_eq!(
            pager.request(2, &next, "q").unwrap().after.as_deref(),
            Some("b")
        );
        let (items, next) = pager.finish(vec!["a"], &page, "q", |s| (*s).to_owned());
        assert_eq!(items, ["a"]);
        assert!(next.is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_token_gives_back_its_key_for_its_query_only(query in ".{0,40}", other in ".{0,40}", key in ".{0,100}") {
                let own = pager("p");
                let token = own.next_token(&query, &key);
                prop_assert_eq!(own.request(10, &token, &query).unwrap().after, Some(key));
                if other != query {
                    prop_assert!(own.request(10, &token, &other).is_err());
                }
                prop_assert!(pager("q").request(10, &token, &query).is_err());
            }

            #[test]
            fn forged_tokens_are_refused_as_invalid_arguments(token in ".{1,300}", size in any::<i32>()) {
                match pager("p").request(size, &token, "q") {
                    Err(Error::InvalidArgument { field, .. }) => {
                        prop_assert!(field == "page_token" || field == "page_size");
                    }
                    other => prop_assert!(false, "{other:?}"),
                }
            }

            #[test]
            fn a_changed_token_is_refused(at in any::<prop::sample::Index>(), byte in 0x21u8..0x7f) {
                let pager = pager("p");
                let mut token = pager.next_token("q", "alice").into_bytes();
                let at = at.index(token.len());
                prop_assume!(token[at] != byte);
                token[at] = byte;
                let token = String::from_utf8(token).expect("ASCII");
                prop_assert!(pager.request(10, &token, "q").is_err());
            }
        }
    }
}
