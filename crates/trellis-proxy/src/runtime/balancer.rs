//! Load balancers: pick one endpoint of a cluster per request without locks.
//!
//! LEAST_REQUEST is power-of-two-choices on in-flight counts; with unequal weights it follows
//! Envoy's weighted least-request (default bias 1): effective weight `weight / (active + 1)`, so an
//! idle cluster splits exactly by weight (a weighted draw over every endpoint up to 32 endpoints,
//! two uniform candidates compared on `(active + 1) / weight` beyond); ROUND_ROBIN follows a precomputed smooth
//! weighted schedule indexed by an atomic counter; RANDOM draws by weight. Owns picking only;
//! it never connects.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The schedule for weighted round robin is at most this long; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
}

/// Up to this many endpoints, weighted LEAST_REQUEST picks over every endpoint's effective weight.
const WEIGHTED_LEAST_REQUEST_MAX: usize = 32;

/// Per-endpoint state that survives config changes (carried over by cluster and address).
#[derive(Debug, Default)]
pub struct EndpointState {
    pub in_flight: AtomicU64,
}

/// Per-cluster state that survives config changes (carried over by cluster name).
#[derive(Debug, Default)]
pub struct BalancerState {
    pub next: AtomicUsize,
}

/// Counts one request in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    /// Cumulative weights (for weighted random draws).
    cumulative: Vec<u64>,
    weights: Vec<u32>,
    equal: bool,
    /// Smooth weighted round-robin order (empty when weights are equal).
    schedule: Vec<u32>,
    state: Arc<BalancerState>,
}

