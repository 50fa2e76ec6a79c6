//! Choosing an endpoint when not every endpoint is equal: priority levels (Envoy's priority
//! load with overprovisioning factor 1.4), locality weights (`locality_weighted_lb_config`),
//! health (outlier ejections, active health checks, the panic threshold), consistent-hash
//! tables and slow start.
//!
//! The common case (every endpoint healthy, no locality weights, no slow start) stays on a
//! precomputed [`Balancer`] (over all endpoints, or over the first priority level when there
//! are several); everything else is decided here per request from the cluster's immutable
//! [`Topology`] and the endpoints' atomics. Owns no state of its own and never connects.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{LbConfig, SlowStartConfig};

use super::balancer::{Balancer, BalancerState, LbPolicy};
use super::cluster::{Cluster, Endpoint};
use super::duration;

/// Envoy's default overprovisioning factor (1.4, as a percentage multiplier).
const OVERPROVISIONING: f64 = 1.4;

/// Priority levels and localities of a cluster, as endpoint indices.
#[derive(Debug, Default)]
pub struct Topology {
    /// Lowest priority number first.
    pub levels: Vec<Level>,
    pub locality_weighted: bool,
    pub slow_start: Option<SlowStart>,
    /// Until when some endpoint is still warming up.
    pub warming_until: Option<Instant>,
    /// With several levels: a balancer over the first level's endpoints, which take all the
    /// traffic while every endpoint is healthy (no per-request work beyond the pick).
    first_level: Option<Balancer>,
}

#[derive(Debug, Default)]
pub struct Level {
    pub priority: u32,
    pub endpoints: Vec<u32>,
    pub localities: Vec<LocalityGroup>,
}

#[derive(Debug)]
pub struct LocalityGroup {
    pub endpoints: Vec<u32>,
    pub weight: u32,
    /// The cluster's policy over this locality's endpoints (for the all-healthy case).
    balancer: Option<Balancer>,
}

/// Envoy's slow start: weight × max(min%, (max(age, 1 s) / window)^(1 / aggression)). Every
/// endpoint younger than the window is in slow start, those of a new cluster too (so a fresh
/// deployment ramps evenly, as in Envoy).
#[derive(Debug, Clone, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    pub aggression: f64,
    pub min_weight_percent: f64,
}

impl SlowStart {
    pub fn from_lb_config(c: Option<&LbConfig>) -> Option<SlowStart> {
        let s: &SlowStartConfig = match c? {
            LbConfig::RoundRobinLbConfig(r) => r.slow_start_config.as_ref()?,
            LbConfig::LeastRequestLbConfig(l) => l.slow_start_config.as_ref()?,
            _ => return None,
        };
        let window = s.slow_start_window.as_ref().map(duration)?;
        Some(SlowStart {
            window,
            aggression: s
                .aggression
                .as_ref()
                .map_or(1.0, |a| a.default_value)
                .max(0.01),
            min_weight_percent: s.min_weight_percent.as_ref().map_or(10.0, |p| p.value),
        })
    }

    fn factor(&self, age: Duration) -> f64 {
        if age >= self.window || self.window.is_zero() {
            return 1.0;
        }
        // Envoy counts at least one second of membership.
        let t = age.as_secs_f64().max(1.0) / self.window.as_secs_f64();
        t.powf(1.0 / self.aggression)
            .max(self.min_weight_percent / 100.0)
    }
}

