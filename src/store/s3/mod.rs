//! The S3 store: Glance's S3 layout on any S3 server (AWS, Ceph RGW,
//! MinIO, ...). Image `<id>` is key `<id>` in bucket `s3_store_bucket`, no
//! prefix, written as a multipart upload (a single PutObject below one
//! part), so Glance's own driver reads what imagefs writes and the reverse.
//! The bucket is created only with `create_bucket_on_put`.
//!
//! Modules: `client` builds the SDK client from the config (path or
//! virtual-host style, TLS, retries, timeouts) and the location URI;
//! `object` is the bucket the store and its uploads share (HEAD, ranged
//! GET, claims of new ids); `upload` streams writes as parts; `reader`
//! serves reads pinned to one version; `copy` does server-side copies;
//! `meta` encodes attributes in `x-amz-meta-*`; `index` keeps them in
//! key names too, so listing needs no HEAD per image; `lease` publishes
//! what this process holds so gc anywhere spares it; `error` maps
//! failures.
//!
//! A new id is claimed by creating `.imagefs-tmp-<id>` with `If-None-Match:
//! *` (a second writer on any mount gets EEXIST); the claim goes at commit
//! or abort, and `gc` removes claims and multipart uploads that dead
//! writers left (what live processes hold is in their leases). New images
//! are written sequentially (`random_write` is false); writes into a
//! committed image (`modify`) are staged locally
//! (`store::staged`) and uploaded as a new object at commit. Rename is
//! copy + delete (not atomic: a crash between leaves both names). S3 has no
//! capacity: `statfs` reports 1 PiB free (see `STATFS_BYTES`). The store
//! directory's mode, owner and times are the metadata of `.imagefs-store`.

mod client;
mod copy;
mod error;
mod index;
mod lease;
mod meta;
mod object;
mod reader;
mod upload;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::budget::WriteBudget;
use super::staged::Staged;
use super::{
    validate_id, Capabilities, Leftover, ObjectMeta, Reader, Result, SetAttrs, StatFs, Store,
    StoreError, Upload, UploadMode, XattrMode, TEMP_PREFIX,
};
use crate::config::S3StoreConfig;
use error::s3err;
use object::{Bucket, Head, CONTENT, STORE_OBJECT};
use reader::{S3Reader, DETACHED_PREFIX};
use upload::S3Upload;

pub use client::{location as location_of, path_style};
pub use lease::Timing as LeaseTiming;

/// What `statfs` reports as the size (and free space) of a bucket: S3 has
/// no capacity to ask for, and `df`, `cp` and Glance's free-space checks
/// want a number that never runs out.
pub const STATFS_BYTES: u64 = 1 << 50;
/// Bytes of upload parts in flight per upload, at most (with the part
/// being filled, the memory an upload holds).
pub const IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Names imagefs keeps for itself: never listed, never image ids.
const HIDDEN_PREFIX: &str = ".imagefs-";
/// Objects examined at once by `list` when the attribute index has no
/// entry for them (one HEAD each for the metadata).
const LIST_PARALLEL: usize = 16;

/// Glance's S3 store on one bucket.
pub struct S3Store {
    name: String,
    cfg: S3StoreConfig,
    bucket: Arc<Bucket>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("name", &self.name)
            .field("host", &self.cfg.host)
            .field("bucket", &self.cfg.bucket)
            .finish()
    }
}

impl S3Store {
    /// Builds the client; the server is first contacted at first use, so
    /// a server that is down does not stop the mount.
    pub fn open(name: &str, cfg: &S3StoreConfig) -> Result<S3Store> {
        let client = client::build(cfg)?;
        let part = cfg.large_object_chunk_size_mb.max(5) << 20;
        let bucket = Bucket::new(
            client,
            cfg.bucket.clone(),
            part,
            cfg.thread_pools.max(1),
            IN_FLIGHT_BYTES.max(part),
            cfg.create_bucket_on_put,
        );
        Ok(S3Store {
            name: name.to_string(),
            cfg: cfg.clone(),
            bucket: Arc::new(bucket),
        })
    }

