//! Streaming uploads. Written bytes collect in one buffer; each time it
//! holds a whole part, the part goes out as UploadPart of a multipart
//! upload of key `<id>` (started with the first part), several in flight at
//! once. In-flight parts are bounded both in number (`thread_pools`) and in
//! bytes, so memory stays at most (in flight + 1) parts whatever the image
//! size. An image smaller than one part is a single PutObject at commit.
//! Commit is CompleteMultipartUpload (nothing under `<id>` is visible
//! before), then, because the checksums are only known at the end, a copy
//! of the object onto itself that adds them to its metadata; a failure
//! aborts the multipart upload and returns the error.
//!
//! Parts are `large_object_chunk_size`; every 2,000 parts the part size
//! doubles (and fewer are in flight), so S3's 10,000 parts cover more than
//! 60,000 times the chunk size without knowing the size up front.
//!
//! Writes are sequential: at or after the end (a forward gap is zeros) or
//! inside the part not sent yet. Ranges copied from committed objects go
//! server-side (UploadPartCopy) for every whole part when the buffer is
//! empty, and are remembered so they can be read back (checksums of a
//! copy); other data cannot be read back once its part is sent.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::CompletedPart;
use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::copy;
use super::error::{s3err, S3Error};
use super::index;
use super::meta::{self, Meta};
use super::object::{unique_token, Bucket, Head, CONTENT};
use crate::store::{Checksums, ObjectMeta, Result, SetAttrs, StoreError, Upload, UploadMode};

/// Parts per step of the part size schedule.
const PARTS_PER_STEP: i32 = 2000;
/// S3's limits on parts.
const MAX_PARTS: i32 = 10_000;
const MAX_PART: u64 = 5 << 30;

type PartTasks = JoinSet<std::result::Result<CompletedPart, S3Error>>;

struct Multipart {
    upload_id: String,
    /// Number of the next part.
    next: i32,
    tasks: PartTasks,
    done: Vec<CompletedPart>,
}

/// A range of the upload copied from committed object `src`.
struct Extent {
    off: u64,
    len: u64,
    src: String,
    src_off: u64,
    etag: String,
}

pub struct S3Upload {
    bucket: Arc<Bucket>,
    id: String,
    mode: UploadMode,
    /// The claim object of a new id, dropped at the end.
    claim: Option<String>,
    /// The version a Replace upload replaces (its attribute index entry
    /// goes at commit).
    old: Option<Head>,
    meta: Meta,
    /// Metadata changed after the multipart upload was started with it.
    meta_dirty: bool,
    len: u64,
    /// Zeros after `len` not added yet: a truncate that extends only
    /// records them, so that writes before the new end (as `qemu-img
    /// create` does after its truncate) still land in the unsent buffer;
    /// they are added at the next write past `len`, or at commit.
    zero_tail: u64,
    /// Bytes `buf_start..len`, not sent yet.
    buf: BytesMut,
    buf_start: u64,
    mp: Option<Multipart>,
    /// A part failed: the upload can only be aborted.
    failed: Option<String>,
    copies: Vec<Extent>,
    finished: bool,
    /// Unlinked while being written (`orphan`): the id is free again, and
    /// this upload is only ever aborted.
    orphaned: bool,
}

/// Size of part `n` (1-based).
fn part_len(base: u64, n: i32) -> u64 {
    let step = ((n.max(1) - 1) / PARTS_PER_STEP) as u32;
    (base << step.min(10)).min(MAX_PART)
}

