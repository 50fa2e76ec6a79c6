//! Loader tests: every kind, API versions, error collection with positions, hints.

use crate::*;

pub(crate) const BOOKINFO: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 75
    - destination:
        host: reviews
        subset: v3
      weight: 25
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
      http:
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: default
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "*"
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - bookinfo.example.com
    tls:
      mode: SIMPLE
      credentialName: bookinfo-cert
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-https
spec:
  hosts:
  - api.dropboxapi.com
  - www.googleapis.com
  location: MESH_EXTERNAL
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
---
apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service"}
  creationTimestamp: "2024-05-01T10:00:00Z"
  labels:
    app: reviews
    service: reviews
  name: reviews
  namespace: default
  resourceVersion: "1234"
  uid: 6f3a0c1e-1111-2222-3333-444455556666
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:metadata:
        f:labels:
          .: {}
          f:app: {}
      f:spec:
        f:ports:
          .: {}
          k:{"port":9080,"protocol":"TCP"}:
            .: {}
            f:name: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2024-05-01T10:00:00Z"
spec:
  clusterIP: 10.96.12.34
  clusterIPs:
  - 10.96.12.34
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 9080
    protocol: TCP
    targetPort: 9080
  selector:
    app: reviews
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.0.11
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: kind-control-plane
  targetRef:
    kind: Pod
    name: reviews-v1-5b6b8d4c7d-abcde
    namespace: default
    uid: 0a1b2c3d-0000-0000-0000-000000000001
  zone: us-east-1a
- addresses:
  - 10.244.0.12
  conditions:
    ready: false
  zone: us-east-1b
kind: EndpointSlice
metadata:
  creationTimestamp: "2024-05-01T10:00:01Z"
  generateName: reviews-
  generation: 3
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: reviews
  name: reviews-x7k2p
  namespace: default
  ownerReferences:
  - apiVersion: v1
    blockOwnerDeletion: true
    controller: true
    kind: Service
    name: reviews
    uid: 6f3a0c1e-1111-2222-3333-444455556666
  resourceVersion: "5678"
  uid: 7a7a7a7a-0000-0000-0000-000000000000
ports:
- name: http
  port: 9080
  protocol: TCP
"#;

