//! Reads of committed objects. A `Reader` is pinned to the object's ETag
//! seen at open: every ranged GET carries `If-Match`, so an object replaced
//! meanwhile fails the read (ESTALE) instead of mixing two versions. A
//! metadata-only change (chmod, xattrs: a copy of the object onto itself)
//! may give the same content a new ETag; the reader then checks that the
//! content id imagefs keeps in the metadata is unchanged and follows the
//! new ETag. Reads are independent GETs, so the read-ahead above may keep
//! several in flight on one reader.
//!
//! Readers also follow this process's renames and unlinks, as open files
//! do: each reader's key and ETag sit in a `Pin` the bucket keeps a weak
//! list of. A rename moves the pins of the old key to the new one; an
//! unlink of an object that readers hold moves it to a hidden key
//! (`DETACHED_PREFIX`) instead of deleting it, and the last of those
//! readers to go deletes it (what a crash leaves, `imagefs gc` removes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;

use super::object::{Bucket, Head, CONTENT};
use crate::store::{Reader, Result, StoreError};

/// Keys of objects unlinked while readers held them.
pub const DETACHED_PREFIX: &str = ".imagefs-unlinked-";

/// Where a reader's version of an object is now.
pub struct Pin {
    /// Key and ETag.
    at: Mutex<(String, String)>,
    /// The content version (`Head::version`), which metadata changes keep.
    version: String,
    /// The hidden copy of an unlinked object, deleted with its last pin.
    _detached: Mutex<Option<Arc<Detached>>>,
}

impl Pin {
    fn key(&self) -> String {
        self.at.lock().unwrap().0.clone()
    }
}

/// An unlinked object kept under a hidden key for the readers that still
/// hold it; deleted when the last of them goes.
pub struct Detached {
    bucket: Arc<Bucket>,
    key: String,
    rt: tokio::runtime::Handle,
}

impl Detached {
    /// Call from the runtime (its deletion is spawned there).
    pub fn new(bucket: Arc<Bucket>, key: String) -> Detached {
        Detached {
            bucket,
            key,
            rt: tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let (bucket, key) = (self.bucket.clone(), std::mem::take(&mut self.key));
        self.rt.spawn(async move {
            match bucket.delete_key(&key).await {
                Ok(()) => tracing::debug!(key, "unlinked object deleted: its last reader closed"),
                Err(e) => tracing::warn!(
                    key,
                    "deleting an unlinked object: {e} (imagefs gc removes it)"
                ),
            }
            bucket.live.lock().unwrap().remove(&key);
        });
    }
}

/// The pins of the readers open in this process, by key.
#[derive(Default)]
pub struct Pins {
    by_key: Mutex<HashMap<String, Vec<Weak<Pin>>>>,
}

impl Pins {
    fn add(&self, key: &str, head: &Head) -> Arc<Pin> {
        let pin = Arc::new(Pin {
            at: Mutex::new((key.to_string(), head.etag.clone())),
            version: head.version(),
            _detached: Mutex::new(None),
        });
        let mut m = self.by_key.lock().unwrap();
        let list = m.entry(key.to_string()).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&pin));
        pin
    }

    /// Whether a reader in this process holds `key` as `head` describes it.
    pub fn held(&self, key: &str, head: &Head) -> bool {
        let version = head.version();
        let m = self.by_key.lock().unwrap();
        m.get(key).is_some_and(|l| {
            l.iter()
                .filter_map(Weak::upgrade)
                .any(|p| p.version == version)
        })
    }

    /// `key` (as `head` describes it) now lives at `to` as `to_etag`: its
    /// readers follow, holding `detached` if it is a hidden copy. Readers
    /// of another version stay where they are (and fail as stale).
    pub fn moved(
        &self,
        key: &str,
        head: &Head,
        to: &str,
        to_etag: &str,
        detached: Option<Arc<Detached>>,
    ) {
        let version = head.version();
        let mut m = self.by_key.lock().unwrap();
        let Some(list) = m.remove(key) else { return };
        let (mut follow, mut stay) = (Vec::new(), Vec::new());
        for pin in list.iter().filter_map(Weak::upgrade) {
            if pin.version == version {
                *pin.at.lock().unwrap() = (to.to_string(), to_etag.to_string());
                *pin._detached.lock().unwrap() = detached.clone();
                follow.push(Arc::downgrade(&pin));
            } else {
                stay.push(Arc::downgrade(&pin));
            }
        }
        if !stay.is_empty() {
            m.insert(key.to_string(), stay);
        }
        if !follow.is_empty() {
            let list = m.entry(to.to_string()).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.extend(follow);
        }
    }
}

pub struct S3Reader {
    bucket: Arc<Bucket>,
    /// The image id it was opened as (for errors).
    id: String,
    size: u64,
    content: Option<String>,
    pin: Arc<Pin>,
}

impl S3Reader {
    pub fn new(bucket: Arc<Bucket>, id: &str, head: &Head) -> S3Reader {
        let pin = bucket.pins.add(id, head);
        S3Reader {
            bucket,
            id: id.to_string(),
            size: head.size,
            content: head.meta.get(CONTENT).cloned(),
            pin,
        }
    }

    /// After a failed If-Match: where the content is now (key, ETag), if
    /// it is unchanged.
    async fn follow(&self) -> Result<Option<(String, String)>> {
        let Some(content) = &self.content else {
            return Ok(None);
        };
        let key = self.pin.key();
        let Some(h) = self.bucket.head_opt(&key).await? else {
            return Ok(None);
        };
        if h.meta.get(CONTENT) == Some(content) && h.size == self.size {
            let mut at = self.pin.at.lock().unwrap();
            if at.0 == key {
                at.1 = h.etag.clone();
            }
            return Ok(Some((key, h.etag)));
        }
        Ok(None)
    }
}

fn stale(id: &str) -> StoreError {
    StoreError::Io {
        context: format!("{id}: replaced while open for reading"),
        source: std::io::Error::from_raw_os_error(libc::ESTALE),
    }
}

#[async_trait]
impl Reader for S3Reader {
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let len = (len as u64).min(self.size - offset);
        let at = self.pin.at.lock().unwrap().clone();
        match self.bucket.get_range(&at.0, offset, len, Some(&at.1)).await {
            Ok(b) => Ok(b),
            // Moved meanwhile, or replaced (by the same content, with a
            // new ETag?).
            Err(e) if e.is_precondition() || e.is_not_found() => {
                let now = self.pin.at.lock().unwrap().clone();
                let next = if now != at {
                    Some(now)
                } else {
                    self.follow().await?
                };
                match next {
                    Some((key, etag)) => self
                        .bucket
                        .get_range(&key, offset, len, Some(&etag))
                        .await
                        .map_err(|e| {
                            if e.is_precondition() {
                                stale(&self.id)
                            } else {
                                e.into_store(&self.id)
                            }
                        }),
                    None => Err(stale(&self.id)),
                }
            }
            Err(e) => Err(e.into_store(&self.id)),
        }
    }
}
