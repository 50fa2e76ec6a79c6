//! A route's policy applied to one request (Envoy's filter order: CORS, fault, then the router's
//! redirect / direct response, rewrites and header mutations), and what is left for the
//! response (`Plan`). `forward` calls three small hooks: `on_request` once the route is known,
//! `Plan::on_cluster` once a cluster is picked, `Plan::on_response` on the upstream response.
//! Never touches the upstream connection.

use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};

use super::body::RequestLog;
use super::headers::X_TRELLIS_FLAGS;
use super::{Local, cors, fault, mirror};
use crate::runtime::route::Route;
use crate::runtime::route::policy::{Append, HeaderOp, HeaderOps, Redirect, Respond, Rewrite};

/// What the rest of the request still has to do for its route's policy.
#[derive(Default)]
pub struct Plan<'a> {
    policy: Option<&'a crate::runtime::route::policy::RoutePolicy>,
    cluster: Option<&'a HeaderOps>,
    /// The fault filter delayed this request (`DI`).
    delayed: bool,
}

/// Apply the route's policy before going upstream: answer a CORS preflight, inject faults,
/// answer a redirect / direct response, rewrite the path and authority, mutate request
/// headers. `authority` is the value `forward` sends upstream (rewritten in place).
pub async fn on_request<'a>(
    route: &'a Route,
    parts: &mut Parts,
    authority: &mut HeaderValue,
    log: &mut RequestLog,
) -> Result<Plan<'a>, Local> {
    let Some(policy) = route.policy.as_deref() else {
        return Ok(Plan::default());
    };
    let mut plan = Plan {
        policy: Some(policy),
        ..Plan::default()
    };
    if let Some(c) = &policy.cors {
        match cors::on_request(c, parts) {
            cors::Decision::Respond(local) => return Err(with_response_headers(local, policy)),
            // Kept on the log so that the proxy's own answers (a fault abort, 503 …) get
            // them too; `on_response` copies them onto the upstream response.
            cors::Decision::Forward(headers) => log.cors = headers.map(Box::new),
        }
    }
    if let Some(f) = &policy.fault {
        // Boxed: the delay's timer would otherwise enlarge every request's future.
        plan.delayed = Box::pin(fault::apply(f, log)).await?;
    }
    if let Some(respond) = &policy.respond {
        let local = match respond {
            Respond::Redirect(r) => redirect(r, parts, authority),
            Respond::Direct { status, body } => direct(*status, body),
        };
        return Err(with_response_headers(local, policy));
    }
    rewrite(&policy.rewrite, parts, authority);
    apply(
        &policy.headers.request_remove,
        &policy.headers.request_add,
        &mut parts.headers,
    );
    Ok(plan)
}

impl Plan<'_> {
    /// Destination-level request headers of the picked cluster.
    pub fn on_cluster(&mut self, cluster: &str, headers: &mut HeaderMap) {
        let Some(ops) = self.policy.and_then(|p| p.cluster_headers(cluster)) else {
            return;
        };
        apply(&ops.request_remove, &ops.request_add, headers);
        self.cluster = Some(ops);
    }

    /// Fire the route's mirrors (never waits for them). A request with a body gets back the
    /// `Tee` that copies it for the mirrors as it streams upstream.
    pub fn mirror(&self, parts: &Parts, body: &hyper::body::Incoming) -> Option<mirror::Tee> {
        let p = self.policy?;
        if p.mirrors.is_empty() {
            return None;
        }
        let pending: Vec<_> = p
            .mirrors
            .iter()
            .filter_map(|m| mirror::prepare(m, parts))
            .collect();
        if pending.is_empty() {
            return None;
        }
        if http_body::Body::is_end_stream(body) {
            for p in pending {
                mirror::launch(p, bytes::Bytes::new());
            }
            return None;
        }
        Some(mirror::Tee::new(pending))
    }

    /// Response header mutations (destination level, then route level), CORS headers, and
    /// the `DI` flag header when the request was delayed.
    pub fn on_response(&self, headers: &mut HeaderMap, log: &mut RequestLog) {
        if let Some(ops) = self.cluster {
            apply(&ops.response_remove, &ops.response_add, headers);
        }
        if let Some(p) = self.policy {
            apply(&p.headers.response_remove, &p.headers.response_add, headers);
        }
        if let Some(cors) = log.cors.take() {
            for (name, value) in cors.iter() {
                headers.insert(name, value.clone());
            }
        }
        if self.delayed {
            headers.insert(&X_TRELLIS_FLAGS, HeaderValue::from_static("DI"));
        }
    }
}

