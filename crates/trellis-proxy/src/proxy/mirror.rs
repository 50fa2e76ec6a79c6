//! Request mirroring (Envoy's shadowing): a fire-and-forget copy of the request to the mirror
//! cluster, with `-shadow` appended to the host part of the authority. The copy's response and
//! failures never reach the client. Bounded: at most `MAX_IN_FLIGHT` shadow requests per
//! cluster, each on its own short-lived connection with an overall deadline; requests with a
//! body are not mirrored. Whatever is not mirrored is counted (`dropped`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::runtime::UpstreamProtocol;
use crate::runtime::route::policy::{MILLION, Mirror};

/// Shadow requests in flight per mirror cluster; beyond it, mirrors are dropped.
pub const MAX_IN_FLIGHT: usize = 64;
/// A shadow request (connect, send, read the whole response) gives up after this.
const DEADLINE: Duration = Duration::from_secs(30);

static SENT: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// `(mirrored, dropped)` since start.
pub fn counts() -> (u64, u64) {
    (
        SENT.load(Ordering::Relaxed),
        DROPPED.load(Ordering::Relaxed),
    )
}

/// Mirror `parts` (the request as it goes upstream) to `m`'s cluster, in the background.
pub fn spawn(m: &Mirror, parts: &Parts, has_body: bool) {
    if m.per_million < MILLION && fastrand::u32(..MILLION) >= m.per_million {
        return;
    }
    let drop = |why: &str| {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(cluster = %m.cluster.name, why, "request not mirrored");
    };
    let Some(cluster) = &m.cluster.cluster else {
        return drop("no such cluster");
    };
    if has_body {
        return drop("request has a body");
    }
    let Some(slot) = Slot::acquire(&cluster.name) else {
        return drop("too many shadow requests in flight");
    };
    let Some(endpoint) = cluster.pick(None) else {
        return drop("no healthy endpoint");
    };
    let Some(req) = shadow_request(parts, cluster.protocol) else {
        return drop("request has no authority");
    };
    let (addr, protocol, connect) = (endpoint.addr, cluster.protocol, cluster.connect_timeout);
    SENT.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _slot = slot;
        let sent = tokio::time::timeout(DEADLINE, send(addr, protocol, connect, req)).await;
        if let Ok(Err(e)) = sent {
            tracing::debug!(%addr, error = %e, "shadow request failed");
        }
    });
}

/// `host[:port]` → `host-shadow[:port]` (Envoy's shadow host).
pub fn shadow_authority(authority: &str) -> String {
    match crate::runtime::route::strip_port(authority) {
        Some(host) => format!("{host}-shadow{}", &authority[host.len()..]),
        None => format!("{authority}-shadow"),
    }
}

fn shadow_request(parts: &Parts, protocol: UpstreamProtocol) -> Option<Request<Empty<Bytes>>> {
    let authority = match parts.headers.get(HOST) {
        Some(h) => h.to_str().ok()?.to_string(),
        None => parts.uri.authority()?.as_str().to_string(),
    };
    let shadow = shadow_authority(&authority);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut headers = parts.headers.clone();
    let (uri, version) = match protocol {
        UpstreamProtocol::Http1 => {
            headers.insert(HOST, HeaderValue::from_str(&shadow).ok()?);
            (Uri::from(path), Version::HTTP_11)
        }
        UpstreamProtocol::Http2 => {
            headers.remove(HOST);
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(Authority::try_from(shadow).ok()?);
            uri.path_and_query = Some(path);
            (Uri::from_parts(uri).ok()?, Version::HTTP_2)
        }
    };
    let mut req = Request::new(Empty::new());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Some(req)
}

async fn send(
    addr: std::net::SocketAddr,
    protocol: UpstreamProtocol,
    connect: Duration,
    req: Request<Empty<Bytes>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr)).await??;
    let io = TokioIo::new(stream);
    let resp = match protocol {
        UpstreamProtocol::Http1 => {
            let (mut tx, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            tx.send_request(req).await?
        }
        UpstreamProtocol::Http2 => {
            let (mut tx, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            tx.send_request(req).await?
        }
    };
    // Read (and discard) the response so the upstream sees a complete exchange.
    resp.into_body().collect().await?;
    Ok(())
}

/// One of a cluster's `MAX_IN_FLIGHT` shadow slots; given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn acquire(cluster: &Arc<str>) -> Option<Slot> {
        static IN_FLIGHT: OnceLock<Mutex<HashMap<Arc<str>, Arc<AtomicUsize>>>> = OnceLock::new();
        let counter = {
            let mut map = IN_FLIGHT
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(Arc::clone(cluster)).or_default())
        };
        let prev = counter.fetch_add(1, Ordering::AcqRel);
        if prev >= MAX_IN_FLIGHT {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(counter))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_goes_before_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }

    #[test]
    fn slots_are_bounded_per_cluster() {
        let name: Arc<str> = Arc::from("slots-test");
        let held: Vec<Slot> = (0..MAX_IN_FLIGHT)
            .filter_map(|_| Slot::acquire(&name))
            .collect();
        assert_eq!(held.len(), MAX_IN_FLIGHT);
        assert!(Slot::acquire(&name).is_none());
        drop(held);
        assert!(Slot::acquire(&name).is_some());
    }
}
