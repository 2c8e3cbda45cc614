//! Server-side deadlines: every call ends by the shorter of the caller's `grpc-timeout` and
//! `server.request_timeout`, answering `DEADLINE_EXCEEDED` (tonic's own timeout answers
//! `CANCELLED`, which clients do not treat as a deadline). A call without a deadline of its
//! own gets the server's, so nothing waits forever on a stuck dependency.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

/// The header gRPC clients send their deadline in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// How much sooner than the caller's deadline a call ends here, so that this layer answers
/// before tonic's own timer (set a moment earlier, answering CANCELLED) fires.
const TONIC_MARGIN: Duration = Duration::from_millis(2);

/// Applies [`Deadline`] to a service.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    limit: Duration,
}

impl DeadlineLayer {
    /// Calls end after `limit` at the latest.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            limit: self.limit,
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // tonic also enforces the caller's deadline, answering CANCELLED; ending a little
        // earlier makes the answer DEADLINE_EXCEEDED.
        let budget = deadline_of(request.headers()).map_or(self.limit, |asked| {
            asked.saturating_sub(TONIC_MARGIN).min(self.limit)
        });
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(budget, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the call did not finish within its deadline ({})",
                    humantime::format_duration(budget)
                ))
                .into_http()),
            }
        })
    }
}

/// The caller's deadline (`grpc-timeout`: at most 8 digits and a unit, H M S m u n). A value
/// that does not parse is ignored: the server's deadline still holds.
fn deadline_of(headers: &HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get(GRPC_TIMEOUT)?.to_str().ok()?)
}

/// Parses a `grpc-timeout` value.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = (value.get(..unit_at)?, value.get(unit_at..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("3H"), Some(Duration::from_secs(10800)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
    }

    async fn answer_of(header: Option<&str>, limit: Duration, work: Duration) -> Option<String> {
        let slow = tower::service_fn(move |_request: Request<()>| async move {
            tokio::time::sleep(work).await;
            Ok::<_, std::convert::Infallible>(Response::new(tonic::body::Body::empty()))
        });
        let mut service = DeadlineLayer::new(limit).layer(slow);
        let mut request = Request::new(());
        if let Some(value) = header {
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT, value.parse().expect("a header value"));
        }
        let response = service.call(request).await.expect("infallible");
        response
            .headers()
            .get("grpc-status")
            .map(|status| status.to_str().unwrap_or_default().to_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn the_shorter_of_the_two_deadlines_ends_a_call_with_deadline_exceeded() {
        let (second, minute) = (Duration::from_secs(1), Duration::from_secs(60));
        // DEADLINE_EXCEEDED is code 4.
        assert_eq!(
            answer_of(Some("100m"), minute, second).await.as_deref(),
            Some("4")
        );
        assert_eq!(
            answer_of(None, Duration::from_millis(100), second)
                .await
                .as_deref(),
            Some("4")
        );
        assert_eq!(
            answer_of(Some("1H"), Duration::from_millis(100), second)
                .await
                .as_deref(),
            Some("4")
        );
        assert_eq!(
            answer_of(Some("bogus"), Duration::from_millis(100), second)
                .await
                .as_deref(),
            Some("4")
        );
        // In time: the service's own answer.
        assert_eq!(answer_of(Some("2S"), minute, second).await, None);
        assert_eq!(answer_of(None, minute, second).await, None);
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in [
            "",
            "S",
            "123456789S",
            "1x",
            "-1S",
            "+1S",
            "1.5S",
            "１S",
            "1é",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_header_value_parses_or_is_ignored(value in ".{0,16}") {
                let _ = parse_grpc_timeout(&value);
            }

            #[test]
            fn every_valid_value_parses(amount in 0u64..100_000_000, unit in "[HMSmun]") {
                let parsed = parse_grpc_timeout(&format!("{amount}{unit}")).expect("valid");
                let expected = match unit.as_str() {
                    "H" => Duration::from_secs(amount * 3600),
                    "M" => Duration::from_secs(amount * 60),
                    "S" => Duration::from_secs(amount),
                    "m" => Duration::from_millis(amount),
                    "u" => Duration::from_micros(amount),
                    _ => Duration::from_nanos(amount),
                };
                prop_assert_eq!(parsed, expected);
            }
        }
    }
}
