//! The test's ADS server: a peer for the proxy's xDS client, not the product. It serves whatever
//! [`Ads::set`] last stored to every stream, in Delta (differences from what the client holds,
//! on subscription changes and pushes) and in SotW (a type's whole subscribed set when its
//! subscription changes and on every push), and records every request it receives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_xds::Resources;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// The order a control plane pushes in (CDS, EDS, LDS, RDS).
pub const ORDER: [&str; 4] = [CDS, EDS, LDS, RDS];

/// A request the server received, as the test inspects it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub type_url: String,
    pub nonce: String,
    pub error: Option<String>,
    /// Delta: how many `initial_resource_versions` the request carried.
    pub initial_versions: usize,
    pub at: Instant,
}

#[derive(Default)]
pub struct Store {
    generation: u64,
    /// type URL → name → packed resource.
    resources: HashMap<&'static str, BTreeMap<String, Any>>,
    pub seen: Vec<Seen>,
    /// Nonces of the responses sent, in order.
    pub sent: Vec<String>,
    nodes: Vec<Node>,
    next_nonce: u64,
}

/// The test's ADS server: serves whatever [`Ads::set`] last stored, to every stream.
#[derive(Clone)]
pub struct Ads {
    pub store: Arc<Mutex<Store>>,
    changed: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

pub struct Running {
    handle: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Ads {
    pub fn new() -> Ads {
        Ads {
            store: Arc::default(),
            changed: watch::channel(0).0,
            stop: watch::channel(false).0,
        }
    }

    pub fn set(&self, res: &Resources) {
        let mut s = self.store.lock().unwrap();
        let mut put = |url, items: Vec<(String, Any)>| {
            s.resources.insert(url, items.into_iter().collect());
        };
        put(
            LDS,
            res.listeners
                .iter()
                .map(|l| (l.name.clone(), pack_any(l.clone())))
                .collect(),
        );
        put(
            RDS,
            res.routes
                .iter()
                .map(|r| (r.name.clone(), pack_any(r.clone())))
                .collect(),
        );
        put(
            CDS,
            res.clusters
                .iter()
                .map(|c| (c.name.clone(), pack_any(c.clone())))
                .collect(),
        );
        put(
            EDS,
            res.endpoints
                .iter()
                .map(|e| (e.cluster_name.clone(), pack_any(e.clone())))
                .collect(),
        );
        s.generation += 1;
        let g = s.generation;
        drop(s);
        self.changed.send_replace(g);
    }

    /// Serves on `port` (127.0.0.1) until [`Running::kill`].
    pub async fn start(&self, port: u16) -> Running {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the test ADS server");
        let (stop, mut stopped) = watch::channel(false);
        let mut me = self.clone();
        me.stop = stop.clone();
        let svc = AggregatedDiscoveryServiceServer::new(me).max_decoding_message_size(64 << 20);
        let handle = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(
                    svc,
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                )
                .await;
        });
        Running { handle, stop }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.store.lock().unwrap().seen.clone()
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.store.lock().unwrap().nodes.clone()
    }

    fn record(&self, seen: Seen, node: Option<&Node>) {
        let mut s = self.store.lock().unwrap();
        s.seen.push(seen);
        if let Some(n) = node {
            s.nodes.push(n.clone());
        }
    }

    /// The resources of `type_url` a subscription sees, each with a content version, and a nonce.
    fn snapshot(
        &self,
        type_url: &str,
        wildcard: bool,
        names: &BTreeSet<String>,
    ) -> (u64, u64, BTreeMap<String, (String, Any)>) {
        let mut s = self.store.lock().unwrap();
        s.next_nonce += 1;
        let items = s
            .resources
            .get(type_url)
            .into_iter()
            .flatten()
            .filter(|(n, _)| wildcard || names.contains(*n))
            .map(|(n, a)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                a.value.hash(&mut h);
                (n.clone(), (format!("{:x}", h.finish()), a.clone()))
            })
            .collect();
        (s.generation, s.next_nonce, items)
    }
}

