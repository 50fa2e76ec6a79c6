//! Tests of [`Telemetry`]: exact exposition lines, label escaping, access-log JSON, promtool.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;

/// A request through an ingress gateway to `reviews-v1`; tests change what they need.
pub(crate) fn record_fixture() -> RequestRecord<'static> {
    RequestRecord {
        start: UNIX_EPOCH + Duration::from_millis(1_714_566_896_789),
        duration: Duration::from_millis(12),
        method: "GET",
        path: "/reviews/1?x=\"y\"",
        authority: "bookinfo.example.com",
        protocol: "HTTP/1.1",
        grpc: false,
        response_code: 200,
        grpc_status: None,
        response_flags: "-",
        request_id: "5f0c1b6e-2b8a-4a53-9d3c-0c3d1f2a7b11",
        user_agent: "curl/8.5.0",
        x_forwarded_for: "",
        downstream_remote: "10.0.0.7:51234".parse().unwrap(),
        downstream_local: "10.0.0.2:8080".parse().unwrap(),
        upstream_host: Some("10.1.2.3:9080".parse().unwrap()),
        upstream_cluster: "outbound|9080||reviews.default.svc.cluster.local",
        route_name: "reviews",
        bytes_received: 0,
        bytes_sent: 295,
        destination_service: "reviews.default.svc.cluster.local",
        destination_service_name: "reviews",
        destination_service_namespace: "default",
        destination_workload: "reviews-v1",
        destination_workload_namespace: "default",
        destination_version: "v1",
        destination_app: "reviews",
    }
}

fn gateway() -> ProxyIdentity {
    let mut proxy = ProxyIdentity {
        id: "router~10.0.0.2~ingress.istio-system".into(),
        namespace: "istio-system".into(),
        service_account: "istio-ingressgateway-service-account".into(),
        ..Default::default()
    };
    proxy
        .labels
        .insert("app".into(), "istio-ingressgateway".into());
    proxy
}

const SOURCE: &str = "reporter=\"source\",source_workload=\"istio-ingressgateway\",\
source_canonical_service=\"istio-ingressgateway\",source_canonical_revision=\"latest\",\
source_workload_namespace=\"istio-system\",source_principal=\"unknown\",\
source_app=\"istio-ingressgateway\",source_version=\"unknown\",source_cluster=\"Kubernetes\"";

const REVIEWS: &str = "destination_workload=\"reviews-v1\",destination_workload_namespace=\"default\",\
destination_principal=\"unknown\",destination_app=\"reviews\",destination_version=\"v1\",\
destination_service=\"reviews.default.svc.cluster.local\",destination_canonical_service=\"reviews\",\
destination_canonical_revision=\"v1\",destination_service_name=\"reviews\",\
destination_service_namespace=\"default\",destination_cluster=\"Kubernetes\"";

fn labels(destination: &str, protocol: &str, code: u16, grpc_status: &str, flags: &str) -> String {
    format!(
        "{SOURCE},{destination},request_protocol=\"{protocol}\",response_code=\"{code}\",\
         grpc_response_status=\"{grpc_status}\",response_flags=\"{flags}\",\
         connection_security_policy=\"unknown\""
    )
}

fn assert_line(exposition: &str, line: &str) {
    assert!(
        exposition.lines().any(|l| l == line),
        "missing line\n  {line}\nin exposition:\n{exposition}"
    );
}

