//! Test-only harness for Trellis end-to-end tests: find the real binaries,
//! spawn them as [`Process`]es that are killed (with their whole process
//! group) on drop, pick free loopback ports, poll with deadlines instead of
//! sleeping, and make HTTP requests through `curl`. Also the external tools
//! several crates' tests share: a real [`etcd::Etcd`], a real [`redis::Redis`] (or a
//! [`redis::RedisCluster`]) and `promtool check metrics`.
//!
//! It must stay small, std-only (plus `tempfile`, and `rcgen` for [`certs`]' throwaway mesh
//! certificates), and never be used by
//! production code. Binaries must be built first: `cargo build --workspace --bins`.
//!
//! ```no_run
//! use std::time::Duration;
//! let (_app, port) = trellis_testkit::sample_app("reviews", "v2");
//! let (status, headers, body) = trellis_testkit::http_get(&format!("http://127.0.0.1:{port}/get"));
//! assert_eq!(status, 200);
//! assert_eq!(headers["x-sample-service"], "reviews/v2");
//! assert!(body.contains("\"version\": \"v2\""));
//! ```

pub mod certs;
pub mod etcd;
mod http;
mod mesh;
mod net;
mod process;
mod promtool;
pub mod redis;

pub use http::{Headers, http_get, http_request};
pub use mesh::{Sidecar, proxy, sample_app, sample_app_on, sidecar};
pub use net::{free_port, wait_for_port, wait_until};
pub use process::{Process, SIGINT, SIGKILL, SIGTERM, bin_path};
pub use promtool::{PromtoolReport, promtool_check, promtool_run};
pub use tempfile::TempDir;
