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
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::http_uri;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{ExtAuthz, ext_authz};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, StringMatcher, string_matcher, value_matcher,
};
use prost::Message;

use super::rbac::Rbac;
use super::route::StringMatch;

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
pub const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";

/// Authorization of one HTTP listener.
#[derive(Debug, Default)]
pub struct HttpAuthz {
    /// RBAC filters in the order the HCM lists them.
    pub filters: Vec<Rbac>,
    /// The HTTP external authorizer and the index of the RBAC filter it follows (it runs for
    /// the requests whose shadow rules in that filter matched, Istio's CUSTOM shape).
    pub ext_authz: Option<(usize, ExtAuthzHttp)>,
    pub normalization: PathNormalization,
}

/// `envoy.filters.http.ext_authz` with an `http_service`.
#[derive(Debug)]
pub struct ExtAuthzHttp {
    /// `server_uri.cluster`: where the check requests go.
    pub cluster: Arc<str>,
    /// `server_uri.uri`'s authority, sent as `Host`.
    pub authority: String,
    pub path_prefix: String,
    pub timeout: Duration,
    pub failure_mode_allow: bool,
    pub status_on_error: u16,
    /// Request headers copied into the check (besides Host, Method, Path, Content-Length and
    /// Authorization, which Envoy always sends).
    pub allowed_headers: Vec<StringMatch>,
    /// Check-response headers added to the upstream request on allow.
    pub upstream_headers: Vec<StringMatch>,
    /// Check-response headers returned to the client on deny.
    pub client_headers: Vec<StringMatch>,
    /// Only for requests whose preceding RBAC filter's shadow rules matched a policy with
    /// this prefix (`filter_enabled_metadata`); `None`: every request.
    pub enabled_prefix: Option<String>,
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
        let mut ext_authz = None;
        for (i, f) in hcm.http_filters.iter().enumerate() {
            if f.name == HTTP_RBAC {
                filters.push(rbac_filter(f).map_err(|why| (format!("http_filters[{i}]"), why))?);
            } else if f.name == EXT_AUTHZ {
                let at = |why| (format!("http_filters[{i}]"), why);
                if ext_authz.is_some() {
                    return Err(at("only one ext_authz filter is supported".to_string()));
                }
                let ext = ext_authz_filter(f).map_err(at)?;
                if ext.enabled_prefix.is_some() && filters.is_empty() {
                    return Err(at(
                        "filter_enabled_metadata needs an RBAC filter before ext_authz".into(),
                    ));
                }
                ext_authz = Some((filters.len().saturating_sub(1), ext));
            }
        }
        let escaped = PathWithEscapedSlashesAction::try_from(hcm.path_with_escaped_slashes_action)
            .unwrap_or(PathWithEscapedSlashesAction::KeepUnchanged);
        Ok(HttpAuthz {
            filters,
            ext_authz,
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

fn ext_authz_filter(f: &HttpFilter) -> Result<ExtAuthzHttp, String> {
    let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err("typed_config is required".into());
    };
    let cfg = ExtAuthz::decode(any.value.as_slice())
        .map_err(|e| format!("does not decode as ExtAuthz: {e}"))?;
    let Some(ext_authz::Services::HttpService(http)) = &cfg.services else {
        return Err("only http_service is supported (grpc_service is not yet)".into());
    };
    let uri = http
        .server_uri
        .as_ref()
        .ok_or("http_service.server_uri is required")?;
    let Some(http_uri::HttpUpstreamType::Cluster(cluster)) = &uri.http_upstream_type else {
        return Err("http_service.server_uri.cluster is required".into());
    };
    let authority = uri
        .uri
        .split_once("://")
        .map_or(uri.uri.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let list = |l: Option<&ListStringMatcher>| -> Result<Vec<StringMatch>, String> {
        l.map_or(Ok(Vec::new()), |l| {
            l.patterns.iter().map(StringMatch::compile).collect()
        })
    };
    let response = http.authorization_response.as_ref();
    let enabled_prefix = match &cfg.filter_enabled_metadata {
        None => None,
        Some(m) => {
            let prefix = match m.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
                Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Prefix(p)),
                    ..
                })) => p.clone(),
                _ => {
                    return Err("filter_enabled_metadata: only a string prefix is supported".into());
                }
            };
            Some(prefix)
        }
    };
    Ok(ExtAuthzHttp {
        cluster: cluster.as_str().into(),
        authority,
        path_prefix: http.path_prefix.clone(),
        timeout: uri
            .timeout
            .as_ref()
            .map(super::duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(200)),
        failure_mode_allow: cfg.failure_mode_allow,
        status_on_error: cfg
            .status_on_error
            .as_ref()
            .and_then(|s| u16::try_from(s.code).ok())
            .filter(|c| (200..=599).contains(c))
            .unwrap_or(403),
        allowed_headers: list(cfg.allowed_headers.as_ref())?,
        upstream_headers: list(response.and_then(|r| r.allowed_upstream_headers.as_ref()))?,
        client_headers: list(response.and_then(|r| r.allowed_client_headers.as_ref()))?,
        enabled_prefix,
    })
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
