//! The management REST API (HTTP/1.1, port 8080 by default): apply, get, list, delete and
//! validate configuration objects in a [`Store`], report the store's and the xDS server's
//! status, and serve `/metrics` and `/openapi.json`.
//!
//! Bodies may be YAML (one or more documents) or JSON; answers are JSON, or YAML when the
//! `Accept` header asks for it. Writes need `Authorization: Bearer <token>` ([`Token`]);
//! reads are open to loopback clients and need the token from anywhere else, except
//! `/metrics` and `/openapi.json`, which are open to all. Owns only the
//! HTTP surface: what a write means is the store's business.

mod ca;
mod openapi;
mod quota;
mod token;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use trellis_config::Diagnostic;

pub use token::Token;

use crate::ControlStatus;
use crate::ca::CertificateAuthority;
use crate::ratelimit::RateLimiter;
use crate::store::{
    Applied, Change, LabelSelector, ListFilter, ObjectKey, Store, StoreError, kind_info,
    object::kind_names, yaml,
};

/// Largest request body accepted.
pub const MAX_BODY: usize = 8 << 20;
/// At most this many API connections are served at once; more wait in the accept backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request head (also the keep-alive idle limit).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one API connection may live, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Content type of `/metrics` (Prometheus text format 0.0.4).
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the API serves.
struct Api {
    store: Arc<dyn Store>,
    status: Arc<dyn ControlStatus>,
    token: Arc<Token>,
    ca: Option<Arc<CertificateAuthority>>,
    ratelimit: Option<Arc<RateLimiter>>,
}

/// An answer: status and a JSON value, rendered as JSON or YAML by [`render`].
struct Reply {
    status: StatusCode,
    body: Value,
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    status: Arc<dyn ControlStatus>,
    token: Arc<Token>,
) -> anyhow::Result<()> {
    serve_with_ca(listener, store, status, token, None).await
}

/// [`serve`], plus the CA's endpoints (`/api/v1/ca`, bootstrap tokens, root rotation) and
/// metrics when the control plane runs one.
pub async fn serve_with_ca(
    listener: TcpListener,
    store: Arc<dyn Store>,
    status: Arc<dyn ControlStatus>,
    token: Arc<Token>,
    ca: Option<Arc<CertificateAuthority>>,
) -> anyhow::Result<()> {
    serve_with(listener, store, status, token, ca, None).await
}

/// [`serve_with_ca`], plus quota usage (`/api/v1/quotas/...`) and the rate limit service's
/// metrics when the control plane runs one (`--ratelimit-port`, `--redis`).
pub async fn serve_with(
    listener: TcpListener,
    store: Arc<dyn Store>,
    status: Arc<dyn ControlStatus>,
    token: Arc<Token>,
    ca: Option<Arc<CertificateAuthority>>,
    ratelimit: Option<Arc<RateLimiter>>,
) -> anyhow::Result<()> {
    let api = Arc::new(Api {
        store,
        status,
        token,
        ca,
        ratelimit,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "api accept failed; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let api = Arc::clone(&api);
                async move { Ok::<_, Infallible>(api.handle(req, peer).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "api connection ended"),
                Err(_) => {
                    tracing::debug!(%peer, "api connection closed after {CONNECTION_TIMEOUT:?}")
                }
            }
        });
    }
}

impl Api {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let yaml = wants_yaml(&req);
        if let Some(denied) = self.deny(&req, peer) {
            let mut response = render(denied, yaml);
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        let read = req.method() == Method::GET || req.method() == Method::HEAD;
        if read && req.uri().path() == "/metrics" {
            return self.metrics();
        }
        render(self.route(req).await, yaml)
    }

