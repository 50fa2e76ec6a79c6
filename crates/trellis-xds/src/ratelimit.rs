//! `RateLimitPolicy` and `QuotaPolicy` → Envoy's rate limit filters and route `rate_limits`.
//!
//! The shape (written down in `docs/xds-contract.md`, "Rate limits"):
//! - one `envoy.filters.http.local_ratelimit` (stage 0) per HTTP connection manager that has a
//!   local limit: no default bucket, one `LocalRateLimitDescriptor` per local limit whose first
//!   entry is `("limit", "<ns>/<policy>/<limit>")` and whose other entries carry the fixed value
//!   of a matched attribute or an empty value (Envoy's wildcard: one bucket per distinct value),
//!   `shadow_mode` for shadow policies;
//! - one `envoy.filters.http.ratelimit` per failure mode that a global limit or a quota uses:
//!   stage 1 `FAIL_OPEN`, stage 2 `FAIL_CLOSED` (`failure_mode_deny`), both to the cluster of
//!   `MeshConfig.rateLimitService` over gRPC;
//! - on every route in the policy's scope, `route.rate_limits`: one `RateLimit` per limit and
//!   stage, its actions building the contract's descriptor (`generic_key` `limit`/`quota`, then
//!   `request_headers`, `header_value_match`, `remote_address`, `metadata` from Istio's
//!   `istio_authn` namespace for JWT claims and the peer principal, or a constant `generic_key`
//!   for the route name). A `match` Envoy's actions cannot express (on a JWT claim, the peer
//!   principal or the client address) is kept in the route's
//!   `metadata.filter_metadata["trellis.ratelimit"]` under `"<rate limit>.<action>"`.
//!
//! Owns policy selection (root namespace, the proxy's namespace, `selector`) and the descriptor
//! shape; the proxy's reading is `trellis-proxy/src/runtime/ratelimit.rs`.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, RuntimeFractionalPercent, grpc_service,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
use envoy_types::pb::envoy::config::route::v3::rate_limit::Action;
use envoy_types::pb::envoy::config::route::v3::rate_limit::action::{
    ActionSpecifier, GenericKey, HeaderValueMatch, MetaData, RemoteAddress, RequestHeaders,
    meta_data,
};
use envoy_types::pb::envoy::config::route::v3::{RateLimit, Route, RouteConfiguration, route};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    LocalRateLimitDescriptor, XRateLimitHeadersRfcVersion, rate_limit_descriptor,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RateLimitFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::r#type::metadata::v3::{MetadataKey, metadata_key};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::google::protobuf::{
    BoolValue, Duration, Struct, UInt32Value, Value, value::Kind,
};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use trellis_config::{
    DescriptorEntry, FailureMode, MeshConfig, QuotaPolicy, RateLimitPolicy, Resource, StringMatch,
    StringMatchKind, WorkloadSelector,
};

use crate::listener::{HCM_FILTER, ROUTER_FILTER};
use crate::{Context, Listener, Role};

pub const LOCAL_RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
pub const RATELIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
/// The fail-closed instance of the global filter.
pub const RATELIMIT_FAIL_CLOSED_FILTER: &str = "envoy.filters.http.ratelimit.fail_closed";
pub const STAGE_LOCAL: u32 = 0;
pub const STAGE_GLOBAL_FAIL_OPEN: u32 = 1;
pub const STAGE_GLOBAL_FAIL_CLOSED: u32 = 2;
/// Route metadata namespace holding the matches Envoy's actions cannot express.
pub const MATCH_METADATA: &str = "trellis.ratelimit";
/// Istio's dynamic metadata namespace for authentication results.
pub const AUTHN_METADATA: &str = "istio_authn";
/// Distinct values kept per wildcard descriptor (Envoy's LRU; the proxy's bounded map).
pub const MAX_DYNAMIC_DESCRIPTORS: u32 = 10_000;
/// Envoy's default timeout of the ratelimit filter.
pub const DEFAULT_TIMEOUT_MS: u64 = 20;
pub const DEFAULT_DOMAIN: &str = "trellis";

