//! The engine against what `trellis-xds` compiles from Istio policies: each test loads YAML,
//! compiles the sidecar's inbound listener and evaluates its RBAC filters for constructed
//! peers (mTLS identities) and request authentications (JWTs).

use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::runtime::authz::HttpAuthz;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, namespace: foo}\nspec:\n  selector: {app: httpbin}\n  ports: [{name: http, port: 8000, targetPort: 8080}]\n---\n";

fn authz(policies: &str) -> HttpAuthz {
    let yaml = format!("{SERVICE}{policies}");
    let loaded = trellis_config::load_str("p.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let proxy = trellis_xds::ProxyIdentity {
        role: trellis_xds::Role::Sidecar,
        namespace: "foo".into(),
        labels: [("app".to_string(), "httpbin".to_string())].into(),
        ..Default::default()
    };
    let res = trellis_xds::compile(&loaded.snapshot, &loaded.registry, &proxy);
    let inbound = res
        .listeners
        .iter()
        .find(|l| l.name == "virtualInbound")
        .expect("inbound listener");
    let Some(ConfigType::TypedConfig(any)) = &inbound.filter_chains[0].filters[0].config_type
    else {
        panic!("no hcm")
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
    HttpAuthz::from_hcm(&hcm).unwrap_or_else(|e| panic!("{e:?}"))
}

fn policy(action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p-{}, namespace: foo}}\nspec:\n  action: {action}\n  rules:\n{rules}---\n",
        action.to_ascii_lowercase()
    )
}

/// A request to check: everything a test may vary.
struct Req {
    method: Method,
    authority: &'static str,
    path: &'static str,
    headers: HeaderMap,
    peer: Peer,
    auth: Option<RequestAuth>,
    source: SocketAddr,
    remote_ip: IpAddr,
    port: u16,
}

impl Req {
    fn new() -> Req {
        Req {
            method: Method::GET,
            authority: "httpbin.foo:8000",
            path: "/get",
            headers: HeaderMap::new(),
            peer: Peer::default(),
            auth: None,
            source: SocketAddr::from(([127, 0, 0, 1], 40000)),
            remote_ip: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
        }
    }

    fn from(mut self, principal: &str) -> Req {
        let ns = principal
            .split("/ns/")
            .nth(1)
            .and_then(|r| r.split('/').next());
        self.peer = Peer {
            mtls: true,
            principal: Some(Arc::from(principal)),
            namespace: ns.map(Arc::from),
            sni: Some(Arc::from("outbound_.8000_._.httpbin.foo.svc.cluster.local")),
            certificate: None,
        };
        self
    }

    fn jwt(mut self, claims: serde_json::Value) -> Req {
        let claims = claims.as_object().cloned().unwrap_or_default();
        self.auth = Some(RequestAuth {
            principal: "https://accounts.example.com/alice".into(),
            audiences: vec!["httpbin".into(), "other".into()],
            presenter: Some("web".into()),
            claims,
        });
        self
    }

    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.append(k, HeaderValue::from_static(v));
        self
    }

    fn allowed(&self, a: &HttpAuthz) -> bool {
        let view = RequestView {
            method: &self.method,
            authority: self.authority,
            path: self.path,
            query: None,
            scheme: "http",
            headers: &self.headers,
        };
        let s = Subject {
            request: Some(&view),
            source: self.source,
            remote_ip: self.remote_ip,
            destination: SocketAddr::from(([127, 0, 0, 1], self.port)),
            peer: &self.peer,
            auth: self.auth.as_ref(),
            sni: self.peer.sni.as_deref(),
        };
        a.filters.iter().all(|f| f.check(&s) == Verdict::Allowed)
    }
}

#[test]
fn allow_by_principal_namespace_and_method() {
    let a = authz(&policy(
        "ALLOW",
        "  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n    to: [{operation: {methods: [GET]}}]\n  - from: [{source: {namespaces: [dev]}}]\n",
    ));
    assert!(
        Req::new()
            .from("cluster.local/ns/default/sa/sleep")
            .allowed(&a)
    );
    let mut post = Req::new().from("cluster.local/ns/default/sa/sleep");
    post.method = Method::POST;
    assert!(!post.allowed(&a), "only GET for sleep");
    assert!(
        !Req::new()
            .from("cluster.local/ns/default/sa/other")
            .allowed(&a)
    );
    assert!(!Req::new().allowed(&a), "plaintext has no principal");
    let mut dev = Req::new().from("cluster.local/ns/dev/sa/anything");
    dev.method = Method::DELETE;
    assert!(dev.allowed(&a), "any method from namespace dev");
    // Method comparison is exact (Istio: methods are case-sensitive).
    let mut lower = Req::new().from("cluster.local/ns/default/sa/sleep");
    lower.method = Method::from_bytes(b"get").expect("method");
    assert!(!lower.allowed(&a));
}

