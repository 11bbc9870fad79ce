//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` with tonic, over the prost messages of
//! `gatewarden_rate_limit_policy::rls` (the proto field numbers stay in that one place; no protoc). This is
//! what tonic's code generator writes for a one-method service, by hand.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use gatewarden_rate_limit_policy::rls::{RateLimitRequest, RateLimitResponse, GRPC_METHOD, GRPC_SERVICE};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::service::{CheckError, RateLimiter};

/// The gRPC service.
#[derive(Clone)]
pub struct RateLimitServer(pub Arc<RateLimiter>);

impl NamedService for RateLimitServer {
    const NAME: &'static str = GRPC_SERVICE;
}

struct ShouldRateLimit(Arc<RateLimiter>);

impl UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let limiter = Arc::clone(&self.0);
        Box::pin(async move {
            match limiter.should_rate_limit(request.get_ref()).await {
                Ok(response) => Ok(Response::new(response)),
                Err(CheckError::BadRequest(bad)) => Err(Status::invalid_argument(bad.0)),
                Err(CheckError::Unavailable(_)) => Err(Status::unavailable("rate limit store unavailable")),
            }
        })
    }
}

impl<B> Service<http::Request<B>> for RateLimitServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let expected =
            request.uri().path().strip_prefix('/').and_then(|p| p.strip_prefix(GRPC_SERVICE)) == Some(&format!("/{GRPC_METHOD}"));
        let limiter = Arc::clone(&self.0);
        Box::pin(async move {
            if !expected {
                return Ok(Status::unimplemented("").into_http());
            }
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::<RateLimitResponse, RateLimitRequest>::default());
            Ok(grpc.unary(ShouldRateLimit(limiter), request).await)
        })
    }
}
