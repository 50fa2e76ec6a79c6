//! Listeners for the hot path: address, HTTP connection manager settings (limits, timeouts,
//! header policy) and where the routes come from. Built from an LDS `Listener` whose first
//! filter is the HTTP connection manager. Binding and serving live in `crate::listeners`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{address::Address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::listener::v3::{Listener as XListener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use prost::Message;

use super::authz::{EXT_AUTHZ, HTTP_RBAC, HttpAuthz};
use super::cluster::Cluster;
use super::jwt::{JWT_AUTHN_FILTER, JwtAuthn};
use super::route::RouteTable;
use super::route::policy::{CORS_FILTER, FAULT_FILTER};
use super::{RuntimeError, duration};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const ROUTER: &str = "envoy.filters.http.router";

#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    /// Configured address (port 0 binds an ephemeral port; see `crate::listeners`).
    pub addr: SocketAddr,
    pub settings: HttpSettings,
    pub routes: RouteSource,
    /// RBAC filters and path normalization (`runtime/authz.rs`).
    pub authz: Arc<HttpAuthz>,
    /// `envoy.filters.http.jwt_authn`, when configured.
    pub jwt: Option<Arc<super::jwt::JwtAuthn>>,
    /// TLS termination, when a filter chain carries a `DownstreamTlsContext`.
    pub tls: Option<Arc<crate::tls::inbound::InboundTls>>,
    /// The gateway TLS listener (`runtime/sni.rs`) this is one HTTP chain of; such a listener
    /// is not bound itself.
    pub chain_of: Option<Arc<str>>,
}

#[derive(Debug)]
pub enum RouteSource {
    /// `rds.route_config_name`: looked up by name in the same snapshot.
    Rds(Arc<str>),
    Inline(Arc<RouteTable>),
}

/// HTTP connection manager settings, with Envoy/Istio defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub stat_prefix: String,
    /// Edge: append the peer address to `x-forwarded-for`, set `x-forwarded-proto`.
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    /// Connection idle timeout (no requests in flight).
    pub idle_timeout: Duration,
    pub max_headers_count: usize,
    pub max_request_headers_bytes: usize,
    pub request_headers_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    /// `upgrade_configs[].upgrade_type` (lower-cased): the `Upgrade` protocols let through.
    pub upgrades: Vec<String>,
    /// `forward_client_cert_details` / `set_current_client_cert_details`.
    pub xfcc: crate::tls::xfcc::XfccPolicy,
    /// `server_name`: the `server` header on every response, and then also
    /// `x-envoy-upstream-service-time` on proxied ones (Istio's gateways set `istio-envoy`).
    /// Unset: the upstream's headers are left as they are.
    pub server_name: Option<http::HeaderValue>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            stat_prefix: String::new(),
            use_remote_address: false,
            xff_num_trusted_hops: 0,
            idle_timeout: Duration::from_secs(3600),
            max_headers_count: 100,
            max_request_headers_bytes: 60 * 1024,
            request_headers_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 100,
            generate_request_id: true,
            preserve_external_request_id: false,
            upgrades: Vec::new(),
            xfcc: Default::default(),
            server_name: None,
        }
    }
}

