//! `trellis ratelimit`: the global rate limit service on its own. Reads the RateLimitPolicy
//! and QuotaPolicy objects of a config store (directory or etcd, followed for changes),
//! serves `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` on `--port`, counts
//! in Redis (`--redis`, `--redis-cluster`), and serves `/metrics` on `--metrics-port`.
//! The same service runs inside `trellis control --ratelimit-port`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use trellis_control::ratelimit::RateLimiter;
use trellis_control::ratelimit::redis::RedisConfig;
use trellis_control::store;

use crate::{RateLimitArgs, RedisArgs};

/// How long one metrics connection may live.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

impl TryFrom<&RedisArgs> for RedisConfig {
    type Error = anyhow::Error;

    fn try_from(args: &RedisArgs) -> anyhow::Result<RedisConfig> {
        let nodes: Vec<String> = args
            .redis
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if nodes.is_empty() {
            anyhow::bail!("--redis HOST:PORT is required");
        }
        if nodes.len() > 1 && !args.redis_cluster {
            anyhow::bail!(
                "--redis {}: several nodes need --redis-cluster",
                nodes.join(",")
            );
        }
        let timeout = parse_millis(&args.redis_timeout)
            .map_err(|e| anyhow::anyhow!("--redis-timeout {:?}: {e}", args.redis_timeout))?;
        Ok(RedisConfig {
            nodes,
            cluster: args.redis_cluster,
            timeout,
        })
    }
}

/// `250ms`, `1s`, `2m`.
pub fn parse_millis(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a whole number and a unit: 100ms, 1s".to_owned())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("unit {unit:?}: expected ms, s or m")),
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// Runs the service until a listener fails, or Ctrl-C.
pub async fn run(args: RateLimitArgs) -> anyhow::Result<()> {
    let redis = RedisConfig::try_from(&args.redis)?;
    let addr = SocketAddr::new(args.address, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind rate limit service {addr}; is another one running?"))?;
    let metrics_listener = match args.metrics_port {
        Some(port) => {
            let addr = SocketAddr::new(args.address, port);
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind metrics {addr}"))?,
            )
        }
        None => None,
    };
    let store = store::open(&args.store)
        .await
        .with_context(|| format!("open store {}", args.store))?;
    let config = store.watch();
    let limiter = RateLimiter::new(&redis, &config);
    tokio::spawn(Arc::clone(&limiter).follow(config));
    eprintln!(
        "trellis ratelimit: store {}, redis {}, ShouldRateLimit on {}",
        args.store,
        redis.nodes.join(","),
        listener.local_addr()?
    );
    let metrics = {
        let limiter = Arc::clone(&limiter);
        async move {
            match metrics_listener {
                Some(listener) => serve_metrics(listener, limiter).await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        r = limiter.serve(listener) => r,
        r = metrics => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// `/metrics` (Prometheus text) and `/ready` over HTTP/1.1.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    limiter: Arc<RateLimiter>,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let limiter = Arc::clone(&limiter);
                async move {
                    let mut response = match req.uri().path() {
                        "/metrics" => {
                            let mut out = String::new();
                            limiter.encode_metrics(&mut out);
                            let mut r = http::Response::new(Full::new(Bytes::from(out)));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(
                                    "text/plain; version=0.0.4; charset=utf-8",
                                ),
                            );
                            r
                        }
                        "/ready" => http::Response::new(Full::new(Bytes::from("ready\n"))),
                        _ => {
                            let mut r = http::Response::new(Full::new(Bytes::from(
                                "not found: /metrics or /ready\n",
                            )));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    response.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("no-store"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_timeouts_parse() {
        assert_eq!(parse_millis("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_millis("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_millis("0ms").is_err());
        assert!(parse_millis("5h").is_err());
    }
}
