//! Authorization of one request: the listener's path normalization (the normalized path is the
//! one routed, authorized and forwarded) and then its RBAC filters in order; the first denial
//! answers 403 `RBAC: access denied` (Envoy's body). A path that cannot be normalized safely
//! (`%00`, a bad `%` escape, an escaped slash under `REJECT_REQUEST`) gets 400 first.
//! Matching itself is `runtime/rbac.rs`.

use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, StatusCode, Uri};

use super::headers::X_FORWARDED_FOR;
use super::{ConnInfo, Local};
use crate::runtime::TcpChain;
use crate::runtime::authz::{HttpAuthz, PathNormalization};
use crate::runtime::rbac::{Subject, Verdict};
use crate::runtime::route::{RequestView, Route, RouteAction};
use crate::runtime::{HttpSettings, Runtime};
use crate::security::{Peer, RequestAuth};

/// Envoy's body for a request RBAC denies.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// Normalizes the request path in place (query untouched); 400 for a path that cannot be.
pub fn normalize(parts: &mut Parts, n: PathNormalization) -> Result<(), Local> {
    let normalized = match normalize_path(parts.uri.path(), n) {
        Ok(None) => return Ok(()),
        Ok(Some(p)) => p,
        Err(why) => {
            let msg = format!("invalid request path: {why}\n");
            return Err(Local::new(StatusCode::BAD_REQUEST, "DPE", msg));
        }
    };
    let pq = match parts.uri.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|e| {
        Local::new(
            StatusCode::BAD_REQUEST,
            "DPE",
            format!("invalid request path after normalization: {e}\n"),
        )
    })?);
    parts.uri = Uri::from_parts(uri).map_err(|e| {
        Local::new(
            StatusCode::BAD_REQUEST,
            "DPE",
            format!("invalid request uri after normalization: {e}\n"),
        )
    })?;
    Ok(())
}

/// Runs the listener's RBAC filters (and its external authorizer, for the requests its CUSTOM
/// rules mark) on the request; `route` (when one matched) gives the destination port of an
/// inbound request (its `inbound|<port>||` cluster). On allow, the headers the authorizer adds
/// to the upstream request.
pub async fn authorize(
    rt: &Runtime,
    authz: &HttpAuthz,
    conn: &ConnInfo,
    settings: &HttpSettings,
    view: &RequestView<'_>,
    parts: &Parts,
    route: Option<&Route>,
) -> Result<Option<HeaderMap>, Local> {
    if authz.filters.is_empty() {
        return Ok(None);
    }
    // Istio's normalization: a method that is not upper case is rejected, so `get` cannot
    // slip past a rule on `GET`.
    if parts
        .method
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        let msg = format!("method {:?} is not upper case\n", parts.method.as_str());
        return Err(Local::new(StatusCode::BAD_REQUEST, "DPE", msg));
    }
    let port = route
        .and_then(inbound_port)
        .unwrap_or_else(|| conn.local.port());
    let subject = Subject {
        request: Some(view),
        source: conn.remote,
        remote_ip: remote_ip(conn.remote.ip(), settings, parts),
        destination: SocketAddr::new(conn.local.ip(), port),
        peer: &conn.peer,
        auth: parts.extensions.get::<RequestAuth>(),
        sni: conn.peer.sni.as_deref(),
    };
    let mut added = None;
    for (i, rbac) in authz.filters.iter().enumerate() {
        let (verdict, shadow) = rbac.check_with_shadow(&subject);
        if let Verdict::Denied(policy) = verdict {
            tracing::debug!(policy = policy.as_deref().unwrap_or("none"), "rbac denied");
            return Err(Local::new(StatusCode::FORBIDDEN, "-", DENIED_BODY.into()));
        }
        let Some((after, ext)) = &authz.ext_authz else {
            continue;
        };
        let enabled = match &ext.enabled_prefix {
            None => true,
            Some(prefix) => shadow.is_some_and(|p| p.starts_with(prefix.as_str())),
        };
        if *after == i && enabled {
            added = super::ext_authz::check(rt, ext, parts).await?;
        }
    }
    Ok(added)
}

/// Adds the external authorizer's headers to the upstream request (replacing same names).
pub fn add_headers(headers: &mut HeaderMap, added: HeaderMap) {
    let mut last = None;
    for (name, value) in added {
        match name {
            Some(name) => {
                headers.insert(&name, value);
                last = Some(name);
            }
            None => {
                if let Some(name) = &last {
                    headers.append(name, value);
                }
            }
        }
    }
}

