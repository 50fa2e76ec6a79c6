//! The part of the xDS client both protocol variants share: take a decoded update into the
//! cache, keep the RDS/EDS subscriptions in step with the listeners and clusters held, wait for
//! dependencies (EDS after CDS, RDS after LDS, bounded by the warming timeout), apply the whole
//! snapshot through the caller's `apply`, then ACK every update that went into it — or NACK them
//! all with the runtime's error, roll the cache back and keep the last good config serving.
//! Knows nothing of the wire encoding: requests go out through an [`Outbox`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use trellis_xds::Resources;

use super::cache::{Cache, Entry, Kind};
use super::{XdsMetrics, XdsStatus};
use crate::admin::EncodedResources;

/// Encodes what the engine decides into the protocol's requests.
pub(crate) trait Outbox {
    /// Opens the stream's subscriptions: LDS/CDS wildcard, RDS/EDS `named` (may be empty).
    fn open(&mut self, cache: &Cache, named: &[(Kind, BTreeSet<String>)]);
    /// A response of `kind` arrived (SotW resubscriptions carry the latest nonce).
    fn seen(&mut self, kind: Kind, nonce: &str);
    fn ack(&mut self, kind: Kind, version: &str, nonce: &str);
    fn nack(&mut self, kind: Kind, nonce: &str, error: &str);
    /// The names wanted for `kind` (RDS/EDS) changed from `old` to `new`.
    fn resubscribe(&mut self, kind: Kind, old: &BTreeSet<String>, new: &BTreeSet<String>);
}

/// A decoded response.
#[derive(Debug)]
pub(crate) struct Update {
    pub kind: Kind,
    pub version: String,
    pub nonce: String,
    pub change: Change,
}

#[derive(Debug)]
pub(crate) enum Change {
    /// The complete set of resources of the type (SotW LDS/CDS).
    Replace(Vec<(String, Entry)>),
    /// These resources added or updated, those removed.
    Upsert {
        entries: Vec<(String, Entry)>,
        removed: Vec<String>,
    },
}

/// A response the client could not even decode: NACKed at once, nothing changes.
#[derive(Debug)]
pub(crate) struct Undecodable {
    pub kind: Option<Kind>,
    pub type_url: String,
    pub nonce: String,
    pub error: String,
}

struct Pending {
    kind: Kind,
    version: String,
    nonce: String,
}

/// State that lives across streams: the cache, what is subscribed, what waits to be applied.
pub(crate) struct Engine {
    pub cache: Cache,
    subscribed: [BTreeSet<String>; 2],
    pending: Vec<Pending>,
    warming_since: Option<Instant>,
    received: BTreeSet<Kind>,
    applied_once: bool,
    warming_timeout: Duration,
    status: Arc<XdsStatus>,
    metrics: XdsMetrics,
}

/// Applies a snapshot; the second argument is its `/config_dump` copy, to publish on success.
pub(crate) type Apply<'a> =
    dyn FnMut(Resources, EncodedResources) -> Result<(), String> + Send + 'a;

impl Engine {
    pub fn new(warming_timeout: Duration, status: Arc<XdsStatus>, metrics: XdsMetrics) -> Engine {
        Engine {
            cache: Cache::default(),
            subscribed: Default::default(),
            pending: Vec::new(),
            warming_since: None,
            received: BTreeSet::new(),
            applied_once: false,
            warming_timeout,
            status,
            metrics,
        }
    }

    /// A new stream: subscribe to everything again (the cache says what is already held).
    pub fn open(&mut self, out: &mut dyn Outbox) {
        let named: Vec<(Kind, BTreeSet<String>)> = [Kind::Endpoint, Kind::Route]
            .into_iter()
            .map(|k| (k, self.cache.wanted(k)))
            .collect();
        for (k, names) in &named {
            self.subscribed[slot(*k)].clone_from(names);
        }
        out.open(&self.cache, &named);
    }

    /// The stream ended: what was received but not applied is forgotten (the next stream asks
    /// for it again).
    pub fn close(&mut self) {
        if !self.pending.is_empty() {
            self.pending.clear();
            self.warming_since = None;
            self.cache.rollback();
        }
    }

