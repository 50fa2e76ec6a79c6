//! Proto3-JSON-like rendering of the resources we emit, for golden tests and `/config_dump`.
//!
//! Owns only the rendering: camelCase names, defaults omitted, enums by name, durations as `"10s"`,
//! `Any` unpacked with `"@type"`, `Struct` as a plain object. It renders the fields listed in
//! `docs/xds-contract.md` (the ones the compiler sets) and nothing else; it never builds resources.

mod actions;
mod jwt;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, UpstreamConnectionOptions};
use envoy_types::pb::envoy::config::core::v3::{
    Address, ConfigSource, HealthStatus, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttpProtocolOptions, Locality, Metadata, TrafficDirection,
    address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction, RouteMatch, VirtualHost,
    WeightedCluster, header_matcher, query_parameter_matcher, retry_policy, route, route_action,
    route_match, virtual_host,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, Value as PbValue, value::Kind};
use prost::{Message, Name};
use serde_json::{Map, Value, json};

use crate::{Cluster, ClusterLoadAssignment, Listener, Resources, RouteConfiguration};

mod lb;
mod rbac;
pub mod tls;

/// A JSON object under construction that leaves out proto3 default values.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn typed(type_url: &str) -> Obj {
        let mut o = Obj::default();
        o.0.insert("@type".into(), Value::String(type_url.into()));
        o
    }
    fn str(mut self, key: &str, v: &str) -> Obj {
        if !v.is_empty() {
            self.0.insert(key.into(), Value::String(v.into()));
        }
        self
    }
    fn num(mut self, key: &str, v: u64) -> Obj {
        if v != 0 {
            self.0.insert(key.into(), json!(v));
        }
        self
    }
    fn flag(mut self, key: &str, v: bool) -> Obj {
        if v {
            self.0.insert(key.into(), Value::Bool(true));
        }
        self
    }
    fn opt(mut self, key: &str, v: Option<Value>) -> Obj {
        if let Some(v) = v {
            self.0.insert(key.into(), v);
        }
        self
    }
    fn list(mut self, key: &str, v: Vec<Value>) -> Obj {
        if !v.is_empty() {
            self.0.insert(key.into(), Value::Array(v));
        }
        self
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// Renders a whole snapshot: `{version, listeners, routes, clusters, endpoints}`.
pub fn to_json(resources: &Resources) -> Value {
    json!({
        "version": resources.version,
        "listeners": resources.listeners.iter().map(listener).collect::<Vec<_>>(),
        "routes": resources.routes.iter().map(route_configuration).collect::<Vec<_>>(),
        "clusters": resources.clusters.iter().map(cluster).collect::<Vec<_>>(),
        "endpoints": resources.endpoints.iter().map(load_assignment).collect::<Vec<_>>(),
    })
}

pub fn listener(l: &Listener) -> Value {
    let direction = TrafficDirection::try_from(l.traffic_direction)
        .ok()
        .filter(|d| *d != TrafficDirection::Unspecified)
        .map(|d| json!(d.as_str_name()));
    Obj::typed(&Listener::type_url())
        .str("name", &l.name)
        .opt("address", l.address.as_ref().map(address))
        .list(
            "filterChains",
            l.filter_chains.iter().map(filter_chain).collect(),
        )
        .list(
            "listenerFilters",
            l.listener_filters.iter().map(listener_filter).collect(),
        )
        .opt("trafficDirection", direction)
        .opt(
            "apiListener",
            l.api_listener
                .as_ref()
                .and_then(|a| a.api_listener.as_ref())
                .map(|hcm| json!({ "apiListener": any_value(hcm) })),
        )
        .done()
}

fn filter_chain(c: &FilterChain) -> Value {
    Obj::default()
        .str("name", &c.name)
        .opt(
            "filterChainMatch",
            c.filter_chain_match.as_ref().map(filter_chain_match),
        )
        .list("filters", c.filters.iter().map(network_filter).collect())
        .opt(
            "transportSocket",
            c.transport_socket.as_ref().map(tls::transport_socket),
        )
        .done()
}

fn network_filter(f: &Filter) -> Value {
    let typed = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => Some(any_value(any)),
        _ => None,
    };
    Obj::default()
        .str("name", &f.name)
        .opt("typedConfig", typed)
        .done()
}

