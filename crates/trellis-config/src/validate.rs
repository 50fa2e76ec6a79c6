//! Semantic validation of a typed [`Snapshot`]: required fields, ranges, Istio's rules
//! (weights, StringMatch, regexes, durations, ServiceEntry resolution, unique subsets,
//! duplicate names). Every error is collected with its field path and position. It must
//! not modify the snapshot; cross-resource *warnings* belong to `analyze.rs`.
//! VirtualService rules live in `validate/routes.rs`, DestinationRule rules in
//! `validate/traffic.rs`.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use crate::diag::{Diagnostic, Severity};
use crate::load::{SpanIndex, resource_label};
use crate::types::*;

mod authorization;
mod balancing;
mod gateway_api;
mod health;
mod ratelimit;
mod request_authentication;
mod resilience;
mod routes;
mod security;
mod traffic;

pub use authorization::{ACTIONS, DRY_RUN_ANNOTATION, bracketed};
pub use ratelimit::MIN_FILL_INTERVAL;
pub use resilience::{RETRY_NON_IDEMPOTENT, RETRY_ON};

/// Reports problems of one resource at the position of a field path.
pub(crate) struct Reporter<'a> {
    spans: &'a SpanIndex,
    file: &'a str,
    line: usize,
    label: String,
    out: &'a mut Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new<T>(
        spans: &'a SpanIndex,
        kind: &str,
        r: &'a Resource<T>,
        out: &'a mut Vec<Diagnostic>,
    ) -> Self {
        Reporter {
            spans,
            file: &r.file,
            line: r.line,
            label: resource_label(kind, &r.meta),
            out,
        }
    }

    pub fn warning(&mut self, path: &str, message: impl Into<String>) {
        self.push(Severity::Warning, path, message.into());
    }

    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.push(Severity::Error, path, message.into());
    }

    pub fn push(&mut self, severity: Severity, path: &str, message: String) {
        let (line, col) = self.spans.locate(self.file, self.line, path);
        self.out.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line,
            col,
            resource: self.label.clone(),
            path: path.to_string(),
            message,
        });
    }

    /// A duration field, if set, must parse.
    pub fn duration(&mut self, path: &str, d: Option<&Duration>) {
        if let Some(Err(e)) = d.map(Duration::parse) {
            self.error(path, e);
        }
    }

    pub fn port_number(&mut self, path: &str, n: u32) {
        if !(1..=65535).contains(&n) {
            self.error(path, format!("port {n} out of range; use 1..=65535"));
        }
    }

    pub fn percent(&mut self, path: &str, p: Option<&Percent>) {
        if let Some(p) = p
            && !(0.0..=100.0).contains(&p.value)
        {
            self.error(
                &format!("{path}.value"),
                format!("percentage {} out of range; use 0..=100", p.value),
            );
        }
    }

    /// Exactly one of exact/prefix/regex (or none when `allow_empty`); regexes compile.
    pub fn string_match(&mut self, path: &str, m: &StringMatch, allow_empty: bool) {
        match m.set_count() {
            0 if allow_empty => {}
            1 => {}
            _ => self.error(path, "set exactly one of `exact`, `prefix` or `regex`"),
        }
        if let Some(r) = &m.regex {
            self.regex(&format!("{path}.regex"), r);
        }
    }

    pub fn regex(&mut self, path: &str, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            let detail = e.to_string();
            let detail = detail.lines().last().unwrap_or("").trim();
            let detail = detail.strip_prefix("error: ").unwrap_or(detail);
            self.error(
                path,
                format!("invalid regex `{pattern}` (RE2 syntax): {detail}"),
            );
        }
    }
}

/// Validates the snapshot without position information (positions fall back to each
/// resource's first line). Useful for snapshots built by code or from other stores.
pub fn validate_snapshot(snapshot: &Snapshot) -> Vec<Diagnostic> {
    validate(snapshot, &SpanIndex::default())
}

