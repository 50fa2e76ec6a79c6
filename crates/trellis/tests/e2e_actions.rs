//! Acceptance tests of VirtualService route actions through a real gateway `trellis-proxy`
//! and real `trellis sample-app`s: fault injection (delay, abort, gRPC abort, percentages),
//! mirroring, rewrites, redirects, direct responses, header mutations and CORS. The Istio YAML
//! is written in each test; assertions are on what the client and the upstream echo see.
//! Needs `cargo build --workspace --bins`.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::*;
use trellis_testkit::{Headers, free_port, http_get, http_request, wait_until};

/// `base` (reviews v1 + v2 behind the gateway, from [`reviews_v1_v2`]) plus `extra` documents.
fn reviews_mesh(base: &[String], extra: &[String]) -> String {
    docs(&[base, extra].concat())
}

fn v(subset: &str) -> String {
    dest(REVIEWS, Some(subset), 9080)
}

/// The VirtualService `reviews` on every host, with `http` routes.
fn reviews_vs(http: &str) -> String {
    virtual_service_yaml("reviews", &["*"], http)
}

/// The proxy's response flags header, if any.
fn flags(headers: &Headers) -> Option<&str> {
    headers.get("x-trellis-flags").map(String::as_str)
}

/// A request from user jason to `host` through `gw`, given up by curl after `max_time`
/// seconds; returns the answer and how long it took.
fn as_jason(gw: &Gateway, host: &str, max_time: &str) -> (u16, Headers, String, Duration) {
    let start = Instant::now();
    let host = format!("Host: {host}");
    let args = ["-H", &host, "-H", "end-user: jason", "--max-time", max_time];
    let (status, headers, body) = http_request(&gw.url("/get"), &args);
    (status, headers, body, start.elapsed())
}

/// What the sample app on `port` recorded: `(method, host, path)` of its last requests.
fn recent(port: u16) -> Vec<(String, String, String)> {
    recent_with_length(port)
        .into_iter()
        .map(|(method, host, path, _)| (method, host, path))
        .collect()
}

/// Like [`recent`], with each request's content-length.
fn recent_with_length(port: u16) -> Vec<(String, String, String, String)> {
    let (status, _, body) = http_get(&format!("http://127.0.0.1:{port}/recent"));
    assert_eq!(status, 200, "/recent: {body}");
    json(&body)["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (s("method"), s("host"), s("path"), s("content_length"))
        })
        .collect()
}

