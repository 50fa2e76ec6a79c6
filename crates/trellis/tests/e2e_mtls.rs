//! Mutual TLS between sidecars, replaying Istio's "mutual TLS migration" task on loopback:
//! each workload has its own loopback address (127.0.0.N); an app listens on 127.0.0.1:P and
//! its sidecar captures inbound traffic by binding 127.0.0.N:P. Sidecar workloads are
//! `WorkloadEntry`s labelled `security.istio.io/tlsMode: istio`, so client sidecars use mTLS
//! toward them (auto mTLS) and plaintext toward the legacy workload. Certificates come from a
//! throwaway CA written in Istio's file layout (`--identity-dir`).
//! Needs `cargo build --workspace --bins`.

use std::path::Path;
use std::time::Duration;

use trellis_testkit::certs::MeshCa;
use trellis_testkit::{Process, TempDir, http_request, sample_app, wait_until};

const SERVICE_PORT: u16 = 8000;

/// One workload: its app, its sidecar (when it has one) and where clients reach it.
struct Workload {
    _app: Option<Process>,
    sidecar: Option<Process>,
    /// The workload address (its sidecar's bind address, or 127.0.0.1 without a sidecar).
    addr: String,
    /// The app's port, which is also the captured target port.
    port: u16,
    /// The sidecar's outbound listener port.
    outbound: u16,
}

/// `Service httpbin` in `ns` (service port 8000 → target `port`) selecting a `WorkloadEntry` at
/// `addr`, labelled with `tlsMode: istio` when the workload has a sidecar.
fn httpbin_yaml(ns: &str, addr: &str, port: u16, sidecar: bool) -> String {
    let tls = if sidecar {
        ", security.istio.io/tlsMode: istio"
    } else {
        ""
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: {ns}}}
spec:
  selector: {{app: httpbin}}
  ports:
  - {{name: http, port: {SERVICE_PORT}, targetPort: {port}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin, namespace: {ns}}}
spec:
  address: {addr}
  serviceAccount: httpbin
  labels: {{app: httpbin{tls}}}
"#
    )
}

/// The headers the app saw, from its `/headers` answer.
fn seen_headers(body: &str) -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["headers"].as_object().cloned().unwrap_or_default()
}

fn header<'a>(h: &'a serde_json::Map<String, serde_json::Value>, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str().or_else(|| v.as_array()?.first()?.as_str()))
}

/// A request from a sidecar client (through its outbound listener) to `httpbin.<ns>`.
fn via_sidecar(client: &Workload, ns: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{}:{}/headers", client.addr, client.outbound);
    let host = format!("Host: httpbin.{ns}:{SERVICE_PORT}");
    let mut args = vec!["-H", host.as_str()];
    args.extend_from_slice(extra);
    let (status, _, body) = http_request(&url, &args);
    (status, body)
}

/// A request from a client without a sidecar, straight to the workload address.
fn plaintext(server: &Workload) -> u16 {
    let url = format!("http://{}:{}/headers", server.addr, server.port);
    http_request(&url, &["-H", "Host: httpbin"]).0
}

