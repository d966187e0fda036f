//! Write staging: the upload an image's open handles write into, the
//! checksums computed while the data streams, and the commit that publishes
//! it. Sequential writes (with forward gaps, as Glance's thin provisioning
//! does) keep the streaming hash; any other write drops it and the checksums
//! are recomputed from the staged data at commit. A staging may instead be
//! shared with the kernel, which then writes the upload's file itself (FUSE
//! passthrough): it sees no data, and checksums are computed at commit.

use std::time::SystemTime;

use bytes::Bytes;

use crate::config::HashAlgorithm;
use crate::fs::hash::StreamHasher;
use crate::store::{Checksums, ObjectMeta, Result, SetAttrs, Store, Upload, UploadMode};

/// Bytes read back per step when checksums are recomputed at commit.
const REHASH_CHUNK: u32 = 4 << 20;

/// What getattr reports for an image being written.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedAttrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl StagedAttrs {
    /// The attributes of committed `meta` about to be changed now.
    pub fn changing(meta: &ObjectMeta) -> StagedAttrs {
        let now = SystemTime::now();
        StagedAttrs {
            mode: meta.mode.unwrap_or(0o644),
            uid: meta.uid.unwrap_or(0),
            gid: meta.gid.unwrap_or(0),
            atime: meta.atime.unwrap_or(meta.mtime),
            mtime: now,
            ctime: now,
        }
    }
}

/// What a file looked like when last seen: on stores that offer
/// `Upload::local_file` any change moves the ctime, so an equal stamp means
/// nothing was written since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    size: u64,
    ctime: Option<SystemTime>,
}

impl Stamp {
    pub fn of(m: &ObjectMeta) -> Stamp {
        Stamp {
            size: m.size,
            ctime: m.ctime,
        }
    }
}

/// A write in progress on one image.
pub struct Staging {
    pub upload: Box<dyn Upload>,
    pub mode: UploadMode,
    pub attrs: StagedAttrs,
    hasher: Option<StreamHasher>,
    /// A whole-image server-side copy in progress: (source, bytes copied).
    copy_of: Option<(String, u64)>,
    /// The kernel writes the upload's file directly.
    shared: bool,
    /// The shared file right after the last copy_from.
    copy_stamp: Option<Stamp>,
    /// Published while kernel writers stay open: the file as published, and
    /// its checksums.
    published: Option<(Stamp, Option<Checksums>)>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("id", &self.upload.id())
            .field("len", &self.upload.len())
            .field("mode", &self.mode)
            .finish()
    }
}

impl Staging {
    pub fn new(
        upload: Box<dyn Upload>,
        mode: UploadMode,
        attrs: StagedAttrs,
        algo: Option<HashAlgorithm>,
    ) -> Staging {
        // Modify starts from existing content the hasher has not seen.
        let hasher = algo
            .filter(|_| mode != UploadMode::Modify)
            .map(StreamHasher::new);
        Staging {
            upload,
            mode,
            attrs,
            hasher,
            copy_of: None,
            shared: false,
            copy_stamp: None,
            published: None,
        }
    }

    /// Hands the upload's file to the kernel for passthrough writes, if the
    /// store offers one; from then on checksums are computed at commit.
    pub fn share(&mut self) -> Option<std::fs::File> {
        let file = self.upload.local_file()?;
        self.shared = true;
        self.hasher = None;
        Some(file)
    }

    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether `publish` made it visible already.
    pub fn is_published(&self) -> bool {
        self.published.is_some()
    }

    fn stamp(&self) -> Option<Stamp> {
        self.upload.stat().as_ref().map(Stamp::of)
    }

    /// Whether a whole-image copy is all the upload holds: nothing was
    /// written past the layer above (the kernel, when shared) since.
    fn still_a_copy(&self) -> bool {
        !self.shared || (self.copy_stamp.is_some() && self.stamp() == self.copy_stamp)
    }

