//! Rendering of the authorization filters (`authz.rs`): HTTP and network RBAC with their
//! policies, permissions and principals, and the URI template matcher. Same proto3-JSON
//! conventions as the parent module.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Principal, Rbac, permission, principal,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, ValueMatcher, list_matcher, metadata_matcher, path_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde_json::{Map, Value, json};

use envoy_types::pb::envoy::config::core::v3::http_uri;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{ExtAuthz, ext_authz};
use envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher;

use super::{Obj, duration, header_matcher, string_match};

/// The JSON of an RBAC or URI-template `Any`, if it is one.
pub(super) fn filter_config(any: &Any) -> Option<Value> {
    let bytes = any.value.as_slice();
    if any.type_url == HttpRbac::type_url() {
        let r = HttpRbac::decode(bytes).ok()?;
        return Some(
            Obj::typed(&HttpRbac::type_url())
                .opt("rules", r.rules.as_ref().map(rbac))
                .opt("shadowRules", r.shadow_rules.as_ref().map(rbac))
                .str("shadowRulesStatPrefix", &r.shadow_rules_stat_prefix)
                .done(),
        );
    }
    if any.type_url == NetworkRbac::type_url() {
        let r = NetworkRbac::decode(bytes).ok()?;
        return Some(
            Obj::typed(&NetworkRbac::type_url())
                .str("statPrefix", &r.stat_prefix)
                .opt("rules", r.rules.as_ref().map(rbac))
                .opt("shadowRules", r.shadow_rules.as_ref().map(rbac))
                .str("shadowRulesStatPrefix", &r.shadow_rules_stat_prefix)
                .done(),
        );
    }
    if any.type_url == ExtAuthz::type_url() {
        return ExtAuthz::decode(bytes).ok().map(|e| ext_authz(&e));
    }
    if any.type_url == UriTemplateMatchConfig::type_url() {
        let t = UriTemplateMatchConfig::decode(bytes).ok()?;
        return Some(
            Obj::typed(&UriTemplateMatchConfig::type_url())
                .str("pathTemplate", &t.path_template)
                .done(),
        );
    }
    None
}

fn ext_authz(e: &ExtAuthz) -> Value {
    let list = |l: &Option<ListStringMatcher>| {
        l.as_ref()
            .filter(|l| !l.patterns.is_empty())
            .map(|l| json!({ "patterns": l.patterns.iter().map(string_match).collect::<Vec<_>>() }))
    };
    let http = match &e.services {
        Some(ext_authz::Services::HttpService(h)) => {
            let uri = h.server_uri.as_ref().map(|u| {
                let cluster = match &u.http_upstream_type {
                    Some(http_uri::HttpUpstreamType::Cluster(c)) => c.as_str(),
                    _ => "",
                };
                Obj::default()
                    .str("uri", &u.uri)
                    .str("cluster", cluster)
                    .opt("timeout", u.timeout.as_ref().map(duration))
                    .done()
            });
            let response = h.authorization_response.as_ref().map(|r| {
                Obj::default()
                    .opt("allowedUpstreamHeaders", list(&r.allowed_upstream_headers))
                    .opt("allowedClientHeaders", list(&r.allowed_client_headers))
                    .done()
            });
            Some(
                Obj::default()
                    .opt("serverUri", uri)
                    .str("pathPrefix", &h.path_prefix)
                    .opt("authorizationResponse", response)
                    .done(),
            )
        }
        _ => None,
    };
    Obj::typed(&ExtAuthz::type_url())
        .opt("httpService", http)
        .opt("transportApiVersion", Some(json!("V3")))
        .flag("failureModeAllow", e.failure_mode_allow)
        .opt(
            "statusOnError",
            e.status_on_error
                .as_ref()
                .map(|s| json!({ "code": s.code })),
        )
        .opt("allowedHeaders", list(&e.allowed_headers))
        .opt(
            "filterEnabledMetadata",
            e.filter_enabled_metadata.as_ref().map(metadata),
        )
        .done()
}

