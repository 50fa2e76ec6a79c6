//! Route tables for the hot path: virtual host lookup by authority (Envoy domain semantics) and
//! first-match route selection. Built once from an RDS `RouteConfiguration`; protobuf types never
//! reach the request path. Owns matching only: it does not forward, rewrite or balance (what a
//! route does besides choosing a cluster is compiled in `route/policy.rs`).

pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as xroute;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use http::{HeaderMap, HeaderName, Method};
use regex::bytes::{Regex, RegexBuilder};
use xroute::header_matcher::HeaderMatchSpecifier;
use xroute::query_parameter_matcher::QueryParameterMatchSpecifier;
use xroute::route_action::ClusterSpecifier;
use xroute::route_match::PathSpecifier;

use super::cluster::Cluster;
use super::retry::RetryPolicy;
use super::{RuntimeError, istio_string};
use policy::RoutePolicy;

/// One compiled `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteTable {
    pub name: Arc<str>,
    pub virtual_hosts: Vec<VirtualHost>,
    exact: HashMap<Box<str>, usize>,
    /// `*.suffix` (stored without the `*`), longest first.
    suffixes: Vec<(Box<str>, usize)>,
    /// `prefix.*` (stored without the `*`), longest first.
    prefixes: Vec<(Box<str>, usize)>,
    catch_all: Option<usize>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: Arc<str>,
    pub routes: Vec<Route>,
    /// `include_request_attempt_count`: send `x-envoy-attempt-count` upstream.
    pub attempt_count: bool,
    /// `require_tls` (ALL or EXTERNAL_ONLY): a plaintext request gets a 301 to https.
    pub require_tls: bool,
}

#[derive(Debug)]
pub struct Route {
    /// The xDS route name (Istio's route name), or empty.
    pub name: Arc<str>,
    /// `metadata.filter_metadata["istio"].name` when present, else the route name.
    pub istio_name: Arc<str>,
    pub matcher: RouteMatcher,
    pub action: RouteAction,
    /// Upstream timeout; `None` means no route timeout.
    pub timeout: Option<Duration>,
    /// `route.hash_policy`, for RING_HASH / MAGLEV clusters.
    pub hash_policy: Vec<super::hash::HashPolicy>,
    /// Retries (`retry_policy`); `None` means a single attempt.
    pub retry: Option<Box<RetryPolicy>>,
    /// Redirect, direct response, rewrites, headers, mirrors, fault, CORS; `None` when the
    /// route only forwards. A redirect / direct response route has no cluster
    /// (`action` is then an unresolved, empty `ClusterRef` that is never used).
    pub policy: Option<Box<RoutePolicy>>,
}

#[derive(Debug)]
pub struct RouteMatcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(Box<str>),
    Exact(Box<str>),
    SeparatedPrefix(Box<str>),
    Regex(Regex),
}

/// One compiled `HeaderMatcher` (route matches, retriable request headers).
#[derive(Debug)]
pub struct HeaderMatch {
    target: HeaderTarget,
    spec: ValueMatch,
    invert: bool,
}

#[derive(Debug)]
enum HeaderTarget {
    Method,
    Authority,
    Path,
    Scheme,
    Header(HeaderName),
}

#[derive(Debug)]
struct QueryMatch {
    name: Box<str>,
    spec: ValueMatch,
}

#[derive(Debug)]
enum ValueMatch {
    Present(bool),
    String(StringMatch),
}

#[derive(Debug)]
pub struct StringMatch {
    kind: StringKind,
    ignore_case: bool,
}

#[derive(Debug)]
enum StringKind {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    Regex(Regex),
}

/// Where a matched request goes.
#[derive(Debug)]
pub enum RouteAction {
    Cluster(ClusterRef),
    /// Cumulative weights: pick `r` in `0..total`, first entry whose bound is `> r`.
    Weighted {
        clusters: Vec<(u64, ClusterRef)>,
        total: u64,
    },
}

/// A cluster by name, resolved at compile time (`None` when the snapshot has no such cluster).
#[derive(Debug, Clone)]
pub struct ClusterRef {
    pub name: Arc<str>,
    pub cluster: Option<Arc<Cluster>>,
}