#[test]
fn fault_delay_hits_only_jason_and_a_caller_with_a_3s_timeout_gives_up() {
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    // The caller is a second hop through the same gateway: `front` has a 3 s timeout and
    // forwards (authority rewritten to `back`) to the gateway itself, where `back` injects the
    // delay for jason, as in Istio's fault-injection task.
    let hop = "gateway-self.default.svc.cluster.local";
    let http = format!(
        r#"  - name: jason-delayed
    match: [{{headers: {{end-user: {{exact: jason}}}}, authority: {{prefix: back}}}}]
    fault: {{delay: {{fixedDelay: 7s, percentage: {{value: 100}}}}}}
    route: [{{destination: {v1}}}]
  - name: nowhere
    match: [{{authority: {{prefix: nowhere}}}}]
    fault: {{delay: {{fixedDelay: 1s, percentage: {{value: 100}}}}}}
    route: [{{destination: {empty}}}]
  - name: front
    match: [{{authority: {{prefix: front}}}}]
    timeout: 3s
    rewrite: {{authority: back}}
    route: [{{destination: {hop}}}]
  - name: front-retry
    match: [{{authority: {{prefix: retrying}}}}]
    retries: {{attempts: 1, perTryTimeout: 3s, retryOn: gateway-error}}
    rewrite: {{authority: back}}
    route: [{{destination: {hop}}}]
  - name: others
    route: [{{destination: {v1}}}]
"#,
        v1 = v("v1"),
        hop = dest(hop, None, 80),
        // Not in the registry: a cluster without endpoints (503 UH).
        empty = dest("empty.default.svc.cluster.local", None, 80),
    );
    let yaml = reviews_mesh(
        &base,
        &[
            service_entry_yaml("gateway-self", hop, 80, "HTTP", &[ep(port, "v1")]),
            reviews_vs(&http),
        ],
    );
    let gw = Gateway::start(port, &yaml);

    let (status, headers, body, took) = as_jason(&gw, "back", "30");
    assert_eq!(status, 200, "{body}");
    assert!(took >= Duration::from_secs(7), "jason waited only {took:?}");
    assert_eq!(flags(&headers), Some("DI"));
    assert_eq!(headers["x-sample-service"], "reviews/v1");

    for user in ["mike", ""] {
        let start = Instant::now();
        let (status, headers, body) = http_request(
            &gw.url("/get"),
            &["-H", "Host: back", "-H", &format!("end-user: {user}")],
        );
        let took = start.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(
            took < Duration::from_secs(7),
            "user {user:?} was delayed: {took:?}"
        );
        assert!(!headers.contains_key("x-trellis-flags"), "{headers:?}");
    }

    // A caller that gives up after 3 s (curl --max-time 3) sees no answer for jason.
    let (status, _, err, took) = as_jason(&gw, "back", "3");
    assert_eq!(status, 0, "expected a client timeout, got {status}: {err}");
    assert!(took >= Duration::from_secs(3));

    // The caller hop with `timeout: 3s`: 504 UT after at least 3 s.
    let (status, headers, body, took) = as_jason(&gw, "front", "30");
    assert_eq!(status, 504, "{body}");
    assert_eq!(flags(&headers), Some("UT"));
    assert!(took >= Duration::from_secs(3), "{took:?}");
    // Istio's task: the caller has a 3 s timeout and one retry, so jason's request fails after
    // two 3 s tries (~6 s), each cut off while the 7 s delay runs.
    let (status, headers, body, took) = as_jason(&gw, "retrying", "30");
    assert_eq!(status, 504, "{body}");
    assert_eq!(flags(&headers), Some("UT,URX"), "{headers:?}");
    assert!(
        took >= Duration::from_secs(6),
        "two 3 s tries took {took:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    // Without jason the same hop answers.
    let (status, headers, body) = http_request(&gw.url("/get"), &["-H", "Host: front"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["headers"]["host"],
        "back",
        "authority rewrite: {body}"
    );
    assert_eq!(headers["x-sample-service"], "reviews/v1");

    // Delayed, then no healthy upstream: both flags.
    let start = Instant::now();
    let (status, headers, body) = http_request(&gw.url("/get"), &["-H", "Host: nowhere"]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(flags(&headers), Some("DI,UH"));
    assert!(start.elapsed() >= Duration::from_secs(1));

    let metrics = gw.metrics();
    let di = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("response_flags", "DI")],
    );
    assert!(di >= 1.0, "no DI request counted:\n{metrics}");
}

#[test]
fn fault_abort_answers_at_once_with_fi_and_percentages_hold() {
    let port = gateway_port();
    let (apps, base) = reviews_v1_v2(port);
    let http = format!(
        r#"  - name: always
    match: [{{uri: {{prefix: /reviews/always}}}}]
    fault: {{abort: {{httpStatus: 500, percentage: {{value: 100}}}}}}
    route: [{{destination: {v1}}}]
  - name: half
    match: [{{uri: {{prefix: /reviews/half}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}
    route: [{{destination: {v1}}}]
"#,
        v1 = v("v1"),
    );
    let yaml = reviews_mesh(&base, &[reviews_vs(&http)]);
    let gw = Gateway::start(port, &yaml);

    let (status, headers, body) = http_get(&gw.url("/reviews/always"));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body, "fault filter abort");
    assert_eq!(flags(&headers), Some("FI"));
    assert!(
        !headers.contains_key("x-sample-service"),
        "upstream answered: {headers:?}"
    );
    assert!(
        recent(apps.port("reviews/v1"))
            .iter()
            .all(|r| !r.2.starts_with("/reviews/always")),
        "an aborted request reached the upstream"
    );

    let mut client = gw.client();
    let (mut aborted, mut served) = (0, 0);
    for i in 0..200 {
        let resp = client
            .get("reviews", &format!("/reviews/half?i={i}"), &[])
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        match (resp.status, flags(&resp.headers)) {
            (503, Some("FI")) => aborted += 1,
            (200, None) => served += 1,
            other => panic!("request {i}: unexpected {other:?}: {}", resp.body),
        }
    }
    assert_eq!(aborted + served, 200);
    assert!(
        (80..=120).contains(&aborted),
        "50% abort gave {aborted}/200"
    );

    let metrics = gw.metrics();
    let fi = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("response_flags", "FI"), ("response_code", "503")],
    );
    assert_eq!(fi, f64::from(aborted), "FI 503s counted:\n{metrics}");
}

#[test]
fn grpc_abort_returns_the_grpc_status() {
    let apps = Apps::start(&[("echo", "v1")]);
    let port = gateway_port();
    let host = "echo.default.svc.cluster.local";
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml(
            "echo",
            host,
            50051,
            "GRPC",
            &[ep(apps.port("echo/v1"), "v1")],
        ),
        virtual_service_yaml(
            "echo",
            &["*"],
            &format!(
                "  - fault: {{abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 100}}}}}}\n    route: [{{destination: {}}}]\n",
                dest(host, None, 50051)
            ),
        ),
    ]);
    let gw = Gateway::start(port, &yaml);
    let v = grpc(&format!("127.0.0.1:{port}"), &["echo", "hello"]);
    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
    assert_eq!(v["details"], "fault filter abort", "{v}");
    let metrics = gw.metrics();
    let fi = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("response_flags", "FI"), ("grpc_response_status", "14")],
    );
    assert_eq!(fi, 1.0, "{metrics}");
}

