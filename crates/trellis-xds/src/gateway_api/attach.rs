//! Gateway API attachment, as the spec defines it: which Gateways Trellis implements (their
//! class), which listeners are usable (protocol, conflicts, route kinds), which routes attach to
//! which listeners (parentRefs with `sectionName`/`port`, `allowedRoutes` namespaces and kinds,
//! hostname intersection) or to a Service (GAMMA), and whether each backendRef resolves (a
//! registry service with that port; a `ReferenceGrant` for another namespace).
//!
//! Pure and proxy-independent: the same [`Attachments`] feed the status conditions
//! (`status.rs`) and the lowering to Istio resources (`gateway_api.rs`).

use std::collections::BTreeMap;

use trellis_config::gateway_api::{
    BUILTIN_CLASSES, BackendRef, CONTROLLER_NAMES, GROUP, Gateway, Listener, ParentReference,
};
use trellis_config::{ObjectMeta, Registry, Resource, Snapshot};

use crate::route::host_intersection;

/// The label every Kubernetes namespace carries with its own name: the only namespace label
/// Trellis knows (there is no Namespace kind in the configuration).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One status condition: `status` True/False, a reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The route kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    Http,
    Grpc,
    Tls,
    Tcp,
}

/// What attachment needs of a route, whatever its kind.
#[derive(Debug, Clone)]
pub struct RouteRef<'a> {
    pub kind: RouteKind,
    /// Position among the snapshot's routes of this kind.
    pub index: usize,
    pub meta: &'a ObjectMeta,
    pub parent_refs: &'a [ParentReference],
    pub hostnames: &'a [String],
    /// Every backendRef of the route, mirrors included.
    pub backends: Vec<&'a BackendRef>,
    /// A filter Trellis does not implement (the route is then not accepted).
    pub unsupported: Option<String>,
}

/// A Gateway Trellis implements (or not) and its listeners.
#[derive(Debug)]
pub struct GatewayState<'a> {
    pub gateway: &'a Resource<Gateway>,
    /// Accepted: the class is one of ours.
    pub accepted: Condition,
    pub listeners: Vec<ListenerState>,
}

/// One listener's conditions and the routes attached to it.
#[derive(Debug, Clone)]
pub struct ListenerState {
    pub accepted: Condition,
    pub resolved_refs: Condition,
    pub programmed: Condition,
    pub conflicted: Condition,
    /// Route kinds it admits (`HTTPRoute`, …).
    pub kinds: Vec<&'static str>,
    pub attached_routes: usize,
}

/// A route and the outcome for each of its parentRefs.
#[derive(Debug)]
pub struct RouteState<'a> {
    pub route: RouteRef<'a>,
    pub parents: Vec<ParentState>,
    /// ResolvedRefs: every backendRef resolves.
    pub resolved_refs: Condition,
}

/// The outcome for one parentRef.
#[derive(Debug, Clone)]
pub struct ParentState {
    pub accepted: Condition,
    pub target: Parent,
}

/// Where a parentRef attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent {
    /// Listeners of a Gateway (index in [`Attachments::gateways`]), with the hostnames the
    /// route serves on each.
    Listeners(Vec<Attached>),
    /// A Service (mesh route): its host and, if the parentRef names one, its port.
    Service { host: String, port: Option<u32> },
    /// Nowhere.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub gateway: usize,
    pub listener: usize,
    /// Route hostnames × listener hostname (`*` when neither has one).
    pub hostnames: Vec<String>,
}

/// Everything attachment found.
#[derive(Debug)]
pub struct Attachments<'a> {
    pub gateways: Vec<GatewayState<'a>>,
    pub routes: Vec<RouteState<'a>>,
}

/// A backendRef that resolves: the service host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub host: String,
    pub port: u32,
}