/// One limit (or quota) on one stage, with the names that find it.
struct Limit<'a> {
    id: String,
    stage: u32,
    shadow: bool,
    routes: &'a [String],
    what: What<'a>,
}

enum What<'a> {
    Local {
        entries: &'a [DescriptorEntry],
        bucket: TokenBucket,
    },
    Global {
        entries: &'a [DescriptorEntry],
    },
    Quota {
        consumer: Consumer<'a>,
    },
}

#[derive(Clone, Copy)]
enum Consumer<'a> {
    Claim(&'a str),
    Header(&'a str),
    Principal,
}

/// Adds the filters to the HCMs of the proxy's listeners that take traffic from outside
/// (sidecar: inbound; gateway: all) and the `rate_limits` to their routes; the rate limit
/// service's cluster goes into `refs`.
pub(crate) fn apply(
    ctx: &Context<'_>,
    listeners: &mut [Listener],
    routes: &mut [RouteConfiguration],
    refs: &mut crate::route::ClusterRefs,
) {
    let mesh = ctx.snapshot.mesh_config();
    let limits = limits(ctx, &mesh);
    if limits.is_empty() {
        return;
    }
    let filters = filters(&limits, &mesh);
    let service = mesh
        .rate_limit_service
        .as_ref()
        .filter(|s| !s.service.is_empty() && s.port != 0);
    if let Some(s) = service
        && limits.iter().any(|l| l.stage != STAGE_LOCAL)
    {
        refs.insert((s.service.clone(), s.port, String::new()));
    }
    let mut rds = BTreeSet::new();
    for l in listeners.iter_mut() {
        let applies = match ctx.proxy.role {
            Role::Sidecar => crate::sidecar::is_inbound(l),
            Role::Gateway => true,
            Role::Proxyless => false,
        };
        if !applies {
            continue;
        }
        for chain in &mut l.filter_chains {
            for f in chain.filters.iter_mut().filter(|f| f.name == HCM_FILTER) {
                let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
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
                hcm.http_filters.splice(at..at, filters.iter().cloned());
                match &mut hcm.route_specifier {
                    Some(RouteSpecifier::Rds(r)) => {
                        rds.insert(r.route_config_name.clone());
                    }
                    Some(RouteSpecifier::RouteConfig(rc)) => decorate(rc, &limits),
                    _ => {}
                }
                *any = pack_any(hcm);
            }
        }
    }
    for rc in routes.iter_mut().filter(|rc| rds.contains(&rc.name)) {
        decorate(rc, &limits);
    }
}

/// Whether a policy in `ns` with `selector` applies to the proxy (Istio's policy scoping).
fn selects(ctx: &Context<'_>, mesh: &MeshConfig, ns: &str, s: Option<&WorkloadSelector>) -> bool {
    let proxy = ctx.proxy;
    if ns != mesh.root_namespace() && ns != proxy.namespace {
        return false;
    }
    s.is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| proxy.labels.get(k) == Some(v))
    })
}

fn global_stage(mode: Option<FailureMode>) -> u32 {
    match mode.unwrap_or_default() {
        FailureMode::FailOpen => STAGE_GLOBAL_FAIL_OPEN,
        FailureMode::FailClosed => STAGE_GLOBAL_FAIL_CLOSED,
    }
}

