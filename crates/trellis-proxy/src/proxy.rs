//! The request path: one downstream request → route → cluster → endpoint → upstream, and the
//! response back. Loads the runtime snapshot once per request and keeps it until the request
//! ends. Every failure becomes a proxy-generated response with a status, a response flag
//! (`x-trellis-flags`) and a one-line body saying what happened (see `Local`). Does not bind,
//! accept or configure anything.

pub mod actions;
pub mod authz;
pub mod body;
pub mod cors;
pub mod ext_authz;
pub mod fault;
pub mod headers;
pub mod jwt;
pub mod mirror;
pub mod retry;
pub mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::listeners::framing::RejectedHead;
use crate::runtime::hash;
use crate::runtime::route::RequestView;
use crate::runtime::{Runtime, UpstreamProtocol};
use crate::telemetry::Telemetry;
use crate::telemetry::upstream_stats::ClusterStats;
use body::{RequestLog, ResponseBody};
use headers::X_TRELLIS_FLAGS;

/// Shared by every connection: the current snapshot and the telemetry sink.
pub struct Proxy {
    pub runtime: ArcSwap<Runtime>,
    pub telemetry: Arc<Telemetry>,
    /// The workload's certificate and trust bundle (empty until a source fills it).
    pub identity: Arc<crate::security::IdentityStore>,
}

/// One downstream connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Who the peer is, from its verified mTLS certificate (default: plaintext, unknown).
    pub peer: crate::security::Peer,
    /// `remote`'s IP rendered for `x-forwarded-for`, once per connection.
    peer_ip: Option<HeaderValue>,
    /// Raised by `listeners::framing` when an HTTP/1 request is framed ambiguously.
    pub framing_violation: Arc<AtomicBool>,
    /// Raised by `listeners::framing` when the connection starts with the HTTP/2 preface.
    pub http2: Arc<AtomicBool>,
    /// Set by `listeners::framing` for a request head hyper rejects while parsing.
    pub rejected_head: Arc<OnceLock<RejectedHead>>,
    active: AtomicUsize,
    opened: Instant,
    /// Milliseconds since `opened` when the last request ended.
    last_end_ms: AtomicU64,
    /// A reusable deadline for "response headers within": taken by a request while it waits
    /// for upstream and put back after. Resetting it to a later deadline costs an atomic store
    /// (tokio only touches its timer wheel when a deadline moves earlier or fires), where a fresh
    /// timer per request is registered and removed every time.
    response_timer: Mutex<Option<Pin<Box<tokio::time::Sleep>>>>,
}

/// A response the proxy generates itself.
#[derive(Debug)]
pub struct Local {
    pub status: StatusCode,
    /// `-` for an answer that is not a failure (redirect, direct response, CORS preflight).
    pub flag: &'static str,
    pub message: String,
    /// Replaces `message` as the body (a direct response's bytes).
    pub body: Option<Bytes>,
    /// Headers for the answer, over the defaults (`Location`, CORS, gRPC status, …).
    pub headers: Option<Box<http::HeaderMap>>,
}

impl ConnInfo {
    pub fn new(listener: Arc<str>, remote: SocketAddr, local: SocketAddr) -> ConnInfo {
        ConnInfo {
            listener,
            remote,
            local,
            peer: crate::security::Peer::default(),
            peer_ip: headers::peer_value(remote.ip()),
            framing_violation: Arc::default(),
            http2: Arc::default(),
            rejected_head: Arc::default(),
            active: AtomicUsize::new(0),
            opened: Instant::now(),
            last_end_ms: AtomicU64::new(0),
            response_timer: Mutex::new(None),
        }
    }

