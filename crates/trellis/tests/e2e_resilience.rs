//! Acceptance tests of retries, retry safety, circuit breakers and failover through a real
//! gateway `trellis-proxy` and real `trellis sample-app` upstreams (issue 3): Istio YAML in,
//! what a client sees out (status, `x-trellis-flags`, which upstream answered, what the upstream
//! received) plus the proxy's metrics and access log. Needs `cargo build --workspace --bins`.

mod e2e_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::*;
use trellis_testkit::{free_port, sample_app_on};

const SVC: &str = "shop.default.svc.cluster.local";
const CLUSTER: &str = "outbound|8080||shop.default.svc.cluster.local";

/// A gateway routing every host to `shop` (endpoints on `ports`), with `http` extra keys of the
/// route (e.g. `retries`), VirtualService `annotations`, and DestinationRule `traffic_policy`.
fn shop(ports: &[u16], route_extra: &str, annotations: &str, traffic_policy: &str) -> Gateway {
    let port = gateway_port();
    let eps: Vec<Ep> = ports.iter().map(|p| ep(*p, "v1")).collect();
    let mut http = format!("  - route: [{{destination: {}}}]\n", dest(SVC, None, 8080));
    http.push_str(route_extra);
    let mut vs = virtual_service_yaml("shop", &["*"], &http);
    if !annotations.is_empty() {
        vs = vs.replace(
            "metadata: {name: shop, namespace: default}",
            &format!(
                "metadata: {{name: shop, namespace: default, annotations: {{{annotations}}}}}"
            ),
        );
    }
    let mut parts = vec![
        gateway_yaml(port),
        service_entry_yaml("shop", SVC, 8080, "HTTP", &eps),
        vs,
    ];
    if !traffic_policy.is_empty() {
        parts.push(format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: shop, namespace: default}}\nspec:\n  host: {SVC}\n  trafficPolicy:\n{traffic_policy}"
        ));
    }
    Gateway::start(port, &docs(&parts))
}

fn counter(gw: &Gateway, name: &str) -> f64 {
    metric_sum(&gw.metrics(), name, &[("cluster_name", CLUSTER)])
}

fn flags(r: &Resp) -> &str {
    r.headers.get("x-trellis-flags").map_or("-", String::as_str)
}

/// The `headers` object the sample app echoes.
fn echoed_header(body: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["headers"][name].as_str().map(str::to_owned)
}

fn json_u64(body: &str, key: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v[key].as_u64()
}

/// Istio's default policy (no `retries` on the route) retries a 503: the client sees 200, the
/// upstream saw `x-envoy-attempt-count: 2`, and the retry is counted for the cluster.
#[test]
fn a_503_then_200_is_retried_by_default() {
    let apps = Apps::start(&[("shop", "v1")]);
    let gw = shop(&[apps.port("shop/v1")], "", "", "");
    let mut c = gw.client();
    let r = c.get("shop.local", "/flaky/a/1", &[]).expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_u64(&r.body, "attempt"), Some(2), "{}", r.body);
    assert_eq!(
        echoed_header(&r.body, "x-envoy-attempt-count").as_deref(),
        Some("2"),
        "{}",
        r.body
    );
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_total"), 1.0);
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_success_total"), 1.0);
    assert_eq!(counter(&gw, "trellis_upstream_rq_total"), 1.0);
    // A request that needs no retry is sent once, as attempt 1.
    let r = c.get("shop.local", "/get", &[]).expect("request");
    assert_eq!(
        echoed_header(&r.body, "x-envoy-attempt-count").as_deref(),
        Some("1")
    );
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_total"), 1.0);
}