fn load_ok(yaml: &str) -> Loaded {
    match load_str("test.yaml", yaml) {
        Ok(l) => l,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn load_err(yaml: &str) -> Vec<Diagnostic> {
    match load_str("test.yaml", yaml) {
        Ok(l) => panic!("expected errors, loaded {} resources", l.snapshot.len()),
        Err(e) => e.0,
    }
}

fn has(errors: &[Diagnostic], line: usize, col: usize, path: &str, needle: &str) -> bool {
    errors
        .iter()
        .any(|e| e.line == line && e.col == col && e.path == path && e.message.contains(needle))
}

#[test]
fn loads_bookinfo_kinds() {
    let l = load_ok(BOOKINFO);
    let s = &l.snapshot;
    assert_eq!(s.virtual_services.len(), 1);
    assert_eq!(s.destination_rules.len(), 1);
    assert_eq!(s.gateways.len(), 1);
    assert_eq!(s.service_entries.len(), 1);
    assert_eq!(s.services.len(), 1);
    assert_eq!(s.endpoint_slices.len(), 1);

    let vs = &s.virtual_services[0];
    assert_eq!(vs.meta.namespace, "default");
    assert_eq!((vs.file.as_str(), vs.line), ("test.yaml", 2));
    let http = &vs.spec.http;
    assert_eq!(
        http[0].matches[0].headers["end-user"].kind(),
        Some(StringMatchKind::Exact("jason"))
    );
    assert_eq!(http[1].route[1].weight, 25);
    assert_eq!(
        http[1].timeout.as_ref().and_then(Duration::get),
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(http[1].retries.as_ref().map(|r| r.attempts), Some(3));

    let dr = &s.destination_rules[0].spec;
    let tp = dr.traffic_policy.as_ref().unwrap();
    assert_eq!(
        tp.load_balancer.as_ref().unwrap().simple,
        Some(SimpleLb::Random)
    );
    assert_eq!(
        tp.outlier_detection
            .as_ref()
            .unwrap()
            .consecutive_5xx_errors,
        Some(7)
    );
    assert_eq!(dr.subsets.len(), 3);

    let gw = &s.gateways[0].spec;
    assert_eq!(
        gw.servers[1].tls.as_ref().unwrap().mode,
        Some(ServerTlsMode::Simple)
    );

    let svc = &s.services[0];
    assert_eq!(svc.meta.uid, "6f3a0c1e-1111-2222-3333-444455556666");
    assert_eq!(svc.meta.managed_fields.len(), 1);
    assert_eq!(svc.spec.ports[0].target_port, Some(IntOrString::Int(9080)));
    let es = &s.endpoint_slices[0];
    assert_eq!(es.spec.endpoints[1].conditions.ready, Some(false));
    assert_eq!(es.meta.owner_references.len(), 1);
}

#[test]
fn accepts_all_istio_api_versions() {
    for v in ["v1", "v1beta1", "v1alpha3"] {
        let yaml = format!(
            "apiVersion: networking.istio.io/{v}\nkind: WorkloadEntry\nmetadata:\n  name: vm1\nspec:\n  address: 10.0.0.1\n"
        );
        assert_eq!(load_ok(&yaml).snapshot.workload_entries.len(), 1, "{v}");
    }
    let errors = load_err(
        "apiVersion: networking.istio.io/v2\nkind: WorkloadEntry\nmetadata:\n  name: vm1\n",
    );
    assert!(
        has(&errors, 1, 13, "apiVersion", "use `networking.istio.io/v1`"),
        "{errors:#?}"
    );
}

#[test]
fn reports_all_errors_with_positions() {
    let yaml = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        subset: v1
      weight: 50
    - destination:
        host: reviews
      weight: 20
    timeout: fast
    retries:
      atempts: 3
  - match:
    - uri:
        regex: \"[unclosed\"
    route:
    - destination:
        host: ratings
        port:
          number: seventy
";
    let errors = load_err(yaml);
    let d = |line, col, path: &str, msg: &str| has(&errors, line, col, path, msg);
    assert!(
        d(
            18,
            7,
            "spec.http[0].retries.atempts",
            "did you mean `attempts`?"
        ),
        "{errors:#?}"
    );
    assert!(
        d(
            26,
            19,
            "spec.http[1].route[0].destination.port.number",
            "expected an integer"
        ),
        "{errors:#?}"
    );
    assert!(
        d(
            10,
            7,
            "spec.http[0].route[0].destination.host",
            "host is required"
        ),
        "{errors:#?}"
    );
    assert!(d(9, 5, "spec.http[0].route", "sum to 70"), "{errors:#?}");
    assert!(
        d(16, 14, "spec.http[0].timeout", "invalid duration `fast`"),
        "{errors:#?}"
    );
    assert!(
        d(21, 16, "spec.http[1].match[0].uri.regex", "invalid regex"),
        "{errors:#?}"
    );
    assert_eq!(errors.len(), 6, "{errors:#?}");
    assert!(
        errors
            .iter()
            .all(|e| e.resource == "VirtualService default/reviews")
    );
    let shown = Diagnostics(errors).to_string();
    assert!(
        shown.contains("test.yaml:10:7: error: VirtualService default/reviews: spec.http[0].route[0].destination.host: host is required"),
        "{shown}"
    );
}

#[test]
fn unknown_kind_gets_a_hint() {
    let errors =
        load_err("apiVersion: networking.istio.io/v1\nkind: VirtualServce\nmetadata:\n  name: x\n");
    assert_eq!(
        errors[0].message,
        "unknown kind `VirtualServce`; did you mean `VirtualService`?"
    );
    assert_eq!((errors[0].line, errors[0].col), (2, 7));
}

#[test]
fn unknown_enum_value_lists_or_hints() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    loadBalancer:\n      simple: round_robin\n    tls:\n      mode: STRICT\n";
    let errors = load_err(yaml);
    assert!(
        has(
            &errors,
            9,
            15,
            "spec.trafficPolicy.loadBalancer.simple",
            "did you mean `ROUND_ROBIN`?"
        ),
        "{errors:#?}"
    );
    assert!(
        has(
            &errors,
            11,
            13,
            "spec.trafficPolicy.tls.mode",
            "expected one of: DISABLE, SIMPLE"
        ),
        "{errors:#?}"
    );
}

#[test]
fn type_mismatches_and_duplicate_keys() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: v\nspec:\n  hosts: reviews\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: -5\n";
    let errors = load_err(yaml);
    assert!(
        has(&errors, 6, 10, "spec.hosts", "expected a sequence"),
        "{errors:#?}"
    );
    assert!(
        has(&errors, 7, 3, "spec.hosts", "duplicate key `hosts`"),
        "{errors:#?}"
    );
    assert!(
        has(
            &errors,
            11,
            15,
            "spec.http[0].route[0].weight",
            "out of range"
        ),
        "{errors:#?}"
    );
    // The neutral value left by a decode error is not reported again by validation.
    assert!(
        !errors
            .iter()
            .any(|e| e.message.contains("at least one host")),
        "{errors:#?}"
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn yaml_syntax_error_is_located() {
    let errors = load_err("apiVersion: v1\nkind: Service\nmetadata:\n  name: [a\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].line >= 4 && errors[0].message.contains("invalid YAML"),
        "{errors:#?}"
    );
}

#[test]
fn yaml_syntax_error_discards_the_whole_file() {
    // Documents are loaded as they are parsed; a later syntax error still loads nothing
    // from the file and reports only the syntax error, not the earlier document's errors.
    let bad_then_broken = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm}\nspec:\n  adress: 10.0.0.1\n---\nkind: Service\nmetadata:\n  name: [a\n";
    let errors = load_err(bad_then_broken);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].message.contains("invalid YAML"), "{errors:#?}");
    assert!(errors[0].line >= 9, "{errors:#?}");
}

#[test]
fn duplicate_names_are_errors() {
    let one = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm\nspec:\n  address: 10.0.0.1\n";
    let errors = load_err(&format!("{one}---\n{one}"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .message
            .contains("duplicate WorkloadEntry `default/vm`; first defined at test.yaml:1")
    );
    assert_eq!(errors[0].line, 11);
    // Same name in another namespace is fine.
    let other = one.replace("  name: vm\n", "  name: vm\n  namespace: prod\n");
    assert_eq!(
        load_ok(&format!("{one}---\n{other}"))
            .snapshot
            .workload_entries
            .len(),
        2
    );
}

#[test]
fn missing_name_and_kind() {
    let errors = load_err(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nspec:\n  servers: []\n---\napiVersion: v1\nmetadata: {name: x}\n",
    );
    assert!(
        errors
            .iter()
            .any(|e| e.path == "metadata.name" && e.message.contains("required")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.path == "spec.servers" && e.line == 4),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.path == "kind" && e.line == 6),
        "{errors:#?}"
    );
}

#[test]
fn kubectl_list_is_accepted() {
    let yaml = "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: x}\n  spec:\n    ports: [{port: 80, name: http}]\n- apiVersion: networking.istio.io/v1\n  kind: WorkloadEntry\n  metadata: {name: w}\n  spec: {address: 1.2.3.4, bogus: 1}\n";
    let errors = load_err(yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        (errors[0].line, errors[0].col, errors[0].path.as_str()),
        (14, 28, "spec.bogus")
    );
    let ok = load_ok(&yaml.replace(", bogus: 1", ""));
    assert_eq!(ok.snapshot.services[0].meta.namespace, "x");
}

#[test]
fn nothing_half_loads() {
    let yaml = format!(
        "{BOOKINFO}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: broken}}\nspec:\n  servers:\n  - hosts: [\"*\"]\n"
    );
    let errors = load_err(&yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].message, "server port is required");
}

