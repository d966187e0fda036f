//! Writing RBD images: the upload (a new `<id>`, or a temporary clone or
//! image for writes to an existing one), its commit by protected snapshot
//! and name swap, server-side copies as clones, and `gc` of what dead
//! writers left.
//!
//! Writes are asynchronous. Writes that follow each other are gathered up
//! to the end of their RBD object and sent as one request, as Glance's
//! driver and `rbd import` write whole objects (64 KiB writes, what
//! Glance's file store makes, were one OSD op each). Up to
//! `MAX_IN_FLIGHT_BYTES` are queued in librbd at once, and a failure is
//! reported by a later write, `read_at` or commit, so close() still returns
//! it. librbd does not order writes in flight together, so gathered writes
//! that overlap one still in flight first wait for all of them (the later
//! write must win; sequential writes never wait).
//! An image whose final size is unknown grows in doubling steps (at most
//! 8 GiB at a time) and is trimmed at commit, as Glance's driver does, but
//! from 1 GiB rather than one object: every growth waits for the writes in
//! flight, and trimming space never written costs next to nothing.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::ffi::{AioWait, Image};
use super::{blocking, delete_image, map_err, meta, meta_of, purge_old, retire_old, temp_name};
use super::{touch_dir, Conn, Readers};
use super::{FEATURE_LAYERING, OLD_PREFIX, SNAP};
use crate::store::budget::WriteBudget;
use crate::store::{
    Checksums, Leftover, ObjectMeta, Result, SetAttrs, StoreError, Upload, UploadMode, TEMP_PREFIX,
};

/// Bytes of writes queued in librbd at once per upload (besides the
/// object being gathered).
const MAX_IN_FLIGHT_BYTES: u64 = 48 << 20;
/// First and largest growth steps of an image of unknown size.
const FIRST_GROW: u64 = 1 << 30;
const MAX_GROW: u64 = 8 << 30;
/// Bytes per step when data is copied rather than cloned.
const COPY_CHUNK: u64 = 4 << 20;

/// Writes that follow each other, kept until their object is complete.
struct Gathered {
    start: u64,
    len: u64,
    pieces: Vec<Bytes>,
}

/// A write in progress on one image.
pub(crate) struct RbdUpload {
    conn: Arc<Conn>,
    id: String,
    mode: UploadMode,
    /// The image written: `<id>` itself for a new image, else a temp image.
    target: String,
    /// None only while it is being replaced by a clone.
    img: Option<Arc<Image>>,
    /// Logical length (what the image will be).
    len: u64,
    /// Allocated size of the RBD image (>= len until commit trims it).
    size: u64,
    /// Nothing at or past this offset was ever written (reads as zeros).
    fresh_from: u64,
    thin: bool,
    /// The image is a clone of this committed image (id, size), of which the
    /// first `len` bytes have been asked for so far: copy_file_range comes
    /// in pieces (at most 1 GiB each through FUSE), the clone is made at the
    /// first and the later ones cost nothing.
    clone_of: Option<(String, u64)>,
    /// Writes that follow each other, not sent yet: where they start, how
    /// many bytes, the pieces.
    gathered: Mutex<Option<Gathered>>,
    /// Queued writes and the byte ranges they cover.
    in_flight: Mutex<VecDeque<(std::ops::Range<u64>, AioWait)>>,
    failed: Mutex<Option<String>>,
    attrs: SetAttrs,
    live: Arc<Mutex<HashSet<String>>>,
    readers: Readers,
    budget: WriteBudget,
}