    /// Writes need the token; so do reads from outside loopback, except public documents.
    fn deny(&self, req: &Request<Incoming>, peer: SocketAddr) -> Option<Reply> {
        let write = req.method() != Method::GET && req.method() != Method::HEAD;
        // Metrics (scraped from elsewhere) and the API description hold no configuration.
        let public = !write && matches!(req.uri().path(), "/metrics" | "/openapi.json");
        let needs_token = write || !(public || peer.ip().is_loopback());
        if !needs_token || self.authorized(req) {
            return None;
        }
        Some(error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            if write {
                "writes need `Authorization: Bearer <token>`; the token is in the control plane's token file (see `trellis control --help`)"
            } else {
                "reads from outside loopback need `Authorization: Bearer <token>`"
            },
        ))
    }

    async fn route(&self, req: Request<Incoming>) -> Reply {
        let method = match req.method() {
            &Method::HEAD => Method::GET,
            m => m.clone(),
        };
        let path = req.uri().path().to_owned();
        let query = parse_query(req.uri().query().unwrap_or(""));
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["openapi.json"]) => Reply::ok(openapi::document()),
            (&Method::GET, ["api", "v1", "proxy-status"]) => Reply::ok(self.status.proxy_status()),
            (&Method::GET, ["api", "v1", "status"]) => self.store_status(),
            (&Method::GET, ["api", "v1", "resources", rest @ ..]) if rest.len() <= 3 => {
                self.read(rest, &query)
            }
            (&Method::DELETE, ["api", "v1", "resources", kind, namespace, name]) => {
                self.delete(kind, namespace, name, &query).await
            }
            (&Method::POST, ["api", "v1", "apply"]) => match self.body(req, &query).await {
                Ok(change) => self.apply(change).await,
                Err(reply) => reply,
            },
            (&Method::POST, ["api", "v1", "validate"]) => match self.body(req, &query).await {
                Ok(change) => self.validate(&change),
                Err(reply) => reply,
            },
            (&Method::POST, ["api", "v1", "token", "rotate"]) => self.rotate(),
            (_, ["api", "v1", "ca", rest @ ..]) => {
                ca::route(self.ca.as_deref(), &method, rest, req).await
            }
            (_, ["api", "v1", "quotas", rest @ ..]) => {
                quota::route(self.ratelimit.as_deref(), &method, rest, &query).await
            }
            (_, ["metrics" | "openapi.json"])
            | (_, ["api", "v1", "proxy-status" | "status" | "resources", ..])
            | (_, ["api", "v1", "apply" | "validate"])
            | (_, ["api", "v1", "token", "rotate"]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("method {method} is not allowed on {path}; see /openapi.json"),
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route {method} {path}; see /openapi.json"),
            ),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| self.token.check(t.trim()))
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut out = String::new();
        self.store.encode_metrics(&mut out);
        self.status.encode_metrics(&mut out);
        if let Some(ca) = &self.ca {
            ca.encode_metrics(&mut out);
        }
        if let Some(ratelimit) = &self.ratelimit {
            ratelimit.encode_metrics(&mut out);
        }
        let mut response = Response::new(Full::new(Bytes::from(out)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        );
        response
    }

    fn store_status(&self) -> Reply {
        let s = self.store.status();
        Reply::ok(json!({
            "backend": s.backend,
            "revision": s.revision,
            "objects": s.objects,
            "valid": s.errors.is_empty(),
            "errors": diagnostics(&s.errors),
            "warnings": diagnostics(&s.warnings),
        }))
    }

    /// `GET /api/v1/resources[/{kind}[/{namespace}[/{name}]]]`.
    fn read(&self, rest: &[&str], query: &[(String, String)]) -> Reply {
        let rest: Vec<&str> = rest.iter().copied().filter(|s| !s.is_empty()).collect();
        let kind = match rest.first() {
            None => None,
            Some(name) => match kind_info(name) {
                Some(k) => Some(k),
                None => return unknown_kind(name),
            },
        };
        if let (Some(kind), [_, namespace, name]) = (kind, rest.as_slice()) {
            let key = ObjectKey::new(kind, namespace, name);
            return match self.store.get(&key) {
                Some(object) => Reply::ok(self.with_status(object.to_value())),
                None => error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{key} not found"),
                ),
            };
        }
        let selector = match LabelSelector::parse(param(query, "labelSelector").unwrap_or("")) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
        let namespace = rest
            .get(1)
            .copied()
            .or(param(query, "namespace"))
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned);
        let filter = ListFilter {
            kind,
            namespace,
            selector,
        };
        let (revision, objects) = self.store.list(&filter);
        Reply::ok(json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": { "resourceVersion": revision.to_string() },
            "items": objects.iter().map(|o| self.with_status(o.to_value())).collect::<Vec<_>>(),
        }))
    }

    /// A Gateway API object with the `status` the last good configuration gives it (Accepted,
    /// Programmed, ResolvedRefs, … as `trellis_xds::gateway_api::status` computes them).
    fn with_status(&self, mut value: Value) -> Value {
        let api_version = value["apiVersion"].as_str().unwrap_or("");
        if !api_version.starts_with("gateway.networking.k8s.io/") {
            return value;
        }
        let state = self.store.watch().borrow().clone();
        let loaded = &state.loaded;
        let (kind, namespace, name) = (
            value["kind"].as_str().unwrap_or(""),
            value["metadata"]["namespace"].as_str().unwrap_or("default"),
            value["metadata"]["name"].as_str().unwrap_or(""),
        );
        if let Some(status) = trellis_xds::gateway_api::status(
            &loaded.snapshot,
            &loaded.registry,
            kind,
            namespace,
            name,
        ) && let Some(obj) = value.as_object_mut()
        {
            obj.insert("status".into(), status);
        }
        value
    }

    async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        query: &[(String, String)],
    ) -> Reply {
        let Some(kind) = kind_info(kind) else {
            return unknown_kind(kind);
        };
        let resource_version = match param(query, "resourceVersion").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => match v.parse() {
                Ok(v) => Some(v),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("resourceVersion `{v}` is not a number"),
                    );
                }
            },
        };
        let change = Change::delete(ObjectKey::new(kind, namespace, name), resource_version);
        match self.store.apply(change).await {
            Ok(applied) => Reply::ok(applied_json(&applied)),
            Err(e) => store_error(e),
        }
    }

    /// Reads and parses a write's body (`?source=` names it in diagnostics).
    async fn body(
        &self,
        req: Request<Incoming>,
        query: &[(String, String)],
    ) -> Result<Change, Reply> {
        let source = param(query, "source")
            .filter(|s| !s.is_empty())
            .unwrap_or("request");
        let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    &format!("cannot read the body ({e}); the limit is {MAX_BODY} bytes"),
                ));
            }
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not UTF-8",
            ));
        };
        Change::parse(source, text).map_err(store_error)
    }

    async fn apply(&self, change: Change) -> Reply {
        match self.store.apply(change).await {
            Ok(applied) => Reply::ok(applied_json(&applied)),
            Err(e) => store_error(e),
        }
    }

    /// Dry run: the whole load, then a compile for a default ingress gateway.
    fn validate(&self, change: &Change) -> Reply {
        let checked = match self.store.validate(change) {
            Ok(checked) => checked,
            Err(e) => return store_error(e),
        };
        let identity = trellis_xds::ProxyIdentity {
            id: "validate~127.0.0.1~ingressgateway.istio-system".into(),
            namespace: "istio-system".into(),
            labels: [("istio".to_owned(), "ingressgateway".to_owned())].into(),
            ..trellis_xds::ProxyIdentity::default()
        };
        let resources = trellis_xds::compile(
            &checked.loaded.snapshot,
            &checked.loaded.registry,
            &identity,
        );
        Reply::ok(json!({
            "valid": true,
            "objects": checked.outcomes.iter().map(|(key, outcome)| json!({
                "kind": key.kind, "namespace": key.namespace, "name": key.name,
                "result": outcome.as_str(),
            })).collect::<Vec<_>>(),
            "warnings": diagnostics(&checked.loaded.warnings),
            "compiled": {
                "proxy": identity.id,
                "listeners": resources.listeners.len(),
                "routes": resources.routes.len(),
                "clusters": resources.clusters.len(),
                "endpoints": resources.endpoints.len(),
            },
        }))
    }

    fn rotate(&self) -> Reply {
        match self.token.rotate() {
            Ok(token) => Reply::ok(json!({
                "token": token,
                "path": self.token.path().map(|p| p.display().to_string()),
            })),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("rotate the token: {e}; the old token stays valid"),
            ),
        }
    }
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
        }
    }
}

