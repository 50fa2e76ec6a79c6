//! Acceptance tests of what operators see: the admin `/ready`, `/config_dump` and
//! `/stats/prometheus` endpoints (Istio's metric names and labels, checked by `promtool`), and
//! the JSON access log on the proxy's stdout. Needs `cargo build --workspace --bins`;
//! `promtool` is used when installed.

mod e2e_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_support::*;
use serde_json::Value;
use trellis_testkit::wait_until;

/// reviews v1 and v2; jason → v2, everyone else → v1; only for host `bookinfo.example.com`.
fn bookinfo() -> (Apps, Gateway) {
    let port = gateway_port();
    let (apps, mut parts) = reviews_v1_v2(port);
    let http = format!(
        "  - name: jason\n    match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {}}}]\n  - name: everyone\n    route: [{{destination: {}}}]\n",
        dest(REVIEWS, Some("v2"), 9080),
        dest(REVIEWS, Some("v1"), 9080)
    );
    parts.push(virtual_service_yaml(
        "bookinfo",
        &["bookinfo.example.com"],
        &http,
    ));
    let yaml = docs(&parts);
    let gw = Gateway::start(port, &yaml);
    (apps, gw)
}

/// Every string value anywhere in `v` under a key named `key`.
fn strings_under(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == key
                    && let Some(s) = child.as_str()
                {
                    out.push(s.to_owned());
                }
                strings_under(child, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| strings_under(c, key, out)),
        _ => {}
    }
}

#[test]
fn admin_ready_and_config_dump() {
    let (_apps, mut gw) = bookinfo();
    let (status, body) = gw.admin_get("/ready");
    assert_eq!(status, 200, "/ready: {body}");

    let (status, body) = gw.admin_get("/config_dump");
    assert_eq!(status, 200, "/config_dump: {body}");
    let dump = json(&body);
    let version = dump["version"].as_str().unwrap_or("");
    assert!(
        version.len() == 16 && version.chars().all(|c| c.is_ascii_hexdigit()),
        "version is 16 hex digits: {:?}",
        dump["version"]
    );
    let mut names = Vec::new();
    strings_under(&dump, "name", &mut names);
    let port = gw.port;
    let mut missing = Vec::new();
    for want in [
        format!("0.0.0.0_{port}"),
        format!("http.{port}"),
        format!("outbound|9080|v1|{REVIEWS}"),
        format!("outbound|9080|v2|{REVIEWS}"),
        format!("outbound|9080||{REVIEWS}"),
        format!("bookinfo.example.com:{port}"),
    ] {
        if !names.contains(&want) {
            missing.push(want);
        }
    }
    assert!(
        missing.is_empty(),
        "config_dump lacks the names {missing:?}; it has {names:?}\n{}",
        gw.proxy.describe()
    );
    // The dump is stable while the config does not change.
    let (_, again) = gw.admin_get("/config_dump");
    assert_eq!(json(&again)["version"], dump["version"]);
}

