//! Authorization: Istio `AuthorizationPolicy` → Envoy RBAC, as Istio generates it. One
//! `envoy.filters.http.rbac` per action (DENY, then ALLOW, then AUDIT as a `LOG` RBAC) in front
//! of the router of the sidecar inbound and gateway HTTP listeners, one
//! `envoy.filters.network.rbac` per action in front of `tcp_proxy` on gateway L4 listeners, and
//! the mesh's path normalization on those HCMs (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`). Dry-run policies (`istio.io/dry-run: "true"`) go to
//! `shadow_rules`.
//!
//! Owns which policies apply to a proxy (root namespace mesh-wide, the proxy's namespace,
//! `selector` ⊆ labels, `targetRef` to the proxy's Gateway) and the rule → permission/principal
//! translation, including the TCP rules: an ALLOW rule with HTTP-only fields is dropped, a DENY
//! rule loses its HTTP-only fields. It must not know how the proxy evaluates RBAC.

use envoy_types::pb::envoy::config::core::v3::{ApiVersion, HttpUri, http_uri};
use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    AuthorizationResponse, ExtAuthz, HttpService, ext_authz,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::PathWithEscapedSlashesAction,
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher,
    list_matcher, metadata_matcher, path_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use trellis_config::{
    AuthorizationPolicy, AuthorizationRule, Condition, DRY_RUN_ANNOTATION, ExtAuthzHttpProvider,
    MeshConfig, Operation, Resource, Source, bracketed,
};

use crate::listener::{HCM_FILTER, ROUTER_FILTER};
use crate::{Context, Listener};

pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
pub const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
/// Istio's names for the CUSTOM marker rules and their stats.
pub const EXT_AUTHZ_POLICY_PREFIX: &str = "istio-ext-authz-";
pub const EXT_AUTHZ_STAT_PREFIX: &str = "istio_ext_authz_";
pub const URI_TEMPLATE_MATCHER: &str = "envoy.path.match.uri_template.uri_template_matcher";
/// Dynamic metadata namespace where JWT authentication puts the request's claims (Istio's).
pub const AUTHN_METADATA: &str = "istio_authn";
/// Label Istio puts on the workloads of a Gateway API `Gateway`.
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Which filter chain the rules are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Http,
    Tcp,
}

/// The policies that apply to the proxy, sorted by namespace/name.
fn applicable<'a>(
    ctx: &'a Context<'_>,
    mesh: &MeshConfig,
) -> Vec<&'a Resource<AuthorizationPolicy>> {
    let proxy = ctx.proxy;
    let root = mesh.root_namespace();
    let mut out: Vec<_> = ctx
        .snapshot
        .authorization_policies
        .iter()
        .filter(|p| {
            let ns = p.meta.namespace.as_str();
            let targets: Vec<_> = p
                .spec
                .target_ref
                .iter()
                .chain(&p.spec.target_refs)
                .collect();
            if !targets.is_empty() {
                return ns == proxy.namespace
                    && targets.iter().any(|t| {
                        t.kind == "Gateway" && proxy.labels.get(GATEWAY_NAME_LABEL) == Some(&t.name)
                    });
            }
            if ns != root && ns != proxy.namespace {
                return false;
            }
            p.spec.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k) == Some(v))
            })
        })
        .collect();
    out.sort_by_key(|p| p.key());
    out
}

fn action_of(p: &AuthorizationPolicy) -> &str {
    p.action.as_deref().unwrap_or("ALLOW")
}