fn applied_json(applied: &Applied) -> Value {
    json!({
        "revision": applied.revision,
        "objects": applied.objects.iter().map(|(key, outcome, rv)| json!({
            "kind": key.kind, "namespace": key.namespace, "name": key.name,
            "result": outcome.as_str(),
            "resourceVersion": rv.to_string(),
        })).collect::<Vec<_>>(),
        "warnings": diagnostics(&applied.warnings),
    })
}

/// Every diagnostic with its location, plus the `file:line:col: …` line `trellis validate` prints.
fn diagnostics(list: &[Diagnostic]) -> Value {
    list.iter()
        .map(|d| {
            json!({
                "severity": d.severity.to_string(),
                "file": d.file,
                "line": d.line,
                "column": d.col,
                "resource": d.resource,
                "path": d.path,
                "message": d.message,
                "text": d.to_string(),
            })
        })
        .collect()
}

fn store_error(e: StoreError) -> Reply {
    match e {
        StoreError::Invalid(d) => {
            let mut reply = error(
                StatusCode::BAD_REQUEST,
                "Invalid",
                &format!(
                    "the configuration would be invalid: {} error(s); nothing was written",
                    d.len()
                ),
            );
            reply.body["errors"] = diagnostics(&d.0);
            reply
        }
        StoreError::BadRequest(m) => error(StatusCode::BAD_REQUEST, "BadRequest", &m),
        StoreError::Conflict(m) => error(StatusCode::CONFLICT, "Conflict", &m),
        StoreError::NotFound(m) => error(StatusCode::NOT_FOUND, "NotFound", &m),
        StoreError::Backend(m) => error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &m),
    }
}

fn unknown_kind(name: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("unknown kind `{name}`; known kinds: {}", kind_names()),
    )
}

/// A Kubernetes-`Status`-like error body.
fn error(status: StatusCode, reason: &str, message: &str) -> Reply {
    Reply {
        status,
        body: json!({
            "kind": "Status",
            "status": "Failure",
            "code": status.as_u16(),
            "reason": reason,
            "message": message,
        }),
    }
}

fn wants_yaml<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"))
}

fn render(reply: Reply, yaml: bool) -> Response<Full<Bytes>> {
    let (body, content_type) = if yaml {
        (yaml::to_yaml(&reply.body), "application/yaml")
    } else {
        let mut body = serde_json::to_string_pretty(&reply.body).unwrap_or_default();
        body.push('\n');
        (body, "application/json")
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = reply.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `a=b&c=d%2Ce` → pairs, percent-decoded (`+` is a space).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? << 4 | hex(bytes[i + 2])?))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (b, None) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_decoded() {
        let q =
            parse_query("labelSelector=app%3Dreviews%2Cv%21%3Dv1&namespace=default&x=%zz&y=50%");
        assert_eq!(param(&q, "labelSelector"), Some("app=reviews,v!=v1"));
        assert_eq!(param(&q, "namespace"), Some("default"));
        assert_eq!(param(&q, "x"), Some("%zz"));
        assert_eq!(param(&q, "y"), Some("50%"));
    }
}
