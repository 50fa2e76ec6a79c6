//! Streaming bodies on both sides of the proxy: they count bytes as frames pass, read the gRPC
//! status from trailers, and record the request to telemetry exactly once when the response
//! completes (or is abandoned). A request body is held in memory only when `proxy::retry` hands
//! over one it buffered (at most 64 KiB) to replay on a retry.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::ConnInfo;
use super::mirror::Tee;
use crate::runtime::Cluster;
use crate::runtime::balancer::InFlight;
use crate::runtime::circuit::RequestSlot;
use crate::runtime::pool::Lease;
use crate::telemetry::{RequestRecord, Telemetry};

/// The downstream request body on its way upstream; counts bytes received.
#[derive(Debug)]
pub struct RequestBody {
    inner: Source,
    received: Arc<AtomicU64>,
    /// Copies the body for mirrors (`super::mirror`), when the route mirrors this request.
    tee: Option<Box<Tee>>,
}

#[derive(Debug)]
enum Source {
    Stream(Incoming),
    /// A body read in full beforehand (already counted), sent again on each attempt.
    Buffered {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    },
}

/// The response body on its way downstream: upstream's, or a local one-liner.
pub struct ResponseBody {
    inner: Inner,
    log: Option<Box<RequestLog>>,
}

enum Inner {
    Upstream(Incoming),
    Local(Option<Bytes>),
}

/// Everything telemetry needs about one request; recorded once on drop.
pub struct RequestLog {
    pub telemetry: Arc<Telemetry>,
    pub conn: Arc<ConnInfo>,
    pub start: SystemTime,
    pub started: Instant,
    pub method: Method,
    pub path: http::Uri,
    pub authority: Option<HeaderValue>,
    pub protocol: &'static str,
    pub grpc: bool,
    pub request_id: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub xff: Option<HeaderValue>,
    pub route_name: Option<Arc<str>>,
    pub cluster_name: Option<Arc<str>>,
    /// The cluster and the index of the chosen endpoint.
    pub upstream: Option<(Arc<Cluster>, usize)>,
    pub status: u16,
    pub grpc_status: Option<HeaderValue>,
    pub flags: &'static str,
    pub received: Arc<AtomicU64>,
    pub sent: u64,
    /// Set once the response body reached its end.
    pub complete: bool,
    pub in_flight: Option<InFlight>,
    /// The upstream HTTP/1.1 connection, back to its pool once the response is complete.
    pub lease: Option<Lease>,
    /// Counts the request against the cluster's `max_requests` until it ends.
    pub circuit: Option<RequestSlot>,
    /// CORS headers for whatever answer this request gets (its origin is allowed).
    pub cors: Option<Box<http::HeaderMap>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, received: Arc<AtomicU64>) -> RequestBody {
        RequestBody {
            inner: Source::Stream(inner),
            received,
            tee: None,
        }
    }

    /// A body already read (and counted); `data` may be empty.
    pub fn buffered(
        data: Bytes,
        trailers: Option<http::HeaderMap>,
        received: Arc<AtomicU64>,
    ) -> RequestBody {
        RequestBody {
            inner: Source::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
            received,
            tee: None,
        }
    }

    pub fn with_tee(mut self, tee: Option<Tee>) -> RequestBody {
        self.tee = tee.map(Box::new);
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Source::Stream(inner) => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    this.received
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                polled
            }
            Source::Buffered { data, trailers } => {
                let frame = match data.take() {
                    Some(d) => Some(Frame::data(d)),
                    None => trailers.take().map(Frame::trailers),
                };
                Poll::Ready(frame.map(Ok))
            }
        };
        if let Some(tee) = this.tee.as_mut()
            && let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            tee.data(data);
        }
        if this.tee.is_some()
            && (matches!(polled, Poll::Ready(None)) || Body::is_end_stream(&*this))
            && let Some(mut tee) = this.tee.take()
        {
            tee.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Stream(inner) => inner.is_end_stream(),
            Source::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Stream(inner) => inner.size_hint(),
            Source::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl ResponseBody {
    pub fn upstream(inner: Incoming, log: Box<RequestLog>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(inner),
            log: Some(log),
        }
    }

    pub fn local(text: Bytes, log: Option<Box<RequestLog>>) -> ResponseBody {
        // An empty body is no body: the head ends the stream (gRPC trailers-only answers).
        let mut body = ResponseBody {
            inner: Inner::Local((!text.is_empty()).then_some(text)),
            log,
        };
        if let (Some(log), Inner::Local(Some(b))) = (&mut body.log, &body.inner) {
            log.sent = b.len() as u64;
        }
        body
    }

    fn finish(&mut self) {
        if let Some(mut log) = self.log.take() {
            log.complete = true;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Local(b) => {
                let frame = b.take().map(|b| Ok(Frame::data(b)));
                this.finish();
                Poll::Ready(frame)
            }
            Inner::Upstream(inner) => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                let end = inner.is_end_stream();
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(log) = this.log.as_mut() {
                            if let Some(d) = frame.data_ref() {
                                log.sent += d.len() as u64;
                            } else if let Some(t) = frame.trailers_ref()
                                && log.grpc
                            {
                                log.grpc_status = t.get("grpc-status").cloned();
                            }
                        }
                        if end {
                            this.finish();
                        }
                    }
                    Poll::Ready(None) => this.finish(),
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(log) = this.log.as_mut() {
                            log.flags = "UC";
                        }
                        this.log = None;
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper may drop a body without polling it once it reports its end.
        if self.is_end_stream() {
            self.finish();
        }
    }
}

