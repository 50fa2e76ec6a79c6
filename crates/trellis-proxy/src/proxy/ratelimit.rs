//! Rate limiting on the request path, after routing and before the route's actions: each of the
//! route's `rate_limits` builds its descriptor from the request (path, method, authority,
//! headers, the client address after `xff_num_trusted_hops`, the mTLS peer's principal, the
//! verified JWT's claims), and the listener's filter of that stage decides: a local token bucket
//! (per descriptor, or per distinct value), or the global service (`ratelimit/global.rs`).
//!
//! An over-limit request gets 429 (gRPC: 200 with `grpc-status: 8`), flag `RL`,
//! `x-envoy-ratelimited: true`, `x-ratelimit-limit`/`-remaining`/`-reset` from the tightest
//! limit and `Retry-After`; local limits answer `local_rate_limited` as Envoy does. Shadow limits
//! only count. When the service cannot answer, a fail-closed filter answers 500 with flag `RLSE`.
//! Counts every decision in `trellis_ratelimit_requests_total` (`ratelimit/metrics.rs`).

pub mod global;
pub mod metrics;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{ConnInfo, Local};
use crate::runtime::ratelimit::{
    Action, AuthnSource, GlobalFilter, HeaderSource, HttpRateLimits, LocalFilter, RouteLimit,
    RouteLimits, Stage, Taken,
};
use crate::runtime::route::RequestView;
use crate::runtime::{HttpSettings, Runtime};
use crate::security::RequestAuth;

pub const LOCAL_BODY: &str = "local_rate_limited";

/// What the request looks like to the descriptor actions.
pub struct Request<'a> {
    pub view: &'a RequestView<'a>,
    pub parts: &'a Parts,
    pub conn: &'a ConnInfo,
    pub settings: &'a HttpSettings,
    pub grpc: bool,
}

/// The tightest limit seen, for the response headers.
#[derive(Debug, Clone, Copy)]
struct Tightest {
    limit: u64,
    remaining: u64,
    reset: Duration,
}

impl Tightest {
    fn keep(slot: &mut Option<Tightest>, t: Tightest) {
        if slot.is_none_or(|s| t.remaining < s.remaining) {
            *slot = Some(t);
        }
    }
}

/// Global checks still to make: the descriptors of each global filter, in stage order.
pub struct Pending<'a> {
    globals: Vec<(
        &'a GlobalFilter,
        Vec<&'a RouteLimit>,
        Vec<RateLimitDescriptor>,
    )>,
    grpc: bool,
}

/// Checks the route's local limits (synchronously, no allocation for constant descriptors) and
/// gathers its global descriptors; `Err` is the answer for a rejected request, `Some` the global
/// checks to run with [`Pending::run`] (boxed by the caller, so the request's future stays small
/// when there are none).
pub fn check_local<'a>(
    filters: Option<&'a HttpRateLimits>,
    limits: Option<&'a RouteLimits>,
    req: &Request<'_>,
) -> Result<Option<Pending<'a>>, Local> {
    let (Some(filters), Some(limits)) = (filters, limits) else {
        return Ok(None);
    };
    let mut rejected: Option<(Tightest, bool)> = None;
    let mut globals: Vec<(&GlobalFilter, Vec<&RouteLimit>, Vec<RateLimitDescriptor>)> = Vec::new();
    for limit in &limits.limits {
        match filters.stage(limit.stage) {
            None => {}
            Some(Stage::Local(f)) => {
                if let Some(over) = local(f, limit, req)
                    && rejected.is_none()
                {
                    rejected = Some((over, f.x_ratelimit_headers));
                }
            }
            Some(Stage::Global(f)) => {
                let mut d = Entries::default();
                if !descriptor(limit, req, &mut d) {
                    continue;
                }
                let d = RateLimitDescriptor {
                    entries: d
                        .as_slice()
                        .iter()
                        .map(|(k, v)| rate_limit_descriptor::Entry {
                            key: (*k).into(),
                            value: v.to_string(),
                        })
                        .collect(),
                    ..Default::default()
                };
                match globals.iter_mut().find(|(g, _, _)| std::ptr::eq(*g, &**f)) {
                    Some((_, ls, ds)) => {
                        ls.push(limit);
                        ds.push(d);
                    }
                    None => globals.push((f, vec![limit], vec![d])),
                }
            }
        }
    }
    if let Some((t, headers)) = rejected {
        return Err(over_limit(t, headers, req.grpc, true));
    }
    Ok((!globals.is_empty()).then_some(Pending {
        globals,
        grpc: req.grpc,
    }))
}

