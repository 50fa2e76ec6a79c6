//! Name resolution for STRICT_DNS clusters and the passthrough cluster: a cache of answers the
//! runtime reads while it compiles (never waiting on the network), and a refresh loop that
//! re-resolves each name when its answer expires — at the record's TTL when the cluster has
//! `respect_dns_ttl`, else every `dns_refresh_rate` (on failure: `dns_failure_refresh_rate`,
//! keeping the last good answer, as Envoy). When an answer changes the loop bumps a counter
//! that `app.rs` watches to recompile the running configuration with the new addresses.
//!
//! Names no compile asked for are dropped (mark and sweep per compile). Owns no listener and
//! knows nothing of clusters beyond their refresh settings.

pub mod client;
pub mod wire;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use client::{Family, QueryError, Servers};

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// Names the passthrough cache keeps before it starts over.
const DYNAMIC_MAX: usize = 1024;
/// The shortest a passthrough answer is cached (a TTL of 0 or a hosts-file answer).
const DYNAMIC_MIN_TTL: Duration = Duration::from_secs(1);

/// How a cluster wants its names refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    pub rate: Duration,
    pub failure_rate: Duration,
    pub respect_ttl: bool,
}

impl Default for Refresh {
    fn default() -> Refresh {
        Refresh {
            rate: DEFAULT_REFRESH,
            failure_rate: DEFAULT_REFRESH,
            respect_ttl: false,
        }
    }
}

/// The proxy's resolver (one per process, carried from snapshot to snapshot).
pub struct Resolver {
    /// `--dns-server`, else the system's, read on first use.
    configured: Option<Servers>,
    system: OnceLock<Servers>,
    state: Mutex<State>,
    /// Bumped when a cached answer changes.
    changed: watch::Sender<u64>,
    /// Bumped when any resolution attempt ends.
    progress: watch::Sender<u64>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    names: HashMap<(String, Family), Entry>,
    generation: u64,
    dynamic: HashMap<(String, Family), (Vec<IpAddr>, Instant)>,
}

struct Entry {
    /// `None` until the first answer.
    answer: Option<Vec<IpAddr>>,
    due: Instant,
    refresh: Refresh,
    /// The last compile generation that read it.
    seen: u64,
    in_flight: bool,
    attempted: bool,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("servers", &self.configured)
            .finish_non_exhaustive()
    }
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::new(None)
    }
}

impl Resolver {
    /// A resolver asking `servers` (`None`: `/etc/resolv.conf` and `/etc/hosts`).
    pub fn new(servers: Option<Servers>) -> Resolver {
        Resolver {
            configured: servers,
            system: OnceLock::new(),
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
            progress: watch::Sender::new(0),
            wake: Notify::new(),
        }
    }

