//! Envoy RBAC for the hot path: the `envoy.filters.http.rbac` and `envoy.filters.network.rbac`
//! configs a listener carries, compiled once into matcher trees (policies → permissions and
//! principals) and evaluated per request or connection against a [`Subject`]. Owns the
//! matching semantics of Envoy's RBAC (a policy matches when any permission and any principal
//! match; ALLOW allows only on a match, DENY denies on a match, LOG never denies; shadow rules
//! only count). It does not answer requests or close connections (`proxy/authz.rs` does).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission as XPermission, Policy as XPolicy, Principal as XPrincipal, Rbac as XRbac,
    permission, principal, rbac,
};
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, ValueMatcher, list_matcher, metadata_matcher, path_matcher, value_matcher,
};
use prost::Message;

use super::route::{HeaderMatch, RequestView, StringMatch};
use crate::security::{Peer, RequestAuth};

/// The dynamic-metadata namespace JWT authentication fills (Istio's `istio_authn`).
const AUTHN_METADATA: &str = "istio_authn";

/// One RBAC filter: enforced rules and shadow rules.
#[derive(Debug)]
pub struct Rbac {
    pub rules: Option<Rules>,
    pub shadow: Option<Rules>,
    /// `shadow_rules_stat_prefix` (Istio: `istio_dry_run_allow_` / `istio_dry_run_deny_`).
    pub shadow_prefix: Arc<str>,
    pub stats: Arc<RbacStats>,
}

#[derive(Debug)]
pub struct Rules {
    pub action: Action,
    policies: Vec<Policy>,
    /// Which policies a request can match, built from `policies` at compile time.
    index: index::Index,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// Envoy's `rbac.allowed` / `denied` / `shadow_allowed` / `shadow_denied` (and `logged`).
#[derive(Debug, Default)]
pub struct RbacStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub shadow_allowed: AtomicU64,
    pub shadow_denied: AtomicU64,
    pub logged: AtomicU64,
}

#[derive(Debug)]
struct Policy {
    name: Arc<str>,
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
}

#[derive(Debug)]
enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    Path(StringMatch),
    Template(PathTemplate),
    DestinationIp(Cidr),
    DestinationPort(u16),
    DestinationPortRange(i32, i32),
    ServerName(StringMatch),
    /// A permission that needs the HTTP request (never matches on a TCP connection).
    Metadata(Metadata),
}

#[derive(Debug)]
enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// `None`: any verified peer certificate.
    Authenticated(Option<StringMatch>),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatch),
    Path(StringMatch),
    Metadata(Metadata),
}

#[derive(Debug, Clone, Copy)]
struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// A `istio_authn` metadata matcher: which value of the request's JWT, and how it must match.
#[derive(Debug)]
struct Metadata {
    path: Vec<Box<str>>,
    value: Value,
    invert: bool,
}

#[derive(Debug)]
enum Value {
    String(StringMatch),
    Present(bool),
    /// A list with one element that matches (a scalar counts as a list of one).
    OneOf(Box<Value>),
}

/// Envoy's URI template (`/a/*/b/**`): `*` one segment, `**` the rest.
#[derive(Debug)]
struct PathTemplate {
    segments: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Literal(Box<str>),
    One,
    Rest,
}

/// What RBAC looks at for one request (or one TCP connection: `request` is `None`).
pub struct Subject<'a> {
    pub request: Option<&'a RequestView<'a>>,
    /// The downstream connection's peer address.
    pub source: SocketAddr,
    /// The client address after `x-forwarded-for` and trusted hops (`remote.ip`).
    pub remote_ip: IpAddr,
    pub destination: SocketAddr,
    pub peer: &'a Peer,
    pub auth: Option<&'a RequestAuth>,
    /// SNI of the connection (`connection.sni`).
    pub sni: Option<&'a str>,
}

/// The outcome of one RBAC filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Denied; the name of the DENY policy that matched (`None` for ALLOW with no match).
    Denied(Option<Arc<str>>),
}

impl Rbac {
    /// From the `rules`/`shadow_rules` of an HTTP or network RBAC filter.
    pub fn compile(
        rules: Option<&XRbac>,
        shadow: Option<&XRbac>,
        shadow_prefix: &str,
    ) -> Result<Rbac, String> {
        Ok(Rbac {
            shadow_prefix: shadow_prefix.into(),
            rules: rules.map(|r| Rules::compile(r, "rules")).transpose()?,
            shadow: shadow
                .map(|r| Rules::compile(r, "shadow_rules"))
                .transpose()?,
            stats: Arc::default(),
        })
    }

    /// Evaluates enforced and shadow rules, counting both.
    pub fn check(&self, s: &Subject<'_>) -> Verdict {
        self.check_with_shadow(s).0
    }

