//! Gateway listeners that terminate TLS: filter chains chosen by the ClientHello's SNI
//! (`filter_chain_match.server_names`: exact, then the longest `*.suffix`, then the chain
//! without names), each terminating TLS with its own certificate (`tls::gateway::ServerTls`)
//! into an HTTP connection manager or a tcp_proxy, or passing TLS through to a tcp_proxy.
//! Built from an LDS listener whose chains carry `DownstreamTlsContext`s with their own
//! certificates (what `trellis-xds/src/gateway/tls.rs` emits). Each HTTP chain is compiled as a
//! [`Listener`] of its own, named `<listener>#<chain>`, so the request path finds its settings
//! and routes as for any listener; serving lives in `crate::listeners::gateway`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener as XListener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use prost::{Message, Name};
use trellis_xds::mtls::{RAW_BUFFER_SOCKET, TLS_SOCKET};

use super::cluster::Cluster;
use super::tcp::{TCP_PROXY, TcpListener};
use super::{Listener, RuntimeError, duration};
use crate::tls::gateway::ServerTls;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct SniListener {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    /// How long a client may take to send its ClientHello.
    pub inspect_timeout: Duration,
    pub chains: Vec<SniChain>,
    exact: HashMap<Box<str>, usize>,
    /// `*.suffix` as (`.suffix`, chain), longest first.
    wildcard: Vec<(Box<str>, usize)>,
    fallback: Option<usize>,
}

#[derive(Debug)]
pub struct SniChain {
    /// Terminate with this; `None`: pass the TLS bytes through.
    pub tls: Option<Arc<ServerTls>>,
    pub serve: ChainServe,
}

#[derive(Debug)]
pub enum ChainServe {
    /// HTTP: the name of the chain's own [`Listener`] in the runtime.
    Http(Arc<str>),
    /// A tcp_proxy (a one-chain L4 listener).
    Tcp(Arc<TcpListener>),
}

impl SniListener {
    /// Whether any chain terminates TLS with a certificate of its own (not the workload's SDS
    /// identity, which `tls::inbound` serves).
    pub fn is_sni_tls(l: &XListener) -> bool {
        l.filter_chains
            .iter()
            .any(|c| context(c).is_some_and(|ctx| own_certificate(&ctx)))
    }