/// Envoy's order: removals, then additions.
pub fn apply(remove: &[http::HeaderName], add: &[HeaderOp], headers: &mut HeaderMap) {
    for name in remove {
        headers.remove(name);
    }
    for op in add {
        match op.action {
            Append::Append => {
                headers.append(&op.name, op.value.clone());
            }
            Append::IfAbsent => {
                if !headers.contains_key(&op.name) {
                    headers.insert(&op.name, op.value.clone());
                }
            }
            Append::Overwrite => {
                headers.insert(&op.name, op.value.clone());
            }
            Append::OverwriteIfPresent => {
                if headers.contains_key(&op.name) {
                    headers.insert(&op.name, op.value.clone());
                }
            }
        }
    }
}

/// Route-level response headers also go on the proxy's own answers for the route.
fn with_response_headers(
    mut local: Local,
    policy: &crate::runtime::route::policy::RoutePolicy,
) -> Local {
    let h = &policy.headers;
    if !h.response_add.is_empty() || !h.response_remove.is_empty() {
        let headers = local.headers.get_or_insert_with(Default::default);
        apply(&h.response_remove, &h.response_add, headers);
    }
    local
}

fn direct(status: StatusCode, body: &bytes::Bytes) -> Local {
    let mut local = Local::new(status, "-", String::new());
    local.body = Some(body.clone());
    local
}

/// The `Location` Envoy builds: each configured part replaces the request's. A new host drops
/// the request's port; a new scheme drops it too; a port equal to the scheme's default is left
/// out.
fn redirect(r: &Redirect, parts: &Parts, authority: &HeaderValue) -> Local {
    let authority = authority.to_str().unwrap_or("");
    let (req_host, req_port) = split_authority(authority);
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.host.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.host, &r.scheme) {
        (Some(p), _, _) => Some(p.to_string()),
        (None, None, None) => req_port.map(str::to_string),
        _ => None,
    };
    let port = port.filter(|p| !matches!((scheme, p.as_str()), ("http", "80") | ("https", "443")));
    let host = match port {
        Some(p) => format!("{}:{p}", split_authority(host).0),
        None => host.to_string(),
    };
    let path_and_query = match &r.path {
        Some(p) if p.contains('?') || r.strip_query => p.to_string(),
        Some(p) => match parts.uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p.to_string(),
        },
        None if r.strip_query => parts.uri.path().to_string(),
        None => parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |pq| pq.as_str().to_string()),
    };
    let location = format!("{scheme}://{host}{path_and_query}");
    let mut local = Local::new(r.status, "-", String::new());
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            local
                .headers
                .get_or_insert_with(Default::default)
                .insert(LOCATION, v);
        }
        Err(_) => {
            return Local::new(
                StatusCode::BAD_REQUEST,
                "DPE",
                format!("cannot build redirect location {location:?}\n"),
            );
        }
    }
    local
}

/// `host:port` → (`host`, `Some(port)`); IPv6 literals keep their brackets.
fn split_authority(a: &str) -> (&str, Option<&str>) {
    match crate::runtime::route::strip_port(a) {
        Some(host) => (host, Some(&a[host.len() + 1..])),
        None => (a, None),
    }
}

