//! The HTTP endpoints of the sample app, shaped like httpbin.
//!
//! `/`, `/get`, `/{service}[/…]` (the app's own name, so that mesh routes
//! like `/reviews` need no rewrite), `/headers`, `/post`, `/anything[/…]`,
//! `/status/{code}`, `/delay/{seconds}`, `/flaky/{key}/{n}` (503 for the first `n` requests per
//! key on this instance, `?retry_after=S` adds `Retry-After`), `/ledger` (POST records the
//! `x-ledger-id` header, GET lists ids with counts), `/recent` (method, host, path and
//! content-length of the last `RECENT_MAX` other requests, oldest first: tests check what a
//! mirror or rewrite delivered), `/echo-upgrade` (accepts any HTTP/1.1 `Upgrade` and echoes
//! bytes), and `/fault/…` (see `fault.rs`); anything else is a JSON 404. Every answer is JSON and
//! names the service, version and instance. Bodies are read with a size
//! limit; bad input gets a 4xx, never a panic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::{Identity, ResponseBody};

/// Largest request body the sample app reads.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest `/delay/{seconds}`.
const MAX_DELAY_SECONDS: f64 = 60.0;
/// Requests `/recent` remembers.
const RECENT_MAX: usize = 256;

/// `{method, host, path}` of the last requests (one sample app per process).
static RECENT: Mutex<VecDeque<Value>> = Mutex::new(VecDeque::new());

/// Answers one plain HTTP request.
pub async fn handle(identity: &Identity, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    if path == "/echo-upgrade" {
        return echo_upgrade(identity, req);
    }
    if path == "/recent" {
        let recent: Vec<Value> = lock_recent().iter().cloned().collect();
        let mut map = Map::new();
        map.insert("requests".into(), Value::Array(recent));
        return json_response(identity, StatusCode::OK, map);
    }
    remember(&req);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["flaky", key, n] = segments.as_slice() {
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .unwrap_or_default();
        return flaky(identity, &Request::from_parts(parts, ()), key, n, body);
    }
    if !matches!(segments.as_slice(), ["post"] | ["anything", ..]) {
        let (parts, body) = req.into_parts();
        super::drain(body).await;
        let req = Request::from_parts(parts, ());
        return answer_without_body(identity, &req, &segments, &path).await;
    }
    echo_with_body(identity, req).await
}

/// `/echo-upgrade`: any `Upgrade` protocol is accepted (`101`) and the upgraded connection
/// echoes what it reads until the peer closes (at most `MAX_DELAY_SECONDS` idle).
fn echo_upgrade(identity: &Identity, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let Some(protocol) = req.headers().get(hyper::header::UPGRADE).cloned() else {
        return error_response(
            identity,
            StatusCode::BAD_REQUEST,
            "/echo-upgrade needs an Upgrade header",
        );
    };
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(upgraded) = on.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut buf = vec![0u8; 16 * 1024];
        let idle = Duration::from_secs_f64(MAX_DELAY_SECONDS);
        while let Ok(Ok(n)) = tokio::time::timeout(idle, io.read(&mut buf)).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(hyper::header::UPGRADE, protocol);
    h.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    response
}

fn lock_recent() -> std::sync::MutexGuard<'static, VecDeque<Value>> {
    RECENT.lock().unwrap_or_else(|p| p.into_inner())
}

fn remember<B>(req: &Request<B>) {
    let host = req
        .headers()
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let length = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .unwrap_or_default();
    let entry = json!({
        "method": req.method().as_str(),
        "host": host,
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "content_length": length,
    });
    let mut recent = lock_recent();
    if recent.len() == RECENT_MAX {
        recent.pop_front();
    }
    recent.push_back(entry);
}

/// Every endpoint except `/post` and `/anything`: the body is not used.
async fn answer_without_body(
    identity: &Identity,
    req: &Request<()>,
    segments: &[&str],
    path: &str,
) -> Response<ResponseBody> {
    match segments {
        [""] | ["get"] => json_response(identity, StatusCode::OK, request_info(req)),
        // `/reviews[/…]` on the reviews app: what a mesh route without rewrite sends.
        [own, ..] if *own == identity.service => {
            json_response(identity, StatusCode::OK, request_info(req))
        }
        ["headers"] => {
            let mut map = Map::new();
            map.insert("headers".into(), headers_json(req));
            json_response(identity, StatusCode::OK, map)
        }
        ["status", code] => status(identity, req, code),
        ["delay", seconds] => delay(identity, req, seconds).await,
        ["ledger"] => ledger(identity, req),
        _ => error_response(
            identity,
            StatusCode::NOT_FOUND,
            &format!("no route for {path}"),
        ),
    }
}

async fn echo_with_body(identity: &Identity, req: Request<Incoming>) -> Response<ResponseBody> {
    let mut map = request_info(&req);
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            let status = if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return error_response(identity, status, &format!("read request body: {err}"));
        }
    };
    let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    map.insert(
        "body".into(),
        Value::String(String::from_utf8_lossy(&body).into_owned()),
    );
    map.insert("json".into(), json);
    json_response(identity, StatusCode::OK, map)
}