/// A `Write` into memory that the test can read after the access log has shut down.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn counter_and_histograms_per_label_set() {
    let telemetry = Telemetry::with_access_log(&gateway(), AccessLogSink::Off);
    for (ms, sent) in [(3, 0), (12, 295), (700, 2_000_000)] {
        let r = RequestRecord {
            duration: Duration::from_millis(ms),
            bytes_sent: sent,
            ..record_fixture()
        };
        telemetry.record(&r);
    }
    let unavailable = RequestRecord {
        response_code: 503,
        response_flags: "UH",
        upstream_host: None,
        ..record_fixture()
    };
    telemetry.record(&unavailable);
    let out = telemetry.encode_prometheus();

    let ok = labels(REVIEWS, "http", 200, "", "-");
    assert_line(&out, "# TYPE istio_requests_total counter");
    assert_line(&out, &format!("istio_requests_total{{{ok}}} 3"));
    assert_line(
        &out,
        &format!(
            "istio_requests_total{{{}}} 1",
            labels(REVIEWS, "http", 503, "", "UH")
        ),
    );

    let d = "istio_request_duration_milliseconds";
    assert_line(&out, &format!("# TYPE {d} histogram"));
    assert_line(&out, &format!("{d}_bucket{{{ok},le=\"1\"}} 0"));
    assert_line(&out, &format!("{d}_bucket{{{ok},le=\"5\"}} 1"));
    assert_line(&out, &format!("{d}_bucket{{{ok},le=\"10\"}} 1"));
    assert_line(&out, &format!("{d}_bucket{{{ok},le=\"25\"}} 2"));
    assert_line(&out, &format!("{d}_bucket{{{ok},le=\"500\"}} 2"));
    assert_line(&out, &format!("{d}_bucket{{{ok},le=\"1000\"}} 3"));
    assert_line(&out, &format!("{d}_bucket{{{ok},le=\"3.6e+06\"}} 3"));
    assert_line(&out, &format!("{d}_bucket{{{ok},le=\"+Inf\"}} 3"));
    assert_line(&out, &format!("{d}_sum{{{ok}}} 715.0"));
    assert_line(&out, &format!("{d}_count{{{ok}}} 3"));

    let b = "istio_response_bytes";
    assert_line(&out, &format!("{b}_bucket{{{ok},le=\"1\"}} 1"));
    assert_line(&out, &format!("{b}_bucket{{{ok},le=\"1000\"}} 2"));
    assert_line(&out, &format!("{b}_bucket{{{ok},le=\"1e+06\"}} 2"));
    assert_line(&out, &format!("{b}_bucket{{{ok},le=\"1e+07\"}} 3"));
    assert_line(&out, &format!("{b}_sum{{{ok}}} 2000295.0"));
    assert_line(&out, &format!("{b}_count{{{ok}}} 3"));
    assert_line(&out, &format!("istio_request_bytes_sum{{{ok}}} 0.0"));
    assert_line(&out, &format!("istio_request_bytes_count{{{ok}}} 3"));
}

#[test]
fn grpc_unknown_destination_and_escaped_labels() {
    let telemetry = Telemetry::with_access_log(&gateway(), AccessLogSink::Off);
    let grpc = RequestRecord {
        grpc: true,
        grpc_status: Some("14"),
        response_flags: "",
        destination_service: "we\"ird\\svc\nname",
        destination_service_name: "",
        destination_service_namespace: "",
        destination_workload: "",
        destination_workload_namespace: "",
        destination_version: "",
        destination_app: "",
        ..record_fixture()
    };
    telemetry.record(&grpc);
    // A gRPC status on a plain HTTP request is not a gRPC status.
    telemetry.record(&RequestRecord {
        grpc_status: Some("0"),
        ..record_fixture()
    });
    let out = telemetry.encode_prometheus();
    let unknown = "destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",\
destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\",\
destination_service=\"we\\\"ird\\\\svc\\nname\",destination_canonical_service=\"unknown\",\
destination_canonical_revision=\"unknown\",destination_service_name=\"unknown\",\
destination_service_namespace=\"unknown\",destination_cluster=\"unknown\"";
    assert_line(
        &out,
        &format!(
            "istio_requests_total{{{}}} 1",
            labels(unknown, "grpc", 200, "14", "-")
        ),
    );
    assert_line(
        &out,
        &format!(
            "istio_requests_total{{{}}} 1",
            labels(REVIEWS, "http", 200, "", "-")
        ),
    );
}

#[test]
fn proxy_counters_and_gauges() {
    let telemetry = Telemetry::with_access_log(&gateway(), AccessLogSink::Off);
    telemetry.config_applied();
    telemetry.config_applied();
    telemetry.config_rejected();
    let request = telemetry.request_started();
    let _connection = telemetry.connection_opened();
    let out = telemetry.encode_prometheus();
    assert_line(&out, "trellis_proxy_config_applies_total 2");
    assert_line(&out, "trellis_proxy_config_rejections_total 1");
    assert_line(&out, "trellis_proxy_downstream_requests_active 1");
    assert_line(&out, "trellis_proxy_downstream_connections_active 1");
    assert_line(&out, "trellis_proxy_access_log_dropped_total 0");
    assert_line(&out, "trellis_proxy_metric_series_dropped_total 0");
    drop(request);
    assert_line(
        &telemetry.encode_prometheus(),
        "trellis_proxy_downstream_requests_active 0",
    );
}