impl S3Upload {
    pub async fn start(bucket: Arc<Bucket>, id: &str, mode: UploadMode) -> Result<S3Upload> {
        bucket.ensure_bucket().await?;
        let mut m = Meta::new();
        let mut claim = None;
        let mut replaced = None;
        match mode {
            UploadMode::New => {
                if bucket.head_opt(id).await?.is_some() {
                    return Err(StoreError::AlreadyExists(id.to_string()));
                }
                claim = Some(bucket.claim(id).await?);
            }
            UploadMode::Replace => {
                if let Some(old) = bucket.head_opt(id).await? {
                    m = meta::kept_on_replace(&old.meta);
                    replaced = Some(old);
                }
            }
            UploadMode::Modify => {
                return Err(StoreError::NotSupported(
                    "modifying an S3 image in place (writes are sequential)",
                ))
            }
        }
        m.insert(CONTENT.into(), unique_token());
        meta::touch(&mut m);
        Ok(S3Upload {
            bucket,
            id: id.to_string(),
            mode,
            claim,
            old: replaced,
            meta: m,
            meta_dirty: false,
            len: 0,
            zero_tail: 0,
            buf: BytesMut::new(),
            buf_start: 0,
            mp: None,
            failed: None,
            copies: Vec::new(),
            finished: false,
            orphaned: false,
        })
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(StoreError::Unavailable(format!(
                "{}: an upload part failed: {e}",
                self.id
            ))),
            None => Ok(()),
        }
    }

    fn next_part(&self) -> i32 {
        self.mp.as_ref().map_or(1, |m| m.next)
    }

    fn cur_part_len(&self) -> u64 {
        part_len(self.bucket.part_size, self.next_part())
    }

    /// Parts in flight at once for parts of `len` bytes.
    fn limit(&self, len: u64) -> usize {
        let by_bytes = (self.bucket.in_flight_bytes / len.max(1)).max(1) as usize;
        self.bucket.in_flight_parts.min(by_bytes).max(1)
    }

    async fn ensure_mp(&mut self) -> Result<()> {
        if self.mp.is_some() {
            return Ok(());
        }
        let r = self
            .bucket
            .client
            .create_multipart_upload()
            .bucket(&self.bucket.name)
            .key(&self.id)
            .set_metadata(Some(self.meta.clone()))
            .send()
            .await
            .map_err(|e| s3err(e).into_store(&self.id))?;
        let upload_id = r
            .upload_id()
            .ok_or_else(|| StoreError::Unavailable(format!("{}: no upload id", self.id)))?
            .to_string();
        self.bucket.live.insert(&upload_id);
        self.mp = Some(Multipart {
            upload_id,
            next: 1,
            tasks: JoinSet::new(),
            done: Vec::new(),
        });
        Ok(())
    }

    /// Waits for one part in flight; a failure fails the upload.
    async fn join_one(&mut self) -> Result<()> {
        let mp = self.mp.as_mut().expect("multipart");
        let Some(r) = mp.tasks.join_next().await else {
            return Ok(());
        };
        match r {
            Ok(Ok(p)) => {
                mp.done.push(p);
                Ok(())
            }
            Ok(Err(e)) => {
                let err = e.into_store(&self.id);
                self.failed = Some(err.to_string());
                Err(err)
            }
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(StoreError::Unavailable(format!(
                    "{}: part task: {e}",
                    self.id
                )))
            }
        }
    }

    /// Makes room for one more part of `len` bytes in flight.
    async fn wait_room(&mut self, len: u64) -> Result<()> {
        self.ensure_mp().await?;
        let limit = self.limit(len);
        while self.mp.as_ref().unwrap().tasks.len() >= limit {
            self.join_one().await?;
        }
        if self.mp.as_ref().unwrap().next > MAX_PARTS {
            return Err(StoreError::NoSpace);
        }
        Ok(())
    }

    /// Sends the first `n` buffered bytes as the next part.
    async fn ship(&mut self, n: usize) -> Result<()> {
        self.wait_room(n as u64).await?;
        // Room in the daemon-wide budget, held until the part is answered.
        let held = self.bucket.budget.hold(n as u64).await;
        let mut rest = BytesMut::new();
        if self.buf.len() > n {
            rest = BytesMut::with_capacity(self.cur_part_len() as usize);
            rest.extend_from_slice(&self.buf[n..]);
        }
        self.buf.truncate(n);
        let part = std::mem::replace(&mut self.buf, rest).freeze();
        self.buf_start += n as u64;
        let mp = self.mp.as_mut().unwrap();
        let num = mp.next;
        mp.next += 1;
        let req = self
            .bucket
            .client
            .upload_part()
            .bucket(&self.bucket.name)
            .key(&self.id)
            .upload_id(&mp.upload_id)
            .part_number(num)
            .content_length(part.len() as i64)
            .body(ByteStream::from(part));
        mp.tasks.spawn(async move {
            let r = req.send().await.map_err(s3err);
            drop(held);
            let r = r?;
            Ok(CompletedPart::builder()
                .part_number(num)
                .set_e_tag(r.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    /// Gives an empty buffer room for a whole part (address space only
    /// until written), so filling it never reallocates.
    fn reserve_part(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf = BytesMut::with_capacity(self.cur_part_len() as usize);
        }
    }

    /// Sends every whole part the buffer holds.
    async fn ship_full(&mut self) -> Result<()> {
        loop {
            let p = self.cur_part_len();
            if (self.buf.len() as u64) < p {
                return Ok(());
            }
            self.ship(p as usize).await?;
        }
    }

    /// Appends `n` zeros at the end, a part at a time.
    async fn append_zeros(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let room = self
                .cur_part_len()
                .saturating_sub(self.buf.len() as u64)
                .max(1);
            let k = n.min(room);
            self.reserve_part();
            self.buf.resize(self.buf.len() + k as usize, 0);
            self.len += k;
            n -= k;
            self.ship_full().await?;
        }
        Ok(())
    }

    fn sent(&self, what: &'static str, offset: u64) -> Result<()> {
        if offset < self.buf_start {
            return Err(StoreError::NotSupported(what));
        }
        Ok(())
    }

    /// Waits for every part in flight; the parts sent, in order.
    async fn drain(&mut self) -> Result<Vec<CompletedPart>> {
        while self.mp.as_ref().is_some_and(|m| !m.tasks.is_empty()) {
            self.join_one().await?;
        }
        let mut parts = self
            .mp
            .as_mut()
            .map(|m| std::mem::take(&mut m.done))
            .unwrap_or_default();
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    /// The final metadata, with the content's checksums.
    fn final_meta(&self, sums: Option<&Checksums>) -> Meta {
        let mut m = self.meta.clone();
        meta::set_checksums(&mut m, sums);
        m
    }

    async fn put_whole(&mut self, m: Meta) -> Result<()> {
        let conditional = self.mode == UploadMode::New && self.bucket.conditional_put().await?;
        if self.mode == UploadMode::New
            && !conditional
            && self.bucket.head_opt(&self.id).await?.is_some()
        {
            return Err(StoreError::AlreadyExists(self.id.clone()));
        }
        let body = std::mem::take(&mut self.buf).freeze();
        let mut req = self
            .bucket
            .client
            .put_object()
            .bucket(&self.bucket.name)
            .key(&self.id)
            .content_length(body.len() as i64)
            .set_metadata(Some(m))
            .body(ByteStream::from(body));
        if conditional {
            req = req.if_none_match("*");
        }
        match req.send().await.map_err(s3err) {
            Ok(_) => Ok(()),
            Err(e) if conditional && (e.is_precondition() || e.is_conflict()) => {
                Err(StoreError::AlreadyExists(self.id.clone()))
            }
            Err(e) => Err(e.into_store(&self.id)),
        }
    }

    async fn complete(&mut self, sums: Option<&Checksums>) -> Result<()> {
        if !self.buf.is_empty() {
            let n = self.buf.len();
            self.ship(n).await?;
        }
        let parts = self.drain().await?;
        if self.mode == UploadMode::New && self.bucket.head_opt(&self.id).await?.is_some() {
            // Another client (Glance itself checks with HEAD too) wrote it.
            return Err(StoreError::AlreadyExists(self.id.clone()));
        }
        let upload_id = self.mp.as_ref().unwrap().upload_id.clone();
        copy::complete(&self.bucket, &self.id, &upload_id, parts).await?;
        self.bucket.live.remove(&upload_id);
        self.mp = None;
        if sums.is_some() || self.meta_dirty {
            // The metadata was fixed when the upload started; add what is
            // known only now. The image is committed either way.
            let m = self.final_meta(sums);
            let head = self.bucket.head_or(&self.id).await?;
            if let Err(e) = copy::copy(&self.bucket, &self.id, &head, &self.id, &m).await {
                tracing::warn!(id = %self.id, "storing checksums and attributes after the upload: {e}");
            }
        }
        Ok(())
    }

    /// Drops what the upload holds in the backend.
    async fn cleanup(&mut self) {
        if let Some(mut mp) = self.mp.take() {
            mp.tasks.abort_all();
            let r = self
                .bucket
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket.name)
                .key(&self.id)
                .upload_id(&mp.upload_id)
                .send()
                .await;
            if let Err(e) = r {
                tracing::warn!(id = %self.id, "aborting the multipart upload (imagefs gc removes it): {}", s3err(e).message);
            }
            self.bucket.live.remove(&mp.upload_id);
        }
        if let Some(c) = self.claim.take() {
            self.bucket.release(&c).await;
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished || (self.mp.is_none() && self.claim.is_none()) {
            return;
        }
        // Dropped without commit or abort: clean up in the background.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = S3Upload {
            bucket: self.bucket.clone(),
            id: self.id.clone(),
            mode: self.mode,
            claim: self.claim.take(),
            old: None,
            meta: Meta::new(),
            meta_dirty: false,
            len: 0,
            zero_tail: 0,
            buf: BytesMut::new(),
            buf_start: 0,
            mp: self.mp.take(),
            failed: None,
            copies: Vec::new(),
            finished: true,
            orphaned: false,
        };
        rt.spawn(async move { rest.cleanup().await });
    }
}

/// Data below `len` (what the part buffer and copies hold).
impl S3Upload {
    async fn write_data(&mut self, offset: u64, data: Bytes) -> Result<()> {
        self.check()?;
        self.sent(
            "rewriting data already uploaded (S3 writes are sequential)",
            offset,
        )?;
        if offset > self.len {
            self.append_zeros(offset - self.len).await?;
        }
        let at = (offset - self.buf_start) as usize;
        let overlap = (self.buf.len() - at).min(data.len());
        self.buf[at..at + overlap].copy_from_slice(&data[..overlap]);
        let mut rest = data.slice(overlap..);
        // Appended a part at a time, so a part's buffer never grows past
        // the part (it is sent as it is, capacity included).
        while !rest.is_empty() {
            let room = self
                .cur_part_len()
                .saturating_sub(self.buf.len() as u64)
                .max(1);
            let k = rest.len().min(room as usize);
            self.reserve_part();
            self.buf.extend_from_slice(&rest[..k]);
            self.len = self.len.max(self.buf_start + self.buf.len() as u64);
            rest = rest.slice(k..);
            self.ship_full().await?;
        }
        Ok(())
    }

    async fn read_data(&self, offset: u64, end: u64) -> Result<Bytes> {
        let mut out = BytesMut::new();
        let mut at = offset;
        while at < end {
            if at >= self.buf_start {
                let s = (at - self.buf_start) as usize;
                let e = (end - self.buf_start) as usize;
                out.extend_from_slice(&self.buf[s..e]);
                break;
            }
            let Some(x) = self
                .copies
                .iter()
                .rev()
                .find(|x| x.off <= at && at < x.off + x.len)
            else {
                return Err(StoreError::NotSupported(
                    "reading back data already uploaded (S3 writes are sequential)",
                ));
            };
            let upto = end.min(x.off + x.len).min(self.buf_start);
            let b = self
                .bucket
                .get_range(&x.src, x.src_off + (at - x.off), upto - at, Some(&x.etag))
                .await
                .map_err(|e| e.into_store(&x.src))?;
            if b.is_empty() {
                return Err(StoreError::Unavailable(format!("{}: short read", x.src)));
            }
            at += b.len() as u64;
            out.extend_from_slice(&b);
        }
        Ok(out.freeze())
    }

    fn truncate_data(&mut self, len: u64) -> Result<()> {
        self.sent(
            "truncating below data already uploaded (S3 writes are sequential)",
            len,
        )?;
        self.buf.truncate((len - self.buf_start) as usize);
        self.len = len;
        self.copies.retain(|x| x.off < len);
        Ok(())
    }

    async fn copy_data(
        &mut self,
        src: &str,
        src_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<u64> {
        self.check()?;
        self.sent(
            "copying over data already uploaded (S3 writes are sequential)",
            offset,
        )?;
        let head = self.bucket.head_or(src).await?;
        let len = len.min(head.size.saturating_sub(src_offset));
        if len == 0 {
            return Ok(0);
        }
        if offset > self.len {
            self.append_zeros(offset - self.len).await?;
        }
        self.copies.push(Extent {
            off: offset,
            len,
            src: src.to_string(),
            src_off: src_offset,
            etag: head.etag.clone(),
        });
        let mut done = 0;
        while done < len {
            let (at, from, rest) = (offset + done, src_offset + done, len - done);
            let p = self.cur_part_len();
            if at == self.len && self.buf.is_empty() && rest >= p && self.next_part() <= MAX_PARTS {
                // A whole part, inside the server.
                self.wait_room(p).await?;
                let mp = self.mp.as_mut().unwrap();
                let num = mp.next;
                mp.next += 1;
                let upload_id = mp.upload_id.clone();
                copy::part_copy(
                    &mut mp.tasks,
                    &self.bucket,
                    src,
                    &head.etag,
                    &self.id,
                    &upload_id,
                    num,
                    from,
                    p,
                );
                self.len += p;
                self.buf_start += p;
                done += p;
                continue;
            }
            // Up to the next part boundary, through this process.
            let room = if at >= self.len {
                p - self.buf.len() as u64 % p
            } else {
                self.len - at
            };
            let n = rest.min(room);
            let b = self
                .bucket
                .get_range(src, from, n, Some(&head.etag))
                .await
                .map_err(|e| e.into_store(src))?;
            if b.is_empty() {
                break;
            }
            done += b.len() as u64;
            self.write_at(at, b).await?;
        }
        Ok(done)
    }
}

#[async_trait]
impl Upload for S3Upload {
    fn id(&self) -> &str {
        &self.id
    }

    fn len(&self) -> u64 {
        self.len + self.zero_tail
    }

    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<()> {
        let end = self.len();
        self.write_data(offset, data).await?;
        self.zero_tail = end.saturating_sub(self.len);
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes> {
        let end = (offset + len as u64).min(self.len());
        let mut out = BytesMut::new();
        if offset < self.len {
            out.extend_from_slice(&self.read_data(offset, end.min(self.len)).await?);
        }
        out.resize(end.saturating_sub(offset) as usize, 0);
        Ok(out.freeze())
    }

    async fn set_len(&mut self, len: u64) -> Result<()> {
        self.check()?;
        if len >= self.len {
            self.zero_tail = len - self.len;
            return Ok(());
        }
        self.zero_tail = 0;
        self.truncate_data(len)
    }

    async fn copy_from(
        &mut self,
        src: &str,
        src_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<u64> {
        let end = self.len();
        let n = self.copy_data(src, src_offset, offset, len).await?;
        self.zero_tail = end.saturating_sub(self.len);
        Ok(n)
    }

    async fn set_attrs(&mut self, attrs: &SetAttrs) -> Result<()> {
        meta::apply_attrs(&mut self.meta, attrs);
        self.meta_dirty = self.mp.is_some();
        Ok(())
    }

    async fn commit(
        mut self: Box<Self>,
        sums: Option<Checksums>,
        _durable: bool,
    ) -> Result<ObjectMeta> {
        if self.orphaned {
            self.cleanup().await;
            self.finished = true;
            return Err(StoreError::Unavailable(format!(
                "{}: unlinked while being written, never committed",
                self.id
            )));
        }
        let tail = std::mem::take(&mut self.zero_tail);
        let filled = match self.check() {
            Ok(()) if tail > 0 => self.append_zeros(tail).await,
            r => r,
        };
        let r = match filled {
            Err(e) => Err(e),
            Ok(()) if self.mp.is_none() => {
                let m = self.final_meta(sums.as_ref());
                self.put_whole(m).await
            }
            Ok(()) => self.complete(sums.as_ref()).await,
        };
        self.cleanup().await;
        self.finished = true;
        r?;
        if self.mode == UploadMode::New {
            self.bucket.touch_dir().await;
        }
        let head = self.bucket.head_or(&self.id).await?;
        index::record(&self.bucket, &self.id, self.old.as_ref(), &head).await;
        Ok(head.object_meta(&self.id))
    }

    /// A new image gives its claim up, so another writer (on any mount)
    /// can take the id at once; the parts sent so far stay in this
    /// multipart upload (of the same key, which S3 keeps apart from any
    /// other) until `abort`.
    async fn orphan(&mut self) -> Result<()> {
        if let Some(c) = self.claim.take() {
            self.bucket.release(&c).await;
        }
        self.orphaned = true;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.cleanup().await;
        self.finished = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_cover_large_images() {
        let base = 10 << 20;
        assert_eq!(part_len(base, 1), base);
        assert_eq!(part_len(base, 2000), base);
        assert_eq!(part_len(base, 2001), 2 * base);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_len(base, n)).sum();
        assert!(total > 600 << 30, "{total}");
        assert!(part_len(1 << 30, 9999) <= MAX_PART);
    }
}
