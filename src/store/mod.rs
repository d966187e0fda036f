//! The store layer: one async trait that every backend implements (list,
//! head, ranged read, streaming upload with commit/abort, delete, rename,
//! server-side copy, metadata, statfs, gc), a declared capability set, and
//! one error enum. Backends live one per file or folder beside this one.

pub mod budget;
mod error;
pub mod file;
mod meta_text;
pub mod rbd;
pub mod s3;
mod staged;

pub use error::{Result, StoreError};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{BackendConfig, StoreConfig};

/// Prefix of the names a store uses for in-flight uploads; never listed,
/// never accepted as an image id.
pub const TEMP_PREFIX: &str = ".imagefs-tmp-";

/// Extended attributes imagefs computes and keeps with each image.
pub const XATTR_LOCATION: &str = "user.imagefs.location";
pub const XATTR_CHECKSUM: &str = "user.imagefs.checksum";
pub const XATTR_OS_HASH_VALUE: &str = "user.imagefs.os_hash_value";
pub const XATTR_OS_HASH_ALGO: &str = "user.imagefs.os_hash_algo";
/// Namespace of the attributes above: read-only through the mount.
pub const XATTR_IMAGEFS_PREFIX: &str = "user.imagefs.";

/// What a backend can do, declared up front so the layers above never
/// discover it by failing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Writes are refused (EROFS).
    pub read_only: bool,
    /// Uploads accept writes at any offset and can be read back before commit.
    pub random_write: bool,
    /// `UploadMode::Modify` works: writes into a committed image (in place,
    /// or staged and uploaded whole at commit), readable before commit.
    pub modify: bool,
    /// `copy` and `Upload::copy_from` run inside the backend.
    pub server_side_copy: bool,
    /// Copies are copy-on-write clones (constant time).
    pub cheap_clone: bool,
    /// Images are local files (`local_path`), so reads can be passed through
    /// to the kernel and served without a remote cache.
    pub local_files: bool,
    /// User xattrs, mode, owner and times persist.
    pub metadata: bool,
    /// A reader from `open_reader` goes on reading its version after the
    /// image is deleted or replaced (the store keeps the version for it),
    /// so an unlink needs no copy for handles that only read.
    pub readers_outlive_delete: bool,
}

/// What `head` and `list` report about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    pub id: String,
    pub size: u64,
    /// 512-byte blocks allocated, when the backend knows (sparse images).
    pub blocks: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: SystemTime,
    pub ctime: Option<SystemTime>,
    /// Changes whenever the content changes; keys caches.
    pub version: String,
}

impl ObjectMeta {
    /// With `attrs` applied, as a change made now.
    pub fn apply(&mut self, attrs: &SetAttrs) {
        self.mode = attrs.mode.or(self.mode);
        self.uid = attrs.uid.or(self.uid);
        self.gid = attrs.gid.or(self.gid);
        self.atime = attrs.atime.or(self.atime);
        self.mtime = attrs.mtime.unwrap_or(self.mtime);
        self.ctime = Some(SystemTime::now());
    }
}

/// Attribute changes requested through chmod/chown/utimens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

impl SetAttrs {
    pub fn is_empty(&self) -> bool {
        self == &SetAttrs::default()
    }
}

/// Capacity of a store, in bytes and objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatFs {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
    pub name_max: u32,
}

/// How an upload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// A new image: fails with AlreadyExists if the id exists or another
    /// writer (on any mount) is creating it; commit never replaces.
    New,
    /// Replaces the image's content with what is written (O_TRUNC).
    Replace,
    /// Starts from the image's current content (copy-on-write).
    Modify,
}

/// What the layer above computed while the data streamed, stored with the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    /// md5, hex (Glance's `checksum`).
    pub md5: String,
    /// Glance's `os_hash_algo` and `os_hash_value` (hex).
    pub os_hash_algo: String,
    pub os_hash_value: String,
}

/// One thing `gc` found left behind by an abandoned upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub name: String,
    pub bytes: u64,
    pub age: Duration,
    pub removed: bool,
}

