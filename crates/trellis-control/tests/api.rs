//! The management API in-process on a free loopback port, over a directory store in a temp
//! dir, driven with curl: apply → get → list by label → stale update 409 → delete; invalid
//! config gets 400 with every error and its location while the last good configuration keeps
//! being served; writes need the bearer token; /openapi.json, /metrics, proxy-status.

use std::sync::Arc;

use serde_json::{Value, json};
use trellis_control::ControlStatus;
use trellis_control::api::{self, Token};
use trellis_control::store::{self, Store};
use trellis_testkit::{TempDir, http_request, promtool_check};

/// A stand-in for the xDS server's status: fixed values the tests look for.
struct FixedStatus;

impl ControlStatus for FixedStatus {
    fn proxy_status(&self) -> Value {
        json!({"proxies": [{"id": "gw-1", "status": "SYNCED"}]})
    }
    fn encode_metrics(&self, out: &mut String) {
        out.push_str("# HELP trellis_xds_connected_proxies Proxies connected.\n# TYPE trellis_xds_connected_proxies gauge\ntrellis_xds_connected_proxies 1\n");
    }
}

/// The API over a directory store, on its own runtime.
struct Control {
    url: String,
    token: String,
    dir: TempDir,
    store: Arc<dyn Store>,
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
    let token_path = Token::default_path(&spec);
    let (store, listener) = rt.block_on(async {
        let store = store::open(&spec).await.expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        (store, listener)
    });
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let token = Arc::new(Token::load_or_create(&token_path).expect("token"));
    rt.spawn(api::serve(
        listener,
        Arc::clone(&store),
        Arc::new(FixedStatus),
        token,
    ));
    let token = std::fs::read_to_string(&token_path)
        .expect("token file")
        .trim()
        .to_owned();
    Control {
        url,
        token,
        dir,
        store,
        _rt: rt,
    }
}

impl Control {
    fn get(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = http_request(&format!("{}{path}", self.url), &[]);
        (status, parse(&body))
    }

    fn send(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let auth = format!("Authorization: Bearer {}", self.token);
        let mut args = vec!["-X", method, "-H", &auth];
        if !body.is_empty() {
            args.extend([
                "-H",
                "Content-Type: application/yaml",
                "--data-binary",
                body,
            ]);
        }
        let (status, _, body) = http_request(&format!("{}{path}", self.url), &args);
        (status, parse(&body))
    }

    fn revision(&self) -> u64 {
        self.store.watch().borrow().revision
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn service_entry(name: &str, app: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: default
  labels: {{app: {app}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    )
}

const GATEWAY_AND_ROUTE: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: istio-system}
spec:
  hosts: ['*']
  gateways: [gw]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]}]
";

#[test]
fn apply_get_list_stale_update_and_delete() {
    let c = start();
    let body = format!(
        "{}---\n{}",
        service_entry("reviews", "reviews", 9081),
        service_entry("ratings", "ratings", 9082)
    );
    let (status, applied) = c.send("POST", "/api/v1/apply", &body);
    assert_eq!(status, 200, "{applied}");
    let results: Vec<&str> = applied["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["created", "created"]);
    assert_eq!(applied["revision"].as_u64(), Some(c.revision()));
    // API writes land as one file per object.
    let file = c.data().join("ServiceEntry/default/reviews.yaml");
    let text = std::fs::read_to_string(&file).expect("object file");
    assert!(
        text.contains("name: reviews") && !text.contains("resourceVersion"),
        "{text}"
    );

    // get, by any spelling of the kind, JSON by default and YAML on request.
    let (status, reviews) = c.get("/api/v1/resources/se/default/reviews");
    assert_eq!(status, 200, "{reviews}");
    assert_eq!(reviews["spec"]["endpoints"][0]["ports"]["http"], 9081);
    let rv = reviews["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, headers, yaml) = http_request(
        &format!("{}/api/v1/resources/ServiceEntry/default/reviews", c.url),
        &["-H", "Accept: application/yaml"],
    );
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/yaml");
    assert!(
        yaml.contains("kind: ServiceEntry") && yaml.contains(&format!("resourceVersion: \"{rv}\"")),
        "{yaml}"
    );

    // list by label selector, and by kind.
    let (status, list) = c.get("/api/v1/resources/serviceentries?labelSelector=app%3Dratings");
    assert_eq!(status, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ratings"]);
    let (_, all) = c.get("/api/v1/resources/serviceentries?namespace=default");
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let (_, none) = c.get("/api/v1/resources/serviceentries?namespace=prod");
    assert_eq!(none["items"].as_array().unwrap().len(), 0);

    // Update with the current resourceVersion (as JSON): accepted, version moves on.
    let mut update: Value = reviews.clone();
    update["spec"]["endpoints"][0]["ports"]["http"] = json!(9091);
    let (status, applied) = c.send("POST", "/api/v1/apply", &update.to_string());
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["objects"][0]["result"], "configured");
    let new_rv = applied["objects"][0]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_rv, rv);
    // The same write again carries a stale resourceVersion: 409, nothing changes.
    update["spec"]["endpoints"][0]["ports"]["http"] = json!(9999);
    let (status, conflict) = c.send("POST", "/api/v1/apply", &update.to_string());
    assert_eq!(status, 409, "{conflict}");
    let message = conflict["message"].as_str().unwrap();
    assert!(
        message.contains("ServiceEntry default/reviews")
            && message.contains(&format!("{rv} is stale"))
            && message.contains(&new_rv),
        "{message}"
    );
    let (_, now) = c.get("/api/v1/resources/se/default/reviews");
    assert_eq!(now["spec"]["endpoints"][0]["ports"]["http"], 9091);

    // delete: stale version refused, then deleted, then gone (file too).
    let (status, _) = c.send(
        "DELETE",
        &format!("/api/v1/resources/se/default/reviews?resourceVersion={rv}"),
        "",
    );
    assert_eq!(status, 409);
    let (status, deleted) = c.send("DELETE", "/api/v1/resources/se/default/reviews", "");
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["objects"][0]["result"], "deleted");
    let (status, gone) = c.get("/api/v1/resources/se/default/reviews");
    assert_eq!(status, 404, "{gone}");
    assert!(!file.exists());
    let (status, _) = c.send("DELETE", "/api/v1/resources/se/default/reviews", "");
    assert_eq!(status, 404);
    // The watch serves exactly what is left.
    let served = c
        .store
        .watch()
        .borrow()
        .loaded
        .snapshot
        .service_entries
        .iter()
        .map(|s| s.meta.name.clone())
        .collect::<Vec<_>>();
    assert_eq!(served, ["ratings"]);
}

