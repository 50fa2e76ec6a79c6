//! `HTTPRoute` and `GRPCRoute` rules -> Istio `VirtualService` `http[]` entries, one per match,
//! with the sort key of the Gateway API's match precedence. The entries then go through the
//! same route compiler (`route.rs`, `route/actions.rs`) as a hand-written VirtualService.
//!
//! Translation, as Istio's own Gateway API controller does it:
//! - `PathPrefix /foo` matches whole path segments: it becomes two matches, `exact: /foo` and
//!   `prefix: /foo/`, so that `/foobar` does not match; `ReplacePrefixMatch` then is a
//!   `rewrite.uri` on each half. `ReplaceFullPath` is a `uriRegexRewrite` of the whole path.
//! - header and query matches are `exact`/`regex` StringMatches; `method` an exact `:method`.
//! - a GRPCRoute method match is a path match on `/<service>/<method>`.
//! - backendRefs that resolve become weighted destinations; when none does (or all weights are
//!   0) the rule answers 500, as the spec requires.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use trellis_config::gateway_api::{
    BackendRef, GrpcRoute, GrpcRouteMatch, HttpHeaderFilter, HttpHeaderMatch, HttpPathModifier,
    HttpRoute, HttpRouteFilter, HttpRouteMatch, HttpRouteRule,
};
use trellis_config::{
    Destination, Duration, HeaderOperations, Headers, HttpDirectResponse, HttpMatchRequest,
    HttpMirrorPolicy, HttpRedirect, HttpRetry, HttpRewrite, HttpRouteDestination, Percent,
    PortSelector, RedirectPortSelection, RegexRewrite, Registry, Resource, Snapshot, StringMatch,
};

use super::attach::{RouteKind, resolve_backend};

/// One Istio `http[]` entry and where it sorts among every entry of its host.
#[derive(Debug, Clone)]
pub struct Entry {
    pub order: Order,
    pub http: trellis_config::HttpRoute,
}

/// Gateway API precedence: exact paths, then regexes, then the longest prefix; then a method
/// match; then most header matches; then most query matches; then the oldest route, then
/// `namespace/name`, then rule and match order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    path_rank: u8,
    path_len: Reverse<usize>,
    method: Reverse<bool>,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    created: String,
    route: String,
    rule: usize,
    index: usize,
}

/// One half of a translated path match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Path {
    Exact(String),
    /// Ends with `/`.
    Prefix(String),
    Regex(String),
}

/// What the rules of a route need besides the rules.
pub struct Source<'a> {
    pub snapshot: &'a Snapshot,
    pub registry: &'a Registry,
    /// A mesh parentRef's port: each entry matches only that port.
    pub port: Option<u32>,
}

/// Every entry of an HTTPRoute.
pub fn http_entries(src: &Source<'_>, r: &Resource<HttpRoute>) -> Vec<Entry> {
    let mut out = Vec::new();
    for (ri, rule) in r.spec.rules.iter().enumerate() {
        let base = action(src, RouteKind::Http, r, ri, rule_parts(rule));
        let default = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default[..]
        } else {
            &rule.matches
        };
        for m in matches {
            let (paths, rank, len) = path_match(m);
            let common = HttpMatchRequest {
                headers: header_matches(&m.headers, true),
                query_params: header_matches(&m.query_params, false),
                method: m.method.clone().map(exact),
                port: src.port,
                ..Default::default()
            };
            for path in paths {
                let mut http = base.clone();
                let mut im = common.clone();
                im.uri = Some(match &path {
                    Path::Exact(p) => exact(p.clone()),
                    Path::Prefix(p) => StringMatch {
                        prefix: Some(p.clone()),
                        ..Default::default()
                    },
                    Path::Regex(p) => StringMatch {
                        regex: Some(p.clone()),
                        ..Default::default()
                    },
                });
                prefix_rewrite(&mut http, &rule.filters, &path);
                http.matches = vec![im];
                let index = out.len();
                out.push(Entry {
                    order: Order {
                        path_rank: rank,
                        path_len: Reverse(len),
                        method: Reverse(m.method.is_some()),
                        headers: Reverse(m.headers.len()),
                        query: Reverse(m.query_params.len()),
                        created: created(r),
                        route: r.key(),
                        rule: ri,
                        index,
                    },
                    http,
                });
            }
        }
    }
    out
}