/// An upload in progress: data written to it is invisible to every reader
/// until `commit`, and `abort` (or a crash) leaves no visible image.
#[async_trait]
pub trait Upload: Send + Sync {
    fn id(&self) -> &str;
    /// Current length of the content being built.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// What the image being built looks like now, for stores that keep it
    /// in a real file (size, mode, owner, times); None: the layer above
    /// tracks attributes itself.
    fn stat(&self) -> Option<ObjectMeta> {
        None
    }
    /// A file the kernel may read and write directly (FUSE passthrough)
    /// instead of sending each write through `write_at`. Only offered where
    /// `len` and `stat` follow the file itself and every change to it moves
    /// its ctime (multigrain timestamps), so the layer above can tell
    /// whether anything was written since it last looked.
    fn local_file(&self) -> Option<std::fs::File> {
        None
    }
    /// Writes `data` at `offset`. Stores without `random_write` accept only
    /// `offset >= len()` (a forward gap reads as zeros).
    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<()>;
    /// Reads back what is being built (stores with `random_write`).
    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes>;
    /// Sets the length; extending adds zeros.
    async fn set_len(&mut self, len: u64) -> Result<()>;
    /// Copies a range of committed image `src` of the same store into this
    /// upload, inside the backend. Returns bytes copied.
    async fn copy_from(&mut self, src: &str, src_offset: u64, offset: u64, len: u64)
        -> Result<u64>;
    /// Applies mode/owner/times to the image being built.
    async fn set_attrs(&mut self, attrs: &SetAttrs) -> Result<()>;
    /// Makes the content as it is now visible as image `id` (with its
    /// checksums) while the upload goes on: later writes change the
    /// published image in place, and `commit` ends the upload. For uploads
    /// whose `local_file` the kernel writes, whose writers outlive a commit.
    async fn publish(&mut self, _sums: Option<Checksums>, _durable: bool) -> Result<ObjectMeta> {
        Err(StoreError::NotSupported("publishing an upload in progress"))
    }
    /// Makes the content visible as image `id`, with its checksums;
    /// `durable` also waits until data and name are on stable storage (fsync).
    async fn commit(self: Box<Self>, sums: Option<Checksums>, durable: bool) -> Result<ObjectMeta>;
    /// Drops everything written.
    async fn abort(self: Box<Self>) -> Result<()>;
    /// The image was unlinked (or replaced by a rename) while handles
    /// still use this upload, which will never be committed: gives up the
    /// names it holds in the store, so that the id can be used again at
    /// once, and keeps the data for the handles until `abort`.
    async fn orphan(&mut self) -> Result<()> {
        Ok(())
    }
}

/// One version of one committed image, open for reading: every read sees
/// that version, whatever is committed under its id meanwhile.
#[async_trait]
pub trait Reader: Send + Sync {
    /// Reads `len` bytes at `offset` (fewer at the end of the image).
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes>;
}

