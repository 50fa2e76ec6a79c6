//! VirtualService HTTP routes -> Envoy routes, plus host/gateway name matching.
//!
//! Owns Istio's route semantics: match translation (uri, headers, withoutHeaders, method,
//! authority, scheme, queryParams), per-match `gateways`/`port`/`sourceLabels` filtering,
//! destinations -> cluster names, and host intersection with wildcards. It records the clusters
//! routes refer to in [`ClusterRefs`] but never builds clusters or listeners itself.

pub mod actions;

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, WeightedCluster, header_matcher, query_parameter_matcher, route, route_action,
    route_match, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use trellis_config::{
    Destination, HttpMatchRequest, HttpRoute, Resource, StringMatch, StringMatchKind,
    VirtualService, resolve_host,
};

use crate::Context;
use crate::cluster::outbound_name;

/// The gateway name meaning "every sidecar".
pub const MESH: &str = "mesh";

/// Service ports (and subsets) that routes send traffic to: `(host, port, subset)`.
pub type ClusterRefs = BTreeSet<(String, u32, String)>;

/// Where routes are being built: for which gateway (or the mesh) and which port.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub ctx: &'a Context<'a>,
    /// `namespace/name` of the Gateway whose server is being compiled; `None` for sidecars.
    pub gateway: Option<&'a str>,
    /// Listener port (gateway server port) or service port (sidecar).
    pub port: u32,
}

pub fn route_config(name: &str, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        ..Default::default()
    }
}

pub fn virtual_host(name: &str, domains: Vec<String>, routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.to_string(),
        domains,
        routes,
        // As Istio: upstreams see `x-envoy-attempt-count` on every request.
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// Istio's route for a service without VirtualService: everything to its cluster.
pub fn default_route(cluster: String) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(catch_all()),
        action: Some(route::Action::Route(forward(
            Some(cluster),
            Vec::new(),
            None,
        ))),
        ..Default::default()
    }
}

/// [`default_route`] with Istio's default retry policy (outbound traffic).
pub fn default_outbound_route(cluster: String) -> Route {
    let mut r = default_route(cluster);
    if let Some(route::Action::Route(a)) = &mut r.action {
        a.retry_policy = crate::resilience::retry_policy(None, false);
    }
    r
}

fn catch_all() -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    }
}

/// Resolves a VirtualService `gateways` entry to `namespace/name` (or `mesh`).
pub fn gateway_key(name: &str, vs_namespace: &str) -> String {
    if name == MESH {
        return MESH.into();
    }
    if let Some((ns, short)) = name.split_once('/') {
        let ns = if ns == "." { vs_namespace } else { ns };
        return format!("{ns}/{short}");
    }
    // Legacy FQDN form `name.namespace.svc.cluster.local`.
    let mut labels = name.split('.');
    match (labels.next(), labels.next()) {
        (Some(short), Some(ns)) => format!("{ns}/{short}"),
        _ => format!("{vs_namespace}/{name}"),
    }
}

/// Whether a `gateways` list (empty = `mesh`) names the scope's gateway.
pub fn binds(gateways: &[String], vs_namespace: &str, gateway: Option<&str>) -> bool {
    let wanted = gateway.unwrap_or(MESH);
    if gateways.is_empty() {
        return wanted == MESH;
    }
    gateways
        .iter()
        .any(|g| gateway_key(g, vs_namespace) == wanted)
}

/// Whether `host` is covered by `pattern` (`*`, `*.suffix`, or exact; case-insensitive).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => false,
    }
}

