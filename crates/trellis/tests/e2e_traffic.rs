//! Acceptance tests of endpoint choice and endpoint health: outlier ejection, locality failover
//! and `distribute`, consistent hashing. Real `trellis sample-app`s (made to fail on demand with
//! `/fault/status/503`) behind a real gateway `trellis-proxy` compiled from the Istio YAML in
//! each test. Asserts who answered (`x-sample-service`), statuses, metrics and the admin
//! `/clusters` page. Needs `cargo build -p trellis -p trellis-proxy --bins`.

mod e2e_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e_support::*;
use trellis_testkit::{TempDir, http_get, promtool_check, proxy, wait_until};

const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";

/// A gateway proxy with extra flags (e.g. `--locality`).
fn gateway_with(port: u16, yaml: &str, extra: &[&str]) -> Gateway {
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write mesh.yaml");
    let mut args: Vec<&str> = GATEWAY_ARGS.to_vec();
    args.extend_from_slice(extra);
    let (proxy, admin) = proxy(dir.path(), &args);
    let gw = Gateway {
        dir,
        port,
        admin,
        proxy,
    };
    assert!(
        trellis_testkit::wait_for_port(gw.addr(), Duration::from_secs(10)),
        "gateway listener not bound"
    );
    gw
}

/// The sample apps `service/VERSION` of `apps` as endpoints labelled with their version.
fn endpoints<'a>(apps: &Apps, service: &str, versions: &[&'a str]) -> Vec<Ep<'a>> {
    versions
        .iter()
        .map(|v| ep(apps.port(&format!("{service}/{v}")), v))
        .collect()
}

/// The gateway on `port`, reviews on `eps` with `traffic_policy`, every request to reviews.
fn reviews_config(port: u16, eps: &[Ep], traffic_policy: &str) -> String {
    docs(&[
        gateway_yaml(port),
        service_entry_yaml("reviews", REVIEWS, 9080, "HTTP", eps),
        destination_rule(traffic_policy),
        route_all_to_reviews(),
    ])
}

/// Turns the `/fault` switch of the sample app on `port` (status 0 clears it).
fn fault(port: u16, status: u16) {
    let path = if status == 0 {
        "/fault/clear".to_string()
    } else {
        format!("/fault/status/{status}")
    };
    let (code, _, body) = http_get(&format!("http://127.0.0.1:{port}{path}"));
    assert_eq!(code, 200, "{path}: {body}");
}

/// Makes the sample app on `port` answer its health checks with `status`.
fn health_fault(port: u16, status: u16) {
    let (code, _, body) = http_get(&format!("http://127.0.0.1:{port}/fault/health/{status}"));
    assert_eq!(code, 200, "/fault/health/{status}: {body}");
}

/// Makes the sample app on `port` answer 500 and checks that the next `n` requests reach it
/// and fail (the ones that eject it).
fn fail_next(gw: &Gateway, port: u16, n: usize) {
    fault(port, 500);
    let counts = send(gw, n);
    assert_eq!(counts.get("ERR 500").copied(), Some(n), "{counts:?}");
}

/// A ServiceEntry for reviews whose endpoints carry a `locality`; `eps` = (port, version,
/// locality).
fn service_entry_with_localities(eps: &[(u16, &str, &str)]) -> String {
    let mut out = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{REVIEWS}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
"#
    );
    for (port, version, locality) in eps {
        out.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: reviews, version: {version}}}, locality: {locality}}}\n"
        ));
    }
    out
}

fn destination_rule(traffic_policy: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: {REVIEWS}
  trafficPolicy:
{traffic_policy}"#
    )
}

fn route_all_to_reviews() -> String {
    virtual_service_yaml(
        "reviews",
        &["*"],
        &format!(
            "  - route: [{{destination: {}}}]\n",
            dest(REVIEWS, None, 9080)
        ),
    )
}