    /// When the engine wants [`Engine::on_deadline`] called: the warming timeout of what waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.warming_since.map(|t| t + self.warming_timeout)
    }

    pub fn on_deadline(&mut self, out: &mut dyn Outbox, apply: &mut Apply<'_>) {
        self.settle(true, out, apply);
    }

    pub fn on_undecodable(&mut self, bad: Undecodable, out: &mut dyn Outbox) {
        tracing::warn!(type_url = %bad.type_url, nonce = %bad.nonce, error = %bad.error, "xDS response rejected");
        if let Some(kind) = bad.kind {
            out.seen(kind, &bad.nonce);
            out.nack(kind, &bad.nonce, &bad.error);
            self.status.rejected(kind, "", &bad.nonce, &bad.error);
            self.metrics.rejected(kind);
        }
    }

    pub fn on_update(&mut self, update: Update, out: &mut dyn Outbox, apply: &mut Apply<'_>) {
        let Update {
            kind,
            version,
            nonce,
            change,
        } = update;
        out.seen(kind, &nonce);
        match change {
            Change::Replace(entries) => self.cache.replace(kind, entries),
            Change::Upsert { entries, removed } => self.cache.upsert(kind, entries, &removed),
        }
        self.cache.forget_unwanted();
        self.received.insert(kind);
        self.resubscribe(out);
        self.pending.push(Pending {
            kind,
            version,
            nonce,
        });
        if self.warming_since.is_none() {
            self.warming_since = Some(Instant::now());
        }
        self.settle(false, out, apply);
    }

    fn resubscribe(&mut self, out: &mut dyn Outbox) {
        for kind in [Kind::Endpoint, Kind::Route] {
            let wanted = self.cache.wanted(kind);
            let old = &mut self.subscribed[slot(kind)];
            if *old != wanted {
                out.resubscribe(kind, old, &wanted);
                *old = wanted;
            }
        }
    }

    /// What still keeps the pending updates from being applied (empty: ready).
    fn waiting_for(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .cache
            .missing()
            .into_iter()
            .map(|(k, n)| format!("{} {n:?}", k.short()))
            .collect();
        if !self.applied_once {
            for kind in [Kind::Cluster, Kind::Listener] {
                if !self.received.contains(&kind) {
                    out.push(format!("the first {} response", kind.short()));
                }
            }
        }
        out
    }

    fn settle(&mut self, timed_out: bool, out: &mut dyn Outbox, apply: &mut Apply<'_>) {
        if self.pending.is_empty() {
            self.warming_since = None;
            return;
        }
        let waiting = self.waiting_for();
        if !waiting.is_empty() {
            if !timed_out {
                return;
            }
            tracing::warn!(
                waiting = %waiting.join(", "),
                timeout = ?self.warming_timeout,
                "xDS warming timed out; applying without them"
            );
        }
        self.warming_since = None;
        let pending = std::mem::take(&mut self.pending);
        let started = std::time::Instant::now();
        let [clusters, endpoints, listeners, routes] = self.cache.pack();
        let result = self.cache.assemble().and_then(|res| {
            let version = res.version.clone();
            let dump = EncodedResources::from_encoded(
                version.clone(),
                listeners,
                routes,
                clusters,
                endpoints,
            );
            apply(res, dump).map(|()| version)
        });
        let took = started.elapsed();
        match result {
            Ok(version) => {
                self.cache.commit();
                self.applied_once = true;
                self.status.apply_took(took);
                tracing::info!(%version, updates = pending.len(), ?took, "applied xDS configuration");
                for p in &pending {
                    out.ack(p.kind, &p.version, &p.nonce);
                    let held = self.cache.get(p.kind).len();
                    self.status.applied(p.kind, &p.version, &p.nonce, held);
                    self.metrics.applied(p.kind);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "xDS update rejected; the last good configuration keeps serving");
                for p in &pending {
                    out.nack(p.kind, &p.nonce, &error);
                    self.status.rejected(p.kind, &p.version, &p.nonce, &error);
                    self.metrics.rejected(p.kind);
                }
                self.cache.rollback();
                self.resubscribe(out);
            }
        }
    }
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Endpoint => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, LbPolicy,
    };
    use envoy_types::util::pack_any;
    use trellis_xds::{Cluster, ClusterLoadAssignment};

    /// Records what the engine sends.
    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl Outbox for Recorder {
        fn open(&mut self, _: &Cache, named: &[(Kind, BTreeSet<String>)]) {
            self.0.push(format!("open {named:?}"));
        }
        fn seen(&mut self, _: Kind, _: &str) {}
        fn ack(&mut self, kind: Kind, version: &str, nonce: &str) {
            self.0
                .push(format!("ack {} {version} {nonce}", kind.short()));
        }
        fn nack(&mut self, kind: Kind, nonce: &str, error: &str) {
            self.0
                .push(format!("nack {} {nonce} {error}", kind.short()));
        }
        fn resubscribe(&mut self, kind: Kind, _: &BTreeSet<String>, new: &BTreeSet<String>) {
            self.0.push(format!("sub {} {new:?}", kind.short()));
        }
    }

    fn engine() -> Engine {
        Engine::new(
            Duration::from_secs(2),
            Arc::default(),
            XdsMetrics::default(),
        )
    }

    fn clusters(nonce: &str, lb: LbPolicy) -> Update {
        let c = Cluster {
            name: "c".into(),
            lb_policy: lb as i32,
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        };
        Update {
            kind: Kind::Cluster,
            version: format!("v{nonce}"),
            nonce: nonce.into(),
            change: Change::Replace(vec![
                Kind::Cluster.decode(0, &pack_any(c), None, "1").unwrap(),
            ]),
        }
    }

    fn endpoints(nonce: &str) -> Update {
        let cla = ClusterLoadAssignment {
            cluster_name: "c".into(),
            ..Default::default()
        };
        Update {
            kind: Kind::Endpoint,
            version: format!("v{nonce}"),
            nonce: nonce.into(),
            change: Change::Upsert {
                entries: vec![Kind::Endpoint.decode(0, &pack_any(cla), None, "1").unwrap()],
                removed: Vec::new(),
            },
        }
    }

    fn listeners(nonce: &str) -> Update {
        Update {
            kind: Kind::Listener,
            version: format!("v{nonce}"),
            nonce: nonce.into(),
            change: Change::Replace(Vec::new()),
        }
    }

    /// Counts applies; fails those whose clusters use MAGLEV (as the runtime does).
    fn applier(
        applied: &mut Vec<usize>,
    ) -> impl FnMut(Resources, EncodedResources) -> Result<(), String> + Send + '_ {
        move |res: Resources, dump: EncodedResources| {
            assert_eq!(
                dump.decode().unwrap(),
                res,
                "the dump shows what is applied"
            );
            if res
                .clusters
                .iter()
                .any(|c| c.lb_policy == LbPolicy::Maglev as i32)
            {
                return Err("cluster \"c\": lb_policy: not supported".into());
            }
            applied.push(res.clusters.len());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn eds_waits_for_cds_and_both_are_acked_after_one_apply() {
        let (mut e, mut out, mut applied) = (engine(), Recorder::default(), Vec::new());
        let mut apply = applier(&mut applied);
        e.on_update(listeners("1"), &mut out, &mut apply);
        e.on_update(clusters("2", LbPolicy::RoundRobin), &mut out, &mut apply);
        assert_eq!(
            out.0,
            ["sub eds {\"c\"}"],
            "EDS requested, nothing ACKed yet"
        );
        e.on_update(endpoints("3"), &mut out, &mut apply);
        assert_eq!(out.0[1..], ["ack lds v1 1", "ack cds v2 2", "ack eds v3 3"]);
        drop(apply);
        assert_eq!(applied, [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_eds_is_applied_without_after_the_warming_timeout() {
        let (mut e, mut out, mut applied) = (engine(), Recorder::default(), Vec::new());
        let mut apply = applier(&mut applied);
        e.on_update(listeners("1"), &mut out, &mut apply);
        e.on_update(clusters("2", LbPolicy::RoundRobin), &mut out, &mut apply);
        let deadline = e.deadline().expect("warming");
        assert_eq!(deadline - Instant::now(), Duration::from_secs(2));
        tokio::time::sleep_until(deadline).await;
        e.on_deadline(&mut out, &mut apply);
        assert_eq!(out.0[1..], ["ack lds v1 1", "ack cds v2 2"]);
        assert_eq!(e.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_update_is_nacked_and_rolled_back() {
        let (mut e, mut out, mut applied) = (engine(), Recorder::default(), Vec::new());
        let mut apply = applier(&mut applied);
        e.on_update(listeners("1"), &mut out, &mut apply);
        e.on_update(clusters("2", LbPolicy::RoundRobin), &mut out, &mut apply);
        e.on_update(endpoints("3"), &mut out, &mut apply);
        let good = e.cache.version();
        out.0.clear();
        e.on_update(clusters("4", LbPolicy::Maglev), &mut out, &mut apply);
        assert_eq!(
            out.0,
            ["nack cds 4 cluster \"c\": lb_policy: not supported"]
        );
        assert_eq!(e.cache.version(), good, "rolled back to what serves");
        // The next good update applies on top of the last good state.
        e.on_update(clusters("5", LbPolicy::Random), &mut out, &mut apply);
        assert_eq!(out.0[1..], ["ack cds v5 5"]);
        let status = e.status.to_json();
        assert_eq!(status["types"]["cds"]["last_applied"]["version"], "v5");
        assert_eq!(status["types"]["cds"]["last_rejected"]["nonce"], "4");
        drop(apply);
        assert_eq!(applied, [1, 1]);
    }
}