impl Topology {
    /// Groups `endpoints` (already carrying priority and locality weight) into levels.
    pub fn build(
        endpoints: &[Endpoint],
        locality_weighted: bool,
        slow_start: Option<SlowStart>,
    ) -> Topology {
        let mut levels: Vec<Level> = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let pos = match levels.iter().position(|l| l.priority == e.priority) {
                Some(p) => p,
                None => {
                    levels.push(Level {
                        priority: e.priority,
                        ..Default::default()
                    });
                    levels.len() - 1
                }
            };
            let level = &mut levels[pos];
            level.endpoints.push(i as u32);
            let group = level
                .localities
                .iter()
                .position(|g| endpoints[g.endpoints[0] as usize].locality == e.locality);
            match group {
                Some(g) => level.localities[g].endpoints.push(i as u32),
                None => level.localities.push(LocalityGroup {
                    endpoints: vec![i as u32],
                    weight: e.locality_weight,
                    balancer: None,
                }),
            }
        }
        levels.sort_by_key(|l| l.priority);
        let warming_until = slow_start.as_ref().and_then(|s| {
            endpoints
                .iter()
                .filter_map(|e| e.health.added.get().map(|t| *t + s.window))
                .max()
        });
        Topology {
            levels,
            locality_weighted,
            slow_start,
            warming_until,
            first_level: None,
        }
    }

    /// Precomputes the all-healthy picks: over the first level of a multi-level cluster, and
    /// per locality of the first level when locality-weighted.
    pub fn add_balancers(
        &mut self,
        endpoints: &[Endpoint],
        policy: LbPolicy,
        state: &Arc<BalancerState>,
    ) {
        let balancer = |members: &[u32]| {
            let weights = members
                .iter()
                .map(|i| endpoints[*i as usize].weight)
                .collect();
            Balancer::new(policy, weights, Arc::clone(state))
        };
        let Some(first) = self.levels.first_mut() else {
            return;
        };
        if self.locality_weighted {
            for g in &mut first.localities {
                g.balancer = Some(balancer(&g.endpoints));
            }
        } else if self.levels.len() > 1 {
            self.first_level = Some(balancer(&self.levels[0].endpoints));
        }
    }

    /// Not warming up: weights are as configured.
    fn is_settled(&self) -> bool {
        self.warming_until.is_none_or(|t| Instant::now() >= t)
    }
}

/// The endpoint for one request; `hash` is the request hash for RING_HASH / MAGLEV clusters.
pub fn pick(c: &Cluster, hash: Option<u64>) -> Option<usize> {
    let n = c.endpoints.len();
    if n == 0 {
        return None;
    }
    let in_flight = |i: usize| c.endpoints[i].state.in_flight.load(Relaxed);
    // Only clusters with an active health check pay for scanning their endpoints.
    let all_healthy = c.outlier_stats.ejected.load(Relaxed) <= 0
        && (c.health_check.is_none()
            || c.endpoints
                .iter()
                .all(|e| !e.health.hc_failed.load(Relaxed)));
    if all_healthy && c.topology.is_settled() {
        let levels = &c.topology.levels;
        if c.topology.locality_weighted {
            // Every locality fully available: its configured weight, then its balancer.
            if hash.is_none()
                && let Some(g) = choose_locality(&levels[0].localities, &|_| true)
                && let Some(b) = &g.balancer
            {
                let k = b.pick(|k| in_flight(g.endpoints[k] as usize))?;
                return g.endpoints.get(k).map(|i| *i as usize);
            }
        } else if levels.len() <= 1 {
            if let (Some(h), Some(t)) = (hash, &c.hash_table) {
                return t.find(h, |_| true);
            }
            return c.balancer.pick(in_flight);
        }
        // Every level is healthy: the first takes 100%.
        let first = &levels[0].endpoints;
        if let (Some(h), Some(t)) = (hash, &c.hash_table) {
            return t.find(h, |i| c.endpoints[i].priority == levels[0].priority);
        }
        if let Some(b) = &c.topology.first_level {
            let k = b.pick(|k| in_flight(first[k] as usize))?;
            return first.get(k).map(|i| *i as usize);
        }
    }
    let healthy: Vec<bool> = c
        .endpoints
        .iter()
        .map(|e| e.health.is_healthy(&c.outlier_stats))
        .collect();
    let count = healthy.iter().filter(|h| **h).count();
    // Envoy's panic mode: below the threshold, health is ignored.
    let panic = (count as f64) * 100.0 < c.panic_threshold * n as f64;
    let ok = |i: u32| panic || healthy[i as usize];
    let level = choose_level(&c.topology.levels, &ok, hash)?;
    let candidates: Vec<u32> = if c.topology.locality_weighted {
        let group = choose_locality(&level.localities, &ok)?;
        group.endpoints.iter().copied().filter(|i| ok(*i)).collect()
    } else {
        level.endpoints.iter().copied().filter(|i| ok(*i)).collect()
    };
    if candidates.is_empty() {
        return None;
    }
    if let (Some(h), Some(t)) = (hash, &c.hash_table) {
        return t.find(h, |i| candidates.contains(&(i as u32)));
    }
    Some(choose_endpoint(c, &candidates, in_flight))
}

