//! A route's retry policy for the hot path, compiled once from the xDS `RetryPolicy`: which
//! outcomes are retriable (`retry_on` conditions as bits, retriable status codes), how many
//! retries, the per-try timeout, the backoff and whether a retry avoids hosts already tried.
//! `retriable_request_headers` decides which requests may be retried after they reached the
//! upstream; a request that provably never did (connect failure, refused or GOAWAY'd stream)
//! is retriable whatever its method. Decides nothing about sending (see `proxy::retry`).

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as xroute;
use http::{HeaderMap, StatusCode};

use super::route::{HeaderMatch, RequestView};

/// Envoy's default backoff base interval.
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// `retry_on` conditions, one bit each.
pub mod on {
    pub const STATUS_5XX: u32 = 1;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const RESET: u32 = 1 << 2;
    pub const CONNECT_FAILURE: u32 = 1 << 3;
    pub const RETRIABLE_4XX: u32 = 1 << 4;
    pub const REFUSED_STREAM: u32 = 1 << 5;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 6;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 7;
    pub const ENVOY_RATELIMITED: u32 = 1 << 8;
    pub const GRPC_CANCELLED: u32 = 1 << 9;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 10;
    pub const GRPC_INTERNAL: u32 = 1 << 11;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 12;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 13;
    /// Conditions judged on a response head.
    pub const RESPONSE: u32 = STATUS_5XX
        | GATEWAY_ERROR
        | RETRIABLE_4XX
        | RETRIABLE_STATUS_CODES
        | ENVOY_RATELIMITED
        | GRPC_CANCELLED
        | GRPC_DEADLINE_EXCEEDED
        | GRPC_INTERNAL
        | GRPC_RESOURCE_EXHAUSTED
        | GRPC_UNAVAILABLE;
    /// Conditions under which a reset (or a per-try timeout) after sending is retried.
    pub const AFTER_SEND_FAILURE: u32 = STATUS_5XX | GATEWAY_ERROR | RESET;
}

#[derive(Debug)]
pub struct RetryPolicy {
    pub num_retries: u32,
    pub on: u32,
    pub status_codes: Box<[u16]>,
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// `previous_hosts` predicate: a retry goes to an endpoint not tried yet when possible.
    pub avoid_previous_hosts: bool,
    /// How many picks a retry makes to find an untried endpoint (Envoy's default is 1).
    pub host_selection_attempts: u32,
    /// `previous_priorities` retry priority (Istio's `retryRemoteLocalities`): its
    /// `update_frequency`; 0 when not configured. Attempts after each `update_frequency` ones
    /// avoid the priority levels those went to.
    pub previous_priorities: u32,
    /// Requests that may be retried after reaching the upstream.
    retriable_requests: Retriable,
}

/// `retriable_request_headers`, compiled.
#[derive(Debug)]
enum Retriable {
    /// None configured: every request.
    All,
    /// The one matcher the compiler emits, `:method` against a plain `A|B|C` alternation: a
    /// list compare instead of a regex run per request.
    Methods(Box<[http::Method]>),
    Headers(Box<[HeaderMatch]>),
}

/// What happened to one attempt, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing reached the upstream (connect failure, pending overflow is not retried).
    ConnectFailure,
    /// The stream was refused (REFUSED_STREAM, or beyond a GOAWAY): never processed.
    RefusedStream,
    /// Reset or closed after the request was (maybe) sent.
    Reset,
    /// No response within the per-try timeout.
    PerTryTimeout,
}