impl Condition {
    pub fn ok(reason: &'static str, message: impl Into<String>) -> Condition {
        Condition {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    pub fn fail(reason: &'static str, message: impl Into<String>) -> Condition {
        Condition {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

impl RouteKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Tcp => "TCPRoute",
        }
    }
}

/// Every route of the snapshot, HTTP first, each kind in file order.
pub fn routes(s: &Snapshot) -> Vec<RouteRef<'_>> {
    let mut out = Vec::new();
    for (index, r) in s.http_routes.iter().enumerate() {
        let mut backends = Vec::new();
        for rule in &r.spec.rules {
            for b in &rule.backend_refs {
                backends.push(b);
                backends.extend(mirrors(&b.filters));
            }
            backends.extend(mirrors(&rule.filters));
        }
        let filters = r.spec.rules.iter().flat_map(|rule| {
            rule.filters
                .iter()
                .chain(rule.backend_refs.iter().flat_map(|b| &b.filters))
        });
        out.push(RouteRef {
            kind: RouteKind::Http,
            index,
            meta: &r.meta,
            parent_refs: &r.spec.parent_refs,
            hostnames: &r.spec.hostnames,
            backends,
            unsupported: unsupported(filters),
        });
    }
    for (index, r) in s.grpc_routes.iter().enumerate() {
        let mut backends = Vec::new();
        for rule in &r.spec.rules {
            backends.extend(rule.backend_refs.iter());
            backends.extend(mirrors(&rule.filters));
        }
        out.push(RouteRef {
            kind: RouteKind::Grpc,
            index,
            meta: &r.meta,
            parent_refs: &r.spec.parent_refs,
            hostnames: &r.spec.hostnames,
            backends,
            unsupported: unsupported(r.spec.rules.iter().flat_map(|rule| &rule.filters)),
        });
    }
    for (index, r) in s.tls_routes.iter().enumerate() {
        out.push(RouteRef {
            kind: RouteKind::Tls,
            index,
            meta: &r.meta,
            parent_refs: &r.spec.parent_refs,
            hostnames: &r.spec.hostnames,
            backends: r.spec.rules.iter().flat_map(|x| &x.backend_refs).collect(),
            unsupported: None,
        });
    }
    for (index, r) in s.tcp_routes.iter().enumerate() {
        out.push(RouteRef {
            kind: RouteKind::Tcp,
            index,
            meta: &r.meta,
            parent_refs: &r.spec.parent_refs,
            hostnames: &[],
            backends: r.spec.rules.iter().flat_map(|x| &x.backend_refs).collect(),
            unsupported: None,
        });
    }
    out
}

/// The first filter type Trellis does not implement, as a status message.
fn unsupported<'a>(
    mut filters: impl Iterator<Item = &'a trellis_config::gateway_api::HttpRouteFilter>,
) -> Option<String> {
    filters
        .find(|f| matches!(f.kind.as_str(), "CORS" | "ExtensionRef"))
        .map(|f| format!("filter type `{}` is not supported", f.kind))
}

fn mirrors(
    filters: &[trellis_config::gateway_api::HttpRouteFilter],
) -> impl Iterator<Item = &BackendRef> {
    filters
        .iter()
        .filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref))
}

/// Attaches every route of the snapshot.
pub fn attach<'a>(s: &'a Snapshot, registry: &Registry) -> Attachments<'a> {
    let mut gateways: Vec<GatewayState<'a>> = s
        .gateway_api_gateways
        .iter()
        .map(|g| gateway_state(s, g))
        .collect();
    let mut states = Vec::new();
    for route in routes(s) {
        let parents = route
            .parent_refs
            .iter()
            .map(|p| parent_state(&route, p, &mut gateways, registry))
            .collect();
        let resolved_refs = route_refs(s, registry, &route);
        states.push(RouteState {
            route,
            parents,
            resolved_refs,
        });
    }
    Attachments {
        gateways,
        routes: states,
    }
}

