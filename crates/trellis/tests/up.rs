//! End-to-end tests of `trellis up` and `trellis validate` on a copy of
//! `examples/quickstart` with every port rewritten to a free one: the real
//! `trellis` and `trellis-proxy` binaries (the gateway on `trellis control`
//! over xDS), curl through the gateway, a `trellis apply` of a changed route
//! as the banner says, then SIGINT and check that nothing is left listening.
//!
//! Needs `trellis-proxy` built next to `trellis`: `cargo build --workspace --bins`
//! (`cargo test --workspace` does it).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trellis_testkit::{Process, SIGINT, TempDir, bin_path, free_port, http_request, wait_until};

const QUICKSTART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");

/// Ports of one quickstart copy.
struct Ports {
    gateway: u16,
    admin: u16,
    xds: u16,
    api: u16,
    apps: BTreeMap<&'static str, u16>,
}

/// Copies the quickstart into a temp dir with free ports instead of the fixed ones.
fn quickstart_copy() -> (TempDir, Ports) {
    let dir = TempDir::new().expect("temp dir");
    let mut ports = Ports {
        gateway: free_port(),
        admin: free_port(),
        xds: free_port(),
        api: free_port(),
        apps: BTreeMap::new(),
    };
    for app in ["9081", "9082", "9083", "9091"] {
        ports.apps.insert(app, free_port());
    }
    for entry in std::fs::read_dir(QUICKSTART).expect("read examples/quickstart") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).expect("read yaml");
        text = text.replace("number: 8080", &format!("number: {}", ports.gateway));
        for (old, new) in &ports.apps {
            text = text.replace(&format!("http: {old}"), &format!("http: {new}"));
        }
        let name = path.file_name().expect("file name");
        std::fs::write(dir.path().join(name), text).expect("write yaml");
    }
    (dir, ports)
}

fn start_up(dir: &Path, ports: &Ports) -> Process {
    let (admin, xds, api) = (
        ports.admin.to_string(),
        ports.xds.to_string(),
        ports.api.to_string(),
    );
    let args = [
        "up".as_ref(),
        dir.as_os_str(),
        "--admin-port".as_ref(),
        admin.as_ref(),
        "--xds-port".as_ref(),
        xds.as_ref(),
        "--api-port".as_ref(),
        api.as_ref(),
    ];
    Process::spawn(env!("CARGO_BIN_EXE_trellis"), args, &[])
}

/// Which version answered a request through the gateway (`x-sample-service`).
fn served_by(url: &str, extra: &[&str]) -> String {
    let (status, headers, body) = http_request(url, extra);
    assert_eq!(status, 200, "{url} {extra:?}: {body}");
    headers
        .get("x-sample-service")
        .cloned()
        .unwrap_or_else(|| format!("<none: {body}>"))
}

fn is_listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

#[test]
fn up_routes_through_gateway_and_stops_on_sigint() {
    bin_path("trellis-proxy"); // clear message when the proxy was not built
    let (dir, ports) = quickstart_copy();
    let mut up = start_up(dir.path(), &ports);
    let ready = wait_until(Duration::from_secs(60), || {
        up.stdout_text().contains("Press Ctrl-C") || up.try_wait().is_some()
    });
    assert!(
        ready && up.try_wait().is_none(),
        "trellis up did not get ready: {}",
        up.describe()
    );
    let stdout = up.stdout_text();
    let base = format!("http://127.0.0.1:{}", ports.gateway);
    assert!(
        stdout.contains(&format!("curl -H 'end-user: jason' {base}/reviews")),
        "{stdout}"
    );
    for port in ports.apps.values() {
        assert!(
            is_listening(*port),
            "sample app on {port} not listening: {}",
            up.describe()
        );
    }

    let reviews = format!("{base}/reviews");
    for _ in 0..20 {
        assert_eq!(
            served_by(&reviews, &["-H", "end-user: jason"]),
            "reviews/v2"
        );
    }
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..200 {
        *counts.entry(served_by(&reviews, &[])).or_default() += 1;
    }
    let v1 = counts.get("reviews/v1").copied().unwrap_or(0);
    let v3 = counts.get("reviews/v3").copied().unwrap_or(0);
    assert_eq!(v1 + v3, 200, "only v1 and v3 without end-user: {counts:?}");
    // 90/10 over 200 requests: v3 ~ Binomial(200, 0.1), mean 20, sd 4.2.
    assert!((5..=45).contains(&v3), "v3 share far from 10%: {counts:?}");
    assert_eq!(
        served_by(&format!("{base}/productpage"), &[]),
        "productpage/v1"
    );

    apply_as_the_banner_says(&stdout, dir.path(), &reviews, &mut up);

    up.signal(SIGINT);
    let status = up.wait_timeout(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGINT: {}",
        up.describe()
    );
    let others = [&ports.gateway, &ports.admin, &ports.xds, &ports.api];
    for port in ports.apps.values().chain(others) {
        assert!(
            !is_listening(*port),
            "port {port} still open after trellis up stopped"
        );
    }
}

