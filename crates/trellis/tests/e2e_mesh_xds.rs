//! Our own proxy on our own control plane: `trellis control` serves a store (a directory, or
//! etcd shared by two replicas) and `trellis-proxy --role gateway --xds-address …` routes
//! traffic to sample apps as the VirtualService says. Changes go through the CLI
//! (`trellis apply`) and take effect live; an invalid apply is refused with 400 while the proxy
//! keeps serving; an endpoint-only change is an EDS-only push; `trellis delete` removes routes
//! and listeners from the proxy; `trellis proxy-status` shows the proxy SYNCED; a proxy whose
//! control plane dies reconnects to another replica without failing a request.

mod control_support;
mod e2e_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use control_support::*;
use e2e_support::*;
use serde_json::Value;
use trellis_testkit::etcd::Etcd;
use trellis_testkit::{
    Process, TempDir, bin_path, free_port, http_get, http_request, sample_app, wait_for_port,
    wait_until,
};

/// The node id `trellis-proxy` announces for the gateway flags below.
const PROXY_ID: &str = "gateway~127.0.0.1~proxy.istio-system";
const TYPES: [&str; 4] = ["cds", "eds", "lds", "rds"];

/// A gateway `trellis-proxy` subscribed to control plane(s) over ADS.
struct XdsProxy {
    port: u16,
    admin: u16,
    process: Process,
}