fn status(identity: &Identity, req: &Request<()>, code: &str) -> Response<ResponseBody> {
    let status = match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(status) if (200..=599).contains(&status.as_u16()) => status,
        _ => {
            let message = format!("bad status code {code:?}: use a number in 200..=599");
            return error_response(identity, StatusCode::BAD_REQUEST, &message);
        }
    };
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = status;
        return response;
    }
    let mut map = request_info(req);
    map.insert("status".into(), json!(status.as_u16()));
    json_response(identity, status, map)
}

async fn delay(identity: &Identity, req: &Request<()>, seconds: &str) -> Response<ResponseBody> {
    let delay = match seconds.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=MAX_DELAY_SECONDS).contains(&s) => s,
        _ => {
            let message = format!("bad delay {seconds:?}: use seconds in 0..={MAX_DELAY_SECONDS}");
            return error_response(identity, StatusCode::BAD_REQUEST, &message);
        }
    };
    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    let mut map = request_info(req);
    map.insert("delay".into(), json!(delay));
    json_response(identity, StatusCode::OK, map)
}

fn flaky(
    identity: &Identity,
    req: &Request<()>,
    key: &str,
    n: &str,
    body: String,
) -> Response<ResponseBody> {
    let Ok(failures) = n.parse::<u64>() else {
        let message = format!("bad failure count {n:?}: use a number");
        return error_response(identity, StatusCode::BAD_REQUEST, &message);
    };
    let seen = super::ledger::flaky_seen(key);
    let mut map = request_info(req);
    map.insert("attempt".into(), json!(seen + 1));
    map.insert("body".into(), Value::String(body));
    if seen >= failures {
        return json_response(identity, StatusCode::OK, map);
    }
    map.insert("status".into(), json!(503));
    let mut response = json_response(identity, StatusCode::SERVICE_UNAVAILABLE, map);
    let query = query_json(req.uri().query().unwrap_or(""));
    if let Some(Ok(v)) = query["retry_after"].as_str().map(HeaderValue::from_str) {
        response.headers_mut().insert("retry-after", v);
    }
    response
}

fn ledger(identity: &Identity, req: &Request<()>) -> Response<ResponseBody> {
    let mut map = Map::new();
    if req.method() == hyper::Method::POST {
        let Some(id) = req
            .headers()
            .get("x-ledger-id")
            .and_then(|v| v.to_str().ok())
        else {
            let message = "POST /ledger needs an x-ledger-id header";
            return error_response(identity, StatusCode::BAD_REQUEST, message);
        };
        map.insert("recorded".into(), json!(id));
        map.insert("count".into(), json!(super::ledger::record(id)));
    } else {
        map.insert("ledger".into(), json!(super::ledger::entries()));
    }
    json_response(identity, StatusCode::OK, map)
}

/// `method`, `path`, `query` and `headers` of a request.
fn request_info<B>(req: &Request<B>) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("method".into(), Value::String(req.method().to_string()));
    map.insert("path".into(), Value::String(req.uri().path().to_owned()));
    map.insert("query".into(), query_json(req.uri().query().unwrap_or("")));
    map.insert("headers".into(), headers_json(req));
    map
}

/// All request headers; repeated ones joined with `,`. HTTP/2 requests carry
/// their authority in the URI, which is reported as `host`.
fn headers_json<B>(req: &Request<B>) -> Value {
    let mut map = Map::new();
    let headers: &HeaderMap = req.headers();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        map.insert(name.as_str().to_owned(), Value::String(joined));
    }
    if !headers.contains_key(HOST)
        && let Some(authority) = req.uri().authority()
    {
        map.insert("host".into(), Value::String(authority.to_string()));
    }
    Value::Object(map)
}

/// The query string as a map; repeated keys joined with `,`.
fn query_json(query: &str) -> Value {
    let mut args: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        args.entry(percent_decode(key))
            .or_default()
            .push(percent_decode(value));
    }
    Value::Object(
        args.into_iter()
            .map(|(k, v)| (k, Value::String(v.join(","))))
            .collect(),
    )
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes stay as written.
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

pub(super) fn json_response(
    identity: &Identity,
    status: StatusCode,
    mut map: Map<String, Value>,
) -> Response<ResponseBody> {
    map.insert("service".into(), Value::String(identity.service.clone()));
    map.insert("version".into(), Value::String(identity.version.clone()));
    map.insert("instance".into(), Value::String(identity.instance.clone()));
    let mut body = serde_json::to_vec_pretty(&Value::Object(map)).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn error_response(
    identity: &Identity,
    status: StatusCode,
    message: &str,
) -> Response<ResponseBody> {
    let mut map = Map::new();
    map.insert("error".into(), Value::String(message.to_owned()));
    map.insert("status".into(), json!(status.as_u16()));
    json_response(identity, status, map)
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_strings() {
        let v = query_json("a=1&b=hello+world&a=2&c=%41%zz&d");
        assert_eq!(v["a"], "1,2");
        assert_eq!(v["b"], "hello world");
        assert_eq!(v["c"], "A%zz");
        assert_eq!(v["d"], "");
    }

    #[test]
    fn percent_at_end_is_kept() {
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("5%4"), "5%4");
    }
}