fn filter_chain_match(m: &FilterChainMatch) -> Value {
    Obj::default()
        .list(
            "serverNames",
            m.server_names.iter().map(|n| json!(n)).collect(),
        )
        .str("transportProtocol", &m.transport_protocol)
        .done()
}

fn listener_filter(f: &ListenerFilter) -> Value {
    let typed = match &f.config_type {
        Some(listener_filter::ConfigType::TypedConfig(any)) => Some(any_value(any)),
        _ => None,
    };
    Obj::default()
        .str("name", &f.name)
        .opt("typedConfig", typed)
        .done()
}

fn tcp_proxy(t: &TcpProxy) -> Value {
    let o = Obj::typed(&TcpProxy::type_url()).str("statPrefix", &t.stat_prefix);
    match &t.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => o.str("cluster", c),
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let clusters = w
                .clusters
                .iter()
                .map(|c| {
                    Obj::default()
                        .str("name", &c.name)
                        .num("weight", u64::from(c.weight))
                        .done()
                })
                .collect();
            o.opt(
                "weightedClusters",
                Some(Obj::default().list("clusters", clusters).done()),
            )
        }
        None => o,
    }
    .opt("idleTimeout", t.idle_timeout.as_ref().map(duration))
    .opt(
        "maxDownstreamConnectionDuration",
        t.max_downstream_connection_duration.as_ref().map(duration),
    )
    .opt(
        "tunnelingConfig",
        t.tunneling_config.as_ref().map(|c| {
            Obj::default()
                .str("hostname", &c.hostname)
                .opt("usePost", c.use_post.then_some(json!(true)))
                .done()
        }),
    )
    .done()
}

/// Unpacks the `Any`s we emit; anything else renders as its type URL alone.
fn any_value(any: &Any) -> Value {
    let bytes = any.value.as_slice();
    let decoded = if any.type_url == HttpConnectionManager::type_url() {
        HttpConnectionManager::decode(bytes)
            .ok()
            .map(|m| http_connection_manager(&m))
    } else if any.type_url == HttpProtocolOptions::type_url() {
        HttpProtocolOptions::decode(bytes)
            .ok()
            .map(|m| upstream_http_options(&m))
    } else if any.type_url == TcpProxy::type_url() {
        TcpProxy::decode(bytes).ok().map(|m| tcp_proxy(&m))
    } else if any.type_url == TlsInspector::type_url() {
        TlsInspector::decode(bytes)
            .ok()
            .map(|_| Obj::typed(&TlsInspector::type_url()).done())
    } else if any.type_url == PreviousPrioritiesConfig::type_url() {
        PreviousPrioritiesConfig::decode(bytes).ok().map(|m| {
            Obj::typed(&PreviousPrioritiesConfig::type_url())
                .num(
                    "updateFrequency",
                    u64::try_from(m.update_frequency).unwrap_or(0),
                )
                .done()
        })
    } else if any.type_url == Router::type_url() {
        Router::decode(bytes)
            .ok()
            .map(|_| Obj::typed(&Router::type_url()).done())
    } else if any.type_url == JwtAuthentication::type_url() {
        JwtAuthentication::decode(bytes)
            .ok()
            .map(|m| jwt::jwt_authentication(&m))
    } else if let Some(tls) = tls::any_value(any) {
        tls
    } else {
        rbac::filter_config(any).or_else(|| actions::filter_config(any))
    };
    decoded.unwrap_or_else(|| Obj::typed(&any.type_url).done())
}

