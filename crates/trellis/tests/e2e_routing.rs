//! Acceptance tests of gateway routing: real `trellis sample-app`s behind a real
//! `trellis-proxy --config-dir` compiled from Istio YAML written by each test; driven by curl
//! and a raw keep-alive HTTP/1.1 client. Asserts who answered (`x-sample-service`), statuses,
//! response flags and bodies. Needs `cargo build --workspace --bins`.

mod e2e_support;

use std::collections::BTreeMap;

use e2e_support::*;
use trellis_testkit::{free_port, http_request};

/// Who answered a curl request through the gateway: `name/version`, or `ERR …`.
fn via_curl(url: &str, extra: &[&str]) -> String {
    let (status, headers, body) = http_request(url, extra);
    if status != 200 {
        return format!("ERR {status} {}", body.trim());
    }
    headers
        .get("x-sample-service")
        .cloned()
        .unwrap_or_else(|| format!("ERR no x-sample-service: {body}"))
}

#[test]
fn routes_by_host_uri_headers_query_and_method() {
    let versions = ["v1", "v2", "v3", "v4", "v5", "v6"];
    let mut list: Vec<(&str, &str)> = versions.iter().map(|v| ("reviews", *v)).collect();
    list.push(("ratings", "v1"));
    list.push(("details", "v1"));
    let apps = Apps::start(&list);
    let port = gateway_port();
    let eps: Vec<Ep> = versions
        .iter()
        .map(|v| ep(apps.port(&format!("reviews/{v}")), v))
        .collect();
    let r = |v: &str| dest(REVIEWS, Some(v), 9080);
    let table = format!(
        r#"  - name: uri-exact
    match: [{{uri: {{exact: /anything/exact}}}}]
    route: [{{destination: {v3}}}]
  - name: uri-prefix
    match: [{{uri: {{prefix: /anything/pre}}}}]
    route: [{{destination: {v4}}}]
  - name: uri-regex
    match: [{{uri: {{regex: "/anything/re/[0-9]+"}}}}]
    route: [{{destination: {v5}}}]
  - name: jason
    match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {v2}}}]
  - name: header-prefix
    match: [{{headers: {{x-group: {{prefix: beta}}}}}}]
    route: [{{destination: {v6}}}]
  - name: header-regex
    match: [{{headers: {{x-id: {{regex: "[0-9]{{3}}"}}}}}}]
    route: [{{destination: {v3}}}]
  - name: query
    match: [{{queryParams: {{canary: {{exact: "true"}}}}}}]
    route: [{{destination: {v4}}}]
  - name: method
    match: [{{method: {{exact: POST}}}}]
    route: [{{destination: {v5}}}]
  - name: without-header
    match: [{{uri: {{prefix: /anything/wh}}, withoutHeaders: {{x-skip: {{}}}}}}]
    route: [{{destination: {v6}}}]
  - name: default
    route: [{{destination: {v1}}}]
