//! Gateway API rules (the CRDs' own schema and CEL rules, where Kubernetes would refuse the
//! object): required names and ports, enum values (`protocol`, path and header match types,
//! filter types), one filter field set per `type`, regexes, durations, weights, redirect codes.
//! Cross-object rules (attachment, missing backends, ReferenceGrants) are not errors here:
//! Kubernetes accepts such objects and reports them in `status`, computed by `trellis-xds`.

use super::Reporter;
use crate::diag::did_you_mean;
use crate::types::gateway_api::*;

const PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "TLS", "TCP"];
const PATH_TYPES: &[&str] = &["Exact", "PathPrefix", "RegularExpression"];
const VALUE_TYPES: &[&str] = &["Exact", "RegularExpression"];
const FROM: &[&str] = &["Same", "All", "Selector"];
const TLS_MODES: &[&str] = &["Terminate", "Passthrough"];
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const HTTP_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
    "ExtensionRef",
    "CORS",
];
const GRPC_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "ExtensionRef",
];
const PATH_MODIFIERS: &[&str] = &["ReplaceFullPath", "ReplacePrefixMatch"];

pub(super) fn gateway_class(rep: &mut Reporter<'_>, c: &GatewayClass) {
    if c.controller_name.is_empty() {
        rep.error(
            "spec.controllerName",
            format!(
                "controllerName is required; Trellis implements {}",
                CONTROLLER_NAMES.join(" and ")
            ),
        );
    }
}