#[test]
fn sidecar_to_sidecar_is_mutual_tls_and_the_app_sees_the_client_identity() {
    let ca = MeshCa::new("cluster.local");
    let dir = TempDir::new().expect("temp dir");
    let certs = TempDir::new().expect("cert dir");
    let (app, port) = sample_app("httpbin", "v1");
    std::fs::write(
        dir.path().join("mesh.yaml"),
        httpbin_yaml("bar", "127.0.0.62", port, true),
    )
    .expect("write config");
    let (server, _) = ca.sidecar(dir.path(), certs.path(), "bar", "httpbin", "127.0.0.62");
    let (client, outbound) = ca.sidecar(dir.path(), certs.path(), "foo", "sleep", "127.0.0.61");
    let client = Workload {
        _app: None,
        sidecar: Some(client),
        addr: "127.0.0.61".into(),
        port: 0,
        outbound,
    };
    let server = Workload {
        _app: Some(app),
        sidecar: Some(server),
        addr: "127.0.0.62".into(),
        port,
        outbound: 0,
    };
    // A spoofed XFCC from the client is replaced by what the server sidecar verified.
    let (status, body) = via_sidecar(
        &client,
        "bar",
        &[
            "-H",
            "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/bar/sa/admin",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let h = seen_headers(&body);
    let xfcc = header(&h, "x-forwarded-client-cert").unwrap_or_else(|| panic!("no XFCC: {body}"));
    assert!(
        xfcc.starts_with("By=spiffe://cluster.local/ns/bar/sa/httpbin;Hash="),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(";Subject=\"\";URI=spiffe://cluster.local/ns/foo/sa/sleep"),
        "{xfcc}"
    );
    assert!(!xfcc.contains("sa/admin"), "{xfcc}");
    // PERMISSIVE (the default): a client without a sidecar still gets through, and any XFCC it
    // sends is dropped.
    let url = format!("http://{}:{}/headers", server.addr, server.port);
    let (status, _, body) = http_request(
        &url,
        &[
            "-H",
            "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/bar/sa/admin",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&seen_headers(&body), "x-forwarded-client-cert"),
        None,
        "{body}"
    );
    assert_eq!(plaintext(&server), 200);
    assert!(client.sidecar.is_some() && server.sidecar.is_some());
}

/// Istio's migration task: `httpbin` and `sleep` in `foo` and `bar` (with sidecars) and in
/// `legacy` (without), then STRICT in `foo`, then a port-level exception.
struct Migration {
    dir: TempDir,
    _certs: TempDir,
    httpbin: Vec<(String, Workload)>,
    sleep: Vec<(String, Workload)>,
}

impl Migration {
    fn start() -> Migration {
        let ca = MeshCa::new("cluster.local");
        let dir = TempDir::new().expect("temp dir");
        let certs = TempDir::new().expect("cert dir");
        let mut yaml = Vec::new();
        let mut apps = Vec::new();
        for (i, ns) in ["foo", "bar", "legacy"].into_iter().enumerate() {
            let (app, port) = sample_app("httpbin", ns);
            let sidecar = ns != "legacy";
            let addr = if sidecar {
                format!("127.0.0.{}", 81 + i)
            } else {
                "127.0.0.1".to_string()
            };
            yaml.push(httpbin_yaml(ns, &addr, port, sidecar));
            apps.push((ns, app, port, addr));
        }
        write_config(dir.path(), "mesh.yaml", &yaml.join("---\n"));
        let mut httpbin = Vec::new();
        for (ns, app, port, addr) in apps {
            let sidecar = (ns != "legacy")
                .then(|| ca.sidecar(dir.path(), certs.path(), ns, "httpbin", &addr).0);
            let w = Workload {
                _app: Some(app),
                sidecar,
                addr,
                port,
                outbound: 0,
            };
            httpbin.push((ns.to_string(), w));
        }
        let mut sleep = Vec::new();
        for (i, ns) in ["foo", "bar", "legacy"].into_iter().enumerate() {
            let addr = format!("127.0.0.{}", 91 + i);
            let (sidecar, outbound) = if ns == "legacy" {
                (None, 0)
            } else {
                let (p, o) = ca.sidecar(dir.path(), certs.path(), ns, "sleep", &addr);
                (Some(p), o)
            };
            let w = Workload {
                _app: None,
                sidecar,
                addr,
                port: 0,
                outbound,
            };
            sleep.push((ns.to_string(), w));
        }
        Migration {
            dir,
            _certs: certs,
            httpbin,
            sleep,
        }
    }

    /// `sleep.<from>` → `httpbin.<to>`: the status (0 when the connection was refused or closed).
    fn call(&self, from: &str, to: &str) -> u16 {
        let client = &self.sleep.iter().find(|(n, _)| n == from).expect("sleep").1;
        let server = &self
            .httpbin
            .iter()
            .find(|(n, _)| n == to)
            .expect("httpbin")
            .1;
        if client.sidecar.is_some() {
            via_sidecar(client, to, &[]).0
        } else {
            plaintext(server)
        }
    }

    /// Every pair's status, as `sleep.X to httpbin.Y: S` lines.
    fn matrix(&self) -> String {
        let mut out = Vec::new();
        for from in ["foo", "bar", "legacy"] {
            for to in ["foo", "bar", "legacy"] {
                out.push(format!(
                    "sleep.{from} to httpbin.{to}: {}",
                    self.call(from, to)
                ));
            }
        }
        out.join("\n")
    }

    fn port(&self, ns: &str) -> u16 {
        self.httpbin
            .iter()
            .find(|(n, _)| n == ns)
            .expect("httpbin")
            .1
            .port
    }
}

fn write_config(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, dir.join(name)).expect("rename config");
}

/// The matrix with every pair 200 except those listed as failing.
fn expected(failing: &[(&str, &str)]) -> String {
    let mut out = Vec::new();
    for from in ["foo", "bar", "legacy"] {
        for to in ["foo", "bar", "legacy"] {
            let status = if failing.contains(&(from, to)) {
                0
            } else {
                200
            };
            out.push(format!("sleep.{from} to httpbin.{to}: {status}"));
        }
    }
    out.join("\n")
}

/// Polls until the matrix is `want` (config changes reach the proxies by polling).
fn wait_for_matrix(m: &Migration, want: &str) {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        last = m.matrix();
        last == want
    });
    assert!(ok, "want:\n{want}\ngot:\n{last}");
}

