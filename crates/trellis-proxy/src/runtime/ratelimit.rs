//! Rate limits for the hot path, compiled once per snapshot: an HCM's
//! `envoy.filters.http.local_ratelimit` (descriptors with their token buckets) and
//! `envoy.filters.http.ratelimit` filters (domain, service cluster, timeout, failure mode), keyed
//! by stage, and a route's `rate_limits` (actions that build a descriptor per request), as
//! `trellis-xds/src/ratelimit.rs` emits them (`docs/xds-contract.md`, "Rate limits").
//!
//! Token buckets are lock-free (one atomic word) and live in a process-wide table keyed by the
//! descriptor's first entry and bucket settings, so a reload that keeps a limit keeps its tokens.
//! Buckets per distinct value sit in a bounded map per descriptor. The request-side work is
//! `proxy/ratelimit.rs`; this module never does I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::route::v3::rate_limit::action::{ActionSpecifier, meta_data};
use envoy_types::pb::envoy::config::route::v3::{self as xroute, route};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RateLimitFilter;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
use envoy_types::pb::google::protobuf::value::Kind;
use http::HeaderName;
use prometheus_client::metrics::counter::Counter;
use prost::{Message, Name};
use tokio::time::Instant;

use super::route::{HeaderMatch, StringMatch};

pub use trellis_xds::ratelimit::{AUTHN_METADATA, MATCH_METADATA, MAX_DYNAMIC_DESCRIPTORS};

/// Envoy's stage range.
const STAGES: usize = 11;

/// The rate limit filters of one HTTP listener, by stage.
#[derive(Debug, Default)]
pub struct HttpRateLimits {
    stages: [Option<Stage>; STAGES],
}

#[derive(Debug)]
pub enum Stage {
    Local(Arc<LocalFilter>),
    Global(Arc<GlobalFilter>),
}

/// `envoy.filters.http.local_ratelimit`.
#[derive(Debug)]
pub struct LocalFilter {
    /// `filter_enforced` is not 0%: over-limit requests are rejected (else only counted).
    pub enforced: bool,
    pub x_ratelimit_headers: bool,
    pub resource_exhausted: bool,
    pub descriptors: Vec<LocalDescriptor>,
    /// Descriptors whose first entry is `limit`, by that entry's value.
    by_limit: HashMap<Box<str>, usize>,
}

#[derive(Debug)]
pub struct LocalDescriptor {
    /// `(key, value)`; `None`: any value, one bucket per distinct value.
    pub entries: Vec<(Box<str>, Option<Box<str>>)>,
    pub shadow: bool,
    pub buckets: Arc<Buckets>,
}

/// `envoy.filters.http.ratelimit`.
#[derive(Debug)]
pub struct GlobalFilter {
    pub domain: String,
    pub cluster: Arc<str>,
    pub timeout: Duration,
    pub failure_mode_deny: bool,
    pub x_ratelimit_headers: bool,
    pub resource_exhausted: bool,
}

/// A token bucket's settings (Envoy's `TokenBucket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketSpec {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// The bucket of a descriptor without wildcards, or one bucket per distinct value.
#[derive(Debug)]
pub struct Buckets {
    pub spec: BucketSpec,
    pub single: TokenBucket,
    dynamic: Mutex<HashMap<Box<str>, Arc<TokenBucket>>>,
    /// At most this many distinct values (`max_dynamic_descriptors`).
    bound: usize,
}

/// Starts full; gains `tokens_per_fill` every `fill_interval`, never above `max_tokens`. State is
/// one word: the fill tick it was last brought up to (high 32 bits) and the tokens (low 32).
#[derive(Debug)]
pub struct TokenBucket {
    spec: BucketSpec,
    origin: Instant,
    state: AtomicU64,
}

/// What taking a token said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the next fill.
    pub reset: Duration,
}

/// A route's `rate_limits`.
#[derive(Debug)]
pub struct RouteLimits {
    pub limits: Vec<RouteLimit>,
}

/// One `RateLimit`: its stage and the actions that build its descriptor.
#[derive(Debug)]
pub struct RouteLimit {
    pub stage: u32,
    pub actions: Vec<Action>,
    /// `<ns>/<policy>` and the limit (or quota) name, from a first `limit`/`quota` entry.
    pub policy: Arc<str>,
    pub name: Arc<str>,
    counters: OnceLock<Counters>,
    global_counters: OnceLock<Counters>,
}

