//! The etcd store: objects as JSON values under `/trellis/config/<group>/<Kind>/<ns>/<name>`
//! in etcd v3, spoken through etcd's JSON gRPC gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`; keys and values base64) with the hyper client, so no gRPC stack is needed.
//!
//! `resourceVersion` is the object's etcd `mod_revision`; the served revision is etcd's store
//! revision. Every store instance follows the prefix with a watch (after a full read), so
//! several control-plane replicas on one etcd converge. A write reads the current values of
//! the keys it touches, checks the whole resulting configuration, and commits with one
//! transaction that compares those keys' `mod_revision`s (retried if another writer won the
//! race); it returns once this instance's watch has served it. A value that does not load
//! (written straight into etcd) is refused like a broken file in the directory store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::watch;
use trellis_config::{Diagnostic, Loader};

use super::change::{Checked, Outcome};
use super::object::{Object, ObjectKey, normalize};
use super::served::{Served, Snapshot};
use super::{Applied, BoxFuture, Change, ListFilter, Store, StoreError, StoreStatus, yaml};
use crate::ConfigWatch;

/// Every object lives under this prefix.
pub const PREFIX: &str = "/trellis/config/";
/// How long one unary etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for this instance's watch to serve it.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a write that keeps losing compare-and-swap races.
const ATTEMPTS: usize = 5;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// etcd v3 as a store.
pub struct EtcdStore {
    endpoint: String,
    client: HttpClient,
    served: Served,
    /// What etcd holds under the prefix, by etcd key, as last read or watched.
    raw: Mutex<BTreeMap<String, RawValue>>,
    /// The highest etcd revision the watch has processed.
    seen: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Debug, Clone)]
struct RawValue {
    value: Vec<u8>,
    mod_revision: u64,
}

impl EtcdStore {
    /// Connects to `endpoint` (`http://host:port`), reads the prefix and follows it.
    pub async fn open(endpoint: &str) -> anyhow::Result<Arc<EtcdStore>> {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let store = Arc::new(EtcdStore {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            client,
            served: Served::new(Snapshot::default()),
            raw: Mutex::new(BTreeMap::new()),
            seen: watch::Sender::new(0),
            task: Mutex::new(None),
        });
        let revision = store.resync().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let weak = Arc::downgrade(&store);
        let task = tokio::spawn(follow(weak, revision));
        *store.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(store)
    }

