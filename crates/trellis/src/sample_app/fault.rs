//! Switches that make one instance misbehave on demand, for failover and health-check demos:
//! `GET /fault/status/{code}` makes every later plain-HTTP request fail with `code`;
//! `GET /fault/health/{code}` makes only `GET /healthz` answer `code` and the gRPC health check
//! answer `NOT_SERVING` (code ≥ 400), like an instance that is draining; `GET /fault/clear`
//! restores both. The switches themselves always answer 200. Owns the switches only.

use std::sync::atomic::{AtomicU16, Ordering};

use hyper::{Response, StatusCode};
use serde_json::{Map, json};

use super::http::{error_response, json_response};
use super::{Identity, ResponseBody};

/// The injected statuses; 0 when off.
#[derive(Debug, Default)]
pub struct FaultSwitch {
    all: AtomicU16,
    health: AtomicU16,
}

impl FaultSwitch {
    /// The status every request should get now, if any.
    pub fn status(&self) -> Option<StatusCode> {
        StatusCode::from_u16(self.all.load(Ordering::Relaxed)).ok()
    }

    /// What `/healthz` answers now (200 unless switched).
    pub fn health(&self) -> StatusCode {
        StatusCode::from_u16(self.health.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK)
    }
}

/// Answers `/fault/...`; `None` for other paths.
pub fn control(identity: &Identity, path: &str) -> Option<Response<ResponseBody>> {
    let rest = path.strip_prefix("/fault/")?;
    let (switch, code) = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["clear"] => {
            identity.fault.health.store(0, Ordering::Relaxed);
            (&identity.fault.all, "0")
        }
        ["status", code] => (&identity.fault.all, *code),
        ["health", code] => (&identity.fault.health, *code),
        _ => {
            let message = "use /fault/status/{code}, /fault/health/{code} or /fault/clear";
            return Some(error_response(identity, StatusCode::NOT_FOUND, message));
        }
    };
    let set = match code.parse::<u16>() {
        Ok(c) if c == 0 || (200..=599).contains(&c) => c,
        _ => {
            let message = format!("bad status code {code:?}: use a number in 200..=599");
            return Some(error_response(identity, StatusCode::BAD_REQUEST, &message));
        }
    };
    switch.store(set, Ordering::Relaxed);
    let mut map = Map::new();
    map.insert(
        "fault_status".into(),
        json!(identity.fault.all.load(Ordering::Relaxed)),
    );
    map.insert(
        "health_status".into(),
        json!(identity.fault.health().as_u16()),
    );
    Some(json_response(identity, StatusCode::OK, map))
}

/// The answer while a fault is on.
pub fn injected(identity: &Identity, status: StatusCode) -> Response<ResponseBody> {
    error_response(identity, status, "fault injected with /fault/status")
}

/// `GET /healthz`: 200, or what `/fault/health/{code}` set.
pub fn healthz(identity: &Identity) -> Response<ResponseBody> {
    let status = identity.fault.health();
    let mut map = Map::new();
    map.insert("health_status".into(), json!(status.as_u16()));
    json_response(identity, status, map)
}
