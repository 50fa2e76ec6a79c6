//! Request mirroring (Envoy's shadowing): a fire-and-forget copy of the request to the mirror
//! cluster, with `-shadow` appended to the host part of the authority. The copy's response and
//! failures never reach the client. Bounded: at most `MAX_IN_FLIGHT` shadow requests per
//! cluster, each on its own short-lived connection with an overall deadline. A request body is
//! copied as it streams upstream (`Tee`, at most `MAX_BODY` bytes) and the copy is sent once the
//! body is complete; a larger body, or one the client abandons, is not mirrored. Whatever is not
//! mirrored is counted (`dropped`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;

use crate::runtime::UpstreamProtocol;
use crate::runtime::route::policy::{MILLION, Mirror};

/// Shadow requests in flight per mirror cluster; beyond it, mirrors are dropped.
pub const MAX_IN_FLIGHT: usize = 64;
/// A shadow request (connect, send, read the whole response) gives up after this.
const DEADLINE: Duration = Duration::from_secs(30);
/// Largest request body mirrored.
pub const MAX_BODY: usize = 64 * 1024;

/// Shadow requests sent (`trellis_proxy_mirror_requests_total`).
pub static SENT: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Shadow requests that failed or timed out (`trellis_proxy_mirror_failures_total`).
pub static FAILED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Mirrors not sent: no endpoint, in-flight cap, body too large or abandoned
/// (`trellis_proxy_mirror_dropped_total`).
pub static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// A shadow request ready to go once its body is known.
#[derive(Debug)]
pub struct Pending {
    addr: std::net::SocketAddr,
    protocol: UpstreamProtocol,
    connect: Duration,
    req: Request<()>,
    slot: Slot,
}

/// Copies a request body, as it streams upstream, for the shadow requests waiting on it.
#[derive(Debug)]
pub struct Tee {
    pending: Vec<Pending>,
    chunks: Vec<Bytes>,
    len: usize,
}

/// A shadow request of `parts` (the request as it goes upstream) for `m`, or `None` when this
/// request is not mirrored (not drawn, or dropped and counted).
pub fn prepare(m: &Mirror, parts: &Parts) -> Option<Pending> {
    if m.per_million < MILLION && fastrand::u32(..MILLION) >= m.per_million {
        return None;
    }
    let drop = |why: &str| {
        count_dropped(1);
        tracing::debug!(cluster = %m.cluster.name, why, "request not mirrored");
        None
    };
    let Some(cluster) = &m.cluster.cluster else {
        return drop("no such cluster");
    };
    let Some(slot) = Slot::acquire(&cluster.name) else {
        return drop("too many shadow requests in flight");
    };
    let Some(endpoint) = cluster.pick(None) else {
        return drop("no healthy endpoint");
    };
    let Some(req) = shadow_request(parts, cluster.protocol) else {
        return drop("request has no authority");
    };
    Some(Pending {
        addr: endpoint.addr,
        protocol: cluster.protocol,
        connect: cluster.connect_timeout,
        req,
        slot,
    })
}

/// Send `p` with `body` in the background.
pub fn launch(p: Pending, body: Bytes) {
    SENT.inc();
    tokio::spawn(async move {
        let Pending {
            addr,
            protocol,
            connect,
            req,
            slot,
        } = p;
        let _slot = slot;
        let req = req.map(|()| Full::new(body));
        match tokio::time::timeout(DEADLINE, send(addr, protocol, connect, req)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                FAILED.inc();
                tracing::debug!(%addr, error = %e, "shadow request failed");
            }
            Err(_) => {
                FAILED.inc();
                tracing::debug!(%addr, "shadow request timed out");
            }
        }
    });
}

fn count_dropped(n: usize) {
    DROPPED.inc_by(n as u64);
}

impl Tee {
    pub fn new(pending: Vec<Pending>) -> Tee {
        Tee {
            pending,
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// A chunk of the body went upstream.
    pub fn data(&mut self, chunk: &Bytes) {
        if self.pending.is_empty() {
            return;
        }
        self.len += chunk.len();
        if self.len > MAX_BODY {
            tracing::debug!(limit = MAX_BODY, "request body too large to mirror");
            count_dropped(self.pending.len());
            self.pending.clear();
            self.chunks.clear();
            return;
        }
        self.chunks.push(chunk.clone());
    }

    /// The body is complete: send the shadow requests.
    pub fn end(&mut self) {
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].clone(),
            _ => Bytes::from(self.chunks.concat()),
        };
        self.chunks.clear();
        for p in self.pending.drain(..) {
            launch(p, body.clone());
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The body never completed (client gone, upstream failed): nothing is mirrored.
        count_dropped(self.pending.len());
    }
}

/// `host[:port]` → `host-shadow[:port]` (Envoy's shadow host).
pub fn shadow_authority(authority: &str) -> String {
    match crate::runtime::route::strip_port(authority) {
        Some(host) => format!("{host}-shadow{}", &authority[host.len()..]),
        None => format!("{authority}-shadow"),
    }
}

fn shadow_request(parts: &Parts, protocol: UpstreamProtocol) -> Option<Request<()>> {
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
    // A shadow never upgrades (its response is thrown away).
    headers.remove(http::header::CONNECTION);
    headers.remove(http::header::UPGRADE);
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
    let mut req = Request::new(());
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
    req: Request<Full<Bytes>>,
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
#[derive(Debug)]
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