/// One backend. Image ids are plain names (no '/'); every call is safe to
/// run concurrently.
#[async_trait]
pub trait Store: Send + Sync {
    fn name(&self) -> &str;
    fn type_name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Glance location URI of image `id` (without secrets).
    fn location(&self, id: &str) -> String;
    /// The local file holding committed image `id` (stores with `local_files`).
    fn local_path(&self, _id: &str) -> Option<PathBuf> {
        None
    }
    /// Mode, owner and times of the store's directory, when the backend has one.
    async fn root_attrs(&self) -> Result<Option<ObjectMeta>> {
        Ok(None)
    }
    /// chmod/chown/utimens on the store's directory.
    async fn set_root_attrs(&self, _attrs: &SetAttrs) -> Result<()> {
        Err(StoreError::NotSupported(
            "attributes of the store directory",
        ))
    }
    /// Every committed image.
    async fn list(&self) -> Result<Vec<ObjectMeta>>;
    async fn head(&self, id: &str) -> Result<ObjectMeta>;
    /// Reads `len` bytes at `offset` (fewer at the end of the image).
    async fn read(&self, id: &str, offset: u64, len: u32) -> Result<Bytes>;
    /// The version of `id` committed now, kept open for an open handle's
    /// reads; None: this store reads by id (`read`).
    async fn open_reader(&self, _id: &str) -> Result<Option<Arc<dyn Reader>>> {
        Ok(None)
    }
    async fn create_upload(&self, id: &str, mode: UploadMode) -> Result<Box<dyn Upload>>;
    /// An upload that writes committed image `id` itself, in place (the
    /// kernel is already reading that very file by passthrough, and a new
    /// open must pass through to it too). Stores that offer `local_file`.
    async fn open_in_place(&self, _id: &str) -> Result<Box<dyn Upload>> {
        Err(StoreError::NotSupported("writing an image in place"))
    }
    async fn delete(&self, id: &str) -> Result<()>;
    /// Renames inside the store; `replace` false fails with AlreadyExists.
    async fn rename(&self, from: &str, to: &str, replace: bool) -> Result<()>;
    /// Server-side copy of a whole committed image to a new id.
    async fn copy(&self, from: &str, to: &str) -> Result<()>;
    async fn set_attrs(&self, id: &str, attrs: &SetAttrs) -> Result<()>;
    async fn get_xattr(&self, id: &str, name: &str) -> Result<Vec<u8>>;
    async fn list_xattrs(&self, id: &str) -> Result<Vec<String>>;
    async fn set_xattr(&self, id: &str, name: &str, value: &[u8], mode: XattrMode) -> Result<()>;
    async fn remove_xattr(&self, id: &str, name: &str) -> Result<()>;
    async fn statfs(&self) -> Result<StatFs>;
    /// Finds (and unless `dry_run`, removes) what uploads abandoned more than
    /// `older_than` ago left behind; never touches a live upload.
    async fn gc(&self, older_than: Duration, dry_run: bool) -> Result<Vec<Leftover>>;
    /// At unmount, once every handle is released: finishes the background
    /// work that should not wait for another process (within `limit`; the
    /// daemon exits after).
    async fn shutdown(&self, _limit: Duration) {}
}

/// setxattr's XATTR_CREATE / XATTR_REPLACE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    Create,
    Replace,
}

/// Checks that `id` can name an image: non-empty, no '/', not '.' or '..',
/// not reserved for temp files, at most 255 bytes.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') || id.contains('\0') {
        return Err(StoreError::InvalidInput(format!(
            "{id:?} is not an image id"
        )));
    }
    if id.len() > 255 {
        return Err(StoreError::InvalidInput(
            "image id longer than 255 bytes".into(),
        ));
    }
    if id.starts_with(TEMP_PREFIX) {
        return Err(StoreError::InvalidInput(format!(
            "{id:?}: names starting with {TEMP_PREFIX} are reserved"
        )));
    }
    Ok(())
}

/// Runs blocking work (file-system or librbd calls) off the async executor.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("worker thread failed: {e}")))?
}

/// Opens the backend a store's config names; its writes in flight count
/// against `budget` (shared by the daemon's stores). Backends not built
/// yet fail with a clear error naming the store.
pub fn open(
    cfg: &StoreConfig,
    budget: &budget::WriteBudget,
) -> std::result::Result<Arc<dyn Store>, String> {
    match &cfg.backend {
        BackendConfig::File(f) => file::FileStore::open(&cfg.name, f)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| format!("store {:?} (file): {e}", cfg.name)),
        BackendConfig::Rbd(r) => rbd::RbdStore::open(&cfg.name, r)
            .map(|s| Arc::new(s.with_write_budget(budget.clone())) as Arc<dyn Store>)
            .map_err(|e| format!("store {:?} (rbd): {e}", cfg.name)),
        BackendConfig::S3(c) => s3::S3Store::open(&cfg.name, c)
            .map(|s| Arc::new(s.with_write_budget(budget.clone())) as Arc<dyn Store>)
            .map_err(|e| format!("store {:?} (s3): {e}", cfg.name)),
        other => Err(format!(
            "store {:?}: type {:?} is not supported yet by this build of imagefs",
            cfg.name,
            other.type_name()
        )),
    }
}
