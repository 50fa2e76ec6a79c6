//! Rate limit counters: `trellis_ratelimit_requests_total{policy, limit, kind, result}`, one per
//! limit (or quota), kind (`local`, `global`) and result (`ok`, `over_limit`,
//! `shadow_over_limit`, `error`). Each route limit keeps its four counters
//! (`runtime/ratelimit.rs` `RouteLimit::counters`), so a request only increments. Registered by
//! `telemetry.rs`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::runtime::ratelimit::Counters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    policy: String,
    limit: String,
    kind: &'static str,
    result: &'static str,
}

static REQUESTS: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);

pub fn register(registry: &mut Registry) {
    registry.register(
        "trellis_ratelimit_requests",
        "Requests checked by a rate limit or quota, by policy (namespace/name), limit, kind (local, global) and result (ok, over_limit, shadow_over_limit, error)",
        REQUESTS.clone(),
    );
}

/// The counters of one limit and kind.
pub fn counters(policy: &str, limit: &str, kind: &'static str) -> Counters {
    let get = |result| {
        REQUESTS
            .get_or_create(&Labels {
                policy: policy.into(),
                limit: limit.into(),
                kind,
                result,
            })
            .clone()
    };
    Counters {
        ok: get("ok"),
        over_limit: get("over_limit"),
        shadow_over_limit: get("shadow_over_limit"),
        error: get("error"),
    }
}