fn dry_run(p: &Resource<AuthorizationPolicy>) -> bool {
    p.meta
        .annotations
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// `(rules, shadow_rules)` per RBAC action, in evaluation order: DENY, ALLOW, LOG (AUDIT).
fn rbac_configs(
    policies: &[&Resource<AuthorizationPolicy>],
    layer: Layer,
    trust_domain: &str,
    custom_via_ext_authz: bool,
) -> Vec<(Option<Rbac>, Option<Rbac>)> {
    let mut out = Vec::new();
    // CUSTOM comes first in Istio's order. External authorizers are not supported yet, so a
    // CUSTOM policy fails closed the way Istio does for a provider it cannot use: what its
    // rules match is denied.
    for (istio, envoy) in [
        ("CUSTOM", rbac::Action::Deny),
        ("DENY", rbac::Action::Deny),
        ("ALLOW", rbac::Action::Allow),
        ("AUDIT", rbac::Action::Log),
    ] {
        if istio == "CUSTOM" && custom_via_ext_authz {
            continue;
        }
        let of_action: Vec<_> = policies
            .iter()
            .filter(|p| action_of(&p.spec) == istio)
            .collect();
        if of_action.is_empty() {
            continue;
        }
        let mut enforced = Rbac {
            action: envoy as i32,
            ..Default::default()
        };
        let mut shadow = enforced.clone();
        let (mut any_enforced, mut any_shadow) = (false, false);
        for p in of_action {
            let target = if dry_run(p) {
                any_shadow = true;
                &mut shadow
            } else {
                any_enforced = true;
                &mut enforced
            };
            for (i, rule) in p.spec.rules.iter().enumerate() {
                if let Some(policy) = translate_rule(rule, istio, layer, trust_domain) {
                    let name =
                        format!("ns[{}]-policy[{}]-rule[{i}]", p.meta.namespace, p.meta.name);
                    target.policies.insert(name, policy);
                }
            }
        }
        out.push((
            any_enforced.then_some(enforced),
            any_shadow.then_some(shadow),
        ));
    }
    out
}

/// The HTTP provider every CUSTOM policy of the proxy names, if there is exactly one and it
/// is an `envoyExtAuthzHttp` provider of the MeshConfig (anything else fails closed).
fn ext_authz_provider<'m>(
    policies: &[&Resource<AuthorizationPolicy>],
    mesh: &'m MeshConfig,
) -> Option<(&'m str, &'m ExtAuthzHttpProvider)> {
    let mut names = policies
        .iter()
        .filter(|p| action_of(&p.spec) == "CUSTOM")
        .map(|p| p.spec.provider.as_ref().map_or("", |pr| pr.name.as_str()));
    let first = names.next()?;
    if names.any(|n| n != first) {
        return None;
    }
    let provider = mesh.extension_providers.iter().find(|p| p.name == first)?;
    provider
        .envoy_ext_authz_http
        .as_ref()
        .map(|h| (provider.name.as_str(), h))
}

/// The service port an HTTP ext_authz provider needs a cluster for.
pub fn provider_refs(ctx: &Context<'_>, refs: &mut crate::route::ClusterRefs) {
    let mesh = ctx.snapshot.mesh_config();
    let policies = applicable(ctx, &mesh);
    if let Some((_, h)) = ext_authz_provider(&policies, &mesh) {
        refs.insert((h.service.clone(), h.port, String::new()));
    }
}

