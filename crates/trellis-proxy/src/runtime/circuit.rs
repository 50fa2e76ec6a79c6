//! Circuit breakers and the retry budget of one cluster (Envoy's `circuit_breakers.thresholds`,
//! as Istio fills them from DestinationRule `connectionPool`): limits on connections, pending
//! requests, requests in flight and retries in flight, plus a Linkerd-style retry budget
//! (retries may add `retry_percent` of the requests of the last second, plus
//! `min_retries_per_second`). Limits live in the immutable [`Limits`] of each snapshot; the
//! counters in [`CircuitState`], carried over across config swaps by cluster name. Lock-free;
//! owns no sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers;
use tokio::sync::Notify;

use crate::telemetry::upstream_stats::ClusterStats;

/// Linkerd's default budget: 20% of requests plus 10 retries a second.
pub const DEFAULT_RETRY_PERCENT: f64 = 20.0;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

/// The thresholds of one cluster (`u32::MAX` = unlimited, Istio's default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    pub retry_percent: f64,
    pub min_retries_per_second: u32,
}

/// Counters that survive config changes (carried over by cluster name).
#[derive(Debug)]
pub struct CircuitState {
    pub stats: Arc<ClusterStats>,
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    /// Woken when a connection is returned idle or closed (pending requests re-check).
    pub changed: Notify,
    budget: BudgetWindow,
}

/// Two one-second windows of request and retry counts: the budget of the last second is
/// estimated as `previous * (1 - elapsed) + current` (a sliding-window approximation).
#[derive(Debug)]
struct BudgetWindow {
    epoch: Instant,
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    prev_requests: AtomicU64,
    prev_retries: AtomicU64,
}

/// Holds one connection slot; freed (and pending requests woken) on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<CircuitState>);

/// Holds one pending-queue place while a request waits for a connection.
#[derive(Debug)]
pub struct PendingSlot(Arc<CircuitState>);

/// Counts one request in flight on the cluster until dropped.
#[derive(Debug)]
pub struct RequestSlot(Arc<CircuitState>);

/// Counts one retry in flight on the cluster until dropped.
#[derive(Debug)]
pub struct RetrySlot(Arc<CircuitState>);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            retry_percent: DEFAULT_RETRY_PERCENT,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
        }
    }
}

impl Limits {
    /// From the first (default priority) thresholds; absent fields keep Istio's defaults.
    /// Stock Envoy defaults (1024 connections, 3 retries) are not used: Istio always sets them.
    pub fn from_xds(cb: Option<&CircuitBreakers>) -> Limits {
        let mut limits = Limits::default();
        let Some(t) = cb.and_then(|c| c.thresholds.first()) else {
            return limits;
        };
        let value = |v: Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
            v.map_or(d, |v| v.value)
        };
        limits.max_connections = value(t.max_connections, u32::MAX);
        limits.max_pending_requests = value(t.max_pending_requests, u32::MAX);
        limits.max_requests = value(t.max_requests, u32::MAX);
        limits.max_retries = value(t.max_retries, u32::MAX);
        if let Some(b) = &t.retry_budget {
            if let Some(p) = b.budget_percent {
                limits.retry_percent = p.value.clamp(0.0, 100.0);
            }
            if let Some(m) = b.min_retry_concurrency {
                limits.min_retries_per_second = m.value;
            }
        }
        limits
    }
}

impl Default for CircuitState {
    fn default() -> Self {
        CircuitState {
            stats: Arc::default(),
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            changed: Notify::new(),
            budget: BudgetWindow {
                epoch: Instant::now(),
                second: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                prev_requests: AtomicU64::new(0),
                prev_retries: AtomicU64::new(0),
            },
        }
    }
}

impl CircuitState {
    /// A connection slot, unless `max` connections are open.
    pub fn open_connection(self: &Arc<Self>, max: u32) -> Option<ConnectionSlot> {
        take(&self.connections, max).then(|| ConnectionSlot(Arc::clone(self)))
    }

    /// A place in the pending queue, unless `max` requests already wait.
    pub fn pend(self: &Arc<Self>, max: u32) -> Option<PendingSlot> {
        take(&self.pending, max).then(|| PendingSlot(Arc::clone(self)))
    }

