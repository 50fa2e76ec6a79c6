//! Component tests of the request path: real proxy listeners, real backends, real clients.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteMatch, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use http::Request;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn exact(v: &str) -> Option<HeaderMatchSpecifier> {
    Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(MatchPattern::Exact(v.into())),
        ignore_case: false,
    }))
}

#[tokio::test]
async fn routes_by_host_path_header_query_and_method() {
    let (a, b, c, d, e, f) = (
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("d").await,
        backend("e").await,
        backend("f").await,
    );
    let header = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".into())),
        headers: vec![HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: exact("yes"),
            ..Default::default()
        }],
        ..Default::default()
    };
    let query = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".into())),
        query_parameters: vec![QueryParameterMatcher {
            name: "v".into(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::PresentMatch(true)),
        }],
        ..Default::default()
    };
    let method = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".into())),
        headers: vec![HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: exact("POST"),
            ..Default::default()
        }],
        ..Default::default()
    };
    let regex = RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/items/[0-9]+".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let without = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/w".into())),
        headers: vec![HeaderMatcher {
            name: "x-debug".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
            invert_match: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let exact_path = RouteMatch {
        path_specifier: Some(PathSpecifier::Path("/exact".into())),
        ..Default::default()
    };
    let vhosts = vec![
        vhost(
            "one",
            &["one.example.com", "one.example.com:8080"],
            vec![
                to_cluster("exact", exact_path, "f"),
                to_cluster("regex", regex, "e"),
                to_cluster("without", without, "d"),
                to_cluster("header", header, "b"),
                to_cluster("query", query, "c"),
                to_cluster("method", method, "d"),
                to_cluster("first", prefix("/"), "a"),
                to_cluster("never", prefix("/"), "b"),
            ],
        ),
        vhost(
            "wild",
            &["*.example.org"],
            vec![to_cluster("w", prefix("/"), "e")],
        ),
    ];
    let clusters = [
        (&a, "a"),
        (&b, "b"),
        (&c, "c"),
        (&d, "d"),
        (&e, "e"),
        (&f, "f"),
    ]
    .iter()
    .map(|(be, n)| cluster(n, LbPolicy::RoundRobin, false, &[(be.addr, 1)]))
    .collect();
    let p = start(&resources(vhosts, clusters));
    let cl = h1();
    let via = |g: Got| g.header("x-backend").to_string();
    assert_eq!(
        via(get_backend(&cl, p.addr, "one.example.com", "/x").await),
        "a",
        "first match wins"
    );
    assert_eq!(
        via(get_backend(&cl, p.addr, "one.example.com:8080", "/x").await),
        "a"
    );
    assert_eq!(
        via(get_backend(&cl, p.addr, "ONE.example.com:9", "/x").await),
        "a",
        "port stripped, case folded"
    );
    assert_eq!(
        via(get_backend(&cl, p.addr, "one.example.com", "/exact").await),
        "f"
    );
    assert_eq!(
        via(get_backend(&cl, p.addr, "one.example.com", "/exact/no").await),
        "a"
    );
    assert_eq!(
        via(get_backend(&cl, p.addr, "one.example.com", "/items/42").await),
        "e"
    );
    assert_eq!(
        via(get_backend(&cl, p.addr, "one.example.com", "/items/42x").await),
        "a",
        "regex is a full match"
    );
    assert_eq!(
        via(get_backend(&cl, p.addr, "one.example.com", "/w").await),
        "d",
        "withoutHeaders: absent matches"
    );
    let req = get(p.addr, "one.example.com", "/w")
        .header("x-debug", "1")
        .body(Full::default())
        .expect("req");
    assert_eq!(
        via(send(&cl, req).await),
        "a",
        "withoutHeaders: present does not match"
    );
    let req = get(p.addr, "one.example.com", "/x")
        .header("x-canary", "yes")
        .body(Full::default())
        .expect("req");
    assert_eq!(via(send(&cl, req).await), "b");
    let req = get(p.addr, "one.example.com", "/x")
        .header("x-canary", "no")
        .body(Full::default())
        .expect("req");
    assert_eq!(via(send(&cl, req).await), "a");
    assert_eq!(
        via(get_backend(&cl, p.addr, "one.example.com", "/x?a=1&v=2").await),
        "c"
    );
    let req = Request::post(format!("http://{}/x", p.addr))
        .header("host", "one.example.com")
        .body(Full::from("hi"))
        .expect("req");
    assert_eq!(via(send(&cl, req).await), "d");
    assert_eq!(
        via(get_backend(&cl, p.addr, "api.example.org", "/").await),
        "e"
    );
}

#[tokio::test]
async fn weighted_clusters_split_90_10() {
    let (a, b) = (backend("a").await, backend("b").await);
    let vhosts = vec![vhost(
        "v",
        &["*"],
        vec![weighted("split", prefix("/"), &[("a", 90), ("b", 10)])],
    )];
    let p = start(&resources(
        vhosts,
        vec![
            cluster("a", LbPolicy::RoundRobin, false, &[(a.addr, 1)]),
            cluster("b", LbPolicy::RoundRobin, false, &[(b.addr, 1)]),
        ],
    ));
    let cl = h1();
    let mut to_a = 0;
    for _ in 0..1000 {
        if get_backend(&cl, p.addr, "x", "/").await.header("x-backend") == "a" {
            to_a += 1;
        }
    }
    assert!((860..=940).contains(&to_a), "a got {to_a} of 1000");
}

async fn spread(policy: LbPolicy, weights: &[u32], n: usize) -> HashMap<String, usize> {
    let names = ["a", "b", "c"];
    let mut eps = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        eps.push((backend(names[i]).await.addr, *w));
    }
    let vhosts = vec![vhost("v", &["*"], vec![to_cluster("r", prefix("/"), "c")])];
    let p = start(&resources(vhosts, vec![cluster("c", policy, false, &eps)]));
    let cl = h1();
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen
            .entry(
                get_backend(&cl, p.addr, "x", "/")
                    .await
                    .header("x-backend")
                    .to_string(),
            )
            .or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn round_robin_honours_endpoint_weights() {
    let s = spread(LbPolicy::RoundRobin, &[1, 1, 1], 300).await;
    assert_eq!((s["a"], s["b"], s["c"]), (100, 100, 100));
    let s = spread(LbPolicy::RoundRobin, &[3, 1], 400).await;
    assert_eq!((s["a"], s["b"]), (300, 100));
}

#[tokio::test]
async fn random_and_least_request_honour_weights() {
    let s = spread(LbPolicy::Random, &[4, 1], 1000).await;
    assert!((740..=860).contains(&s["a"]), "{s:?}");
    let s = spread(LbPolicy::LeastRequest, &[1, 1], 1000).await;
    assert!(s["a"] > 350 && s["b"] > 350, "{s:?}");
    let s = spread(LbPolicy::LeastRequest, &[4, 1], 1000).await;
    assert!(s["a"] > 650, "{s:?}");
}

#[tokio::test]
async fn failures_explain_themselves() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let vhosts = vec![vhost(
        "v",
        &["svc"],
        vec![
            to_cluster("empty", prefix("/empty"), "empty"),
            to_cluster("missing", prefix("/missing"), "nope"),
            to_cluster("dead", prefix("/dead"), "dead"),
        ],
    )];
    let p = start(&resources(
        vhosts,
        vec![
            cluster("empty", LbPolicy::RoundRobin, false, &[]),
            cluster("dead", LbPolicy::RoundRobin, false, &[(dead, 1)]),
        ],
    ));
    let cl = h1();
    let g = get_backend(&cl, p.addr, "foo.example.com", "/x").await;
    assert_eq!((g.status, g.header("x-trellis-flags")), (404, "NR"));
    assert_eq!(
        g.body,
        "no route for host \"foo.example.com\" path \"/x\"\n"
    );
    assert_eq!(g.header("content-type"), "text/plain");
    let g = get_backend(&cl, p.addr, "svc", "/other").await;
    assert_eq!((g.status, g.header("x-trellis-flags")), (404, "NR"));
    let g = get_backend(&cl, p.addr, "svc", "/empty").await;
    assert_eq!((g.status, g.header("x-trellis-flags")), (503, "UH"));
    assert!(
        g.body.contains("no healthy upstream for cluster \"empty\""),
        "{}",
        g.body
    );
    let g = get_backend(&cl, p.addr, "svc", "/missing").await;
    assert_eq!((g.status, g.header("x-trellis-flags")), (503, "UH"));
    assert!(g.body.contains("cluster \"nope\" not found"), "{}", g.body);
    let g = get_backend(&cl, p.addr, "svc", "/dead").await;
    assert_eq!((g.status, g.header("x-trellis-flags")), (503, "UF"));
    assert!(
        g.body
            .starts_with(&format!("upstream connect error to {dead}")),
        "{}",
        g.body
    );
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop() {
    let a = backend("a").await;
    let vhosts = vec![vhost("v", &["*"], vec![to_cluster("r", prefix("/"), "a")])];
    let p = start(&resources(
        vhosts,
        vec![cluster("a", LbPolicy::RoundRobin, false, &[(a.addr, 1)])],
    ));
    let cl = h1();
    let g = get_backend(&cl, p.addr, "svc.example.com:80", "/").await;
    assert_eq!(
        g.header("x-trellis-flags"),
        "",
        "no flag on a normal response"
    );
    assert_eq!(g.header("echo-x-forwarded-for"), "127.0.0.1");
    assert_eq!(g.header("echo-x-forwarded-proto"), "http");
    assert_eq!(g.header("echo-host"), "svc.example.com:80");
    let id = g.header("echo-x-request-id");
    assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
    let req = get(p.addr, "svc", "/hop")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-request-id", "keep-me")
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .body(Full::default())
        .expect("req");
    let g = send(&cl, req).await;
    assert_eq!(g.header("echo-x-forwarded-for"), "10.1.1.1, 127.0.0.1");
    assert_eq!(g.header("echo-x-request-id"), "keep-me");
    assert_eq!(g.header("echo-x-secret"), "");
    assert_eq!(g.header("echo-proxy-connection"), "");
    assert_eq!(g.header("echo-te"), "trailers");
    assert_eq!(
        (g.header("x-hop"), g.header("keep-alive")),
        ("", ""),
        "hop-by-hop stripped from the response"
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let a = backend("a").await;
    let vhosts = vec![vhost("v", &["*"], vec![to_cluster("r", prefix("/"), "a")])];
    let p = start(&resources(
        vhosts,
        vec![cluster("a", LbPolicy::RoundRobin, false, &[(a.addr, 1)])],
    ));
    let mut req = get(p.addr, "svc", "/");
    for i in 0..101 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let g = send(&h1(), req.body(Full::default()).expect("req")).await;
    assert_eq!(g.status, 431);
    let big = "a".repeat(61 * 1024);
    let req = get(p.addr, "svc", "/")
        .header("x-big", big.as_str())
        .body(Full::default())
        .expect("req");
    let g = send(&h1(), req).await;
    assert_eq!(g.status, 431);
    let req = get(p.addr, "svc", "/")
        .header("x-big", big.as_str())
        .body(Full::default())
        .expect("req");
    let g = send(&h2(), req).await;
    assert_eq!(g.status, 431, "h2 too");
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Write `raw`, read until the proxy closes; returns what it answered.
async fn raw_exchange(addr: std::net::SocketAddr, raw: &str) -> String {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(raw.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .expect("proxy closes the connection")
}

#[tokio::test]
async fn framing_attacks_are_rejected_before_any_backend() {
    let a = backend("a").await;
    let vhosts = vec![vhost("v", &["*"], vec![to_cluster("r", prefix("/"), "a")])];
    let p = start(&resources(
        vhosts,
        vec![cluster("a", LbPolicy::RoundRobin, false, &[(a.addr, 1)])],
    ));
    let attacks = [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ];
    for raw in attacks {
        let out = raw_exchange(p.addr, raw).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{raw:?} got {out:?}");
        assert_eq!(
            a.hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{raw:?} reached the backend"
        );
    }
    assert_eq!(
        a.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no attack reached the backend"
    );
}

#[tokio::test]
async fn a_rejected_head_pipelined_after_a_good_request_leaves_its_answer_alone() {
    let a = backend("a").await;
    let vhosts = vec![vhost("v", &["*"], vec![to_cluster("r", prefix("/"), "a")])];
    let p = start(&resources(
        vhosts,
        vec![cluster("a", LbPolicy::RoundRobin, false, &[(a.addr, 1)])],
    ));
    let raw = "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n\
               POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    let out = raw_exchange(p.addr, raw).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    let second = out.find("HTTP/1.1 400").map(|i| &out[i..]);
    let second = second.unwrap_or_else(|| panic!("no 400 after the 200: {out:?}"));
    assert!(second.contains("x-trellis-flags: DPE\r\n"), "{out:?}");
    assert!(second.ends_with("differing values\n"), "{out:?}");
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2c_prior_knowledge_downstream() {
    let a = backend("a").await;
    let vhosts = vec![vhost(
        "v",
        &["svc.example.com"],
        vec![to_cluster("r", prefix("/"), "a")],
    )];
    let p = start(&resources(
        vhosts,
        vec![cluster("a", LbPolicy::RoundRobin, false, &[(a.addr, 1)])],
    ));
    // The authority travels as :authority (from the URI), not as a Host header.
    let req = Request::get("http://svc.example.com/path?q=1")
        .body(Full::default())
        .expect("req");
    let resp = h2_direct(p.addr, req).await;
    assert_eq!(resp.status(), 200);
    let h = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        (h("x-backend"), h("echo-version"), h("echo-host")),
        ("a".into(), "HTTP/1.1".into(), "svc.example.com".into())
    );
    let req = Request::get("http://other.example.com/")
        .body(Full::default())
        .expect("req");
    let resp = h2_direct(p.addr, req).await;
    assert_eq!(resp.status(), 404);
}

/// A backend behind a catch-all route to an h2 (gRPC) cluster; the backend must stay alive.
async fn grpc_proxy() -> (Backend, Running) {
    let g = backend("g").await;
    let vhosts = vec![vhost(
        "v",
        &["*"],
        vec![to_cluster("r", prefix("/"), "grpc")],
    )];
    let p = start(&resources(
        vhosts,
        vec![cluster("grpc", LbPolicy::RoundRobin, true, &[(g.addr, 1)])],
    ));
    (g, p)
}

#[tokio::test]
async fn h2_upstream_gets_the_client_authority() {
    let (_g, p) = grpc_proxy().await;
    let req = Request::post(format!("http://{}/pkg.Svc/Call", p.addr))
        .header("host", "api.example.com:8443")
        .header("content-type", "application/grpc")
        .body(Full::from(Bytes::from_static(b"\0\0\0\0\x00")))
        .expect("req");
    let resp = tokio::time::timeout(Duration::from_secs(10), h1().request(req))
        .await
        .expect("in time")
        .expect("resp");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("echo-authority").map(|v| v.as_bytes()),
        Some(&b"api.example.com:8443"[..])
    );
    assert_eq!(
        resp.headers().get("echo-version").map(|v| v.as_bytes()),
        Some(&b"HTTP/2.0"[..])
    );
}

#[tokio::test]
async fn grpc_over_h2_keeps_trailers() {
    let (_g, p) = grpc_proxy().await;
    let req = Request::post(format!("http://{}/pkg.Svc/Call", p.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::from(Bytes::from_static(b"\0\0\0\0\x03abc")))
        .expect("req");
    let resp = tokio::time::timeout(Duration::from_secs(10), h2().request(req))
        .await
        .expect("in time")
        .expect("resp");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("echo-version").map(|v| v.as_bytes()),
        Some(&b"HTTP/2.0"[..])
    );
    assert_eq!(
        resp.headers().get("echo-te").map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\x03abc"));
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"ok"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_swap_under_load_loses_nothing() {
    let (a, b) = (backend("a").await, backend("b").await);
    let res_a = resources(
        vec![vhost("v", &["*"], vec![to_cluster("r", prefix("/"), "c")])],
        vec![cluster("c", LbPolicy::LeastRequest, false, &[(a.addr, 1)])],
    );
    let res_b = resources(
        vec![vhost("v", &["*"], vec![to_cluster("r", prefix("/"), "c")])],
        vec![cluster("c", LbPolicy::LeastRequest, false, &[(b.addr, 1)])],
    );
    let mut p = start(&res_a);
    let addr = p.addr;
    let load = tokio::spawn(async move {
        let cl = h1();
        let mut seen = HashMap::<String, usize>::new();
        for _ in 0..600 {
            let g = get_backend(&cl, addr, "x", "/").await;
            assert_eq!(g.status, 200, "{}", g.body);
            *seen.entry(g.header("x-backend").to_string()).or_default() += 1;
        }
        seen
    });
    for i in 0..20 {
        p.listeners
            .apply(if i % 2 == 0 {
                res_b.clone()
            } else {
                res_a.clone()
            })
            .expect("apply");
        assert_eq!(p.listeners.bound()[LISTENER], addr, "never rebound");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = load.await.expect("load");
    assert_eq!(seen.values().sum::<usize>(), 600);
    // A broken config is rejected and the last good one keeps serving.
    let mut bad = res_a.clone();
    bad.routes[0].virtual_hosts[0].domains.push("a*b".into());
    let err = p
        .listeners
        .apply(bad.clone())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("domains[1]"), "{err}");
    assert_eq!(get_backend(&h1(), addr, "x", "/").await.status, 200);
}
