//! Acceptance tests of what the gateway does to requests on the wire: forwarding headers and
//! hop-by-hop stripping, header limits (431), HTTP/1 framing attacks over raw TCP (400, closed,
//! nothing forwarded), h2c prior knowledge downstream, and gRPC (unary, server streaming,
//! status trailers) through the proxy to an h2 upstream with Python grpcio.
//! Needs `cargo build --workspace --bins` and `python3 -m pip install grpcio`.

mod e2e_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_support::*;
use trellis_testkit::{http_request, wait_until};

/// reviews v1 behind a `*` VirtualService on a fresh gateway.
fn reviews_gateway() -> (Apps, Gateway) {
    let apps = Apps::start(&[("reviews", "v1")]);
    let port = gateway_port();
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml(
            "reviews",
            REVIEWS,
            9080,
            "HTTP",
            &[ep(apps.port("reviews/v1"), "v1")],
        ),
        virtual_service_yaml(
            "reviews",
            &["*"],
            &format!(
                "  - route: [{{destination: {}}}]\n",
                dest(REVIEWS, None, 9080)
            ),
        ),
    ]);
    let gw = Gateway::start(port, &yaml);
    (apps, gw)
}

#[test]
fn forwarding_headers_added_and_hop_by_hop_removed() {
    let (_apps, mut gw) = reviews_gateway();
    let url = gw.url("/headers");
    let (status, _, body) = http_request(
        &url,
        &[
            "-H",
            "Connection: x-foo",
            "-H",
            "x-foo: secret",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Connection: keep-alive",
            "-H",
            "x-kept: yes",
        ],
    );
    assert_eq!(status, 200, "{body}\n{}", gw.proxy.describe());
    let seen = json(&body)["headers"].clone();
    let mut failures = Vec::new();
    let request_id = seen["x-request-id"].as_str().unwrap_or("");
    if request_id.len() < 16 {
        failures.push(format!(
            "x-request-id generated: got {:?}",
            seen["x-request-id"]
        ));
    }
    let xff = seen["x-forwarded-for"].as_str().unwrap_or("");
    if !xff.contains("127.0.0.1") {
        failures.push(format!("x-forwarded-for contains 127.0.0.1: got {xff:?}"));
    }
    if seen["x-forwarded-proto"] != "http" {
        failures.push(format!(
            "x-forwarded-proto: http, got {}",
            seen["x-forwarded-proto"]
        ));
    }
    if seen["x-kept"] != "yes" {
        failures.push(format!(
            "an end-to-end header is kept: x-kept = {}",
            seen["x-kept"]
        ));
    }
    for hop in ["x-foo", "keep-alive", "proxy-connection"] {
        if !seen[hop].is_null() {
            failures.push(format!(
                "hop-by-hop {hop} reached the backend: {}",
                seen[hop]
            ));
        }
    }
    if seen["connection"]
        .as_str()
        .is_some_and(|c| c.to_ascii_lowercase().contains("x-foo"))
    {
        failures.push(format!(
            "client's connection header forwarded: {}",
            seen["connection"]
        ));
    }

    // A request id from the client is kept (preserve_external_request_id).
    let (status, _, body) = http_request(&url, &["-H", "x-request-id: my-request-42"]);
    assert_eq!(status, 200, "{body}");
    let seen = json(&body)["headers"].clone();
    if seen["x-request-id"] != "my-request-42" {
        failures.push(format!(
            "client x-request-id kept: expected \"my-request-42\", got {}",
            seen["x-request-id"]
        ));
    }
    // Two requests without one get two different ids.
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let (_, _, body) = http_request(&url, &[]);
            json(&body)["headers"]["x-request-id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    if ids[0].is_empty() || ids[0] == ids[1] {
        failures.push(format!("x-request-id unique per request: {ids:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn oversized_request_heads_get_431() {
    let (_apps, mut gw) = reviews_gateway();
    // curl sends Host, User-Agent and Accept itself.
    let headers_args = |custom: usize| -> Vec<String> {
        (0..custom)
            .flat_map(|i| ["-H".to_owned(), format!("x-h{i}: {i}")])
            .collect()
    };
    let big = |kib: usize| {
        vec![
            "-H".to_owned(),
            format!("x-big: {}", "a".repeat(kib * 1024)),
        ]
    };
    let mut failures = Vec::new();
    // (case, curl args, expected status or None, whether the proxy must forward it)
    // The sample app itself (hyper's default) takes at most 100 headers, and the proxy adds
    // three (x-forwarded-for, x-forwarded-proto, x-request-id): 97 is the most that reaches it
    // and comes back 200; 100 must still be forwarded (the proxy's limit is 100).
    let cases: Vec<(&str, Vec<String>, Option<u16>, bool)> = vec![
        ("h97", headers_args(94), Some(200), true),
        ("h100", headers_args(97), None, true),
        ("h101", headers_args(98), Some(431), false),
        ("kib40", big(40), Some(200), true),
        ("kib70", big(70), Some(431), false),
        ("after", Vec::new(), Some(200), true),
    ];
    for (case, args, want, _) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, headers, body) = http_request(&gw.url(&format!("/get?case={case}")), &args);
        if want.is_some_and(|w| w != status) {
            failures.push(format!(
                "{case}: expected {want:?}, got {status} (flags {:?}) {}",
                headers.get("x-trellis-flags"),
                body.chars().take(200).collect::<String>()
            ));
        }
    }
    // Which cases the proxy forwarded, from its access log (upstream_cluster set).
    let forwarded_case = |log: &str, case: &str| {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| {
                v["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("case={case}")))
                    && v["upstream_cluster"].is_string()
                    && v["response_flags"] == "-"
            })
    };
    let _ = wait_until(Duration::from_secs(5), || {
        forwarded_case(&gw.proxy.stdout_text(), "after")
    });
    let log = gw.proxy.stdout_text();
    for (case, _, _, forward) in &cases {
        if forwarded_case(&log, case) != *forward {
            failures.push(format!(
                "{case}: expected forwarded upstream = {forward}, access log says otherwise"
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

/// Writes `raw` on a fresh connection and reads until the proxy closes it (or 10 s pass).
/// Returns everything read and whether the connection was closed by the proxy.
fn raw_exchange(gw: &Gateway, raw: &str) -> (String, bool) {
    let mut stream = TcpStream::connect(gw.addr()).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set read timeout");
    stream.write_all(raw.as_bytes()).expect("write request");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true; // reset
                break;
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[test]
fn http1_framing_attacks_get_400_close_and_reach_no_backend() {
    let (_apps, mut gw) = reviews_gateway();
    let smuggled = "GET /reviews/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let attacks = [
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /reviews/cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two differing Content-Length",
            format!(
                "POST /reviews/cl-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
                 Content-Length: 5\r\n\r\nabcde{smuggled}"
            ),
        ),
        (
            "invalid chunk size",
            format!(
                "POST /reviews/bad-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                 zz\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (what, raw) in &attacks {
        let (answer, closed) = raw_exchange(&gw, raw);
        let first = answer.lines().next().unwrap_or("");
        let responses = answer.matches("HTTP/1.1 ").count();
        if !first.starts_with("HTTP/1.1 400") || !closed || responses != 1 {
            failures.push(format!(
                "{what}: expected exactly one `HTTP/1.1 400` then close; got closed={closed}, \
                 {responses} response(s): {answer:?}"
            ));
        }
    }
    // Nothing reached the backend: no request to reviews was counted.
    let metrics = gw.metrics();
    let forwarded = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("destination_service", REVIEWS)],
    );
    if forwarded != 0.0 {
        failures.push(format!(
            "requests forwarded to {REVIEWS}: expected 0, got {forwarded}"
        ));
    }
    // The access log names the rejected requests, none with an upstream.
    let log = gw.proxy.stdout_text();
    if log.contains("smuggled") {
        failures.push(format!("the smuggled request was served: {log}"));
    }
    // And the counter does count a forwarded request (so 0 above means something).
    let (status, _, body) = http_request(&gw.url("/reviews/ok"), &[]);
    assert_eq!(status, 200, "{body}");
    let counted = wait_until(Duration::from_secs(5), || {
        metric_sum(
            &gw.metrics(),
            "istio_requests_total",
            &[("destination_service", REVIEWS)],
        ) == 1.0
    });
    if !counted {
        failures.push(format!(
            "a good request is counted for {REVIEWS}: {}",
            gw.metrics()
        ));
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        gw.proxy.describe()
    );
}

/// Heads hyper rejects while parsing (too many headers, a head larger than its buffer, differing
/// or invalid Content-Length, a final transfer coding that is not chunked) get the proxy's own
/// answer, as Envoy's `DPE`: status, `x-trellis-flags: DPE`, a one-line body, `connection:
/// close` and a close, one access-log line and a count in `istio_requests_total`.
#[test]
fn hyper_rejected_heads_get_dpe_logged_and_counted() {
    let (_apps, mut gw) = reviews_gateway();
    let smuggled = "GET /reviews/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let many: String = (0..101).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    // hyper's read buffer is 60 KiB of headers plus 8 KiB: a head still incomplete at exactly
    // that size is rejected, and every byte sent was read (no reset racing the answer).
    let mut too_large = String::from("GET /reviews/too-large HTTP/1.1\r\nHost: x\r\nx-big: ");
    too_large.push_str(&"a".repeat(60 * 1024 + 8 * 1024 - too_large.len()));
    // (case path, raw request, status, what the body mentions)
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/reviews/too-many",
            format!("GET /reviews/too-many HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
            431,
            "headers",
        ),
        ("/reviews/too-large", too_large, 431, "larger than"),
        (
            "/reviews/cl-cl",
            format!(
                "POST /reviews/cl-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
                 Content-Length: 5\r\n\r\nabcde{smuggled}"
            ),
            400,
            "content-length",
        ),
        (
            "/reviews/cl-bad",
            format!(
                "POST /reviews/cl-bad HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nabcde{smuggled}"
            ),
            400,
            "content-length",
        ),
        (
            "/reviews/te-gzip",
            format!(
                "POST /reviews/te-gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n\
                 0\r\n\r\n{smuggled}"
            ),
            400,
            "transfer-encoding",
        ),
    ];
    let mut failures = Vec::new();
    for (case, raw, want, mention) in &cases {
        let (answer, closed) = raw_exchange(&gw, raw);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let (flags, close) = (header("x-trellis-flags"), header("connection"));
        let responses = answer.matches("HTTP/1.1 ").count();
        if status != *want
            || flags.as_deref() != Some("DPE")
            || close.as_deref() != Some("close")
            || !closed
            || responses != 1
            || !body.contains(mention)
            || body.lines().count() != 1
        {
            failures.push(format!(
                "{case}: expected one {want} DPE, connection: close, a one-line body about \
                 {mention} and a close; got {responses} response(s), closed={closed}: {answer:?}"
            ));
        }
    }
    // One access-log line each, with the flag, the status and the request line's path.
    let logged = |log: &str, case: &str, want: u16| {
        let method = if want == 431 { "GET" } else { "POST" };
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["response_flags"] == "DPE"
                    && v["response_code"] == want
                    && v["method"] == method
                    && v["path"] == case
            })
            .count()
    };
    let all_logged = || {
        let log = gw.proxy.stdout_text();
        cases
            .iter()
            .all(|(case, _, want, _)| logged(&log, case, *want) == 1)
    };
    if !wait_until(Duration::from_secs(5), all_logged) {
        let log = gw.proxy.stdout_text();
        for (case, _, want, _) in &cases {
            let n = logged(&log, case, *want);
            if n != 1 {
                failures.push(format!("{case}: {n} DPE access-log lines, expected 1"));
            }
        }
    }
    let log = gw.proxy.stdout_text();
    if log.contains("smuggled") {
        failures.push(format!("the smuggled request was served: {log}"));
    }
    // Counted with the flag and status; nothing reached the backend.
    let metrics = gw.metrics();
    for (code, want) in [("431", 2.0), ("400", 3.0)] {
        let got = metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_flags", "DPE"), ("response_code", code)],
        );
        if got != want {
            failures.push(format!(
                "istio_requests_total{{response_flags=DPE,response_code={code}}}: expected {want}, got {got}"
            ));
        }
    }
    let forwarded = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("destination_service", REVIEWS)],
    );
    if forwarded != 0.0 {
        failures.push(format!(
            "requests forwarded to {REVIEWS}: expected 0, got {forwarded}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        gw.proxy.describe()
    );
}

#[test]
fn h2c_prior_knowledge_downstream() {
    let port = gateway_port();
    let (_apps, mut parts) = reviews_v1_v2(port);
    let http = format!(
        "  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {}}}]\n  - route: [{{destination: {}}}]\n",
        dest(REVIEWS, Some("v2"), 9080),
        dest(REVIEWS, Some("v1"), 9080)
    );
    parts.push(virtual_service_yaml("reviews", &["*"], &http));
    let yaml = docs(&parts);
    let mut gw = Gateway::start(port, &yaml);
    // curl reports the HTTP version it spoke.
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge"])
        .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .arg(gw.url("/reviews"))
        .output()
        .expect("run curl");
    let spoken = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        spoken,
        "2 200",
        "curl --http2-prior-knowledge: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        gw.proxy.describe()
    );
    for (extra, want) in [
        (None, "reviews/v1"),
        (Some("end-user: jason"), "reviews/v2"),
    ] {
        let mut args = vec!["--http2-prior-knowledge"];
        if let Some(h) = extra {
            args.extend(["-H", h]);
        }
        let (status, headers, body) = http_request(&gw.url("/reviews?q=1"), &args);
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-sample-service"], want, "{extra:?}");
        let v = json(&body);
        assert_eq!(v["path"], "/reviews");
        assert_eq!(v["query"]["q"], "1");
        assert!(
            v["headers"]["x-request-id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "x-request-id over h2 too: {v}"
        );
    }
    // A POST body crosses h2 downstream → h1 upstream intact.
    let (status, _, body) = http_request(
        &gw.url("/anything/echo"),
        &["--http2-prior-knowledge", "-X", "POST", "-d", "hello-h2"],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["body"], "hello-h2");
}

#[test]
fn grpc_unary_streaming_and_status_through_the_gateway() {
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
                "  - route: [{{destination: {}}}]\n",
                dest(host, None, 50051)
            ),
        ),
    ]);
    let mut gw = Gateway::start(port, &yaml);
    let addr = format!("127.0.0.1:{port}");
    let mut failures = Vec::new();

    let v = grpc(&addr, &["echo", "hello"]);
    let r = &v["responses"][0];
    if v["code"] != "OK"
        || r["message"] != "hello"
        || r["service"] != "echo"
        || r["version"] != "v1"
    {
        failures.push(format!(
            "unary echo: expected OK with echo/v1 saying hello, got {v}"
        ));
    }
    let v = grpc(&addr, &["echo", "boom", "7"]);
    if v["code"] != "PERMISSION_DENIED" || v["details"] != "status_code 7 requested" {
        failures.push(format!(
            "unary non-zero status: expected PERMISSION_DENIED \"status_code 7 requested\", got {v}"
        ));
    }
    let v = grpc(&addr, &["stream", "tick", "5"]);
    let indexes: Vec<i64> = v["responses"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["index"].as_i64()).collect())
        .unwrap_or_default();
    if v["code"] != "OK" || indexes != [0, 1, 2, 3, 4] {
        failures.push(format!(
            "server streaming: expected OK with indexes 0..5, got {v}"
        ));
    }
    // The status arrives in trailers after the messages.
    let v = grpc(&addr, &["stream", "tick", "2", "9"]);
    if v["code"] != "FAILED_PRECONDITION"
        || v["details"] != "status_code 9 requested"
        || v["responses"].as_array().map(Vec::len) != Some(2)
    {
        failures.push(format!(
            "status trailers after 2 messages: expected FAILED_PRECONDITION with 2 responses, got {v}"
        ));
    }
    let v = grpc(&addr, &["unknown"]);
    if v["code"] != "UNIMPLEMENTED" {
        failures.push(format!("unknown method: expected UNIMPLEMENTED, got {v}"));
    }
    // The proxy records gRPC requests with their grpc status.
    let counted = wait_until(Duration::from_secs(5), || {
        let m = gw.metrics();
        metric_sum(
            &m,
            "istio_requests_total",
            &[("request_protocol", "grpc"), ("grpc_response_status", "7")],
        ) == 1.0
    });
    if !counted {
        failures.push(format!(
            "istio_requests_total{{request_protocol=\"grpc\",grpc_response_status=\"7\"}} 1: {}",
            gw.metrics()
                .lines()
                .filter(|l| l.starts_with("istio_requests_total"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        gw.proxy.describe()
    );
}

/// Slowloris: a client that trickles a request head one byte a second is cut off by the request
/// header timeout (10 s, Envoy's `request_headers_timeout` as the compiler sets it), even though
/// it is never idle; nothing reaches the backend.
#[test]
fn trickled_request_head_is_cut_off_by_the_header_timeout() {
    let (_apps, mut gw) = reviews_gateway();
    let mut stream = TcpStream::connect(gw.addr()).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set read timeout");
    let head = b"GET /reviews/slowloris HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut closed_after = None;
    let mut buf = [0u8; 1024];
    'trickle: for byte in head.iter().chain(std::iter::repeat(&b'a')).take(40) {
        if stream.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let tick = Instant::now();
        while tick.elapsed() < Duration::from_secs(1) {
            match stream.read(&mut buf) {
                Ok(0) => {
                    closed_after = Some(started.elapsed());
                    break 'trickle;
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    closed_after = Some(started.elapsed());
                    break 'trickle;
                }
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    let Some(closed_after) = closed_after else {
        panic!(
            "the proxy kept a trickling request head open for 40 s; answer {answer:?}\n{}",
            gw.proxy.describe()
        );
    };
    assert!(
        closed_after >= Duration::from_secs(5),
        "closed after {closed_after:?}, before the header timeout could have fired: {answer:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a timed-out head gets nothing or a 408: {answer:?}"
    );
    let forwarded = metric_sum(
        &gw.metrics(),
        "istio_requests_total",
        &[("destination_service", REVIEWS)],
    );
    assert_eq!(forwarded, 0.0, "the trickled request must not be forwarded");
    assert!(
        !gw.proxy.stdout_text().contains("slowloris"),
        "the trickled request must not be served"
    );
}
