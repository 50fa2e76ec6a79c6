//! Acceptance tests of L4 routing through a gateway `trellis-proxy`: VirtualService `tcp` routes
//! (Istio's TCP traffic-shifting task against `trellis sample-app --tcp-echo`, routing by port,
//! connect failures) and `tls` routes on a TLS PASSTHROUGH server (SNI routing to real TLS
//! servers whose own certificates the client verifies, so nothing terminated TLS on the way).
//! Asserts who answered, what the client saw, and the `istio_tcp_*` metrics.
//! Needs `cargo build --workspace --bins`, and `openssl`, `python3` and `curl` for TLS.

mod e2e_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_support::*;
use trellis_testkit::{
    Process, TempDir, bin_path, free_port, promtool_run, sample_app_on, wait_for_port, wait_until,
};

const ECHO: &str = "tcp-echo.default.svc.cluster.local";

/// A `trellis sample-app --tcp-echo` answering `name/version <line>`.
fn tcp_echo(name: &str, version: &str) -> (Process, u16) {
    let port = free_port();
    (sample_app_on(port, name, version, &["--tcp-echo"]), port)
}

/// A Gateway `gw` with one server per `(port, protocol, tls passthrough, hosts)`.
fn gateway(servers: &[(u16, &str, bool, &[&str])]) -> String {
    let mut out = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n",
    );
    for (port, protocol, passthrough, hosts) in servers {
        let name = protocol.to_ascii_lowercase();
        let hosts = hosts
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "  - port: {{number: {port}, name: {name}-{port}, protocol: {protocol}}}\n    hosts: [{hosts}]\n"
        ));
        if *passthrough {
            out.push_str("    tls: {mode: PASSTHROUGH}\n");
        }
    }
    out
}

/// A VirtualService bound to `gw` with `routes` (YAML of the `tcp:`/`tls:` section, indented).
fn l4_virtual_service(name: &str, hosts: &str, routes: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{hosts}]\n  gateways: [gw]\n{routes}"
    )
}

/// Istio's `tcp-echo` VirtualService: `w1`% to v1, `w2`% to v2 on gateway port `port`.
fn shifting(port: u16, w1: u32, w2: u32) -> String {
    l4_virtual_service(
        "tcp-echo",
        "\"*\"",
        &format!(
            "  tcp:\n  - match: [{{port: {port}}}]\n    route:\n    - {{destination: {}, weight: {w1}}}\n    - {{destination: {}, weight: {w2}}}\n",
            dest(ECHO, Some("v1"), 9000),
            dest(ECHO, Some("v2"), 9000)
        ),
    )
}

/// One connection: send `line`, half-close, read everything until the other side closes.
fn exchange(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(line.as_bytes())?;
    s.shutdown(Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Who answered `hi`: the `name/version` prefix, or `ERR …`.
fn who(addr: SocketAddr) -> String {
    match exchange(addr, "hi\n") {
        Ok(reply) => match reply.strip_suffix(" hi\n") {
            Some(who) => who.to_owned(),
            None => format!("ERR reply {reply:?}"),
        },
        Err(e) => format!("ERR {e}"),
    }
}

fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(who(addr)).or_default() += 1;
    }
    counts
}

fn config_version(gw: &Gateway) -> String {
    let (status, body) = gw.admin_get("/config_dump");
    assert_eq!(status, 200, "{body}");
    json(&body)["version"].as_str().unwrap_or("").to_owned()
}

/// Waits until `name{want}` sums to at least `value`; returns the metrics text.
fn wait_metric(gw: &Gateway, name: &str, want: &[(&str, &str)], value: f64) -> String {
    let mut text = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        text = gw.metrics();
        metric_sum(&text, name, want) >= value
    });
    assert!(ok, "{name}{want:?} never reached {value}:\n{text}");
    text
}