    /// Admit one request (counted in the budget), unless `max` are in flight.
    pub fn begin_request(self: &Arc<Self>, max: u32, now: Instant) -> Option<RequestSlot> {
        ClusterStats::inc(&self.stats.rq_total);
        self.budget.rotate(now);
        self.budget.requests.fetch_add(1, Ordering::Relaxed);
        if max == u32::MAX {
            // Unlimited: still counted, without a compare-and-swap loop.
            self.requests.fetch_add(1, Ordering::Relaxed);
            return Some(RequestSlot(Arc::clone(self)));
        }
        take(&self.requests, max).then(|| RequestSlot(Arc::clone(self)))
    }

    /// Admit one retry: within `max_retries` in flight and within the retry budget.
    pub fn begin_retry(self: &Arc<Self>, limits: &Limits, now: Instant) -> Option<RetrySlot> {
        if !self.budget.allows(limits, now) {
            return None;
        }
        if !take(&self.retries, limits.max_retries) {
            return None;
        }
        self.budget.retries.fetch_add(1, Ordering::Relaxed);
        Some(RetrySlot(Arc::clone(self)))
    }

    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Increment `counter` unless it has reached `max`.
fn take(counter: &AtomicU32, max: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl BudgetWindow {
    /// Move to the window of `now` (racing rotations may lose a few counts; it is an estimate).
    fn rotate(&self, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let current = self.second.load(Ordering::Relaxed);
        if second <= current
            || self
                .second
                .compare_exchange(current, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (requests, retries) = if second == current + 1 {
            (
                self.requests.swap(0, Ordering::Relaxed),
                self.retries.swap(0, Ordering::Relaxed),
            )
        } else {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
            (0, 0)
        };
        self.prev_requests.store(requests, Ordering::Relaxed);
        self.prev_retries.store(retries, Ordering::Relaxed);
    }

    /// Whether one more retry fits: retries of the last second + 1 <= percent of its requests
    /// + the per-second minimum.
    fn allows(&self, limits: &Limits, now: Instant) -> bool {
        self.rotate(now);
        let elapsed = now
            .saturating_duration_since(self.epoch)
            .as_secs_f64()
            .fract();
        let weight = 1.0 - elapsed;
        let load = |cur: &AtomicU64, prev: &AtomicU64| {
            cur.load(Ordering::Relaxed) as f64 + prev.load(Ordering::Relaxed) as f64 * weight
        };
        let requests = load(&self.requests, &self.prev_requests);
        let retries = load(&self.retries, &self.prev_retries);
        let allowed =
            requests * limits.retry_percent / 100.0 + f64::from(limits.min_retries_per_second);
        retries + 1.0 <= allowed
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_bounded_and_freed_on_drop() {
        let state = Arc::new(CircuitState::default());
        let a = state.open_connection(1).unwrap();
        assert!(state.open_connection(1).is_none());
        drop(a);
        assert!(state.open_connection(1).is_some());
        let now = Instant::now();
        let r = state.begin_request(1, now).unwrap();
        assert!(state.begin_request(1, now).is_none());
        drop(r);
        assert!(state.begin_request(1, now).is_some());
    }

    #[test]
    fn retry_budget_is_a_share_of_requests_plus_a_minimum() {
        let state = Arc::new(CircuitState::default());
        let limits = Limits {
            retry_percent: 20.0,
            min_retries_per_second: 2,
            ..Limits::default()
        };
        // Early in a second: 100 requests allow 20 + 2 retries.
        let now = state.budget.epoch + Duration::from_millis(10);
        for _ in 0..100 {
            drop(state.begin_request(u32::MAX, now));
        }
        let mut held = Vec::new();
        while let Some(r) = state.begin_retry(&limits, now) {
            held.push(r);
            assert!(held.len() <= 22, "budget exceeded");
        }
        assert_eq!(held.len(), 22);
        // Two seconds later both windows are empty again: only the minimum remains.
        let later = now + Duration::from_secs(2);
        let n = std::iter::from_fn(|| state.begin_retry(&limits, later))
            .take(10)
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn max_retries_caps_retries_in_flight() {
        let state = Arc::new(CircuitState::default());
        let limits = Limits {
            max_retries: 1,
            ..Limits::default()
        };
        let now = Instant::now();
        let r = state.begin_retry(&limits, now).unwrap();
        assert!(state.begin_retry(&limits, now).is_none());
        drop(r);
        assert!(state.begin_retry(&limits, now).is_some());
    }
}