/// When every attempt fails, the last upstream response is returned with flag `URX` (header
/// and access log); `attempts: 2` means three requests reached the upstream.
#[test]
fn exhausted_retries_return_the_last_response_with_urx() {
    let apps = Apps::start(&[("shop", "v1")]);
    let retries = "    retries: {attempts: 2, retryOn: 5xx}\n";
    let mut gw = shop(&[apps.port("shop/v1")], retries, "", "");
    let r = gw
        .client()
        .get("shop.local", "/flaky/b/10", &[])
        .expect("request");
    assert_eq!((r.status, flags(&r)), (503, "URX"), "{r:?}");
    assert_eq!(json_u64(&r.body, "attempt"), Some(3), "{}", r.body);
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_total"), 2.0);
    assert_eq!(
        counter(&gw, "trellis_upstream_rq_retry_limit_exceeded_total"),
        1.0
    );
    let logged = trellis_testkit::wait_until(Duration::from_secs(5), || {
        gw.proxy
            .stdout_text()
            .contains("\"response_flags\":\"URX\"")
    });
    assert!(logged, "access log has URX: {}", gw.proxy.describe());
    // A 500 is not a `retriable-status-codes` default, but is under `5xx`: also retried.
    let r = gw
        .client()
        .get("shop.local", "/status/500", &[])
        .expect("request");
    assert_eq!((r.status, flags(&r)), (500, "URX"));
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_total"), 4.0);
}

/// A POST is not repeated after it reached the upstream (a 503 comes back as is, executed
/// once), unless the VirtualService opts in with `trellis.dev/retry-non-idempotent`.
#[test]
fn post_is_retried_only_when_the_route_opts_in() {
    let apps = Apps::start(&[("shop", "v1")]);
    let retries = "    retries: {attempts: 3, retryOn: 5xx}\n";
    let gw = shop(&[apps.port("shop/v1")], retries, "", "");
    let r = gw
        .client()
        .request("POST", "shop.local", "/flaky/c/1", &[], "{}")
        .expect("request");
    assert_eq!((r.status, flags(&r)), (503, "-"), "{r:?}");
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_total"), 0.0);
    // The same upstream state: the next POST is its second request, and succeeds.
    let r = gw
        .client()
        .request("POST", "shop.local", "/flaky/c/1", &[], "{}")
        .expect("request");
    assert_eq!(json_u64(&r.body, "attempt"), Some(2));
    drop(gw);

    let opted = shop(
        &[apps.port("shop/v1")],
        retries,
        "trellis.dev/retry-non-idempotent: \"true\"",
        "",
    );
    let r = opted
        .client()
        .request("POST", "shop.local", "/flaky/d/1", &[], "{\"n\": 1}")
        .expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        echoed_header(&r.body, "x-envoy-attempt-count").as_deref(),
        Some("2")
    );
    assert_eq!(counter(&opted, "trellis_upstream_rq_retry_total"), 1.0);
}

/// A connect failure proves the request never reached the upstream: a POST is retried on
/// another endpoint (Istio's default policy), and each POST is executed exactly once.
#[test]
fn post_is_retried_on_connect_failure_and_executed_once() {
    let apps = Apps::start(&[("shop", "v1")]);
    let live = apps.port("shop/v1");
    let dead = free_port();
    let gw = shop(
        &[live, dead],
        "",
        "",
        "    loadBalancer: {simple: ROUND_ROBIN}\n",
    );
    let mut c = gw.client();
    for i in 0..10 {
        let id = format!("p{i}");
        let r = c
            .request("POST", "shop.local", "/ledger", &[("x-ledger-id", &id)], "")
            .expect("request");
        assert_eq!(r.status, 200, "POST {i}: {r:?}");
    }
    // Round robin sent half of the first attempts to the dead endpoint.
    assert!(counter(&gw, "trellis_upstream_rq_retry_total") >= 4.0);
    let ledger = ledger_of(live);
    assert_eq!(ledger.len(), 10, "{ledger:?}");
    assert!(ledger.values().all(|n| *n == 1), "{ledger:?}");
}