/// `promtool check metrics` on `text` when promtool is installed; the one lint accepted is
/// the unit of Istio's fixed name `istio_request_duration_milliseconds`.
fn promtool_check(text: &str) {
    let Some(report) = promtool_run(text) else {
        return;
    };
    let only_unit_lint = report.status.code() == Some(3)
        && report
            .output
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| {
                l.starts_with("istio_request_duration_milliseconds ") && l.contains("base unit")
            });
    assert!(
        report.status.success() || only_unit_lint,
        "promtool check metrics ({:?}): {}\n{text}",
        report.status.code(),
        report.output
    );
}

/// Waits for an access-log line (proxy stdout, JSON) of a TCP connection that has every
/// `(field, value)` of `want` (values compared as JSON strings or numbers rendered as text).
fn wait_log_line(gw: &mut Gateway, want: &[(&str, &str)]) -> serde_json::Value {
    let mut found = None;
    let matches = |line: &serde_json::Value| {
        line["protocol"] == "TCP"
            && want.iter().all(|(k, v)| match &line[*k] {
                serde_json::Value::String(s) => s == v,
                other => other.to_string().as_str() == *v,
            })
    };
    let ok = wait_until(Duration::from_secs(10), || {
        found = gw
            .proxy
            .stdout_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| matches(l));
        found.is_some()
    });
    assert!(
        ok,
        "no TCP access-log line with {want:?}:\n{}",
        gw.proxy.stdout_text()
    );
    found.unwrap_or_default()
}

#[test]
fn tcp_traffic_shifting_80_20_then_all_to_v2() {
    let (_v1, p1) = tcp_echo("tcp-echo", "v1");
    let (_v2, p2) = tcp_echo("tcp-echo", "v2");
    let port = gateway_port();
    let base = [
        gateway(&[(port, "TCP", false, &["*"])]),
        service_entry_yaml("tcp-echo", ECHO, 9000, "TCP", &[ep(p1, "v1"), ep(p2, "v2")]),
        destination_rule_yaml("tcp-echo", ECHO, None, &["v1", "v2"]),
    ];
    let mut parts = base.to_vec();
    parts.push(shifting(port, 80, 20));
    let gw = Gateway::start(port, &docs(&parts));

    let n = 200;
    let counts = tally(gw.addr(), n);
    let v1 = counts.get("tcp-echo/v1").copied().unwrap_or(0);
    let v2 = counts.get("tcp-echo/v2").copied().unwrap_or(0);
    assert_eq!(
        v1 + v2,
        n,
        "every connection answered by v1 or v2: {counts:?}"
    );
    let share = v1 as f64 * 100.0 / n as f64;
    assert!(
        (73.0..=87.0).contains(&share),
        "v1 share {share}% not 80±7: {counts:?}"
    );

    // Half-close: a last line without newline is answered after our FIN reached the echo.
    let partial = exchange(gw.addr(), "no newline").expect("half-closed exchange");
    assert!(
        partial == "tcp-echo/v1 no newline" || partial == "tcp-echo/v2 no newline",
        "{partial:?}"
    );

    // Metrics: every connection opened and closed, bytes counted per version.
    // `Gateway::start` probed the port once (a connection without bytes) before the tally.
    let all = [("request_protocol", "tcp"), ("response_flags", "-")];
    let text = wait_metric(
        &gw,
        "istio_tcp_connections_closed_total",
        &all,
        (n + 2) as f64,
    );
    assert_eq!(
        metric_sum(&text, "istio_tcp_connections_opened_total", &all),
        (n + 2) as f64,
        "{text}"
    );
    let extra = usize::from(partial.starts_with("tcp-echo/v1"));
    let v1_labels = [("destination_version", "v1"), ("request_protocol", "tcp")];
    let closed = metric_sum(&text, "istio_tcp_connections_closed_total", &v1_labels);
    let probe = closed - (v1 + extra) as f64;
    assert!(
        probe == 0.0 || probe == 1.0,
        "v1 closed {closed}, v1 {v1}: {text}"
    );
    // `hi\n` in and `tcp-echo/v1 hi\n` out per connection, plus the half-close exchange.
    let received = metric_sum(&text, "istio_tcp_received_bytes_total", &v1_labels);
    let sent = metric_sum(&text, "istio_tcp_sent_bytes_total", &v1_labels);
    assert_eq!(received, (3 * v1 + 10 * extra) as f64, "{text}");
    assert_eq!(sent, (15 * v1 + 22 * extra) as f64, "{text}");
    promtool_check(&text);

    // 100% to v2 (Istio's second step), applied by hot reload.
    let before = config_version(&gw);
    let mut parts = base.to_vec();
    parts.push(shifting(port, 0, 100));
    write_atomic(gw.dir.path(), "mesh.yaml", &docs(&parts));
    assert!(
        wait_until(Duration::from_secs(15), || config_version(&gw) != before),
        "new config not applied"
    );
    let counts = tally(gw.addr(), 50);
    assert_eq!(counts.get("tcp-echo/v2"), Some(&50), "{counts:?}");
}