/// Resolves a backendRef of a route in `route_ns`: `Err((reason, message))` when it does not.
pub fn resolve_backend(
    s: &Snapshot,
    registry: &Registry,
    kind: RouteKind,
    route_ns: &str,
    b: &BackendRef,
) -> Result<Backend, (&'static str, String)> {
    let ns = b.namespace_or(route_ns);
    let host = match (b.group(), b.kind()) {
        ("", "Service") => format!("{}.{ns}.svc.cluster.local", b.name),
        ("networking.istio.io", "Hostname") => b.name.clone(),
        (group, other) => {
            return Err((
                "InvalidKind",
                format!(
                    "backendRef kind `{other}` (group `{group}`) is not supported; use a Service"
                ),
            ));
        }
    };
    if ns != route_ns && !granted(s, kind.as_str(), route_ns, ns, b) {
        return Err((
            "RefNotPermitted",
            format!(
                "backendRef to {} `{ns}/{}` is not permitted: add a ReferenceGrant in namespace `{ns}` from {} in `{route_ns}`",
                b.kind(),
                b.name,
                kind.as_str()
            ),
        ));
    }
    let Some(service) = registry.get(&host) else {
        return Err(("BackendNotFound", format!("service `{host}` not found")));
    };
    let port = match (b.port, service.ports.as_slice()) {
        (Some(p), _) => p,
        (None, [only]) => only.number,
        (None, _) => {
            return Err((
                "BackendNotFound",
                format!("backendRef to `{host}` needs a port"),
            ));
        }
    };
    if service.port(port).is_none() {
        return Err((
            "BackendNotFound",
            format!("service `{host}` has no port {port}"),
        ));
    }
    Ok(Backend { host, port })
}

/// Whether a ReferenceGrant in `to_ns` lets `from_kind` objects of `from_ns` refer to `b`.
fn granted(s: &Snapshot, from_kind: &str, from_ns: &str, to_ns: &str, b: &BackendRef) -> bool {
    s.reference_grants
        .iter()
        .filter(|g| g.meta.namespace == to_ns)
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    t.group == b.group()
                        && t.kind == b.kind()
                        && t.name.as_deref().is_none_or(|n| n == b.name)
                })
        })
}

/// Whether a ReferenceGrant in `to_ns` lets Gateways of `from_ns` use Secret `name`.
pub fn secret_granted(s: &Snapshot, from_ns: &str, to_ns: &str, name: &str) -> bool {
    from_ns == to_ns
        || s.reference_grants
            .iter()
            .filter(|g| g.meta.namespace == to_ns)
            .any(|g| {
                g.spec
                    .from
                    .iter()
                    .any(|f| f.group == GROUP && f.kind == "Gateway" && f.namespace == from_ns)
                    && g.spec.to.iter().any(|t| {
                        t.group.is_empty()
                            && t.kind == "Secret"
                            && t.name.as_deref().is_none_or(|n| n == name)
                    })
            })
}

fn route_refs(s: &Snapshot, registry: &Registry, route: &RouteRef<'_>) -> Condition {
    for b in &route.backends {
        if let Err((reason, message)) =
            resolve_backend(s, registry, route.kind, &route.meta.namespace, b)
        {
            return Condition::fail(reason, message);
        }
    }
    Condition::ok("ResolvedRefs", "all references resolved")
}

/// Whether Trellis implements the Gateway's class.
fn class_accepted(s: &Snapshot, g: &Resource<Gateway>) -> Condition {
    let class = g.spec.gateway_class_name.as_str();
    if let Some(c) = s.gateway_classes.iter().find(|c| c.meta.name == class) {
        if CONTROLLER_NAMES.contains(&c.spec.controller_name.as_str()) {
            return Condition::ok("Accepted", "");
        }
        return Condition::fail(
            "Pending",
            format!(
                "GatewayClass `{class}` belongs to controller `{}`, not Trellis",
                c.spec.controller_name
            ),
        );
    }
    if BUILTIN_CLASSES.contains(&class) {
        return Condition::ok("Accepted", "");
    }
    Condition::fail(
        "Pending",
        format!(
            "GatewayClass `{class}` not found; use `istio` or a GatewayClass with controllerName {}",
            CONTROLLER_NAMES[0]
        ),
    )
}

