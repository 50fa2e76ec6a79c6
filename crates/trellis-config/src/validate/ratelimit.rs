//! Validation of the `trellis.dev/v1alpha1` `RateLimitPolicy` and `QuotaPolicy` kinds: limit
//! and quota names non-empty and unique, exactly one attribute per descriptor entry with valid
//! matches, a local bucket and/or a global rate per limit with Envoy's bounds (`maxTokens` and
//! `tokensPerFill` > 0, `fillInterval` ≥ 50ms), `requestsPerUnit` > 0, exactly one quota
//! consumer, and a `MeshConfig.rateLimitService` for anything counted globally. Whether `routes`
//! name existing routes is a warning of `analyze.rs`.

use std::collections::HashSet;

use super::Reporter;
use crate::types::{DescriptorEntry, MeshConfig, QuotaPolicy, RateLimitPolicy, StringMatch};

/// Envoy's floor for a token bucket's `fill_interval`.
pub const MIN_FILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

pub(super) fn rate_limit_policy(rep: &mut Reporter<'_>, p: &RateLimitPolicy, mesh: &MeshConfig) {
    if p.limits.is_empty() {
        rep.error("spec.limits", "at least one limit is required");
    }
    routes(rep, &p.routes);
    let mut names = HashSet::new();
    for (i, l) in p.limits.iter().enumerate() {
        let path = format!("spec.limits[{i}]");
        if l.name.is_empty() {
            rep.error(&format!("{path}.name"), "limit name is required");
        } else if !names.insert(l.name.as_str()) {
            rep.error(
                &format!("{path}.name"),
                format!("limit name `{}` is used twice in this policy", l.name),
            );
        }
        for (j, d) in l.descriptors.iter().enumerate() {
            descriptor(rep, &format!("{path}.descriptors[{j}]"), d);
        }
        if l.local.is_none() && l.global.is_none() {
            rep.error(&path, "set `local`, `global` or both");
        }
        if let Some(b) = &l.local {
            let at = format!("{path}.local");
            if b.max_tokens == 0 {
                rep.error(
                    &format!("{at}.maxTokens"),
                    "maxTokens must be greater than 0",
                );
            }
            if b.tokens_per_fill == Some(0) {
                rep.error(
                    &format!("{at}.tokensPerFill"),
                    "tokensPerFill must be greater than 0 (omit it to refill maxTokens)",
                );
            }
            match &b.fill_interval {
                None => rep.error(
                    &format!("{at}.fillInterval"),
                    "fillInterval is required (e.g. `60s`)",
                ),
                Some(d) => match d.parse() {
                    Err(e) => rep.error(&format!("{at}.fillInterval"), e),
                    Ok(d) if d < MIN_FILL_INTERVAL => rep.error(
                        &format!("{at}.fillInterval"),
                        format!("fillInterval {d:?} is below Envoy's minimum of 50ms"),
                    ),
                    Ok(_) => {}
                },
            }
        }
        if let Some(g) = &l.global {
            let at = format!("{path}.global");
            if g.requests_per_unit == 0 {
                rep.error(
                    &format!("{at}.requestsPerUnit"),
                    "requestsPerUnit must be greater than 0",
                );
            }
            if g.unit.is_none() {
                rep.error(
                    &format!("{at}.unit"),
                    "unit is required (SECOND, MINUTE, HOUR or DAY)",
                );
            }
            needs_service(rep, &at, mesh, "a global limit");
        }
    }
}

pub(super) fn quota_policy(rep: &mut Reporter<'_>, p: &QuotaPolicy, mesh: &MeshConfig) {
    routes(rep, &p.routes);
    match &p.consumer {
        None => rep.error(
            "spec.consumer",
            "consumer is required: one of `jwtClaim`, `header` or `sourcePrincipal`",
        ),
        Some(c) => {
            let set = usize::from(!c.jwt_claim.is_empty())
                + usize::from(!c.header.is_empty())
                + usize::from(c.source_principal.is_some());
            if set != 1 {
                rep.error(
                    "spec.consumer",
                    "set exactly one of `jwtClaim`, `header` or `sourcePrincipal`",
                );
            }
            if !c.header.is_empty() && !is_header_name(&c.header) {
                rep.error(
                    "spec.consumer.header",
                    format!("`{}` is not a valid header name", c.header),
                );
            }
        }
    }
    if p.quotas.is_empty() {
        rep.error("spec.quotas", "at least one quota is required");
    }
    let mut names = HashSet::new();
    for (i, q) in p.quotas.iter().enumerate() {
        let path = format!("spec.quotas[{i}]");
        if q.name.is_empty() {
            rep.error(&format!("{path}.name"), "quota name is required");
        } else if !names.insert(q.name.as_str()) {
            rep.error(
                &format!("{path}.name"),
                format!("quota name `{}` is used twice in this policy", q.name),
            );
        }
        if q.requests == 0 {
            rep.error(
                &format!("{path}.requests"),
                "requests must be greater than 0",
            );
        }
    }
    needs_service(rep, "spec", mesh, "a QuotaPolicy");
}

