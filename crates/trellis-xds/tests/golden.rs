//! Golden tests: `tests/golden/<case>/config.yaml` (+ optional `proxy.txt`) compiled for that
//! proxy and rendered with `to_json` must equal `expected.json`. `UPDATE_GOLDEN=1` rewrites it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use trellis_xds::{ProxyIdentity, Role, compile, to_json};

/// `key = value` lines; labels as `label.<key> = <value>`; `#` comments.
fn parse_proxy(text: &str) -> ProxyIdentity {
    let mut proxy = ProxyIdentity::default();
    let mut labels = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .split_once('=')
            .expect("proxy.txt lines are `key = value`");
        let (key, value) = (key.trim(), value.trim().to_string());
        match key {
            "role" => {
                proxy.role = match value.as_str() {
                    "gateway" => Role::Gateway,
                    "sidecar" => Role::Sidecar,
                    other => panic!("unknown role {other}"),
                }
            }
            "id" => proxy.id = value,
            "namespace" => proxy.namespace = value,
            "service_account" => proxy.service_account = value,
            "bind_address" => proxy.bind_address = value,
            "app_address" => proxy.app_address = value,
            "outbound_port" => proxy.outbound_port = value.parse().expect("port"),
            "inbound_port" => proxy.inbound_port = value.parse().expect("port"),
            "locality" => {
                let mut parts = value.splitn(3, '/').map(str::to_string);
                proxy.locality = trellis_xds::Locality {
                    region: parts.next().unwrap_or_default(),
                    zone: parts.next().unwrap_or_default(),
                    subzone: parts.next().unwrap_or_default(),
                };
            }
            _ => match key.strip_prefix("label.") {
                Some(label) => {
                    labels.insert(label.to_string(), value);
                }
                None => panic!("unknown proxy.txt key {key}"),
            },
        }
    }
    proxy.labels = labels;
    proxy
}

fn run_case(dir: &Path) -> Result<(), String> {
    let config = fs::read_to_string(dir.join("config.yaml")).map_err(|e| e.to_string())?;
    let proxy = fs::read_to_string(dir.join("proxy.txt")).unwrap_or_default();
    let proxy = parse_proxy(&proxy);
    let loaded = trellis_config::load_str("config.yaml", &config)
        .map_err(|e| format!("config.yaml does not load: {e:?}"))?;
    let resources = compile(&loaded.snapshot, &loaded.registry, &proxy);
    let again = compile(&loaded.snapshot, &loaded.registry, &proxy);
    if resources != again {
        return Err("compile is not deterministic".into());
    }
    let owned =
        trellis_xds::compile_owned(loaded.snapshot.clone(), loaded.registry.clone(), &proxy);
    if resources != owned {
        return Err("compile_owned differs from compile".into());
    }
    let actual = serde_json::to_string_pretty(&to_json(&resources)).expect("json") + "\n";
    let expected_path = dir.join("expected.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&expected_path, &actual).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let expected = fs::read_to_string(&expected_path)
        .map_err(|e| format!("{}: {e}; run with UPDATE_GOLDEN=1", expected_path.display()))?;
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b);
        return Err(format!(
            "differs from expected.json (first difference at line {}); run with UPDATE_GOLDEN=1 \
             and review the diff\n--- actual ---\n{actual}",
            line.map_or(0, |l| l + 1)
        ));
    }
    Ok(())
}

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = fs::read_dir(&root)
        .expect("tests/golden exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("config.yaml").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 5,
        "expected at least 5 golden cases, found {}",
        cases.len()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|dir| {
            run_case(dir)
                .err()
                .map(|e| format!("{}: {e}", dir.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
