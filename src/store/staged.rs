//! Copy-on-write staging of writes into a committed image, for stores that
//! can only write whole new objects (S3): an unnamed sparse file in the
//! staging directory holds every block written so far; the blocks never
//! written are read from the version that was committed when the staging
//! began (a pinned reader, so a version committed meanwhile never mixes in).
//! Commit streams the result, in order, into an upload that replaces the
//! image, so the new version appears whole or not at all.
//!
//! Content of byte `p` (below `len`): the file's byte if `p`'s block is
//! local (fetched or written), else the old version's byte if `p` is below
//! `src_valid` (the old size, lowered by every truncate), else zero. A
//! block becomes local by copying its old bytes into the file first, so a
//! block that is not local has only zeros in the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{blocking, Checksums, ObjectMeta, Reader, Result, SetAttrs, StoreError, Upload};

/// Granularity of fetching old bytes and of tracking what is local.
const BLOCK: u64 = 1 << 20;
/// Bytes handed to the replacing upload per write at commit.
const COMMIT_CHUNK: u64 = 8 << 20;

pub struct Staged {
    id: String,
    file: Arc<File>,
    len: u64,
    /// The version being modified, and how much of it still shows.
    src: Arc<dyn Reader>,
    src_valid: u64,
    /// One flag per block: its content is in the file.
    local: Vec<bool>,
    /// The upload that replaces the image at commit (nothing sent before).
    inner: Box<dyn Upload>,
}

fn io_err(what: String, e: std::io::Error) -> StoreError {
    StoreError::io(what, e)
}

impl Staged {
    /// Stages changes to the version `src` (of `src_len` bytes) of image
    /// `id`; `inner` is a fresh upload replacing `id`, fed at commit.
    pub fn start(
        id: &str,
        src: Arc<dyn Reader>,
        src_len: u64,
        inner: Box<dyn Upload>,
        dir: &Path,
    ) -> Result<Staged> {
        let file = tempfile::tempfile_in(dir).map_err(|e| {
            io_err(
                format!("{id}: cannot create a staging file in {}", dir.display()),
                e,
            )
        })?;
        file.set_len(src_len)
            .map_err(|e| io_err(format!("{id}: sizing the staging file"), e))?;
        Ok(Staged {
            id: id.to_string(),
            file: Arc::new(file),
            len: src_len,
            src,
            src_valid: src_len,
            local: Vec::new(),
            inner,
        })
    }

    fn is_local(&self, block: u64) -> bool {
        self.local.get(block as usize).copied().unwrap_or(false)
    }

    fn mark_local(&mut self, block: u64) {
        let i = block as usize;
        if self.local.len() <= i {
            self.local.resize(i + 1, false);
        }
        self.local[i] = true;
    }

    /// Old bytes `off..off+len` (all below `src_valid`), exactly `len`.
    async fn old_bytes(&self, off: u64, len: u64) -> Result<Bytes> {
        let mut out = BytesMut::with_capacity(len as usize);
        while (out.len() as u64) < len {
            let at = off + out.len() as u64;
            let want = (len - out.len() as u64).min(u32::MAX as u64 >> 1) as u32;
            let got = self.src.read(at, want).await?;
            if got.is_empty() {
                return Err(io_err(
                    format!(
                        "{}: the version being modified ended at {at}, expected {}",
                        self.id,
                        off + len
                    ),
                    std::io::Error::from_raw_os_error(libc::ESTALE),
                ));
            }
            out.extend_from_slice(&got);
        }
        Ok(out.freeze())
    }

    async fn pwrite(&self, off: u64, data: Bytes) -> Result<()> {
        let (f, id) = (self.file.clone(), self.id.clone());
        blocking(move || {
            f.write_all_at(&data, off)
                .map_err(|e| io_err(format!("{id}: writing the staging file"), e))
        })
        .await
    }

    async fn pread(&self, off: u64, len: u64) -> Result<Bytes> {
        let (f, id) = (self.file.clone(), self.id.clone());
        blocking(move || {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, off)
                .map_err(|e| io_err(format!("{id}: reading the staging file"), e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// Makes `block` local: copies its old bytes into the file.
    async fn fetch(&mut self, block: u64) -> Result<()> {
        if self.is_local(block) {
            return Ok(());
        }
        let start = block * BLOCK;
        let end = (start + BLOCK).min(self.src_valid);
        if start < end {
            let old = self.old_bytes(start, end - start).await?;
            self.pwrite(start, old).await?;
        }
        self.mark_local(block);
        Ok(())
    }

    /// Content `off..off+len` (inside `len`), whatever is local or not.
    async fn content(&self, off: u64, len: u64) -> Result<Bytes> {
        let mut out = BytesMut::with_capacity(len as usize);
        let end = off + len;
        let mut at = off;
        while at < end {
            let block = at / BLOCK;
            // A run of blocks of the same kind.
            let kind = self.is_local(block);
            let mut run_end = ((block + 1) * BLOCK).min(end);
            while run_end < end && self.is_local(run_end / BLOCK) == kind {
                run_end = ((run_end / BLOCK + 1) * BLOCK).min(end);
            }
            if kind {
                out.extend_from_slice(&self.pread(at, run_end - at).await?);
            } else {
                let old_end = run_end.min(self.src_valid).max(at);
                if old_end > at {
                    out.extend_from_slice(&self.old_bytes(at, old_end - at).await?);
                }
                out.resize(out.len() + (run_end - old_end) as usize, 0);
            }
            at = run_end;
        }
        Ok(out.freeze())
    }
}

#[async_trait]
impl Upload for Staged {
    fn id(&self) -> &str {
        &self.id
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        // Only blocks written in part need their old bytes; whole ones
        // are overwritten anyway.
        for b in [first, last] {
            let whole = offset <= b * BLOCK && end >= (b + 1) * BLOCK;
            if !whole {
                self.fetch(b).await?;
            }
        }
        self.pwrite(offset, data).await?;
        for b in first..=last {
            self.mark_local(b);
        }
        self.len = self.len.max(end);
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes> {
        if offset >= self.len {
            return Ok(Bytes::new());
        }
        let len = u64::from(len).min(self.len - offset);
        self.content(offset, len).await
    }

    async fn set_len(&mut self, len: u64) -> Result<()> {
        let (f, id) = (self.file.clone(), self.id.clone());
        blocking(move || {
            f.set_len(len)
                .map_err(|e| io_err(format!("{id}: resizing the staging file"), e))
        })
        .await?;
        // Bytes past `len` are gone: extending again shows zeros there.
        self.src_valid = self.src_valid.min(len);
        self.len = len;
        Ok(())
    }

    async fn copy_from(&mut self, _: &str, _: u64, _: u64, _: u64) -> Result<u64> {
        Err(StoreError::NotSupported(
            "server-side copy into an image being modified",
        ))
    }

    async fn set_attrs(&mut self, attrs: &SetAttrs) -> Result<()> {
        self.inner.set_attrs(attrs).await
    }

    async fn commit(self: Box<Self>, sums: Option<Checksums>, durable: bool) -> Result<ObjectMeta> {
        let mut me = *self;
        let mut at = 0;
        while at < me.len {
            let n = COMMIT_CHUNK.min(me.len - at);
            let sent = match me.content(at, n).await {
                Ok(data) => me.inner.write_at(at, data).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                let _ = me.inner.abort().await;
                return Err(e);
            }
            at += n;
        }
        me.inner.commit(sums, durable).await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}
