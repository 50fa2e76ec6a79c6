//! Validation of `security.istio.io` `AuthorizationPolicy` and the `trellis.dev/v1alpha1`
//! `MeshConfig`: actions and providers, one of selector/targetRef, non-empty sources and
//! operations, CIDRs, ports, `*` placement, path templates and `when` keys with their values.
//! Istio's rules (istio/api `security/v1beta1/authorization_policy.proto`, `validation.go`).

use std::net::IpAddr;

use super::Reporter;
use crate::types::{
    AuthorizationPolicy, AuthorizationRule, Condition, MeshConfig, ObjectMeta, Operation,
    PATH_NORMALIZATIONS, Source,
};

pub const ACTIONS: &[&str] = &["ALLOW", "DENY", "AUDIT", "CUSTOM"];
/// Istio's dry-run annotation.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// `when` keys Istio documents (those with `[...]` take a name inside the brackets).
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

pub(super) fn authorization_policy(
    rep: &mut Reporter<'_>,
    meta: &ObjectMeta,
    p: &AuthorizationPolicy,
) {
    let action = p.action.as_deref().unwrap_or("ALLOW");
    if !ACTIONS.contains(&action) {
        rep.error(
            "spec.action",
            format!(
                "unknown action `{action}`; use one of {}",
                ACTIONS.join(", ")
            ),
        );
    }
    match (&p.provider, action) {
        (None, "CUSTOM") => rep.error(
            "spec.provider",
            "a CUSTOM policy needs `provider.name` (an extension provider of the MeshConfig)",
        ),
        (Some(pr), "CUSTOM") if pr.name.is_empty() => {
            rep.error("spec.provider.name", "provider name must not be empty")
        }
        (Some(_), a) if a != "CUSTOM" => rep.error(
            "spec.provider",
            format!("`provider` is only allowed with action CUSTOM, not {a}"),
        ),
        _ => {}
    }
    let targets = usize::from(p.target_ref.is_some()) + usize::from(!p.target_refs.is_empty());
    if p.selector.is_some() && targets > 0 {
        rep.error(
            "spec",
            "set only one of `selector`, `targetRef` or `targetRefs`",
        );
    } else if targets > 1 {
        rep.error("spec", "set either `targetRef` or `targetRefs`, not both");
    }
    let refs = p
        .target_ref
        .iter()
        .map(|r| ("spec.targetRef".to_string(), r));
    let refs = refs.chain(
        p.target_refs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
    );
    for (path, r) in refs {
        if r.name.is_empty() {
            rep.error(&format!("{path}.name"), "name is required");
        }
        if !["Gateway", "Service", "ServiceEntry"].contains(&r.kind.as_str()) {
            rep.error(
                &format!("{path}.kind"),
                format!(
                    "kind `{}` is not supported; use Gateway, Service or ServiceEntry",
                    r.kind
                ),
            );
        }
        if !r.namespace.is_empty() && r.namespace != meta.namespace {
            rep.error(
                &format!("{path}.namespace"),
                "a target must be in the policy's own namespace",
            );
        }
    }
    if let Some(v) = meta.annotations.get(DRY_RUN_ANNOTATION)
        && !["true", "false"].contains(&v.as_str())
    {
        rep.error(
            &format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
            format!("`{v}` is not a boolean; use \"true\" or \"false\""),
        );
    }
    for (i, rule) in p.rules.iter().enumerate() {
        self::rule(rep, &format!("spec.rules[{i}]"), rule);
    }
}

fn rule(rep: &mut Reporter<'_>, path: &str, rule: &AuthorizationRule) {
    for (i, from) in rule.from.iter().enumerate() {
        let path = format!("{path}.from[{i}].source");
        match &from.source {
            None => rep.error(&path, "`source` is required in a `from` entry"),
            Some(s) => source(rep, &path, s),
        }
    }
    for (i, to) in rule.to.iter().enumerate() {
        let path = format!("{path}.to[{i}].operation");
        match &to.operation {
            None => rep.error(&path, "`operation` is required in a `to` entry"),
            Some(o) => operation(rep, &path, o),
        }
    }
    for (i, c) in rule.when.iter().enumerate() {
        condition(rep, &format!("{path}.when[{i}]"), c);
    }
}

