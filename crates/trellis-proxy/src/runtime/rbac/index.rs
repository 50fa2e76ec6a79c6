//! A per-`Rules` index built at compile time so a request evaluates only the policies that can
//! match. Each policy gets one cheap necessary condition (a set of exact paths / path prefixes,
//! a request header that must be present, or a set of source CIDRs) taken from its matcher
//! trees; a request looks its facts up once in hash maps and fully evaluates only the candidate
//! policies, in name order, so the first match (and hence every verdict and reported policy
//! name) is the same as walking every policy.

use std::collections::HashMap as StdHashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use http::HeaderName;

use super::{Cidr, Permission, Policy, Principal, Subject};

/// The index's maps: keys come from config, requests only look up, so a fast non-keyed hash
/// (FxHash's multiply-rotate) is enough; SipHash was most of the remaining per-request cost.
type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ (rest.len() as u64) << 56);
    }

    fn write_u8(&mut self, v: u8) {
        self.add(u64::from(v));
    }

    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }

    fn write_u128(&mut self, v: u128) {
        self.add(v as u64);
        self.add((v >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A necessary condition for a matcher tree: when the tree matches, the condition holds.
enum Need {
    /// The request path is one of these exact values (`false`) or has one of these prefixes.
    Paths(Vec<(bool, Box<str>)>),
    /// The request carries this header.
    Header(HeaderName),
    /// The downstream peer address is in one of these ranges.
    Sources(Vec<Cidr>),
}

impl Need {
    /// How selective the condition is likely to be (higher is better).
    fn rank(&self) -> u8 {
        match self {
            Need::Paths(_) => 3,
            Need::Sources(_) => 2,
            Need::Header(_) => 1,
        }
    }

    fn best(a: Option<Need>, b: Option<Need>) -> Option<Need> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.rank() > a.rank() { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// A condition that holds when any of the trees matches: all must share one kind.
    fn any(needs: impl Iterator<Item = Option<Need>>) -> Option<Need> {
        let mut acc: Option<Need> = None;
        for n in needs {
            acc = Some(match (acc, n?) {
                (None, n) => n,
                (Some(Need::Paths(mut a)), Need::Paths(b)) => {
                    a.extend(b);
                    Need::Paths(a)
                }
                (Some(Need::Sources(mut a)), Need::Sources(b)) => {
                    a.extend(b);
                    Need::Sources(a)
                }
                (Some(Need::Header(a)), Need::Header(b)) if a == b => Need::Header(a),
                _ => return None,
            });
        }
        acc
    }
}

fn permission_need(p: &Permission) -> Option<Need> {
    match p {
        Permission::And(all) => all.iter().map(permission_need).fold(None, Need::best),
        Permission::Or(any) if !any.is_empty() => Need::any(any.iter().map(permission_need)),
        Permission::Path(m) => m
            .literal()
            .map(|(prefix, s)| Need::Paths(vec![(prefix, s.into())])),
        Permission::Header(h) => h.required_header().cloned().map(Need::Header),
        _ => None,
    }
}

fn principal_need(p: &Principal) -> Option<Need> {
    match p {
        Principal::And(all) => all.iter().map(principal_need).fold(None, Need::best),
        Principal::Or(any) if !any.is_empty() => Need::any(any.iter().map(principal_need)),
        Principal::Path(m) => m
            .literal()
            .map(|(prefix, s)| Need::Paths(vec![(prefix, s.into())])),
        Principal::Header(h) => h.required_header().cloned().map(Need::Header),
        Principal::DirectRemoteIp(c) => Some(Need::Sources(vec![*c])),
        _ => None,
    }
}

fn policy_need(p: &Policy) -> Option<Need> {
    // A policy with no permissions or no principals never matches: any need is fine, but keep
    // it simple and evaluate it always.
    if p.permissions.is_empty() || p.principals.is_empty() {
        return None;
    }
    let perm = Need::any(p.permissions.iter().map(permission_need));
    let princ = Need::any(p.principals.iter().map(principal_need));
    Need::best(perm, princ)
}

/// Policy positions (ascending) per key.
type Ids = Vec<u32>;

/// Path prefixes of one length, keyed by their bytes.
type PrefixGroup = (usize, HashMap<Box<[u8]>, Ids>);

/// Source ranges of one family (`true`: IPv4) and prefix length, keyed by masked address.
type SourceGroup = (bool, u8, HashMap<u128, Ids>);

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Policies without a usable condition: always evaluated.
    always: Ids,
    exact: HashMap<Box<str>, Ids>,
    /// Path prefixes grouped by length: one lookup per distinct length.
    prefixes: Vec<PrefixGroup>,
    headers: HashMap<HeaderName, Ids>,
    /// Source ranges grouped by family and prefix length, keyed by the masked address.
    sources: Vec<SourceGroup>,
}

fn masked(v4: bool, len: u8, ip: IpAddr) -> Option<u128> {
    let (bits, width) = match (v4, ip) {
        (true, IpAddr::V4(a)) => (u128::from(u32::from(a)), 32),
        (true, IpAddr::V6(a)) => (u128::from(u32::from(a.to_ipv4_mapped()?)), 32),
        (false, IpAddr::V6(a)) => (u128::from(a), 128),
        (false, IpAddr::V4(_)) => return None,
    };
    let keep = u32::from(len);
    let mask = if keep == 0 {
        0
    } else {
        (u128::MAX >> (128 - keep)) << (width - keep)
    };
    Some(bits & mask)
}

impl Index {
    pub(super) fn build(policies: &[Policy]) -> Index {
        let mut ix = Index::default();
        for (i, p) in policies.iter().enumerate() {
            let i = i as u32;
            let add = |v: &mut Ids| {
                if v.last() != Some(&i) {
                    v.push(i);
                }
            };
            match policy_need(p) {
                None => ix.always.push(i),
                Some(Need::Paths(paths)) => {
                    for (prefix, s) in paths {
                        if !prefix {
                            add(ix.exact.entry(s).or_default());
                            continue;
                        }
                        let len = s.len();
                        let at = match ix.prefixes.iter().position(|(l, _)| *l == len) {
                            Some(at) => at,
                            None => {
                                ix.prefixes.push((len, HashMap::default()));
                                ix.prefixes.len() - 1
                            }
                        };
                        let key: Box<[u8]> = s.as_bytes().into();
                        add(ix.prefixes[at].1.entry(key).or_default());
                    }
                }
                Some(Need::Header(h)) => add(ix.headers.entry(h).or_default()),
                Some(Need::Sources(cidrs)) => {
                    for c in cidrs {
                        let v4 = c.addr.is_ipv4();
                        let Some(key) = masked(v4, c.len, c.addr) else {
                            continue;
                        };
                        let at = match ix
                            .sources
                            .iter()
                            .position(|(f, l, _)| *f == v4 && *l == c.len)
                        {
                            Some(at) => at,
                            None => {
                                ix.sources.push((v4, c.len, HashMap::default()));
                                ix.sources.len() - 1
                            }
                        };
                        add(ix.sources[at].2.entry(key).or_default());
                    }
                }
            }
        }
        ix
    }

    /// How many policies are evaluated on every request (not indexed).
    #[cfg(test)]
    pub(super) fn unindexed(&self) -> usize {
        self.always.len()
    }

    /// The position of the first policy (in order) that matches.
    pub(super) fn first_match(&self, policies: &[Policy], s: &Subject<'_>) -> Option<usize> {
        let mut best = u32::MAX;
        let mut scan = |ids: &[u32]| {
            for &i in ids {
                if i >= best {
                    break;
                }
                if policies[i as usize].matches(s) {
                    best = i;
                    break;
                }
            }
        };
        scan(&self.always);
        if let Some(r) = s.request {
            if let Some(ids) = self.exact.get(r.path) {
                scan(ids);
            }
            let bytes = r.path.as_bytes();
            for (len, map) in &self.prefixes {
                if let Some(ids) = bytes.get(..*len).and_then(|k| map.get(k)) {
                    scan(ids);
                }
            }
            if !self.headers.is_empty() {
                if self.headers.len() <= r.headers.keys_len() {
                    for (name, ids) in &self.headers {
                        if r.headers.contains_key(name) {
                            scan(ids);
                        }
                    }
                } else {
                    for name in r.headers.keys() {
                        if let Some(ids) = self.headers.get(name) {
                            scan(ids);
                        }
                    }
                }
            }
        }
        let ip = s.source.ip();
        for (v4, len, map) in &self.sources {
            if let Some(ids) = masked(*v4, *len, ip).and_then(|k| map.get(&k)) {
                scan(ids);
            }
        }
        (best != u32::MAX).then_some(best as usize)
    }
}
