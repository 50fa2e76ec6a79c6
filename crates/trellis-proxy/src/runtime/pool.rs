//! Upstream connections for one endpoint, on hyper's connection API: a bounded stack of idle
//! HTTP/1.1 connections (most recently used first, checked before reuse), or one shared,
//! multiplexed HTTP/2 connection (more when `max_concurrent_streams` caps the streams of each:
//! a request goes to the first connection with a free stream, else a new connection is opened
//! within `max_connections`, else it overflows). Connects lazily with a timeout; idle connections expire after
//! the cluster's idle timeout, after `max_requests_per_connection` requests and, once
//! `max_connection_duration` old, are not reused (an HTTP/1.1 connection closes when its
//! request ends, an HTTP/2 one is replaced and drains its streams). Enforces the
//! cluster's connection circuit breakers: at most `max_connections` open (cluster-wide, counted in
//! the shared `CircuitState`), then requests wait for a connection in a queue of at most
//! `max_pending_requests`, beyond which they overflow (`UO`). A pool belongs to an endpoint
//! address and is carried over across config swaps with it (`cluster` decides). Does not route,
//! balance or retry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::circuit::{CircuitState, ConnectionSlot};
use super::cluster::UpstreamProtocol;
use crate::proxy::body::RequestBody;

/// At most this many idle HTTP/1.1 connections are kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// TCP keepalive idle time when the DestinationRule sets none.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why an upstream request failed; `Connect` means nothing was sent (safe to retry).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Request(#[source] hyper::Error),
    /// A circuit breaker refused the request before anything was sent.
    #[error("{0}")]
    Overflow(&'static str),
}

/// Connection settings of one pool (from the cluster; a pool is reused only while they match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// 0: unlimited.
    pub max_requests_per_connection: u32,
    /// Age after which a connection takes no new request (`max_connection_duration`).
    pub max_connection_duration: Option<Duration>,
    /// Streams per HTTP/2 connection (`http2_protocol_options.max_concurrent_streams`); 0:
    /// unlimited (one connection per endpoint).
    pub max_concurrent_streams: u32,
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub keepalive: Keepalive,
}

/// TCP keepalive (`upstream_connection_options.tcp_keepalive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub time: Duration,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

/// A connection ready for one request: from `EndpointPool::connection`, used by `send_on`.
#[derive(Debug)]
pub enum Connection {
    Http1 {
        tx: http1::SendRequest<RequestBody>,
        /// Requests this connection served before this one.
        uses: u32,
        /// When the connection was established.
        opened: Instant,
    },
    Http2(http2::SendRequest<RequestBody>, StreamSlot),
}

/// One stream counted on an HTTP/2 connection until dropped (with the response).
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A shared HTTP/2 connection.
#[derive(Debug)]
struct H2Conn {
    tx: http2::SendRequest<RequestBody>,
    opened: Instant,
    streams: Arc<AtomicU32>,
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    pub addr: SocketAddr,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub options: PoolOptions,
    circuit: Arc<CircuitState>,
    idle: Mutex<Vec<Idle>>,
    shared: Mutex<Vec<H2Conn>>,
    reaping: AtomicBool,
    /// TLS toward this endpoint (its transport socket), `None` for plaintext.
    tls: Option<Arc<crate::tls::upstream::UpstreamTls>>,
}

/// An HTTP/1.1 connection lent to one request; back to the pool with `release` once the
/// response has been read to its end, closed if dropped instead. For HTTP/2, the request's
/// stream counted on its connection until then.
#[derive(Debug)]
pub enum Lease {
    Http1 {
        tx: http1::SendRequest<RequestBody>,
        uses: u32,
        opened: Instant,
        pool: Weak<EndpointPool>,
    },
    Http2(StreamSlot),
}

#[derive(Debug)]
struct Idle {
    tx: http1::SendRequest<RequestBody>,
    uses: u32,
    since: Instant,
    opened: Instant,
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
    pub fn new(addr: SocketAddr, options: PoolOptions, circuit: Arc<CircuitState>) -> EndpointPool {
        EndpointPool {
            addr,
            protocol: options.protocol,
            connect_timeout: options.connect_timeout,
            idle_timeout: options.idle_timeout,
            options,
            circuit,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(Vec::new()),
            reaping: AtomicBool::new(false),
            tls: None,
        }
    }