    /// A timer that fires `wait` from now: the connection's idle one if free (HTTP/2 streams
    /// in parallel get their own). Give it back with `put_response_timer`.
    fn take_response_timer(&self, wait: Duration) -> Pin<Box<tokio::time::Sleep>> {
        let deadline = tokio::time::Instant::now() + wait;
        let idle = self
            .response_timer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match idle {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn put_response_timer(&self, timer: Pin<Box<tokio::time::Sleep>>) {
        let mut slot = self
            .response_timer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(timer);
        }
    }

    fn begin_request(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end_request(&self) {
        self.last_end_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long the connection has had no request in flight (`None` while one is).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(last))
    }
}

impl Local {
    fn new(status: StatusCode, flag: &'static str, message: String) -> Local {
        Local {
            status,
            flag,
            message,
            body: None,
            headers: None,
        }
    }
}

impl Proxy {
    pub fn new(runtime: Runtime, telemetry: Arc<Telemetry>) -> Proxy {
        Proxy {
            identity: Arc::clone(&runtime.identity),
            runtime: ArcSwap::from_pointee(runtime),
            telemetry,
        }
    }

    /// Log and count a request head hyper rejected while parsing (`DPE`) and the framing guard
    /// answered; called once, when its connection ends.
    pub fn record_rejected_head(&self, conn: &ConnInfo, rejected: &RejectedHead) {
        if !rejected.answered.load(Ordering::Relaxed) {
            return;
        }
        let unknown = "unknown";
        let rec = crate::telemetry::RequestRecord {
            start: SystemTime::now(),
            duration: Duration::ZERO,
            method: &rejected.method,
            path: &rejected.path,
            authority: "",
            protocol: "HTTP/1.1",
            grpc: false,
            response_code: rejected.error.status(),
            grpc_status: None,
            response_flags: "DPE",
            request_id: "",
            user_agent: "",
            x_forwarded_for: "",
            downstream_remote: conn.remote,
            downstream_local: conn.local,
            upstream_host: None,
            upstream_cluster: "",
            route_name: "",
            bytes_received: 0,
            bytes_sent: 0,
            destination_service: unknown,
            destination_service_name: unknown,
            destination_service_namespace: unknown,
            destination_workload: unknown,
            destination_workload_namespace: unknown,
            destination_version: unknown,
            destination_app: unknown,
        };
        self.telemetry.record(&rec);
    }