    /// Counts this store's part uploads in flight against `budget`.
    pub fn with_write_budget(mut self, budget: WriteBudget) -> S3Store {
        Arc::get_mut(&mut self.bucket)
            .expect("the bucket is not shared before the store is used")
            .budget = budget;
        self
    }

    /// Keeps this process's lease with `timing` (tests: a short expiry).
    pub fn with_lease_timing(mut self, timing: LeaseTiming) -> S3Store {
        let b = Arc::get_mut(&mut self.bucket)
            .expect("the bucket is not shared before the store is used");
        b.live = lease::Live::new(
            b.client.clone(),
            b.name.clone(),
            &object::unique_token(),
            timing,
        );
        self
    }

    /// This process's lease object (held only while something is held).
    pub fn lease_key(&self) -> &str {
        self.bucket.live.key()
    }

    /// The SDK client (tests and benchmarks compare against it).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.bucket.client
    }

    /// HEAD of committed image `id`: NotFound for names that are not ids.
    async fn head_image(&self, id: &str) -> Result<Head> {
        if validate_id(id).is_err() || id.starts_with(HIDDEN_PREFIX) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        self.bucket.head_or(id).await
    }

    /// Rewrites the metadata of committed `id` (a copy onto itself), from
    /// the version `head` saw.
    async fn rewrite_meta(&self, id: &str, head: &Head, m: &meta::Meta) -> Result<()> {
        copy::copy(&self.bucket, id, head, id, m).await?;
        self.index(id, Some(head)).await;
        Ok(())
    }

    /// Records `id` as it is now in the attribute index (`old`: as it was
    /// before the change). Best effort, as the index is.
    async fn index(&self, id: &str, old: Option<&Head>) {
        match self.bucket.head_or(id).await {
            Ok(new) => index::record(&self.bucket, id, old, &new).await,
            Err(e) => tracing::debug!(id, "attribute index: {e}"),
        }
    }

    /// Multipart uploads in the bucket: (key, upload id, initiated).
    async fn list_uploads(&self) -> Result<Vec<(String, String, SystemTime)>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let r = self
                .bucket
                .client
                .list_multipart_uploads()
                .bucket(&self.cfg.bucket)
                .set_key_marker(key_marker)
                .set_upload_id_marker(id_marker)
                .send()
                .await;
            let r = match r.map_err(s3err) {
                Ok(r) => r,
                Err(e) if e.is_not_implemented() => {
                    tracing::warn!(store = %self.name, "this S3 server cannot list multipart uploads; gc skips them");
                    return Ok(out);
                }
                Err(e) => return Err(e.into_store(&format!("bucket {}", self.cfg.bucket))),
            };
            for u in r.uploads() {
                let (Some(k), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let at = u
                    .initiated()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((k.to_string(), id.to_string(), at));
            }
            key_marker = r.next_key_marker().map(str::to_string);
            id_marker = r.next_upload_id_marker().map(str::to_string);
            if !r.is_truncated().unwrap_or(false) || key_marker.is_none() {
                return Ok(out);
            }
        }
    }
}

/// An id a new image may take: valid, and not one of imagefs's own names.
fn check_new_id(id: &str) -> Result<()> {
    validate_id(id)?;
    if id.starts_with(HIDDEN_PREFIX) {
        return Err(StoreError::InvalidInput(format!(
            "{id:?}: names starting with {HIDDEN_PREFIX} are reserved"
        )));
    }
    Ok(())
}