/// The more specific of two host patterns when one covers the other (Istio's intersection).
pub fn host_intersection(a: &str, b: &str) -> Option<String> {
    if host_matches(a, b) {
        Some(b.to_string())
    } else if host_matches(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

/// Envoy routes for one VirtualService in a scope, in Istio order: each `http[]` entry, then
/// each of its matches that applies here (no match = catch-all).
pub fn vs_routes(
    vs: &Resource<VirtualService>,
    scope: Scope<'_>,
    refs: &mut ClusterRefs,
) -> Vec<Route> {
    let ns = vs.meta.namespace.as_str();
    let non_idempotent = vs
        .meta
        .annotations
        .get(trellis_config::RETRY_NON_IDEMPOTENT)
        .is_some_and(|v| v == "true");
    let mut out = Vec::new();
    for http in &vs.spec.http {
        let local = actions::local_action(http, scope);
        if http.route.is_empty() && local.is_none() {
            continue; // delegate: a later issue
        }
        if http.matches.is_empty() {
            let action = envoy_action(http, local, non_idempotent, ns, scope, refs);
            out.push(envoy_route(http, &http.name, catch_all(), action));
            continue;
        }
        let applicable: Vec<&HttpMatchRequest> = http
            .matches
            .iter()
            .filter(|m| match_applies(m, &vs.spec, ns, scope))
            .collect();
        if applicable.is_empty() {
            continue; // and its destinations are not referenced from here
        }
        let action = envoy_action(http, local, non_idempotent, ns, scope, refs);
        for m in applicable {
            let name = match (http.name.is_empty(), m.name.is_empty()) {
                (_, true) => http.name.clone(),
                (true, false) => m.name.clone(),
                (false, false) => format!("{}.{}", http.name, m.name),
            };
            out.push(envoy_route(http, &name, route_match(m), action.clone()));
        }
    }
    out
}

/// The redirect / direct response when set, else forwarding with rewrites and mirrors.
fn envoy_action(
    http: &HttpRoute,
    local: Option<route::Action>,
    non_idempotent: bool,
    ns: &str,
    scope: Scope<'_>,
    refs: &mut ClusterRefs,
) -> route::Action {
    if let Some(local) = local {
        return local;
    }
    let mut action = route_action(http, ns, scope, refs);
    actions::decorate_action(&mut action, http, ns, scope, refs);
    action.retry_policy = crate::resilience::retry_policy(http.retries.as_ref(), non_idempotent);
    route::Action::Route(action)
}

fn envoy_route(http: &HttpRoute, name: &str, r#match: RouteMatch, action: route::Action) -> Route {
    let mut r = Route {
        name: name.to_string(),
        r#match: Some(r#match),
        action: Some(action),
        ..Default::default()
    };
    actions::decorate_route(&mut r, http);
    actions::rewrite_for_match(&mut r, http);
    r
}

/// Per-match conditions that select proxies and ports rather than requests.
fn match_applies(m: &HttpMatchRequest, vs: &VirtualService, ns: &str, scope: Scope<'_>) -> bool {
    let gateway_ok = if m.gateways.is_empty() {
        binds(&vs.gateways, ns, scope.gateway)
    } else {
        binds(&m.gateways, ns, scope.gateway)
    };
    let port_ok = m.port.is_none_or(|p| p == scope.port);
    let labels = &scope.ctx.proxy.labels;
    let source_ok = m
        .source_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let ns_ok = m.source_namespace.is_empty() || m.source_namespace == scope.ctx.proxy.namespace;
    gateway_ok && port_ok && source_ok && ns_ok
}

fn route_action(
    http: &HttpRoute,
    ns: &str,
    scope: Scope<'_>,
    refs: &mut ClusterRefs,
) -> RouteAction {
    // Several destinations: weight-0 ones get no traffic (Envoy rejects weight 0); if all
    // are 0 (invalid in Istio), share equally rather than emit an empty split.
    let several = http.route.len() > 1;
    let all_zero = http.route.iter().all(|d| d.weight <= 0);
    let mut targets: Vec<(String, u32)> = Vec::new();
    for d in &http.route {
        let weight = if all_zero {
            1
        } else {
            u32::try_from(d.weight).unwrap_or(0)
        };
        if several && weight == 0 {
            continue;
        }
        targets.push((destination_cluster(&d.destination, ns, scope, refs), weight));
    }
    let timeout = http.timeout.as_ref().and_then(|t| t.get()).map(to_duration);
    let hash_policy = crate::lb::route_hash_policy(scope.ctx, targets.iter().map(|(c, _)| c));
    let mut action = if let [(cluster, _)] = targets.as_slice() {
        forward(Some(cluster.clone()), Vec::new(), timeout)
    } else {
        forward(None, targets, timeout)
    };
    action.hash_policy = hash_policy;
    action
}

fn forward(
    cluster: Option<String>,
    weighted: Vec<(String, u32)>,
    timeout: Option<Duration>,
) -> RouteAction {
    let specifier = match cluster {
        Some(c) => route_action::ClusterSpecifier::Cluster(c),
        None => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weighted
                .into_iter()
                .map(|(name, weight)| ClusterWeight {
                    name,
                    weight: Some(UInt32Value { value: weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    RouteAction {
        cluster_specifier: Some(specifier),
        timeout: Some(timeout.unwrap_or_default()),
        ..Default::default()
    }
}

fn to_duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// `outbound|port|subset|host` for a destination, recording it in `refs`. The port defaults to
/// the service's only port, else to the scope port (Istio's `GetDestinationCluster`).
pub fn destination_cluster(
    d: &Destination,
    ns: &str,
    scope: Scope<'_>,
    refs: &mut ClusterRefs,
) -> String {
    let host = resolve_host(&d.host, ns);
    let service = scope.ctx.registry.get(&host);
    let port = match (&d.port, service) {
        (Some(p), _) => p.number,
        (None, Some(s)) if s.ports.len() == 1 => s.ports[0].number,
        _ => scope.port,
    };
    refs.insert((host.clone(), port, d.subset.clone()));
    outbound_name(port, &d.subset, &host)
}

/// One Istio match request -> Envoy `RouteMatch`.
pub fn route_match(m: &HttpMatchRequest) -> RouteMatch {
    let path = match m.uri.as_ref().and_then(StringMatch::kind) {
        Some(StringMatchKind::Exact(p)) => route_match::PathSpecifier::Path(p.into()),
        Some(StringMatchKind::Prefix(p)) => route_match::PathSpecifier::Prefix(p.into()),
        // Envoy ignores `case_sensitive` for regexes: make the regex itself case-insensitive.
        Some(StringMatchKind::Regex(r)) if m.ignore_uri_case => {
            route_match::PathSpecifier::SafeRegex(regex(&format!("(?i){r}")))
        }
        Some(StringMatchKind::Regex(r)) => route_match::PathSpecifier::SafeRegex(regex(r)),
        None => route_match::PathSpecifier::Prefix("/".into()),
    };
    let mut headers: Vec<HeaderMatcher> = sorted(&m.headers)
        .into_iter()
        .map(|(name, s)| header(name, s, false))
        .collect();
    let pseudo = [
        (":authority", &m.authority),
        (":method", &m.method),
        (":scheme", &m.scheme),
    ];
    for (name, s) in pseudo {
        if let Some(s) = s {
            headers.push(header(name, s, false));
        }
    }
    headers.extend(
        sorted(&m.without_headers)
            .into_iter()
            .map(|(name, s)| header(name, s, true)),
    );
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters: sorted(&m.query_params)
            .into_iter()
            .map(|(name, s)| query_parameter(name, s))
            .collect(),
        ..Default::default()
    }
}

fn sorted(map: &BTreeMap<String, StringMatch>) -> Vec<(&str, &StringMatch)> {
    map.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

fn string_matcher(s: &StringMatch) -> Option<StringMatcher> {
    let pattern = match s.kind()? {
        StringMatchKind::Exact(v) => string_matcher::MatchPattern::Exact(v.into()),
        StringMatchKind::Prefix("") => return None,
        StringMatchKind::Prefix(v) => string_matcher::MatchPattern::Prefix(v.into()),
        StringMatchKind::Regex(r) => string_matcher::MatchPattern::SafeRegex(regex(r)),
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

/// Istio's header match: an empty match (or `prefix: ""`) means "present". With `invert`
/// (`withoutHeaders`) a missing header matches: `present_match` inverted means "absent", and a
/// value matcher treats a missing header as empty, which the value then fails to match.
pub(crate) fn header(name: &str, s: &StringMatch, invert: bool) -> HeaderMatcher {
    let specifier = match string_matcher(s) {
        Some(m) => header_matcher::HeaderMatchSpecifier::StringMatch(m),
        None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
    };
    let value_match = matches!(
        specifier,
        header_matcher::HeaderMatchSpecifier::StringMatch(_)
    );
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        invert_match: invert,
        treat_missing_header_as_empty: invert && value_match,
        header_match_specifier: Some(specifier),
    }
}

/// Istio's query match: `exact: ""` or an empty match means "present".
fn query_parameter(name: &str, s: &StringMatch) -> QueryParameterMatcher {
    use query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let specifier = match (s.kind(), string_matcher(s)) {
        (Some(StringMatchKind::Exact("")), _) | (_, None) => Q::PresentMatch(true),
        (_, Some(m)) => Q::StringMatch(m),
    };
    QueryParameterMatcher {
        name: name.to_string(),
        query_parameter_match_specifier: Some(specifier),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_resolve_like_istio() {
        assert_eq!(
            gateway_key("bookinfo-gateway", "default"),
            "default/bookinfo-gateway"
        );
        assert_eq!(gateway_key("istio-system/gw", "default"), "istio-system/gw");
        assert_eq!(gateway_key("./gw", "prod"), "prod/gw");
        assert_eq!(
            gateway_key("gw.infra.svc.cluster.local", "default"),
            "infra/gw"
        );
        assert_eq!(gateway_key("mesh", "default"), "mesh");
    }

    #[test]
    fn empty_gateways_mean_mesh() {
        assert!(binds(&[], "default", None));
        assert!(!binds(&[], "default", Some("default/gw")));
        let gws = vec!["gw".to_string()];
        assert!(binds(&gws, "default", Some("default/gw")));
        assert!(!binds(&gws, "default", None));
        assert!(!binds(&gws, "other", Some("default/gw")));
    }

    #[test]
    fn host_wildcards() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("API.example.com", "api.EXAMPLE.com"));
        assert_eq!(
            host_intersection("*", "bookinfo.com").as_deref(),
            Some("bookinfo.com")
        );
        assert_eq!(
            host_intersection("a.example.com", "*.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            host_intersection("*.a.com", "*.com").as_deref(),
            Some("*.a.com")
        );
        assert_eq!(host_intersection("a.com", "b.com"), None);
    }

    #[test]
    fn empty_header_match_is_presence_and_inverted_value_treats_missing_as_empty() {
        let present = header("X-Debug", &StringMatch::default(), false);
        assert_eq!(present.name, "x-debug");
        assert_eq!(
            present.header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
        );
        let without = header(
            "end-user",
            &StringMatch {
                exact: Some("jason".into()),
                ..Default::default()
            },
            true,
        );
        assert!(without.invert_match && without.treat_missing_header_as_empty);
        let absent = header("x", &StringMatch::default(), true);
        assert!(absent.invert_match && !absent.treat_missing_header_as_empty);
    }
}
