//! Retry rules and the `DestinationPolicy` kind: every `retryOn` condition is one Istio accepts (or an HTTP status code), and
//! the Trellis retry annotation on a VirtualService is a boolean. Knows nothing of xDS.

use super::Reporter;
use crate::diag::did_you_mean;
use crate::types::{DestinationPolicy, ObjectMeta};

/// Annotation on a VirtualService: `"true"` lets its routes retry non-idempotent requests
/// (POST, PATCH, …) on every `retryOn` condition, as Istio does. By default those are retried
/// only when the request provably never reached the upstream.
pub const RETRY_NON_IDEMPOTENT: &str = "trellis.dev/retry-non-idempotent";

/// `retryOn` conditions Istio accepts (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Each comma-separated `retryOn` part is a known condition or a status code (100..=599).
pub(super) fn retry_on(rep: &mut Reporter<'_>, path: &str, value: &str) {
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(code) = part.parse::<u32>() {
            if !(100..=599).contains(&code) {
                rep.error(
                    path,
                    format!("status code {code} in retryOn is not an HTTP status; use 100..=599"),
                );
            }
            continue;
        }
        if !RETRY_ON.contains(&part) {
            rep.error(
                path,
                format!(
                    "unknown retryOn condition `{part}`{}",
                    did_you_mean(part, RETRY_ON)
                ),
            );
        }
    }
}

/// The Trellis annotations of a VirtualService have valid values.
pub(super) fn annotations(rep: &mut Reporter<'_>, meta: &ObjectMeta) {
    if let Some(v) = meta.annotations.get(RETRY_NON_IDEMPOTENT)
        && v != "true"
        && v != "false"
    {
        rep.error(
            &format!("metadata.annotations.{RETRY_NON_IDEMPOTENT}"),
            format!("annotation {RETRY_NON_IDEMPOTENT} must be \"true\" or \"false\", not {v:?}"),
        );
    }
}

/// `host` is required; `retryBudget.retryPercent` is a percentage.
pub(super) fn destination_policy(rep: &mut Reporter<'_>, p: &DestinationPolicy) {
    if p.host.is_empty() {
        rep.error("spec.host", "host is required (the destination service)");
    }
    if let Some(b) = &p.retry_budget
        && let Some(pct) = b.retry_percent
        && !(pct.is_finite() && (0.0..=100.0).contains(&pct))
    {
        rep.error(
            "spec.retryBudget.retryPercent",
            format!("retryPercent {pct} out of range; use 0..=100"),
        );
    }
}
