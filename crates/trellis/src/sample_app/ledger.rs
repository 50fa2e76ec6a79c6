//! Per-instance memory of the sample app, for resilience tests: `/flaky/{key}/{n}` fails its
//! first `n` requests per key with 503 (optionally with `Retry-After`), and `/ledger` records
//! each POSTed `x-ledger-id` so a test can prove no request was executed twice. State lives in
//! the process (one sample app per process), bounded in size.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// At most this many distinct keys are remembered per map; further keys are not recorded.
const MAX_KEYS: usize = 100_000;

static FLAKY: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static LEDGER: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts one request for `key`; returns how many came before it.
pub fn flaky_seen(key: &str) -> u64 {
    bump(&FLAKY, key) - 1
}

/// Records one execution of `id`; returns how many times it has been executed now.
pub fn record(id: &str) -> u64 {
    bump(&LEDGER, id)
}

/// Every recorded id with its execution count.
pub fn entries() -> BTreeMap<String, u64> {
    LEDGER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) -> u64 {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(n) = map.get_mut(key) {
        *n += 1;
        return *n;
    }
    if map.len() < MAX_KEYS {
        map.insert(key.to_owned(), 1);
    }
    1
}