    /// [`Rbac::check`], and the shadow policy that matched (Envoy's
    /// `shadow_effective_policy_id`).
    pub fn check_with_shadow(&self, s: &Subject<'_>) -> (Verdict, Option<Arc<str>>) {
        let mut effective = None;
        if let Some(shadow) = &self.shadow {
            let matched = shadow.matched(s);
            let denied = match shadow.action {
                Action::Allow => matched.is_none(),
                Action::Deny => matched.is_some(),
                Action::Log => false,
            };
            effective = matched.map(|p| Arc::clone(&p.name));
            let c = if denied {
                &self.stats.shadow_denied
            } else {
                &self.stats.shadow_allowed
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        (self.check_rules(s), effective)
    }

    fn check_rules(&self, s: &Subject<'_>) -> Verdict {
        let Some(rules) = &self.rules else {
            return Verdict::Allowed;
        };
        if rules.action == Action::Log {
            // LOG never denies; it marks the requests its policies match.
            if rules.matched(s).is_some() {
                self.stats.logged.fetch_add(1, Ordering::Relaxed);
            }
            return Verdict::Allowed;
        }
        let v = rules.verdict(s);
        let c = match &v {
            Verdict::Allowed => &self.stats.allowed,
            Verdict::Denied(_) => &self.stats.denied,
        };
        c.fetch_add(1, Ordering::Relaxed);
        v
    }
}

impl Rules {
    fn compile(r: &XRbac, field: &str) -> Result<Rules, String> {
        let action = match rbac::Action::try_from(r.action) {
            Ok(rbac::Action::Allow) => Action::Allow,
            Ok(rbac::Action::Deny) => Action::Deny,
            Ok(rbac::Action::Log) => Action::Log,
            _ => return Err(format!("{field}.action: {} is not supported", r.action)),
        };
        let mut names: Vec<&String> = r.policies.keys().collect();
        names.sort();
        let policies: Vec<Policy> = names
            .into_iter()
            .map(|n| {
                Policy::compile(&r.policies[n])
                    .map(|mut p| {
                        p.name = n.as_str().into();
                        p
                    })
                    .map_err(|e| format!("{field}.policies[{n:?}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let index = index::Index::build(&policies);
        Ok(Rules {
            action,
            policies,
            index,
        })
    }

    /// The first matching policy, by name (Envoy's order is a map's; names make it stable).
    fn matched(&self, s: &Subject<'_>) -> Option<&Policy> {
        self.index
            .first_match(&self.policies, s)
            .map(|i| &self.policies[i])
    }

    fn verdict(&self, s: &Subject<'_>) -> Verdict {
        match self.action {
            Action::Allow => match self.matched(s) {
                Some(_) => Verdict::Allowed,
                None => Verdict::Denied(None),
            },
            Action::Deny => match self.matched(s) {
                Some(p) => Verdict::Denied(Some(Arc::clone(&p.name))),
                None => Verdict::Allowed,
            },
            Action::Log => Verdict::Allowed,
        }
    }
}

impl Policy {
    fn compile(p: &XPolicy) -> Result<Policy, String> {
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err("CEL conditions are not supported".into());
        }
        Ok(Policy {
            name: Arc::from(""),
            permissions: p
                .permissions
                .iter()
                .map(Permission::compile)
                .collect::<Result<_, _>>()?,
            principals: p
                .principals
                .iter()
                .map(Principal::compile)
                .collect::<Result<_, _>>()?,
        })
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(s))
            && self.principals.iter().any(|p| p.matches(s))
    }
}

impl Permission {
    #[allow(deprecated)]
    fn compile(p: &XPermission) -> Result<Permission, String> {
        use permission::Rule as R;
        let all = |rules: &[XPermission]| -> Result<Vec<Permission>, String> {
            rules.iter().map(Permission::compile).collect()
        };
        Ok(match &p.rule {
            Some(R::Any(true)) => Permission::Any,
            Some(R::AndRules(s)) => Permission::And(all(&s.rules)?),
            Some(R::OrRules(s)) => Permission::Or(all(&s.rules)?),
            Some(R::NotRule(p)) => Permission::Not(Box::new(Permission::compile(p)?)),
            Some(R::Header(h)) => Permission::Header(HeaderMatch::compile(h)?),
            Some(R::UrlPath(m)) => match &m.rule {
                Some(path_matcher::Rule::Path(s)) => Permission::Path(StringMatch::compile(s)?),
                None => return Err("url_path without a path matcher".into()),
            },
            Some(R::UriTemplate(t)) => {
                let any = t
                    .typed_config
                    .as_ref()
                    .ok_or("uri_template without typed_config")?;
                let cfg = UriTemplateMatchConfig::decode(any.value.as_slice())
                    .map_err(|e| format!("uri_template: {e}"))?;
                Permission::Template(PathTemplate::compile(&cfg.path_template)?)
            }
            Some(R::DestinationIp(c)) => Permission::DestinationIp(Cidr::compile(c)?),
            Some(R::DestinationPort(port)) => Permission::DestinationPort(
                u16::try_from(*port)
                    .map_err(|_| format!("destination_port {port} out of range"))?,
            ),
            Some(R::DestinationPortRange(r)) => Permission::DestinationPortRange(r.start, r.end),
            Some(R::RequestedServerName(s)) => Permission::ServerName(StringMatch::compile(s)?),
            Some(R::Metadata(m)) => Permission::Metadata(Metadata::compile(m)?),
            other => {
                return Err(format!(
                    "permission {:?} is not supported",
                    other.as_ref().map(rule_name)
                ));
            }
        })
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(s)),
            Permission::Or(any) => any.iter().any(|p| p.matches(s)),
            Permission::Not(p) => !p.matches(s),
            Permission::Header(h) => s.request.is_some_and(|r| h.matches(r)),
            Permission::Path(m) => s.request.is_some_and(|r| m.matches(r.path)),
            Permission::Template(t) => s.request.is_some_and(|r| t.matches(r.path)),
            Permission::DestinationIp(c) => c.contains(s.destination.ip()),
            Permission::DestinationPort(p) => s.destination.port() == *p,
            Permission::DestinationPortRange(a, b) => {
                (*a..*b).contains(&i32::from(s.destination.port()))
            }
            Permission::ServerName(m) => m.matches(s.sni.unwrap_or("")),
            Permission::Metadata(m) => m.matches(s.auth),
        }
    }
}

fn rule_name(r: &permission::Rule) -> &'static str {
    use permission::Rule as R;
    match r {
        R::Any(_) => "any: false",
        R::Matcher(_) => "matcher",
        R::SourcedMetadata(_) => "sourced_metadata",
        _ => "this rule",
    }
}

impl Principal {
    #[allow(deprecated)]
    fn compile(p: &XPrincipal) -> Result<Principal, String> {
        use principal::Identifier as I;
        let all = |ids: &[XPrincipal]| -> Result<Vec<Principal>, String> {
            ids.iter().map(Principal::compile).collect()
        };
        Ok(match &p.identifier {
            Some(I::Any(true)) => Principal::Any,
            Some(I::AndIds(s)) => Principal::And(all(&s.ids)?),
            Some(I::OrIds(s)) => Principal::Or(all(&s.ids)?),
            Some(I::NotId(p)) => Principal::Not(Box::new(Principal::compile(p)?)),
            Some(I::Authenticated(a)) => Principal::Authenticated(
                a.principal_name
                    .as_ref()
                    .map(StringMatch::compile)
                    .transpose()?,
            ),
            Some(I::DirectRemoteIp(c)) | Some(I::SourceIp(c)) => {
                Principal::DirectRemoteIp(Cidr::compile(c)?)
            }
            Some(I::RemoteIp(c)) => Principal::RemoteIp(Cidr::compile(c)?),
            Some(I::Header(h)) => Principal::Header(HeaderMatch::compile(h)?),
            Some(I::UrlPath(m)) => match &m.rule {
                Some(path_matcher::Rule::Path(s)) => Principal::Path(StringMatch::compile(s)?),
                None => return Err("url_path without a path matcher".into()),
            },
            Some(I::Metadata(m)) => Principal::Metadata(Metadata::compile(m)?),
            _ => return Err("principal identifier is not supported".into()),
        })
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(s)),
            Principal::Or(any) => any.iter().any(|p| p.matches(s)),
            Principal::Not(p) => !p.matches(s),
            Principal::Authenticated(m) => match (&s.peer.principal, m) {
                (Some(_), None) => s.peer.mtls,
                (Some(p), Some(m)) => m.matches_prefixed("spiffe://", p),
                (None, _) => false,
            },
            Principal::DirectRemoteIp(c) => c.contains(s.source.ip()),
            Principal::RemoteIp(c) => c.contains(s.remote_ip),
            Principal::Header(h) => s.request.is_some_and(|r| h.matches(r)),
            Principal::Path(m) => s.request.is_some_and(|r| m.matches(r.path)),
            Principal::Metadata(m) => m.matches(s.auth),
        }
    }
}

