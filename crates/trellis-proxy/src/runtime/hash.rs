//! Consistent hashing: the route's `hash_policy` (header, cookie, source IP, query parameter)
//! turned into a request hash, and the cluster's RING_HASH ring or MAGLEV table that maps a
//! hash to an endpoint. A cookie policy with a TTL whose cookie is absent generates one (the
//! response carries `Set-Cookie`), which gives session affinity, as Envoy does.
//!
//! Tables are built once per cluster at config time and index into the cluster's endpoint list.
//! Owns hashing only: which endpoints are eligible (health, priority) is the caller's question.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::route::v3::route_action::{
    HashPolicy as XHashPolicy, hash_policy::PolicySpecifier,
};
use http::HeaderValue;
use http::header::{COOKIE, HeaderMap, HeaderName};

use super::duration;

/// Default and bounds of the ring size (Envoy's).
const DEFAULT_MIN_RING: u64 = 1024;
const MAX_RING: u64 = 8 * 1024 * 1024;
/// Envoy's default Maglev table size (a prime).
pub const DEFAULT_MAGLEV_SIZE: u64 = 65537;

/// One compiled `hash_policy` entry.
#[derive(Debug, Clone)]
pub enum HashPolicy {
    Header(HeaderName),
    Cookie(CookiePolicy),
    SourceIp,
    QueryParameter(Box<str>),
}

#[derive(Debug, Clone)]
pub struct CookiePolicy {
    pub name: Box<str>,
    pub path: Box<str>,
    /// Generate the cookie when absent (Envoy does only when a TTL is set).
    pub ttl: Option<std::time::Duration>,
    pub attributes: Vec<(Box<str>, Box<str>)>,
}

/// The request's hash, and the cookie to set on the response when one was generated.
#[derive(Debug)]
pub struct RequestHash {
    pub hash: u64,
    pub set_cookie: Option<HeaderValue>,
}

/// A cluster's hash table: `slots[i]` is an endpoint index; look-ups walk forward from the
/// hash's slot to the first eligible endpoint.
#[derive(Debug)]
pub enum HashTable {
    /// Sorted `(point, endpoint)` pairs.
    Ring(Vec<(u64, u32)>),
    Maglev(Vec<u32>),
}

/// 64-bit FNV-1a with a final avalanche (splitmix64); stable across runs and builds.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl HashPolicy {
    /// Compiles a route's policies; unknown kinds (filter state) are skipped.
    pub fn compile(list: &[XHashPolicy]) -> Result<Vec<HashPolicy>, String> {
        let mut out = Vec::with_capacity(list.len());
        for (i, p) in list.iter().enumerate() {
            out.push(match &p.policy_specifier {
                Some(PolicySpecifier::Header(h)) => HashPolicy::Header(
                    HeaderName::try_from(h.header_name.as_str())
                        .map_err(|e| format!("hash_policy[{i}].header.header_name: {e}"))?,
                ),
                Some(PolicySpecifier::Cookie(c)) => HashPolicy::Cookie(CookiePolicy {
                    name: c.name.as_str().into(),
                    path: c.path.as_str().into(),
                    ttl: c.ttl.as_ref().map(duration),
                    attributes: c
                        .attributes
                        .iter()
                        .map(|a| (a.name.as_str().into(), a.value.as_str().into()))
                        .collect(),
                }),
                Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => {
                    HashPolicy::SourceIp
                }
                Some(PolicySpecifier::QueryParameter(q)) => {
                    HashPolicy::QueryParameter(q.name.as_str().into())
                }
                _ => continue,
            });
        }
        Ok(out)
    }
}

