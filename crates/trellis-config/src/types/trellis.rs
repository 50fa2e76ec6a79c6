//! Trellis extensions (`trellis.dev/v1alpha1`) for what Istio has no first-class API for.
//! `DestinationPolicy`: per-destination retry budget (Linkerd's idea: retries may add a share
//! of the requests plus a small per-second minimum, so retries cannot multiply an outage).

use super::istio::config_struct;

config_struct! {
    /// `DestinationPolicy.spec`: policies for the traffic sent to `host`.
    pub struct DestinationPolicy {
        /// Service host, resolved like a DestinationRule's (short names in the policy's
        /// namespace).
        pub host: String,
        pub retry_budget: Option<RetryBudget>,
    }
}

config_struct! {
    /// `DestinationPolicy.spec.retryBudget`: retries per destination cluster stay at most
    /// `retryPercent` % of its requests plus `minRetriesPerSecond` a second.
    pub struct RetryBudget {
        /// Default 20.
        pub retry_percent: Option<f64>,
        /// Default 10.
        pub min_retries_per_second: Option<u32>,
    }
}
