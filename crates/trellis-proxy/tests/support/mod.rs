//! Test harness: hand-built xDS resources, real backends (hyper, h1 + h2c) and a proxy started
//! in-process on 127.0.0.1:0.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Http2ProtocolOptions, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter::ConfigType,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, route,
    route_action::ClusterSpecifier, route_match::PathSpecifier, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::ExplicitHttpConfig,
    http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use trellis_proxy::listeners::Listeners;
use trellis_proxy::proxy::Proxy;
use trellis_proxy::runtime::Runtime;
use trellis_proxy::telemetry::Telemetry;
use trellis_xds::{ProxyIdentity, Resources};

pub const LISTENER: &str = "0.0.0.0_8080";

/// A backend that answers with its name; counts requests.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

/// A body from a list of frames (data and trailers).
pub struct Frames(pub VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Start a backend. Echoes request headers as `echo-<name>` response headers; for gRPC requests
/// it returns the request body followed by trailers `grpc-status: 0`; `/hop` answers with
/// hop-by-hop headers.
pub async fn backend(name: &'static str) -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    answer(name, req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend { name, addr, hits }
}

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Frames>, Infallible> {
    let (parts, body) = req.into_parts();
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = Response::builder().header("x-backend", name);
    for (k, v) in &parts.headers {
        resp = resp.header(format!("echo-{k}"), v);
    }
    resp = resp.header("echo-version", format!("{:?}", parts.version));
    resp = resp.header(
        "echo-authority",
        parts.uri.authority().map_or("", |a| a.as_str()),
    );
    if parts.uri.path() == "/hop" {
        resp = resp
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5");
    }
    let mut frames = VecDeque::new();
    if grpc {
        resp = resp.header("content-type", "application/grpc");
        frames.push_back(Frame::data(body));
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().expect("v"));
        t.insert("grpc-message", "ok".parse().expect("v"));
        frames.push_back(Frame::trailers(t));
    } else {
        frames.push_back(Frame::data(Bytes::from(name)));
    }
    Ok(resp.body(Frames(frames)).expect("response"))
}

pub fn socket(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

pub fn listener(name: &str, route_config: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: route_config.into(),
            ..Default::default()
        })),
        use_remote_address: Some(BoolValue { value: true }),
        preserve_external_request_id: true,
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(socket("127.0.0.1:0".parse().expect("addr"))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route_config(name: &str, vhosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vhosts,
        ..Default::default()
    }
}

pub fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

pub fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

pub fn to_cluster(name: &str, m: RouteMatch, cluster: &str) -> Route {
    action(name, m, ClusterSpecifier::Cluster(cluster.into()))
}

pub fn weighted(name: &str, m: RouteMatch, clusters: &[(&str, u32)]) -> Route {
    let w = WeightedCluster {
        clusters: clusters
            .iter()
            .map(|(c, w)| ClusterWeight {
                name: (*c).into(),
                weight: Some(UInt32Value { value: *w }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    action(name, m, ClusterSpecifier::WeightedClusters(w))
}

fn action(name: &str, m: RouteMatch, spec: ClusterSpecifier) -> Route {
    Route {
        name: name.into(),
        r#match: Some(m),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(spec),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An EDS cluster plus its assignment.
pub fn cluster(
    name: &str,
    lb: cluster::LbPolicy,
    h2: bool,
    eps: &[(SocketAddr, u32)],
) -> (Cluster, ClusterLoadAssignment) {
    let mut c = Cluster {
        name: name.into(),
        lb_policy: lb as i32,
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 2,
            nanos: 0,
        }),
        ..Default::default()
    };
    if h2 {
        let opts = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            pack_any(opts),
        );
    }
    let cla = ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: eps
                .iter()
                .map(|(a, w)| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(*a)),
                        ..Default::default()
                    })),
                    load_balancing_weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    (c, cla)
}

/// Resources with one listener on `LISTENER` using route config "8080".
pub fn resources(
    vhosts: Vec<VirtualHost>,
    clusters: Vec<(Cluster, ClusterLoadAssignment)>,
) -> Resources {
    let (clusters, endpoints) = clusters.into_iter().unzip();
    Resources {
        version: "1".into(),
        listeners: vec![listener(LISTENER, "8080")],
        routes: vec![route_config("8080", vhosts)],
        clusters,
        endpoints,
    }
}

pub struct Running {
    pub listeners: Listeners,
    pub addr: SocketAddr,
}

pub fn start(res: &Resources) -> Running {
    let proxy = Arc::new(Proxy::new(
        Runtime::default(),
        Arc::new(Telemetry::new(&ProxyIdentity::default())),
    ));
    let mut listeners = Listeners::new(proxy);
    listeners.apply(res.clone()).expect("apply");
    let addr = listeners.bound()[LISTENER];
    Running { listeners, addr }
}

pub type H1 = Client<HttpConnector, Full<Bytes>>;

pub fn h1() -> H1 {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2() -> H1 {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, k: &str) -> &str {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Send `req` with a deadline and collect the whole response.
pub async fn send(client: &H1, req: Request<Full<Bytes>>) -> Got {
    let fut = async {
        let resp = client.request(req).await.expect("request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into(),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("response within 10s")
}

pub fn get(addr: SocketAddr, host: &str, path: &str) -> http::request::Builder {
    Request::get(format!("http://{addr}{path}")).header("host", host)
}

pub async fn get_backend(client: &H1, addr: SocketAddr, host: &str, path: &str) -> Got {
    send(
        client,
        get(addr, host, path).body(Full::default()).expect("req"),
    )
    .await
}

/// Send one request over a fresh h2c (prior knowledge) connection to `addr`, keeping the
/// request's own URI authority as `:authority`.
pub async fn h2_direct(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h2 response")
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("in time")
}
