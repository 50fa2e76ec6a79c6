//! Loading: files and directories -> YAML documents -> typed resources in a [`Snapshot`],
//! dispatching on `apiVersion`/`kind` (including `kind: List`), collecting every error.
//! Then runs validation and analysis. Owns file walking and kind dispatch; field-level
//! decoding is `de.rs`, rules are `validate.rs` and `analyze.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub(crate) use crate::de::SpanIndex;
use crate::de::{Collector, ObjectKey};
use crate::diag::{Diagnostic, Diagnostics, Severity, closest};
use crate::registry::Registry;
use crate::types::*;
use crate::yaml::{Node, NodeKind, for_each_document};
use crate::{Loaded, analyze, validate};
use gateway_api::{GATEWAY_API_PREFIX, gateway_api_versions};

/// Istio networking API versions we accept.
pub(crate) const ISTIO_API_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// Istio security API versions we accept.
pub(crate) const SECURITY_API_VERSIONS: &[&str] =
    &["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Kinds this loader understands.
const KINDS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "Gateway",
    "ServiceEntry",
    "WorkloadEntry",
    "Service",
    "EndpointSlice",
    "HealthCheckPolicy",
    "DestinationPolicy",
    "AuthorizationPolicy",
    "MeshConfig",
    "RequestAuthentication",
    "PeerAuthentication",
    "RateLimitPolicy",
    "QuotaPolicy",
    "Secret",
    "GatewayClass",
    "HTTPRoute",
    "GRPCRoute",
    "TLSRoute",
    "TCPRoute",
    "ReferenceGrant",
    "List",
];

/// `apiVersion` of Trellis's own kinds.
const TRELLIS_API_VERSIONS: &[&str] = &[TRELLIS_API_VERSION];

/// API version of the Trellis extension kinds.
pub(crate) const TRELLIS_API_VERSION: &str = "trellis.dev/v1alpha1";

/// Real kinds that Trellis will support elsewhere but this loader does not.
const UNSUPPORTED_KINDS: &[&str] = &[
    "Sidecar",
    "EnvoyFilter",
    "WorkloadGroup",
    "ProxyConfig",
    "Telemetry",
    "BackendTLSPolicy",
    "UDPRoute",
];

/// Accumulates resources and diagnostics across files.
#[derive(Default)]
pub struct Loader {
    snapshot: Snapshot,
    diagnostics: Vec<Diagnostic>,
    spans: SpanIndex,
    /// (file, resource, path) of fields that hold a neutral value after a decode error.
    substituted: Vec<(String, String, String)>,
}