/// Prefix or regex path rewrite (query kept), and the authority rewrite.
fn rewrite(rw: &Rewrite, parts: &mut Parts, authority: &mut HeaderValue) {
    if let Some(host) = &rw.host {
        *authority = host.clone();
        if parts.headers.contains_key(HOST) {
            parts.headers.insert(HOST, host.clone());
        }
    }
    let path = parts.uri.path();
    let new_path = if let Some((len, replacement)) = &rw.prefix {
        let rest = path.get(*len..).unwrap_or("");
        Some(format!("{replacement}{rest}"))
    } else if let Some((re, substitution)) = &rw.regex {
        let out = re.replace_all(path.as_bytes(), substitution.as_bytes());
        Some(String::from_utf8_lossy(&out).into_owned())
    } else {
        None
    };
    let Some(mut new_path) = new_path else {
        return;
    };
    if !new_path.starts_with('/') {
        new_path.insert(0, '/');
    }
    // A rewrite may itself carry a query (`/item?id=\1`): then the request's query follows
    // with `&`.
    let full = match (parts.uri.query(), new_path.contains('?')) {
        (Some(q), true) => format!("{new_path}&{q}"),
        (Some(q), false) => format!("{new_path}?{q}"),
        (None, _) => new_path,
    };
    if let Ok(pq) = PathAndQuery::try_from(full) {
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(pq);
        if let Ok(u) = Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
}

/// The body and content type of a local answer for a gRPC request: trailers-only, status 200.
pub fn grpc_local(local: &mut Local, code: u32, message: &str) {
    local.status = StatusCode::OK;
    local.message.clear();
    let h = local.headers.get_or_insert_with(Default::default);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str) -> Parts {
        Request::builder()
            .uri(uri)
            .body(())
            .map_or_else(|e| panic!("{e}"), |r| r.into_parts().0)
    }

    fn location(r: &Redirect, uri: &str, authority: &str) -> String {
        let local = redirect(
            r,
            &parts(uri),
            &HeaderValue::from_str(authority).unwrap_or_else(|e| panic!("{e}")),
        );
        let h = local.headers.unwrap_or_default();
        h.get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    fn redirect_to(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        path: Option<&str>,
    ) -> Redirect {
        Redirect {
            status: StatusCode::MOVED_PERMANENTLY,
            scheme: scheme.map(Into::into),
            host: host.map(Into::into),
            port,
            path: path.map(Into::into),
            strip_query: false,
        }
    }

    #[test]
    fn redirect_locations_follow_envoy() {
        let r = redirect_to(None, None, None, Some("/new"));
        assert_eq!(
            location(&r, "/old?a=1", "shop:8080"),
            "http://shop:8080/new?a=1"
        );
        let r = redirect_to(Some("https"), Some("new.example.com"), None, None);
        assert_eq!(location(&r, "/x", "shop:8080"), "https://new.example.com/x");
        let r = redirect_to(Some("https"), None, Some(443), None);
        assert_eq!(location(&r, "/x", "shop:80"), "https://shop/x");
        let r = redirect_to(None, Some("b.example.com"), Some(9000), Some("/y?z=1"));
        assert_eq!(
            location(&r, "/x?q=2", "a"),
            "http://b.example.com:9000/y?z=1"
        );
    }

    #[test]
    fn prefix_and_regex_rewrites_keep_the_query() {
        let mut p = parts("/api/users?x=1");
        let mut a = HeaderValue::from_static("shop");
        let rw = Rewrite {
            prefix: Some((5, "/".into())),
            ..Rewrite::default()
        };
        rewrite(&rw, &mut p, &mut a);
        assert_eq!(p.uri.to_string(), "/users?x=1");
        let rw = Rewrite {
            regex: Some((
                regex::bytes::Regex::new("^/items/([0-9]+)$").unwrap_or_else(|e| panic!("{e}")),
                "/item?id=${1}".into(),
            )),
            host: Some(HeaderValue::from_static("backend")),
            ..Rewrite::default()
        };
        let mut p = parts("/items/42?v=2");
        rewrite(&rw, &mut p, &mut a);
        assert_eq!(p.uri.to_string(), "/item?id=42&v=2");
        assert_eq!(a, "backend");
    }
}
