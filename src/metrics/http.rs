//! The HTTP listener's RED metrics, as gRPC has them: requests by route, method and status,
//! and their duration by route.

use std::time::Duration;

use axum::extract::MatchedPath;

use super::{Observe, Outcome};

/// Labels HTTP requests by route, method and status ([`super::RedLayer::http`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRequests;

impl Observe for HttpRequests {
    type Call = (String, &'static str);

    fn begin<B>(&self, request: &http::Request<B>) -> Self::Call {
        // The route as the router declared it, never the path a caller sent: an unknown path
        // is one series, so that nobody can grow the series without bound.
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unknown".to_owned(), |path| path.as_str().to_owned());
        (route, method_name(request.method()))
    }

    fn end<R>((route, method): Self::Call, outcome: Outcome<'_, R>, elapsed: Duration) {
        // Three digits: at most 900 series. (The limits answer what they refuse themselves:
        // 503 and 504 are answers here.)
        let status = match outcome {
            Outcome::Answered(response) => response.status().as_str().to_owned(),
            Outcome::Shed => "503".to_owned(),
            Outcome::Failed => "error".to_owned(),
        };
        metrics::counter!(
            "keystone_http_requests_total",
            "route" => route.clone(),
            "method" => method,
            "status" => status,
        )
        .increment(1);
        metrics::histogram!("keystone_http_request_duration_seconds", "route" => route)
            .record(elapsed.as_secs_f64());
    }
}

/// The methods HTTP defines; any other (a caller may send any token) is `other`.
pub fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_one_label() {
        assert_eq!(method_name(&http::Method::POST), "POST");
        assert_eq!(
            method_name(&http::Method::from_bytes(b"BREW").unwrap()),
            "other"
        );
    }
}
