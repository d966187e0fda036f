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
//! object that readers hold and that is about to be deleted (unlink, or a
//! rename over it) is first copied to a hidden key (`DETACHED_PREFIX`)
//! that they follow, and the last of them deletes it (what a crash
//! leaves, `imagefs gc` removes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;

use super::copy;
use super::object::{unique_token, Bucket, Head, CONTENT};
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
    fn new(bucket: Arc<Bucket>, key: String) -> Detached {
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
            bucket.live.remove(&key);
        });
    }
}

/// Keeps version `head` of `key` for the readers in this process that hold
/// it, before it is deleted: a server-side copy to a hidden
/// key, which they follow and the last of them deletes. Nothing is done
/// (false) when no reader holds it.
pub async fn keep_for_readers(bucket: &Arc<Bucket>, key: &str, head: &Head) -> Result<bool> {
    if !bucket.pins.held(key, head) {
        return Ok(false);
    }
    let hidden = format!("{DETACHED_PREFIX}{}", unique_token());
    bucket.live.insert(&hidden);
    // From here on, dropping it deletes the copy (also a partial one).
    let kept = Arc::new(Detached::new(bucket.clone(), hidden.clone()));
    copy::copy(bucket, key, head, &hidden, &head.meta).await?;
    let copied = bucket.head_or(&hidden).await?;
    bucket
        .pins
        .moved(key, head, &hidden, &copied.etag, Some(kept));
    tracing::debug!(key, hidden, "kept for the readers open on it");
    Ok(true)
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

    /// Forgets `pin` (its reader is going), and its key once no reader
    /// holds it: the map never outgrows the readers open now.
    fn remove(&self, pin: &Arc<Pin>) {
        // The key is read under the map's lock, which moves take too.
        let mut m = self.by_key.lock().unwrap();
        let key = pin.key();
        if let Some(list) = m.get_mut(&key) {
            list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(pin)));
            if list.is_empty() {
                m.remove(&key);
            }
        }
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

impl Drop for S3Reader {
    fn drop(&mut self) {
        self.bucket.pins.remove(&self.pin);
    }
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
                            // Changed or deleted again (by another node)
                            // since: stale, as a first miss is.
                            if e.is_precondition() || e.is_not_found() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn head(etag: &str, content: Option<&str>) -> Head {
        Head {
            size: 1,
            etag: etag.into(),
            last_modified: UNIX_EPOCH,
            content_type: None,
            meta: content
                .map(|c| [(CONTENT.to_string(), c.to_string())].into())
                .unwrap_or_default(),
        }
    }

    /// Pins follow a move only if they hold the version moved (by content
    /// id when there is one, else by ETag), and the map forgets keys once
    /// their readers are gone.
    #[test]
    fn pins_follow_their_version_and_are_forgotten() {
        let pins = Pins::default();
        let (v1, v1_chmod, v2) = (
            head("e1", Some("c1")),
            head("e9", Some("c1")),
            head("e2", Some("c2")),
        );
        let old = pins.add("a", &v1);
        let other = pins.add("a", &v2);
        let glance = pins.add("g", &head("eg", None));
        // A chmod gave v1 a new ETag: still the version the first pin holds.
        assert!(pins.held("a", &v1_chmod));
        pins.moved("a", &v1_chmod, "b", "e10", None);
        assert_eq!(
            *old.at.lock().unwrap(),
            ("b".to_string(), "e10".to_string())
        );
        assert_eq!(other.key(), "a", "another version stays");
        assert!(pins.held("b", &v1) && pins.held("a", &v2));
        assert!(
            !pins.held("g", &head("eg2", None)),
            "no content id: by ETag"
        );
        for p in [&old, &other, &glance] {
            pins.remove(p);
        }
        assert!(pins.by_key.lock().unwrap().is_empty());
    }
}