fn routes(rep: &mut Reporter<'_>, routes: &[String]) {
    for (i, r) in routes.iter().enumerate() {
        if r.is_empty() {
            rep.error(&format!("spec.routes[{i}]"), "route name must not be empty");
        }
    }
}

fn needs_service(rep: &mut Reporter<'_>, path: &str, mesh: &MeshConfig, what: &str) {
    let ok = mesh
        .rate_limit_service
        .as_ref()
        .is_some_and(|s| !s.service.is_empty() && s.port != 0);
    if !ok {
        rep.error(
            path,
            format!(
                "{what} is counted by the rate limit service; set `rateLimitService` (service and port) in the MeshConfig"
            ),
        );
    }
}

/// An HTTP field name (RFC 9110 token).
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn descriptor(rep: &mut Reporter<'_>, path: &str, d: &DescriptorEntry) {
    let matches: [(&str, Option<&StringMatch>); 6] = [
        ("path", d.path.as_ref()),
        ("method", d.method.as_ref()),
        ("authority", d.authority.as_ref()),
        ("routeName", d.route_name.as_ref()),
        ("sourcePrincipal", d.source_principal.as_ref()),
        ("remoteAddress", d.remote_address.as_ref()),
    ];
    let set = matches.iter().filter(|(_, m)| m.is_some()).count()
        + usize::from(d.header.is_some())
        + usize::from(d.jwt_claim.is_some())
        + usize::from(d.generic_key.is_some());
    if set != 1 {
        rep.error(
            path,
            "set exactly one of `path`, `method`, `authority`, `routeName`, `sourcePrincipal`, `remoteAddress`, `header`, `jwtClaim` or `genericKey`",
        );
    }
    for (field, m) in matches {
        if let Some(m) = m {
            rep.string_match(&format!("{path}.{field}"), m, true);
        }
    }
    if let Some(h) = &d.header {
        let at = format!("{path}.header");
        if h.name.is_empty() {
            rep.error(&format!("{at}.name"), "header name is required");
        } else if !is_header_name(&h.name) {
            rep.error(
                &format!("{at}.name"),
                format!("`{}` is not a valid header name", h.name),
            );
        }
        if !h.claim.is_empty() {
            rep.error(&format!("{at}.claim"), "`claim` belongs to `jwtClaim`");
        }
        if let Some(m) = &h.value {
            rep.string_match(&format!("{at}.match"), m, false);
        }
    }
    if let Some(c) = &d.jwt_claim {
        let at = format!("{path}.jwtClaim");
        if c.claim.is_empty() {
            rep.error(
                &format!("{at}.claim"),
                "claim is required (e.g. `sub`, or `a.b` for a nested claim)",
            );
        }
        if !c.name.is_empty() {
            rep.error(&format!("{at}.name"), "`name` belongs to `header`");
        }
        if let Some(m) = &c.value {
            rep.string_match(&format!("{at}.match"), m, false);
        }
    }
    if let Some(g) = &d.generic_key {
        let at = format!("{path}.genericKey");
        if g.key.is_empty() {
            rep.error(&format!("{at}.key"), "key is required");
        }
        if g.value.is_empty() {
            rep.error(&format!("{at}.value"), "value is required");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::load_str;

    const MESH: &str = "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  rateLimitService: {service: ratelimit.istio-system.svc.cluster.local, port: 8081}\n---\n";

    fn errors(kind: &str, spec: &str, mesh: bool) -> Vec<String> {
        let yaml = format!(
            "{}apiVersion: trellis.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: p, namespace: default}}\nspec:\n{spec}",
            if mesh { MESH } else { "" }
        );
        match load_str("rl.yaml", &yaml) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn assert_all(e: &[String], wants: &[&str]) {
        for want in wants {
            assert!(
                e.iter().any(|e| e.contains(want)),
                "missing {want:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn a_good_policy_loads() {
        let spec = "  selector: {matchLabels: {istio: ingressgateway}}\n  routes: [productpage]\n  limits:\n  - name: productpage\n    descriptors:\n    - path: {exact: /productpage}\n    global: {requestsPerUnit: 1, unit: MINUTE}\n  - name: per-user\n    descriptors:\n    - header: {name: x-user}\n    - jwtClaim: {claim: sub, match: {prefix: u}}\n    local: {maxTokens: 4, tokensPerFill: 4, fillInterval: 60s}\n";
        assert_eq!(errors("RateLimitPolicy", spec, true), Vec::<String>::new());
        let spec =
            "  consumer: {jwtClaim: sub}\n  quotas: [{name: daily, requests: 1000, window: DAY}]\n";
        assert_eq!(errors("QuotaPolicy", spec, true), Vec::<String>::new());
    }

    #[test]
    fn every_mistake_is_reported_with_its_place() {
        let spec = "  routes: ['']\n  limits:\n  - name: ''\n    descriptors:\n    - {}\n    - {path: {exact: /a}, method: {exact: GET}}\n    - path: {exact: /a, prefix: /b}\n    - header: {match: {regex: '('}}\n    - jwtClaim: {}\n    - genericKey: {key: k}\n    local: {maxTokens: 0, tokensPerFill: 0, fillInterval: 10ms}\n  - name: a\n    descriptors: [{method: {}}]\n  - name: a\n    global: {requestsPerUnit: 0}\n";
        let e = errors("RateLimitPolicy", spec, false);
        assert_all(
            &e,
            &[
                "rl.yaml:5:12: error: RateLimitPolicy default/p: spec.routes[0]",
                "spec.routes[0]: route name must not be empty",
                "spec.limits[0].name: limit name is required",
                "spec.limits[0].descriptors[0]: set exactly one of `path`",
                "spec.limits[0].descriptors[1]: set exactly one of `path`",
                "spec.limits[0].descriptors[2].path: set exactly one of `exact`, `prefix` or `regex`",
                "spec.limits[0].descriptors[3].header.name: header name is required",
                "spec.limits[0].descriptors[3].header.match.regex: invalid regex `(`",
                "spec.limits[0].descriptors[4].jwtClaim.claim: claim is required",
                "spec.limits[0].descriptors[5].genericKey.value: value is required",
                "spec.limits[0].local.maxTokens: maxTokens must be greater than 0",
                "spec.limits[0].local.tokensPerFill: tokensPerFill must be greater than 0",
                "spec.limits[0].local.fillInterval: fillInterval 10ms is below Envoy's minimum of 50ms",
                "spec.limits[1]: set `local`, `global` or both",
                "spec.limits[2].name: limit name `a` is used twice",
                "spec.limits[2].global.requestsPerUnit: requestsPerUnit must be greater than 0",
                "spec.limits[2].global.unit: unit is required",
                "spec.limits[2].global: a global limit is counted by the rate limit service; set `rateLimitService`",
            ],
        );
        // An empty StringMatch (one counter per distinct value) is fine.
        assert!(
            !e.iter().any(|e| e.contains("spec.limits[1].descriptors")),
            "{e:#?}"
        );
        let e = errors("RateLimitPolicy", "  limits: []\n", true);
        assert_all(&e, &["spec.limits: at least one limit is required"]);
        let e = errors(
            "RateLimitPolicy",
            "  limits: [{name: a, local: {maxTokens: 1}}]\n",
            true,
        );
        assert_all(
            &e,
            &["spec.limits[0].local.fillInterval: fillInterval is required"],
        );
    }

    #[test]
    fn quota_mistakes_are_reported() {
        let spec = "  consumer: {jwtClaim: sub, header: x-api-key}\n  quotas:\n  - {name: d, requests: 0}\n  - {name: d, requests: 5}\n";
        let e = errors("QuotaPolicy", spec, false);
        assert_all(
            &e,
            &[
                "spec.consumer: set exactly one of `jwtClaim`, `header` or `sourcePrincipal`",
                "spec.quotas[0].requests: requests must be greater than 0",
                "spec.quotas[1].name: quota name `d` is used twice",
                "spec: a QuotaPolicy is counted by the rate limit service",
            ],
        );
        let e = errors("QuotaPolicy", "  quotas: []\n", true);
        assert_all(
            &e,
            &[
                "spec.consumer: consumer is required",
                "spec.quotas: at least one quota is required",
            ],
        );
        let e = errors(
            "QuotaPolicy",
            "  consumer: {sourcePrincipal: {}}\n  quotas: [{name: h, requests: 1, window: HOUR}]\n",
            true,
        );
        assert_eq!(e, Vec::<String>::new());
    }
}
