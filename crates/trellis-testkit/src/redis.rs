//! A real Redis (Debian's `redis-server`) for tests of the rate limit service: one server, or
//! a Redis Cluster of masters built with `redis-cli --cluster create`, on free loopback ports
//! with temp dirs and no persistence; returned only once it answers (`cluster_state:ok` for a
//! cluster), killed on drop. It knows nothing about Trellis.

use std::process::Command;
use std::time::Duration;

use crate::{Process, TempDir, free_port, wait_until};

/// A running redis-server; dropping it kills the process and removes its dir.
pub struct Redis {
    /// `127.0.0.1:PORT`.
    pub address: String,
    pub port: u16,
    process: Option<Process>,
    dir: TempDir,
    cluster_bus: Option<u16>,
}

/// Masters of a Redis Cluster.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl Redis {
    /// Starts a standalone `redis-server` and waits (up to 20 s) until it answers PING.
    pub fn start() -> Redis {
        let dir = TempDir::new().expect("temp dir");
        let mut redis = Redis {
            port: free_port(),
            address: String::new(),
            process: None,
            dir,
            cluster_bus: None,
        };
        redis.address = format!("127.0.0.1:{}", redis.port);
        redis.restart();
        redis
    }

    /// Kills the server (its data is gone: there is no persistence).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal(crate::SIGKILL);
            let _ = process.wait_timeout(Duration::from_secs(10));
        }
    }

    /// Starts the server again on the same port (after [`Redis::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut args = vec![
            "--port".to_owned(),
            port,
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir,
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        if let Some(bus) = self.cluster_bus {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
            ]);
        }
        let mut process = Process::spawn("redis-server", &args, &[]);
        let up = wait_until(Duration::from_secs(20), || {
            self.try_cli(&["PING"]).is_some_and(|o| o.trim() == "PONG") || !process.is_running()
        });
        assert!(
            up && process.is_running(),
            "redis-server did not start (is redis-server installed?): {}",
            process.describe()
        );
        self.process = Some(process);
    }

    /// `redis-cli -p PORT args…`; panics if redis-cli fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli -p {} {args:?} failed", self.port))
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl RedisCluster {
    /// `masters` cluster-enabled servers joined by `redis-cli --cluster create` (no
    /// replicas), once every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<Redis> = (0..masters)
            .map(|_| {
                let mut redis = Redis {
                    port: free_port(),
                    address: String::new(),
                    process: None,
                    dir: TempDir::new().expect("temp dir"),
                    cluster_bus: Some(free_port()),
                };
                redis.address = format!("127.0.0.1:{}", redis.port);
                redis.restart();
                redis
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(&node.address);
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ok = wait_until(Duration::from_secs(30), || {
            nodes.iter().all(|n| {
                n.try_cli(&["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the redis cluster never reported cluster_state:ok");
        RedisCluster { nodes }
    }

    /// The nodes' addresses, comma-separated (for `--redis`).
    pub fn addresses(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.address.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}
