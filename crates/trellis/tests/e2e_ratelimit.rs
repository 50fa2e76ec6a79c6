//! Rate limits end to end (Istio's rate limiting tasks replayed with `RateLimitPolicy`): a
//! gateway `trellis-proxy` on its own config directory in front of the sample app (HTTP) and its
//! gRPC echo, requests with curl and grpcio, decisions read from the answers, the access log and
//! `/stats/prometheus`. Needs `cargo build --workspace --bins` and `python3 -m pip install grpcio`.

mod e2e_support;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e_support::{
    Apps, Gateway, dest, docs, ep, gateway_port, gateway_yaml, grpc, metric_sum,
    service_entry_yaml, virtual_service_yaml, write_atomic,
};
use trellis_testkit::{http_request, promtool_check, wait_until};

const HTTPBIN: &str = "productpage.default.svc.cluster.local";
const ECHO: &str = "echo.default.svc.cluster.local";

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n{spec}"
    )
}

fn requests(metrics: &str, policy: &str, limit: &str, result: &str) -> f64 {
    metric_sum(
        metrics,
        "trellis_ratelimit_requests_total",
        &[
            ("policy", policy),
            ("limit", limit),
            ("kind", "local"),
            ("result", result),
        ],
    )
}

fn get(gw: &Gateway, path: &str, headers: &[&str]) -> (u16, BTreeMap<String, String>, String) {
    let mut args = Vec::new();
    for h in headers {
        args.extend(["-H", *h]);
    }
    let (status, h, body) = http_request(&gw.url(path), &args);
    let h = h
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    (status, h, body)
}

