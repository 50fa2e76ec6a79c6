//! Memory and time cost of loading + validating + compiling a config for one gateway.
//!
//! `cargo run --release -p trellis-xds --example compile_cost -- DIR [ROUNDS] [borrowed]`
//! (generate DIR with `bench/gen_services.py`). Prints heap in use and peak heap (counted by a
//! wrapping global allocator) and wall time per phase, like the proxy does on every edit: load,
//! then `compile_owned` (or, with `borrowed`, `compile` with the configuration kept alive).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use trellis_xds::{ProxyIdentity, Role};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Resets the peak to the current level and returns that level.
fn mark() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/svc1000".into()));
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(1);
    let borrowed = args.next().is_some_and(|a| a == "borrowed");
    let proxy = ProxyIdentity {
        id: "gateway~127.0.0.1~ingress.istio-system".into(),
        role: Role::Gateway,
        namespace: "istio-system".into(),
        labels: BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
        ..ProxyIdentity::default()
    };
    for round in 0..rounds {
        let base = mark();
        let start = Instant::now();
        let loaded = match trellis_config::load_path(&dir) {
            Ok(loaded) => loaded,
            Err(diags) => {
                eprintln!("{diags}");
                std::process::exit(1);
            }
        };
        let load_time = start.elapsed();
        let load_peak = PEAK.load(Ordering::Relaxed) - base;
        let after_load = CURRENT.load(Ordering::Relaxed) - base;

        let start = Instant::now();
        let resources = if borrowed {
            let resources = trellis_xds::compile(&loaded.snapshot, &loaded.registry, &proxy);
            drop(loaded);
            resources
        } else {
            trellis_xds::compile_owned(loaded.snapshot, loaded.registry, &proxy)
        };
        let compile_time = start.elapsed();
        let total_peak = PEAK.load(Ordering::Relaxed) - base;
        let resources_only = CURRENT.load(Ordering::Relaxed) - base;
        println!(
            "round {round}: {} resources, {} listeners, {} routes, {} clusters, version {}",
            resources.listeners.len()
                + resources.routes.len()
                + resources.clusters.len()
                + resources.endpoints.len(),
            resources.listeners.len(),
            resources.routes.len(),
            resources.clusters.len(),
            resources.version
        );
        println!(
            "  load+validate+registry: {:>8.1} ms, peak {}, retained {} (snapshot+registry)",
            load_time.as_secs_f64() * 1e3,
            mib(load_peak),
            mib(after_load)
        );
        println!(
            "  compile{}: {:>8.1} ms, peak {} (whole round), resources alone {}",
            if borrowed {
                " (borrowed)"
            } else {
                "   (owned)"
            },
            compile_time.as_secs_f64() * 1e3,
            mib(total_peak),
            mib(resources_only)
        );
        drop(resources);
    }
}