/// Runs an L4 chain's network RBAC filters on a new connection (no mTLS peer yet on L4
/// listeners); `false` means close it.
pub fn authorize_connection(
    chain: &TcpChain,
    remote: SocketAddr,
    local: SocketAddr,
    sni: Option<&str>,
) -> bool {
    if chain.rbac.is_empty() {
        return true;
    }
    let peer = Peer::default();
    let subject = Subject {
        request: None,
        source: remote,
        remote_ip: remote.ip(),
        destination: local,
        peer: &peer,
        auth: None,
        sni,
    };
    chain.rbac.iter().all(|rbac| match rbac.check(&subject) {
        Verdict::Allowed => true,
        Verdict::Denied(policy) => {
            tracing::debug!(policy = policy.as_deref().unwrap_or("none"), %remote, "rbac closed connection");
            false
        }
    })
}

/// The workload port of a sidecar inbound route (`inbound|<port>||<host>`).
fn inbound_port(route: &Route) -> Option<u16> {
    let RouteAction::Cluster(c) = &route.action else {
        return None;
    };
    c.name
        .strip_prefix("inbound|")?
        .split('|')
        .next()?
        .parse()
        .ok()
}

/// Envoy's trusted client address: with `use_remote_address` the peer, or the
/// `xff_num_trusted_hops`-th `x-forwarded-for` entry from the right; without it the
/// (`hops` + 1)-th from the right. The peer when `x-forwarded-for` is too short.
pub fn remote_ip(peer: IpAddr, settings: &HttpSettings, parts: &Parts) -> IpAddr {
    let hops = settings.xff_num_trusted_hops as usize;
    let index = if settings.use_remote_address {
        if hops == 0 {
            return peer;
        }
        hops - 1
    } else {
        hops
    };
    let Some(xff) = parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    else {
        return peer;
    };
    xff.rsplit(',')
        .nth(index)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(peer)
}

/// The normalized path, `None` when it is already normal.
pub fn normalize_path(path: &str, n: PathNormalization) -> Result<Option<String>, &'static str> {
    let bytes = path.as_bytes();
    let mut needs = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(h), Some(l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return invalid(n);
                };
                let (Some(h), Some(l)) = (hex(*h), hex(*l)) else {
                    return invalid(n);
                };
                let v = h << 4 | l;
                if v == 0 {
                    return Err("%00 is not allowed");
                }
                if matches!(v, b'/' | b'\\') && n.reject_escaped_slashes {
                    return Err("escaped slashes (%2F, %5C) are not allowed");
                }
                needs = true;
                i += 3;
                continue;
            }
            b'\\' | b'.' => needs = true,
            b'/' if bytes.get(i + 1) == Some(&b'/') => needs = true,
            _ => {}
        }
        i += 1;
    }
    if !needs || !(n.normalize || n.merge_slashes || n.unescape_slashes) {
        return Ok(None);
    }
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let v = hex(bytes[i + 1]).unwrap_or(0) << 4 | hex(bytes[i + 2]).unwrap_or(0);
            let slash = matches!(v, b'/' | b'\\');
            if (slash && n.unescape_slashes) || (!slash && n.normalize && unreserved(v)) {
                out.push(v);
            } else {
                out.extend_from_slice(&bytes[i..i + 3]);
            }
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    if n.normalize {
        for b in &mut out {
            if *b == b'\\' {
                *b = b'/';
            }
        }
    }
    let mut s = String::from_utf8(out).map_err(|_| "path is not valid UTF-8")?;
    if n.normalize {
        s = remove_dot_segments(&s);
    }
    if n.merge_slashes && s.contains("//") {
        let mut merged = String::with_capacity(s.len());
        for c in s.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        s = merged;
    }
    Ok((s != path).then_some(s))
}