#[test]
fn mutual_tls_migration() {
    let m = Migration::start();
    // PERMISSIVE (nothing configured): every pair talks, sidecar clients over mTLS.
    wait_for_matrix(&m, &expected(&[]));
    // STRICT in foo: the client without a sidecar can no longer reach httpbin.foo.
    write_config(
        m.dir.path(),
        "pa-foo.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}\n",
    );
    wait_for_matrix(&m, &expected(&[("legacy", "foo")]));
    // A workload policy with a port-level exception lets plaintext in on that port again.
    let exception = format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: httpbin, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  mtls: {{mode: STRICT}}\n  portLevelMtls:\n    \"{}\": {{mode: PERMISSIVE}}\n",
        m.port("foo")
    );
    write_config(m.dir.path(), "pa-httpbin.yaml", &exception);
    wait_for_matrix(&m, &expected(&[]));
    // Mesh-wide STRICT (root namespace): only `legacy` (whose httpbin has no sidecar) stays
    // reachable from the plaintext client; the port-level exception in foo still wins.
    write_config(
        m.dir.path(),
        "pa-mesh.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    );
    wait_for_matrix(&m, &expected(&[("legacy", "bar")]));
    // DISABLE in bar: its sidecar takes plaintext only, and client sidecars, inferring the mode
    // from the namespace policy as Istio does, stop using mTLS toward it.
    write_config(
        m.dir.path(),
        "pa-bar.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: bar}\nspec: {mtls: {mode: DISABLE}}\n",
    );
    wait_for_matrix(&m, &expected(&[]));
}

fn destination_rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin, namespace: foo}}\nspec:\n  host: httpbin.bar.svc.cluster.local\n  trafficPolicy:\n    tls: {tls}\n"
    )
}

#[test]
fn destination_rule_tls_modes() {
    let ca = MeshCa::new("cluster.local");
    let dir = TempDir::new().expect("temp dir");
    let certs = TempDir::new().expect("cert dir");
    let (app, port) = sample_app("httpbin", "v1");
    write_config(
        dir.path(),
        "mesh.yaml",
        &httpbin_yaml("bar", "127.0.0.102", port, true),
    );
    let (server, _) = ca.sidecar(dir.path(), certs.path(), "bar", "httpbin", "127.0.0.102");
    let (client, outbound) = ca.sidecar(dir.path(), certs.path(), "foo", "sleep", "127.0.0.101");
    let _server = (app, server);
    let client = Workload {
        _app: None,
        sidecar: Some(client),
        addr: "127.0.0.101".into(),
        port: 0,
        outbound,
    };
    // The client's XFCC URI as the app saw it: `Some("")` for a plaintext request (no XFCC),
    // `None` when the request failed.
    let seen = || {
        let (status, body) = via_sidecar(&client, "bar", &[]);
        (status == 200).then(|| {
            let h = seen_headers(&body);
            header(&h, "x-forwarded-client-cert")
                .and_then(|x| x.split(";URI=").nth(1))
                .unwrap_or("")
                .to_string()
        })
    };
    let expect = |tls: &str, want: Option<&str>| {
        write_config(dir.path(), "dr.yaml", &destination_rule(tls));
        let mut last = None;
        let ok = wait_until(Duration::from_secs(20), || {
            last = seen();
            last.as_deref() == want
        });
        assert!(ok, "tls {tls}: want {want:?}, got {last:?}");
    };
    let sleep = "spiffe://cluster.local/ns/foo/sa/sleep";
    // No DestinationRule: auto mTLS.
    assert_eq!(seen().as_deref(), Some(sleep));
    // DISABLE: plaintext even toward a sidecar (PERMISSIVE lets it in; no XFCC).
    expect("{mode: DISABLE}", Some(""));
    // ISTIO_MUTUAL with the server's identity listed, then with another one.
    expect(
        "{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/bar/sa/httpbin]}",
        Some(sleep),
    );
    expect(
        "{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/bar/sa/other]}",
        None,
    );
    // MUTUAL with files: the client presents the file certificate.
    let files = ca.identity_dir(certs.path(), "foo", "files-client");
    let f = |name: &str| files.join(name).to_string_lossy().into_owned();
    let mutual = format!(
        "{{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}, subjectAltNames: [spiffe://cluster.local/ns/bar/sa/httpbin]}}",
        f("cert-chain.pem"),
        f("key.pem"),
        f("root-cert.pem")
    );
    expect(
        &mutual,
        Some("spiffe://cluster.local/ns/foo/sa/files-client"),
    );
    // SIMPLE presents no client certificate: the sidecar, which requires one, refuses it.
    let simple = format!(
        "{{mode: SIMPLE, caCertificates: {}, subjectAltNames: [spiffe://cluster.local/ns/bar/sa/httpbin]}}",
        f("root-cert.pem")
    );
    expect(&simple, None);
}