/// Istio's CUSTOM shape: an RBAC filter whose shadow rules mark the requests the CUSTOM rules
/// match (`istio_ext_authz_` prefix, policies named `istio-ext-authz-…`), then the ext_authz
/// filter enabled only for those requests.
fn ext_authz_filters(
    policies: &[&Resource<AuthorizationPolicy>],
    provider: &ExtAuthzHttpProvider,
    trust_domain: &str,
) -> Vec<HttpFilter> {
    let mut shadow = Rbac {
        action: rbac::Action::Deny as i32,
        ..Default::default()
    };
    for p in policies.iter().filter(|p| action_of(&p.spec) == "CUSTOM") {
        for (i, rule) in p.spec.rules.iter().enumerate() {
            if let Some(policy) = translate_rule(rule, "CUSTOM", Layer::Http, trust_domain) {
                let name = format!(
                    "{EXT_AUTHZ_POLICY_PREFIX}ns[{}]-policy[{}]-rule[{i}]",
                    p.meta.namespace, p.meta.name
                );
                shadow.policies.insert(name, policy);
            }
        }
    }
    let marker = SortedHttpRbac {
        rules: None,
        shadow_rules: Some(SortedRbac::from(shadow)),
        shadow_rules_stat_prefix: EXT_AUTHZ_STAT_PREFIX.into(),
    };
    let header_list = |names: &[String]| ListStringMatcher {
        patterns: names
            .iter()
            .map(|n| string_match(&n.to_ascii_lowercase(), true))
            .collect(),
    };
    let timeout = provider
        .timeout
        .as_ref()
        .and_then(|d| d.get())
        .unwrap_or(std::time::Duration::from_secs(600));
    let status = provider.status_on_error.parse::<i32>().unwrap_or(403);
    let ext = ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: provider.fail_open,
        status_on_error: Some(HttpStatus { code: status }),
        services: Some(ext_authz::Services::HttpService(HttpService {
            server_uri: Some(HttpUri {
                uri: format!("http://{}:{}", provider.service, provider.port),
                timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: timeout.as_secs() as i64,
                    nanos: timeout.subsec_nanos() as i32,
                }),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                    crate::cluster::outbound_name(provider.port, "", &provider.service),
                )),
            }),
            path_prefix: provider.path_prefix.clone(),
            authorization_response: Some(AuthorizationResponse {
                allowed_upstream_headers: Some(header_list(&provider.headers_to_upstream_on_allow)),
                allowed_client_headers: Some(header_list(&provider.headers_to_downstream_on_deny)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        allowed_headers: Some(header_list(&provider.include_request_headers_in_check)),
        filter_enabled_metadata: Some(MetadataMatcher {
            filter: HTTP_RBAC_FILTER.into(),
            path: vec![metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(format!(
                    "{EXT_AUTHZ_STAT_PREFIX}shadow_effective_policy_id"
                ))),
            }],
            value: Some(value_string(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Prefix(
                    EXT_AUTHZ_POLICY_PREFIX.trim_end_matches('-').into(),
                )),
                ignore_case: false,
            })),
            invert: false,
        }),
        ..Default::default()
    };
    vec![
        HttpFilter {
            name: HTTP_RBAC_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: HttpRbac::type_url(),
                value: marker.encode_to_vec(),
            })),
            ..Default::default()
        },
        HttpFilter {
            name: EXT_AUTHZ_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(ext))),
            ..Default::default()
        },
    ]
}

/// The HTTP RBAC (and ext_authz) filters for the proxy (empty when no policy applies).
pub fn http_filters(ctx: &Context<'_>) -> Vec<HttpFilter> {
    let mesh = ctx.snapshot.mesh_config();
    let policies = applicable(ctx, &mesh);
    let provider = ext_authz_provider(&policies, &mesh);
    let mut out = provider
        .map(|(_, h)| ext_authz_filters(&policies, h, mesh.trust_domain()))
        .unwrap_or_default();
    let rbac = rbac_configs(
        &policies,
        Layer::Http,
        mesh.trust_domain(),
        provider.is_some(),
    )
    .into_iter()
    .map(|(rules, shadow)| {
        // Istio's: `istio_dry_run_allow_` / `istio_dry_run_deny_`.
        let prefix = match &shadow {
            Some(s) if s.action == rbac::Action::Deny as i32 => "istio_dry_run_deny_",
            Some(_) => "istio_dry_run_allow_",
            None => "",
        }
        .to_string();
        let config = SortedHttpRbac {
            rules: rules.map(SortedRbac::from),
            shadow_rules: shadow.map(SortedRbac::from),
            shadow_rules_stat_prefix: prefix,
        };
        HttpFilter {
            name: HTTP_RBAC_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: HttpRbac::type_url(),
                value: config.encode_to_vec(),
            })),
            ..Default::default()
        }
    });
    out.extend(rbac);
    out
}

/// The network RBAC filters for the proxy's TCP listeners.
pub fn network_filters(ctx: &Context<'_>) -> Vec<Filter> {
    let mesh = ctx.snapshot.mesh_config();
    let policies = applicable(ctx, &mesh);
    rbac_configs(&policies, Layer::Tcp, mesh.trust_domain(), false)
        .into_iter()
        .map(|(rules, shadow)| {
            let config = SortedNetworkRbac {
                rules: rules.map(SortedRbac::from),
                shadow_rules: shadow.map(SortedRbac::from),
                stat_prefix: "tcp.".into(),
                shadow_rules_stat_prefix: "istio_dry_run_".into(),
            };
            Filter {
                name: NETWORK_RBAC_FILTER.into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url: NetworkRbac::type_url(),
                    value: config.encode_to_vec(),
                })),
            }
        })
        .collect()
}

