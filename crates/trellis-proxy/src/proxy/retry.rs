//! The attempt loop of one request: pick an endpoint (a retry prefers one not tried yet), get a
//! connection (circuit breakers may refuse: `UO`), send, and decide from the outcome whether to
//! try again under the route's retry policy, the cluster's retry budget and `max_retries`.
//! Only requests safe to repeat are retried after they may have reached the upstream
//! (`RetryPolicy::may_repeat`); a request that never did (connect failure, refused or GOAWAY'd
//! stream) is retried whatever its method. A request body is replayed only if it was buffered
//! (known length, at most [`MAX_RETRY_BODY`]); a GET without body costs no buffering at all.
//! The request head always goes to the upstream as is; when a resend is possible a light copy
//! ([`KeptHead`], no header map of its own) is kept and a retry rebuilds the head from it. Waits between attempts
//! follow Envoy's jittered exponential backoff, or a 503/429's `Retry-After` (seconds or an
//! HTTP-date). The route timeout bounds all attempts together; `per_try_timeout` each one.
//! Does not route or record telemetry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{RequestBody, RequestLog};
use super::mirror::Tee;
use super::{Local, headers, poll_registered, root_cause};
use crate::runtime::balancer::InFlight;
use crate::runtime::circuit::RetrySlot;
use crate::runtime::outlier::Outcome as Observed;
use crate::runtime::pool::{Lease, UpstreamError};
use crate::runtime::retry::{Outcome, RetryPolicy};
use crate::runtime::{Cluster, locality};
use crate::telemetry::upstream_stats::ClusterStats;

/// Request bodies up to this size are buffered so that a retry can send them again; larger
/// ones (and bodies of unknown length) are streamed and not retried once sent.
pub const MAX_RETRY_BODY: u64 = 64 * 1024;
/// Envoy's header telling the upstream which attempt this is.
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// Longest `Retry-After` honoured (Envoy's default max for rate-limited backoff).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Headers of a kept request head stored inline (more go to the heap).
const KEPT_INLINE: usize = 8;
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

/// The request head kept for a resend while the original goes to the upstream: method, URI,
/// version and the header list, the first [`KEPT_INLINE`] headers without a heap allocation (a
/// header map copy costs two allocations and frees and showed in the per-request cost of every
/// retriable request). A retry rebuilds a header map from it.
struct KeptHead {
    method: Method,
    uri: Uri,
    version: Version,
    inline: [Option<(HeaderName, HeaderValue)>; KEPT_INLINE],
    spill: Vec<(HeaderName, HeaderValue)>,
}

