//! Shared fixtures of the `e2e_*` acceptance tests: Istio YAML builders, a gateway
//! `trellis-proxy` on a config dir of its own, a raw HTTP/1.1 keep-alive client (for
//! request counts too large for one curl process each), and a Prometheus text parser.
//!
//! Every test file uses a different part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trellis_testkit::{Process, TempDir, free_port, http_get, proxy, sample_app};

/// The FQDN most tests route to.
pub const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// Flags of the gateway proxy under test (the testkit adds `--config-dir`,
/// `--bind-address 127.0.0.1` and `--admin-port`).
pub const GATEWAY_ARGS: [&str; 6] = [
    "--role",
    "gateway",
    "--labels",
    "istio=ingressgateway",
    "--namespace",
    "istio-system",
];

/// Running sample apps, keyed by `name/version`.
pub struct Apps {
    pub procs: Vec<Process>,
    pub ports: BTreeMap<String, u16>,
}

impl Apps {
    /// Starts one `trellis sample-app` per `(name, version)`.
    pub fn start(list: &[(&str, &str)]) -> Apps {
        let mut apps = Apps {
            procs: Vec::new(),
            ports: BTreeMap::new(),
        };
        for (name, version) in list {
            let (process, port) = sample_app(name, version);
            apps.procs.push(process);
            apps.ports.insert(format!("{name}/{version}"), port);
        }
        apps
    }

    pub fn port(&self, key: &str) -> u16 {
        self.ports[key]
    }
}

/// One ServiceEntry endpoint: port, `version` label, optional load-balancing weight.
pub struct Ep<'a> {
    pub port: u16,
    pub version: &'a str,
    pub weight: Option<u32>,
}

pub fn ep(port: u16, version: &str) -> Ep<'_> {
    Ep {
        port,
        version,
        weight: None,
    }
}

/// `Gateway` `gw` in `default`, selecting `istio: ingressgateway`, HTTP on `port`, all hosts.
pub fn gateway_yaml(port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
"#
    )
}

/// A STATIC `ServiceEntry` for `host` (port `number`, `protocol`) with `endpoints` on 127.0.0.1.
pub fn service_entry_yaml(
    name: &str,
    host: &str,
    number: u16,
    protocol: &str,
    eps: &[Ep],
) -> String {
    let port_name = protocol.to_ascii_lowercase();
    let mut out = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {number}, name: {port_name}, protocol: {protocol}}}]
  endpoints:
"#
    );
    if eps.is_empty() {
        out = out.replace("  endpoints:\n", "  endpoints: []\n");
    }
    for e in eps {
        out.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{{port_name}: {}}}, labels: {{app: {name}, version: {}}}",
            e.port, e.version
        ));
        if let Some(w) = e.weight {
            out.push_str(&format!(", weight: {w}"));
        }
        out.push_str("}\n");
    }
    out
}

/// A `DestinationRule` for `host` with one subset per version (`version: <v>` label) and,
/// when given, `trafficPolicy.loadBalancer.simple`.
pub fn destination_rule_yaml(name: &str, host: &str, lb: Option<&str>, subsets: &[&str]) -> String {
    let mut out = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
"#
    );
    if let Some(lb) = lb {
        out.push_str(&format!(
            "  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n"
        ));
    }
    if !subsets.is_empty() {
        out.push_str("  subsets:\n");
        for s in subsets {
            out.push_str(&format!("  - {{name: {s}, labels: {{version: {s}}}}}\n"));
        }
    }
    out
}

/// A `VirtualService` bound to gateway `gw`; `http` is the YAML of the `http:` list,
/// indented by two spaces.
pub fn virtual_service_yaml(name: &str, hosts: &[&str], http: &str) -> String {
    let hosts = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{hosts}]
  gateways: [gw]
  http:
{http}"#
    )
}

/// `destination: {host, subset, port}` for a route, as a flow mapping.
pub fn dest(host: &str, subset: Option<&str>, port: u16) -> String {
    match subset {
        Some(s) => format!("{{host: {host}, subset: {s}, port: {{number: {port}}}}}"),
        None => format!("{{host: {host}, port: {{number: {port}}}}}"),
    }
}

/// Joins YAML documents with `---`.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// Writes `dir/name` atomically: a hidden temp file in the same directory (the loader skips
/// dot files), then a rename.
pub fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, dir.join(name)).expect("rename config into place");
}

/// A gateway `trellis-proxy` serving its own config directory.
pub struct Gateway {
    pub dir: TempDir,
    pub port: u16,
    pub admin: u16,
    pub proxy: Process,
}

impl Gateway {
    /// Writes `yaml` (which must bind the Gateway to `port`) to `mesh.yaml` and starts the proxy.
    pub fn start(port: u16, yaml: &str) -> Gateway {
        let dir = TempDir::new().expect("temp dir");
        std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write mesh.yaml");
        Gateway::start_in(dir, port)
    }