/// Adds the RBAC filters (before the router) and the mesh's path normalization to every HCM
/// of `listener`, and the network RBAC filters in front of every other chain's filters.
pub fn secure_listener(ctx: &Context<'_>, listener: &mut Listener) {
    let http = http_filters(ctx);
    let tcp = network_filters(ctx);
    let mesh = ctx.snapshot.mesh_config();
    let normalization = mesh.normalization().to_string();
    // Istio's gatewayTopology.numTrustedProxies: gateways only.
    let trusted_hops = match ctx.proxy.role {
        crate::Role::Gateway => mesh.num_trusted_proxies(),
        _ => 0,
    };
    for chain in &mut listener.filter_chains {
        let is_http = chain.filters.iter().any(|f| f.name == HCM_FILTER);
        if !is_http {
            if !tcp.is_empty() {
                chain.filters.splice(0..0, tcp.iter().cloned());
            }
            continue;
        }
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            let at = hcm
                .http_filters
                .iter()
                .position(|f| f.name == ROUTER_FILTER)
                .unwrap_or(hcm.http_filters.len());
            hcm.http_filters.splice(at..at, http.iter().cloned());
            normalize(&mut hcm, &normalization);
            hcm.xff_num_trusted_hops = trusted_hops;
            *any = pack_any(hcm);
        }
    }
}

/// Istio's mapping of `pathNormalization` onto the HCM.
fn normalize(hcm: &mut HttpConnectionManager, mode: &str) {
    let (path, merge, escaped) = match mode {
        "NONE" => (false, false, PathWithEscapedSlashesAction::KeepUnchanged),
        "MERGE_SLASHES" => (true, true, PathWithEscapedSlashesAction::KeepUnchanged),
        "DECODE_AND_MERGE_SLASHES" => {
            (true, true, PathWithEscapedSlashesAction::UnescapeAndForward)
        }
        _ => (true, false, PathWithEscapedSlashesAction::KeepUnchanged),
    };
    hcm.normalize_path = Some(BoolValue { value: path });
    hcm.merge_slashes = merge;
    hcm.path_with_escaped_slashes_action = escaped as i32;
}

/// Whether a rule uses fields only HTTP has.
fn has_http_only(rule: &AuthorizationRule) -> bool {
    let source = rule
        .from
        .iter()
        .filter_map(|f| f.source.as_ref())
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty());
    let op = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .any(|o| {
            !o.hosts.is_empty()
                || !o.not_hosts.is_empty()
                || !o.methods.is_empty()
                || !o.not_methods.is_empty()
                || !o.paths.is_empty()
                || !o.not_paths.is_empty()
        });
    let when = rule.when.iter().any(|c| http_only_key(&c.key));
    source || op || when
}

fn http_only_key(key: &str) -> bool {
    key.starts_with("request.")
}

/// One rule → one Envoy policy (`None` when the rule is dropped on TCP).
fn translate_rule(
    rule: &AuthorizationRule,
    action: &str,
    layer: Layer,
    trust_domain: &str,
) -> Option<Policy> {
    let tcp = layer == Layer::Tcp;
    if tcp && !matches!(action, "DENY" | "CUSTOM") && has_http_only(rule) {
        return None;
    }
    let t = Translator { tcp, trust_domain };
    let mut permissions = Vec::new();
    let ops: Vec<Permission> = rule
        .to
        .iter()
        .filter_map(|to| to.operation.as_ref())
        .map(|o| and_perm(t.operation(o)))
        .collect();
    if !ops.is_empty() {
        permissions.push(or_perm(ops));
    }
    let mut principals = Vec::new();
    let sources: Vec<Principal> = rule
        .from
        .iter()
        .filter_map(|f| f.source.as_ref())
        .map(|s| and_id(t.source(s)))
        .collect();
    if !sources.is_empty() {
        principals.push(or_id(sources));
    }
    for c in &rule.when {
        if tcp && http_only_key(&c.key) {
            continue;
        }
        match t.condition(c) {
            Cond::Permission(p) => permissions.push(p),
            Cond::Principal(p) => principals.push(p),
            Cond::Ignored => {}
        }
    }
    Some(Policy {
        permissions: vec![and_perm(permissions)],
        principals: vec![and_id(principals)],
        ..Default::default()
    })
}

