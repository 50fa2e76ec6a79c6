//! TLS-terminating Gateway servers: HTTPS and TLS servers in `tls.mode` SIMPLE or MUTUAL ->
//! one listener `0.0.0.0_<port>` per port whose filter chains are chosen by SNI
//! (`filter_chain_match.server_names` = the server's hosts), each with a
//! `DownstreamTlsContext` and either its own HTTP connection manager (HTTPS, RDS
//! `https.<port>.<portName>.<gateway>.<namespace>` as Istio names it) or a tcp_proxy (TLS, the
//! VirtualService `tcp` routes). PASSTHROUGH servers on the same port add their SNI chains
//! (from `l4.rs`) beside them.
//!
//! Owns where credentials come from: a `credentialName` Secret of the store (Istio's layouts
//! `tls.crt`/`tls.key`/`ca.crt` or `cert`/`key`/`cacert`, and the `<name>-cacert` Secret for
//! MUTUAL), inlined into the listener; or files (`serverCertificate`, `privateKey`,
//! `caCertificates`) referenced by `filename`, which the proxy watches. A server whose
//! credential cannot be found gets no chain (as an Istio gateway serves nothing for it).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TrafficDirection, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    TlsParameters, common_tls_context, tls_parameters::TlsProtocol,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use trellis_config::{
    Gateway, Protocol, Resource, Secret, Server, ServerTlsMode, ServerTlsSettings,
    TlsProtocolVersion,
};

use super::{Bound, gateway_hcm, port_routes, selects, split_server_host};
use crate::l4::{l4_listener, tcp_chain, tls_inspector};
use crate::listener::HCM_FILTER;
use crate::mtls::TLS_SOCKET;
use crate::route::ClusterRefs;
use crate::{Context, Listener};

/// ALPN offered on HTTPS servers, as Istio's gateway does.
pub const HTTPS_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// Certificate and key (and CA for MUTUAL) of one server, as DataSources.
struct Credential {
    chain: DataSource,
    key: DataSource,
    ca: Option<DataSource>,
}

/// One terminating server of a selected Gateway.
struct Terminating<'a> {
    bound: Bound<'a>,
    gateway: &'a str,
    /// HTTPS (an HCM) rather than TLS (a tcp_proxy).
    http: bool,
}

/// Listeners for the ports that carry a terminating server (ports in `skip`, which carry
/// plaintext HTTP servers, are left alone). Returns them with the ports they took.
pub fn listeners(
    ctx: &Context<'_>,
    skip: &BTreeSet<u32>,
    routes: &mut Vec<RouteConfiguration>,
    refs: &mut ClusterRefs,
) -> (Vec<Listener>, BTreeSet<u32>) {
    let mut out = Vec::new();
    let mut ports = BTreeSet::new();
    for (port, servers) in terminating_servers(ctx, skip) {
        let chains = port_chains(ctx, port, &servers, routes, refs);
        ports.insert(port);
        if chains.is_empty() {
            continue;
        }
        let mut l = l4_listener(
            &format!("0.0.0.0_{port}"),
            &ctx.proxy.bind_address,
            port,
            TrafficDirection::Outbound,
            chains,
        );
        if l.listener_filters.is_empty() {
            // Every chain is a catch-all: inspect anyway, as Istio does on TLS ports.
            l.listener_filters = vec![tls_inspector()];
        }
        out.push(l);
    }
    (out, ports)
}

fn terminating_servers<'a>(
    ctx: &'a Context<'_>,
    skip: &BTreeSet<u32>,
) -> BTreeMap<u32, Vec<Terminating<'a>>> {
    let mut gateways: Vec<&Resource<Gateway>> = ctx
        .snapshot
        .gateways
        .iter()
        .filter(|g| selects(&g.spec, &ctx.proxy.labels))
        .collect();
    gateways.sort_by_key(|g| g.key());
    let mut by_port: BTreeMap<u32, Vec<Terminating<'a>>> = BTreeMap::new();
    for g in gateways {
        for server in &g.spec.servers {
            let Some(port) = &server.port else { continue };
            if skip.contains(&port.number) || !terminates(server) {
                continue;
            }
            by_port.entry(port.number).or_default().push(Terminating {
                bound: Bound {
                    key: g.key(),
                    namespace: &g.meta.namespace,
                    server,
                },
                gateway: &g.meta.name,
                http: Protocol::parse(&port.protocol) == Protocol::Https,
            });
        }
    }
    by_port
}