#[test]
fn tcp_routes_by_port_and_closes_on_connect_failure() {
    let (_a, pa) = tcp_echo("alpha", "v1");
    let (_b, pb) = tcp_echo("beta", "v1");
    let dead = free_port(); // nothing listens here
    let (port_a, port_b, port_dead) = (gateway_port(), gateway_port(), gateway_port());
    let alpha = "alpha.default.svc.cluster.local";
    let beta = "beta.default.svc.cluster.local";
    let gone = "gone.default.svc.cluster.local";
    let routes = format!(
        "  tcp:\n  - match: [{{port: {port_a}}}]\n    route: [{{destination: {{host: {alpha}}}}}]\n  - match: [{{port: {port_b}}}]\n    route: [{{destination: {{host: {beta}}}}}]\n  - match: [{{port: {port_dead}}}]\n    route: [{{destination: {{host: {gone}}}}}]\n"
    );
    let yaml = docs(&[
        gateway(&[
            (port_a, "TCP", false, &["*"]),
            (port_b, "TCP", false, &["*"]),
            (port_dead, "TCP", false, &["*"]),
        ]),
        service_entry_yaml("alpha", alpha, 7000, "TCP", &[ep(pa, "v1")]),
        service_entry_yaml("beta", beta, 7001, "TCP", &[ep(pb, "v1")]),
        service_entry_yaml("gone", gone, 7002, "TCP", &[ep(dead, "v1")]),
        l4_virtual_service("by-port", "\"*\"", &routes),
    ]);
    let mut gw = Gateway::start(port_a, &yaml);
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    assert!(wait_for_port(at(port_b), Duration::from_secs(5)));
    for _ in 0..5 {
        assert_eq!(who(at(port_a)), "alpha/v1");
        assert_eq!(who(at(port_b)), "beta/v1");
    }
    // Connect failure: the client's connection is closed without a byte.
    let reply = exchange(at(port_dead), "hi\n");
    assert!(
        matches!(&reply, Ok(s) if s.is_empty()) || reply.is_err(),
        "{reply:?}"
    );
    let text = wait_metric(
        &gw,
        "istio_tcp_connections_closed_total",
        &[("response_flags", "UF"), ("destination_service", gone)],
        1.0,
    );
    let opened_uf = metric_sum(
        &text,
        "istio_tcp_connections_opened_total",
        &[("response_flags", "UF")],
    );
    assert_eq!(opened_uf, 1.0, "{text}");
    // Five exchanges of `hi\n`, plus `Gateway::start`'s readiness probe (no bytes).
    let alpha_labels = [("destination_service", alpha)];
    let closed = metric_sum(&text, "istio_tcp_connections_closed_total", &alpha_labels);
    assert_eq!(closed, 6.0, "{text}");
    let received = metric_sum(&text, "istio_tcp_received_bytes_total", &alpha_labels);
    let sent = metric_sum(&text, "istio_tcp_sent_bytes_total", &alpha_labels);
    assert_eq!((received, sent), (15.0, 60.0), "{text}");

    // One access-log line per connection, with Envoy's fields.
    let upstream = format!("127.0.0.1:{pa}");
    let line = wait_log_line(
        &mut gw,
        &[
            ("upstream_host", &upstream),
            ("bytes_received", "3"),
            ("bytes_sent", "12"),
        ],
    );
    assert_eq!(line["response_flags"], "-", "{line}");
    assert_eq!(
        line["upstream_cluster"],
        format!("outbound|7000||{alpha}"),
        "{line}"
    );
    let line = wait_log_line(&mut gw, &[("response_flags", "UF")]);
    assert_eq!(
        line["upstream_cluster"],
        format!("outbound|7002||{gone}"),
        "{line}"
    );
    assert_eq!(line["bytes_sent"], 0, "{line}");
}

