//! A switch that makes one instance misbehave on demand, for failover and health-check demos:
//! `GET /fault/status/{code}` makes every later plain-HTTP request (and the gRPC health check)
//! fail with `code` (5xx → `NOT_SERVING`); `GET /fault/clear` restores normal answers. The switch
//! itself always answers 200. Owns the switch only.

use std::sync::atomic::{AtomicU16, Ordering};

use hyper::{Response, StatusCode};
use serde_json::{Map, json};

use super::http::{error_response, json_response};
use super::{Identity, ResponseBody};

/// The injected status; 0 when off.
#[derive(Debug, Default)]
pub struct FaultSwitch(AtomicU16);

impl FaultSwitch {
    /// The status every request should get now, if any.
    pub fn status(&self) -> Option<StatusCode> {
        StatusCode::from_u16(self.0.load(Ordering::Relaxed)).ok()
    }
}

/// Answers `/fault/...`; `None` for other paths.
pub fn control(identity: &Identity, path: &str) -> Option<Response<ResponseBody>> {
    let rest = path.strip_prefix("/fault/")?;
    let set = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["clear"] => 0,
        ["status", code] => match code.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => c,
            _ => {
                let message = format!("bad status code {code:?}: use a number in 200..=599");
                return Some(error_response(identity, StatusCode::BAD_REQUEST, &message));
            }
        },
        _ => {
            let message = "use /fault/status/{code} or /fault/clear";
            return Some(error_response(identity, StatusCode::NOT_FOUND, message));
        }
    };
    identity.fault.0.store(set, Ordering::Relaxed);
    let mut map = Map::new();
    map.insert("fault_status".into(), json!(set));
    Some(json_response(identity, StatusCode::OK, map))
}

/// The answer while a fault is on.
pub fn injected(identity: &Identity, status: StatusCode) -> Response<ResponseBody> {
    error_response(identity, status, "fault injected with /fault/status")
}
