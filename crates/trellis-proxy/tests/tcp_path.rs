//! The L4 path in-process: hand-built tcp_proxy listeners in front of real TCP servers on
//! 127.0.0.1. Checks the idle timeout, the ClientHello deadline, byte-exact replay of the
//! ClientHello upstream, and that a plain-text client on a TLS-inspecting listener takes the
//! chain without server names (Envoy's behaviour).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_proxy::listeners::Listeners;
use trellis_proxy::proxy::Proxy;
use trellis_proxy::runtime::Runtime;
use trellis_proxy::telemetry::{AccessLogSink, Telemetry};
use trellis_xds::{ProxyIdentity, Resources};

const NAME: &str = "tcp";

fn millis(ms: i64) -> PbDuration {
    PbDuration {
        seconds: ms / 1000,
        nanos: (ms % 1000) as i32 * 1_000_000,
    }
}

/// A chain to `cluster`, matching `server_names` (empty: any).
fn chain(server_names: &[&str], cluster: &str, idle: Option<PbDuration>) -> FilterChain {
    let proxy = TcpProxy {
        stat_prefix: cluster.into(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
        idle_timeout: idle,
        ..Default::default()
    };
    FilterChain {
        filter_chain_match: (!server_names.is_empty()).then(|| FilterChainMatch {
            server_names: server_names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
        }],
        ..Default::default()
    }
}

/// Starts a proxy with one L4 listener and a cluster per `(name, backend)`.
fn start(
    chains: Vec<FilterChain>,
    inspect: Option<PbDuration>,
    backends: &[(&str, SocketAddr)],
) -> (Listeners, SocketAddr) {
    let listener = Listener {
        name: NAME.into(),
        address: Some(support::socket("127.0.0.1:0".parse().unwrap())),
        filter_chains: chains,
        listener_filters: inspect
            .iter()
            .map(|_| ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                    TlsInspector::default(),
                ))),
                ..Default::default()
            })
            .collect(),
        listener_filters_timeout: inspect,
        ..Default::default()
    };
    let (clusters, endpoints) = backends
        .iter()
        .map(|(name, addr)| support::cluster(name, LbPolicy::RoundRobin, false, &[(*addr, 1)]))
        .unzip();
    let res = Resources {
        version: "1".into(),
        listeners: vec![listener],
        routes: Vec::new(),
        clusters,
        endpoints,
    };
    let telemetry = Telemetry::with_access_log(&ProxyIdentity::default(), AccessLogSink::Off);
    let proxy = Arc::new(Proxy::new(Runtime::default(), Arc::new(telemetry)));
    let mut listeners = Listeners::new(proxy);
    listeners.apply(res).expect("apply");
    let addr = listeners.bound()[NAME];
    (listeners, addr)
}

/// A TCP server that reads until the client half-closes, then answers `<name>:<what it read>`.
async fn answering(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = (&mut s).take(64 * 1024).read_to_end(&mut got).await;
                let mut reply = format!("{name}:").into_bytes();
                reply.extend(got);
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP server that accepts and then neither reads nor writes nor closes.
async fn silent() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Sends `bytes`, half-closes, reads everything back (bounded by 10 s).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    c.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("answer within 10s")
        .expect("read");
    out
}

/// A minimal TLS 1.2-style ClientHello record with a `server_name` extension.
fn client_hello(sni: &str) -> Vec<u8> {
    let mut name = vec![0u8];
    name.extend((sni.len() as u16).to_be_bytes());
    name.extend(sni.as_bytes());
    let mut ext = (name.len() as u16).to_be_bytes().to_vec();
    ext.extend(name);
    let mut exts = vec![0, 0];
    exts.extend((ext.len() as u16).to_be_bytes());
    exts.extend(ext);
    let mut body = vec![3, 3];
    body.extend([9u8; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test]
async fn client_hello_is_replayed_byte_for_byte_and_plain_text_takes_the_catch_all() {
    let a = answering("A").await;
    let other = answering("OTHER").await;
    let (_l, addr) = start(
        vec![
            chain(&["a.example.com"], "a", None),
            chain(&[], "other", None),
        ],
        Some(millis(5000)),
        &[("a", a), ("other", other)],
    );
    let hello = client_hello("a.example.com");
    let mut want = b"A:".to_vec();
    want.extend(&hello);
    want.extend(b"after the hello");
    let mut sent = hello.clone();
    sent.extend(b"after the hello");
    assert_eq!(exchange(addr, &sent).await, want);
    assert_eq!(
        exchange(addr, b"plain text\n").await,
        b"OTHER:plain text\n".to_vec()
    );
    let mut unknown = b"OTHER:".to_vec();
    unknown.extend(client_hello("b.example.com"));
    assert_eq!(
        exchange(addr, &client_hello("b.example.com")).await,
        unknown
    );
}

#[tokio::test]
async fn a_client_hello_that_never_completes_is_closed_after_the_listener_filter_timeout() {
    let a = answering("A").await;
    let (_l, addr) = start(
        vec![chain(&["a.example.com"], "a", None)],
        Some(millis(300)),
        &[("a", a)],
    );
    let mut c = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    c.write_all(&client_hello("a.example.com")[..20])
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
        .await
        .expect("closed within 10s");
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let upstream = silent().await;
    let (_l, addr) = start(
        vec![chain(&[], "quiet", Some(millis(300)))],
        None,
        &[("quiet", upstream)],
    );
    let mut c = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    c.write_all(b"x").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
        .await
        .expect("closed within 10s");
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}