    /// The listener and the HTTP chains' listeners.
    pub fn compile(
        l: &XListener,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
    ) -> Result<(SniListener, Vec<Listener>), RuntimeError> {
        let err = |field: String, reason: String| RuntimeError::Listener {
            name: l.name.clone(),
            field,
            reason,
        };
        let probe = XListener {
            name: l.name.clone(),
            address: l.address.clone(),
            filter_chains: Vec::new(),
            ..Default::default()
        };
        let mut out = SniListener {
            name: l.name.as_str().into(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            inspect_timeout: l
                .listener_filters_timeout
                .as_ref()
                .map(duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_INSPECT_TIMEOUT),
            chains: Vec::with_capacity(l.filter_chains.len()),
            exact: HashMap::new(),
            wildcard: Vec::new(),
            fallback: None,
        };
        let mut http = Vec::new();
        for (i, chain) in l.filter_chains.iter().enumerate() {
            let at = |f: &str| format!("filter_chains[{i}]{f}");
            let tls = match &chain.transport_socket {
                Some(s) if s.name == TLS_SOCKET => {
                    let ctx = context(chain).ok_or_else(|| {
                        err(
                            at(".transport_socket.typed_config"),
                            "not a DownstreamTlsContext".into(),
                        )
                    })?;
                    let tls = ServerTls::compile(&ctx).map_err(|(f, why)| {
                        err(at(&format!(".transport_socket.typed_config.{f}")), why)
                    })?;
                    Some(Arc::new(tls))
                }
                Some(s) if s.name != RAW_BUFFER_SOCKET => {
                    return Err(err(
                        at(".transport_socket.name"),
                        format!("{:?} is not supported; expected {TLS_SOCKET}", s.name),
                    ));
                }
                _ => None,
            };
            // The chain alone, as a listener of its own.
            let alone = XListener {
                filter_chains: vec![FilterChain {
                    filter_chain_match: None,
                    transport_socket: None,
                    ..chain.clone()
                }],
                ..probe.clone()
            };
            let last = chain.filters.last().map(|f| f.name.as_str());
            let serve = match last {
                Some(HCM) => {
                    if tls.is_none() {
                        return Err(err(
                            at(".transport_socket"),
                            "an HTTP chain here must terminate TLS".into(),
                        ));
                    }
                    let label = if chain.name.is_empty() {
                        i.to_string()
                    } else {
                        chain.name.clone()
                    };
                    let name = format!("{}#{label}", l.name);
                    let mut compiled = Listener::compile(
                        &XListener {
                            name: name.clone(),
                            ..alone
                        },
                        clusters,
                    )?;
                    compiled.chain_of = Some(Arc::clone(&out.name));
                    out.addr = compiled.addr;
                    let name: Arc<str> = name.into();
                    compiled.name = Arc::clone(&name);
                    http.push(compiled);
                    ChainServe::Http(name)
                }
                Some(TCP_PROXY) => {
                    let compiled = TcpListener::compile(&alone, clusters)?;
                    out.addr = compiled.addr;
                    ChainServe::Tcp(Arc::new(compiled))
                }
                _ => {
                    return Err(err(
                        at(".filters"),
                        format!("a chain ends in {HCM} or {TCP_PROXY}"),
                    ));
                }
            };
            out.index(i, chain).map_err(|(f, why)| err(at(&f), why))?;
            out.chains.push(SniChain { tls, serve });
        }
        if out.chains.is_empty() {
            return Err(err("filter_chains".into(), "empty".into()));
        }
        out.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok((out, http))
    }

    fn index(&mut self, i: usize, chain: &FilterChain) -> Result<(), (String, String)> {
        let names = chain
            .filter_chain_match
            .as_ref()
            .map(|m| m.server_names.as_slice())
            .unwrap_or_default();
        if names.is_empty() && self.fallback.replace(i).is_some() {
            return Err((
                ".filter_chain_match".into(),
                "two chains match every connection; give each distinct server_names".into(),
            ));
        }
        for (j, name) in names.iter().enumerate() {
            let name = name.to_ascii_lowercase();
            let field = format!(".filter_chain_match.server_names[{j}]");
            let dup = match name.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => {
                    let seen = self.wildcard.iter().any(|(s, _)| **s == *suffix);
                    self.wildcard.push((suffix.into(), i));
                    seen
                }
                _ if name.is_empty() || name.contains('*') => {
                    return Err((
                        field,
                        format!("{name:?} is not a server name or `*.suffix` wildcard"),
                    ));
                }
                _ => self.exact.insert(name.as_str().into(), i).is_some(),
            };
            if dup {
                return Err((
                    field,
                    format!("{name:?} is matched by an earlier chain too"),
                ));
            }
        }
        Ok(())
    }

    /// The chain for this SNI (lower case), as Envoy picks it.
    pub fn select(&self, sni: Option<&str>) -> Option<&SniChain> {
        let by_name = sni.and_then(|sni| {
            self.exact.get(sni).copied().or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| sni.len() > suffix.len() && sni.ends_with(&**suffix))
                    .map(|(_, i)| *i)
            })
        });
        by_name.or(self.fallback).and_then(|i| self.chains.get(i))
    }
}

fn context(chain: &FilterChain) -> Option<DownstreamTlsContext> {
    let s = chain.transport_socket.as_ref()?;
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &s.config_type else {
        return None;
    };
    if s.name != TLS_SOCKET || any.type_url != DownstreamTlsContext::type_url() {
        return None;
    }
    DownstreamTlsContext::decode(any.value.as_slice()).ok()
}

fn own_certificate(ctx: &DownstreamTlsContext) -> bool {
    ctx.common_tls_context
        .as_ref()
        .is_some_and(|c| !c.tls_certificates.is_empty())
}
