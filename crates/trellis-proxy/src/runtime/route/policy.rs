//! What a route does besides choosing a cluster, compiled once from the xDS `Route`: a redirect
//! or direct response, path/authority rewrites, header mutations (route level and per weighted
//! cluster), mirror policies, and the fault and CORS filters' per-route configs
//! (`typed_per_filter_config`). Plain data for the hot path; `crate::proxy::actions` applies it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValueOption, data_source, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3 as xroute;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use http::{HeaderName, HeaderValue, StatusCode};
use prost::{Message, Name};
use regex::bytes::{Regex, RegexBuilder};
use xroute::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
use xroute::route_action::{ClusterSpecifier, HostRewriteSpecifier};

use super::super::cluster::Cluster;
use super::super::duration;
use super::{ClusterRef, StringMatch};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
/// One million: fractions are kept per million (Envoy's finest denominator).
pub const MILLION: u32 = 1_000_000;

/// Everything but cluster selection; `None` on a route that only forwards.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    /// Answer without going upstream.
    pub respond: Option<Respond>,
    pub fault: Option<Fault>,
    pub cors: Option<Cors>,
    pub rewrite: Rewrite,
    pub headers: HeaderOps,
    /// Destination-level header mutations, by weighted cluster name.
    pub cluster_headers: Vec<(Arc<str>, HeaderOps)>,
    pub mirrors: Vec<Mirror>,
}

#[derive(Debug)]
pub enum Respond {
    Redirect(Redirect),
    Direct { status: StatusCode, body: Bytes },
}

/// Envoy's `RedirectAction`; empty parts keep the request's.
#[derive(Debug)]
pub struct Redirect {
    pub status: StatusCode,
    pub scheme: Option<Box<str>>,
    pub host: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: Option<Box<str>>,
    pub strip_query: bool,
}

#[derive(Debug, Default)]
pub struct Rewrite {
    /// `(matched prefix length, replacement)`: the route's prefix (or path) is replaced.
    pub prefix: Option<(usize, Box<str>)>,
    /// Every match in the path is replaced (RE2 `GlobalReplace`); `$N` references groups.
    pub regex: Option<(Regex, Box<str>)>,
    pub host: Option<HeaderValue>,
}

/// Header mutations in order: `set` (overwrite or add) and `add` (append), then removals.
#[derive(Debug, Default)]
pub struct HeaderOps {
    pub request_add: Vec<HeaderOp>,
    pub request_remove: Vec<HeaderName>,
    pub response_add: Vec<HeaderOp>,
    pub response_remove: Vec<HeaderName>,
}

#[derive(Debug)]
pub struct HeaderOp {
    pub name: HeaderName,
    pub value: HeaderValue,
    pub action: Append,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Append when present, else add.
    Append,
    /// Add only when absent.
    IfAbsent,
    /// Replace when present, else add.
    Overwrite,
    /// Replace only when present.
    OverwriteIfPresent,
}

#[derive(Debug)]
pub struct Mirror {
    pub cluster: ClusterRef,
    /// Share of requests mirrored, per million.
    pub per_million: u32,
}

/// The fault filter's per-route config.
#[derive(Debug)]
pub struct Fault {
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(Abort, u32)>,
}

#[derive(Debug, Clone, Copy)]
pub enum Abort {
    Http(StatusCode),
    Grpc(u32),
}

/// The CORS filter's per-route config.
#[derive(Debug)]
pub struct Cors {
    pub origins: Vec<StringMatch>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    /// Envoy's `forward_not_matching_preflights` (default true).
    pub forward_unmatched_preflights: bool,
}

type FieldError = (String, String);