impl InFlight {
    pub fn new(state: &Arc<EndpointState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// `weights` are the endpoints' `load_balancing_weight`s (each at least 1).
    pub fn new(policy: LbPolicy, weights: Vec<u32>, state: Arc<BalancerState>) -> Balancer {
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        let schedule = if policy == LbPolicy::RoundRobin && !equal {
            smooth_schedule(&weights)
        } else {
            Vec::new()
        };
        Balancer {
            policy,
            cumulative,
            weights,
            equal,
            schedule,
            state,
        }
    }

    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// The round-robin counter's next value (shared with the carried-over state).
    pub fn next(&self) -> usize {
        self.state.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Index of the chosen endpoint; `None` when there are none. `in_flight(i)` reads the
    /// endpoint's active request count.
    pub fn pick(&self, in_flight: impl Fn(usize) -> u64) -> Option<usize> {
        let n = self.weights.len();
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        Some(match self.policy {
            LbPolicy::Random => self.draw(),
            LbPolicy::RoundRobin => {
                let k = self.state.next.fetch_add(1, Ordering::Relaxed);
                if self.schedule.is_empty() {
                    k % n
                } else {
                    self.schedule[k % self.schedule.len()] as usize
                }
            }
            LbPolicy::LeastRequest if !self.equal && n <= WEIGHTED_LEAST_REQUEST_MAX => {
                self.weighted_least_request(&in_flight)
            }
            LbPolicy::LeastRequest => {
                // Power of two choices, drawn uniformly; with unequal weights (large clusters only)
                // the comparison is on (active + 1) / weight, without division.
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (la, lb) = (in_flight(a), in_flight(b));
                let sa = (la + 1) * u64::from(self.weights[b]);
                let sb = (lb + 1) * u64::from(self.weights[a]);
                if sb < sa { b } else { a }
            }
        })
    }

    /// Envoy's weighted LEAST_REQUEST: each endpoint's effective weight is
    /// `weight / (active + 1)`, so an idle cluster follows the configured weights exactly and busy
    /// endpoints are picked less. A weighted random draw over those (O(n), small clusters only).
    fn weighted_least_request(&self, in_flight: &impl Fn(usize) -> u64) -> usize {
        let n = self.weights.len();
        let mut effective = [0f64; WEIGHTED_LEAST_REQUEST_MAX];
        let mut total = 0f64;
        for (i, slot) in effective.iter_mut().enumerate().take(n) {
            *slot = f64::from(self.weights[i]) / (in_flight(i) + 1) as f64;
            total += *slot;
        }
        let mut r = fastrand::f64() * total;
        for (i, e) in effective.iter().enumerate().take(n) {
            if r < *e {
                return i;
            }
            r -= e;
        }
        n - 1
    }

    /// A weighted random index.
    fn draw(&self) -> usize {
        let n = self.weights.len();
        if self.equal {
            return fastrand::usize(..n);
        }
        let total = self.cumulative.last().copied().unwrap_or(1);
        let r = fastrand::u64(..total);
        self.cumulative.partition_point(|c| *c <= r).min(n - 1)
    }
}

/// nginx's smooth weighted round robin, unrolled once into a schedule.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights
        .iter()
        .fold(0u64, |g, w| gcd(g, u64::from(*w)))
        .max(1);
    let mut w: Vec<i64> = weights.iter().map(|w| (u64::from(*w) / g) as i64).collect();
    let mut total: i64 = w.iter().sum();
    if total as u64 > MAX_SCHEDULE {
        let scale = total as f64 / MAX_SCHEDULE as f64;
        for x in &mut w {
            *x = ((*x as f64 / scale).round() as i64).max(1);
        }
        total = w.iter().sum();
    }
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(b: &Balancer, n: usize, runs: usize, load: &[u64]) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..runs {
            if let Some(i) = b.pick(|i| load[i]) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn round_robin_equal_cycles() {
        let b = Balancer::new(LbPolicy::RoundRobin, vec![1, 1, 1], Arc::default());
        let picks: Vec<_> = (0..6).filter_map(|_| b.pick(|_| 0)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_weighted_is_smooth_and_exact() {
        let b = Balancer::new(LbPolicy::RoundRobin, vec![5, 1, 1], Arc::default());
        let picks: Vec<_> = (0..7).filter_map(|_| b.pick(|_| 0)).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&b, 3, 700, &[0, 0, 0]), vec![500, 100, 100]);
    }

    #[test]
    fn round_robin_state_carries_over() {
        let state = Arc::new(BalancerState::default());
        let b = Balancer::new(LbPolicy::RoundRobin, vec![1, 1], Arc::clone(&state));
        assert_eq!(b.pick(|_| 0), Some(0));
        let b2 = Balancer::new(LbPolicy::RoundRobin, vec![1, 1], state);
        assert_eq!(b2.pick(|_| 0), Some(1));
    }

    #[test]
    fn random_respects_weights() {
        let b = Balancer::new(LbPolicy::Random, vec![3, 1], Arc::default());
        let c = counts(&b, 2, 40_000, &[0, 0]);
        let share = c[0] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{c:?}");
    }

    #[test]
    fn least_request_avoids_busy_endpoint() {
        let b = Balancer::new(LbPolicy::LeastRequest, vec![1, 1], Arc::default());
        let c = counts(&b, 2, 1000, &[10, 0]);
        assert_eq!(
            c,
            vec![0, 1000],
            "two choices over two endpoints always see both"
        );
        let b = Balancer::new(LbPolicy::LeastRequest, vec![1, 1, 1, 1], Arc::default());
        let c = counts(&b, 4, 10_000, &[5, 0, 0, 0]);
        assert!(c[0] < 10_000 / 20, "{c:?}");
    }

    #[test]
    fn least_request_weighted_when_idle_follows_weights() {
        let b = Balancer::new(LbPolicy::LeastRequest, vec![4, 1], Arc::default());
        let c = counts(&b, 2, 20_000, &[0, 0]);
        // 4:1 → 80% ± 2 points, as Envoy's weighted least-request does when idle.
        assert!((15_600..=16_400).contains(&c[0]), "{c:?}");
        let b = Balancer::new(LbPolicy::LeastRequest, vec![3, 1, 1], Arc::default());
        let c = counts(&b, 3, 20_000, &[0, 0, 0]);
        assert!((11_600..=12_400).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn empty_and_single() {
        let b = Balancer::new(LbPolicy::LeastRequest, vec![], Arc::default());
        assert_eq!(b.pick(|_| 0), None);
        let b = Balancer::new(LbPolicy::Random, vec![7], Arc::default());
        assert_eq!(b.pick(|_| 0), Some(0));
    }

    #[test]
    fn huge_weights_are_scaled() {
        let s = smooth_schedule(&[1_000_000, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 2 && s.contains(&1));
    }
}