fn source(rep: &mut Reporter<'_>, path: &str, s: &Source) {
    let lists: [(&str, &Vec<String>); 12] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        rep.error(path, "a source must set at least one field");
    }
    for (field, list) in lists {
        for (i, v) in list.iter().enumerate() {
            let at = format!("{path}.{field}[{i}]");
            if field.ends_with("pBlocks") || field.ends_with("IpBlocks") {
                cidr(rep, &at, v);
            } else {
                wildcard(rep, &at, v);
            }
        }
    }
    if (!s.principals.is_empty() || !s.not_principals.is_empty())
        && (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
    {
        rep.error(
            path,
            "`serviceAccounts` cannot be used together with `principals`",
        );
    }
}

fn operation(rep: &mut Reporter<'_>, path: &str, o: &Operation) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        rep.error(path, "an operation must set at least one field");
    }
    for (field, list) in lists {
        for (i, v) in list.iter().enumerate() {
            let at = format!("{path}.{field}[{i}]");
            match field {
                "ports" | "notPorts" => port(rep, &at, v),
                "paths" | "notPaths" => path_pattern(rep, &at, v),
                _ => wildcard(rep, &at, v),
            }
        }
    }
}

fn condition(rep: &mut Reporter<'_>, path: &str, c: &Condition) {
    let known = CONDITION_KEYS.contains(&c.key.as_str())
        || bracketed(&c.key, "request.headers").is_some()
        || bracketed(&c.key, "request.auth.claims").is_some()
        || c.key.starts_with("experimental.envoy.filters.");
    if c.key.is_empty() {
        rep.error(&format!("{path}.key"), "key is required");
    } else if !known {
        rep.error(
            &format!("{path}.key"),
            format!(
                "unknown key `{}`; use request.headers[<name>], request.auth.claims[<name>] or one of {}",
                c.key,
                CONDITION_KEYS.join(", ")
            ),
        );
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        rep.error(path, "set at least one of `values` or `notValues`");
    }
    for (field, list) in [("values", &c.values), ("notValues", &c.not_values)] {
        for (i, v) in list.iter().enumerate() {
            let at = format!("{path}.{field}[{i}]");
            match c.key.as_str() {
                "source.ip" | "remote.ip" | "destination.ip" => cidr(rep, &at, v),
                "destination.port" => port(rep, &at, v),
                _ => {}
            }
        }
    }
}

/// `request.headers[x-foo]` → `x-foo` for `prefix` `request.headers`.
pub fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let name = key
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    (!name.is_empty()).then_some(name)
}

fn cidr(rep: &mut Reporter<'_>, path: &str, v: &str) {
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (v, None),
    };
    let Ok(addr) = ip.parse::<IpAddr>() else {
        rep.error(
            path,
            format!("`{v}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
        );
        return;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if let Some(len) = len
        && len.parse::<u32>().map_or(true, |l| l > max)
    {
        rep.error(
            path,
            format!("prefix length `{len}` in `{v}` is not 0..={max}"),
        );
    }
}

fn port(rep: &mut Reporter<'_>, path: &str, v: &str) {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => {}
        _ => rep.error(path, format!("port `{v}` is not a number in 1..=65535")),
    }
}

/// `*` alone, as a prefix or as a suffix; nothing else.
fn wildcard(rep: &mut Reporter<'_>, path: &str, v: &str) {
    if v.is_empty() {
        rep.error(path, "value must not be empty");
        return;
    }
    let inner = v.strip_prefix('*').unwrap_or(v);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') || (v.len() > 1 && v.starts_with('*') && v.ends_with('*')) {
        rep.error(
            path,
            format!("`{v}`: `*` is allowed only alone, as a prefix or as a suffix"),
        );
    }
}