impl Listener {
    pub fn compile(
        l: &XListener,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
    ) -> Result<Listener, RuntimeError> {
        let err = |field: &str, reason: String| RuntimeError::Listener {
            name: l.name.clone(),
            field: field.to_string(),
            reason,
        };
        let Some(Address::SocketAddress(sa)) = l.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            return Err(err("address", "missing socket_address".into()));
        };
        let ip: IpAddr = sa.address.parse().map_err(|_| {
            err(
                "address.socket_address.address",
                format!("{:?} is not an IP address", sa.address),
            )
        })?;
        let port = match sa.port_specifier {
            Some(PortSpecifier::PortValue(p)) => u16::try_from(p).map_err(|_| {
                err(
                    "address.socket_address.port_value",
                    format!("{p} out of range"),
                )
            })?,
            _ => return Err(err("address.socket_address.port_value", "missing".into())),
        };
        let chain = l
            .filter_chains
            .first()
            .ok_or_else(|| err("filter_chains", "empty".into()))?;
        let filter = chain
            .filters
            .first()
            .ok_or_else(|| err("filter_chains[0].filters", "empty".into()))?;
        if filter.name != HCM {
            return Err(err(
                "filter_chains[0].filters[0].name",
                format!("{:?} is not supported; expected {HCM}", filter.name),
            ));
        }
        let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
            return Err(err(
                "filter_chains[0].filters[0].typed_config",
                "missing".into(),
            ));
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
            err(
                "filter_chains[0].filters[0].typed_config",
                format!("does not decode as HttpConnectionManager: {e}"),
            )
        })?;
        // The CORS and fault filters act through each route's `typed_per_filter_config`
        // (`route/policy.rs`); their listener-level configs carry nothing we apply.
        let mut jwt = None;
        for (i, f) in hcm.http_filters.iter().enumerate() {
            if f.name == JWT_AUTHN_FILTER {
                let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    return Err(err(
                        &format!("http_filters[{i}].typed_config"),
                        "missing".into(),
                    ));
                };
                let compiled = JwtAuthn::compile(&any.value)
                    .map_err(|e| err(&format!("http_filters[{i}].typed_config"), e.to_string()))?;
                jwt = Some(Arc::new(compiled));
                continue;
            }
            if ![ROUTER, CORS_FILTER, FAULT_FILTER, HTTP_RBAC, EXT_AUTHZ].contains(&f.name.as_str())
            {
                return Err(err(
                    &format!("http_filters[{i}].name"),
                    format!(
                        "{:?} is not supported; only {JWT_AUTHN_FILTER}, {CORS_FILTER}, {FAULT_FILTER}, {HTTP_RBAC}, {EXT_AUTHZ} and {ROUTER}",
                        f.name
                    ),
                ));
            }
        }
        let routes = match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(r)) => RouteSource::Rds(r.route_config_name.as_str().into()),
            Some(RouteSpecifier::RouteConfig(rc)) => {
                RouteSource::Inline(Arc::new(RouteTable::compile(rc, clusters)?))
            }
            _ => {
                return Err(err(
                    "http_connection_manager.route_specifier",
                    "need rds or route_config".into(),
                ));
            }
        };
        let authz = HttpAuthz::from_hcm(&hcm).map_err(|(f, why)| err(&f, why))?;
        let tls = crate::tls::inbound::InboundTls::from_chains(&l.filter_chains)
            .map_err(|(f, why)| err(&f, why))?
            .map(Arc::new);
        Ok(Listener {
            name: l.name.as_str().into(),
            addr: SocketAddr::new(ip, port),
            settings: HttpSettings::from_hcm(&hcm),
            routes,
            authz: Arc::new(authz),
            jwt,
            tls,
            chain_of: None,
        })
    }
}

impl HttpSettings {
    fn from_hcm(h: &HttpConnectionManager) -> HttpSettings {
        let d = HttpSettings::default();
        let common = h.common_http_protocol_options.as_ref();
        let zero_is_none = |v: Duration, default: Duration| if v.is_zero() { default } else { v };
        HttpSettings {
            stat_prefix: h.stat_prefix.clone(),
            use_remote_address: h.use_remote_address.as_ref().is_some_and(|v| v.value),
            xff_num_trusted_hops: h.xff_num_trusted_hops,
            idle_timeout: common
                .and_then(|c| c.idle_timeout.as_ref())
                .map_or(d.idle_timeout, |t| {
                    zero_is_none(duration(t), Duration::from_secs(u64::from(u32::MAX)))
                }),
            max_headers_count: common
                .and_then(|c| c.max_headers_count.as_ref())
                .map_or(d.max_headers_count, |v| v.value.max(1) as usize),
            max_request_headers_bytes: h
                .max_request_headers_kb
                .as_ref()
                .map_or(d.max_request_headers_bytes, |v| {
                    v.value.clamp(1, 8192) as usize * 1024
                }),
            request_headers_timeout: h
                .request_headers_timeout
                .as_ref()
                .map_or(d.request_headers_timeout, |t| {
                    zero_is_none(duration(t), d.request_headers_timeout)
                }),
            stream_idle_timeout: h
                .stream_idle_timeout
                .as_ref()
                .map_or(d.stream_idle_timeout, |t| {
                    zero_is_none(duration(t), Duration::from_secs(u64::from(u32::MAX)))
                }),
            max_concurrent_streams: h
                .http2_protocol_options
                .as_ref()
                .and_then(|o| o.max_concurrent_streams.as_ref())
                .map_or(d.max_concurrent_streams, |v| v.value.max(1)),
            generate_request_id: h.generate_request_id.as_ref().is_none_or(|v| v.value),
            preserve_external_request_id: h.preserve_external_request_id,
            upgrades: h
                .upgrade_configs
                .iter()
                .filter(|u| u.enabled.as_ref().is_none_or(|e| e.value))
                .map(|u| u.upgrade_type.to_ascii_lowercase())
                .collect(),
            xfcc: crate::tls::xfcc::XfccPolicy::from_hcm(h),
            server_name: (!h.server_name.is_empty())
                .then(|| http::HeaderValue::from_str(&h.server_name).ok())
                .flatten(),
        }
    }
}
