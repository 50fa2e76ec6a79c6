//! Connections to a gateway listener that terminates TLS (`runtime::sni::SniListener`): read
//! the ClientHello, choose the chain by SNI, then pass TLS through (tcp_proxy, the ClientHello
//! replayed), or terminate it with the chain's current certificate and serve HTTP (h2 or
//! http/1.1 by ALPN and preface) or a tcp_proxy on the decrypted stream. A connection no chain
//! accepts, that is not TLS, or whose handshake fails is closed.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::sni::{self, SniffError, Sniffed};
use crate::proxy::{ConnInfo, Proxy};
use crate::runtime::sni::{ChainServe, SniListener};
use crate::tls::stream::Stream;

pub(super) async fn serve(
    proxy: Arc<Proxy>,
    listener: Arc<SniListener>,
    mut stream: TcpStream,
    remote: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let hello = match sni::read_client_hello(&mut stream, listener.inspect_timeout).await {
        Ok(h) => h,
        Err(e) => {
            if !matches!(e, SniffError::Closed) {
                tracing::debug!(listener = %listener.name, %remote, error = %e, "closing connection");
            }
            return;
        }
    };
    let Some(chain) = listener.select(hello.server_name.as_deref()) else {
        tracing::debug!(listener = %listener.name, sni = ?hello.server_name, "no filter chain matches; closing connection");
        return;
    };
    let Some(tls) = &chain.tls else {
        if let ChainServe::Tcp(l) = &chain.serve {
            crate::tcp_proxy::serve_chosen(
                Arc::clone(&proxy),
                Arc::clone(l),
                Stream::Plain(stream),
                remote,
                hello,
            )
            .await;
        }
        return;
    };
    if !hello.tls {
        tracing::debug!(listener = %listener.name, %remote, "not a TLS handshake; closing connection");
        return;
    }
    let local = stream.local_addr().unwrap_or(remote);
    let server_name = hello.server_name;
    let Some((stream, peer)) = tls.accept(stream, hello.bytes).await else {
        return;
    };
    match &chain.serve {
        ChainServe::Http(name) => {
            let mut conn = ConnInfo::new(Arc::clone(name), remote, local);
            conn.peer = peer;
            super::serve_connection(proxy, Arc::new(conn), stream).await;
        }
        ChainServe::Tcp(l) => {
            let hello = Sniffed {
                server_name,
                tls: true,
                bytes: Vec::new(),
            };
            crate::tcp_proxy::serve_chosen(
                Arc::clone(&proxy),
                Arc::clone(l),
                stream,
                remote,
                hello,
            )
            .await;
        }
    }
}