pub fn http_connection_manager(h: &HttpConnectionManager) -> Value {
    let codec = http_connection_manager::CodecType::try_from(h.codec_type)
        .map(|c| c.as_str_name())
        .unwrap_or("AUTO");
    let (rds, inline) = route_specifier(h.route_specifier.as_ref());
    let (forward_cert, set_cert) = tls::client_cert_fields(h);
    Obj::typed(&HttpConnectionManager::type_url())
        .str("statPrefix", &h.stat_prefix)
        .opt("codecType", Some(json!(codec)))
        .str("serverName", &h.server_name)
        .opt("rds", rds)
        .opt("routeConfig", inline)
        .list(
            "httpFilters",
            h.http_filters.iter().map(http_filter).collect(),
        )
        .opt(
            "useRemoteAddress",
            h.use_remote_address.map(|b| json!(b.value)),
        )
        .num("xffNumTrustedHops", h.xff_num_trusted_hops.into())
        .opt(
            "commonHttpProtocolOptions",
            h.common_http_protocol_options
                .as_ref()
                .map(common_http_options),
        )
        .opt(
            "http2ProtocolOptions",
            h.http2_protocol_options.as_ref().map(http2_options),
        )
        .opt(
            "maxRequestHeadersKb",
            h.max_request_headers_kb.map(|v| json!(v.value)),
        )
        .opt(
            "requestHeadersTimeout",
            h.request_headers_timeout.as_ref().map(duration),
        )
        .opt(
            "streamIdleTimeout",
            h.stream_idle_timeout.as_ref().map(duration),
        )
        .opt(
            "generateRequestId",
            h.generate_request_id.map(|b| json!(b.value)),
        )
        .flag("preserveExternalRequestId", h.preserve_external_request_id)
        .opt("normalizePath", h.normalize_path.map(|b| json!(b.value)))
        .flag("mergeSlashes", h.merge_slashes)
        .opt(
            "pathWithEscapedSlashesAction",
            http_connection_manager::PathWithEscapedSlashesAction::try_from(
                h.path_with_escaped_slashes_action,
            )
            .ok()
            .filter(|_| h.path_with_escaped_slashes_action != 0)
            .map(|a| json!(a.as_str_name())),
        )
        .list(
            "upgradeConfigs",
            h.upgrade_configs
                .iter()
                .map(|u| json!({ "upgradeType": u.upgrade_type }))
                .collect(),
        )
        .opt("forwardClientCertDetails", forward_cert)
        .opt("setCurrentClientCertDetails", set_cert)
        .done()
}

/// `(rds, inline route config)` of an HCM.
fn route_specifier(
    specifier: Option<&http_connection_manager::RouteSpecifier>,
) -> (Option<Value>, Option<Value>) {
    match specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(r)) => {
            let rds = Obj::default()
                .opt("configSource", r.config_source.as_ref().map(config_source))
                .str("routeConfigName", &r.route_config_name)
                .done();
            (Some(rds), None)
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            (None, Some(route_configuration(rc)))
        }
        _ => (None, None),
    }
}

fn config_source(c: &ConfigSource) -> Value {
    let api =
        envoy_types::pb::envoy::config::core::v3::ApiVersion::try_from(c.resource_api_version)
            .map(|a| a.as_str_name())
            .unwrap_or("AUTO");
    let ads = matches!(
        c.config_source_specifier,
        Some(config_source::ConfigSourceSpecifier::Ads(_))
    );
    Obj::default()
        .opt("ads", ads.then(|| json!({})))
        .opt("resourceApiVersion", (api != "AUTO").then(|| json!(api)))
        .done()
}

fn http_filter(f: &HttpFilter) -> Value {
    let typed = match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) => Some(any_value(any)),
        _ => None,
    };
    Obj::default()
        .str("name", &f.name)
        .opt("typedConfig", typed)
        .done()
}

fn common_http_options(o: &CommonHttpProtocolOptions) -> Value {
    Obj::default()
        .opt("idleTimeout", o.idle_timeout.as_ref().map(duration))
        .opt(
            "maxHeadersCount",
            o.max_headers_count.map(|v| json!(v.value)),
        )
        .opt(
            "maxRequestsPerConnection",
            o.max_requests_per_connection.map(|v| json!(v.value)),
        )
        .opt(
            "maxConnectionDuration",
            o.max_connection_duration.as_ref().map(duration),
        )
        .done()
}

fn http2_options(o: &Http2ProtocolOptions) -> Value {
    Obj::default()
        .opt(
            "maxConcurrentStreams",
            o.max_concurrent_streams.map(|v| json!(v.value)),
        )
        .done()
}

fn http1_options(_: &Http1ProtocolOptions) -> Value {
    json!({})
}

pub fn route_configuration(rc: &RouteConfiguration) -> Value {
    Obj::typed(&RouteConfiguration::type_url())
        .str("name", &rc.name)
        .list(
            "virtualHosts",
            rc.virtual_hosts.iter().map(virtual_host).collect(),
        )
        .done()
}

