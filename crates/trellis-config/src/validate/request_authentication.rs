//! Validation of `RequestAuthentication`: as Istio's webhook (an issuer per rule, unique
//! issuers, `selector` or `targetRef` but not both, header names and claims set) plus what the
//! proxy needs to verify anything: a JWKS source (`jwksUri` with an http(s) URL, or an inline
//! `jwks` that parses). OIDC discovery from the issuer is not supported, so a rule without
//! either is an error rather than a rule that silently never verifies.

use std::collections::BTreeSet;

use super::Reporter;
use crate::types::{JwtRule, RequestAuthentication};

pub(super) fn request_authentication(rep: &mut Reporter<'_>, ra: &RequestAuthentication) {
    let has_targets = ra.targets().next().is_some();
    if ra.selector.is_some() && has_targets {
        rep.error(
            "spec",
            "set either `selector` or `targetRef`/`targetRefs`, not both",
        );
    }
    if ra.target_ref.is_some() && !ra.target_refs.is_empty() {
        rep.error("spec", "set either `targetRef` or `targetRefs`, not both");
    }
    let refs = ra
        .target_ref
        .iter()
        .map(|t| ("spec.targetRef".to_string(), t));
    let many = ra
        .target_refs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t));
    for (path, t) in refs.chain(many) {
        if t.kind != "Gateway" {
            rep.error(
                &format!("{path}.kind"),
                format!("kind `{}` is not supported; use `Gateway`", t.kind),
            );
        }
        if t.name.is_empty() {
            rep.error(&format!("{path}.name"), "name is required");
        }
    }
    let mut issuers = BTreeSet::new();
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let path = format!("spec.jwtRules[{i}]");
        if !rule.issuer.is_empty() && !issuers.insert(rule.issuer.as_str()) {
            rep.error(
                &format!("{path}.issuer"),
                format!("issuer `{}` appears in an earlier rule", rule.issuer),
            );
        }
        jwt_rule(rep, &path, rule);
    }
}

fn jwt_rule(rep: &mut Reporter<'_>, path: &str, rule: &JwtRule) {
    if rule.issuer.is_empty() {
        rep.error(&format!("{path}.issuer"), "issuer is required");
    }
    for (i, aud) in rule.audiences.iter().enumerate() {
        if aud.is_empty() {
            rep.error(
                &format!("{path}.audiences[{i}]"),
                "audience must not be empty",
            );
        }
    }
    if !rule.jwks.is_empty() {
        if let Err(e) = check_jwks(&rule.jwks) {
            rep.error(&format!("{path}.jwks"), e);
        }
    } else if rule.jwks_uri.is_empty() {
        rep.error(
            &format!("{path}.jwksUri"),
            "set `jwksUri` or `jwks`; discovering the JWKS from the issuer is not supported",
        );
    } else if let Err(e) = check_uri(&rule.jwks_uri) {
        rep.error(&format!("{path}.jwksUri"), e);
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        header_name(rep, &format!("{path}.fromHeaders[{i}].name"), &h.name);
    }
    for (i, p) in rule.from_params.iter().enumerate() {
        if p.is_empty() {
            rep.error(
                &format!("{path}.fromParams[{i}]"),
                "parameter name is required",
            );
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            rep.error(
                &format!("{path}.fromCookies[{i}]"),
                "cookie name is required",
            );
        }
    }
    if !rule.output_payload_to_header.is_empty() {
        header_name(
            rep,
            &format!("{path}.outputPayloadToHeader"),
            &rule.output_payload_to_header,
        );
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let at = format!("{path}.outputClaimToHeaders[{i}]");
        header_name(rep, &format!("{at}.header"), &c.header);
        if c.claim.is_empty() {
            rep.error(&format!("{at}.claim"), "claim is required");
        }
    }
    rep.duration(&format!("{path}.timeout"), rule.timeout.as_ref());
}

fn header_name(rep: &mut Reporter<'_>, path: &str, name: &str) {
    if name.is_empty() {
        rep.error(path, "header name is required");
    } else if http_token(name).is_err() || name.starts_with(':') {
        rep.error(path, format!("`{name}` is not a valid header name"));
    }
}

fn http_token(s: &str) -> Result<(), ()> {
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(()) }
}

/// `http://host[:port]/path` or `https://…`, with a host.
pub fn check_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .ok_or_else(|| format!("`{uri}` must be an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("`{uri}` has no host"));
    }
    Ok(())
}

/// A JSON object with a `keys` array of objects, each with a `kty`.
fn check_jwks(jwks: &str) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_str(jwks).map_err(|e| format!("not valid JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("a JWKS must be an object with a `keys` array")?;
    for (i, k) in keys.iter().enumerate() {
        if k.get("kty").and_then(|v| v.as_str()).is_none() {
            return Err(format!("keys[{i}] has no `kty`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn errors(yaml: &str) -> Vec<String> {
        match crate::load_str("ra.yaml", yaml) {
            Ok(_) => Vec::new(),
            Err(d) => {
                d.0.iter()
                    .map(|d| format!("{}: {}", d.path, d.message))
                    .collect()
            }
        }
    }

    #[test]
    fn a_full_rule_loads_with_v1_and_v1beta1() {
        for version in ["v1", "v1beta1"] {
            let yaml = format!(
                r#"
apiVersion: security.istio.io/{version}
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: testing@secure.istio.io
    audiences: [app]
    jwksUri: http://127.0.0.1:9/jwks.json
    fromHeaders: [{{name: x-jwt, prefix: "Bearer "}}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
    forwardOriginalToken: true
    timeout: 2s
"#
            );
            let loaded = crate::load_str("ra.yaml", &yaml).expect("loads");
            let ra = &loaded.snapshot.request_authentications[0];
            let rule = &ra.spec.jwt_rules[0];
            assert_eq!(rule.from_headers[0].prefix, "Bearer ");
            assert_eq!(rule.output_claim_to_headers[0].claim, "sub");
            assert!(rule.forward_original_token);
        }
    }

    #[test]
    fn bad_rules_are_reported_with_their_paths() {
        let errs = errors(
            r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  selector: {matchLabels: {app: a}}
  targetRef: {kind: Gateway, name: gw}
  jwtRules:
  - issuer: a
    jwksUri: ftp://x/jwks
  - issuer: a
    jwks: '{"nokeys": 1}'
    outputClaimToHeaders: [{header: "bad header", claim: ""}]
  - jwksUri: http://x/jwks
    timeout: soon
  - issuer: b
"#,
        );
        let want = [
            "spec: set either `selector` or `targetRef`/`targetRefs`, not both",
            "spec.jwtRules[0].jwksUri: `ftp://x/jwks` must be an http:// or https:// URL",
            "spec.jwtRules[1].issuer: issuer `a` appears in an earlier rule",
            "spec.jwtRules[1].jwks: a JWKS must be an object with a `keys` array",
            "spec.jwtRules[1].outputClaimToHeaders[0].header: `bad header` is not a valid header name",
            "spec.jwtRules[1].outputClaimToHeaders[0].claim: claim is required",
            "spec.jwtRules[2].issuer: issuer is required",
            "spec.jwtRules[3].jwksUri: set `jwksUri` or `jwks`; discovering the JWKS from the issuer is not supported",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
        }
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.jwtRules[2].timeout: invalid duration")),
            "{errs:#?}"
        );
    }

    #[test]
    fn a_networking_api_version_is_refused() {
        let errs = errors(
            "apiVersion: networking.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec: {}\n",
        );
        assert!(errs[0].contains("security.istio.io/v1"), "{errs:?}");
    }
}
