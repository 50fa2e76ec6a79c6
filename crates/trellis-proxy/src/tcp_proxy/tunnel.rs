//! HTTP CONNECT tunnels for TCP proxying (Envoy's tcp_proxy `tunneling_config`, which Istio
//! sets from a DestinationRule `tunnel`): on a fresh upstream connection to an HTTP proxy, ask
//! for a tunnel to `hostname` and check the answer; afterwards the connection carries the
//! client's bytes as they are. Does not connect, route or splice.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest CONNECT response head read.
const MAX_HEAD: usize = 8 * 1024;

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("CONNECT to the tunnel proxy: {0}")]
    Io(#[from] io::Error),
    #[error("the tunnel proxy closed the connection before answering CONNECT")]
    Closed,
    #[error("the tunnel proxy's answer to CONNECT is longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("the tunnel proxy refused CONNECT: {0:?}")]
    Refused(String),
    #[error("no answer to CONNECT within {0:?}")]
    Timeout(Duration),
}

/// Send `CONNECT hostname` and wait (at most `timeout`) for a 2xx answer. Returns the bytes
/// the proxy sent after its answer's head: already data from the tunnel's far end.
pub async fn open(
    up: &mut TcpStream,
    hostname: &str,
    timeout: Duration,
) -> Result<Vec<u8>, TunnelError> {
    tokio::time::timeout(timeout, handshake(up, hostname))
        .await
        .map_err(|_| TunnelError::Timeout(timeout))?
}

async fn handshake(up: &mut TcpStream, hostname: &str) -> Result<Vec<u8>, TunnelError> {
    let request = format!("CONNECT {hostname} HTTP/1.1\r\nHost: {hostname}\r\n\r\n");
    up.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = up.read(&mut chunk).await?;
        if n == 0 {
            return Err(TunnelError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let status_line = buf[..end].split(|b| *b == b'\n').next().unwrap_or_default();
            let status_line = String::from_utf8_lossy(status_line).trim().to_string();
            return if is_success(&status_line) {
                Ok(buf.split_off(end + 4))
            } else {
                Err(TunnelError::Refused(status_line))
            };
        }
        if buf.len() > MAX_HEAD {
            return Err(TunnelError::TooLong);
        }
    }
}

/// `HTTP/1.x 2xx ...`
fn is_success(status_line: &str) -> bool {
    let mut parts = status_line.split_ascii_whitespace();
    let version_ok = parts.next().is_some_and(|v| v.starts_with("HTTP/1."));
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    version_ok && code.is_some_and(|c| (200..300).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_http1_answers_open_a_tunnel() {
        assert!(is_success("HTTP/1.1 200 Connection established"));
        assert!(is_success("HTTP/1.0 200"));
        assert!(!is_success("HTTP/1.1 403 Forbidden"));
        assert!(!is_success("HTTP/1.1 407 Proxy Authentication Required"));
        assert!(!is_success("SSH-2.0-OpenSSH"));
        assert!(!is_success(""));
    }
}
