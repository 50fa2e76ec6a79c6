//! A small Redis client of our own over tokio, for the counters of the rate limit service:
//! RESP2 encoding and parsing ([`resp`]), pipelines on reused connections (a bounded idle pool
//! per node), every call bounded by one timeout, and Redis Cluster ([`cluster`]: the slot map
//! from `CLUSTER SLOTS`, CRC16 hash slots with `{hash tags}`, `MOVED`/`ASK` redirects).
//!
//! Work is handed over as [`Group`]s: commands on one key (so on one hash slot), run in order
//! in one pipeline with the other groups of the same node. Must not know what the keys mean.

pub mod cluster;
pub mod resp;

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub use resp::{Command, Reply};

/// Idle connections kept per node (more may be open at once; the extra ones close after use).
const IDLE_PER_NODE: usize = 32;
/// Largest reply buffered (our replies are integers, short bulks and the cluster slot map).
const MAX_REPLY: usize = 4 << 20;

/// Where the counters live and how long a call may take.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `host:port` of the server, or seed nodes of a cluster.
    pub nodes: Vec<String>,
    pub cluster: bool,
    /// Bound of one call (connect, write, read, redirects included).
    pub timeout: Duration,
}

/// Why a Redis call failed. Every variant means: the counters could not be read or updated.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis {addr}: connect: {source}; is redis-server running there?")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("redis {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("redis {0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("redis {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("redis {addr} answered: {message}")]
    Server { addr: String, message: String },
    #[error("redis cluster: {0}")]
    Cluster(String),
}

impl RedisError {
    /// Short name for the `reason` label of the error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            RedisError::Connect { .. } => "connect",
            RedisError::Io { .. } => "io",
            RedisError::Timeout(..) => "timeout",
            RedisError::Protocol { .. } => "protocol",
            RedisError::Server { .. } => "server",
            RedisError::Cluster(_) => "cluster",
        }
    }
}

/// Commands on one key, run in order; the unit [`Redis::run`] spreads over cluster nodes.
#[derive(Debug, Clone)]
pub struct Group {
    pub key: Vec<u8>,
    pub commands: Vec<Command>,
}

/// A Redis server or cluster.
pub struct Redis {
    backend: Backend,
    timeout: Duration,
    name: String,
}

enum Backend {
    Single(Pool),
    Cluster(cluster::Cluster),
}

impl Redis {
    /// A client; connects lazily, so a Redis that is down at start-up only fails calls.
    pub fn new(config: &RedisConfig) -> Redis {
        let name = if config.cluster {
            format!("cluster {}", config.nodes.join(","))
        } else {
            config.nodes.first().cloned().unwrap_or_default()
        };
        let backend = match (config.cluster, config.nodes.first()) {
            (false, Some(addr)) => Backend::Single(Pool::new(addr.clone())),
            _ => Backend::Cluster(cluster::Cluster::new(config.nodes.clone())),
        };
        Redis {
            backend,
            timeout: config.timeout,
            name,
        }
    }

    /// `127.0.0.1:6379` or `cluster a,b,c`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs every group and returns each group's replies (in command order), within the
    /// timeout. A reply may be an error of its own (e.g. `WRONGTYPE`): callers look.
    pub async fn run(&self, groups: &[Group]) -> Result<Vec<Vec<Reply>>, RedisError> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let work = async {
            match &self.backend {
                Backend::Single(pool) => {
                    let commands: Vec<&Command> =
                        groups.iter().flat_map(|g| g.commands.iter()).collect();
                    let mut replies = pool.run(&commands).await?.into_iter();
                    Ok(groups
                        .iter()
                        .map(|g| replies.by_ref().take(g.commands.len()).collect())
                        .collect())
                }
                Backend::Cluster(cluster) => cluster.run(groups).await,
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::Timeout(self.name.clone(), self.timeout)),
        }
    }
}

/// Reused connections to one node.
pub(crate) struct Pool {
    addr: String,
    idle: Mutex<Vec<Connection>>,
}

impl Pool {
    pub(crate) fn new(addr: String) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// One pipeline on an idle connection (or a new one). A reused connection that fails
    /// (the server restarted since) is replaced by a fresh one, once.
    pub(crate) async fn run(&self, commands: &[&Command]) -> Result<Vec<Reply>, RedisError> {
        if let Some(mut conn) = self.take()
            && let Ok(replies) = conn.pipeline(commands).await
        {
            self.put(conn);
            return Ok(replies);
        }
        let mut conn = Connection::connect(&self.addr).await?;
        let replies = conn.pipeline(commands).await?;
        self.put(conn);
        Ok(replies)
    }

    fn take(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_PER_NODE {
            idle.push(conn);
        }
    }
}

/// One TCP connection speaking RESP2.
struct Connection {
    addr: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    async fn connect(addr: &str) -> Result<Connection, RedisError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| RedisError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            addr: addr.to_owned(),
            stream,
            buf: Vec::with_capacity(256),
        })
    }

    /// Writes all commands, then reads one reply per command.
    async fn pipeline(&mut self, commands: &[&Command]) -> Result<Vec<Reply>, RedisError> {
        let mut out = Vec::with_capacity(64 * commands.len());
        for command in commands {
            command.encode(&mut out);
        }
        self.stream.write_all(&out).await.map_err(|e| self.io(e))?;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            match resp::parse(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    replies.push(reply);
                }
                Ok(None) if self.buf.len() > MAX_REPLY => {
                    return Err(self.protocol(format!("reply larger than {MAX_REPLY} bytes")));
                }
                Ok(None) => {
                    let n = self
                        .stream
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|e| self.io(e))?;
                    if n == 0 {
                        return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(message) => return Err(self.protocol(message)),
            }
        }
        Ok(replies)
    }

    fn io(&self, source: std::io::Error) -> RedisError {
        RedisError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn protocol(&self, message: String) -> RedisError {
        RedisError::Protocol {
            addr: self.addr.clone(),
            message,
        }
    }
}
