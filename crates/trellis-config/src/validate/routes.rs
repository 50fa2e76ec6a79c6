//! VirtualService rules: hosts, route/redirect/directResponse/delegate exclusivity,
//! destinations and weights, match conditions, durations, fault, mirror, CORS.

use std::collections::HashSet;

use super::Reporter;
use crate::de::child_path;
use crate::types::*;

/// `namespace/name` of every VirtualService referenced as a delegate.
pub(super) fn delegate_targets(snapshot: &Snapshot) -> HashSet<String> {
    let mut out = HashSet::new();
    for vs in &snapshot.virtual_services {
        for r in &vs.spec.http {
            if let Some(d) = &r.delegate {
                let ns = if d.namespace.is_empty() {
                    &vs.meta.namespace
                } else {
                    &d.namespace
                };
                out.insert(format!("{ns}/{}", d.name));
            }
        }
    }
    out
}

/// `is_delegate`: referenced by another VirtualService's `delegate`, so it has no hosts.
pub(super) fn virtual_service(rep: &mut Reporter<'_>, vs: &VirtualService, is_delegate: bool) {
    if vs.hosts.is_empty() && !is_delegate {
        rep.error("spec.hosts", "at least one host is required");
    }
    if is_delegate && !vs.hosts.is_empty() {
        rep.error("spec.hosts", "a delegate VirtualService must not set hosts");
    }
    for (i, h) in vs.hosts.iter().enumerate() {
        if h.is_empty() {
            rep.error(&format!("spec.hosts[{i}]"), "host must not be empty");
        }
    }
    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        rep.error(
            "spec",
            "at least one of `http`, `tls` or `tcp` routes is required",
        );
    }
    for (i, r) in vs.http.iter().enumerate() {
        http_route(rep, &format!("spec.http[{i}]"), r);
    }
    for (i, r) in vs.tls.iter().enumerate() {
        let path = format!("spec.tls[{i}]");
        if r.matches.is_empty() {
            rep.error(
                &format!("{path}.match"),
                "TLS routes need at least one match with `sniHosts`",
            );
        }
        for (j, m) in r.matches.iter().enumerate() {
            if m.sni_hosts.is_empty() {
                rep.error(
                    &format!("{path}.match[{j}].sniHosts"),
                    "at least one SNI host is required",
                );
            }
            if let Some(p) = m.port {
                rep.port_number(&format!("{path}.match[{j}].port"), p);
            }
        }
        l4_destinations(rep, &path, &r.route);
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            if let Some(p) = m.port {
                rep.port_number(&format!("{path}.match[{j}].port"), p);
            }
        }
        l4_destinations(rep, &path, &r.route);
    }
}

fn http_route(rep: &mut Reporter<'_>, path: &str, r: &HttpRoute) {
    let actions = usize::from(!r.route.is_empty())
        + usize::from(r.redirect.is_some())
        + usize::from(r.direct_response.is_some())
        + usize::from(r.delegate.is_some());
    if actions == 0 {
        rep.error(
            path,
            "one of `route`, `redirect`, `directResponse` or `delegate` is required",
        );
    } else if actions > 1 {
        rep.error(
            path,
            "set only one of `route`, `redirect`, `directResponse` or `delegate`",
        );
    }
    for (i, m) in r.matches.iter().enumerate() {
        http_match(rep, &format!("{path}.match[{i}]"), m);
    }
    let weights: Vec<i32> = r.route.iter().map(|d| d.weight).collect();
    for (i, d) in r.route.iter().enumerate() {
        destination(
            rep,
            &format!("{path}.route[{i}].destination"),
            &d.destination,
        );
        headers(
            rep,
            &format!("{path}.route[{i}].headers"),
            d.headers.as_ref(),
        );
    }
    headers(rep, &format!("{path}.headers"), r.headers.as_ref());
    check_weights(rep, &format!("{path}.route"), &weights);
    if let Some(redirect) = &r.redirect {
        if let Some(code) = redirect.redirect_code
            && !(300..=399).contains(&code)
        {
            rep.error(
                &format!("{path}.redirect.redirectCode"),
                format!("redirect code {code} must be 3xx"),
            );
        }
        if let Some(p) = redirect.port {
            rep.port_number(&format!("{path}.redirect.port"), p);
        }
    }
    if let Some(d) = &r.direct_response
        && !(200..=599).contains(&d.status)
    {
        rep.error(
            &format!("{path}.directResponse.status"),
            format!("status {} must be in 200..=599", d.status),
        );
    }
    if let Some(d) = &r.direct_response
        && d.body.as_ref().is_some_and(|b| b.to_bytes().is_none())
    {
        rep.error(
            &format!("{path}.directResponse.body.bytes"),
            "bytes must be base64",
        );
    }
    if let Some(d) = &r.delegate
        && d.name.is_empty()
    {
        rep.error(
            &format!("{path}.delegate.name"),
            "delegate name is required",
        );
    }
    if let Some(rw) = &r.rewrite
        && let Some(rr) = &rw.uri_regex_rewrite
    {
        rep.regex(
            &format!("{path}.rewrite.uriRegexRewrite.match"),
            &rr.pattern,
        );
    }
    rep.duration(&format!("{path}.timeout"), r.timeout.as_ref());
    if let Some(retry) = &r.retries {
        if retry.attempts < 0 {
            rep.error(
                &format!("{path}.retries.attempts"),
                "attempts must not be negative",
            );
        }
        rep.duration(
            &format!("{path}.retries.perTryTimeout"),
            retry.per_try_timeout.as_ref(),
        );
        rep.duration(&format!("{path}.retries.backoff"), retry.backoff.as_ref());
        super::resilience::retry_on(rep, &format!("{path}.retries.retryOn"), &retry.retry_on);
    }
    fault(rep, path, r.fault.as_ref());
    mirrors(rep, path, r);
    if let Some(cors) = &r.cors_policy {
        for (i, o) in cors.allow_origins.iter().enumerate() {
            rep.string_match(&format!("{path}.corsPolicy.allowOrigins[{i}]"), o, false);
        }
        rep.duration(&format!("{path}.corsPolicy.maxAge"), cors.max_age.as_ref());
    }
}

