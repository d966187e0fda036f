//! The daemon-wide bound on write data in flight to the stores: bytes handed
//! to a backend (an RBD aio write, an S3 part upload) and not yet answered,
//! summed over every upload of every store (`[mount] write_in_flight_mb`).
//! Each upload keeps its own, smaller bound besides; this one stops many
//! uploads at once from adding theirs up. Bytes are held from just before
//! they are sent until the backend has answered for them, so waiting for
//! room only ever waits for requests already in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes are counted in units of this size.
const UNIT: u64 = 64 << 10;

/// A shared budget of bytes in flight; the default has no bound.
#[derive(Clone, Default)]
pub struct WriteBudget {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    sem: Arc<Semaphore>,
    units: u32,
    /// The most units held at once.
    peak: AtomicU64,
}

/// Bytes held against a budget until dropped.
pub struct Held {
    _permit: Option<OwnedSemaphorePermit>,
}

impl WriteBudget {
    /// At most `bytes` in flight at once (0: no bound).
    pub fn new(bytes: u64) -> WriteBudget {
        if bytes == 0 {
            return WriteBudget::default();
        }
        let units = bytes.div_ceil(UNIT).min(u32::MAX as u64) as u32;
        WriteBudget {
            inner: Some(Arc::new(Inner {
                sem: Arc::new(Semaphore::new(units as usize)),
                units,
                peak: AtomicU64::new(0),
            })),
        }
    }

    /// Waits until `bytes` more may be in flight, and holds them. A request
    /// larger than the whole budget waits until it has all of it.
    pub async fn hold(&self, bytes: u64) -> Held {
        let Some(inner) = &self.inner else {
            return Held { _permit: None };
        };
        let n = bytes.div_ceil(UNIT).clamp(1, inner.units as u64) as u32;
        let permit = inner
            .sem
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the budget's semaphore is never closed");
        let held = inner.units as u64 - inner.sem.available_permits() as u64;
        inner.peak.fetch_max(held, Ordering::Relaxed);
        Held {
            _permit: Some(permit),
        }
    }

    /// The bound in bytes (None: no bound).
    pub fn limit(&self) -> Option<u64> {
        self.inner.as_ref().map(|i| i.units as u64 * UNIT)
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.peak.load(Ordering::Relaxed) * UNIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn holds_wait_for_room_and_free_it_when_dropped() {
        let b = WriteBudget::new(4 << 20);
        assert_eq!(b.limit(), Some(4 << 20));
        let first = b.hold(3 << 20).await;
        // 2 MiB more does not fit until the first goes.
        let second = b.hold(2 << 20);
        tokio::pin!(second);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut second)
            .await
            .is_err());
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("room once the first was dropped");
        assert_eq!(b.peak(), 3 << 20);
        // Larger than the whole budget: waits for all of it, then goes.
        drop(_second);
        let all = tokio::time::timeout(Duration::from_secs(5), b.hold(1 << 30))
            .await
            .expect("a request above the bound takes all of it");
        assert_eq!(b.peak(), 4 << 20);
        drop(all);
    }

    #[tokio::test]
    async fn no_bound_never_waits() {
        let b = WriteBudget::new(0);
        assert_eq!(b.limit(), None);
        let _a = b.hold(1 << 40).await;
        let _b = b.hold(1 << 40).await;
        assert_eq!(b.peak(), 0);
    }
}