impl RoutePolicy {
    /// The policy of `r`, or `None` when the route only forwards. `prefix` is the matched
    /// prefix or path (for `prefix_rewrite`).
    pub fn compile(
        r: &xroute::Route,
        prefix: Option<&str>,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
        at: &dyn Fn(&str) -> String,
    ) -> Result<Option<RoutePolicy>, FieldError> {
        let mut p = RoutePolicy {
            headers: HeaderOps::compile(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
            )
            .map_err(|why| (at(""), why))?,
            ..Default::default()
        };
        match &r.action {
            Some(xroute::route::Action::Redirect(a)) => {
                p.respond = Some(Respond::Redirect(
                    redirect(a).map_err(|why| (at(".redirect"), why))?,
                ));
            }
            Some(xroute::route::Action::DirectResponse(d)) => {
                let status = u16::try_from(d.status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| (200..600).contains(&s.as_u16()))
                    .ok_or_else(|| {
                        let why = format!("status {} must be in 200..=599", d.status);
                        (at(".direct_response.status"), why)
                    })?;
                let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                    Some(data_source::Specifier::InlineString(s)) => Bytes::from(s.clone()),
                    Some(data_source::Specifier::InlineBytes(b)) => Bytes::from(b.clone()),
                    None => Bytes::new(),
                    Some(_) => {
                        let why = "only inline_string and inline_bytes bodies are supported";
                        return Err((at(".direct_response.body"), why.into()));
                    }
                };
                p.respond = Some(Respond::Direct { status, body });
            }
            Some(xroute::route::Action::Route(a)) => p.forwarding(a, prefix, clusters, at)?,
            _ => {}
        }
        for (name, any) in &r.typed_per_filter_config {
            let f = at(&format!(".typed_per_filter_config[{name:?}]"));
            match name.as_str() {
                FAULT_FILTER if any.type_url == HttpFault::type_url() => {
                    let cfg = HttpFault::decode(any.value.as_slice())
                        .map_err(|e| (f.clone(), format!("does not decode as HTTPFault: {e}")))?;
                    p.fault = Fault::compile(&cfg).map_err(|why| (f, why))?;
                }
                CORS_FILTER if any.type_url == CorsPolicy::type_url() => {
                    let cfg = CorsPolicy::decode(any.value.as_slice())
                        .map_err(|e| (f.clone(), format!("does not decode as CorsPolicy: {e}")))?;
                    p.cors = Some(Cors::compile(&cfg).map_err(|why| (f, why))?);
                }
                _ => {
                    let why = format!("{:?} for {name} is not supported", any.type_url);
                    return Err((f, why));
                }
            }
        }
        let plain = p.respond.is_none()
            && p.fault.is_none()
            && p.cors.is_none()
            && p.rewrite.prefix.is_none()
            && p.rewrite.regex.is_none()
            && p.rewrite.host.is_none()
            && p.headers.is_empty()
            && p.cluster_headers.is_empty()
            && p.mirrors.is_empty();
        Ok((!plain).then_some(p))
    }

    fn forwarding(
        &mut self,
        a: &xroute::RouteAction,
        prefix: Option<&str>,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
        at: &dyn Fn(&str) -> String,
    ) -> Result<(), FieldError> {
        if !a.prefix_rewrite.is_empty() {
            let len = prefix.map_or(0, str::len);
            self.rewrite.prefix = Some((len, a.prefix_rewrite.as_str().into()));
        }
        if let Some(rr) = &a.regex_rewrite {
            let pattern = rr.pattern.as_ref().map_or("", |p| p.regex.as_str());
            let re = RegexBuilder::new(pattern)
                .unicode(false)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    let why = format!("invalid regex {pattern:?}: {e}");
                    (at(".route.regex_rewrite.pattern"), why)
                })?;
            self.rewrite.regex = Some((re, re2_substitution(&rr.substitution).into()));
        }
        if let Some(HostRewriteSpecifier::HostRewriteLiteral(h)) = &a.host_rewrite_specifier {
            let v = HeaderValue::from_str(h).map_err(|_| {
                let why = format!("{h:?} is not a valid authority");
                (at(".route.host_rewrite_literal"), why)
            })?;
            self.rewrite.host = Some(v);
        }
        for (i, m) in a.request_mirror_policies.iter().enumerate() {
            if m.cluster.is_empty() {
                let f = at(&format!(".route.request_mirror_policies[{i}].cluster"));
                return Err((f, "only a cluster name is supported".into()));
            }
            let per_million = m
                .runtime_fraction
                .as_ref()
                .and_then(|r| r.default_value.as_ref())
                .map_or(MILLION, per_million);
            self.mirrors.push(Mirror {
                cluster: ClusterRef {
                    name: m.cluster.as_str().into(),
                    cluster: clusters.get(m.cluster.as_str()).cloned(),
                },
                per_million,
            });
        }
        if let Some(ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier {
            for (i, c) in w.clusters.iter().enumerate() {
                let ops = HeaderOps::compile(
                    &c.request_headers_to_add,
                    &c.request_headers_to_remove,
                    &c.response_headers_to_add,
                    &c.response_headers_to_remove,
                )
                .map_err(|why| (at(&format!(".route.weighted_clusters.clusters[{i}]")), why))?;
                if !ops.is_empty() {
                    self.cluster_headers.push((c.name.as_str().into(), ops));
                }
            }
        }
        Ok(())
    }

    /// Destination-level header mutations for the picked cluster.
    pub fn cluster_headers(&self, cluster: &str) -> Option<&HeaderOps> {
        self.cluster_headers
            .iter()
            .find(|(name, _)| &**name == cluster)
            .map(|(_, ops)| ops)
    }
}