/// What route matching looks at; built once per request from the request head.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

impl RouteTable {
    pub fn compile(
        rc: &xroute::RouteConfiguration,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
    ) -> Result<RouteTable, RuntimeError> {
        let err = |field: String, reason: String| RuntimeError::Route {
            name: rc.name.clone(),
            field,
            reason,
        };
        let mut table = RouteTable {
            name: rc.name.as_str().into(),
            virtual_hosts: Vec::with_capacity(rc.virtual_hosts.len()),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            catch_all: None,
        };
        for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
            for (di, domain) in vh.domains.iter().enumerate() {
                let d = domain.to_ascii_lowercase();
                let field = format!("virtual_hosts[{vi}].domains[{di}]");
                if d == "*" {
                    table.catch_all.get_or_insert(vi);
                } else if let Some(s) = d.strip_prefix('*') {
                    if s.contains('*') {
                        return Err(err(
                            field,
                            format!("domain {domain:?} has more than one '*'"),
                        ));
                    }
                    table.suffixes.push((s.into(), vi));
                } else if let Some(p) = d.strip_suffix('*') {
                    if p.contains('*') {
                        return Err(err(
                            field,
                            format!("domain {domain:?} has more than one '*'"),
                        ));
                    }
                    table.prefixes.push((p.into(), vi));
                } else if d.contains('*') || d.is_empty() {
                    return Err(err(
                        field,
                        format!("domain {domain:?} is not a valid domain"),
                    ));
                } else if table.exact.insert(d.into(), vi).is_some() {
                    return Err(err(field, format!("domain {domain:?} appears twice")));
                }
            }
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (ri, r) in vh.routes.iter().enumerate() {
                let at = |f: &str| format!("virtual_hosts[{vi}].routes[{ri}]{f}");
                routes.push(Route::compile(r, clusters, &at).map_err(|(f, why)| err(f, why))?);
            }
            table.virtual_hosts.push(VirtualHost {
                name: vh.name.as_str().into(),
                routes,
                attempt_count: vh.include_request_attempt_count,
                require_tls: vh.require_tls != 0,
            });
        }
        // Longest suffix/prefix wins, as Envoy does.
        table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        table.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(table)
    }

    /// Envoy semantics: the full authority first (exact, `*.suffix`, `prefix.*`), then the
    /// authority without its port, then `*`.
    pub fn find_virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let lowered;
        let host = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = authority.to_ascii_lowercase();
            lowered.as_str()
        } else {
            authority
        };
        let idx = self
            .find_named(host)
            .or_else(|| strip_port(host).and_then(|h| self.find_named(h)))
            .or(self.catch_all)?;
        self.virtual_hosts.get(idx)
    }

    fn find_named(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        for (s, i) in &self.suffixes {
            if host.len() > s.len() && host.ends_with(&**s) {
                return Some(*i);
            }
        }
        for (p, i) in &self.prefixes {
            if host.len() > p.len() && host.starts_with(&**p) {
                return Some(*i);
            }
        }
        None
    }
}

/// `host:port` → `host`; IPv6 literals keep their brackets. `None` when there is no port.
pub fn strip_port(authority: &str) -> Option<&str> {
    let (host, port) = authority.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if host.starts_with('[') && !host.ends_with(']') {
        return None;
    }
    Some(host)
}