/// Every limit and quota of the policies that apply, sorted by policy `namespace/name`.
fn limits<'a>(ctx: &Context<'a>, mesh: &MeshConfig) -> Vec<Limit<'a>> {
    let mut policies: Vec<&'a Resource<RateLimitPolicy>> = ctx
        .snapshot
        .rate_limit_policies
        .iter()
        .filter(|p| selects(ctx, mesh, &p.meta.namespace, p.spec.selector.as_ref()))
        .collect();
    policies.sort_by_key(|p| p.key());
    let mut out = Vec::new();
    for p in policies {
        for l in &p.spec.limits {
            let id = format!("{}/{}/{}", p.meta.namespace, p.meta.name, l.name);
            if let Some(b) = &l.local {
                let fill = b
                    .fill_interval
                    .as_ref()
                    .and_then(|d| d.get())
                    .unwrap_or(std::time::Duration::from_secs(1));
                out.push(Limit {
                    id: id.clone(),
                    stage: STAGE_LOCAL,
                    shadow: p.spec.shadow,
                    routes: &p.spec.routes,
                    what: What::Local {
                        entries: &l.descriptors,
                        bucket: TokenBucket {
                            max_tokens: b.max_tokens,
                            tokens_per_fill: Some(UInt32Value {
                                value: b.tokens_per_fill.unwrap_or(b.max_tokens),
                            }),
                            fill_interval: Some(Duration {
                                seconds: fill.as_secs() as i64,
                                nanos: fill.subsec_nanos() as i32,
                            }),
                        },
                    },
                });
            }
            if l.global.is_some() {
                out.push(Limit {
                    id,
                    stage: global_stage(p.spec.failure_mode),
                    shadow: p.spec.shadow,
                    routes: &p.spec.routes,
                    what: What::Global {
                        entries: &l.descriptors,
                    },
                });
            }
        }
    }
    let mut quotas: Vec<&'a Resource<QuotaPolicy>> = ctx
        .snapshot
        .quota_policies
        .iter()
        .filter(|p| selects(ctx, mesh, &p.meta.namespace, p.spec.selector.as_ref()))
        .collect();
    quotas.sort_by_key(|p| p.key());
    for p in quotas {
        let Some(c) = &p.spec.consumer else { continue };
        let consumer = if !c.jwt_claim.is_empty() {
            Consumer::Claim(&c.jwt_claim)
        } else if !c.header.is_empty() {
            Consumer::Header(&c.header)
        } else {
            Consumer::Principal
        };
        for q in &p.spec.quotas {
            out.push(Limit {
                id: format!("{}/{}/{}", p.meta.namespace, p.meta.name, q.name),
                stage: global_stage(p.spec.failure_mode),
                shadow: p.spec.shadow,
                routes: &p.spec.routes,
                what: What::Quota { consumer },
            });
        }
    }
    out
}

fn percent(numerator: u32, key: &str) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: key.into(),
    }
}