/// `trellis_ratelimit_requests_total` of one limit and kind.
#[derive(Debug)]
pub struct Counters {
    pub ok: Counter,
    pub over_limit: Counter,
    pub shadow_over_limit: Counter,
    pub error: Counter,
}

/// One action: where a descriptor entry's value comes from.
#[derive(Debug)]
pub enum Action {
    /// A constant entry.
    Generic { key: Box<str>, value: Box<str> },
    /// The value of a header (or `:path`, `:method`, `:authority`).
    Header { key: Box<str>, source: HeaderSource },
    /// A fixed value when the request matches.
    HeaderMatch {
        key: Box<str>,
        value: Box<str>,
        expect_match: bool,
        headers: Vec<HeaderMatch>,
    },
    /// The client address (`remote_address`).
    RemoteAddress,
    /// A value from the request's authentication (Istio's `istio_authn` metadata), with a match
    /// from the route's metadata when the entry has one.
    Authn {
        key: Box<str>,
        source: AuthnSource,
        matcher: Option<(StringMatch, Box<str>)>,
        default: Box<str>,
        skip_if_absent: bool,
    },
}

#[derive(Debug)]
pub enum HeaderSource {
    Path,
    Method,
    Authority,
    Header(HeaderName),
}

#[derive(Debug)]
pub enum AuthnSource {
    /// `source.principal`: the mTLS peer's principal.
    Principal,
    /// `source.ip`: the client address.
    SourceIp,
    /// `request.auth.claims` then a claim path.
    Claim(Vec<Box<str>>),
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("does not decode: {0}")]
    Decode(String),
    #[error("stage {0} out of range 0..=10")]
    Stage(u32),
    #[error("stage {0} has two rate limit filters; give each its own stage")]
    StageTwice(u32),
    #[error("{0}")]
    Unsupported(String),
}

/// Live buckets by descriptor identity and settings, so a reload keeps their tokens.
static BUCKETS: LazyLock<Mutex<LiveBuckets>> = LazyLock::new(Mutex::default);

/// Descriptor identity (its entries) and settings → its buckets, while a snapshot uses them.
type LiveBuckets = HashMap<(String, BucketSpec), Weak<Buckets>>;

impl HttpRateLimits {
    /// Whether `type_url` is one of the rate limit filters.
    pub fn is_filter(type_url: &str) -> bool {
        type_url == LocalRateLimit::type_url() || type_url == RateLimitFilter::type_url()
    }

    /// Adds one HCM filter (an `Any` of [`Self::is_filter`]).
    pub fn add(&mut self, type_url: &str, bytes: &[u8]) -> Result<(), RateLimitError> {
        let decode = |e: prost::DecodeError| RateLimitError::Decode(e.to_string());
        let (stage, compiled) = if type_url == LocalRateLimit::type_url() {
            let c = LocalRateLimit::decode(bytes).map_err(decode)?;
            (c.stage, Stage::Local(Arc::new(LocalFilter::compile(&c)?)))
        } else {
            let c = RateLimitFilter::decode(bytes).map_err(decode)?;
            (c.stage, Stage::Global(Arc::new(GlobalFilter::compile(&c)?)))
        };
        let slot = self
            .stages
            .get_mut(stage as usize)
            .ok_or(RateLimitError::Stage(stage))?;
        if slot.is_some() {
            return Err(RateLimitError::StageTwice(stage));
        }
        *slot = Some(compiled);
        Ok(())
    }

    pub fn stage(&self, stage: u32) -> Option<&Stage> {
        self.stages.get(stage as usize)?.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.iter().all(Option::is_none)
    }
}

fn percent_on(
    p: Option<&envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
) -> bool {
    p.and_then(|p| p.default_value)
        .is_some_and(|f| f.numerator > 0)
}