#[test]
fn local_limits_buckets_shadow_route_scope_grpc_and_a_rejected_edit() {
    let apps = Apps::start(&[("productpage", "v1"), ("echo", "v1")]);
    let port = gateway_port();
    let http = format!(
        r#"  - name: grpc
    match: [{{uri: {{prefix: /trellis.sample.v1.Echo/}}}}]
    route: [{{destination: {echo}}}]
  - name: productpage
    match: [{{uri: {{exact: /productpage}}}}]
    route: [{{destination: {httpbin}}}]
  - name: users
    match: [{{uri: {{prefix: /productpage/user}}}}]
    route: [{{destination: {httpbin}}}]
  - name: shadowed
    match: [{{uri: {{prefix: /productpage/shadow}}}}]
    route: [{{destination: {httpbin}}}]
  - name: free
    route: [{{destination: {httpbin}}}]
"#,
        echo = dest(ECHO, None, 50051),
        httpbin = dest(HTTPBIN, None, 8000),
    );
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml(
            "productpage",
            HTTPBIN,
            8000,
            "HTTP",
            &[ep(apps.port("productpage/v1"), "v1")],
        ),
        service_entry_yaml(
            "echo",
            ECHO,
            50051,
            "GRPC",
            &[ep(apps.port("echo/v1"), "v1")],
        ),
        virtual_service_yaml("bookinfo", &["*"], &http),
        // Istio's local task: a bucket of 4 per minute.
        policy(
            "local-task",
            "  routes: [productpage]\n  limits:\n  - name: bucket\n    local: {maxTokens: 4, tokensPerFill: 4, fillInterval: 60s}\n",
        ),
        policy(
            "per-user",
            "  routes: [users]\n  limits:\n  - name: by-header\n    descriptors: [{header: {name: x-user}}]\n    local: {maxTokens: 2, fillInterval: 60s}\n",
        ),
        policy(
            "shadow",
            "  routes: [shadowed]\n  shadow: true\n  limits:\n  - name: one\n    local: {maxTokens: 1, fillInterval: 60s}\n",
        ),
        policy(
            "grpc",
            "  routes: [grpc]\n  limits:\n  - name: one\n    local: {maxTokens: 1, fillInterval: 60s}\n",
        ),
    ]);
    let mut gw = Gateway::start(port, &yaml);
    let ready = wait_until(Duration::from_secs(10), || {
        get(&gw, "/anything/ready", &[]).0 == 200
    });
    assert!(
        ready,
        "gateway never served /anything: {}",
        gw.proxy.describe()
    );

    // 200 ×4, then 429 with Envoy's body, the headers and the flag.
    for i in 0..4 {
        let (status, _, body) = get(&gw, "/productpage", &[]);
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let (status, h, body) = get(&gw, "/productpage", &[]);
    assert_eq!(
        (status, body.as_str()),
        (429, "local_rate_limited"),
        "{h:?}"
    );
    assert_eq!(h.get("x-trellis-flags").map(String::as_str), Some("RL"));
    assert_eq!(
        h.get("x-envoy-ratelimited").map(String::as_str),
        Some("true")
    );
    assert_eq!(h.get("x-ratelimit-limit").map(String::as_str), Some("4"));
    assert_eq!(
        h.get("x-ratelimit-remaining").map(String::as_str),
        Some("0")
    );
    let reset: u64 = h["x-ratelimit-reset"].parse().expect("reset seconds");
    assert!((1..=60).contains(&reset), "{h:?}");
    assert_eq!(h.get("retry-after"), h.get("x-ratelimit-reset"), "{h:?}");

    // A route-scoped policy leaves the other routes alone.
    for _ in 0..6 {
        assert_eq!(get(&gw, "/anything/x", &[]).0, 200);
    }

    // One bucket per distinct header value; a request without the header is not counted.
    assert_eq!(get(&gw, "/productpage/user", &["x-user: alice"]).0, 200);
    assert_eq!(get(&gw, "/productpage/user", &["x-user: alice"]).0, 200);
    assert_eq!(get(&gw, "/productpage/user", &["x-user: alice"]).0, 429);
    assert_eq!(get(&gw, "/productpage/user", &["x-user: bob"]).0, 200);
    for _ in 0..3 {
        assert_eq!(get(&gw, "/productpage/user", &[]).0, 200);
    }

    // Shadow mode: admitted, counted as over the limit.
    for _ in 0..3 {
        assert_eq!(get(&gw, "/productpage/shadow", &[]).0, 200);
    }

    // gRPC: RESOURCE_EXHAUSTED.
    let addr = format!("127.0.0.1:{port}");
    let v = grpc(&addr, &["echo", "hello"]);
    assert_eq!(v["code"], "OK", "{v}");
    let v = grpc(&addr, &["echo", "hello"]);
    assert_eq!(v["code"], "RESOURCE_EXHAUSTED", "{v}");

    let metrics = gw.metrics();
    // Our family alone: the Istio duration histogram keeps its millisecond name (a known lint).
    let ours: String = metrics
        .lines()
        .filter(|l| l.contains("trellis_ratelimit_") || l.starts_with("# EOF"))
        .map(|l| format!("{l}\n"))
        .collect();
    promtool_check(&ours);
    let p = "istio-system/local-task";
    assert_eq!(requests(&metrics, p, "bucket", "ok"), 4.0, "{metrics}");
    assert_eq!(requests(&metrics, p, "bucket", "over_limit"), 1.0);
    let u = "istio-system/per-user";
    assert_eq!(requests(&metrics, u, "by-header", "ok"), 3.0);
    assert_eq!(requests(&metrics, u, "by-header", "over_limit"), 1.0);
    let s = "istio-system/shadow";
    assert_eq!(requests(&metrics, s, "one", "ok"), 1.0);
    assert_eq!(requests(&metrics, s, "one", "shadow_over_limit"), 2.0);
    assert_eq!(requests(&metrics, s, "one", "over_limit"), 0.0);
    assert_eq!(
        requests(&metrics, "istio-system/grpc", "one", "over_limit"),
        1.0
    );
    let rl = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("response_flags", "RL"), ("response_code", "429")],
    );
    assert_eq!(rl, 2.0, "{metrics}");
    let grpc_rl = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("response_flags", "RL"), ("grpc_response_status", "8")],
    );
    assert_eq!(grpc_rl, 1.0, "{metrics}");

    // The access log carries the flag.
    let logged = gw.proxy.stdout_text().lines().any(|l| {
        l.contains("\"/productpage\"")
            && l.contains("\"response_flags\":\"RL\"")
            && l.contains("\"response_code\":429")
    });
    assert!(
        logged,
        "no RL line in the access log:\n{}",
        gw.proxy.stdout_text()
    );

    // An invalid policy: every error with its place, and the last good config keeps serving
    // (the exhausted bucket stays exhausted, the other routes answer).
    let bad = policy(
        "broken",
        "  limits:\n  - name: ''\n    descriptors: [{header: {}}, {path: {exact: /a}, method: {exact: GET}}]\n    local: {maxTokens: 0, fillInterval: 10ms}\n",
    );
    write_atomic(gw.dir.path(), "broken.yaml", &bad);
    let mut stderr = String::new();
    let reported = wait_until(Duration::from_secs(10), || {
        stderr = gw.proxy.stderr_text();
        stderr.contains("broken.yaml") && stderr.contains("fillInterval")
    });
    assert!(reported, "{}", gw.proxy.describe());
    for want in [
        "spec.limits[0].name: limit name is required",
        "spec.limits[0].descriptors[0].header.name: header name is required",
        "spec.limits[0].descriptors[1]: set exactly one of",
        "spec.limits[0].local.maxTokens: maxTokens must be greater than 0",
        "spec.limits[0].local.fillInterval: fillInterval 10ms is below Envoy's minimum of 50ms",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("broken.yaml:") && l.contains(want)),
            "missing {want:?} in stderr:\n{stderr}"
        );
    }
    assert_eq!(get(&gw, "/productpage", &[]).0, 429);
    assert_eq!(get(&gw, "/anything/after", &[]).0, 200);
    assert!(gw.proxy.is_running(), "{}", gw.proxy.describe());
}

