//! The proxy's admin server (Envoy's port 15000, loopback only by default): `/ready`,
//! `/config_dump`, `/clusters`, `/stats/prometheus` (also `/metrics`) and an index at `/`.
//!
//! Owns only the HTTP/1.1 surface over state others keep: readiness, the current xDS resources,
//! and telemetry. It binds exactly the address it is given and never changes the state it shows.
//! Connections are bounded in number and in time, so a stuck client cannot pin the admin port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

mod certs;

use crate::memory;
use crate::telemetry::{PROMETHEUS_CONTENT_TYPE, Telemetry};

/// At most this many admin connections are served at once; more wait in the accept backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head (also the keep-alive idle limit).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one admin connection may live, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

const INDEX: &str = "trellis-proxy admin\n\
GET /ready             200 LIVE when the first configuration is applied, 503 before\n\
GET /config_dump       the xDS resources being served, as JSON\n\
GET /clusters          upstream endpoints with health (healthy, ejected, failed_active_hc)\n\
GET /stats/prometheus  metrics, Prometheus text format (also /metrics)\n\
GET /xds               the xDS client: connection, last applied and rejected version per type\n\
GET /certs             the workload certificate chain and trusted roots (serial, SANs, expiry)\n";

/// What the admin server shows.
#[derive(Clone)]
pub struct AdminState {
    pub telemetry: Arc<Telemetry>,
    pub resources: Arc<ArcSwap<EncodedResources>>,
    pub ready: Arc<AtomicBool>,
    /// The xDS client's state (`/xds`), when the config comes from a control plane.
    pub xds: Option<Arc<crate::xds_client::XdsStatus>>,
    /// The workload certificate and trust bundle (`/certs`).
    pub identity: Arc<crate::security::IdentityStore>,
}

/// The xDS resources being served, kept protobuf-encoded (a tenth of the decoded size) and
/// decoded only when `/config_dump` asks.
#[derive(Debug, Default)]
pub struct EncodedResources {
    pub version: String,
    listeners: Bytes,
    routes: Bytes,
    clusters: Bytes,
    endpoints: Bytes,
}

impl EncodedResources {
    /// The resources back as messages.
    pub fn decode(&self) -> Result<trellis_xds::Resources, prost::DecodeError> {
        Ok(trellis_xds::Resources {
            version: self.version.clone(),
            listeners: decode_all(&self.listeners)?,
            routes: decode_all(&self.routes)?,
            clusters: decode_all(&self.clusters)?,
            endpoints: decode_all(&self.endpoints)?,
        })
    }
}

impl EncodedResources {
    /// From messages already encoded, each type's length-delimited back to back in name order
    /// (the xDS client keeps its resources this way and shares the buffers).
    pub fn from_encoded(
        version: String,
        listeners: Bytes,
        routes: Bytes,
        clusters: Bytes,
        endpoints: Bytes,
    ) -> EncodedResources {
        EncodedResources {
            version,
            listeners,
            routes,
            clusters,
            endpoints,
        }
    }
}

impl From<&trellis_xds::Resources> for EncodedResources {
    fn from(r: &trellis_xds::Resources) -> EncodedResources {
        EncodedResources {
            version: r.version.clone(),
            listeners: encode_all(&r.listeners).into(),
            routes: encode_all(&r.routes).into(),
            clusters: encode_all(&r.clusters).into(),
            endpoints: encode_all(&r.endpoints).into(),
        }
    }
}

/// Binds `addr` and serves the admin endpoints forever.
pub async fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("bind admin {addr}: {e}; is another proxy running? (pick another admin port)"),
        )
    })?;
    serve_on(listener, state).await
}

/// Serves the admin endpoints on an already bound listener, forever (tests bind `127.0.0.1:0`).
pub async fn serve_on(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    let state = Arc::new(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return Ok(()); // the semaphore is never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let response = handle(&state, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin connection ended"),
                Err(_) => {
                    tracing::debug!(%peer, "admin connection closed after {CONNECTION_TIMEOUT:?}")
                }
            }
        });
    }
}

/// Answers one admin request.
fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed; use GET\n", req.method()),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match req.uri().path() {
        "/" => text(StatusCode::OK, INDEX.to_owned()),
        "/ready" if state.ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, "LIVE\n".to_owned())
        }
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "PRE_INITIALIZING\n".to_owned(),
        ),
        "/config_dump" => config_dump(&state.resources.load()),
        "/clusters" => text(StatusCode::OK, state.telemetry.upstream.clusters_text()),
        "/xds" => match &state.xds {
            Some(xds) => json(&xds.to_json()),
            None => text(
                StatusCode::NOT_FOUND,
                "no xDS client: this proxy serves --config-dir\n".to_owned(),
            ),
        },
        "/certs" => json(&certs::certs_json(&state.identity)),
        "/stats/prometheus" | "/metrics" => {
            let mut response = text(StatusCode::OK, state.telemetry.encode_prometheus());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            );
            response
        }
        path => text(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {path}; GET / lists them\n"),
        ),
    }
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn config_dump(encoded: &EncodedResources) -> Response<Full<Bytes>> {
    let body = match encoded.decode() {
        Ok(resources) => {
            let mut body =
                serde_json::to_vec_pretty(&config_dump_json(&resources)).unwrap_or_default();
            body.push(b'\n');
            body
        }
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored resources do not decode: {e}; this is a bug, please report it\n"),
            );
        }
    };
    // The decoded messages and the JSON tree were many times the size of the body.
    memory::trim();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `{"version": .., "resources": {listeners, routes, clusters, endpoints}}`, the resources in
