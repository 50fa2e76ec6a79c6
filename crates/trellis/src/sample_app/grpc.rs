//! The gRPC side of the sample app, with a hand-rolled framing layer.
//!
//! Serves `trellis.sample.v1.Echo/{Echo,EchoStream}` and
//! `grpc.health.v1.Health/Check`. Messages are length-prefixed (1 flag byte +
//! 4-byte big-endian length); every call ends with `grpc-status` /
//! `grpc-message` trailers, and errors are trailers-only responses. Unknown
//! methods answer UNIMPLEMENTED. Compression is not supported.

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use http_body_util::{BodyExt, Empty, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response};
use prost::Message;

use super::messages::{
    EchoRequest, EchoResponse, HealthCheckRequest, HealthCheckResponse, ServingStatus,
};
use super::{Identity, ResponseBody};

/// Largest request message accepted (gRPC's usual default).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most answers one `EchoStream` call may ask for.
const MAX_STREAM_COUNT: i32 = 10_000;

/// gRPC status codes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub i32);

impl Code {
    pub const OK: Code = Code(0);
    pub const UNKNOWN: Code = Code(2);
    pub const INVALID_ARGUMENT: Code = Code(3);
    pub const NOT_FOUND: Code = Code(5);
    pub const UNIMPLEMENTED: Code = Code(12);
    pub const INTERNAL: Code = Code(13);
}

/// Whether a request is a gRPC call (by content type).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct == "application/grpc" || ct.starts_with("application/grpc+"))
}

/// Answers one gRPC call.
pub async fn handle(identity: &Identity, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/trellis.sample.v1.Echo/Echo" => match read_request::<EchoRequest>(req).await {
            Ok(request) => echo(identity, request),
            Err((code, message)) => trailers_only(code, &message),
        },
        "/trellis.sample.v1.Echo/EchoStream" => match read_request::<EchoRequest>(req).await {
            Ok(request) => echo_stream(identity, request),
            Err((code, message)) => trailers_only(code, &message),
        },
        "/grpc.health.v1.Health/Check" => match read_request::<HealthCheckRequest>(req).await {
            Ok(request) => health_check(identity, request),
            Err((code, message)) => trailers_only(code, &message),
        },
        _ => {
            super::drain(req.into_body()).await;
            trailers_only(Code::UNIMPLEMENTED, &format!("unknown method {path}"))
        }
    }
}

fn echo(identity: &Identity, request: EchoRequest) -> Response<ResponseBody> {
    if request.status_code != 0 {
        let code = requested_code(request.status_code);
        return trailers_only(
            code,
            &format!("status_code {} requested", request.status_code),
        );
    }
    let answer = echo_response(identity, &request, 0);
    messages_then_status(vec![answer.encode_to_vec()], Code::OK, "")
}

fn echo_stream(identity: &Identity, request: EchoRequest) -> Response<ResponseBody> {
    if !(0..=MAX_STREAM_COUNT).contains(&request.count) {
        let message = format!(
            "count {} out of range 0..={MAX_STREAM_COUNT}",
            request.count
        );
        return trailers_only(Code::INVALID_ARGUMENT, &message);
    }
    let answers = (0..request.count)
        .map(|index| echo_response(identity, &request, index).encode_to_vec())
        .collect();
    let (code, message) = match request.status_code {
        0 => (Code::OK, String::new()),
        requested => (
            requested_code(requested),
            format!("status_code {requested} requested"),
        ),
    };
    messages_then_status(answers, code, &message)
}

