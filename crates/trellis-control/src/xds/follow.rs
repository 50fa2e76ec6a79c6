//! What a stream (SotW or delta) waits for between answers: the proxy's next request, or a new
//! generation of the configuration, recompiled for this proxy (through the shared cache).

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Streaming;
use trellis_xds::ProxyIdentity;

use super::snapshot::ProxySnapshot;
use super::{Generation, XdsServer};

/// The next thing a stream has to act on.
pub(super) enum Next<R> {
    /// The proxy sent a request.
    Request(R),
    /// A new generation was compiled: `Follower::snapshot` is the one to push.
    Generation,
    /// The proxy closed the stream (or it failed).
    End,
}

/// One stream's view of the configuration: the generation it follows and this proxy's snapshot.
pub(super) struct Follower<R> {
    server: Arc<XdsServer>,
    conn: u64,
    identity: ProxyIdentity,
    requests: Streaming<R>,
    /// The request that opened the stream, answered first.
    first: Option<R>,
    generations: watch::Receiver<Arc<Generation>>,
    pub generation: Arc<Generation>,
    pub snapshot: Arc<ProxySnapshot>,
}

impl<R> Follower<R> {
    pub async fn new(
        server: Arc<XdsServer>,
        conn: u64,
        identity: ProxyIdentity,
        first: R,
        requests: Streaming<R>,
    ) -> Follower<R> {
        let mut generations = server.generations.clone();
        let generation = generations.borrow_and_update().clone();
        let snapshot = server.cache.get(&generation, &identity).await;
        Follower {
            server,
            conn,
            identity,
            requests,
            first: Some(first),
            generations,
            generation,
            snapshot,
        }
    }

    pub fn identity(&self) -> &ProxyIdentity {
        &self.identity
    }

    pub async fn next(&mut self) -> Next<R> {
        if let Some(first) = self.first.take() {
            return Next::Request(first);
        }
        tokio::select! {
            msg = self.requests.message() => match msg {
                Ok(Some(req)) => Next::Request(req),
                Ok(None) => Next::End,
                Err(status) => {
                    tracing::debug!(conn = self.conn, proxy = %self.identity.id, %status, "xds stream ended");
                    Next::End
                }
            },
            changed = self.generations.changed() => {
                if changed.is_err() {
                    return Next::End;
                }
                self.generation = self.generations.borrow_and_update().clone();
                self.snapshot = self.server.cache.get(&self.generation, &self.identity).await;
                Next::Generation
            }
        }
    }
}