fn invalid(n: PathNormalization) -> Result<Option<String>, &'static str> {
    if n.normalize || n.unescape_slashes {
        Err("invalid percent-encoding")
    } else {
        Ok(None)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 unreserved characters (decoded by normalization, as Istio documents).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4 on an absolute path; empty segments (`//`) are kept.
fn remove_dot_segments(path: &str) -> String {
    let Some(rest) = path.strip_prefix('/') else {
        return path.to_string();
    };
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in rest.split('/') {
        trailing = false;
        match seg {
            "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    s.push('/');
    s.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: PathNormalization = PathNormalization {
        normalize: true,
        merge_slashes: false,
        unescape_slashes: false,
        reject_escaped_slashes: false,
    };
    const MERGE: PathNormalization = PathNormalization {
        merge_slashes: true,
        ..BASE
    };
    const DECODE: PathNormalization = PathNormalization {
        unescape_slashes: true,
        ..MERGE
    };

    fn norm(p: &str, n: PathNormalization) -> Result<String, &'static str> {
        normalize_path(p, n).map(|o| o.unwrap_or_else(|| p.to_string()))
    }

    #[test]
    fn istio_normalization_examples() {
        // Istio's "Authorization Policy Normalization" page, mode by mode.
        assert_eq!(norm("/a/../b", BASE), Ok("/b".into()));
        assert_eq!(
            norm("/public/./data/abc/../xyz", BASE),
            Ok("/public/data/xyz".into())
        );
        assert_eq!(norm("\\da", BASE), Ok("/da".into()));
        assert_eq!(norm("/some\\data", BASE), Ok("/some/data".into()));
        assert_eq!(
            norm("/%61%62%63/%2d%2E%5f%7E%30", BASE),
            Ok("/abc/-._~0".into())
        );
        assert_eq!(norm("/a//b", BASE), Ok("/a//b".into()));
        assert_eq!(norm("/a//b", MERGE), Ok("/a/b".into()));
        assert_eq!(norm("/a%2fb", MERGE), Ok("/a%2fb".into()));
        assert_eq!(norm("/a%2fb", DECODE), Ok("/a/b".into()));
        assert_eq!(
            norm("/some%2fdata/%61%62%63", DECODE),
            Ok("/some/data/abc".into())
        );
        assert_eq!(
            norm("/some//data///abc", MERGE),
            Ok("/some/data/abc".into())
        );
        // Only one decoding pass.
        assert_eq!(norm("/%252e%252e/x", DECODE), Ok("/%252e%252e/x".into()));
        // Dots that were escaped are segments too.
        assert_eq!(norm("/x/%2e%2e/admin", BASE), Ok("/admin".into()));
        assert_eq!(norm("/..", BASE), Ok("/".into()));
        assert_eq!(norm("/a/b/..", BASE), Ok("/a/".into()));
        // Case is never changed.
        assert_eq!(norm("/ADMIN", DECODE), Ok("/ADMIN".into()));
    }

    #[test]
    fn none_keeps_everything_and_bad_escapes_are_rejected() {
        let none = PathNormalization::default();
        assert_eq!(normalize_path("/a/../b//%2f", none), Ok(None));
        assert!(normalize_path("/a%00b", none).is_err());
        assert!(normalize_path("/a%zz", BASE).is_err());
        assert!(normalize_path("/a%2", BASE).is_err());
        assert_eq!(normalize_path("/a%zz", none), Ok(None));
        let reject = PathNormalization {
            reject_escaped_slashes: true,
            ..BASE
        };
        assert!(normalize_path("/a%2Fb", reject).is_err());
        assert_eq!(normalize_path("/plain/path", BASE), Ok(None));
    }

    #[test]
    fn remote_ip_follows_trusted_hops() {
        let peer: IpAddr = [127, 0, 0, 9].into();
        let mut parts = http::Request::new(()).into_parts().0;
        parts.headers.insert(
            &X_FORWARDED_FOR,
            "1.1.1.1, 2.2.2.2, 3.3.3.3".parse().expect("value"),
        );
        let mut settings = HttpSettings {
            use_remote_address: true,
            ..Default::default()
        };
        assert_eq!(remote_ip(peer, &settings, &parts), peer);
        settings.xff_num_trusted_hops = 2;
        assert_eq!(
            remote_ip(peer, &settings, &parts),
            IpAddr::from([2, 2, 2, 2])
        );
        settings.use_remote_address = false;
        settings.xff_num_trusted_hops = 0;
        assert_eq!(
            remote_ip(peer, &settings, &parts),
            IpAddr::from([3, 3, 3, 3])
        );
        settings.xff_num_trusted_hops = 9;
        assert_eq!(remote_ip(peer, &settings, &parts), peer);
    }
}