/// Writes the compact JSON of [`route_configuration`] one virtual host at a time: the same bytes
/// as `serde_json::to_writer(w, &route_configuration(rc))`, without holding the `Value` of all
/// virtual hosts (about 3 MiB for 1,000 of them). Keys in sorted order, as `serde_json` maps are.
pub fn write_route_configuration(
    rc: &RouteConfiguration,
    w: &mut impl std::io::Write,
) -> serde_json::Result<()> {
    w.write_all(b"{\"@type\":").map_err(serde_json::Error::io)?;
    serde_json::to_writer(&mut *w, &RouteConfiguration::type_url())?;
    if !rc.name.is_empty() {
        w.write_all(b",\"name\":").map_err(serde_json::Error::io)?;
        serde_json::to_writer(&mut *w, &rc.name)?;
    }
    if !rc.virtual_hosts.is_empty() {
        w.write_all(b",\"virtualHosts\":[")
            .map_err(serde_json::Error::io)?;
        for (i, v) in rc.virtual_hosts.iter().enumerate() {
            if i > 0 {
                w.write_all(b",").map_err(serde_json::Error::io)?;
            }
            serde_json::to_writer(&mut *w, &virtual_host(v))?;
        }
        w.write_all(b"]").map_err(serde_json::Error::io)?;
    }
    w.write_all(b"}").map_err(serde_json::Error::io)
}

fn virtual_host(v: &VirtualHost) -> Value {
    Obj::default()
        .str("name", &v.name)
        .list("domains", v.domains.iter().map(|d| json!(d)).collect())
        .list("routes", v.routes.iter().map(route).collect())
        .flag(
            "includeRequestAttemptCount",
            v.include_request_attempt_count,
        )
        .opt(
            "requireTls",
            virtual_host::TlsRequirementType::try_from(v.require_tls)
                .ok()
                .filter(|t| *t != virtual_host::TlsRequirementType::None)
                .map(|t| json!(t.as_str_name())),
        )
        .done()
}

fn route(r: &Route) -> Value {
    let action = match &r.action {
        Some(route::Action::Route(a)) => Some(route_action(a)),
        _ => None,
    };
    let o = Obj::default()
        .str("name", &r.name)
        .opt("match", r.r#match.as_ref().map(route_match))
        .opt("route", action);
    actions::route_fields(o, r)
        .opt("metadata", r.metadata.as_ref().map(metadata))
        .done()
}

fn route_match(m: &RouteMatch) -> Value {
    let mut o = Obj::default();
    o = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => o.opt("prefix", Some(json!(p))),
        Some(route_match::PathSpecifier::Path(p)) => o.opt("path", Some(json!(p))),
        Some(route_match::PathSpecifier::SafeRegex(r)) => o.opt("safeRegex", Some(regex(r))),
        _ => o,
    };
    o.opt("caseSensitive", m.case_sensitive.map(|b| json!(b.value)))
        .list("headers", m.headers.iter().map(header_matcher).collect())
        .list(
            "queryParameters",
            m.query_parameters.iter().map(query_matcher).collect(),
        )
        .done()
}

fn regex(r: &RegexMatcher) -> Value {
    json!({ "regex": r.regex })
}

fn string_match(s: &StringMatcher) -> Value {
    let o = match &s.match_pattern {
        Some(string_matcher::MatchPattern::Exact(v)) => Obj::default().opt("exact", Some(json!(v))),
        Some(string_matcher::MatchPattern::Prefix(v)) => {
            Obj::default().opt("prefix", Some(json!(v)))
        }
        Some(string_matcher::MatchPattern::Suffix(v)) => {
            Obj::default().opt("suffix", Some(json!(v)))
        }
        Some(string_matcher::MatchPattern::Contains(v)) => {
            Obj::default().opt("contains", Some(json!(v)))
        }
        Some(string_matcher::MatchPattern::SafeRegex(r)) => {
            Obj::default().opt("safeRegex", Some(regex(r)))
        }
        _ => Obj::default(),
    };
    o.flag("ignoreCase", s.ignore_case).done()
}

fn header_matcher(h: &HeaderMatcher) -> Value {
    use header_matcher::HeaderMatchSpecifier as S;
    let o = Obj::default().str("name", &h.name);
    let o = match &h.header_match_specifier {
        Some(S::StringMatch(s)) => o.opt("stringMatch", Some(string_match(s))),
        Some(S::PresentMatch(p)) => o.opt("presentMatch", Some(json!(p))),
        _ => o,
    };
    o.flag("invertMatch", h.invert_match)
        .flag("treatMissingHeaderAsEmpty", h.treat_missing_header_as_empty)
        .done()
}