pub(super) fn gateway(rep: &mut Reporter<'_>, g: &Gateway) {
    if g.gateway_class_name.is_empty() {
        rep.error(
            "spec.gatewayClassName",
            "gatewayClassName is required (e.g. `istio`)",
        );
    }
    if g.listeners.is_empty() {
        rep.error("spec.listeners", "at least one listener is required");
    }
    for (i, l) in g.listeners.iter().enumerate() {
        let path = format!("spec.listeners[{i}]");
        if l.name.is_empty() {
            rep.error(&format!("{path}.name"), "listener name is required");
        } else if g.listeners[..i].iter().any(|o| o.name == l.name) {
            rep.error(
                &format!("{path}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        rep.port_number(&format!("{path}.port"), l.port);
        if !PROTOCOLS.contains(&l.protocol.as_str()) {
            rep.error(
                &format!("{path}.protocol"),
                format!(
                    "unsupported protocol `{}`{}; use HTTP, HTTPS, TLS or TCP",
                    l.protocol,
                    did_you_mean(&l.protocol, PROTOCOLS)
                ),
            );
        }
        if let Some(h) = &l.hostname {
            hostname(rep, &format!("{path}.hostname"), h);
        }
        if let Some(tls) = &l.tls {
            let mode = l.tls_mode();
            if !TLS_MODES.contains(&mode) {
                rep.error(
                    &format!("{path}.tls.mode"),
                    format!("unknown tls mode `{mode}`; use Terminate or Passthrough"),
                );
            }
            if mode == "Terminate" && tls.certificate_refs.is_empty() {
                rep.error(
                    &format!("{path}.tls.certificateRefs"),
                    "a Terminate listener needs at least one certificateRef",
                );
            }
        } else if l.protocol == "HTTPS" || l.protocol == "TLS" {
            rep.error(
                &format!("{path}.tls"),
                format!("{} listeners need `tls`", l.protocol),
            );
        }
        if l.protocol == "HTTPS" && l.tls_mode() == "Passthrough" {
            rep.error(
                &format!("{path}.tls.mode"),
                "HTTPS listeners terminate TLS; use protocol TLS for Passthrough",
            );
        }
        if let Some(ns) = l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
        {
            let from = l.namespaces_from();
            let at = format!("{path}.allowedRoutes.namespaces");
            if !FROM.contains(&from) {
                rep.error(
                    &format!("{at}.from"),
                    format!("unknown value `{from}`; use Same, All or Selector"),
                );
            }
            if from == "Selector" && ns.selector.is_none() {
                rep.error(&format!("{at}.selector"), "from: Selector needs a selector");
            }
            if let Some(sel) = &ns.selector {
                selector(rep, &format!("{at}.selector"), sel);
            }
        }
    }
}

pub(super) fn http_route(rep: &mut Reporter<'_>, r: &HttpRoute) {
    parents(rep, &r.parent_refs);
    hostnames(rep, &r.hostnames);
    for (i, rule) in r.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            http_match(rep, &format!("{path}.matches[{j}]"), m);
        }
        filters(rep, &format!("{path}.filters"), &rule.filters, HTTP_FILTERS);
        backends(
            rep,
            &format!("{path}.backendRefs"),
            &rule.backend_refs,
            true,
        );
        if let Some(t) = &rule.timeouts {
            rep.duration(&format!("{path}.timeouts.request"), t.request.as_ref());
            rep.duration(
                &format!("{path}.timeouts.backendRequest"),
                t.backend_request.as_ref(),
            );
            if let (Some(req), Some(backend)) = (
                t.request.as_ref().and_then(|d| d.get()),
                t.backend_request.as_ref().and_then(|d| d.get()),
            ) && !req.is_zero()
                && backend > req
            {
                rep.error(
                    &format!("{path}.timeouts.backendRequest"),
                    "backendRequest must not be longer than request",
                );
            }
        }
        if let Some(retry) = &rule.retry {
            rep.duration(&format!("{path}.retry.backoff"), retry.backoff.as_ref());
            for (j, code) in retry.codes.iter().enumerate() {
                if !(400..=599).contains(code) {
                    rep.error(
                        &format!("{path}.retry.codes[{j}]"),
                        format!("retry code {code} is not an error status; use 400..=599"),
                    );
                }
            }
        }
    }
}

pub(super) fn grpc_route(rep: &mut Reporter<'_>, r: &GrpcRoute) {
    parents(rep, &r.parent_refs);
    hostnames(rep, &r.hostnames);
    for (i, rule) in r.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            let at = format!("{path}.matches[{j}]");
            if let Some(method) = &m.method {
                let kind = method.kind.as_deref().unwrap_or("Exact");
                value_type(rep, &format!("{at}.method.type"), kind);
                if method.service.is_none() && method.method.is_none() {
                    rep.error(&format!("{at}.method"), "set `service`, `method` or both");
                }
                if kind == "RegularExpression" {
                    for (field, v) in [("service", &method.service), ("method", &method.method)] {
                        if let Some(v) = v {
                            rep.regex(&format!("{at}.method.{field}"), v);
                        }
                    }
                }
            }
            header_matches(rep, &format!("{at}.headers"), &m.headers);
        }
        filters(rep, &format!("{path}.filters"), &rule.filters, GRPC_FILTERS);
        backends(
            rep,
            &format!("{path}.backendRefs"),
            &rule.backend_refs,
            true,
        );
    }
}

pub(super) fn tls_route(rep: &mut Reporter<'_>, r: &TlsRoute) {
    parents(rep, &r.parent_refs);
    hostnames(rep, &r.hostnames);
    l4_rules(rep, &r.rules);
}

pub(super) fn tcp_route(rep: &mut Reporter<'_>, r: &TcpRoute) {
    parents(rep, &r.parent_refs);
    l4_rules(rep, &r.rules);
}

pub(super) fn reference_grant(rep: &mut Reporter<'_>, g: &ReferenceGrant) {
    if g.from.is_empty() {
        rep.error("spec.from", "at least one `from` entry is required");
    }
    if g.to.is_empty() {
        rep.error("spec.to", "at least one `to` entry is required");
    }
    for (i, f) in g.from.iter().enumerate() {
        if f.kind.is_empty() {
            rep.error(
                &format!("spec.from[{i}].kind"),
                "kind is required (e.g. HTTPRoute)",
            );
        }
        if f.namespace.is_empty() {
            rep.error(
                &format!("spec.from[{i}].namespace"),
                "namespace is required",
            );
        }
    }
    for (i, t) in g.to.iter().enumerate() {
        if t.kind.is_empty() {
            rep.error(
                &format!("spec.to[{i}].kind"),
                "kind is required (e.g. Service)",
            );
        }
    }
}