pub(crate) fn validate(snapshot: &Snapshot, spans: &SpanIndex) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let delegates = routes::delegate_targets(snapshot);
    each(
        &snapshot.virtual_services,
        "VirtualService",
        spans,
        &mut out,
        |rep, r| {
            routes::virtual_service(rep, &r.spec, delegates.contains(&r.key()));
            resilience::annotations(rep, &r.meta);
        },
    );
    each(
        &snapshot.destination_rules,
        "DestinationRule",
        spans,
        &mut out,
        |rep, r| traffic::destination_rule(rep, &r.spec),
    );
    each(
        &snapshot.health_check_policies,
        "HealthCheckPolicy",
        spans,
        &mut out,
        |rep, r| health::health_check_policy(rep, &r.spec),
    );
    each(
        &snapshot.peer_authentications,
        "PeerAuthentication",
        spans,
        &mut out,
        |rep, r| security::peer_authentication(rep, &r.spec),
    );
    each(&snapshot.gateways, "Gateway", spans, &mut out, |rep, r| {
        gateway(rep, &r.spec)
    });
    each(
        &snapshot.service_entries,
        "ServiceEntry",
        spans,
        &mut out,
        |rep, r| service_entry(rep, &r.spec),
    );
    each(
        &snapshot.workload_entries,
        "WorkloadEntry",
        spans,
        &mut out,
        |rep, r| workload_entry(rep, "spec", &r.spec, &[]),
    );
    each(&snapshot.services, "Service", spans, &mut out, |rep, r| {
        kube_service(rep, &r.spec)
    });
    each(
        &snapshot.destination_policies,
        "DestinationPolicy",
        spans,
        &mut out,
        |rep, r| resilience::destination_policy(rep, &r.spec),
    );
    each(
        &snapshot.authorization_policies,
        "AuthorizationPolicy",
        spans,
        &mut out,
        |rep, r| authorization::authorization_policy(rep, &r.meta, &r.spec),
    );
    each(
        &snapshot.mesh_configs,
        "MeshConfig",
        spans,
        &mut out,
        |rep, r| {
            let index = snapshot
                .mesh_configs
                .iter()
                .position(|m| std::ptr::eq(m, r))
                .unwrap_or(0);
            authorization::mesh_config(rep, &r.spec, index)
        },
    );
    each(
        &snapshot.request_authentications,
        "RequestAuthentication",
        spans,
        &mut out,
        |rep, r| request_authentication::request_authentication(rep, &r.spec),
    );
    each(&snapshot.secrets, "Secret", spans, &mut out, |rep, r| {
        secret(rep, &r.spec)
    });
    let mesh = snapshot.mesh_config();
    each(
        &snapshot.rate_limit_policies,
        "RateLimitPolicy",
        spans,
        &mut out,
        |rep, r| ratelimit::rate_limit_policy(rep, &r.spec, &mesh),
    );
    each(
        &snapshot.quota_policies,
        "QuotaPolicy",
        spans,
        &mut out,
        |rep, r| ratelimit::quota_policy(rep, &r.spec, &mesh),
    );
    each(
        &snapshot.endpoint_slices,
        "EndpointSlice",
        spans,
        &mut out,
        |rep, r| endpoint_slice(rep, &r.spec),
    );
    gateway_api_kinds(snapshot, spans, &mut out);
    out
}

/// The Gateway API kinds (`validate/gateway_api.rs`).
fn gateway_api_kinds(snapshot: &Snapshot, spans: &SpanIndex, out: &mut Vec<Diagnostic>) {
    let s = snapshot;
    each(&s.gateway_classes, "GatewayClass", spans, out, |rep, r| {
        gateway_api::gateway_class(rep, &r.spec)
    });
    each(&s.gateway_api_gateways, "Gateway", spans, out, |rep, r| {
        gateway_api::gateway(rep, &r.spec)
    });
    each(&s.http_routes, "HTTPRoute", spans, out, |rep, r| {
        gateway_api::http_route(rep, &r.spec)
    });
    each(&s.grpc_routes, "GRPCRoute", spans, out, |rep, r| {
        gateway_api::grpc_route(rep, &r.spec)
    });
    each(&s.tls_routes, "TLSRoute", spans, out, |rep, r| {
        gateway_api::tls_route(rep, &r.spec)
    });
    each(&s.tcp_routes, "TCPRoute", spans, out, |rep, r| {
        gateway_api::tcp_route(rep, &r.spec)
    });
    each(
        &s.reference_grants,
        "ReferenceGrant",
        spans,
        out,
        |rep, r| gateway_api::reference_grant(rep, &r.spec),
    );
}

