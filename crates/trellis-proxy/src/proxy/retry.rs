//! The attempt loop of one request: pick an endpoint (a retry prefers one not tried yet), get a
//! connection (circuit breakers may refuse: `UO`), send, and decide from the outcome whether to
//! try again under the route's retry policy, the cluster's retry budget and `max_retries`.
//! Only requests safe to repeat are retried after they may have reached the upstream
//! (`RetryPolicy::may_repeat`); a request that never did (connect failure, refused or GOAWAY'd
//! stream) is retried whatever its method. A request body is replayed only if it was buffered
//! (known length, at most [`MAX_RETRY_BODY`]); a GET without body costs no buffering at all, and
//! a request that cannot be retried after sending is moved, not copied. Waits between attempts
//! follow Envoy's jittered exponential backoff, or a 503/429's `Retry-After`. The route timeout
//! bounds all attempts together; `per_try_timeout` each one. Does not route or record telemetry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{RequestBody, RequestLog};
use super::mirror::Tee;
use super::{Local, headers, poll_registered, root_cause};
use crate::runtime::Cluster;
use crate::runtime::balancer::InFlight;
use crate::runtime::circuit::RetrySlot;
use crate::runtime::outlier::Outcome as Observed;
use crate::runtime::pool::{Lease, UpstreamError};
use crate::runtime::retry::{Outcome, RetryPolicy};
use crate::telemetry::upstream_stats::ClusterStats;

/// Request bodies up to this size are buffered so that a retry can send them again; larger
/// ones (and bodies of unknown length) are streamed and not retried once sent.
pub const MAX_RETRY_BODY: u64 = 64 * 1024;
/// Envoy's header telling the upstream which attempt this is.
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// Longest `Retry-After` honoured (Envoy's default max for rate-limited backoff).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const ATTEMPT_VALUES: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

/// One request's attempts.
pub(super) struct Attempts<'a> {
    pub cluster: &'a Arc<Cluster>,
    pub policy: Option<&'a RetryPolicy>,
    /// The request may be repeated once it may have reached the upstream.
    pub repeatable: bool,
    /// Set `x-envoy-attempt-count` (the virtual host's `include_request_attempt_count`).
    pub attempt_count: bool,
    /// The route timeout (or stream idle timeout) all attempts share, for messages.
    pub wait: Duration,
    /// The request's hash for RING_HASH / MAGLEV clusters.
    pub hash: Option<u64>,
}