#[test]
fn deny_with_not_values_and_not_namespaces() {
    // Istio's "deny" task: deny GET unless `x-token: admin`; deny any namespace but foo.
    let a = authz(&policy(
        "DENY",
        "  - to: [{operation: {methods: [GET]}}]\n    when: [{key: 'request.headers[x-token]', notValues: [admin]}]\n  - from: [{source: {notNamespaces: [foo]}}]\n    to: [{operation: {paths: [/ip]}}]\n",
    ));
    assert!(!Req::new().allowed(&a));
    assert!(!Req::new().header("x-token", "guest").allowed(&a));
    assert!(Req::new().header("x-token", "admin").allowed(&a));
    let mut ip = Req::new().header("x-token", "admin");
    ip.path = "/ip";
    assert!(!ip.allowed(&a), "plaintext is not in namespace foo");
    let mut ip = Req::new()
        .header("x-token", "admin")
        .from("cluster.local/ns/foo/sa/x");
    ip.path = "/ip";
    assert!(ip.allowed(&a));
}

#[test]
fn request_principals_and_jwt_claims() {
    let a = authz(&policy(
        "ALLOW",
        "  - from: [{source: {requestPrincipals: ['https://accounts.example.com/*']}}]\n    when:\n    - {key: request.auth.audiences, values: [httpbin]}\n    - {key: request.auth.presenter, notValues: [bad]}\n    - {key: 'request.auth.claims[groups]', values: [admins]}\n    - {key: 'request.auth.claims[org][unit]', values: [ops]}\n",
    ));
    let ok = serde_json::json!({"groups": ["dev", "admins"], "org": {"unit": "ops"}});
    assert!(Req::new().jwt(ok.clone()).allowed(&a));
    assert!(!Req::new().allowed(&a), "no JWT, no request principal");
    let wrong_group = serde_json::json!({"groups": ["dev"], "org": {"unit": "ops"}});
    assert!(!Req::new().jwt(wrong_group).allowed(&a));
    // A single string claim counts as a list of one.
    let scalar = serde_json::json!({"groups": "admins", "org": {"unit": "ops"}});
    assert!(Req::new().jwt(scalar).allowed(&a));
    let mut bad_presenter = Req::new().jwt(ok);
    if let Some(auth) = bad_presenter.auth.as_mut() {
        auth.presenter = Some("bad".into());
    }
    assert!(!bad_presenter.allowed(&a));
}

#[test]
fn ip_blocks_remote_ip_blocks_hosts_ports_and_sni() {
    let a = authz(&policy(
        "ALLOW",
        "  - from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.1.0.0/16]}}]\n  - from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]\n    to: [{operation: {hosts: ['*.EXAMPLE.com'], ports: ['8080']}}]\n  - when: [{key: connection.sni, values: ['*.httpbin.foo.svc.cluster.local']}, {key: source.principal, values: ['*']}]\n",
    ));
    let mut r = Req::new();
    r.source = SocketAddr::from(([10, 2, 3, 4], 1));
    assert!(r.allowed(&a));
    r.source = SocketAddr::from(([10, 1, 3, 4], 1));
    assert!(!r.allowed(&a), "notIpBlocks");
    let mut r = Req::new();
    r.remote_ip = IpAddr::from([203, 0, 113, 9]);
    r.authority = "api.example.COM";
    assert!(r.allowed(&a), "hosts compare case-insensitively");
    r.port = 9090;
    assert!(!r.allowed(&a), "port 9090 is not allowed");
    assert!(
        Req::new().from("cluster.local/ns/x/sa/y").allowed(&a),
        "sni + any principal"
    );
}

#[test]
fn paths_exact_prefix_suffix_and_templates() {
    let a = authz(&policy(
        "ALLOW",
        "  - to: [{operation: {paths: [/exact, '/prefix/*', '*.png', '/store/{*}/items/{**}', '/one/{*}']}}]\n",
    ));
    let check = |path: &'static str| {
        let mut r = Req::new();
        r.path = path;
        r.allowed(&a)
    };
    for ok in [
        "/exact",
        "/prefix/x/y",
        "/a/b.png",
        "/store/s1/items/a/b",
        "/store/s1/items/",
        "/one/x",
    ] {
        assert!(check(ok), "{ok} should be allowed");
    }
    for no in [
        "/exact/",
        "/EXACT",
        "/prefix",
        "/store/s1/items",
        "/store//items/a",
        "/one/x/y",
        "/one/",
    ] {
        assert!(!check(no), "{no} should be denied");
    }
}

#[test]
fn dry_run_and_audit_never_deny_but_count() {
    let dry = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: dry\n  namespace: foo\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules: [{}]\n---\n";
    let a = authz(&format!("{dry}{}", policy("AUDIT", "  - {}\n")));
    assert!(Req::new().allowed(&a));
    assert!(Req::new().allowed(&a));
    let shadow_denied: u64 = a
        .filters
        .iter()
        .map(|f| f.stats.shadow_denied.load(Ordering::Relaxed))
        .sum();
    let logged: u64 = a
        .filters
        .iter()
        .map(|f| f.stats.logged.load(Ordering::Relaxed))
        .sum();
    assert_eq!((shadow_denied, logged), (2, 2));
}