/// `n` requests; counts by `name/version` (failures as `ERR <status>`).
fn send(gw: &Gateway, n: usize) -> BTreeMap<String, usize> {
    let mut client = gw.client();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = match client.get("reviews.example.com", "/get", &[]) {
            Ok(r) if r.status == 200 => r.served_by(),
            Ok(r) => {
                let flags = r
                    .headers
                    .get("x-trellis-flags")
                    .cloned()
                    .unwrap_or_default();
                format!("ERR {} {flags}", r.status).trim_end().to_string()
            }
            Err(e) => format!("ERR {e}"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn only(counts: &BTreeMap<String, usize>, who: &str) -> bool {
    counts.len() == 1 && counts.contains_key(who)
}

/// The `health_flags` of every reviews endpoint on the admin `/clusters` page, by address.
fn health_flags(gw: &Gateway) -> BTreeMap<String, String> {
    health_flags_of(gw, CLUSTER)
}

/// The `health_flags` of every endpoint of `cluster` on the admin `/clusters` page, by address.
fn health_flags_of(gw: &Gateway, cluster: &str) -> BTreeMap<String, String> {
    let (status, body) = gw.admin_get("/clusters");
    assert_eq!(status, 200, "/clusters: {body}");
    body.lines()
        .filter_map(|l| l.strip_prefix(&format!("{cluster}::")))
        .filter_map(|l| l.split_once("::health_flags::"))
        .map(|(addr, flag)| (addr.to_string(), flag.to_string()))
        .collect()
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint_and_brings_it_back() {
    let apps = Apps::start(&[("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3")]);
    let port = gateway_port();
    let eps = endpoints(&apps, "reviews", &["v1", "v2", "v3"]);
    // 3 endpoints, at most 34% ejected: one at a time.
    let policy = "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 3s
      maxEjectionPercent: 34
";
    let yaml = reviews_config(port, &eps, policy);
    let gw = gateway_with(port, &yaml, &[]);
    let counts = send(&gw, 30);
    assert_eq!(counts.len(), 3, "all three serve: {counts:?}");

    fault(apps.port("reviews/v1"), 500);
    // Taken before the ejection, so the time since it bounds the ejection's age from above.
    let ejected_at = Instant::now();
    // Round robin: v1 sees its third consecutive 500 within 9 requests, then is ejected. (500,
    // not 503: the default retry policy retries 503s on another endpoint, hiding them.)
    let counts = send(&gw, 9);
    assert_eq!(counts.get("ERR 500").copied(), Some(3), "{counts:?}");
    let counts = send(&gw, 30);
    assert!(
        !counts.contains_key("reviews/v1") && !counts.keys().any(|k| k.starts_with("ERR")),
        "v1 is ejected, nothing fails: {counts:?}"
    );
    let metrics = gw.metrics();
    let labels = [("cluster_name", CLUSTER)];
    assert_eq!(
        metric_sum(&metrics, "trellis_outlier_ejections_total", &labels),
        1.0
    );
    assert_eq!(
        metric_sum(&metrics, "trellis_outlier_ejected", &labels),
        1.0
    );
    let ours: String = metrics
        .lines()
        .filter(|l| l.contains("trellis_outlier_"))
        .map(|l| format!("{l}\n"))
        .collect();
    promtool_check(&ours);
    let v1 = format!("127.0.0.1:{}", apps.port("reviews/v1"));
    let flags = health_flags(&gw);
    assert_eq!(
        flags.get(&v1).map(String::as_str),
        Some("ejected"),
        "{flags:?}"
    );
    assert_eq!(flags.values().filter(|f| *f == "healthy").count(), 2);

    // maxEjectionPercent: v2 fails too but may not be ejected (2 of 3 > 34%).
    fault(apps.port("reviews/v2"), 500);
    let counts = send(&gw, 20);
    assert_eq!(counts.get("ERR 500").copied(), Some(10), "{counts:?}");
    assert_eq!(counts.get("reviews/v3").copied(), Some(10), "{counts:?}");
    let metrics = gw.metrics();
    assert_eq!(
        metric_sum(&metrics, "trellis_outlier_ejected", &labels),
        1.0
    );

    // Healed, v1 comes back once its 3 s ejection time has passed (not before).
    fault(apps.port("reviews/v1"), 0);
    fault(apps.port("reviews/v2"), 0);
    let back = wait_until(Duration::from_secs(15), || {
        send(&gw, 6).contains_key("reviews/v1")
    });
    assert!(back, "v1 never came back: {}", gw.admin_get("/clusters").1);
    assert!(
        ejected_at.elapsed() >= Duration::from_secs(3),
        "v1 came back after {:?}, before its ejection time",
        ejected_at.elapsed()
    );
    let counts = send(&gw, 30);
    assert_eq!(counts.len(), 3, "{counts:?}");
    let metrics = gw.metrics();
    assert_eq!(
        metric_sum(&metrics, "trellis_outlier_ejected", &labels),
        0.0
    );
    assert_eq!(
        metric_sum(&metrics, "trellis_outlier_ejections_total", &labels),
        1.0
    );
}

#[test]
fn locality_failover_prefers_zone_then_region_then_the_failover_region() {
    let list = [
        ("reviews", "zone1"),
        ("reviews", "zone2"),
        ("reviews", "r2"),
        ("reviews", "r3"),
    ];
    let apps = Apps::start(&list);
    let p = |v: &str| apps.port(&format!("reviews/{v}"));
    let port = gateway_port();
    let policy = "    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        failover: [{from: region1, to: region3}]
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
";
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_with_localities(&[
            (p("zone1"), "zone1", "region1/zone1"),
            (p("zone2"), "zone2", "region1/zone2"),
            (p("r2"), "r2", "region2/zone1"),
            (p("r3"), "r3", "region3/zone1"),
        ]),
        destination_rule(policy),
        route_all_to_reviews(),
    ]);
    let gw = gateway_with(port, &yaml, &["--locality", "region1/zone1"]);
    let counts = send(&gw, 40);
    assert!(
        only(&counts, "reviews/zone1"),
        "same zone first: {counts:?}"
    );

    fail_next(&gw, p("zone1"), 2);
    let counts = send(&gw, 40);
    assert!(
        only(&counts, "reviews/zone2"),
        "then the same region: {counts:?}"
    );

    fail_next(&gw, p("zone2"), 2);
    let counts = send(&gw, 40);
    assert!(
        only(&counts, "reviews/r3"),
        "then region3 (failover target), never region2: {counts:?}"
    );
    let flags = health_flags(&gw);
    assert_eq!(
        flags.values().filter(|f| *f == "ejected").count(),
        2,
        "{flags:?}"
    );
}

#[test]
fn locality_distribute_splits_by_weight() {
    let list = [("reviews", "a"), ("reviews", "b"), ("reviews", "c")];
    let apps = Apps::start(&list);
    let p = |v: &str| apps.port(&format!("reviews/{v}"));
    let port = gateway_port();
    let policy = r#"    loadBalancer:
      localityLbSetting:
        distribute:
        - from: region1/zone1/*
          to: {"region1/zone1/*": 70, "region1/zone2/*": 20, "region2/*": 10}
    outlierDetection: {consecutive5xxErrors: 5}
"#;
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_with_localities(&[
            (p("a"), "a", "region1/zone1/s1"),
            (p("b"), "b", "region1/zone2/s1"),
            (p("c"), "c", "region2/zone9"),
        ]),
        destination_rule(policy),
        route_all_to_reviews(),
    ]);
    let gw = gateway_with(port, &yaml, &["--locality", "region1/zone1/s1"]);
    let n = 1000;
    let counts = send(&gw, n);
    let share = |v: &str| {
        100.0 * counts.get(&format!("reviews/{v}")).copied().unwrap_or(0) as f64 / n as f64
    };
    for (v, want) in [("a", 70.0), ("b", 20.0), ("c", 10.0)] {
        let got = share(v);
        assert!(
            (got - want).abs() <= 5.0,
            "{v}: {got}% (want {want} ± 5): {counts:?}"
        );
    }
}

#[test]
fn consistent_hash_on_header_and_generated_cookie() {
    let list = [("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3")];
    let apps = Apps::start(&list);
    let eps = endpoints(&apps, "reviews", &["v1", "v2", "v3"]);
    let port = gateway_port();
    let dr = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: {REVIEWS}
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
        ringHash: {{minimumRingSize: 1024}}
  subsets:
  - name: sticky
    labels: {{app: reviews}}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie: {{name: affinity, path: /, ttl: 3600s}}
          maglev: {{tableSize: 65537}}
  - name: by-query
    labels: {{app: reviews}}
    trafficPolicy:
      loadBalancer:
        consistentHash: {{httpQueryParameterName: user}}
  - name: by-ip
    labels: {{app: reviews}}
    trafficPolicy:
      loadBalancer:
        consistentHash: {{useSourceIp: true}}
"#
    );
    let vs = virtual_service_yaml(
        "reviews",
        &["*"],
        &format!(
            "  - match: [{{uri: {{prefix: /anything/sticky}}}}]\n    route: [{{destination: {}}}]\n  - match: [{{uri: {{prefix: /anything/q}}}}]\n    route: [{{destination: {}}}]\n  - match: [{{uri: {{prefix: /anything/ip}}}}]\n    route: [{{destination: {}}}]\n  - route: [{{destination: {}}}]\n",
            dest(REVIEWS, Some("sticky"), 9080),
            dest(REVIEWS, Some("by-query"), 9080),
            dest(REVIEWS, Some("by-ip"), 9080),
            dest(REVIEWS, None, 9080)
        ),
    );
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("reviews", REVIEWS, 9080, "HTTP", &eps),
        dr,
        vs,
    ]);
    let gw = gateway_with(port, &yaml, &[]);
    let mut client = gw.client();
    let mut chosen = BTreeMap::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let counts = tally(&mut client, "r", "/get", &[("x-user", &user)], 10);
        assert_eq!(
            counts.len(),
            1,
            "{user} always lands on one backend: {counts:?}"
        );
        let who = counts.keys().next().cloned().unwrap_or_default();
        assert!(who.starts_with("reviews/"), "{who}");
        *chosen.entry(who).or_insert(0) += 1;
    }
    assert_eq!(
        chosen.len(),
        3,
        "30 users spread over all backends: {chosen:?}"
    );

    // Cookie: the first answer sets it; sending it back sticks to one backend.
    let first = client
        .get("r", "/anything/sticky", &[])
        .expect("first sticky request");
    assert_eq!(first.status, 200);
    let set = first.headers.get("set-cookie").cloned().unwrap_or_default();
    assert!(
        set.starts_with("affinity=") && set.contains("Max-Age=3600") && set.contains("Path=/"),
        "{set:?}"
    );
    let cookie = set.split(';').next().unwrap_or("").to_string();
    let owner = first.served_by();
    for _ in 0..30 {
        let r = client
            .get("r", "/anything/sticky", &[("cookie", &cookie)])
            .expect("sticky request");
        assert_eq!(r.served_by(), owner, "cookie {cookie} sticks");
        assert!(!r.headers.contains_key("set-cookie"), "no new cookie");
    }
    // Without the cookie, new cookies spread over the backends.
    let mut owners = BTreeMap::new();
    for _ in 0..60 {
        let r = client.get("r", "/anything/sticky", &[]).expect("request");
        *owners.entry(r.served_by()).or_insert(0) += 1;
    }
    assert_eq!(owners.len(), 3, "{owners:?}");

    // Query parameter: same `user` → same backend; users spread.
    let mut chosen = BTreeMap::new();
    for user in 0..30 {
        let path = format!("/anything/q?user=u{user}&x={user}");
        let counts = tally(&mut client, "r", &path, &[], 5);
        assert_eq!(counts.len(), 1, "{path}: {counts:?}");
        *chosen
            .entry(counts.into_keys().next().unwrap_or_default())
            .or_insert(0) += 1;
    }
    assert_eq!(chosen.len(), 3, "{chosen:?}");
    // Source IP: every request comes from 127.0.0.1, so one backend takes them all.
    let counts = tally(&mut client, "r", "/anything/ip", &[], 30);
    assert_eq!(counts.len(), 1, "{counts:?}");
}

fn health_check_policy(spec: &str) -> String {
    format!(
        r#"apiVersion: trellis.dev/v1alpha1
kind: HealthCheckPolicy
metadata: {{name: reviews, namespace: default}}
spec:
{spec}"#
    )
}

#[test]
fn active_health_check_drains_an_endpoint_without_failing_requests() {
    // Four endpoints: with one gone and one failing, half stay healthy, which keeps the
    // cluster out of Envoy's panic mode (below 50% healthy, every endpoint is used).
    let list = [
        ("reviews", "v1"),
        ("reviews", "v2"),
        ("reviews", "v3"),
        ("reviews", "v4"),
    ];
    let mut apps = Apps::start(&list);
    let eps = endpoints(&apps, "reviews", &["v1", "v2", "v3", "v4"]);
    let port = gateway_port();
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("reviews", REVIEWS, 9080, "HTTP", &eps),
        health_check_policy(
            "  host: reviews
  interval: 200ms
  timeout: 150ms
  unhealthyThreshold: 2
  healthyThreshold: 1
  http: {path: /healthz, expectedStatuses: [200]}
",
        ),
        route_all_to_reviews(),
    ]);
    let gw = gateway_with(port, &yaml, &[]);
    let mut all = BTreeMap::new();
    let mut record = |counts: BTreeMap<String, usize>| {
        for (k, n) in counts {
            *all.entry(k).or_insert(0) += n;
        }
    };
    let counts = send(&gw, 40);
    assert_eq!(counts.len(), 4, "{counts:?}");
    record(counts);
    let v1 = format!("127.0.0.1:{}", apps.port("reviews/v1"));
    let v2 = format!("127.0.0.1:{}", apps.port("reviews/v2"));

    // v1 starts draining: its health check fails, its requests still succeed.
    fault(apps.port("reviews/v1"), 0);
    health_fault(apps.port("reviews/v1"), 503);
    let drained = wait_until(Duration::from_secs(10), || {
        record(send(&gw, 5));
        health_flags(&gw).get(&v1).map(String::as_str) == Some("failed_active_hc")
    });
    assert!(
        drained,
        "v1 never marked unhealthy: {}",
        gw.admin_get("/clusters").1
    );
    let counts = send(&gw, 40);
    assert!(!counts.contains_key("reviews/v1"), "{counts:?}");
    record(counts);
    // v1 goes away for good: nobody notices.
    let v1_process = apps.procs.remove(0);
    drop(v1_process);
    let counts = send(&gw, 60);
    assert_eq!(counts.len(), 3, "v2, v3 and v4 serve: {counts:?}");
    record(counts);

    // v2 fails its check and passes again: out, then back in.
    health_fault(apps.port("reviews/v2"), 500);
    let out = wait_until(Duration::from_secs(10), || {
        health_flags(&gw).get(&v2).map(String::as_str) == Some("failed_active_hc")
    });
    assert!(out, "v2 never marked unhealthy");
    let counts = send(&gw, 40);
    let want = ["reviews/v3", "reviews/v4"];
    assert!(counts.keys().eq(want.iter()), "{counts:?}");
    record(counts);
    fault(apps.port("reviews/v2"), 0);
    let back = wait_until(Duration::from_secs(10), || {
        health_flags(&gw).get(&v2).map(String::as_str) == Some("healthy")
    });
    assert!(back, "v2 never came back");
    let counts = send(&gw, 40);
    assert!(counts.contains_key("reviews/v2"), "{counts:?}");
    record(counts);
    assert!(
        !all.keys().any(|k| k.starts_with("ERR")),
        "no client request failed: {all:?}"
    );
}

#[test]
fn grpc_health_check_follows_the_serving_status() {
    let apps = Apps::start(&[("pricing", "v1"), ("pricing", "v2")]);
    let host = "pricing.default.svc.cluster.local";
    let eps = endpoints(&apps, "pricing", &["v1", "v2"]);
    let port = gateway_port();
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("pricing", host, 9090, "GRPC", &eps),
        health_check_policy(
            "  host: pricing
  interval: 200ms
  timeout: 150ms
  unhealthyThreshold: 1
  grpc: {serviceName: trellis.sample.v1.Echo}
",
        ),
        virtual_service_yaml(
            "pricing",
            &["*"],
            &format!("  - route: [{{destination: {}}}]\n", dest(host, None, 9090)),
        ),
    ]);
    let gw = gateway_with(port, &yaml, &[]);
    let cluster = format!("outbound|9090||{host}");
    let flags = |gw: &Gateway| health_flags_of(gw, &cluster);
    let v1 = format!("127.0.0.1:{}", apps.port("pricing/v1"));
    assert_eq!(flags(&gw).len(), 2, "{}", gw.admin_get("/clusters").1);
    health_fault(apps.port("pricing/v1"), 503);
    let marked = wait_until(Duration::from_secs(10), || {
        flags(&gw).get(&v1).map(String::as_str) == Some("failed_active_hc")
    });
    assert!(marked, "{}", gw.admin_get("/clusters").1);
    let f = flags(&gw);
    assert_eq!(f.values().filter(|f| *f == "healthy").count(), 1, "{f:?}");
    fault(apps.port("pricing/v1"), 0);
    let back = wait_until(Duration::from_secs(10), || {
        flags(&gw).get(&v1).map(String::as_str) == Some("healthy")
    });
    assert!(back, "{}", gw.admin_get("/clusters").1);
}

#[test]
fn warmup_ramps_a_new_endpoint_up_slowly() {
    let apps = Apps::start(&[("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3")]);
    let ep_of = |v: &'static str| ep(apps.port(&format!("reviews/{v}")), v);
    let port = gateway_port();
    let window = Duration::from_secs(5);
    let policy = "    loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 5s}\n";
    let config = |eps: &[Ep]| reviews_config(port, eps, policy);
    let started = Instant::now();
    let gw = gateway_with(port, &config(&[ep_of("v1"), ep_of("v2")]), &[]);
    let counts = send(&gw, 40);
    assert_eq!(counts.len(), 2, "{counts:?}");
    // Let v1 and v2 finish their own slow start (every endpoint of a new cluster has one).
    let warmed = wait_until(window * 3, || {
        started.elapsed() > window + Duration::from_millis(500)
    });
    assert!(warmed);
    // v3 joins: for its first second it gets max(10%, 1 s / 5 s) = 20% of an endpoint's
    // weight (about 9% of the traffic), ramping linearly to 100% at 5 s.
    write_atomic(
        gw.dir.path(),
        "mesh.yaml",
        &config(&[ep_of("v1"), ep_of("v2"), ep_of("v3")]),
    );
    let v3 = format!("127.0.0.1:{}", apps.port("reviews/v3"));
    let joined = wait_until(Duration::from_secs(10), || {
        health_flags(&gw).contains_key(&v3)
    });
    assert!(joined, "v3 never joined: {}", gw.admin_get("/clusters").1);
    let n = 300;
    let counts = send(&gw, n);
    let share = |counts: &BTreeMap<String, usize>, v: &str| {
        100.0 * counts.get(&format!("reviews/{v}")).copied().unwrap_or(0) as f64 / n as f64
    };
    assert!(
        share(&counts, "v3") > 0.0 && share(&counts, "v3") < 25.0,
        "v3 warming up: {counts:?}"
    );
    assert!(
        share(&counts, "v1") > 30.0 && share(&counts, "v2") > 30.0,
        "{counts:?}"
    );
    // After its window, v3 takes its full third.
    let ramped = wait_until(window * 3, || {
        let c = send(&gw, 30);
        c.get("reviews/v3") == Some(&10)
    });
    assert!(ramped, "v3 never reached its full share");
}

#[test]
fn connect_failures_eject_as_local_origin_errors() {
    let mut apps = Apps::start(&[("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3")]);
    let eps = endpoints(&apps, "reviews", &["v1", "v2", "v3"]);
    let port = gateway_port();
    let policy = "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 100
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 2
      baseEjectionTime: 60s
      maxEjectionPercent: 50
";
    let yaml = reviews_config(port, &eps, policy);
    let gw = gateway_with(port, &yaml, &[]);
    assert_eq!(send(&gw, 30).len(), 3);
    // v1 goes away: two local-origin failures in a row (connect failure, or a reset if a pooled
    // connection to it was still open) eject it; as 5xx it would take 100. Istio's default
    // retries send each failed attempt to another endpoint, so the client sees no failure.
    drop(apps.procs.remove(0));
    let counts = send(&gw, 6);
    assert!(
        !counts.keys().any(|k| k.starts_with("ERR")),
        "retried on another endpoint: {counts:?}"
    );
    let counts = send(&gw, 30);
    assert_eq!(counts.len(), 2, "v1 ejected, nothing fails: {counts:?}");
    let metrics = gw.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "trellis_outlier_ejections_total",
            &[("cluster_name", CLUSTER)]
        ),
        1.0
    );
}

#[test]
fn below_min_health_percent_ejections_are_ignored() {
    let apps = Apps::start(&[("reviews", "v1"), ("reviews", "v2")]);
    let eps = endpoints(&apps, "reviews", &["v1", "v2"]);
    let port = gateway_port();
    // One of two ejected leaves 50% healthy, under minHealthPercent 60: panic mode.
    let policy = "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 2
      baseEjectionTime: 60s
      maxEjectionPercent: 100
      minHealthPercent: 60
";
    let yaml = reviews_config(port, &eps, policy);
    let gw = gateway_with(port, &yaml, &[]);
    // 500, not 503: Istio's default retries would hide a 503 behind the other endpoint.
    fault(apps.port("reviews/v1"), 500);
    let counts = send(&gw, 4);
    assert_eq!(counts.get("ERR 500").copied(), Some(2), "{counts:?}");
    let labels = [("cluster_name", CLUSTER)];
    assert_eq!(
        metric_sum(&gw.metrics(), "trellis_outlier_ejected", &labels),
        1.0
    );
    // Ejected, yet still used: health is ignored in panic mode.
    let counts = send(&gw, 20);
    assert_eq!(counts.get("ERR 500").copied(), Some(10), "{counts:?}");
    assert_eq!(counts.get("reviews/v2").copied(), Some(10), "{counts:?}");
}
