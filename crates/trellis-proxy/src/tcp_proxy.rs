//! The L4 path (Envoy's tcp_proxy): one downstream connection → (TLS SNI) → filter chain →
//! cluster (weighted per connection) → endpoint → upstream connection, then bytes both ways
//! until both sides are done. TLS passthrough reads the ClientHello (`listeners::sni`) without
//! terminating TLS and replays it upstream first.
//!
//! Owns the connection's lifetime: the ClientHello deadline, the connect timeout, half-close
//! (one side's FIN is passed on and the other direction keeps flowing), the idle timeout, the
//! `istio_tcp_*` counters (bytes counted as they flow) and one access-log line per connection.
//! A connection that cannot be routed or connected is closed, logged and counted with Envoy's
//! response flag (`NR` no chain, `NC` no cluster, `UH` no endpoint, `UF` connect failure). It
//! does not bind or accept, and knows nothing about HTTP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::listeners::sni::{self, SniffError};
use crate::proxy::Proxy;
use crate::runtime::balancer::InFlight;
use crate::runtime::cluster::{Cluster, Endpoint};
use crate::runtime::{TcpChain, TcpListener};
use crate::telemetry::tcp_metrics::{TcpLabels, TcpSeries};
use crate::telemetry::{ActiveConnection, RequestRecord};
use crate::tls::stream::Stream;

mod tunnel;

/// One downstream connection: where and when it arrived.
struct Conn<'a> {
    start: SystemTime,
    remote: SocketAddr,
    local: SocketAddr,
    proxy: &'a Proxy,
}

/// What one connection did, for its access-log line and the counters.
struct Outcome<'a> {
    flags: &'static str,
    server_name: Option<&'a str>,
    cluster: Option<&'a Cluster>,
    endpoint: Option<&'a Endpoint>,
    bytes: &'a Bytes,
}

/// Bytes of one connection, and when they last moved (for the idle timeout).
#[derive(Debug)]
struct Bytes {
    /// From the downstream client.
    received: AtomicU64,
    /// To the downstream client.
    sent: AtomicU64,
    opened: Instant,
    /// Milliseconds since `opened` of the last read or write.
    last_ms: AtomicU64,
}

/// The downstream socket, counting what flows through it into the connection's [`Bytes`] and
/// the cluster's series.
struct Counted<'a> {
    inner: Stream,
    bytes: &'a Bytes,
    series: Option<&'a TcpSeries>,
}

/// Serves one accepted connection on an L4 listener until both directions are done.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: Arc<TcpListener>,
    mut stream: TcpStream,
    remote: SocketAddr,
) {
    let _open: ActiveConnection = proxy.telemetry.connection_opened();
    let conn = Conn {
        start: SystemTime::now(),
        local: stream.local_addr().unwrap_or(remote),
        remote,
        proxy: &proxy,
    };
    let _ = stream.set_nodelay(true);
    let bytes = Bytes::new();
    let outcome = Outcome {
        flags: "",
        server_name: None,
        cluster: None,
        endpoint: None,
        bytes: &bytes,
    };
    let sniffed = if listener.inspect_tls {
        match sni::read_client_hello(&mut stream, listener.inspect_timeout).await {
            Ok(s) => Some(s),
            Err(e) => {
                // Envoy closes such connections before any filter chain: no route.
                if !matches!(e, SniffError::Closed) {
                    tracing::debug!(listener = %listener.name, %remote, error = %e, "closing connection");
                }
                return conn.finish(outcome.failed("NR"));
            }
        }
    } else {
        None
    };
    routed(&conn, &listener, Stream::Plain(stream), sniffed, &bytes).await;
}

/// Serves a connection of a gateway listener whose chain was chosen already
/// (`listeners::gateway`): `stream` is the raw socket (passthrough: `hello.bytes` are replayed
/// upstream) or the terminated TLS stream (`hello.bytes` empty).
pub async fn serve_chosen(
    proxy: Arc<Proxy>,
    listener: Arc<TcpListener>,
    stream: Stream,
    remote: SocketAddr,
    hello: sni::Sniffed,
) {
    let _open: ActiveConnection = proxy.telemetry.connection_opened();
    let conn = Conn {
        start: SystemTime::now(),
        local: stream.tcp().local_addr().unwrap_or(remote),
        remote,
        proxy: &proxy,
    };
    let bytes = Bytes::new();
    routed(&conn, &listener, stream, Some(hello), &bytes).await;
}