fn query_matcher(q: &QueryParameterMatcher) -> Value {
    use query_parameter_matcher::QueryParameterMatchSpecifier as S;
    let o = Obj::default().str("name", &q.name);
    match &q.query_parameter_match_specifier {
        Some(S::StringMatch(s)) => o.opt("stringMatch", Some(string_match(s))),
        Some(S::PresentMatch(p)) => o.opt("presentMatch", Some(json!(p))),
        None => o,
    }
    .done()
}

fn route_action(a: &RouteAction) -> Value {
    let o = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => Obj::default().str("cluster", c),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            Obj::default().opt("weightedClusters", Some(weighted_clusters(w)))
        }
        _ => Obj::default(),
    };
    actions::action_fields(o, a)
        .opt("timeout", a.timeout.as_ref().map(duration))
        .list(
            "hashPolicy",
            a.hash_policy.iter().map(lb::hash_policy).collect(),
        )
        .opt("retryPolicy", a.retry_policy.as_ref().map(retry_policy))
        .done()
}

fn retry_policy(p: &RetryPolicy) -> Value {
    let predicates = p.retry_host_predicate.iter().map(|h| {
        let typed = h.config_type.as_ref().map(|c| match c {
            retry_policy::retry_host_predicate::ConfigType::TypedConfig(a) => any_value(a),
        });
        Obj::default()
            .str("name", &h.name)
            .opt("typedConfig", typed)
            .done()
    });
    let backoff = p.retry_back_off.as_ref().map(|b| {
        Obj::default()
            .opt("baseInterval", b.base_interval.as_ref().map(duration))
            .opt("maxInterval", b.max_interval.as_ref().map(duration))
            .done()
    });
    let priority = p.retry_priority.as_ref().map(|r| {
        let typed = r.config_type.as_ref().map(|c| match c {
            retry_policy::retry_priority::ConfigType::TypedConfig(a) => any_value(a),
        });
        Obj::default()
            .str("name", &r.name)
            .opt("typedConfig", typed)
            .done()
    });
    Obj::default()
        .str("retryOn", &p.retry_on)
        .opt("numRetries", p.num_retries.map(|v| json!(v.value)))
        .opt("perTryTimeout", p.per_try_timeout.as_ref().map(duration))
        .opt("retryPriority", priority)
        .list("retryHostPredicate", predicates.collect())
        .num(
            "hostSelectionRetryMaxAttempts",
            u64::try_from(p.host_selection_retry_max_attempts).unwrap_or(0),
        )
        .list(
            "retriableStatusCodes",
            p.retriable_status_codes.iter().map(|c| json!(c)).collect(),
        )
        .opt("retryBackOff", backoff)
        .list(
            "retriableRequestHeaders",
            p.retriable_request_headers
                .iter()
                .map(header_matcher)
                .collect(),
        )
        .done()
}

fn circuit_breakers(c: &CircuitBreakers) -> Value {
    let thresholds = c.thresholds.iter().map(|t| {
        let budget = t.retry_budget.as_ref().map(|b| {
            Obj::default()
                .opt(
                    "budgetPercent",
                    b.budget_percent.map(|p| json!({ "value": p.value })),
                )
                .opt(
                    "minRetryConcurrency",
                    b.min_retry_concurrency.map(|v| json!(v.value)),
                )
                .done()
        });
        Obj::default()
            .opt("maxConnections", t.max_connections.map(|v| json!(v.value)))
            .opt(
                "maxPendingRequests",
                t.max_pending_requests.map(|v| json!(v.value)),
            )
            .opt("maxRequests", t.max_requests.map(|v| json!(v.value)))
            .opt("maxRetries", t.max_retries.map(|v| json!(v.value)))
            .opt("retryBudget", budget)
            .flag("trackRemaining", t.track_remaining)
            .done()
    });
    Obj::default()
        .list("thresholds", thresholds.collect())
        .done()
}

fn upstream_connection_options(u: &UpstreamConnectionOptions) -> Value {
    let keepalive = u.tcp_keepalive.as_ref().map(|k| {
        Obj::default()
            .opt(
                "keepaliveProbes",
                k.keepalive_probes.map(|v| json!(v.value)),
            )
            .opt("keepaliveTime", k.keepalive_time.map(|v| json!(v.value)))
            .opt(
                "keepaliveInterval",
                k.keepalive_interval.map(|v| json!(v.value)),
            )
            .done()
    });
    Obj::default().opt("tcpKeepalive", keepalive).done()
}