impl VirtualHost {
    /// First matching route wins.
    pub fn find_route(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

type FieldError = (String, String);

impl Route {
    fn compile(
        r: &xroute::Route,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
        at: &dyn Fn(&str) -> String,
    ) -> Result<Route, FieldError> {
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| (at(".match"), "missing".to_string()))?;
        let matcher = RouteMatcher::compile(m, at)?;
        let prefix = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p) | PathSpecifier::Path(p)) => Some(p.as_str()),
            _ => None,
        };
        let policy = RoutePolicy::compile(r, prefix, clusters, at)?.map(Box::new);
        let resolve = |name: &str| ClusterRef {
            name: name.into(),
            cluster: clusters.get(name).cloned(),
        };
        let action = match &r.action {
            Some(xroute::route::Action::Route(a)) => a,
            Some(xroute::route::Action::Redirect(_) | xroute::route::Action::DirectResponse(_)) => {
                return Ok(Route {
                    name: r.name.as_str().into(),
                    istio_name: istio_name(r).into(),
                    matcher,
                    action: RouteAction::Cluster(resolve("")),
                    timeout: None,
                    hash_policy: Vec::new(),
                    retry: None,
                    policy,
                });
            }
            _ => return Err((at(".action"), "missing or unsupported route action".into())),
        };
        let compiled = match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => RouteAction::Cluster(resolve(c)),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                let mut total = 0u64;
                let mut out = Vec::with_capacity(w.clusters.len());
                for (i, c) in w.clusters.iter().enumerate() {
                    let weight = c.weight.as_ref().map_or(0, |v| v.value);
                    if weight == 0 {
                        continue;
                    }
                    if c.name.is_empty() {
                        let f = at(&format!(".route.weighted_clusters.clusters[{i}].name"));
                        return Err((f, "empty cluster name".into()));
                    }
                    total += u64::from(weight);
                    out.push((total, resolve(&c.name)));
                }
                if total == 0 {
                    let f = at(".route.weighted_clusters");
                    return Err((f, "weights sum to zero".into()));
                }
                RouteAction::Weighted {
                    clusters: out,
                    total,
                }
            }
            _ => {
                let f = at(".route.cluster_specifier");
                return Err((f, "only cluster and weighted_clusters are supported".into()));
            }
        };
        let timeout = action
            .timeout
            .as_ref()
            .map(super::duration)
            .filter(|d| !d.is_zero());
        let retry = match &action.retry_policy {
            Some(p) => Some(Box::new(
                RetryPolicy::compile(p).map_err(|why| (at(".route.retry_policy"), why))?,
            )),
            None => None,
        };
        let hash_policy = super::hash::HashPolicy::compile(&action.hash_policy)
            .map_err(|why| (at(".route"), why))?;
        Ok(Route {
            name: r.name.as_str().into(),
            istio_name: istio_name(r).into(),
            matcher,
            action: compiled,
            timeout,
            hash_policy,
            retry,
            policy,
        })
    }
}

/// `metadata.filter_metadata["istio"].name` when present, else the route name.
fn istio_name(r: &xroute::Route) -> &str {
    r.metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| istio_string(s, "name"))
        .unwrap_or(&r.name)
}

impl RouteAction {
    /// The cluster for this request (weighted: a random pick by weight).
    pub fn pick(&self) -> &ClusterRef {
        match self {
            RouteAction::Cluster(c) => c,
            RouteAction::Weighted { clusters, total } => {
                let r = fastrand::u64(..*total);
                let i = clusters.partition_point(|(bound, _)| *bound <= r);
                // `partition_point` < len because the last bound == total > r.
                &clusters[i.min(clusters.len() - 1)].1
            }
        }
    }
}

