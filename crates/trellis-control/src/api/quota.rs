//! Quota usage in the management API: `GET /api/v1/quotas/{namespace}/{policy}?consumer=X`
//! answers, for each quota of that QuotaPolicy, the limit, the current window (start and end,
//! UTC), what `consumer` used in it and what remains. The counters are the rate limit
//! service's, in Redis. Owns only the HTTP shapes.

use http::{Method, StatusCode};

use super::{Reply, error, param};
use crate::ratelimit::{RateLimiter, UsageError};

pub(super) async fn route(
    ratelimit: Option<&RateLimiter>,
    method: &Method,
    rest: &[&str],
    query: &[(String, String)],
) -> Reply {
    let [namespace, policy] = rest else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "quota usage is at /api/v1/quotas/{namespace}/{policy}?consumer=X",
        );
    };
    if method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("method {method} is not allowed here; see /openapi.json"),
        );
    }
    let Some(ratelimit) = ratelimit else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "this control plane runs no rate limit service; start it with `trellis control --redis HOST:PORT`",
        );
    };
    let Some(consumer) = param(query, "consumer").filter(|c| !c.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "name the consumer: ?consumer=<JWT claim, API key or principal>",
        );
    };
    match ratelimit.quota_usage(namespace, policy, consumer).await {
        Ok(usage) => Reply::ok(usage),
        Err(e @ UsageError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, "NotFound", &e.to_string())
        }
        Err(e @ UsageError::Redis(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("reading quota usage: {e}"),
        ),
    }
}