impl RbdUpload {
    pub async fn start(
        conn: Arc<Conn>,
        id: &str,
        mode: UploadMode,
        thin: bool,
        live: Arc<Mutex<HashSet<String>>>,
        readers: Readers,
        budget: WriteBudget,
    ) -> Result<RbdUpload> {
        let target = match mode {
            UploadMode::New => id.to_string(),
            _ => temp_name(TEMP_PREFIX, id),
        };
        let (c, i, t) = (conn.clone(), id.to_string(), target.clone());
        let (img, len) = blocking(move || {
            let err = |e| map_err(&i, e);
            let len = match mode {
                UploadMode::New => {
                    c.pool.create(&t, 0, c.layout).map_err(err)?;
                    0
                }
                UploadMode::Replace => {
                    c.committed(&i)?;
                    c.pool.create(&t, 0, c.layout).map_err(err)?;
                    0
                }
                UploadMode::Modify => {
                    let src = c.committed(&i)?;
                    let (size, _) = src.stat().map_err(err)?;
                    drop(src);
                    if size == 0 {
                        // Nothing to share (and RBD clones no empty parent).
                        c.pool.create(&t, 0, c.layout).map_err(err)?;
                    } else if c.layout.features & FEATURE_LAYERING != 0 {
                        c.pool.clone_image(&i, SNAP, &t, c.layout).map_err(err)?;
                    } else {
                        c.pool.create(&t, size, c.layout).map_err(err)?;
                        copy_bytes_sync(c.as_ref(), &i, &t, size)?;
                    }
                    size
                }
            };
            let img = Image::open(&c.pool, &t).map_err(|e| {
                let _ = c.pool.remove(&t);
                map_err(&i, e)
            })?;
            Ok((img, len))
        })
        .await?;
        live.lock().unwrap().insert(target.clone());
        Ok(RbdUpload {
            conn,
            id: id.to_string(),
            mode,
            target,
            img: Some(Arc::new(img)),
            len,
            size: len,
            fresh_from: len,
            thin,
            clone_of: None,
            gathered: Mutex::new(None),
            in_flight: Mutex::new(VecDeque::new()),
            failed: Mutex::new(None),
            attrs: SetAttrs::default(),
            live,
            readers,
            budget,
        })
    }

    fn img(&self) -> Result<&Arc<Image>> {
        self.img.as_ref().ok_or_else(|| {
            StoreError::io(
                format!("{}: the upload's image is gone", self.id),
                std::io::Error::from_raw_os_error(libc::EIO),
            )
        })
    }

    fn check_failed(&self) -> Result<()> {
        match &*self.failed.lock().unwrap() {
            Some(e) => Err(StoreError::io(
                format!("{}: an earlier write failed: {e}", self.id),
                std::io::Error::from_raw_os_error(libc::EIO),
            )),
            None => Ok(()),
        }
    }

    fn note(&self, r: std::result::Result<usize, super::ffi::RbdError>) {
        if let Err(e) = r {
            self.failed.lock().unwrap().get_or_insert(e.to_string());
        }
    }

