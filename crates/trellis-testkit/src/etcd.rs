//! A real etcd (Debian's `etcd-server`) for tests of the etcd store: started on free loopback
//! ports with a temp data dir, returned only once `/health` says it is healthy, and killed
//! (with its data dir removed) on drop. It knows nothing about Trellis.

use std::time::Duration;

use crate::{Process, TempDir, free_port, http_request, wait_until};

/// A running single-member etcd; dropping it kills the process and removes its data.
pub struct Etcd {
    /// The store address for Trellis: `etcd://127.0.0.1:PORT`.
    pub endpoint: String,
    _process: Process,
    _dir: TempDir,
}

impl Etcd {
    /// Starts `etcd` and waits (up to 20 s) until it reports healthy; panics with its output
    /// if it exits or never does.
    pub fn start() -> Etcd {
        let dir = TempDir::new().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data = dir.path().join("data");
        let cluster = format!("default={peer_url}");
        let args = [
            "--data-dir",
            data.to_str().expect("temp dir path is UTF-8"),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &cluster,
        ];
        let mut process = Process::spawn("etcd", args, &[]);
        let healthy = wait_until(Duration::from_secs(20), || {
            http_request(&format!("{client_url}/health"), &[])
                .2
                .contains("true")
                || process.try_wait().is_some()
        });
        assert!(
            healthy && process.try_wait().is_none(),
            "etcd did not start (is etcd-server installed?): {}",
            process.describe()
        );
        Etcd {
            endpoint: format!("etcd://127.0.0.1:{client}"),
            _process: process,
            _dir: dir,
        }
    }
}