#[test]
fn cidr_contains() {
    let c = |s: &str, len: u32| {
        Cidr::compile(&CidrRange {
            address_prefix: s.into(),
            prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: len }),
        })
        .expect("cidr")
    };
    assert!(c("10.0.0.0", 8).contains([10, 255, 0, 1].into()));
    assert!(!c("10.0.0.0", 8).contains([11, 0, 0, 1].into()));
    assert!(c("0.0.0.0", 0).contains([1, 2, 3, 4].into()));
    assert!(c("::1", 128).contains("::1".parse().expect("ip")));
    assert!(c("127.0.0.0", 8).contains("::ffff:127.0.0.5".parse().expect("ip")));
}

/// The policy index picks the same first matching policy as walking every policy, for a mix of
/// path (exact, prefix), method, header, ipBlocks and principal rules in ALLOW and DENY.
#[test]
fn index_agrees_with_walking_every_policy() {
    let mut yaml = String::new();
    for i in 1..=6 {
        yaml.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-{i}, namespace: foo}}\nspec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [/admin-{i}, '/private-{i}/*'], methods: [DELETE]}}}}]\n  - from: [{{source: {{ipBlocks: [10.{i}.0.0/16]}}}}]\n  - when: [{{key: 'request.headers[x-deny-{i}]', values: ['yes']}}]\n  - from: [{{source: {{principals: ['*/ns/bad-{i}/sa/x', 'cluster.local/ns/evil-{i}/*']}}}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{i}, namespace: foo}}\nspec:\n  action: ALLOW\n  rules:\n  - to: [{{operation: {{paths: ['/only-{i}/*', /exact-{i}]}}}}]\n    when: [{{key: 'request.headers[x-tenant]', values: ['t-{i}']}}]\n  - to: [{{operation: {{notPaths: ['/no-{i}']}}}}]\n    from: [{{source: {{ipBlocks: ['192.168.{i}.0/24']}}}}]\n---\n"
        ));
    }
    let a = authz(&yaml);
    let (policies, unindexed) = a
        .filters
        .iter()
        .flat_map(|f| [&f.rules, &f.shadow].into_iter().flatten())
        .fold((0, 0), |(n, u), r| {
            (n + r.policies.len(), u + r.index.unindexed())
        });
    assert_eq!(
        (policies, unindexed),
        (36, 6),
        "only the principal rules are walked on every request"
    );
    let mut checked = 0;
    for path in [
        "/",
        "/admin-2",
        "/private-3/x",
        "/only-4/a",
        "/exact-5",
        "/no-6",
        "/x",
    ] {
        for method in [Method::GET, Method::DELETE] {
            for src in [
                [127, 0, 0, 1],
                [10, 3, 9, 9],
                [192, 168, 2, 7],
                [192, 168, 6, 7],
            ] {
                for (hk, hv) in [("x-other", "1"), ("x-deny-4", "yes"), ("x-tenant", "t-1")] {
                    for principal in [
                        None,
                        Some("td/ns/bad-2/sa/x"),
                        Some("cluster.local/ns/evil-5/sa/y"),
                    ] {
                        let mut r = Req::new().header(hk, hv);
                        if let Some(p) = principal {
                            r = r.from(p);
                        }
                        r.path = path;
                        r.method = method.clone();
                        r.source = SocketAddr::from((src, 1));
                        let view = RequestView {
                            method: &r.method,
                            authority: r.authority,
                            path: r.path,
                            query: None,
                            scheme: "http",
                            headers: &r.headers,
                        };
                        let s = Subject {
                            request: Some(&view),
                            source: r.source,
                            remote_ip: r.remote_ip,
                            destination: SocketAddr::from(([127, 0, 0, 1], r.port)),
                            peer: &r.peer,
                            auth: None,
                            sni: None,
                        };
                        for f in &a.filters {
                            for rules in [&f.rules, &f.shadow].into_iter().flatten() {
                                let walked = rules.policies.iter().position(|p| p.matches(&s));
                                let indexed = rules.index.first_match(&rules.policies, &s);
                                assert_eq!(
                                    walked, indexed,
                                    "{path} {method} {src:?} {hk} {principal:?}"
                                );
                                checked += usize::from(walked.is_some());
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        checked > 100,
        "the requests match some policies ({checked})"
    );
}

/// Principal wildcards compare against `spiffe://<principal>` without building that string.
#[test]
fn principal_prefix_and_suffix_wildcards() {
    let a = authz(&policy(
        "ALLOW",
        "  - from: [{source: {principals: ['*/ns/default/sa/sleep', 'cluster.local/ns/dev/*', spiffe-less]}}]\n",
    ));
    assert!(Req::new().from("any.td/ns/default/sa/sleep").allowed(&a));
    assert!(Req::new().from("cluster.local/ns/dev/sa/x").allowed(&a));
    assert!(!Req::new().from("cluster.local/ns/devx/sa/x").allowed(&a));
    assert!(!Req::new().from("td/ns/default/sa/sleepy").allowed(&a));
    assert!(Req::new().from("spiffe-less").allowed(&a));
    assert!(!Req::new().from("spiffe-les").allowed(&a));
}
