//! `xds_load`: opens many ADS streams to `trellis control` on loopback, subscribes like Envoy
//! (LDS and CDS wildcard, RDS and EDS by the names the listeners and clusters carry), ACKs every
//! response, and measures how long one configuration change takes to reach every client.
//!
//! ```text
//! cargo run --release -p trellis-control --example xds_load -- \
//!   --xds 127.0.0.1:15010 --clients 2000 --mode delta \
//!   [--identities 1] [--streams-per-conn 1] [--ramp 50] [--role sidecar|gateway] \
//!   [--server-pid PID] [--metrics-url URL] [--timeout-secs 120] \
//!   --change 'LABEL=TYPE:MARKER:SHELL COMMAND' ...
//! ```
//!
//! Every client has its own node id; `--identities K` gives clients K distinct workload labels
//! (`app: load-<i % K>`), so the server compiles K times per revision; with 1 they all share
//! one compilation. `--streams-per-conn S` puts S streams on each HTTP/2 connection (1: one
//! connection per client, as a fleet of Envoys has). `--ramp R`: at most R clients are in their
//! initial sync at once.
//!
//! Once every client holds a complete, ACKed configuration, each `--change` runs in turn: the
//! clock starts, `SHELL COMMAND` runs (`sh -c`), and each client notes when it receives the
//! first response of `TYPE` (`cds`, `eds`, `lds`, `rds`) carrying a resource whose encoded bytes
//! contain `MARKER`, and when its ACK of that response was handed to its stream. Prints one
//! `key=value` line per change: received-and-ACKed latency p50/p99/max over all clients, bytes
//! the clients received during the change, the server's `pilot_xds_sent_bytes_total` growth
//! (with `--metrics-url`) and the server's RSS per connected proxy (with `--server-pid`).
//!
//! Loopback only, bounded in time: every wait ends after `--timeout-secs`. Each connection is a
//! file descriptor on both sides: raise `ulimit -n` above the connection count first.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use trellis_xds::{ProxyIdentity, Role};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

#[derive(Debug, Clone)]
struct Args {
    xds: String,
    clients: usize,
    delta: bool,
    identities: usize,
    streams_per_conn: usize,
    ramp: usize,
    role: Role,
    server_pid: Option<u32>,
    metrics_url: Option<String>,
    timeout: Duration,
    changes: Vec<Change>,
}

#[derive(Debug, Clone)]
struct Change {
    label: String,
    type_url: &'static str,
    marker: Vec<u8>,
    command: String,
}

/// The change being measured, as every client sees it.
struct Armed {
    index: usize,
    type_url: &'static str,
    marker: Vec<u8>,
    start: Instant,
}

/// When a change reached one client: (received, ACKed), since the change started.
type Mark = (Duration, Duration);

/// What the clients report to the main task.
struct Shared {
    synced: AtomicUsize,
    failed: AtomicUsize,
    received_bytes: AtomicU64,
    /// Per change, per client: (received, ACKed) since the change started.
    marks: Mutex<Vec<Vec<Option<Mark>>>>,
    armed: watch::Receiver<Option<Arc<Armed>>>,
}

/// What one client subscribed to and has received, for one type.
#[derive(Default)]
struct TypeState {
    names: BTreeSet<String>,
    received: BTreeSet<String>,
    acked: bool,
    /// SotW: the version and nonce of the last response (sent back with every request).
    version: String,
    nonce: String,
}