    /// `POST /v3/<path>` with a JSON body; the JSON answer.
    async fn call(&self, path: &str, body: Value) -> Result<Value, StoreError> {
        let url = format!("{}/v3/{path}", self.endpoint);
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| StoreError::Backend(format!("etcd {url}: {e}")))?;
        let exchange = async {
            let response = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!(
                    "{status}: {}",
                    value["message"].as_str().unwrap_or("")
                ));
            }
            Ok(value)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Backend(format!(
                "etcd {url}: {e}; is etcd running at {}?",
                self.endpoint
            ))),
            Err(_) => Err(StoreError::Backend(format!(
                "etcd {url}: no answer within {REQUEST_TIMEOUT:?}"
            ))),
        }
    }

    /// Reads the whole prefix, serves it if it loads; returns etcd's revision.
    async fn resync(&self) -> Result<u64, StoreError> {
        let answer = self
            .call(
                "kv/range",
                json!({ "key": B64.encode(PREFIX), "range_end": B64.encode(prefix_end()) }),
            )
            .await?;
        let revision = num(&answer["header"]["revision"]);
        let mut raw = BTreeMap::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            if let Some((key, value)) = decode_kv(kv) {
                raw.insert(key, value);
            }
        }
        *self.raw.lock().unwrap_or_else(|p| p.into_inner()) = raw;
        self.evaluate(revision);
        Ok(revision)
    }

    /// Applies one watch answer's events.
    fn apply_events(&self, result: &Value) {
        let mut raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        for event in result["events"].as_array().into_iter().flatten() {
            let kv = &event["kv"];
            let key = kv["key"]
                .as_str()
                .and_then(|k| B64.decode(k).ok())
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default();
            if event["type"] == "DELETE" {
                raw.remove(&key);
            } else if let Some((key, value)) = decode_kv(kv) {
                raw.insert(key, value);
            }
        }
    }

    /// Loads what etcd holds; serves it at `revision` if it loads, else reports why not.
    fn evaluate(&self, revision: u64) {
        let raw = self.raw.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match load(&raw) {
            Ok((objects, loaded)) => {
                self.served.clear_rejection();
                let current = self.served.current();
                if objects != current.objects || current.revision == 0 {
                    self.served.publish(Snapshot {
                        revision,
                        objects,
                        loaded: Arc::new(loaded),
                    });
                }
            }
            Err(errors) => self
                .served
                .reject(&format!("etcd {}", self.endpoint), errors),
        }
        self.seen.send_if_modified(|seen| {
            let newer = revision > *seen;
            if newer {
                *seen = revision;
            }
            newer
        });
    }

    /// The current values of `keys` in etcd, by object key.
    async fn read_keys(
        &self,
        keys: &[&ObjectKey],
    ) -> Result<HashMap<ObjectKey, Object>, StoreError> {
        let ops: Vec<Value> = keys
            .iter()
            .map(|k| json!({ "request_range": { "key": B64.encode(etcd_key(k)) } }))
            .collect();
        let answer = self.call("kv/txn", json!({ "success": ops })).await?;
        let mut out = HashMap::new();
        for response in answer["responses"].as_array().into_iter().flatten() {
            for kv in response["response_range"]["kvs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some((_, raw)) = decode_kv(kv)
                    && let Ok(object) = decode_object(&raw)
                {
                    out.insert(object.key.clone(), object);
                }
            }
        }
        Ok(out)
    }

    async fn apply_change(&self, change: Change) -> Result<Applied, StoreError> {
        let keys: Vec<&ObjectKey> = change.keys().into_iter().collect();
        for _ in 0..ATTEMPTS {
            let fresh = self.read_keys(&keys).await?;
            let current = self.served.current();
            let mut base = current.objects.clone();
            for key in &keys {
                match fresh.get(*key) {
                    Some(object) => base.insert((*key).clone(), object.clone()),
                    None => base.remove(*key),
                };
            }
            let checked = change.check(&base, 0)?;
            if !checked.changed {
                return Ok(super::applied(&checked, current.revision));
            }
            let txn = transaction(&keys, &fresh, &change, &checked);
            let answer = self.call("kv/txn", txn).await?;
            if answer["succeeded"] != true {
                continue; // another writer changed a key since we read it
            }
            let revision = num(&answer["header"]["revision"]);
            self.wait_seen(revision).await?;
            let refused = self.served.rejected();
            if self.served.current().revision < revision && !refused.is_empty() {
                let errors: Vec<String> = refused.iter().map(ToString::to_string).collect();
                return Err(StoreError::Backend(format!(
                    "written to etcd at revision {revision}, but etcd also holds objects that do not load, so the last good configuration keeps serving; fix or delete them:\n{}",
                    errors.join("\n")
                )));
            }
            return Ok(Applied {
                revision,
                objects: committed(&checked, &base, revision),
                warnings: checked.loaded.warnings.clone(),
            });
        }
        Err(StoreError::Conflict(
            "the objects kept changing while this write was checked; retry".into(),
        ))
    }

    /// Waits until the watch has served etcd revision `revision`.
    async fn wait_seen(&self, revision: u64) -> Result<(), StoreError> {
        let mut seen = self.seen.subscribe();
        let wait = seen.wait_for(|s| *s >= revision);
        match tokio::time::timeout(SERVE_TIMEOUT, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Backend(format!(
                "etcd accepted the write (revision {revision}) but this control plane has not seen it within {SERVE_TIMEOUT:?}; check its connection to etcd"
            ))),
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Store for EtcdStore {
    fn watch(&self) -> ConfigWatch {
        self.served.watch()
    }

    fn get(&self, key: &ObjectKey) -> Option<Object> {
        self.served.get(key)
    }

    fn list(&self, filter: &ListFilter) -> (u64, Vec<Object>) {
        self.served.list(filter)
    }

    fn validate(&self, change: &Change) -> Result<super::change::Checked, StoreError> {
        self.served.validate(change)
    }

    fn apply(&self, change: Change) -> BoxFuture<'_, Result<Applied, StoreError>> {
        Box::pin(self.apply_change(change))
    }

    fn status(&self) -> StoreStatus {
        self.served.status(format!("etcd {}", self.endpoint))
    }

    fn encode_metrics(&self, out: &mut String) {
        self.served.encode_metrics("etcd", out);
    }
}

/// One transaction: if every touched key is still at the `mod_revision` just read (0: absent),
/// delete and put what the change says.
fn transaction(
    keys: &[&ObjectKey],
    fresh: &HashMap<ObjectKey, Object>,
    change: &Change,
    checked: &Checked,
) -> Value {
    let compare: Vec<Value> = keys
        .iter()
        .map(|k| {
            let rv = fresh.get(*k).map_or(0, |o| o.resource_version);
            json!({ "key": B64.encode(etcd_key(k)), "target": "MOD", "result": "EQUAL", "mod_revision": rv.to_string() })
        })
        .collect();
    let mut success = Vec::new();
    for d in &change.deletes {
        success.push(json!({ "request_delete_range": { "key": B64.encode(etcd_key(&d.key)) } }));
    }
    for (key, outcome) in &checked.outcomes {
        if matches!(outcome, Outcome::Created | Outcome::Configured)
            && let Some(object) = checked.objects.get(key)
        {
            success.push(json!({ "request_put": {
                "key": B64.encode(etcd_key(key)),
                "value": B64.encode(object.value.to_string()),
            }}));
        }
    }
    json!({ "compare": compare, "success": success })
}

/// Per object of a committed change: what happened and its resourceVersion now.
fn committed(
    checked: &Checked,
    base: &BTreeMap<ObjectKey, Object>,
    revision: u64,
) -> Vec<(ObjectKey, Outcome, u64)> {
    checked
        .outcomes
        .iter()
        .map(|(key, outcome)| {
            let rv = match outcome {
                Outcome::Deleted => 0,
                Outcome::Unchanged => base.get(key).map_or(0, |o| o.resource_version),
                Outcome::Created | Outcome::Configured => revision,
            };
            (key.clone(), *outcome, rv)
        })
        .collect()
}