/// Route, connect and splice a connection whose ClientHello (if inspected) was read.
async fn routed(
    conn: &Conn<'_>,
    listener: &TcpListener,
    stream: Stream,
    sniffed: Option<sni::Sniffed>,
    bytes: &Bytes,
) {
    let proxy = conn.proxy;
    let remote = conn.remote;
    let outcome = Outcome {
        flags: "",
        server_name: None,
        cluster: None,
        endpoint: None,
        bytes,
    };
    let head = sniffed.as_ref().map_or(&[][..], |s| s.bytes.as_slice());
    bytes.received.fetch_add(head.len() as u64, Relaxed);
    let outcome = Outcome {
        server_name: sniffed.as_ref().and_then(|s| s.server_name.as_deref()),
        ..outcome
    };
    let (chain, cluster, endpoint) = match route(listener, outcome.server_name) {
        Ok(picked) => picked,
        Err((flags, cluster)) => {
            return conn.finish(Outcome {
                cluster,
                ..outcome.failed(flags)
            });
        }
    };
    if !crate::proxy::authz::authorize_connection(chain, remote, conn.local, outcome.server_name) {
        // Envoy's network RBAC closes the connection without a response flag.
        return conn.finish(Outcome {
            cluster: Some(cluster),
            ..outcome
        });
    }
    let outcome = Outcome {
        cluster: Some(cluster),
        endpoint: Some(endpoint),
        ..outcome
    };
    let _in_flight = InFlight::new(&endpoint.state);
    let mut upstream = match connect(endpoint.addr, cluster.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "upstream connect failed; closing connection");
            // A local-origin failure for outlier detection, as Envoy's tcp_proxy reports it.
            cluster.report(endpoint, crate::runtime::outlier::Outcome::ConnectFailed);
            return conn.finish(outcome.failed("UF"));
        }
    };
    // Through an HTTP proxy (DestinationRule `tunnel`): CONNECT first; a refusal is a connect
    // failure (`UF`).
    let early = match &chain.tunnel {
        None => Vec::new(),
        Some(hostname) => {
            match tunnel::open(&mut upstream, hostname, cluster.connect_timeout).await {
                Ok(early) => early,
                Err(e) => {
                    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "tunnel not opened; closing connection");
                    cluster.report(endpoint, crate::runtime::outlier::Outcome::ConnectFailed);
                    return conn.finish(outcome.failed("UF"));
                }
            }
        }
    };
    let series = proxy.telemetry.tcp_series(&labels(cluster, endpoint, ""));
    if let Some(s) = &series {
        s.opened.fetch_add(1, Relaxed);
        s.received.fetch_add(head.len() as u64, Relaxed);
    }
    let mut down = Counted {
        inner: stream,
        bytes,
        series: series.as_deref(),
    };
    if !early.is_empty()
        && let Err(e) = down.write_all(&early).await
    {
        tracing::debug!(error = %e, "write tunnel data downstream");
    } else {
        splice(&mut down, upstream, head, chain).await;
    }
    if let Some(s) = &series {
        s.closed.fetch_add(1, Relaxed);
    }
    conn.log(&outcome);
}

/// The chain, cluster and endpoint for a connection with this SNI; or the response flag (and
/// the cluster, when known) saying why there is none.
fn route<'l>(
    listener: &'l TcpListener,
    server_name: Option<&str>,
) -> Result<(&'l TcpChain, &'l Cluster, &'l Endpoint), (&'static str, Option<&'l Cluster>)> {
    let Some(chain) = listener.select(server_name) else {
        tracing::debug!(listener = %listener.name, sni = ?server_name, "no filter chain matches");
        return Err(("NR", None));
    };
    let target = chain.pick();
    let Some(cluster) = target.cluster.as_deref() else {
        tracing::debug!(cluster = %target.name, "cluster not found; closing connection");
        return Err(("NC", None));
    };
    match cluster.pick(None) {
        Some(endpoint) => Ok((chain, cluster, endpoint)),
        None => Err(("UH", Some(cluster))),
    }
}

/// Replays `head`, then copies both ways (half-close passed on) until both are done, an error,
/// the chain's idle timeout, or its maximum connection duration.
async fn splice(down: &mut Counted<'_>, up: TcpStream, head: &[u8], chain: &TcpChain) {
    let Some(max) = chain.max_duration else {
        return splice_until_idle(down, up, head, chain).await;
    };
    if tokio::time::timeout(max, splice_until_idle(down, up, head, chain))
        .await
        .is_err()
    {
        tracing::debug!(max = ?max, "max connection duration reached; closing connection");
    }
}

