//! Acceptance test of hot reload: `trellis-proxy --config-dir` watches its directory; a client
//! loop keeps requesting while the VirtualService moves 100% v1 → 100% v2 (an atomic rename),
//! and nothing fails; a broken edit then leaves the last good config serving and the proxy's
//! stderr names the file and the field. Needs `cargo build --workspace --bins`.

mod e2e_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_support::*;
use trellis_testkit::wait_until;

/// The `reviews` VirtualService with `w1`% to v1 and `w2`% to v2.
fn split(w1: u32, w2: u32) -> String {
    virtual_service_yaml(
        "reviews",
        &["*"],
        &format!(
            "  - route:\n    - {{destination: {}, weight: {w1}}}\n    - {{destination: {}, weight: {w2}}}\n",
            dest(REVIEWS, Some("v1"), 9080),
            dest(REVIEWS, Some("v2"), 9080)
        ),
    )
}

fn config_version(gw: &Gateway) -> String {
    let (status, body) = gw.admin_get("/config_dump");
    assert_eq!(status, 200, "{body}");
    json(&body)["version"].as_str().unwrap_or("").to_owned()
}

#[test]
fn hot_reload_under_load_loses_nothing_and_survives_a_broken_edit() {
    let port = gateway_port();
    let (_apps, parts) = reviews_v1_v2(port);
    let dir = trellis_testkit::TempDir::new().expect("temp dir");
    let base = docs(&parts);
    std::fs::write(dir.path().join("mesh.yaml"), base).expect("write mesh.yaml");
    write_atomic(dir.path(), "reviews-vs.yaml", &split(100, 0));
    let mut gw = Gateway::start_in(dir, port);
    let version_before = config_version(&gw);

    // The client loop: one keep-alive connection (a fresh one only when the proxy says
    // `connection: close`), every outcome recorded in order. At most 1000 requests.
    let outcomes: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let outcomes = Arc::clone(&outcomes);
        let stop = Arc::clone(&stop);
        let mut client = gw.client();
        std::thread::spawn(move || {
            for _ in 0..1000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let outcome = match client.get("reviews.local", "/reviews", &[]) {
                    Ok(r) if r.status == 200 => r.served_by(),
                    Ok(r) => format!("ERR {} {}", r.status, r.body.trim()),
                    Err(e) => format!("ERR {e}"),
                };
                outcomes.lock().expect("outcomes").push(outcome);
                // Pacing, not waiting: ~200 requests/s keeps the whole run well under 1000
                // requests while the watcher (500 ms poll) picks the edit up.
                std::thread::sleep(Duration::from_millis(5));
            }
            client.connects
        })
    };
    let count = |o: &Arc<Mutex<Vec<String>>>| o.lock().expect("outcomes").len();
    let v2_seen = |o: &Arc<Mutex<Vec<String>>>| {
        o.lock()
            .expect("outcomes")
            .iter()
            .any(|s| s == "reviews/v2")
    };
    assert!(
        wait_until(Duration::from_secs(20), || count(&outcomes) >= 100),
        "client loop made {} requests in 20 s",
        count(&outcomes)
    );
    write_atomic(gw.dir.path(), "reviews-vs.yaml", &split(0, 100));
    let switched = wait_until(Duration::from_secs(15), || v2_seen(&outcomes));
    let switched_at = count(&outcomes);
    // Keep going: at least 300 in all and 100 after the switch.
    let _ = wait_until(Duration::from_secs(20), || {
        let n = count(&outcomes);
        n >= 300 && n >= switched_at + 100
    });
    stop.store(true, Ordering::Relaxed);
    let connects = client.join().expect("client thread");
    let outcomes = outcomes.lock().expect("outcomes").clone();
    let failed: Vec<(usize, &String)> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.starts_with("ERR"))
        .collect();
    assert!(
        switched,
        "v2 never answered after the edit ({} requests): {:?}\n{}",
        outcomes.len(),
        outcomes.iter().rev().take(5).collect::<Vec<_>>(),
        gw.proxy.describe()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the reload (first: {:?}); connections opened: {connects}\n{}",
        failed.len(),
        outcomes.len(),
        failed.first(),
        gw.proxy.describe()
    );
    assert!(
        outcomes.len() >= 300,
        "only {} requests in the loop",
        outcomes.len()
    );
    // One atomic swap: v1 until the first v2, then only v2.
    let first_v2 = outcomes
        .iter()
        .position(|o| o == "reviews/v2")
        .expect("v2 seen");
    assert!(
        outcomes[..first_v2].iter().all(|o| o == "reviews/v1")
            && outcomes[first_v2..].iter().all(|o| o == "reviews/v2"),
        "expected v1… then v2… only; got {} v1 after the first v2",
        outcomes[first_v2..]
            .iter()
            .filter(|o| *o == "reviews/v1")
            .count()
    );
    assert_eq!(
        connects, 1,
        "the reload must not close the client's keep-alive connection"
    );
    let version_good = config_version(&gw);
    assert_ne!(version_good, version_before, "config_dump version changes");

    // A broken edit: an unknown field. The last good config keeps serving.
    let broken = split(0, 100).replace("  http:\n", "  htp: []\n  http:\n");
    write_atomic(gw.dir.path(), "reviews-vs.yaml", &broken);
    let reported = wait_until(Duration::from_secs(10), || {
        gw.proxy
            .stderr_text()
            .lines()
            .any(|l| l.contains("reviews-vs.yaml") && l.contains("htp"))
    });
    assert!(
        reported,
        "stderr names the file and the unknown field `htp`: {}",
        gw.proxy.describe()
    );
    let counts = tally(&mut gw.client(), "reviews.local", "/reviews", &[], 50);
    assert_eq!(
        counts.get("reviews/v2"),
        Some(&50),
        "the last good config (100% v2) keeps serving: {counts:?}"
    );
    assert!(gw.proxy.is_running(), "{}", gw.proxy.describe());
    assert_eq!(
        config_version(&gw),
        version_good,
        "the broken edit is not applied"
    );
}
