//! Validation of `security.istio.io` PeerAuthentication, as Istio's webhook checks it:
//! `portLevelMtls` needs a `selector` (it names a workload's ports) and its keys are port
//! numbers 1..=65535; a selector has at least one label.

use super::Reporter;
use crate::de::child_path;
use crate::types::PeerAuthentication;

pub(super) fn peer_authentication(rep: &mut Reporter<'_>, pa: &PeerAuthentication) {
    let has_selector = pa
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if pa.selector.is_some() && !has_selector {
        rep.error(
            "spec.selector.matchLabels",
            "a selector needs at least one label; remove `selector` to apply to the namespace",
        );
    }
    if !pa.port_level_mtls.is_empty() && !has_selector {
        rep.error(
            "spec.portLevelMtls",
            "portLevelMtls requires a workload selector (ports belong to workloads)",
        );
    }
    for port in pa.port_level_mtls.keys() {
        let ok = port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !ok {
            rep.error(
                &child_path("spec.portLevelMtls", port),
                format!("port `{port}` is not a port number 1..=65535"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    fn errors(yaml: &str) -> Vec<String> {
        match crate::load_str("pa.yaml", yaml) {
            Ok(_) => Vec::new(),
            Err(d) => {
                d.0.iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn port_level_mtls_needs_a_selector_and_port_numbers() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls: {mode: STRICT}
  portLevelMtls:
    "0": {mode: DISABLE}
    http: {mode: DISABLE}
"#;
        let e = errors(yaml);
        assert!(
            e.iter()
                .any(|m| m.starts_with("spec.portLevelMtls: portLevelMtls requires")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("spec.portLevelMtls.0: port `0`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("spec.portLevelMtls.http: port `http`")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_modes_and_api_versions_are_rejected_and_good_ones_load() {
        let bad_mode = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: foo}\nspec: {mtls: {mode: STRICTEST}}\n";
        assert!(
            errors(bad_mode).iter().any(|m| m.contains("STRICTEST")),
            "{:?}",
            errors(bad_mode)
        );
        let bad_version = bad_mode.replace("security.istio.io/v1", "networking.istio.io/v1");
        assert!(!errors(&bad_version).is_empty());
        let good = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: foo}\nspec:\n  selector: {matchLabels: {app: x}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls: {\"8080\": {mode: STRICT}}\n";
        assert_eq!(errors(good), Vec::<String>::new());
    }
}