/// RE2's `\N` group references → the `regex` crate's `${N}` (and a literal `$` escaped).
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn redirect(a: &xroute::RedirectAction) -> Result<Redirect, String> {
    let status = match RedirectResponseCode::try_from(a.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
        Ok(RedirectResponseCode::Found) => StatusCode::FOUND,
        Ok(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
        Ok(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
        Ok(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
        Err(_) => return Err(format!("unknown response_code {}", a.response_code)),
    };
    let scheme = match &a.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if !s.is_empty() => {
            Some(s.to_ascii_lowercase().into())
        }
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".into()),
        _ => None,
    };
    let path = match &a.path_rewrite_specifier {
        Some(PathRewriteSpecifier::PathRedirect(p)) if !p.is_empty() => Some(p.as_str().into()),
        Some(PathRewriteSpecifier::PathRedirect(_)) | None => None,
        Some(_) => return Err("only path_redirect is supported".into()),
    };
    let port = match a.port_redirect {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| format!("port_redirect {p} out of range"))?),
    };
    Ok(Redirect {
        status,
        scheme,
        host: (!a.host_redirect.is_empty()).then(|| a.host_redirect.as_str().into()),
        port,
        path,
        strip_query: a.strip_query,
    })
}

fn per_million(f: &FractionalPercent) -> u32 {
    let scale = match DenominatorType::try_from(f.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        _ => 1,
    };
    f.numerator.saturating_mul(scale).min(MILLION)
}

