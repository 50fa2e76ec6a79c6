//! JWT authentication for the hot path: Envoy's `envoy.filters.http.jwt_authn` config
//! (`JwtAuthentication`) translated once per snapshot into providers (issuer, audiences, token
//! locations, outputs, key source) and requirement rules. A remote JWKS is shared, with its cache,
//! by every snapshot that names the same URL (`proxy/jwt/jwks.rs` owns fetching and caching).
//! Verification and the request-side work are `proxy/jwt.rs`; this module never does I/O.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, jwt_provider::JwksSourceSpecifier,
    jwt_requirement::RequiresType, requirement_rule::RequirementType,
};
use http::HeaderName;
use prost::Message;

use super::duration;
use crate::proxy::jwt::jwks::{KeySet, RemoteJwks};

pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Envoy's default `clock_skew_seconds`.
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Envoy's default JWKS `cache_duration` (5 minutes) when the config sets none.
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(300);
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The compiled filter of one HTTP listener.
#[derive(Debug)]
pub struct JwtAuthn {
    pub providers: Vec<Arc<Provider>>,
    pub rules: Vec<Rule>,
    pub bypass_cors_preflight: bool,
    /// Every `claim_to_headers` and `forward_payload_header` name: removed from each request
    /// before verification so a client cannot pose as a verified claim.
    pub output_headers: Vec<HeaderName>,
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Empty: any issuer.
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub locations: Vec<TokenLocation>,
    /// Keep the token in the forwarded request.
    pub forward: bool,
    pub forward_payload_header: Option<HeaderName>,
    pub claim_to_headers: Vec<(HeaderName, String)>,
    pub clock_skew: Duration,
    pub keys: KeySource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// Header and the prefix before the token (`Authorization`, `Bearer `).
    Header(HeaderName, String),
    Param(String),
    Cookie(String),
}

#[derive(Debug)]
pub enum KeySource {
    Local(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// `rules[]`: the first whose path matches decides what the request needs.
#[derive(Debug)]
pub struct Rule {
    pub path: PathMatch,
    /// `None`: nothing is required.
    pub requires: Option<Requirement>,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug)]
pub enum Requirement {
    /// Index into `providers`.
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// No token passes; a token that fails verification fails the request.
    AllowMissing,
    /// Anything passes (a verified token still counts).
    AllowMissingOrFailed,
}

/// Why a listener's `jwt_authn` config cannot be used (the listener compile names the field).
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("does not decode as JwtAuthentication: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("providers[{0:?}]: {1}")]
    Provider(String, String),
    #[error("rules[{0}]: {1}")]
    Rule(usize, String),
}

impl JwtAuthn {
    /// From the filter's `typed_config` bytes.
    pub fn compile(bytes: &[u8]) -> Result<JwtAuthn, JwtConfigError> {
        let config = JwtAuthentication::decode(bytes)?;
        let mut names: Vec<&String> = config.providers.keys().collect();
        names.sort();
        let mut providers = Vec::with_capacity(names.len());
        for name in &names {
            let p = Provider::compile(name, &config.providers[*name])
                .map_err(|e| JwtConfigError::Provider((*name).clone(), e))?;
            providers.push(Arc::new(p));
        }
        let index = |n: &str| names.iter().position(|m| *m == n);
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.iter().enumerate() {
            let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
                Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
                _ => return Err(JwtConfigError::Rule(i, "match: need prefix or path".into())),
            };
            let requires = match &r.requirement_type {
                Some(RequirementType::Requires(req)) => {
                    Some(requirement(req, &index).map_err(|e| JwtConfigError::Rule(i, e))?)
                }
                Some(RequirementType::RequirementName(_)) => {
                    return Err(JwtConfigError::Rule(
                        i,
                        "requirement_name (requirement_map) is not supported".into(),
                    ));
                }
                None => None,
            };
            rules.push(Rule { path, requires });
        }
        let mut output_headers: Vec<HeaderName> = providers
            .iter()
            .flat_map(|p| {
                let claims = p.claim_to_headers.iter().map(|(h, _)| h.clone());
                p.forward_payload_header.clone().into_iter().chain(claims)
            })
            .collect();
        output_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        output_headers.dedup();
        Ok(JwtAuthn {
            providers,
            rules,
            bypass_cors_preflight: config.bypass_cors_preflight,
            output_headers,
        })
    }

