//! Header policy at the proxy boundary, as Envoy applies it: hop-by-hop headers stripped in both
//! directions, `x-forwarded-for`/`x-forwarded-proto` at the edge, `x-request-id` generated when
//! missing. Pure functions over `HeaderMap`; no routing here.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::Entry;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};

use crate::runtime::HttpSettings;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_TRELLIS_FLAGS: HeaderName = HeaderName::from_static("x-trellis-flags");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` unless it is `trailers`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names says which are present; only those are removed (each removal
    // hashes the name, and a typical response carries just `Connection`).
    let present = h.keys().fold(0u8, |acc, name| acc | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    if present & HOP_CONNECTION != 0
        && let Some(conn) = h.remove(CONNECTION)
    {
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
    if present & HOP_KEEP_ALIVE != 0 {
        h.remove(&KEEP_ALIVE);
    }
    if present & HOP_PROXY_CONNECTION != 0 {
        h.remove(&PROXY_CONNECTION);
    }
    if present & HOP_TRANSFER_ENCODING != 0 {
        h.remove(TRANSFER_ENCODING);
    }
    if present & HOP_UPGRADE != 0 {
        h.remove(UPGRADE);
    }
    if present & HOP_TE != 0
        && let Some(te) = h.get(TE)
    {
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

const HOP_CONNECTION: u8 = 1;
const HOP_TE: u8 = 2;
const HOP_TRANSFER_ENCODING: u8 = 4;
const HOP_UPGRADE: u8 = 8;
const HOP_KEEP_ALIVE: u8 = 16;
const HOP_PROXY_CONNECTION: u8 = 32;

fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if *name == CONNECTION {
        HOP_CONNECTION
    } else if *name == TE {
        HOP_TE
    } else if *name == TRANSFER_ENCODING {
        HOP_TRANSFER_ENCODING
    } else if *name == UPGRADE {
        HOP_UPGRADE
    } else if *name == KEEP_ALIVE {
        HOP_KEEP_ALIVE
    } else if *name == PROXY_CONNECTION {
        HOP_PROXY_CONNECTION
    } else {
        0
    }
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
    forwarding_ids(h, settings, ip).request_id
}

/// What `forwarding_ids` leaves on the request, for the access log.
#[derive(Debug, Default)]
pub struct Forwarded {
    pub request_id: Option<HeaderValue>,
    /// The `x-forwarded-for` the request carries upstream (the first one, if several).
    pub x_forwarded_for: Option<HeaderValue>,
}

/// `forwarding_from`, also returning the resulting `x-forwarded-for`; each header is looked up
/// once (one hash per name).
pub fn forwarding_ids(
    h: &mut HeaderMap,
    settings: &HttpSettings,
    ip: Option<&HeaderValue>,
) -> Forwarded {
    let x_forwarded_for = if settings.use_remote_address {
        let xff = match h.entry(&X_FORWARDED_FOR) {
            Entry::Occupied(mut e) => match ip {
                Some(ip) => {
                    let prev = e.get();
                    let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
                    v.extend_from_slice(prev.as_bytes());
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(ip.as_bytes());
                    match HeaderValue::from_bytes(&v) {
                        Ok(v) => {
                            e.insert(v.clone());
                            Some(v)
                        }
                        Err(_) => Some(e.get().clone()),
                    }
                }
                None => Some(e.get().clone()),
            },
            Entry::Vacant(e) => ip.map(|ip| e.insert(ip.clone()).clone()),
        };
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        xff
    } else {
        if let Entry::Vacant(e) = h.entry(&X_FORWARDED_PROTO) {
            e.insert(HeaderValue::from_static("http"));
        }
        h.get(&X_FORWARDED_FOR).cloned()
    };
    let request_id = match h.entry(&X_REQUEST_ID) {
        Entry::Occupied(e)
            if settings.preserve_external_request_id
                || !settings.use_remote_address
                || !settings.generate_request_id =>
        {
            Some(e.get().clone())
        }
        Entry::Occupied(mut e) => {
            let id = uuid_v4();
            e.insert(id.clone());
            Some(id)
        }
        Entry::Vacant(_) if !settings.generate_request_id => None,
        Entry::Vacant(e) => Some(e.insert(uuid_v4()).clone()),
    };
    Forwarded {
        request_id,
        x_forwarded_for,
    }
}

/// A random UUID (version 4, RFC 4122 variant) as a header value.
pub fn uuid_v4() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = fastrand::u128(..);
    v = (v & !(0xF << 76)) | (0x4 << 76);
    v = (v & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, b) in v.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(b >> 4)];
        out[o + 1] = HEX[usize::from(b & 0xF)];
        o += 2;
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

    #[test]
    fn forwarding_ids_reports_the_forwarded_for_sent_upstream() {
        let s = HttpSettings {
            use_remote_address: true,
            ..Default::default()
        };
        let ip = peer_value(IpAddr::from([127, 0, 0, 9]));
        let mut h = HeaderMap::new();
        let f = forwarding_ids(&mut h, &s, ip.as_ref());
        assert_eq!(f.x_forwarded_for, h.get(&X_FORWARDED_FOR).cloned());
        assert_eq!(f.x_forwarded_for, ip);
        assert_eq!(f.request_id, h.get(&X_REQUEST_ID).cloned());
        let f = forwarding_ids(&mut h, &s, ip.as_ref());
        assert_eq!(
            f.x_forwarded_for.as_ref().map(|v| v.as_bytes()),
            Some(&b"127.0.0.9, 127.0.0.9"[..])
        );
        let internal = HttpSettings::default();
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        let f = forwarding_ids(&mut h, &internal, ip.as_ref());
        assert_eq!(f.x_forwarded_for, None);
        assert_eq!(
            f.request_id.as_ref().map(|v| v.as_bytes()),
            Some(&b"abc"[..])
        );
        assert_eq!(
            h.get(&X_FORWARDED_PROTO).map(|v| v.as_bytes()),
            Some(&b"http"[..])
        );
    }
}