/// Runs `check` on every resource of a kind, plus the metadata and duplicate-name rules.
fn each<T>(
    resources: &[Resource<T>],
    kind: &str,
    spans: &SpanIndex,
    out: &mut Vec<Diagnostic>,
    check: impl Fn(&mut Reporter<'_>, &Resource<T>),
) {
    let mut seen: BTreeMap<(&str, &str), &Resource<T>> = BTreeMap::new();
    for r in resources {
        let mut rep = Reporter::new(spans, kind, r, out);
        if r.meta.name.is_empty() {
            rep.error("metadata.name", "metadata.name is required");
        } else if let Some(first) = seen.get(&(r.meta.namespace.as_str(), r.meta.name.as_str())) {
            rep.error(
                "metadata.name",
                format!(
                    "duplicate {kind} `{}`; first defined at {}:{}",
                    r.key(),
                    first.file,
                    first.line
                ),
            );
        } else {
            seen.insert((&r.meta.namespace, &r.meta.name), r);
        }
        check(&mut rep, r);
    }
}

fn gateway(rep: &mut Reporter<'_>, g: &Gateway) {
    if g.servers.is_empty() {
        rep.error("spec.servers", "at least one server is required");
    }
    for (i, s) in g.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        match &s.port {
            None => rep.error(&path, "server port is required"),
            Some(p) => {
                rep.port_number(&format!("{path}.port.number"), p.number);
                if p.protocol.is_empty() {
                    rep.error(
                        &format!("{path}.port"),
                        "port protocol is required (e.g. HTTP, HTTPS, TLS, TCP)",
                    );
                }
                let proto = p.protocol.to_ascii_uppercase();
                if (proto == "HTTPS" || proto == "TLS") && s.tls.is_none() {
                    rep.error(
                        &path,
                        format!("{proto} servers need `tls` settings (mode and credentials)"),
                    );
                }
            }
        }
        if s.hosts.is_empty() {
            rep.error(
                &format!("{path}.hosts"),
                "at least one host is required (use `*` for any)",
            );
        }
        if let Some(tls) = &s.tls {
            server_tls(rep, &format!("{path}.tls"), tls);
        }
        for (j, h) in s.hosts.iter().enumerate() {
            if h.is_empty() {
                rep.error(&format!("{path}.hosts[{j}]"), "host must not be empty");
            }
        }
    }
}

/// Terminating modes need credentials: a `credentialName`, or certificate and key files
/// (MUTUAL also CA certificates, which a credential may carry).
fn server_tls(rep: &mut Reporter<'_>, path: &str, tls: &ServerTlsSettings) {
    let mode = tls.mode.unwrap_or_default();
    if !matches!(mode, ServerTlsMode::Simple | ServerTlsMode::Mutual) {
        return;
    }
    let files = !tls.server_certificate.is_empty() || !tls.private_key.is_empty();
    if tls.credential_name.is_empty() {
        if tls.server_certificate.is_empty() || tls.private_key.is_empty() {
            rep.error(
                path,
                "SIMPLE and MUTUAL need `credentialName`, or `serverCertificate` and `privateKey`",
            );
        } else if mode == ServerTlsMode::Mutual && tls.ca_certificates.is_empty() {
            rep.error(
                path,
                "MUTUAL with certificate files needs `caCertificates` to verify clients",
            );
        }
    } else if files {
        rep.error(
            path,
            "give either `credentialName` or `serverCertificate`/`privateKey`, not both",
        );
    }
    let order = |v: Option<TlsProtocolVersion>| match v.unwrap_or_default() {
        TlsProtocolVersion::TlsAuto => None,
        TlsProtocolVersion::TlsV1_0 => Some(0),
        TlsProtocolVersion::TlsV1_1 => Some(1),
        TlsProtocolVersion::TlsV1_2 => Some(2),
        TlsProtocolVersion::TlsV1_3 => Some(3),
    };
    if let (Some(min), Some(max)) = (
        order(tls.min_protocol_version),
        order(tls.max_protocol_version),
    ) && min > max
    {
        rep.error(
            &format!("{path}.minProtocolVersion"),
            "minProtocolVersion is above maxProtocolVersion",
        );
    }
}

/// `data` values are base64.
fn secret(rep: &mut Reporter<'_>, s: &Secret) {
    for (k, v) in &s.data {
        let text: String = v.split_whitespace().collect();
        if base64_decode(&text).is_none() {
            rep.error(
                &format!("data.{k}"),
                format!("`data.{k}` is not base64; put plain text under `stringData`"),
            );
        }
    }
}

