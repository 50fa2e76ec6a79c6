//! The real `trellis-proxy` binary on `--xds-address`, against a small in-test ADS server (a test
//! peer, not the product: Delta and SotW, resources compiled by `trellis_xds::compile` from
//! YAML). Asserts what a user sees: which backend answers, that a pushed change takes effect,
//! that an update the runtime rejects is NACKed while the old routing keeps serving, and that
//! losing the control plane keeps traffic flowing and the proxy reconnects.

#[path = "xds_client/ads.rs"]
mod ads;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ads::{Ads, CDS, ORDER};
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use http_body_util::BodyExt;
use support::{H1, h1};
use trellis_testkit::{Process, bin_path, free_port};
use trellis_xds::{ProxyIdentity, Resources, Role};

const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the scenario

fn identity() -> ProxyIdentity {
    ProxyIdentity {
        role: Role::Gateway,
        labels: [("istio".to_owned(), "ingressgateway".to_owned())].into(),
        bind_address: "127.0.0.1".into(),
        ..ProxyIdentity::default()
    }
}

/// A gateway on `port` routing every request to `target` (`a.example` or `b.example`), each
/// backed by one endpoint.
fn config(port: u16, target: &str, a: SocketAddr, b: SocketAddr) -> Resources {
    let entry = |name: &str, addr: SocketAddr| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.example]\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n",
            addr.port()
        )
    };
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\n{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http: [{{route: [{{destination: {{host: {target}}}}}]}}]\n",
        entry("a", a),
        entry("b", b),
    );
    let loaded = trellis_config::load_str("xds-test.yaml", &yaml).expect("test config loads");
    trellis_xds::compile(&loaded.snapshot, &loaded.registry, &identity())
}

/// GET an admin path; status 0 while the admin port is not up yet.
async fn admin_get(client: &H1, admin: u16, path: &str) -> (u16, String) {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let req = support::get(addr, "localhost", path)
        .body(Default::default())
        .expect("request");
    let fetch = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(5), fetch).await {
        Ok(Some(got)) => got,
        _ => (0, String::new()),
    }
}

/// The backend that answers a request through the proxy, or why none did.
async fn answered_by(client: &H1, port: u16) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let req = support::get(addr, "anything.example", "/")
        .body(Default::default())
        .expect("request");
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(resp)) => resp
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| format!("status {}", resp.status()), str::to_owned),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".into(),
    }
}

/// Polls `check` until it returns true or [`DEADLINE`] passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < end {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Starts `trellis-proxy --xds-address ADDRESSES --xds-mode MODE` as a gateway and waits until it
/// is ready; returns it and its admin port.
async fn start_proxy(client: &H1, addresses: &str, mode: &str, extra: &[&str]) -> (Process, u16) {
    let admin = free_port();
    let admin_arg = admin.to_string();
    let mut args = vec![
        "--xds-address",
        addresses,
        "--xds-mode",
        mode,
        "--bind-address",
        "127.0.0.1",
        "--labels",
        "istio=ingressgateway",
        "--admin-port",
        &admin_arg,
    ];
    args.extend_from_slice(extra);
    let mut proxy = Process::spawn(
        bin_path("trellis-proxy"),
        args,
        &[("TRELLIS_ACCESS_LOG", "off")],
    );
    let ready = async {
        eventually("the proxy is ready", || async {
            admin_get(client, admin, "/ready").await.0 == 200
        })
        .await
    };
    if tokio::time::timeout(DEADLINE + Duration::from_secs(1), ready)
        .await
        .is_err()
        || proxy.try_wait().is_some()
    {
        panic!("proxy not ready: {}", proxy.describe());
    }
    (proxy, admin)
}