/// HTTPS or TLS in SIMPLE or MUTUAL mode.
pub fn terminates(server: &Server) -> bool {
    let Some(port) = &server.port else {
        return false;
    };
    let mode = server.tls.as_ref().and_then(|t| t.mode).unwrap_or_default();
    matches!(
        Protocol::parse(&port.protocol),
        Protocol::Https | Protocol::Tls
    ) && matches!(mode, ServerTlsMode::Simple | ServerTlsMode::Mutual)
}

/// Terminating chains in server order (each SNI name once, one catch-all), then the
/// passthrough chains of the same port for the names left.
fn port_chains(
    ctx: &Context<'_>,
    port: u32,
    servers: &[Terminating<'_>],
    routes: &mut Vec<RouteConfiguration>,
    refs: &mut ClusterRefs,
) -> Vec<FilterChain> {
    let mut taken = BTreeSet::new();
    let mut catch_all = false;
    let mut chains = Vec::new();
    for t in servers {
        let (names, any) = server_names(&t.bound);
        let names: Vec<String> = names.into_iter().filter(|n| !taken.contains(n)).collect();
        let any = any && !catch_all;
        if names.is_empty() && !any {
            continue;
        }
        let Some(tls) = t.bound.server.tls.as_ref() else {
            continue;
        };
        let Some(credential) = credential(ctx, tls, t.bound.namespace) else {
            continue;
        };
        let port_name = t.bound.server.port.as_ref().map_or("", |p| p.name.as_str());
        let mut chain = if t.http {
            let name = format!(
                "https.{port}.{port_name}.{}.{}",
                t.gateway, t.bound.namespace
            );
            routes.push(port_routes(
                ctx,
                port,
                &name,
                std::slice::from_ref(&t.bound),
                refs,
            ));
            FilterChain {
                name: name.clone(),
                filters: vec![Filter {
                    name: HCM_FILTER.into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(gateway_hcm(
                        port,
                        crate::listener::Routes::Rds(name),
                    )))),
                }],
                ..Default::default()
            }
        } else {
            let server = t.bound.server;
            let Some(proxy) = crate::l4::terminated_tcp_proxy(
                ctx,
                port,
                &t.bound.key,
                t.bound.namespace,
                server,
                refs,
            ) else {
                continue;
            };
            FilterChain {
                name: format!("tls.{port}.{port_name}.{}.{}", t.gateway, t.bound.namespace),
                ..tcp_chain(Vec::new(), proxy)
            }
        };
        let server_names = if any { Vec::new() } else { names };
        catch_all |= any;
        taken.extend(server_names.iter().cloned());
        chain.filter_chain_match = (!server_names.is_empty()).then(|| FilterChainMatch {
            server_names,
            ..Default::default()
        });
        chain.transport_socket = Some(TransportSocket {
            name: TLS_SOCKET.into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
                downstream_context(tls, credential, t.http),
            ))),
        });
        chains.push(chain);
    }
    for mut chain in crate::l4::port_l4_chains(ctx, port, refs) {
        let m = chain
            .filter_chain_match
            .get_or_insert_with(Default::default);
        if m.server_names.is_empty() {
            if catch_all {
                continue;
            }
            catch_all = true;
            chain.filter_chain_match = None;
        } else {
            m.server_names.retain(|n| !taken.contains(n));
            if m.server_names.is_empty() {
                continue;
            }
            taken.extend(m.server_names.iter().cloned());
        }
        chains.push(chain);
    }
    chains.sort_by_key(|c| c.filter_chain_match.is_none());
    chains
}

