//! `istio.v1.auth.IstioCertificateService` as a tonic service (hand-written: there is no
//! generated code for Istio's protos in our tree). One unary method, `CreateCertificate`; the
//! bootstrap token comes as `authorization: Bearer <token>` metadata.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use trellis_xds::istio_ca::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse, SERVICE_NAME,
};

use super::{CertificateAuthority, SignError};

/// Largest request message accepted (a CSR is about 1 KiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The gRPC service, to add next to ADS on the xDS server.
#[derive(Clone)]
pub struct CertificateService(pub Arc<CertificateAuthority>);

impl NamedService for CertificateService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for CertificateService
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
        if req.uri().path() != CREATE_CERTIFICATE_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("only CreateCertificate is served").into_http())
            });
        }
        let method = CreateCertificate(Arc::clone(&self.0));
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// Another gRPC service (ADS) with the certificate service next to it, dispatched by path
/// (what tonic's router would do, without its extra dependencies).
#[derive(Clone)]
pub struct WithCa<S> {
    inner: S,
    ca: Option<CertificateService>,
}

impl<S> WithCa<S> {
    pub fn new(inner: S, ca: Option<CertificateService>) -> WithCa<S> {
        WithCa { inner, ca }
    }
}

impl<S> Service<http::Request<Body>> for WithCa<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let for_ca = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(SERVICE_NAME))
            .is_some_and(|p| p.starts_with('/'));
        match (&mut self.ca, for_ca) {
            (Some(ca), true) => Service::<http::Request<Body>>::call(ca, req),
            _ => Box::pin(self.inner.call(req)),
        }
    }
}

struct CreateCertificate(Arc<CertificateAuthority>);

impl UnaryService<IstioCertificateRequest> for CreateCertificate {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Response<IstioCertificateResponse>, Status>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let ca = Arc::clone(&self.0);
        Box::pin(async move {
            let token = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned());
            let peer = request
                .extensions()
                .get::<super::tls::TlsPeer>()
                .and_then(|p| p.certificates.clone());
            let message = request.into_inner();
            // Signing is a few hundred microseconds of CPU: fine on the async thread. A token
            // names the workload; without one, a verified mTLS client certificate does.
            let (csr, seconds) = (&message.csr, message.validity_duration);
            let result = match (&token, peer.as_ref().and_then(|c| c.first())) {
                (None, Some(leaf)) => ca.create_certificate_for_peer(leaf.as_ref(), csr, seconds),
                _ => ca.create_certificate(token.as_deref(), csr, seconds),
            };
            match result {
                Ok(cert_chain) => Ok(Response::new(IstioCertificateResponse { cert_chain })),
                Err(e) => {
                    tracing::warn!(error = %e, "certificate request refused");
                    Err(status(e))
                }
            }
        })
    }
}

fn status(e: SignError) -> Status {
    match e {
        SignError::Unauthenticated(e) => Status::unauthenticated(e.to_string()),
        SignError::PermissionDenied(m) => Status::permission_denied(m),
        SignError::InvalidArgument(m) => Status::invalid_argument(m),
        SignError::Internal(m) => Status::internal(m),
    }
}