/// Every entry of a GRPCRoute.
pub fn grpc_entries(src: &Source<'_>, r: &Resource<GrpcRoute>) -> Vec<Entry> {
    let mut out = Vec::new();
    for (ri, rule) in r.spec.rules.iter().enumerate() {
        let parts = RuleParts {
            filters: &rule.filters,
            backends: &rule.backend_refs,
            timeout: None,
            backend_timeout: None,
            retry: None,
        };
        let base = action(src, RouteKind::Grpc, r, ri, parts);
        let default = [GrpcRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default[..]
        } else {
            &rule.matches
        };
        for (mi, m) in matches.iter().enumerate() {
            let (uri, rank) = grpc_path(m);
            let mut http = base.clone();
            http.matches = vec![HttpMatchRequest {
                uri: Some(uri),
                headers: header_matches(&m.headers, true),
                port: src.port,
                ..Default::default()
            }];
            out.push(Entry {
                order: Order {
                    path_rank: rank,
                    path_len: Reverse(0),
                    method: Reverse(false),
                    headers: Reverse(m.headers.len()),
                    query: Reverse(0),
                    created: created(r),
                    route: r.key(),
                    rule: ri,
                    index: mi,
                },
                http,
            });
        }
    }
    out
}

fn created<T>(r: &Resource<T>) -> String {
    r.meta.creation_timestamp.clone().unwrap_or_default()
}

/// The parts of a rule that make its action.
struct RuleParts<'a> {
    filters: &'a [HttpRouteFilter],
    backends: &'a [BackendRef],
    timeout: Option<&'a Duration>,
    backend_timeout: Option<&'a Duration>,
    retry: Option<&'a trellis_config::gateway_api::HttpRouteRetry>,
}

fn rule_parts(rule: &HttpRouteRule) -> RuleParts<'_> {
    RuleParts {
        filters: &rule.filters,
        backends: &rule.backend_refs,
        timeout: rule.timeouts.as_ref().and_then(|t| t.request.as_ref()),
        backend_timeout: rule
            .timeouts
            .as_ref()
            .and_then(|t| t.backend_request.as_ref()),
        retry: rule.retry.as_ref(),
    }
}

