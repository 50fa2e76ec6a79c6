//! Builds the [`Registry`] from a snapshot, following Istio's service model: one
//! service per ServiceEntry host, one per Kubernetes Service; endpoints from inline
//! entries, selected WorkloadEntries and ready EndpointSlice endpoints.

use std::collections::BTreeMap;

use super::{Endpoint, Protocol, Registry, Resolution, Service, ServiceLocation, ServicePort};
use crate::analyze::SERVICE_NAME_LABEL;
use crate::types::*;

/// Annotation Istio reads for a Kubernetes Service's `exportTo`.
const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

pub(super) fn build(snapshot: &Snapshot) -> Registry {
    let mut services = BTreeMap::new();
    for se in &snapshot.service_entries {
        for s in from_service_entry(se, &snapshot.workload_entries) {
            services.entry(s.hostname.clone()).or_insert(s);
        }
    }
    for svc in &snapshot.services {
        let s = from_kube_service(svc, snapshot);
        services.entry(s.hostname.clone()).or_insert(s);
    }
    Registry { services }
}

fn from_service_entry(
    se: &Resource<ServiceEntry>,
    workloads: &[Resource<WorkloadEntry>],
) -> Vec<Service> {
    let spec = &se.spec;
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            number: p.number,
            protocol: if p.protocol.is_empty() {
                Protocol::from_port_name(&p.name)
            } else {
                Protocol::parse(&p.protocol)
            },
            target_port: p.target_port,
        })
        .collect();
    let resolution = match spec.resolution.unwrap_or_default() {
        ResolutionMode::Static => Resolution::Static,
        ResolutionMode::Dns | ResolutionMode::DnsRoundRobin => Resolution::Dns,
        ResolutionMode::None => Resolution::None,
    };
    let location = match spec.location.unwrap_or_default() {
        Location::MeshExternal => ServiceLocation::MeshExternal,
        Location::MeshInternal => ServiceLocation::MeshInternal,
    };
    let selector = spec
        .workload_selector
        .as_ref()
        .map(|s| s.labels.clone())
        .unwrap_or_default();
    let mut endpoints: Vec<Endpoint> = spec
        .endpoints
        .iter()
        .map(|w| endpoint_from_workload(w, None))
        .collect();
    if spec.workload_selector.is_some() {
        endpoints.extend(selected_workloads(workloads, &se.meta.namespace, &selector));
    }
    spec.hosts
        .iter()
        .map(|host| {
            let mut eps = endpoints.clone();
            if eps.is_empty() && resolution == Resolution::Dns {
                // Istio resolves the host itself when a DNS ServiceEntry lists no endpoints.
                eps.push(Endpoint {
                    address: host.clone(),
                    weight: 1,
                    ..Endpoint::default()
                });
            }
            Service {
                hostname: host.clone(),
                namespace: se.meta.namespace.clone(),
                ports: ports.clone(),
                resolution,
                location,
                endpoints: eps,
                export_to: export_to(&spec.export_to),
                selector: selector.clone(),
            }
        })
        .collect()
}

fn from_kube_service(svc: &Resource<KubeService>, snapshot: &Snapshot) -> Service {
    let ns = &svc.meta.namespace;
    let spec = &svc.spec;
    let ports = spec
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            number: p.port,
            protocol: kube_protocol(p),
            target_port: match &p.target_port {
                Some(IntOrString::Int(n)) => u32::try_from(*n).ok().filter(|n| *n > 0),
                _ => None,
            },
        })
        .collect();
    let mut endpoints = Vec::new();
    let mut resolution = Resolution::Static;
    let mut location = ServiceLocation::MeshInternal;
    if spec.service_type == "ExternalName" && !spec.external_name.is_empty() {
        resolution = Resolution::Dns;
        location = ServiceLocation::MeshExternal;
        endpoints.push(Endpoint {
            address: spec.external_name.clone(),
            weight: 1,
            ..Endpoint::default()
        });
    }
    for es in &snapshot.endpoint_slices {
        if es.meta.namespace == *ns
            && es.meta.labels.get(SERVICE_NAME_LABEL) == Some(&svc.meta.name)
        {
            endpoints.extend(slice_endpoints(&es.spec));
        }
    }
    if !spec.selector.is_empty() {
        endpoints.extend(selected_workloads(
            &snapshot.workload_entries,
            ns,
            &spec.selector,
        ));
    }
    let export = svc
        .meta
        .annotations
        .get(EXPORT_TO_ANNOTATION)
        .map(|a| {
            a.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Service {
        hostname: format!("{}.{ns}.svc.cluster.local", svc.meta.name),
        namespace: ns.clone(),
        ports,
        resolution,
        location,
        endpoints,
        export_to: export_to(&export),
        selector: spec.selector.clone(),
    }
}

/// appProtocol first, then Istio's port-name prefix, then the transport protocol.
fn kube_protocol(p: &KubeServicePort) -> Protocol {
    if let Some(app) = &p.app_protocol {
        let proto = Protocol::parse(app);
        if proto != Protocol::Unsupported {
            return proto;
        }
    }
    match Protocol::from_port_name(&p.name) {
        Protocol::Unsupported if p.protocol.eq_ignore_ascii_case("UDP") => Protocol::Udp,
        proto => proto,
    }
}

fn slice_endpoints(slice: &EndpointSlice) -> Vec<Endpoint> {
    let ports: BTreeMap<String, u32> = slice
        .ports
        .iter()
        .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
        .collect();
    let mut out = Vec::new();
    for ep in &slice.endpoints {
        if ep.conditions.ready == Some(false) {
            continue;
        }
        let region = ep
            .deprecated_topology
            .get("topology.kubernetes.io/region")
            .cloned()
            .unwrap_or_default();
        let locality = match &ep.zone {
            Some(zone) => format!("{region}/{zone}"),
            None => region,
        };
        for address in &ep.addresses {
            out.push(Endpoint {
                address: address.clone(),
                ports: ports.clone(),
                locality: locality.clone(),
                weight: 1,
                ..Endpoint::default()
            });
        }
    }
    out
}

fn selected_workloads<'a>(
    workloads: &'a [Resource<WorkloadEntry>],
    namespace: &'a str,
    selector: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = Endpoint> + 'a {
    workloads
        .iter()
        .filter(move |w| w.meta.namespace == namespace)
        .filter(move |w| {
            let labels = workload_labels(w);
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .map(|w| endpoint_from_workload(&w.spec, Some(&w.meta)))
}

/// A WorkloadEntry's labels: `spec.labels`, plus `metadata.labels` where not set.
fn workload_labels(w: &Resource<WorkloadEntry>) -> BTreeMap<String, String> {
    let mut labels = w.meta.labels.clone();
    labels.extend(w.spec.labels.clone());
    labels
}

fn endpoint_from_workload(w: &WorkloadEntry, meta: Option<&ObjectMeta>) -> Endpoint {
    let mut labels = meta.map(|m| m.labels.clone()).unwrap_or_default();
    labels.extend(w.labels.clone());
    Endpoint {
        address: w.address.clone(),
        ports: w.ports.clone(),
        labels,
        locality: w.locality.clone(),
        weight: if w.weight == 0 { 1 } else { w.weight },
        service_account: w.service_account.clone(),
        network: w.network.clone(),
    }
}

fn export_to(list: &[String]) -> Vec<String> {
    if list.is_empty() {
        vec!["*".to_string()]
    } else {
        list.to_vec()
    }
}
