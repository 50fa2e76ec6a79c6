//! What an HTTP connection manager says about authorization: its `envoy.filters.http.rbac`
//! filters (compiled by `rbac.rs`, in filter order) and its path normalization
//! (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`). Built once per
//! listener; applied per request by `crate::proxy::authz`.

use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::PathWithEscapedSlashesAction,
    http_filter::ConfigType,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use prost::Message;

use super::rbac::Rbac;

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

/// Authorization of one HTTP listener.
#[derive(Debug, Default)]
pub struct HttpAuthz {
    /// RBAC filters in the order the HCM lists them.
    pub filters: Vec<Rbac>,
    pub normalization: PathNormalization,
}

/// How the request path is normalized before routing and authorization (Envoy's HCM options,
/// as Istio's `pathNormalization` sets them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathNormalization {
    /// RFC 3986 normalization plus `\` → `/` and decoding of unreserved `%XX`.
    pub normalize: bool,
    pub merge_slashes: bool,
    /// Decode `%2F` / `%5C` first (`UNESCAPE_AND_FORWARD`).
    pub unescape_slashes: bool,
    /// `REJECT_REQUEST`: answer 400 to a path with `%2F` / `%5C`.
    pub reject_escaped_slashes: bool,
}

impl HttpAuthz {
    /// Reads the RBAC filters of `hcm` (`Err((field, reason))` for one that does not decode).
    pub fn from_hcm(hcm: &HttpConnectionManager) -> Result<HttpAuthz, (String, String)> {
        let mut filters = Vec::new();
        for (i, f) in hcm.http_filters.iter().enumerate() {
            if f.name == HTTP_RBAC {
                filters.push(rbac_filter(f).map_err(|why| (format!("http_filters[{i}]"), why))?);
            }
        }
        let escaped = PathWithEscapedSlashesAction::try_from(hcm.path_with_escaped_slashes_action)
            .unwrap_or(PathWithEscapedSlashesAction::KeepUnchanged);
        Ok(HttpAuthz {
            filters,
            normalization: PathNormalization {
                normalize: hcm.normalize_path.as_ref().is_some_and(|b| b.value),
                merge_slashes: hcm.merge_slashes,
                unescape_slashes: matches!(
                    escaped,
                    PathWithEscapedSlashesAction::UnescapeAndForward
                        | PathWithEscapedSlashesAction::UnescapeAndRedirect
                ),
                reject_escaped_slashes: escaped == PathWithEscapedSlashesAction::RejectRequest,
            },
        })
    }
}

/// The `envoy.filters.network.rbac` filters in front of an L4 chain's tcp_proxy (`Err((index,
/// reason))` for any other filter or one that does not decode).
pub fn network_filters(filters: &[Filter]) -> Result<Vec<Rbac>, (usize, String)> {
    filters
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if f.name != NETWORK_RBAC {
                return Err((
                    i,
                    format!(
                        "{:?} is not supported before tcp_proxy; only {NETWORK_RBAC}",
                        f.name
                    ),
                ));
            }
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err((i, "typed_config is required".into()));
            };
            let cfg = NetworkRbac::decode(any.value.as_slice())
                .map_err(|e| (i, format!("does not decode as network RBAC: {e}")))?;
            if cfg.matcher.is_some() || cfg.shadow_matcher.is_some() {
                return Err((i, "matcher trees are not supported; use rules".into()));
            }
            Rbac::compile(
                cfg.rules.as_ref(),
                cfg.shadow_rules.as_ref(),
                &cfg.shadow_rules_stat_prefix,
            )
            .map_err(|e| (i, e))
        })
        .collect()
}

fn rbac_filter(f: &HttpFilter) -> Result<Rbac, String> {
    let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err("typed_config is required".into());
    };
    let cfg = HttpRbac::decode(any.value.as_slice())
        .map_err(|e| format!("does not decode as RBAC: {e}"))?;
    if cfg.matcher.is_some() || cfg.shadow_matcher.is_some() {
        return Err("matcher trees are not supported; use rules".into());
    }
    Rbac::compile(
        cfg.rules.as_ref(),
        cfg.shadow_rules.as_ref(),
        &cfg.shadow_rules_stat_prefix,
    )
}
