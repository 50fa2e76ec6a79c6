//! PeerAuthentication: which mTLS mode a sidecar's captured inbound port accepts, with Istio's
//! precedence — mesh (root namespace `istio-system`, no selector) < namespace (no selector) <
//! workload (selector matching the proxy's labels) < the workload policy's `portLevelMtls` for
//! that port; `UNSET` inherits; nothing set means PERMISSIVE. Where several policies share a
//! scope, Istio takes the oldest; we take the first by name.

use trellis_config::{MtlsMode, PeerAuthentication, ROOT_NAMESPACE, Resource};

use crate::Context;
use crate::mtls::InboundMode;

/// The mode of target port `port` of the proxy's workload.
pub(crate) fn inbound_mode(ctx: &Context<'_>, port: u32) -> InboundMode {
    let proxy = ctx.proxy;
    let all = &ctx.snapshot.peer_authentications;
    let first = |pred: &dyn Fn(&Resource<PeerAuthentication>) -> bool| {
        all.iter()
            .filter(|r| pred(r))
            .min_by(|a, b| a.meta.name.cmp(&b.meta.name))
    };
    let unselected = |r: &Resource<PeerAuthentication>| r.spec.selector.is_none();
    let mesh = first(&|r| r.meta.namespace == ROOT_NAMESPACE && unselected(r));
    let namespace = first(&|r| r.meta.namespace == proxy.namespace && unselected(r));
    let workload = first(&|r| {
        r.meta.namespace == proxy.namespace
            && r.spec.selector.as_ref().is_some_and(|s| {
                !s.match_labels.is_empty()
                    && s.match_labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k) == Some(v))
            })
    });
    let mut mode = MtlsMode::Permissive;
    for pa in [mesh, namespace, workload].into_iter().flatten() {
        inherit(&mut mode, pa.spec.mtls.as_ref().map(|m| m.mode));
    }
    if let Some(pa) = workload {
        let at_port = pa
            .spec
            .port_level_mtls
            .iter()
            .find(|(k, _)| k.parse::<u32>() == Ok(port))
            .map(|(_, m)| m.mode);
        inherit(&mut mode, at_port);
    }
    match mode {
        MtlsMode::Strict => InboundMode::Strict,
        MtlsMode::Disable => InboundMode::Disable,
        MtlsMode::Permissive | MtlsMode::Unset => InboundMode::Permissive,
    }
}

/// Istio's best-effort guess, for clients, of the mode of a service's workloads: only mesh and
/// namespace policies count (workload policies are per pod). Auto mTLS sends plaintext to a
/// service whose guessed mode is DISABLE.
pub(crate) fn service_mode(ctx: &Context<'_>, namespace: &str) -> InboundMode {
    let all = &ctx.snapshot.peer_authentications;
    let scope = |ns: &str| {
        all.iter()
            .filter(|r| r.meta.namespace == ns && r.spec.selector.is_none())
            .min_by(|a, b| a.meta.name.cmp(&b.meta.name))
    };
    let mut mode = MtlsMode::Permissive;
    for pa in [scope(ROOT_NAMESPACE), scope(namespace)]
        .into_iter()
        .flatten()
    {
        inherit(&mut mode, pa.spec.mtls.as_ref().map(|m| m.mode));
    }
    match mode {
        MtlsMode::Strict => InboundMode::Strict,
        MtlsMode::Disable => InboundMode::Disable,
        MtlsMode::Permissive | MtlsMode::Unset => InboundMode::Permissive,
    }
}

fn inherit(mode: &mut MtlsMode, set: Option<MtlsMode>) {
    if let Some(m) = set.filter(|m| *m != MtlsMode::Unset) {
        *mode = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyIdentity;

    fn mode_for(yaml: &str, namespace: &str, labels: &[(&str, &str)], port: u32) -> InboundMode {
        let loaded = trellis_config::load_str("pa.yaml", yaml).expect("valid config");
        let registry = trellis_config::Registry::from_snapshot(&loaded.snapshot);
        let proxy = ProxyIdentity {
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ProxyIdentity::default()
        };
        let ctx = Context {
            snapshot: &loaded.snapshot,
            registry: &registry,
            proxy: &proxy,
        };
        inbound_mode(&ctx, port)
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: UNSET}
  portLevelMtls:
    "8080": {mode: DISABLE}
    "9090": {mode: UNSET}
"#;

    #[test]
    fn precedence_is_workload_then_namespace_then_mesh_and_unset_inherits() {
        let p = POLICIES;
        assert_eq!(mode_for("", "foo", &[], 80), InboundMode::Permissive);
        assert_eq!(mode_for(p, "bar", &[], 80), InboundMode::Strict, "mesh");
        assert_eq!(mode_for(p, "legacy", &[], 80), InboundMode::Permissive);
        let httpbin = [("app", "httpbin")];
        assert_eq!(mode_for(p, "foo", &httpbin, 80), InboundMode::Strict);
        assert_eq!(mode_for(p, "foo", &httpbin, 8080), InboundMode::Disable);
        assert_eq!(mode_for(p, "foo", &httpbin, 9090), InboundMode::Strict);
        let loaded = trellis_config::load_str("pa.yaml", p).expect("valid");
        let registry = trellis_config::Registry::default();
        let proxy = ProxyIdentity::default();
        let ctx = Context {
            snapshot: &loaded.snapshot,
            registry: &registry,
            proxy: &proxy,
        };
        assert_eq!(service_mode(&ctx, "legacy"), InboundMode::Permissive);
        assert_eq!(
            service_mode(&ctx, "foo"),
            InboundMode::Strict,
            "workload policies do not count"
        );
        assert_eq!(
            mode_for(p, "foo", &[("app", "sleep")], 8080),
            InboundMode::Strict,
            "another workload's port-level exception does not apply"
        );
    }
}