    /// The requirement for a request path (`None`: no rule matches or it requires nothing).
    pub fn requirement(&self, path: &str) -> Option<&Requirement> {
        let rule = self.rules.iter().find(|r| match &r.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        })?;
        rule.requires.as_ref()
    }
}

impl Provider {
    fn compile(name: &str, p: &JwtProvider) -> Result<Provider, String> {
        let header = |n: &str, field: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{field}: {n:?} is not a valid header name"))
        };
        let mut locations = Vec::new();
        for h in &p.from_headers {
            locations.push(TokenLocation::Header(
                header(&h.name, "from_headers")?,
                h.value_prefix.clone(),
            ));
        }
        locations.extend(p.from_params.iter().cloned().map(TokenLocation::Param));
        locations.extend(p.from_cookies.iter().cloned().map(TokenLocation::Cookie));
        if locations.is_empty() {
            // Envoy's defaults.
            locations.push(TokenLocation::Header(
                http::header::AUTHORIZATION,
                "Bearer ".into(),
            ));
            locations.push(TokenLocation::Param("access_token".into()));
        }
        let forward_payload_header = match p.forward_payload_header.as_str() {
            "" => None,
            h => Some(header(h, "forward_payload_header")?),
        };
        let claim_to_headers = p
            .claim_to_headers
            .iter()
            .map(|c| {
                Ok((
                    header(&c.header_name, "claim_to_headers")?,
                    c.claim_name.clone(),
                ))
            })
            .collect::<Result<_, String>>()?;
        let keys = key_source(p)?;
        Ok(Provider {
            name: name.to_string(),
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            locations,
            forward: p.forward,
            forward_payload_header,
            claim_to_headers,
            clock_skew: if p.clock_skew_seconds == 0 {
                DEFAULT_CLOCK_SKEW
            } else {
                Duration::from_secs(p.clock_skew_seconds.into())
            },
            keys,
        })
    }
}

/// Where a provider's keys come from: an inline JWKS, or the shared cache of a remote one.
fn key_source(p: &JwtProvider) -> Result<KeySource, String> {
    Ok(match &p.jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(d)) => {
            let text = match &d.specifier {
                Some(data_source::Specifier::InlineString(s)) => s.as_bytes(),
                Some(data_source::Specifier::InlineBytes(b)) => b.as_slice(),
                _ => {
                    return Err(
                        "local_jwks: only inline_string and inline_bytes are supported".into(),
                    );
                }
            };
            let keys = KeySet::parse(text).map_err(|e| format!("local_jwks: {e}"))?;
            KeySource::Local(Arc::new(keys))
        }
        Some(JwksSourceSpecifier::RemoteJwks(r)) => {
            let uri = r.http_uri.as_ref().ok_or("remote_jwks.http_uri: missing")?;
            let timeout = uri
                .timeout
                .as_ref()
                .map(duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_FETCH_TIMEOUT);
            let cache = r
                .cache_duration
                .as_ref()
                .map(duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_CACHE_DURATION);
            let remote = RemoteJwks::shared(&uri.uri, timeout, cache)
                .map_err(|e| format!("remote_jwks.http_uri.uri: {e}"))?;
            KeySource::Remote(remote)
        }
        None => return Err("jwks_source_specifier: need remote_jwks or local_jwks".into()),
    })
}

