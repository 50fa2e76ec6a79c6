//! VirtualService route actions beyond plain forwarding, as Istio translates them: `rewrite`,
//! `redirect`, `directResponse`, `headers` (route and destination level), `mirror`/`mirrors`,
//! and the per-route `typed_per_filter_config` of the fault and CORS filters. Owns only the
//! translation of those fields; matching and destinations stay in `route.rs`.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, Route, RouteAction, redirect_action, route,
    route_action::{self, RequestMirrorPolicy},
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay::FaultDelaySecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use envoy_types::util::pack_any;
use trellis_config::{
    Destination, HeaderOperations, Headers, HttpRoute, HttpRouteDestination, Percent,
    RedirectPortSelection,
};

use super::{ClusterRefs, Scope, destination_cluster, regex, string_matcher, to_duration};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// `redirect` or `directResponse` of an `http[]` entry, as an Envoy route action.
pub fn local_action(http: &HttpRoute, scope: Scope<'_>) -> Option<route::Action> {
    if let Some(r) = &http.redirect {
        use redirect_action::RedirectResponseCode as Code;
        let code = match r.redirect_code.unwrap_or(301) {
            302 => Code::Found,
            303 => Code::SeeOther,
            307 => Code::TemporaryRedirect,
            308 => Code::PermanentRedirect,
            _ => Code::MovedPermanently,
        };
        // Istio: `derivePort: FROM_REQUEST_PORT` redirects to the port the request came in on.
        let port = match (r.port, r.derive_port) {
            (Some(p), _) => p,
            (None, Some(RedirectPortSelection::FromRequestPort)) => scope.port,
            _ => 0,
        };
        let action = RedirectAction {
            host_redirect: r.authority.clone(),
            port_redirect: port,
            response_code: code as i32,
            scheme_rewrite_specifier: (!r.scheme.is_empty())
                .then(|| redirect_action::SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone())),
            path_rewrite_specifier: (!r.uri.is_empty())
                .then(|| redirect_action::PathRewriteSpecifier::PathRedirect(r.uri.clone())),
            ..Default::default()
        };
        return Some(route::Action::Redirect(action));
    }
    let d = http.direct_response.as_ref()?;
    let body = d.body.as_ref().map(|b| {
        let specifier = match (&b.string, b.to_bytes()) {
            (Some(s), _) => data_source::Specifier::InlineString(s.clone()),
            (None, bytes) => data_source::Specifier::InlineBytes(bytes.unwrap_or_default()),
        };
        DataSource {
            specifier: Some(specifier),
            ..Default::default()
        }
    });
    Some(route::Action::DirectResponse(DirectResponseAction {
        status: d.status,
        body,
        ..Default::default()
    }))
}

/// `rewrite`, `mirror`/`mirrors` and destination-level `headers` of a weighted split, on the
/// forwarding action.
pub fn decorate_action(
    a: &mut RouteAction,
    http: &HttpRoute,
    ns: &str,
    scope: Scope<'_>,
    refs: &mut ClusterRefs,
) {
    if let Some(rw) = &http.rewrite {
        if let Some(rr) = &rw.uri_regex_rewrite {
            a.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&rr.pattern)),
                substitution: rr.rewrite.clone(),
            });
        } else if !rw.uri.is_empty() {
            a.prefix_rewrite = rw.uri.clone();
        }
        if !rw.authority.is_empty() {
            a.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(rw.authority.clone()),
            );
        }
    }
    if a.host_rewrite_specifier.is_none()
        && let Some(host) = authority_set(http.headers.as_ref())
    {
        a.host_rewrite_specifier =
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(host));
    }
    let mut mirror = |d: &Destination, percent: Option<&Percent>| RequestMirrorPolicy {
        cluster: destination_cluster(d, ns, scope, refs),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(fraction(percent.map_or(100.0, |p| p.value))),
            runtime_key: String::new(),
        }),
        ..Default::default()
    };
    if let Some(d) = &http.mirror {
        let legacy = http.mirror_percent.map(|p| Percent {
            value: f64::from(p),
        });
        let percent = http.mirror_percentage.as_ref().or(legacy.as_ref());
        a.request_mirror_policies.push(mirror(d, percent));
    }
    for m in &http.mirrors {
        a.request_mirror_policies
            .push(mirror(&m.destination, m.percentage.as_ref()));
    }
    if let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &mut a.cluster_specifier {
        for (c, d) in w.clusters.iter_mut().zip(kept(http)) {
            let ops = header_ops(d.headers.as_ref());
            c.request_headers_to_add = ops.request_add;
            c.request_headers_to_remove = ops.request_remove;
            c.response_headers_to_add = ops.response_add;
            c.response_headers_to_remove = ops.response_remove;
        }
    }
}

/// `rewrite.uri` under a regex uri match: Envoy's `prefix_rewrite` needs a prefix, so the whole
/// matched path is replaced by a `regex_rewrite` of the match's own regex.
pub fn rewrite_for_match(r: &mut Route, http: &HttpRoute) {
    let Some(route_match::PathSpecifier::SafeRegex(re)) =
        r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref())
    else {
        return;
    };
    let Some(route::Action::Route(a)) = &mut r.action else {
        return;
    };
    let uri = http.rewrite.as_ref().map_or("", |rw| rw.uri.as_str());
    if !a.prefix_rewrite.is_empty() && a.regex_rewrite.is_none() && !uri.is_empty() {
        a.prefix_rewrite.clear();
        a.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(regex(&format!("^(?:{})$", re.regex))),
            substitution: uri.to_string(),
        });
    }
}