/// Lengths of everything a file adds to, to undo it.
struct Checkpoint {
    diagnostics: usize,
    substituted: usize,
    spans: usize,
    resources: [usize; 23],
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ObjectDoc<T> {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: T,
    status: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct EndpointSliceDoc {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    address_type: String,
    endpoints: Vec<SliceEndpoint>,
    ports: Vec<SlicePort>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SecretDoc {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    #[serde(rename = "type")]
    secret_type: String,
    data: BTreeMap<String, String>,
    string_data: BTreeMap<String, String>,
    immutable: Option<bool>,
}

/// `VirtualService default/reviews`.
pub(crate) fn resource_label(kind: &str, meta: &ObjectMeta) -> String {
    let name = if meta.name.is_empty() {
        "<unnamed>"
    } else {
        &meta.name
    };
    format!("{kind} {}/{name}", meta.namespace)
}

impl Loader {
    pub fn load_path(&mut self, path: &Path) {
        let display = path.display().to_string();
        if path.is_dir() {
            let mut files = Vec::new();
            if let Err(e) = collect_yaml_files(path, &mut files) {
                self.diagnostics.push(Diagnostic::error(
                    &display,
                    0,
                    0,
                    format!("cannot read directory: {e}"),
                ));
            }
            files.sort();
            for f in files {
                self.load_file(&f);
            }
        } else {
            self.load_file(path);
        }
    }

    fn load_file(&mut self, path: &Path) {
        let display = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(src) => self.load_str(&display, &src),
            Err(e) => self.diagnostics.push(Diagnostic::error(
                &display,
                0,
                0,
                format!("cannot read file: {e}; check the path and permissions"),
            )),
        }
    }

    /// Loads each document as soon as it is parsed and drops its tree. A syntax error
    /// anywhere in the file discards what the file's earlier documents added: a file with
    /// invalid YAML reports only that error.
    pub fn load_str(&mut self, file: &str, src: &str) {
        let checkpoint = self.checkpoint();
        if let Err(e) = for_each_document(src, |doc| self.load_object(file, &doc, true)) {
            self.rollback(checkpoint);
            self.diagnostics
                .push(Diagnostic::error(file, e.line, e.col, e.message));
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        // Exhaustive, so that a new kind cannot be forgotten here.
        let Snapshot {
            virtual_services,
            destination_rules,
            gateways,
            service_entries,
            workload_entries,
            services,
            endpoint_slices,
            health_check_policies,
            destination_policies,
            authorization_policies,
            mesh_configs,
            request_authentications,
            peer_authentications,
            rate_limit_policies,
            quota_policies,
            secrets,
            gateway_classes,
            gateway_api_gateways,
            http_routes,
            grpc_routes,
            tls_routes,
            tcp_routes,
            reference_grants,
        } = &self.snapshot;
        Checkpoint {
            diagnostics: self.diagnostics.len(),
            substituted: self.substituted.len(),
            spans: self.spans.len(),
            resources: [
                virtual_services.len(),
                destination_rules.len(),
                gateways.len(),
                service_entries.len(),
                workload_entries.len(),
                services.len(),
                endpoint_slices.len(),
                health_check_policies.len(),
                destination_policies.len(),
                authorization_policies.len(),
                mesh_configs.len(),
                request_authentications.len(),
                peer_authentications.len(),
                rate_limit_policies.len(),
                quota_policies.len(),
                secrets.len(),
                gateway_classes.len(),
                gateway_api_gateways.len(),
                http_routes.len(),
                grpc_routes.len(),
                tls_routes.len(),
                tcp_routes.len(),
                reference_grants.len(),
            ],
        }
    }

    fn rollback(&mut self, to: Checkpoint) {
        self.diagnostics.truncate(to.diagnostics);
        self.substituted.truncate(to.substituted);
        self.spans.truncate(to.spans);
        let s = &mut self.snapshot;
        let [
            vs,
            dr,
            gw,
            se,
            we,
            svc,
            es,
            hc,
            dp,
            ap,
            mc,
            ra,
            pa,
            rl,
            qp,
            sec,
            gc,
            kgw,
            hr,
            gr,
            tlr,
            tcr,
            rg,
        ] = to.resources;
        s.virtual_services.truncate(vs);
        s.destination_rules.truncate(dr);
        s.gateways.truncate(gw);
        s.service_entries.truncate(se);
        s.workload_entries.truncate(we);
        s.services.truncate(svc);
        s.endpoint_slices.truncate(es);
        s.health_check_policies.truncate(hc);
        s.destination_policies.truncate(dp);
        s.authorization_policies.truncate(ap);
        s.mesh_configs.truncate(mc);
        s.request_authentications.truncate(ra);
        s.peer_authentications.truncate(pa);
        s.rate_limit_policies.truncate(rl);
        s.quota_policies.truncate(qp);
        s.secrets.truncate(sec);
        s.gateway_classes.truncate(gc);
        s.gateway_api_gateways.truncate(kgw);
        s.http_routes.truncate(hr);
        s.grpc_routes.truncate(gr);
        s.tls_routes.truncate(tlr);
        s.tcp_routes.truncate(tcr);
        s.reference_grants.truncate(rg);
    }

    /// Validates, analyses and returns the result; any error fails the whole load.
    pub fn finish(mut self) -> Result<Loaded, Diagnostics> {
        // A field that failed to decode holds a neutral value: do not also report the
        // rules that value breaks.
        self.spans.seal();
        let substituted = std::mem::take(&mut self.substituted);
        let shadowed = |d: &Diagnostic| {
            substituted.iter().any(|(file, resource, path)| {
                *file == d.file
                    && *resource == d.resource
                    && !path.is_empty()
                    && d.path.strip_prefix(path.as_str()).is_some_and(|rest| {
                        rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
                    })
            })
        };
        let validation = validate::validate(&self.snapshot, &self.spans);
        self.diagnostics
            .extend(validation.into_iter().filter(|d| !shadowed(d)));
        let (mut errors, _): (Vec<_>, Vec<_>) =
            self.diagnostics.into_iter().partition(Diagnostic::is_error);
        if !errors.is_empty() {
            sort(&mut errors);
            return Err(Diagnostics(errors));
        }
        let registry = Registry::from_snapshot(&self.snapshot);
        let mut warnings = analyze::analyze(&self.snapshot, &registry, &self.spans);
        sort(&mut warnings);
        Ok(Loaded {
            snapshot: self.snapshot,
            registry,
            warnings,
        })
    }

    fn error(&mut self, file: &str, node: &Node, resource: &str, path: &str, message: String) {
        self.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line: node.line,
            col: node.col,
            resource: resource.to_string(),
            path: path.to_string(),
            message,
        });
    }

    fn load_object(&mut self, file: &str, node: &Node, allow_list: bool) {
        if !matches!(node.kind, NodeKind::Map(_)) {
            self.error(
                file,
                node,
                "",
                "",
                format!(
                    "expected a Kubernetes-style object (a mapping with apiVersion, kind, metadata), found {}",
                    node.describe()
                ),
            );
            return;
        }
        let kind = node.get("kind").and_then(Node::as_str).unwrap_or("");
        let api_version = node.get("apiVersion").and_then(Node::as_str).unwrap_or("");
        let mut meta = ObjectMeta {
            name: raw_meta(node, "name"),
            namespace: raw_meta(node, "namespace"),
            ..ObjectMeta::default()
        };
        if meta.namespace.is_empty() {
            meta.namespace = "default".to_string();
        }
        let label = resource_label(kind, &meta);
        if kind.is_empty() {
            let at = node.get("kind").unwrap_or(node);
            self.error(
                file,
                at,
                "",
                "kind",
                "`kind` is required (e.g. `kind: VirtualService`)".into(),
            );
            return;
        }
        if let Some(expected) = gateway_api_versions(kind, api_version) {
            let at = node.get("apiVersion").unwrap_or(node);
            let message = format!(
                "unsupported apiVersion `{api_version}` for kind `{kind}`; use {}",
                expected
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
            self.error(file, at, &label, "apiVersion", message);
            return;
        }
        if api_version.starts_with(GATEWAY_API_PREFIX) {
            let ctx = Collector::new(ObjectKey::new(file, node.line));
            self.load_gateway_api(&ctx, file, node, kind);
            return self.finish_object(file, &label, ctx);
        }
        if let Some(expected) = expected_api_versions(kind, api_version) {
            let at = node.get("apiVersion").unwrap_or(node);
            let message = if api_version.is_empty() {
                format!("`apiVersion` is required; use `{}`", expected[0])
            } else {
                format!(
                    "unsupported apiVersion `{api_version}` for kind `{kind}`; use {}",
                    expected
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            };
            self.error(file, at, &label, "apiVersion", message);
            return;
        }
        let ctx = Collector::new(ObjectKey::new(file, node.line));
        match kind {
            "List" if allow_list => return self.load_list(file, node),
            "VirtualService" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.virtual_services, r);
            }
            "DestinationRule" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.destination_rules, r);
            }
            "Gateway" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.gateways, r);
            }
            "ServiceEntry" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.service_entries, r);
            }
            "WorkloadEntry" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.workload_entries, r);
            }
            "Service" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.services, r);
            }
            "HealthCheckPolicy" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.health_check_policies, r);
            }
            "DestinationPolicy" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.destination_policies, r);
            }
            "AuthorizationPolicy" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.authorization_policies, r);
            }
            "MeshConfig" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.mesh_configs, r);
            }
            "RequestAuthentication" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.request_authentications, r);
            }
            "PeerAuthentication" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.peer_authentications, r);
            }
            "RateLimitPolicy" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.rate_limit_policies, r);
            }
            "QuotaPolicy" => {
                let r = self.decode(&ctx, file, node);
                push(&mut self.snapshot.quota_policies, r);
            }
            "Secret" => {
                let r = ctx.deserialize::<SecretDoc>(node, "").map(|d| Resource {
                    meta: with_default_namespace(d.metadata),
                    spec: Secret {
                        secret_type: d.secret_type,
                        data: d.data,
                        string_data: d.string_data,
                        immutable: d.immutable,
                    },
                    file: file.to_string(),
                    line: node.line,
                });
                push(&mut self.snapshot.secrets, r);
            }
            "EndpointSlice" => {
                let r = ctx
                    .deserialize::<EndpointSliceDoc>(node, "")
                    .map(|d| Resource {
                        meta: with_default_namespace(d.metadata),
                        spec: EndpointSlice {
                            address_type: d.address_type,
                            endpoints: d.endpoints,
                            ports: d.ports,
                        },
                        file: file.to_string(),
                        line: node.line,
                    });
                push(&mut self.snapshot.endpoint_slices, r);
            }
            _ => {
                let at = node.get("kind").unwrap_or(node);
                let message = if UNSUPPORTED_KINDS.contains(&kind) || kind == "List" {
                    format!("kind `{kind}` is not supported here")
                } else {
                    match closest(kind, KINDS) {
                        Some(c) => format!("unknown kind `{kind}`; did you mean `{c}`?"),
                        None => format!(
                            "unknown kind `{kind}`; supported kinds: {}",
                            KINDS.join(", ")
                        ),
                    }
                };
                self.error(file, at, "", "kind", message);
                return;
            }
        }
        self.finish_object(file, &label, ctx);
    }

    /// Records the decode errors of one object and keeps its field positions.
    fn finish_object(&mut self, file: &str, label: &str, ctx: Collector) {
        for e in ctx.errors.take() {
            if e.substituted {
                self.substituted
                    .push((file.to_string(), label.to_string(), e.path.clone()));
            }
            self.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_string(),
                line: e.line,
                col: e.col,
                resource: label.to_string(),
                path: e.path,
                message: e.message,
            });
        }
        self.spans.extend(ctx);
    }

    fn decode<T: serde::de::DeserializeOwned + Default>(
        &self,
        ctx: &Collector,
        file: &str,
        node: &Node,
    ) -> Option<Resource<T>> {
        let doc: ObjectDoc<T> = ctx.deserialize(node, "")?;
        let _ = (&doc.api_version, &doc.kind, &doc.status);
        Some(Resource {
            meta: with_default_namespace(doc.metadata),
            spec: doc.spec,
            file: file.to_string(),
            line: node.line,
        })
    }

    fn load_list(&mut self, file: &str, node: &Node) {
        let NodeKind::Map(entries) = &node.kind else {
            return;
        };
        for (k, v) in entries {
            match k.as_str().unwrap_or("") {
                "apiVersion" | "kind" | "metadata" => {}
                "items" => match &v.kind {
                    NodeKind::Seq(items) => {
                        for item in items {
                            self.load_object(file, item, false);
                        }
                    }
                    _ if v.is_null() => {}
                    _ => self.error(
                        file,
                        v,
                        "List",
                        "items",
                        format!("expected a sequence of objects, found {}", v.describe()),
                    ),
                },
                other => self.error(
                    file,
                    k,
                    "List",
                    other,
                    format!(
                        "unknown field `{other}`; a List has apiVersion, kind, metadata and items"
                    ),
                ),
            }
        }
    }
}