/// Envoy's priority load: each level's health is `1.4 × healthy / total` (capped at 100%);
/// levels take load in order until 100% is given; when the total health is below 100% the
/// loads are normalised.
fn choose_level<'a>(
    levels: &'a [Level],
    ok: &impl Fn(u32) -> bool,
    hash: Option<u64>,
) -> Option<&'a Level> {
    if levels.len() == 1 {
        return levels.first();
    }
    let health: Vec<f64> = levels
        .iter()
        .map(|l| {
            let good = l.endpoints.iter().filter(|i| ok(**i)).count() as f64;
            (OVERPROVISIONING * 100.0 * good / l.endpoints.len().max(1) as f64).min(100.0)
        })
        .collect();
    let sum: f64 = health.iter().sum();
    if sum <= 0.0 {
        return None;
    }
    let mut remaining = 100.0;
    let loads: Vec<f64> = health
        .iter()
        .map(|h| {
            let load = if sum < 100.0 {
                h * 100.0 / sum
            } else {
                h.min(remaining)
            };
            remaining -= load;
            load
        })
        .collect();
    let r = match hash {
        Some(h) => (h % 10_000) as f64 / 100.0,
        None => fastrand::f64() * 100.0,
    };
    let mut acc = 0.0;
    for (level, load) in levels.iter().zip(&loads) {
        acc += load;
        if r < acc {
            return Some(level);
        }
    }
    levels
        .iter()
        .zip(&loads)
        .rev()
        .find(|(_, l)| **l > 0.0)
        .map(|(lv, _)| lv)
}

/// Envoy's locality-weighted choice: weight × availability, availability being
/// `min(1, 1.4 × healthy / total)` of the locality.
fn choose_locality<'a>(
    groups: &'a [LocalityGroup],
    ok: &impl Fn(u32) -> bool,
) -> Option<&'a LocalityGroup> {
    let effective = |g: &LocalityGroup| {
        let good = g.endpoints.iter().filter(|i| ok(**i)).count() as f64;
        let avail = (OVERPROVISIONING * good / g.endpoints.len().max(1) as f64).min(1.0);
        f64::from(g.weight) * avail
    };
    let total: f64 = groups.iter().map(effective).sum();
    if total <= 0.0 {
        return None;
    }
    let mut r = fastrand::f64() * total;
    let mut last = None;
    for g in groups {
        let w = effective(g);
        if w <= 0.0 {
            continue;
        }
        if r < w {
            return Some(g);
        }
        r -= w;
        last = Some(g);
    }
    last
}

