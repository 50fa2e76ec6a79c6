//! `trellis control`'s ADS protocol seen from a small tonic client: NACKs are recorded and
//! reported, a malformed node is refused, delta streams get only what changed and honour
//! `initial_resource_versions`, and a client that stops reading holds up no one.

mod control_support;
mod e2e_support;

use std::time::Duration;

use control_support::*;
use e2e_support::*;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use trellis_testkit::wait_until;

#[test]
fn a_nack_is_recorded_and_reported_as_nacked_with_its_error() {
    let port = gateway_port();
    let (_apps, base) = reviews_v1_v2(port);
    let control = Control::start(&mesh(&base, "v2", 50, 50));
    runtime().block_on(async {
        let mut client = SotwClient::open(
            control.xds,
            DiscoveryRequest {
                node: Some(node("nacker", "gateway")),
                type_url: CDS.into(),
                ..Default::default()
            },
        )
        .await
        .expect("open stream");
        let first = client.next().await.expect("CDS response");
        assert_eq!(first.type_url, CDS);
        assert_eq!(
            first.resources.len(),
            3,
            "the service and subsets v1, v2: {first:?}"
        );
        client
            .tx
            .send(DiscoveryRequest {
                type_url: CDS.into(),
                response_nonce: first.nonce.clone(),
                error_detail: Some(envoy_types::pb::google::rpc::Status {
                    code: 3,
                    message: "cluster outbound|9080|v1: test rejects it".into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .expect("send NACK");
        let mut last = serde_json::Value::Null;
        let nacked = wait_until(Duration::from_secs(10), || {
            last = control.proxy("nacker").unwrap_or_default();
            last["state"] == "NACKED"
        });
        assert!(nacked, "{last:#}");
        assert_eq!(last["types"]["cds"]["state"], "NACKED");
        assert_eq!(
            last["types"]["cds"]["nack_error"],
            "cluster outbound|9080|v1: test rejects it"
        );
        assert_eq!(last["types"]["cds"]["sent_nonce"], first.nonce.as_str());
        let metrics = control.metrics();
        assert_eq!(
            metric_sum(
                &metrics,
                "pilot_total_xds_rejects_total",
                &[("type", "cds")]
            ),
            1.0,
            "{metrics}"
        );
        // The stream is still served: the next change is pushed.
        // A new load-balancing policy changes every cluster.
        let mut changed = base.clone();
        changed[2] = destination_rule_yaml("reviews", REVIEWS, Some("ROUND_ROBIN"), &["v1", "v2"]);
        control.write(&mesh(&changed, "v2", 50, 50));
        let next = client.next().await.expect("CDS push after the change");
        assert_eq!(next.type_url, CDS);
        assert_eq!(
            next.resources.len(),
            3,
            "SotW CDS carries the full set: {next:?}"
        );
        assert_ne!(next.version_info, first.version_info);
    });
}

#[test]
fn a_malformed_node_closes_the_stream_with_invalid_argument() {
    let control = Control::start("");
    runtime().block_on(async {
        let err = SotwClient::open(
            control.xds,
            DiscoveryRequest {
                node: Some(node("bad", "mesh-gateway")),
                type_url: CDS.into(),
                ..Default::default()
            },
        )
        .await
        .err()
        .expect("the stream is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("ROLE") && err.message().contains("mesh-gateway"),
            "{}",
            err.message()
        );
        let err = SotwClient::open(
            control.xds,
            DiscoveryRequest {
                type_url: CDS.into(),
                ..Default::default()
            },
        )
        .await
        .err()
        .expect("a stream without a node is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("node"), "{}", err.message());
    });
}

#[test]
fn delta_sends_only_changed_assignments_and_honours_initial_resource_versions() {
    let port = gateway_port();
    let (apps, base) = reviews_v1_v2(port);
    let control = Control::start(&mesh(&base, "v2", 50, 50));
    runtime().block_on(async {
        let (tx, mut rx) = delta_open(
            control.xds,
            DeltaDiscoveryRequest {
                node: Some(node("delta-client", "gateway")),
                type_url: CDS.into(),
                ..Default::default()
            },
        )
        .await;
        let cds = delta_next(&mut rx).await;
        let clusters: Vec<String> = cds.resources.iter().map(|r| r.name.clone()).collect();
        // The service's cluster and one per subset.
        assert_eq!(
            clusters,
            [
                format!("outbound|9080|v1|{REVIEWS}"),
                format!("outbound|9080|v2|{REVIEWS}"),
                format!("outbound|9080||{REVIEWS}"),
            ]
        );
        tx.send(DeltaDiscoveryRequest {
            type_url: CDS.into(),
            response_nonce: cds.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        tx.send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: clusters.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let eds = delta_next(&mut rx).await;
        assert_eq!(eds.type_url, EDS);
        assert_eq!(eds.resources.len(), 3);
        tx.send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            response_nonce: eds.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

        // Move v1's endpoint: the next push is EDS with only the assignments holding it (the
        // v1 subset and the whole service), not v2's.
        let (_v9, v9_port) = trellis_testkit::sample_app("reviews", "v9");
        let yaml = mesh(&base, "v2", 50, 50).replace(
            &format!("ports: {{http: {}}}", apps.port("reviews/v1")),
            &format!("ports: {{http: {v9_port}}}"),
        );
        control.write(&yaml);
        let push = delta_next(&mut rx).await;
        assert_eq!(push.type_url, EDS, "{push:?}");
        let names: Vec<&str> = push.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("outbound|9080|v1|{REVIEWS}"),
                format!("outbound|9080||{REVIEWS}")
            ]
        );
        assert!(push.removed_resources.is_empty());

        // Reconnect announcing the current clusters: nothing is re-sent.
        let held = cds
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let (_tx2, mut rx2) = delta_open(
            control.xds,
            DeltaDiscoveryRequest {
                node: Some(node("delta-client-2", "gateway")),
                type_url: CDS.into(),
                initial_resource_versions: held,
                ..Default::default()
            },
        )
        .await;
        let again = delta_next(&mut rx2).await;
        assert_eq!(again.type_url, CDS);
        assert!(again.resources.is_empty(), "{again:?}");
        assert!(again.removed_resources.is_empty(), "{again:?}");
    });
}

/// Runs `tests/py/grpc_client.py TARGET ARGS…` with gRPC's xDS client bootstrapped from

#[test]
fn a_proxy_that_stops_reading_holds_up_no_one_and_later_gets_the_latest_config() {
    // 300 clusters: one SotW CDS response (~90 KiB) overflows a 64 KiB HTTP/2 window, so a
    // client that does not read blocks its own stream.
    const BASE: usize = 300;
    const PUSHES: usize = 12;
    let control = Control::start(&many_services(BASE));
    runtime().block_on(async {
        let cds = |id: &str| DiscoveryRequest {
            node: Some(node(id, "sidecar")),
            type_url: CDS.into(),
            ..Default::default()
        };
        // Each client has its own connection (HTTP/2 connection windows are shared).
        let mut stuck = SotwClient::open_with_window(control.xds, cds("stuck"), Some(65_535))
            .await
            .expect("stuck");
        let mut fast = SotwClient::open(control.xds, cds("fast"))
            .await
            .expect("fast");
        let first = fast.next().await.expect("first CDS response");
        let mut last = first.clone();
        for k in 1..=PUSHES {
            fast.tx
                .send(DiscoveryRequest {
                    type_url: CDS.into(),
                    version_info: last.version_info.clone(),
                    response_nonce: last.nonce.clone(),
                    ..Default::default()
                })
                .await
                .expect("ACK");
            control.write(&many_services(BASE + k));
            last = fast
                .next()
                .await
                .expect("the fast client keeps getting pushes");
            assert_eq!(last.resources.len(), first.resources.len() + k);
        }
        // The stuck client now reads: it gets a bounded backlog, ending with the latest config,
        // not every intermediate one.
        let mut got = Vec::new();
        while let Ok(Ok(Some(r))) =
            tokio::time::timeout(Duration::from_secs(3), stuck.rx.message()).await
        {
            got.push((r.version_info, r.resources.len()));
        }
        assert_eq!(
            got.last(),
            Some(&(last.version_info.clone(), last.resources.len())),
            "the stuck client ends on the latest config: {got:?}"
        );
        assert!(
            got.len() < PUSHES + 1,
            "intermediate configs were coalesced, not queued: {got:?}"
        );
    });
}
