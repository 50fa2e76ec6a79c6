//! L4 listeners for the hot path: filter chains that each end in an
//! `envoy.filters.network.tcp_proxy` (one cluster or a weighted split), chosen per connection by
//! the TLS SNI (`filter_chain_match.server_names`) when the listener inspects TLS. Built from an
//! LDS `Listener` whose chains hold tcp_proxy filters; serving lives in `crate::tcp_proxy`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{address::Address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::listener::v3::{
    Listener as XListener, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use prost::Message;

use super::cluster::Cluster;
use super::route::{ClusterRef, RouteAction};
use super::{RuntimeError, duration};

pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
/// Envoy's default `listener_filters_timeout`; also used when the config says 0 (disabled),
/// since every wait on a client must be bounded.
const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default tcp_proxy `idle_timeout`.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct TcpListener {
    pub name: Arc<str>,
    /// Configured address (port 0 binds an ephemeral port; see `crate::listeners`).
    pub addr: SocketAddr,
    /// Read the TLS ClientHello (SNI) before choosing a chain.
    pub inspect_tls: bool,
    /// How long a client may take to send its ClientHello.
    pub inspect_timeout: Duration,
    pub chains: Vec<TcpChain>,
    /// Exact server name -> chain index.
    exact: HashMap<Box<str>, usize>,
    /// `*.suffix` server names as (`.suffix`, chain index), longest suffix first.
    wildcard: Vec<(Box<str>, usize)>,
    /// The chain without server names (any or no SNI).
    fallback: Option<usize>,
}

#[derive(Debug)]
pub struct TcpChain {
    /// `envoy.filters.network.rbac` filters before the tcp_proxy (`runtime/authz.rs`).
    pub rbac: Vec<super::rbac::Rbac>,
    pub stat_prefix: Arc<str>,
    pub action: RouteAction,
    /// Close the connection after this long without bytes either way (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Open each connection as an HTTP CONNECT tunnel to this `host:port` through the
    /// upstream (tcp_proxy `tunneling_config`).
    pub tunnel: Option<Arc<str>>,
    /// Close the connection this long after it was spliced, busy or not
    /// (`max_downstream_connection_duration`; `None`: never).
    pub max_duration: Option<Duration>,
    /// Connections picked so far (from a random start), for [`TcpChain::pick`].
    picks: AtomicU64,
}

impl TcpListener {
    /// Whether an LDS listener is an L4 one (its chains hold tcp_proxy filters).
    pub fn is_l4(l: &XListener) -> bool {
        l.filter_chains
            .iter()
            .any(|c| c.filters.last().is_some_and(|f| f.name == TCP_PROXY))
    }