#[test]
fn string_match_needs_exactly_one() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a.example.com]\n  http:\n  - match:\n    - uri: {exact: /a, prefix: /b}\n      headers:\n        x-present: {}\n    - method: {}\n    route:\n    - destination: {host: a.example.com}\n";
    let errors = load_err(yaml);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors.iter().all(|e| e.message.contains("exactly one of")));
    assert_eq!(errors[0].path, "spec.http[0].match[0].uri");
    assert_eq!(errors[1].path, "spec.http[0].match[1].method");
}

#[test]
fn service_entry_resolution_rules() {
    let base = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [db.example.com]\n  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]\n";
    let errors = load_err(&format!("{base}  resolution: STATIC\n"));
    assert!(
        errors[0].message.contains("STATIC resolution needs"),
        "{errors:#?}"
    );
    let errors = load_err(&format!(
        "{base}  resolution: STATIC\n  endpoints:\n  - address: db1.example.com\n"
    ));
    assert!(
        has(
            &errors,
            9,
            14,
            "spec.endpoints[0].address",
            "is not an IP address"
        ),
        "{errors:#?}"
    );
    load_ok(&format!(
        "{base}  resolution: DNS\n  endpoints:\n  - address: db1.example.com\n"
    ));
    load_ok(&format!(
        "{base}  resolution: STATIC\n  endpoints:\n  - address: 10.1.1.1\n    ports: {{tcp-pg: 15432}}\n"
    ));
    let errors = load_err(&format!(
        "{base}  resolution: STATIC\n  endpoints:\n  - address: 10.1.1.1\n    ports: {{pg: 70000}}\n"
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    load_ok(&format!("{base}  resolution: NONE\n"));
}

#[test]
fn durations_parse_go_forms() {
    for (s, ms) in [
        ("5s", 5000),
        ("0.5s", 500),
        ("100ms", 100),
        ("1h2m3.5s", 3_723_500),
        ("0", 0),
        ("1m30s", 90_000),
    ] {
        assert_eq!(
            Duration(s.to_string()).get().map(|d| d.as_millis()),
            Some(ms),
            "{s}"
        );
    }
    for s in ["", "5", "s", "-1s", "1x", "1..5s", "5 s"] {
        assert!(Duration(s.to_string()).parse().is_err(), "{s}");
    }
}

#[test]
fn loads_directory_recursively_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    let we = |name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec: {{address: 10.0.0.1}}\n"
        )
    };
    std::fs::write(dir.path().join("z.yaml"), we("z")).unwrap();
    std::fs::write(nested.join("m.yml"), we("m")).unwrap();
    std::fs::write(dir.path().join("ignored.txt"), "not: yaml: at all: [").unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "broken: [").unwrap();
    let l = load_path(dir.path()).unwrap();
    let names: Vec<&str> = l
        .snapshot
        .workload_entries
        .iter()
        .map(|r| r.meta.name.as_str())
        .collect();
    assert_eq!(names, ["m", "z"]);
    assert!(l.snapshot.workload_entries[0].file.ends_with("a/b/m.yml"));

    std::fs::write(nested.join("bad.yaml"), "kind: Nope\n").unwrap();
    let err = load_path(dir.path()).unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(err.0[0].file.ends_with("bad.yaml"));
    assert!(load_path(&dir.path().join("missing.yaml")).is_err());
}

