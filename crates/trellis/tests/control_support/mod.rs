//! Fixtures of the `trellis control` xDS tests: a `trellis control` process on a store
//! directory of its own, a stock Envoy bootstrapped only with its address, a small tonic ADS
//! client (SotW and delta), the gRPC xDS bootstrap for proxyless clients, and config builders.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::e2e_support::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind as ValueKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_testkit::{Process, TempDir, bin_path, free_port, http_get, wait_for_port, wait_until};

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A running `trellis control` on a store directory of its own.
pub struct Control {
    pub dir: TempDir,
    pub xds: u16,
    pub api: u16,
    pub process: Process,
}

impl Control {
    pub fn start(yaml: &str) -> Control {
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
    pub fn restart(&mut self) {
        self.process.signal(trellis_testkit::SIGKILL);
        assert!(
            self.process.wait_timeout(Duration::from_secs(10)).is_some(),
            "trellis control did not die"
        );
        self.process = Control::spawn(&self.dir, self.xds, self.api);
    }

    pub fn spawn(dir: &TempDir, xds: u16, api: u16) -> Process {
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

    pub fn write(&self, yaml: &str) {
        write_atomic(self.dir.path(), "mesh.yaml", yaml);
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, _, body) = http_get(&format!(
            "http://127.0.0.1:{}/api/v1/proxy-status",
            self.api
        ));
        assert_eq!(code, 200, "/api/v1/proxy-status: {body}");
        json(&body)
    }

    /// The status entry of proxy `id`, if connected.
    pub fn proxy(&self, id: &str) -> Option<serde_json::Value> {
        self.status()["proxies"]
            .as_array()?
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
    }

    pub fn metrics(&self) -> String {
        let (code, _, body) = http_get(&format!("http://127.0.0.1:{}/metrics", self.api));
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    pub fn pushes(&self) -> BTreeMap<&'static str, f64> {
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

/// Asserts that between two readings of [`Control::pushes`] only the `pushed` type was sent
/// again; `change` names the change (`an endpoint-only change`) in the failure message.
pub fn assert_only_pushed(
    before: &BTreeMap<&str, f64>,
    after: &BTreeMap<&str, f64>,
    pushed: &str,
    change: &str,
) {
    assert!(
        after[pushed] > before[pushed],
        "{pushed} not pushed for {change}: {before:?} -> {after:?}"
    );
    for t in ["cds", "eds", "lds", "rds"]
        .into_iter()
        .filter(|t| *t != pushed)
    {
        assert_eq!(
            after[t], before[t],
            "{t} pushed for {change}: {before:?} -> {after:?}"
        );
    }
}

pub fn envoy_available() -> bool {
    Command::new("envoy")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A stock Envoy whose only configuration is the control plane's address.
pub struct Envoy {
    pub _dir: TempDir,
    pub admin: u16,
    pub process: Process,
}

impl Envoy {
    /// An ingress gateway (`istio: ingressgateway` in `istio-system`).
    pub fn start(id: &str, xds: u16, api_type: &str) -> Envoy {
        Envoy::start_with_metadata(
            id,
            xds,
            api_type,
            "{ROLE: gateway, NAMESPACE: istio-system, BIND_ADDRESS: 127.0.0.1, LABELS: {istio: ingressgateway}}",
        )
    }

    /// An Envoy announcing `metadata` (a YAML flow mapping) in its node.
    pub fn start_with_metadata(id: &str, xds: u16, api_type: &str, metadata: &str) -> Envoy {
        let dir = TempDir::new().expect("temp dir");
        let admin = free_port();
        let bootstrap = format!(
            r#"node:
  id: {id}
  cluster: {id}
  metadata: {metadata}
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

    pub fn config_dump(&self) -> String {
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
pub fn mesh(docs_in: &[String], jason: &str, w1: u32, w2: u32) -> String {
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
pub fn wait_synced(control: &mut Control, id: &str, envoy: &mut Envoy) -> serde_json::Value {
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

/// The node a test client announces.
pub fn node(id: &str, role: &str) -> Node {
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
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An open SotW stream of a test client.
pub struct SotwClient {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: tonic::Streaming<DiscoveryResponse>,
}

impl SotwClient {
    pub async fn open(xds: u16, first: DiscoveryRequest) -> Result<SotwClient, tonic::Status> {
        SotwClient::open_with_window(xds, first, None).await
    }

    /// `window`: HTTP/2 stream and connection windows of the client (hyper's defaults are
    /// megabytes), so that a client that stops reading stops the server within `window` bytes.
    pub async fn open_with_window(
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

    pub async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::unknown("stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::deadline_exceeded("no response in 10s")),
        }
    }
}

pub async fn delta_open(
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

pub async fn delta_next(
    rx: &mut tonic::Streaming<DeltaDiscoveryResponse>,
) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("a delta response within 10s")
        .expect("delta stream ok")
        .expect("delta stream open")
}

/// `bootstrap` and parses its JSON line.
pub fn grpc_xds(bootstrap: &std::path::Path, target: &str, args: &[&str]) -> serde_json::Value {
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
pub fn echo_mesh(apps: &Apps, subset: &str) -> String {
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

/// `n` STATIC ServiceEntries `svc<i>.bench.local:8080` with one endpoint each.
pub fn many_services(n: usize) -> String {
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