impl XdsProxy {
    /// `servers`: `host:port[,host:port]`; `mode`: `delta` or `sotw`; `port`: the Gateway's.
    fn start(servers: &str, mode: &str, port: u16) -> XdsProxy {
        let admin = free_port();
        let admin_arg = admin.to_string();
        let mut args = vec![
            "--xds-address",
            servers,
            "--xds-mode",
            mode,
            "--bind-address",
            "127.0.0.1",
            "--admin-port",
            &admin_arg,
        ];
        args.extend_from_slice(&GATEWAY_ARGS);
        let mut process = Process::spawn(bin_path("trellis-proxy"), &args, &[]);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_for_port(addr, Duration::from_secs(20)),
            "trellis-proxy never bound the gateway listener {addr}: {}",
            process.describe()
        );
        XdsProxy {
            port,
            admin,
            process,
        }
    }

    fn client(&self) -> H1Client {
        H1Client::new(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// The proxy's `/xds`.
    fn xds(&self) -> Value {
        let (code, _, body) = http_get(&format!("http://127.0.0.1:{}/xds", self.admin));
        assert_eq!(code, 200, "/xds: {body}");
        json(&body)
    }

    /// The version last applied per type, from `/xds`.
    fn versions(&self) -> BTreeMap<&'static str, String> {
        let xds = self.xds();
        TYPES
            .into_iter()
            .map(|t| {
                let v = xds["types"][t]["last_applied"]["version"].clone();
                (t, v.as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    fn metrics(&self) -> String {
        let (code, _, body) =
            http_get(&format!("http://127.0.0.1:{}/stats/prometheus", self.admin));
        assert_eq!(code, 200, "/stats/prometheus: {body}");
        body
    }
}

/// Output of one `trellis` CLI run.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `trellis ARGS --server http://127.0.0.1:API` with `token` (`--token-file` or `--token`).
fn trellis(args: &[&str], api: u16, token: &Token) -> Run {
    let mut cmd = Command::new(bin_path("trellis"));
    cmd.args(args)
        .args(["--server", &format!("http://127.0.0.1:{api}")])
        .env_remove("TRELLIS_TOKEN")
        .env_remove("TRELLIS_SERVER");
    match token {
        Token::File(path) => cmd.arg("--token-file").arg(path),
        Token::Literal(t) => cmd.args(["--token", t]),
    };
    let out = cmd.output().expect("run trellis");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

enum Token {
    File(PathBuf),
    Literal(String),
}

/// `trellis apply -f FILE` (the YAML written to `dir/name` first); panics if it fails.
fn apply(dir: &Path, name: &str, yaml: &str, api: u16, token: &Token) -> Run {
    let file = dir.join(name);
    std::fs::write(&file, yaml).expect("write file to apply");
    let run = trellis(&["apply", "-f", file.to_str().unwrap()], api, token);
    assert!(
        run.ok,
        "trellis apply -f {name} failed:\n{}{}",
        run.stdout, run.stderr
    );
    run
}

/// Waits until `trellis proxy-status` shows proxy `id` SYNCED on every type, in its JSON and in
/// its default table; returns its JSON entry. Both are read in one wait: a push that lands
/// between the two reads (a change the replica's store watch delivers late) makes a type STALE
/// for a moment, which is convergence, not a failure.
fn wait_cli_synced(api: u16, token: &Token, id: &str) -> Value {
    let mut last = Value::Null;
    let mut table = String::new();
    let synced = wait_until(Duration::from_secs(20), || {
        let run = trellis(&["proxy-status", "-o", "json"], api, token);
        assert!(run.ok, "trellis proxy-status: {}{}", run.stdout, run.stderr);
        let status = json(&run.stdout);
        last = status["proxies"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == id).cloned())
            .unwrap_or_default();
        let json_synced = last["state"] == "SYNCED"
            && TYPES.iter().all(|t| last["types"][t]["state"] == "SYNCED");
        if !json_synced {
            return false;
        }
        // The default output is istioctl's table: one line per proxy, a state per type.
        let run = trellis(&["proxy-status"], api, token);
        assert!(run.ok, "trellis proxy-status: {}{}", run.stdout, run.stderr);
        table = run.stdout;
        table_row_synced(&table, id)
    });
    assert!(
        synced,
        "proxy {id} not SYNCED in proxy-status: {last:#}\n{table}"
    );
    last
}

/// Whether `trellis proxy-status`'s table has istioctl's header and a `gateway` row for `id`
/// with SYNCED in every type column. A wrong header or role fails at once.
fn table_row_synced(table: &str, id: &str) -> bool {
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "MODE", "CDS", "LDS", "EDS", "RDS"],
        "{table}"
    );
    let row: Vec<&str> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
    assert_eq!(row[1], "gateway", "{table}");
    row[3..] == ["SYNCED"; 4]
}

/// `requests` GETs of `/reviews` through the gateway, counted by the app that answered.
fn answers(client: &mut H1Client, jason: bool, requests: usize) -> BTreeMap<String, usize> {
    let headers: &[(&str, &str)] = if jason { &[("end-user", "jason")] } else { &[] };
    tally(client, "reviews.local", "/reviews", headers, requests)
}

/// Waits until `requests` requests (as `jason` or not) are all answered by `app`.
fn wait_answered_by(client: &mut H1Client, jason: bool, app: &str, what: &str) {
    let mut last = BTreeMap::new();
    let moved = wait_until(Duration::from_secs(20), || {
        last = answers(client, jason, 5);
        last == BTreeMap::from([(app.to_string(), 5)])
    });
    assert!(moved, "{what}: expected {app}, got {last:?}");
}

/// The reviews VirtualService alone (as `mesh` builds it, without the other documents).
fn reviews_vs(jason: &str, w1: u32, w2: u32) -> String {
    mesh(&[], jason, w1, w2)
}

fn directory_store_case(mode: &str) {
    let port = gateway_port();
    let (apps, base) = reviews_v1_v2(port);
    // jason -> v2, everyone else -> v1.
    let control = Control::start(&mesh(&base, "v2", 100, 0));
    let token = Token::File(control.dir.path().join(".trellis-token"));
    let work = TempDir::new().expect("temp dir");
    let proxy = XdsProxy::start(&format!("127.0.0.1:{}", control.xds), mode, port);
    let mut client = proxy.client();
    assert_eq!(
        answers(&mut client, true, 10),
        BTreeMap::from([("reviews/v2".to_string(), 10)])
    );
    assert_eq!(
        answers(&mut client, false, 10),
        BTreeMap::from([("reviews/v1".to_string(), 10)])
    );
    let status = wait_cli_synced(control.api, &token, PROXY_ID);
    assert_eq!(status["mode"], mode, "{status:#}");
    assert_eq!(status["role"], "gateway", "{status:#}");
    let xds = proxy.xds();
    assert_eq!(xds["connected"], true, "{xds:#}");
    assert_eq!(xds["mode"], mode, "{xds:#}");

    // `trellis apply` of a changed route: jason -> v1, everyone else -> v2, live.
    let before = control.pushes();
    let versions = proxy.versions();
    let run = apply(
        work.path(),
        "changed.yaml",
        &reviews_vs("v1", 0, 100),
        control.api,
        &token,
    );
    assert!(run.stdout.contains("configured"), "{}", run.stdout);
    wait_answered_by(&mut client, true, "reviews/v1", "jason after the apply");
    wait_answered_by(&mut client, false, "reviews/v2", "others after the apply");
    wait_cli_synced(control.api, &token, PROXY_ID);
    let after = control.pushes();
    assert_only_pushed(&before, &after, "rds", "a route change");
    let now = proxy.versions();
    assert_ne!(
        now["rds"], versions["rds"],
        "the proxy applied a new route version"
    );
    assert_eq!(now["lds"], versions["lds"], "listeners unchanged");

    // An invalid apply is refused (400, the error names the file and field) and the proxy keeps
    // serving the last good configuration.
    let bad = reviews_vs("v1", 0, 100).replace("  - route:", "  - rout:");
    let file = work.path().join("bad.yaml");
    std::fs::write(&file, &bad).expect("write bad.yaml");
    let run = trellis(
        &["apply", "-f", file.to_str().unwrap()],
        control.api,
        &token,
    );
    assert!(!run.ok, "an invalid apply succeeded: {}", run.stdout);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("bad.yaml:") && said.contains("unknown field `rout`"),
        "the error names the file and the field: {said}"
    );
    let (code, _, body) = http_request(
        &format!("http://127.0.0.1:{}/api/v1/apply", control.api),
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {}", read_token(&token)),
            "-H",
            "Content-Type: application/yaml",
            "--data-binary",
            &bad,
        ],
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        answers(&mut client, true, 10),
        BTreeMap::from([("reviews/v1".to_string(), 10)])
    );
    assert_eq!(
        answers(&mut client, false, 10),
        BTreeMap::from([("reviews/v2".to_string(), 10)])
    );
    assert_eq!(proxy.versions(), now, "nothing reached the proxy");
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "trellis_proxy_xds_updates_rejected_total", &[]),
        0.0,
        "{m}"
    );

    // An endpoint-only change: the v2 endpoint moves to a new instance (answering as
    // reviews/v3, still labelled v2). Only EDS is pushed, and traffic follows.
    let (_v3, v3_port) = sample_app("reviews", "v3");
    let before = control.pushes();
    let versions = proxy.versions();
    let moved_se = base[1].replace(
        &format!("ports: {{http: {}}}", apps.port("reviews/v2")),
        &format!("ports: {{http: {v3_port}}}"),
    );
    assert_ne!(moved_se, base[1]);
    apply(
        work.path(),
        "endpoints.yaml",
        &moved_se,
        control.api,
        &token,
    );
    wait_answered_by(
        &mut client,
        false,
        "reviews/v3",
        "others after the endpoint move",
    );
    assert_eq!(
        answers(&mut client, true, 5),
        BTreeMap::from([("reviews/v1".to_string(), 5)])
    );
    wait_cli_synced(control.api, &token, PROXY_ID);
    let after = control.pushes();
    assert_only_pushed(&before, &after, "eds", "an endpoint-only change");
    let now = proxy.versions();
    assert_ne!(now["eds"], versions["eds"], "{versions:?} -> {now:?}");
    for t in ["cds", "lds", "rds"] {
        assert_eq!(now[t], versions[t], "{t}: {versions:?} -> {now:?}");
    }
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "trellis_proxy_control_plane_connected", &[]),
        1.0,
        "{m}"
    );
}