impl RequestLog {
    fn record(&self) {
        let endpoint = self
            .upstream
            .as_ref()
            .and_then(|(c, i)| c.endpoints.get(*i).map(|e| (c, e)));
        let (service, workload) = match endpoint {
            Some((c, e)) => (Some(&c.service), Some(&e.workload)),
            None => (self.upstream.as_ref().map(|(c, _)| &c.service), None),
        };
        let unknown = "unknown";
        let flags = if self.complete || self.flags != "-" {
            self.flags
        } else {
            "DC"
        };
        let rec = RequestRecord {
            start: self.start,
            duration: self.started.elapsed(),
            method: self.method.as_str(),
            path: self.path.path_and_query().map_or("/", |p| p.as_str()),
            authority: str_of(&self.authority),
            protocol: self.protocol,
            grpc: self.grpc,
            response_code: self.status,
            grpc_status: self.grpc_status.as_ref().and_then(|v| v.to_str().ok()),
            response_flags: flags,
            request_id: str_of(&self.request_id),
            user_agent: str_of(&self.user_agent),
            x_forwarded_for: str_of(&self.xff),
            downstream_remote: self.conn.remote,
            downstream_local: self.conn.local,
            upstream_host: endpoint.map(|(_, e)| e.addr),
            upstream_cluster: self.cluster_name.as_deref().unwrap_or(""),
            route_name: self.route_name.as_deref().unwrap_or(""),
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_sent: self.sent,
            destination_service: service.map_or(unknown, |s| s.host.as_str()),
            destination_service_name: service.map_or(unknown, |s| s.name.as_str()),
            destination_service_namespace: service.map_or(unknown, |s| s.namespace.as_str()),
            destination_workload: workload.map_or(unknown, |w| w.workload.as_str()),
            destination_workload_namespace: workload.map_or(unknown, |w| w.namespace.as_str()),
            destination_version: workload.map_or(unknown, |w| w.version.as_str()),
            destination_app: workload.map_or(unknown, |w| w.app.as_str()),
        };
        self.telemetry.record(&rec);
    }

    /// The downstream address as `x-forwarded-for` would carry it.
    pub fn remote(&self) -> SocketAddr {
        self.conn.remote
    }
}

fn str_of(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if self.complete
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
        self.record();
        self.conn.end_request();
    }
}