impl RetryPolicy {
    pub fn compile(p: &xroute::RetryPolicy) -> Result<RetryPolicy, String> {
        let mut on_bits = 0;
        for cond in p
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            on_bits |= match cond {
                "5xx" => on::STATUS_5XX,
                "gateway-error" => on::GATEWAY_ERROR,
                "reset" => on::RESET,
                "reset-before-request" => on::RESET_BEFORE_REQUEST,
                "connect-failure" => on::CONNECT_FAILURE,
                "retriable-4xx" => on::RETRIABLE_4XX,
                "refused-stream" => on::REFUSED_STREAM,
                "retriable-status-codes" => on::RETRIABLE_STATUS_CODES,
                "envoy-ratelimited" => on::ENVOY_RATELIMITED,
                "cancelled" => on::GRPC_CANCELLED,
                "deadline-exceeded" => on::GRPC_DEADLINE_EXCEEDED,
                "internal" => on::GRPC_INTERNAL,
                "resource-exhausted" => on::GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => on::GRPC_UNAVAILABLE,
                // Envoy accepts these; they never match a Trellis upstream (no retriable
                // headers are configured by Istio, no HTTP/3 upstreams).
                "retriable-headers" | "http3-post-connect-failure" => 0,
                other => return Err(format!("unknown retry_on condition {other:?}")),
            };
        }
        let mut status_codes = Vec::with_capacity(p.retriable_status_codes.len());
        for c in &p.retriable_status_codes {
            match u16::try_from(*c).ok().filter(|c| (100..=599).contains(c)) {
                Some(c) => status_codes.push(c),
                None => return Err(format!("retriable status code {c} is not an HTTP status")),
            }
        }
        let backoff = p.retry_back_off.as_ref();
        let base_interval = backoff
            .and_then(|b| b.base_interval.as_ref())
            .map(super::duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_BASE_INTERVAL);
        let max_interval = backoff
            .and_then(|b| b.max_interval.as_ref())
            .map(super::duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(base_interval * 10)
            .max(base_interval);
        let retriable_requests = if p.retriable_request_headers.is_empty() {
            Retriable::All
        } else if let Some(methods) = method_list(&p.retriable_request_headers) {
            Retriable::Methods(methods)
        } else {
            let mut out = Vec::with_capacity(p.retriable_request_headers.len());
            for (i, h) in p.retriable_request_headers.iter().enumerate() {
                out.push(
                    HeaderMatch::compile(h)
                        .map_err(|why| format!("retriable_request_headers[{i}]: {why}"))?,
                );
            }
            Retriable::Headers(out.into_boxed_slice())
        };
        Ok(RetryPolicy {
            num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
            on: on_bits,
            status_codes: status_codes.into_boxed_slice(),
            per_try_timeout: p
                .per_try_timeout
                .as_ref()
                .map(super::duration)
                .filter(|d| !d.is_zero()),
            base_interval,
            max_interval,
            avoid_previous_hosts: p
                .retry_host_predicate
                .iter()
                .any(|h| h.name == "envoy.retry_host_predicates.previous_hosts"),
            host_selection_attempts: u32::try_from(p.host_selection_retry_max_attempts)
                .unwrap_or(1)
                .max(1),
            previous_priorities: previous_priorities(p.retry_priority.as_ref())?,
            retriable_requests,
        })
    }

    /// Whether `req` may be retried once it may have reached the upstream (Envoy's
    /// `retriable_request_headers`: any one matcher matching is enough).
    pub fn may_repeat(&self, req: &RequestView<'_>) -> bool {
        match &self.retriable_requests {
            Retriable::All => true,
            Retriable::Methods(m) => m.contains(req.method),
            Retriable::Headers(m) => m.iter().any(|h| h.matches(req)),
        }
    }

    /// Whether a failure before any response is retriable. `repeatable`: the request may be
    /// sent again even though it may have been processed.
    pub fn retries_failure(&self, outcome: Outcome, repeatable: bool) -> bool {
        let on = self.on;
        match outcome {
            Outcome::ConnectFailure => {
                on & (on::CONNECT_FAILURE | on::RESET_BEFORE_REQUEST | on::AFTER_SEND_FAILURE) != 0
            }
            Outcome::RefusedStream => {
                on & (on::REFUSED_STREAM | on::RESET_BEFORE_REQUEST | on::AFTER_SEND_FAILURE) != 0
            }
            Outcome::Reset | Outcome::PerTryTimeout => {
                repeatable && on & on::AFTER_SEND_FAILURE != 0
            }
        }
    }