impl LocalFilter {
    fn compile(c: &LocalRateLimit) -> Result<LocalFilter, RateLimitError> {
        if c.token_bucket.is_some() {
            return Err(RateLimitError::Unsupported(
                "a filter-wide token_bucket is not supported; put buckets on descriptors".into(),
            ));
        }
        let max_dynamic = c.max_dynamic_descriptors.map_or(20, |v| v.value.max(1)) as usize;
        let mut descriptors = Vec::with_capacity(c.descriptors.len());
        let mut by_limit = HashMap::new();
        for (i, d) in c.descriptors.iter().enumerate() {
            let b = d.token_bucket.as_ref().ok_or_else(|| {
                RateLimitError::Unsupported(format!("descriptors[{i}] has no token_bucket"))
            })?;
            let fill = b
                .fill_interval
                .as_ref()
                .map(super::duration)
                .unwrap_or_default();
            if fill < Duration::from_millis(50) || b.max_tokens == 0 {
                return Err(RateLimitError::Unsupported(format!(
                    "descriptors[{i}].token_bucket: max_tokens must be > 0 and fill_interval >= 50ms"
                )));
            }
            let spec = BucketSpec {
                max_tokens: b.max_tokens,
                tokens_per_fill: b.tokens_per_fill.map_or(1, |v| v.value.max(1)),
                fill_interval: fill,
            };
            let entries: Vec<(Box<str>, Option<Box<str>>)> = d
                .entries
                .iter()
                .map(|e| {
                    let v = (!e.value.is_empty()).then(|| e.value.as_str().into());
                    (e.key.as_str().into(), v)
                })
                .collect();
            let identity = d
                .entries
                .iter()
                .map(|e| format!("{}={}", e.key, e.value))
                .collect::<Vec<_>>()
                .join("\u{1f}");
            if let Some(("limit", Some(v))) = entries.first().map(|(k, v)| (&**k, v.as_deref())) {
                by_limit.entry(v.into()).or_insert(i);
            }
            descriptors.push(LocalDescriptor {
                entries,
                shadow: d.shadow_mode,
                buckets: Buckets::shared(identity, spec, max_dynamic),
            });
        }
        Ok(LocalFilter {
            enforced: percent_on(c.filter_enabled.as_ref())
                && percent_on(c.filter_enforced.as_ref()),
            x_ratelimit_headers: c.enable_x_ratelimit_headers
                == XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
            resource_exhausted: c.rate_limited_as_resource_exhausted,
            descriptors,
            by_limit,
        })
    }

    /// The descriptor a request descriptor selects: by its `limit` entry, else the first whose
    /// keys are the same and whose values are equal or wildcards.
    pub fn find(&self, entries: &[(&str, std::borrow::Cow<'_, str>)]) -> Option<&LocalDescriptor> {
        let fits = |d: &LocalDescriptor| {
            d.entries.len() == entries.len()
                && d.entries.iter().zip(entries).all(|((k, v), (rk, rv))| {
                    **k == **rk && v.as_deref().is_none_or(|v| v == &**rv)
                })
        };
        // A few descriptors: comparing first entries beats hashing the limit id.
        if self.descriptors.len() > 8
            && let Some(("limit", v)) = entries.first().map(|(k, v)| (*k, &**v))
            && let Some(&i) = self.by_limit.get(v)
        {
            return self.descriptors.get(i).filter(|d| fits(d));
        }
        self.descriptors.iter().find(|d| fits(d))
    }
}

impl LocalDescriptor {
    pub fn has_wildcard(&self) -> bool {
        self.entries.iter().any(|(_, v)| v.is_none())
    }
}

impl GlobalFilter {
    fn compile(c: &RateLimitFilter) -> Result<GlobalFilter, RateLimitError> {
        let cluster = c
            .rate_limit_service
            .as_ref()
            .and_then(|s| s.grpc_service.as_ref())
            .and_then(|g| match &g.target_specifier {
                Some(TargetSpecifier::EnvoyGrpc(e)) => Some(e.cluster_name.as_str()),
                _ => None,
            })
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                RateLimitError::Unsupported(
                    "rate_limit_service needs grpc_service.envoy_grpc.cluster_name".into(),
                )
            })?;
        if c.domain.is_empty() {
            return Err(RateLimitError::Unsupported("domain is required".into()));
        }
        Ok(GlobalFilter {
            domain: c.domain.clone(),
            cluster: cluster.into(),
            timeout: c
                .timeout
                .as_ref()
                .map(super::duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_millis(20)),
            failure_mode_deny: c.failure_mode_deny,
            x_ratelimit_headers: c.enable_x_ratelimit_headers
                == XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
            resource_exhausted: c.rate_limited_as_resource_exhausted,
        })
    }
}