impl RouteMatcher {
    fn compile(m: &xroute::RouteMatch, at: &dyn Fn(&str) -> String) -> Result<Self, FieldError> {
        let case_sensitive = m.case_sensitive.as_ref().is_none_or(|v| v.value);
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.as_str().into()),
            Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.as_str().into()),
            Some(PathSpecifier::PathSeparatedPrefix(p)) => {
                PathMatch::SeparatedPrefix(p.trim_end_matches('/').into())
            }
            Some(PathSpecifier::SafeRegex(r)) => {
                let re = full_regex(&r.regex, !case_sensitive)
                    .map_err(|e| (at(".match.safe_regex.regex"), e))?;
                PathMatch::Regex(re)
            }
            None => return Err((at(".match.path_specifier"), "missing".into())),
            Some(_) => {
                let f = at(".match.path_specifier");
                return Err((f, "only prefix, path and safe_regex are supported".into()));
            }
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for (i, h) in m.headers.iter().enumerate() {
            let f = at(&format!(".match.headers[{i}]"));
            headers.push(HeaderMatch::compile(h).map_err(|why| (f, why))?);
        }
        let mut query = Vec::with_capacity(m.query_parameters.len());
        for (i, q) in m.query_parameters.iter().enumerate() {
            let f = at(&format!(".match.query_parameters[{i}]"));
            let spec = match &q.query_parameter_match_specifier {
                Some(QueryParameterMatchSpecifier::PresentMatch(p)) => ValueMatch::Present(*p),
                Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                    ValueMatch::String(StringMatch::compile(s).map_err(|why| (f, why))?)
                }
                None => ValueMatch::Present(true),
            };
            query.push(QueryMatch {
                name: q.name.as_str().into(),
                spec,
            });
        }
        Ok(RouteMatcher {
            path,
            case_sensitive,
            headers,
            query,
        })
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path_matches(req.path)
            && self.headers.iter().all(|h| h.matches(req))
            && (self.query.is_empty() || self.query_matches(req.query.unwrap_or("")))
    }

    fn path_matches(&self, path: &str) -> bool {
        let cs = self.case_sensitive;
        match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, cs),
            PathMatch::Exact(p) => {
                if cs {
                    path == &**p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, cs)
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path.as_bytes()),
        }
    }

    fn query_matches(&self, query: &str) -> bool {
        self.query.iter().all(|q| {
            let value = query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == &*q.name).then_some(v)
            });
            match (&q.spec, value) {
                (ValueMatch::Present(p), v) => *p == v.is_some(),
                (ValueMatch::String(s), Some(v)) => s.matches(v),
                (ValueMatch::String(_), None) => false,
            }
        })
    }
}

impl HeaderMatch {
    pub(crate) fn compile(h: &xroute::HeaderMatcher) -> Result<Self, String> {
        let target = match h.name.as_str() {
            ":method" => HeaderTarget::Method,
            ":authority" | "host" => HeaderTarget::Authority,
            ":path" => HeaderTarget::Path,
            ":scheme" => HeaderTarget::Scheme,
            name => HeaderTarget::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("invalid header name {name:?}"))?,
            ),
        };
        #[allow(deprecated)]
        let spec = match &h.header_match_specifier {
            None => ValueMatch::Present(true),
            Some(HeaderMatchSpecifier::PresentMatch(p)) => ValueMatch::Present(*p),
            Some(HeaderMatchSpecifier::StringMatch(s)) => {
                ValueMatch::String(StringMatch::compile(s)?)
            }
            Some(HeaderMatchSpecifier::ExactMatch(s)) => {
                ValueMatch::String(StringMatch::new(StringKind::Exact(s.as_str().into())))
            }
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => {
                ValueMatch::String(StringMatch::new(StringKind::Prefix(s.as_str().into())))
            }
            Some(HeaderMatchSpecifier::SuffixMatch(s)) => {
                ValueMatch::String(StringMatch::new(StringKind::Suffix(s.as_str().into())))
            }
            Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
                ValueMatch::String(StringMatch::new(StringKind::Contains(s.as_str().into())))
            }
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => ValueMatch::String(StringMatch::new(
                StringKind::Regex(full_regex(&r.regex, false)?),
            )),
            Some(HeaderMatchSpecifier::RangeMatch(_)) => {
                return Err("range_match is not supported".into());
            }
        };
        Ok(HeaderMatch {
            target,
            spec,
            invert: h.invert_match,
        })
    }

    /// The header that must be present for this matcher to match (`None` for pseudo-headers,
    /// inverted matchers and `present_match: false`).
    pub(crate) fn required_header(&self) -> Option<&HeaderName> {
        match (&self.target, &self.spec, self.invert) {
            (
                HeaderTarget::Header(name),
                ValueMatch::String(_) | ValueMatch::Present(true),
                false,
            ) => Some(name),
            _ => None,
        }
    }

    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        let joined;
        let value: Option<&str> = match &self.target {
            HeaderTarget::Method => Some(req.method.as_str()),
            HeaderTarget::Authority => Some(req.authority),
            HeaderTarget::Path => Some(req.path),
            HeaderTarget::Scheme => Some(req.scheme),
            HeaderTarget::Header(name) => {
                let mut values = req.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => None,
                    // A value that is not visible ASCII never matches a string matcher.
                    (Some(v), None) => Some(v.to_str().unwrap_or("\u{0}")),
                    (Some(_), Some(_)) => {
                        // Envoy joins repeated headers with ','.
                        let all: Vec<&str> = req
                            .headers
                            .get_all(name)
                            .iter()
                            .map(|v| v.to_str().unwrap_or("\u{0}"))
                            .collect();
                        joined = all.join(",");
                        Some(joined.as_str())
                    }
                }
            }
        };
        let hit = match (&self.spec, value) {
            (ValueMatch::Present(p), v) => *p == v.is_some(),
            (ValueMatch::String(s), Some(v)) => s.matches(v),
            (ValueMatch::String(_), None) => false,
        };
        hit != self.invert
    }
}