"#,
        v1 = r("v1"),
        v2 = r("v2"),
        v3 = r("v3"),
        v4 = r("v4"),
        v5 = r("v5"),
        v6 = r("v6"),
    );
    let ratings = "ratings.default.svc.cluster.local";
    let details = "details.default.svc.cluster.local";
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("reviews", REVIEWS, 9080, "HTTP", &eps),
        service_entry_yaml(
            "ratings",
            ratings,
            9080,
            "HTTP",
            &[ep(apps.port("ratings/v1"), "v1")],
        ),
        service_entry_yaml(
            "details",
            details,
            9080,
            "HTTP",
            &[ep(apps.port("details/v1"), "v1")],
        ),
        destination_rule_yaml("reviews", REVIEWS, None, &versions),
        virtual_service_yaml("matchers", &["*"], &table),
        virtual_service_yaml(
            "exact-host",
            &["reviews.example.com"],
            &format!(
                "  - route: [{{destination: {}}}]\n",
                dest(ratings, None, 9080)
            ),
        ),
        virtual_service_yaml(
            "wildcard-host",
            &["*.example.com"],
            &format!(
                "  - route: [{{destination: {}}}]\n",
                dest(details, None, 9080)
            ),
        ),
    ]);
    let mut gw = Gateway::start(port, &yaml);
    let url = |p: &str| gw.url(p);
    let host = |h: &str| format!("Host: {h}");
    let host_port = |h: &str| format!("Host: {h}:{port}");

    // (description, path, extra curl args, expected `name/version`)
    let cases: Vec<(&str, String, Vec<String>, &str)> = vec![
        // Virtual hosts by authority.
        (
            "exact host",
            url("/get"),
            vec!["-H".into(), host("reviews.example.com")],
            "ratings/v1",
        ),
        (
            "exact host with port",
            url("/get"),
            vec!["-H".into(), host_port("reviews.example.com")],
            "ratings/v1",
        ),
        (
            "wildcard host",
            url("/get"),
            vec!["-H".into(), host("foo.example.com")],
            "details/v1",
        ),
        (
            "wildcard host with port",
            url("/get"),
            vec!["-H".into(), host_port("foo.example.com")],
            "details/v1",
        ),
        (
            "wildcard host, two labels",
            url("/get"),
            vec!["-H".into(), host("a.b.example.com")],
            "details/v1",
        ),
        (
            "catch-all host",
            url("/get"),
            vec!["-H".into(), host("example.com")],
            "reviews/v1",
        ),
        ("catch-all ip:port", url("/get"), vec![], "reviews/v1"),
        // URI.
        ("uri exact", url("/anything/exact"), vec![], "reviews/v3"),
        (
            "uri exact is not a prefix",
            url("/anything/exact/more"),
            vec![],
            "reviews/v1",
        ),
        (
            "uri prefix",
            url("/anything/prefix-and-more"),
            vec![],
            "reviews/v4",
        ),
        (
            "uri prefix too short",
            url("/anything/pr"),
            vec![],
            "reviews/v1",
        ),
        ("uri regex", url("/anything/re/123"), vec![], "reviews/v5"),
        (
            "uri regex is a full match",
            url("/anything/re/12a"),
            vec![],
            "reviews/v1",
        ),
        // Headers.
        (
            "header exact",
            url("/anything/h"),
            vec!["-H".into(), "end-user: jason".into()],
            "reviews/v2",
        ),
        (
            "header exact is exact",
            url("/anything/h"),
            vec!["-H".into(), "end-user: jasonx".into()],
            "reviews/v1",
        ),
        (
            "header prefix",
            url("/anything/h"),
            vec!["-H".into(), "x-group: beta-7".into()],
            "reviews/v6",
        ),
        (
            "header prefix miss",
            url("/anything/h"),
            vec!["-H".into(), "x-group: alpha".into()],
            "reviews/v1",
        ),
        (
            "header regex",
            url("/anything/h"),
            vec!["-H".into(), "x-id: 123".into()],
            "reviews/v3",
        ),
        (
            "header regex is a full match",
            url("/anything/h"),
            vec!["-H".into(), "x-id: 1234".into()],
            "reviews/v1",
        ),
        // Query parameters.
        (
            "query exact",
            url("/anything/q?canary=true"),
            vec![],
            "reviews/v4",
        ),
        (
            "query exact miss",
            url("/anything/q?canary=false"),
            vec![],
            "reviews/v1",
        ),
        // Method.
        (
            "method POST",
            url("/anything/m"),
            vec!["-X".into(), "POST".into(), "-d".into(), "x".into()],
            "reviews/v5",
        ),
        ("method GET", url("/anything/m"), vec![], "reviews/v1"),
        // withoutHeaders.
        (
            "withoutHeaders, header absent",
            url("/anything/wh"),
            vec![],
            "reviews/v6",
        ),
        (
            "withoutHeaders, header present",
            url("/anything/wh"),
            vec!["-H".into(), "x-skip: 1".into()],
            "reviews/v1",
        ),
        // First match wins: exact uri (v3) is listed before jason (v2).
        (
            "first match wins",
            url("/anything/exact"),
            vec!["-H".into(), "end-user: jason".into()],
            "reviews/v3",
        ),
        (
            "first match wins (regex before method)",
            url("/anything/re/7"),
            vec!["-X".into(), "POST".into(), "-d".into(), "x".into()],
            "reviews/v5",
        ),
        (
            "first match wins (jason before header-prefix)",
            url("/anything/h"),
            vec![
                "-H".into(),
                "end-user: jason".into(),
                "-H".into(),
                "x-group: beta".into(),
            ],
            "reviews/v2",
        ),
    ];
    let mut failures = Vec::new();
    for (what, url, extra, want) in &cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let got = via_curl(url, &extra);
        if got != *want {
            failures.push(format!(
                "{what}: {url} {extra:?}: expected {want}, got {got}"
            ));
        }
    }

    // end-user: jason → v2, every time.
    let mut client = gw.client();
    let jason = tally(
        &mut client,
        "bookinfo.local",
        "/reviews",
        &[("end-user", "jason")],
        50,
    );
    if jason.get("reviews/v2") != Some(&50) {
        failures.push(format!(
            "jason: expected reviews/v2 50 of 50, got {jason:?}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} routing case(s) failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        gw.proxy.describe()
    );
}

#[test]
fn weighted_split_90_10_over_1000_requests() {
    let port = gateway_port();
    let (_apps, mut parts) = reviews_v1_v2(port);
    let http = format!(
        "  - route:\n    - {{destination: {}, weight: 90}}\n    - {{destination: {}, weight: 10}}\n",
        dest(REVIEWS, Some("v1"), 9080),
        dest(REVIEWS, Some("v2"), 9080)
    );
    parts.push(virtual_service_yaml("reviews", &["*"], &http));
    let yaml = docs(&parts);
    let mut gw = Gateway::start(port, &yaml);
    let counts = tally(&mut gw.client(), "reviews.local", "/reviews", &[], 1000);
    let v1 = counts.get("reviews/v1").copied().unwrap_or(0);
    let v2 = counts.get("reviews/v2").copied().unwrap_or(0);
    assert_eq!(
        v1 + v2,
        1000,
        "only v1 and v2, all 200: {counts:?}\n{}",
        gw.proxy.describe()
    );
    // ±4 points of 1000: v2 in 60..=140 (Binomial(1000, 0.1) has sd 9.5).
    assert!(
        (60..=140).contains(&v2),
        "v2 share should be 10% ± 4 points: {counts:?}"
    );
}

/// Three endpoints `lb/a`, `lb/b`, `lb/c` behind `lb.default.svc.cluster.local`, with the given
/// DestinationRule load balancer and endpoint weights.
fn lb_fixture(lb: Option<&str>, weights: [Option<u32>; 3]) -> (Apps, Gateway) {
    let apps = Apps::start(&[("lb", "a"), ("lb", "b"), ("lb", "c")]);
    let host = "lb.default.svc.cluster.local";
    let eps: Vec<Ep> = ["a", "b", "c"]
        .iter()
        .zip(weights)
        .map(|(v, weight)| Ep {
            port: apps.port(&format!("lb/{v}")),
            version: v,
            weight,
        })
        .collect();
    let port = gateway_port();
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("lb", host, 9080, "HTTP", &eps),
        destination_rule_yaml("lb", host, lb, &[]),
        virtual_service_yaml(
            "lb",
            &["*"],
            &format!("  - route: [{{destination: {}}}]\n", dest(host, None, 9080)),
        ),
    ]);
    let gw = Gateway::start(port, &yaml);
    (apps, gw)
}