fn requirement(
    r: &JwtRequirement,
    index: &impl Fn(&str) -> Option<usize>,
) -> Result<Requirement, String> {
    let list = |reqs: &[JwtRequirement]| {
        reqs.iter()
            .map(|r| requirement(r, index))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &r.requires_type {
        Some(RequiresType::ProviderName(n)) => Requirement::Provider(
            index(n).ok_or_else(|| format!("provider {n:?} is not in providers"))?,
        ),
        Some(RequiresType::RequiresAny(l)) => Requirement::Any(list(&l.requirements)?),
        Some(RequiresType::RequiresAll(l)) => Requirement::All(list(&l.requirements)?),
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(RequiresType::ProviderAndAudiences(_)) => {
            return Err("provider_and_audiences is not supported".into());
        }
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            return Err("extract_only_without_validation is not supported".into());
        }
        None => return Err("requirement: empty".into()),
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, HttpUri, http_uri};
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as pb;
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::JwksSourceSpecifier as Src;

    use super::*;

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    fn inline() -> Src {
        Src::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(JWKS.into())),
            ..Default::default()
        })
    }

    fn compile(
        providers: Vec<(&str, pb::JwtProvider)>,
        requires: RequiresType,
    ) -> Result<JwtAuthn, String> {
        let config = JwtAuthentication {
            providers: providers
                .into_iter()
                .map(|(n, p)| (n.to_string(), p))
                .collect(),
            rules: vec![pb::RequirementRule {
                r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/api".into())),
                    ..Default::default()
                }),
                requirement_type: Some(RequirementType::Requires(JwtRequirement {
                    requires_type: Some(requires),
                })),
            }],
            ..Default::default()
        };
        JwtAuthn::compile(&config.encode_to_vec()).map_err(|e| e.to_string())
    }

    fn provider(keys: Src) -> pb::JwtProvider {
        pb::JwtProvider {
            issuer: "i".into(),
            jwks_source_specifier: Some(keys),
            ..Default::default()
        }
    }

    #[test]
    fn envoy_defaults_locations_skew_and_rule_matching() {
        let authn = compile(
            vec![("p", provider(inline()))],
            RequiresType::ProviderName("p".into()),
        )
        .expect("compiles");
        let p = &authn.providers[0];
        assert_eq!(
            p.locations,
            [
                TokenLocation::Header(http::header::AUTHORIZATION, "Bearer ".into()),
                TokenLocation::Param("access_token".into())
            ]
        );
        assert_eq!(p.clock_skew, Duration::from_secs(60));
        assert!(matches!(
            authn.requirement("/api/x"),
            Some(Requirement::Provider(0))
        ));
        assert!(authn.requirement("/other").is_none(), "no rule covers it");
    }

    #[test]
    fn what_the_proxy_cannot_honour_is_refused_with_its_field() {
        let err = compile(
            vec![("p", provider(inline()))],
            RequiresType::ProviderName("q".into()),
        )
        .expect_err("unknown provider");
        assert_eq!(err, r#"rules[0]: provider "q" is not in providers"#);
        let err = compile(
            vec![],
            RequiresType::ProviderAndAudiences(Default::default()),
        )
        .expect_err("unsupported");
        assert_eq!(err, "rules[0]: provider_and_audiences is not supported");
        let mut bad = provider(inline());
        bad.forward_payload_header = "bad header".into();
        let err = compile(
            vec![("p", bad)],
            RequiresType::AllowMissing(Default::default()),
        )
        .expect_err("bad header");
        assert_eq!(
            err,
            r#"providers["p"]: forward_payload_header: "bad header" is not a valid header name"#
        );
        let ftp = Src::RemoteJwks(pb::RemoteJwks {
            http_uri: Some(HttpUri {
                uri: "ftp://keys/jwks".into(),
                timeout: None,
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster("c".into())),
            }),
            ..Default::default()
        });
        let err = compile(
            vec![("p", provider(ftp))],
            RequiresType::AllowMissing(Default::default()),
        )
        .expect_err("bad uri");
        assert!(
            err.starts_with(r#"providers["p"]: remote_jwks.http_uri.uri: "ftp://keys/jwks""#),
            "{err}"
        );
        let no_keys = Src::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(
                r#"{"keys":[]}"#.into(),
            )),
            ..Default::default()
        });
        let err = compile(
            vec![("p", provider(no_keys))],
            RequiresType::AllowMissing(Default::default()),
        )
        .expect_err("no keys");
        assert!(err.contains("no usable key"), "{err}");
    }
}
