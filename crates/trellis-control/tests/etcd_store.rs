//! The etcd store against a real etcd (Debian's `etcd-server`, started on free loopback
//! ports with a temp data dir): two store instances on one etcd see each other's writes and
//! converge, resourceVersion is etcd's mod_revision with compare-and-swap on it, a value
//! written straight into etcd that does not load is refused while the last good configuration
//! keeps serving, and a store opened later reads everything back.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use trellis_control::store::{self, Change, ObjectKey, Store, StoreError, kind_info};
use trellis_testkit::etcd::Etcd;
use trellis_testkit::{http_request, wait_until};

fn service_entry(name: &str, port: u16, resource_version: Option<u64>) -> String {
    let rv = resource_version.map_or(String::new(), |v| format!(", resourceVersion: \"{v}\""));
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default{rv}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    )
}

fn port_of(store: &dyn Store, name: &str) -> Option<u64> {
    let key = ObjectKey::new(kind_info("se").unwrap(), "default", name);
    store.get(&key)?.value["spec"]["endpoints"][0]["ports"]["http"].as_u64()
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_etcd_converge() {
    let etcd = Etcd::start();
    let a = store::open(&etcd.endpoint).await.expect("open a");
    let b = store::open(&etcd.endpoint).await.expect("open b");
    let se = kind_info("se").unwrap();
    let reviews = ObjectKey::new(se, "default", "reviews");

    // A writes; once apply returns A serves it, and B's watch brings it too.
    let applied = a
        .apply(Change::parse("request", &service_entry("reviews", 9081, None)).unwrap())
        .await
        .expect("apply");
    let rv = applied.objects[0].2;
    assert_eq!(a.get(&reviews).unwrap().resource_version, rv);
    let mut b_watch = b.watch();
    until("b to see a's write", || {
        port_of(&*b, "reviews") == Some(9081)
    })
    .await;
    assert_eq!(
        b.get(&reviews).unwrap().resource_version,
        rv,
        "resourceVersion is etcd's mod_revision, the same everywhere"
    );
    assert_eq!(
        b_watch
            .borrow_and_update()
            .loaded
            .snapshot
            .service_entries
            .len(),
        1
    );

    // B updates with the current version; A follows. A's write with the old version is stale.
    let applied = b
        .apply(Change::parse("request", &service_entry("reviews", 9082, Some(rv))).unwrap())
        .await
        .expect("update");
    let rv2 = applied.objects[0].2;
    assert!(rv2 > rv);
    until("a to see b's update", || {
        port_of(&*a, "reviews") == Some(9082)
    })
    .await;
    let stale = a
        .apply(Change::parse("request", &service_entry("reviews", 9083, Some(rv))).unwrap())
        .await;
    match stale {
        Err(StoreError::Conflict(m)) => assert!(
            m.contains(&format!("{rv} is stale")) && m.contains(&rv2.to_string()),
            "{m}"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Invalid changes are refused with their location, nothing reaches etcd.
    let bad = service_entry("ratings", 9084, None).replace("STATIC", "STATC");
    match a.apply(Change::parse("bad.yaml", &bad).unwrap()).await {
        Err(StoreError::Invalid(d)) => {
            assert_eq!((d.0[0].file.as_str(), d.0[0].line), ("bad.yaml", 6), "{d}")
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    // B deletes; A follows; a store opened now reads the same.
    b.apply(Change::parse("request", &service_entry("details", 9085, None)).unwrap())
        .await
        .expect("apply details");
    b.apply(Change::delete(reviews.clone(), None))
        .await
        .expect("delete");
    until("a to see the delete", || {
        a.get(&reviews).is_none() && port_of(&*a, "details") == Some(9085)
    })
    .await;
    let c = store::open(&etcd.endpoint).await.expect("open c");
    let names: Vec<String> = c
        .list(&Default::default())
        .1
        .iter()
        .map(|o| o.key.name.clone())
        .collect();
    assert_eq!(names, ["details"]);
    assert_eq!(c.watch().borrow().revision, a.watch().borrow().revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_written_into_etcd_is_refused() {
    let etcd = Etcd::start();
    let store = store::open(&etcd.endpoint).await.expect("open");
    store
        .apply(Change::parse("request", &service_entry("reviews", 9081, None)).unwrap())
        .await
        .expect("apply");
    let good = store.watch().borrow().revision;

    // Someone bypasses the API: a ServiceEntry with an unknown resolution, straight into etcd.
    let key = "/trellis/config/networking.istio.io/ServiceEntry/default/ratings";
    let value = r#"{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"ratings","namespace":"default"},"spec":{"hosts":["ratings.default.svc.cluster.local"],"resolution":"STATC","ports":[{"number":9080,"name":"http","protocol":"HTTP"}]}}"#;
    let url = etcd.endpoint.replace("etcd://", "http://");
    let put = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        B64.encode(key),
        B64.encode(value)
    );
    let (status, _, body) = http_request(&format!("{url}/v3/kv/put"), &["-X", "POST", "-d", &put]);
    assert_eq!(status, 200, "{body}");
    until("the bad value to be reported", || {
        !store.status().errors.is_empty()
    })
    .await;
    let errors = store.status().errors;
    assert!(
        errors
            .iter()
            .any(|e| e.file == "ServiceEntry/default/ratings.yaml" && e.path == "spec.resolution"),
        "{errors:?}"
    );
    assert_eq!(
        store.watch().borrow().revision,
        good,
        "the last good configuration keeps serving"
    );
    assert!(
        store
            .get(&ObjectKey::new(
                kind_info("se").unwrap(),
                "default",
                "ratings"
            ))
            .is_none()
    );
    let mut metrics = String::new();
    store.encode_metrics(&mut metrics);
    assert!(
        metrics.contains("trellis_control_config_errors{backend=\"etcd\"} 1"),
        "{metrics}"
    );

    // A write now reaches etcd but cannot be served; the writer is told why.
    let change = Change::parse("request", &service_entry("details", 9085, None)).unwrap();
    match store.apply(change).await {
        Err(StoreError::Backend(m)) => assert!(
            m.contains("do not load") && m.contains("spec.resolution"),
            "{m}"
        ),
        other => panic!("expected the write to be reported unserved, got {other:?}"),
    }

    // Removing it heals the store, with the write that was waiting.
    let del = format!(r#"{{"key":"{}"}}"#, B64.encode(key));
    let (status, _, _) = http_request(
        &format!("{url}/v3/kv/deleterange"),
        &["-X", "POST", "-d", &del],
    );
    assert_eq!(status, 200);
    until("the error to clear", || store.status().errors.is_empty()).await;
    let names: Vec<String> = store
        .list(&Default::default())
        .1
        .iter()
        .map(|o| o.key.name.clone())
        .collect();
    assert_eq!(names, ["details", "reviews"]);
}

/// The API of two control planes on one etcd: a write through A is read through B, and B
/// refuses a stale update with 409.
#[test]
fn two_control_plane_apis_on_one_etcd() {
    use std::sync::Arc;
    use trellis_control::api::{self, Token};

    struct NoProxies;
    impl trellis_control::ControlStatus for NoProxies {
        fn proxy_status(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn encode_metrics(&self, _out: &mut String) {}
    }

    let etcd = Etcd::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let start = |token: &Arc<Token>| {
        rt.block_on(async {
            let store = store::open(&etcd.endpoint).await.expect("open");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(api::serve(
                listener,
                store,
                Arc::new(NoProxies),
                Arc::clone(token),
            ));
            url
        })
    };
    let token = Arc::new(Token::fixed("shared-secret"));
    let (a, b) = (start(&token), start(&token));
    let auth = ["-H", "Authorization: Bearer shared-secret"];
    let post = |url: &str, body: &str| {
        let mut args = vec!["-X", "POST", "--data-binary", body];
        args.extend(auth);
        http_request(&format!("{url}/api/v1/apply"), &args)
    };
    let (status, _, body) = post(&a, &service_entry("reviews", 9081, None));
    assert_eq!(status, 200, "{body}");
    let applied: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rv: u64 = applied["objects"][0]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let get = format!("{b}/api/v1/resources/se/default/reviews");
    assert!(
        wait_until(Duration::from_secs(10), || http_request(&get, &[]).0 == 200),
        "b never saw a's write"
    );
    let (_, _, body) = http_request(&get, &[]);
    let object: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(object["metadata"]["resourceVersion"], rv.to_string());

    let (status, _, body) = post(&b, &service_entry("reviews", 9082, Some(rv)));
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(&b, &service_entry("reviews", 9083, Some(rv)));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("is stale"), "{body}");
}
