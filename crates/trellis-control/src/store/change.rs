//! A change to the configuration (objects to create or update, objects to delete) and the
//! check every backend runs before it writes: optimistic concurrency on `resourceVersion`,
//! then a load of the whole resulting configuration with `trellis-config`, so a write that
//! would leave the configuration invalid is refused as a whole with every error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;
use trellis_config::{Diagnostic, Diagnostics, Loaded, Loader};

use super::StoreError;
use super::object::{Object, ObjectKey, check_names, list_items, normalize};
use super::yaml;

/// Objects to create or update, and objects to delete, applied together or not at all.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Name the request body carries in diagnostics (a file name given by the CLI, or `request`).
    pub source: String,
    /// The body as sent (YAML or JSON); loaded under `source` so errors point into it.
    pub text: String,
    pub puts: Vec<Put>,
    pub deletes: Vec<Delete>,
}

/// One object to create or update.
#[derive(Debug, Clone)]
pub struct Put {
    pub key: ObjectKey,
    /// Normalised (see [`normalize`]).
    pub value: Value,
    /// `metadata.resourceVersion` as sent: the write only succeeds if the object is still there.
    pub resource_version: Option<String>,
}

/// One object to delete, optionally only if it is still at `resource_version`.
#[derive(Debug, Clone)]
pub struct Delete {
    pub key: ObjectKey,
    pub resource_version: Option<u64>,
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

/// The result of a successful check: the configuration after the change.
#[derive(Debug, Clone)]
pub struct Checked {
    pub objects: BTreeMap<ObjectKey, Object>,
    pub loaded: Arc<Loaded>,
    pub outcomes: Vec<(ObjectKey, Outcome)>,
    /// False when every object was already as written.
    pub changed: bool,
}

impl Change {
    /// Parses a request body: one or more YAML documents, a JSON object, or a `kind: List`.
    pub fn parse(source: &str, text: &str) -> Result<Change, StoreError> {
        let docs = yaml::parse(text).map_err(|e| {
            StoreError::Invalid(Diagnostics(vec![Diagnostic::error(
                source, e.line, e.col, e.message,
            )]))
        })?;
        let mut puts = Vec::new();
        let mut errors = Vec::new();
        for doc in docs {
            for mut value in list_items(doc.value) {
                match ObjectKey::of(&value).and_then(|k| check_names(&k).map(|()| k)) {
                    Ok(key) => {
                        let resource_version = normalize(&mut value, &key.namespace);
                        puts.push(Put {
                            key,
                            value,
                            resource_version,
                        });
                    }
                    Err(message) => {
                        errors.push(Diagnostic::error(source, doc.line, doc.col, message))
                    }
                }
            }
        }
        if !errors.is_empty() {
            // The loader names the field and its position better than we can.
            let mut loader = Loader::default();
            loader.load_str(source, text);
            if let Err(mut found) = loader.finish() {
                // Keep our own findings the loader has no rule for (names).
                for e in errors {
                    if !found
                        .0
                        .iter()
                        .any(|f| f.message.starts_with(e.message.as_str()))
                    {
                        found.0.push(e);
                    }
                }
                return Err(StoreError::Invalid(found));
            }
            return Err(StoreError::Invalid(Diagnostics(errors)));
        }
        if puts.is_empty() {
            return Err(StoreError::BadRequest(
                "the body holds no objects; send YAML or JSON documents with apiVersion, kind and metadata".into(),
            ));
        }
        Ok(Change {
            source: source.to_owned(),
            text: text.to_owned(),
            puts,
            deletes: Vec::new(),
        })
    }

    /// Deletes one object.
    pub fn delete(key: ObjectKey, resource_version: Option<u64>) -> Change {
        Change {
            source: String::new(),
            text: String::new(),
            puts: Vec::new(),
            deletes: vec![Delete {
                key,
                resource_version,
            }],
        }
    }

    /// Every key this change writes or deletes.
    pub fn keys(&self) -> BTreeSet<&ObjectKey> {
        self.puts
            .iter()
            .map(|p| &p.key)
            .chain(self.deletes.iter().map(|d| &d.key))
            .collect()
    }

    /// Checks the change against `base` (the configuration being served) and builds the
    /// configuration it leads to; objects that change get `revision` as resourceVersion.
    pub fn check(
        &self,
        base: &BTreeMap<ObjectKey, Object>,
        revision: u64,
    ) -> Result<Checked, StoreError> {
        self.check_versions(base)?;
        let touched = self.keys();
        let mut loader = Loader::default();
        for (key, object) in base {
            if !touched.contains(key) {
                loader.load_str(&key.file_name(), &yaml::to_yaml(&object.value));
            }
        }
        if !self.puts.is_empty() {
            loader.load_str(&self.source, &self.text);
        }
        let loaded = loader.finish().map_err(StoreError::Invalid)?;

        let mut objects = base.clone();
        let mut outcomes = Vec::new();
        for d in &self.deletes {
            objects.remove(&d.key);
            outcomes.push((d.key.clone(), Outcome::Deleted));
        }
        for p in &self.puts {
            let outcome = match objects.get(&p.key) {
                Some(current) if current.value == p.value => Outcome::Unchanged,
                Some(_) => Outcome::Configured,
                None => Outcome::Created,
            };
            if outcome != Outcome::Unchanged {
                let object = Object {
                    key: p.key.clone(),
                    value: p.value.clone(),
                    resource_version: revision,
                };
                objects.insert(p.key.clone(), object);
            }
            outcomes.push((p.key.clone(), outcome));
        }
        let changed = outcomes.iter().any(|(_, o)| *o != Outcome::Unchanged);
        Ok(Checked {
            objects,
            loaded: Arc::new(loaded),
            outcomes,
            changed,
        })
    }