    pub fn len(&self) -> u64 {
        self.upload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn write(&mut self, offset: u64, data: Bytes) -> Result<()> {
        self.copy_of = None;
        if let Some(h) = &mut self.hasher {
            let upto = h.fed();
            if offset >= upto {
                h.update_zeros(offset - upto);
                h.update(data.clone());
            } else {
                self.hasher = None;
            }
        }
        if let Err(e) = self.upload.write_at(offset, data).await {
            self.hasher = None; // it saw bytes the upload did not take
            return Err(e);
        }
        self.touch();
        Ok(())
    }

    pub async fn set_len(&mut self, len: u64) -> Result<()> {
        if let Some(h) = &self.hasher {
            if len < h.fed() {
                self.hasher = None;
            }
        }
        if matches!(&self.copy_of, Some((_, n)) if *n != len) {
            self.copy_of = None;
        }
        let was_a_copy = self.copy_of.is_some() && self.still_a_copy();
        self.upload.set_len(len).await?;
        if was_a_copy {
            self.copy_stamp = self.stamp();
        }
        self.touch();
        Ok(())
    }

    /// Server-side copy of a range of committed image `src` into the upload.
    pub async fn copy_from(&mut self, src: &str, src_off: u64, off: u64, len: u64) -> Result<u64> {
        let whole_so_far = match &self.copy_of {
            Some((s, n)) => s == src && *n == off && src_off == off && self.still_a_copy(),
            None => {
                self.upload.is_empty()
                    && off == 0
                    && src_off == 0
                    && (self.hasher.is_some() || self.shared)
            }
        };
        let n = self.upload.copy_from(src, src_off, off, len).await?;
        self.hasher = None;
        self.copy_of = whole_so_far.then(|| (src.to_string(), off + n));
        self.copy_stamp = self.stamp();
        self.touch();
        Ok(n)
    }

    pub async fn set_attrs(&mut self, attrs: &SetAttrs) -> Result<()> {
        let was_a_copy = self.copy_of.is_some() && self.still_a_copy();
        self.upload.set_attrs(attrs).await?;
        if was_a_copy {
            // Our own change: the content is still the copy.
            self.copy_stamp = self.stamp();
        }
        if let Some(m) = attrs.mode {
            self.attrs.mode = m;
        }
        if let Some(u) = attrs.uid {
            self.attrs.uid = u;
        }
        if let Some(g) = attrs.gid {
            self.attrs.gid = g;
        }
        if let Some(t) = attrs.atime {
            self.attrs.atime = t;
        }
        if let Some(t) = attrs.mtime {
            self.attrs.mtime = t;
        }
        self.attrs.ctime = SystemTime::now();
        Ok(())
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.attrs.mtime = now;
        self.attrs.ctime = now;
    }

    /// Publishes the staged image with its checksums (none when `algo` is
    /// None: checksums are off).
    pub async fn commit(
        self,
        store: &dyn Store,
        algo: Option<HashAlgorithm>,
        durable: bool,
    ) -> Result<ObjectMeta> {
        let Some(algo) = algo else {
            return self.upload.commit(None, durable).await;
        };
        if self.shared {
            let sums = self.shared_sums(store, algo).await?;
            return self.upload.commit(Some(sums), durable).await;
        }
        let len = self.upload.len();
        let still_a_copy = self.still_a_copy();
        let sums = match (self.hasher, &self.copy_of) {
            (Some(mut h), _) => {
                h.update_zeros(len.saturating_sub(h.fed()));
                Some(finish(h).await)
            }
            (None, Some((src, n))) if *n == len && still_a_copy => {
                match copied_sums(store, src, algo, len).await {
                    Some(s) => Some(s),
                    // A clone (constant time) of an image that has no
                    // checksums of its own (Glance wrote it): the copy has
                    // none either, rather than reading it all back.
                    None if store.capabilities().cheap_clone => None,
                    None => Some(rehash(&*self.upload, algo).await?),
                }
            }
            (None, _) => Some(rehash(&*self.upload, algo).await?),
        };
        self.upload.commit(sums, durable).await
    }

    /// Makes a shared staging's content visible now, keeping the staging:
    /// the kernel may go on writing its file (see `Upload::publish`).
    pub async fn publish(
        &mut self,
        store: &dyn Store,
        algo: Option<HashAlgorithm>,
        durable: bool,
    ) -> Result<ObjectMeta> {
        let sums = match algo {
            Some(algo) => Some(self.shared_sums(store, algo).await?),
            None => None,
        };
        let meta = self.upload.publish(sums.clone(), durable).await?;
        self.published = Some((Stamp::of(&meta), sums));
        self.touch();
        Ok(meta)
    }

    /// Checksums of a shared staging: those of its last publish if nothing
    /// changed since, those of a whole-image copy's source, or read back.
    async fn shared_sums(&self, store: &dyn Store, algo: HashAlgorithm) -> Result<Checksums> {
        if let Some((stamp, Some(sums))) = &self.published {
            if self.stamp() == Some(*stamp) && sums.os_hash_algo == algo.name() {
                return Ok(sums.clone());
            }
        }
        let len = self.upload.len();
        if let Some((src, n)) = &self.copy_of {
            if *n == len && self.still_a_copy() {
                if let Some(s) = copied_sums(store, src, algo, len).await {
                    return Ok(s);
                }
            }
        }
        rehash(&*self.upload, algo).await
    }

    pub async fn abort(self) -> Result<()> {
        self.upload.abort().await
    }
}

/// Waits for the hash threads without blocking the executor.
async fn finish(h: StreamHasher) -> Checksums {
    tokio::task::spawn_blocking(move || h.finish())
        .await
        .expect("hash thread")
}

/// Checksums of the source of a whole-image copy, if it has them.
async fn copied_sums(
    store: &dyn Store,
    src: &str,
    algo: HashAlgorithm,
    len: u64,
) -> Option<Checksums> {
    use crate::store::{XATTR_CHECKSUM, XATTR_OS_HASH_ALGO, XATTR_OS_HASH_VALUE};
    if store.head(src).await.ok()?.size != len {
        return None;
    }
    let get = |n: &'static str| async move {
        String::from_utf8(store.get_xattr(src, n).await.ok()?).ok()
    };
    let stored_algo = get(XATTR_OS_HASH_ALGO).await?;
    if stored_algo != algo.name() {
        return None;
    }
    Some(Checksums {
        md5: get(XATTR_CHECKSUM).await?,
        os_hash_algo: stored_algo,
        os_hash_value: get(XATTR_OS_HASH_VALUE).await?,
    })
}

/// Computes the checksums by reading the staged data back.
async fn rehash(upload: &dyn Upload, algo: HashAlgorithm) -> Result<Checksums> {
    let mut h = StreamHasher::new(algo);
    let len = upload.len();
    let mut off = 0;
    while off < len {
        let want = (len - off).min(REHASH_CHUNK as u64) as u32;
        let chunk = upload.read_at(off, want).await?;
        if chunk.is_empty() {
            break;
        }
        off += chunk.len() as u64;
        h.update(chunk);
    }
    h.update_zeros(len - off);
    Ok(finish(h).await)
}