struct Translator<'a> {
    tcp: bool,
    trust_domain: &'a str,
}

enum Cond {
    Permission(Permission),
    Principal(Principal),
    Ignored,
}

impl Translator<'_> {
    fn operation(&self, o: &Operation) -> Vec<Permission> {
        let mut out = Vec::new();
        let mut field =
            |values: &[String], negate: bool, f: &dyn Fn(&str) -> Option<Permission>| {
                let list: Vec<Permission> = values.iter().filter_map(|v| f(v)).collect();
                if !list.is_empty() {
                    let p = or_perm(list);
                    out.push(if negate { not_perm(p) } else { p });
                }
            };
        let host = |v: &str| {
            Some(perm(permission::Rule::Header(header(
                ":authority",
                v,
                true,
            ))))
        };
        let method = |v: &str| Some(perm(permission::Rule::Header(header(":method", v, false))));
        let port = |v: &str| {
            v.parse::<u32>()
                .ok()
                .map(|p| perm(permission::Rule::DestinationPort(p)))
        };
        let path = |v: &str| Some(path_permission(v));
        if !self.tcp {
            field(&o.hosts, false, &host);
            field(&o.not_hosts, true, &host);
            field(&o.methods, false, &method);
            field(&o.not_methods, true, &method);
            field(&o.paths, false, &path);
            field(&o.not_paths, true, &path);
        }
        field(&o.ports, false, &port);
        field(&o.not_ports, true, &port);
        out
    }

    fn source(&self, s: &Source) -> Vec<Principal> {
        let mut out = Vec::new();
        let mut field = |values: &[String], negate: bool, f: &dyn Fn(&str) -> Option<Principal>| {
            let list: Vec<Principal> = values.iter().filter_map(|v| f(v)).collect();
            if !list.is_empty() {
                let p = or_id(list);
                out.push(if negate { not_id(p) } else { p });
            }
        };
        let principal = |v: &str| Some(self.principal_name(v));
        let namespace = |v: &str| Some(namespace_principal(v));
        let service_account = |v: &str| Some(self.service_account(v));
        let direct = |v: &str| cidr(v).map(|c| id(principal::Identifier::DirectRemoteIp(c)));
        let remote = |v: &str| cidr(v).map(|c| id(principal::Identifier::RemoteIp(c)));
        let request = |v: &str| Some(authn_principal("request.auth.principal", v));
        field(&s.principals, false, &principal);
        field(&s.not_principals, true, &principal);
        field(&s.namespaces, false, &namespace);
        field(&s.not_namespaces, true, &namespace);
        field(&s.service_accounts, false, &service_account);
        field(&s.not_service_accounts, true, &service_account);
        field(&s.ip_blocks, false, &direct);
        field(&s.not_ip_blocks, true, &direct);
        field(&s.remote_ip_blocks, false, &remote);
        field(&s.not_remote_ip_blocks, true, &remote);
        if !self.tcp {
            field(&s.request_principals, false, &request);
            field(&s.not_request_principals, true, &request);
        }
        out
    }

    fn condition(&self, c: &Condition) -> Cond {
        let key = c.key.as_str();
        let ids = |f: &dyn Fn(&str) -> Option<Principal>| {
            let pos: Vec<Principal> = c.values.iter().filter_map(|v| f(v)).collect();
            let neg: Vec<Principal> = c.not_values.iter().filter_map(|v| f(v)).collect();
            let mut parts = Vec::new();
            if !pos.is_empty() {
                parts.push(or_id(pos));
            }
            if !neg.is_empty() {
                parts.push(not_id(or_id(neg)));
            }
            Cond::Principal(and_id(parts))
        };
        let perms = |f: &dyn Fn(&str) -> Option<Permission>| {
            let pos: Vec<Permission> = c.values.iter().filter_map(|v| f(v)).collect();
            let neg: Vec<Permission> = c.not_values.iter().filter_map(|v| f(v)).collect();
            let mut parts = Vec::new();
            if !pos.is_empty() {
                parts.push(or_perm(pos));
            }
            if !neg.is_empty() {
                parts.push(not_perm(or_perm(neg)));
            }
            Cond::Permission(and_perm(parts))
        };
        if let Some(name) = bracketed(key, "request.headers") {
            let name = name.to_ascii_lowercase();
            return ids(&|v| Some(id(principal::Identifier::Header(header(&name, v, false)))));
        }
        if let Some(claims) = bracketed(key, "request.auth.claims") {
            let path: Vec<String> = std::iter::once("request.auth.claims".to_string())
                .chain(claims.split("][").map(str::to_string))
                .collect();
            return ids(&|v| Some(metadata_id(&path, list_of(string_match(v, false)))));
        }
        match key {
            "source.ip" => ids(&|v| cidr(v).map(|c| id(principal::Identifier::DirectRemoteIp(c)))),
            "remote.ip" => ids(&|v| cidr(v).map(|c| id(principal::Identifier::RemoteIp(c)))),
            "source.namespace" => ids(&|v| Some(namespace_principal(v))),
            "source.principal" => ids(&|v| Some(self.principal_name(v))),
            "source.serviceAccount" => ids(&|v| Some(self.service_account(v))),
            "request.auth.principal" | "request.auth.presenter" => {
                ids(&|v| Some(authn_principal(key, v)))
            }
            "request.auth.audiences" => ids(&|v| {
                Some(metadata_id(
                    &[key.to_string()],
                    list_of(string_match(v, false)),
                ))
            }),
            "destination.ip" => {
                perms(&|v| cidr(v).map(|c| perm(permission::Rule::DestinationIp(c))))
            }
            "destination.port" => perms(&|v| {
                v.parse::<u32>()
                    .ok()
                    .map(|p| perm(permission::Rule::DestinationPort(p)))
            }),
            "connection.sni" => perms(&|v| {
                Some(perm(permission::Rule::RequestedServerName(string_match(
                    v, false,
                ))))
            }),
            _ => Cond::Ignored,
        }
    }

    /// `principals` values are Istio's `<td>/ns/<ns>/sa/<sa>`; Envoy sees the SPIFFE URI.
    fn principal_name(&self, v: &str) -> Principal {
        let matcher = if v == "*" {
            regex_match(".+")
        } else if let Some(suffix) = v.strip_prefix('*') {
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Suffix(suffix.into())),
                ..Default::default()
            }
        } else {
            string_match(&format!("spiffe://{v}"), false)
        };
        authenticated(matcher)
    }

    /// `serviceAccounts` values are `<ns>/<sa>` in this trust domain.
    fn service_account(&self, v: &str) -> Principal {
        let (ns, sa) = v.split_once('/').unwrap_or(("default", v));
        authenticated(string_match(
            &format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain),
            false,
        ))
    }
}

