//! The ADS gRPC service at the HTTP level: routes the two ADS methods to the stream handlers,
//! decodes requests with tonic's `Streaming`, and writes every response into a buffer of its
//! own, exactly its encoded size, handed to HTTP/2 and freed once sent.
//!
//! tonic's generated server encodes all responses of a stream into one buffer that grows to
//! the largest response and keeps that capacity for the life of the stream (~1 MB per
//! connected proxy for a 1,000-service mesh, whose initial CDS/EDS/RDS responses are
//! 0.4–0.6 MB each). Here a stream holds no encode buffer between responses.
//!
//! Must not know about xDS types or stream state: it only moves messages.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, SERVICE_NAME,
};
use http_body::Frame;
use prost::Message;
use tonic::body::Body;
use tonic::codec::{DecodeBuf, Decoder, Streaming};
use tonic::codegen::Service;
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::server::NamedService;
use tonic::{Request, Status};

use super::{Ads, ResponseStream};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The gRPC framing prefix: a compression flag and the message length.
const FRAME_HEADER: usize = 5;

/// The ADS service, in place of tonic's generated `AggregatedDiscoveryServiceServer`.
#[derive(Clone)]
pub(super) struct AdsService {
    ads: std::sync::Arc<Ads>,
    max_request: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl AdsService {
    /// Serves `ads`, rejecting requests larger than `max_request` bytes.
    pub(super) fn new(ads: Ads, max_request: usize) -> Self {
        AdsService {
            ads: std::sync::Arc::new(ads),
            max_request,
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

impl Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let ads = self.ads.clone();
        let max = Some(self.max_request);
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let requests =
                    Streaming::new_request(ProstDecoder::default(), req.into_body(), None, max);
                let result = ads
                    .stream_aggregated_resources(Request::new(requests))
                    .await;
                Ok(respond(result.map(|r| r.into_inner())))
            }),
            DELTA_PATH => Box::pin(async move {
                let requests =
                    Streaming::new_request(ProstDecoder::default(), req.into_body(), None, max);
                let result = ads.delta_aggregated_resources(Request::new(requests)).await;
                Ok(respond(result.map(|r| r.into_inner())))
            }),
            path => {
                let status = Status::unimplemented(format!("no method {path} on this server"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The HTTP response for a stream the handler opened, or its error as a trailers-only answer.
fn respond<M: Message + 'static>(
    result: Result<ResponseStream<M>, Status>,
) -> http::Response<Body> {
    match result {
        Ok(stream) => {
            let mut response = http::Response::new(Body::new(FramedBody {
                stream: Some(stream),
            }));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
            response
        }
        Err(status) => status.into_http(),
    }
}

/// One gRPC message, framed, in a buffer of exactly its size.
pub(super) fn frame(message: &impl Message) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len)
        .map_err(|_| Status::internal(format!("response of {len} bytes is too large to frame")))?;
    let mut buf = Vec::with_capacity(FRAME_HEADER + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    message.encode_raw(&mut buf);
    Ok(Bytes::from(buf))
}

/// A response body: each message of the stream as one data frame, then the `grpc-status`
/// trailers (OK when the stream ends, the error's status if it yields one).
struct FramedBody<M> {
    stream: Option<ResponseStream<M>>,
}

impl<M: Message> http_body::Body for FramedBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(None);
        };
        let status = match ready!(stream.as_mut().poll_next(cx)) {
            Some(Ok(message)) => match frame(&message) {
                Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Err(status) => status,
            },
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.stream = None;
        let mut trailers = http::HeaderMap::new();
        if let Err(status) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }
}

/// Decodes one request message with prost.
struct ProstDecoder<M>(PhantomData<M>);

impl<M> Default for ProstDecoder<M> {
    fn default() -> Self {
        ProstDecoder(PhantomData)
    }
}

impl<M: Message + Default> Decoder for ProstDecoder<M> {
    type Item = M;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<M>, Status> {
        M::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding an xDS request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use http_body_util::BodyExt;

    #[test]
    fn a_frame_is_the_grpc_prefix_then_the_message_in_an_exact_buffer() {
        let message = DiscoveryResponse {
            version_info: "v1".into(),
            nonce: "n".into(),
            ..Default::default()
        };
        let bytes = frame(&message).unwrap();
        assert_eq!(bytes.len(), 5 + message.encoded_len());
        assert_eq!(bytes[0], 0);
        assert_eq!(
            u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize,
            message.encoded_len()
        );
        assert_eq!(DiscoveryResponse::decode(&bytes[5..]).unwrap(), message);
    }

    #[tokio::test]
    async fn a_body_yields_each_message_then_ok_trailers_or_the_error() {
        let first = DiscoveryResponse {
            nonce: "1".into(),
            ..Default::default()
        };
        let items: Vec<Result<DiscoveryResponse, Status>> =
            vec![Ok(first.clone()), Err(Status::invalid_argument("bad node"))];
        let mut body = FramedBody {
            stream: Some(Box::pin(tokio_stream::iter(items)) as ResponseStream<_>),
        };
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(DiscoveryResponse::decode(&data[5..]).unwrap(), first);
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "3");
        assert_eq!(trailers["grpc-message"], "bad%20node");
        assert!(body.frame().await.is_none());

        let mut body = FramedBody::<DiscoveryResponse> {
            stream: Some(Box::pin(tokio_stream::iter(Vec::new()))),
        };
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    }
}