    /// Whether this pool can serve a cluster with these settings and circuit state.
    pub fn fits(
        &self,
        options: &PoolOptions,
        circuit: &Arc<CircuitState>,
        tls: Option<&crate::tls::upstream::UpstreamTls>,
    ) -> bool {
        self.options == *options
            && Arc::ptr_eq(&self.circuit, circuit)
            && self.tls.as_deref() == tls
    }

    /// Connect with TLS (`None`: plaintext).
    pub fn with_tls(mut self, tls: Option<Arc<crate::tls::upstream::UpstreamTls>>) -> EndpointPool {
        self.tls = tls;
        self
    }

    /// Send `req` on a pooled (or new) connection. For HTTP/1.1 the connection comes back as a
    /// `Lease` to release once the response body is done.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        let conn = self.connection().await?;
        self.send_on(conn, req).await
    }

    /// A connection for one request: an idle one, a new one while the cluster has fewer than
    /// `max_connections`, or (waiting in the pending queue) the next one to free up. Fails
    /// before anything is sent: `Connect`/`Handshake`, or `Overflow` when the queue is full.
    pub async fn connection(self: &Arc<Self>) -> Result<Connection, UpstreamError> {
        match self.protocol {
            UpstreamProtocol::Http1 => {
                if let Some((tx, uses, opened)) = self.checkout() {
                    return Ok(Connection::Http1 { tx, uses, opened });
                }
                // Boxed: the connect and wait state machines are large and rarely needed;
                // inline they would be copied along with every request's future.
                Box::pin(self.connect_or_wait()).await
            }
            UpstreamProtocol::Http2 => {
                if let Some(conn) = self.h2_with_free_stream() {
                    return Ok(conn);
                }
                let Some(slot) = self.circuit.open_connection(self.options.max_connections) else {
                    return Err(UpstreamError::Overflow(
                        if self.options.max_concurrent_streams > 0 {
                            "cluster has max_connections open, each with max_concurrent_streams streams"
                        } else {
                            "cluster has max_connections open"
                        },
                    ));
                };
                let tx = Box::pin(self.connect_h2(slot)).await?;
                let streams = Arc::new(AtomicU32::new(1));
                lock(&self.shared).push(H2Conn {
                    tx: tx.clone(),
                    opened: Instant::now(),
                    streams: Arc::clone(&streams),
                });
                Ok(Connection::Http2(tx, StreamSlot(streams)))
            }
        }
    }

    /// Send `req` on `conn` (from [`EndpointPool::connection`]).
    pub async fn send_on(
        self: &Arc<Self>,
        conn: Connection,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        match conn {
            Connection::Http1 {
                mut tx,
                uses,
                opened,
            } => {
                let resp = tx.send_request(req).await.map_err(UpstreamError::Request)?;
                let lease = Lease::Http1 {
                    tx,
                    uses: uses + 1,
                    opened,
                    pool: Arc::downgrade(self),
                };
                Ok((resp, Some(lease)))
            }
            Connection::Http2(mut tx, stream) => {
                tx.ready().await.map_err(UpstreamError::Request)?;
                let resp = tx.send_request(req).await.map_err(UpstreamError::Request)?;
                Ok((resp, Some(Lease::Http2(stream))))
            }
        }
    }

    /// A stream on a usable HTTP/2 connection: open, younger than `max_connection_duration`
    /// and below `max_concurrent_streams`. Closed and too old connections are forgotten (an
    /// old one drains: it ends once its streams are done).
    fn h2_with_free_stream(&self) -> Option<Connection> {
        let max_streams = self.options.max_concurrent_streams;
        let mut shared = lock(&self.shared);
        shared.retain(|c| !c.tx.is_closed() && !self.too_old(c.opened));
        shared.iter().find_map(|c| {
            let taken = c
                .streams
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (max_streams == 0 || n < max_streams).then_some(n + 1)
                })
                .is_ok();
            taken.then(|| Connection::Http2(c.tx.clone(), StreamSlot(Arc::clone(&c.streams))))
        })
    }

    /// HTTP/1.1 without an idle connection: connect if the cluster may open one more, else
    /// wait in the pending queue for a connection to come back or close.
    async fn connect_or_wait(self: &Arc<Self>) -> Result<Connection, UpstreamError> {
        let mut pending = None;
        loop {
            let changed = self.circuit.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some((tx, uses, opened)) = self.checkout() {
                return Ok(Connection::Http1 { tx, uses, opened });
            }
            if let Some(slot) = self.circuit.open_connection(self.options.max_connections) {
                drop(pending);
                let tx = self.connect_h1(slot).await?;
                let opened = Instant::now();
                return Ok(Connection::Http1 {
                    tx,
                    uses: 0,
                    opened,
                });
            }
            if pending.is_none() {
                pending = Some(self.circuit.pend(self.options.max_pending_requests).ok_or(
                    UpstreamError::Overflow(
                        "cluster has max_connections open and max_pending_requests waiting",
                    ),
                )?);
            }
            changed.await;
        }
    }

    /// The most recently used idle connection that is ready; drops closed and expired ones.
    fn checkout(&self) -> Option<(http1::SendRequest<RequestBody>, u32, Instant)> {
        let mut idle = lock(&self.idle);
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(c) = idle.pop() {
            if c.tx.is_closed() || c.since.elapsed() >= self.idle_timeout || self.too_old(c.opened)
            {
                continue;
            }
            if c.tx.is_ready() {
                found = Some((c.tx, c.uses, c.opened));
                break;
            }
            // Still finishing its previous exchange: keep it for later.
            busy.push(c);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    fn checkin(self: &Arc<Self>, tx: http1::SendRequest<RequestBody>, uses: u32, opened: Instant) {
        let limit = self.options.max_requests_per_connection;
        if tx.is_closed() || (limit > 0 && uses >= limit) {
            // Dropping the sender closes the connection; its slot frees when it ends.
            return;
        }
        if self.too_old(opened) {
            return;
        }
        let back = Idle {
            tx,
            uses,
            since: Instant::now(),
            opened,
        };
        {
            let mut idle = lock(&self.idle);
            if idle.len() >= MAX_IDLE_PER_ENDPOINT {
                // The oldest goes: it is the first to expire anyway.
                idle.remove(0);
            }
            idle.push(back);
        }
        self.circuit.changed.notify_waiters();
        if !self.reaping.swap(true, Ordering::AcqRel) {
            self.spawn_reaper();
        }
    }

    /// Whether a connection opened at `opened` has reached `max_connection_duration`.
    fn too_old(&self, opened: Instant) -> bool {
        self.options
            .max_connection_duration
            .is_some_and(|max| opened.elapsed() >= max)
    }

    /// While connections sit idle, close those idle for longer than the idle timeout (or
    /// older than `max_connection_duration`).
    fn spawn_reaper(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::downgrade(self);
        let every = self
            .options
            .max_connection_duration
            .map_or(self.idle_timeout, |m| m.min(self.idle_timeout))
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = lock(&pool.idle);
                idle.retain(|c| {
                    !c.tx.is_closed()
                        && c.since.elapsed() < pool.idle_timeout
                        && !pool.too_old(c.opened)
                });
                if idle.is_empty() {
                    pool.reaping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    /// A connected stream, with TLS when the endpoint's transport socket says so (the
    /// handshake shares the connect timeout).
    async fn stream(&self) -> Result<crate::tls::stream::Stream, UpstreamError> {
        let tcp = self.tcp().await?;
        let Some(tls) = &self.tls else {
            return Ok(crate::tls::stream::Stream::Plain(tcp));
        };
        match tokio::time::timeout(self.connect_timeout, tls.connect(tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(UpstreamError::Connect(std::io::Error::new(
                e.kind(),
                format!("tls handshake with {}: {e}", self.addr),
            ))),
            Err(_) => Err(UpstreamError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("tls handshake timeout after {:?}", self.connect_timeout),
            ))),
        }
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
        let k = self.options.keepalive;
        let mut keepalive = socket2::TcpKeepalive::new().with_time(k.time);
        if let Some(i) = k.interval {
            keepalive = keepalive.with_interval(i);
        }
        if let Some(n) = k.probes {
            keepalive = keepalive.with_retries(n);
        }
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }

    async fn connect_h1(
        &self,
        slot: ConnectionSlot,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let io = TokioIo::new(self.stream().await?);
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
            drop(slot);
        });
        Ok(tx)
    }

    async fn connect_h2(
        &self,
        slot: ConnectionSlot,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let io = TokioIo::new(self.stream().await?);
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
            drop(slot);
        });
        Ok(tx)
    }
}

impl Lease {
    /// The response was read to its end: the connection (or stream) may serve the next request.
    pub fn release(self) {
        if let Lease::Http1 {
            tx,
            uses,
            opened,
            pool,
        } = self
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(tx, uses, opened);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a Vec or Option half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