fn rbac(r: &Rbac) -> Value {
    let action = envoy_types::pb::envoy::config::rbac::v3::rbac::Action::try_from(r.action)
        .map(|a| a.as_str_name())
        .unwrap_or("ALLOW");
    let mut names: Vec<_> = r.policies.keys().collect();
    names.sort();
    let policies: Map<String, Value> = names
        .into_iter()
        .map(|n| {
            let p = &r.policies[n];
            let v = json!({
                "permissions": p.permissions.iter().map(permission).collect::<Vec<_>>(),
                "principals": p.principals.iter().map(principal).collect::<Vec<_>>(),
            });
            (n.clone(), v)
        })
        .collect();
    // An empty `policies` is meaningful (ALLOW nothing): always written.
    json!({ "action": action, "policies": policies })
}

fn permission(p: &Permission) -> Value {
    use permission::Rule as R;
    match &p.rule {
        Some(R::AndRules(s)) => {
            json!({"andRules": {"rules": s.rules.iter().map(permission).collect::<Vec<_>>()}})
        }
        Some(R::OrRules(s)) => {
            json!({"orRules": {"rules": s.rules.iter().map(permission).collect::<Vec<_>>()}})
        }
        Some(R::Any(b)) => json!({ "any": b }),
        Some(R::Header(h)) => json!({ "header": header_matcher(h) }),
        Some(R::UrlPath(m)) => match &m.rule {
            Some(path_matcher::Rule::Path(s)) => json!({"urlPath": {"path": string_match(s)}}),
            None => json!({"urlPath": {}}),
        },
        Some(R::DestinationIp(c)) => json!({ "destinationIp": cidr(c) }),
        Some(R::DestinationPort(p)) => json!({ "destinationPort": p }),
        Some(R::NotRule(p)) => json!({ "notRule": permission(p) }),
        Some(R::RequestedServerName(s)) => json!({ "requestedServerName": string_match(s) }),
        Some(R::UriTemplate(t)) => json!({"uriTemplate": {
            "name": t.name,
            "typedConfig": t.typed_config.as_ref().and_then(filter_config),
        }}),
        _ => json!({}),
    }
}

#[allow(deprecated)] // `metadata` is what Istio emits for request authentication.
fn principal(p: &Principal) -> Value {
    use principal::Identifier as I;
    match &p.identifier {
        Some(I::AndIds(s)) => {
            json!({"andIds": {"ids": s.ids.iter().map(principal).collect::<Vec<_>>()}})
        }
        Some(I::OrIds(s)) => {
            json!({"orIds": {"ids": s.ids.iter().map(principal).collect::<Vec<_>>()}})
        }
        Some(I::Any(b)) => json!({ "any": b }),
        Some(I::Authenticated(a)) => {
            json!({"authenticated": Obj::default().opt("principalName", a.principal_name.as_ref().map(string_match)).done()})
        }
        Some(I::DirectRemoteIp(c)) => json!({ "directRemoteIp": cidr(c) }),
        Some(I::RemoteIp(c)) => json!({ "remoteIp": cidr(c) }),
        Some(I::Header(h)) => json!({ "header": header_matcher(h) }),
        Some(I::Metadata(m)) => json!({ "metadata": metadata(m) }),
        Some(I::NotId(p)) => json!({ "notId": principal(p) }),
        _ => json!({}),
    }
}

fn cidr(c: &CidrRange) -> Value {
    json!({
        "addressPrefix": c.address_prefix,
        "prefixLen": c.prefix_len.map_or(0, |v| v.value),
    })
}

fn metadata(m: &MetadataMatcher) -> Value {
    let path: Vec<Value> = m
        .path
        .iter()
        .map(|s| match &s.segment {
            Some(metadata_matcher::path_segment::Segment::Key(k)) => json!({ "key": k }),
            None => json!({}),
        })
        .collect();
    Obj::default()
        .str("filter", &m.filter)
        .opt("path", Some(Value::Array(path)))
        .opt("value", m.value.as_ref().map(value))
        .flag("invert", m.invert)
        .done()
}

fn value(v: &ValueMatcher) -> Value {
    use value_matcher::MatchPattern as M;
    match &v.match_pattern {
        Some(M::StringMatch(s)) => json!({ "stringMatch": string_match(s) }),
        Some(M::PresentMatch(b)) => json!({ "presentMatch": b }),
        Some(M::ListMatch(l)) => match &l.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(v)) => json!({"listMatch": {"oneOf": value(v)}}),
            None => json!({"listMatch": {}}),
        },
        _ => json!({}),
    }
}