#[test]
fn mirror_copies_every_request_to_v2_with_a_shadow_host_and_the_client_sees_v1_only() {
    let port = gateway_port();
    let (apps, base) = reviews_v1_v2(port);
    // A mirror target that accepts connections and never answers, and one that is down.
    let slow = std::net::TcpListener::bind("127.0.0.1:0").expect("bind slow mirror");
    let slow_port = slow.local_addr().expect("addr").port();
    let down_port = free_port();
    let slow_host = "slow.default.svc.cluster.local";
    let down_host = "down.default.svc.cluster.local";
    let http = format!(
        r#"  - name: to-slow
    match: [{{uri: {{prefix: /reviews/slow}}}}]
    mirror: {slow}
    route: [{{destination: {v1}}}]
  - name: to-down
    match: [{{uri: {{prefix: /reviews/down}}}}]
    mirrors: [{{destination: {down}}}]
    route: [{{destination: {v1}}}]
  - name: shop
    mirror: {v2}
    mirrorPercentage: {{value: 100}}
    route: [{{destination: {v1}}}]
"#,
        v1 = v("v1"),
        v2 = v("v2"),
        slow = dest(slow_host, None, 80),
        down = dest(down_host, None, 80),
    );
    let yaml = reviews_mesh(
        &base,
        &[
            service_entry_yaml("slow", slow_host, 80, "HTTP", &[ep(slow_port, "v1")]),
            service_entry_yaml("down", down_host, 80, "HTTP", &[ep(down_port, "v1")]),
            reviews_vs(&http),
        ],
    );
    let gw = Gateway::start(port, &yaml);
    let mut client = gw.client();
    let n = 20;
    for i in 0..n {
        let resp = client
            .get("shop.example.com", &format!("/get?i={i}"), &[])
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.served_by(), "reviews/v1", "request {i}");
    }
    let shadowed = |i: usize| {
        (
            String::from("GET"),
            "shop.example.com-shadow".to_string(),
            format!("/get?i={i}"),
        )
    };
    let v2 = apps.port("reviews/v2");
    let all_seen = wait_until(Duration::from_secs(10), || {
        let seen = recent(v2);
        (0..n).all(|i| seen.contains(&shadowed(i)))
    });
    assert!(all_seen, "v2 saw {:?}", recent(v2));
    assert!(
        recent(v2).iter().all(|r| r.1 == "shop.example.com-shadow"),
        "v2 got a non-shadow request: {:?}",
        recent(v2)
    );
    let v1_seen = recent(apps.port("reviews/v1"));
    assert!(
        (0..n).all(|i| v1_seen.contains(&(
            "GET".into(),
            "shop.example.com".into(),
            format!("/get?i={i}")
        ))),
        "v1 saw {v1_seen:?}"
    );

    // A body is copied to the mirror as it streams; one over 64 KiB is not mirrored (counted).
    let resp = client
        .request(
            "POST",
            "shop.example.com",
            "/anything?m=small",
            &[],
            "hello-mirror",
        )
        .expect("small POST");
    assert_eq!(
        (resp.status, resp.served_by().as_str()),
        (200, "reviews/v1")
    );
    assert_eq!(json(&resp.body)["body"], "hello-mirror");
    let small = (
        "POST".to_string(),
        "shop.example.com-shadow".to_string(),
        "/anything?m=small".to_string(),
        "12".to_string(),
    );
    let got_small = wait_until(Duration::from_secs(10), || {
        recent_with_length(v2).contains(&small)
    });
    assert!(got_small, "v2 saw {:?}", recent_with_length(v2));
    let big = "x".repeat(70_000);
    let resp = client
        .request("POST", "shop.example.com", "/anything?m=big", &[], &big)
        .expect("big POST");
    assert_eq!(
        (resp.status, resp.served_by().as_str()),
        (200, "reviews/v1")
    );
    assert_eq!(
        json(&resp.body)["body"].as_str().map(str::len),
        Some(70_000)
    );
    let dropped = wait_until(Duration::from_secs(10), || {
        metric_sum(&gw.metrics(), "trellis_proxy_mirror_dropped_total", &[]) >= 1.0
    });
    assert!(dropped, "{}", gw.metrics());
    assert!(
        recent(v2).iter().all(|r| r.2 != "/anything?m=big"),
        "an oversized body was mirrored"
    );

    // A slow (never answering) or down mirror changes nothing for the client.
    for path in ["/reviews/slow", "/reviews/down"] {
        for _ in 0..3 {
            let start = Instant::now();
            let resp = client
                .get("shop.example.com", path, &[])
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(resp.status, 200, "{path}: {}", resp.body);
            assert_eq!(resp.served_by(), "reviews/v1", "{path}");
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{path} waited for its mirror"
            );
            assert!(
                !resp.headers.contains_key("x-trellis-flags"),
                "{path}: {:?}",
                resp.headers
            );
        }
    }
    // Every shadow request was sent; the down mirror's failed.
    let failed = wait_until(Duration::from_secs(10), || {
        metric_sum(&gw.metrics(), "trellis_proxy_mirror_failures_total", &[]) >= 3.0
    });
    assert!(failed, "{}", gw.metrics());
    let sent = metric_sum(&gw.metrics(), "trellis_proxy_mirror_requests_total", &[]);
    assert!(sent >= (n + 1 + 6) as f64, "mirror requests sent: {sent}");
    drop(slow);
}