fn gateway_state<'a>(s: &Snapshot, g: &'a Resource<Gateway>) -> GatewayState<'a> {
    let accepted = class_accepted(s, g);
    let listeners = g
        .spec
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| listener_state(s, g, i, l))
        .collect();
    GatewayState {
        gateway: g,
        accepted,
        listeners,
    }
}

/// Listeners share a port only within one family: HTTP, TCP, or TLS (HTTPS and TLS,
/// terminated or passed through, all chosen by SNI).
fn protocol_family(l: &Listener) -> &'static str {
    match l.protocol.as_str() {
        "HTTP" => "HTTP",
        "TCP" => "TCP",
        _ => "TLS",
    }
}

/// The Secret a terminating listener's certificateRef names, checked: a core `Secret` in the
/// Gateway's namespace with `tls.crt` and `tls.key`. Returns its name (the Istio
/// `credentialName`).
pub fn certificate_ref(
    s: &Snapshot,
    gateway_ns: &str,
    r: &trellis_config::gateway_api::SecretObjectReference,
) -> Result<String, (&'static str, String)> {
    let ns = r.namespace.as_deref().unwrap_or(gateway_ns);
    let kind = r.kind.as_deref().unwrap_or("Secret");
    if kind != "Secret" || !r.group.as_deref().unwrap_or("").is_empty() {
        return Err((
            "InvalidCertificateRef",
            format!("certificateRef kind `{kind}` is not supported; use a Secret"),
        ));
    }
    if !secret_granted(s, gateway_ns, ns, &r.name) {
        return Err((
            "RefNotPermitted",
            format!(
                "certificateRef to Secret `{ns}/{}` needs a ReferenceGrant in `{ns}`",
                r.name
            ),
        ));
    }
    if ns != gateway_ns {
        return Err((
            "InvalidCertificateRef",
            format!(
                "certificateRef to Secret `{ns}/{}`: Secrets in another namespace are not supported yet; put it in `{gateway_ns}`",
                r.name
            ),
        ));
    }
    let secret = s
        .secrets
        .iter()
        .find(|x| x.meta.namespace == ns && x.meta.name == r.name);
    match secret {
        None => Err((
            "InvalidCertificateRef",
            format!("Secret `{ns}/{}` not found", r.name),
        )),
        Some(x) if x.spec.value("tls.crt").is_none() || x.spec.value("tls.key").is_none() => Err((
            "InvalidCertificateRef",
            format!("Secret `{ns}/{}` has no `tls.crt` and `tls.key`", r.name),
        )),
        Some(_) => Ok(r.name.clone()),
    }
}