#[test]
fn gateway_api_gateway_and_istio_gateway_load_side_by_side() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: g}]\n  rules: [{matches: [{path: {type: Exact, value: /a}}]}]\n";
    let l = load_ok(yaml);
    assert_eq!(l.snapshot.gateways.len(), 1);
    assert_eq!(l.snapshot.gateway_api_gateways.len(), 1);
    assert_eq!(
        l.snapshot.gateway_api_gateways[0].spec.listeners[0].port,
        80
    );
    let path = l.snapshot.http_routes[0].spec.rules[0].matches[0]
        .path
        .as_ref()
        .unwrap();
    assert_eq!(path.kind.as_deref(), Some("Exact"));
}

#[test]
fn gateway_api_errors_name_the_version_and_the_field() {
    let errors = load_err(
        "apiVersion: gateway.networking.k8s.io/v1alpha1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n",
    );
    assert!(
        errors[0].message.contains("`gateway.networking.k8s.io/v1`"),
        "{errors:#?}"
    );
    let errors = load_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: Exat, value: /a}}]\n    backendRefs: [{name: svc}]\n    filters: [{type: RequestHeaderModifier}]\n",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.rules[0].matches[0].path.type",
            "spec.rules[0].backendRefs[0].port",
            "spec.rules[0].filters[0].requestHeaderModifier",
        ],
        "{errors:#?}"
    );
    assert!(
        errors[0].message.contains("did you mean `Exact`"),
        "{errors:#?}"
    );
    let errors = load_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: a, port: 80, protocol: HTTP, hostnme: x}]\n",
    );
    assert!(errors[0].message.contains("hostnme"), "{errors:#?}");
}