/// The Istio entry of a rule, without its match: redirect, or destinations (500 when none
/// resolves), header modifiers, host rewrite, mirrors, timeout and retries.
fn action<T>(
    src: &Source<'_>,
    kind: RouteKind,
    r: &Resource<T>,
    rule: usize,
    parts: RuleParts<'_>,
) -> trellis_config::HttpRoute {
    let ns = r.meta.namespace.as_str();
    let mut http = trellis_config::HttpRoute {
        name: format!("{}.{}.{rule}", r.meta.namespace, r.meta.name),
        ..Default::default()
    };
    let mut headers = Headers::default();
    for f in parts.filters {
        if let Some(h) = &f.request_header_modifier {
            headers.request = Some(operations(h));
        }
        if let Some(h) = &f.response_header_modifier {
            headers.response = Some(operations(h));
        }
        if let Some(m) = &f.request_mirror
            && let Ok(b) = resolve_backend(src.snapshot, src.registry, kind, ns, &m.backend_ref)
        {
            let value = match (&m.fraction, m.percent) {
                (Some(f), _) => {
                    100.0 * f64::from(f.numerator) / f64::from(f.denominator.unwrap_or(100).max(1))
                }
                (None, Some(p)) => f64::from(p),
                (None, None) => 100.0,
            };
            http.mirrors.push(HttpMirrorPolicy {
                destination: destination(b.host, b.port),
                percentage: Some(Percent { value }),
            });
        }
        if let Some(rw) = &f.url_rewrite {
            let mut rewrite = HttpRewrite {
                authority: rw.hostname.clone().unwrap_or_default(),
                ..Default::default()
            };
            if let Some(HttpPathModifier {
                replace_full_path: Some(p),
                ..
            }) = &rw.path
            {
                rewrite.uri_regex_rewrite = Some(RegexRewrite {
                    pattern: "^.*$".into(),
                    rewrite: p.clone(),
                });
            }
            http.rewrite = Some(rewrite);
        }
        if let Some(rd) = &f.request_redirect {
            http.redirect = Some(HttpRedirect {
                uri: rd
                    .path
                    .as_ref()
                    .and_then(|p| p.replace_full_path.clone())
                    .unwrap_or_default(),
                authority: rd.hostname.clone().unwrap_or_default(),
                port: rd.port,
                // No port and no scheme: the listener's port (the spec's rule); a scheme alone
                // implies its well-known port.
                derive_port: (rd.port.is_none() && rd.scheme.is_none())
                    .then_some(RedirectPortSelection::FromRequestPort),
                scheme: rd.scheme.clone().unwrap_or_default(),
                redirect_code: Some(rd.status_code.unwrap_or(302)),
            });
        }
    }
    if headers.request.is_some() || headers.response.is_some() {
        http.headers = Some(headers);
    }
    if http.redirect.is_some() {
        return http;
    }
    for b in parts.backends {
        let Ok(resolved) = resolve_backend(src.snapshot, src.registry, kind, ns, b) else {
            continue;
        };
        let weight = b.weight();
        if weight <= 0 {
            continue;
        }
        let mut d = HttpRouteDestination {
            destination: destination(resolved.host, resolved.port),
            weight: i32::try_from(weight).unwrap_or(i32::MAX),
            headers: None,
        };
        let mut h = Headers::default();
        for f in &b.filters {
            if let Some(m) = &f.request_header_modifier {
                h.request = Some(operations(m));
            }
            if let Some(m) = &f.response_header_modifier {
                h.response = Some(operations(m));
            }
        }
        if h.request.is_some() || h.response.is_some() {
            d.headers = Some(h);
        }
        http.route.push(d);
    }
    if http.route.is_empty() {
        http.mirrors.clear();
        http.rewrite = None;
        http.direct_response = Some(HttpDirectResponse {
            status: 500,
            body: None,
        });
        return http;
    }
    http.timeout = parts.timeout.cloned();
    http.retries = retries(parts.retry, parts.backend_timeout);
    http
}

fn retries(
    retry: Option<&trellis_config::gateway_api::HttpRouteRetry>,
    backend_timeout: Option<&Duration>,
) -> Option<HttpRetry> {
    if retry.is_none() && backend_timeout.is_none() {
        return None;
    }
    let mut out = HttpRetry {
        attempts: 2,
        per_try_timeout: backend_timeout.cloned(),
        ..Default::default()
    };
    if let Some(r) = retry {
        out.attempts = r
            .attempts
            .map_or(2, |a| i32::try_from(a).unwrap_or(i32::MAX));
        out.backoff = r.backoff.clone();
        if !r.codes.is_empty() {
            let mut on: Vec<String> = r.codes.iter().map(u32::to_string).collect();
            on.push("connect-failure".into());
            on.push("refused-stream".into());
            out.retry_on = on.join(",");
        }
    }
    Some(out)
}

/// `ReplacePrefixMatch`: the matched prefix (or the whole exact path) becomes the replacement;
/// on the `prefix: /foo/` half the trailing `/` is kept.
fn prefix_rewrite(http: &mut trellis_config::HttpRoute, filters: &[HttpRouteFilter], path: &Path) {
    let Some(rw) = http.rewrite.as_mut() else {
        return;
    };
    let Some(replacement) = filters
        .iter()
        .filter_map(|f| {
            f.url_rewrite
                .as_ref()?
                .path
                .as_ref()?
                .replace_prefix_match
                .as_ref()
        })
        .next()
    else {
        return;
    };
    rw.uri = match path {
        Path::Exact(_) => replacement.clone(),
        Path::Prefix(_) if replacement.ends_with('/') => replacement.clone(),
        Path::Prefix(_) => format!("{replacement}/"),
        Path::Regex(_) => return,
    };
}

