//! Active health checking (Envoy's cluster `health_checks`): one task per endpoint of each
//! cluster that has a check, probing every `interval` with HTTP GET, gRPC
//! `grpc.health.v1.Health/Check` (over HTTP/2) or a TCP connect, each bounded by `timeout`.
//! `unhealthy_threshold` failures in a row mark the endpoint `failed_active_hc` (the balancer
//! skips it); `healthy_threshold` successes in a row clear it.
//!
//! [`HealthCheckers::reconcile`] runs after every config swap: tasks whose cluster, endpoint or
//! check changed are stopped (their verdict cleared) and new ones started; unchanged ones keep
//! running with their state. Probes use their own connections, never the request pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::{HealthCheck, health_check::HealthChecker};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::Runtime;
use super::duration;
use super::outlier::EndpointHealth;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// gRPC health `ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// One cluster's check, from its first `health_checks` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub probe: Probe,
    /// `:authority` / `Host` of HTTP and gRPC probes (Envoy uses the cluster name).
    pub authority: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// GET `path`; healthy when the status is in one of the `[start, end)` ranges.
    Http {
        path: String,
        expected: Vec<(i64, i64)>,
    },
    Grpc {
        service: String,
    },
    Tcp,
}

/// The running probe tasks, by cluster and endpoint.
#[derive(Debug, Default)]
pub struct HealthCheckers {
    tasks: HashMap<ProbeKey, Running>,
}

/// Cluster name and endpoint address.
type ProbeKey = (Arc<str>, SocketAddr);

#[derive(Debug)]
struct Running {
    config: Arc<HealthCheckConfig>,
    health: Arc<EndpointHealth>,
    task: JoinHandle<()>,
}

impl HealthCheckConfig {
    /// The first entry of a cluster's `health_checks`; `Err` names what is not supported.
    pub fn from_xds(cluster: &str, checks: &[HealthCheck]) -> Result<Option<Self>, String> {
        let Some(hc) = checks.first() else {
            return Ok(None);
        };
        let probe = match &hc.health_checker {
            Some(HealthChecker::HttpHealthCheck(h)) => Probe::Http {
                path: if h.path.is_empty() {
                    "/".into()
                } else {
                    h.path.clone()
                },
                expected: if h.expected_statuses.is_empty() {
                    vec![(200, 201)]
                } else {
                    h.expected_statuses
                        .iter()
                        .map(|r| (r.start, r.end))
                        .collect()
                },
            },
            Some(HealthChecker::GrpcHealthCheck(g)) => Probe::Grpc {
                service: g.service_name.clone(),
            },
            Some(HealthChecker::TcpHealthCheck(_)) => Probe::Tcp,
            _ => return Err("only http, grpc and tcp health checks are supported".into()),
        };
        let authority = match &hc.health_checker {
            Some(HealthChecker::HttpHealthCheck(h)) if !h.host.is_empty() => h.host.clone(),
            Some(HealthChecker::GrpcHealthCheck(g)) if !g.authority.is_empty() => {
                g.authority.clone()
            }
            // Envoy sends the cluster name; Istio's names (`outbound|port|subset|host`) are
            // not valid authorities, so their service host stands in.
            _ => cluster.rsplit('|').next().unwrap_or(cluster).to_string(),
        };
        Ok(Some(HealthCheckConfig {
            interval: hc
                .interval
                .as_ref()
                .map_or(DEFAULT_INTERVAL, duration)
                .max(Duration::from_millis(10)),
            timeout: hc.timeout.as_ref().map_or(DEFAULT_TIMEOUT, duration),
            unhealthy_threshold: hc
                .unhealthy_threshold
                .as_ref()
                .map_or(1, |v| v.value.max(1)),
            healthy_threshold: hc.healthy_threshold.as_ref().map_or(1, |v| v.value.max(1)),
            probe,
            authority,
        }))
    }
}

impl HealthCheckers {
    /// Makes the running tasks match `rt`'s clusters; must run inside a tokio runtime.
    pub fn reconcile(&mut self, rt: &Runtime) {
        let mut wanted: HashMap<ProbeKey, (Arc<HealthCheckConfig>, Arc<EndpointHealth>)> =
            HashMap::new();
        for c in rt.clusters.values() {
            let Some(cfg) = &c.health_check else {
                continue;
            };
            for e in &c.endpoints {
                wanted.insert(
                    (Arc::clone(&c.name), e.addr),
                    (Arc::clone(cfg), Arc::clone(&e.health)),
                );
            }
        }
        self.tasks.retain(|key, running| {
            let keep = wanted.get(key).is_some_and(|(cfg, health)| {
                **cfg == *running.config && Arc::ptr_eq(health, &running.health)
            });
            if !keep {
                running.task.abort();
                running.health.hc_failed.store(false, Relaxed);
            }
            keep
        });
        for (key, (config, health)) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(run(key.1, Arc::clone(&config), Arc::clone(&health)));
            self.tasks.insert(
                key,
                Running {
                    config,
                    health,
                    task,
                },
            );
        }
    }

    /// How many probe tasks are running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        for r in self.tasks.values() {
            r.task.abort();
        }
    }
}