/// Global limits while the rate limit service is down (nothing listens on its port): a
/// FAIL_OPEN policy admits and counts `error`, a FAIL_CLOSED one answers 500 with `RLSE`.
/// Counting against `trellis ratelimit` and Redis is the service's own test suite's.
#[test]
fn global_limits_apply_the_failure_mode_when_the_service_is_down() {
    let apps = Apps::start(&[("productpage", "v1")]);
    let port = gateway_port();
    let rls_port = trellis_testkit::free_port();
    let http = format!(
        r#"  - name: closed
    match: [{{uri: {{prefix: /productpage/closed}}}}]
    route: [{{destination: {httpbin}}}]
  - name: open
    route: [{{destination: {httpbin}}}]
"#,
        httpbin = dest(HTTPBIN, None, 8000),
    );
    let mesh = "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  rateLimitService: {service: ratelimit.default.svc.cluster.local, port: 8081, timeout: 200ms}\n".to_string();
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml(
            "productpage",
            HTTPBIN,
            8000,
            "HTTP",
            &[ep(apps.port("productpage/v1"), "v1")],
        ),
        service_entry_yaml(
            "ratelimit",
            "ratelimit.default.svc.cluster.local",
            8081,
            "GRPC",
            &[ep(rls_port, "v1")],
        ),
        virtual_service_yaml("bookinfo", &["*"], &http),
        mesh,
        policy(
            "open",
            "  routes: [open]\n  limits:\n  - name: productpage\n    descriptors: [{path: {exact: /productpage}}]\n    global: {requestsPerUnit: 1, unit: MINUTE}\n",
        ),
        policy(
            "closed",
            "  routes: [closed]\n  failureMode: FAIL_CLOSED\n  limits:\n  - name: all\n    global: {requestsPerUnit: 100, unit: SECOND}\n",
        ),
    ]);
    let mut gw = Gateway::start(port, &yaml);
    let ready = wait_until(Duration::from_secs(10), || {
        get(&gw, "/productpage", &[]).0 == 200
    });
    assert!(
        ready,
        "fail-open route never admitted: {}",
        gw.proxy.describe()
    );
    assert_eq!(
        get(&gw, "/productpage", &[]).0,
        200,
        "fail open admits again"
    );
    // Not matched by the descriptor: no check at all.
    assert_eq!(get(&gw, "/anything/x", &[]).0, 200);
    let (status, h, body) = get(&gw, "/productpage/closed", &[]);
    assert_eq!(status, 500, "{body}");
    assert_eq!(h.get("x-trellis-flags").map(String::as_str), Some("RLSE"));
    assert!(body.contains("rate limit service unavailable"), "{body}");
    let metrics = gw.metrics();
    let global = |policy: &str, limit: &str, result: &str| {
        metric_sum(
            &metrics,
            "trellis_ratelimit_requests_total",
            &[
                ("policy", policy),
                ("limit", limit),
                ("kind", "global"),
                ("result", result),
            ],
        )
    };
    assert!(
        global("istio-system/open", "productpage", "error") >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        global("istio-system/closed", "all", "error"),
        1.0,
        "{metrics}"
    );
    assert!(gw.proxy.is_running(), "{}", gw.proxy.describe());
}
