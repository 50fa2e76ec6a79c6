use super::*;
use crate::ProxyIdentity;

fn policy_names(yaml: &str, labels: &[(&str, &str)], namespace: &str) -> Vec<String> {
    let loaded = trellis_config::load_str("p.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    let proxy = ProxyIdentity {
        namespace: namespace.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let ctx = Context {
        snapshot: &loaded.snapshot,
        registry: &loaded.registry,
        proxy: &proxy,
    };
    let mesh = loaded.snapshot.mesh_config();
    applicable(&ctx, &mesh).iter().map(|p| p.key()).collect()
}

fn doc(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
    )
}

#[test]
fn policies_apply_by_namespace_root_namespace_selector_and_target_ref() {
    let yaml = [
        doc("mesh", "istio-system", "{}"),
        doc(
            "mesh-selected",
            "istio-system",
            "{selector: {matchLabels: {app: a}}}",
        ),
        doc("ns", "foo", "{}"),
        doc("other-ns", "bar", "{}"),
        doc("selected", "foo", "{selector: {matchLabels: {app: a}}}"),
        doc("not-selected", "foo", "{selector: {matchLabels: {app: b}}}"),
        doc(
            "gw",
            "foo",
            "{targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: edge}}",
        ),
    ]
    .concat();
    assert_eq!(
        policy_names(&yaml, &[("app", "a")], "foo"),
        [
            "foo/ns",
            "foo/selected",
            "istio-system/mesh",
            "istio-system/mesh-selected"
        ]
    );
    assert_eq!(
        policy_names(
            &yaml,
            &[("gateway.networking.k8s.io/gateway-name", "edge")],
            "foo"
        ),
        ["foo/gw", "foo/ns", "istio-system/mesh"]
    );
    let custom_root = format!(
        "{yaml}apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: m}}\nspec: {{rootNamespace: bar}}\n"
    );
    assert_eq!(
        policy_names(&custom_root, &[], "foo"),
        ["bar/other-ns", "foo/ns"]
    );
}

fn rule(yaml: &str) -> AuthorizationRule {
    let loaded = trellis_config::load_str("p.yaml", &doc("p", "foo", yaml))
        .unwrap_or_else(|e| panic!("{e}"));
    loaded.snapshot.authorization_policies[0].spec.rules[0].clone()
}

#[test]
fn tcp_drops_allow_rules_with_http_fields_and_widens_deny_rules() {
    let r = rule("{rules: [{to: [{operation: {methods: [GET], ports: ['80']}}]}]}");
    assert!(has_http_only(&r));
    assert!(translate_rule(&r, "ALLOW", Layer::Tcp, "cluster.local").is_none());
    let deny = translate_rule(&r, "DENY", Layer::Tcp, "cluster.local").expect("kept");
    assert_eq!(
        deny.permissions,
        vec![perm(permission::Rule::DestinationPort(80))],
        "the method is ignored, the port stays"
    );
    let http = translate_rule(&r, "ALLOW", Layer::Http, "cluster.local").expect("kept");
    assert!(matches!(
        &http.permissions[0].rule,
        Some(permission::Rule::AndRules(s)) if s.rules.len() == 2
    ));
    let when = rule("{rules: [{when: [{key: 'request.headers[x]', values: [a]}]}]}");
    assert!(has_http_only(&when));
    let ports = rule("{rules: [{to: [{operation: {ports: ['80']}}]}]}");
    assert!(!has_http_only(&ports));
}

#[test]
fn principals_namespaces_and_service_accounts_match_spiffe_ids() {
    let t = Translator {
        tcp: false,
        trust_domain: "example.org",
    };
    let name = |p: Principal| match p.identifier {
        Some(principal::Identifier::Authenticated(a)) => {
            a.principal_name.and_then(|m| m.match_pattern)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        name(t.principal_name("cluster.local/ns/a/sa/b")),
        Some(string_matcher::MatchPattern::Exact(
            "spiffe://cluster.local/ns/a/sa/b".into()
        ))
    );
    assert_eq!(
        name(t.service_account("a/b")),
        Some(string_matcher::MatchPattern::Exact(
            "spiffe://example.org/ns/a/sa/b".into()
        ))
    );
    assert!(matches!(
        name(namespace_principal("test-*")),
        Some(string_matcher::MatchPattern::SafeRegex(r)) if r.regex == ".*/ns/test-.*/.*"
    ));
}
