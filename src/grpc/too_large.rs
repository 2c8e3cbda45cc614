//! A request larger than a service accepts answers `RESOURCE_EXHAUSTED` with the reason
//! `MESSAGE_TOO_LARGE`, as gRPC's own implementations do. tonic's decoder refuses it before
//! any handler runs (it reads only the 5-byte frame header), but answers `OUT_OF_RANGE` with
//! no `ErrorInfo`; this layer rewrites that one answer and lets every other through untouched.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::error::{Error, Reason};

/// What tonic's decoder says of a message over the limit (`tonic::codec::decode`).
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// Applies [`TooLarge`] to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct TooLargeLayer;

impl<S> Layer<S> for TooLargeLayer {
    type Service = TooLarge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TooLarge { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct TooLarge<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for TooLarge<S>
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
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map(rewrite) })
    }
}

/// The answer, with tonic's size refusal made Keystone's.
fn rewrite(response: Response<tonic::body::Body>) -> Response<tonic::body::Body> {
    // A refusal before the handler is trailers-only: its status is among the headers (an
    // answer in the body never is, so the common case costs one header lookup).
    if response
        .headers()
        .get(Status::GRPC_STATUS)
        .is_none_or(|code| code.as_bytes() != b"11")
    {
        return response;
    }
    match Status::from_header_map(response.headers()) {
        Some(status)
            if status.code() == Code::OutOfRange
                && status.message().starts_with(TONIC_TOO_LARGE) =>
        {
            let detail = status
                .message()
                .trim_start_matches(TONIC_TOO_LARGE)
                .trim_start_matches(':')
                .trim();
            Status::from(too_large(detail)).into_http()
        }
        _ => response,
    }
}

/// `RESOURCE_EXHAUSTED` (`MESSAGE_TOO_LARGE`), saying how large and what the limit is.
fn too_large(detail: &str) -> Error {
    Error::ResourceExhausted {
        reason: Reason::MessageTooLarge,
        message: if detail.is_empty() {
            "the request message is larger than the server accepts".to_owned()
        } else {
            format!("the request message is larger than the server accepts: {detail}")
        },
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt as _;

    use super::*;

    fn status_of(response: &Response<tonic::body::Body>) -> Status {
        Status::from_header_map(response.headers()).unwrap()
    }

    #[test]
    fn tonics_size_refusal_becomes_resource_exhausted_with_a_reason() {
        let refused = Status::out_of_range(
            "Error, decoded message length too large: found 1048581 bytes, the limit is: 65536 bytes",
        )
        .into_http();
        let status = status_of(&rewrite(refused));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("65536"), "{}", status.message());
        assert_eq!(
            status
                .get_error_details()
                .error_info()
                .map(|info| info.reason.clone())
                .as_deref(),
            Some("MESSAGE_TOO_LARGE")
        );
    }

    #[test]
    fn other_answers_pass_untouched() {
        let other = Status::out_of_range("the page token is past the end").into_http();
        assert_eq!(status_of(&rewrite(other)).code(), Code::OutOfRange);
        let denied = Status::permission_denied("no").into_http();
        assert_eq!(status_of(&rewrite(denied)).code(), Code::PermissionDenied);
        let ok = Response::new(tonic::body::Body::empty());
        assert!(rewrite(ok).headers().get(Status::GRPC_STATUS).is_none());
    }
}
