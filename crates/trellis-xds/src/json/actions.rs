//! Rendering of the route-action fields (`route::actions`): redirect, direct response, header
//! mutations, rewrites, mirror policies, and the fault / CORS filter configs (HCM filters and
//! `typed_per_filter_config`). Same proto3-JSON conventions as the parent module.

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, Route, RouteAction, redirect_action, route, route_action,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde_json::{Map, Value, json};

use super::{Obj, any_value, duration, regex, string_match};

/// The `redirect` / `directResponse` action of a route, and its header mutations and
/// per-filter configs.
pub(super) fn route_fields(o: Obj, r: &Route) -> Obj {
    let o = match &r.action {
        Some(route::Action::Redirect(a)) => o.opt("redirect", Some(redirect(a))),
        Some(route::Action::DirectResponse(a)) => o.opt("directResponse", Some(direct(a))),
        _ => o,
    };
    let mut typed: Vec<_> = r.typed_per_filter_config.iter().collect();
    typed.sort_by(|a, b| a.0.cmp(b.0));
    let typed: Map<String, Value> = typed
        .into_iter()
        .map(|(k, v)| (k.clone(), any_value(v)))
        .collect();
    let o = header_fields(
        o,
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
    );
    o.opt(
        "typedPerFilterConfig",
        (!typed.is_empty()).then_some(Value::Object(typed)),
    )
}

/// Rewrites and mirror policies of a forwarding action.
pub(super) fn action_fields(o: Obj, a: &RouteAction) -> Obj {
    let host = match &a.host_rewrite_specifier {
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => h.as_str(),
        _ => "",
    };
    let mirrors = a
        .request_mirror_policies
        .iter()
        .map(|m| {
            Obj::default()
                .str("cluster", &m.cluster)
                .opt("runtimeFraction", m.runtime_fraction.as_ref().map(runtime))
                .done()
        })
        .collect();
    o.str("prefixRewrite", &a.prefix_rewrite)
        .opt(
            "regexRewrite",
            a.regex_rewrite.as_ref().map(|r| {
                json!({
                    "pattern": r.pattern.as_ref().map(regex).unwrap_or(Value::Null),
                    "substitution": r.substitution,
                })
            }),
        )
        .str("hostRewriteLiteral", host)
        .list("requestMirrorPolicies", mirrors)
}

/// Destination-level header mutations of one weighted cluster.
pub(super) fn cluster_weight_fields(o: Obj, c: &ClusterWeight) -> Obj {
    header_fields(
        o,
        &c.request_headers_to_add,
        &c.request_headers_to_remove,
        &c.response_headers_to_add,
        &c.response_headers_to_remove,
    )
}

/// The fault and CORS filter configs, when `any` holds one.
pub(super) fn filter_config(any: &Any) -> Option<Value> {
    let bytes = any.value.as_slice();
    if any.type_url == HttpFault::type_url() {
        return HttpFault::decode(bytes).ok().map(|f| fault(&f));
    }
    if any.type_url == Cors::type_url() {
        return Cors::decode(bytes)
            .ok()
            .map(|_| Obj::typed(&Cors::type_url()).done());
    }
    if any.type_url == CorsPolicy::type_url() {
        return CorsPolicy::decode(bytes).ok().map(|c| cors(&c));
    }
    None
}

fn header_fields(
    o: Obj,
    req_add: &[HeaderValueOption],
    req_remove: &[String],
    resp_add: &[HeaderValueOption],
    resp_remove: &[String],
) -> Obj {
    let names = |v: &[String]| v.iter().map(|n| json!(n)).collect();
    o.list(
        "requestHeadersToAdd",
        req_add.iter().map(header_option).collect(),
    )
    .list("requestHeadersToRemove", names(req_remove))
    .list(
        "responseHeadersToAdd",
        resp_add.iter().map(header_option).collect(),
    )
    .list("responseHeadersToRemove", names(resp_remove))
}

fn header_option(h: &HeaderValueOption) -> Value {
    let action = HeaderAppendAction::try_from(h.append_action)
        .ok()
        .filter(|a| *a != HeaderAppendAction::AppendIfExistsOrAdd)
        .map(|a| json!(a.as_str_name()));
    Obj::default()
        .opt(
            "header",
            h.header
                .as_ref()
                .map(|v| json!({ "key": v.key, "value": v.value })),
        )
        .opt("appendAction", action)
        .done()
}