/// A 503 with `Retry-After: 1` waits a second before the retry.
#[test]
fn retry_after_sets_the_wait_before_the_retry() {
    let apps = Apps::start(&[("shop", "v1")]);
    let gw = shop(&[apps.port("shop/v1")], "", "", "");
    let start = Instant::now();
    let r = gw
        .client()
        .get("shop.local", "/flaky/e/1?retry_after=1", &[])
        .expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

/// `Retry-After` as an HTTP-date (RFC 9110): a 503 saying "not before now + 2 s" (second
/// precision, so at least one second away) delays the retry until then.
#[test]
fn retry_after_as_an_http_date_sets_the_wait() {
    let apps = Apps::start(&[("shop", "v1")]);
    let gw = shop(&[apps.port("shop/v1")], "", "", "");
    let mut c = gw.client();
    let start = Instant::now();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    let query = date.replace(' ', "%20").replace(',', "%2C");
    let r = c
        .get(
            "shop.local",
            &format!("/flaky/date/1?retry_after={query}"),
            &[],
        )
        .expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_u64(&r.body, "attempt"), Some(2), "{}", r.body);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // A date already past means "now": retried at once, without the (jittered) backoff the
    // test could not tell apart, but still retried.
    let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(60));
    let query = past.replace(' ', "%20").replace(',', "%2C");
    let r = c
        .get(
            "shop.local",
            &format!("/flaky/past/1?retry_after={query}"),
            &[],
        )
        .expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_u64(&r.body, "attempt"), Some(2), "{}", r.body);
}

/// `perTryTimeout` bounds each attempt; when all time out the answer is 504 `UT,URX`. The route
/// `timeout` bounds them all: a 2 s upstream delay with a 0.5 s timeout is 504 `UT`.
#[test]
fn per_try_and_route_timeouts() {
    let apps = Apps::start(&[("shop", "v1")]);
    let retries = "    retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: 5xx}\n";
    let gw = shop(&[apps.port("shop/v1")], retries, "", "");
    let start = Instant::now();
    let r = gw
        .client()
        .get("shop.local", "/delay/2", &[])
        .expect("request");
    assert_eq!((r.status, flags(&r)), (504, "UT,URX"), "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "three tries of 0.3 s"
    );
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_total"), 2.0);
    drop(gw);

    let route = "    timeout: 0.5s\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let gw = shop(&[apps.port("shop/v1")], route, "", "");
    let start = Instant::now();
    let r = gw
        .client()
        .get("shop.local", "/delay/2", &[])
        .expect("request");
    assert_eq!((r.status, flags(&r)), (504, "UT"), "{r:?}");
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_total"), 0.0);
}

