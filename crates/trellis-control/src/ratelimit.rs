//! The global rate limit service: Envoy's `envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`, served by `trellis ratelimit` and inside `trellis control`, with
//! counters in Redis (fixed windows, `INCRBY` + `EXPIRE` pipelined, as envoyproxy/ratelimit).
//!
//! The limits come from the served configuration: every `RateLimitPolicy` limit with a
//! `global` rate and every `QuotaPolicy` quota ([`table`]), found by a descriptor's first
//! entry as `RATELIMIT-CONTRACT.md` says; the table is rebuilt when the configuration changes
//! and swapped atomically. Unknown descriptors (or another domain) are answered OK with no
//! limit; Redis failing or timing out is answered `UNAVAILABLE`, and the proxy applies its
//! failure mode. Quota usage is read back for the management API ([`RateLimiter::quota_usage`]).
//!
//! Must not know about proxies or xDS: it only follows a [`ConfigWatch`].

pub mod metrics;
pub mod redis;
mod service;
pub mod table;
pub mod window;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use serde_json::{Value, json};
use tonic::Status;

use crate::ConfigWatch;
use metrics::{LimitLabels, Metrics, Outcome};
use redis::{Command, Group, Redis, RedisConfig, RedisError};
pub use service::RateLimitGrpc;
use table::{LimitTable, Rule, counter_key, quota_entries};
use window::{Window, WindowKind, rfc3339};

/// Largest number of descriptors in one request (Envoy sends one per applicable limit).
const MAX_DESCRIPTORS: usize = 64;

/// The service: the current limit table, Redis, and the metrics.
pub struct RateLimiter {
    table: ArcSwap<LimitTable>,
    redis: Redis,
    metrics: Metrics,
}

/// Why quota usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("no QuotaPolicy {0} in the served configuration")]
    NotFound(String),
    #[error("{0}")]
    Redis(#[from] RedisError),
}

/// One descriptor with a rule, on its way to Redis.
struct Counted<'a> {
    index: usize,
    rule: &'a Rule,
    window: Window,
    hits: u64,
}

impl RateLimiter {
    /// A service with the limits of `config` (and of every later configuration once
    /// [`RateLimiter::follow`] runs). Redis is connected lazily.
    pub fn new(redis: &RedisConfig, config: &ConfigWatch) -> Arc<RateLimiter> {
        let table = LimitTable::from_snapshot(&config.borrow().loaded.snapshot);
        let metrics = Metrics::default();
        metrics.set_rules(table.len());
        Arc::new(RateLimiter {
            table: ArcSwap::from_pointee(table),
            redis: Redis::new(redis),
            metrics,
        })
    }

    /// Rebuilds the table on every configuration change until the store's channel closes.
    pub async fn follow(self: Arc<Self>, mut config: ConfigWatch) {
        while config.changed().await.is_ok() {
            let state = config.borrow_and_update().clone();
            let table = LimitTable::from_snapshot(&state.loaded.snapshot);
            tracing::info!(
                revision = state.revision,
                rules = table.len(),
                domain = %table.domain,
                "rate limit table updated"
            );
            self.metrics.set_rules(table.len());
            self.table.store(Arc::new(table));
        }
    }

    /// Serves `ShouldRateLimit` (gRPC over h2c) on `listener` until it fails.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let local = listener.local_addr()?;
        tracing::info!(address = %local, redis = self.redis.name(), "rate limit service listening");
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .serve_with_incoming(
                RateLimitGrpc(self),
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .map_err(|e| anyhow::anyhow!("rate limit service on {local}: {e}"))
    }

    /// Appends the service's metrics in Prometheus text format.
    pub fn encode_metrics(&self, out: &mut String) {
        self.metrics.encode(out);
    }