/// A throwaway self-signed certificate for `host`: `(cert.pem, key.pem)` in `dir`.
fn self_signed(dir: &Path, host: &str) -> (String, String) {
    let cert = dir.join(format!("{host}.pem"));
    let key = dir.join(format!("{host}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// A real TLS server (python3's ssl module) answering every GET with `body`.
fn tls_backend(cert: &str, key: &str, body: &str) -> (Process, u16) {
    const SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[4].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
    let port = free_port();
    let args = ["-c", SERVER, &port.to_string(), cert, key, body].map(String::from);
    let mut p = Process::spawn("python3", &args, &[]);
    assert!(
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20)
        ),
        "TLS backend did not listen: {}",
        p.describe()
    );
    (p, port)
}

/// `curl https://<host>:<port>/` through the gateway, trusting only `ca`: `Ok(body)` or the
/// curl error.
fn curl_tls(host: &str, port: u16, ca: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["--cacert", ca])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn tls_passthrough_routes_by_sni_without_terminating() {
    let certs = TempDir::new().expect("temp dir");
    let (a_cert, a_key) = self_signed(certs.path(), "a.example.com");
    let (b_cert, b_key) = self_signed(certs.path(), "b.example.com");
    let (c_cert, _) = self_signed(certs.path(), "c.example.com");
    let (_a, pa) = tls_backend(&a_cert, &a_key, "backend A");
    let (_b, pb) = tls_backend(&b_cert, &b_key, "backend B");
    let port = gateway_port();
    let routes = "  tls:\n  - match: [{sniHosts: [a.example.com]}]\n    route: [{destination: {host: a.example.com, port: {number: 443}}}]\n  - match: [{sniHosts: [b.example.com]}]\n    route: [{destination: {host: b.example.com, port: {number: 443}}}]\n";
    let yaml = docs(&[
        gateway(&[(
            port,
            "TLS",
            true,
            &["a.example.com", "b.example.com", "c.example.com"],
        )]),
        service_entry_yaml("backend-a", "a.example.com", 443, "TLS", &[ep(pa, "v1")]),
        service_entry_yaml("backend-b", "b.example.com", 443, "TLS", &[ep(pb, "v1")]),
        l4_virtual_service("passthrough", "a.example.com, b.example.com", routes),
    ]);
    let mut gw = Gateway::start(port, &yaml);

    // Each name reaches its own backend, and the client verified that backend's certificate.
    for _ in 0..3 {
        assert_eq!(
            curl_tls("a.example.com", port, &a_cert).as_deref(),
            Ok("backend A")
        );
        assert_eq!(
            curl_tls("b.example.com", port, &b_cert).as_deref(),
            Ok("backend B")
        );
    }
    // A's certificate is not B's: trusting A's certificate for b.example.com fails.
    assert!(curl_tls("b.example.com", port, &a_cert).is_err());

    // An SNI no route names (though the server lists it) is closed.
    let unknown = curl_tls("c.example.com", port, &c_cert);
    assert!(unknown.is_err(), "{unknown:?}");

    // A client that is not TLS at all is closed promptly, and the proxy keeps serving.
    let mut plain = TcpStream::connect(gw.addr()).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let read = BufReader::new(&plain).read_until(b'\n', &mut buf);
    let closed = match &read {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(closed, "non-TLS client not closed: {read:?} {buf:?}");
    // A silent client holds only its own connection.
    let _silent = TcpStream::connect(gw.addr()).expect("connect");
    assert_eq!(
        curl_tls("a.example.com", port, &a_cert).as_deref(),
        Ok("backend A")
    );

    // The unknown SNI and the plain-text client: closed with NR (no filter chain).
    wait_metric(
        &gw,
        "istio_tcp_connections_closed_total",
        &[("response_flags", "NR")],
        2.0,
    );
    let line = wait_log_line(&mut gw, &[("authority", "c.example.com")]);
    assert_eq!(line["response_flags"], "NR", "{line}");
    let line = wait_log_line(&mut gw, &[("authority", "a.example.com")]);
    assert_eq!(
        line["upstream_cluster"], "outbound|443||a.example.com",
        "{line}"
    );
    let a = [
        ("destination_service", "a.example.com"),
        ("response_flags", "-"),
    ];
    let text = wait_metric(&gw, "istio_tcp_connections_closed_total", &a, 4.0);
    assert!(
        metric_sum(&text, "istio_tcp_received_bytes_total", &a) > 0.0,
        "{text}"
    );
    assert!(
        metric_sum(&text, "istio_tcp_sent_bytes_total", &a) > 0.0,
        "{text}"
    );
}

/// A sidecar `trellis-proxy` with `labels`, bound on `bind` (each sidecar its own loopback
/// address, so both can serve the same service port), on the directory `dir`.
fn sidecar(dir: &Path, bind: &str, labels: &str) -> Process {
    let admin = free_port();
    let args = [
        "--config-dir",
        &dir.to_string_lossy(),
        "--role",
        "sidecar",
        "--namespace",
        "default",
        "--labels",
        labels,
        "--bind-address",
        bind,
        "--admin-port",
        &admin.to_string(),
        "--outbound-port",
        &free_port().to_string(),
        "--inbound-port",
        &free_port().to_string(),
    ]
    .map(String::from);
    let mut p = Process::spawn(bin_path("trellis-proxy"), &args, &[]);
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let ok = wait_until(Duration::from_secs(20), || {
        trellis_testkit::http_get(&ready).0 == 200 || p.try_wait().is_some()
    });
    assert!(
        ok && p.try_wait().is_none(),
        "sidecar not ready: {}",
        p.describe()
    );
    p
}

#[test]
fn sidecar_tcp_route_by_source_labels() {
    let (_v1, p1) = tcp_echo("tcp-echo", "v1");
    let (_v2, p2) = tcp_echo("tcp-echo", "v2");
    // The service port is where each sidecar listens for it (no traffic capture yet).
    let service_port = free_port();
    let routes = format!(
        "  tcp:\n  - match: [{{sourceLabels: {{tier: canary}}}}]\n    route: [{{destination: {}}}]\n  - route: [{{destination: {}}}]\n",
        dest(ECHO, Some("v2"), service_port),
        dest(ECHO, Some("v1"), service_port)
    );
    let vs = l4_virtual_service("tcp-echo", ECHO, &routes).replace("  gateways: [gw]\n", "");
    let yaml = docs(&[
        service_entry_yaml(
            "tcp-echo",
            ECHO,
            service_port,
            "TCP",
            &[ep(p1, "v1"), ep(p2, "v2")],
        ),
        destination_rule_yaml("tcp-echo", ECHO, None, &["v1", "v2"]),
        vs,
    ]);
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write mesh.yaml");
    let _stable = sidecar(dir.path(), "127.0.0.1", "app=client,version=v1");
    let _canary = sidecar(dir.path(), "127.0.0.2", "app=client,tier=canary");
    let stable = SocketAddr::from(([127, 0, 0, 1], service_port));
    let canary = SocketAddr::from(([127, 0, 0, 2], service_port));
    for _ in 0..10 {
        assert_eq!(who(stable), "tcp-echo/v1");
        assert_eq!(who(canary), "tcp-echo/v2");
    }
}