#[test]
fn prometheus_metrics_count_requests_and_pass_promtool() {
    let (_apps, mut gw) = bookinfo();
    const N: usize = 20;
    const NR: usize = 3;
    let mut client = gw.client();
    for i in 0..N {
        let r = client
            .get(
                "bookinfo.example.com",
                &format!("/reviews/obs-{i}"),
                &[("end-user", "jason")],
            )
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.served_by(), "reviews/v2");
    }
    for i in 0..NR {
        let r = client
            .get("nobody.example.org", &format!("/reviews/nr-{i}"), &[])
            .expect("request");
        assert_eq!(r.status, 404, "{}", r.body);
    }
    let ok_labels = [
        ("response_code", "200"),
        ("destination_service", REVIEWS),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("destination_version", "v2"),
        ("reporter", "source"),
        ("request_protocol", "http"),
        ("response_flags", "-"),
    ];
    let nr_labels = [("response_code", "404"), ("response_flags", "NR")];
    let settled = wait_until(Duration::from_secs(5), || {
        let m = gw.metrics();
        metric_sum(&m, "istio_requests_total", &ok_labels) == N as f64
            && metric_sum(&m, "istio_requests_total", &nr_labels) == NR as f64
    });
    let metrics = gw.metrics();
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total"))
        .collect();
    assert!(
        settled,
        "expected istio_requests_total {ok_labels:?} = {N} and {nr_labels:?} = {NR}; got:\n{}\n{}",
        requests.join("\n"),
        gw.proxy.describe()
    );
    // Exactly one series per outcome: N in one 200 series, NR in one 404 series.
    let samples = parse_prometheus(&metrics);
    let ok_series: Vec<_> = samples
        .iter()
        .filter(|s| {
            s.name == "istio_requests_total"
                && s.labels.get("response_code").is_some_and(|c| c == "200")
        })
        .collect();
    assert_eq!(ok_series.len(), 1, "one 200 series: {ok_series:?}");
    // The duration histogram counted the same requests.
    let durations = metric_sum(
        &metrics,
        "istio_request_duration_milliseconds_count",
        &[("response_code", "200"), ("destination_service", REVIEWS)],
    );
    assert_eq!(
        durations, N as f64,
        "istio_request_duration_milliseconds_count"
    );

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("note: promtool not installed; skipping `promtool check metrics`");
        }
        Err(e) => panic!("run promtool: {e}"),
        Ok(mut child) => {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(metrics.as_bytes())
                .expect("write metrics to promtool");
            let out = child.wait_with_output().expect("promtool output");
            // promtool exits 1 on a parse error and 3 on lint problems. The one lint we accept
            // is the base unit of `istio_request_duration_milliseconds`: Istio fixes that name
            // and dashboards query it, so it stays in milliseconds.
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let only_istio_unit_lint = out.status.code() == Some(3)
                && report.lines().filter(|l| !l.trim().is_empty()).all(|l| {
                    l.starts_with("istio_request_duration_milliseconds ") && l.contains("base unit")
                });
            assert!(
                out.status.success() || only_istio_unit_lint,
                "promtool check metrics ({:?}): {report}\n{metrics}",
                out.status.code()
            );
        }
    }
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let (_apps, mut gw) = bookinfo();
    let mut client = gw.client();
    for i in 0..5 {
        let r = client
            .get(
                "bookinfo.example.com",
                &format!("/reviews/log-{i}?n={i}"),
                &[("end-user", "jason")],
            )
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = client
        .request(
            "POST",
            "bookinfo.example.com",
            "/reviews/log-post",
            &[],
            "abc",
        )
        .expect("request");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = client
        .get("nobody.example.org", "/reviews/log-nr", &[])
        .expect("request");
    assert_eq!(r.status, 404);

    let lines = |gw: &Gateway| -> Vec<Value> {
        gw.proxy
            .stdout_text()
            .lines()
            .filter(|l| l.contains("/reviews/log-"))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
            })
            .collect()
    };
    let _ = wait_until(Duration::from_secs(5), || lines(&gw).len() >= 7);
    let lines = lines(&gw);
    assert_eq!(
        lines.len(),
        7,
        "one access log line per request: {lines:#?}\n{}",
        gw.proxy.describe()
    );
    let v2 = format!("outbound|9080|v2|{REVIEWS}");
    let v1 = format!("outbound|9080|v1|{REVIEWS}");
    for (i, line) in lines.iter().take(5).enumerate() {
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], format!("/reviews/log-{i}?n={i}"), "{line}");
        assert_eq!(line["response_code"], 200, "{line}");
        assert_eq!(line["response_flags"], "-", "{line}");
        assert_eq!(line["upstream_cluster"], v2.as_str(), "{line}");
        assert_eq!(line["authority"], "bookinfo.example.com", "{line}");
        assert!(
            line["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{line}"
        );
    }
    let post = &lines[5];
    assert_eq!(post["method"], "POST", "{post}");
    assert_eq!(post["upstream_cluster"], v1.as_str(), "{post}");
    assert_eq!(post["bytes_received"], 3, "{post}");
    let nr = &lines[6];
    assert_eq!(nr["response_code"], 404, "{nr}");
    assert_eq!(nr["response_flags"], "NR", "{nr}");
    assert!(nr["upstream_cluster"].is_null(), "{nr}");
}