#[test]
fn anchors_and_aliases_are_resolved() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm\n  labels: &l {app: web}\nspec:\n  address: 10.0.0.1\n  labels: *l\n";
    let l = load_ok(yaml);
    assert_eq!(l.snapshot.workload_entries[0].spec.labels["app"], "web");
}

#[test]
fn odd_documents_are_errors_not_panics() {
    let cases = [
        "- a\n- b\n",
        "just a string\n",
        "apiVersion: v1\nkind: Service\nmetadata: []\nspec: 5\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: 99999999999999999999999\n  - {port: 80, name: a}\n  - {port: 81, name: a}\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n  http:\n  - route: {destination: {host: a}}\n    fault: {abort: {httpStatus: 700}}\n",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - {port: {number: 443, protocol: HTTPS}, hosts: [a]}\n  ? [complex, key]\n  : 1\n",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nbase: &b {address: 1.1.1.1}\nspec:\n  <<: *b\n",
        "apiVersion: v1\nkind: List\nitems: 5\n",
    ];
    for yaml in cases {
        let errors = load_err(yaml);
        assert!(!errors.is_empty(), "{yaml}");
        assert!(
            errors.iter().all(|e| e.line >= 1 && e.col >= 1),
            "{yaml}: {errors:#?}"
        );
    }
}

#[test]
fn empty_inputs_load_empty_snapshots() {
    for yaml in ["", "# only a comment\n", "---\n---\n"] {
        assert!(load_ok(yaml).snapshot.is_empty());
    }
}

#[test]
fn diagnostics_display_one_per_line() {
    let errors = load_str("x.yaml", "kind: Sevice\n---\nkind: VirtualService\napiVersion: networking.istio.io/v1\nmetadata: {name: v}\nspec: {hosts: [a], htp: []}\n").unwrap_err();
    let text = errors.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "x.yaml:1:7: error: kind: unknown kind `Sevice`; did you mean `Service`?"
    );
    assert_eq!(
        lines[1],
        "x.yaml:6:1: error: VirtualService default/v: spec: at least one of `http`, `tls` or `tcp` routes is required"
    );
    assert_eq!(
        lines[2],
        "x.yaml:6:20: error: VirtualService default/v: spec.htp: unknown field `htp`; did you mean `http`?"
    );
    assert_eq!(lines.len(), 3, "{text}");
    let _: &dyn std::error::Error = &errors;
}

#[test]
fn delegate_virtual_services_have_no_hosts() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root}\nspec:\n  hosts: [a.example.com]\n  http:\n  - match: [{uri: {prefix: /api}}]\n    delegate: {name: api, namespace: team}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api, namespace: team}\nspec:\n  http:\n  - route: [{destination: {host: api.team.svc.cluster.local}}]\n";
    let loaded = load_ok(yaml);
    assert_eq!(loaded.snapshot.virtual_services.len(), 2);
}

#[test]
fn scalars_follow_proto_json_leniency() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: w\n  labels: {version: 1, canary: true}\nspec:\n  address: 10.0.0.1\n  ports: {http: \"8080\"}\n  weight: 0x10\n";
    let w = &load_ok(yaml).snapshot.workload_entries[0];
    assert_eq!(w.meta.labels["version"], "1");
    assert_eq!(w.meta.labels["canary"], "true");
    assert_eq!(w.spec.ports["http"], 8080);
    assert_eq!(w.spec.weight, 16);
    let errors = load_err(&yaml.replace("0x10", "heavy"));
    assert_eq!(
        errors[0].message,
        "expected an integer, found string `heavy`"
    );
}