/// One client's view of its stream.
#[derive(Default)]
struct ClientState {
    types: [TypeState; 4],
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (arm, armed) = watch::channel(None);
    let shared = Arc::new(Shared {
        synced: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        received_bytes: AtomicU64::new(0),
        marks: Mutex::new(vec![vec![None; args.clients]; args.changes.len()]),
        armed,
    });
    let ramp = Arc::new(Semaphore::new(args.ramp.max(1)));
    let started = Instant::now();
    let mut channel: Option<Channel> = None;
    for i in 0..args.clients {
        if i % args.streams_per_conn.max(1) == 0 {
            channel = Some(connect(&args.xds).await?);
        }
        let channel = channel
            .clone()
            .expect("a channel is opened for the first client");
        let permit = ramp.clone().acquire_owned().await?;
        let node = identity(&args, i).to_node();
        let (shared, delta) = (shared.clone(), args.delta);
        tokio::spawn(async move {
            let result = client(i, channel, node, delta, shared.clone(), permit).await;
            if let Err(e) = result
                && shared.failed.fetch_add(1, Ordering::Relaxed) < 5
            {
                eprintln!("client {i}: {e}");
            }
        });
    }
    let deadline = Instant::now() + args.timeout;
    while shared.synced.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < args.clients
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} clients synced within {:?}",
            shared.synced.load(Ordering::Relaxed),
            args.clients,
            args.timeout
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = shared.failed.load(Ordering::Relaxed);
    println!(
        "synced clients={} failed={failed} mode={} identities={} streams_per_conn={} seconds={:.1} received_bytes={}{}",
        args.clients - failed,
        mode(&args),
        args.identities,
        args.streams_per_conn,
        started.elapsed().as_secs_f64(),
        shared.received_bytes.load(Ordering::Relaxed),
        rss(&args, args.clients - failed),
    );
    anyhow::ensure!(failed == 0, "{failed} clients failed");
    // Let the last ACKs land before the first change.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (index, change) in args.changes.iter().enumerate() {
        measure(&args, &shared, &arm, index, change).await?;
    }
    Ok(())
}

/// Runs one change and prints its numbers.
async fn measure(
    args: &Args,
    shared: &Shared,
    arm: &watch::Sender<Option<Arc<Armed>>>,
    index: usize,
    change: &Change,
) -> anyhow::Result<()> {
    let sent_before = server_sent_bytes(args).await;
    let received_before = shared.received_bytes.load(Ordering::Relaxed);
    let start = Instant::now();
    arm.send_replace(Some(Arc::new(Armed {
        index,
        type_url: change.type_url,
        marker: change.marker.clone(),
        start,
    })));
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&change.command)
        .status()
        .await?;
    anyhow::ensure!(
        status.success(),
        "change {}: command failed: {status}",
        change.label
    );
    let command_done = start.elapsed();
    let deadline = start + args.timeout;
    let count = || {
        let marks = shared.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks[index].iter().filter(|m| m.is_some()).count()
    };
    while count() < args.clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Responses of other types the change caused (and stragglers) finish within this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = shared.received_bytes.load(Ordering::Relaxed) - received_before;
    let sent = match (sent_before, server_sent_bytes(args).await) {
        (Some(a), Some(b)) => format!(" server_sent_bytes={}", b.saturating_sub(a)),
        _ => String::new(),
    };
    let marks = shared.marks.lock().unwrap_or_else(|e| e.into_inner())[index].clone();
    let mut acked: Vec<Duration> = marks.iter().flatten().map(|m| m.1).collect();
    let mut got: Vec<Duration> = marks.iter().flatten().map(|m| m.0).collect();
    acked.sort();
    got.sort();
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let pct = |v: &[Duration], p: f64| {
        ms(v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1)))
    };
    println!(
        "change={} mode={} clients={} reached={} command_ms={:.0} ack_p50_ms={:.0} ack_p99_ms={:.0} ack_max_ms={:.0} recv_p50_ms={:.0} recv_p99_ms={:.0} client_received_bytes={received} received_bytes_per_client={}{sent}{}",
        change.label,
        mode(args),
        args.clients,
        acked.len(),
        command_done.as_secs_f64() * 1000.0,
        pct(&acked, 0.50),
        pct(&acked, 0.99),
        ms(acked.last()),
        pct(&got, 0.50),
        pct(&got, 0.99),
        received / args.clients.max(1) as u64,
        rss(args, args.clients),
    );
    Ok(())
}