/// Follows the prefix from `revision + 1` for as long as the store lives; after a broken
/// stream or a compaction it reads everything again.
async fn follow(store: Weak<EtcdStore>, mut revision: u64) {
    loop {
        let Some(s) = store.upgrade() else { return };
        let (endpoint, client) = (s.endpoint.clone(), s.client.clone());
        drop(s);
        let body = json!({ "create_request": {
            "key": B64.encode(PREFIX),
            "range_end": B64.encode(prefix_end()),
            "start_revision": (revision + 1).to_string(),
        }});
        let outcome = stream(&store, &endpoint, &client, body, &mut revision).await;
        if let Err(e) = outcome {
            tracing::warn!(%endpoint, error = %e, "etcd watch ended; reading everything again in 1s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(s) = store.upgrade() else { return };
        match s.resync().await {
            Ok(r) => revision = r,
            Err(e) => tracing::warn!(%endpoint, error = %e, "etcd read failed; retrying"),
        }
    }
}

/// One watch stream: applies its events until it ends.
async fn stream(
    store: &Weak<EtcdStore>,
    endpoint: &str,
    client: &HttpClient,
    body: Value,
    revision: &mut u64,
) -> Result<(), String> {
    let req = http::Request::post(format!("{endpoint}/v3/watch"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = client.request(req).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("watch answered {}", response.status()));
    }
    let mut body = response.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        let mut consumed = 0;
        let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        loop {
            match values.next() {
                Some(Ok(message)) => {
                    consumed = values.byte_offset();
                    let result = &message["result"];
                    if message.get("error").is_some() || result["canceled"] == true {
                        return Err(format!("watch canceled: {message}"));
                    }
                    if num(&result["compact_revision"]) > 0 {
                        return Err("watch start revision was compacted".into());
                    }
                    let Some(s) = store.upgrade() else {
                        return Ok(());
                    };
                    if result["events"].as_array().is_some_and(|e| !e.is_empty()) {
                        s.apply_events(result);
                        *revision = num(&result["header"]["revision"]);
                        s.evaluate(*revision);
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("bad watch message: {e}")),
                None => break,
            }
        }
        buf.drain(..consumed);
    }
    Ok(())
}

/// Loads every value; the objects and their configuration, or every error.
fn load(
    raw: &BTreeMap<String, RawValue>,
) -> Result<(BTreeMap<ObjectKey, Object>, trellis_config::Loaded), Vec<Diagnostic>> {
    let mut loader = Loader::default();
    let mut objects = BTreeMap::new();
    let mut errors = Vec::new();
    for (etcd, value) in raw {
        match decode_object(value) {
            Ok(object) if etcd_key(&object.key) == *etcd => {
                loader.load_str(&object.key.file_name(), &yaml::to_yaml(&object.value));
                objects.insert(object.key.clone(), object);
            }
            Ok(object) => errors.push(Diagnostic::error(
                &format!("etcd:{etcd}"),
                0,
                0,
                format!(
                    "holds {}, which belongs at {}; move it",
                    object.key,
                    etcd_key(&object.key)
                ),
            )),
            Err(e) => errors.push(Diagnostic::error(&format!("etcd:{etcd}"), 0, 0, e)),
        }
    }
    match loader.finish() {
        Ok(loaded) if errors.is_empty() => Ok((objects, loaded)),
        Ok(_) => Err(errors),
        Err(d) => {
            errors.extend(d);
            Err(errors)
        }
    }
}

/// A stored value as an object (its resourceVersion is the key's mod_revision).
fn decode_object(raw: &RawValue) -> Result<Object, String> {
    let mut value: Value = serde_json::from_slice(&raw.value)
        .map_err(|e| format!("value is not a JSON object: {e}"))?;
    let key = ObjectKey::of(&value)?;
    normalize(&mut value, &key.namespace);
    Ok(Object {
        key,
        value,
        resource_version: raw.mod_revision,
    })
}

fn decode_kv(kv: &Value) -> Option<(String, RawValue)> {
    let key = B64.decode(kv["key"].as_str()?).ok()?;
    let value = B64.decode(kv["value"].as_str().unwrap_or("")).ok()?;
    Some((
        String::from_utf8_lossy(&key).into_owned(),
        RawValue {
            value,
            mod_revision: num(&kv["mod_revision"]),
        },
    ))
}

/// `/trellis/config/networking.istio.io/VirtualService/default/reviews` (`core` for group "").
pub fn etcd_key(key: &ObjectKey) -> String {
    let group = if key.group.is_empty() {
        "core"
    } else {
        &key.group
    };
    format!(
        "{PREFIX}{group}/{}/{}/{}",
        key.kind, key.namespace, key.name
    )
}

/// The end of the prefix range: the prefix with its last byte incremented.
fn prefix_end() -> String {
    let mut end = PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&end).into_owned()
}

/// etcd's JSON gateway writes 64-bit integers as strings.
fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}
