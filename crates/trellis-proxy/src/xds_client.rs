//! The proxy's xDS client: one ADS stream (Delta by default, or State-of-the-World) to a control
//! plane, LDS/CDS wildcard and RDS/EDS by the names the listeners and clusters use. Each update
//! that completes a snapshot is applied through the same runtime path as `--config-dir` and then
//! ACKed; one the runtime rejects is NACKed with the runtime's error while the last good config
//! keeps serving. When the control plane goes away the proxy keeps serving and reconnects with
//! exponential backoff and jitter, rotating through the configured addresses.
//!
//! Owns the stream, the received resources ([`cache`]) and the protocol ([`engine`], [`delta`],
//! [`sotw`]); it never binds listeners or touches the runtime itself (`app` passes `apply`).

pub mod cache;
mod delta;
mod engine;
mod sotw;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use trellis_xds::Resources;

use crate::admin::EncodedResources;

use cache::Kind;
use engine::{Apply, Engine, Outbox};

/// How long an update waits for the resources it depends on (EDS of new clusters, RDS of new
/// listeners, and on first start the first LDS and CDS) before it is applied without them.
pub const WARMING_TIMEOUT: Duration = Duration::from_secs(2);
/// First and largest delay between reconnection attempts.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
const CLOSED: &str = "the control plane closed the stream";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest xDS response accepted (a 5,000-cluster SotW CDS response is a few MB).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Which ADS variant to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdsMode {
    /// Incremental xDS (`DeltaAggregatedResources`).
    Delta,
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
}

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `host:port` of each control-plane replica, tried in turn.
    pub addresses: Vec<String>,
    pub mode: XdsMode,
    pub node: Node,
    pub warming_timeout: Duration,
    /// TLS to the control plane (its port 15012, `--ca-root`); plaintext when `None`.
    pub tls: Option<crate::ca_client::tls::ControlPlaneTrust>,
}

/// The xDS client's Prometheus metrics (registered with the proxy's telemetry).
#[derive(Debug, Clone, Default)]
pub struct XdsMetrics {
    connected: Gauge,
    applied: Family<TypeLabel, Counter>,
    rejected: Family<TypeLabel, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

/// What `/xds` shows: connection state and, per type, the last applied and last rejected update.
#[derive(Debug, Default)]
pub struct XdsStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    mode: Option<XdsMode>,
    servers: Vec<String>,
    connected: Option<String>,
    last_error: Option<String>,
    /// How long the last successful apply took (decode, compile, bind, swap).
    last_apply: Option<Duration>,
    types: BTreeMap<&'static str, TypeStatus>,
}

#[derive(Debug, Default)]
struct TypeStatus {
    applied: Option<(String, String, SystemTime)>,
    resources: usize,
    rejected: Option<(String, String, String, SystemTime)>,
}

/// Delays between reconnection attempts: doubling from [`BACKOFF_BASE`] to [`BACKOFF_CAP`],
/// each drawn uniformly from its upper half (jitter, so a fleet does not reconnect in step).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

/// The client; [`XdsClient::run`] drives it forever.
pub struct XdsClient {
    config: XdsConfig,
    engine: Engine,
    status: Arc<XdsStatus>,
    metrics: XdsMetrics,
}

impl XdsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> XdsMetrics {
        let m = XdsMetrics::default();
        registry.register(
            "trellis_proxy_control_plane_connected",
            "1 while the xDS stream to the control plane is up, else 0",
            m.connected.clone(),
        );
        registry.register(
            "trellis_proxy_xds_updates_applied",
            "xDS updates applied and ACKed, by type (lds, rds, cds, eds)",
            m.applied.clone(),
        );
        registry.register(
            "trellis_proxy_xds_updates_rejected",
            "xDS updates rejected and NACKed, by type; the last good config kept serving",
            m.rejected.clone(),
        );
        m
    }

    fn applied(&self, kind: Kind) {
        self.applied
            .get_or_create(&TypeLabel {
                r#type: kind.short(),
            })
            .inc();
    }

    fn rejected(&self, kind: Kind) {
        self.rejected
            .get_or_create(&TypeLabel {
                r#type: kind.short(),
            })
            .inc();
    }

    fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }
}