fn count(counts: &BTreeMap<String, usize>, key: &str) -> usize {
    counts.get(key).copied().unwrap_or(0)
}

#[test]
fn round_robin_is_exactly_even() {
    let (_apps, mut gw) = lb_fixture(Some("ROUND_ROBIN"), [None; 3]);
    let counts = tally(&mut gw.client(), "lb.local", "/lb", &[], 300);
    let expected: BTreeMap<String, usize> = ["lb/a", "lb/b", "lb/c"]
        .iter()
        .map(|k| (k.to_string(), 100))
        .collect();
    assert_eq!(
        counts,
        expected,
        "ROUND_ROBIN over 300 requests\n{}",
        gw.proxy.describe()
    );
}

#[test]
fn endpoint_weights_shift_round_robin_traffic() {
    // Weights 3, 1, 1: the expected split is 60/20/20 (smooth weighted round robin is exact
    // over whole cycles; the bounds are generous anyway).
    let (_apps, mut gw) = lb_fixture(Some("ROUND_ROBIN"), [Some(3), Some(1), Some(1)]);
    let counts = tally(&mut gw.client(), "lb.local", "/lb", &[], 250);
    let (a, b, c) = (
        count(&counts, "lb/a"),
        count(&counts, "lb/b"),
        count(&counts, "lb/c"),
    );
    assert_eq!(a + b + c, 250, "{counts:?}\n{}", gw.proxy.describe());
    assert!(
        (120..=180).contains(&a),
        "weight 3 of 5 ≈ 150 of 250: {counts:?}"
    );
    assert!(
        (25..=75).contains(&b) && (25..=75).contains(&c),
        "weight 1 of 5 ≈ 50: {counts:?}"
    );
}

