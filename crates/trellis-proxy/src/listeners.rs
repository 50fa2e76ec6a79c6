//! Bound listeners and their accept loops. `apply` turns a new runtime snapshot into sockets:
//! it binds listeners that are new (or moved), closes removed ones and never rebinds one that
//! stayed; binding happens before the snapshot is swapped in, so a bind failure leaves the old
//! config serving. Each connection is served by hyper (HTTP/1.1 and h2c prior knowledge on one
//! port) with the listener's limits and timeouts; L4 (tcp_proxy) listeners hand each connection
//! to `crate::tcp_proxy`; gateway TLS listeners go to `gateway` (SNI chains, termination).
//! Owns sockets only; routing is `crate::proxy`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub mod framing;
mod gateway;
pub mod sni;

use crate::proxy::{ConnInfo, Proxy, poll_registered};
use crate::runtime::{HttpSettings, Runtime, RuntimeError};
use crate::tls::inbound::{Accepted, InboundTls};
use crate::tls::stream::Stream;

/// hyper's read buffer must hold the request line plus the header block.
const HEAD_SLACK: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("bind {addr} for listener {name:?}: {source}; is another proxy running?")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] RuntimeError),
}

/// The listeners this process is serving.
pub struct Listeners {
    proxy: Arc<Proxy>,
    active: HashMap<Arc<str>, Active>,
}

struct Active {
    configured: SocketAddr,
    bound: SocketAddr,
    _stop: watch::Sender<()>,
}