fn perm(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn id(identifier: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn and_perm(mut rules: Vec<Permission>) -> Permission {
    match rules.len() {
        0 => perm(permission::Rule::Any(true)),
        1 => rules.remove(0),
        _ => perm(permission::Rule::AndRules(permission::Set { rules })),
    }
}

fn or_perm(mut rules: Vec<Permission>) -> Permission {
    if rules.len() == 1 {
        return rules.remove(0);
    }
    perm(permission::Rule::OrRules(permission::Set { rules }))
}

fn not_perm(p: Permission) -> Permission {
    perm(permission::Rule::NotRule(Box::new(p)))
}

fn and_id(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => id(principal::Identifier::Any(true)),
        1 => ids.remove(0),
        _ => id(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn or_id(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    id(principal::Identifier::OrIds(principal::Set { ids }))
}

fn not_id(p: Principal) -> Principal {
    id(principal::Identifier::NotId(Box::new(p)))
}

fn authenticated(m: StringMatcher) -> Principal {
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

/// `namespaces` values: the SPIFFE principal's `/ns/<ns>/` segment (`*` prefix/suffix allowed).
fn namespace_principal(v: &str) -> Principal {
    let ns = regex_escape(v).replace("\\*", ".*");
    authenticated(regex_match(&format!(".*/ns/{ns}/.*")))
}

fn authn_principal(key: &str, v: &str) -> Principal {
    let m = if v == "*" {
        regex_match(".+")
    } else {
        string_match(v, false)
    };
    metadata_id(&[key.to_string()], value_string(m))
}

#[allow(deprecated)] // `metadata` is what Istio emits for request authentication.
fn metadata_id(path: &[String], value: ValueMatcher) -> Principal {
    id(principal::Identifier::Metadata(MetadataMatcher {
        filter: AUTHN_METADATA.into(),
        path: path
            .iter()
            .map(|k| metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(k.clone())),
            })
            .collect(),
        value: Some(value),
        invert: false,
    }))
}

fn value_string(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

/// A list value with one element matching `m`.
fn list_of(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(value_string(m)))),
            },
        ))),
    }
}

