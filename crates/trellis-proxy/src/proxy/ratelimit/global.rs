//! The global rate limit client: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
//! (gRPC, prost messages from `envoy-types`) to an endpoint of the filter's cluster. One HTTP/2
//! channel per endpoint address, kept across requests and config reloads (tonic reconnects it);
//! every call is bounded by the filter's timeout. Decides nothing: `proxy/ratelimit.rs` applies
//! the answer and the failure mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::{Channel, Endpoint};

use crate::runtime::Cluster;

#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    #[error("rate limit cluster {0:?} has no endpoints")]
    NoEndpoint(String),
    #[error("rate limit service {addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("rate limit service {addr}: {status}")]
    Status {
        addr: SocketAddr,
        status: Box<tonic::Status>,
    },
}

static CHANNELS: LazyLock<Mutex<HashMap<SocketAddr, Channel>>> = LazyLock::new(Mutex::default);

fn channel(addr: SocketAddr, timeout: Duration) -> Option<Channel> {
    let mut map = CHANNELS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get(&addr) {
        return Some(c.clone());
    }
    let c = Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(timeout.max(Duration::from_millis(100)))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy();
    map.insert(addr, c.clone());
    Some(c)
}

/// Asks the service; `Err` on no endpoint, a timeout or any gRPC error (e.g. `UNAVAILABLE` when
/// its Redis is down).
pub async fn should_rate_limit(
    cluster: Option<&Cluster>,
    cluster_name: &str,
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
    timeout: Duration,
) -> Result<RateLimitResponse, GlobalError> {
    let endpoints = cluster.map(|c| c.endpoints.as_slice()).unwrap_or_default();
    if endpoints.is_empty() {
        return Err(GlobalError::NoEndpoint(cluster_name.into()));
    }
    let addr = endpoints[fastrand::usize(..endpoints.len())].addr;
    let Some(channel) = channel(addr, timeout) else {
        return Err(GlobalError::NoEndpoint(cluster_name.into()));
    };
    let mut client = RateLimitServiceClient::new(channel);
    let mut request = tonic::Request::new(RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    });
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.should_rate_limit(request)).await {
        Err(_) => Err(GlobalError::Timeout { addr, timeout }),
        Ok(Err(status)) => Err(GlobalError::Status {
            addr,
            status: Box::new(status),
        }),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
    }
}
