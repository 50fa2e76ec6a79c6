//! Gateway API `status`, shaped as Kubernetes reports it: `GatewayClass` Accepted; `Gateway`
//! Accepted and Programmed plus, per listener, `supportedKinds`, `attachedRoutes` and the
//! Accepted / ResolvedRefs / Programmed / Conflicted conditions; routes one `parents[]` entry
//! per parentRef with Accepted and ResolvedRefs. Computed from [`attach`](super::attach), so
//! what status says is what the lowering does. `lastTransitionTime` is not tracked.

use serde_json::{Value, json};
use trellis_config::gateway_api::{CONTROLLER_NAMES, GROUP, ParentReference};
use trellis_config::{ObjectMeta, Registry, Snapshot};

use super::attach::{self, Condition};

/// The `controllerName` Trellis reports in route status.
pub const CONTROLLER_NAME: &str = "trellis.dev/gateway-controller";

/// The `status` of a Gateway API object (`kind` as Kubernetes spells it: `Gateway`,
/// `HTTPRoute`, …), or `None` when there is no such object or Trellis does not own it.
pub fn status(
    snapshot: &Snapshot,
    registry: &Registry,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Option<Value> {
    let is = |m: &ObjectMeta| m.namespace == namespace && m.name == name;
    if kind == "GatewayClass" {
        let c = snapshot.gateway_classes.iter().find(|c| is(&c.meta))?;
        let ours = CONTROLLER_NAMES.contains(&c.spec.controller_name.as_str());
        return ours.then(|| {
            json!({"conditions": [condition("Accepted", &Condition::ok("Accepted", ""), &c.meta)]})
        });
    }
    if kind == "ReferenceGrant" {
        return None;
    }
    let a = attach::attach(snapshot, registry);
    if kind == "Gateway" {
        let g = a.gateways.iter().find(|g| is(&g.gateway.meta))?;
        let meta = &g.gateway.meta;
        let any_programmed = g.listeners.iter().any(|l| l.programmed.ok);
        let programmed = if !g.accepted.ok {
            Condition::fail("Invalid", g.accepted.message.clone())
        } else if !any_programmed {
            Condition::fail("Invalid", "no listener is programmed")
        } else {
            Condition::ok(
                "Programmed",
                format!(
                    "served by gateway proxies in namespace `{}` labelled {}={}",
                    meta.namespace,
                    super::GATEWAY_NAME_LABEL,
                    meta.name
                ),
            )
        };
        let listeners: Vec<Value> = g
            .gateway
            .spec
            .listeners
            .iter()
            .zip(&g.listeners)
            .map(|(l, s)| {
                let conflicted = Condition {
                    ok: !s.conflicted.ok,
                    reason: s.conflicted.reason,
                    message: s.conflicted.message.clone(),
                };
                json!({
                    "name": l.name,
                    "supportedKinds": s.kinds.iter().map(|k| json!({"group": GROUP, "kind": k})).collect::<Vec<_>>(),
                    "attachedRoutes": s.attached_routes,
                    "conditions": [
                        condition("Accepted", &s.accepted, meta),
                        condition("ResolvedRefs", &s.resolved_refs, meta),
                        condition("Programmed", &s.programmed, meta),
                        condition("Conflicted", &conflicted, meta),
                    ],
                })
            })
            .collect();
        return Some(json!({
            "conditions": [
                condition("Accepted", &g.accepted, meta),
                condition("Programmed", &programmed, meta),
            ],
            "listeners": listeners,
        }));
    }
    let r = a
        .routes
        .iter()
        .find(|r| r.route.kind.as_str() == kind && is(r.route.meta))?;
    let meta = r.route.meta;
    let parents: Vec<Value> = r
        .route
        .parent_refs
        .iter()
        .zip(&r.parents)
        .map(|(p, s)| {
            json!({
                "parentRef": parent_ref(p, &meta.namespace),
                "controllerName": CONTROLLER_NAME,
                "conditions": [
                    condition("Accepted", &s.accepted, meta),
                    condition("ResolvedRefs", &r.resolved_refs, meta),
                ],
            })
        })
        .collect();
    Some(json!({ "parents": parents }))
}

fn parent_ref(p: &ParentReference, route_ns: &str) -> Value {
    let mut v = json!({
        "group": p.group.clone().unwrap_or_else(|| if p.is_service() { String::new() } else { GROUP.into() }),
        "kind": p.kind(),
        "namespace": p.namespace_or(route_ns),
        "name": p.name,
    });
    if let Some(s) = &p.section_name {
        v["sectionName"] = json!(s);
    }
    if let Some(port) = p.port {
        v["port"] = json!(port);
    }
    v
}

fn condition(kind: &str, c: &Condition, meta: &ObjectMeta) -> Value {
    json!({
        "type": kind,
        "status": if c.ok { "True" } else { "False" },
        "reason": c.reason,
        "message": c.message,
        "observedGeneration": meta.generation,
    })
}