async fn scenario(mode: &str) {
    let a = support::backend("a").await;
    let b = support::backend("b").await;
    let port = free_port();
    let ads_port = free_port();
    let dead_port = free_port();
    let ads = Ads::new();
    ads.set(&config(port, "a.example", a.addr, b.addr));
    let server = ads.start(ads_port).await;

    // The first address refuses connections: the client must rotate to the second.
    let addresses = format!("127.0.0.1:{dead_port},127.0.0.1:{ads_port}");
    let client = h1();
    let (mut proxy, admin) = start_proxy(&client, &addresses, mode, &[]).await;

    // 1. The pushed config routes traffic, and the node told the server who the proxy is.
    assert_eq!(
        answered_by(&client, port).await,
        "a",
        "{}",
        proxy.describe()
    );
    let node = ads
        .nodes()
        .first()
        .cloned()
        .expect("the proxy sent its node");
    let who = ProxyIdentity::from_node(&node).expect("node metadata parses");
    assert_eq!(who.role, Role::Gateway);
    assert_eq!(who.labels, identity().labels);
    assert_eq!(who.bind_address, "127.0.0.1");
    let (_, dump) = admin_get(&client, admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("config_dump is JSON");
    assert_eq!(
        dump["resources"]["listeners"][0]["name"],
        format!("0.0.0.0_{port}")
    );
    let acked = |ads: &Ads, type_url: &str| {
        ads.seen()
            .iter()
            .any(|s| s.type_url == type_url && !s.nonce.is_empty() && s.error.is_none())
    };
    for t in ORDER {
        assert!(acked(&ads, t), "no ACK for {t}: {:?}", ads.seen());
    }

    // 2. A pushed route change takes effect.
    ads.set(&config(port, "b.example", a.addr, b.addr));
    eventually("traffic moves to b", || async {
        answered_by(&client, port).await == "b"
    })
    .await;
    // The dump is published right after the new snapshot is swapped in.
    eventually("/config_dump shows b's cluster and endpoints", || async {
        let (_, dump) = admin_get(&client, admin, "/config_dump").await;
        let dump: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
        dump["resources"]["clusters"][0]["name"] == "outbound|80||b.example"
            && dump["resources"]["endpoints"][0]["clusterName"] == "outbound|80||b.example"
            && dump["resources"]["clusters"].as_array().map(Vec::len) == Some(1)
    })
    .await;

    // 3. An update the runtime rejects is NACKed with the runtime's reason; b keeps serving.
    let mut bad = config(port, "b.example", a.addr, b.addr);
    for c in &mut bad.clusters {
        c.lb_policy = LbPolicy::ClusterProvided as i32;
    }
    ads.set(&bad);
    eventually("the CDS update is NACKed", || async {
        ads.seen().iter().any(|s| {
            s.type_url == CDS && s.error.as_deref().is_some_and(|e| e.contains("lb_policy"))
        })
    })
    .await;
    assert_eq!(answered_by(&client, port).await, "b");
    let (status, xds) = admin_get(&client, admin, "/xds").await;
    assert_eq!(status, 200);
    let xds: serde_json::Value = serde_json::from_str(&xds).expect("/xds is JSON");
    assert_eq!(xds["mode"], mode);
    assert_eq!(xds["connected"], true);
    let rejected = xds["types"]["cds"]["last_rejected"]["error"]
        .as_str()
        .unwrap_or("");
    assert!(rejected.contains("lb_policy"), "{xds}");
    assert!(
        xds["types"]["rds"]["last_applied"]["nonce"].is_string(),
        "{xds}"
    );
    let (_, metrics) = admin_get(&client, admin, "/stats/prometheus").await;
    assert_eq!(
        metric(
            &metrics,
            "trellis_proxy_xds_updates_rejected_total{type=\"cds\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "trellis_proxy_control_plane_connected"),
        Some(1.0)
    );

    // 4. Control plane lost: traffic keeps flowing, the gauge drops to 0.
    server.kill().await;
    eventually("the gauge drops to 0", || async {
        let (_, m) = admin_get(&client, admin, "/stats/prometheus").await;
        metric(&m, "trellis_proxy_control_plane_connected") == Some(0.0)
    })
    .await;
    assert_eq!(answered_by(&client, port).await, "b");
    let (_, xds) = admin_get(&client, admin, "/xds").await;
    assert!(xds.contains("\"connected\": false"), "{xds}");

    // 5. Back on the same port (still serving the bad config): reconnects, and NACKs it again.
    let before = ads.seen().len();
    let server = ads.start(ads_port).await;
    eventually("the proxy reconnects", || async {
        let (_, m) = admin_get(&client, admin, "/stats/prometheus").await;
        metric(&m, "trellis_proxy_control_plane_connected") == Some(1.0)
    })
    .await;
    if mode == "delta" {
        // The new stream told the server what the proxy holds (the applied CDS: one cluster).
        let resubscribed = ads.seen()[before..]
            .iter()
            .find(|s| s.type_url == CDS)
            .map(|s| s.initial_versions);
        assert_eq!(resubscribed, Some(1), "{:?}", ads.seen());
    }
    // A change pushed afterwards applies.
    ads.set(&config(port, "a.example", a.addr, b.addr));
    eventually("traffic moves back to a", || async {
        answered_by(&client, port).await == "a"
    })
    .await;
    assert!(ads.seen().len() > before);
    assert!(proxy.is_running(), "{}", proxy.describe());
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_routes_applies_nacks_and_survives_control_plane_loss() {
    scenario("delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_routes_applies_nacks_and_survives_control_plane_loss() {
    scenario("sotw").await;
}

// ---------------------------------------------------------------- measurement (ignored)

/// The shape of `bench/gen_services.py`: a gateway on `port`, `n` STATIC ServiceEntries with 5
/// endpoints each and one VirtualService per service, compiled for the test gateway.
fn services(port: u16, n: usize, generation: usize) -> Resources {
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n"
    );
    for i in 0..n {
        let eps: String = (0..5)
            .map(|j| {
                let k = i * 5 + j;
                format!(
                    "  - address: 127.{generation}.{}.{}\n    labels: {{version: v{}}}\n",
                    k / 250,
                    k % 250 + 1,
                    j % 2 + 1
                )
            })
            .collect();
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc{i}}}\nspec:\n  hosts: [svc{i}.bench.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 8080, name: http, protocol: HTTP}}\n  endpoints:\n{eps}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc{i}}}\nspec:\n  hosts: [svc{i}.bench.local]\n  gateways: [gw]\n  http:\n  - match: [{{uri: {{prefix: /api}}}}]\n    route: [{{destination: {{host: svc{i}.bench.local, port: {{number: 8080}}}}}}]\n"
        ));
    }
    let loaded = trellis_config::load_str("services.yaml", &yaml).expect("generated config loads");
    trellis_xds::compile(&loaded.snapshot, &loaded.registry, &identity())
}