    pub fn compile(
        l: &XListener,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
    ) -> Result<TcpListener, RuntimeError> {
        let err = |field: String, reason: String| RuntimeError::Listener {
            name: l.name.clone(),
            field,
            reason,
        };
        let addr = socket_addr(l).map_err(|(f, why)| err(f.into(), why))?;
        let mut inspect_tls = false;
        for (i, f) in l.listener_filters.iter().enumerate() {
            if f.name != TLS_INSPECTOR {
                return Err(err(
                    format!("listener_filters[{i}].name"),
                    format!("{:?} is not supported; only {TLS_INSPECTOR}", f.name),
                ));
            }
            if !matches!(
                f.config_type,
                None | Some(listener_filter::ConfigType::TypedConfig(_))
            ) {
                return Err(err(
                    format!("listener_filters[{i}]"),
                    "config discovery is not supported".into(),
                ));
            }
            inspect_tls = true;
        }
        let inspect_timeout = l
            .listener_filters_timeout
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_INSPECT_TIMEOUT);
        let mut out = TcpListener {
            name: l.name.as_str().into(),
            addr,
            inspect_tls,
            inspect_timeout,
            chains: Vec::with_capacity(l.filter_chains.len()),
            exact: HashMap::new(),
            wildcard: Vec::new(),
            fallback: None,
        };
        for (i, chain) in l.filter_chains.iter().enumerate() {
            let at = |f: &str| format!("filter_chains[{i}]{f}");
            let Some((f, before)) = chain.filters.split_last() else {
                return Err(err(
                    at(".filters"),
                    format!("an L4 chain ends in one {TCP_PROXY} filter"),
                ));
            };
            let last = before.len();
            if f.name != TCP_PROXY {
                return Err(err(
                    at(&format!(".filters[{last}].name")),
                    format!("{:?} is not supported here; expected {TCP_PROXY}", f.name),
                ));
            }
            let rbac = super::authz::network_filters(before)
                .map_err(|(j, why)| err(at(&format!(".filters[{j}]")), why))?;
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(err(
                    at(&format!(".filters[{last}].typed_config")),
                    "missing".into(),
                ));
            };
            let proxy = TcpProxy::decode(any.value.as_slice()).map_err(|e| {
                err(
                    at(".filters[0].typed_config"),
                    format!("does not decode as TcpProxy: {e}"),
                )
            })?;
            let action = action(&proxy, clusters)
                .map_err(|(f, why)| err(at(&format!(".filters[0].typed_config{f}")), why))?;
            let idle_timeout = match proxy.idle_timeout.as_ref().map(duration) {
                None => Some(DEFAULT_IDLE_TIMEOUT),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            };
            let max_duration = proxy
                .max_downstream_connection_duration
                .as_ref()
                .map(duration)
                .filter(|d| !d.is_zero());
            let tunnel = match &proxy.tunneling_config {
                None => None,
                Some(t) if t.use_post => {
                    return Err(err(
                        at(".filters[0].typed_config.tunneling_config.use_post"),
                        "POST tunnels are not supported; use CONNECT".into(),
                    ));
                }
                Some(t) if t.hostname.is_empty() => {
                    return Err(err(
                        at(".filters[0].typed_config.tunneling_config.hostname"),
                        "empty; give the tunnel's host:port".into(),
                    ));
                }
                Some(t) => Some(Arc::from(t.hostname.as_str())),
            };
            let m = chain.filter_chain_match.as_ref();
            let names = m.map(|m| m.server_names.as_slice()).unwrap_or_default();
            if names.is_empty() {
                if out.fallback.replace(i).is_some() {
                    return Err(err(
                        at(".filter_chain_match"),
                        "two chains match every connection; give each distinct server_names".into(),
                    ));
                }
            } else {
                // Envoy needs the TLS inspector to match server names; enable it as it would.
                out.inspect_tls = true;
            }
            for (j, name) in names.iter().enumerate() {
                let name = name.to_ascii_lowercase();
                let dup = match name.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        let seen = out.wildcard.iter().any(|(s, _)| **s == *suffix);
                        out.wildcard.push((suffix.into(), i));
                        seen
                    }
                    _ if name.is_empty() || name.contains('*') => {
                        return Err(err(
                            at(&format!(".filter_chain_match.server_names[{j}]")),
                            format!("{name:?} is not a server name or `*.suffix` wildcard"),
                        ));
                    }
                    _ => out.exact.insert(name.as_str().into(), i).is_some(),
                };
                if dup {
                    return Err(err(
                        at(&format!(".filter_chain_match.server_names[{j}]")),
                        format!("{name:?} is matched by an earlier chain too"),
                    ));
                }
            }
            out.chains.push(TcpChain {
                rbac,
                stat_prefix: proxy.stat_prefix.as_str().into(),
                action,
                idle_timeout,
                tunnel,
                max_duration,
                picks: AtomicU64::new(fastrand::u64(..)),
            });
        }
        if out.chains.is_empty() {
            return Err(err("filter_chains".into(), "empty".into()));
        }
        out.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok(out)
    }

    /// The chain for a connection with this SNI (lower-case), as Envoy picks it: an exact
    /// server name, else the longest `*.suffix`, else the chain without server names.
    pub fn select(&self, sni: Option<&str>) -> Option<&TcpChain> {
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

impl TcpChain {
    /// The cluster for a new connection. A weighted split follows the golden-ratio sequence
    /// over a per-chain counter: every run of connections is split by weight to within a
    /// connection or two (a random draw per connection, as Envoy does, strays by several
    /// percent over a few hundred connections), and the random start keeps proxies apart.
    pub fn pick(&self) -> &ClusterRef {
        match &self.action {
            RouteAction::Cluster(c) => c,
            RouteAction::Weighted { clusters, total } => {
                let k = self.picks.fetch_add(1, Ordering::Relaxed);
                let r = golden_point(k, *total);
                let i = clusters.partition_point(|(bound, _)| *bound <= r);
                // `i` < len because the last bound == total > r.
                &clusters[i.min(clusters.len() - 1)].1
            }
        }
    }
}

/// The `k`-th point of the golden-ratio sequence scaled to `0..total`.
fn golden_point(k: u64, total: u64) -> u64 {
    // 2^64 / φ: multiplying wraps around the unit interval as 64-bit fixed point.
    const INV_PHI: u64 = 0x9E37_79B9_7F4A_7C15;
    let frac = k.wrapping_mul(INV_PHI);
    ((u128::from(frac) * u128::from(total)) >> 64) as u64
}

/// `address.socket_address` as a `SocketAddr` (an IP address, not a name).
fn socket_addr(l: &XListener) -> Result<SocketAddr, (&'static str, String)> {
    let Some(Address::SocketAddress(sa)) = l.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Err(("address", "missing socket_address".into()));
    };
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        (
            "address.socket_address.address",
            format!("{:?} is not an IP address", sa.address),
        )
    })?;
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p).map_err(|_| {
            (
                "address.socket_address.port_value",
                format!("{p} out of range"),
            )
        })?,
        _ => return Err(("address.socket_address.port_value", "missing".into())),
    };
    Ok(SocketAddr::new(ip, port))
}

