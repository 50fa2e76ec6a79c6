//! Envoy's fault filter for one request: a fixed delay and/or an abort, each with its own
//! probability (per million). Flags: `DI` (delay injected), `FI` (fault injected, i.e. aborted);
//! both when both happen. An aborted gRPC request gets status 200 with `grpc-status` in a
//! trailers-only response (an HTTP status is mapped as Envoy maps it). Body: "fault filter abort".

use http::StatusCode;

use super::Local;
use super::actions::grpc_local;
use super::body::RequestLog;
use crate::runtime::route::policy::{Abort, Fault, MILLION};

const ABORT_BODY: &str = "fault filter abort";

/// Delay and/or abort this request; `Ok(true)` when it was delayed and goes on.
pub async fn apply(f: &Fault, log: &mut RequestLog) -> Result<bool, Local> {
    let mut delayed = false;
    if let Some((delay, per_million)) = f.delay
        && hit(per_million)
    {
        tokio::time::sleep(delay).await;
        delayed = true;
        log.flags = "DI";
    }
    if let Some((abort, per_million)) = f.abort
        && hit(per_million)
    {
        let flag = if delayed { "DI,FI" } else { "FI" };
        let mut local = match abort {
            Abort::Http(status) => Local::new(status, flag, ABORT_BODY.into()),
            Abort::Grpc(_) => Local::new(StatusCode::OK, flag, String::new()),
        };
        // A gRPC status abort answers in gRPC form even when the request did not say gRPC.
        if log.grpc || matches!(abort, Abort::Grpc(_)) {
            let code = match abort {
                Abort::Grpc(code) => code,
                Abort::Http(status) => grpc_from_http(status),
            };
            grpc_local(&mut local, code, ABORT_BODY);
            log.grpc_status = Some(http::HeaderValue::from(code));
        }
        return Err(local);
    }
    Ok(delayed)
}

/// The flags of a delayed request that then failed with `flag` (Envoy joins flags with `,`).
pub fn after_delay(flag: &'static str) -> &'static str {
    match flag {
        "UH" => "DI,UH",
        "UF" => "DI,UF",
        "UC" => "DI,UC",
        "UT" => "DI,UT",
        "URX" => "DI,URX",
        "UO" => "DI,UO",
        "NR" => "DI,NR",
        "-" => "DI",
        other => other,
    }
}

fn hit(per_million: u32) -> bool {
    per_million >= MILLION || (per_million > 0 && fastrand::u32(..MILLION) < per_million)
}

/// Envoy's HTTP → gRPC status mapping for local replies.
fn grpc_from_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_per_million() {
        assert!(hit(MILLION));
        assert!(!hit(0));
        let hits = (0..10_000).filter(|_| hit(250_000)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }
}