    /// Serve one request; never fails (failures are responses).
    pub async fn handle(
        &self,
        conn: &Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        conn.begin_request();
        let runtime = self.runtime.load_full();
        let mut log = Box::new(RequestLog {
            telemetry: Arc::clone(&self.telemetry),
            conn: Arc::clone(conn),
            start: SystemTime::now(),
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().clone(),
            authority: None,
            protocol: if req.version() == Version::HTTP_2 {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            },
            grpc: req
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            request_id: None,
            user_agent: req.headers().get(USER_AGENT).cloned(),
            xff: None,
            route_name: None,
            cluster_name: None,
            upstream: None,
            status: 0,
            grpc_status: None,
            flags: "-",
            received: Arc::new(AtomicU64::new(0)),
            sent: 0,
            complete: false,
            in_flight: None,
            lease: None,
            circuit: None,
            cors: None,
        });
        let mut resp = match forward(&runtime, conn, req, &mut log).await {
            Ok(resp) => upstream_response(resp, log),
            Err(local) => local_response(local, Some(log)),
        };
        let server = runtime
            .listeners
            .get(&conn.listener)
            .and_then(|l| l.settings.server_name.as_ref());
        if let Some(server) = server {
            resp.headers_mut()
                .insert(http::header::SERVER, server.clone());
        }
        Ok(resp)
    }
}

async fn forward(
    rt: &Runtime,
    conn: &ConnInfo,
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Response<Incoming>, Local> {
    let Some(listener) = rt.listeners.get(&conn.listener) else {
        let msg = format!(
            "listener {:?} was removed from the configuration\n",
            conn.listener
        );
        return Err(Local::new(StatusCode::NOT_FOUND, "NR", msg));
    };
    let settings = &listener.settings;
    if req.version() != Version::HTTP_2 && conn.framing_violation.load(Ordering::Relaxed) {
        let msg = "request framing is ambiguous or invalid (content-length with transfer-encoding, or a bad chunk size)\n";
        return Err(Local::new(StatusCode::BAD_REQUEST, "DPE", msg.into()));
    }
    let (mut parts, body) = req.into_parts();
    settings.xfcc.apply(&conn.peer, &mut parts.headers);
    check_header_limits(
        &parts.headers,
        settings.max_headers_count,
        settings.max_request_headers_bytes,
    )?;
    authz::normalize(&mut parts, listener.authz.normalization)?;
    let authority = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(HOST).cloned(),
    };
    let Some(mut authority) = authority else {
        return Err(Local::new(
            StatusCode::BAD_REQUEST,
            "DPE",
            "request has no host or :authority\n".into(),
        ));
    };
    let host = authority.to_str().unwrap_or("");
    log.authority = Some(authority.clone());
    jwt::authenticate(listener.jwt.as_deref(), &mut parts, host).await?;
    let path = parts.uri.path();
    let Some(table) = rt.route_table(listener) else {
        let msg = format!("no route configuration for listener {:?}\n", conn.listener);
        return Err(Local::new(StatusCode::NOT_FOUND, "NR", msg));
    };
    let view = RequestView {
        method: &parts.method,
        authority: host,
        path,
        query: parts.uri.query(),
        scheme: if listener.chain_of.is_some() {
            "https"
        } else {
            "http"
        },
        headers: &parts.headers,
    };
    let vhost = table.find_virtual_host(host);
    if let Some(vh) = vhost.filter(|vh| vh.require_tls && view.scheme == "http") {
        return Err(https_redirect(vh, host, &parts.uri));
    }
    let route = vhost.and_then(|vh| vh.find_route(&view));
    let authorized =
        authz::authorize(rt, &listener.authz, conn, settings, &view, &parts, route).await?;
    let Some(route) = route else {
        let msg = format!("no route for host {host:?} path {path:?}\n");
        return Err(Local::new(StatusCode::NOT_FOUND, "NR", msg));
    };
    log.route_name = Some(Arc::clone(&route.istio_name));
    // Decided on the request as received, before headers are rewritten.
    let repeatable = route.retry.as_ref().is_none_or(|p| p.may_repeat(&view));
    if let Some(h) = authorized {
        authz::add_headers(&mut parts.headers, h);
    }
    let mut plan = actions::on_request(route, &mut parts, &mut authority, log).await?;
    let target = route.action.pick();
    log.cluster_name = Some(Arc::clone(&target.name));
    plan.on_cluster(&target.name, &mut parts.headers);
    let Some(cluster) = &target.cluster else {
        let msg = format!("cluster {:?} not found\n", target.name);
        return Err(Local::new(StatusCode::SERVICE_UNAVAILABLE, "UH", msg));
    };
    log.upstream = Some((Arc::clone(cluster), usize::MAX));
    let hash = (cluster.hash_table.is_some() && !route.hash_policy.is_empty())
        .then(|| {
            hash::request_hash(
                &route.hash_policy,
                &parts.headers,
                parts.uri.query(),
                conn.remote.ip(),
            )
        })
        .flatten();
    let Some(first) = cluster.endpoints.first() else {
        let msg = format!("no healthy upstream for cluster {:?}\n", cluster.name);
        return Err(Local::new(StatusCode::SERVICE_UNAVAILABLE, "UH", msg));
    };
    let Some(slot) = cluster
        .circuit
        .begin_request(cluster.limits.max_requests, log.started)
    else {
        ClusterStats::inc(&cluster.circuit.stats.rq_overflow);
        let msg = format!(
            "upstream overflow for cluster {:?}: max_requests in flight (circuit breaker)\n",
            cluster.name
        );
        return Err(Local::new(StatusCode::SERVICE_UNAVAILABLE, "UO", msg));
    };
    log.circuit = Some(slot);

    let upgrade = upgrade::take(&mut parts, cluster.protocol, settings);
    headers::strip_hop_by_hop(&mut parts.headers);
    upgrade::restore(&mut parts.headers, upgrade.as_ref());
    let forwarded = headers::forwarding_ids(&mut parts.headers, settings, conn.peer_ip.as_ref());
    if settings.use_remote_address && listener.chain_of.is_some() {
        // A gateway TLS chain: the client spoke https.
        parts.headers.insert(
            &headers::X_FORWARDED_PROTO,
            HeaderValue::from_static("https"),
        );
    }
    log.request_id = forwarded.request_id;
    log.xff = forwarded.x_forwarded_for;
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            // Origin form on the wire; only an absolute-form (or h2) request URI needs rewriting.
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                parts.uri = origin_form(&parts.uri);
            }
            parts.version = Version::HTTP_11;
            if !parts.headers.contains_key(HOST) {
                parts.headers.insert(HOST, authority);
            }
        }
        UpstreamProtocol::Http2 => {
            // The client's authority travels as :authority (the pool keys by endpoint, not URI).
            let client = Authority::try_from(authority.as_bytes())
                .unwrap_or_else(|_| first.authority.clone());
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(client);
            uri.path_and_query = Some(
                parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            );
            parts.uri = Uri::from_parts(uri).map_err(|e| {
                Local::new(
                    StatusCode::BAD_REQUEST,
                    "DPE",
                    format!("cannot build upstream uri: {e}\n"),
                )
            })?;
            parts.version = Version::HTTP_2;
            parts.headers.remove(HOST);
        }
    }
    let tee = plan.mirror(&parts, &body);
    let wait = route.timeout.unwrap_or(settings.stream_idle_timeout);
    let attempts = retry::Attempts {
        cluster,
        policy: route.retry.as_deref(),
        repeatable,
        attempt_count: vhost.is_some_and(|vh| vh.attempt_count),
        wait,
        hash: hash.as_ref().map(|h| h.hash),
    };
    let mut timer = conn.take_response_timer(attempts.first_wait());
    let mut result = attempts.run(parts, body, tee, &mut timer, log).await;
    conn.put_response_timer(timer);
    if let Ok(resp) = &mut result {
        if upgrade::on_response(upgrade, resp) {
            log.lease = None;
        }
        plan.on_response(resp.headers_mut(), log);
        if settings.server_name.is_some() {
            // Envoy's router header: milliseconds until the upstream's response headers.
            let ms = log.started.elapsed().as_millis() as u64;
            resp.headers_mut().insert(
                &headers::X_ENVOY_UPSTREAM_SERVICE_TIME,
                HeaderValue::from(ms),
            );
        }
        if let Some(cookie) = hash.and_then(|h| h.set_cookie) {
            resp.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
    }
    result
}

