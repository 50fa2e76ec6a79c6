//! Upstream connections for one endpoint, on hyper's connection API: a bounded stack of idle
//! HTTP/1.1 connections (most recently used first, checked before reuse), or one shared,
//! multiplexed HTTP/2 connection. Connects lazily with a timeout; idle connections expire after
//! the cluster's idle timeout. A pool belongs to an endpoint address and is carried over across
//! config swaps with it (`cluster` decides). Does not route, balance or retry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::cluster::UpstreamProtocol;
use crate::proxy::body::RequestBody;

/// At most this many idle HTTP/1.1 connections are kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 128;
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why an upstream request failed; `Connect` means nothing was sent (safe to retry).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Request(#[source] hyper::Error),
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    pub addr: SocketAddr,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    shared: Mutex<Option<http2::SendRequest<RequestBody>>>,
    reaping: AtomicBool,
}

/// An HTTP/1.1 connection lent to one request; back to the pool with `release` once the
/// response has been read to its end, closed if dropped instead.
#[derive(Debug)]
pub struct Lease {
    tx: http1::SendRequest<RequestBody>,
    pool: Weak<EndpointPool>,
}

#[derive(Debug)]
struct Idle {
    tx: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl UpstreamError {
    /// True when the failure happened before anything was sent.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::Handshake(_)
        )
    }
}

impl EndpointPool {
    pub fn new(
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> EndpointPool {
        EndpointPool {
            addr,
            protocol,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            reaping: AtomicBool::new(false),
        }
    }

    /// Whether this pool can serve a cluster with these settings.
    pub fn fits(&self, protocol: UpstreamProtocol, connect: Duration, idle: Duration) -> bool {
        self.protocol == protocol && self.connect_timeout == connect && self.idle_timeout == idle
    }

    /// Send `req` on a pooled (or new) connection. For HTTP/1.1 the connection comes back as a
    /// `Lease` to release once the response body is done.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        match self.protocol {
            UpstreamProtocol::Http1 => {
                let mut tx = match self.checkout() {
                    Some(tx) => tx,
                    // Boxed: the connect state machine is large and rarely needed; inline it
                    // would be copied along with every request's future.
                    None => Box::pin(self.connect_h1()).await?,
                };
                let resp = tx.send_request(req).await.map_err(UpstreamError::Request)?;
                let lease = Lease {
                    tx,
                    pool: Arc::downgrade(self),
                };
                Ok((resp, Some(lease)))
            }
            UpstreamProtocol::Http2 => {
                let shared = lock(&self.shared)
                    .as_ref()
                    .filter(|t| !t.is_closed())
                    .cloned();
                let mut tx = match shared {
                    Some(tx) => tx,
                    None => {
                        let tx = Box::pin(self.connect_h2()).await?;
                        *lock(&self.shared) = Some(tx.clone());
                        tx
                    }
                };
                tx.ready().await.map_err(UpstreamError::Request)?;
                let resp = tx.send_request(req).await.map_err(UpstreamError::Request)?;
                Ok((resp, None))
            }
        }
    }

    /// The most recently used idle connection that is ready; drops closed and expired ones.
    fn checkout(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = lock(&self.idle);
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(c) = idle.pop() {
            if c.tx.is_closed() || c.since.elapsed() >= self.idle_timeout {
                continue;
            }
            if c.tx.is_ready() {
                found = Some(c.tx);
                break;
            }
            // Still finishing its previous exchange: keep it for later.
            busy.push(c);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    fn checkin(self: &Arc<Self>, tx: http1::SendRequest<RequestBody>) {
        if tx.is_closed() {
            return;
        }
        {
            let mut idle = lock(&self.idle);
            if idle.len() >= MAX_IDLE_PER_ENDPOINT {
                // The oldest goes: it is the first to expire anyway.
                idle.remove(0);
            }
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
        if !self.reaping.swap(true, Ordering::AcqRel) {
            self.spawn_reaper();
        }
    }

    /// While connections sit idle, close those idle for longer than the idle timeout.
    fn spawn_reaper(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::downgrade(self);
        let every = self
            .idle_timeout
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = lock(&pool.idle);
                idle.retain(|c| !c.tx.is_closed() && c.since.elapsed() < pool.idle_timeout);
                if idle.is_empty() {
                    pool.reaping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    async fn tcp(&self) -> Result<TcpStream, UpstreamError> {
        let connect = TcpStream::connect(self.addr);
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => {
                return Err(UpstreamError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timeout after {:?}", self.connect_timeout),
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let io = TokioIo::new(self.tcp().await?);
        let (tx, conn) = http1::Builder::new()
            // One `send` per request rather than `writev` (see `listeners::server_builder`).
            .writev(false)
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        let addr = self.addr;
        tokio::spawn(async move {
            // With upgrades: a 101 hands the connection to `proxy::upgrade`'s tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let io = TokioIo::new(self.tcp().await?);
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .adaptive_window(true)
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream h2 connection ended");
            }
        });
        Ok(tx)
    }
}

impl Lease {
    /// The response was read to its end: the connection may serve the next request.
    pub fn release(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(self.tx);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a Vec or Option half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