#[test]
fn rewrite_redirect_direct_response_and_headers() {
    let port = gateway_port();
    let (apps, base) = reviews_v1_v2(port);
    let http = format!(
        r#"  - name: api
    match: [{{uri: {{prefix: /api/}}}}]
    rewrite: {{uri: /anything/, authority: backend.internal}}
    headers:
      request: {{set: {{x-api: "1"}}, add: {{x-trace: "on"}}, remove: [x-secret]}}
      response: {{set: {{cache-control: no-store}}, add: {{x-route: api}}, remove: [content-type]}}
    route:
    - destination: {v1}
      headers:
        request: {{set: {{x-dest: v1}}}}
        response: {{add: {{x-from: v1}}}}
  - name: items
    match: [{{uri: {{regex: "/items/[0-9]+"}}}}]
    rewrite: {{uriRegexRewrite: {{match: "^/items/([0-9]+)$", rewrite: '/anything/item?id=\1'}}}}
    route: [{{destination: {v1}}}]
  - name: legacy
    match: [{{uri: {{regex: "/legacy/.*"}}}}]
    rewrite: {{uri: /anything/modern}}
    route: [{{destination: {v1}}}]
  - name: split
    match: [{{uri: {{prefix: /reviews/split}}}}]
    route:
    - {{destination: {v1}, weight: 50, headers: {{request: {{set: {{x-dest: v1}}}}, response: {{set: {{x-picked: v1}}}}}}}}
    - {{destination: {v2}, weight: 50, headers: {{request: {{set: {{x-dest: v2}}}}, response: {{set: {{x-picked: v2}}}}}}}}
  - name: old
    match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new, authority: new.example.com, scheme: https, port: 8443, redirectCode: 302}}
  - name: moved
    match: [{{uri: {{prefix: /moved}}}}]
    redirect: {{uri: /here}}
  - name: elsewhere
    match: [{{uri: {{prefix: /elsewhere}}}}]
    redirect: {{authority: other.example.com, derivePort: FROM_REQUEST_PORT, redirectCode: 307}}
  - name: elsewhere-default-port
    match: [{{uri: {{prefix: /plain-elsewhere}}}}]
    redirect: {{authority: other.example.com}}
  - name: teapot
    match: [{{uri: {{exact: /teapot}}}}]
    headers: {{response: {{set: {{x-kind: teapot}}}}}}
    directResponse: {{status: 418, body: {{string: "short and stout\n"}}}}
  - name: raw
    match: [{{uri: {{exact: /raw}}}}]
    directResponse: {{status: 200, body: {{bytes: aGVsbG8=}}}}