    /// Counts the request's descriptors and answers as the contract says.
    pub async fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "{} descriptors; at most {MAX_DESCRIPTORS} are accepted",
                request.descriptors.len()
            )));
        }
        let table = self.table.load();
        let now = unix_now();
        let request_hits = u64::from(request.hits_addend.max(1));
        let mut counted = Vec::new();
        let mut groups = Vec::new();
        if request.domain == table.domain {
            for (index, descriptor) in request.descriptors.iter().enumerate() {
                let Some(rule) = table.rule(&descriptor.entries) else {
                    continue;
                };
                let hits = descriptor
                    .hits_addend
                    .map_or(request_hits, |h| h.value)
                    .max(1);
                let window = rule.window.at(now);
                let key = counter_key(&table.domain, &descriptor.entries, window);
                groups.push(increment(key, hits, window));
                counted.push(Counted {
                    index,
                    rule,
                    window,
                    hits,
                });
            }
        }
        let replies = match self.redis.run(&groups).await {
            Ok(replies) => replies,
            Err(e) => {
                self.metrics.redis_error(e.reason());
                tracing::warn!(error = %e, "rate limit check failed: redis");
                return Err(Status::unavailable(e.to_string()));
            }
        };
        let mut statuses: Vec<DescriptorStatus> = request
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                ..DescriptorStatus::default()
            })
            .collect();
        let mut over = false;
        for (c, replies) in counted.iter().zip(replies) {
            let after = match replies.first().and_then(redis::Reply::as_integer) {
                Some(n) => n.max(0) as u64,
                None => {
                    self.metrics.redis_error("reply");
                    let e = format!(
                        "redis {}: INCRBY answered {:?}",
                        self.redis.name(),
                        replies.first()
                    );
                    tracing::warn!(error = %e, "rate limit check failed: redis");
                    return Err(Status::unavailable(e));
                }
            };
            let labels = LimitLabels {
                domain: table.domain.clone(),
                key: c.rule.name.clone(),
            };
            self.metrics.record(
                &labels,
                &Outcome {
                    hits: c.hits,
                    after,
                    limit: c.rule.requests,
                    shadow: c.rule.shadow,
                },
            );
            let is_over = after > c.rule.requests && !c.rule.shadow;
            over |= is_over;
            statuses[c.index] = DescriptorStatus {
                code: if is_over { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: u32::try_from(c.rule.requests).unwrap_or(u32::MAX),
                    unit: unit(c.rule.window) as i32,
                }),
                limit_remaining: u32::try_from(c.rule.requests.saturating_sub(after))
                    .unwrap_or(u32::MAX),
                duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: c.window.end.saturating_sub(now) as i64,
                    nanos: 0,
                }),
                quota: None,
            };
        }
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..RateLimitResponse::default()
        })
    }

    /// The usage of each quota of QuotaPolicy `namespace/policy` by `consumer` in the current
    /// window, as the management API serves it.
    pub async fn quota_usage(
        &self,
        namespace: &str,
        policy: &str,
        consumer: &str,
    ) -> Result<Value, UsageError> {
        let table = self.table.load();
        let rules = table
            .quotas(namespace, policy)
            .ok_or_else(|| UsageError::NotFound(format!("{namespace}/{policy}")))?;
        let now = unix_now();
        let windows: Vec<Window> = rules.iter().map(|r| r.window.at(now)).collect();
        let groups: Vec<Group> = rules
            .iter()
            .zip(&windows)
            .map(|(rule, window)| {
                let key = counter_key(&table.domain, &quota_entries(rule, consumer), *window);
                Group {
                    commands: vec![Command::new("GET").arg(&key)],
                    key: key.into_bytes(),
                }
            })
            .collect();
        let replies = self.redis.run(&groups).await.inspect_err(|e| {
            self.metrics.redis_error(e.reason());
        })?;
        let quotas: Vec<Value> = rules
            .iter()
            .zip(&windows)
            .zip(replies)
            .map(|((rule, window), replies)| {
                let used = replies
                    .first()
                    .and_then(redis::Reply::as_integer)
                    .unwrap_or(0)
                    .max(0) as u64;
                json!({
                    "name": rule.name.rsplit('/').next().unwrap_or(&rule.name),
                    "limit": rule.requests,
                    "window": rule.window.name(),
                    "windowStart": rfc3339(window.start),
                    "windowEnd": rfc3339(window.end),
                    "used": used,
                    "remaining": rule.requests.saturating_sub(used),
                    "shadow": rule.shadow,
                })
            })
            .collect();
        Ok(json!({
            "namespace": namespace,
            "policy": policy,
            "consumer": consumer,
            "domain": table.domain,
            "quotas": quotas,
        }))
    }
}

/// `INCRBY key hits` and `EXPIRE key <window length>`, pipelined.
fn increment(key: String, hits: u64, window: Window) -> Group {
    Group {
        commands: vec![
            Command::new("INCRBY").arg(&key).arg(hits.to_string()),
            Command::new("EXPIRE")
                .arg(&key)
                .arg(window.seconds().to_string()),
        ],
        key: key.into_bytes(),
    }
}

/// The response unit of a rule's window.
fn unit(window: WindowKind) -> Unit {
    match window.name() {
        "SECOND" => Unit::Second,
        "MINUTE" => Unit::Minute,
        "HOUR" => Unit::Hour,
        "DAY" => Unit::Day,
        _ => Unit::Month,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
