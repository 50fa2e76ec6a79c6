//! What `trellis up` will run, derived from a loaded configuration: one
//! sample app per static endpoint on 127.0.0.1, and the ports of the Gateways
//! that select the ingress gateway. Pure: no processes, no sockets.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use trellis_config::{Loaded, Resolution};

/// The address sample apps run on; only endpoints with it are started.
const LOCAL_ADDRESS: &str = "127.0.0.1";

/// The processes to start and where the gateway listens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub apps: Vec<AppSpec>,
    /// Server ports of Gateways selecting `istio: ingressgateway`.
    pub gateway_ports: Vec<u32>,
}

/// One `trellis sample-app` to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// Short service name (`reviews` of `reviews.default.svc.cluster.local`).
    pub name: String,
    pub version: String,
    pub port: u16,
}

impl Plan {
    pub fn from_loaded(loaded: &Loaded) -> Plan {
        let mut apps = Vec::new();
        let mut ports = BTreeSet::new();
        for service in loaded.registry.services.values() {
            if service.resolution != Resolution::Static {
                continue;
            }
            let Some(first_port) = service.ports.first() else {
                continue;
            };
            let name = service
                .hostname
                .split('.')
                .next()
                .unwrap_or(&service.hostname);
            for endpoint in service
                .endpoints
                .iter()
                .filter(|e| e.address == LOCAL_ADDRESS)
            {
                let Ok(port) = u16::try_from(endpoint.port_for(first_port)) else {
                    continue;
                };
                // Several hosts may share endpoints: one process per port.
                if port == 0 || !ports.insert(port) {
                    continue;
                }
                let version = endpoint
                    .labels
                    .get("version")
                    .cloned()
                    .unwrap_or_else(|| "v1".into());
                apps.push(AppSpec {
                    name: name.to_owned(),
                    version,
                    port,
                });
            }
        }
        let gateway_ports = loaded
            .snapshot
            .gateways
            .iter()
            .filter(|g| {
                g.spec
                    .selector
                    .get("istio")
                    .is_some_and(|v| v == "ingressgateway")
            })
            .flat_map(|g| {
                g.spec
                    .servers
                    .iter()
                    .filter_map(|s| s.port.as_ref().map(|p| p.number))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Plan {
            apps,
            gateway_ports,
        }
    }
}

impl AppSpec {
    /// `name/version`, the child's name in logs.
    pub fn label(&self) -> String {
        format!("{}/{}", self.name, self.version)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Arguments of `trellis sample-app`.
    pub fn args(&self) -> Vec<String> {
        let port = self.port.to_string();
        [
            "sample-app",
            "--name",
            &self.name,
            "--version",
            &self.version,
            "--port",
            &port,
            "--address",
            LOCAL_ADDRESS,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use trellis_config::{Endpoint, Gateway, Port, Resource, Server, Service, ServicePort};

    use super::*;

    fn endpoint(address: &str, port: u32, version: Option<&str>) -> Endpoint {
        Endpoint {
            address: address.into(),
            ports: BTreeMap::from([("http".to_owned(), port)]),
            labels: version
                .map(|v| BTreeMap::from([("version".to_owned(), v.to_owned())]))
                .unwrap_or_default(),
            ..Endpoint::default()
        }
    }

    fn service(host: &str, resolution: Resolution, endpoints: Vec<Endpoint>) -> Service {
        Service {
            hostname: host.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                number: 9080,
                ..ServicePort::default()
            }],
            resolution,
            endpoints,
            ..Service::default()
        }
    }

    fn gateway(istio: &str, port: u32) -> Resource<Gateway> {
        Resource {
            spec: Gateway {
                selector: BTreeMap::from([("istio".to_owned(), istio.to_owned())]),
                servers: vec![Server {
                    port: Some(Port {
                        number: port,
                        ..Port::default()
                    }),
                    ..Server::default()
                }],
            },
            ..Resource::default()
        }
    }

    #[test]
    fn one_app_per_local_static_endpoint() {
        let mut loaded = Loaded::default();
        let reviews = service(
            "reviews.default.svc.cluster.local",
            Resolution::Static,
            vec![
                endpoint("127.0.0.1", 9081, Some("v1")),
                endpoint("10.0.0.1", 9082, Some("v2")),
            ],
        );
        let page = service(
            "productpage.default.svc.cluster.local",
            Resolution::Static,
            vec![endpoint("127.0.0.1", 9091, None)],
        );
        let external = service(
            "api.example.com",
            Resolution::Dns,
            vec![endpoint("127.0.0.1", 9999, None)],
        );
        for s in [reviews, page, external] {
            loaded.registry.services.insert(s.hostname.clone(), s);
        }
        loaded
            .snapshot
            .gateways
            .push(gateway("ingressgateway", 8080));
        loaded.snapshot.gateways.push(gateway("egressgateway", 443));

        let plan = Plan::from_loaded(&loaded);
        let apps: Vec<(&str, &str, u16)> = plan
            .apps
            .iter()
            .map(|a| (a.name.as_str(), a.version.as_str(), a.port))
            .collect();
        assert_eq!(apps, [("productpage", "v1", 9091), ("reviews", "v1", 9081)]);
        assert_eq!(plan.gateway_ports, [8080]);
        assert_eq!(
            plan.apps[1].args()[..7],
            [
                "sample-app",
                "--name",
                "reviews",
                "--version",
                "v1",
                "--port",
                "9081"
            ]
        );
    }
}