fn read_token(token: &Token) -> String {
    match token {
        Token::File(path) => std::fs::read_to_string(path)
            .expect("read token file")
            .trim()
            .to_owned(),
        Token::Literal(t) => t.clone(),
    }
}

#[test]
fn proxy_on_delta_ads_follows_trellis_apply() {
    directory_store_case("delta");
}

#[test]
fn proxy_on_sotw_ads_follows_trellis_apply() {
    directory_store_case("sotw");
}

/// One `trellis control` replica on etcd.
struct Replica {
    xds: u16,
    api: u16,
    process: Process,
}

impl Replica {
    /// `ca_dir`: the replicas share one CA, as istiod replicas share their `cacerts`.
    fn start(etcd: &Etcd, token: &str, ca_dir: &std::path::Path) -> Replica {
        let (xds, api) = (free_port(), free_port());
        let (xds_arg, api_arg) = (xds.to_string(), api.to_string());
        let ca_arg = ca_dir.to_string_lossy();
        let args = [
            "control",
            "--store",
            &etcd.endpoint,
            "--xds-port",
            &xds_arg,
            "--api-port",
            &api_arg,
            "--token",
            token,
            "--ca-dir",
            &ca_arg,
        ];
        let mut process = Process::spawn(bin_path("trellis"), args, &[]);
        for port in [xds, api] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            assert!(
                wait_for_port(addr, Duration::from_secs(20)),
                "trellis control did not listen on {addr}: {}",
                process.describe()
            );
        }
        Replica { xds, api, process }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.xds)
    }
}