impl Pending<'_> {
    /// Asks the rate limit service for each global filter and applies the answers.
    pub async fn run(self, rt: &Runtime) -> Result<(), Local> {
        for (f, ls, ds) in self.globals {
            let cluster = rt.clusters.get(&f.cluster);
            let answer = global::should_rate_limit(
                cluster.map(|c| &**c),
                &f.cluster,
                &f.domain,
                ds,
                f.timeout,
            )
            .await;
            match answer {
                Err(e) => {
                    tracing::debug!(error = %e, cluster = %f.cluster, "rate limit service failed");
                    for l in &ls {
                        l.counters(true).error.inc();
                    }
                    if f.failure_mode_deny {
                        let msg = format!("rate limit service unavailable: {e}\n");
                        return Err(Local::new(StatusCode::INTERNAL_SERVER_ERROR, "RLSE", msg));
                    }
                }
                Ok(resp) => {
                    let over = resp.overall_code == Code::OverLimit as i32;
                    let mut tightest = None;
                    for (i, l) in ls.iter().enumerate() {
                        let status = resp.statuses.get(i);
                        let counters = l.counters(true);
                        let counter = match status.map(|s| s.code) {
                            Some(c) if c == Code::OverLimit as i32 && over => &counters.over_limit,
                            // Over in its status but not overall: a shadow limit.
                            Some(c) if c == Code::OverLimit as i32 => &counters.shadow_over_limit,
                            _ => &counters.ok,
                        };
                        counter.inc();
                        if let Some(t) = status.and_then(status_limit) {
                            Tightest::keep(&mut tightest, t);
                        }
                    }
                    if over {
                        let t = tightest.unwrap_or(Tightest {
                            limit: 0,
                            remaining: 0,
                            reset: Duration::ZERO,
                        });
                        return Err(over_limit(t, f.x_ratelimit_headers, self.grpc, false));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A descriptor's entries: inline up to [`INLINE`], so building one does not allocate.
const INLINE: usize = 6;

pub struct Entries<'a> {
    inline: [(&'a str, Cow<'a, str>); INLINE],
    len: usize,
    heap: Vec<(&'a str, Cow<'a, str>)>,
}

impl Default for Entries<'_> {
    fn default() -> Self {
        Entries {
            inline: std::array::from_fn(|_| ("", Cow::Borrowed(""))),
            len: 0,
            heap: Vec::new(),
        }
    }
}

impl<'a> Entries<'a> {
    fn push(&mut self, e: (&'a str, Cow<'a, str>)) {
        if self.len < INLINE && self.heap.is_empty() {
            self.inline[self.len] = e;
            self.len += 1;
            return;
        }
        if self.heap.is_empty() {
            self.heap.extend(self.inline[..self.len].iter().cloned());
        }
        self.heap.push(e);
    }

    pub fn as_slice(&self) -> &[(&'a str, Cow<'a, str>)] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

/// Takes a token for `limit` from the local filter's bucket; `Some` when the request is over an
/// enforced limit.
fn local(f: &LocalFilter, limit: &RouteLimit, req: &Request<'_>) -> Option<Tightest> {
    let mut entries = Entries::default();
    if !descriptor(limit, req, &mut entries) {
        return None;
    }
    let entries = entries.as_slice();
    let d = f.find(entries)?;
    let now = tokio::time::Instant::now();
    let taken: Taken = if d.has_wildcard() {
        let mut key = String::new();
        for ((_, want), (_, v)) in d.entries.iter().zip(entries) {
            if want.is_none() {
                key.push_str(v);
                key.push('\u{1f}');
            }
        }
        d.buckets.for_value(&key).take(now)
    } else {
        d.buckets.single.take(now)
    };
    let counters = limit.counters(false);
    if taken.allowed {
        counters.ok.inc();
        return None;
    }
    if d.shadow || !f.enforced {
        counters.shadow_over_limit.inc();
        return None;
    }
    counters.over_limit.inc();
    Some(Tightest {
        limit: u64::from(taken.limit),
        remaining: 0,
        reset: taken.reset,
    })
}

fn status_limit(s: &DescriptorStatus) -> Option<Tightest> {
    let limit = s.current_limit.as_ref()?;
    let reset = s
        .duration_until_reset
        .as_ref()
        .map(crate::runtime::duration)
        .unwrap_or_default();
    Some(Tightest {
        limit: u64::from(limit.requests_per_unit),
        remaining: u64::from(s.limit_remaining),
        reset,
    })
}

/// The 429 (or gRPC RESOURCE_EXHAUSTED) answer.
fn over_limit(t: Tightest, x_headers: bool, grpc: bool, local: bool) -> Local {
    let mut h = HeaderMap::new();
    h.insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
    let reset = t.reset.as_secs() + u64::from(t.reset.subsec_nanos() > 0);
    if x_headers && t.limit > 0 {
        h.insert("x-ratelimit-limit", HeaderValue::from(t.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(t.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    }
    h.insert(http::header::RETRY_AFTER, HeaderValue::from(reset.max(1)));
    let body = if local { LOCAL_BODY } else { "" };
    let mut answer = Local {
        status: StatusCode::TOO_MANY_REQUESTS,
        flag: "RL",
        message: body.into(),
        body: Some(Bytes::from_static(body.as_bytes())),
        headers: Some(Box::new(h)),
    };
    if grpc {
        answer.body = Some(Bytes::new());
        super::actions::grpc_local(
            &mut answer,
            8,
            if local { LOCAL_BODY } else { "rate limited" },
        );
    }
    answer
}

/// Builds the descriptor `limit` makes for this request into `out`; `false` when an action
/// produces no entry (the limit does not apply to the request).
fn descriptor<'a>(limit: &'a RouteLimit, req: &'a Request<'a>, out: &mut Entries<'a>) -> bool {
    for a in &limit.actions {
        match entry(a, req) {
            Some(e) => out.push(e),
            None => return false,
        }
    }
    true
}

fn header_str<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn entry<'a>(a: &'a Action, req: &'a Request<'a>) -> Option<(&'a str, Cow<'a, str>)> {
    match a {
        Action::Generic { key, value } => Some((key, Cow::Borrowed(value))),
        Action::Header { key, source } => {
            let v = match source {
                HeaderSource::Path => req.view.path,
                HeaderSource::Method => req.view.method.as_str(),
                HeaderSource::Authority => req.view.authority,
                HeaderSource::Header(n) => header_str(req.view.headers, n)?,
            };
            Some((key, Cow::Borrowed(v)))
        }
        Action::HeaderMatch {
            key,
            value,
            expect_match,
            headers,
        } => {
            let all = headers.iter().all(|h| h.matches(req.view));
            (all == *expect_match).then_some((&**key, Cow::Borrowed(&**value)))
        }
        Action::RemoteAddress => Some(("remote_address", Cow::Owned(remote(req)))),
        Action::Authn {
            key,
            source,
            matcher,
            default,
            skip_if_absent,
        } => {
            let value: Option<Cow<'a, str>> = match source {
                AuthnSource::Principal => req.conn.peer.principal.as_deref().map(Cow::Borrowed),
                AuthnSource::SourceIp => Some(Cow::Owned(remote(req))),
                AuthnSource::Claim(path) => claim(req.parts, path),
            };
            let value = match value {
                Some(v) => v,
                None if !default.is_empty() => Cow::Borrowed(&**default),
                None if *skip_if_absent => return Some((key, Cow::Borrowed(""))),
                None => return None,
            };
            match matcher {
                None => Some((key, value)),
                Some((m, fixed)) => m
                    .matches(&value)
                    .then_some((&**key, Cow::Borrowed(&**fixed))),
            }
        }
    }
}

fn remote(req: &Request<'_>) -> String {
    let ip = super::authz::remote_ip(req.conn.remote.ip(), req.settings, req.parts);
    let mut s = String::with_capacity(39);
    let _ = write!(s, "{ip}");
    s
}

/// A claim of the verified JWT (`a.b` nested); strings as they are, numbers and booleans
/// rendered, anything else absent.
fn claim<'a>(parts: &'a Parts, path: &[Box<str>]) -> Option<Cow<'a, str>> {
    let auth = parts.extensions.get::<RequestAuth>()?;
    let (first, rest) = path.split_first()?;
    let mut v = auth.claims.get(&**first)?;
    for p in rest {
        v = v.get(&**p)?;
    }
    match v {
        serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
        serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
        serde_json::Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::route::v3::{self as xroute, RouteAction};
    use trellis_config::load_str;
    use trellis_xds::{ProxyIdentity, compile};

    use super::*;

    /// The route `rate_limits` the compiler emits for a JWT-claim match and the peer principal,
    /// read back by the runtime and evaluated on requests.
    fn limits() -> Arc<RouteLimits> {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: istio-system}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  http: [{name: r, route: [{destination: {host: a.example}}]}]\n---\napiVersion: trellis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: p, namespace: istio-system}\nspec:\n  limits:\n  - name: gold\n    descriptors:\n    - jwtClaim: {claim: plan.tier, match: {exact: gold}}\n    - sourcePrincipal: {}\n    - remoteAddress: {}\n    local: {maxTokens: 1, fillInterval: 1s}\n";
        let loaded = load_str("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
        let proxy = ProxyIdentity {
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            namespace: "istio-system".into(),
            ..ProxyIdentity::default()
        };
        let res = compile(&loaded.snapshot, &loaded.registry, &proxy);
        let route: &xroute::Route = res
            .routes
            .iter()
            .flat_map(|rc| &rc.virtual_hosts)
            .flat_map(|vh| &vh.routes)
            .find(|r| r.name == "r")
            .unwrap_or_else(|| panic!("no route r"));
        assert!(matches!(
            &route.action,
            Some(xroute::route::Action::Route(RouteAction { rate_limits, .. })) if rate_limits.len() == 1
        ));
        RouteLimits::compile(route)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no limits"))
    }

    fn entries(
        limits: &RouteLimits,
        claims: serde_json::Value,
        principal: Option<&str>,
    ) -> Option<Vec<(String, String)>> {
        let mut req = http::Request::builder()
            .uri("/x")
            .header("x-forwarded-for", "203.0.113.9")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        if let serde_json::Value::Object(claims) = claims {
            req.extensions_mut().insert(RequestAuth {
                principal: "iss/sub".into(),
                audiences: Vec::new(),
                presenter: None,
                claims,
            });
        }
        let (parts, ()) = req.into_parts();
        let addr = SocketAddr::from(([127, 0, 0, 1], 5));
        let mut conn = ConnInfo::new(Arc::from("l"), addr, addr);
        conn.peer.principal = principal.map(Arc::from);
        let settings = HttpSettings::default();
        let view = RequestView {
            method: &parts.method,
            authority: "a",
            path: parts.uri.path(),
            query: None,
            scheme: "http",
            headers: &parts.headers,
        };
        let req = Request {
            view: &view,
            parts: &parts,
            conn: &conn,
            settings: &settings,
            grpc: false,
        };
        let mut d = Entries::default();
        descriptor(&limits.limits[0], &req, &mut d).then(|| {
            d.as_slice()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    #[test]
    fn claims_principal_and_address_build_the_contracts_descriptor() {
        let l = limits();
        assert_eq!(&*l.limits[0].policy, "istio-system/p");
        assert_eq!(&*l.limits[0].name, "gold");
        let gold = serde_json::json!({"plan": {"tier": "gold"}});
        let got = entries(&l, gold.clone(), Some("cluster.local/ns/a/sa/b"));
        let want: Vec<(String, String)> = [
            ("limit", "istio-system/p/gold"),
            ("claim.plan.tier", "exact:gold"),
            ("source_principal", "cluster.local/ns/a/sa/b"),
            // Without `use_remote_address` Envoy's client address is the last XFF entry.
            ("remote_address", "203.0.113.9"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, Some(want));
        // A claim that fails the match, a missing token, no peer: not counted.
        let silver = serde_json::json!({"plan": {"tier": "silver"}});
        assert_eq!(entries(&l, silver, Some("p")), None);
        assert_eq!(entries(&l, serde_json::Value::Null, Some("p")), None);
        assert_eq!(entries(&l, gold, None), None);
    }
}
