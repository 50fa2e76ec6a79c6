//! Istio `security.istio.io` `RequestAuthentication` (v1 and v1beta1): which JWTs a workload or
//! gateway accepts, where to find them, and what to pass on to the application. Types only;
//! the rules are `validate/request_authentication.rs`, the compilation to Envoy's `jwt_authn`
//! filter is `trellis-xds/src/jwt.rs`.
//!
//! ```yaml
//! apiVersion: security.istio.io/v1
//! kind: RequestAuthentication
//! metadata: {name: jwt-example, namespace: foo}
//! spec:
//!   selector: {matchLabels: {app: httpbin}}
//!   jwtRules:
//!   - issuer: testing@secure.istio.io
//!     jwksUri: https://raw.githubusercontent.com/istio/istio/release-1.28/security/tools/jwt/samples/jwks.json
//!     outputPayloadToHeader: x-jwt-payload
//! ```

use super::istio::config_struct;
use super::{Duration, PolicyTargetReference, WorkloadSelector};

/// `security.istio.io` API versions accepted for the security kinds.
pub const SECURITY_API_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];

config_struct! {
    /// `RequestAuthentication.spec`.
    pub struct RequestAuthentication {
        /// Workloads in the policy's namespace (every namespace for the root namespace) whose
        /// labels match; absent: all of them.
        pub selector: Option<WorkloadSelector>,
        /// A Gateway (by `gateway.networking.k8s.io/gateway-name` label) instead of a selector.
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub jwt_rules: Vec<JwtRule>,
    }
}

config_struct! {
    /// One accepted issuer (Istio `JWTRule`).
    pub struct JwtRule {
        pub issuer: String,
        /// Accepted `aud` values; empty: any audience.
        pub audiences: Vec<String>,
        pub jwks_uri: String,
        /// An inline JWKS document (JSON); takes precedence over `jwksUri`.
        pub jwks: String,
        /// Headers holding the token, with an optional prefix to strip (e.g. `Bearer `).
        /// Default (with `fromParams` and `fromCookies` empty): `Authorization: Bearer <token>`
        /// and the query parameter `access_token`.
        pub from_headers: Vec<JwtHeader>,
        pub from_params: Vec<String>,
        pub from_cookies: Vec<String>,
        /// Header that carries the verified payload (base64url) to the application.
        pub output_payload_to_header: String,
        pub output_claim_to_headers: Vec<ClaimToHeader>,
        /// Keep the token in the request forwarded to the application (default: removed).
        pub forward_original_token: bool,
        /// JWKS fetch timeout (default 5s).
        pub timeout: Option<Duration>,
    }
}

config_struct! {
    /// `JWTHeader`: a header name and the prefix before the token.
    pub struct JwtHeader {
        pub name: String,
        pub prefix: String,
    }
}

config_struct! {
    /// `ClaimToHeader`: copy a claim (nested with `.`) to a request header.
    pub struct ClaimToHeader {
        pub header: String,
        pub claim: String,
    }
}

impl RequestAuthentication {
    /// `targetRef` and `targetRefs` together.
    pub fn targets(&self) -> impl Iterator<Item = &PolicyTargetReference> {
        self.target_ref.iter().chain(&self.target_refs)
    }
}
