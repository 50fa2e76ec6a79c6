//! Rendering of the `jwt_authn` filter config (`JwtAuthentication`) as proto3 JSON, the fields
//! `trellis-xds/src/jwt.rs` sets (providers sorted by name).

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, jwt_provider::JwksSourceSpecifier,
    jwt_requirement::RequiresType, requirement_rule::RequirementType,
};
use prost::Name;
use serde_json::{Map, Value, json};

use super::{Obj, duration};

pub fn jwt_authentication(j: &JwtAuthentication) -> Value {
    let mut names: Vec<&String> = j.providers.keys().collect();
    names.sort();
    let providers: Map<String, Value> = names
        .into_iter()
        .map(|n| (n.clone(), provider(&j.providers[n])))
        .collect();
    let rules = j
        .rules
        .iter()
        .map(|r| {
            let m = r.r#match.as_ref().and_then(|m| match &m.path_specifier {
                Some(PathSpecifier::Prefix(p)) => Some(json!({ "prefix": p })),
                Some(PathSpecifier::Path(p)) => Some(json!({ "path": p })),
                _ => None,
            });
            let o = Obj::default().opt("match", m);
            match &r.requirement_type {
                Some(RequirementType::Requires(req)) => o.opt("requires", Some(requirement(req))),
                Some(RequirementType::RequirementName(n)) => o.str("requirementName", n),
                None => o,
            }
            .done()
        })
        .collect();
    Obj::typed(&JwtAuthentication::type_url())
        .opt(
            "providers",
            (!providers.is_empty()).then_some(Value::Object(providers)),
        )
        .list("rules", rules)
        .flag("bypassCorsPreflight", j.bypass_cors_preflight)
        .done()
}

fn requirement(r: &JwtRequirement) -> Value {
    match &r.requires_type {
        Some(RequiresType::ProviderName(n)) => json!({ "providerName": n }),
        Some(RequiresType::RequiresAny(l)) => {
            json!({ "requiresAny": { "requirements": l.requirements.iter().map(requirement).collect::<Vec<_>>() } })
        }
        Some(RequiresType::RequiresAll(l)) => {
            json!({ "requiresAll": { "requirements": l.requirements.iter().map(requirement).collect::<Vec<_>>() } })
        }
        Some(RequiresType::AllowMissing(_)) => json!({ "allowMissing": {} }),
        Some(RequiresType::AllowMissingOrFailed(_)) => json!({ "allowMissingOrFailed": {} }),
        _ => json!({}),
    }
}

fn provider(p: &JwtProvider) -> Value {
    let source = match &p.jwks_source_specifier {
        Some(JwksSourceSpecifier::RemoteJwks(r)) => {
            let uri = r.http_uri.as_ref().map(|u| {
                let cluster = match &u.http_upstream_type {
                    Some(HttpUpstreamType::Cluster(c)) => c.as_str(),
                    None => "",
                };
                Obj::default()
                    .str("uri", &u.uri)
                    .str("cluster", cluster)
                    .opt("timeout", u.timeout.as_ref().map(duration))
                    .done()
            });
            Some((
                "remoteJwks",
                Obj::default()
                    .opt("httpUri", uri)
                    .opt("cacheDuration", r.cache_duration.as_ref().map(duration))
                    .done(),
            ))
        }
        Some(JwksSourceSpecifier::LocalJwks(d)) => match &d.specifier {
            Some(data_source::Specifier::InlineString(s)) => {
                Some(("localJwks", json!({ "inlineString": s })))
            }
            _ => Some(("localJwks", json!({}))),
        },
        None => None,
    };
    let o = Obj::default()
        .str("issuer", &p.issuer)
        .list("audiences", p.audiences.iter().map(|a| json!(a)).collect())
        .flag("forward", p.forward)
        .list(
            "fromHeaders",
            p.from_headers
                .iter()
                .map(|h| {
                    Obj::default()
                        .str("name", &h.name)
                        .str("valuePrefix", &h.value_prefix)
                        .done()
                })
                .collect(),
        )
        .list(
            "fromParams",
            p.from_params.iter().map(|a| json!(a)).collect(),
        )
        .list(
            "fromCookies",
            p.from_cookies.iter().map(|a| json!(a)).collect(),
        )
        .str("forwardPayloadHeader", &p.forward_payload_header)
        .str("payloadInMetadata", &p.payload_in_metadata)
        .list(
            "claimToHeaders",
            p.claim_to_headers
                .iter()
                .map(|c| json!({ "headerName": c.header_name, "claimName": c.claim_name }))
                .collect(),
        );
    match source {
        Some((k, v)) => o.opt(k, Some(v)).done(),
        None => o.done(),
    }
}