impl Buckets {
    /// The live buckets of this identity and spec, or new full ones.
    fn shared(identity: String, spec: BucketSpec, max_dynamic: usize) -> Arc<Buckets> {
        let mut table = BUCKETS.lock().unwrap_or_else(|p| p.into_inner());
        let key = (identity, spec);
        if let Some(live) = table.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        table.retain(|_, w| w.strong_count() > 0);
        let fresh = Arc::new(Buckets {
            spec,
            single: TokenBucket::new(spec),
            dynamic: Mutex::new(HashMap::with_capacity(max_dynamic.min(64))),
            bound: max_dynamic,
        });
        table.insert(key, Arc::downgrade(&fresh));
        fresh
    }

    /// The bucket of one distinct value (created full; the map stays bounded).
    pub fn for_value(&self, value: &str) -> Arc<TokenBucket> {
        let mut map = self.dynamic.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(value) {
            return Arc::clone(b);
        }
        let bound = self.bound;
        if map.len() >= bound {
            // Full buckets hold no state worth keeping; drop them first, else any one.
            let now = Instant::now();
            map.retain(|_, b| !b.is_full(now));
            if map.len() >= bound
                && let Some(k) = map.keys().next().cloned()
            {
                map.remove(&k);
            }
        }
        let b = Arc::new(TokenBucket::new(self.spec));
        map.insert(value.into(), Arc::clone(&b));
        b
    }

    pub fn distinct_values(&self) -> usize {
        self.dynamic.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl TokenBucket {
    pub fn new(spec: BucketSpec) -> TokenBucket {
        TokenBucket {
            spec,
            origin: Instant::now(),
            state: AtomicU64::new(u64::from(spec.max_tokens)),
        }
    }

    fn tick(&self, now: Instant) -> (u64, Duration) {
        let since = now.saturating_duration_since(self.origin);
        let interval = self.spec.fill_interval.as_nanos().max(1);
        let tick = since.as_nanos() / interval;
        let next = Duration::from_nanos(((tick + 1) * interval - since.as_nanos()) as u64);
        ((tick as u64) & 0xffff_ffff, next)
    }

    fn refilled(&self, word: u64, tick: u64) -> u64 {
        let (last, tokens) = (word >> 32, word & 0xffff_ffff);
        let fills = tick.wrapping_sub(last) & 0xffff_ffff;
        let max = u64::from(self.spec.max_tokens);
        tokens
            .saturating_add(fills.saturating_mul(u64::from(self.spec.tokens_per_fill)))
            .min(max)
    }

    fn is_full(&self, now: Instant) -> bool {
        let (tick, _) = self.tick(now);
        self.refilled(self.state.load(Ordering::Relaxed), tick) >= u64::from(self.spec.max_tokens)
    }

    /// Takes one token if there is one.
    pub fn take(&self, now: Instant) -> Taken {
        let (tick, reset) = self.tick(now);
        let mut word = self.state.load(Ordering::Relaxed);
        loop {
            let tokens = self.refilled(word, tick);
            let allowed = tokens > 0;
            let left = if allowed { tokens - 1 } else { 0 };
            let next = (tick << 32) | left;
            match self
                .state
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Taken {
                        allowed,
                        limit: self.spec.max_tokens,
                        remaining: left as u32,
                        reset,
                    };
                }
                Err(now_word) => word = now_word,
            }
        }
    }
}