impl Listeners {
    pub fn new(proxy: Arc<Proxy>) -> Listeners {
        Listeners {
            proxy,
            active: HashMap::new(),
        }
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Name → bound address (the real port when the config said 0).
    pub fn bound(&self) -> HashMap<String, SocketAddr> {
        self.active
            .iter()
            .map(|(n, a)| (n.to_string(), a.bound))
            .collect()
    }

    /// Compile `res`, bind what is new, swap the snapshot in, close what was removed.
    /// On error nothing changes.
    pub fn apply(&mut self, res: trellis_xds::Resources) -> Result<(), ListenerError> {
        let prev = self.proxy.runtime.load_full();
        let next = Runtime::compile_owned(res, Some(&prev))?;
        let mut fresh = Vec::new();
        for (name, addr) in next.listener_addrs() {
            if self.active.get(name).is_some_and(|a| a.configured == addr) {
                continue;
            }
            let std_listener = bind(addr).map_err(|source| ListenerError::Bind {
                name: name.to_string(),
                addr,
                source,
            })?;
            fresh.push((Arc::clone(name), addr, std_listener));
        }
        let mut tokio_listeners = Vec::with_capacity(fresh.len());
        for (name, addr, l) in fresh {
            let tl = TcpListener::from_std(l).map_err(|source| ListenerError::Bind {
                name: name.to_string(),
                addr,
                source,
            })?;
            tokio_listeners.push((name, addr, tl));
        }
        let keep: Vec<Arc<str>> = next.listener_addrs().map(|(n, _)| Arc::clone(n)).collect();
        self.proxy.telemetry.upstream_stats.set_clusters(
            next.clusters
                .iter()
                .map(|(name, c)| (Arc::clone(name), Arc::clone(&c.circuit.stats)))
                .collect(),
        );
        self.proxy.telemetry.authz_stats.set_filters(
            next.listeners
                .values()
                .flat_map(|l| {
                    let prefix: Arc<str> = l.settings.stat_prefix.as_str().into();
                    l.authz.filters.iter().map(move |f| {
                        (
                            Arc::clone(&prefix),
                            Arc::clone(&f.shadow_prefix),
                            Arc::clone(&f.stats),
                        )
                    })
                })
                .collect(),
        );
        self.proxy.runtime.store(Arc::new(next));
        self.active.retain(|name, _| keep.contains(name));
        for (name, configured, tl) in tokio_listeners {
            let bound = tl.local_addr().unwrap_or(configured);
            let (stop, stopped) = watch::channel(());
            tracing::info!(listener = %name, address = %bound, "listening");
            tokio::spawn(accept_loop(
                Arc::clone(&self.proxy),
                Arc::clone(&name),
                tl,
                stopped,
            ));
            self.active.insert(
                name,
                Active {
                    configured,
                    bound,
                    _stop: stop,
                },
            );
        }
        Ok(())
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    name: Arc<str>,
    listener: TcpListener,
    mut stop: watch::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        match accepted {
            Ok((stream, remote)) => {
                // Gateway TLS listeners: the chain is chosen per connection by SNI.
                if let Some(l) = proxy.runtime.load().sni_listeners.get(&name) {
                    tokio::spawn(gateway::serve(
                        Arc::clone(&proxy),
                        Arc::clone(l),
                        stream,
                        remote,
                    ));
                    continue;
                }
                let local = stream.local_addr().unwrap_or(remote);
                // L4 listeners: the chain is chosen per connection by `tcp_proxy`.
                if let Some(l) = proxy.runtime.load().tcp_listeners.get(&name) {
                    let l = Arc::clone(l);
                    tokio::spawn(crate::tcp_proxy::serve(
                        Arc::clone(&proxy),
                        l,
                        stream,
                        remote,
                    ));
                    continue;
                }
                let tls = proxy
                    .runtime
                    .load()
                    .listeners
                    .get(&name)
                    .and_then(|l| l.tls.clone());
                if let Some(tls) = tls {
                    tokio::spawn(serve_tls(
                        Arc::clone(&proxy),
                        Arc::clone(&name),
                        tls,
                        stream,
                    ));
                    continue;
                }
                let conn = Arc::new(ConnInfo::new(Arc::clone(&name), remote, local));
                tokio::spawn(serve_connection(
                    Arc::clone(&proxy),
                    conn,
                    Stream::Plain(stream),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(listener = %name, "listener closed");
}

/// hyper's HTTP/1 read buffer: a head that does not fit is rejected (431).
fn hyper_buf_size(s: &HttpSettings) -> usize {
    (s.max_request_headers_bytes + HEAD_SLACK).max(8192)
}

fn server_builder(s: &HttpSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .keep_alive(true)
        // Flatten head and body into one buffer: one `send` per response instead of a
        // `writev` (cheaper in the kernel; our bodies are small or streamed in chunks anyway).
        .writev(false)
        .timer(TokioTimer::new())
        // The request-head deadline is enforced by `serve_connection`'s coarse per-connection
        // check instead: hyper's own arms and drops a boxed timer for every request.
        .header_read_timeout(None)
        .max_headers(s.max_headers_count)
        .max_buf_size(hyper_buf_size(s));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size((s.max_request_headers_bytes + HEAD_SLACK) as u32)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// A connection to a listener that terminates TLS: classify it, complete the handshake and
/// record the peer, then serve it like any other (or close it when no chain accepts it).
async fn serve_tls(proxy: Arc<Proxy>, name: Arc<str>, tls: Arc<InboundTls>, stream: TcpStream) {
    let (Ok(remote), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut conn = ConnInfo::new(name, remote, local);
    let stream = match tls.accept(&proxy.identity, stream).await {
        Some(Accepted::Tls(s, peer)) => {
            conn.peer = peer;
            s
        }
        Some(Accepted::Plain(s)) => s,
        None => return,
    };
    serve_connection(proxy, Arc::new(conn), stream).await;
}

async fn serve_connection(proxy: Arc<Proxy>, conn: Arc<ConnInfo>, stream: Stream) {
    let _ = stream.tcp().set_nodelay(true);
    let settings = match proxy.runtime.load().listeners.get(&conn.listener) {
        Some(l) => l.settings.clone(),
        None => return,
    };
    let builder = server_builder(&settings);
    let svc_conn = Arc::clone(&conn);
    let svc_proxy = Arc::clone(&proxy);
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&svc_proxy);
        let conn = Arc::clone(&svc_conn);
        async move { proxy.handle(&conn, req).await }
    });
    let guarded = framing::FramingGuard::new(stream, Arc::clone(&conn.framing_violation))
        .with_http2_flag(Arc::clone(&conn.http2))
        .with_head_limits(
            settings.max_headers_count,
            hyper_buf_size(&settings),
            Arc::clone(&conn.rejected_head),
        );
    let served = builder.serve_connection_with_upgrades(TokioIo::new(guarded), service);
    tokio::pin!(served);
    let idle = settings.idle_timeout;
    let head_timeout = settings.request_headers_timeout;
    // One coarse timer per connection: checks the keep-alive idle timeout and, for HTTP/1, that
    // a request head arrives within `request_headers_timeout` of the connection waiting for it
    // (opened, or its last response done) — as hyper's `header_read_timeout` would, give or
    // take a tick, without a timer per request.
    let tick =
        (idle.min(head_timeout) / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut draining = false;
    let mut timer = Box::pin(tokio::time::sleep(tick));
    let mut registered = false;
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = served.as_mut().poll(cx) {
                return Poll::Ready(Some(res));
            }
            if poll_registered(timer.as_mut(), &mut registered, cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(res) = event else {
            match overdue(&conn, head_timeout, idle) {
                Some(Overdue::Head) => break,
                Some(Overdue::Idle) if !draining => {
                    served.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ => {}
            }
            timer.as_mut().reset(tokio::time::Instant::now() + tick);
            registered = false;
            continue;
        };
        if let Err(e) = res {
            tracing::debug!(remote = %conn.remote, error = %e, "connection ended with error");
        }
        break;
    }
    // A head hyper rejected never reached the service: log and count it here.
    if let Some(rejected) = conn.rejected_head.get() {
        proxy.record_rejected_head(&conn, rejected);
    }
}

/// A deadline a connection has passed.
enum Overdue {
    /// HTTP/1 and no complete request head within `request_headers_timeout`: close.
    Head,
    /// No request in flight for the idle timeout: drain.
    Idle,
}

fn overdue(conn: &ConnInfo, head_timeout: Duration, idle: Duration) -> Option<Overdue> {
    let waiting = conn.idle_for()?;
    if waiting >= head_timeout && !conn.http2.load(Ordering::Relaxed) {
        tracing::debug!(remote = %conn.remote, timeout = ?head_timeout, "no request head in time; closing");
        return Some(Overdue::Head);
    }
    (waiting >= idle).then_some(Overdue::Idle)
}
