//! The service registry derived from a [`Snapshot`]: one [`Service`] per fully qualified
//! host, from ServiceEntries (inline endpoints and WorkloadEntry selection) and Kubernetes
//! Services (EndpointSlices and WorkloadEntry selection). Pure data; no DNS, no sockets.
//! Construction from a snapshot lives in `registry/build.rs`.

use std::collections::BTreeMap;

use crate::types::Snapshot;

/// All services by fully qualified host name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub services: BTreeMap<String, Service>,
}

/// One service (host) of the mesh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service {
    /// Fully qualified host, e.g. `reviews.default.svc.cluster.local` or `api.example.com`.
    pub hostname: String,
    /// Namespace of the object that defined it.
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub location: ServiceLocation,
    pub endpoints: Vec<Endpoint>,
    /// Namespaces that may see this service: `*` (all, the default), `.` (own), or names.
    pub export_to: Vec<String>,
    /// Label selector picking WorkloadEntries (and pods) of the namespace.
    pub selector: BTreeMap<String, String>,
}

/// One port of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub number: u32,
    pub protocol: Protocol,
    /// Where endpoints listen when not overridden per endpoint.
    pub target_port: Option<u32>,
}

/// Application protocol of a port (Istio's protocol selection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    #[default]
    Tcp,
    Udp,
    Mongo,
    Redis,
    Mysql,
    /// Unknown or unspecified: detect at runtime.
    Unsupported,
}

/// How endpoints are found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Endpoints are listed (IP addresses).
    #[default]
    Static,
    /// Endpoints (or the host itself) are DNS names resolved by the proxy.
    Dns,
    /// Pass through to the original destination.
    None,
}

/// Whether the service is part of the mesh (mTLS, telemetry) or outside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ServiceLocation {
    #[default]
    MeshInternal,
    MeshExternal,
}

/// One instance of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address, DNS name, or `unix://` path.
    pub address: String,
    /// Port name -> port number overrides.
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    /// `region/zone/subzone` (any part may be empty).
    pub locality: String,
    /// Load-balancing weight (default 1).
    pub weight: u32,
    pub service_account: String,
    pub network: String,
}

impl Registry {
    /// Builds the registry from a (validated) snapshot.
    pub fn from_snapshot(snapshot: &Snapshot) -> Registry {
        build::build(snapshot)
    }

    /// Looks a service up by fully qualified host.
    pub fn get(&self, host: &str) -> Option<&Service> {
        self.services.get(host)
    }

    /// Services visible from `namespace`, honouring each service's `exportTo`.
    pub fn visible_from<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .values()
            .filter(move |s| s.is_visible_from(namespace))
    }
}

impl Service {
    /// Whether a proxy in `namespace` may see this service.
    pub fn is_visible_from(&self, namespace: &str) -> bool {
        if self.export_to.is_empty() {
            return true;
        }
        self.export_to
            .iter()
            .any(|e| e == "*" || e == namespace || (e == "." && self.namespace == namespace))
    }

    /// The port with this number.
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The port with this name.
    pub fn port_by_name(&self, name: &str) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.name == name)
    }
}

impl Endpoint {
    /// The port this endpoint listens on for `port`: a per-endpoint override by port
    /// name, else the service port's target port, else the service port number.
    pub fn port_for(&self, port: &ServicePort) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }

    /// `(region, zone, subzone)` split of the locality.
    pub fn locality_parts(&self) -> (&str, &str, &str) {
        let mut it = self.locality.splitn(3, '/');
        (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        )
    }
}

impl Protocol {
    /// Parses Istio's protocol names (case-insensitive); unknown names are `Unsupported`.
    pub fn parse(name: &str) -> Protocol {
        match name.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP1" | "HTTP/1.1" => Protocol::Http,
            "HTTP2" | "H2C" | "KUBERNETES.IO/H2C" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "GRPC-WEB" => Protocol::GrpcWeb,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "MONGO" => Protocol::Mongo,
            "REDIS" => Protocol::Redis,
            "MYSQL" => Protocol::Mysql,
            _ => Protocol::Unsupported,
        }
    }

    /// Istio's port-name convention: `<protocol>[-<suffix>]`, e.g. `http-web`, `grpc`.
    pub fn from_port_name(name: &str) -> Protocol {
        let prefix = name.split('-').next().unwrap_or("");
        if name.to_ascii_lowercase().starts_with("grpc-web") {
            return Protocol::GrpcWeb;
        }
        Protocol::parse(prefix)
    }

    /// Whether the proxy handles this port as HTTP (HTTP/1, HTTP/2, gRPC).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// Istio's upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Mongo => "MONGO",
            Protocol::Redis => "REDIS",
            Protocol::Mysql => "MYSQL",
            Protocol::Unsupported => "UNSUPPORTED",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

mod build;

#[cfg(test)]
mod tests;
