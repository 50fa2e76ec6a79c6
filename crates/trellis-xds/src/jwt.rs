//! `RequestAuthentication` → Envoy's `envoy.filters.http.jwt_authn` filter, as Istio generates it:
//! one provider `origins-<i>` per JWT rule of every policy that applies to the proxy, one rule
//! matching prefix `/` that requires any one provider or no token at all (`allow_missing`: a
//! request without a token passes, one with an invalid token is refused), CORS preflights
//! bypassed. The filter goes first in the HTTP filters of the sidecar's inbound listener and of
//! every gateway HTTP listener. A remote JWKS gets a cluster (`outbound|<port>||<host>`): the
//! registry's when the host is a known service, else a STATIC/STRICT_DNS one of our own.
//!
//! Owns policy selection (selector, `targetRef`, the root namespace) and the provider shape; it
//! knows nothing about routes. The proxy's reading of this filter is
//! `trellis-proxy/src/runtime/jwt.rs`.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::{DataSource, HttpUri, data_source, http_uri};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementOrList, RemoteJwks, RequirementRule, jwt_provider, jwt_requirement,
    requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Duration, Empty};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use trellis_config::{JwtRule, RequestAuthentication, Resource};

use crate::cluster::{
    DEFAULT_CONNECT_TIMEOUT_SECS, Discovery, EndpointSpec, cluster, load_assignment, outbound_name,
};
use crate::listener::{HCM_FILTER, seconds};
use crate::{Cluster, Context, Listener, Role};

pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Istio's root namespace: its policies apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// How long a fetched JWKS is used before it is fetched again (Istio's 20 minutes).
pub const JWKS_CACHE_DURATION_SECS: i64 = 20 * 60;
/// JWKS fetch timeout when a rule sets none (Istio's default).
pub const JWKS_FETCH_TIMEOUT_SECS: i64 = 5;
/// Labels naming the Gateway a gateway workload serves (`targetRef` matches these).
const GATEWAY_NAME_LABELS: &[&str] = &[
    "gateway.networking.k8s.io/gateway-name",
    "istio.io/gateway-name",
];

/// What the JWT policies add to a proxy: the filter for its HTTP listeners, the clusters its
/// remote JWKS need, and registry service ports those clusters are (for `ClusterRefs`).
pub struct Compiled {
    pub filter: HttpFilter,
    pub clusters: Vec<Cluster>,
    pub refs: Vec<(String, u32, String)>,
}

/// Adds the `jwt_authn` filter to the proxy's HTTP listeners that take requests from outside
/// the workload (sidecar: `sidecar::is_inbound`; gateway: all). Returns the JWKS clusters to add.
pub(crate) fn apply(ctx: &Context<'_>, listeners: &mut [Listener]) -> Option<Compiled> {
    let compiled = compile(ctx)?;
    for l in listeners.iter_mut() {
        let applies = match ctx.proxy.role {
            Role::Sidecar => crate::sidecar::is_inbound(l),
            Role::Gateway => true,
            Role::Proxyless => false,
        };
        if applies {
            insert_first(l, &compiled.filter);
        }
    }
    Some(compiled)
}

/// The filter and clusters for this proxy; `None` when no policy applies.
pub(crate) fn compile(ctx: &Context<'_>) -> Option<Compiled> {
    let policies = applicable(ctx);
    let rules: Vec<&JwtRule> = policies.iter().flat_map(|p| &p.spec.jwt_rules).collect();
    if rules.is_empty() {
        return None;
    }
    let mut providers = BTreeMap::new();
    let mut requirements = Vec::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut refs = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        let (provider, jwks_cluster) = provider(ctx, rule);
        match jwks_cluster {
            Some(JwksCluster::Registry(r)) => refs.push(r),
            Some(JwksCluster::Own(c)) if !clusters.iter().any(|x| x.name == c.name) => {
                clusters.push(*c)
            }
            _ => {}
        }
        providers.insert(name.clone(), provider);
        requirements.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(name)),
        });
    }
    requirements.push(JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})),
    });
    let config = JwtAuthentication {
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(
                JwtRequirement {
                    requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
                        JwtRequirementOrList { requirements },
                    )),
                },
            )),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    Some(Compiled {
        filter: HttpFilter {
            name: JWT_AUTHN_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_sorted(
                config, providers,
            ))),
            ..Default::default()
        },
        clusters,
        refs,
    })
}

/// Policies that select this proxy, sorted by `namespace/name`.
fn applicable<'a>(ctx: &Context<'a>) -> Vec<&'a Resource<RequestAuthentication>> {
    let proxy = ctx.proxy;
    let mut out: Vec<_> = ctx
        .snapshot
        .request_authentications
        .iter()
        .filter(|p| {
            let ns = p.meta.namespace.as_str();
            let mut targets = p.spec.targets().peekable();
            if targets.peek().is_some() {
                return ns == proxy.namespace
                    && proxy.role == Role::Gateway
                    && targets.any(|t| {
                        GATEWAY_NAME_LABELS
                            .iter()
                            .any(|l| proxy.labels.get(*l) == Some(&t.name))
                    });
            }
            if ns != proxy.namespace && ns != ROOT_NAMESPACE {
                return false;
            }
            p.spec.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k) == Some(v))
            })
        })
        .collect();
    out.sort_by_key(|p| (p.meta.namespace.as_str(), p.meta.name.as_str()));
    out
}