fn listener_state(s: &Snapshot, g: &Resource<Gateway>, i: usize, l: &Listener) -> ListenerState {
    let defaults = l.default_kinds();
    let declared = l.allowed_routes.as_ref().map(|a| &a.kinds);
    let mut kinds: Vec<&'static str> = defaults.to_vec();
    let mut resolved_refs = Condition::ok("ResolvedRefs", "");
    if let Some(declared) = declared.filter(|k| !k.is_empty()) {
        kinds.retain(|k| {
            declared
                .iter()
                .any(|d| d.kind == *k && d.group.as_deref().unwrap_or(GROUP) == GROUP)
        });
        let invalid: Vec<&str> = declared
            .iter()
            .filter(|d| {
                !defaults.contains(&d.kind.as_str()) || d.group.as_deref().unwrap_or(GROUP) != GROUP
            })
            .map(|d| d.kind.as_str())
            .collect();
        if !invalid.is_empty() {
            resolved_refs = Condition::fail(
                "InvalidRouteKinds",
                format!(
                    "route kinds {} are not supported on a {} listener",
                    invalid.join(", "),
                    l.protocol
                ),
            );
        }
    }
    if let Some(tls) = &l.tls
        && l.tls_mode() == "Terminate"
    {
        for r in &tls.certificate_refs {
            if let Err((reason, message)) = certificate_ref(s, &g.meta.namespace, r) {
                resolved_refs = Condition::fail(reason, message);
            }
        }
    }
    let conflict = g.spec.listeners[..i].iter().find(|o| {
        o.port == l.port
            && (protocol_family(o) != protocol_family(l)
                || (o.hostname == l.hostname && o.protocol == l.protocol))
    });
    let conflicted = match conflict {
        Some(o) if protocol_family(o) != protocol_family(l) => Condition::fail(
            "ProtocolConflict",
            format!(
                "listener `{}` uses port {} with {}",
                o.name, o.port, o.protocol
            ),
        ),
        Some(o) => Condition::fail(
            "HostnameConflict",
            format!(
                "listener `{}` already serves port {} for this hostname",
                o.name, o.port
            ),
        ),
        None => Condition::ok("NoConflicts", ""),
    };
    // `conflicted.ok` means "no conflict" here; status.rs reports Conflicted = !ok.
    let accepted = match l.protocol.as_str() {
        "HTTP" | "TCP" | "HTTPS" | "TLS" => Condition::ok("Accepted", ""),
        p => Condition::fail(
            "UnsupportedProtocol",
            format!("protocol `{p}` is not supported"),
        ),
    };
    let programmed = if !accepted.ok {
        Condition::fail("Invalid", accepted.message.clone())
    } else if !conflicted.ok {
        Condition::fail("Invalid", conflicted.message.clone())
    } else if !resolved_refs.ok && resolved_refs.reason != "InvalidRouteKinds" {
        Condition::fail("Invalid", resolved_refs.message.clone())
    } else {
        Condition::ok("Programmed", "")
    };
    ListenerState {
        accepted,
        resolved_refs,
        programmed,
        conflicted,
        kinds,
        attached_routes: 0,
    }
}

/// Whether the listener lets a route of `route_ns` attach (namespaces only).
fn namespace_allowed(l: &Listener, gateway_ns: &str, route_ns: &str) -> bool {
    match l.namespaces_from() {
        "All" => true,
        "Selector" => {
            let labels: BTreeMap<String, String> =
                [(NAMESPACE_NAME_LABEL.to_string(), route_ns.to_string())].into();
            l.allowed_routes
                .as_ref()
                .and_then(|a| a.namespaces.as_ref())
                .and_then(|n| n.selector.as_ref())
                .is_some_and(|sel| sel.matches(&labels))
        }
        _ => route_ns == gateway_ns,
    }
}

/// Route hostnames × listener hostname; `None` when they do not meet.
fn hostnames(route: &RouteRef<'_>, l: &Listener) -> Option<Vec<String>> {
    if route.kind == RouteKind::Tcp {
        return Some(vec!["*".into()]);
    }
    let listener = l.hostname.as_deref().unwrap_or("*");
    if route.hostnames.is_empty() {
        return Some(vec![listener.to_string()]);
    }
    let mut out: Vec<String> = route
        .hostnames
        .iter()
        .filter_map(|h| host_intersection(h, listener))
        .collect();
    out.sort();
    out.dedup();
    (!out.is_empty()).then_some(out)
}

