//! Loading the Gateway API kinds (`gateway.networking.k8s.io`): which `apiVersion`s each kind
//! accepts and where each decoded object goes in the snapshot. `Gateway` is dispatched on its
//! `apiVersion`: `networking.istio.io/*` is Istio's kind, `gateway.networking.k8s.io/*` this one.

use super::{Collector, Loader, push};
use crate::diag::closest;
use crate::yaml::Node;

/// `apiVersion` prefix of every Gateway API kind.
pub(crate) const GATEWAY_API_PREFIX: &str = "gateway.networking.k8s.io/";

const V1: &[&str] = &[
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
];
const GRPC: &[&str] = &[
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1alpha2",
];
const REFERENCE_GRANT: &[&str] = &[
    "gateway.networking.k8s.io/v1beta1",
    "gateway.networking.k8s.io/v1alpha2",
    "gateway.networking.k8s.io/v1",
];
const L4: &[&str] = &[
    "gateway.networking.k8s.io/v1alpha2",
    "gateway.networking.k8s.io/v1alpha3",
    "gateway.networking.k8s.io/v1",
];

/// Gateway API kinds, for "did you mean" hints.
const KINDS: &[&str] = &[
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "TLSRoute",
    "TCPRoute",
    "ReferenceGrant",
];

/// `Some(accepted)` when `kind`/`api_version` is a Gateway API object with a wrong version,
/// or a Gateway-API-only kind written with another group; `None` otherwise (right, or not
/// Gateway API at all: Istio's `Gateway`).
pub(crate) fn gateway_api_versions(
    kind: &str,
    api_version: &str,
) -> Option<&'static [&'static str]> {
    let ours = api_version.starts_with(GATEWAY_API_PREFIX);
    let accepted = match kind {
        "Gateway" if !ours => return None,
        "GatewayClass" | "Gateway" | "HTTPRoute" => V1,
        "GRPCRoute" => GRPC,
        "ReferenceGrant" => REFERENCE_GRANT,
        "TLSRoute" | "TCPRoute" => L4,
        _ => return None,
    };
    (!accepted.contains(&api_version)).then_some(accepted)
}

impl Loader {
    /// Decodes one Gateway API object (its apiVersion already checked).
    pub(super) fn load_gateway_api(
        &mut self,
        ctx: &Collector,
        file: &str,
        node: &Node,
        kind: &str,
    ) {
        match kind {
            "GatewayClass" => {
                let r = self.decode(ctx, file, node);
                push(&mut self.snapshot.gateway_classes, r);
            }
            "Gateway" => {
                let r = self.decode(ctx, file, node);
                push(&mut self.snapshot.gateway_api_gateways, r);
            }
            "HTTPRoute" => {
                let r = self.decode(ctx, file, node);
                push(&mut self.snapshot.http_routes, r);
            }
            "GRPCRoute" => {
                let r = self.decode(ctx, file, node);
                push(&mut self.snapshot.grpc_routes, r);
            }
            "TLSRoute" => {
                let r = self.decode(ctx, file, node);
                push(&mut self.snapshot.tls_routes, r);
            }
            "TCPRoute" => {
                let r = self.decode(ctx, file, node);
                push(&mut self.snapshot.tcp_routes, r);
            }
            "ReferenceGrant" => {
                let r = self.decode(ctx, file, node);
                push(&mut self.snapshot.reference_grants, r);
            }
            _ => {
                let at = node.get("kind").unwrap_or(node);
                let message = match closest(kind, KINDS) {
                    Some(c) => format!("unknown Gateway API kind `{kind}`; did you mean `{c}`?"),
                    None => format!(
                        "Gateway API kind `{kind}` is not supported; supported kinds: {}",
                        KINDS.join(", ")
                    ),
                };
                self.error(file, at, "", "kind", message);
            }
        }
    }
}