impl XdsStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn applied(&self, kind: Kind, version: &str, nonce: &str, resources: usize) {
        let mut s = self.lock();
        let t = s.types.entry(kind.short()).or_default();
        t.applied = Some((version.to_owned(), nonce.to_owned(), SystemTime::now()));
        t.resources = resources;
    }

    fn rejected(&self, kind: Kind, version: &str, nonce: &str, error: &str) {
        let mut s = self.lock();
        s.types.entry(kind.short()).or_default().rejected = Some((
            version.to_owned(),
            nonce.to_owned(),
            error.to_owned(),
            SystemTime::now(),
        ));
    }

    fn apply_took(&self, took: Duration) {
        self.lock().last_apply = Some(took);
    }

    fn connection(&self, server: Option<&str>, error: Option<String>) {
        let mut s = self.lock();
        s.connected = server.map(str::to_owned);
        if error.is_some() {
            s.last_error = error;
        }
    }

    /// `{"mode", "servers", "connected", "server", "last_error", "last_apply_ms",
    /// "types": {"cds": {"last_applied", "resources", "last_rejected"}, ...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let s = self.lock();
        let time = |t: &SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let types: serde_json::Map<String, serde_json::Value> = s
            .types
            .iter()
            .map(|(k, t)| {
                let applied = t.applied.as_ref().map(|(v, n, at)| {
                    serde_json::json!({"version": v, "nonce": n, "at_unix_seconds": time(at)})
                });
                let rejected = t.rejected.as_ref().map(|(v, n, e, at)| {
                    serde_json::json!({"version": v, "nonce": n, "error": e, "at_unix_seconds": time(at)})
                });
                (
                    (*k).to_owned(),
                    serde_json::json!({
                        "last_applied": applied,
                        "resources": t.resources,
                        "last_rejected": rejected,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "mode": s.mode.map(|m| match m { XdsMode::Delta => "delta", XdsMode::Sotw => "sotw" }),
            "servers": s.servers,
            "connected": s.connected.is_some(),
            "server": s.connected,
            "last_error": s.last_error,
            "last_apply_ms": s.last_apply.map(|d| d.as_secs_f64() * 1000.0),
            "types": types,
        })
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_BASE }
    }
}

impl Backoff {
    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_CAP);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// A stream worked: start again from the base delay.
    pub fn reset(&mut self) {
        self.next = BACKOFF_BASE;
    }
}

impl XdsClient {
    pub fn new(config: XdsConfig, metrics: XdsMetrics) -> XdsClient {
        let status = Arc::new(XdsStatus::default());
        {
            let mut s = status.lock();
            s.mode = Some(config.mode);
            s.servers.clone_from(&config.addresses);
        }
        XdsClient {
            engine: Engine::new(config.warming_timeout, Arc::clone(&status), metrics.clone()),
            config,
            status,
            metrics,
        }
    }

    /// What `/xds` shows.
    pub fn status(&self) -> Arc<XdsStatus> {
        Arc::clone(&self.status)
    }