impl StringMatch {
    /// The exact value (`false`) or prefix (`true`) this matcher requires, when it is a
    /// case-sensitive exact or prefix matcher (what an index can key on).
    pub(crate) fn literal(&self) -> Option<(bool, &str)> {
        match (&self.kind, self.ignore_case) {
            (StringKind::Exact(s), false) => Some((false, s)),
            (StringKind::Prefix(s), false) => Some((true, s)),
            _ => None,
        }
    }

    /// `self.matches(prefix + v)`, without building the joined string for case-sensitive
    /// exact, prefix and suffix matchers.
    pub(crate) fn matches_prefixed(&self, prefix: &str, v: &str) -> bool {
        if self.ignore_case {
            return self.matches(&format!("{prefix}{v}"));
        }
        match &self.kind {
            StringKind::Exact(s) => s.strip_prefix(prefix).is_some_and(|rest| rest == v),
            StringKind::Prefix(s) => match s.strip_prefix(prefix) {
                Some(rest) => v.starts_with(rest),
                None => prefix.starts_with(&**s),
            },
            StringKind::Suffix(s) => {
                if v.len() >= s.len() {
                    v.ends_with(&**s)
                } else {
                    s.strip_suffix(v).is_some_and(|head| prefix.ends_with(head))
                }
            }
            _ => self.matches(&format!("{prefix}{v}")),
        }
    }
    fn new(kind: StringKind) -> Self {
        StringMatch {
            kind,
            ignore_case: false,
        }
    }

    pub fn compile(s: &StringMatcher) -> Result<Self, String> {
        let ic = s.ignore_case;
        let lower = |v: &str| -> Box<str> {
            if ic {
                v.to_ascii_lowercase().into()
            } else {
                v.into()
            }
        };
        let kind = match &s.match_pattern {
            Some(MatchPattern::Exact(v)) => StringKind::Exact(lower(v)),
            Some(MatchPattern::Prefix(v)) => StringKind::Prefix(lower(v)),
            Some(MatchPattern::Suffix(v)) => StringKind::Suffix(lower(v)),
            Some(MatchPattern::Contains(v)) => StringKind::Contains(lower(v)),
            Some(MatchPattern::SafeRegex(r)) => StringKind::Regex(full_regex(&r.regex, ic)?),
            Some(MatchPattern::Custom(_)) => {
                return Err("custom string matchers are not supported".into());
            }
            None => return Err("string_match has no pattern".into()),
        };
        Ok(StringMatch {
            kind,
            ignore_case: ic,
        })
    }

