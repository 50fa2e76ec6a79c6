//! Readiness probes for `trellis up`: a TCP connect for sample apps and an
//! HTTP/1.1 `GET /ready` for the proxy admin port. Every probe has a timeout;
//! nothing here keeps a connection open.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Waits until every app port accepts connections, the control plane's API
/// answers `/api/v1/status` with 200 and the gateway admin `/ready` answers
/// 200 (the gateway got its first config over xDS and serves it); on timeout
/// names what was not ready.
pub async fn wait_ready(
    apps: &[SocketAddr],
    api: SocketAddr,
    admin: SocketAddr,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    for &addr in apps {
        while !port_open(addr).await {
            if Instant::now() >= deadline {
                return Err(format!("sample app on {addr}"));
            }
            sleep(POLL_INTERVAL).await;
        }
    }
    while http_status(api, "/api/v1/status").await != Some(200) {
        if Instant::now() >= deadline {
            return Err(format!("control plane API http://{api}/api/v1/status"));
        }
        sleep(POLL_INTERVAL).await;
    }
    while http_status(admin, "/ready").await != Some(200) {
        if Instant::now() >= deadline {
            return Err(format!("gateway admin http://{admin}/ready"));
        }
        sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

async fn port_open(addr: SocketAddr) -> bool {
    matches!(
        timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Status code of `GET path` on `addr`, or `None` if there was no HTTP answer.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let request = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let line = std::str::from_utf8(&buf[..len]).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    };
    timeout(PROBE_TIMEOUT, request).await.ok().flatten()
}