fn weighted_clusters(w: &WeightedCluster) -> Value {
    let clusters = w
        .clusters
        .iter()
        .map(|c| {
            let o = Obj::default()
                .str("name", &c.name)
                .opt("weight", c.weight.map(|v| json!(v.value)));
            actions::cluster_weight_fields(o, c).done()
        })
        .collect();
    Obj::default().list("clusters", clusters).done()
}

pub fn cluster(c: &Cluster) -> Value {
    let kind = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).ok(),
        _ => None,
    };
    let lb = LbPolicy::try_from(c.lb_policy).unwrap_or(LbPolicy::RoundRobin);
    let eds = c.eds_cluster_config.as_ref().map(|e| {
        Obj::default()
            .opt("edsConfig", e.eds_config.as_ref().map(config_source))
            .str("serviceName", &e.service_name)
            .done()
    });
    let mut options: Vec<_> = c.typed_extension_protocol_options.iter().collect();
    options.sort_by(|a, b| a.0.cmp(b.0));
    let options: Map<String, Value> = options
        .into_iter()
        .map(|(k, v)| (k.clone(), any_value(v)))
        .collect();
    let o = Obj::typed(&Cluster::type_url())
        .str("name", &c.name)
        .opt("type", kind.map(|k| json!(k.as_str_name())))
        .opt("edsClusterConfig", eds)
        .opt("connectTimeout", c.connect_timeout.as_ref().map(duration))
        .opt(
            "lbPolicy",
            (lb != LbPolicy::RoundRobin).then(|| json!(lb.as_str_name())),
        )
        .opt(
            "loadAssignment",
            c.load_assignment.as_ref().map(load_assignment),
        )
        .opt(
            "typedExtensionProtocolOptions",
            (!options.is_empty()).then_some(Value::Object(options)),
        )
        .opt(
            "circuitBreakers",
            c.circuit_breakers.as_ref().map(circuit_breakers),
        )
        .opt(
            "upstreamConnectionOptions",
            c.upstream_connection_options
                .as_ref()
                .map(upstream_connection_options),
        )
        .opt("metadata", c.metadata.as_ref().map(metadata))
        .opt(
            "outlierDetection",
            c.outlier_detection.as_ref().map(lb::outlier_detection),
        )
        .opt(
            "commonLbConfig",
            c.common_lb_config.as_ref().map(lb::common_lb_config),
        )
        .list(
            "healthChecks",
            c.health_checks.iter().map(lb::health_check).collect(),
        )
        .list(
            "transportSocketMatches",
            c.transport_socket_matches
                .iter()
                .map(tls::transport_socket_match)
                .collect(),
        )
        .opt(
            "transportSocket",
            c.transport_socket.as_ref().map(tls::transport_socket),
        );
    match c.lb_config.as_ref().and_then(lb::lb_config) {
        Some((k, v)) => o.opt(k, Some(v)).done(),
        None => o.done(),
    }
}

fn upstream_http_options(o: &HttpProtocolOptions) -> Value {
    use http_protocol_options::UpstreamProtocolOptions as U;
    use http_protocol_options::explicit_http_config::ProtocolConfig as P;
    let explicit = match &o.upstream_protocol_options {
        Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(P::HttpProtocolOptions(h1)) => {
                Some(json!({ "httpProtocolOptions": http1_options(h1) }))
            }
            Some(P::Http2ProtocolOptions(h2)) => {
                Some(json!({ "http2ProtocolOptions": http2_options(h2) }))
            }
            _ => Some(json!({})),
        },
        _ => None,
    };
    Obj::typed(&HttpProtocolOptions::type_url())
        .opt(
            "commonHttpProtocolOptions",
            o.common_http_protocol_options
                .as_ref()
                .map(common_http_options),
        )
        .opt("explicitHttpConfig", explicit)
        .done()
}

pub fn load_assignment(a: &ClusterLoadAssignment) -> Value {
    Obj::typed(&ClusterLoadAssignment::type_url())
        .str("clusterName", &a.cluster_name)
        .list(
            "endpoints",
            a.endpoints.iter().map(locality_endpoints).collect(),
        )
        .done()
}

