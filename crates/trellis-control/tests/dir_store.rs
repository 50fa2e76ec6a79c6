//! The directory store against real files: it serves what is in the directory at start,
//! picks up an external edit (polling), refuses a broken edit as a whole while the last good
//! configuration keeps being served and reports where the errors are, and recovers when the
//! edit is fixed.

use std::time::Duration;

use trellis_control::store::{self, ObjectKey, kind_info};
use trellis_testkit::{TempDir, wait_until};

fn service_entry(name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    )
}

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Writes the ServiceEntries reviews (on `reviews_port`) and ratings (9082) into one file.
fn write_reviews_and_ratings(path: &std::path::Path, reviews_port: u16) {
    write(
        path,
        &format!(
            "{}---\n{}",
            service_entry("reviews", reviews_port),
            service_entry("ratings", 9082)
        ),
    );
}

/// Waits (up to 10 s) for the store to publish a new configuration; `what` names the change.
async fn changed(watch: &mut trellis_control::ConfigWatch, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .unwrap_or_else(|_| panic!("{what} not picked up within 10 s"))
        .expect("the store is gone");
}

fn endpoint_port(loaded: &trellis_config::Loaded, name: &str) -> Option<u32> {
    let se = loaded
        .snapshot
        .service_entries
        .iter()
        .find(|s| s.meta.name == name)?;
    se.spec.endpoints.first()?.ports.get("http").copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_edits_are_picked_up_and_broken_ones_refused() {
    let dir = TempDir::new().expect("temp dir");
    // A user's own layout: two objects in one file, one in a subfolder.
    std::fs::create_dir_all(dir.path().join("team")).unwrap();
    let mesh = dir.path().join("mesh.yaml");
    write_reviews_and_ratings(&mesh, 9081);
    write(
        &dir.path().join("team/details.yml"),
        &service_entry("details", 9083),
    );
    let store = store::open(&dir.path().display().to_string())
        .await
        .expect("open");
    let mut watch = store.watch();
    let first = watch.borrow_and_update().clone();
    assert_eq!(first.loaded.snapshot.service_entries.len(), 3);
    let se = kind_info("se").unwrap();
    let reviews = ObjectKey::new(se, "default", "reviews");
    let rv = store.get(&reviews).expect("reviews").resource_version;

    // An external edit of one object: served, and only that object gets a new version.
    write_reviews_and_ratings(&mesh, 9091);
    changed(&mut watch, "the edit").await;
    let second = watch.borrow_and_update().clone();
    assert!(second.revision > first.revision);
    assert_eq!(endpoint_port(&second.loaded, "reviews"), Some(9091));
    assert!(store.get(&reviews).unwrap().resource_version > rv);
    let ratings = store
        .get(&ObjectKey::new(se, "default", "ratings"))
        .unwrap();
    assert_eq!(
        ratings.resource_version, rv,
        "an untouched object keeps its version"
    );

    // A broken edit: refused whole, the last good config keeps serving, errors are reported
    // with the file, line and path.
    let broken = service_entry("reviews", 9099).replace("resolution: STATIC", "resolution: STATC");
    write(
        &mesh,
        &format!("{broken}---\n{}", service_entry("ratings", 9082)),
    );
    let mesh_name = mesh.display().to_string();
    let reported = wait_until(Duration::from_secs(10), || {
        !store.status().errors.is_empty()
    });
    assert!(reported, "the broken edit must be reported");
    let status = store.status();
    let error = &status.errors[0];
    assert_eq!(
        (error.file.as_str(), error.line, error.path.as_str()),
        (mesh_name.as_str(), 6, "spec.resolution"),
        "{error}"
    );
    assert!(error.message.contains("STATIC"), "{error}");
    let mut metrics = String::new();
    store.encode_metrics(&mut metrics);
    assert!(
        metrics.contains("trellis_control_config_errors{backend=\"directory\"} 1"),
        "{metrics}"
    );
    assert!(
        !watch.has_changed().unwrap(),
        "nothing new may be published"
    );
    assert_eq!(
        endpoint_port(&store.watch().borrow().loaded, "reviews"),
        Some(9091)
    );

    // Fixed: served again and the error is gone.
    write_reviews_and_ratings(&mesh, 9095);
    changed(&mut watch, "the fix").await;
    assert_eq!(endpoint_port(&watch.borrow().loaded, "reviews"), Some(9095));
    assert!(store.status().errors.is_empty());

    // Deleting a file removes its objects.
    std::fs::remove_file(dir.path().join("team/details.yml")).unwrap();
    changed(&mut watch, "the delete").await;
    assert_eq!(watch.borrow().loaded.snapshot.service_entries.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_writes_keep_the_users_layout() {
    let dir = TempDir::new().expect("temp dir");
    let mesh = dir.path().join("mesh.yaml");
    write_reviews_and_ratings(&mesh, 9081);
    let store = store::open(&dir.path().display().to_string())
        .await
        .expect("open");
    // Update one object of a two-object file: the file is rewritten with both.
    let change = store::Change::parse("request", &service_entry("reviews", 9091)).unwrap();
    store.apply(change).await.expect("apply");
    let text = std::fs::read_to_string(&mesh).unwrap();
    assert!(text.contains("9091") && text.contains("ratings"), "{text}");
    assert!(
        !dir.path().join("ServiceEntry").exists(),
        "an existing object stays in its file"
    );
    // An external edit the poller has not seen yet is not lost to the next API write.
    write(
        &mesh,
        &format!(
            "{}---\n{}",
            service_entry("reviews", 9091),
            service_entry("ratings", 9092)
        ),
    );
    let change = store::Change::parse("request", &service_entry("reviews", 9093)).unwrap();
    store.apply(change).await.expect("apply");
    let text = std::fs::read_to_string(&mesh).unwrap();
    assert!(text.contains("9093") && text.contains("9092"), "{text}");
    // A new object gets its own file; a restarted store serves the same objects.
    let change = store::Change::parse("request", &service_entry("details", 9083)).unwrap();
    store.apply(change).await.expect("apply");
    assert!(
        dir.path()
            .join("ServiceEntry/default/details.yaml")
            .exists()
    );
    let before = store.list(&Default::default()).1.len();
    let reopened = store::open(&dir.path().display().to_string())
        .await
        .expect("reopen");
    assert_eq!(reopened.list(&Default::default()).1.len(), before);
    let served = reopened.watch().borrow().loaded.clone();
    assert_eq!(endpoint_port(&served, "reviews"), Some(9093));
    assert_eq!(endpoint_port(&served, "ratings"), Some(9092));
}
