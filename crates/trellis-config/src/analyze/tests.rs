//! Analysis warnings: unknown hosts, undefined subsets, conflicting and dangling bindings.

use crate::load::tests::BOOKINFO;
use crate::*;

fn warnings(yaml: &str) -> Vec<Diagnostic> {
    match load_str("test.yaml", yaml) {
        Ok(l) => l.warnings,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

#[test]
fn bookinfo_is_clean() {
    let w = warnings(BOOKINFO);
    assert!(w.is_empty(), "{w:#?}");
}

#[test]
fn reports_unknown_host_subset_conflict_and_missing_gateway() {
    let extra = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-canary}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: [\"bookinfo.example.com\"]
  gateways: [bookinfo-gateway, istio-system/missing-gw]
  http:
  - route:
    - destination: {host: productpage.prod}
";
    let w = warnings(&format!("{BOOKINFO}{extra}"));
    assert!(w.iter().all(|d| d.severity == Severity::Warning));
    let find = |path: &str, needle: &str| {
        w.iter()
            .any(|d| d.path == path && d.message.contains(needle))
    };
    assert!(
        find(
            "spec.http[0].route[0].destination.subset",
            "subset `v9` is not defined"
        ),
        "{w:#?}"
    );
    assert!(
        find(
            "spec.hosts[0]",
            "also claimed by VirtualService default/reviews"
        ),
        "{w:#?}"
    );
    assert!(
        find(
            "spec.gateways[1]",
            "gateway `istio-system/missing-gw` does not exist"
        ),
        "{w:#?}"
    );
    assert!(
        find(
            "spec.http[0].route[0].destination.host",
            "host `productpage.prod` is not in the service registry"
        ),
        "{w:#?}"
    );
    assert_eq!(w.len(), 4, "{w:#?}");
    let subset = w.iter().find(|d| d.path.ends_with("subset")).unwrap();
    assert_eq!(subset.resource, "VirtualService default/reviews-canary");
    assert_eq!(
        subset.to_string(),
        format!(
            "test.yaml:{}:{}: warning: VirtualService default/reviews-canary: spec.http[0].route[0].destination.subset: subset `v9` is not defined by any DestinationRule for host `reviews.default.svc.cluster.local`",
            subset.line, subset.col
        )
    );
}

#[test]
fn same_host_on_different_gateways_is_fine() {
    let vs = |name: &str, gw: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [reviews]\n  gateways: [{gw}]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n"
        )
    };
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers: [{port: {number: 80, protocol: HTTP, name: http}, hosts: ['*']}]\n";
    let svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 80, name: http}]}\n";
    let w = warnings(&format!("{gw}{svc}{}{}", vs("a", "mesh"), vs("b", "gw")));
    assert!(w.is_empty(), "{w:#?}");
}

#[test]
fn endpoint_slice_without_service_label_is_flagged() {
    let w = warnings(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: []\n",
    );
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("kubernetes.io/service-name"));
}

#[test]
fn rate_limit_routes_naming_no_route_are_warned() {
    let extra = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: named}
spec:
  hosts: [reviews]
  http:
  - name: reviews-v2
    route: [{destination: {host: reviews, subset: v2}}]
---
apiVersion: trellis.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: istio-system}
spec:
  rateLimitService: {service: ratelimit.istio-system.svc.cluster.local, port: 8081}
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: rl}
spec:
  routes: [reviews-v2, nosuch]
  limits: [{name: a, local: {maxTokens: 1, fillInterval: 1s}}]
---
apiVersion: trellis.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: q}
spec:
  routes: [gone]
  consumer: {header: x-api-key}
  quotas: [{name: d, requests: 5}]
";
    let yaml = format!("{BOOKINFO}{extra}");
    let w = warnings(&yaml);
    let text: Vec<String> = w.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("spec.routes[1]")
            && t.contains("no VirtualService has an HTTP route named `nosuch`")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("QuotaPolicy") && t.contains("`gone`")),
        "{text:#?}"
    );
    assert!(
        !text.iter().any(|t| t.contains("`reviews-v2`")),
        "{text:#?}"
    );
}