/// The route timer shared by all attempts of a request and the route deadline.
struct Clock<'t> {
    timer: &'t mut Pin<Box<tokio::time::Sleep>>,
    route: tokio::time::Instant,
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
        // The caller took `timer` for `first_wait()`: the first attempt's per-try deadline, or
        // the route deadline. Both are derived from that without reading the clock again.
        let per_try = self.policy.and_then(|p| p.per_try_timeout);
        let started = timer.deadline() - self.first_wait();
        let mut clock = Clock {
            timer,
            route: started + self.wait,
        };
        let retries = self.policy.map_or(0, |p| p.num_retries);
        // Keep the body for a resend only if a response (or a reset after sending) could be
        // retried for this request at all.
        let resend =
            self.policy.is_some_and(|p| p.retries_after_send()) && retries > 0 && self.repeatable;
        let mut replay = None;
        let mut stream = Some(body);
        // Reading a body takes time the first attempt's per-try timeout must not include.
        let mut read_body = false;
        if resend && let Some(b) = stream.take_if(|b| fits_buffer(b)) {
            replay = Some(if b.is_end_stream() {
                (Bytes::new(), None)
            } else {
                read_body = true;
                self.buffer(b, &mut clock, log).await?
            });
        }
        let mut attempt: u32 = 1;
        let mut tried = Tried::default();
        let mut kept: Option<KeptHead> = None;
        let mut moved = false;
        let mut sent = false;
        let mut _retry_slot: Option<RetrySlot> = None;
        let update_frequency = self.policy.map_or(0, |p| p.previous_priorities);
        loop {
            tried.update_levels(attempt, update_frequency);
            let Some(index) = self.pick(attempt, &tried) else {
                let msg = format!("no healthy upstream for cluster {:?}\n", cluster.name);
                return Err(Local::new(StatusCode::SERVICE_UNAVAILABLE, "UH", msg));
            };
            if update_frequency > 0 {
                tried.add_level(cluster, index);
            }
            let endpoint = &cluster.endpoints[index];
            tried.add(index);
            if moved && let Some(k) = &kept {
                parts = k.parts();
                moved = false;
            }
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
            let per_try_deadline = per_try.map(|d| match attempt {
                1 if !read_body => started + d,
                _ => tokio::time::Instant::now() + d,
            });
            let pool = &endpoint.pool;
            let received = &log.received;
            let replay_ref = &replay;
            let parts_ref = &mut parts;
            let stream_ref = &mut stream;
            let moved_ref = &mut moved;
            let kept_ref = &mut kept;
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
                // A copy of the head is kept only when another attempt could still send it.
                if replay_ref.is_some() && !last && kept_ref.is_none() {
                    *kept_ref = Some(KeptHead::of(parts_ref));
                }
                *moved_ref = true;
                let taken = std::mem::replace(parts_ref, Request::new(()).into_parts().0);
                let req = Request::from_parts(taken, body);
                pool.send_on(conn, req).await.map_err(Failure::Send)
            };
            let result = match clock.race(send, per_try_deadline).await {
                Raced::Global => {
                    cluster.report(endpoint, Observed::Timeout);
                    return Err(self.timed_out(endpoint.addr));
                }
                Raced::PerTry => Err(Failure::PerTryTimeout),
                Raced::Done(r) => r,
            };
            let resendable = !moved || (replay.is_some() && kept.is_some());
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
                        Some(d) if clock.remaining() <= d => return Ok(finish(resp, lease, log)),
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
                    self.backoff(delay, attempt, &mut clock)
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
            self.backoff(None, attempt, &mut clock)
                .await
                .map_err(|()| self.timed_out(endpoint.addr))?;
            ClusterStats::inc(&stats.rq_retry);
            attempt += 1;
        }
    }

    /// What the caller's timer must first be set to (from now): the first attempt's per-try
    /// timeout when it comes before the route's, else the route's. Starting there saves moving
    /// the timer for the first attempt.
    pub(super) fn first_wait(&self) -> Duration {
        match self.policy.and_then(|p| p.per_try_timeout) {
            Some(d) => d.min(self.wait),
            None => self.wait,
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
        let avoid = tried.avoided_levels;
        let mut chosen = None;
        for _ in 0..tries {
            let i = if avoid != 0 {
                locality::pick_avoiding(cluster, self.hash, avoid)?
            } else {
                let e = cluster.pick(self.hash)?;
                cluster.endpoints.iter().position(|x| std::ptr::eq(x, e))?
            };
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
        clock: &mut Clock<'_>,
        log: &RequestLog,
    ) -> Result<(Bytes, Option<HeaderMap>), Local> {
        match clock.race(body.collect(), None).await {
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
        clock: &mut Clock<'_>,
    ) -> Result<(), ()> {
        let delay = retry_after
            .unwrap_or_else(|| self.policy.map_or(Duration::ZERO, |p| p.backoff(attempt)));
        if delay.is_zero() {
            return Ok(());
        }
        match clock.race(tokio::time::sleep(delay), None).await {
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

/// Endpoints already tried (by index; beyond 64 endpoints only the first 64 are remembered),
/// and for `previous_priorities` the priority levels tried (by position, as bits).
#[derive(Default)]
struct Tried {
    endpoints: u64,
    levels: u64,
    /// The levels the next pick avoids: those of the attempts before the last update.
    avoided_levels: u64,
}

impl Tried {
    fn add(&mut self, i: usize) {
        if i < 64 {
            self.endpoints |= 1 << i;
        }
    }
    fn contains(&self, i: usize) -> bool {
        i < 64 && self.endpoints & (1 << i) != 0
    }

    /// Before attempt `attempt` (1-based) under `update_frequency` (0: off): every
    /// `update_frequency` attempts, the levels tried so far become the ones to avoid (Envoy's
    /// `previous_priorities`: with 2, attempts 1-2 use the normal priority load, 3-4 avoid the
    /// levels of 1-2, 5-6 those of 1-4, ...).
    fn update_levels(&mut self, attempt: u32, update_frequency: u32) {
        if update_frequency > 0 && attempt > 1 && (attempt - 1).is_multiple_of(update_frequency) {
            self.avoided_levels = self.levels;
        }
    }

    fn add_level(&mut self, cluster: &Cluster, i: usize) {
        if let Some(k) = locality::level_of(cluster, i).filter(|k| *k < 64) {
            self.levels |= 1 << k;
        }
    }
}

/// A body that is empty or of known length up to [`MAX_RETRY_BODY`].
fn fits_buffer(b: &Incoming) -> bool {
    b.is_end_stream() || b.size_hint().exact().is_some_and(|n| n <= MAX_RETRY_BODY)
}

impl KeptHead {
    fn of(parts: &Parts) -> KeptHead {
        let mut inline: [Option<(HeaderName, HeaderValue)>; KEPT_INLINE] = Default::default();
        let mut spill = Vec::new();
        for (i, (name, value)) in parts.headers.iter().enumerate() {
            let pair = (name.clone(), value.clone());
            match inline.get_mut(i) {
                Some(slot) => *slot = Some(pair),
                None => spill.push(pair),
            }
        }
        KeptHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            inline,
            spill,
        }
    }

    /// A head to send again, equal to the one kept.
    fn parts(&self) -> Parts {
        let mut parts = Request::new(()).into_parts().0;
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        let inline = self.inline.iter().map_while(Option::as_ref);
        for (name, value) in inline.chain(self.spill.iter()) {
            parts.headers.append(name.clone(), value.clone());
        }
        parts
    }
}

impl Clock<'_> {
    /// Poll `fut` until it completes or the timer fires: at the per-try deadline when one is
    /// given and comes first, else at the route deadline. The timer is moved only when it is
    /// not already there, and left where it is afterwards (the next race or the next request
    /// resets it): one timer serves every attempt, so an attempt costs no timer of its own.
    async fn race<F: Future>(
        &mut self,
        fut: F,
        per_try: Option<tokio::time::Instant>,
    ) -> Raced<F::Output> {
        tokio::pin!(fut);
        let per_try = per_try.filter(|d| *d < self.route);
        let target = per_try.unwrap_or(self.route);
        if self.timer.deadline() != target {
            self.timer.as_mut().reset(target);
        }
        let timer = &mut *self.timer;
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(Raced::Done(r));
            }
            poll_registered(timer.as_mut(), &mut registered, cx).map(|()| match per_try {
                Some(_) => Raced::PerTry,
                None => Raced::Global,
            })
        })
        .await
    }

    /// Time left before the route timeout.
    fn remaining(&self) -> Duration {
        self.route
            .saturating_duration_since(tokio::time::Instant::now())
    }
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

/// `Retry-After` on a 503 or 429: delay-seconds or an HTTP-date (RFC 9110 10.2.3; a date in
/// the past means now), capped at [`MAX_RETRY_AFTER`]. Anything else is ignored.
fn retry_after(resp: &Response<Incoming>) -> Option<Duration> {
    if !matches!(resp.status().as_u16(), 429 | 503) {
        return None;
    }
    let value = resp.headers().get(http::header::RETRY_AFTER)?;
    parse_retry_after(value.to_str().ok()?, std::time::SystemTime::now())
}

fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn kept_head_rebuilds_the_same_request_head() {
        let mut req = Request::builder()
            .method("PUT")
            .uri("http://shop.local/items/1?x=2")
            .version(Version::HTTP_11);
        // More headers than are kept inline, with a repeated name.
        for i in 0..12 {
            req = req.header(format!("x-h{i}"), format!("v{i}"));
        }
        req = req.header("x-h3", "again").header("cookie", "a=1");
        let (parts, ()) = req.body(()).expect("request").into_parts();
        let kept = KeptHead::of(&parts);
        assert_eq!(kept.spill.len(), parts.headers.len() - KEPT_INLINE);
        let again = kept.parts();
        assert_eq!(again.method, parts.method);
        assert_eq!(again.uri, parts.uri);
        assert_eq!(again.version, parts.version);
        assert_eq!(again.headers, parts.headers);
        let x3: Vec<_> = again.headers.get_all("x-h3").iter().collect();
        assert_eq!(x3, ["v3", "again"]);
    }

    #[test]
    fn previous_priorities_avoid_the_levels_tried_before_each_update() {
        let mut t = Tried::default();
        // Update frequency 2: attempts 1 and 2 avoid nothing, 3 and 4 the levels of 1-2.
        t.update_levels(1, 2);
        t.levels |= 1; // attempt 1 went to level 0
        t.update_levels(2, 2);
        assert_eq!(t.avoided_levels, 0);
        t.levels |= 1; // attempt 2 too
        t.update_levels(3, 2);
        assert_eq!(t.avoided_levels, 0b1);
        t.levels |= 0b10; // attempt 3 went to level 1
        t.update_levels(4, 2);
        assert_eq!(t.avoided_levels, 0b1);
        t.update_levels(5, 2);
        assert_eq!(t.avoided_levels, 0b11);
        // Off: never avoids anything.
        let mut off = Tried {
            levels: 0b111,
            ..Tried::default()
        };
        for attempt in 1..6 {
            off.update_levels(attempt, 0);
            assert_eq!(off.avoided_levels, 0);
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 2 ", now), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        // RFC 850 and asctime forms are HTTP-dates too.
        let rfc850 = "Tuesday, 14-Nov-23 22:13:27 GMT";
        assert_eq!(parse_retry_after(rfc850, now), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(60));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        let far = httpdate::fmt_http_date(now + Duration::from_secs(3600));
        assert_eq!(parse_retry_after(&far, now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
