//! Analysis in the spirit of `istioctl analyze`: cross-resource findings that are
//! suspicious but not invalid, reported as warnings that never fail a load.

use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::load::SpanIndex;
use crate::registry::Registry;
use crate::resolve_host;
use crate::types::*;
use crate::validate::Reporter;

/// The label Kubernetes puts on an EndpointSlice to name its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A destination referenced by a route, with its field path.
struct DestinationRef<'a> {
    path: String,
    destination: &'a Destination,
}

pub(crate) fn analyze(
    snapshot: &Snapshot,
    registry: &Registry,
    spans: &SpanIndex,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for vs in &snapshot.virtual_services {
        let mut rep = Reporter::new(spans, "VirtualService", vs, &mut out);
        for d in destinations(&vs.spec) {
            check_destination(&mut rep, snapshot, registry, &vs.meta.namespace, &d);
        }
        check_gateway_refs(&mut rep, snapshot, vs);
    }
    conflicting_virtual_services(snapshot, spans, &mut out);
    unknown_policy_routes(snapshot, spans, &mut out);
    for es in &snapshot.endpoint_slices {
        if !es.meta.labels.contains_key(SERVICE_NAME_LABEL) {
            Reporter::new(spans, "EndpointSlice", es, &mut out).warning(
                "metadata.labels",
                format!("no `{SERVICE_NAME_LABEL}` label; this EndpointSlice belongs to no Service and is ignored"),
            );
        }
    }
    out
}

/// `routes` of a RateLimitPolicy or QuotaPolicy that name no VirtualService HTTP route
/// (`http[].name`): the policy then limits nothing on that name.
fn unknown_policy_routes(snapshot: &Snapshot, spans: &SpanIndex, out: &mut Vec<Diagnostic>) {
    let known: std::collections::HashSet<&str> = snapshot
        .virtual_services
        .iter()
        .flat_map(|vs| &vs.spec.http)
        .flat_map(|h| {
            std::iter::once(h.name.as_str()).chain(h.matches.iter().map(|m| m.name.as_str()))
        })
        .filter(|n| !n.is_empty())
        .collect();
    let check = |rep: &mut Reporter<'_>, routes: &[String]| {
        for (i, r) in routes.iter().enumerate() {
            if !r.is_empty() && !known.contains(r.as_str()) {
                rep.warning(
                    &format!("spec.routes[{i}]"),
                    format!(
                        "no VirtualService has an HTTP route named `{r}`; this name limits nothing"
                    ),
                );
            }
        }
    };
    for p in &snapshot.rate_limit_policies {
        check(
            &mut Reporter::new(spans, "RateLimitPolicy", p, out),
            &p.spec.routes,
        );
    }
    for p in &snapshot.quota_policies {
        check(
            &mut Reporter::new(spans, "QuotaPolicy", p, out),
            &p.spec.routes,
        );
    }
}

fn destinations(vs: &VirtualService) -> Vec<DestinationRef<'_>> {
    let mut out = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push(DestinationRef {
                path: format!("spec.http[{i}].route[{j}].destination"),
                destination: &d.destination,
            });
        }
        if let Some(m) = &r.mirror {
            out.push(DestinationRef {
                path: format!("spec.http[{i}].mirror"),
                destination: m,
            });
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            out.push(DestinationRef {
                path: format!("spec.http[{i}].mirrors[{j}].destination"),
                destination: &m.destination,
            });
        }
    }
    for (kind, routes) in [
        ("tls", vs.tls.iter().map(|r| &r.route).collect::<Vec<_>>()),
        ("tcp", vs.tcp.iter().map(|r| &r.route).collect()),
    ] {
        for (i, route) in routes.into_iter().enumerate() {
            for (j, d) in route.iter().enumerate() {
                out.push(DestinationRef {
                    path: format!("spec.{kind}[{i}].route[{j}].destination"),
                    destination: &d.destination,
                });
            }
        }
    }
    out
}

/// Unknown destination host, and subsets no DestinationRule defines.
fn check_destination(
    rep: &mut Reporter<'_>,
    snapshot: &Snapshot,
    registry: &Registry,
    ns: &str,
    d: &DestinationRef<'_>,
) {
    if d.destination.host.is_empty() {
        return;
    }
    let host = resolve_host(&d.destination.host, ns);
    if registry.get(&host).is_none() {
        rep.warning(
            &format!("{}.host", d.path),
            format!(
                "host `{host}` is not in the service registry; add a ServiceEntry or Service for it"
            ),
        );
    }
    let subset = &d.destination.subset;
    if subset.is_empty() {
        return;
    }
    let defined = snapshot.destination_rules.iter().any(|dr| {
        host_matches(&resolve_host(&dr.spec.host, &dr.meta.namespace), &host)
            && dr.spec.subsets.iter().any(|s| &s.name == subset)
    });
    if !defined {
        rep.warning(
            &format!("{}.subset", d.path),
            format!("subset `{subset}` is not defined by any DestinationRule for host `{host}`"),
        );
    }
}

/// `pattern` (possibly `*.example.com` or `*`) covers `host`.
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

/// `gw` or `ns/gw` in namespace `ns` -> `ns/gw`; `mesh` stays `mesh`.
fn resolve_gateway(gw: &str, ns: &str) -> String {
    if gw == "mesh" || gw.contains('/') {
        gw.to_string()
    } else {
        format!("{ns}/{gw}")
    }
}

fn check_gateway_refs(rep: &mut Reporter<'_>, snapshot: &Snapshot, vs: &Resource<VirtualService>) {
    let mut refs: Vec<(String, &str)> = vs
        .spec
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("spec.gateways[{i}]"), g.as_str()))
        .collect();
    for (i, r) in vs.spec.http.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                refs.push((format!("spec.http[{i}].match[{j}].gateways[{k}]"), g));
            }
        }
    }
    for (path, gw) in refs {
        let key = resolve_gateway(gw, &vs.meta.namespace);
        if key == "mesh" {
            continue;
        }
        let exists = snapshot.gateways.iter().any(|g| g.key() == key);
        if !exists {
            rep.warning(&path, format!("gateway `{key}` does not exist"));
        }
    }
}

/// Two VirtualServices for the same host bound to the same gateway (or the mesh).
fn conflicting_virtual_services(snapshot: &Snapshot, spans: &SpanIndex, out: &mut Vec<Diagnostic>) {
    let mut owners: BTreeMap<(String, String), &Resource<VirtualService>> = BTreeMap::new();
    for vs in &snapshot.virtual_services {
        let ns = &vs.meta.namespace;
        let gateways: Vec<String> = if vs.spec.gateways.is_empty() {
            vec!["mesh".to_string()]
        } else {
            vs.spec
                .gateways
                .iter()
                .map(|g| resolve_gateway(g, ns))
                .collect()
        };
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            let host = resolve_host(h, ns);
            for gw in &gateways {
                match owners.get(&(host.clone(), gw.clone())) {
                    Some(first) if first.key() != vs.key() => {
                        Reporter::new(spans, "VirtualService", vs, out).warning(
                            &format!("spec.hosts[{i}]"),
                            format!(
                                "host `{host}` on `{gw}` is also claimed by VirtualService {} ({}:{}); only one set of routes will apply",
                                first.key(),
                                first.file,
                                first.line
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        owners.insert((host.clone(), gw.clone()), vs);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