impl Cidr {
    fn compile(c: &CidrRange) -> Result<Cidr, String> {
        let addr: IpAddr = c
            .address_prefix
            .parse()
            .map_err(|_| format!("{:?} is not an IP address", c.address_prefix))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.map_or(max, |v| v.value);
        if len > max {
            return Err(format!("prefix_len {len} is more than {max}"));
        }
        Ok(Cidr {
            addr,
            len: len as u8,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Metadata {
    fn compile(m: &MetadataMatcher) -> Result<Metadata, String> {
        if m.filter != AUTHN_METADATA {
            return Err(format!(
                "metadata filter {:?} is not supported; only {AUTHN_METADATA}",
                m.filter
            ));
        }
        let path = m
            .path
            .iter()
            .map(|s| match &s.segment {
                Some(metadata_matcher::path_segment::Segment::Key(k)) => Ok(k.as_str().into()),
                None => Err("metadata path segment without a key".to_string()),
            })
            .collect::<Result<Vec<Box<str>>, _>>()?;
        let value = Value::compile(m.value.as_ref().ok_or("metadata matcher without value")?)?;
        Ok(Metadata {
            path,
            value,
            invert: m.invert,
        })
    }

    /// Looks `path` up in the request's JWT: `request.auth.principal|audiences|presenter`, or
    /// `request.auth.claims` followed by nested claim names.
    fn matches(&self, auth: Option<&RequestAuth>) -> bool {
        let hit = auth.is_some_and(|a| self.lookup(a));
        hit != self.invert
    }

    fn lookup(&self, a: &RequestAuth) -> bool {
        let Some((first, rest)) = self.path.split_first() else {
            return false;
        };
        match (&**first, rest) {
            ("request.auth.principal", []) => self.value.matches_str(&a.principal),
            ("request.auth.presenter", []) => a
                .presenter
                .as_deref()
                .is_some_and(|p| self.value.matches_str(p)),
            ("request.auth.audiences", []) => self
                .value
                .matches_list(a.audiences.iter().map(String::as_str)),
            ("request.auth.claims", [name, nested @ ..]) => {
                let mut v = a.claims.get(&**name);
                for n in nested {
                    v = v.and_then(|v| v.get(&**n));
                }
                v.is_some_and(|v| self.value.matches_json(v))
            }
            _ => false,
        }
    }
}

impl Value {
    fn compile(v: &ValueMatcher) -> Result<Value, String> {
        use value_matcher::MatchPattern as M;
        Ok(match &v.match_pattern {
            Some(M::StringMatch(s)) => Value::String(StringMatch::compile(s)?),
            Some(M::PresentMatch(b)) => Value::Present(*b),
            Some(M::ListMatch(l)) => match &l.match_pattern {
                Some(list_matcher::MatchPattern::OneOf(v)) => {
                    Value::OneOf(Box::new(Value::compile(v)?))
                }
                None => return Err("list_match without one_of".into()),
            },
            _ => return Err("value matcher is not supported".into()),
        })
    }

    fn matches_str(&self, v: &str) -> bool {
        match self {
            Value::String(m) => m.matches(v),
            Value::Present(b) => *b,
            Value::OneOf(inner) => inner.matches_str(v),
        }
    }

    fn matches_list<'a>(&self, mut items: impl Iterator<Item = &'a str>) -> bool {
        match self {
            Value::OneOf(inner) => items.any(|i| inner.matches_str(i)),
            Value::Present(b) => *b,
            Value::String(_) => false,
        }
    }

    fn matches_json(&self, v: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match (self, v) {
            (Value::Present(b), _) => *b,
            (Value::String(m), J::String(s)) => m.matches(s),
            (Value::OneOf(inner), J::Array(items)) => items.iter().any(|i| inner.matches_json(i)),
            // Istio keeps every claim as a list: a single value is a list of one.
            (Value::OneOf(inner), other) => inner.matches_json(other),
            _ => false,
        }
    }
}

impl PathTemplate {
    fn compile(t: &str) -> Result<PathTemplate, String> {
        let Some(rest) = t.strip_prefix('/') else {
            return Err(format!("path template {t:?} must start with /"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            segments.push(match *p {
                "*" => Segment::One,
                "**" if i + 1 == parts.len() => Segment::Rest,
                s if s.contains('*') || s.contains('{') => {
                    return Err(format!(
                        "path template {t:?}: segment {s:?} is not supported"
                    ));
                }
                s => Segment::Literal(s.into()),
            });
        }
        Ok(PathTemplate { segments })
    }

    fn matches(&self, path: &str) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        for (i, seg) in self.segments.iter().enumerate() {
            let last = i + 1 == self.segments.len();
            if let Segment::Rest = seg {
                return true;
            }
            let (head, tail) = match rest.split_once('/') {
                Some((h, t)) => (h, Some(t)),
                None => (rest, None),
            };
            let ok = match seg {
                Segment::Literal(l) => head == &**l,
                Segment::One => !head.is_empty(),
                Segment::Rest => true,
            };
            if !ok {
                return false;
            }
            match (tail, last) {
                (None, true) => return true,
                (Some(t), false) => rest = t,
                // The path has more segments than a template without `**` allows.
                (Some(_), true) => return false,
                // More segments wanted than the path has (`/a/**` does not match `/a`).
                (None, false) => return false,
            }
        }
        false
    }
}

mod index;
#[cfg(test)]
mod tests;