"#,
        v1 = v("v1"),
        v2 = v("v2"),
    );
    let yaml = reviews_mesh(&base, &[reviews_vs(&http)]);
    let gw = Gateway::start(port, &yaml);

    // Prefix + authority rewrite and request/response headers, route and destination level.
    let (status, headers, body) = http_request(
        &gw.url("/api/users?page=2"),
        &[
            "-H",
            "Host: shop.example.com",
            "-H",
            "x-secret: s3",
            "-H",
            "x-api: 0",
            "-H",
            "x-trace: client",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let echo = json(&body);
    assert_eq!(echo["path"], "/anything/users", "{body}");
    assert_eq!(echo["query"]["page"], "2", "{body}");
    let h = &echo["headers"];
    assert_eq!(h["host"], "backend.internal", "{body}");
    assert_eq!(h["x-api"], "1", "set overwrites: {body}");
    assert_eq!(h["x-trace"], "client,on", "add appends: {body}");
    assert_eq!(h["x-dest"], "v1", "{body}");
    assert!(h.get("x-secret").is_none(), "x-secret not removed: {body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-route"], "api");
    assert_eq!(headers["x-from"], "v1");
    assert_eq!(headers["x-sample-service"], "reviews/v1");
    assert!(!headers.contains_key("content-type"), "{headers:?}");

    // Regex rewrite with a group, the request's query appended.
    let (status, _, body) = http_request(&gw.url("/items/42?v=3"), &[]);
    assert_eq!(status, 200, "{body}");
    let echo = json(&body);
    assert_eq!(echo["path"], "/anything/item", "{body}");
    assert_eq!(echo["query"]["id"], "42", "{body}");
    assert_eq!(echo["query"]["v"], "3", "{body}");

    // `rewrite.uri` under a regex match replaces the whole path.
    let (status, _, body) = http_request(&gw.url("/legacy/a/b?k=v"), &[]);
    assert_eq!(status, 200, "{body}");
    let echo = json(&body);
    assert_eq!(echo["path"], "/anything/modern", "{body}");
    assert_eq!(echo["query"]["k"], "v", "{body}");

    // Destination-level headers follow the picked destination.
    let mut client = gw.client();
    let mut picked = std::collections::BTreeSet::new();
    for i in 0..40 {
        let resp = client
            .get("shop", &format!("/reviews/split?i={i}"), &[])
            .expect("split");
        assert_eq!(resp.status, 200, "{}", resp.body);
        let version = resp.served_by();
        let dest = json(&resp.body)["headers"]["x-dest"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert_eq!(
            format!("reviews/{dest}"),
            version,
            "request header of the other destination"
        );
        assert_eq!(
            resp.headers.get("x-picked").map(|p| format!("reviews/{p}")),
            Some(version.clone())
        );
        picked.insert(version);
    }
    assert_eq!(picked.len(), 2, "both destinations answered: {picked:?}");

    // Redirects: every part given, and only the path.
    let (status, headers, body) =
        http_request(&gw.url("/old/page?q=1"), &["-H", "Host: shop.example.com"]);
    assert_eq!(status, 302, "{body}");
    assert_eq!(headers["location"], "https://new.example.com:8443/new?q=1");
    let (status, headers, _) =
        http_request(&gw.url("/moved"), &["-H", "Host: shop.example.com:8080"]);
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "http://shop.example.com:8080/here");
    // A new authority drops the request's port, unless derivePort asks for the listener's.
    let (status, headers, _) = http_request(
        &gw.url("/elsewhere/x?y=1"),
        &["-H", "Host: shop.example.com:9999"],
    );
    assert_eq!(status, 307);
    assert_eq!(
        headers["location"],
        format!("http://other.example.com:{port}/elsewhere/x?y=1")
    );
    let (status, headers, _) = http_request(
        &gw.url("/plain-elsewhere"),
        &["-H", "Host: shop.example.com:9999"],
    );
    assert_eq!(status, 301);
    assert_eq!(
        headers["location"],
        "http://other.example.com/plain-elsewhere"
    );

    // Direct responses: string and base64 bytes bodies, route response headers.
    let (status, headers, body) = http_get(&gw.url("/teapot"));
    assert_eq!(status, 418);
    assert_eq!(body, "short and stout\n");
    assert_eq!(headers["x-kind"], "teapot");
    assert!(!headers.contains_key("x-trellis-flags"), "{headers:?}");
    let (status, _, body) = http_get(&gw.url("/raw"));
    assert_eq!(status, 200);
    assert_eq!(body, "hello");
    // None of these reached an upstream.
    let seen = recent(apps.port("reviews/v1"));
    assert!(
        seen.iter().all(|r| !["/old", "/moved", "/teapot", "/raw"]
            .iter()
            .any(|p| r.2.starts_with(p))),
        "{seen:?}"
    );
}