enum JwksCluster {
    Registry((String, u32, String)),
    Own(Box<Cluster>),
}

fn provider(ctx: &Context<'_>, rule: &JwtRule) -> (JwtProvider, Option<JwksCluster>) {
    let (source, jwks_cluster) = if !rule.jwks.is_empty() {
        let local = DataSource {
            specifier: Some(data_source::Specifier::InlineString(rule.jwks.clone())),
            ..Default::default()
        };
        (jwt_provider::JwksSourceSpecifier::LocalJwks(local), None)
    } else {
        let (cluster_name, jwks_cluster) = jwks_cluster(ctx, &rule.jwks_uri);
        let timeout = rule.timeout.as_ref().and_then(|d| d.get()).map_or(
            seconds(JWKS_FETCH_TIMEOUT_SECS),
            |d| Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            },
        );
        let remote = RemoteJwks {
            http_uri: Some(HttpUri {
                uri: rule.jwks_uri.clone(),
                timeout: Some(timeout),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster_name)),
            }),
            cache_duration: Some(seconds(JWKS_CACHE_DURATION_SECS)),
            ..Default::default()
        };
        (
            jwt_provider::JwksSourceSpecifier::RemoteJwks(remote),
            jwks_cluster,
        )
    };
    let provider = JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_payload_header: rule.output_payload_to_header.clone(),
        payload_in_metadata: rule.issuer.clone(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(source),
        ..Default::default()
    };
    (provider, jwks_cluster)
}

/// `config` with `providers` packed in name order: a protobuf map encodes in the `HashMap`'s
/// random order, and the resources must be byte-for-byte deterministic. Concatenated messages
/// merge, so each provider is encoded as its own one-entry message after the rest.
fn pack_sorted(config: JwtAuthentication, providers: BTreeMap<String, JwtProvider>) -> Any {
    let mut value = config.encode_to_vec();
    for (name, provider) in providers {
        let one = JwtAuthentication {
            providers: HashMap::from([(name, provider)]),
            ..Default::default()
        };
        one.encode(&mut value).unwrap_or_default();
    }
    Any {
        type_url: JwtAuthentication::type_url(),
        value,
    }
}

/// `(scheme is https, host, port)` of an http(s) URL (validated by trellis-config).
pub fn split_uri(uri: &str) -> Option<(bool, &str, u32)> {
    let (https, rest) = match uri.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, uri.strip_prefix("http://")?),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':').map(str::parse).transpose().ok()?;
        (host, port.unwrap_or(default_port))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default_port),
        }
    };
    (!host.is_empty()).then_some((https, host, port))
}

fn jwks_cluster(ctx: &Context<'_>, uri: &str) -> (String, Option<JwksCluster>) {
    let Some((_, host, port)) = split_uri(uri) else {
        return (String::new(), None);
    };
    let name = outbound_name(port, "", host);
    if ctx
        .registry
        .get(host)
        .is_some_and(|s| s.port(port).is_some())
    {
        return (
            name,
            Some(JwksCluster::Registry((
                host.to_string(),
                port,
                String::new(),
            ))),
        );
    }
    let endpoint = EndpointSpec {
        address: host.to_string(),
        port,
        locality: Default::default(),
        weight: 1,
        metadata: None,
        priority: 0,
    };
    let assignment = load_assignment(&name, vec![endpoint]);
    let discovery = if host.parse::<std::net::IpAddr>().is_ok() {
        Discovery::Static(assignment)
    } else {
        Discovery::StrictDns(assignment)
    };
    let c = cluster(crate::cluster::ClusterSpec {
        name: name.clone(),
        discovery,
        lb_policy: envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::RoundRobin,
        connect_timeout: seconds(DEFAULT_CONNECT_TIMEOUT_SECS),
        http2: false,
        metadata: None,
    });
    (name, Some(JwksCluster::Own(Box::new(c))))
}

/// Puts `filter` first in the HCM of every filter chain of `l` (before CORS, fault, any RBAC and
/// the router), replacing an earlier `jwt_authn` filter.
fn insert_first(l: &mut Listener, filter: &HttpFilter) {
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            if f.name != HCM_FILTER {
                continue;
            }
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if any.type_url != HttpConnectionManager::type_url() {
                continue;
            }
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            hcm.http_filters.retain(|f| f.name != JWT_AUTHN_FILTER);
            hcm.http_filters.insert(0, filter.clone());
            *any = pack_any(hcm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_scheme_host_and_port() {
        assert_eq!(
            split_uri("https://example.com/jwks"),
            Some((true, "example.com", 443))
        );
        assert_eq!(
            split_uri("http://127.0.0.1:8080/.well-known/jwks.json"),
            Some((false, "127.0.0.1", 8080))
        );
        assert_eq!(split_uri("http://[::1]:9/k"), Some((false, "::1", 9)));
        assert_eq!(split_uri("http://x"), Some((false, "x", 80)));
        assert_eq!(split_uri("ftp://x"), None);
        assert_eq!(split_uri("http:///k"), None);
    }
}