/// Istio's circuit-breaking task: `maxConnections: 1`, `http1MaxPendingRequests: 1`,
/// `maxRequestsPerConnection: 1`. One client at a time never overflows; three concurrent
/// clients see many 503 `UO`, each counted as a pending overflow.
#[test]
fn connection_pool_limits_overflow_with_503_uo() {
    let apps = Apps::start(&[("shop", "v1")]);
    let policy = "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}\n";
    let gw = shop(&[apps.port("shop/v1")], "", "", policy);
    let mut c = gw.client();
    for i in 0..20 {
        let r = c.get("shop.local", "/get", &[]).expect("request");
        assert_eq!(r.status, 200, "sequential request {i}: {r:?}");
    }
    assert_eq!(
        counter(&gw, "trellis_upstream_rq_pending_overflow_total"),
        0.0
    );

    let results = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (addr, results) = (gw.addr(), Arc::clone(&results));
            std::thread::spawn(move || {
                let mut c = H1Client::new(addr);
                for _ in 0..15 {
                    let r = c.get("shop.local", "/delay/0.05", &[]).expect("request");
                    results
                        .lock()
                        .unwrap()
                        .push((r.status, flags(&r).to_owned()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let results = results.lock().unwrap();
    let overflowed = results
        .iter()
        .filter(|(s, f)| *s == 503 && f == "UO")
        .count();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(
        ok + overflowed,
        results.len(),
        "only 200 or 503 UO: {results:?}"
    );
    assert!(ok > 0, "{results:?}");
    assert!(
        overflowed * 5 >= results.len(),
        "at least 20% overflow: {results:?}"
    );
    assert_eq!(
        counter(&gw, "trellis_upstream_rq_pending_overflow_total"),
        overflowed as f64
    );
}

/// Under steady GET and POST load to three endpoints, one upstream is killed and restarted on
/// the same port: no GET fails (retries move them to the others) and no POST is executed twice.
#[test]
fn killing_an_endpoint_under_load_fails_no_get_and_repeats_no_post() {
    let mut apps = Apps::start(&[("shop", "a"), ("shop", "b"), ("shop", "c")]);
    let ports = [
        apps.port("shop/a"),
        apps.port("shop/b"),
        apps.port("shop/c"),
    ];
    let retries =
        "    retries: {attempts: 3, retryOn: \"5xx,reset,connect-failure,refused-stream\"}\n";
    let gw = shop(&ports, retries, "", "");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|t| {
            let (addr, stop) = (gw.addr(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut c = H1Client::new(addr);
                let (mut gets, mut failed_gets, mut posts) = (0, Vec::new(), 0);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    n += 1;
                    match c.get("shop.local", "/get", &[]) {
                        Ok(r) if r.status == 200 => gets += 1,
                        other => failed_gets.push(format!("{other:?}")),
                    }
                    let id = format!("t{t}-{n}");
                    if c.request("POST", "shop.local", "/ledger", &[("x-ledger-id", &id)], "")
                        .is_ok_and(|r| r.status == 200)
                    {
                        posts += 1;
                    }
                }
                (gets, failed_gets, posts)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let killed = ports[1];
    apps.procs[1].signal(9);
    let _ = apps.procs[1].wait_timeout(Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    apps.procs[1] = sample_app_on(killed, "shop", "b", &[]);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut total_gets = 0;
    for c in clients {
        let (gets, failed, posts) = c.join().expect("client thread");
        assert!(failed.is_empty(), "failed GETs: {failed:?}");
        assert!(
            gets > 50 && posts > 50,
            "load ran: {gets} GETs, {posts} POSTs"
        );
        total_gets += gets;
    }
    let mut executions: BTreeMap<String, u64> = BTreeMap::new();
    for p in ports {
        for (id, n) in ledger_of(p) {
            *executions.entry(id).or_default() += n;
        }
    }
    let twice: Vec<_> = executions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "POSTs executed more than once: {twice:?}");
    assert!(total_gets > 100, "{total_gets} GETs");
    // The restarted process starts with an empty ledger: entries prove it is back in rotation.
    assert!(
        !ledger_of(killed).is_empty(),
        "restarted endpoint got no traffic"
    );
    // Requests in flight to (or sent towards) the killed endpoint were retried elsewhere.
    assert!(counter(&gw, "trellis_upstream_rq_retry_total") >= 1.0);
}

/// The ledger of the sample app on `port`: POSTed ids and how often each was executed.
fn ledger_of(port: u16) -> BTreeMap<String, u64> {
    let mut c = H1Client::new(SocketAddr::from(([127, 0, 0, 1], port)));
    let r = c.get("ledger", "/ledger", &[]).expect("GET /ledger");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("ledger JSON");
    v["ledger"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// A `DestinationPolicy` retry budget of 0% plus 1 retry a second: a burst of failing requests
/// gets about one retry; the others overflow the budget (503 returned as is, flag `UO`, counted
/// in `trellis_upstream_rq_retry_overflow_total`).
#[test]
fn retry_budget_caps_retries_per_destination() {
    let apps = Apps::start(&[("shop", "v1")]);
    let port = gateway_port();
    let http = format!(
        "  - route: [{{destination: {}}}]\n    retries: {{attempts: 2, retryOn: 5xx}}\n",
        dest(SVC, None, 8080)
    );
    let policy = format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {{name: shop, namespace: default}}\nspec:\n  host: {SVC}\n  retryBudget: {{retryPercent: 0, minRetriesPerSecond: 1}}\n"
    );
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("shop", SVC, 8080, "HTTP", &[ep(apps.port("shop/v1"), "v1")]),
        virtual_service_yaml("shop", &["*"], &http),
        policy,
    ]);
    let gw = Gateway::start(port, &yaml);
    let mut c = gw.client();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = c.get("shop.local", "/status/503", &[]).expect("request");
        assert_eq!(r.status, 503);
        seen.push(flags(&r).to_owned());
    }
    let retries = counter(&gw, "trellis_upstream_rq_retry_total");
    let overflow = counter(&gw, "trellis_upstream_rq_retry_overflow_total");
    // Without the budget: 12 retries. With it: one a second (two if the burst spans a second).
    assert!(
        (1.0..=3.0).contains(&retries),
        "retries {retries}, flags {seen:?}"
    );
    assert!(overflow >= 4.0, "overflow {overflow}, flags {seen:?}");
    let uo = seen.iter().filter(|f| *f == "UO").count() as f64;
    assert_eq!(uo, overflow, "{seen:?}");
}

/// A PUT (idempotent) with a body is retried and its body replayed intact; a body larger than
/// 64 KiB is streamed instead and the request is not retried once sent.
#[test]
fn put_bodies_are_replayed_up_to_64_kib() {
    let apps = Apps::start(&[("shop", "v1")]);
    let retries = "    retries: {attempts: 2, retryOn: 5xx}\n";
    let gw = shop(&[apps.port("shop/v1")], retries, "", "");
    let body = "x".repeat(10_000);
    let r = gw
        .client()
        .request("PUT", "shop.local", "/flaky/f/1", &[], &body)
        .expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_u64(&r.body, "attempt"), Some(2));
    let echoed: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(echoed["body"].as_str().map(str::len), Some(10_000));
    let big = "y".repeat(70 * 1024);
    let r = gw
        .client()
        .request("PUT", "shop.local", "/flaky/g/1", &[], &big)
        .expect("request");
    assert_eq!((r.status, flags(&r)), (503, "-"), "streamed, not retried");
    assert_eq!(counter(&gw, "trellis_upstream_rq_retry_total"), 1.0);
}

/// `retryRemoteLocalities` (Envoy's `previous_priorities`, updated every 2 attempts as Istio
/// sets it): with the same-zone endpoint answering 503, its priority takes all traffic, so
/// without the flag every attempt goes there and fails; with it, the third attempt avoids the
/// priority already tried and the other zone answers.
#[test]
fn retry_remote_localities_lets_retries_leave_the_local_zone() {
    let apps = Apps::start(&[("shop", "zone1"), ("shop", "zone2")]);
    let (local, remote) = (apps.port("shop/zone1"), apps.port("shop/zone2"));
    let (code, _, body) =
        trellis_testkit::http_get(&format!("http://127.0.0.1:{local}/fault/status/503"));
    assert_eq!(code, 200, "{body}");
    let run = |flag: &str| {
        let port = gateway_port();
        let yaml = docs(&[
            gateway_yaml(port),
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: shop, namespace: default}}\nspec:\n  hosts: [{SVC}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {local}}}, locality: region1/zone1}}\n  - {{address: 127.0.0.1, ports: {{http: {remote}}}, locality: region1/zone2}}\n"
            ),
            virtual_service_yaml(
                "shop",
                &["*"],
                &format!(
                    "  - route: [{{destination: {}}}]\n    retries: {{attempts: 3, retryOn: 5xx{flag}}}\n",
                    dest(SVC, None, 8080)
                ),
            ),
            // Locality priorities need outlier detection (as in Istio); no ejection here.
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: shop, namespace: default}}\nspec:\n  host: {SVC}\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 100, interval: 10s, baseEjectionTime: 30s}}\n"
            ),
        ]);
        let dir = trellis_testkit::TempDir::new().expect("temp dir");
        std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write mesh.yaml");
        let mut args: Vec<&str> = GATEWAY_ARGS.to_vec();
        args.extend_from_slice(&["--locality", "region1/zone1"]);
        let (proxy, admin) = trellis_testkit::proxy(dir.path(), &args);
        let gw = Gateway {
            dir,
            port,
            admin,
            proxy,
        };
        assert!(trellis_testkit::wait_for_port(
            gw.addr(),
            Duration::from_secs(10)
        ));
        let r = gw.client().get("shop.local", "/get", &[]).expect("request");
        let retries = counter(&gw, "trellis_upstream_rq_retry_total");
        (r, retries)
    };
    let (r, retries) = run("");
    assert_eq!((r.status, flags(&r)), (503, "URX"), "{r:?}");
    assert_eq!(retries, 3.0);
    let (r, retries) = run(", retryRemoteLocalities: true");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.served_by(), "shop/zone2", "{r:?}");
    assert_eq!(
        retries, 2.0,
        "attempts 1 and 2 in zone1, the third in zone2"
    );
}