impl Running {
    /// Ends every stream with UNAVAILABLE, closes the port and waits for the server to stop.
    pub async fn kill(self) {
        self.stop.send_replace(true);
        let mut handle = self.handle;
        if tokio::time::timeout(Duration::from_secs(5), &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LDS || type_url == CDS
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(sotw_stream(self.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(delta_stream(self.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// SotW: answer a type when its subscription changes and every type on each push.
async fn sotw_stream(
    ads: Ads,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut subs: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut changed = ads.changed.subscribe();
    let mut stop = ads.stop.subscribe();
    let send = |type_url: &str, names: &BTreeSet<String>| {
        let wildcard = is_wildcard_type(type_url);
        if !wildcard && names.is_empty() {
            return None;
        }
        let (generation, nonce, items) = ads.snapshot(type_url, wildcard, names);
        Some(DiscoveryResponse {
            version_info: generation.to_string(),
            resources: items.into_values().map(|(_, a)| a).collect(),
            type_url: type_url.to_owned(),
            nonce: nonce.to_string(),
            ..Default::default()
        })
    };
    loop {
        let out = tokio::select! {
            r = requests.message() => {
                let Ok(Some(req)) = r else { return };
                ads.record(
                    Seen {
                        type_url: req.type_url.clone(),
                        nonce: req.response_nonce.clone(),
                        error: req.error_detail.as_ref().map(|e| e.message.clone()),
                        initial_versions: 0,
                        at: Instant::now(),
                    },
                    req.node.as_ref(),
                );
                let names: BTreeSet<String> =
                    req.resource_names.iter().filter(|n| *n != "*").cloned().collect();
                if subs.get(&req.type_url) == Some(&names) {
                    continue; // an ACK or a NACK
                }
                subs.insert(req.type_url.clone(), names.clone());
                send(&req.type_url, &names).into_iter().collect::<Vec<_>>()
            }
            _ = changed.changed() => ORDER
                .iter()
                .filter_map(|t| subs.get(*t).and_then(|n| send(t, n)))
                .collect(),
            () = stopped(&mut stop) => {
                let _ = tx.send(Err(Status::unavailable("control plane stopping"))).await;
                return;
            }
        };
        for resp in out {
            ads.store.lock().unwrap().sent.push(resp.nonce.clone());
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
}

#[derive(Default)]
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name → version.
    sent: BTreeMap<String, String>,
}

/// Delta: send what differs from what the client holds, on subscription changes and pushes.
async fn delta_stream(
    ads: Ads,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut subs: HashMap<String, DeltaSub> = HashMap::new();
    let mut changed = ads.changed.subscribe();
    let mut stop = ads.stop.subscribe();
    let diff = |type_url: &str, sub: &mut DeltaSub| {
        let (generation, nonce, items) = ads.snapshot(type_url, sub.wildcard, &sub.names);
        let mut resources = Vec::new();
        for (name, (version, any)) in &items {
            if sub.sent.get(name) != Some(version) {
                resources.push(Resource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: Some(any.clone()),
                    ..Default::default()
                });
                sub.sent.insert(name.clone(), version.clone());
            }
        }
        let removed: Vec<String> = sub
            .sent
            .keys()
            .filter(|n| !items.contains_key(*n))
            .cloned()
            .collect();
        for n in &removed {
            sub.sent.remove(n);
        }
        (!resources.is_empty() || !removed.is_empty()).then(|| DeltaDiscoveryResponse {
            system_version_info: generation.to_string(),
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce: nonce.to_string(),
            ..Default::default()
        })
    };
    loop {
        let out = tokio::select! {
            r = requests.message() => {
                let Ok(Some(req)) = r else { return };
                ads.record(
                    Seen {
                        type_url: req.type_url.clone(),
                        nonce: req.response_nonce.clone(),
                        error: req.error_detail.as_ref().map(|e| e.message.clone()),
                        initial_versions: req.initial_resource_versions.len(),
                        at: Instant::now(),
                    },
                    req.node.as_ref(),
                );
                if req.resource_names_subscribe.is_empty()
                    && req.resource_names_unsubscribe.is_empty()
                    && subs.contains_key(&req.type_url)
                {
                    continue; // an ACK or a NACK
                }
                let sub = subs.entry(req.type_url.clone()).or_default();
                for n in req.resource_names_subscribe {
                    if n == "*" {
                        sub.wildcard = true;
                    } else {
                        sub.names.insert(n);
                    }
                }
                for n in &req.resource_names_unsubscribe {
                    sub.names.remove(n);
                    sub.sent.remove(n);
                }
                sub.sent.extend(req.initial_resource_versions);
                diff(&req.type_url, sub).into_iter().collect::<Vec<_>>()
            }
            _ = changed.changed() => ORDER
                .iter()
                .filter_map(|t| subs.get_mut(*t).and_then(|s| diff(t, s)))
                .collect(),
            () = stopped(&mut stop) => {
                let _ = tx.send(Err(Status::unavailable("control plane stopping"))).await;
                return;
            }
        };
        for resp in out {
            ads.store.lock().unwrap().sent.push(resp.nonce.clone());
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
}
