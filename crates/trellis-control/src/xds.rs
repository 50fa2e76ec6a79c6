//! The xDS server: Aggregated Discovery Service over gRPC, State of the World and Delta, for
//! listeners, route configurations, clusters and load assignments.
//!
//! Each stream identifies its proxy from the first request's `Node`, compiles for it with
//! `trellis-xds` (proxies that differ only by id share one compilation per revision) and
//! follows the debounced configuration through a watch channel, so a slow proxy only ever
//! falls behind to the latest configuration and never holds up the others. Only resources
//! whose content changed are pushed. Status per proxy and type, and metrics, are kept in
//! [`status`] and reported through [`crate::ControlStatus`].
//!
//! Must not read or write configuration stores: it only follows a [`ConfigWatch`].

mod debounce;
mod delta;
mod follow;
mod snapshot;
mod sotw;
mod status;
mod subscription;
mod transport;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_xds::ProxyIdentity;

use crate::{ConfigWatch, ControlStatus};
pub use debounce::{Generation, MAX_DELAY, QUIET};
use snapshot::{CompileCache, Kind};
use status::StatusBoard;
use subscription::Received;

/// Responses a stream may have queued towards its proxy before it waits for the proxy to read
/// (a slow proxy then skips straight to the latest configuration).
const STREAM_QUEUE: usize = 4;

/// How long a new stream may wait before its first request (which names the proxy).
const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The ADS server of `trellis control`.
pub struct XdsServer {
    /// The store's channel, until [`XdsServer::serve`] starts debouncing it.
    config: Mutex<Option<ConfigWatch>>,
    publish: watch::Sender<Arc<Generation>>,
    generations: watch::Receiver<Arc<Generation>>,
    cache: CompileCache,
    status: StatusBoard,
    next_conn: AtomicU64,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl XdsServer {
    /// A server following `config`; it serves the current configuration right away.
    pub fn new(config: ConfigWatch) -> Arc<XdsServer> {
        let current = config.borrow().clone();
        let (publish, generations) = watch::channel(Arc::new(Generation::new(
            &current,
            tokio::time::Instant::now(),
        )));
        Arc::new(XdsServer {
            config: Mutex::new(Some(config)),
            publish,
            generations,
            cache: CompileCache::default(),
            status: StatusBoard::default(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Serves ADS on `listener` until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        self.serve_with_ca(listener, None).await
    }

    /// Serves ADS and, when given, Istio's certificate service on `listener`.
    pub async fn serve_with_ca(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        ca: Option<crate::ca::service::CertificateService>,
    ) -> anyhow::Result<()> {
        self.follow_store();
        let local = listener.local_addr()?;
        tracing::info!(address = %local, "xds server listening");
        let service = transport::AdsService::new(Ads(self), 16 * 1024 * 1024);
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .serve_with_incoming(
                crate::ca::service::WithCa::new(service, ca),
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .map_err(|e| anyhow::anyhow!("xds server on {local}: {e}"))
    }

    /// ADS and the CA over TLS on `listener` (Istio's port 15012): the control plane's
    /// certificate comes from `ca`, client certificates are verified against its roots.
    pub async fn serve_secure(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        ca: Arc<crate::ca::CertificateAuthority>,
    ) -> anyhow::Result<()> {
        self.follow_store();
        let local = listener.local_addr()?;
        tracing::info!(address = %local, "secure xds server listening");
        let incoming = crate::ca::tls::incoming(listener, Arc::clone(&ca), local.ip());
        let service = transport::AdsService::new(Ads(self), 16 * 1024 * 1024);
        let ca = Some(crate::ca::service::CertificateService(ca));
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .serve_with_incoming(crate::ca::service::WithCa::new(service, ca), incoming)
            .await
            .map_err(|e| anyhow::anyhow!("secure xds server on {local}: {e}"))
    }

    /// Starts following the store (once, whichever listener starts first).
    fn follow_store(&self) {
        let config = self.config.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(config) = config {
            let publish = self.publish.clone();
            tokio::spawn(debounce::run(config, publish));
        }
    }

    /// How many distinct compilations the current configuration revision holds.
    pub fn compiled_groups(&self) -> usize {
        self.cache.len()
    }

    fn identity(node: Option<&Node>) -> Result<ProxyIdentity, Status> {
        let node = node.ok_or_else(|| {
            Status::invalid_argument(
                "the first xDS request must carry a node (node.id, node.metadata)",
            )
        })?;
        if node.id.is_empty() {
            return Err(Status::invalid_argument(
                "node.id is empty; every proxy needs an id",
            ));
        }
        ProxyIdentity::from_node(node)
            .map_err(|e| Status::invalid_argument(format!("node {:?}: {e}", node.id)))
    }

    /// Records a request in the status board and the log.
    fn record(&self, conn: u64, kind: Kind, received: &Received, proxy: &str) {
        match received {
            Received::Ack { version, nonce } => self.status.acked(conn, kind, version, nonce),
            Received::Nack { nonce, error } => {
                tracing::warn!(
                    conn,
                    proxy,
                    r#type = kind.short(),
                    nonce,
                    error,
                    "proxy rejected xds response"
                );
                self.status.nacked(conn, kind, nonce, error);
            }
            Received::Initial | Received::Stale => {}
        }
    }

    fn open(&self, identity: &ProxyIdentity, mode: &'static str) -> Connection<'_> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.status.connect(conn, identity, mode);
        tracing::info!(conn, proxy = %identity.id, mode, "proxy connected");
        Connection { server: self, conn }
    }
}

/// A registered stream; unregisters on drop.
struct Connection<'a> {
    server: &'a XdsServer,
    conn: u64,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        tracing::info!(conn = self.conn, "proxy disconnected");
        self.server.status.disconnect(self.conn);
    }
}

/// The gRPC service: a handle on the server (the generated trait takes `&self`, the streams
/// need an owned handle).
struct Ads(Arc<XdsServer>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let first = first_request(&mut requests).await?;
        let identity = XdsServer::identity(first.node.as_ref())?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let server = self.0.clone();
        tokio::spawn(async move {
            let connection = server.open(&identity, "sotw");
            let conn = connection.conn;
            sotw::run(server.clone(), conn, identity, first, requests, tx).await;
            drop(connection);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let first = first_request(&mut requests).await?;
        let identity = XdsServer::identity(first.node.as_ref())?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let server = self.0.clone();
        tokio::spawn(async move {
            let connection = server.open(&identity, "delta");
            let conn = connection.conn;
            delta::run(server.clone(), conn, identity, first, requests, tx).await;
            drop(connection);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The first request of a stream, which must arrive within [`FIRST_REQUEST_TIMEOUT`].
async fn first_request<T>(requests: &mut Streaming<T>) -> Result<T, Status> {
    match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()).await {
        Ok(Ok(Some(first))) => Ok(first),
        Ok(Ok(None)) => Err(Status::invalid_argument(
            "stream closed before the first request",
        )),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no xDS request within {}s of opening the stream",
            FIRST_REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

impl ControlStatus for XdsServer {
    fn proxy_status(&self) -> serde_json::Value {
        self.status.to_json()
    }

    fn encode_metrics(&self, out: &mut String) {
        self.status.encode_metrics(out);
    }
}