fn locality_endpoints(l: &LocalityLbEndpoints) -> Value {
    Obj::default()
        .opt("locality", l.locality.as_ref().map(locality))
        .list(
            "lbEndpoints",
            l.lb_endpoints.iter().map(lb_endpoint).collect(),
        )
        .opt(
            "loadBalancingWeight",
            l.load_balancing_weight.as_ref().map(|w| json!(w.value)),
        )
        .num("priority", l.priority.into())
        .done()
}

fn locality(l: &Locality) -> Value {
    Obj::default()
        .str("region", &l.region)
        .str("zone", &l.zone)
        .str("subZone", &l.sub_zone)
        .done()
}

fn lb_endpoint(e: &LbEndpoint) -> Value {
    let endpoint = match &e.host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => Some(
            Obj::default()
                .opt("address", ep.address.as_ref().map(address))
                .str("hostname", &ep.hostname)
                .done(),
        ),
        _ => None,
    };
    let health = HealthStatus::try_from(e.health_status)
        .ok()
        .filter(|h| *h != HealthStatus::Unknown)
        .map(|h| json!(h.as_str_name()));
    Obj::default()
        .opt("endpoint", endpoint)
        .opt("healthStatus", health)
        .opt("metadata", e.metadata.as_ref().map(metadata))
        .opt(
            "loadBalancingWeight",
            e.load_balancing_weight.map(|w| json!(w.value)),
        )
        .done()
}

fn address(a: &Address) -> Value {
    match &a.address {
        Some(address::Address::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            json!({ "socketAddress": Obj::default().str("address", &s.address).num("portValue", port.into()).done() })
        }
        _ => json!({}),
    }
}

fn metadata(m: &Metadata) -> Value {
    let mut keys: Vec<_> = m.filter_metadata.keys().collect();
    keys.sort();
    let fields: Map<String, Value> = keys
        .into_iter()
        .map(|k| (k.clone(), pb_struct(&m.filter_metadata[k])))
        .collect();
    json!({ "filterMetadata": fields })
}

/// `google.protobuf.Struct` as the JSON object it stands for (keys sorted).
pub fn pb_struct(s: &Struct) -> Value {
    let mut keys: Vec<_> = s.fields.keys().collect();
    keys.sort();
    Value::Object(
        keys.into_iter()
            .map(|k| (k.clone(), pb_value(&s.fields[k])))
            .collect(),
    )
}

fn pb_value(v: &PbValue) -> Value {
    match &v.kind {
        Some(Kind::NullValue(_)) | None => Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => pb_struct(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(pb_value).collect()),
    }
}

/// Proto3 JSON for a duration: whole seconds as `"10s"`, fractions as `"0.250s"`.
pub fn duration(d: &Duration) -> Value {
    if d.nanos == 0 {
        json!(format!("{}s", d.seconds))
    } else {
        let millis = d.nanos / 1_000_000;
        json!(format!("{}.{:03}s", d.seconds, millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_render_like_proto3_json() {
        assert_eq!(
            duration(&Duration {
                seconds: 10,
                nanos: 0
            }),
            json!("10s")
        );
        assert_eq!(
            duration(&Duration {
                seconds: 0,
                nanos: 250_000_000
            }),
            json!("0.250s")
        );
    }

    #[test]
    fn streamed_route_configuration_is_its_compact_json() {
        let vhost = |name: &str| VirtualHost {
            name: name.into(),
            domains: vec![name.into(), format!("{name}:80")],
            routes: vec![Route {
                name: "r\"1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let cases = [
            RouteConfiguration::default(),
            RouteConfiguration {
                name: "http.80".into(),
                ..Default::default()
            },
            RouteConfiguration {
                virtual_hosts: vec![vhost("a")],
                ..Default::default()
            },
            RouteConfiguration {
                name: "http.80".into(),
                virtual_hosts: vec![vhost("a"), vhost("b.example"), vhost("*")],
                ..Default::default()
            },
        ];
        for rc in &cases {
            let mut streamed = Vec::new();
            write_route_configuration(rc, &mut streamed).unwrap();
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                route_configuration(rc).to_string()
            );
        }
    }

    #[test]
    fn defaults_are_omitted() {
        let v = Obj::default()
            .str("a", "")
            .num("b", 0)
            .flag("c", false)
            .done();
        assert_eq!(v, json!({}));
    }
}