fn mode(args: &Args) -> &'static str {
    if args.delta { "delta" } else { "sotw" }
}

/// The `trellis control` process's resident and peak memory, and the resident memory per proxy.
fn rss(args: &Args, proxies: usize) -> String {
    let Some(pid) = args.server_pid else {
        return String::new();
    };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return String::new();
    };
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (rss, hwm) = (field("VmRSS:"), field("VmHWM:"));
    format!(
        " server_rss_kb={rss} server_hwm_kb={hwm} rss_kb_per_proxy={:.0} hwm_kb_per_proxy={:.0}",
        rss as f64 / proxies.max(1) as f64,
        hwm as f64 / proxies.max(1) as f64
    )
}

/// The sum of the server's `pilot_xds_sent_bytes_total` over types (fetched with curl).
async fn server_sent_bytes(args: &Args) -> Option<u64> {
    let url = args.metrics_url.as_ref()?;
    let out = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", url])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter(|l| l.starts_with("pilot_xds_sent_bytes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .connect()
        .await?)
}

fn identity(args: &Args, i: usize) -> ProxyIdentity {
    ProxyIdentity {
        id: format!("load-{i}.default"),
        role: args.role,
        namespace: "default".into(),
        labels: [(
            "app".to_string(),
            format!("load-{}", i % args.identities.max(1)),
        )]
        .into_iter()
        .chain(
            (args.role == Role::Gateway)
                .then(|| ("istio".to_string(), "ingressgateway".to_string())),
        )
        .collect(),
        bind_address: "127.0.0.1".into(),
        ..Default::default()
    }
}

/// One client: subscribes, ACKs every response, asks for the RDS and EDS names its listeners
/// and clusters carry, reports when it is synced and when the armed change reached it.
async fn client(
    i: usize,
    channel: Channel,
    node: envoy_types::pb::envoy::config::core::v3::Node,
    delta: bool,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut ads = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let mut state = ClientState::default();
    let mut permit = Some(permit);
    let mut armed = shared.armed.clone();
    // Envoy's order: CDS then LDS first; EDS and RDS follow from their contents.
    if delta {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        for (n, type_url) in [CDS, LDS].into_iter().enumerate() {
            tx.send(DeltaDiscoveryRequest {
                node: (n == 0).then(|| node.clone()),
                type_url: type_url.into(),
                ..Default::default()
            })
            .await?;
        }
        let mut responses = ads
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        while let Some(resp) = responses.message().await? {
            let received_at = Instant::now();
            shared
                .received_bytes
                .fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
            let slot = slot(&resp.type_url)?;
            let mark = hit(&mut armed, &resp.type_url, || {
                resp.resources.iter().filter_map(|r| r.resource.as_ref())
            });
            let t = &mut state.types[slot];
            for r in &resp.resources {
                t.received.insert(r.name.clone());
            }
            for name in &resp.removed_resources {
                t.received.remove(name);
            }
            t.acked = true;
            tx.send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await?;
            record(&shared, i, mark, received_at);
            let wanted = dependencies(
                slot,
                resp.resources.iter().filter_map(|r| r.resource.as_ref()),
            );
            if let Some((dep, names)) = wanted {
                let t = &mut state.types[dep];
                let subscribe: Vec<String> = names.difference(&t.names).cloned().collect();
                if !subscribe.is_empty() {
                    t.names.extend(subscribe.iter().cloned());
                    tx.send(DeltaDiscoveryRequest {
                        type_url: [CDS, EDS, LDS, RDS][dep].into(),
                        resource_names_subscribe: subscribe,
                        ..Default::default()
                    })
                    .await?;
                }
            }
            check_synced(&state, &shared, &mut permit);
        }
    } else {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        for (n, type_url) in [CDS, LDS].into_iter().enumerate() {
            tx.send(DiscoveryRequest {
                node: (n == 0).then(|| node.clone()),
                type_url: type_url.into(),
                ..Default::default()
            })
            .await?;
        }
        let mut responses = ads
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        while let Some(resp) = responses.message().await? {
            let received_at = Instant::now();
            shared
                .received_bytes
                .fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
            let slot = slot(&resp.type_url)?;
            let mark = hit(&mut armed, &resp.type_url, || resp.resources.iter());
            let t = &mut state.types[slot];
            if slot == 0 || slot == 2 {
                t.received.clear();
            }
            for any in &resp.resources {
                t.received.insert(resource_name(slot, any));
            }
            t.acked = true;
            t.version = resp.version_info.clone();
            t.nonce = resp.nonce.clone();
            tx.send(DiscoveryRequest {
                type_url: resp.type_url.clone(),
                version_info: resp.version_info.clone(),
                response_nonce: resp.nonce.clone(),
                resource_names: t.names.iter().cloned().collect(),
                ..Default::default()
            })
            .await?;
            record(&shared, i, mark, received_at);
            if let Some((dep, names)) = dependencies(slot, resp.resources.iter()) {
                let t = &mut state.types[dep];
                if names != t.names {
                    t.names = names;
                    t.received.retain(|n| t.names.contains(n));
                    tx.send(DiscoveryRequest {
                        type_url: [CDS, EDS, LDS, RDS][dep].into(),
                        version_info: t.version.clone(),
                        response_nonce: t.nonce.clone(),
                        resource_names: t.names.iter().cloned().collect(),
                        ..Default::default()
                    })
                    .await?;
                }
            }
            check_synced(&state, &shared, &mut permit);
        }
    }
    anyhow::bail!("the server closed the stream")
}

