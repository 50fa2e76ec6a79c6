//! What the xDS server knows about every connected proxy (per type: last sent version and
//! nonce, last ACKed version, last NACK error; SYNCED / STALE / NACKED) and its metrics.
//!
//! Must not hold its lock across an await: streams update it synchronously after each send
//! or request.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::snapshot::Kind;

type TypeLabel = [(&'static str, &'static str); 1];
type HistogramFamily = Family<TypeLabel, Histogram, fn() -> Histogram>;

/// Every connected proxy's status, and the server's metrics.
pub struct StatusBoard {
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    metrics: Metrics,
}

/// One connected stream.
#[derive(Debug, Clone)]
struct ProxyStatus {
    id: String,
    /// `sotw` or `delta`.
    mode: &'static str,
    role: &'static str,
    namespace: String,
    types: BTreeMap<Kind, TypeStatus>,
}

#[derive(Debug, Clone, Default)]
struct TypeStatus {
    sent_version: String,
    sent_nonce: String,
    /// Resources in the last response (delta: changed ones; removals counted apart).
    sent_resources: usize,
    /// When the configuration behind the last response was accepted (for convergence time).
    sent_accepted_at: Option<Instant>,
    acked_version: String,
    acked_nonce: String,
    nack_nonce: String,
    nack_error: String,
}

/// One response handed to a stream.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub version: &'a str,
    pub nonce: &'a str,
    /// Resources carried (delta: updated plus removed).
    pub resources: usize,
    /// Encoded size of the response.
    pub bytes: usize,
    /// When its configuration was accepted and released by the debounce, if a configuration
    /// change caused it (push time and convergence are measured for those only).
    pub pushed: Option<(Instant, Instant)>,
}

/// How one type of one proxy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncState {
    /// Everything sent was ACKed.
    Synced,
    /// A response is waiting for its ACK.
    Stale,
    /// The last response was rejected; the proxy keeps its previous config.
    Nacked,
}

struct Metrics {
    registry: Registry,
    pushes: Family<TypeLabel, Counter>,
    push_time: HistogramFamily,
    sent_bytes: Family<TypeLabel, Counter>,
    rejects: Family<TypeLabel, Counter>,
    connected: Gauge,
    convergence: Histogram,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::Nacked => "NACKED",
        }
    }
}

impl TypeStatus {
    fn state(&self) -> SyncState {
        if !self.nack_nonce.is_empty() && self.nack_nonce == self.sent_nonce {
            SyncState::Nacked
        } else if self.acked_nonce == self.sent_nonce {
            SyncState::Synced
        } else {
            SyncState::Stale
        }
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let pushes = Family::<TypeLabel, Counter>::default();
        let push_time = HistogramFamily::new_with_constructor(latency_histogram);
        let sent_bytes = Family::<TypeLabel, Counter>::default();
        let rejects = Family::<TypeLabel, Counter>::default();
        let connected = Gauge::default();
        let convergence = latency_histogram();
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type (cds, eds, lds, rds)",
            pushes.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Seconds from a debounced configuration to its response being sent, by type",
            push_time.clone(),
        );
        registry.register(
            "pilot_xds_sent_bytes",
            "Bytes of xDS responses sent (protobuf encoded), by type",
            sent_bytes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses rejected (NACKed) by proxies, by type",
            rejects.clone(),
        );
        registry.register("pilot_xds", "Connected xDS streams", connected.clone());
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a configuration change reaching the server to the proxy's ACK",
            convergence.clone(),
        );
        Metrics {
            registry,
            pushes,
            push_time,
            sent_bytes,
            rejects,
            connected,
            convergence,
        }
    }
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            proxies: Mutex::new(BTreeMap::new()),
            metrics: Metrics::new(),
        }
    }
}