/// `VmRSS` and `VmHWM` of a process, in kB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Push → every response the push caused ACKed, as the control plane sees it.
async fn push_and_wait_for_acks(ads: &Ads, res: &Resources, proxy: &mut Process) -> Duration {
    let (seen_before, sent_before) = {
        let s = ads.store.lock().unwrap();
        (s.seen.len(), s.sent.len())
    };
    let start = Instant::now();
    ads.set(res);
    let end = start + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < end, "no ACK: {}", proxy.describe());
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = ads.store.lock().unwrap();
        let answers = &s.seen[seen_before..];
        if let Some(nack) = answers.iter().find(|a| a.error.is_some()) {
            panic!("NACK: {nack:?}");
        }
        let sent = &s.sent[sent_before..];
        let mut last = None;
        for nonce in sent {
            last = answers.iter().find(|a| &a.nonce == nonce).map(|a| a.at);
            if last.is_none() {
                break;
            }
        }
        if let (false, Some(at)) = (sent.is_empty(), last) {
            return at - start;
        }
    }
}

/// Applying a 5,000-cluster update to a `--concurrency 1` proxy (as `bench/rss.sh`): push → ACK
/// time, the proxy's own apply time (`/xds` `last_apply_ms`), and RSS per cluster over four
/// updates (every endpoint address changes each time). Prints numbers, asserts none. Run with
/// `cargo test --release -p trellis-proxy --test xds_client measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release with --nocapture"]
async fn measure_a_5000_cluster_update() {
    const N: usize = 5000;
    let configs_port = free_port();
    let configs = [1, 2].map(|g| services(configs_port, N, g));
    for mode in ["delta", "sotw"] {
        let ads_port = free_port();
        let ads = Ads::new();
        ads.set(&services(configs_port, 1, 1));
        let server = ads.start(ads_port).await;
        let client = h1();
        let (mut proxy, admin) = start_proxy(
            &client,
            &format!("127.0.0.1:{ads_port}"),
            mode,
            &["--concurrency", "1"],
        )
        .await;
        let (base, _) = rss_kb(proxy.pid());
        println!("{mode}: base RSS {base} kB (1 cluster)");
        for round in 0..4 {
            let push = push_and_wait_for_acks(&ads, &configs[round % 2], &mut proxy).await;
            let (_, xds) = admin_get(&client, admin, "/xds").await;
            let xds: serde_json::Value = serde_json::from_str(&xds).unwrap_or_default();
            let apply = xds["last_apply_ms"].as_f64().unwrap_or(f64::NAN);
            let (rss, peak) = rss_kb(proxy.pid());
            println!(
                "{mode}: update {round}: clusters={N} push->ACK {:.0} ms, proxy apply {apply:.0} ms, \
                 RSS {rss} kB (peak {peak} kB) = {:.2} kB per cluster above base",
                push.as_secs_f64() * 1e3,
                rss.saturating_sub(base) as f64 / N as f64
            );
        }
        drop(proxy);
        server.kill().await;
    }
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

// The C library is linked by std anyway; the call only writes the struct it is given.
unsafe extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU time of the calling thread (wall time is inflated on a shared machine).
fn thread_cpu() -> Duration {
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `struct timespec` (64-bit Linux layout).
    unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, String) {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let out = f();
    let text = format!(
        "{:.1} ms (cpu {:.1} ms)",
        wall.elapsed().as_secs_f64() * 1e3,
        (thread_cpu() - cpu).as_secs_f64() * 1e3
    );
    (out, text)
}

/// Where the proxy's apply time goes for 5,000 clusters, in-process: decoding the responses into
/// the cache, packing the `/config_dump` copy, assembling the snapshot, compiling the runtime.
#[test]
#[ignore = "measurement; run in release with --nocapture"]
fn measure_apply_phases() {
    use trellis_proxy::xds_client::cache::{Cache, Kind};
    let res = services(free_port(), 5000, 1);
    let any = |v: Vec<Any>| v;
    let c = any(res.clusters.iter().cloned().map(pack_any).collect());
    let e = any(res.endpoints.iter().cloned().map(pack_any).collect());
    let l = any(res.listeners.iter().cloned().map(pack_any).collect());
    let r = any(res.routes.iter().cloned().map(pack_any).collect());
    let decode = |kind: Kind, anys: &[Any]| -> Vec<_> {
        anys.iter()
            .enumerate()
            .map(|(i, a)| kind.decode(i, a, None, "1").expect("decodes"))
            .collect()
    };
    let mut cache = Cache::default();
    let ((), receive) = timed(|| {
        cache.replace(Kind::Cluster, decode(Kind::Cluster, &c));
        cache.upsert(Kind::Endpoint, decode(Kind::Endpoint, &e), &[]);
        cache.replace(Kind::Listener, decode(Kind::Listener, &l));
        cache.upsert(Kind::Route, decode(Kind::Route, &r), &[]);
    });
    drop((c, e, l, r));
    let (dump, pack) = timed(|| cache.pack());
    let (assembled, assemble) = timed(|| cache.assemble().expect("assembles"));
    let (runtime, compile) = timed(|| {
        trellis_proxy::runtime::Runtime::compile_owned(assembled, None).expect("compiles")
    });
    let (prev, again) = timed(|| {
        let assembled = cache.assemble().expect("assembles");
        trellis_proxy::runtime::Runtime::compile_owned(assembled, Some(&runtime)).expect("compiles")
    });
    let ((), commit) = timed(|| cache.commit());
    let bytes: usize = dump.iter().map(|b| b.len()).sum();
    let n = runtime.clusters.len();
    println!(
        "clusters={n}\n\
         receive (decode heads into the cache) {receive}\n\
         pack (shared /config_dump copy)       {pack}\n\
         assemble (decode every message)       {assemble}\n\
         runtime compile                       {compile}\n\
         assemble + compile over a running one {again}\n\
         commit                                {commit}\n\
         encoded bytes held once: {bytes} ({:.0} B per cluster)",
        bytes as f64 / n as f64
    );
    drop((prev, dump));
}