async fn splice_until_idle(
    down: &mut Counted<'_>,
    mut up: TcpStream,
    head: &[u8],
    chain: &TcpChain,
) {
    let _ = up.set_nodelay(true);
    if !head.is_empty()
        && let Err(e) = up.write_all(head).await
    {
        tracing::debug!(error = %e, "replay ClientHello upstream");
        return;
    }
    let bytes = down.bytes;
    let copy = tokio::io::copy_bidirectional(down, &mut up);
    let Some(idle) = chain.idle_timeout else {
        let _ = copy.await;
        return;
    };
    tokio::pin!(copy);
    let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with error");
                }
                return;
            }
            () = tokio::time::sleep(tick) => {
                if bytes.idle_for() >= idle {
                    tracing::debug!(timeout = ?idle, "idle timeout; closing connection");
                    return;
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        )),
    }
}

impl Conn<'_> {
    /// A connection that ended before it was spliced: counted as opened and closed with its
    /// flag, then logged.
    fn finish(&self, outcome: Outcome<'_>) {
        let telemetry = &self.proxy.telemetry;
        let series = match (outcome.cluster, outcome.endpoint) {
            (Some(c), Some(e)) => telemetry.tcp_series(&labels(c, e, outcome.flags)),
            (Some(c), None) => telemetry.tcp_series(&TcpLabels {
                destination_service: &c.service.host,
                destination_service_name: &c.service.name,
                destination_service_namespace: &c.service.namespace,
                ..TcpLabels::unknown(outcome.flags)
            }),
            _ => telemetry.tcp_series(&TcpLabels::unknown(outcome.flags)),
        };
        if let Some(s) = series {
            s.opened.fetch_add(1, Relaxed);
            s.closed.fetch_add(1, Relaxed);
            s.received
                .fetch_add(outcome.bytes.received.load(Relaxed), Relaxed);
        }
        self.log(&outcome);
    }

    /// The connection's access-log line (Envoy's fields; HTTP ones empty, protocol `TCP`).
    fn log(&self, o: &Outcome<'_>) {
        let unknown = "unknown";
        let service = o.cluster.map(|c| &c.service);
        let workload = o.endpoint.map(|e| &e.workload);
        let rec = RequestRecord {
            start: self.start,
            duration: self.start.elapsed().unwrap_or_default(),
            method: "",
            path: "",
            authority: o.server_name.unwrap_or(""),
            protocol: "TCP",
            grpc: false,
            response_code: 0,
            grpc_status: None,
            response_flags: o.flags,
            request_id: "",
            user_agent: "",
            x_forwarded_for: "",
            downstream_remote: self.remote,
            downstream_local: self.local,
            upstream_host: o.endpoint.map(|e| e.addr),
            upstream_cluster: o.cluster.map_or("", |c| &c.name),
            route_name: "",
            bytes_received: o.bytes.received.load(Relaxed),
            bytes_sent: o.bytes.sent.load(Relaxed),
            destination_service: service.map_or(unknown, |s| &s.host),
            destination_service_name: service.map_or(unknown, |s| &s.name),
            destination_service_namespace: service.map_or(unknown, |s| &s.namespace),
            destination_workload: workload.map_or(unknown, |w| &w.workload),
            destination_workload_namespace: workload.map_or(unknown, |w| &w.namespace),
            destination_version: workload.map_or(unknown, |w| &w.version),
            destination_app: workload.map_or(unknown, |w| &w.app),
        };
        self.proxy.telemetry.log_connection(&rec);
    }
}

impl<'a> Outcome<'a> {
    /// This outcome, ended with `flags`.
    fn failed(self, flags: &'static str) -> Outcome<'a> {
        Outcome { flags, ..self }
    }
}

fn labels<'a>(cluster: &'a Cluster, endpoint: &'a Endpoint, flags: &'a str) -> TcpLabels<'a> {
    TcpLabels {
        destination_workload: &endpoint.workload.workload,
        destination_workload_namespace: &endpoint.workload.namespace,
        destination_app: &endpoint.workload.app,
        destination_version: &endpoint.workload.version,
        destination_service: &cluster.service.host,
        destination_service_name: &cluster.service.name,
        destination_service_namespace: &cluster.service.namespace,
        response_flags: flags,
    }
}

impl<'a> TcpLabels<'a> {
    /// Labels of a connection with no known destination.
    fn unknown(flags: &'a str) -> TcpLabels<'a> {
        TcpLabels {
            destination_workload: "",
            destination_workload_namespace: "",
            destination_app: "",
            destination_version: "",
            destination_service: "",
            destination_service_name: "",
            destination_service_namespace: "",
            response_flags: flags,
        }
    }
}

impl Bytes {
    fn new() -> Bytes {
        Bytes {
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.bytes.received.fetch_add(n, Relaxed);
            this.bytes.touch();
            if let Some(s) = this.series {
                s.received.fetch_add(n, Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled
            && *n > 0
        {
            let n = *n as u64;
            this.bytes.sent.fetch_add(n, Relaxed);
            this.bytes.touch();
            if let Some(s) = this.series {
                s.sent.fetch_add(n, Relaxed);
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