    /// Queues the gathered writes in librbd (after every write in flight
    /// if they overlap one), then waits until at most `MAX_IN_FLIGHT_BYTES`
    /// are in flight. A write librbd refuses fails the upload (earlier
    /// writes in it were already answered).
    async fn send(&self) -> Result<()> {
        let Some(g) = self.gathered.lock().unwrap().take() else {
            return Ok(());
        };
        let range = g.start..g.start + g.len;
        let overlapping: Vec<_> = {
            let mut q = self.in_flight.lock().unwrap();
            if q.iter()
                .any(|(r, _)| r.start < range.end && range.start < r.end)
            {
                q.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        for (_, op) in overlapping {
            self.note(op.wait().await);
        }
        // Room in the daemon-wide budget, held until librbd answers.
        let held = self.budget.hold(g.len).await;
        let img = self.img()?;
        let queued = if g.pieces.len() == 1 {
            let piece = g.pieces.into_iter().next().expect("one piece");
            img.write(g.start, piece, held)
        } else {
            img.writev(g.start, g.pieces, held)
        };
        let op = match queued {
            Ok(op) => op,
            Err(e) => {
                self.note(Err(e));
                return self.check_failed();
            }
        };
        loop {
            let oldest = {
                let mut q = self.in_flight.lock().unwrap();
                let bytes: u64 = q.iter().map(|(r, _)| r.end - r.start).sum();
                if q.is_empty() || bytes + g.len <= MAX_IN_FLIGHT_BYTES {
                    q.push_back((range, op));
                    break;
                }
                q.pop_front()
            };
            if let Some((_, done)) = oldest {
                self.note(done.wait().await);
            }
        }
        self.check_failed()
    }

    /// Sends what is gathered and waits for every queued write.
    async fn drain(&self) -> Result<()> {
        self.send().await?;
        let ops: Vec<_> = self.in_flight.lock().unwrap().drain(..).collect();
        for (_, op) in ops {
            self.note(op.wait().await);
        }
        self.check_failed()
    }

    /// Resizes the RBD image (no writes in flight).
    async fn resize(&mut self, size: u64) -> Result<()> {
        let t0 = std::time::Instant::now();
        self.drain().await?;
        let drained = t0.elapsed();
        let (img, id) = (self.img()?.clone(), self.id.clone());
        blocking(move || img.resize(size).map_err(|e| map_err(&id, e))).await?;
        tracing::debug!(id = self.id, from = self.size, to = size, ?drained, took = ?t0.elapsed(), "resized");
        self.size = size;
        Ok(())
    }

    /// Grows the image so `end` fits: doubling steps from 1 GiB, at most
    /// 8 GiB each, rounded up to whole objects.
    async fn grow_to(&mut self, end: u64) -> Result<()> {
        if end <= self.size {
            return Ok(());
        }
        let object = 1u64 << self.conn.layout.order;
        let step = self.size.clamp(FIRST_GROW, MAX_GROW);
        let want = end.max(self.size + step).div_ceil(object) * object;
        self.resize(want).await
    }

    /// Ends a piecewise clone: what was not asked for goes.
    async fn settle_clone(&mut self) -> Result<()> {
        if self.clone_of.take().is_some() && self.len < self.size {
            let len = self.len;
            self.resize(len).await?;
            self.fresh_from = self.fresh_from.min(len);
        }
        Ok(())
    }

    /// Makes `self.target` a clone of committed `src` (nothing written yet).
    async fn become_clone(&mut self, src: &str) -> Result<u64> {
        self.drain().await?;
        let (c, t, s) = (self.conn.clone(), self.target.clone(), src.to_string());
        let img = self.img.take();
        let (new, size) = blocking(move || {
            let err = |e| map_err(&s, e);
            let (size, _) = c.committed(&s)?.stat().map_err(err)?;
            // Close ours first: an open image cannot be removed.
            drop(img);
            c.pool.remove(&t).map_err(|e| map_err(&t, e))?;
            c.pool.clone_image(&s, SNAP, &t, c.layout).map_err(err)?;
            let new = c.head(&t)?;
            Ok((new, size))
        })
        .await?;
        self.img = Some(Arc::new(new));
        (self.len, self.size, self.fresh_from) = (size, size, size);
        Ok(size)
    }

    /// Metadata the committed image gets: what the old version had (mode,
    /// owner, user xattrs), this upload's attributes and checksums.
    fn final_metadata(
        &self,
        old: &BTreeMap<String, String>,
        sums: Option<&Checksums>,
    ) -> Vec<(String, String)> {
        let mut out: BTreeMap<String, String> = old
            .iter()
            .filter(|(k, _)| !meta::is_content_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut attrs = self.attrs.clone();
        if attrs.mtime.is_none() {
            attrs.mtime = Some(SystemTime::now());
        }
        for (k, v) in meta::attr_pairs(&attrs) {
            out.insert(k.to_string(), v);
        }
        if let Some(s) = sums {
            for (k, v) in meta::checksum_pairs(s) {
                out.insert(k.to_string(), v);
            }
        }
        out.into_iter().collect()
    }

    fn forget(&self) {
        self.live.lock().unwrap().remove(&self.target);
    }
}

impl Drop for RbdUpload {
    fn drop(&mut self) {
        // Dropped without commit or abort: gc finds the image later.
        self.forget();
    }
}

/// Copies `len` bytes of committed `src` into image `dst` (no clone).
fn copy_bytes_sync(c: &Conn, src: &str, dst: &str, len: u64) -> Result<()> {
    let from = Arc::new(c.committed(src)?);
    let to = Arc::new(c.head(dst)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| StoreError::io("copy", e))?;
    rt.block_on(async {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(COPY_CHUNK) as usize;
            let data = from.read(off, n).await.map_err(|e| map_err(src, e))?;
            to.write(off, data, ())
                .map_err(|e| map_err(dst, e))?
                .wait()
                .await
                .map_err(|e| map_err(dst, e))?;
            off += n as u64;
        }
        Ok(())
    })
}

/// Server-side copy of committed `from` to new image `to`: a clone of
/// `from@snap` with its metadata, then `snap` created and protected so it is
/// itself a Glance image.
pub(crate) fn clone_committed(c: &Conn, from: &str, to: &str) -> Result<()> {
    let src = c.committed(from)?;
    let (size, _) = src.stat().map_err(|e| map_err(from, e))?;
    let pairs = src.metadata().map_err(|e| map_err(from, e))?;
    drop(src);
    if Image::open_read_only(&c.pool, to, None).is_ok() {
        return Err(StoreError::AlreadyExists(to.to_string()));
    }
    if size > 0 && c.layout.features & FEATURE_LAYERING != 0 {
        c.pool
            .clone_image(from, SNAP, to, c.layout)
            .map_err(|e| map_err(to, e))?;
    } else {
        c.pool
            .create(to, size, c.layout)
            .map_err(|e| map_err(to, e))?;
        copy_bytes_sync(c, from, to, size)?;
    }
    let finish = || -> Result<()> {
        let img = c.head(to)?;
        for (k, v) in &pairs {
            img.metadata_set(k, v).map_err(|e| map_err(to, e))?;
        }
        img.snap_create(SNAP).map_err(|e| map_err(to, e))?;
        img.snap_protect(SNAP).map_err(|e| map_err(to, e))?;
        touch_dir(c);
        Ok(())
    };
    finish().inspect_err(|_| {
        let _ = delete_image(c, to).or_else(|_| c.pool.remove(to).map_err(|e| map_err(to, e)));
    })
}

/// Gives `target` its metadata and protected `snap`; for a new version of
/// an existing image, swaps it in under `id` and retires the old version.
fn commit_sync(
    c: &Arc<Conn>,
    img: &Image,
    id: &str,
    target: &str,
    mode: UploadMode,
    pairs: Vec<(String, String)>,
) -> Result<()> {
    let err = |e| map_err(id, e);
    // A clone carries its parent's metadata over: only what differs is
    // written, and content keys of the old version are dropped.
    let have: BTreeMap<String, String> = img.metadata().map_err(err)?.into_iter().collect();
    let want: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for k in have.keys() {
        if meta::is_content_key(k) && !want.contains_key(k.as_str()) {
            img.metadata_remove(k).map_err(err)?;
        }
    }
    for (k, v) in &want {
        if have.get(*k).map(String::as_str) != Some(*v) {
            img.metadata_set(k, v).map_err(err)?;
        }
    }
    img.snap_create(SNAP).map_err(err)?;
    img.snap_protect(SNAP).map_err(err)?;
    if mode == UploadMode::New {
        touch_dir(c);
        return Ok(());
    }
    // RBD has no atomic replace: the old version steps aside under a
    // hidden name, the new one takes the id.
    let old = temp_name(OLD_PREFIX, id);
    let swap = c.swapping(id);
    let had_old = match c.pool.rename(id, &old) {
        Ok(()) => true,
        Err(e) if e.errno == libc::ENOENT => false,
        Err(e) => return Err(err(e)),
    };
    if let Err(e) = c.pool.rename(target, id) {
        if had_old {
            let _ = c.pool.rename(&old, id);
        }
        return Err(err(e));
    }
    drop(swap);
    if had_old {
        retire_replaced(c, img, &old)?;
    }
    Ok(())
}

/// The old version of `id`, now named `old`, goes to the trash; when the
/// new version `img` is a clone of it, the upkeep thread flattens it so
/// that the old one can be purged once its grace has passed.
fn retire_replaced(c: &Arc<Conn>, img: &Image, old: &str) -> Result<()> {
    retire_old(c, old)?;
    match img.id() {
        Ok(new_id) => c.upkeep.detach(c, new_id, old.to_string()),
        Err(e) => tracing::warn!(old, "new version without an id, not flattened: {e}"),
    }
    Ok(())
}

#[async_trait]
impl Upload for RbdUpload {
    fn id(&self) -> &str {
        &self.id
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<()> {
        self.check_failed()?;
        self.settle_clone().await?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        self.len = self.len.max(end);
        if self.thin && offset >= self.fresh_from && data.iter().all(|&b| b == 0) {
            // Glance's thin provisioning: zeros are not written.
            return Ok(());
        }
        self.grow_to(end).await?;
        self.fresh_from = self.fresh_from.max(end);
        // Where the run holding this write starts: the gathered one if this
        // write follows it, else a new one.
        let appended_to = {
            let mut g = self.gathered.lock().unwrap();
            match g.as_mut() {
                Some(g) if g.start + g.len == offset => {
                    g.len += data.len() as u64;
                    g.pieces.push(data.clone());
                    Some(g.start)
                }
                _ => None,
            }
        };
        let start = match appended_to {
            Some(start) => start,
            None => {
                self.send().await?;
                *self.gathered.lock().unwrap() = Some(Gathered {
                    start: offset,
                    len: data.len() as u64,
                    pieces: vec![data],
                });
                offset
            }
        };
        // Sent once it reaches the end of an object (or crosses one).
        let object = 1u64 << self.conn.layout.order;
        if end % object == 0 || start / object != end / object {
            self.send().await?;
        }
        self.check_failed()
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes> {
        self.drain().await?;
        if offset >= self.len {
            return Ok(Bytes::new());
        }
        let n = (len as u64).min(self.len - offset);
        // Past the allocated size (a forward gap at the end) reads as zeros.
        let inside = n.min(self.size.saturating_sub(offset));
        let mut out = if inside > 0 {
            let data = self
                .img()?
                .read(offset, inside as usize)
                .await
                .map_err(|e| map_err(&self.id, e))?;
            data.to_vec()
        } else {
            Vec::new()
        };
        out.resize(n as usize, 0);
        Ok(Bytes::from(out))
    }

    async fn set_len(&mut self, len: u64) -> Result<()> {
        self.check_failed()?;
        self.settle_clone().await?;
        if len < self.len || len > self.size {
            self.resize(len).await?;
        }
        self.fresh_from = self.fresh_from.min(len);
        self.len = len;
        Ok(())
    }

    async fn copy_from(
        &mut self,
        src: &str,
        src_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<u64> {
        if let Some((from, size)) = &self.clone_of {
            if from == src && src_offset == offset && offset == self.len {
                // Already there: the clone holds the whole image.
                let n = len.min(size - offset);
                self.len += n;
                return Ok(n);
            }
        }
        self.settle_clone().await?;
        let untouched = self.len == 0 && self.fresh_from == 0;
        if untouched
            && src_offset == 0
            && offset == 0
            && self.conn.layout.features & FEATURE_LAYERING != 0
        {
            let (c, s) = (self.conn.clone(), src.to_string());
            let size = blocking(move || {
                let img = c.committed(&s)?;
                img.stat().map(|s| s.0).map_err(|e| map_err(&s, e))
            })
            .await?;
            if size > 0 {
                self.become_clone(src).await?;
                self.clone_of = Some((src.to_string(), size));
                self.len = len.min(size);
                return Ok(self.len);
            }
        }
        // A range: read it and write it here.
        let (c, s) = (self.conn.clone(), src.to_string());
        let from = Arc::new(blocking(move || c.committed(&s)).await?);
        let size = from.stat().map_err(|e| map_err(src, e))?.0;
        let len = len.min(size.saturating_sub(src_offset));
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_CHUNK) as usize;
            let data = from
                .read(src_offset + done, n)
                .await
                .map_err(|e| map_err(src, e))?;
            if data.is_empty() {
                break;
            }
            let got = data.len() as u64;
            self.write_at(offset + done, data).await?;
            done += got;
        }
        Ok(done)
    }

    async fn set_attrs(&mut self, attrs: &SetAttrs) -> Result<()> {
        let a = &mut self.attrs;
        a.mode = attrs.mode.or(a.mode);
        a.uid = attrs.uid.or(a.uid);
        a.gid = attrs.gid.or(a.gid);
        a.atime = attrs.atime.or(a.atime);
        a.mtime = attrs.mtime.or(a.mtime);
        Ok(())
    }

    async fn commit(
        mut self: Box<Self>,
        sums: Option<Checksums>,
        _durable: bool,
    ) -> Result<ObjectMeta> {
        if self.mode == UploadMode::New && self.target != self.id {
            return Err(StoreError::Unavailable(format!(
                "{}: unlinked while being written, never committed",
                self.id
            )));
        }
        self.settle_clone().await?;
        self.drain().await?;
        if self.size != self.len {
            let len = self.len;
            self.resize(len).await?;
        }
        self.img()?
            .aio_flush()
            .await
            .map_err(|e| map_err(&self.id, e))?;
        let (c, id) = (self.conn.clone(), self.id.clone());
        let old: BTreeMap<String, String> = if self.mode == UploadMode::New {
            BTreeMap::new()
        } else {
            blocking(move || {
                let img = c.committed(&id)?;
                Ok(img
                    .metadata()
                    .map_err(|e| map_err(&id, e))?
                    .into_iter()
                    .collect())
            })
            .await
            .unwrap_or_default()
        };
        let pairs = self.final_metadata(&old, sums.as_ref());
        let (c, img) = (self.conn.clone(), self.img.take());
        let (id, target, mode) = (self.id.clone(), self.target.clone(), self.mode);
        self.forget();
        let readers = self.readers.clone();
        let failed_img = img.clone();
        let result = blocking(move || {
            let img = img.ok_or(StoreError::NotFound(id.clone()))?;
            commit_sync(&c, &img, &id, &target, mode, pairs)?;
            drop(img);
            readers.lock().unwrap().pop(&id);
            let done = c.committed(&id)?;
            meta_of(&id, &done).map_err(|e| map_err(&id, e))
        })
        .await;
        if result.is_err() {
            let (c, t) = (self.conn.clone(), self.target.clone());
            let _ = blocking(move || {
                if let Some(img) = failed_img {
                    let _ = img.snap_unprotect(SNAP);
                    let _ = img.snap_remove(SNAP);
                }
                let _ = c.pool.remove(&t);
                Ok(())
            })
            .await;
        }
        result
    }

    /// A new image gives `<id>` back: it is renamed to a hidden temp name
    /// (writes in flight are unaffected, as data objects go by the image's
    /// internal id), so another writer can create `<id>` at once. Uploads
    /// into committed images already write a temp image.
    async fn orphan(&mut self) -> Result<()> {
        if self.mode != UploadMode::New || self.target != self.id {
            return Ok(());
        }
        let hidden = temp_name(TEMP_PREFIX, &self.id);
        let (c, from, to) = (self.conn.clone(), self.target.clone(), hidden.clone());
        blocking(move || c.pool.rename(&from, &to).map_err(|e| map_err(&from, e))).await?;
        {
            let mut live = self.live.lock().unwrap();
            live.insert(hidden.clone());
            live.remove(&self.target);
        }
        self.target = hidden;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.gathered.lock().unwrap().take();
        let _ = self.drain().await;
        self.forget();
        let img = self.img.take();
        let (c, t) = (self.conn.clone(), self.target.clone());
        let cloned = self.mode == UploadMode::Modify;
        drop(self);
        blocking(move || {
            drop(img);
            c.pool.remove(&t).map_err(|e| map_err(&t, e))?;
            // The version this was a clone of may have been deleted
            // meanwhile (the fs keeps such a clone for descriptors of an
            // unlinked image): it waited in the trash for this clone only.
            if cloned {
                c.upkeep.purge(&c);
            }
            Ok(())
        })
        .await
    }
}

/// What dead writers left: uploads in progress (`<id>` without `snap`, and
/// temp images) older than `older_than` that no live client has open, and
/// old versions nothing is cloned from any more.
pub(crate) fn collect(
    c: &Conn,
    older_than: Duration,
    dry_run: bool,
    live: &HashSet<String>,
) -> Result<Vec<Leftover>> {
    let me = c.cluster.instance_id() as i64;
    let now = SystemTime::now();
    let mut found = Vec::new();
    for name in c.pool.list().map_err(|e| map_err("list", e))? {
        if live.contains(&name) {
            continue;
        }
        if name.starts_with(OLD_PREFIX) {
            // An old version that a crash (or an outage) left between its
            // rename and the trash: it goes to the trash now.
            if !dry_run && retire_old(c, &name).is_ok() {
                tracing::info!("{name}: sent to the trash");
            }
            continue;
        }
        let Ok(img) = Image::open_read_only(&c.pool, &name, None) else {
            continue;
        };
        let committed = img
            .snaps()
            .map(|s| s.iter().any(|s| s.name == SNAP))
            .unwrap_or(true);
        if committed && !name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let age = img
            .created()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if age < older_than {
            continue;
        }
        let bytes = img.stat().map(|s| s.0).unwrap_or(0);
        // A writer that has the image open watches it; a dead one's watch
        // expires after osd_client_watch_timeout (30 s by default).
        let watched = img
            .watchers()
            .map(|w| w.iter().any(|&id| id != me))
            .unwrap_or(true);
        drop(img);
        if watched {
            continue; // a live writer's (or one that died < 30 s ago)
        }
        let removed = !dry_run && {
            if committed {
                delete_image(c, &name).is_ok()
            } else {
                c.pool.remove(&name).is_ok()
            }
        };
        found.push(Leftover {
            name,
            bytes,
            age,
            removed,
        });
    }
    if !dry_run {
        for name in purge_old(c, older_than.is_zero()) {
            found.push(Leftover {
                name,
                bytes: 0,
                age: older_than,
                removed: true,
            });
        }
    }
    Ok(found)
}