impl RouteLimits {
    /// A route's `rate_limits` (`None` when it has none).
    pub fn compile(r: &xroute::Route) -> Result<Option<Arc<RouteLimits>>, String> {
        let Some(route::Action::Route(a)) = &r.action else {
            return Ok(None);
        };
        if a.rate_limits.is_empty() {
            return Ok(None);
        }
        let matches = r
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get(MATCH_METADATA));
        let mut limits = Vec::with_capacity(a.rate_limits.len());
        for (i, rl) in a.rate_limits.iter().enumerate() {
            let stage = rl.stage.map_or(0, |s| s.value);
            if stage as usize >= STAGES {
                return Err(format!(
                    "rate_limits[{i}].stage {stage} out of range 0..=10"
                ));
            }
            let mut actions = Vec::with_capacity(rl.actions.len());
            for (j, act) in rl.actions.iter().enumerate() {
                let at = format!("rate_limits[{i}].actions[{j}]");
                let matcher = match matches.and_then(|m| m.fields.get(&format!("{i}.{j}"))) {
                    Some(v) => Some(metadata_match(v).map_err(|e| format!("{at}: {e}"))?),
                    None => None,
                };
                let spec = act
                    .action_specifier
                    .as_ref()
                    .ok_or_else(|| format!("{at}: empty action"))?;
                actions.push(Action::compile(spec, matcher).map_err(|e| format!("{at}: {e}"))?);
            }
            let (policy, name) = match actions.first() {
                Some(Action::Generic { key, value }) if &**key == "limit" || &**key == "quota" => {
                    match value.rsplit_once('/') {
                        Some((p, n)) => (p.into(), n.into()),
                        None => ("".into(), (&**value).into()),
                    }
                }
                _ => ("".into(), format!("{}#{i}", r.name).into()),
            };
            limits.push(RouteLimit {
                stage,
                actions,
                policy,
                name,
                counters: OnceLock::new(),
                global_counters: OnceLock::new(),
            });
        }
        Ok(Some(Arc::new(RouteLimits { limits })))
    }
}

impl RouteLimit {
    /// The counters of this limit for `kind` (`local` or `global`).
    pub fn counters(&self, global: bool) -> &Counters {
        let (cell, kind) = if global {
            (&self.global_counters, "global")
        } else {
            (&self.counters, "local")
        };
        cell.get_or_init(|| {
            crate::proxy::ratelimit::metrics::counters(&self.policy, &self.name, kind)
        })
    }
}

/// `{exact|prefix|regex: pattern}` from the route metadata → matcher and descriptor value.
fn metadata_match(
    v: &envoy_types::pb::google::protobuf::Value,
) -> Result<(StringMatch, Box<str>), String> {
    let Some(Kind::StructValue(s)) = &v.kind else {
        return Err("match metadata is not a struct".into());
    };
    let (k, pattern) = s
        .fields
        .iter()
        .find_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(p)) => Some((k.as_str(), p.clone())),
            _ => None,
        })
        .ok_or("match metadata has no pattern")?;
    let p = match k {
        "exact" => string_matcher::MatchPattern::Exact(pattern.clone()),
        "prefix" => string_matcher::MatchPattern::Prefix(pattern.clone()),
        "regex" => string_matcher::MatchPattern::SafeRegex(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: pattern.clone(),
                ..Default::default()
            },
        ),
        other => return Err(format!("unknown match kind {other:?}")),
    };
    let m = StringMatch::compile(&StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    })?;
    Ok((m, format!("{k}:{pattern}").into()))
}

