//! `trellis sample-app`: an httpbin/helloworld-like demo service.
//!
//! One TCP port serves HTTP/1.1, h2c (prior knowledge) and gRPC. Every answer
//! names the service, version and instance that produced it, so tests and
//! demos can see where the mesh routed a request. This module owns the
//! listener, the shutdown signals and the HTTP-vs-gRPC dispatch; the
//! endpoints themselves live in [`http`] and [`grpc`]. It must never panic on
//! a request path: every bad input gets an explicit error answer.

mod grpc;
mod http;
mod ledger;
mod messages;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::SampleAppArgs;

/// Response header naming who answered: `name/version`.
pub const SERVICE_HEADER: &str = "x-sample-service";

/// Everything `sample-app` needs to start.
#[derive(Debug, Clone)]
pub struct SampleAppConfig {
    pub identity: Identity,
    pub address: IpAddr,
    pub port: u16,
}

/// Who this process claims to be in every answer.
#[derive(Debug, Clone)]
pub struct Identity {
    pub service: String,
    pub version: String,
    pub instance: String,
}

/// Body type of every answer: buffered JSON, or a stream of gRPC frames plus trailers.
pub type ResponseBody = BoxBody<Bytes, Infallible>;

impl From<SampleAppArgs> for SampleAppConfig {
    fn from(args: SampleAppArgs) -> Self {
        let instance = args
            .instance
            .unwrap_or_else(|| format!("{}-{}-{}", args.name, args.version, std::process::id()));
        SampleAppConfig {
            identity: Identity {
                service: args.name,
                version: args.version,
                instance,
            },
            address: args.address,
            port: args.port,
        }
    }
}

/// Serves until SIGINT or SIGTERM, then returns `Ok(())`.
pub async fn run(config: SampleAppConfig) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.address, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}: is another sample-app or proxy using this port?"))?;
    let local = listener.local_addr()?;
    let identity = Arc::new(config.identity);
    println!(
        "sample-app {}/{} (instance {}) listening on {local}",
        identity.service, identity.version, identity.instance
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        eprintln!("sample-app: accept on {local}: {err}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let identity = identity.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(identity.clone(), req));
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // Above a proxy's 100-header limit, so that the headers a proxy adds to
                    // a request at its limit never make the upstream refuse it.
                    builder.http1().max_headers(128);
                    if let Err(err) = builder.serve_connection(TokioIo::new(stream), service).await {
                        // Client resets and half-finished requests are normal for a demo app.
                        let _ = err;
                    }
                });
            }
            signal = &mut shutdown => {
                signal?;
                eprintln!("sample-app {}/{}: shutting down", identity.service, identity.version);
                return Ok(());
            }
        }
    }
}

async fn handle(
    identity: Arc<Identity>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut response = if grpc::is_grpc(&req) {
        grpc::handle(&identity, req).await
    } else {
        http::handle(&identity, req).await
    };
    if let Ok(value) =
        hyper::header::HeaderValue::from_str(&format!("{}/{}", identity.service, identity.version))
    {
        response.headers_mut().insert(SERVICE_HEADER, value);
    }
    Ok(response)
}

/// Reads and discards up to 1 MiB of a request body we do not use, so that
/// HTTP/2 clients still sending it see a clean end of stream instead of a reset.
async fn drain(body: Incoming) {
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(body, 1024 * 1024);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), limited.collect()).await;
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("install SIGINT handler"),
        _ = term.recv() => Ok(()),
    }
}