    /// Subscribes and applies updates with `apply` forever, reconnecting when the stream ends.
    /// `apply` gets each snapshot and its `/config_dump` copy (to publish once applied).
    pub async fn run(
        mut self,
        mut apply: impl FnMut(Resources, EncodedResources) -> Result<(), String> + Send,
    ) {
        let mut backoff = Backoff::default();
        let mut attempt = 0usize;
        loop {
            let n = self.config.addresses.len().max(1);
            let address = self
                .config
                .addresses
                .get(attempt % n)
                .cloned()
                .unwrap_or_default();
            attempt += 1;
            let mut progressed = false;
            let result = self.session(&address, &mut apply, &mut progressed).await;
            self.engine.close();
            self.metrics.set_connected(false);
            let Err(error) = result;
            tracing::warn!(server = %address, %error, "xDS stream ended; the last configuration keeps serving");
            self.status
                .connection(None, Some(format!("{address}: {error}")));
            if progressed {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn connect(
        address: &str,
        tls: Option<&crate::ca_client::tls::ControlPlaneTrust>,
    ) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("--xds-address {address:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        match tls {
            Some(trust) => {
                endpoint
                    .connect_with_connector(trust.connector(address)?)
                    .await
            }
            None => endpoint.connect().await,
        }
        .map_err(|e| format!("connect: {}", error_chain(&e)))
    }

    /// One stream, until it fails. `progressed` is set once a response arrived.
    async fn session(
        &mut self,
        address: &str,
        apply: &mut Apply<'_>,
        progressed: &mut bool,
    ) -> Result<std::convert::Infallible, String> {
        let channel = Self::connect(address, self.config.tls.as_ref()).await?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let node = self.config.node.clone();
        match self.config.mode {
            XdsMode::Delta => {
                let (tx, rx) = mpsc::unbounded_channel();
                let mut out = delta::DeltaOutbox::new(tx, node);
                self.engine.open(&mut out);
                let stream = client
                    .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
                    .await
                    .map_err(|s| status_text(&s))?
                    .into_inner();
                self.connected(address);
                self.pump(stream, delta::decode, &mut out, apply, progressed)
                    .await
            }
            XdsMode::Sotw => {
                let (tx, rx) = mpsc::unbounded_channel();
                let mut out = sotw::SotwOutbox::new(tx, node, &self.engine.cache);
                self.engine.open(&mut out);
                let stream = client
                    .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
                    .await
                    .map_err(|s| status_text(&s))?
                    .into_inner();
                self.connected(address);
                self.pump(stream, sotw::decode, &mut out, apply, progressed)
                    .await
            }
        }
    }

    /// Feeds each response of an open stream to the engine (and the warming deadline when it
    /// passes) until the stream fails.
    async fn pump<R>(
        &mut self,
        mut stream: tonic::Streaming<R>,
        decode: fn(R) -> Result<engine::Update, engine::Undecodable>,
        out: &mut dyn Outbox,
        apply: &mut Apply<'_>,
        progressed: &mut bool,
    ) -> Result<std::convert::Infallible, String> {
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                () = sleep_until(self.engine.deadline()) => {
                    self.engine.on_deadline(out, apply);
                    continue;
                }
            };
            let response = message.map_err(|s| status_text(&s))?.ok_or(CLOSED)?;
            *progressed = true;
            match decode(response) {
                Ok(update) => self.engine.on_update(update, out, apply),
                Err(bad) => self.engine.on_undecodable(bad, out),
            }
        }
    }

    fn connected(&self, address: &str) {
        tracing::info!(server = %address, mode = ?self.config.mode, "xDS stream open");
        self.metrics.set_connected(true);
        self.status.connection(Some(address), None);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn status_text(s: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", s.code(), s.message());
    if let Some(source) = std::error::Error::source(s) {
        text.push_str(&format!(" ({})", error_chain(source)));
    }
    text
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_expose_the_gauge_and_per_type_counters_and_pass_promtool() {
        let mut registry = Registry::default();
        let m = XdsMetrics::register(&mut registry);
        m.set_connected(true);
        m.applied(Kind::Cluster);
        m.applied(Kind::Cluster);
        m.rejected(Kind::Listener);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "trellis_proxy_control_plane_connected 1",
            "trellis_proxy_xds_updates_applied_total{type=\"cds\"} 2",
            "trellis_proxy_xds_updates_rejected_total{type=\"lds\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("promtool not found; skipping (apt-get install prometheus)");
            return;
        };
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::default();
        let mut upper = BACKOFF_BASE;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= upper / 2 && d <= upper,
                "{d:?} not in [{:?}, {upper:?}]",
                upper / 2
            );
            upper = (upper * 2).min(BACKOFF_CAP);
        }
        assert_eq!(upper, BACKOFF_CAP);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_BASE);
    }
}