fn l4_rules(rep: &mut Reporter<'_>, rules: &[L4RouteRule]) {
    if rules.is_empty() {
        rep.error("spec.rules", "at least one rule is required");
    }
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}].backendRefs");
        if rule.backend_refs.is_empty() {
            rep.error(&path, "at least one backendRef is required");
        }
        backends(rep, &path, &rule.backend_refs, false);
    }
}

fn parents(rep: &mut Reporter<'_>, parents: &[ParentReference]) {
    for (i, p) in parents.iter().enumerate() {
        let path = format!("spec.parentRefs[{i}]");
        if p.name.is_empty() {
            rep.error(&format!("{path}.name"), "parentRef name is required");
        }
        if let Some(port) = p.port {
            rep.port_number(&format!("{path}.port"), port);
        }
    }
}

fn hostnames(rep: &mut Reporter<'_>, hosts: &[String]) {
    for (i, h) in hosts.iter().enumerate() {
        hostname(rep, &format!("spec.hostnames[{i}]"), h);
    }
}

/// A DNS name, optionally with one leading `*.` label; no IPs, no port.
fn hostname(rep: &mut Reporter<'_>, path: &str, h: &str) {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let valid = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && rest.parse::<std::net::IpAddr>().is_err();
    if !valid {
        rep.error(
            path,
            format!(
                "invalid hostname `{h}`: use a lowercase DNS name, optionally starting with `*.` (no IP address, no port)"
            ),
        );
    }
}

fn selector(rep: &mut Reporter<'_>, path: &str, s: &KubeLabelSelector) {
    for (i, e) in s.match_expressions.iter().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => {
                rep.error(&format!("{at}.values"), "In and NotIn need values")
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => rep.error(
                &format!("{at}.operator"),
                format!("unknown operator `{other}`; use In, NotIn, Exists or DoesNotExist"),
            ),
        }
    }
}

fn http_match(rep: &mut Reporter<'_>, path: &str, m: &HttpRouteMatch) {
    if let Some(p) = &m.path {
        let kind = p.kind.as_deref().unwrap_or("PathPrefix");
        let value = p.value.as_deref().unwrap_or("/");
        let at = format!("{path}.path");
        if !PATH_TYPES.contains(&kind) {
            rep.error(
                &format!("{at}.type"),
                format!(
                    "unknown path match type `{kind}`{}; use Exact, PathPrefix or RegularExpression",
                    did_you_mean(kind, PATH_TYPES)
                ),
            );
        }
        if kind == "RegularExpression" {
            rep.regex(&format!("{at}.value"), value);
        } else if !value.starts_with('/') {
            rep.error(
                &format!("{at}.value"),
                format!("path `{value}` must start with `/`"),
            );
        } else if value.contains("//") || value.contains('?') || value.contains('#') {
            rep.error(
                &format!("{at}.value"),
                format!("path `{value}` must not contain `//`, `?` or `#`"),
            );
        }
    }
    header_matches(rep, &format!("{path}.headers"), &m.headers);
    header_matches(rep, &format!("{path}.queryParams"), &m.query_params);
    if let Some(method) = &m.method
        && !METHODS.contains(&method.as_str())
    {
        rep.error(
            &format!("{path}.method"),
            format!("unknown method `{method}`; use an uppercase HTTP method such as GET"),
        );
    }
}