/// Requests through the gateway every 20 ms on another thread until stopped; the failures
/// (I/O errors or statuses other than 200) are returned by `stop`.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl SteadyLoad {
    fn start(mut client: H1Client) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match client.get("reviews.local", "/reviews", &[]) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body.trim())),
                    Err(e) => failures.push(e.to_string()),
                }
                count.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            failures
        });
        SteadyLoad { stop, sent, thread }
    }

    /// Requests answered (or failed) so far.
    fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.thread.join().expect("load thread");
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn delta_proxy_fails_over_between_control_plane_replicas_on_etcd() {
    failover_case("delta");
}

#[test]
fn sotw_proxy_fails_over_between_control_plane_replicas_on_etcd() {
    failover_case("sotw");
}

fn failover_case(mode: &str) {
    let etcd = Etcd::start();
    let token = "replicas-test-token";
    let ca_dir = TempDir::new().expect("temp dir");
    let a = Replica::start(&etcd, token, ca_dir.path());
    let b = Replica::start(&etcd, token, ca_dir.path());
    let mut replicas = [Some(a), Some(b)];
    let lit = Token::Literal(token.into());
    let work = TempDir::new().expect("temp dir");

    // The configuration goes in through replica A.
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    let (api_a, api_b) = {
        let [a, b] = &replicas;
        (a.as_ref().unwrap().api, b.as_ref().unwrap().api)
    };
    apply(
        work.path(),
        "mesh.yaml",
        &mesh(&base, "v2", 100, 0),
        api_a,
        &lit,
    );
    let servers = replicas
        .iter()
        .map(|r| r.as_ref().unwrap().address())
        .collect::<Vec<_>>()
        .join(",");
    let mut proxy = XdsProxy::start(&servers, mode, port);
    let mut client = proxy.client();
    assert_eq!(
        answers(&mut client, true, 5),
        BTreeMap::from([("reviews/v2".to_string(), 5)])
    );
    assert_eq!(
        answers(&mut client, false, 5),
        BTreeMap::from([("reviews/v1".to_string(), 5)])
    );

    // Which replica is the proxy on? Its /xds says, and that replica's proxy-status agrees.
    let xds = proxy.xds();
    let server = xds["server"].as_str().unwrap_or_default().to_owned();
    let dead = replicas
        .iter()
        .position(|r| r.as_ref().unwrap().address() == server)
        .unwrap_or_else(|| panic!("/xds names no replica: {xds:#}"));
    let survivor_api = [api_a, api_b][1 - dead];
    wait_cli_synced([api_a, api_b][dead], &lit, PROXY_ID);
    let run = trellis(&["proxy-status", "-o", "json"], survivor_api, &lit);
    assert!(
        json(&run.stdout)["proxies"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["id"] != PROXY_ID)),
        "the other replica already serves the proxy: {}",
        run.stdout
    );

    // Kill it under a steady load: no request fails, and the proxy moves to the survivor.
    let load = SteadyLoad::start(proxy.client());
    assert!(
        wait_until(Duration::from_secs(10), || load.sent() >= 20),
        "the load did not start"
    );
    let (started, sent_at_kill) = (Instant::now(), load.sent());
    let mut killed = replicas[dead].take().unwrap();
    killed.process.signal(trellis_testkit::SIGKILL);
    assert!(
        killed
            .process
            .wait_timeout(Duration::from_secs(10))
            .is_some(),
        "replica did not die"
    );
    // A change through the survivor while the proxy is (or is about to be) reconnecting:
    // jason -> v1, everyone else -> v2. The proxy converges to it once on the survivor.
    apply(
        work.path(),
        "during.yaml",
        &reviews_vs("v1", 0, 100),
        survivor_api,
        &lit,
    );
    let survivor = replicas[1 - dead].as_ref().unwrap().address();
    let mut last = Value::Null;
    let moved = wait_until(Duration::from_secs(20), || {
        last = proxy.xds();
        last["connected"] == true && last["server"] == survivor.as_str()
    });
    assert!(
        moved,
        "the proxy did not reconnect to {survivor}: {last:#}\n{}",
        proxy.process.describe()
    );
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "trellis_proxy_control_plane_connected", &[]),
        1.0,
        "{m}"
    );
    wait_cli_synced(survivor_api, &lit, PROXY_ID);
    wait_answered_by(&mut client, true, "reviews/v1", "jason after the failover");
    wait_answered_by(
        &mut client,
        false,
        "reviews/v2",
        "others after the failover",
    );
    // Keep the load going for at least three seconds and 100 requests after the kill.
    let enough = wait_until(Duration::from_secs(30), || {
        started.elapsed() >= Duration::from_secs(3) && load.sent() - sent_at_kill >= 100
    });
    assert!(enough, "the load stalled: {} requests", load.sent());
    let (sent, failures) = load.stop();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed across the failover: {failures:?}",
        failures.len()
    );

    // A change through the surviving replica, now that the proxy is on it, takes effect.
    apply(
        work.path(),
        "changed.yaml",
        &reviews_vs("v2", 100, 0),
        survivor_api,
        &lit,
    );
    wait_answered_by(&mut client, true, "reviews/v2", "jason after the failover");
    wait_answered_by(
        &mut client,
        false,
        "reviews/v1",
        "others after the failover",
    );
    wait_cli_synced(survivor_api, &lit, PROXY_ID);
    let xds = proxy.xds();
    for t in TYPES {
        assert!(
            xds["types"][t]["last_rejected"].is_null(),
            "{t} rejected: {xds:#}"
        );
    }
}