/// Route-level `headers` (plus the only destination's, as Istio merges them), and the fault and
/// CORS per-route filter configs.
pub fn decorate_route(r: &mut Route, http: &HttpRoute) {
    let mut ops = header_ops(http.headers.as_ref());
    if let (Some(route::Action::Route(a)), [only]) = (&r.action, kept(http).as_slice())
        && matches!(
            a.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(_))
        )
    {
        ops.extend(header_ops(only.headers.as_ref()));
    }
    r.request_headers_to_add = ops.request_add;
    r.request_headers_to_remove = ops.request_remove;
    r.response_headers_to_add = ops.response_add;
    r.response_headers_to_remove = ops.response_remove;
    let mut typed: HashMap<String, Any> = HashMap::new();
    if let Some(f) = fault(http) {
        typed.insert(FAULT_FILTER.into(), pack_any(f));
    }
    if let Some(c) = cors(http) {
        typed.insert(CORS_FILTER.into(), pack_any(c));
    }
    r.typed_per_filter_config = typed;
}

/// The destinations `route_action` keeps, in order: weight-0 ones of a split are left out
/// (unless all are 0, which shares equally).
fn kept(http: &HttpRoute) -> Vec<&HttpRouteDestination> {
    let several = http.route.len() > 1;
    let all_zero = http.route.iter().all(|d| d.weight <= 0);
    http.route
        .iter()
        .filter(|d| !several || all_zero || d.weight > 0)
        .collect()
}

#[derive(Default)]
struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueOption>,
    response_remove: Vec<String>,
}

impl HeaderOps {
    fn extend(&mut self, other: HeaderOps) {
        self.request_add.extend(other.request_add);
        self.request_remove.extend(other.request_remove);
        self.response_add.extend(other.response_add);
        self.response_remove.extend(other.response_remove);
    }
}

/// Whether a header name is the authority (which Envoy rewrites, never adds).
fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

/// Istio turns `headers.request.set` of `host`/`:authority` into an authority rewrite.
fn authority_set(h: Option<&Headers>) -> Option<String> {
    let set = &h?.request.as_ref()?.set;
    set.iter()
        .find(|(k, _)| is_authority(k))
        .map(|(_, v)| v.clone())
}

fn header_ops(h: Option<&Headers>) -> HeaderOps {
    let Some(h) = h else {
        return HeaderOps::default();
    };
    let (request_add, request_remove) = operations(h.request.as_ref());
    let (response_add, response_remove) = operations(h.response.as_ref());
    HeaderOps {
        request_add,
        request_remove,
        response_add,
        response_remove,
    }
}

/// `set` overwrites (or adds), `add` appends; `remove` by name. Authority headers are left out.
fn operations(ops: Option<&HeaderOperations>) -> (Vec<HeaderValueOption>, Vec<String>) {
    let Some(ops) = ops else {
        return (Vec::new(), Vec::new());
    };
    let option = |k: &str, v: &str, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.to_ascii_lowercase(),
            value: v.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut add: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .filter(|(k, _)| !is_authority(k))
        .map(|(k, v)| option(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(
        ops.add
            .iter()
            .filter(|(k, _)| !is_authority(k))
            .map(|(k, v)| option(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    let remove = ops
        .remove
        .iter()
        .filter(|k| !is_authority(k))
        .map(|k| k.to_ascii_lowercase())
        .collect();
    (add, remove)
}

/// Istio `Percent` → Envoy `FractionalPercent` per million (Istio's translation).
fn fraction(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

fn fault(http: &HttpRoute) -> Option<HttpFault> {
    let f = http.fault.as_ref()?;
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_ref()?.get()?;
        // Unset percentage: the deprecated integer `percent`, else no request is delayed.
        let percent = d
            .percentage
            .as_ref()
            .map(|p| p.value)
            .or(d.percent.map(f64::from))
            .unwrap_or(0.0);
        Some(FaultDelay {
            percentage: Some(fraction(percent)),
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(to_duration(fixed))),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error = match (a.http_status, a.grpc_code()) {
            (Some(s), _) => ErrorType::HttpStatus(u32::try_from(s).ok()?),
            (None, Some(g)) => ErrorType::GrpcStatus(g),
            (None, None) => return None,
        };
        Some(FaultAbort {
            percentage: Some(fraction(a.percentage.as_ref().map_or(0.0, |p| p.value))),
            error_type: Some(error),
            ..Default::default()
        })
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

fn cors(http: &HttpRoute) -> Option<CorsPolicy> {
    let c = http.cors_policy.as_ref()?;
    let mut origins: Vec<StringMatcher> =
        c.allow_origins.iter().filter_map(string_matcher).collect();
    origins.extend(c.allow_origin.iter().map(|o| StringMatcher {
        match_pattern: Some(MatchPattern::Exact(o.clone())),
        ignore_case: false,
    }));
    let forward_unmatched = match c.unmatched_preflights {
        Some(trellis_config::UnmatchedPreflights::Ignore) => Some(BoolValue { value: false }),
        _ => None,
    };
    Some(CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_ref()
            .and_then(|d| d.get())
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        forward_not_matching_preflights: forward_unmatched,
        ..Default::default()
    })
}