#[test]
fn invalid_config_is_refused_with_every_error_and_the_last_good_keeps_serving() {
    let c = start();
    let (status, body) = c.send(
        "POST",
        "/api/v1/apply",
        &service_entry("reviews", "reviews", 9081),
    );
    assert_eq!(status, 200, "{body}");
    let revision = c.revision();

    // Two mistakes in one body: both reported, with the source name, line, column, path.
    let broken = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: round_robin}
  subsets:
  - name: v1
    labls: {version: v1}
";
    let (status, refused) = c.send("POST", "/api/v1/apply?source=dr.yaml", broken);
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["reason"], "Invalid");
    let errors = refused["errors"].as_array().unwrap();
    let located: Vec<(String, u64, u64, String)> = errors
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_owned(),
                e["line"].as_u64().unwrap(),
                e["column"].as_u64().unwrap(),
                e["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        located.contains(&(
            "dr.yaml".into(),
            7,
            28,
            "spec.trafficPolicy.loadBalancer.simple".into()
        )),
        "{located:?}"
    );
    assert!(
        located.contains(&("dr.yaml".into(), 10, 5, "spec.subsets[0].labls".into())),
        "{located:?}"
    );
    assert!(
        errors[0]["text"].as_str().unwrap().starts_with("dr.yaml:"),
        "{refused}"
    );
    assert_eq!(c.revision(), revision, "nothing new may be served");
    assert!(
        !c.data().join("DestinationRule").exists(),
        "nothing may be written"
    );

    // A YAML syntax error is located too; a mix of good and bad objects writes nothing.
    let (status, refused) = c.send("POST", "/api/v1/apply", "kind: [unclosed\n");
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["errors"][0]["file"], "request");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid YAML"),
        "{refused}"
    );
    let mixed = format!("{}---\n{broken}", service_entry("ratings", "ratings", 9082));
    let (status, _) = c.send("POST", "/api/v1/apply", &mixed);
    assert_eq!(status, 400);
    let (status, _) = c.get("/api/v1/resources/se/default/ratings");
    assert_eq!(status, 404, "half a write must not be stored");
    let watched = c.store.watch().borrow().clone();
    assert_eq!(watched.revision, revision);
    assert_eq!(watched.loaded.snapshot.service_entries.len(), 1);

    // A name that would leave the store directory is refused.
    let escape =
        service_entry("reviews", "reviews", 9081).replace("name: reviews", "name: ../../escape");
    let (status, refused) = c.send("POST", "/api/v1/apply", &escape);
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid name"),
        "{refused}"
    );
    assert!(!c.dir.path().join("escape.yaml").exists());

    // validate: the same errors without writing; a good body compiles for a gateway.
    let (status, refused) = c.send("POST", "/api/v1/validate?source=dr.yaml", broken);
    assert_eq!(status, 400);
    assert_eq!(refused["errors"].as_array().unwrap().len(), errors.len());
    let (status, valid) = c.send("POST", "/api/v1/validate", GATEWAY_AND_ROUTE);
    assert_eq!(status, 200, "{valid}");
    assert_eq!(valid["compiled"]["listeners"], 1, "{valid}");
    assert_eq!(valid["compiled"]["clusters"], 1, "{valid}");
    let (status, _) = c.get("/api/v1/resources/gateways/istio-system/gw");
    assert_eq!(status, 404, "validate must not write");
}