/// Follows the banner: `export TRELLIS_SERVER=… TRELLIS_TOKEN_FILE=…`, the `sed` that sends
/// jason to v3, `trellis apply -f`, then `trellis proxy-status`.
fn apply_as_the_banner_says(stdout: &str, dir: &Path, reviews: &str, up: &mut Process) {
    let export = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("export "))
        .unwrap_or_else(|| panic!("no export line in the banner: {stdout}"));
    let env: Vec<(&str, &str)> = export
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let names: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ["TRELLIS_SERVER", "TRELLIS_TOKEN_FILE"], "{export}");
    assert!(
        stdout.contains("sed 's/subset: v2/subset: v3/'") && stdout.contains(" apply -f "),
        "{stdout}"
    );
    let vs = std::fs::read_to_string(dir.join("virtual-service.yaml")).expect("read vs");
    let changed = dir.join("jason-v3.yaml.changed");
    std::fs::write(&changed, vs.replace("subset: v2", "subset: v3")).expect("write change");
    let trellis = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(args)
            .env_remove("TRELLIS_TOKEN")
            .envs(env.iter().copied())
            .output()
            .expect("run trellis");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = trellis(&["apply", "-f", changed.to_str().unwrap()]);
    assert!(ok && text.contains("configured"), "trellis apply: {text}");
    let mut last = String::new();
    let moved = wait_until(Duration::from_secs(20), || {
        last = served_by(reviews, &["-H", "end-user: jason"]);
        last == "reviews/v3"
    });
    assert!(
        moved,
        "jason still served by {last} after the apply: {}",
        up.describe()
    );
    for _ in 0..10 {
        assert_eq!(served_by(reviews, &["-H", "end-user: jason"]), "reviews/v3");
    }
    let mut status = serde_json::Value::Null;
    let synced = wait_until(Duration::from_secs(20), || {
        let (ok, text) = trellis(&["proxy-status", "-o", "json"]);
        assert!(ok, "trellis proxy-status: {text}");
        status = serde_json::from_str(&text).unwrap_or_default();
        status["proxies"].as_array().is_some_and(|ps| {
            ps.len() == 1
                && ps[0]["role"] == "gateway"
                && ["cds", "eds", "lds", "rds"]
                    .iter()
                    .all(|t| ps[0]["types"][t]["state"] == "SYNCED")
        })
    });
    assert!(synced, "the gateway is not SYNCED: {status:#}");
}

#[test]
fn up_exits_non_zero_with_stderr_when_a_child_dies() {
    let (dir, ports) = quickstart_copy();
    // Occupy the port of reviews v2 so that its sample app cannot bind.
    let taken = ports.apps["9082"];
    let _blocker = TcpListener::bind(("127.0.0.1", taken)).expect("occupy a port");
    let mut up = start_up(dir.path(), &ports);
    let status = up.wait_timeout(Duration::from_secs(30));
    let stderr = up.stderr_text();
    assert!(
        status.is_some_and(|s| s.code() == Some(1)),
        "exit code: {}",
        up.describe()
    );
    assert!(stderr.contains("exited early"), "{stderr}");
    assert!(
        stderr.contains(&format!("bind 127.0.0.1:{taken}")),
        "child stderr shown: {stderr}"
    );
    for (name, port) in &ports.apps {
        if *port != taken {
            assert!(
                !is_listening(*port),
                "sample app {name} left running on {port}"
            );
        }
    }
}

#[test]
fn validate_accepts_quickstart() {
    let output = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["validate", QUICKSTART])
        .output()
        .expect("run trellis validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("5 resources valid"), "{stdout}");
}

#[test]
fn validate_reports_errors_with_location() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("bad.yaml");
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bad\nspec:\n  hosts: [\"*\"]\n  htp: []\n";
    std::fs::write(&file, yaml).expect("write yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run trellis validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("htp"))
        .unwrap_or_else(|| panic!("no htp error: {stdout}"));
    assert!(
        line.starts_with(&format!("{}:7:", file.display())),
        "file:line:col: {line}"
    );
    assert!(line.contains(": error: "), "{line}");
}