/// The HCM filters the limits need, in order: local, global fail-open, global fail-closed.
fn filters(limits: &[Limit<'_>], mesh: &MeshConfig) -> Vec<HttpFilter> {
    let mut out = Vec::new();
    let descriptors: Vec<LocalRateLimitDescriptor> = limits
        .iter()
        .filter_map(|l| match &l.what {
            What::Local { entries, bucket } => Some(LocalRateLimitDescriptor {
                entries: std::iter::once(entry("limit", &l.id))
                    .chain(entries.iter().map(local_entry))
                    .collect(),
                token_bucket: Some(*bucket),
                shadow_mode: l.shadow,
            }),
            _ => None,
        })
        .collect();
    if !descriptors.is_empty() {
        let config = LocalRateLimit {
            stat_prefix: "http_local_rate_limiter".into(),
            filter_enabled: Some(percent(100, "local_rate_limit_enabled")),
            filter_enforced: Some(percent(100, "local_rate_limit_enforced")),
            descriptors,
            stage: STAGE_LOCAL,
            enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
            always_consume_default_token_bucket: Some(BoolValue { value: false }),
            rate_limited_as_resource_exhausted: true,
            max_dynamic_descriptors: Some(UInt32Value {
                value: MAX_DYNAMIC_DESCRIPTORS,
            }),
            enable_retry_after_header: true,
            ..Default::default()
        };
        out.push(HttpFilter {
            name: LOCAL_RATELIMIT_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
            ..Default::default()
        });
    }
    let Some(service) = mesh
        .rate_limit_service
        .as_ref()
        .filter(|s| !s.service.is_empty() && s.port != 0)
    else {
        return out;
    };
    let timeout = service
        .timeout
        .as_ref()
        .and_then(|d| d.get())
        .unwrap_or(std::time::Duration::from_millis(DEFAULT_TIMEOUT_MS));
    let domain = if service.domain.is_empty() {
        DEFAULT_DOMAIN
    } else {
        service.domain.as_str()
    };
    for (stage, name, deny) in [
        (STAGE_GLOBAL_FAIL_OPEN, RATELIMIT_FILTER, false),
        (STAGE_GLOBAL_FAIL_CLOSED, RATELIMIT_FAIL_CLOSED_FILTER, true),
    ] {
        if !limits.iter().any(|l| l.stage == stage) {
            continue;
        }
        let cluster = crate::cluster::outbound_name(service.port, "", &service.service);
        let config = RateLimitFilter {
            domain: domain.into(),
            stage,
            request_type: "both".into(),
            timeout: Some(Duration {
                seconds: timeout.as_secs() as i64,
                nanos: timeout.subsec_nanos() as i32,
            }),
            failure_mode_deny: deny,
            rate_limited_as_resource_exhausted: true,
            rate_limit_service: Some(RateLimitServiceConfig {
                grpc_service: Some(GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                        grpc_service::EnvoyGrpc {
                            cluster_name: cluster,
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }),
                transport_api_version: ApiVersion::V3 as i32,
            }),
            enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
            stat_prefix: if deny {
                "fail_closed".into()
            } else {
                String::new()
            },
            enable_retry_after_header: true,
            ..Default::default()
        };
        out.push(HttpFilter {
            name: name.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
            ..Default::default()
        });
    }
    out
}

fn entry(key: &str, value: &str) -> rate_limit_descriptor::Entry {
    rate_limit_descriptor::Entry {
        key: key.into(),
        value: value.into(),
    }
}

/// `<exact|prefix|regex>:<pattern>`: the value of an entry with a `match`.
pub fn match_value(m: &StringMatch) -> Option<String> {
    Some(match m.kind()? {
        StringMatchKind::Exact(v) => format!("exact:{v}"),
        StringMatchKind::Prefix(v) => format!("prefix:{v}"),
        StringMatchKind::Regex(v) => format!("regex:{v}"),
    })
}

/// The contract's key of an entry.
fn entry_key(d: &DescriptorEntry) -> String {
    if d.path.is_some() {
        "path".into()
    } else if d.method.is_some() {
        "method".into()
    } else if d.authority.is_some() {
        "authority".into()
    } else if d.route_name.is_some() {
        "route".into()
    } else if d.source_principal.is_some() {
        "source_principal".into()
    } else if d.remote_address.is_some() {
        "remote_address".into()
    } else if let Some(h) = &d.header {
        format!("header.{}", h.name.to_ascii_lowercase())
    } else if let Some(c) = &d.jwt_claim {
        format!("claim.{}", c.claim)
    } else if let Some(g) = &d.generic_key {
        g.key.clone()
    } else {
        String::new()
    }
}

/// The entry's `match`, if it has one that is not "any value".
fn entry_match(d: &DescriptorEntry) -> Option<&StringMatch> {
    let m = d
        .path
        .as_ref()
        .or(d.method.as_ref())
        .or(d.authority.as_ref())
        .or(d.route_name.as_ref())
        .or(d.source_principal.as_ref())
        .or(d.remote_address.as_ref())
        .or(d.header.as_ref().and_then(|h| h.value.as_ref()))
        .or(d.jwt_claim.as_ref().and_then(|c| c.value.as_ref()))?;
    m.kind().is_some().then_some(m)
}

/// The entry as a local descriptor entry: fixed value for matches and constants, else empty
/// (Envoy's wildcard).
fn local_entry(d: &DescriptorEntry) -> rate_limit_descriptor::Entry {
    let value = match (&d.generic_key, entry_match(d)) {
        (Some(g), _) => g.value.clone(),
        (None, Some(m)) => match_value(m).unwrap_or_default(),
        (None, None) => String::new(),
    };
    entry(&entry_key(d), &value)
}

fn authn_metadata(key: &str, path: &[&str]) -> MetaData {
    MetaData {
        descriptor_key: key.into(),
        metadata_key: Some(MetadataKey {
            key: AUTHN_METADATA.into(),
            path: path
                .iter()
                .map(|p| metadata_key::PathSegment {
                    segment: Some(metadata_key::path_segment::Segment::Key((*p).into())),
                })
                .collect(),
        }),
        source: meta_data::Source::Dynamic as i32,
        ..Default::default()
    }
}

fn action(s: ActionSpecifier) -> Action {
    Action {
        action_specifier: Some(s),
    }
}

fn generic(key: &str, value: &str) -> Action {
    action(ActionSpecifier::GenericKey(GenericKey {
        descriptor_key: key.into(),
        descriptor_value: value.into(),
        ..Default::default()
    }))
}

/// The action for one entry on a route named `route`; `None` when the entry can never
/// produce a value on this route (a `routeName` match it fails), so the limit is not attached.
/// The flag is set when the entry's match is one Envoy's actions cannot express (it then goes
/// into the route's metadata).
fn entry_action(d: &DescriptorEntry, route: &str) -> Option<(Action, bool)> {
    let key = entry_key(d);
    let m = entry_match(d);
    let header = |name: &str| {
        Some((
            match m {
                None => action(ActionSpecifier::RequestHeaders(RequestHeaders {
                    header_name: name.to_ascii_lowercase(),
                    descriptor_key: key.clone(),
                    skip_if_absent: false,
                })),
                Some(m) => action(ActionSpecifier::HeaderValueMatch(HeaderValueMatch {
                    descriptor_value: match_value(m).unwrap_or_default(),
                    descriptor_key: key.clone(),
                    expect_match: Some(BoolValue { value: true }),
                    headers: vec![crate::route::header(name, m, false)],
                    ..Default::default()
                })),
            },
            false,
        ))
    };
    if d.path.is_some() {
        return header(":path");
    }
    if d.method.is_some() {
        return header(":method");
    }
    if d.authority.is_some() {
        return header(":authority");
    }
    if let Some(h) = &d.header {
        return header(&h.name);
    }
    if let Some(g) = &d.generic_key {
        return Some((generic(&g.key, &g.value), false));
    }
    if d.route_name.is_some() {
        return match m {
            None => Some((generic("route", route), false)),
            Some(m) if string_matches(m, route) => {
                Some((generic("route", &match_value(m).unwrap_or_default()), false))
            }
            Some(_) => None,
        };
    }
    let specifier = if d.remote_address.is_some() && m.is_none() {
        ActionSpecifier::RemoteAddress(RemoteAddress {})
    } else if d.remote_address.is_some() {
        // Envoy's `remote_address` has no value match; the proxy reads it from the metadata.
        ActionSpecifier::Metadata(authn_metadata(&key, &["source.ip"]))
    } else if d.source_principal.is_some() {
        ActionSpecifier::Metadata(authn_metadata(&key, &["source.principal"]))
    } else if let Some(c) = &d.jwt_claim {
        let mut path = vec!["request.auth.claims"];
        path.extend(c.claim.split('.'));
        ActionSpecifier::Metadata(authn_metadata(&key, &path))
    } else {
        return None;
    };
    Some((action(specifier), m.is_some()))
}

fn string_matches(m: &StringMatch, v: &str) -> bool {
    match m.kind() {
        Some(StringMatchKind::Exact(e)) => e == v,
        Some(StringMatchKind::Prefix(p)) => v.starts_with(p),
        Some(StringMatchKind::Regex(r)) => regex::Regex::new(&format!("^(?:{r})$"))
            .map(|re| re.is_match(v))
            .unwrap_or(false),
        None => true,
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// `{exact|prefix|regex: pattern}` as a protobuf struct.
fn match_struct(m: &StringMatch) -> Value {
    let (k, v) = match m.kind() {
        Some(StringMatchKind::Exact(v)) => ("exact", v),
        Some(StringMatchKind::Prefix(v)) => ("prefix", v),
        Some(StringMatchKind::Regex(v)) => ("regex", v),
        None => ("prefix", ""),
    };
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: [(k.to_string(), string_value(v))].into(),
        })),
    }
}