fn slot(type_url: &str) -> anyhow::Result<usize> {
    [CDS, EDS, LDS, RDS]
        .iter()
        .position(|t| *t == type_url)
        .ok_or_else(|| anyhow::anyhow!("unexpected type {type_url}"))
}

/// Whether this response is the armed change (a resource of the armed type holding the marker).
fn hit<'a, I: Iterator<Item = &'a Any>>(
    armed: &mut watch::Receiver<Option<Arc<Armed>>>,
    type_url: &str,
    resources: impl FnOnce() -> I,
) -> Option<Arc<Armed>> {
    let armed = armed.borrow().clone()?;
    if armed.type_url != type_url {
        return None;
    }
    resources()
        .any(|any| contains(&any.value, &armed.marker))
        .then_some(armed)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(at, _)| haystack[at + 1..].starts_with(rest))
}

/// Notes the first response of the armed change this client received and ACKed.
fn record(shared: &Shared, i: usize, armed: Option<Arc<Armed>>, received_at: Instant) {
    let Some(armed) = armed else { return };
    let acked = armed.start.elapsed();
    let mut marks = shared.marks.lock().unwrap_or_else(|e| e.into_inner());
    let slot = &mut marks[armed.index][i];
    if slot.is_none() {
        *slot = Some((received_at.saturating_duration_since(armed.start), acked));
    }
}

/// The EDS names of EDS clusters (a CDS response) or the RDS names of HTTP connection managers
/// (an LDS response): `(slot of the dependent type, names)`.
fn dependencies<'a>(
    slot: usize,
    resources: impl Iterator<Item = &'a Any>,
) -> Option<(usize, BTreeSet<String>)> {
    let mut names = BTreeSet::new();
    match slot {
        0 => {
            for any in resources {
                let Ok(c) = Cluster::decode(any.value.as_slice()) else {
                    continue;
                };
                if c.cluster_discovery_type
                    == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
                {
                    let service = c
                        .eds_cluster_config
                        .map(|e| e.service_name)
                        .unwrap_or_default();
                    names.insert(if service.is_empty() { c.name } else { service });
                }
            }
            Some((1, names))
        }
        2 => {
            for any in resources {
                let Ok(l) = Listener::decode(any.value.as_slice()) else {
                    continue;
                };
                for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
                    if let Some(ConfigType::TypedConfig(any)) = &f.config_type
                        && let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                        && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                    {
                        names.insert(rds.route_config_name);
                    }
                }
            }
            Some((3, names))
        }
        _ => None,
    }
}