/// `trellis delete`: resources removed from the store are removed from the proxy (delta
/// `removed_resources`, or their absence from a SotW response): the VirtualService's routes go
/// (404, `NR`), then the Gateway's listener is closed; applying them again restores both.
fn delete_case(mode: &str) {
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    let control = Control::start(&mesh(&base, "v2", 100, 0));
    let token = Token::File(control.dir.path().join(".trellis-token"));
    let work = TempDir::new().expect("temp dir");
    let mut proxy = XdsProxy::start(&format!("127.0.0.1:{}", control.xds), mode, port);
    let mut client = proxy.client();
    assert_eq!(
        answers(&mut client, true, 5),
        BTreeMap::from([("reviews/v2".to_string(), 5)])
    );

    let run = trellis(
        &["delete", "virtualservice", "reviews"],
        control.api,
        &token,
    );
    assert!(run.ok, "trellis delete: {}{}", run.stdout, run.stderr);
    let mut last = None;
    let gone = wait_until(Duration::from_secs(20), || {
        last = client.get("reviews.local", "/reviews", &[]).ok();
        last.as_ref().is_some_and(|r| r.status == 404)
    });
    assert!(gone, "routes not removed: {last:?}");
    let r = last.unwrap();
    assert_eq!(
        r.headers.get("x-trellis-flags").map(String::as_str),
        Some("NR"),
        "{r:?}"
    );
    wait_cli_synced(control.api, &token, PROXY_ID);

    let run = trellis(&["delete", "gateway", "gw"], control.api, &token);
    assert!(run.ok, "trellis delete: {}{}", run.stdout, run.stderr);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let closed = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
    assert!(
        closed,
        "the gateway listener {addr} is still open after the Gateway was deleted: {:#}\n{}",
        proxy.xds(),
        proxy.process.describe()
    );
    wait_cli_synced(control.api, &token, PROXY_ID);

    // Both back: the listener is bound again and routes per the VirtualService.
    let both = docs(&[base[0].clone(), reviews_vs("v1", 0, 100)]);
    apply(work.path(), "back.yaml", &both, control.api, &token);
    assert!(
        wait_for_port(addr, Duration::from_secs(20)),
        "the listener did not come back: {}",
        proxy.process.describe()
    );
    let mut client = proxy.client();
    wait_answered_by(&mut client, true, "reviews/v1", "jason after re-applying");
    wait_answered_by(&mut client, false, "reviews/v2", "others after re-applying");
    wait_cli_synced(control.api, &token, PROXY_ID);
}

#[test]
fn delta_proxy_follows_trellis_delete() {
    delete_case("delta");
}

#[test]
fn sotw_proxy_follows_trellis_delete() {
    delete_case("sotw");
}