    /// Starts the proxy on an already filled directory.
    pub fn start_in(dir: TempDir, port: u16) -> Gateway {
        let (proxy, admin) = proxy(dir.path(), &GATEWAY_ARGS);
        let gw = Gateway {
            dir,
            port,
            admin,
            proxy,
        };
        let addr = gw.addr();
        assert!(
            trellis_testkit::wait_for_port(addr, Duration::from_secs(10)),
            "gateway listener {addr} not bound"
        );
        gw
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = http_get(&format!("http://127.0.0.1:{}{path}", self.admin));
        (status, body)
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/stats/prometheus");
        assert_eq!(status, 200, "/stats/prometheus: {body}");
        body
    }

    pub fn client(&self) -> H1Client {
        H1Client::new(self.addr())
    }
}

/// A fresh free port for a gateway listener.
pub fn gateway_port() -> u16 {
    free_port()
}

/// One HTTP/1.1 response read by [`H1Client`].
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Lower-cased names; repeated values joined with `,`.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Resp {
    /// `x-sample-service` (`name/version`) or `-` when absent.
    pub fn served_by(&self) -> String {
        self.headers
            .get("x-sample-service")
            .cloned()
            .unwrap_or_else(|| "-".into())
    }
}

/// A minimal HTTP/1.1 client over one keep-alive `TcpStream`: reconnects only when the server
/// announced `connection: close` (or before the first request). Any I/O error is returned, not
/// retried, so tests can count failures.
pub struct H1Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// How many TCP connections were opened.
    pub connects: usize,
}

impl H1Client {
    pub fn new(addr: SocketAddr) -> H1Client {
        H1Client {
            addr,
            conn: None,
            connects: 0,
        }
    }

    /// `GET path` with `Host: host` and `headers`.
    pub fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Resp> {
        self.request("GET", host, path, headers, "")
    }

    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<Resp> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.set_write_timeout(Some(Duration::from_secs(10)))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
            self.connects += 1;
        }
        let result = self.exchange(method, host, path, headers, body);
        match &result {
            Ok(resp)
                if !resp
                    .headers
                    .get("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close")) => {}
            _ => self.conn = None,
        }
        result
    }

    fn exchange(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<Resp> {
        let conn = self.conn.as_mut().expect("connected");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        head.push_str(body);
        conn.get_mut().write_all(head.as_bytes())?;
        read_response(conn, method == "HEAD")
    }
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until EOF).
pub fn read_response(r: &mut impl BufRead, head_only: bool) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("EOF in response head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .and_modify(|old: &mut String| {
                    old.push(',');
                    old.push_str(v.trim());
                })
                .or_insert_with(|| v.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Sends `n` GETs over one keep-alive connection and counts who answered (`x-sample-service`);
/// a failed request counts as `ERR <status or error>`.
pub fn tally(
    client: &mut H1Client,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = match client.get(host, path, headers) {
            Ok(r) if r.status == 200 => r.served_by(),
            Ok(r) => format!("ERR {} {}", r.status, r.body.trim()),
            Err(e) => format!("ERR {e}"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments skipped).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut end = r.len();
            loop {
                // label name
                let mut key = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' || c == '}' {
                        break;
                    }
                    if c != ',' && !c.is_whitespace() {
                        key.push(c);
                    }
                    chars.next();
                }
                match chars.next() {
                    Some((i, '}')) => {
                        end = i;
                        break;
                    }
                    Some((_, '=')) => {}
                    _ => break,
                }
                chars.next(); // opening quote
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => break,
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
            }
            rest = &r[(end + 1).min(r.len())..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(value) = value {
            out.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
    }
    out
}

/// Sum of the samples named `name` whose labels include all of `want`.
pub fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    parse_prometheus(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
        .sum()
}

/// Runs `tests/py/grpc_client.py ADDR ARGS…` and parses its JSON line.
pub fn grpc(addr: &str, args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/grpc_client.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(addr)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "grpc_client.py {args:?} failed (is grpcio installed? `python3 -m pip install grpcio`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("grpc_client output ({e}): {text}"))
}

/// Parses a JSON body or panics with it.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"))
}

/// reviews v1 and v2 running, with the `ServiceEntry` (both endpoints, labelled by version) and the
/// `DestinationRule` (subsets v1, v2) for them, plus a Gateway on `port`: the common start of
/// most tests. Add the VirtualService.
pub fn reviews_v1_v2(port: u16) -> (Apps, Vec<String>) {
    let apps = Apps::start(&[("reviews", "v1"), ("reviews", "v2")]);
    let docs = vec![
        gateway_yaml(port),
        service_entry_yaml(
            "reviews",
            REVIEWS,
            9080,
            "HTTP",
            &[
                ep(apps.port("reviews/v1"), "v1"),
                ep(apps.port("reviews/v2"), "v2"),
            ],
        ),
        destination_rule_yaml("reviews", REVIEWS, None, &["v1", "v2"]),
    ];
    (apps, docs)
}