fn push<T>(into: &mut Vec<Resource<T>>, r: Option<Resource<T>>) {
    if let Some(r) = r {
        into.push(r);
    }
}

fn with_default_namespace(mut meta: ObjectMeta) -> ObjectMeta {
    if meta.namespace.is_empty() {
        meta.namespace = "default".to_string();
    }
    meta
}

fn raw_meta(node: &Node, field: &str) -> String {
    node.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Node::as_str)
        .unwrap_or("")
        .to_string()
}

/// `None` if `api_version` is right for `kind`, else the accepted versions.
fn expected_api_versions(kind: &str, api_version: &str) -> Option<&'static [&'static str]> {
    let accepted: &'static [&'static str] = match kind {
        "VirtualService" | "DestinationRule" | "ServiceEntry" | "WorkloadEntry" => {
            ISTIO_API_VERSIONS
        }
        "Gateway" => ISTIO_API_VERSIONS,
        // Checked by `gateway_api_versions` before this.
        "GatewayClass" | "HTTPRoute" | "GRPCRoute" | "TLSRoute" | "TCPRoute" | "ReferenceGrant" => {
            return None;
        }
        "Service" | "Secret" | "List" => &["v1"],
        "EndpointSlice" => &["discovery.k8s.io/v1"],
        "HealthCheckPolicy" | "DestinationPolicy" | "MeshConfig" | "RateLimitPolicy"
        | "QuotaPolicy" => TRELLIS_API_VERSIONS,
        "AuthorizationPolicy" | "RequestAuthentication" | "PeerAuthentication" => {
            SECURITY_API_VERSIONS
        }
        _ => return None,
    };
    (!accepted.contains(&api_version)).then_some(accepted)
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
}

mod gateway_api;
#[cfg(test)]
pub(crate) mod tests;
