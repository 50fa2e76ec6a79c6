//! The objects a store keeps: Kubernetes-style documents identified by (group, kind,
//! namespace, name), the kinds Trellis knows (with kubectl-style plural and short names),
//! and label selectors for listing. Owns identity and naming only; validation is
//! `trellis-config`'s.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// A kind the store accepts: its API group, preferred version and the names a CLI may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    /// API group, empty for the Kubernetes core group (`v1`).
    pub group: &'static str,
    /// The `apiVersion` new objects are shown with when written without one.
    pub api_version: &'static str,
    pub plural: &'static str,
    pub short: &'static str,
}

/// Every kind the configuration loader understands.
pub const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: "VirtualService",
        group: "networking.istio.io",
        api_version: "networking.istio.io/v1",
        plural: "virtualservices",
        short: "vs",
    },
    KindInfo {
        kind: "DestinationRule",
        group: "networking.istio.io",
        api_version: "networking.istio.io/v1",
        plural: "destinationrules",
        short: "dr",
    },
    KindInfo {
        kind: "Gateway",
        group: "networking.istio.io",
        api_version: "networking.istio.io/v1",
        plural: "gateways",
        short: "gw",
    },
    KindInfo {
        kind: "ServiceEntry",
        group: "networking.istio.io",
        api_version: "networking.istio.io/v1",
        plural: "serviceentries",
        short: "se",
    },
    KindInfo {
        kind: "WorkloadEntry",
        group: "networking.istio.io",
        api_version: "networking.istio.io/v1",
        plural: "workloadentries",
        short: "we",
    },
    KindInfo {
        kind: "RequestAuthentication",
        group: "security.istio.io",
        api_version: "security.istio.io/v1",
        plural: "requestauthentications",
        short: "ra",
    },
    KindInfo {
        kind: "HealthCheckPolicy",
        group: "trellis.dev",
        api_version: "trellis.dev/v1alpha1",
        plural: "healthcheckpolicies",
        short: "hcp",
    },
    KindInfo {
        kind: "DestinationPolicy",
        group: "trellis.dev",
        api_version: "trellis.dev/v1alpha1",
        plural: "destinationpolicies",
        short: "dp",
    },
    KindInfo {
        kind: "MeshConfig",
        group: "trellis.dev",
        api_version: "trellis.dev/v1alpha1",
        plural: "meshconfigs",
        short: "mc",
    },
    KindInfo {
        kind: "RateLimitPolicy",
        group: "trellis.dev",
        api_version: "trellis.dev/v1alpha1",
        plural: "ratelimitpolicies",
        short: "rlp",
    },
    KindInfo {
        kind: "QuotaPolicy",
        group: "trellis.dev",
        api_version: "trellis.dev/v1alpha1",
        plural: "quotapolicies",
        short: "qp",
    },
    KindInfo {
        kind: "AuthorizationPolicy",
        group: "security.istio.io",
        api_version: "security.istio.io/v1",
        plural: "authorizationpolicies",
        short: "ap",
    },
    KindInfo {
        kind: "PeerAuthentication",
        group: "security.istio.io",
        api_version: "security.istio.io/v1",
        plural: "peerauthentications",
        short: "pa",
    },
    // Gateway API kinds come after Istio's: `gateway`/`gw` keep meaning Istio's Gateway; the
    // Gateway API one is `gateways.gateway.networking.k8s.io` or `gtw`.
    KindInfo {
        kind: "GatewayClass",
        group: "gateway.networking.k8s.io",
        api_version: "gateway.networking.k8s.io/v1",
        plural: "gatewayclasses",
        short: "gc",
    },
    KindInfo {
        kind: "Gateway",
        group: "gateway.networking.k8s.io",
        api_version: "gateway.networking.k8s.io/v1",
        plural: "gateways.gateway.networking.k8s.io",
        short: "gtw",
    },
    KindInfo {
        kind: "HTTPRoute",
        group: "gateway.networking.k8s.io",
        api_version: "gateway.networking.k8s.io/v1",
        plural: "httproutes",
        short: "httproute",
    },
    KindInfo {
        kind: "GRPCRoute",
        group: "gateway.networking.k8s.io",
        api_version: "gateway.networking.k8s.io/v1",
        plural: "grpcroutes",
        short: "grpcroute",
    },
    KindInfo {
        kind: "TLSRoute",
        group: "gateway.networking.k8s.io",
        api_version: "gateway.networking.k8s.io/v1alpha2",
        plural: "tlsroutes",
        short: "tlsroute",
    },
    KindInfo {
        kind: "TCPRoute",
        group: "gateway.networking.k8s.io",
        api_version: "gateway.networking.k8s.io/v1alpha2",
        plural: "tcproutes",
        short: "tcproute",
    },
    KindInfo {
        kind: "ReferenceGrant",
        group: "gateway.networking.k8s.io",
        api_version: "gateway.networking.k8s.io/v1beta1",
        plural: "referencegrants",
        short: "refgrant",
    },
    KindInfo {
        kind: "Service",
        group: "",
        api_version: "v1",
        plural: "services",
        short: "svc",
    },
    KindInfo {
        kind: "Secret",
        group: "",
        api_version: "v1",
        plural: "secrets",
        short: "secret",
    },
    KindInfo {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        short: "endpointslice",
    },
];