fn health_check(identity: &Identity, request: HealthCheckRequest) -> Response<ResponseBody> {
    match request.service.as_str() {
        "" | "trellis.sample.v1.Echo" => {
            let status = if identity.fault.health().as_u16() >= 400 {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            let answer = HealthCheckResponse {
                status: status as i32,
            };
            messages_then_status(vec![answer.encode_to_vec()], Code::OK, "")
        }
        unknown => trailers_only(Code::NOT_FOUND, &format!("unknown service {unknown:?}")),
    }
}

fn echo_response(identity: &Identity, request: &EchoRequest, index: i32) -> EchoResponse {
    EchoResponse {
        message: request.message.clone(),
        service: identity.service.clone(),
        version: identity.version.clone(),
        instance: identity.instance.clone(),
        index,
    }
}

/// A client-chosen status: 1..=16 as asked, anything else UNKNOWN.
fn requested_code(code: i32) -> Code {
    if (1..=16).contains(&code) {
        Code(code)
    } else {
        Code::UNKNOWN
    }
}

/// Reads the body of a unary-request call and decodes its single message.
async fn read_request<M: Message + Default>(req: Request<Incoming>) -> Result<M, (Code, String)> {
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        return Err((
            Code::UNIMPLEMENTED,
            format!("grpc-encoding {encoding:?} not supported"),
        ));
    }
    let body = Limited::new(req.into_body(), MAX_MESSAGE_BYTES + 5)
        .collect()
        .await
        .map_err(|err| (Code::INTERNAL, format!("read request: {err}")))?
        .to_bytes();
    let payload = decode_single_frame(&body).map_err(|message| (Code::INTERNAL, message))?;
    M::decode(payload).map_err(|err| (Code::INTERNAL, format!("decode request message: {err}")))
}

/// Splits a body holding exactly one length-prefixed, uncompressed message.
fn decode_single_frame(body: &[u8]) -> Result<&[u8], String> {
    let Some((header, rest)) = body.split_first_chunk::<5>() else {
        return Err(format!(
            "request has {} bytes, want one 5-byte-prefixed message",
            body.len()
        ));
    };
    if header[0] != 0 {
        return Err("compressed message without grpc-encoding".into());
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if rest.len() != len {
        return Err(format!(
            "message prefix says {len} bytes, body has {}",
            rest.len()
        ));
    }
    Ok(rest)
}

/// Prefixes a message with the 5-byte gRPC frame header.
fn frame(message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.len() + 5);
    buf.put_u8(0);
    buf.put_u32(message.len() as u32);
    buf.put_slice(message);
    buf.freeze()
}

/// HEADERS, one DATA frame per message, then the status trailers.
fn messages_then_status(
    messages: Vec<Vec<u8>>,
    code: Code,
    message: &str,
) -> Response<ResponseBody> {
    let trailers = status_headers(code, message);
    let frames = messages
        .into_iter()
        .map(|m| Ok::<_, Infallible>(Frame::data(frame(&m))))
        .chain(std::iter::once(Ok(Frame::trailers(trailers))));
    let mut response = Response::new(StreamBody::new(stream::iter(frames)).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// A trailers-only answer: status in the one HEADERS frame, no body.
fn trailers_only(code: Code, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.extend(status_headers(code, message));
    response
}

fn status_headers(code: Code, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", HeaderValue::from(code.0));
    if !message.is_empty()
        && let Ok(value) = HeaderValue::from_str(&percent_encode(message))
    {
        headers.insert("grpc-message", value);
    }
    headers
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, the rest `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let message = EchoRequest {
            message: "hi".into(),
            count: 2,
            status_code: 0,
        };
        let framed = frame(&message.encode_to_vec());
        let payload = decode_single_frame(&framed).expect("one frame");
        assert_eq!(EchoRequest::decode(payload).expect("decode"), message);
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(decode_single_frame(&[0, 0, 0]).is_err());
        assert!(decode_single_frame(&[1, 0, 0, 0, 0]).is_err());
        assert!(decode_single_frame(&[0, 0, 0, 0, 2, 1]).is_err());
        assert_eq!(decode_single_frame(&[0, 0, 0, 0, 0]), Ok(&[][..]));
    }

    #[test]
    fn encodes_grpc_message() {
        assert_eq!(percent_encode("a b%c\né"), "a b%25c%0A%C3%A9");
    }
}
