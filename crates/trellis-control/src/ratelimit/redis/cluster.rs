//! Redis Cluster: which master owns a key (CRC16 of the key, or of its `{hash tag}`, modulo
//! 16384, looked up in the slot map `CLUSTER SLOTS` returns), one pipeline per master, and
//! the cluster's redirects: `MOVED` (the slot has a new owner: retry there and refresh the
//! map) and `ASK` (the slot is migrating: retry there once, after `ASKING`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::{Command, Group, Pool, RedisError, Reply};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Redirects followed for one group before giving up.
const MAX_REDIRECTS: usize = 5;

/// A cluster reached through its seed nodes.
pub(crate) struct Cluster {
    seeds: Vec<String>,
    map: RwLock<Arc<SlotMap>>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
}

/// Slot ranges and their masters, sorted by first slot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlotMap {
    ranges: Vec<(u16, u16, String)>,
}

/// Where a redirect sends a group.
enum Redirect {
    Moved(u16, String),
    Ask(String),
}

impl Cluster {
    pub(crate) fn new(seeds: Vec<String>) -> Cluster {
        Cluster {
            seeds,
            map: RwLock::new(Arc::new(SlotMap::default())),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// Runs every group on the master of its key; the masters' pipelines run concurrently.
    pub(crate) async fn run(&self, groups: &[Group]) -> Result<Vec<Vec<Reply>>, RedisError> {
        if self.map().ranges.is_empty() {
            self.refresh().await?;
        }
        let map = self.map();
        let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, group) in groups.iter().enumerate() {
            let slot = slot(&group.key);
            let node = map.node(slot).ok_or_else(|| {
                RedisError::Cluster(format!("no master serves slot {slot}; is the cluster ok?"))
            })?;
            by_node.entry(node.to_owned()).or_default().push(i);
        }
        let runs = by_node.into_iter().map(|(node, indices)| async move {
            let commands: Vec<&Command> = indices
                .iter()
                .flat_map(|&i| groups[i].commands.iter())
                .collect();
            let replies = self.pool(&node).run(&commands).await?;
            Ok::<_, RedisError>((indices, replies))
        });
        let mut out: Vec<Vec<Reply>> = vec![Vec::new(); groups.len()];
        for result in futures_util::future::join_all(runs).await {
            let (indices, replies) = result?;
            let mut replies = replies.into_iter();
            for i in indices {
                out[i] = replies.by_ref().take(groups[i].commands.len()).collect();
            }
        }
        for (i, group) in groups.iter().enumerate() {
            if redirect(&out[i]).is_some() {
                out[i] = self.follow(group, std::mem::take(&mut out[i])).await?;
            }
        }
        Ok(out)
    }

    /// Follows the redirects of one group until it is answered by its key's owner.
    async fn follow(
        &self,
        group: &Group,
        mut replies: Vec<Reply>,
    ) -> Result<Vec<Reply>, RedisError> {
        for _ in 0..MAX_REDIRECTS {
            let (node, asking) = match redirect(&replies) {
                None => return Ok(replies),
                Some(Redirect::Moved(slot, node)) => {
                    tracing::debug!(slot, %node, "redis cluster: slot moved; refreshing the slot map");
                    self.learn(slot, &node);
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "redis cluster: slot map refresh failed");
                    }
                    (node, false)
                }
                Some(Redirect::Ask(node)) => (node, true),
            };
            let asking_command = Command::new("ASKING");
            let commands: Vec<&Command> = if asking {
                group
                    .commands
                    .iter()
                    .flat_map(|c| [&asking_command, c])
                    .collect()
            } else {
                group.commands.iter().collect()
            };
            let answered = self.pool(&node).run(&commands).await?;
            replies = if asking {
                answered.into_iter().skip(1).step_by(2).collect()
            } else {
                answered
            };
        }
        Err(RedisError::Cluster(format!(
            "more than {MAX_REDIRECTS} redirects for one key; is the cluster resharding?"
        )))
    }

    /// Reloads the slot map from the first node that answers `CLUSTER SLOTS`.
    async fn refresh(&self) -> Result<(), RedisError> {
        let mut candidates: Vec<String> = self.map().nodes();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let command = Command::new("CLUSTER").arg("SLOTS");
        let mut last = RedisError::Cluster("no seed nodes".into());
        for node in candidates {
            match self.pool(&node).run(&[&command]).await {
                Ok(replies) => match replies.first().map(SlotMap::parse) {
                    Some(Ok(map)) if !map.ranges.is_empty() => {
                        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
                        return Ok(());
                    }
                    Some(Ok(_)) => {
                        last = RedisError::Cluster(format!("{node} serves no slots yet"));
                    }
                    Some(Err(message)) => {
                        last = RedisError::Server {
                            addr: node,
                            message: format!("CLUSTER SLOTS: {message}; is it a cluster node?"),
                        }
                    }
                    None => last = RedisError::Cluster(format!("{node}: no reply")),
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Records one slot's new owner at once (the full refresh may fail or lag).
    fn learn(&self, slot: u16, node: &str) {
        let mut guard = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut map = SlotMap {
            ranges: guard.ranges.clone(),
        };
        map.set(slot, node);
        *guard = Arc::new(map);
    }

    fn map(&self) -> Arc<SlotMap> {
        Arc::clone(&self.map.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn pool(&self, node: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            pools
                .entry(node.to_owned())
                .or_insert_with(|| Arc::new(Pool::new(node.to_owned()))),
        )
    }
}

impl SlotMap {
    /// From a `CLUSTER SLOTS` reply: `[[start, end, [ip, port, id], replicas…], …]`.
    pub fn parse(reply: &Reply) -> Result<SlotMap, String> {
        let Reply::Array(Some(items)) = reply else {
            return Err(match reply {
                Reply::Error(e) => e.clone(),
                other => format!("expected an array, got {other:?}"),
            });
        };
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let Reply::Array(Some(fields)) = item else {
                return Err("a slot range is not an array".into());
            };
            let slot = |i: usize| {
                fields
                    .get(i)
                    .and_then(Reply::as_integer)
                    .filter(|n| (0..i64::from(SLOTS)).contains(n))
                    .map(|n| n as u16)
                    .ok_or_else(|| "a slot range has no valid start/end".to_owned())
            };
            let (start, end) = (slot(0)?, slot(1)?);
            let Some(Reply::Array(Some(master))) = fields.get(2) else {
                return Err("a slot range has no master".into());
            };
            let host = match master.first() {
                Some(Reply::Bulk(Some(h))) => String::from_utf8_lossy(h).into_owned(),
                _ => return Err("a master has no host".into()),
            };
            let port = master
                .get(1)
                .and_then(Reply::as_integer)
                .ok_or("a master has no port")?;
            ranges.push((start, end, format!("{host}:{port}")));
        }
        ranges.sort();
        Ok(SlotMap { ranges })
    }

    /// The master serving `slot`.
    pub fn node(&self, slot: u16) -> Option<&str> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        let (start, end, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*start..=*end).contains(&slot).then_some(node.as_str())
    }

    /// Every master named in the map.
    fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.ranges.iter().map(|(_, _, n)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// `slot` is now served by `node`: split its range around it.
    fn set(&mut self, slot: u16, node: &str) {
        let mut ranges = Vec::with_capacity(self.ranges.len() + 2);
        for (start, end, owner) in self.ranges.drain(..) {
            if (start..=end).contains(&slot) {
                if start < slot {
                    ranges.push((start, slot - 1, owner.clone()));
                }
                if slot < end {
                    ranges.push((slot + 1, end, owner));
                }
            } else {
                ranges.push((start, end, owner));
            }
        }
        ranges.push((slot, slot, node.to_owned()));
        ranges.sort();
        self.ranges = ranges;
    }
}

/// The hash slot of `key`: CRC16 of its hash tag — the text between the first `{` and the
/// next `}`, when not empty — or of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as Redis Cluster uses.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The first redirect among a group's replies.
fn redirect(replies: &[Reply]) -> Option<Redirect> {
    replies.iter().find_map(|reply| {
        let Reply::Error(message) = reply else {
            return None;
        };
        let mut words = message.split_whitespace();
        match (words.next()?, words.next()?, words.next()?) {
            ("MOVED", slot, node) => Some(Redirect::Moved(slot.parse().ok()?, node.to_owned())),
            ("ASK", _, node) => Some(Redirect::Ask(node.to_owned())),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_and_slots_match_redis() {
        // The check value of CRC16/XMODEM, and slots `redis-cli CLUSTER KEYSLOT` prints.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"somekey"), 11058);
        // Hash tags: only the first `{…}` counts, and only when not empty.
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b"no}tag{"), crc16(b"no}tag{") % SLOTS);
    }

    #[test]
    fn the_slot_map_comes_from_cluster_slots_and_learns_moves() {
        let node = |host: &str, port: i64| {
            Reply::Array(Some(vec![
                Reply::Bulk(Some(host.as_bytes().to_vec())),
                Reply::Integer(port),
                Reply::Bulk(Some(b"id".to_vec())),
            ]))
        };
        let range = |start, end, master| {
            Reply::Array(Some(vec![
                Reply::Integer(start),
                Reply::Integer(end),
                master,
                node("127.0.0.1", 9999),
            ]))
        };
        let reply = Reply::Array(Some(vec![
            range(5461, 10922, node("127.0.0.1", 7001)),
            range(0, 5460, node("127.0.0.1", 7000)),
            range(10923, 16383, node("127.0.0.1", 7002)),
        ]));
        let mut map = SlotMap::parse(&reply).unwrap();
        assert_eq!(map.node(0), Some("127.0.0.1:7000"));
        assert_eq!(map.node(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.node(16383), Some("127.0.0.1:7002"));
        map.set(5461, "127.0.0.1:7002");
        assert_eq!(map.node(5460), Some("127.0.0.1:7000"));
        assert_eq!(map.node(5461), Some("127.0.0.1:7002"));
        assert_eq!(map.node(5462), Some("127.0.0.1:7001"));
        assert!(
            SlotMap::parse(&Reply::Error(
                "ERR This instance has cluster support disabled".into()
            ))
            .is_err()
        );
        assert_eq!(
            SlotMap::parse(&Reply::Array(Some(vec![]))).unwrap().node(1),
            None
        );
    }

    #[test]
    fn redirects_are_recognised() {
        let replies = [
            Reply::Integer(1),
            Reply::Error("MOVED 3999 127.0.0.1:6381".into()),
        ];
        assert!(
            matches!(redirect(&replies), Some(Redirect::Moved(3999, n)) if n == "127.0.0.1:6381")
        );
        let ask = [Reply::Error("ASK 3999 127.0.0.1:6382".into())];
        assert!(matches!(redirect(&ask), Some(Redirect::Ask(n)) if n == "127.0.0.1:6382"));
        assert!(redirect(&[Reply::Error("WRONGTYPE x".into())]).is_none());
    }
}