fn service_entry(rep: &mut Reporter<'_>, se: &ServiceEntry) {
    if se.hosts.is_empty() {
        rep.error("spec.hosts", "at least one host is required");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        if h.is_empty() {
            rep.error(&format!("spec.hosts[{i}]"), "host must not be empty");
        }
    }
    for (i, a) in se.addresses.iter().enumerate() {
        if !is_ip_or_cidr(a) {
            rep.error(
                &format!("spec.addresses[{i}]"),
                format!("`{a}` is not an IP address or CIDR"),
            );
        }
    }
    let mut numbers = HashSet::new();
    let mut names = HashSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        rep.port_number(&format!("{path}.number"), p.number);
        if let Some(t) = p.target_port {
            rep.port_number(&format!("{path}.targetPort"), t);
        }
        if !numbers.insert(p.number) {
            rep.error(
                &format!("{path}.number"),
                format!("port number {} is declared twice", p.number),
            );
        }
        if !p.name.is_empty() && !names.insert(p.name.as_str()) {
            rep.error(
                &format!("{path}.name"),
                format!("port name `{}` is declared twice", p.name),
            );
        }
    }
    let port_names: Vec<&str> = se.ports.iter().map(|p| p.name.as_str()).collect();
    let resolution = se.resolution.unwrap_or_default();
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        rep.error(
            "spec.workloadSelector",
            "set either `endpoints` or `workloadSelector`, not both",
        );
    }
    for (i, ep) in se.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        workload_entry(rep, &path, ep, &port_names);
        let ip_like = ep.address.parse::<IpAddr>().is_ok() || ep.address.starts_with("unix://");
        if resolution == ResolutionMode::Static && !ep.address.is_empty() && !ip_like {
            rep.error(
                &format!("{path}.address"),
                format!("`{}` is not an IP address; STATIC resolution needs IPs (use `resolution: DNS` for host names)", ep.address),
            );
        }
    }
    match resolution {
        ResolutionMode::Static
            if se.endpoints.is_empty()
                && se.workload_selector.is_none()
                && se.addresses.is_empty() =>
        {
            rep.error(
                "spec.resolution",
                "STATIC resolution needs `endpoints`, a `workloadSelector` or `addresses`",
            );
        }
        ResolutionMode::Dns | ResolutionMode::DnsRoundRobin if se.endpoints.is_empty() => {
            for (i, h) in se.hosts.iter().enumerate() {
                if h.contains('*') {
                    rep.error(
                        &format!("spec.hosts[{i}]"),
                        format!("wildcard host `{h}` cannot be resolved by DNS; add `endpoints` or use `resolution: NONE`"),
                    );
                }
            }
        }
        _ => {}
    }
}

/// A WorkloadEntry spec or a ServiceEntry endpoint; `port_names` are the declared ports.
fn workload_entry(rep: &mut Reporter<'_>, path: &str, w: &WorkloadEntry, port_names: &[&str]) {
    if w.address.is_empty() && w.network.is_empty() {
        rep.error(path, "address is required");
    }
    for (name, number) in &w.ports {
        let p = crate::de::child_path(&format!("{path}.ports"), name);
        rep.port_number(&p, *number);
        if !port_names.is_empty() && !port_names.contains(&name.as_str()) {
            rep.error(
                &p,
                format!("port name `{name}` is not declared in the ServiceEntry's ports"),
            );
        }
    }
    if !w.locality.is_empty() && w.locality.split('/').count() > 3 {
        rep.error(
            &format!("{path}.locality"),
            "locality is `region/zone/subzone`",
        );
    }
}

fn kube_service(rep: &mut Reporter<'_>, s: &KubeService) {
    let mut names = HashSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        rep.port_number(&format!("{path}.port"), p.port);
        if let Some(IntOrString::Int(t)) = p.target_port
            && !(1..=65535).contains(&t)
        {
            rep.error(
                &format!("{path}.targetPort"),
                format!("port {t} out of range; use 1..=65535"),
            );
        }
        if s.ports.len() > 1 && p.name.is_empty() {
            rep.error(
                &format!("{path}.name"),
                "a port name is required when a Service has several ports",
            );
        }
        if !p.name.is_empty() && !names.insert(p.name.as_str()) {
            rep.error(
                &format!("{path}.name"),
                format!("port name `{}` is declared twice", p.name),
            );
        }
    }
}

fn endpoint_slice(rep: &mut Reporter<'_>, s: &EndpointSlice) {
    if !matches!(s.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
        rep.error(
            "addressType",
            format!(
                "addressType `{}` must be IPv4, IPv6 or FQDN",
                s.address_type
            ),
        );
    }
    for (i, p) in s.ports.iter().enumerate() {
        if let Some(n) = p.port {
            rep.port_number(&format!("ports[{i}].port"), n);
        }
    }
}

pub(crate) fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
    }
}