fn header_matches(rep: &mut Reporter<'_>, path: &str, headers: &[HttpHeaderMatch]) {
    for (i, h) in headers.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if h.name.is_empty() {
            rep.error(&format!("{at}.name"), "name is required");
        } else if headers[..i]
            .iter()
            .any(|o| o.name.eq_ignore_ascii_case(&h.name))
        {
            rep.error(
                &format!("{at}.name"),
                format!("`{}` is matched twice; one match per name", h.name),
            );
        }
        let kind = h.kind.as_deref().unwrap_or("Exact");
        value_type(rep, &format!("{at}.type"), kind);
        if kind == "RegularExpression" {
            rep.regex(&format!("{at}.value"), &h.value);
        }
    }
}

fn value_type(rep: &mut Reporter<'_>, path: &str, kind: &str) {
    if !VALUE_TYPES.contains(&kind) {
        rep.error(
            path,
            format!(
                "unknown match type `{kind}`{}; use Exact or RegularExpression",
                did_you_mean(kind, VALUE_TYPES)
            ),
        );
    }
}

fn filters(rep: &mut Reporter<'_>, path: &str, filters: &[HttpRouteFilter], allowed: &[&str]) {
    let mut redirect = false;
    let mut rewrite = false;
    for (i, f) in filters.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if !allowed.contains(&f.kind.as_str()) {
            rep.error(
                &format!("{at}.type"),
                format!(
                    "unknown filter type `{}`{}; use one of {}",
                    f.kind,
                    did_you_mean(&f.kind, allowed),
                    allowed.join(", ")
                ),
            );
            continue;
        }
        let set: [(&str, bool); 7] = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "ResponseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("RequestMirror", f.request_mirror.is_some()),
            ("RequestRedirect", f.request_redirect.is_some()),
            ("URLRewrite", f.url_rewrite.is_some()),
            ("CORS", f.cors.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
        ];
        for (kind, present) in set {
            if (kind == f.kind) != present {
                let field = field_of(kind);
                let message = if present {
                    format!("`{field}` is set but the filter's type is `{}`", f.kind)
                } else {
                    format!("a `{kind}` filter needs `{field}`")
                };
                rep.error(&format!("{at}.{field}"), message);
            }
        }
        if let Some(h) = &f.request_header_modifier {
            header_filter(rep, &format!("{at}.requestHeaderModifier"), h);
        }
        if let Some(h) = &f.response_header_modifier {
            header_filter(rep, &format!("{at}.responseHeaderModifier"), h);
        }
        if let Some(m) = &f.request_mirror {
            mirror(rep, &format!("{at}.requestMirror"), m);
        }
        if let Some(r) = &f.request_redirect {
            redirect = true;
            let at = format!("{at}.requestRedirect");
            if let Some(code) = r.status_code
                && code != 301
                && code != 302
            {
                rep.error(
                    &format!("{at}.statusCode"),
                    format!("statusCode {code}; use 301 or 302"),
                );
            }
            if let Some(s) = &r.scheme
                && s != "http"
                && s != "https"
            {
                rep.error(
                    &format!("{at}.scheme"),
                    format!("scheme `{s}`; use http or https"),
                );
            }
            if let Some(p) = r.port {
                rep.port_number(&format!("{at}.port"), p);
            }
            if let Some(h) = &r.hostname {
                hostname(rep, &format!("{at}.hostname"), h);
            }
            if let Some(p) = &r.path {
                path_modifier(rep, &format!("{at}.path"), p);
                if p.kind == "ReplacePrefixMatch" {
                    rep.error(
                        &format!("{at}.path.type"),
                        "ReplacePrefixMatch in a redirect is not supported yet; use ReplaceFullPath",
                    );
                }
            }
        }
        if let Some(r) = &f.url_rewrite {
            rewrite = true;
            let at = format!("{at}.urlRewrite");
            if let Some(h) = &r.hostname {
                hostname(rep, &format!("{at}.hostname"), h);
            }
            if let Some(p) = &r.path {
                path_modifier(rep, &format!("{at}.path"), p);
            }
        }
    }
    if redirect && rewrite {
        rep.error(
            path,
            "RequestRedirect and URLRewrite cannot be used together",
        );
    }
}