/// The path halves of a match, its precedence rank and the length that orders prefixes.
fn path_match(m: &HttpRouteMatch) -> (Vec<Path>, u8, usize) {
    let kind = m
        .path
        .as_ref()
        .and_then(|p| p.kind.as_deref())
        .unwrap_or("PathPrefix");
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    match kind {
        "Exact" => (vec![Path::Exact(value.clone())], 0, value.len()),
        "RegularExpression" => (vec![Path::Regex(value.clone())], 1, value.len()),
        _ => {
            let trimmed = value.trim_end_matches('/');
            if trimmed.is_empty() {
                (vec![Path::Prefix("/".into())], 2, 1)
            } else {
                (
                    vec![
                        Path::Exact(trimmed.to_string()),
                        Path::Prefix(format!("{trimmed}/")),
                    ],
                    2,
                    trimmed.len(),
                )
            }
        }
    }
}

/// `/service/method` as a path match, and its rank (exact both, service only, regex, none).
fn grpc_path(m: &GrpcRouteMatch) -> (StringMatch, u8) {
    let Some(method) = &m.method else {
        return (
            StringMatch {
                prefix: Some("/".into()),
                ..Default::default()
            },
            4,
        );
    };
    let regex = method.kind.as_deref() == Some("RegularExpression");
    match (&method.service, &method.method, regex) {
        (Some(s), Some(n), false) => (exact(format!("/{s}/{n}")), 0),
        (Some(s), None, false) => (
            StringMatch {
                prefix: Some(format!("/{s}/")),
                ..Default::default()
            },
            1,
        ),
        (None, Some(n), false) => (
            StringMatch {
                regex: Some(format!("/[^/]+/{}", escape(n))),
                ..Default::default()
            },
            2,
        ),
        (s, n, _) => (
            StringMatch {
                regex: Some(format!(
                    "/{}/{}",
                    s.as_deref().unwrap_or("[^/]+"),
                    n.as_deref().unwrap_or("[^/]+")
                )),
                ..Default::default()
            },
            3,
        ),
    }
}

fn header_matches(headers: &[HttpHeaderMatch], lowercase: bool) -> BTreeMap<String, StringMatch> {
    headers
        .iter()
        .map(|h| {
            let name = if lowercase {
                h.name.to_ascii_lowercase()
            } else {
                h.name.clone()
            };
            let m = if h.kind.as_deref() == Some("RegularExpression") {
                StringMatch {
                    regex: Some(h.value.clone()),
                    ..Default::default()
                }
            } else {
                exact(h.value.clone())
            };
            (name, m)
        })
        .collect()
}

fn operations(h: &HttpHeaderFilter) -> HeaderOperations {
    HeaderOperations {
        set: h
            .set
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        add: h
            .add
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        remove: h.remove.clone(),
    }
}

/// `s` with RE2 metacharacters escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn exact(value: String) -> StringMatch {
    StringMatch {
        exact: Some(value),
        ..Default::default()
    }
}

fn destination(host: String, port: u32) -> Destination {
    Destination {
        host,
        subset: String::new(),
        port: Some(PortSelector { number: port }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_matches_whole_segments() {
        let m = |kind: &str, value: &str| HttpRouteMatch {
            path: Some(trellis_config::gateway_api::HttpPathMatch {
                kind: Some(kind.into()),
                value: Some(value.into()),
            }),
            ..Default::default()
        };
        assert_eq!(
            path_match(&m("PathPrefix", "/foo/")).0,
            vec![Path::Exact("/foo".into()), Path::Prefix("/foo/".into())]
        );
        assert_eq!(
            path_match(&m("PathPrefix", "/")).0,
            vec![Path::Prefix("/".into())]
        );
        assert_eq!(
            path_match(&m("Exact", "/a")).0,
            vec![Path::Exact("/a".into())]
        );
        assert!(path_match(&m("Exact", "/a")).1 < path_match(&m("PathPrefix", "/a/b")).1);
    }
}
