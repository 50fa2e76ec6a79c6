//! The `trellis` CLI against a real management API: `apply -f DIR` (errors moved back to the
//! file and line they came from), `get` (table, -l, -o yaml), `delete` (by name and -f),
//! `proxy-status`, the token from --token / TRELLIS_TOKEN / the token file, and
//! `proxy-config` against a real `trellis-proxy` admin port. The API runs in-process on a
//! free loopback port over a directory store in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::{Value, json};
use trellis_control::ControlStatus;
use trellis_control::api::{self, Token};
use trellis_control::store;
use trellis_testkit::TempDir;

struct FixedStatus;

impl ControlStatus for FixedStatus {
    fn proxy_status(&self) -> Value {
        json!({"proxies": [{"id": "gateway~127.0.0.1~gw.istio-system", "status": "SYNCED"}]})
    }
    fn encode_metrics(&self, _out: &mut String) {}
}

struct Control {
    server: String,
    token_file: PathBuf,
    dir: TempDir,
    _rt: tokio::runtime::Runtime,
}

fn start() -> Control {
    let dir = TempDir::new().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let spec = dir.path().join("data").display().to_string();
    let token_file = Token::default_path(&spec);
    let (store, listener) = rt.block_on(async {
        let store = store::open(&spec).await.expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        (store, listener)
    });
    let server = format!("http://{}", listener.local_addr().expect("addr"));
    let token = Arc::new(Token::load_or_create(&token_file).expect("token"));
    rt.spawn(api::serve(listener, store, Arc::new(FixedStatus), token));
    Control {
        server,
        token_file,
        dir,
        _rt: rt,
    }
}