impl HeaderOps {
    fn compile(
        req_add: &[HeaderValueOption],
        req_remove: &[String],
        resp_add: &[HeaderValueOption],
        resp_remove: &[String],
    ) -> Result<HeaderOps, String> {
        Ok(HeaderOps {
            request_add: ops(req_add, "request_headers_to_add")?,
            request_remove: names(req_remove, "request_headers_to_remove")?,
            response_add: ops(resp_add, "response_headers_to_add")?,
            response_remove: names(resp_remove, "response_headers_to_remove")?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

fn ops(list: &[HeaderValueOption], field: &str) -> Result<Vec<HeaderOp>, String> {
    let mut out = Vec::with_capacity(list.len());
    for (i, o) in list.iter().enumerate() {
        let Some(h) = &o.header else {
            return Err(format!("{field}[{i}]: missing header"));
        };
        let name = HeaderName::from_bytes(h.key.as_bytes())
            .map_err(|_| format!("{field}[{i}]: invalid header name {:?}", h.key))?;
        let value = HeaderValue::from_str(&h.value)
            .map_err(|_| format!("{field}[{i}]: invalid value for {:?}", h.key))?;
        #[allow(deprecated)]
        let legacy = o.append.map(|b| b.value);
        let action = match (legacy, HeaderAppendAction::try_from(o.append_action)) {
            (Some(true), _) => Append::Append,
            (Some(false), _) => Append::Overwrite,
            (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => Append::Append,
            (None, Ok(HeaderAppendAction::AddIfAbsent)) => Append::IfAbsent,
            (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => Append::Overwrite,
            (None, Ok(HeaderAppendAction::OverwriteIfExists)) => Append::OverwriteIfPresent,
            (None, Err(_)) => {
                return Err(format!("{field}[{i}]: unknown append_action"));
            }
        };
        out.push(HeaderOp {
            name,
            value,
            action,
        });
    }
    Ok(out)
}

fn names(list: &[String], field: &str) -> Result<Vec<HeaderName>, String> {
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{field}[{i}]: invalid header name {n:?}"))
        })
        .collect()
}

impl Fault {
    fn compile(f: &HttpFault) -> Result<Option<Fault>, String> {
        let delay = match &f.delay {
            None => None,
            Some(d) => match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(t)) => {
                    Some((duration(t), d.percentage.as_ref().map_or(0, per_million)))
                }
                _ => return Err("delay: only fixed_delay is supported".into()),
            },
        };
        let abort = match &f.abort {
            None => None,
            Some(a) => {
                let kind = match a.error_type {
                    Some(ErrorType::HttpStatus(s)) => Abort::Http(
                        u16::try_from(s)
                            .ok()
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .filter(|s| (200..600).contains(&s.as_u16()))
                            .ok_or_else(|| format!("abort.http_status {s} must be in 200..=599"))?,
                    ),
                    Some(ErrorType::GrpcStatus(g)) => Abort::Grpc(g),
                    _ => return Err("abort: only http_status and grpc_status are supported".into()),
                };
                Some((kind, a.percentage.as_ref().map_or(0, per_million)))
            }
        };
        Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
    }
}

impl Cors {
    fn compile(c: &CorsPolicy) -> Result<Cors, String> {
        let mut origins = Vec::with_capacity(c.allow_origin_string_match.len());
        for (i, m) in c.allow_origin_string_match.iter().enumerate() {
            origins.push(
                StringMatch::compile(m)
                    .map_err(|why| format!("allow_origin_string_match[{i}]: {why}"))?,
            );
        }
        let value = |field: &str, v: &str| -> Result<Option<HeaderValue>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(v)
                .map(Some)
                .map_err(|_| format!("{field}: {v:?} is not a valid header value"))
        };
        Ok(Cors {
            origins,
            allow_methods: value("allow_methods", &c.allow_methods)?,
            allow_headers: value("allow_headers", &c.allow_headers)?,
            expose_headers: value("expose_headers", &c.expose_headers)?,
            max_age: value("max_age", &c.max_age)?,
            allow_credentials: c.allow_credentials.is_some_and(|b| b.value),
            forward_unmatched_preflights: c.forward_not_matching_preflights.is_none_or(|b| b.value),
        })
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| m.matches(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_err(r: &xroute::Route) -> FieldError {
        let at = |f: &str| format!("routes[0]{f}");
        match RoutePolicy::compile(r, Some("/"), &HashMap::new(), &at) {
            Ok(p) => panic!("compiled: {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_route_policies_are_rejected_naming_the_field() {
        use envoy_types::pb::envoy::config::core::v3::HeaderValue as XHeader;
        let mut r = xroute::Route::default();
        r.typed_per_filter_config.insert(
            "envoy.filters.http.lua".into(),
            envoy_types::pb::google::protobuf::Any::default(),
        );
        let (field, why) = compile_err(&r);
        assert_eq!(
            field,
            "routes[0].typed_per_filter_config[\"envoy.filters.http.lua\"]"
        );
        assert!(why.contains("not supported"), "{why}");

        let r = xroute::Route {
            response_headers_to_add: vec![HeaderValueOption {
                header: Some(XHeader {
                    key: "bad header".into(),
                    value: "v".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, why) = compile_err(&r);
        assert!(
            why.contains("response_headers_to_add[0]: invalid header name \"bad header\""),
            "{why}"
        );

        let r = xroute::Route {
            action: Some(xroute::route::Action::DirectResponse(
                xroute::DirectResponseAction {
                    status: 99,
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let (field, why) = compile_err(&r);
        assert_eq!(field, "routes[0].direct_response.status");
        assert!(why.contains("200..=599"), "{why}");
    }

    #[test]
    fn a_route_that_only_forwards_has_no_policy() {
        let r = xroute::Route {
            action: Some(xroute::route::Action::Route(xroute::RouteAction::default())),
            ..Default::default()
        };
        let at = |f: &str| f.to_string();
        assert!(matches!(
            RoutePolicy::compile(&r, None, &HashMap::new(), &at),
            Ok(None)
        ));
    }

    #[test]
    fn re2_group_references_become_regex_crate_ones() {
        assert_eq!(re2_substitution(r"/item?id=\1"), "/item?id=${1}");
        assert_eq!(re2_substitution(r"/a/\2/\1$"), "/a/${2}/${1}$$");
        assert_eq!(re2_substitution(r"\\x"), r"\x");
    }

    #[test]
    fn fractions_scale_to_per_million() {
        let f = |numerator, d: DenominatorType| FractionalPercent {
            numerator,
            denominator: d as i32,
        };
        assert_eq!(per_million(&f(50, DenominatorType::Hundred)), 500_000);
        assert_eq!(per_million(&f(125_000, DenominatorType::Million)), 125_000);
        assert_eq!(
            per_million(&f(10_000, DenominatorType::TenThousand)),
            MILLION
        );
        assert_eq!(per_million(&f(500, DenominatorType::Hundred)), MILLION);
    }
}