/// `cluster` or `weighted_clusters` -> a route action (weight-0 entries get no traffic).
fn action(
    p: &TcpProxy,
    clusters: &HashMap<Arc<str>, Arc<Cluster>>,
) -> Result<RouteAction, (String, String)> {
    let resolve = |name: &str| ClusterRef {
        name: name.into(),
        cluster: clusters.get(name).cloned(),
    };
    match &p.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => Ok(RouteAction::Cluster(resolve(c))),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut total = 0u64;
            let mut out = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    let f = format!(".weighted_clusters.clusters[{i}].name");
                    return Err((f, "empty cluster name".into()));
                }
                if c.weight == 0 {
                    continue;
                }
                total += u64::from(c.weight);
                out.push((total, resolve(&c.name)));
            }
            if total == 0 {
                return Err((".weighted_clusters".into(), "weights sum to zero".into()));
            }
            Ok(RouteAction::Weighted {
                clusters: out,
                total,
            })
        }
        _ => Err((
            ".cluster_specifier".into(),
            "need cluster or weighted_clusters".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
    use envoy_types::util::pack_any;

    use super::*;

    fn chain(names: &[&str], cluster: &str) -> FilterChain {
        FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                server_names: names.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            }),
            filters: vec![Filter {
                name: TCP_PROXY.into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
                    stat_prefix: cluster.into(),
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                    ..Default::default()
                }))),
            }],
            ..Default::default()
        }
    }

    fn listener(chains: Vec<FilterChain>) -> Result<TcpListener, RuntimeError> {
        use envoy_types::pb::envoy::config::core::v3::{
            Address as XAddress, SocketAddress, address,
        };
        let l = XListener {
            name: "l".into(),
            address: Some(XAddress {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "127.0.0.1".into(),
                    port_specifier: Some(PortSpecifier::PortValue(0)),
                    ..Default::default()
                })),
            }),
            filter_chains: chains,
            ..Default::default()
        };
        TcpListener::compile(&l, &HashMap::new())
    }

    fn picked(l: &TcpListener, sni: Option<&str>) -> Option<String> {
        l.select(sni).map(|c| c.stat_prefix.to_string())
    }

    #[test]
    fn exact_then_longest_wildcard_then_fallback() {
        let l = listener(vec![
            chain(&["a.example.com"], "a"),
            chain(&["*.example.com"], "wild"),
            chain(&["*.deep.example.com"], "deep"),
            chain(&[], "any"),
        ])
        .unwrap();
        assert!(l.inspect_tls);
        assert_eq!(picked(&l, Some("a.example.com")).as_deref(), Some("a"));
        assert_eq!(picked(&l, Some("b.example.com")).as_deref(), Some("wild"));
        assert_eq!(
            picked(&l, Some("x.deep.example.com")).as_deref(),
            Some("deep")
        );
        assert_eq!(picked(&l, Some("example.com")).as_deref(), Some("any"));
        assert_eq!(picked(&l, None).as_deref(), Some("any"));
    }

    #[test]
    fn no_fallback_means_unknown_sni_has_no_chain() {
        let l = listener(vec![chain(&["a.example.com"], "a")]).unwrap();
        assert_eq!(picked(&l, Some("c.example.com")), None);
        assert_eq!(picked(&l, None), None);
    }

    #[test]
    fn weighted_pick_splits_every_run_by_weight() {
        let clusters = [("a", 80u64), ("b", 20)]
            .iter()
            .scan(0, |total, (name, w)| {
                *total += w;
                Some((
                    *total,
                    ClusterRef {
                        name: (*name).into(),
                        cluster: None,
                    },
                ))
            })
            .collect();
        let chain = TcpChain {
            rbac: Vec::new(),
            stat_prefix: "x".into(),
            action: RouteAction::Weighted {
                clusters,
                total: 100,
            },
            idle_timeout: None,
            tunnel: None,
            max_duration: None,
            picks: AtomicU64::new(fastrand::u64(..)),
        };
        for n in [50, 200, 1000] {
            let a = (0..n).filter(|_| &*chain.pick().name == "a").count();
            let share = a as f64 / n as f64;
            assert!((share - 0.8).abs() <= 0.03, "{a} of {n}");
        }
        assert!((0..1000).all(|k| golden_point(k, 7) < 7));
    }

    #[test]
    fn ambiguous_chains_are_rejected_with_their_field() {
        let e = listener(vec![
            chain(&["a.example.com"], "a"),
            chain(&["A.example.com"], "b"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("filter_chains[1].filter_chain_match.server_names[0]"),
            "{e}"
        );
        let e = listener(vec![chain(&[], "a"), chain(&[], "b")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("two chains match every connection"), "{e}");
        let e = listener(vec![chain(&["a.*.com"], "a")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a server name"), "{e}");
    }
}