/// Which object: `VirtualService default/reviews` (group `networking.istio.io`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One stored object: the document as written (normalised: namespace filled in, no
/// `resourceVersion`), and the store revision at which it last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: ObjectKey,
    pub value: Value,
    pub resource_version: u64,
}

/// A label selector: equality-based requirements, as `kubectl -l` accepts them
/// (`app=reviews`, `version!=v1`, `tier`, `!canary`, comma-separated, all must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// What to list: a kind (all when `None`), a namespace (all when `None`), a selector.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub kind: Option<&'static KindInfo>,
    pub namespace: Option<String>,
    pub selector: LabelSelector,
}

/// Resolves what a user typed (`VirtualService`, `virtualservices`, `vs`, any case).
pub fn kind_info(name: &str) -> Option<&'static KindInfo> {
    let lower = name.to_ascii_lowercase();
    KINDS.iter().find(|k| {
        k.kind.eq_ignore_ascii_case(&lower)
            || k.plural == lower
            || k.short == lower
            || lower
                .strip_suffix('s')
                .is_some_and(|s| k.kind.eq_ignore_ascii_case(s))
    })
}

/// The kind of a stored object's key (its group and kind), e.g. to tell the two `Gateway`s apart.
pub fn kind_info_for(group: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.group == group && k.kind == kind)
}