/// Whether a policy scoped to `routes` covers the route named `name` (`http[].name`, or
/// `<http name>.<match name>` for a route built from one of its matches).
fn in_scope(routes: &[String], name: &str) -> bool {
    routes.is_empty()
        || routes.iter().any(|r| {
            name == r
                || name
                    .strip_prefix(r.as_str())
                    .is_some_and(|t| t.starts_with('.'))
        })
}

/// The `rate_limits` of one route (and the matches kept in its metadata).
fn route_limits(limits: &[Limit<'_>], name: &str) -> (Vec<RateLimit>, Struct) {
    let mut out = Vec::new();
    let mut matches = Struct::default();
    for l in limits.iter().filter(|l| in_scope(l.routes, name)) {
        let (first, entries): (Action, &[DescriptorEntry]) = match &l.what {
            What::Local { entries, .. } | What::Global { entries } => {
                (generic("limit", &l.id), entries)
            }
            What::Quota { consumer } => {
                let c = match consumer {
                    Consumer::Header(h) => {
                        action(ActionSpecifier::RequestHeaders(RequestHeaders {
                            header_name: h.to_ascii_lowercase(),
                            descriptor_key: "consumer".into(),
                            skip_if_absent: false,
                        }))
                    }
                    Consumer::Claim(c) => {
                        let mut path = vec!["request.auth.claims"];
                        path.extend(c.split('.'));
                        action(ActionSpecifier::Metadata(authn_metadata("consumer", &path)))
                    }
                    Consumer::Principal => action(ActionSpecifier::Metadata(authn_metadata(
                        "consumer",
                        &["source.principal"],
                    ))),
                };
                out.push(RateLimit {
                    stage: Some(UInt32Value { value: l.stage }),
                    actions: vec![generic("quota", &l.id), c],
                    ..Default::default()
                });
                continue;
            }
        };
        let index = out.len();
        let mut actions = vec![first];
        let mut ok = true;
        for d in entries {
            match entry_action(d, name) {
                Some((a, in_metadata)) => {
                    if in_metadata && let Some(m) = entry_match(d) {
                        matches
                            .fields
                            .insert(format!("{index}.{}", actions.len()), match_struct(m));
                    }
                    actions.push(a);
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            out.push(RateLimit {
                stage: Some(UInt32Value { value: l.stage }),
                actions,
                ..Default::default()
            });
        } else {
            matches
                .fields
                .retain(|k, _| !k.starts_with(&format!("{index}.")));
        }
    }
    (out, matches)
}

fn decorate(rc: &mut RouteConfiguration, limits: &[Limit<'_>]) {
    for vh in &mut rc.virtual_hosts {
        for r in &mut vh.routes {
            decorate_route(r, limits);
        }
    }
}

fn decorate_route(r: &mut Route, limits: &[Limit<'_>]) {
    let Some(route::Action::Route(action)) = &mut r.action else {
        return;
    };
    let (rate_limits, matches) = route_limits(limits, &r.name);
    if rate_limits.is_empty() {
        return;
    }
    action.rate_limits.extend(rate_limits);
    if !matches.fields.is_empty() {
        r.metadata
            .get_or_insert_with(Metadata::default)
            .filter_metadata
            .insert(MATCH_METADATA.into(), matches);
    }
}

/// Type URLs the proxy and `json.rs` recognise.
pub fn local_type_url() -> String {
    LocalRateLimit::type_url()
}

pub fn global_type_url() -> String {
    RateLimitFilter::type_url()
}