/// Polls `timer` the first time (registering this task's waker with it) and afterwards only
/// once it has fired: re-polling a pending `Sleep` on every wake-up of a busy task costs more
/// than this check, and the waker it holds is this task's until it fires. Reset `registered` to
/// false whenever the timer is reset or moves to another task.
pub(crate) fn poll_registered(
    timer: Pin<&mut tokio::time::Sleep>,
    registered: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if *registered && !timer.is_elapsed() {
        return Poll::Pending;
    }
    *registered = true;
    timer.poll(cx)
}

/// Limits that must hold before routing: header count and total header bytes (431 otherwise).
fn check_header_limits(
    h: &http::HeaderMap,
    max_count: usize,
    max_bytes: usize,
) -> Result<(), Local> {
    if h.len() > max_count {
        let msg = format!(
            "request has {} headers; the limit is {max_count}\n",
            h.len()
        );
        return Err(Local::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "DPE",
            msg,
        ));
    }
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if bytes > max_bytes {
        let msg = format!("request headers are {bytes} bytes; the limit is {max_bytes}\n");
        return Err(Local::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "DPE",
            msg,
        ));
    }
    Ok(())
}

/// Envoy's `require_tls` answer: 301 to `https://<host><path>`.
fn https_redirect(vh: &crate::runtime::route::VirtualHost, host: &str, uri: &Uri) -> Local {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut local = Local::new(
        StatusCode::MOVED_PERMANENTLY,
        "-",
        format!("{} requires https\n", vh.name),
    );
    local.body = Some(Bytes::new());
    if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::LOCATION, location);
        local.headers = Some(Box::new(h));
    }
    local
}