impl StatusBoard {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<u64, ProxyStatus>) -> R) -> R {
        let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut proxies)
    }

    fn with_type(&self, conn: u64, kind: Kind, f: impl FnOnce(&mut TypeStatus)) {
        self.with(|p| {
            if let Some(proxy) = p.get_mut(&conn) {
                f(proxy.types.entry(kind).or_default());
            }
        });
    }

    pub fn connect(&self, conn: u64, identity: &trellis_xds::ProxyIdentity, mode: &'static str) {
        let role = match identity.role {
            trellis_xds::Role::Gateway => "gateway",
            trellis_xds::Role::Sidecar => "sidecar",
            trellis_xds::Role::Proxyless => "proxyless",
        };
        self.with(|p| {
            p.insert(
                conn,
                ProxyStatus {
                    id: identity.id.clone(),
                    mode,
                    role,
                    namespace: identity.namespace.clone(),
                    types: BTreeMap::new(),
                },
            )
        });
        self.metrics.connected.inc();
    }

    pub fn disconnect(&self, conn: u64) {
        if self.with(|p| p.remove(&conn)).is_some() {
            self.metrics.connected.dec();
        }
    }

    /// A response was handed to the stream: `pushed` holds when its configuration was accepted
    /// and released by the debounce if a configuration change caused it (push time and
    /// convergence are measured for those only, not for answers to requests).
    pub fn sent(&self, conn: u64, kind: Kind, sent: Sent<'_>) {
        let label = [("type", kind.short())];
        self.metrics.pushes.get_or_create(&label).inc();
        self.metrics
            .sent_bytes
            .get_or_create(&label)
            .inc_by(sent.bytes as u64);
        if let Some((_, published_at)) = sent.pushed {
            self.metrics
                .push_time
                .get_or_create(&label)
                .observe(published_at.elapsed().as_secs_f64());
        }
        self.with_type(conn, kind, |t| {
            t.sent_version = sent.version.to_string();
            t.sent_nonce = sent.nonce.to_string();
            t.sent_resources = sent.resources;
            t.sent_accepted_at = sent.pushed.map(|(accepted_at, _)| accepted_at);
        });
    }

    /// The proxy ACKed `nonce` (carrying `version`).
    pub fn acked(&self, conn: u64, kind: Kind, version: &str, nonce: &str) {
        let mut converged = None;
        self.with_type(conn, kind, |t| {
            if t.acked_nonce != nonce {
                if nonce == t.sent_nonce {
                    converged = t.sent_accepted_at.map(|a| a.elapsed());
                }
                // Delta ACKs carry no version: the one sent with the nonce is the one applied.
                t.acked_version = if version.is_empty() && nonce == t.sent_nonce {
                    t.sent_version.clone()
                } else {
                    version.to_string()
                };
                t.acked_nonce = nonce.to_string();
            }
        });
        if let Some(elapsed) = converged {
            self.metrics.convergence.observe(elapsed.as_secs_f64());
        }
    }

    /// The proxy rejected `nonce` with `error`.
    pub fn nacked(&self, conn: u64, kind: Kind, nonce: &str, error: &str) {
        self.metrics
            .rejects
            .get_or_create(&[("type", kind.short())])
            .inc();
        self.with_type(conn, kind, |t| {
            t.nack_nonce = nonce.to_string();
            t.nack_error = error.to_string();
        });
    }

    /// Per proxy and per type, as served by `/debug/proxy-status`.
    pub fn to_json(&self) -> Value {
        let proxies: Vec<Value> = self.with(|p| {
            p.iter()
                .map(|(conn, proxy)| {
                    let mut overall = SyncState::Synced;
                    let types: serde_json::Map<String, Value> = proxy
                        .types
                        .iter()
                        .map(|(kind, t)| {
                            let state = t.state();
                            overall = overall.max(state);
                            (
                                kind.short().to_string(),
                                json!({
                                    "state": state.as_str(),
                                    "sent_version": t.sent_version,
                                    "sent_nonce": t.sent_nonce,
                                    "sent_resources": t.sent_resources,
                                    "acked_version": t.acked_version,
                                    "nack_error": t.nack_error,
                                }),
                            )
                        })
                        .collect();
                    json!({
                        "id": proxy.id,
                        "connection": conn,
                        "mode": proxy.mode,
                        "role": proxy.role,
                        "namespace": proxy.namespace,
                        "state": overall.as_str(),
                        "types": types,
                    })
                })
                .collect()
        });
        json!({ "proxies": proxies })
    }

    pub fn encode_metrics(&self, out: &mut String) {
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(out, &self.metrics.registry)
        {
            tracing::error!(error = %e, "encoding xDS metrics");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_sends_acks_and_nacks() {
        let board = StatusBoard::default();
        let id = trellis_xds::ProxyIdentity {
            id: "gw-1".into(),
            ..Default::default()
        };
        board.connect(7, &id, "sotw");
        let now = Instant::now();
        let sent = |version, nonce, pushed| Sent {
            version,
            nonce,
            resources: 2,
            bytes: 100,
            pushed,
        };
        board.sent(7, Kind::Cluster, sent("v1", "n1", Some((now, now))));
        let state = |b: &StatusBoard| b.to_json()["proxies"][0]["types"]["cds"]["state"].clone();
        assert_eq!(state(&board), "STALE");
        board.acked(7, Kind::Cluster, "v1", "n1");
        assert_eq!(state(&board), "SYNCED");
        board.sent(7, Kind::Cluster, sent("v2", "n2", None));
        board.nacked(7, Kind::Cluster, "n2", "bad cluster");
        let json = board.to_json();
        assert_eq!(json["proxies"][0]["state"], "NACKED");
        assert_eq!(
            json["proxies"][0]["types"]["cds"]["nack_error"],
            "bad cluster"
        );
        assert_eq!(json["proxies"][0]["types"]["cds"]["acked_version"], "v1");
        let mut text = String::new();
        board.encode_metrics(&mut text);
        assert!(
            text.contains("pilot_total_xds_rejects_total{type=\"cds\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pilot_xds_sent_bytes_total{type=\"cds\"} 200"),
            "{text}"
        );
        assert!(text.contains("pilot_xds 1"), "{text}");
        // Appended to the API's other metrics, so no OpenMetrics `# EOF` terminator.
        assert!(!text.contains("# EOF"), "{text}");
        board.disconnect(7);
        assert_eq!(board.to_json()["proxies"].as_array().unwrap().len(), 0);
    }
}
