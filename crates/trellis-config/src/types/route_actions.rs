//! Helpers over the VirtualService route-action types that the compiler and validation share:
//! gRPC status names, `HTTPBody.bytes` (base64) decoding, and base64 encoding for proto3 JSON.
//! Pure functions; no validation reporting here.

use super::istio::{FaultAbort, HttpBody};

/// gRPC status names in code order (`OK` = 0 … `UNAUTHENTICATED` = 16).
const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl FaultAbort {
    /// The numeric gRPC status of `grpcStatus` (a name such as `UNAVAILABLE`, or a number).
    pub fn grpc_code(&self) -> Option<u32> {
        grpc_status_code(self.grpc_status.as_deref()?)
    }
}

impl HttpBody {
    /// The body's bytes: `string` as UTF-8, or `bytes` decoded from base64. `None` when
    /// `bytes` is not valid base64.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        match (&self.string, &self.bytes) {
            (Some(s), _) => Some(s.as_bytes().to_vec()),
            (None, Some(b)) => base64_decode(b),
            (None, None) => Some(Vec::new()),
        }
    }
}

/// A gRPC status name (`UNAVAILABLE`) or number (`14`) → its code.
pub fn grpc_status_code(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return (n < 17).then_some(n);
    }
    GRPC_STATUS_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

/// Standard base64 (with or without `=` padding); `None` on any other character.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = BASE64.iter().position(|b| *b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (proto3 JSON renders `bytes` this way).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "hello world\n"] {
            let enc = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&enc).as_deref(), Some(s.as_bytes()), "{enc}");
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_decode("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("a*b"), None);
    }

    #[test]
    fn grpc_names_map_to_codes() {
        assert_eq!(grpc_status_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_status_code("OK"), Some(0));
        assert_eq!(grpc_status_code("16"), Some(16));
        assert_eq!(grpc_status_code("NOPE"), None);
        assert_eq!(grpc_status_code("17"), None);
    }
}
