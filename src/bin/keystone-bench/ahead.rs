//! Credentials made ahead of a scenario and used once each (DPoP proofs, client assertions):
//! signing them is the client's work, not the server's, so it is not measured.

use std::sync::{
    PoisonError, RwLock,
    atomic::{AtomicUsize, Ordering},
};

/// Credentials made ahead, handed out one at a time.
#[derive(Default)]
pub(crate) struct MadeAhead {
    items: RwLock<Vec<String>>,
    next: AtomicUsize,
}

impl MadeAhead {
    /// Replaces what is left with `items`.
    pub(crate) fn fill(&self, items: Vec<String>) {
        *self.items.write().unwrap_or_else(PoisonError::into_inner) = items;
        self.next.store(0, Ordering::Relaxed);
    }

    /// The next unused one; `None` once all are used.
    pub(crate) fn take(&self) -> Option<String> {
        let next = self.next.fetch_add(1, Ordering::Relaxed);
        self.items
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(next)
            .cloned()
    }
}

/// `count` results of `make`, made on every core.
pub(crate) fn on_every_core(
    count: usize,
    make: impl Fn() -> anyhow::Result<String> + Sync,
) -> anyhow::Result<Vec<String>> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let make = &make;
    std::thread::scope(|scope| {
        let shares: Vec<_> = (0..cores)
            .map(|core| {
                let share = count / cores + usize::from(core < count % cores);
                scope.spawn(move || {
                    (0..share)
                        .map(|_| make())
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for share in shares {
            all.extend(
                share
                    .join()
                    .map_err(|_| anyhow::anyhow!("a credential maker panicked"))??,
            );
        }
        Ok(all)
    })
}