    /// Whether a response head is retriable (checked only for repeatable requests).
    pub fn retries_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let on = self.on;
        let code = status.as_u16();
        if on & on::STATUS_5XX != 0 && status.is_server_error() {
            return true;
        }
        if on & on::GATEWAY_ERROR != 0 && matches!(code, 502..=504) {
            return true;
        }
        if on & on::RETRIABLE_4XX != 0 && code == 409 {
            return true;
        }
        if on & on::RETRIABLE_STATUS_CODES != 0 && self.status_codes.contains(&code) {
            return true;
        }
        if on & on::ENVOY_RATELIMITED != 0 && headers.contains_key("x-envoy-ratelimited") {
            return true;
        }
        if on & on::RESPONSE & !(on::STATUS_5XX | on::GATEWAY_ERROR | on::RETRIABLE_4XX) != 0
            && let Some(grpc) = headers.get("grpc-status")
        {
            let bit = match grpc.as_bytes() {
                b"1" => on::GRPC_CANCELLED,
                b"4" => on::GRPC_DEADLINE_EXCEEDED,
                b"8" => on::GRPC_RESOURCE_EXHAUSTED,
                b"13" => on::GRPC_INTERNAL,
                b"14" => on::GRPC_UNAVAILABLE,
                _ => 0,
            };
            return on & bit != 0;
        }
        false
    }

    /// Whether any response (or a reset after sending) could be retried: only then is the
    /// request head kept (and its body buffered) for another attempt.
    pub fn retries_after_send(&self) -> bool {
        self.on & (on::RESPONSE | on::AFTER_SEND_FAILURE) != 0
    }

    /// Envoy's jittered exponential backoff before retry `n` (1-based): uniform in
    /// `[0, min(base * (2^n - 1), max))`.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = (1u64 << n.min(16)) - 1;
        let ceiling = self
            .base_interval
            .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
            .min(self.max_interval);
        let ms = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(fastrand::u64(..ms))
    }
}

/// `[":method" safe_regex "GET|HEAD"]` (not inverted) → the methods; `None` for anything else.
/// The `update_frequency` of a `previous_priorities` retry priority (0: none). Another retry
/// priority plugin is an error: the proxy would not do what it asks.
fn previous_priorities(p: Option<&xroute::retry_policy::RetryPriority>) -> Result<u32, String> {
    use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
    use prost::Message;
    use xroute::retry_policy::retry_priority::ConfigType;
    let Some(p) = p else { return Ok(0) };
    if p.name != "envoy.retry_priorities.previous_priorities" {
        return Err(format!(
            "retry_priority {:?} is not supported; use envoy.retry_priorities.previous_priorities",
            p.name
        ));
    }
    let frequency = match &p.config_type {
        Some(ConfigType::TypedConfig(any)) => {
            PreviousPrioritiesConfig::decode(any.value.as_slice())
                .map_err(|e| format!("retry_priority.typed_config does not decode: {e}"))?
                .update_frequency
        }
        None => 0,
    };
    // Envoy requires update_frequency > 0.
    u32::try_from(frequency)
        .ok()
        .filter(|f| *f > 0)
        .ok_or_else(|| format!("retry_priority update_frequency {frequency} must be > 0"))
}