/// Probes `addr` forever, updating `health`.
async fn run(addr: SocketAddr, cfg: Arc<HealthCheckConfig>, health: Arc<EndpointHealth>) {
    // Spread the first probes of many endpoints over the first interval.
    let jitter = fastrand::u64(..=cfg.interval.as_millis().min(1000) as u64 / 10);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    let (mut fails, mut passes) = (0u32, 0u32);
    loop {
        let ok = matches!(
            tokio::time::timeout(cfg.timeout, probe(addr, &cfg)).await,
            Ok(Ok(true))
        );
        if ok {
            fails = 0;
            passes += 1;
            if passes >= cfg.healthy_threshold && health.hc_failed.swap(false, Relaxed) {
                tracing::info!(endpoint = %addr, "active health check passed; endpoint healthy");
            }
        } else {
            passes = 0;
            fails += 1;
            if fails >= cfg.unhealthy_threshold && !health.hc_failed.swap(true, Relaxed) {
                tracing::warn!(endpoint = %addr, "active health check failed; endpoint unhealthy");
            }
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

/// One probe; `Ok(true)` when healthy.
async fn probe(
    addr: SocketAddr,
    cfg: &HealthCheckConfig,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    match &cfg.probe {
        Probe::Tcp => Ok(true),
        Probe::Http { path, expected } => {
            let (mut tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = Request::get(path.as_str())
                .header(http::header::HOST, cfg.authority.as_str())
                .header(http::header::USER_AGENT, "Envoy/HC")
                .header(http::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())?;
            let resp = tx.send_request(req).await?;
            let status = i64::from(resp.status().as_u16());
            let _ = resp.into_body().collect().await;
            Ok(expected.iter().any(|(s, e)| (*s..*e).contains(&status)))
        }
        Probe::Grpc { service } => {
            let (mut tx, conn) =
                http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let uri = format!("http://{}/grpc.health.v1.Health/Check", cfg.authority);
            let req = Request::post(uri)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .header(http::header::USER_AGENT, "Envoy/HC")
                .body(Full::new(grpc_request(service)))?;
            let resp = tx.send_request(req).await?;
            if resp.status() != StatusCode::OK {
                return Ok(false);
            }
            let header_status = resp.headers().get("grpc-status").cloned();
            let collected = resp.into_body().collect().await?;
            let trailer_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .cloned();
            let grpc_ok = trailer_status.or(header_status).is_some_and(|s| s == "0");
            Ok(grpc_ok && serving(&collected.to_bytes()))
        }
    }
}

/// A length-prefixed `HealthCheckRequest { service }`.
fn grpc_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.put_u8(0);
    out.put_u32(msg.len() as u32);
    out.put_slice(&msg);
    out.freeze()
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

/// Whether a length-prefixed `HealthCheckResponse` says `SERVING` (field 1 varint).
fn serving(body: &[u8]) -> bool {
    let Some(msg) = body.get(5..) else {
        return false;
    };
    if msg.first() != Some(&0x08) {
        return false;
    }
    let (mut v, mut shift) = (0u64, 0);
    for b in msg.iter().skip(1).take(10) {
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v == SERVING;
        }
        shift += 7;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_round_trip() {
        let req = grpc_request("reviews");
        assert_eq!(&req[..5], &[0, 0, 0, 0, 9]);
        assert_eq!(&req[5..], b"\x0a\x07reviews");
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        assert!(!serving(&[0, 0, 0, 0, 2, 0x08, 0x02]));
        assert!(!serving(&[0, 0, 0, 0, 0]));
    }

    #[tokio::test]
    async fn http_probe_follows_expected_statuses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if head.starts_with("GET /ok ") {
                    204
                } else {
                    503
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let cfg = |path: &str| HealthCheckConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
            probe: Probe::Http {
                path: path.into(),
                expected: vec![(200, 201), (204, 205)],
            },
            authority: "c".into(),
        };
        assert!(probe(addr, &cfg("/ok")).await.unwrap_or(false));
        assert!(!probe(addr, &cfg("/bad")).await.unwrap_or(true));
    }

    fn static_cluster(port: u16, check: bool) -> trellis_xds::Resources {
        use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, health_check, socket_address,
        };
        use envoy_types::pb::envoy::config::endpoint::v3::{
            ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
        };
        let endpoint = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            port,
                        ))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let checks = if check {
            vec![HealthCheck {
                interval: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 0,
                    nanos: 20_000_000,
                }),
                health_checker: Some(HealthChecker::TcpHealthCheck(
                    health_check::TcpHealthCheck::default(),
                )),
                ..Default::default()
            }]
        } else {
            Vec::new()
        };
        trellis_xds::Resources {
            clusters: vec![Cluster {
                name: "c".into(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                )),
                load_assignment: Some(ClusterLoadAssignment {
                    cluster_name: "c".into(),
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![endpoint],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                health_checks: checks,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn checks_follow_the_config_and_stop_with_it() {
        // Nothing listens on this port: the TCP check fails.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let rt = Runtime::compile(&static_cluster(port, true), None).expect("compile");
        let mut checkers = HealthCheckers::default();
        checkers.reconcile(&rt);
        assert_eq!(checkers.len(), 1);
        let health = Arc::clone(&rt.clusters["c"].endpoints[0].health);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !health.hc_failed.load(Relaxed) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            health.hc_failed.load(Relaxed),
            "refused connections fail the check"
        );
        // The same config again keeps the task; removing the check stops it and clears the verdict.
        let same = Runtime::compile(&static_cluster(port, true), Some(&rt)).expect("compile");
        checkers.reconcile(&same);
        assert_eq!(checkers.len(), 1);
        assert!(health.hc_failed.load(Relaxed));
        let without = Runtime::compile(&static_cluster(port, false), Some(&same)).expect("compile");
        checkers.reconcile(&without);
        assert!(checkers.is_empty());
        assert!(!health.hc_failed.load(Relaxed));
    }
}
