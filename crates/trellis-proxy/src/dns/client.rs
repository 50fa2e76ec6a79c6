//! Sending one query: UDP to each configured server in turn, again over TCP when the answer
//! is truncated; names in `/etc/hosts` are answered from there first (as c-ares and glibc do).
//! Also reads the system configuration (`nameserver` lines of `/etc/resolv.conf`). Every
//! network wait is bounded by the per-attempt timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::wire::{self, Answer, TYPE_A, TYPE_AAAA};

/// How long one server gets to answer one attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per server before the next one is asked.
const ATTEMPTS: usize = 2;
/// The largest UDP answer we read (EDNS is not sent, so servers stay under 512 bytes).
const UDP_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no DNS server configured (no `nameserver` in /etc/resolv.conf and no --dns-server)")]
    NoServer,
    #[error("dns server {server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("dns server {server}: no answer within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("dns server {server}: {source}")]
    Wire {
        server: SocketAddr,
        source: wire::WireError,
    },
}

/// Which address records a name is asked for (Envoy's `dns_lookup_family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4Only,
    V6Only,
    /// IPv4 answers, else IPv6 (`V4_PREFERRED`).
    V4Preferred,
    /// IPv6 answers, else IPv4 (`AUTO`).
    Auto,
    /// Both (`ALL`).
    All,
}

/// Where queries go.
#[derive(Debug, Clone)]
pub struct Servers {
    pub servers: Vec<SocketAddr>,
    pub hosts_file: Option<std::path::PathBuf>,
}

impl Servers {
    /// `/etc/resolv.conf`'s name servers (port 53) and `/etc/hosts`.
    pub fn system() -> Servers {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Servers {
            servers: resolv_conf(&text),
            hosts_file: Some("/etc/hosts".into()),
        }
    }
}

/// The `nameserver` addresses of a resolv.conf.
pub fn resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// `name`'s addresses in a hosts file's text.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
            continue;
        };
        if fields.any(|n| n.eq_ignore_ascii_case(name)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

static NEXT_ID: AtomicU16 = AtomicU16::new(0x5eed);

/// `name`'s addresses of `family`, with the answer's TTL (`None` from the hosts file or when
/// there are no records).
pub async fn resolve(servers: &Servers, name: &str, family: Family) -> Result<Answer, QueryError> {
    if let Some(path) = &servers.hosts_file {
        let found = hosts_file(path, name).await;
        let found: Vec<IpAddr> = found.into_iter().filter(|ip| family.wants(ip)).collect();
        if !found.is_empty() {
            return Ok(Answer {
                addrs: found,
                ttl: None,
                truncated: false,
            });
        }
    }
    let order: &[u16] = match family {
        Family::V4Only => &[TYPE_A],
        Family::V6Only => &[TYPE_AAAA],
        Family::V4Preferred | Family::All => &[TYPE_A, TYPE_AAAA],
        Family::Auto => &[TYPE_AAAA, TYPE_A],
    };
    let mut merged = Answer {
        addrs: Vec::new(),
        ttl: None,
        truncated: false,
    };
    for qtype in order {
        let a = ask(servers, name, *qtype).await?;
        merged.addrs.extend(a.addrs);
        merged.ttl = match (merged.ttl, a.ttl) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        if family != Family::All && !merged.addrs.is_empty() {
            break;
        }
    }
    Ok(merged)
}

impl Family {
    fn wants(self, ip: &IpAddr) -> bool {
        match self {
            Family::V4Only => ip.is_ipv4(),
            Family::V6Only => ip.is_ipv6(),
            _ => true,
        }
    }
}

async fn hosts_file(path: &Path, name: &str) -> Vec<IpAddr> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => hosts_lookup(&text, name),
        Err(_) => Vec::new(),
    }
}

/// One question to the servers in turn; the last error when none answers.
async fn ask(servers: &Servers, name: &str, qtype: u16) -> Result<Answer, QueryError> {
    let mut last = QueryError::NoServer;
    for server in &servers.servers {
        for _ in 0..ATTEMPTS {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let q = wire::query(id, name, qtype).map_err(|source| QueryError::Wire {
                server: *server,
                source,
            })?;
            match exchange(*server, &q, id, qtype).await {
                Ok(a) => return Ok(a),
                Err(e @ QueryError::Wire { .. }) => {
                    last = e;
                    break;
                }
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}

async fn exchange(server: SocketAddr, q: &[u8], id: u16, qtype: u16) -> Result<Answer, QueryError> {
    let late = || QueryError::Timeout {
        server,
        timeout: ATTEMPT_TIMEOUT,
    };
    let answer = timeout(ATTEMPT_TIMEOUT, udp(server, q, id, qtype))
        .await
        .map_err(|_| late())??;
    if !answer.truncated {
        return Ok(answer);
    }
    timeout(ATTEMPT_TIMEOUT, tcp(server, q, id, qtype))
        .await
        .map_err(|_| late())?
}

async fn udp(server: SocketAddr, q: &[u8], id: u16, qtype: u16) -> Result<Answer, QueryError> {
    let io = |source| QueryError::Io { server, source };
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    sock.send(q).await.map_err(io)?;
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        match wire::parse(&buf[..n], id, qtype) {
            // A stray datagram (an old answer) is not ours; keep waiting.
            Err(wire::WireError::WrongId { .. }) => continue,
            other => return other.map_err(|source| QueryError::Wire { server, source }),
        }
    }
}

async fn tcp(server: SocketAddr, q: &[u8], id: u16, qtype: u16) -> Result<Answer, QueryError> {
    let io = |source| QueryError::Io { server, source };
    let mut s = TcpStream::connect(server).await.map_err(io)?;
    let len = u16::try_from(q.len()).unwrap_or(u16::MAX);
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed).await.map_err(io)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.map_err(io)?;
    wire::parse(&buf, id, qtype).map_err(|source| QueryError::Wire { server, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_files_are_read_like_libc() {
        let conf = "# generated\nsearch example.internal\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\noptions ndots:5\nnameserver bogus\n";
        assert_eq!(
            resolv_conf(conf),
            vec![
                "10.0.0.53:53".parse::<SocketAddr>().expect("addr"),
                "[fe80::1]:53".parse().expect("addr")
            ]
        );
        let hosts =
            "127.0.0.1 localhost\n::1 localhost ip6-localhost # v6\n10.1.1.1 db.internal DB\n";
        assert_eq!(hosts_lookup(hosts, "localhost").len(), 2);
        assert_eq!(hosts_lookup(hosts, "db"), vec![IpAddr::from([10, 1, 1, 1])]);
        assert!(hosts_lookup(hosts, "db.internal.").is_empty());
    }
}