/// The SNI names of a server's hosts (lower case, `ns/` dropped) and whether one is `*`.
fn server_names(bound: &Bound<'_>) -> (Vec<String>, bool) {
    let mut names = BTreeSet::new();
    let mut any = false;
    for h in &bound.server.hosts {
        let (_, host) = split_server_host(h, bound.namespace);
        let host = host.to_ascii_lowercase();
        if host == "*" {
            any = true;
        } else if !host.is_empty() {
            names.insert(host);
        }
    }
    (names.into_iter().collect(), any)
}

/// The server's certificate, key and (MUTUAL) CA: from files, or from the `credentialName`
/// Secret in the proxy's namespace (else the Gateway's).
fn credential(
    ctx: &Context<'_>,
    tls: &ServerTlsSettings,
    gateway_namespace: &str,
) -> Option<Credential> {
    let mutual = tls.mode == Some(ServerTlsMode::Mutual);
    if tls.credential_name.is_empty() {
        if tls.server_certificate.is_empty() || tls.private_key.is_empty() {
            return None;
        }
        let ca = if mutual {
            if tls.ca_certificates.is_empty() {
                return None;
            }
            Some(file(&tls.ca_certificates))
        } else {
            None
        };
        return Some(Credential {
            chain: file(&tls.server_certificate),
            key: file(&tls.private_key),
            ca,
        });
    }
    let name = tls.credential_name.as_str();
    let find = |name: &str| {
        let in_ns = |ns: &str| {
            ctx.snapshot
                .secrets
                .iter()
                .find(|s| s.meta.name == name && s.meta.namespace == ns)
        };
        in_ns(&ctx.proxy.namespace).or_else(|| in_ns(gateway_namespace))
    };
    let secret = &find(name)?.spec;
    let (chain, key) = match (secret.value("tls.crt"), secret.value("tls.key")) {
        (Some(c), Some(k)) => (c, k),
        _ => (secret.value("cert")?, secret.value("key")?),
    };
    let ca = if mutual {
        let ca_of = |s: &Secret| s.value("ca.crt").or_else(|| s.value("cacert"));
        let ca = ca_of(secret)
            .or_else(|| find(&format!("{name}-cacert")).and_then(|s| ca_of(&s.spec)))?;
        Some(inline(ca))
    } else {
        None
    };
    Some(Credential {
        chain: inline(chain),
        key: inline(key),
        ca,
    })
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

fn inline(pem: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(
            String::from_utf8_lossy(&pem).into_owned(),
        )),
        ..Default::default()
    }
}

/// Istio's gateway context: TLS 1.2 minimum unless set, the server's ciphers, ALPN h2 and
/// http/1.1 on HTTPS, and for MUTUAL a required client certificate checked against the CA.
fn downstream_context(
    tls: &ServerTlsSettings,
    credential: Credential,
    http: bool,
) -> DownstreamTlsContext {
    let version = |v: Option<TlsProtocolVersion>, default: TlsProtocol| match v.unwrap_or_default()
    {
        TlsProtocolVersion::TlsAuto => default,
        TlsProtocolVersion::TlsV1_0 => TlsProtocol::TlSv10,
        TlsProtocolVersion::TlsV1_1 => TlsProtocol::TlSv11,
        TlsProtocolVersion::TlsV1_2 => TlsProtocol::TlSv12,
        TlsProtocolVersion::TlsV1_3 => TlsProtocol::TlSv13,
    };
    let validation_context_type = credential.ca.map(|ca| {
        common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(ca),
            ..Default::default()
        })
    });
    let mutual = tls.mode == Some(ServerTlsMode::Mutual);
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: version(tls.min_protocol_version, TlsProtocol::TlSv12)
                    as i32,
                tls_maximum_protocol_version: version(
                    tls.max_protocol_version,
                    TlsProtocol::TlsAuto,
                ) as i32,
                cipher_suites: tls.cipher_suites.clone(),
                ..Default::default()
            }),
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(credential.chain),
                private_key: Some(credential.key),
                ..Default::default()
            }],
            alpn_protocols: if http {
                HTTPS_ALPN.iter().map(|p| p.to_string()).collect()
            } else {
                Vec::new()
            },
            validation_context_type,
            ..Default::default()
        }),
        require_client_certificate: mutual.then_some(BoolValue { value: true }),
        ..Default::default()
    }
}
