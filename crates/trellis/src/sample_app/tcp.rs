//! `sample-app --tcp-echo`: a line echo service over plain TCP, like Istio's `tcp-echo`
//! sample, for L4 routing tests and demos.
//!
//! Each line a client sends comes back prefixed with `name/version ` so the caller sees which
//! version answered. A last line without a newline is answered when the client half-closes,
//! and then this side closes too (so half-close through a proxy is observable). Lines are
//! bounded ([`MAX_LINE`]); a longer one closes the connection with an error line.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::Identity;

/// Longest line echoed, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// Serves one connection per task until the listener fails or `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    identity: Arc<Identity>,
    shutdown: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let identity = Arc::clone(&identity);
                    tokio::spawn(async move {
                        let _ = echo(stream, &identity).await;
                    });
                }
                Err(err) => {
                    eprintln!("sample-app: accept: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            signal = &mut shutdown => return signal,
        }
    }
}

async fn echo(stream: TcpStream, identity: &Identity) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let prefix = format!("{}/{} ", identity.service, identity.version);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            write.write_all(b"error: line too long\n").await?;
            break;
        }
        let mut reply = Vec::with_capacity(prefix.len() + line.len());
        reply.extend_from_slice(prefix.as_bytes());
        reply.extend_from_slice(&line);
        write.write_all(&reply).await?;
    }
    write.shutdown().await
}