/// `/path?query` of `uri`.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn upstream_response(resp: Response<Incoming>, mut log: Box<RequestLog>) -> Response<ResponseBody> {
    let (parts, body) = resp.into_parts();
    log.status = parts.status.as_u16();
    if log.grpc {
        log.grpc_status = parts.headers.get("grpc-status").cloned();
    }
    Response::from_parts(parts, ResponseBody::upstream(body, log))
}

/// Build the response for a proxy-generated failure.
pub fn local_response(
    mut local: Local,
    mut log: Option<Box<RequestLog>>,
) -> Response<ResponseBody> {
    if let Some(log) = log.as_mut() {
        // The CORS filter's headers go on the proxy's own answers too (as Envoy's do).
        if let Some(cors) = log.cors.take() {
            let h = local.headers.get_or_insert_with(Default::default);
            for (name, value) in cors.iter() {
                h.insert(name, value.clone());
            }
        }
        // A request the fault filter delayed keeps `DI` beside the later failure's flag.
        if log.flags == "DI" {
            local.flag = fault::after_delay(local.flag);
        }
        log.status = local.status.as_u16();
        log.flags = local.flag;
    }
    let body = local.body.unwrap_or_else(|| Bytes::from(local.message));
    let empty = body.is_empty();
    let mut resp = Response::new(ResponseBody::local(body, log));
    *resp.status_mut() = local.status;
    let h = resp.headers_mut();
    if !empty {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    if local.flag != "-" {
        h.insert(&X_TRELLIS_FLAGS, HeaderValue::from_static(local.flag));
    }
    if let Some(extra) = local.headers {
        // Each name replaces the default; its further values (`None` names) are appended.
        let mut last = None;
        for (name, value) in *extra {
            match name {
                Some(name) => {
                    h.insert(&name, value);
                    last = Some(name);
                }
                None => {
                    if let Some(name) = &last {
                        h.append(name, value);
                    }
                }
            }
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        ConnInfo::new(Arc::from("l"), addr, addr)
    }

    async fn wait_for(timer: &mut Pin<Box<tokio::time::Sleep>>) {
        let mut registered = false;
        std::future::poll_fn(|cx| poll_registered(timer.as_mut(), &mut registered, cx)).await;
    }

    #[tokio::test]
    async fn a_reused_response_timer_fires_at_its_new_deadline() {
        let conn = conn();
        // First use, then the same timer reset to a later and then an earlier deadline.
        for ms in [20, 80, 30] {
            let wait = Duration::from_millis(ms);
            let start = Instant::now();
            let mut timer = conn.take_response_timer(wait);
            wait_for(&mut timer).await;
            let took = start.elapsed();
            assert!(took >= wait, "{ms} ms timer fired after {took:?}");
            assert!(took < wait + Duration::from_secs(2), "{took:?}");
            conn.put_response_timer(timer);
        }
    }

    #[tokio::test]
    async fn a_registered_timer_is_not_ready_before_its_deadline() {
        let conn = conn();
        let mut timer = conn.take_response_timer(Duration::from_millis(50));
        let mut registered = false;
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(poll_registered(timer.as_mut(), &mut registered, &mut cx).is_pending());
        assert!(registered);
        assert!(poll_registered(timer.as_mut(), &mut registered, &mut cx).is_pending());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(poll_registered(timer.as_mut(), &mut registered, &mut cx).is_ready());
    }
}