#[test]
fn cors_preflights_are_answered_and_only_allowed_origins_get_cors_headers() {
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    let cors = |unmatched: &str| {
        format!(
            r#"  - corsPolicy:
      allowOrigins: [{{exact: "https://a.example.com"}}, {{regex: "https://.*[.]b[.]example[.]com"}}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom, content-type]
      exposeHeaders: [x-sample-service]
      maxAge: 24h
      allowCredentials: true{unmatched}
    route: [{{destination: {v1}}}]
"#,
            v1 = v("v1"),
        )
    };
    let yaml = reviews_mesh(
        &base,
        &[
            virtual_service_yaml("forwarding", &["api.example.com"], &cors("")),
            virtual_service_yaml(
                "ignoring",
                &["strict.example.com"],
                &cors("\n      unmatchedPreflights: IGNORE"),
            ),
            virtual_service_yaml(
                "aborting",
                &["broken.example.com"],
                &cors("\n    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}"),
            ),
        ],
    );
    let gw = Gateway::start(port, &yaml);
    let preflight = |host: &str, origin: &str| {
        http_request(
            &gw.url("/reviews"),
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("Host: {host}"),
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: POST",
            ],
        )
    };

    let (status, h, _) = preflight("api.example.com", "https://a.example.com");
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://a.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET,POST");
    assert_eq!(h["access-control-allow-headers"], "x-custom,content-type");
    assert_eq!(h["access-control-max-age"], "86400");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(
        !h.contains_key("x-sample-service"),
        "preflight reached upstream: {h:?}"
    );

    let (status, h, _) = preflight("api.example.com", "https://x.b.example.com");
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://x.b.example.com");

    // Not allowed: forwarded by default (the upstream answers, without CORS headers) …
    let (status, h, _) = preflight("api.example.com", "https://evil.example.com");
    assert_eq!(status, 200);
    assert_eq!(
        h.get("x-sample-service").map(String::as_str),
        Some("reviews/v1")
    );
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");
    // … or answered by the proxy without CORS headers when unmatchedPreflights is IGNORE.
    let (status, h, _) = preflight("strict.example.com", "https://evil.example.com");
    assert_eq!(status, 200);
    assert!(!h.contains_key("x-sample-service"), "{h:?}");
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");

    // Actual requests: an allowed origin gets the CORS response headers, others none.
    let get = |origin: &str| {
        http_request(
            &gw.url("/reviews"),
            &[
                "-H",
                "Host: api.example.com",
                "-H",
                &format!("Origin: {origin}"),
            ],
        )
    };
    let (status, h, body) = get("https://a.example.com");
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["access-control-allow-origin"], "https://a.example.com");
    assert_eq!(h["access-control-expose-headers"], "x-sample-service");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["x-sample-service"], "reviews/v1");
    let (status, h, _) = get("https://evil.example.com");
    assert_eq!(status, 200);
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");
    // The proxy's own answers (here a fault abort) carry them too, for allowed origins.
    let (status, h, body) = http_request(
        &gw.url("/reviews"),
        &[
            "-H",
            "Host: broken.example.com",
            "-H",
            "Origin: https://a.example.com",
        ],
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(h["access-control-allow-origin"], "https://a.example.com");
    assert_eq!(h["x-trellis-flags"], "FI");
    let (status, h, _) = http_request(&gw.url("/reviews"), &["-H", "Host: api.example.com"]);
    assert_eq!(status, 200);
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");
}