/// Output of one `trellis` run.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Control {
    /// `trellis ARGS --server URL --token-file FILE`.
    fn trellis(&self, args: &[&str]) -> Run {
        self.trellis_env(args, &[], true)
    }

    fn trellis_env(&self, args: &[&str], env: &[(&str, &str)], token_file: bool) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trellis"));
        cmd.args(args);
        if args[0] == "proxy-config" {
            // Talks to a proxy, not to the control plane.
        } else if token_file {
            cmd.arg("--token-file").arg(&self.token_file);
        } else {
            cmd.args(["--token-file", "/nonexistent/token"]);
        }
        if args[0] != "proxy-config" {
            cmd.args(["--server", &self.server]);
        }
        cmd.env_remove("TRELLIS_TOKEN").env_remove("TRELLIS_SERVER");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run trellis");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join("in").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn service_entry(name: &str, app: &str, port: u16) -> String {
    format!(
        "# {name}
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn apply_get_delete_through_the_cli() {
    let c = start();
    c.write("mesh/a.yaml", &service_entry("reviews", "reviews", 9081));
    c.write("mesh/b.yaml", &service_entry("ratings", "ratings", 9082));
    let mesh = c.dir.path().join("in/mesh");
    let run = c.trellis(&["apply", "-f", p(&mesh)]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("ServiceEntry default/reviews created"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("ServiceEntry default/ratings created"),
        "{}",
        run.stdout
    );
    // Applying the same files again changes nothing.
    let run = c.trellis(&["apply", "-f", p(&mesh)]);
    assert!(
        run.stdout
            .contains("ServiceEntry default/reviews unchanged"),
        "{}",
        run.stdout
    );

    let run = c.trellis(&["get", "serviceentries"]);
    assert!(run.ok, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAMESPACE") && lines.len() == 3,
        "{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with("default") && lines[1].contains("ratings"),
        "{}",
        run.stdout
    );
    let run = c.trellis(&["get", "se", "-l", "app=reviews", "-o", "json"]);
    let list: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["metadata"]["name"], "reviews");
    let run = c.trellis(&["get", "se", "reviews", "-o", "yaml"]);
    assert!(
        run.stdout.contains("kind: ServiceEntry") && run.stdout.contains("http: 9081"),
        "{}",
        run.stdout
    );
    let run = c.trellis(&["get", "se", "-n", "prod"]);
    assert!(
        run.ok && run.stderr.contains("no serviceentries found"),
        "{}",
        run.stderr
    );

    let run = c.trellis(&["delete", "se", "reviews"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains("ServiceEntry default/reviews deleted"),
        "{}",
        run.stdout
    );
    let run = c.trellis(&["get", "se", "reviews"]);
    assert!(
        !run.ok
            && run
                .stderr
                .contains("ServiceEntry default/reviews not found"),
        "{}",
        run.stderr
    );
    let run = c.trellis(&["delete", "-f", p(&mesh.join("b.yaml"))]);
    assert!(
        run.ok && run.stdout.contains("ServiceEntry default/ratings deleted"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let run = c.trellis(&["get", "se", "-A"]);
    assert!(
        run.stderr.contains("no serviceentries found"),
        "{}",
        run.stderr
    );
}

#[test]
fn apply_reports_errors_in_the_files_they_came_from() {
    let c = start();
    let good = c.write(
        "cfg/1-good.yaml",
        &service_entry("reviews", "reviews", 9081),
    );
    let bad_text = service_entry("ratings", "ratings", 9082)
        .replace("resolution: STATIC", "resolution: STATC")
        .replace("ports: [{number", "ports: [{numbr");
    let bad = c.write("cfg/2-bad.yaml", &bad_text);
    let run = c.trellis(&["apply", "-f", p(good.parent().unwrap())]);
    assert!(!run.ok);
    // Line 9 of 2-bad.yaml: `  resolution: STATC` (col 15); line 10: `numbr` (col 12).
    let expected_resolution = format!(
        "{}:9:15: error: ServiceEntry default/ratings: spec.resolution:",
        p(&bad)
    );
    let expected_port = format!(
        "{}:10:12: error: ServiceEntry default/ratings: spec.ports[0].numbr:",
        p(&bad)
    );
    assert!(run.stdout.contains(&expected_resolution), "{}", run.stdout);
    assert!(run.stdout.contains(&expected_port), "{}", run.stdout);
    assert!(
        run.stderr.contains("error(s); nothing was written"),
        "{}",
        run.stderr
    );
    // Nothing was applied, not even the good file.
    let run = c.trellis(&["get", "se", "reviews"]);
    assert!(!run.ok, "{}", run.stdout);
    // --dry-run validates and compiles without writing.
    let run = c.trellis(&["apply", "--dry-run", "-f", p(&good)]);
    assert!(
        run.ok && run.stdout.contains("(dry run)") && run.stdout.contains("valid;"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert!(!c.trellis(&["get", "se", "reviews"]).ok);
}

#[test]
fn writes_need_a_token_from_flag_env_or_file() {
    let c = start();
    let file = c.write("se.yaml", &service_entry("reviews", "reviews", 9081));
    let run = c.trellis_env(&["apply", "-f", p(&file)], &[], false);
    assert!(!run.ok && run.stderr.contains("Bearer"), "{}", run.stderr);
    let run = c.trellis_env(&["apply", "-f", p(&file), "--token", "wrong"], &[], false);
    assert!(!run.ok, "{}", run.stdout);
    let token = std::fs::read_to_string(&c.token_file)
        .unwrap()
        .trim()
        .to_owned();
    let run = c.trellis_env(
        &["apply", "-f", p(&file)],
        &[("TRELLIS_TOKEN", &token)],
        false,
    );
    assert!(run.ok, "{}", run.stderr);
    let run = c.trellis_env(&["delete", "se", "reviews", "--token", &token], &[], false);
    assert!(run.ok, "{}", run.stderr);
    // Reads need no token on loopback.
    let run = c.trellis_env(&["proxy-status", "-o", "json"], &[], false);
    assert!(run.ok, "{}", run.stderr);
    let status: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(status["proxies"][0]["status"], "SYNCED");
}

#[test]
fn proxy_config_reads_a_real_proxy() {
    let c = start();
    let dir = c.dir.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    let gateway = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 18080, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: ['*']
  gateways: [gw]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]}]
";
    std::fs::write(
        dir.join("gw.yaml"),
        format!(
            "{gateway}---\n{}",
            service_entry("reviews", "reviews", 9081)
        ),
    )
    .unwrap();
    let (_proxy, admin) = trellis_testkit::proxy(
        &dir,
        &["--role", "gateway", "--labels", "istio=ingressgateway"],
    );
    let admin = format!("127.0.0.1:{admin}");
    let run = c.trellis_env(&["proxy-config", &admin], &[], false);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains("0.0.0.0_18080") && run.stdout.contains("127.0.0.1:18080"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("outbound|9080||reviews.default.svc.cluster.local"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("127.0.0.1:9081"), "{}", run.stdout);
    let run = c.trellis_env(
        &["proxy-config", &admin, "clusters", "-o", "json"],
        &[],
        false,
    );
    let dump: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(
        dump["clusters"][0]["name"],
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert!(dump.get("listeners").is_none());
}