/// How one attempt ended, short of a usable response.
enum Failure {
    Overflow(&'static str),
    Connect(UpstreamError),
    Send(UpstreamError),
    PerTryTimeout,
}

/// Either the attempt's result or which timer fired first.
enum Raced<T> {
    Done(T),
    PerTry,
    Global,
}

impl Attempts<'_> {
    /// Run attempts until one gives a response to return or a failure not to retry.
    pub(super) async fn run(
        self,
        mut parts: Parts,
        body: Incoming,
        mut tee: Option<Tee>,
        timer: &mut Pin<Box<tokio::time::Sleep>>,
        log: &mut RequestLog,
    ) -> Result<Response<Incoming>, Local> {
        let cluster = self.cluster;
        let stats = Arc::clone(&cluster.circuit.stats);
        let retries = self.policy.map_or(0, |p| p.num_retries);
        // Keep the body for a resend only if a response (or a reset after sending) could be
        // retried for this request at all.
        let resend =
            self.policy.is_some_and(|p| p.retries_after_send()) && retries > 0 && self.repeatable;
        let mut replay = None;
        let mut stream = Some(body);
        if resend && let Some(b) = stream.take_if(|b| fits_buffer(b)) {
            replay = Some(if b.is_end_stream() {
                (Bytes::new(), None)
            } else {
                self.buffer(b, timer, log).await?
            });
        }
        let mut attempt: u32 = 1;
        let mut tried = Tried::default();
        let mut moved = false;
        let mut sent = false;
        let mut _retry_slot: Option<RetrySlot> = None;
        loop {
            let Some(index) = self.pick(attempt, &tried) else {
                let msg = format!("no healthy upstream for cluster {:?}\n", cluster.name);
                return Err(Local::new(StatusCode::SERVICE_UNAVAILABLE, "UH", msg));
            };
            let endpoint = &cluster.endpoints[index];
            tried.add(index);
            log.upstream = Some((Arc::clone(cluster), index));
            log.in_flight = Some(InFlight::new(&endpoint.state));
            if self.attempt_count {
                let v = ATTEMPT_VALUES.get(attempt as usize - 1).map_or_else(
                    || HeaderValue::from(attempt),
                    |s| HeaderValue::from_static(s),
                );
                parts.headers.insert(&X_ENVOY_ATTEMPT_COUNT, v);
            }
            let last = attempt > retries;
            let per_try = self.policy.and_then(|p| p.per_try_timeout);
            let pool = &endpoint.pool;
            let received = &log.received;
            let replay_ref = &replay;
            let parts_ref = &mut parts;
            let stream_ref = &mut stream;
            let moved_ref = &mut moved;
            let tee_ref = &mut tee;
            let sent_ref = &mut sent;
            *sent_ref = false;
            let send = async move {
                let conn = pool.connection().await.map_err(|e| match e {
                    UpstreamError::Overflow(why) => Failure::Overflow(why),
                    e => Failure::Connect(e),
                })?;
                *sent_ref = true;
                let body = match replay_ref {
                    Some((data, trailers)) => {
                        RequestBody::buffered(data.clone(), trailers.clone(), Arc::clone(received))
                    }
                    None => match stream_ref.take() {
                        Some(b) => RequestBody::new(b, Arc::clone(received)),
                        None => RequestBody::buffered(Bytes::new(), None, Arc::clone(received)),
                    },
                };
                // Mirrors copy the body of the first attempt that sends it.
                let body = body.with_tee(tee_ref.take());
                // The head is copied only when another attempt could still send it.
                let req = if replay_ref.is_some() && !last {
                    copy_head(parts_ref, body)
                } else {
                    *moved_ref = true;
                    let taken = std::mem::replace(parts_ref, Request::new(()).into_parts().0);
                    Request::from_parts(taken, body)
                };
                pool.send_on(conn, req).await.map_err(Failure::Send)
            };
            let result = match race(send, timer, per_try).await {
                Raced::Global => {
                    cluster.report(endpoint, Observed::Timeout);
                    return Err(self.timed_out(endpoint.addr));
                }
                Raced::PerTry => Err(Failure::PerTryTimeout),
                Raced::Done(r) => r,
            };
            let resendable = !moved || replay.is_some();
            let (outcome, failure) = match result {
                Ok((resp, lease)) => {
                    // A trailers-only gRPC answer counts as the HTTP status its grpc-status maps
                    // to (Envoy).
                    let status = match resp.headers().get("grpc-status") {
                        Some(code) => crate::runtime::outlier::grpc_to_http(code.as_bytes()),
                        None => resp.status().as_u16(),
                    };
                    cluster.report(endpoint, Observed::Status(status));
                    let retriable = self.repeatable
                        && replay.is_some()
                        && self
                            .policy
                            .is_some_and(|p| p.retries_response(resp.status(), resp.headers()));
                    if !retriable {
                        if attempt > 1 {
                            ClusterStats::inc(&stats.rq_retry_success);
                        }
                        return Ok(finish(resp, lease, log));
                    }
                    let delay = match retry_after(&resp) {
                        Some(d) if remaining(timer) <= d => return Ok(finish(resp, lease, log)),
                        Some(d) => Some(d),
                        None => None,
                    };
                    if attempt > retries {
                        ClusterStats::inc(&stats.rq_retry_limit_exceeded);
                        log.flags = "URX";
                        let mut resp = finish(resp, lease, log);
                        resp.headers_mut()
                            .insert(&headers::X_TRELLIS_FLAGS, HeaderValue::from_static("URX"));
                        return Ok(resp);
                    }
                    match cluster.circuit.begin_retry(&cluster.limits, Instant::now()) {
                        Some(slot) => _retry_slot = Some(slot),
                        None => {
                            ClusterStats::inc(&stats.rq_retry_overflow);
                            log.flags = "UO";
                            let mut resp = finish(resp, lease, log);
                            resp.headers_mut()
                                .insert(&headers::X_TRELLIS_FLAGS, HeaderValue::from_static("UO"));
                            return Ok(resp);
                        }
                    }
                    // The response is dropped unread (its connection closes).
                    drop((resp, lease));
                    self.backoff(delay, attempt, timer)
                        .await
                        .map_err(|()| self.timed_out(endpoint.addr))?;
                    ClusterStats::inc(&stats.rq_retry);
                    attempt += 1;
                    continue;
                }
                Err(Failure::Overflow(why)) => {
                    ClusterStats::inc(&stats.rq_pending_overflow);
                    let msg = format!(
                        "upstream overflow for cluster {:?}: {why} (circuit breaker)\n",
                        cluster.name
                    );
                    return Err(Local::new(StatusCode::SERVICE_UNAVAILABLE, "UO", msg));
                }
                Err(Failure::Connect(e)) => (
                    Outcome::ConnectFailure,
                    self.failure(&e, endpoint.addr, "UF"),
                ),
                Err(Failure::PerTryTimeout) if !sent => {
                    // Still connecting: nothing was sent.
                    let msg = format!(
                        "upstream connect to {} timed out (per-try timeout)\n",
                        endpoint.addr
                    );
                    (
                        Outcome::ConnectFailure,
                        Local::new(StatusCode::GATEWAY_TIMEOUT, "UT", msg),
                    )
                }
                Err(Failure::PerTryTimeout) => {
                    let msg = format!(
                        "upstream {} for cluster {:?} sent no response within the per-try timeout\n",
                        endpoint.addr, cluster.name
                    );
                    (
                        Outcome::PerTryTimeout,
                        Local::new(StatusCode::GATEWAY_TIMEOUT, "UT", msg),
                    )
                }
                Err(Failure::Send(e)) => {
                    let outcome = if never_processed(&e) {
                        Outcome::RefusedStream
                    } else {
                        Outcome::Reset
                    };
                    (outcome, self.failure(&e, endpoint.addr, "UC"))
                }
            };
            // A failure: the outlier detector learns of it, then retry if the policy covers it
            // and the request can be sent again.
            cluster.report(
                endpoint,
                match outcome {
                    Outcome::ConnectFailure => Observed::ConnectFailed,
                    Outcome::PerTryTimeout => Observed::Timeout,
                    _ => Observed::Reset,
                },
            );
            let covered = self
                .policy
                .is_some_and(|p| p.retries_failure(outcome, self.repeatable && replay.is_some()))
                && resendable;
            if !covered {
                return Err(failure);
            }
            if attempt > retries {
                ClusterStats::inc(&stats.rq_retry_limit_exceeded);
                return Err(with_urx(failure));
            }
            match cluster.circuit.begin_retry(&cluster.limits, Instant::now()) {
                Some(slot) => _retry_slot = Some(slot),
                None => {
                    ClusterStats::inc(&stats.rq_retry_overflow);
                    return Err(failure);
                }
            }
            self.backoff(None, attempt, timer)
                .await
                .map_err(|()| self.timed_out(endpoint.addr))?;
            ClusterStats::inc(&stats.rq_retry);
            attempt += 1;
        }
    }