/// A raw connection to `gw` whose reads give up after 10 s.
fn connect(gw: &Gateway) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Reads an HTTP/1.1 response head (through the blank line), lower-cased.
fn read_head(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "reading head {:?}: {other:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[test]
fn websocket_upgrade_tunnels_bytes_both_ways() {
    use std::io::{Read, Write};
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    let http = format!("  - route: [{{destination: {}}}]\n", v("v1"));
    let yaml = reviews_mesh(&base, &[reviews_vs(&http)]);
    let gw = Gateway::start(port, &yaml);

    let mut s = connect(&gw);
    s.write_all(
        b"GET /echo-upgrade HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .expect("write upgrade request");
    let head = read_head(&mut s);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-sample-service: reviews/v1\r\n"),
        "{head}"
    );
    for msg in ["ping-1", "a second, longer message through the tunnel"] {
        s.write_all(msg.as_bytes()).expect("write through tunnel");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).expect("read echo");
        assert_eq!(String::from_utf8_lossy(&back), msg);
    }
    drop(s);

    // A protocol the listener's upgrade_configs do not list is not upgraded: the upstream gets
    // an ordinary request without the upgrade headers (and the echo app refuses it).
    let (status, _, body) = http_request(
        &gw.url("/echo-upgrade"),
        &["-H", "Connection: Upgrade", "-H", "Upgrade: trellis-echo"],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("needs an Upgrade header"), "{body}");

    // An upgrade the upstream does not accept is an ordinary answer, and the connection closes.
    let mut s = connect(&gw);
    s.write_all(
        b"GET /get HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .expect("write");
    let head = read_head(&mut s);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
}
