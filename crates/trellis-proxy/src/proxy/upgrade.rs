//! HTTP/1.1 upgrades through the proxy, for the protocols the listener's HCM
//! `upgrade_configs` names (Istio: `websocket`): the `Connection: upgrade` / `Upgrade` pair survives hop-by-hop
//! stripping on an HTTP/1.1 upstream, and on `101 Switching Protocols` both connections are
//! taken over from hyper and bytes are copied both ways until either side closes or the tunnel
//! is idle for the stream idle timeout. A refused upgrade closes the downstream connection.
//! Other protocols, and HTTP/2 upstreams (h2 has no `Upgrade`), get the request without the
//! upgrade headers, as an ordinary request.

use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime::{HttpSettings, UpstreamProtocol};

/// A downstream request asking to switch protocols.
pub struct Upgrade {
    protocol: HeaderValue,
    downstream: OnUpgrade,
    idle: Duration,
}

/// Takes the upgrade out of an HTTP/1.1 request that asks for one (before hop-by-hop headers
/// are stripped); `None` for any other request.
pub fn take(
    parts: &mut Parts,
    upstream: UpstreamProtocol,
    settings: &HttpSettings,
) -> Option<Upgrade> {
    if parts.version != Version::HTTP_11 || upstream != UpstreamProtocol::Http1 {
        return None;
    }
    let protocol = parts.headers.get(UPGRADE)?.clone();
    let asks = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let allowed = protocol.to_str().is_ok_and(|p| {
        settings
            .upgrades
            .iter()
            .any(|u| u.eq_ignore_ascii_case(p.trim()))
    });
    if !asks || !allowed {
        return None;
    }
    let downstream = parts.extensions.remove::<OnUpgrade>()?;
    Some(Upgrade {
        protocol,
        downstream,
        idle: settings.stream_idle_timeout,
    })
}

/// Puts the upgrade headers back on the upstream request (after hop-by-hop stripping).
pub fn restore(headers: &mut http::HeaderMap, upgrade: Option<&Upgrade>) {
    if let Some(u) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, u.protocol.clone());
    }
}

/// On the upstream response (hop-by-hop headers already stripped): a `101` starts the tunnel
/// and keeps the upgrade headers; anything else closes the downstream connection after this
/// response. Returns whether the connection was upgraded (its pool lease must not be reused).
pub fn on_response(upgrade: Option<Upgrade>, resp: &mut Response<Incoming>) -> bool {
    let Some(u) = upgrade else {
        return false;
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return false;
    }
    let Some(upstream) = resp.extensions_mut().remove::<OnUpgrade>() else {
        return false;
    };
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, u.protocol);
    let idle = u.idle;
    let downstream = u.downstream;
    tokio::spawn(async move {
        match tokio::try_join!(downstream, upstream) {
            Ok((down, up)) => {
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                if let Err(e) = tunnel(&mut down, &mut up, idle).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    true
}

/// Copies both ways until one side closes (its write half is then shut down on the other) or
/// nothing moves for `idle`.
async fn tunnel<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_a, mut from_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            n = a.read(&mut from_a) => {
                let n = n?;
                if n == 0 {
                    return b.shutdown().await;
                }
                b.write_all(&from_a[..n]).await?;
            }
            n = b.read(&mut from_b) => {
                let n = n?;
                if n == 0 {
                    return a.shutdown().await;
                }
                a.write_all(&from_b[..n]).await?;
            }
            () = tokio::time::sleep(idle) => return Ok(()),
        }
    }
}