/// A path: exact, `*` prefix/suffix, or a template with whole segments `{*}` / `{**}` (the
/// latter only last).
fn path_pattern(rep: &mut Reporter<'_>, path: &str, v: &str) {
    if !v.contains('{') {
        return wildcard(rep, path, v);
    }
    if !v.starts_with('/') {
        rep.error(path, format!("template `{v}` must start with `/`"));
        return;
    }
    let segments: Vec<&str> = v[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let bad = if seg.contains('{') || seg.contains('}') || seg.contains('*') {
            !(*seg == "{*}" || (*seg == "{**}" && i + 1 == segments.len()))
        } else {
            false
        };
        if bad {
            rep.error(
                path,
                format!(
                    "`{v}`: a template segment must be exactly `{{*}}` or (last) `{{**}}`, found `{seg}`"
                ),
            );
            return;
        }
    }
}

/// At most one MeshConfig; a known normalization.
pub(super) fn mesh_config(rep: &mut Reporter<'_>, m: &MeshConfig, index: usize) {
    if index > 0 {
        rep.error(
            "metadata.name",
            "only one MeshConfig is allowed per mesh; merge the settings into the first",
        );
    }
    rep.duration("spec.dnsRefreshRate", m.dns_refresh_rate.as_ref());
    if m.dns_refresh_rate
        .as_ref()
        .and_then(|d| d.get())
        .is_some_and(|d| d.is_zero())
    {
        rep.error(
            "spec.dnsRefreshRate",
            "must be more than 0s; leave it out for the default (60s)",
        );
    }
    if let Some(p) = &m.path_normalization
        && !PATH_NORMALIZATIONS.contains(&p.normalization.as_str())
    {
        rep.error(
            "spec.pathNormalization.normalization",
            format!(
                "unknown normalization `{}`; use one of {}",
                p.normalization,
                PATH_NORMALIZATIONS.join(", ")
            ),
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in m.extension_providers.iter().enumerate() {
        let at = format!("spec.extensionProviders[{i}]");
        if p.name.is_empty() {
            rep.error(&format!("{at}.name"), "name is required");
        } else if !names.insert(p.name.as_str()) {
            rep.error(
                &format!("{at}.name"),
                format!("duplicate provider `{}`", p.name),
            );
        }
        let (service, port, timeout, status) =
            match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
                (Some(h), None) => (&h.service, h.port, &h.timeout, &h.status_on_error),
                (None, Some(g)) => (&g.service, g.port, &g.timeout, &g.status_on_error),
                _ => {
                    rep.error(
                        &at,
                        "set exactly one of `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`",
                    );
                    continue;
                }
            };
        let kind = if p.envoy_ext_authz_http.is_some() {
            "envoyExtAuthzHttp"
        } else {
            "envoyExtAuthzGrpc"
        };
        if service.is_empty() {
            rep.error(&format!("{at}.{kind}.service"), "service is required");
        }
        rep.port_number(&format!("{at}.{kind}.port"), port);
        rep.duration(&format!("{at}.{kind}.timeout"), timeout.as_ref());
        if !status.is_empty()
            && !status
                .parse::<u16>()
                .is_ok_and(|s| (200..=599).contains(&s))
        {
            rep.error(
                &format!("{at}.{kind}.statusOnError"),
                format!("`{status}` is not an HTTP status (200..=599)"),
            );
        }
    }
    if m.trust_domain.contains('/') {
        rep.error(
            "spec.trustDomain",
            format!("trust domain `{}` must not contain `/`", m.trust_domain),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::load_str;

    fn errors(yaml: &str) -> Vec<String> {
        match load_str("ap.yaml", yaml) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn policy(spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n{spec}"
        )
    }

    #[test]
    fn a_full_policy_loads_in_both_api_versions() {
        for version in ["v1", "v1beta1"] {
            let yaml = format!(
                "apiVersion: security.istio.io/{version}\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  action: DENY\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/default/sa/sleep], notNamespaces: [prod], ipBlocks: [10.0.0.0/8]}}}}]\n    to: [{{operation: {{methods: [GET], paths: ['/info*', '/api/{{*}}/x/{{**}}'], ports: ['8000']}}}}]\n    when: [{{key: 'request.headers[version]', values: [v1]}}, {{key: destination.port, notValues: ['9000']}}]\n"
            );
            let loaded = load_str("ap.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
            let p = &loaded.snapshot.authorization_policies[0].spec;
            assert_eq!(p.action.as_deref(), Some("DENY"));
            assert_eq!(p.rules[0].when[1].not_values, vec!["9000"]);
        }
        let empty = load_str("ap.yaml", &policy("  {}\n")).expect("spec: {} loads");
        assert!(
            empty.snapshot.authorization_policies[0]
                .spec
                .rules
                .is_empty()
        );
    }

    #[test]
    fn mistakes_are_reported_with_their_field_paths() {
        let e = errors(&policy(
            "  action: REJECT\n  rules:\n  - from: [{source: {ipBlocks: [10.0.0.300/8], principals: ['a*b']}}]\n    to: [{operation: {ports: ['http'], paths: ['/a/{x}']}}, {}]\n    when: [{key: request.body, values: [x]}, {key: source.ip}]\n",
        ));
        for want in [
            "ap.yaml:5:11: error: AuthorizationPolicy foo/p: spec.action: unknown action `REJECT`",
            "spec.rules[0].from[0].source.ipBlocks[0]: `10.0.0.300/8` is not an IP address",
            "spec.rules[0].from[0].source.principals[0]: `a*b`: `*` is allowed only",
            "spec.rules[0].to[0].operation.ports[0]: port `http` is not a number",
            "spec.rules[0].to[0].operation.paths[0]: `/a/{x}`: a template segment",
            "spec.rules[0].to[1].operation: `operation` is required",
            "spec.rules[0].when[0].key: unknown key `request.body`",
            "spec.rules[0].when[1]: set at least one of `values` or `notValues`",
        ] {
            assert!(
                e.iter().any(|e| e.contains(want)),
                "missing {want:?} in {e:#?}"
            );
        }
        let e = errors(&policy("  action: CUSTOM\n"));
        assert!(
            e.iter().any(|e| e.contains("needs `provider.name`")),
            "{e:?}"
        );
        let e = errors(&policy(
            "  selector: {matchLabels: {app: a}}\n  targetRef: {kind: Gateway, name: gw}\n",
        ));
        assert!(
            e.iter().any(|e| e.contains("only one of `selector`")),
            "{e:?}"
        );
        let e = errors(
            "apiVersion: security.istio.io/v1alpha3\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {}\n",
        );
        assert!(
            e.iter()
                .any(|e| e.contains("use `security.istio.io/v1` or `security.istio.io/v1beta1`")),
            "{e:?}"
        );
    }

    #[test]
    fn mesh_config_is_checked_and_unique() {
        let egress = "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n  dnsRefreshRate: 5s\n";
        let loaded = load_str("m.yaml", egress).expect("valid");
        let mesh = loaded.snapshot.mesh_config();
        assert_eq!(
            mesh.outbound_mode(),
            crate::OutboundTrafficMode::RegistryOnly
        );
        let bad = egress.replace("REGISTRY_ONLY", "DENY").replace("5s", "0s");
        let errs = errors(&bad);
        assert!(errs.iter().any(|e| e.contains("DENY")), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("dnsRefreshRate")),
            "{errs:?}"
        );
        let one = "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  pathNormalization: {normalization: MERGE_SLASHES}\n";
        let loaded = load_str("ap.yaml", one).expect("loads");
        let mesh = loaded.snapshot.mesh_config();
        assert_eq!(mesh.normalization(), "MERGE_SLASHES");
        assert_eq!(mesh.root_namespace(), "istio-system");
        assert_eq!(mesh.trust_domain(), "cluster.local");
        let bad = "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  pathNormalization: {normalization: FULL}\n---\napiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: other}\nspec: {}\n";
        let e = errors(bad);
        for want in [
            "ap.yaml:5:38: error: MeshConfig istio-system/mesh: spec.pathNormalization.normalization: unknown normalization `FULL`",
            "MeshConfig default/other: metadata.name: only one MeshConfig",
        ] {
            assert!(
                e.iter().any(|e| e.contains(want)),
                "missing {want:?} in {e:#?}"
            );
        }
    }
}