#[async_trait]
impl Store for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "s3"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: false,
            random_write: false,
            modify: true,
            server_side_copy: true,
            cheap_clone: false,
            local_files: false,
            metadata: true,
            readers_outlive_delete: false,
        }
    }

    fn location(&self, id: &str) -> String {
        client::location(&self.cfg, id)
    }

    async fn root_attrs(&self) -> Result<Option<ObjectMeta>> {
        let Some(h) = self.bucket.head_opt(STORE_OBJECT).await? else {
            return Ok(None);
        };
        let mut m = h.object_meta("");
        m.size = 0;
        m.mode = Some(meta::parse(&h.meta).mode.unwrap_or(0o755));
        m.version = String::new();
        Ok(Some(m))
    }

    /// Kept as the metadata of object `.imagefs-store`, so `rsync -a` into
    /// the store's directory can set them.
    async fn set_root_attrs(&self, attrs: &SetAttrs) -> Result<()> {
        self.bucket
            .update_store_meta(|m| meta::apply_attrs(m, attrs))
            .await
    }

    /// One ListObjectsV2 walk of the images (ids have no `/`, so the
    /// index under `.imagefs-attrs/` is left out) beside one of the
    /// attribute index; images the index does not describe as listed get
    /// a HEAD each.
    async fn list(&self) -> Result<Vec<ObjectMeta>> {
        let (objects, idx) = tokio::join!(
            self.bucket.list_keys(None, Some("/")),
            index::load(&self.bucket)
        );
        let idx = idx.unwrap_or_else(|e| {
            tracing::debug!(store = %self.name, "attribute index: {e}");
            index::Index::new()
        });
        let mut out: Vec<Option<ObjectMeta>> = Vec::new();
        let mut missing = Vec::new();
        for o in objects? {
            let Some(k) = o.key() else { continue };
            if validate_id(k).is_err() || k.starts_with(HIDDEN_PREFIX) {
                continue;
            }
            let at = object::modified(&o);
            let size = o.size().unwrap_or(0).max(0) as u64;
            let m = index::object_meta(&idx, k, size, o.e_tag().unwrap_or_default(), at);
            if m.is_none() {
                missing.push((out.len(), k.to_string()));
            }
            out.push(m);
        }
        for batch in missing.chunks(LIST_PARALLEL) {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, k) in batch.iter().cloned() {
                let b = self.bucket.clone();
                tasks.spawn(async move {
                    let h = b.head_opt(&k).await;
                    (i, k, h)
                });
            }
            while let Some(r) = tasks.join_next().await {
                let (i, k, h) = r.map_err(|e| StoreError::Unavailable(format!("list: {e}")))?;
                // Gone since the listing: left out.
                out[i] = h?.map(|h| h.object_meta(&k));
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    async fn head(&self, id: &str) -> Result<ObjectMeta> {
        Ok(self.head_image(id).await?.object_meta(id))
    }

    async fn read(&self, id: &str, offset: u64, len: u32) -> Result<Bytes> {
        if validate_id(id).is_err() || id.starts_with(HIDDEN_PREFIX) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        self.bucket
            .get_range(id, offset, len as u64, None)
            .await
            .map_err(|e| e.into_store(id))
    }

    /// The version committed now (its ETag): reads of a replaced object
    /// fail instead of mixing versions.
    async fn open_reader(&self, id: &str) -> Result<Option<Arc<dyn Reader>>> {
        let head = self.head_image(id).await?;
        Ok(Some(Arc::new(S3Reader::new(
            self.bucket.clone(),
            id,
            &head,
        ))))
    }

    async fn create_upload(&self, id: &str, mode: UploadMode) -> Result<Box<dyn Upload>> {
        check_new_id(id)?;
        if mode == UploadMode::Modify {
            // Staged locally: the old version, pinned, supplies every
            // block not written; commit uploads a whole new object.
            let head = self.head_image(id).await?;
            let src = Arc::new(S3Reader::new(self.bucket.clone(), id, &head));
            let inner = S3Upload::start(self.bucket.clone(), id, UploadMode::Replace).await?;
            return Ok(Box::new(Staged::start(
                id,
                src,
                head.size,
                Box::new(inner),
                &self.cfg.staging_dir,
            )?));
        }
        Ok(Box::new(
            S3Upload::start(self.bucket.clone(), id, mode).await?,
        ))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let head = self.head_image(id).await?;
        // Open handles here go on reading it, as an unlinked local file.
        reader::keep_for_readers(&self.bucket, id, &head).await?;
        self.bucket.delete_key(id).await?;
        index::forget(&self.bucket, id).await;
        self.bucket.touch_dir().await;
        Ok(())
    }

    /// Copy then delete, inside the server.
    async fn rename(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        check_new_id(to)?;
        let head = self.head_image(from).await?;
        if from == to {
            return Ok(());
        }
        match self.bucket.head_opt(to).await? {
            Some(_) if !replace => return Err(StoreError::AlreadyExists(to.to_string())),
            // Readers of the replaced image keep reading it.
            Some(old) => {
                reader::keep_for_readers(&self.bucket, to, &old).await?;
            }
            None => {}
        }
        index::forget(&self.bucket, to).await;
        copy::copy(&self.bucket, from, &head, to, &head.meta).await?;
        self.index(to, None).await;
        // Readers of the image here follow it to its new name.
        if self.bucket.pins.held(from, &head) {
            if let Ok(moved) = self.bucket.head(to).await {
                self.bucket.pins.moved(from, &head, to, &moved.etag, None);
            }
        }
        self.bucket.delete_key(from).await?;
        index::forget(&self.bucket, from).await;
        self.bucket.touch_dir().await;
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        check_new_id(to)?;
        let head = self.head_image(from).await?;
        if self.bucket.head_opt(to).await?.is_some() {
            return Err(StoreError::AlreadyExists(to.to_string()));
        }
        let mut m = head.meta.clone();
        m.insert(CONTENT.into(), object::unique_token());
        meta::touch(&mut m);
        copy::copy(&self.bucket, from, &head, to, &m).await?;
        self.index(to, None).await;
        self.bucket.touch_dir().await;
        Ok(())
    }

    async fn set_attrs(&self, id: &str, attrs: &SetAttrs) -> Result<()> {
        let head = self.head_image(id).await?;
        let mut m = head.meta.clone();
        meta::apply_attrs(&mut m, attrs);
        self.rewrite_meta(id, &head, &m).await
    }

    async fn get_xattr(&self, id: &str, name: &str) -> Result<Vec<u8>> {
        let head = self.head_image(id).await?;
        match head.meta.get(&meta::xattr_key(name)) {
            Some(v) => Ok(meta::decode_value(v)),
            None => Err(StoreError::NoAttribute),
        }
    }

    async fn list_xattrs(&self, id: &str) -> Result<Vec<String>> {
        let head = self.head_image(id).await?;
        let mut names: Vec<String> = head
            .meta
            .keys()
            .filter_map(|k| meta::xattr_name(k))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn set_xattr(&self, id: &str, name: &str, value: &[u8], mode: XattrMode) -> Result<()> {
        let head = self.head_image(id).await?;
        let key = meta::xattr_key(name);
        let exists = head.meta.contains_key(&key);
        match mode {
            XattrMode::Create if exists => return Err(StoreError::AlreadyExists(name.to_string())),
            XattrMode::Replace if !exists => return Err(StoreError::NoAttribute),
            _ => {}
        }
        let mut m = head.meta.clone();
        m.insert(key, meta::encode_value(value));
        meta::touch(&mut m);
        self.rewrite_meta(id, &head, &m).await
    }

    async fn remove_xattr(&self, id: &str, name: &str) -> Result<()> {
        let head = self.head_image(id).await?;
        let mut m = head.meta.clone();
        if m.remove(&meta::xattr_key(name)).is_none() {
            return Err(StoreError::NoAttribute);
        }
        meta::touch(&mut m);
        self.rewrite_meta(id, &head, &m).await
    }

    /// S3 has no capacity: a fixed `STATFS_BYTES`, all free, once the
    /// bucket answers (a server that is down gives EIO).
    async fn statfs(&self) -> Result<StatFs> {
        self.bucket
            .client
            .head_bucket()
            .bucket(&self.cfg.bucket)
            .send()
            .await
            .map_err(|e| s3err(e).into_store(&format!("bucket {}", self.cfg.bucket)))?;
        Ok(StatFs {
            total_bytes: STATFS_BYTES,
            free_bytes: STATFS_BYTES,
            avail_bytes: STATFS_BYTES,
            files: 0,
            files_free: u32::MAX as u64,
            block_size: 1 << 20,
            // The fs layer keeps room for temp names, as on every store.
            name_max: 255 - TEMP_PREFIX.len() as u32,
        })
    }

    /// Aborts multipart uploads and removes temp keys (claims of new ids,
    /// copies of unlinked objects) older than `older_than` that no live
    /// process holds (this one, or one whose lease has not expired),
    /// attribute index entries of that age that describe no image, and
    /// expired leases of that age.
    async fn gc(&self, older_than: Duration, dry_run: bool) -> Result<Vec<Leftover>> {
        let now = SystemTime::now();
        let leases = self.bucket.list_keys(Some(lease::PREFIX), None).await?;
        let expiry = self.bucket.live.timing().expiry;
        let (mut live, expired) = lease::held_elsewhere(&self.bucket, &leases, expiry, now).await?;
        live.extend(self.bucket.live.names());
        let mut found = Vec::new();
        for (key, age, bytes) in expired {
            if age < older_than {
                continue;
            }
            let removed = !dry_run && self.bucket.delete_key(&key).await.is_ok();
            found.push(Leftover {
                name: key,
                bytes,
                age,
                removed,
            });
        }
        for (key, upload_id, at) in self.list_uploads().await? {
            let age = now.duration_since(at).unwrap_or_default();
            if live.contains(&upload_id) || age < older_than {
                continue;
            }
            let mut removed = false;
            if !dry_run {
                let r = self
                    .bucket
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.cfg.bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                removed = r.is_ok();
            }
            found.push(Leftover {
                name: format!("{key} (multipart upload {upload_id})"),
                bytes: 0,
                age,
                removed,
            });
        }
        let mut hidden = self.bucket.list_keys(Some(TEMP_PREFIX), None).await?;
        hidden.extend(self.bucket.list_keys(Some(DETACHED_PREFIX), None).await?);
        for o in hidden {
            let Some(key) = o.key() else { continue };
            let age = object::age(&o, now);
            if live.contains(key) || age < older_than {
                continue;
            }
            let removed = !dry_run && self.bucket.delete_key(key).await.is_ok();
            found.push(Leftover {
                name: key.to_string(),
                bytes: o.size().unwrap_or(0).max(0) as u64,
                age,
                removed,
            });
        }
        // Attribute index entries no image matches: the images are listed
        // first, so an entry recorded meanwhile is only young, not stale.
        let images = self.bucket.list_keys(None, Some("/")).await?;
        let etags: HashMap<String, String> = images
            .iter()
            .filter_map(|o| Some((o.key()?.to_string(), o.e_tag()?.to_string())))
            .collect();
        // Listed without an ETag (s3s-fs lists none): whether an entry
        // still describes the image is unknown, so it stays.
        let unknown: HashSet<&str> = images
            .iter()
            .filter(|o| o.e_tag().is_none())
            .filter_map(|o| o.key())
            .collect();
        let mut idx = index::Index::new();
        let mut ages = HashMap::new();
        for o in self.bucket.list_keys(Some(index::PREFIX), None).await? {
            let Some(e) = o.key().and_then(index::parse_key) else {
                continue;
            };
            ages.insert(e.key.clone(), object::age(&o, now));
            idx.entry(e.id.clone()).or_default().push(e);
        }
        for key in index::stale(&idx, &etags) {
            if index::parse_key(&key).is_some_and(|e| unknown.contains(e.id.as_str())) {
                continue;
            }
            let age = ages[&key];
            if age < older_than {
                continue;
            }
            let removed = !dry_run && self.bucket.delete_key(&key).await.is_ok();
            found.push(Leftover {
                name: key,
                bytes: 0,
                age,
                removed,
            });
        }
        Ok(found)
    }
}