    /// The endpoint for `attempt`: a retry re-picks (up to the policy's host selection
    /// attempts) to find one not tried yet.
    fn pick(&self, attempt: u32, tried: &Tried) -> Option<usize> {
        let cluster = self.cluster;
        let tries = match self.policy {
            Some(p) if attempt > 1 && p.avoid_previous_hosts => p.host_selection_attempts,
            _ => 1,
        };
        let mut chosen = None;
        for _ in 0..tries {
            let e = cluster.pick(self.hash)?;
            let i = cluster.endpoints.iter().position(|x| std::ptr::eq(x, e))?;
            chosen = Some(i);
            if !tried.contains(i) {
                break;
            }
        }
        chosen
    }

    /// Read a body of known length (at most [`MAX_RETRY_BODY`]) so it can be sent again.
    async fn buffer(
        &self,
        body: Incoming,
        timer: &mut Pin<Box<tokio::time::Sleep>>,
        log: &RequestLog,
    ) -> Result<(Bytes, Option<HeaderMap>), Local> {
        match race(body.collect(), timer, None).await {
            Raced::Done(Ok(collected)) => {
                let trailers = collected.trailers().cloned();
                let data = collected.to_bytes();
                log.received
                    .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok((data, trailers))
            }
            Raced::Done(Err(e)) => Err(Local::new(
                StatusCode::BAD_REQUEST,
                "DC",
                format!("request body: {}\n", root_cause(&e)),
            )),
            Raced::Global | Raced::PerTry => Err(Local::new(
                StatusCode::REQUEST_TIMEOUT,
                "SI",
                format!("request body not received within {:?}\n", self.wait),
            )),
        }
    }

