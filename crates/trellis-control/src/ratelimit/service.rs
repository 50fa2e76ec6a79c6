//! `envoy.service.ratelimit.v3.RateLimitService` at the HTTP level, as the CA's service is
//! served: one unary method, `ShouldRateLimit`, decoded and encoded with prost through
//! tonic's `Grpc` helper. Owns only the gRPC plumbing; the answer is [`RateLimiter`]'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::RateLimiter;

/// The gRPC service name.
pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The one method's path.
pub const SHOULD_RATE_LIMIT_PATH: &str =
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
/// Largest request message accepted (a request is a few hundred bytes).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The service, for a tonic server.
#[derive(Clone)]
pub struct RateLimitGrpc(pub Arc<RateLimiter>);

impl NamedService for RateLimitGrpc {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for RateLimitGrpc
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != SHOULD_RATE_LIMIT_PATH {
            let path = req.uri().path().to_owned();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!(
                    "no method {path}; this server has {SHOULD_RATE_LIMIT_PATH}"
                ))
                .into_http())
            });
        }
        let method = ShouldRateLimit(Arc::clone(&self.0));
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

struct ShouldRateLimit(Arc<RateLimiter>);

impl UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let limiter = Arc::clone(&self.0);
        Box::pin(async move {
            let request = request.into_inner();
            limiter.should_rate_limit(&request).await.map(Response::new)
        })
    }
}