#[test]
fn endpoint_weights_shift_default_least_request_traffic() {
    // Two weighted endpoints only: a weight 3, b weight 1 → about 75/25.
    let apps = Apps::start(&[("lb", "a"), ("lb", "b")]);
    let host = "lb.default.svc.cluster.local";
    let eps = [
        Ep {
            port: apps.port("lb/a"),
            version: "a",
            weight: Some(3),
        },
        Ep {
            port: apps.port("lb/b"),
            version: "b",
            weight: Some(1),
        },
    ];
    let port = gateway_port();
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("lb", host, 9080, "HTTP", &eps),
        virtual_service_yaml(
            "lb",
            &["*"],
            &format!("  - route: [{{destination: {}}}]\n", dest(host, None, 9080)),
        ),
    ]);
    let mut gw = Gateway::start(port, &yaml);
    let counts = tally(&mut gw.client(), "lb.local", "/lb", &[], 200);
    let (a, b) = (count(&counts, "lb/a"), count(&counts, "lb/b"));
    assert_eq!(a + b, 200, "{counts:?}\n{}", gw.proxy.describe());
    assert!(
        (120..=180).contains(&a),
        "weight 3 vs 1 ≈ 150/50 of 200: {counts:?}"
    );
}

#[test]
fn least_request_default_and_random_reach_every_endpoint() {
    for lb in [None, Some("LEAST_REQUEST"), Some("RANDOM")] {
        let (_apps, mut gw) = lb_fixture(lb, [None; 3]);
        let counts = tally(&mut gw.client(), "lb.local", "/lb", &[], 150);
        for key in ["lb/a", "lb/b", "lb/c"] {
            // Uniform over 150: mean 50; 10 is far below any plausible outcome.
            assert!(
                count(&counts, key) >= 10,
                "{lb:?}: every endpoint gets some of 150 requests: {counts:?}\n{}",
                gw.proxy.describe()
            );
        }
        assert_eq!(counts.values().sum::<usize>(), 150, "{lb:?}: {counts:?}");
    }
}

