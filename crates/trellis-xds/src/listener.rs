//! Listener and HttpConnectionManager builders with the contract's defaults.
//!
//! Owns the shape of every listener we emit (one filter chain, one HCM, router filter) and the HCM
//! limits and timeouts. It knows nothing about Istio resources: callers pass names and ports.

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions,
    HttpProtocolOptions, SocketAddress, TrafficDirection, address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;

use crate::route::actions::{CORS_FILTER, FAULT_FILTER};
use crate::{Listener, RouteConfiguration};

pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// Largest request header block, in KiB.
pub const MAX_REQUEST_HEADERS_KB: u32 = 60;
pub const MAX_HEADERS_COUNT: u32 = 100;
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
pub const REQUEST_HEADERS_TIMEOUT_SECS: i64 = 10;
pub const STREAM_IDLE_TIMEOUT_SECS: i64 = 300;
/// Downstream connection idle timeout (Envoy's default, written down).
pub const DOWNSTREAM_IDLE_TIMEOUT_SECS: i64 = 3600;

/// Where an HCM finds its routes.
#[derive(Debug, Clone)]
pub enum Routes {
    /// Route configuration by name, from the same snapshot (RDS over ADS).
    Rds(String),
    Inline(Box<RouteConfiguration>),
}

/// Everything that varies between the HCMs we emit.
#[derive(Debug, Clone)]
pub struct HcmSpec {
    pub stat_prefix: String,
    pub routes: Routes,
    pub use_remote_address: bool,
}

pub fn seconds(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// The ADS config source (RDS/EDS come over the same stream, v3 resources).
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource::default(),
        )),
        ..Default::default()
    }
}

pub fn http_connection_manager(spec: HcmSpec) -> HttpConnectionManager {
    let route_specifier = match spec.routes {
        Routes::Rds(name) => http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name,
        }),
        Routes::Inline(rc) => http_connection_manager::RouteSpecifier::RouteConfig(*rc),
    };
    HttpConnectionManager {
        stat_prefix: spec.stat_prefix,
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(route_specifier),
        // Istio's order: CORS, fault, router. The first two act only on routes whose
        // `typed_per_filter_config` configures them.
        http_filters: vec![
            HttpFilter {
                name: CORS_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    Cors::default(),
                ))),
                ..Default::default()
            },
            HttpFilter {
                name: FAULT_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    HttpFault::default(),
                ))),
                ..Default::default()
            },
            HttpFilter {
                name: ROUTER_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    Router::default(),
                ))),
                ..Default::default()
            },
        ],
        use_remote_address: Some(BoolValue {
            value: spec.use_remote_address,
        }),
        xff_num_trusted_hops: 0,
        common_http_protocol_options: Some(HttpProtocolOptions {
            idle_timeout: Some(seconds(DOWNSTREAM_IDLE_TIMEOUT_SECS)),
            max_headers_count: Some(UInt32Value {
                value: MAX_HEADERS_COUNT,
            }),
            ..Default::default()
        }),
        http2_protocol_options: Some(Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value {
                value: MAX_CONCURRENT_STREAMS,
            }),
            ..Default::default()
        }),
        max_request_headers_kb: Some(UInt32Value {
            value: MAX_REQUEST_HEADERS_KB,
        }),
        request_headers_timeout: Some(seconds(REQUEST_HEADERS_TIMEOUT_SECS)),
        stream_idle_timeout: Some(seconds(STREAM_IDLE_TIMEOUT_SECS)),
        generate_request_id: Some(BoolValue { value: true }),
        preserve_external_request_id: true,
        // Istio allows WebSocket upgrades on every HTTP listener.
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A listener with a single filter chain holding a single HCM.
pub fn http_listener(
    name: &str,
    ip: &str,
    port: u32,
    direction: TrafficDirection,
    hcm: HcmSpec,
) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket_address(ip, port)),
        traffic_direction: direction as i32,
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(
                    http_connection_manager(hcm),
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
