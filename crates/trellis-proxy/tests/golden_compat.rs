//! The runtime accepts everything the compiler emits: each golden config of `trellis-xds` is
//! loaded, compiled for its proxy identity, and translated into a runtime snapshot.

use std::collections::BTreeMap;
use std::path::Path;

use trellis_proxy::runtime::Runtime;
use trellis_xds::{ProxyIdentity, Role};

fn identity(text: &str) -> ProxyIdentity {
    let mut id = ProxyIdentity::default();
    let mut labels = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim().to_string());
        match k {
            "role" => {
                id.role = if v == "sidecar" {
                    Role::Sidecar
                } else {
                    Role::Gateway
                }
            }
            "id" => id.id = v,
            "namespace" => id.namespace = v,
            "service_account" => id.service_account = v,
            "bind_address" => id.bind_address = v,
            "app_address" => id.app_address = v,
            k if k.starts_with("label.") => {
                labels.insert(k["label.".len()..].to_string(), v);
            }
            _ => {}
        }
    }
    id.labels = labels;
    id
}

#[test]
fn every_golden_config_compiles_into_the_runtime() -> Result<(), Box<dyn std::error::Error>> {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trellis-xds/tests/golden");
    let mut seen = 0;
    for entry in std::fs::read_dir(&golden)? {
        let dir = entry?.path();
        let Ok(proxy) = std::fs::read_to_string(dir.join("proxy.txt")) else {
            continue;
        };
        let loaded = trellis_config::load_path(&dir.join("config.yaml"))
            .map_err(|d| format!("{}: {d}", dir.display()))?;
        let res = trellis_xds::compile(&loaded.snapshot, &loaded.registry, &identity(&proxy));
        let rt = Runtime::compile(&res, None).map_err(|e| format!("{}: {e}", dir.display()))?;
        assert_eq!(
            rt.listeners.len() + rt.tcp_listeners.len(),
            res.listeners.len()
        );
        assert_eq!(rt.clusters.len(), res.clusters.len());
        seen += 1;
    }
    assert!(
        seen >= 3,
        "found only {seen} golden configs under {}",
        golden.display()
    );
    Ok(())
}
