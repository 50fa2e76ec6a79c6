//! Header policy at the proxy boundary, as Envoy applies it: hop-by-hop headers stripped in both
//! directions, `x-forwarded-for`/`x-forwarded-proto` at the edge, `x-request-id` generated when
//! missing. Pure functions over `HeaderMap`; no routing here.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};

use crate::runtime::HttpSettings;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_TRELLIS_FLAGS: HeaderName = HeaderName::from_static("x-trellis-flags");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` unless it is `trailers`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names beats six hashed removals.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(conn) = h.remove(CONNECTION) {
        // Also any further Connection lines (remove returns the first, drops the rest).
        if let Ok(list) = conn.to_str() {
            for name in list.split(',') {
                let name = name.trim();
                // `keep-alive` goes below anyway; `close` names no header.
                if name.is_empty()
                    || name.eq_ignore_ascii_case("te")
                    || name.eq_ignore_ascii_case("keep-alive")
                    || name.eq_ignore_ascii_case("close")
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    h.remove(n);
                }
            }
        }
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(TRANSFER_ENCODING);
    h.remove(UPGRADE);
    if let Some(te) = h.get(TE) {
        let trailers = te.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.trim()
                    .split(';')
                    .next()
                    .is_some_and(|t| t.eq_ignore_ascii_case("trailers"))
            })
        });
        if trailers {
            h.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            h.remove(TE);
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == CONNECTION
        || *name == TE
        || *name == TRANSFER_ENCODING
        || *name == UPGRADE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// The downstream peer's address as `x-forwarded-for` carries it (computed once a connection).
pub fn peer_value(peer: IpAddr) -> Option<HeaderValue> {
    HeaderValue::from_str(&peer.to_string()).ok()
}

/// Forwarding headers for a request entering through a listener with `settings`; returns the
/// request id that the request carries upstream.
pub fn forwarding(h: &mut HeaderMap, settings: &HttpSettings, peer: IpAddr) -> Option<HeaderValue> {
    forwarding_from(h, settings, peer_value(peer).as_ref())
}

/// `forwarding` with the peer address already rendered by `peer_value`.
pub fn forwarding_from(
    h: &mut HeaderMap,
    settings: &HttpSettings,
    ip: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    if settings.use_remote_address {
        let joined = match (h.get(&X_FORWARDED_FOR), ip) {
            (Some(prev), Some(ip)) => {
                let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(ip.as_bytes());
                HeaderValue::from_bytes(&v).ok()
            }
            (None, ip) => ip.cloned(),
            (Some(_), None) => None,
        };
        if let Some(v) = joined {
            h.insert(&X_FORWARDED_FOR, v);
        }
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    } else if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    let keep = h.contains_key(&X_REQUEST_ID)
        && (settings.preserve_external_request_id || !settings.use_remote_address);
    if keep || !settings.generate_request_id {
        return h.get(&X_REQUEST_ID).cloned();
    }
    let id = uuid_v4();
    h.insert(&X_REQUEST_ID, id.clone());
    Some(id)
}

/// A random UUID (version 4, RFC 4122 variant) as a header value.
pub fn uuid_v4() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = fastrand::u128(..);
    v = (v & !(0xF << 76)) | (0x4 << 76);
    v = (v & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut nibble = 0;
    for (i, b) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *b = b'-';
            continue;
        }
        *b = HEX[((v >> (124 - 4 * nibble)) & 0xF) as usize];
        nibble += 1;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(
        "00000000-0000-4000-8000-000000000000",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_headers_and_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h.get(TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn uuid_has_v4_shape() {
        let v = uuid_v4();
        let s = v.to_str().unwrap_or("");
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_ne!(uuid_v4(), v);
    }

    #[test]
    fn edge_appends_xff_and_replaces_request_id_unless_preserved() {
        let mut s = HttpSettings {
            use_remote_address: true,
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        let id = forwarding(
            &mut h,
            &s,
            "127.0.0.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
        );
        assert_eq!(
            h.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"10.0.0.1, 127.0.0.9"[..])
        );
        assert_ne!(id.as_ref().map(|v| v.as_bytes()), Some(&b"abc"[..]));
        s.preserve_external_request_id = true;
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        let id = forwarding(&mut h, &s, IpAddr::from([1, 2, 3, 4]));
        assert_eq!(id.as_ref().map(|v| v.as_bytes()), Some(&b"abc"[..]));
    }
}