fn parent_state(
    route: &RouteRef<'_>,
    p: &ParentReference,
    gateways: &mut [GatewayState<'_>],
    registry: &Registry,
) -> ParentState {
    let route_ns = route.meta.namespace.as_str();
    let ns = p.namespace_or(route_ns);
    if let Some(why) = &route.unsupported {
        return none(Condition::fail("UnsupportedValue", why.clone()));
    }
    if p.is_service() {
        if !matches!(route.kind, RouteKind::Http | RouteKind::Grpc) {
            return none(Condition::fail(
                "NoMatchingParent",
                format!("{} cannot attach to a Service", route.kind.as_str()),
            ));
        }
        let host = format!("{}.{ns}.svc.cluster.local", p.name);
        return match registry.get(&host) {
            Some(service) if p.port.is_none_or(|port| service.port(port).is_some()) => {
                ParentState {
                    accepted: Condition::ok("Accepted", ""),
                    target: Parent::Service { host, port: p.port },
                }
            }
            Some(_) => none(Condition::fail(
                "NoMatchingParent",
                format!("service `{host}` has no port {}", p.port.unwrap_or(0)),
            )),
            None => none(Condition::fail(
                "NoMatchingParent",
                format!("service `{host}` not found"),
            )),
        };
    }
    if p.kind() != "Gateway" || p.group.as_deref().unwrap_or(GROUP) != GROUP {
        return none(Condition::fail(
            "NoMatchingParent",
            format!(
                "parentRef kind `{}` is not supported; use a Gateway or a Service",
                p.kind()
            ),
        ));
    }
    let Some(gi) = gateways
        .iter()
        .position(|g| g.gateway.meta.namespace == ns && g.gateway.meta.name == p.name)
    else {
        return none(Condition::fail(
            "NoMatchingParent",
            format!("Gateway `{ns}/{}` not found", p.name),
        ));
    };
    let gw = &mut gateways[gi];
    if !gw.accepted.ok {
        return none(Condition::fail(
            "NoMatchingParent",
            format!(
                "Gateway `{ns}/{}` is not accepted: {}",
                p.name, gw.accepted.message
            ),
        ));
    }
    let mut attached = Vec::new();
    let mut candidates = 0;
    let mut kind_or_namespace_ok = false;
    for (li, l) in gw.gateway.spec.listeners.iter().enumerate() {
        if p.section_name.as_deref().is_some_and(|s| s != l.name)
            || p.port.is_some_and(|port| port != l.port)
        {
            continue;
        }
        candidates += 1;
        let state = &gw.listeners[li];
        if !state.kinds.contains(&route.kind.as_str())
            || !namespace_allowed(l, &gw.gateway.meta.namespace, route_ns)
        {
            continue;
        }
        kind_or_namespace_ok = true;
        if !state.programmed.ok {
            continue;
        }
        if let Some(hosts) = hostnames(route, l) {
            attached.push(Attached {
                gateway: gi,
                listener: li,
                hostnames: hosts,
            });
        }
    }
    let accepted = if candidates == 0 {
        let which = match (&p.section_name, p.port) {
            (Some(s), _) => format!("a listener named `{s}`"),
            (None, Some(port)) => format!("a listener on port {port}"),
            (None, None) => "listeners".into(),
        };
        Condition::fail(
            "NoMatchingParent",
            format!("Gateway `{ns}/{}` has no {which}", p.name),
        )
    } else if !kind_or_namespace_ok {
        Condition::fail(
            "NotAllowedByListeners",
            format!(
                "no listener of Gateway `{ns}/{}` allows {} from namespace `{route_ns}`",
                p.name,
                route.kind.as_str()
            ),
        )
    } else if attached.is_empty() {
        Condition::fail(
            "NoMatchingListenerHostname",
            format!(
                "no listener of Gateway `{ns}/{}` matches the route's hostnames",
                p.name
            ),
        )
    } else {
        Condition::ok("Accepted", "")
    };
    for a in &attached {
        gw.listeners[a.listener].attached_routes += 1;
    }
    ParentState {
        accepted,
        target: if attached.is_empty() {
            Parent::None
        } else {
            Parent::Listeners(attached)
        },
    }
}

fn none(accepted: Condition) -> ParentState {
    ParentState {
        accepted,
        target: Parent::None,
    }
}
