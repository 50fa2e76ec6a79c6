//! End-to-end tests of `trellis sample-app`: the real binary on a free
//! loopback port, driven by curl (HTTP/1.1 and h2c) and Python grpcio.

mod e2e_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_support::grpc;
use serde_json::Value;
use trellis_testkit::{Process, free_port, http_request, wait_for_port};

/// Starts the sample app as `reviews/v2` with a fixed instance id.
fn start() -> (Process, String) {
    let port = free_port();
    let port_arg = port.to_string();
    let args = [
        "sample-app",
        "--name",
        "reviews",
        "--version",
        "v2",
        "--port",
        &port_arg,
        "--instance",
        "reviews-test-1",
    ];
    let mut app = Process::spawn(env!("CARGO_BIN_EXE_trellis"), args, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_for_port(addr, Duration::from_secs(10)),
        "sample-app did not listen: {}",
        app.describe()
    );
    (app, format!("127.0.0.1:{port}"))
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"))
}

fn assert_identity(v: &Value) {
    assert_eq!(v["service"], "reviews", "{v}");
    assert_eq!(v["version"], "v2", "{v}");
    assert_eq!(v["instance"], "reviews-test-1", "{v}");
}

#[test]
fn http1_get_reports_request_and_identity() {
    let (_app, addr) = start();
    let url = format!("http://{addr}/get?user=jason&tag=a&tag=b%20c");
    let (status, headers, body) = http_request(
        &url,
        &[
            "-H",
            "X-Trace: 1",
            "-H",
            "X-Trace: 2",
            "-H",
            "end-user: jason",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-sample-service"], "reviews/v2");
    assert_eq!(headers["content-type"], "application/json");
    let v = json(&body);
    assert_identity(&v);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/get");
    assert_eq!(v["query"]["user"], "jason");
    assert_eq!(v["query"]["tag"], "a,b c");
    assert_eq!(v["headers"]["x-trace"], "1,2");
    assert_eq!(v["headers"]["end-user"], "jason");
    assert_eq!(v["headers"]["host"], addr.as_str());

    let (status, _, body) = http_request(&format!("http://{addr}/"), &[]);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["path"], "/");
    let (status, _, body) = http_request(&format!("http://{addr}/reviews/1"), &[]);
    assert_eq!(status, 200, "own service name is a route");
    assert_eq!(json(&body)["path"], "/reviews/1");
}

#[test]
fn h2c_prior_knowledge_serves_headers() {
    let (_app, addr) = start();
    let (status, headers, body) = http_request(
        &format!("http://{addr}/headers"),
        &[
            "--http2-prior-knowledge",
            "-H",
            "x-user: ann",
            "-w",
            "\n%{http_version}",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-sample-service"], "reviews/v2");
    let (json_body, version) = body.rsplit_once('\n').expect("curl -w line");
    assert_eq!(version, "2", "curl did not speak HTTP/2");
    let v = json(json_body);
    assert_identity(&v);
    assert_eq!(v["headers"]["x-user"], "ann");
    assert_eq!(
        v["headers"]["host"],
        addr.as_str(),
        "h2 :authority reported as host"
    );
    assert!(
        v.get("method").is_none(),
        "/headers answers only headers: {v}"
    );
}

#[test]
fn post_echoes_body_and_json() {
    let (_app, addr) = start();
    let url = format!("http://{addr}/post");
    let (status, _, body) = http_request(
        &url,
        &[
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"rating": 5}"#,
        ],
    );
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_identity(&v);
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["body"], r#"{"rating": 5}"#);
    assert_eq!(v["json"]["rating"], 5);

    let (status, _, body) = http_request(&url, &["-d", "not json"]);
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["body"], "not json");
    assert!(v["json"].is_null(), "{v}");
}

#[test]
fn status_delay_and_not_found() {
    let (_app, addr) = start();
    for code in ["201", "418", "503"] {
        let (status, headers, body) = http_request(&format!("http://{addr}/status/{code}"), &[]);
        assert_eq!(status.to_string(), code, "{body}");
        assert_eq!(headers["x-sample-service"], "reviews/v2");
        assert_identity(&json(&body));
    }
    let (status, _, body) = http_request(&format!("http://{addr}/status/204"), &[]);
    assert_eq!((status, body.as_str()), (204, ""));
    for bad in ["abc", "99", "600"] {
        let (status, _, body) = http_request(&format!("http://{addr}/status/{bad}"), &[]);
        assert_eq!(status, 400, "/status/{bad}: {body}");
        assert!(
            json(&body)["error"]
                .as_str()
                .is_some_and(|e| e.contains("bad status code"))
        );
    }

    let started = Instant::now();
    let (status, _, body) = http_request(&format!("http://{addr}/delay/0.3"), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered too early"
    );
    assert_eq!(json(&body)["delay"], 0.3);
    for bad in ["61", "-1", "x", "NaN"] {
        let (status, _, _) = http_request(&format!("http://{addr}/delay/{bad}"), &[]);
        assert_eq!(status, 400, "/delay/{bad}");
    }

    let (status, headers, body) = http_request(&format!("http://{addr}/no/such/path"), &[]);
    assert_eq!(status, 404);
    assert_eq!(headers["x-sample-service"], "reviews/v2");
    let v = json(&body);
    assert_identity(&v);
    assert_eq!(v["error"], "no route for /no/such/path");
}

#[test]
fn grpc_echo_unary_and_streaming() {
    let (_app, addr) = start();
    let v = grpc(&addr, &["echo", "hello"]);
    assert_eq!(v["code"], "OK", "{v}");
    let responses = v["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 1);
    assert_identity(&responses[0]);
    assert_eq!(responses[0]["message"], "hello");
    assert_eq!(responses[0]["index"], 0);

    let v = grpc(&addr, &["echo", "boom", "7"]);
    assert_eq!(v["code"], "PERMISSION_DENIED", "{v}");
    assert_eq!(v["details"], "status_code 7 requested");
    assert_eq!(v["responses"].as_array().map(Vec::len), Some(0));

    let v = grpc(&addr, &["stream", "tick", "3"]);
    assert_eq!(v["code"], "OK", "{v}");
    let indexes: Vec<i64> = v["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .filter_map(|r| r["index"].as_i64())
        .collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert!(
        v["responses"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["message"] == "tick"))
    );

    let v = grpc(&addr, &["stream", "tick", "2", "9"]);
    assert_eq!(
        v["code"], "FAILED_PRECONDITION",
        "status after the messages: {v}"
    );
    assert_eq!(v["responses"].as_array().map(Vec::len), Some(2));

    let v = grpc(&addr, &["stream", "tick", "-1"]);
    assert_eq!(v["code"], "INVALID_ARGUMENT", "{v}");
}

#[test]
fn grpc_health_and_unknown_method() {
    let (_app, addr) = start();
    let v = grpc(&addr, &["health"]);
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(v["responses"][0]["status"], 1, "SERVING");
    let v = grpc(&addr, &["health", "trellis.sample.v1.Echo"]);
    assert_eq!(v["responses"][0]["status"], 1, "SERVING");

    let v = grpc(&addr, &["health", "no.such.Service"]);
    assert_eq!(v["code"], "NOT_FOUND", "{v}");

    let v = grpc(&addr, &["unknown"]);
    assert_eq!(v["code"], "UNIMPLEMENTED", "{v}");
    assert_eq!(v["details"], "unknown method /trellis.sample.v1.Echo/Nope");
    assert_eq!(
        v["trailers"]["x-sample-service"], "reviews/v2",
        "trailers-only answer keeps headers"
    );
}

/// The raw wire shape: trailers-only errors carry `grpc-status` in the one
/// header block; successful calls end with `grpc-status: 0` trailers.
#[test]
fn grpc_wire_trailers_seen_by_curl() {
    let (_app, addr) = start();
    let base = [
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ];
    // Empty EchoRequest frame: flag 0, length 0.
    let frame_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(frame_file.path(), [0u8, 0, 0, 0, 0]).expect("write frame");
    let data = format!("@{}", frame_file.path().display());
    let mut args = base.to_vec();
    args.extend(["--data-binary", &data]);

    let (status, headers, body) =
        http_request(&format!("http://{addr}/trellis.sample.v1.Echo/Echo"), &args);
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert!(
        !headers.contains_key("grpc-status"),
        "status belongs in trailers: {headers:?}"
    );
    // curl -i prints trailers after the body: one framed EchoResponse, then grpc-status.
    assert!(
        body.starts_with("\0\0\0\0"),
        "5-byte frame prefix: {body:?}"
    );
    assert!(body.contains("reviews-test-1"), "{body:?}");
    assert!(body.ends_with("grpc-status: 0\r\n"), "OK trailer: {body:?}");

    let (status, headers, body) = http_request(&format!("http://{addr}/x.Y/Z"), &args);
    assert_eq!(status, 200);
    assert_eq!(
        headers["grpc-status"], "12",
        "trailers-only UNIMPLEMENTED: {headers:?}"
    );
    assert_eq!(headers["grpc-message"], "unknown method /x.Y/Z");
    assert_eq!(body, "");
}