fn http_match(rep: &mut Reporter<'_>, path: &str, m: &HttpMatchRequest) {
    let single = [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ];
    for (field, sm) in single {
        if let Some(sm) = sm {
            rep.string_match(&format!("{path}.{field}"), sm, false);
        }
    }
    let maps = [
        ("headers", &m.headers),
        ("queryParams", &m.query_params),
        ("withoutHeaders", &m.without_headers),
    ];
    for (field, map) in maps {
        for (name, sm) in map {
            rep.string_match(&child_path(&format!("{path}.{field}"), name), sm, true);
        }
    }
    if let Some(p) = m.port {
        rep.port_number(&format!("{path}.port"), p);
    }
}

/// Header names must be HTTP tokens (`host`/`:authority` are the one pseudo-header Istio takes,
/// as an authority rewrite); values must not hold CR, LF or NUL.
fn headers(rep: &mut Reporter<'_>, path: &str, h: Option<&Headers>) {
    let Some(h) = h else { return };
    let token = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let named = ops
            .set
            .iter()
            .map(|(k, v)| ("set", k, Some(v)))
            .chain(ops.add.iter().map(|(k, v)| ("add", k, Some(v))))
            .chain(ops.remove.iter().map(|k| ("remove", k, None)));
        for (op, name, value) in named {
            let p = format!("{path}.{side}.{op}");
            let authority = side == "request" && name.eq_ignore_ascii_case(":authority");
            if !(token(name) || authority) {
                rep.error(&p, format!("{name:?} is not a valid header name"));
            }
            if value.is_some_and(|v| v.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))) {
                rep.error(
                    &format!("{p}.{name}"),
                    "header values must not hold CR, LF or NUL",
                );
            }
        }
    }
}

fn destination(rep: &mut Reporter<'_>, path: &str, d: &Destination) {
    if d.host.is_empty() {
        rep.error(&format!("{path}.host"), "host is required");
    }
    if let Some(p) = &d.port {
        rep.port_number(&format!("{path}.port.number"), p.number);
    }
}

/// Istio: each weight in 0..=100; with several destinations they must sum to 100.
fn check_weights(rep: &mut Reporter<'_>, path: &str, weights: &[i32]) {
    let mut ok = true;
    for (i, w) in weights.iter().enumerate() {
        if !(0..=100).contains(w) {
            rep.error(
                &format!("{path}[{i}].weight"),
                format!("weight {w} out of range; use 0..=100"),
            );
            ok = false;
        }
    }
    let sum: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    if ok && weights.len() > 1 && sum != 100 {
        rep.error(
            path,
            format!("destination weights sum to {sum}; they must sum to 100"),
        );
    }
}

fn l4_destinations(rep: &mut Reporter<'_>, path: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        rep.error(
            &format!("{path}.route"),
            "at least one route destination is required",
        );
    }
    for (i, d) in route.iter().enumerate() {
        destination(
            rep,
            &format!("{path}.route[{i}].destination"),
            &d.destination,
        );
    }
    let weights: Vec<i32> = route.iter().map(|d| d.weight).collect();
    check_weights(rep, &format!("{path}.route"), &weights);
}

fn fault(rep: &mut Reporter<'_>, path: &str, f: Option<&HttpFaultInjection>) {
    let Some(f) = f else { return };
    if f.delay.is_none() && f.abort.is_none() {
        rep.error(&format!("{path}.fault"), "fault needs `delay` or `abort`");
    }
    if let Some(d) = &f.delay {
        let p = format!("{path}.fault.delay");
        match &d.fixed_delay {
            None => rep.error(&p, "fixedDelay is required"),
            Some(fd) => rep.duration(&format!("{p}.fixedDelay"), Some(fd)),
        }
        rep.percent(&format!("{p}.percentage"), d.percentage.as_ref());
    }
    if let Some(a) = &f.abort {
        let p = format!("{path}.fault.abort");
        match (a.http_status, &a.grpc_status) {
            (None, None) => rep.error(&p, "httpStatus or grpcStatus is required"),
            (Some(s), _) if !(200..=599).contains(&s) => {
                rep.error(
                    &format!("{p}.httpStatus"),
                    format!("status {s} must be in 200..=599"),
                );
            }
            (None, Some(name)) if a.grpc_code().is_none() => {
                rep.error(
                    &format!("{p}.grpcStatus"),
                    format!("unknown gRPC status {name:?}; use a name such as UNAVAILABLE"),
                );
            }
            _ => {}
        }
        rep.percent(&format!("{p}.percentage"), a.percentage.as_ref());
    }
}

fn mirrors(rep: &mut Reporter<'_>, path: &str, r: &HttpRoute) {
    if let Some(m) = &r.mirror {
        destination(rep, &format!("{path}.mirror"), m);
    }
    rep.percent(
        &format!("{path}.mirrorPercentage"),
        r.mirror_percentage.as_ref(),
    );
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        rep.error(
            &format!("{path}.mirrors"),
            "set either `mirror` or `mirrors`, not both",
        );
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        destination(
            rep,
            &format!("{path}.mirrors[{i}].destination"),
            &m.destination,
        );
        rep.percent(
            &format!("{path}.mirrors[{i}].percentage"),
            m.percentage.as_ref(),
        );
    }
}