fn resource_name(slot: usize, any: &Any) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Head {
        #[prost(string, tag = "1")]
        name: String,
    }
    let _ = slot; // Cluster, ClusterLoadAssignment, Listener and RouteConfiguration: field 1.
    Head::decode(any.value.as_slice())
        .map(|h| h.name)
        .unwrap_or_default()
}

/// Synced: every type answered and ACKed, and every RDS and EDS name received.
fn check_synced(
    state: &ClientState,
    shared: &Shared,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) {
    if permit.is_none() {
        return;
    }
    let [cds, eds, lds, rds] = &state.types;
    let complete =
        |t: &TypeState| (t.acked || t.names.is_empty()) && t.names.is_subset(&t.received);
    if cds.acked && lds.acked && complete(eds) && complete(rds) {
        *permit = None;
        shared.synced.fetch_add(1, Ordering::Relaxed);
    }
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        xds: "127.0.0.1:15010".into(),
        clients: 100,
        delta: true,
        identities: 1,
        streams_per_conn: 1,
        ramp: 50,
        role: Role::Sidecar,
        server_pid: None,
        metrics_url: None,
        timeout: Duration::from_secs(120),
        changes: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--xds" => args.xds = value()?,
            "--clients" => args.clients = value()?.parse()?,
            "--mode" => {
                args.delta = match value()?.as_str() {
                    "delta" => true,
                    "sotw" => false,
                    other => anyhow::bail!("--mode {other:?}: expected delta or sotw"),
                }
            }
            "--identities" => args.identities = value()?.parse()?,
            "--streams-per-conn" => args.streams_per_conn = value()?.parse()?,
            "--ramp" => args.ramp = value()?.parse()?,
            "--role" => {
                args.role = match value()?.as_str() {
                    "sidecar" => Role::Sidecar,
                    "gateway" => Role::Gateway,
                    other => anyhow::bail!("--role {other:?}: expected sidecar or gateway"),
                }
            }
            "--server-pid" => args.server_pid = Some(value()?.parse()?),
            "--metrics-url" => args.metrics_url = Some(value()?),
            "--timeout-secs" => args.timeout = Duration::from_secs(value()?.parse()?),
            "--change" => args.changes.push(parse_change(&value()?)?),
            other => anyhow::bail!("unknown flag {other:?} (see the top of examples/xds_load.rs)"),
        }
    }
    anyhow::ensure!(
        args.xds.starts_with("127.") || args.xds.starts_with("localhost:"),
        "--xds {}: loopback addresses only",
        args.xds
    );
    Ok(args)
}

/// `LABEL=TYPE:MARKER:COMMAND`.
fn parse_change(spec: &str) -> anyhow::Result<Change> {
    let err = || anyhow::anyhow!("--change {spec:?}: expected LABEL=TYPE:MARKER:COMMAND");
    let (label, rest) = spec.split_once('=').ok_or_else(err)?;
    let mut parts = rest.splitn(3, ':');
    let (kind, marker, command) = (
        parts.next().ok_or_else(err)?,
        parts.next().ok_or_else(err)?,
        parts.next().ok_or_else(err)?,
    );
    let type_url = match kind {
        "cds" => CDS,
        "eds" => EDS,
        "lds" => LDS,
        "rds" => RDS,
        other => anyhow::bail!("--change {spec:?}: type {other:?} is not cds, eds, lds or rds"),
    };
    anyhow::ensure!(!marker.is_empty(), "--change {spec:?}: empty marker");
    Ok(Change {
        label: label.into(),
        type_url,
        marker: marker.as_bytes().to_vec(),
        command: command.into(),
    })
}