/// Exact, `*` (present), `prefix*` or `*suffix`.
fn string_match(v: &str, ignore_case: bool) -> StringMatcher {
    use string_matcher::MatchPattern;
    let pattern = if v == "*" {
        return regex_match(".+");
    } else if let Some(p) = v.strip_suffix('*') {
        MatchPattern::Prefix(p.into())
    } else if let Some(s) = v.strip_prefix('*') {
        MatchPattern::Suffix(s.into())
    } else {
        MatchPattern::Exact(v.into())
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn regex_match(re: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: re.into(),
            ..Default::default()
        })),
        ignore_case: false,
    }
}

fn regex_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn header(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    let spec = if v == "*" {
        header_matcher::HeaderMatchSpecifier::PresentMatch(true)
    } else {
        header_matcher::HeaderMatchSpecifier::StringMatch(string_match(v, ignore_case))
    };
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// `paths`: exact, `*`, `prefix*`, `*suffix`, or a `{*}`/`{**}` template.
fn path_permission(v: &str) -> Permission {
    if v == "*" {
        return perm(permission::Rule::Any(true));
    }
    if v.contains('{') {
        let template = v.replace("{**}", "**").replace("{*}", "*");
        return perm(permission::Rule::UriTemplate(TypedExtensionConfig {
            name: URI_TEMPLATE_MATCHER.into(),
            typed_config: Some(pack_any(UriTemplateMatchConfig {
                path_template: template,
            })),
        }));
    }
    perm(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(string_match(v, false))),
    }))
}

fn cidr(v: &str) -> Option<CidrRange> {
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, len.parse::<u32>().ok()?),
        None => (v, if v.contains(':') { 128 } else { 32 }),
    };
    ip.parse::<std::net::IpAddr>().ok()?;
    Some(CidrRange {
        address_prefix: ip.into(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}

// The RBAC messages with `policies` in a `BTreeMap`: prost encodes envoy-types' `HashMap` in
// random order, and the same config must always encode to the same bytes (versions are hashes).
// Same field numbers as `envoy.config.rbac.v3.RBAC` and the two filter configs.

#[derive(Clone, PartialEq, prost::Message)]
struct SortedRbac {
    #[prost(enumeration = "rbac::Action", tag = "1")]
    action: i32,
    #[prost(btree_map = "string, message", tag = "2")]
    policies: std::collections::BTreeMap<String, Policy>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SortedHttpRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<SortedRbac>,
    #[prost(message, optional, tag = "2")]
    shadow_rules: Option<SortedRbac>,
    #[prost(string, tag = "3")]
    shadow_rules_stat_prefix: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SortedNetworkRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<SortedRbac>,
    #[prost(message, optional, tag = "2")]
    shadow_rules: Option<SortedRbac>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
    #[prost(string, tag = "5")]
    shadow_rules_stat_prefix: String,
}

impl From<Rbac> for SortedRbac {
    fn from(r: Rbac) -> SortedRbac {
        SortedRbac {
            action: r.action,
            policies: r.policies.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests;
