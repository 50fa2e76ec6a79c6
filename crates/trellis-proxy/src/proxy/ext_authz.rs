//! External authorization over HTTP (Envoy's `ext_authz` `http_service`, Istio's
//! `envoyExtAuthzHttp` provider): a check request with the original method, `path_prefix` +
//! path, `Host`, `Authorization` and the allowed headers goes to the provider's cluster; a 2xx
//! answer allows (its allowed upstream headers are added to the request), any other answer is
//! returned to the client (status, body, allowed client headers) with flag `UAEX`. A provider
//! that cannot be reached in time fails open or answers `status_on_error`, as configured.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Local;
use crate::runtime::Runtime;
use crate::runtime::authz::ExtAuthzHttp;

/// Largest check-response body kept for the client.
const MAX_BODY: usize = 64 * 1024;

/// The check's answer, as far as the request path cares.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// `Ok(headers to add upstream)` when allowed, the client's answer when denied.
pub async fn check(
    rt: &Runtime,
    ext: &ExtAuthzHttp,
    parts: &Parts,
) -> Result<Option<HeaderMap>, Local> {
    let answer = tokio::time::timeout(ext.timeout, ask(rt, ext, parts))
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()));
    let answer = match answer {
        Ok(a) => a,
        Err(why) if ext.failure_mode_allow => {
            tracing::debug!(cluster = %ext.cluster, why, "ext_authz unavailable; failing open");
            return Ok(None);
        }
        Err(why) => return Err(unavailable(ext, &why)),
    };
    if answer.status.is_success() {
        let mut add = HeaderMap::new();
        for (name, value) in &answer.headers {
            if ext
                .upstream_headers
                .iter()
                .any(|m| m.matches(name.as_str()))
            {
                add.append(name, value.clone());
            }
        }
        return Ok((!add.is_empty()).then_some(add));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &answer.headers {
        let always = [&WWW_AUTHENTICATE, &LOCATION, &CONTENT_TYPE].contains(&name);
        if always || ext.client_headers.iter().any(|m| m.matches(name.as_str())) {
            headers.append(name, value.clone());
        }
    }
    Err(Local {
        status: answer.status,
        flag: "UAEX",
        message: String::new(),
        body: Some(answer.body),
        headers: Some(Box::new(headers)),
    })
}

fn unavailable(ext: &ExtAuthzHttp, why: &str) -> Local {
    tracing::debug!(cluster = %ext.cluster, why, "ext_authz unavailable");
    let status = StatusCode::from_u16(ext.status_on_error).unwrap_or(StatusCode::FORBIDDEN);
    Local::new(status, "UAEX", String::new())
}

async fn ask(rt: &Runtime, ext: &ExtAuthzHttp, parts: &Parts) -> Result<Answer, String> {
    let cluster = rt
        .clusters
        .get(&*ext.cluster)
        .ok_or_else(|| format!("cluster {:?} not found", ext.cluster))?;
    let endpoint = cluster
        .endpoints
        .first()
        .ok_or_else(|| format!("cluster {:?} has no endpoint", ext.cluster))?;
    let stream = TcpStream::connect(endpoint.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", endpoint.addr))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", ext.path_prefix))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("check request: {e}"))?;
    let h = req.headers_mut();
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| ext.authority.clone());
    if let Ok(v) = HeaderValue::from_str(&host) {
        h.insert(HOST, v);
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    for (name, value) in &parts.headers {
        let allowed =
            name == AUTHORIZATION || ext.allowed_headers.iter().any(|m| m.matches(name.as_str()));
        if allowed {
            h.append(name, value.clone());
        }
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("check: {e}"))?;
    let (head, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("check body: {e}"))?;
    Ok(Answer {
        status: head.status,
        headers: head.headers,
        body,
    })
}
