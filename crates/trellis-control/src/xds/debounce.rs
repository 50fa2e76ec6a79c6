//! Debouncing the store's changes into generations the streams push, as istiod does: a burst of
//! changes becomes one push once the store has been quiet for [`QUIET`], or after [`MAX_DELAY`]
//! under constant churn.
//!
//! Must not compile or push anything: it only republishes the latest configuration.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::{ConfigState, ConfigWatch};

/// Quiet period after the last change before a push (istiod's `PILOT_DEBOUNCE_AFTER`).
pub const QUIET: Duration = Duration::from_millis(100);
/// Longest a push waits under constant churn (istiod's `PILOT_DEBOUNCE_MAX`).
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// One configuration the streams push.
#[derive(Debug)]
pub struct Generation {
    pub revision: u64,
    pub loaded: Arc<trellis_config::Loaded>,
    /// When the first change of this generation's burst reached the server (start of the
    /// convergence time).
    pub accepted_at: Instant,
    /// When the debounce released it (start of the push time).
    pub published_at: Instant,
}

impl Generation {
    pub fn new(state: &ConfigState, accepted_at: Instant) -> Generation {
        Generation {
            revision: state.revision,
            loaded: state.loaded.clone(),
            accepted_at,
            published_at: Instant::now(),
        }
    }
}

/// Follows `config` and republishes it on `out` after debouncing; returns when `config`'s
/// sender is gone.
pub async fn run(mut config: ConfigWatch, out: watch::Sender<Arc<Generation>>) {
    run_with(&mut config, &out, QUIET, MAX_DELAY).await
}

async fn run_with(
    config: &mut ConfigWatch,
    out: &watch::Sender<Arc<Generation>>,
    quiet: Duration,
    max_delay: Duration,
) {
    loop {
        if config.changed().await.is_err() {
            return;
        }
        let first = Instant::now();
        let deadline = first + max_delay;
        let mut closed = false;
        loop {
            let quiet_end = (Instant::now() + quiet).min(deadline);
            tokio::select! {
                () = tokio::time::sleep_until(quiet_end) => break,
                changed = config.changed() => {
                    if changed.is_err() {
                        closed = true;
                        break;
                    }
                }
            }
        }
        let state = config.borrow_and_update().clone();
        tracing::debug!(revision = state.revision, "pushing configuration");
        out.send_replace(Arc::new(Generation::new(&state, first)));
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(revision: u64) -> Arc<ConfigState> {
        Arc::new(ConfigState {
            revision,
            ..Default::default()
        })
    }

    /// Records (revision, time since start) of every published generation.
    async fn drive(changes: Vec<(u64, Duration)>, total: Duration) -> Vec<(u64, Duration)> {
        let start = Instant::now();
        let (tx, mut rx) = watch::channel(state(0));
        let (out_tx, mut out_rx) = watch::channel(Arc::new(Generation::new(&state(0), start)));
        let task = tokio::spawn(async move {
            run_with(&mut rx, &out_tx, QUIET, MAX_DELAY).await;
        });
        let feeder = tokio::spawn(async move {
            for (rev, at) in changes {
                tokio::time::sleep_until(start + at).await;
                tx.send_replace(state(rev));
            }
            tokio::time::sleep_until(start + total).await;
        });
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                r = out_rx.changed() => {
                    if r.is_err() { break; }
                    let g = out_rx.borrow_and_update().clone();
                    seen.push((g.revision, g.published_at - start));
                }
                _ = tokio::time::sleep_until(start + total) => break,
            }
        }
        feeder.await.unwrap();
        task.abort();
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_becomes_one_push_after_the_quiet_period() {
        let ms = Duration::from_millis;
        let seen = drive(vec![(1, ms(10)), (2, ms(50)), (3, ms(90))], ms(2000)).await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, 3);
        assert!(seen[0].1 >= ms(190) && seen[0].1 <= ms(200), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn constant_churn_still_pushes_at_the_max_delay() {
        let ms = Duration::from_millis;
        let changes: Vec<_> = (1..=60).map(|i| (i, ms(50 * i))).collect();
        let seen = drive(changes, ms(3300)).await;
        // Changes every 50 ms for 3 s: never quiet, so one push per second at most, ...
        assert!(seen.len() >= 2, "{seen:?}");
        for pair in seen.windows(2) {
            assert!(pair[1].1 - pair[0].1 <= ms(1100), "{seen:?}");
        }
        // ... the first one a second after the first change, and the last one carries the last revision.
        assert!(seen[0].1 >= ms(1050) && seen[0].1 <= ms(1060), "{seen:?}");
        assert_eq!(seen.last().unwrap().0, 60, "{seen:?}");
    }
}