    pub fn matches(&self, v: &str) -> bool {
        let lowered;
        let v = if self.ignore_case && !matches!(self.kind, StringKind::Regex(_)) {
            lowered = v.to_ascii_lowercase();
            lowered.as_str()
        } else {
            v
        };
        match &self.kind {
            StringKind::Exact(s) => v == &**s,
            StringKind::Prefix(s) => v.starts_with(&**s),
            StringKind::Suffix(s) => v.ends_with(&**s),
            StringKind::Contains(s) => v.contains(&**s),
            StringKind::Regex(re) => re.is_match(v.as_bytes()),
        }
    }
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// RE2-style full match: the whole value must match. Byte-oriented with ASCII case folding
/// (`(?i)` works without Unicode case tables, which the workspace's `regex` build leaves out).
fn full_regex(re: &str, ignore_case: bool) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{re})$"))
        .unicode(false)
        .case_insensitive(ignore_case)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex {re:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost as XVh};

    fn table(hosts: &[(&str, &[&str])]) -> RouteTable {
        let rc = RouteConfiguration {
            name: "t".into(),
            virtual_hosts: hosts
                .iter()
                .map(|(n, d)| XVh {
                    name: (*n).into(),
                    domains: d.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        match RouteTable::compile(&rc, &HashMap::new()) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn vh<'a>(t: &'a RouteTable, a: &str) -> Option<&'a str> {
        t.find_virtual_host(a).map(|v| &*v.name)
    }

    #[test]
    fn domain_lookup_follows_envoy() {
        let t = table(&[
            ("exact", &["foo.example.com", "foo.example.com:8080"]),
            ("wild", &["*.example.com"]),
            ("wilder", &["*.b.example.com"]),
            ("pre", &["api.*"]),
            ("any", &["*"]),
        ]);
        assert_eq!(vh(&t, "foo.example.com"), Some("exact"));
        assert_eq!(vh(&t, "FOO.example.com"), Some("exact"));
        assert_eq!(vh(&t, "foo.example.com:8080"), Some("exact"));
        assert_eq!(
            vh(&t, "foo.example.com:9999"),
            Some("exact"),
            "port stripped"
        );
        assert_eq!(vh(&t, "x.example.com"), Some("wild"));
        assert_eq!(
            vh(&t, "x.b.example.com"),
            Some("wilder"),
            "longest suffix first"
        );
        assert_eq!(vh(&t, "x.b.example.com:80"), Some("wilder"));
        assert_eq!(vh(&t, "api.other"), Some("pre"));
        assert_eq!(vh(&t, "example.com"), Some("any"));
        assert_eq!(
            vh(&t, ".example.com"),
            Some("any"),
            "wildcard needs one char"
        );
    }

    #[test]
    fn no_catch_all_means_none() {
        let t = table(&[("a", &["a", "a:80"])]);
        assert_eq!(vh(&t, "b"), None);
        assert_eq!(vh(&t, "a:81"), Some("a"));
        assert_eq!(vh(&t, "[::1]:80"), None);
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("[::1]"), None);
        assert_eq!(strip_port("a:b"), None);
        assert_eq!(strip_port("a:"), None);
    }

    #[test]
    fn duplicate_domain_is_rejected_with_its_path() {
        let rc = RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![
                XVh {
                    name: "a".into(),
                    domains: vec!["x".into()],
                    ..Default::default()
                },
                XVh {
                    name: "b".into(),
                    domains: vec!["x".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let e = RouteTable::compile(&rc, &HashMap::new())
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.contains("virtual_hosts[1].domains[0]") && e.contains("\"80\""),
            "{e}"
        );
    }

    #[test]
    fn string_match_kinds() {
        let m = |p: MatchPattern, ic: bool| {
            StringMatch::compile(&StringMatcher {
                match_pattern: Some(p),
                ignore_case: ic,
            })
            .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(m(MatchPattern::Exact("Ab".into()), true).matches("aB"));
        assert!(!m(MatchPattern::Exact("Ab".into()), false).matches("aB"));
        assert!(m(MatchPattern::Prefix("ab".into()), false).matches("abc"));
        assert!(m(MatchPattern::Suffix("bc".into()), false).matches("abc"));
        assert!(m(MatchPattern::Contains("b".into()), false).matches("abc"));
        let re = envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
            regex: "a.c".into(),
            ..Default::default()
        };
        assert!(m(MatchPattern::SafeRegex(re.clone()), false).matches("abc"));
        assert!(
            !m(MatchPattern::SafeRegex(re), false).matches("abcd"),
            "full match"
        );
    }
}