    fn servers(&self) -> &Servers {
        match &self.configured {
            Some(s) => s,
            None => self.system.get_or_init(Servers::system),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a compile: names it reads are kept by [`Resolver::sweep`] with this generation.
    pub fn begin(&self) -> u64 {
        let mut s = self.state();
        s.generation += 1;
        s.generation
    }

    /// Drops the names the compile of `generation` did not read (call once it succeeded).
    pub fn sweep(&self, generation: u64) {
        self.state().names.retain(|_, e| e.seen >= generation);
    }

    /// The cached addresses of `host` (`None` before the first answer); registers the name
    /// for resolution and refresh with `refresh` (the shortest rate of its readers wins).
    pub fn cached(&self, host: &str, family: Family, refresh: Refresh) -> Option<Vec<IpAddr>> {
        let mut s = self.state();
        let generation = s.generation;
        let key = (host.to_ascii_lowercase(), family);
        let mut new = false;
        let e = s.names.entry(key).or_insert_with(|| {
            new = true;
            Entry {
                answer: None,
                due: Instant::now(),
                refresh,
                seen: generation,
                in_flight: false,
                attempted: false,
            }
        });
        e.seen = generation;
        if refresh.rate < e.refresh.rate {
            e.refresh.rate = refresh.rate;
        }
        e.refresh.respect_ttl |= refresh.respect_ttl;
        e.refresh.failure_rate = e.refresh.failure_rate.min(refresh.failure_rate);
        let answer = e.answer.clone();
        drop(s);
        if new {
            self.wake.notify_one();
        }
        answer
    }

    /// A counter that moves whenever a cached answer changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits (up to `wait`) until every registered name has been tried once; true if any has an
    /// answer now (the caller recompiles to use it).
    pub async fn settle(&self, wait: Duration) -> bool {
        let mut progress = self.progress.subscribe();
        let deadline = Instant::now() + wait;
        loop {
            let (done, any) = {
                let s = self.state();
                let done = s.names.values().all(|e| e.attempted);
                let any = s.names.values().any(|e| e.answer.is_some());
                (done, any)
            };
            if done {
                return any;
            }
            if tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err()
            {
                return any;
            }
        }
    }

    /// `host`'s addresses now, for a request (the passthrough cluster): from a small cache kept
    /// for the answer's TTL, else asked at once.
    pub async fn resolve(&self, host: &str, family: Family) -> Result<Vec<IpAddr>, QueryError> {
        let key = (host.to_ascii_lowercase(), family);
        if let Some((addrs, until)) = self.state().dynamic.get(&key)
            && *until > Instant::now()
        {
            return Ok(addrs.clone());
        }
        let answer = client::resolve(self.servers(), host, family).await?;
        let ttl = answer.ttl.unwrap_or(DYNAMIC_MIN_TTL).max(DYNAMIC_MIN_TTL);
        let mut s = self.state();
        if s.dynamic.len() >= DYNAMIC_MAX {
            s.dynamic.clear();
        }
        s.dynamic
            .insert(key, (answer.addrs.clone(), Instant::now() + ttl));
        Ok(answer.addrs)
    }

    /// The refresh loop: resolves each name when it is due, until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let (due, next) = {
                let mut s = self.state();
                let mut due = Vec::new();
                let mut next: Option<Instant> = None;
                for (key, e) in s.names.iter_mut() {
                    if e.in_flight {
                        continue;
                    }
                    if e.due <= now {
                        e.in_flight = true;
                        due.push(key.clone());
                    } else {
                        next = Some(next.map_or(e.due, |n| n.min(e.due)));
                    }
                }
                (due, next)
            };
            for (host, family) in due {
                let me = Arc::clone(&self);
                tokio::spawn(async move { me.refresh(host, family).await });
            }
            let wait = next.unwrap_or_else(|| now + Duration::from_secs(3600));
            tokio::select! {
                () = tokio::time::sleep_until(wait) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    async fn refresh(&self, host: String, family: Family) {
        let result = client::resolve(self.servers(), &host, family).await;
        let mut changed = false;
        {
            let mut s = self.state();
            if let Some(e) = s.names.get_mut(&(host.clone(), family)) {
                e.in_flight = false;
                e.attempted = true;
                match result {
                    Ok(answer) => {
                        let mut addrs = answer.addrs;
                        addrs.sort();
                        addrs.dedup();
                        let every = match answer.ttl {
                            Some(ttl) if e.refresh.respect_ttl && !ttl.is_zero() => ttl,
                            _ => e.refresh.rate,
                        };
                        e.due = Instant::now() + every;
                        if e.answer.as_ref() != Some(&addrs) {
                            tracing::info!(%host, ?addrs, next = ?every, "dns answer changed");
                            e.answer = Some(addrs);
                            changed = true;
                        }
                    }
                    Err(why) => {
                        tracing::warn!(%host, "{why}; keeping the last answer");
                        e.due = Instant::now() + e.refresh.failure_rate;
                    }
                }
            }
        }
        self.progress.send_modify(|n| *n += 1);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        // The loop may be sleeping past this entry's new due time.
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};

    use super::*;

    type Zone = Arc<Mutex<HashMap<String, [u8; 4]>>>;

    /// The question's name of a query.
    fn qname(q: &[u8]) -> String {
        let (mut pos, mut labels) = (12, Vec::new());
        while let Some(&len) = q.get(pos).filter(|l| **l != 0) {
            let len = usize::from(len);
            labels.push(String::from_utf8_lossy(&q[pos + 1..pos + 1 + len]).into_owned());
            pos += 1 + len;
        }
        labels.join(".")
    }

    /// An answer to `q`: one A record with TTL 1 from `zone`, or TC set when `truncate`.
    fn reply(q: &[u8], zone: &Zone, truncate: bool) -> Vec<u8> {
        let ip = zone.lock().expect("zone").get(&qname(q)).copied();
        let end = 12 + qname(q).len() + 2 + 4;
        let mut r = q[..end].to_vec();
        r[2] = 0x81 | if truncate { 0x02 } else { 0 };
        r[3] = 0x80;
        let records = u8::from(ip.is_some() && !truncate);
        r[7] = records;
        if let (Some(ip), 1) = (ip, records) {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
            r.extend_from_slice(&ip);
        }
        r
    }

    /// A UDP + TCP server on one loopback port; names starting `big.` are truncated over UDP.
    async fn server(zone: Zone) -> SocketAddr {
        // The UDP port's TCP twin may belong to someone else: try fresh ports a few times.
        let mut attempt = 0;
        let (udp, tcp, addr) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
            let addr = udp.local_addr().expect("addr");
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    let _ = e;
                }
                Err(e) => panic!("no loopback port free for both UDP and TCP: {e}"),
            }
        };
        let z = Arc::clone(&zone);
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let big = qname(&buf[..n]).starts_with("big.");
                let _ = udp.send_to(&reply(&buf[..n], &z, big), from).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    continue;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if s.read_exact(&mut q).await.is_err() {
                    continue;
                }
                let r = reply(&q, &zone, false);
                let mut framed = (r.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&r);
                let _ = s.write_all(&framed).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn names_are_re_resolved_at_their_ttl_and_truncated_answers_retried_over_tcp() {
        let zone: Zone = Arc::default();
        zone.lock()
            .expect("zone")
            .insert("a.test".into(), [127, 0, 0, 11]);
        zone.lock()
            .expect("zone")
            .insert("big.test".into(), [127, 0, 0, 99]);
        let addr = server(Arc::clone(&zone)).await;
        let resolver = Arc::new(Resolver::new(Some(Servers {
            servers: vec![addr],
            hosts_file: None,
        })));
        tokio::spawn(Arc::clone(&resolver).run());
        let refresh = Refresh {
            rate: Duration::from_secs(3600),
            failure_rate: Duration::from_secs(3600),
            respect_ttl: true,
        };
        let generation = resolver.begin();
        assert_eq!(resolver.cached("a.test", Family::V4Only, refresh), None);
        assert!(resolver.settle(Duration::from_secs(5)).await);
        let ip = |b: [u8; 4]| vec![IpAddr::from(b)];
        assert_eq!(
            resolver.cached("a.test", Family::V4Only, refresh),
            Some(ip([127, 0, 0, 11]))
        );
        // The record's TTL is 1 s (the refresh rate an hour): the change is seen soon.
        let mut changed = resolver.subscribe();
        zone.lock()
            .expect("zone")
            .insert("a.test".into(), [127, 0, 0, 12]);
        tokio::time::timeout(Duration::from_secs(10), changed.changed())
            .await
            .expect("a new answer within the TTL")
            .expect("resolver alive");
        assert_eq!(
            resolver.cached("a.test", Family::V4Only, refresh),
            Some(ip([127, 0, 0, 12]))
        );
        // A name no compile reads any more is dropped.
        resolver.sweep(generation + 1);
        assert!(resolver.state().names.is_empty());
        // Truncated over UDP: asked again over TCP.
        let got = resolver
            .resolve("big.test", Family::V4Only)
            .await
            .expect("tcp");
        assert_eq!(got, ip([127, 0, 0, 99]));
        let none = resolver
            .resolve("gone.test", Family::V4Only)
            .await
            .expect("nx");
        assert!(none.is_empty());
    }
}