#[test]
fn failures_explain_themselves() {
    let apps = Apps::start(&[("reviews", "v1")]);
    let closed = free_port(); // nothing listens there
    let port = gateway_port();
    let ghost = "ghost.default.svc.cluster.local";
    let down = "down.default.svc.cluster.local";
    let http = format!(
        r#"  - match: [{{uri: {{prefix: /no-endpoints}}}}]
    route: [{{destination: {empty_subset}}}]
  - match: [{{uri: {{prefix: /unknown-service}}}}]
    route: [{{destination: {ghost}}}]
  - match: [{{uri: {{prefix: /closed-port}}}}]
    route: [{{destination: {down}}}]
  - route: [{{destination: {ok}}}]
"#,
        empty_subset = dest(REVIEWS, Some("v9"), 9080),
        ghost = dest(ghost, None, 9080),
        down = dest(down, None, 9080),
        ok = dest(REVIEWS, Some("v1"), 9080),
    );
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml(
            "reviews",
            REVIEWS,
            9080,
            "HTTP",
            &[ep(apps.port("reviews/v1"), "v1")],
        ),
        service_entry_yaml("down", down, 9080, "HTTP", &[ep(closed, "v1")]),
        destination_rule_yaml("reviews", REVIEWS, None, &["v1", "v9"]),
        virtual_service_yaml("known", &["known.example.com"], &http),
    ]);
    let mut gw = Gateway::start(port, &yaml);
    let known = "Host: known.example.com";
    let closed_port = closed.to_string();
    // Sanity: the known host routes.
    let (status, headers, body) = http_request(&gw.url("/reviews"), &["-H", known]);
    assert_eq!(status, 200, "{body}\n{}", gw.proxy.describe());
    assert_eq!(headers["x-sample-service"], "reviews/v1");

    // (what, path, host header, status, flag, a word the one-line body must contain)
    let cases = [
        (
            "unknown host",
            "/reviews",
            "Host: nobody.example.org",
            404,
            "NR",
            "nobody.example.org",
        ),
        (
            "subset without endpoints",
            "/no-endpoints",
            known,
            503,
            "UH",
            "v9",
        ),
        (
            "service without registry entry",
            "/unknown-service",
            known,
            503,
            "UH",
            "ghost",
        ),
        (
            "endpoint on a closed port",
            "/closed-port",
            known,
            503,
            // Istio's default retries (connect-failure, 2 retries) ran out: URX as Envoy says.
            "UF,URX",
            &closed_port,
        ),
    ];
    let mut failures = Vec::new();
    for (what, path, host, want_status, want_flag, word) in cases {
        let (status, headers, body) = http_request(&gw.url(path), &["-H", host]);
        let flag = headers
            .get("x-trellis-flags")
            .map(String::as_str)
            .unwrap_or("<none>");
        let one_line = body.ends_with('\n') && body.trim_end().lines().count() == 1;
        if status != want_status || flag != want_flag || !one_line || !body.contains(word) {
            failures.push(format!(
                "{what}: expected {want_status} x-trellis-flags: {want_flag} and a one-line body \
                 naming {word:?}; got {status} x-trellis-flags: {flag} body {body:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        gw.proxy.describe()
    );
}

#[test]
fn service_entry_selecting_no_workloads_is_503_uh() {
    // A STATIC ServiceEntry needs endpoints, addresses or a workload selector (Istio's
    // validation); one whose selector matches no workload has no endpoints at all.
    let port = gateway_port();
    let empty = "empty.default.svc.cluster.local";
    let entry = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: empty, namespace: default}}
spec:
  hosts: [{empty}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector:
    labels: {{app: nothing-runs-this}}
"#
    );
    let yaml = docs(&[
        gateway_yaml(port),
        entry,
        virtual_service_yaml(
            "empty",
            &["*"],
            &format!(
                "  - route: [{{destination: {}}}]\n",
                dest(empty, None, 9080)
            ),
        ),
    ]);
    let mut gw = Gateway::start(port, &yaml);
    let (status, headers, body) = http_request(&gw.url("/anything"), &[]);
    assert_eq!(
        (status, headers.get("x-trellis-flags").map(String::as_str)),
        (503, Some("UH")),
        "{body}\n{}",
        gw.proxy.describe()
    );
    assert!(body.contains(empty), "the body names the cluster: {body}");
}

/// A route `timeout` (Istio's `http[].timeout`) bounds the wait for the upstream's response:
/// a 2 s upstream delay with a 0.5 s timeout is 504 with flag `UT` and a one-line body (not
/// retried: the route timeout covers all attempts), while a faster request succeeds.
#[test]
fn route_timeout_answers_504_ut() {
    let port = gateway_port();
    let (_apps, mut parts) = reviews_v1_v2(port);
    let http = format!(
        "  - timeout: 0.5s\n    route: [{{destination: {}}}]\n",
        dest(REVIEWS, Some("v1"), 9080)
    );
    parts.push(virtual_service_yaml("reviews", &["*"], &http));
    let gw = Gateway::start(port, &docs(&parts));

    let (status, _, body) = http_request(&gw.url("/delay/0.1"), &[]);
    assert_eq!(status, 200, "a fast answer fits in the timeout: {body}");

    let started = std::time::Instant::now();
    let (status, headers, body) = http_request(&gw.url("/delay/2"), &[]);
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    assert_eq!(
        headers.get("x-trellis-flags").map(String::as_str),
        Some("UT")
    );
    assert_eq!(
        body.trim_end().lines().count(),
        1,
        "one-line body: {body:?}"
    );
    let timeouts = metric_sum(
        &gw.metrics(),
        "istio_requests_total",
        &[("response_code", "504"), ("response_flags", "UT")],
    );
    assert_eq!(timeouts, 1.0);
}