fn field_of(kind: &str) -> &'static str {
    match kind {
        "RequestHeaderModifier" => "requestHeaderModifier",
        "ResponseHeaderModifier" => "responseHeaderModifier",
        "RequestMirror" => "requestMirror",
        "RequestRedirect" => "requestRedirect",
        "URLRewrite" => "urlRewrite",
        "CORS" => "cors",
        _ => "extensionRef",
    }
}

fn header_filter(rep: &mut Reporter<'_>, path: &str, h: &HttpHeaderFilter) {
    for (list, entries) in [("set", &h.set), ("add", &h.add)] {
        for (i, e) in entries.iter().enumerate() {
            if e.name.is_empty() {
                rep.error(
                    &format!("{path}.{list}[{i}].name"),
                    "header name is required",
                );
            }
        }
    }
}

fn mirror(rep: &mut Reporter<'_>, path: &str, m: &HttpRequestMirrorFilter) {
    backend(rep, &format!("{path}.backendRef"), &m.backend_ref);
    if m.percent.is_some() && m.fraction.is_some() {
        rep.error(path, "set `percent` or `fraction`, not both");
    }
    if let Some(p) = m.percent
        && p > 100
    {
        rep.error(
            &format!("{path}.percent"),
            format!("percent {p} out of range; use 0..=100"),
        );
    }
    if let Some(f) = &m.fraction {
        let d = f.denominator.unwrap_or(100);
        if d == 0 || f.numerator > d {
            rep.error(
                &format!("{path}.fraction"),
                "fraction needs 0 <= numerator <= denominator and denominator > 0",
            );
        }
    }
}

fn path_modifier(rep: &mut Reporter<'_>, path: &str, p: &HttpPathModifier) {
    if !PATH_MODIFIERS.contains(&p.kind.as_str()) {
        rep.error(
            &format!("{path}.type"),
            format!(
                "unknown path modifier `{}`{}; use ReplaceFullPath or ReplacePrefixMatch",
                p.kind,
                did_you_mean(&p.kind, PATH_MODIFIERS)
            ),
        );
        return;
    }
    let (field, value) = if p.kind == "ReplaceFullPath" {
        ("replaceFullPath", &p.replace_full_path)
    } else {
        ("replacePrefixMatch", &p.replace_prefix_match)
    };
    match value {
        None => rep.error(
            &format!("{path}.{field}"),
            format!("{} needs `{field}`", p.kind),
        ),
        Some(v) if !v.starts_with('/') => rep.error(
            &format!("{path}.{field}"),
            format!("path `{v}` must start with `/`"),
        ),
        Some(_) => {}
    }
}

fn backends(rep: &mut Reporter<'_>, path: &str, refs: &[BackendRef], http: bool) {
    for (i, b) in refs.iter().enumerate() {
        let at = format!("{path}[{i}]");
        backend(rep, &at, b);
        if !(0..=1_000_000).contains(&b.weight()) {
            rep.error(
                &format!("{at}.weight"),
                format!("weight {} out of range; use 0..=1000000", b.weight()),
            );
        }
        if !http && !b.filters.is_empty() {
            rep.error(
                &format!("{at}.filters"),
                "backendRef filters are for HTTP routes",
            );
        }
        if !b.filters.is_empty() {
            filters(rep, &format!("{at}.filters"), &b.filters, HTTP_FILTERS);
        }
    }
}

fn backend(rep: &mut Reporter<'_>, path: &str, b: &BackendRef) {
    if b.name.is_empty() {
        rep.error(&format!("{path}.name"), "backendRef name is required");
    }
    match b.port {
        None if b.kind() == "Service" && b.group().is_empty() => rep.error(
            &format!("{path}.port"),
            "port is required when referring to a Service",
        ),
        Some(p) => rep.port_number(&format!("{path}.port"), p),
        None => {}
    }
}