fn method_list(headers: &[xroute::HeaderMatcher]) -> Option<Box<[http::Method]>> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    use xroute::header_matcher::HeaderMatchSpecifier;
    let [h] = headers else { return None };
    if h.name != ":method" || h.invert_match {
        return None;
    }
    let Some(HeaderMatchSpecifier::StringMatch(m)) = &h.header_match_specifier else {
        return None;
    };
    let Some(MatchPattern::SafeRegex(re)) = &m.match_pattern else {
        return None;
    };
    if m.ignore_case {
        return None;
    }
    re.regex
        .split('|')
        .map(|t| {
            (!t.is_empty() && t.bytes().all(|b| b.is_ascii_uppercase()))
                .then(|| http::Method::from_bytes(t.as_bytes()).ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn policy(on: &str, codes: Vec<u32>) -> RetryPolicy {
        RetryPolicy::compile(&xroute::RetryPolicy {
            retry_on: on.into(),
            num_retries: Some(UInt32Value { value: 2 }),
            retriable_status_codes: codes,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn conditions_match_envoys_meaning() {
        let h = HeaderMap::new();
        let p = policy("gateway-error", vec![]);
        assert!(p.retries_response(StatusCode::BAD_GATEWAY, &h));
        assert!(!p.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &h));
        let p = policy("5xx", vec![]);
        assert!(p.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &h));
        assert!(p.retries_failure(Outcome::PerTryTimeout, true));
        assert!(!p.retries_failure(Outcome::Reset, false));
        let p = policy("retriable-status-codes,retriable-4xx", vec![429]);
        assert!(p.retries_response(StatusCode::TOO_MANY_REQUESTS, &h));
        assert!(p.retries_response(StatusCode::CONFLICT, &h));
        assert!(!p.retries_response(StatusCode::SERVICE_UNAVAILABLE, &h));
        let p = policy("unavailable,cancelled", vec![]);
        let mut g = HeaderMap::new();
        g.insert("grpc-status", "14".parse().unwrap());
        assert!(p.retries_response(StatusCode::OK, &g));
        g.insert("grpc-status", "13".parse().unwrap());
        assert!(!p.retries_response(StatusCode::OK, &g));
        let p = policy("connect-failure", vec![]);
        assert!(p.retries_failure(Outcome::ConnectFailure, false));
        assert!(!p.retries_failure(Outcome::RefusedStream, true));
        assert!(!p.retries_after_send());
        assert!(
            RetryPolicy::compile(&xroute::RetryPolicy {
                retry_on: "5xx,bogus".into(),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn retriable_request_headers_select_repeatable_requests() {
        use envoy_types::pb::envoy::r#type::matcher::v3::{
            RegexMatcher, StringMatcher, string_matcher::MatchPattern,
        };
        use xroute::header_matcher::HeaderMatchSpecifier;
        let matcher = |name: &str, regex: &str| xroute::HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                    regex: regex.into(),
                    ..Default::default()
                })),
                ignore_case: false,
            })),
            ..Default::default()
        };
        let compile = |headers| {
            RetryPolicy::compile(&xroute::RetryPolicy {
                retry_on: "5xx".into(),
                retriable_request_headers: headers,
                ..Default::default()
            })
            .unwrap()
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-idempotent", "yes".parse().unwrap());
        let view = |method: &'static http::Method, headers: &'static HeaderMap| RequestView {
            method,
            authority: "a",
            path: "/",
            query: None,
            scheme: "http",
            headers,
        };
        let headers: &'static HeaderMap = Box::leak(Box::new(headers));
        let empty: &'static HeaderMap = Box::leak(Box::new(HeaderMap::new()));
        let methods = compile(vec![matcher(
            ":method",
            "GET|HEAD|OPTIONS|TRACE|PUT|DELETE",
        )]);
        assert!(matches!(methods.retriable_requests, Retriable::Methods(_)));
        assert!(methods.may_repeat(&view(&http::Method::PUT, empty)));
        assert!(!methods.may_repeat(&view(&http::Method::POST, empty)));
        let general = compile(vec![matcher("x-idempotent", "y.s")]);
        assert!(matches!(general.retriable_requests, Retriable::Headers(_)));
        assert!(general.may_repeat(&view(&http::Method::POST, headers)));
        assert!(!general.may_repeat(&view(&http::Method::GET, empty)));
        assert!(compile(Vec::new()).may_repeat(&view(&http::Method::PATCH, empty)));
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let p = policy("5xx", vec![]);
        for _ in 0..200 {
            assert!(p.backoff(1) < Duration::from_millis(25));
            assert!(p.backoff(2) < Duration::from_millis(75));
            assert!(p.backoff(10) < Duration::from_millis(250));
        }
    }
}
