//! Write staging: the upload an image's open handles write into, the
//! checksums computed while the data streams, and the commit that publishes
//! it. Sequential writes (with forward gaps, as Glance's thin provisioning
//! does) keep the streaming hash; any other write drops it and the checksums
//! are recomputed from the staged data at commit.

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

/// A write in progress on one image.
pub struct Staging {
    pub upload: Box<dyn Upload>,
    pub mode: UploadMode,
    pub attrs: StagedAttrs,
    hasher: Option<StreamHasher>,
    /// A whole-image server-side copy in progress: (source, bytes copied).
    copy_of: Option<(String, u64)>,
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
        }
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
        self.upload.set_len(len).await?;
        self.touch();
        Ok(())
    }

    /// Server-side copy of a range of committed image `src` into the upload.
    pub async fn copy_from(&mut self, src: &str, src_off: u64, off: u64, len: u64) -> Result<u64> {
        let whole_so_far = match &self.copy_of {
            Some((s, n)) => s == src && *n == off && src_off == off,
            None => self.upload.is_empty() && off == 0 && src_off == 0 && self.hasher.is_some(),
        };
        let n = self.upload.copy_from(src, src_off, off, len).await?;
        self.hasher = None;
        self.copy_of = whole_so_far.then(|| (src.to_string(), off + n));
        self.touch();
        Ok(n)
    }

    pub async fn set_attrs(&mut self, attrs: &SetAttrs) -> Result<()> {
        self.upload.set_attrs(attrs).await?;
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
        let len = self.upload.len();
        let sums = match (self.hasher, &self.copy_of) {
            (Some(mut h), _) => {
                h.update_zeros(len.saturating_sub(h.fed()));
                Some(finish(h).await)
            }
            (None, Some((src, n))) if *n == len => match copied_sums(store, src, algo, len).await {
                Some(s) => Some(s),
                None => Some(rehash(&*self.upload, algo).await?),
            },
            (None, _) => Some(rehash(&*self.upload, algo).await?),
        };
        self.upload.commit(sums, durable).await
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