/// The hash of a request under `policies` (Envoy combines several by rotating and xor-ing);
/// `None` when no policy produced a value (the balancer then picks at random).
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    query: Option<&str>,
    source: IpAddr,
) -> Option<RequestHash> {
    let mut out: Option<u64> = None;
    let mut set_cookie = None;
    for p in policies {
        let h = match p {
            HashPolicy::Header(name) => {
                let mut values = headers.get_all(name).iter().peekable();
                values.peek()?;
                let mut joined = Vec::new();
                for v in values {
                    joined.extend_from_slice(v.as_bytes());
                }
                Some(hash_bytes(&joined))
            }
            HashPolicy::Cookie(c) => match cookie(headers, &c.name) {
                Some(v) => Some(hash_bytes(v.as_bytes())),
                None if c.ttl.is_some() => {
                    let value = format!("{:016x}", fastrand::u64(..));
                    set_cookie = set_cookie_header(c, &value);
                    Some(hash_bytes(value.as_bytes()))
                }
                None => None,
            },
            HashPolicy::SourceIp => Some(hash_bytes(source.to_string().as_bytes())),
            HashPolicy::QueryParameter(name) => {
                query_param(query, name).map(|v| hash_bytes(v.as_bytes()))
            }
        };
        if let Some(h) = h {
            out = Some(match out {
                Some(prev) => prev.rotate_left(1) ^ h,
                None => h,
            });
        }
    }
    out.map(|hash| RequestHash { hash, set_cookie })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie_header(c: &CookiePolicy, value: &str) -> Option<HeaderValue> {
    let mut s = format!("{}=\"{value}\"", c.name);
    if let Some(ttl) = c.ttl.filter(|t| !t.is_zero()) {
        s.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !c.path.is_empty() {
        s.push_str(&format!("; Path={}", c.path));
    }
    for (k, v) in &c.attributes {
        if v.is_empty() {
            s.push_str(&format!("; {k}"));
        } else {
            s.push_str(&format!("; {k}={v}"));
        }
    }
    s.push_str("; HttpOnly");
    HeaderValue::try_from(s).ok()
}

impl HashTable {
    /// Envoy's ring: each endpoint gets points in proportion to its weight, at least
    /// `min_size` in all (bounded by 8M).
    pub fn ring(keys: &[(String, u32)], min_size: u64) -> HashTable {
        if keys.is_empty() {
            return HashTable::Ring(Vec::new());
        }
        let total: u64 = keys.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
        let min_size = if min_size == 0 {
            DEFAULT_MIN_RING
        } else {
            min_size
        };
        let scale = (min_size.min(MAX_RING) as f64 / total as f64)
            .ceil()
            .max(1.0);
        let mut ring = Vec::new();
        for (i, (key, w)) in keys.iter().enumerate() {
            let points = ((u64::from((*w).max(1)) as f64) * scale) as u64;
            for p in 0..points {
                ring.push((hash_bytes(format!("{key}_{p}").as_bytes()), i as u32));
            }
        }
        ring.sort_unstable();
        HashTable::Ring(ring)
    }

    /// Maglev population (Eisenbud et al.): each endpoint fills its preferred free slots in
    /// turn, weighted turns for unequal weights. `size` should be prime.
    pub fn maglev(keys: &[(String, u32)], size: u64) -> HashTable {
        let m = if size == 0 { DEFAULT_MAGLEV_SIZE } else { size } as usize;
        if keys.is_empty() {
            return HashTable::Maglev(Vec::new());
        }
        let max_w = keys.iter().map(|(_, w)| (*w).max(1)).max().unwrap_or(1);
        let params: Vec<(usize, usize)> = keys
            .iter()
            .map(|(k, _)| {
                let offset = (hash_bytes(k.as_bytes()) % m as u64) as usize;
                let skip = (hash_bytes(format!("{k}#skip").as_bytes()) % (m as u64 - 1).max(1))
                    as usize
                    + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; keys.len()];
        let mut credit = vec![0u32; keys.len()];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        'outer: loop {
            for i in 0..keys.len() {
                credit[i] += keys[i].1.max(1);
                if credit[i] < max_w {
                    continue;
                }
                credit[i] -= max_w;
                let (offset, skip) = params[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'outer;
                }
            }
        }
        HashTable::Maglev(table)
    }

    /// The first endpoint at or after the hash's position for which `eligible` holds.
    pub fn find(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashTable::Ring(ring) => {
                if ring.is_empty() {
                    return None;
                }
                let start = ring.partition_point(|(p, _)| *p < hash);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|i| eligible(*i))
            }
            HashTable::Maglev(table) => {
                if table.is_empty() {
                    return None;
                }
                let start = (hash % table.len() as u64) as usize;
                (0..table.len())
                    .map(|k| table[(start + k) % table.len()] as usize)
                    .find(|i| eligible(*i))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    fn spread(t: &HashTable, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for k in 0..10_000u64 {
            if let Some(i) = t.find(hash_bytes(&k.to_le_bytes()), |_| true) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn ring_and_maglev_spread_and_are_stable() {
        for t in [
            HashTable::ring(&keys(4), 1024),
            HashTable::maglev(&keys(4), 65537),
        ] {
            let c = spread(&t, 4);
            assert!(c.iter().all(|n| *n > 1500), "{c:?}");
            let h = hash_bytes(b"user-42");
            assert_eq!(t.find(h, |_| true), t.find(h, |_| true));
        }
    }

    #[test]
    fn removing_one_endpoint_moves_only_its_keys() {
        let t = HashTable::maglev(&keys(5), 65537);
        let mut moved = 0;
        for k in 0..2000u64 {
            let h = hash_bytes(&k.to_le_bytes());
            let before = t.find(h, |_| true);
            let after = t.find(h, |i| i != 2);
            if before != Some(2) && before != after {
                moved += 1;
            }
        }
        assert_eq!(moved, 0);
    }

    #[test]
    fn request_hash_uses_header_cookie_query_and_ip() {
        let ip: IpAddr = [127, 0, 0, 1].into();
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.insert(COOKIE, HeaderValue::from_static("a=1; session=abc"));
        let by_header = [HashPolicy::Header(HeaderName::from_static("x-user"))];
        let a = request_hash(&by_header, &h, None, ip).map(|r| r.hash);
        assert_eq!(a, Some(hash_bytes(b"alice")));
        assert!(request_hash(&by_header, &HeaderMap::new(), None, ip).is_none());
        let cookie = CookiePolicy {
            name: "session".into(),
            path: "/".into(),
            ttl: Some(std::time::Duration::from_secs(60)),
            attributes: Vec::new(),
        };
        let by_cookie = [HashPolicy::Cookie(cookie)];
        let r = request_hash(&by_cookie, &h, None, ip).expect("cookie hash");
        assert_eq!(r.hash, hash_bytes(b"abc"));
        assert!(r.set_cookie.is_none());
        let r = request_hash(&by_cookie, &HeaderMap::new(), None, ip).expect("generated");
        let set = r.set_cookie.expect("set-cookie");
        let set = set.to_str().unwrap_or("");
        assert!(
            set.starts_with("session=\"") && set.contains("Max-Age=60; Path=/"),
            "{set}"
        );
        let value = set.split('"').nth(1).unwrap_or("");
        assert_eq!(r.hash, hash_bytes(value.as_bytes()));
        // The client sends it back (quoted, as set): same hash.
        let mut back = HeaderMap::new();
        let sent = HeaderValue::try_from(format!("session=\"{value}\"")).expect("value");
        back.insert(COOKIE, sent);
        let again = request_hash(&by_cookie, &back, None, ip).expect("hash");
        assert_eq!(again.hash, r.hash);
        assert!(again.set_cookie.is_none());
        let by_query = [HashPolicy::QueryParameter("u".into())];
        let q = request_hash(&by_query, &h, Some("x=1&u=bob"), ip).map(|r| r.hash);
        assert_eq!(q, Some(hash_bytes(b"bob")));
        let by_ip = [HashPolicy::SourceIp];
        assert!(request_hash(&by_ip, &h, None, ip).is_some());
    }
}