fn redirect(a: &RedirectAction) -> Value {
    use redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode, SchemeRewriteSpecifier as S,
    };
    let code = RedirectResponseCode::try_from(a.response_code)
        .ok()
        .filter(|c| *c != RedirectResponseCode::MovedPermanently)
        .map(|c| json!(c.as_str_name()));
    let o = match &a.scheme_rewrite_specifier {
        Some(S::SchemeRedirect(s)) => Obj::default().str("schemeRedirect", s),
        Some(S::HttpsRedirect(b)) => Obj::default().flag("httpsRedirect", *b),
        None => Obj::default(),
    };
    let o = match &a.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => o.str("pathRedirect", p),
        Some(P::PrefixRewrite(p)) => o.str("prefixRewrite", p),
        _ => o,
    };
    o.str("hostRedirect", &a.host_redirect)
        .num("portRedirect", a.port_redirect.into())
        .opt("responseCode", code)
        .flag("stripQuery", a.strip_query)
        .done()
}

fn direct(a: &DirectResponseAction) -> Value {
    Obj::default()
        .num("status", a.status.into())
        .opt("body", a.body.as_ref().map(data_source))
        .done()
}

fn data_source(d: &DataSource) -> Value {
    match &d.specifier {
        Some(data_source::Specifier::InlineString(s)) => json!({ "inlineString": s }),
        Some(data_source::Specifier::InlineBytes(b)) => {
            json!({ "inlineBytes": trellis_config::base64_encode(b) })
        }
        _ => json!({}),
    }
}

fn fraction(f: &FractionalPercent) -> Value {
    let denominator = fractional_percent::DenominatorType::try_from(f.denominator)
        .ok()
        .filter(|d| *d != fractional_percent::DenominatorType::Hundred)
        .map(|d| json!(d.as_str_name()));
    Obj::default()
        .num("numerator", f.numerator.into())
        .opt("denominator", denominator)
        .done()
}

fn runtime(r: &RuntimeFractionalPercent) -> Value {
    Obj::default()
        .opt("defaultValue", r.default_value.as_ref().map(fraction))
        .str("runtimeKey", &r.runtime_key)
        .done()
}

fn fault(f: &HttpFault) -> Value {
    let delay = f.delay.as_ref().map(|d| {
        let fixed = match &d.fault_delay_secifier {
            Some(fault_delay::FaultDelaySecifier::FixedDelay(t)) => Some(duration(t)),
            _ => None,
        };
        Obj::default()
            .opt("fixedDelay", fixed)
            .opt("percentage", d.percentage.as_ref().map(fraction))
            .done()
    });
    let abort = f.abort.as_ref().map(|a| {
        let o = match &a.error_type {
            Some(fault_abort::ErrorType::HttpStatus(s)) => {
                Obj::default().num("httpStatus", (*s).into())
            }
            // grpcStatus 0 (OK) is still written: it is the abort's whole meaning.
            Some(fault_abort::ErrorType::GrpcStatus(s)) => {
                Obj::default().opt("grpcStatus", Some(json!(s)))
            }
            _ => Obj::default(),
        };
        o.opt("percentage", a.percentage.as_ref().map(fraction))
            .done()
    });
    Obj::typed(&HttpFault::type_url())
        .opt("delay", delay)
        .opt("abort", abort)
        .done()
}

fn cors(c: &CorsPolicy) -> Value {
    Obj::typed(&CorsPolicy::type_url())
        .list(
            "allowOriginStringMatch",
            c.allow_origin_string_match
                .iter()
                .map(string_match)
                .collect(),
        )
        .str("allowMethods", &c.allow_methods)
        .str("allowHeaders", &c.allow_headers)
        .str("exposeHeaders", &c.expose_headers)
        .str("maxAge", &c.max_age)
        .opt(
            "allowCredentials",
            c.allow_credentials.map(|b| json!(b.value)),
        )
        .opt(
            "forwardNotMatchingPreflights",
            c.forward_not_matching_preflights.map(|b| json!(b.value)),
        )
        .done()
}