/// A `resolution: DNS` ServiceEntry: the proxy resolves the endpoint's host name (`localhost`)
/// and routes to it; the cluster is STRICT_DNS in `/config_dump`.
#[test]
fn dns_service_entry_resolves_and_routes() {
    let apps = Apps::start(&[("legacy", "v1")]);
    let port = gateway_port();
    let host = "legacy.example.internal";
    let se = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {app}}}}}]
"#,
        app = apps.port("legacy/v1")
    );
    let http = format!("  - route: [{{destination: {}}}]\n", dest(host, None, 8000));
    let yaml = docs(&[
        gateway_yaml(port),
        se,
        virtual_service_yaml("legacy", &["*"], &http),
    ]);
    let gw = Gateway::start(port, &yaml);
    let (status, headers, body) = http_request(&gw.url("/get"), &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-sample-service"], "legacy/v1");
    let (_, dump) = gw.admin_get("/config_dump");
    assert!(dump.contains("STRICT_DNS"), "{dump}");
}

/// Istio's traffic-shifting task: 50/50 between v1 and v3 (within ±5 points over 1000 requests),
/// then, by a live edit of the configuration, 100% to v3.
#[test]
fn traffic_shifting_50_50_then_all_to_v3() {
    let port = gateway_port();
    let apps = Apps::start(&[("reviews", "v1"), ("reviews", "v3")]);
    let base = vec![
        gateway_yaml(port),
        service_entry_yaml(
            "reviews",
            REVIEWS,
            9080,
            "HTTP",
            &[
                ep(apps.port("reviews/v1"), "v1"),
                ep(apps.port("reviews/v3"), "v3"),
            ],
        ),
        destination_rule_yaml("reviews", REVIEWS, None, &["v1", "v3"]),
    ];
    let split = |w1: u32, w3: u32| {
        let http = format!(
            "  - route:\n    - {{destination: {}, weight: {w1}}}\n    - {{destination: {}, weight: {w3}}}\n",
            dest(REVIEWS, Some("v1"), 9080),
            dest(REVIEWS, Some("v3"), 9080)
        );
        let mut parts = base.clone();
        parts.push(virtual_service_yaml("reviews", &["*"], &http));
        docs(&parts)
    };
    let mut gw = Gateway::start(port, &split(50, 50));
    let counts = tally(&mut gw.client(), "reviews.local", "/reviews", &[], 1000);
    let v1 = counts.get("reviews/v1").copied().unwrap_or(0);
    let v3 = counts.get("reviews/v3").copied().unwrap_or(0);
    assert_eq!(v1 + v3, 1000, "only v1 and v3, all 200: {counts:?}");
    // ±5 points: v3 in 450..=550 (Binomial(1000, 0.5) has sd 15.8).
    assert!((450..=550).contains(&v3), "50/50 ± 5 points: {counts:?}");

    write_atomic(gw.dir.path(), "mesh.yaml", &split(0, 100));
    let moved = trellis_testkit::wait_until(std::time::Duration::from_secs(15), || {
        tally(&mut gw.client(), "reviews.local", "/reviews", &[], 20).get("reviews/v3") == Some(&20)
    });
    assert!(
        moved,
        "the edit to 100% v3 never took effect\n{}",
        gw.proxy.describe()
    );
    let counts = tally(&mut gw.client(), "reviews.local", "/reviews", &[], 200);
    assert_eq!(
        counts.get("reviews/v3"),
        Some(&200),
        "all to v3: {counts:?}"
    );
}