/// The list of kinds for error messages.
pub fn kind_names() -> String {
    KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| {
            if KINDS[..i].iter().any(|o| o.kind == k.kind) {
                k.plural
            } else {
                k.kind
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl ObjectKey {
    /// The key of a document, if it has `apiVersion`, `kind` and `metadata.name`.
    pub fn of(value: &Value) -> Result<ObjectKey, String> {
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default");
        if !value.is_object() {
            return Err("expected an object with apiVersion, kind and metadata".into());
        }
        if kind.is_empty() {
            return Err("`kind` is required (e.g. `kind: VirtualService`)".into());
        }
        if api_version.is_empty() {
            return Err("`apiVersion` is required".into());
        }
        if name.is_empty() {
            return Err("metadata.name is required".into());
        }
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Ok(ObjectKey {
            group: group.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The key of `kind namespace/name` typed by a user.
    pub fn new(kind: &KindInfo, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: kind.group.to_owned(),
            kind: kind.kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `VirtualService/default/reviews.yaml`: the file an object is written to (directory
    /// store) and the name its diagnostics carry.
    /// Gateway API kinds are qualified by their group (`Gateway.gateway.networking.k8s.io/…`) so
    /// that they never share a file with Istio's `Gateway`.
    pub fn file_name(&self) -> String {
        if self.group == "gateway.networking.k8s.io" {
            return format!(
                "{}.{}/{}/{}.yaml",
                self.kind, self.group, self.namespace, self.name
            );
        }
        format!("{}/{}/{}.yaml", self.kind, self.namespace, self.name)
    }
}

/// Kubernetes' rules for what the API writes: `metadata.name` a DNS-1123 subdomain
/// (lowercase letters, digits, `-`, `.`; starts and ends alphanumeric; at most 253),
/// `metadata.namespace` a DNS-1123 label (no `.`, at most 63). They also keep file names and
/// etcd keys made from them safe.
pub fn check_names(key: &ObjectKey) -> Result<(), String> {
    fn valid(s: &str, max: usize, dots: bool) -> bool {
        let edge =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        s.len() <= max
            && edge(s.chars().next())
            && edge(s.chars().last())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.')
            })
            && !s.contains("..")
    }
    if !valid(&key.name, 253, true) {
        return Err(format!(
            "metadata.name `{}` is not a valid name: use lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit (at most 253)",
            key.name
        ));
    }
    if !valid(&key.namespace, 63, false) {
        return Err(format!(
            "metadata.namespace `{}` is not a valid namespace: use lowercase letters, digits and `-`, starting and ending with a letter or digit (at most 63)",
            key.namespace
        ));
    }
    Ok(())
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl Object {
    /// The object as served: `metadata.resourceVersion` set to its revision.
    pub fn to_value(&self) -> Value {
        let mut v = self.value.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert(
                "resourceVersion".into(),
                Value::String(self.resource_version.to_string()),
            );
        }
        v
    }

    pub fn labels(&self) -> BTreeMap<&str, &str> {
        self.value
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The objects of one document: the `items` of a `kind: List` (none when it has no array of
/// them), else the document itself.
pub fn list_items(mut value: Value) -> Vec<Value> {
    if value.get("kind").and_then(Value::as_str) != Some("List") {
        return vec![value];
    }
    match value.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// The document as stored: `metadata.namespace` filled in, `metadata.resourceVersion` and
/// `status` removed. Returns the `resourceVersion` the writer sent, if any.
pub fn normalize(value: &mut Value, namespace: &str) -> Option<String> {
    let obj = value.as_object_mut()?;
    obj.remove("status");
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let meta = meta.as_object_mut()?;
    meta.insert("namespace".into(), Value::String(namespace.to_owned()));
    match meta.remove("resourceVersion") {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

impl LabelSelector {
    /// Parses `app=reviews,version!=v1,tier,!canary`.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else if part.contains([' ', '(']) {
                return Err(format!(
                    "label selector `{part}`: set-based selectors (in, notin) are not supported; use key=value, key!=value, key or !key"
                ));
            } else {
                Requirement::Exists(part.into())
            };
            out.push(req);
        }
        Ok(LabelSelector(out))
    }

    pub fn matches(&self, labels: &BTreeMap<&str, &str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k.as_str()) == Some(&v.as_str()),
            Requirement::NotEquals(k, v) => labels.get(k.as_str()) != Some(&v.as_str()),
            Requirement::Exists(k) => labels.contains_key(k.as_str()),
            Requirement::Absent(k) => !labels.contains_key(k.as_str()),
        })
    }
}

impl ListFilter {
    pub fn matches(&self, object: &Object) -> bool {
        self.kind
            .is_none_or(|k| k.kind == object.key.kind && k.group == object.key.group)
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == object.key.namespace)
            && self.selector.matches(&object.labels())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_means_istio_and_gtw_the_gateway_api() {
        for name in ["gateway", "Gateway", "gateways", "gw"] {
            assert_eq!(
                kind_info(name).unwrap().group,
                "networking.istio.io",
                "{name}"
            );
        }
        for name in ["gtw", "gateways.gateway.networking.k8s.io"] {
            assert_eq!(
                kind_info(name).unwrap().group,
                "gateway.networking.k8s.io",
                "{name}"
            );
        }
        assert_eq!(kind_info("httproutes").unwrap().kind, "HTTPRoute");
        assert_eq!(
            kind_info_for("gateway.networking.k8s.io", "Gateway")
                .unwrap()
                .short,
            "gtw"
        );
        let istio = ObjectKey::new(kind_info("gw").unwrap(), "default", "web");
        let api = ObjectKey::new(kind_info("gtw").unwrap(), "default", "web");
        assert_ne!(istio, api);
        assert_ne!(istio.file_name(), api.file_name());
        assert!(kind_names().contains("gateways.gateway.networking.k8s.io"));
    }

    #[test]
    fn a_list_gives_its_items_and_any_other_document_itself() {
        let se = serde_json::json!({"kind": "ServiceEntry", "metadata": {"name": "a"}});
        let list = serde_json::json!({"kind": "List", "items": [se, {"kind": "Gateway"}]});
        assert_eq!(
            list_items(list.clone()),
            vec![se.clone(), serde_json::json!({"kind": "Gateway"})]
        );
        assert_eq!(list_items(se.clone()), vec![se]);
        assert!(list_items(serde_json::json!({"kind": "List", "items": "none"})).is_empty());
        assert!(list_items(serde_json::json!({"kind": "List"})).is_empty());
    }

    #[test]
    fn kinds_resolve_from_any_spelling() {
        for name in [
            "VirtualService",
            "virtualservice",
            "virtualservices",
            "vs",
            "VS",
        ] {
            assert_eq!(
                kind_info(name).map(|k| k.kind),
                Some("VirtualService"),
                "{name}"
            );
        }
        assert_eq!(kind_info("svc").map(|k| k.kind), Some("Service"));
        assert_eq!(kind_info("services").map(|k| k.kind), Some("Service"));
        assert_eq!(kind_info("nope"), None);
    }

    #[test]
    fn selectors_follow_kubectl() {
        let labels: BTreeMap<&str, &str> = [("app", "reviews"), ("version", "v2")].into();
        let yes = [
            "app=reviews",
            "app==reviews,version!=v1",
            "app",
            "!canary",
            "",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&labels), "{s}");
        }
        for s in ["app=ratings", "version!=v2", "canary", "!app"] {
            assert!(!LabelSelector::parse(s).unwrap().matches(&labels), "{s}");
        }
        assert!(LabelSelector::parse("app in (a,b)").is_err());
    }

    #[test]
    fn names_that_would_escape_a_path_are_refused() {
        let se = kind_info("se").unwrap();
        assert!(check_names(&ObjectKey::new(se, "default", "reviews.v-2")).is_ok());
        for (ns, name) in [
            ("default", "../../etc/passwd"),
            ("default", "a/b"),
            ("default", "Reviews"),
            ("default", "-x"),
            ("default", ""),
            ("..", "x"),
            ("a.b", "x"),
        ] {
            assert!(
                check_names(&ObjectKey::new(se, ns, name)).is_err(),
                "{ns}/{name}"
            );
        }
    }
}