/// The cluster's policy over a subset of endpoints, with slow-start weights.
fn choose_endpoint(c: &Cluster, candidates: &[u32], in_flight: impl Fn(usize) -> u64) -> usize {
    let weight = |i: u32| {
        let e = &c.endpoints[i as usize];
        let base = f64::from(e.weight.max(1));
        match &c.topology.slow_start {
            Some(s) => base * s.factor(e.health.age()),
            None => base,
        }
    };
    if candidates.len() == 1 {
        return candidates[0] as usize;
    }
    let weights: Vec<f64> = candidates.iter().map(|i| weight(*i)).collect();
    let equal = weights
        .windows(2)
        .all(|w| (w[0] - w[1]).abs() < f64::EPSILON);
    let draw = |weights: &[f64]| {
        let total: f64 = weights.iter().sum();
        let mut r = fastrand::f64() * total;
        for (k, w) in weights.iter().enumerate() {
            if r < *w {
                return candidates[k] as usize;
            }
            r -= w;
        }
        candidates[candidates.len() - 1] as usize
    };
    match c.balancer.policy() {
        LbPolicy::RoundRobin if equal => {
            let k = c.balancer.next();
            candidates[k % candidates.len()] as usize
        }
        LbPolicy::LeastRequest if equal => {
            let a = fastrand::usize(..candidates.len());
            let b = (a + 1 + fastrand::usize(..candidates.len() - 1)) % candidates.len();
            let (ia, ib) = (candidates[a] as usize, candidates[b] as usize);
            if in_flight(ib) < in_flight(ia) {
                ib
            } else {
                ia
            }
        }
        LbPolicy::LeastRequest => {
            let effective: Vec<f64> = candidates
                .iter()
                .zip(&weights)
                .map(|(i, w)| w / (in_flight(*i as usize) + 1) as f64)
                .collect();
            draw(&effective)
        }
        _ => draw(&weights),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(priority: u32, n: u32) -> Level {
        Level {
            priority,
            endpoints: (priority * 100..priority * 100 + n).collect(),
            localities: Vec::new(),
        }
    }

    fn shares(levels: &[Level], ok: impl Fn(u32) -> bool) -> Vec<f64> {
        let runs = 20_000;
        let mut c = vec![0usize; levels.len()];
        for _ in 0..runs {
            if let Some(l) = choose_level(levels, &ok, None) {
                c[levels.iter().position(|x| std::ptr::eq(x, l)).unwrap_or(0)] += 1;
            }
        }
        c.iter().map(|n| 100.0 * *n as f64 / runs as f64).collect()
    }

    #[test]
    fn priority_load_follows_envoy_overprovisioning() {
        let levels = [level(0, 10), level(1, 10)];
        // All healthy: everything to P0.
        assert_eq!(shares(&levels, |_| true), vec![100.0, 0.0]);
        // 3 of 10 down in P0: 70% × 1.4 = 98% stays, 2% spills to P1.
        let s = shares(&levels, |i| !(0..3).contains(&i));
        assert!(
            (s[0] - 98.0).abs() < 1.0 && (s[1] - 2.0).abs() < 1.0,
            "{s:?}"
        );
        // P0 gone: all to P1.
        assert_eq!(shares(&levels, |i| i >= 100), vec![0.0, 100.0]);
        // Both half down: 70% + 70% > 100, so P0 70% and P1 30%.
        let s = shares(&levels, |i| i % 100 >= 5);
        assert!(
            (s[0] - 70.0).abs() < 1.5 && (s[1] - 30.0).abs() < 1.5,
            "{s:?}"
        );
        // Nothing healthy anywhere: no level.
        assert!(choose_level(&levels, &|_| false, None).is_none());
    }

    #[test]
    fn locality_weights_scale_with_availability() {
        let groups = [
            LocalityGroup {
                endpoints: vec![0, 1],
                weight: 1,
                balancer: None,
            },
            LocalityGroup {
                endpoints: vec![2],
                weight: 2,
                balancer: None,
            },
        ];
        let share_of_first = |ok: &dyn Fn(u32) -> bool| {
            let mut first = 0;
            for _ in 0..20_000 {
                if choose_locality(&groups, &ok).is_some_and(|g| g.weight == 1) {
                    first += 1;
                }
            }
            100.0 * first as f64 / 20_000.0
        };
        let all = share_of_first(&|_| true);
        assert!((all - 33.3).abs() < 1.5, "{all}");
        // Half of the first locality down: availability 0.7, so it gets 0.7 / 2.7.
        let half = share_of_first(&|i| i != 0);
        assert!((half - 25.9).abs() < 1.5, "{half}");
    }

    #[test]
    fn slow_start_ramps_weight() {
        let s = SlowStart {
            window: Duration::from_secs(10),
            aggression: 1.0,
            min_weight_percent: 10.0,
        };
        assert!((s.factor(Duration::ZERO) - 0.1).abs() < 1e-9);
        assert!((s.factor(Duration::from_secs(5)) - 0.5).abs() < 1e-9);
        assert!((s.factor(Duration::from_secs(20)) - 1.0).abs() < 1e-9);
        let aggressive = SlowStart {
            aggression: 2.0,
            ..s
        };
        assert!((aggressive.factor(Duration::from_millis(2500)) - 0.5).abs() < 1e-9);
    }
}