#[test]
fn access_log_lines_are_json_with_envoy_field_names() {
    let buffer = SharedBuffer::default();
    let telemetry =
        Telemetry::with_access_log(&gateway(), AccessLogSink::Writer(Box::new(buffer.clone())));
    telemetry.record(&record_fixture());
    let grpc = RequestRecord {
        protocol: "HTTP/2",
        grpc: true,
        grpc_status: Some("14"),
        response_code: 200,
        response_flags: "UF,URX",
        upstream_host: None,
        user_agent: "grpc-go/1.62 \u{1F600}\t\"quoted\"",
        x_forwarded_for: "203.0.113.9, 10.0.0.7",
        ..record_fixture()
    };
    telemetry.record(&grpc);
    drop(telemetry); // joins the writer thread, which flushes everything
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0],
        serde_json::json!({
            "start_time": "2024-05-01T12:34:56.789Z",
            "method": "GET",
            "path": "/reviews/1?x=\"y\"",
            "protocol": "HTTP/1.1",
            "response_code": 200,
            "response_flags": "-",
            "bytes_received": 0,
            "bytes_sent": 295,
            "duration": 12,
            "x_forwarded_for": null,
            "user_agent": "curl/8.5.0",
            "request_id": "5f0c1b6e-2b8a-4a53-9d3c-0c3d1f2a7b11",
            "authority": "bookinfo.example.com",
            "upstream_host": "10.1.2.3:9080",
            "upstream_cluster": "outbound|9080||reviews.default.svc.cluster.local",
            "route_name": "reviews",
            "downstream_remote_address": "10.0.0.7:51234",
            "downstream_local_address": "10.0.0.2:8080",
            "grpc_status": null,
        })
    );
    assert_eq!(lines[1]["grpc_status"], "14");
    assert_eq!(lines[1]["protocol"], "HTTP/2");
    assert_eq!(lines[1]["response_flags"], "UF,URX");
    assert_eq!(lines[1]["upstream_host"], serde_json::Value::Null);
    assert_eq!(lines[1]["user_agent"], "grpc-go/1.62 \u{1F600}\t\"quoted\"");
    assert_eq!(lines[1]["x_forwarded_for"], "203.0.113.9, 10.0.0.7");
}

#[test]
fn access_log_setting() {
    assert!(access_log_enabled(None));
    assert!(access_log_enabled(Some("on")));
    assert!(access_log_enabled(Some("")));
    assert!(!access_log_enabled(Some("off")));
    assert!(!access_log_enabled(Some("OFF")));
    assert!(!access_log_enabled(Some("false")));
}

/// `promtool check metrics` on a realistic exposition. promtool's lint flags every name with a
/// non-base unit, and `istio_request_duration_milliseconds` is Istio's name, which dashboards
/// query: that one finding is expected; anything else fails the test.
#[test]
fn promtool_accepts_the_exposition() {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not found; skipping (apt-get install prometheus)");
        return;
    };
    let telemetry = Telemetry::with_access_log(&gateway(), AccessLogSink::Off);
    telemetry.record(&record_fixture());
    telemetry.record(&RequestRecord {
        grpc: true,
        grpc_status: Some("2"),
        destination_app: "",
        ..record_fixture()
    });
    telemetry.record(&RequestRecord {
        destination_service: "a\"b\\c\nd",
        response_code: 404,
        ..record_fixture()
    });
    telemetry.config_applied();
    let exposition = telemetry.encode_prometheus();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let expected =
        "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"";
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && l.trim() != expected)
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool findings:\n{report}\nexposition:\n{exposition}"
    );
    // 0: clean; 3: lint findings only (all of them expected, checked above). 1 would be a parse error.
    assert!(
        matches!(output.status.code(), Some(0 | 3)),
        "promtool: {:?}\n{report}",
        output.status
    );
}

/// Cost of `record` on one thread, metrics only and metrics plus access log (to a sink that
/// discards). Prints the best of several rounds, which is the least disturbed by other processes.
/// `cargo test -p trellis-proxy --release --lib record_cost -- --ignored --nocapture`
#[test]
#[ignore = "micro-benchmark; run by hand with --release --ignored --nocapture"]
fn record_cost() {
    let per_round = 200_000u32;
    for (name, sink) in [
        ("metrics only", AccessLogSink::Off),
        (
            "metrics + access log",
            AccessLogSink::Writer(Box::new(std::io::sink())),
        ),
    ] {
        let telemetry = Telemetry::with_access_log(&gateway(), sink);
        let records: Vec<RequestRecord<'static>> = [200, 200, 404, 503]
            .into_iter()
            .map(|code| RequestRecord {
                response_code: code,
                ..record_fixture()
            })
            .collect();
        let mut best = Duration::MAX;
        for _ in 0..10 {
            let started = Instant::now();
            for i in 0..per_round {
                telemetry.record(&records[i as usize % records.len()]);
            }
            best = best.min(started.elapsed() / per_round);
            // Let the access-log writer drain, as it would between bursts.
            std::thread::sleep(Duration::from_millis(50));
        }
        let exposition = telemetry.encode_prometheus();
        let dropped_lines = exposition
            .lines()
            .find(|l| l.starts_with("trellis_proxy_access_log_dropped_total"));
        println!(
            "record ({name}): {} ns/op (best of 10 rounds); {}",
            best.as_nanos(),
            dropped_lines.unwrap_or("")
        );
    }
    let record = record_fixture();
    let started = Instant::now();
    let bytes: usize = (0..per_round)
        .map(|_| access_log::format_line(&record).len())
        .sum();
    println!(
        "access_log::format_line alone: {} ns/op ({} bytes/line)",
        (started.elapsed() / per_round).as_nanos(),
        bytes / per_round as usize
    );
}