#[test]
fn writes_need_the_bearer_token_and_it_rotates() {
    let c = start();
    let url = format!("{}/api/v1/apply", c.url);
    let body = service_entry("reviews", "reviews", 9081);
    let (status, headers, answer) = http_request(&url, &["--data-binary", &body]);
    assert_eq!(status, 401, "{answer}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = http_request(
        &url,
        &["-H", "Authorization: Bearer wrong", "--data-binary", &body],
    );
    assert_eq!(status, 401);
    let (status, _, _) = http_request(
        &format!("{}/api/v1/resources/se/default/reviews", c.url),
        &["-X", "DELETE"],
    );
    assert_eq!(status, 401);
    // Reads are open on loopback.
    let (status, _) = c.get("/api/v1/resources");
    assert_eq!(status, 200);

    let (status, rotated) = c.send("POST", "/api/v1/token/rotate", "");
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new, c.token);
    let file = c.data().join(".trellis-token");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), new);
    let (status, _) = c.send("POST", "/api/v1/apply", &body);
    assert_eq!(status, 401, "the old token must stop working");
    let auth = format!("Authorization: Bearer {new}");
    let (status, _, answer) = http_request(&url, &["-H", &auth, "--data-binary", &body]);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn openapi_metrics_and_proxy_status() {
    let c = start();
    let (status, doc) = c.get("/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/apply", "post"),
        ("/api/v1/validate", "post"),
        ("/api/v1/resources", "get"),
        ("/api/v1/resources/{kind}", "get"),
        ("/api/v1/resources/{kind}/{namespace}/{name}", "get"),
        ("/api/v1/resources/{kind}/{namespace}/{name}", "delete"),
        ("/api/v1/status", "get"),
        ("/api/v1/proxy-status", "get"),
        ("/api/v1/token/rotate", "post"),
        ("/api/v1/quotas/{namespace}/{policy}", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    // Every $ref points at a schema that exists.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "missing schema {name}"
        );
    }

    let (status, proxies) = c.get("/api/v1/proxy-status");
    assert_eq!(status, 200);
    assert_eq!(proxies["proxies"][0]["status"], "SYNCED");

    c.send(
        "POST",
        "/api/v1/apply",
        &service_entry("reviews", "reviews", 9081),
    );
    let (status, headers, metrics) = http_request(&format!("{}/metrics", c.url), &[]);
    assert_eq!(status, 200);
    assert!(
        headers["content-type"].starts_with("text/plain"),
        "{headers:?}"
    );
    assert!(
        metrics.contains("trellis_control_config_errors{backend=\"directory\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trellis_control_config_objects{backend=\"directory\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trellis_xds_connected_proxies 1"),
        "{metrics}"
    );
    promtool_check(&metrics);
    let (status, unknown) = c.get("/api/v1/resources/virtualservce");
    assert_eq!(status, 404);
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("VirtualService"),
        "{unknown}"
    );
}

#[test]
fn a_broken_external_edit_is_reported_by_the_api() {
    let c = start();
    let (status, _) = c.send(
        "POST",
        "/api/v1/apply",
        &service_entry("reviews", "reviews", 9081),
    );
    assert_eq!(status, 200);
    let revision = c.revision();
    let broken = c.data().join("broken.yaml");
    std::fs::write(
        &broken,
        service_entry("ratings", "ratings", 9082).replace("STATIC", "STATC"),
    )
    .unwrap();
    let reported = trellis_testkit::wait_until(std::time::Duration::from_secs(10), || {
        c.get("/api/v1/status").1["valid"] == false
    });
    assert!(reported, "the broken edit must show in /api/v1/status");
    let (_, status_body) = c.get("/api/v1/status");
    let error = &status_body["errors"][0];
    assert_eq!(error["file"], broken.display().to_string(), "{status_body}");
    assert_eq!(error["path"], "spec.resolution", "{status_body}");
    assert_eq!(
        status_body["revision"].as_u64(),
        Some(revision),
        "{status_body}"
    );
    let (_, _, metrics) = http_request(&format!("{}/metrics", c.url), &[]);
    assert!(
        metrics.contains("trellis_control_config_errors{backend=\"directory\"} 1"),
        "{metrics}"
    );
    // Still serving, and still writable.
    let (status, _) = c.get("/api/v1/resources/se/default/reviews");
    assert_eq!(status, 200);
    std::fs::remove_file(&broken).unwrap();
    let healed = trellis_testkit::wait_until(std::time::Duration::from_secs(10), || {
        c.get("/api/v1/status").1["valid"] == true
    });
    assert!(healed);
}