    /// Wait before retry `attempt` + 1; `Err` if the route timeout fires first.
    async fn backoff(
        &self,
        retry_after: Option<Duration>,
        attempt: u32,
        timer: &mut Pin<Box<tokio::time::Sleep>>,
    ) -> Result<(), ()> {
        let delay = retry_after
            .unwrap_or_else(|| self.policy.map_or(Duration::ZERO, |p| p.backoff(attempt)));
        if delay.is_zero() {
            return Ok(());
        }
        match race(tokio::time::sleep(delay), timer, None).await {
            Raced::Done(()) => Ok(()),
            _ => Err(()),
        }
    }

    fn failure(&self, e: &UpstreamError, addr: std::net::SocketAddr, flag: &'static str) -> Local {
        let name = &self.cluster.name;
        let msg = if flag == "UF" {
            format!(
                "upstream connect error to {addr} for cluster {name:?}: {}\n",
                root_cause(e)
            )
        } else {
            format!(
                "upstream {addr} for cluster {name:?} reset the request: {}\n",
                root_cause(e)
            )
        };
        Local::new(StatusCode::SERVICE_UNAVAILABLE, flag, msg)
    }

    fn timed_out(&self, addr: std::net::SocketAddr) -> Local {
        let msg = format!(
            "upstream {addr} for cluster {:?} sent no response within {:?}\n",
            self.cluster.name, self.wait
        );
        Local::new(StatusCode::GATEWAY_TIMEOUT, "UT", msg)
    }
}

/// Endpoints already tried (by index; beyond 64 endpoints only the first 64 are remembered).
#[derive(Default)]
struct Tried(u64);

impl Tried {
    fn add(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }
    fn contains(&self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }
}

/// A body that is empty or of known length up to [`MAX_RETRY_BODY`].
fn fits_buffer(b: &Incoming) -> bool {
    b.is_end_stream() || b.size_hint().exact().is_some_and(|n| n <= MAX_RETRY_BODY)
}

fn copy_head(parts: &Parts, body: RequestBody) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

fn finish(
    mut resp: Response<Incoming>,
    lease: Option<Lease>,
    log: &mut RequestLog,
) -> Response<Incoming> {
    log.lease = lease;
    headers::strip_hop_by_hop(resp.headers_mut());
    resp
}

/// `Retry-After` in seconds on a 503 or 429 (the HTTP-date form is not honoured).
fn retry_after(resp: &Response<Incoming>) -> Option<Duration> {
    if !matches!(resp.status().as_u16(), 429 | 503) {
        return None;
    }
    let secs: u64 = resp
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn remaining(timer: &Pin<Box<tokio::time::Sleep>>) -> Duration {
    timer
        .deadline()
        .saturating_duration_since(tokio::time::Instant::now())
}

/// A failure after sending that proves the upstream never processed the request: HTTP/2
/// REFUSED_STREAM, a stream beyond a graceful GOAWAY, or hyper cancelling a request it never
/// wrote because the connection closed first.
fn never_processed(e: &UpstreamError) -> bool {
    let UpstreamError::Request(e) = e else {
        return false;
    };
    if e.is_canceled() {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        cur = err.source();
    }
    false
}

fn with_urx(mut local: Local) -> Local {
    local.flag = match local.flag {
        "UF" => "UF,URX",
        "UC" => "UC,URX",
        "UT" => "UT,URX",
        _ => "URX",
    };
    local
}

/// Poll `fut` against the shared route timer and an optional per-try timeout. One timer serves
/// both: for the attempt it is moved to the per-try deadline when that comes first, then put
/// back, so an attempt costs no timer of its own (a fresh `Sleep` per attempt showed up in the
/// per-request cost).
async fn race<F: Future>(
    fut: F,
    timer: &mut Pin<Box<tokio::time::Sleep>>,
    per_try: Option<Duration>,
) -> Raced<F::Output> {
    tokio::pin!(fut);
    let global = timer.deadline();
    let per_try = per_try
        .map(|d| tokio::time::Instant::now() + d)
        .filter(|d| *d < global);
    if let Some(d) = per_try {
        timer.as_mut().reset(d);
    }
    let mut registered = false;
    let raced = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Raced::Done(r));
        }
        poll_registered(timer.as_mut(), &mut registered, cx).map(|()| match per_try {
            Some(_) => Raced::PerTry,
            None => Raced::Global,
        })
    })
    .await;
    if per_try.is_some() {
        timer.as_mut().reset(global);
    }
    raced
}