/// `trellis_xds::to_json`'s proto3-JSON-like rendering.
pub fn config_dump_json(resources: &trellis_xds::Resources) -> serde_json::Value {
    serde_json::json!({
        "version": resources.version,
        "resources": trellis_xds::to_json(resources),
    })
}

/// Length-delimited messages, back to back.
fn encode_all<M: prost::Message>(messages: &[M]) -> Vec<u8> {
    let len: usize = messages
        .iter()
        .map(|m| {
            let n = m.encoded_len();
            n + prost::length_delimiter_len(n)
        })
        .sum();
    let mut buf = Vec::with_capacity(len);
    for m in messages {
        // Cannot fail: the buffer has exactly the room the messages need.
        let _ = m.encode_length_delimited(&mut buf);
    }
    buf
}

fn decode_all<M: prost::Message + Default>(mut buf: &[u8]) -> Result<Vec<M>, prost::DecodeError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(M::decode_length_delimited(&mut buf)?);
    }
    Ok(out)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::AccessLogSink;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Admin {
        addr: SocketAddr,
        state: AdminState,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Drop for Admin {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start() -> Admin {
        let proxy = trellis_xds::ProxyIdentity::default();
        let resources = trellis_xds::Resources {
            version: "v7".into(),
            listeners: vec![trellis_xds::Listener {
                name: "0.0.0.0_8080".into(),
                ..Default::default()
            }],
            clusters: vec![trellis_xds::Cluster {
                name: "outbound|9080||reviews.default.svc.cluster.local".into(),
                ..Default::default()
            }],
            routes: vec![trellis_xds::RouteConfiguration {
                name: "http.8080".into(),
                ..Default::default()
            }],
            endpoints: vec![],
        };
        let state = AdminState {
            telemetry: Arc::new(Telemetry::with_access_log(&proxy, AccessLogSink::Off)),
            resources: Arc::new(ArcSwap::from_pointee(EncodedResources::from(&resources))),
            ready: Arc::new(AtomicBool::new(false)),
            xds: None,
            identity: Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_on(listener, state.clone()));
        Admin { addr, state, task }
    }

    /// One request over a fresh connection; returns (status, lowercased head, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn ready_follows_the_flag() {
        let admin = start().await;
        assert_eq!(request(admin.addr, "GET", "/ready").await.0, 503);
        admin.state.ready.store(true, Ordering::Release);
        let (status, _, body) = request(admin.addr, "GET", "/ready").await;
        assert_eq!((status, body.as_str()), (200, "LIVE\n"));
    }

    #[tokio::test]
    async fn metrics_endpoints_serve_the_exposition() {
        let admin = start().await;
        admin
            .state
            .telemetry
            .record(&crate::telemetry::tests::record_fixture());
        for path in ["/stats/prometheus", "/metrics"] {
            let (status, head, body) = request(admin.addr, "GET", path).await;
            assert_eq!(status, 200);
            assert!(
                head.contains("content-type: text/plain; version=0.0.4"),
                "{head}"
            );
            let line = body
                .lines()
                .find(|l| l.starts_with("istio_requests_total{"))
                .unwrap();
            assert!(line.ends_with("} 1"), "{line}");
            assert!(
                line.contains("destination_service=\"reviews.default.svc.cluster.local\""),
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn config_dump_shows_the_current_resources() {
        let admin = start().await;
        let (status, head, body) = request(admin.addr, "GET", "/config_dump").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(dump["version"], "v7");
        let resources = &dump["resources"];
        assert_eq!(resources["listeners"][0]["name"], "0.0.0.0_8080");
        assert_eq!(
            resources["clusters"][0]["name"],
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(resources["routes"][0]["name"], "http.8080");

        admin
            .state
            .resources
            .store(Arc::new(EncodedResources::from(&trellis_xds::Resources {
                version: "v8".into(),
                ..Default::default()
            })));
        let (_, _, body) = request(admin.addr, "GET", "/config_dump").await;
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(dump["version"], "v8");
        assert_eq!(dump["resources"]["listeners"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn index_unknown_paths_and_methods() {
        let admin = start().await;
        let (status, _, body) = request(admin.addr, "GET", "/").await;
        assert_eq!(status, 200);
        for endpoint in ["/ready", "/config_dump", "/stats/prometheus"] {
            assert!(body.contains(endpoint), "{body}");
        }
        let (status, _, body) = request(admin.addr, "GET", "/quitquitquit").await;
        assert_eq!(status, 404);
        assert!(body.contains("/quitquitquit"), "{body}");
        let (status, head, _) = request(admin.addr, "POST", "/ready").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: get, head"), "{head}");
    }

    #[tokio::test]
    async fn serve_reports_a_taken_port() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = start().await;
        let err = serve(taken.local_addr().unwrap(), admin.state.clone())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is another proxy running?"),
            "{err}"
        );
    }
}