#[test]
fn retry_conditions_and_the_retry_annotation_are_checked() {
    let yaml = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: r
  annotations:
    trellis.dev/retry-non-idempotent: \"yes\"
spec:
  hosts: [r]
  http:
  - route:
    - destination: {host: r}
    retries:
      attempts: 2
      retryOn: 5xx,conect-failure,503,700,unavailable
";
    let text = load_str("x.yaml", yaml).unwrap_err().to_string();
    assert!(
        text.contains("spec.http[0].retries.retryOn: unknown retryOn condition `conect-failure`; did you mean `connect-failure`?"),
        "{text}"
    );
    assert!(text.contains("status code 700 in retryOn"), "{text}");
    assert!(
        text.contains("metadata.annotations.trellis.dev/retry-non-idempotent: annotation trellis.dev/retry-non-idempotent must be \"true\" or \"false\", not \"yes\""),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3, "{text}");
    let ok = yaml
        .replace("\"yes\"", "\"true\"")
        .replace("conect-failure,", "")
        .replace("700,", "");
    assert!(!load_ok(&ok).snapshot.is_empty());
}

#[test]
fn route_action_errors_name_their_field() {
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v, namespace: default}
spec:
  hosts: [a]
  http:
  - fault: {abort: {grpcStatus: NOT_A_STATUS, percentage: {value: 10}}}
    headers: {request: {set: {"bad header": x}}, response: {add: {x-ok: "a\nb"}}}
    route:
    - destination: {host: a}
      headers: {request: {remove: ["x@y"]}}
  - directResponse: {status: 200, body: {bytes: "not*base64"}}
"#;
    let errors = load_err(yaml);
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for needle in [
        "spec.http[0].fault.abort.grpcStatus: unknown gRPC status \"NOT_A_STATUS\"",
        "spec.http[0].headers.request.set: \"bad header\" is not a valid header name",
        "spec.http[0].headers.response.add.x-ok: header values must not hold CR, LF or NUL",
        "spec.http[0].route[0].headers.request.remove: \"x@y\" is not a valid header name",
        "spec.http[1].directResponse.body.bytes: bytes must be base64",
    ] {
        assert!(
            shown.iter().any(|s| s.contains(needle)),
            "{needle}\nnot in {shown:#?}"
        );
    }
}

#[test]
fn destination_policy_loads_and_is_validated() {
    let ok = "\
apiVersion: trellis.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews}
spec:
  host: reviews
  retryBudget: {retryPercent: 10, minRetriesPerSecond: 3}
";
    let loaded = load_ok(ok);
    let p = &loaded.snapshot.destination_policies[0];
    assert_eq!(p.spec.host, "reviews");
    let budget = p.spec.retry_budget.as_ref().unwrap();
    assert_eq!(
        (budget.retry_percent, budget.min_retries_per_second),
        (Some(10.0), Some(3))
    );

    let bad = "\
apiVersion: trellis.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews}
spec:
  retryBudget: {retryPrecent: 10, retryPercent: 150}
---
apiVersion: networking.istio.io/v1
kind: DestinationPolicy
metadata: {name: other}
spec: {host: x}
---
apiVersion: trellis.dev/v1alpha1
kind: DestinationPolicie
metadata: {name: third}
";
    let text = load_str("p.yaml", bad).unwrap_err().to_string();
    for want in [
        "p.yaml:4:1: error: DestinationPolicy default/reviews: spec.host: host is required",
        "spec.retryBudget.retryPrecent: unknown field `retryPrecent`; did you mean `retryPercent`?",
        "spec.retryBudget.retryPercent: retryPercent 150 out of range; use 0..=100",
        "unsupported apiVersion `networking.istio.io/v1` for kind `DestinationPolicy`; use `trellis.dev/v1alpha1`",
        "unknown kind `DestinationPolicie`; did you mean `DestinationPolicy`?",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