    fn check_versions(&self, base: &BTreeMap<ObjectKey, Object>) -> Result<(), StoreError> {
        for p in &self.puts {
            let Some(given) = &p.resource_version else {
                continue;
            };
            let given: u64 = given.parse().map_err(|_| {
                StoreError::BadRequest(format!(
                    "{}: metadata.resourceVersion `{given}` is not a version this store issued; remove it or use the value `trellis get` shows",
                    p.key
                ))
            })?;
            stale(&p.key, given, base.get(&p.key))?;
        }
        for d in &self.deletes {
            let Some(current) = base.get(&d.key) else {
                return Err(StoreError::NotFound(format!("{} not found", d.key)));
            };
            if let Some(given) = d.resource_version {
                stale(&d.key, given, Some(current))?;
            }
        }
        Ok(())
    }
}

fn stale(key: &ObjectKey, given: u64, current: Option<&Object>) -> Result<(), StoreError> {
    match current {
        None => Err(StoreError::Conflict(format!(
            "{key}: metadata.resourceVersion {given} was given but the object no longer exists; remove resourceVersion to create it"
        ))),
        Some(c) if c.resource_version != given => Err(StoreError::Conflict(format!(
            "{key}: metadata.resourceVersion {given} is stale, the object is now at {}; get it again, reapply your change and retry",
            c.resource_version
        ))),
        Some(_) => Ok(()),
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, labels: {app: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
";

    fn stored(text: &str, rv: u64) -> BTreeMap<ObjectKey, Object> {
        let change = Change::parse("x", text).unwrap();
        change.check(&BTreeMap::new(), rv).unwrap().objects
    }

    #[test]
    fn objects_are_normalised_and_lists_expanded() {
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            serde_json::to_string(&yaml::parse(SE).unwrap()[0].value).unwrap()
        );
        let change = Change::parse("x", &list).unwrap();
        assert_eq!(change.puts.len(), 1);
        let put = &change.puts[0];
        assert_eq!(put.key.to_string(), "ServiceEntry default/reviews");
        assert_eq!(put.key.group, "networking.istio.io");
        assert_eq!(put.value["metadata"]["namespace"], "default");
    }

    #[test]
    fn a_document_without_a_name_is_located() {
        let text = SE.replace("name: reviews, ", "");
        let Err(StoreError::Invalid(d)) = Change::parse("body.yaml", &text) else {
            panic!("expected invalid");
        };
        assert_eq!(d.0[0].file, "body.yaml");
        assert!(d.0[0].line >= 1, "{d}");
        assert!(d.to_string().contains("metadata.name"), "{d}");
    }

    #[test]
    fn names_are_checked_before_anything_is_written() {
        let text = SE.replace("name: reviews", "name: ../../escape");
        let Err(StoreError::Invalid(d)) = Change::parse("body.yaml", &text) else {
            panic!("expected invalid");
        };
        assert_eq!(d.len(), 1, "{d}");
        assert!(
            d.0[0]
                .message
                .contains("`../../escape` is not a valid name"),
            "{d}"
        );
    }

    #[test]
    fn versions_decide_created_configured_unchanged_and_stale() {
        let base = stored(SE, 7);
        let same = Change::parse("x", SE).unwrap().check(&base, 8).unwrap();
        assert!(!same.changed);
        assert_eq!(same.outcomes[0].1, Outcome::Unchanged);
        let edited = SE.replace("127.0.0.1", "127.0.0.2");
        let current = edited.replace("app: reviews}", "app: reviews}, resourceVersion: \"7\"");
        let checked = Change::parse("x", &current)
            .unwrap()
            .check(&base, 8)
            .unwrap();
        assert_eq!(checked.outcomes[0].1, Outcome::Configured);
        let key = &checked.outcomes[0].0;
        assert_eq!(checked.objects[key].resource_version, 8);
        let stale = edited.replace("app: reviews}", "app: reviews}, resourceVersion: \"6\"");
        let err = Change::parse("x", &stale)
            .unwrap()
            .check(&base, 8)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(ref m) if m.contains("6 is stale")),
            "{err}"
        );
        let gone = Change::parse("x", &stale)
            .unwrap()
            .check(&BTreeMap::new(), 8)
            .unwrap_err();
        assert!(
            matches!(gone, StoreError::Conflict(ref m) if m.contains("no longer exists")),
            "{gone}"
        );
        let delete = Change::delete(key.clone(), Some(6))
            .check(&base, 8)
            .unwrap_err();
        assert!(matches!(delete, StoreError::Conflict(_)));
        let delete = Change::delete(key.clone(), Some(7))
            .check(&base, 8)
            .unwrap();
        assert!(delete.objects.is_empty());
    }
}
