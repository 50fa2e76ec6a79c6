//! Where an ORIGINAL_DST cluster (`PassthroughCluster`) sends a request: the
//! `x-envoy-original-dst-host` header when the cluster reads it, else the host the client asked
//! for (`:authority`, port 80 by default) — without traffic capture that is the destination the
//! client meant. A name is resolved through the proxy's resolver; a destination that is this
//! listener itself is refused rather than looped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use super::Local;
use crate::dns::Family;
use crate::runtime::Cluster;
use crate::runtime::cluster::OriginalDst;

/// Envoy's header naming the original destination (`ip:port`).
pub const ORIGINAL_DST_HOST: &str = "x-envoy-original-dst-host";

/// The per-destination cluster for this request.
pub async fn cluster(
    od: &OriginalDst,
    dns: &crate::dns::Resolver,
    headers: &HeaderMap,
    authority: &str,
    local: SocketAddr,
) -> Result<Arc<Cluster>, Local> {
    let addr = match headers
        .get(ORIGINAL_DST_HOST)
        .filter(|_| od.use_http_header)
    {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .ok_or_else(|| {
                let msg = format!("{ORIGINAL_DST_HOST} {v:?} is not ip:port\n");
                Local::new(StatusCode::SERVICE_UNAVAILABLE, "UH", msg)
            })?,
        None => destination(dns, authority).await?,
    };
    if addr == local {
        let msg = format!("passthrough destination {addr} is this listener; not looping\n");
        return Err(Local::new(StatusCode::SERVICE_UNAVAILABLE, "UH", msg));
    }
    od.cluster_for(addr).map_err(|e| {
        Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            format!("passthrough to {addr}: {e}\n"),
        )
    })
}

/// `host[:port]` → an address; names through the resolver (`DF` when that fails).
async fn destination(dns: &crate::dns::Resolver, authority: &str) -> Result<SocketAddr, Local> {
    let (host, port) = split_authority(authority);
    let host = host.trim_end_matches('.');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let failed = |why: String| {
        let msg = format!("dns resolution of {host:?} failed: {why}\n");
        Local::new(StatusCode::SERVICE_UNAVAILABLE, "DF", msg)
    };
    let ips = dns
        .resolve(host, Family::V4Preferred)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let ip = ips
        .first()
        .copied()
        .ok_or_else(|| failed("no addresses".into()))?;
    Ok(SocketAddr::new(ip, port))
}

/// `(host, port)` of an authority (port 80 when absent; IPv6 in brackets).
fn split_authority(authority: &str) -> (&str, u16) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (ip, port.unwrap_or(80));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(80)),
        _ => (authority, 80),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(
            split_authority("api.example.test"),
            ("api.example.test", 80)
        );
        assert_eq!(
            split_authority("api.example.test:8080"),
            ("api.example.test", 8080)
        );
        assert_eq!(split_authority("[::1]:9000"), ("::1", 9000));
        assert_eq!(split_authority("[::1]"), ("::1", 80));
        assert_eq!(split_authority("::1"), ("::1", 80));
    }
}