impl Action {
    fn compile(
        a: &ActionSpecifier,
        matcher: Option<(StringMatch, Box<str>)>,
    ) -> Result<Action, String> {
        Ok(match a {
            ActionSpecifier::GenericKey(g) => Action::Generic {
                key: if g.descriptor_key.is_empty() {
                    "generic_key".into()
                } else {
                    g.descriptor_key.as_str().into()
                },
                value: g.descriptor_value.as_str().into(),
            },
            ActionSpecifier::RequestHeaders(h) => {
                if h.skip_if_absent {
                    return Err("request_headers.skip_if_absent is not supported".into());
                }
                let source = match h.header_name.as_str() {
                    ":path" => HeaderSource::Path,
                    ":method" => HeaderSource::Method,
                    ":authority" | "host" => HeaderSource::Authority,
                    n => HeaderSource::Header(
                        HeaderName::from_bytes(n.as_bytes())
                            .map_err(|_| format!("bad header name {n:?}"))?,
                    ),
                };
                Action::Header {
                    key: h.descriptor_key.as_str().into(),
                    source,
                }
            }
            ActionSpecifier::HeaderValueMatch(h) => Action::HeaderMatch {
                key: if h.descriptor_key.is_empty() {
                    "header_match".into()
                } else {
                    h.descriptor_key.as_str().into()
                },
                value: h.descriptor_value.as_str().into(),
                expect_match: h.expect_match.is_none_or(|v| v.value),
                headers: h
                    .headers
                    .iter()
                    .map(HeaderMatch::compile)
                    .collect::<Result<_, _>>()?,
            },
            ActionSpecifier::RemoteAddress(_) => Action::RemoteAddress,
            ActionSpecifier::Metadata(m) => {
                if m.source != meta_data::Source::Dynamic as i32 {
                    return Err("only DYNAMIC metadata actions are supported".into());
                }
                let key = m
                    .metadata_key
                    .as_ref()
                    .ok_or("metadata action without metadata_key")?;
                let path: Vec<&str> = key
                    .path
                    .iter()
                    .filter_map(|p| match &p.segment {
                        Some(Segment::Key(k)) => Some(k.as_str()),
                        _ => None,
                    })
                    .collect();
                let source = match (key.key.as_str(), path.as_slice()) {
                    (AUTHN_METADATA, ["source.principal"]) => AuthnSource::Principal,
                    (AUTHN_METADATA, ["source.ip"]) => AuthnSource::SourceIp,
                    (AUTHN_METADATA, ["request.auth.claims", rest @ ..]) if !rest.is_empty() => {
                        AuthnSource::Claim(rest.iter().map(|s| (*s).into()).collect())
                    }
                    (k, p) => {
                        return Err(format!(
                            "metadata {k:?} {p:?} is not supported; only {AUTHN_METADATA} source.principal, source.ip and request.auth.claims"
                        ));
                    }
                };
                Action::Authn {
                    key: m.descriptor_key.as_str().into(),
                    source,
                    matcher,
                    default: m.default_value.as_str().into(),
                    skip_if_absent: m.skip_if_absent,
                }
            }
            other => {
                return Err(format!(
                    "rate limit action {} is not supported",
                    action_name(other)
                ));
            }
        })
    }
}

fn action_name(a: &ActionSpecifier) -> &'static str {
    match a {
        ActionSpecifier::SourceCluster(_) => "source_cluster",
        ActionSpecifier::DestinationCluster(_) => "destination_cluster",
        ActionSpecifier::QueryParameters(_) => "query_parameters",
        ActionSpecifier::Extension(_) => "extension",
        ActionSpecifier::MaskedRemoteAddress(_) => "masked_remote_address",
        ActionSpecifier::QueryParameterValueMatch(_) => "query_parameter_value_match",
        ActionSpecifier::RemoteAddressMatch(_) => "remote_address_match",
        _ => "(this one)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max: u32, per_fill: u32, ms: u64) -> BucketSpec {
        BucketSpec {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_starts_full_and_refills_per_interval() {
        let b = TokenBucket::new(spec(4, 2, 1000));
        let now = Instant::now();
        for left in [3, 2, 1, 0] {
            let t = b.take(now);
            assert!(t.allowed);
            assert_eq!((t.limit, t.remaining), (4, left));
        }
        let t = b.take(now);
        assert!(!t.allowed);
        assert_eq!(t.reset, Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(1500)).await;
        let later = Instant::now();
        assert_eq!(b.take(later).remaining, 1, "one fill of 2 tokens");
        assert!(b.take(later).allowed);
        assert!(!b.take(later).allowed);
        assert_eq!(b.take(later).reset, Duration::from_millis(500));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.take(Instant::now()).remaining, 3, "never above max");
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_survive_a_recompile_and_distinct_values_are_bounded() {
        let s = spec(1, 1, 60_000);
        let a = Buckets::shared("limit=t/p/a".into(), s, 20);
        assert!(a.single.take(Instant::now()).allowed);
        let again = Buckets::shared("limit=t/p/a".into(), s, 20);
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!again.single.take(Instant::now()).allowed);
        let changed = Buckets::shared("limit=t/p/a".into(), spec(2, 1, 60_000), 20);
        assert!(
            changed.single.take(Instant::now()).allowed,
            "new settings, new bucket"
        );
        let x = a.for_value("x");
        assert!(x.take(Instant::now()).allowed);
        assert!(!a.for_value("x").take(Instant::now()).allowed);
        assert!(a.for_value("y").take(Instant::now()).allowed);
        for i in 0..30 {
            a.for_value(&i.to_string());
        }
        assert!(a.distinct_values() <= 20);
    }
}
