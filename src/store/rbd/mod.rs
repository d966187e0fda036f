//! The RBD store: Glance's RBD layout on a Ceph pool.
//!
//! A committed image is RBD image `<id>` (format 2, order from the chunk
//! size, features from ceph.conf's `rbd_default_features`, else layering)
//! with a protected snapshot `snap`; reads go to `<id>@snap`. An image
//! without `snap` is an upload in progress (or one a dead writer left) and
//! is never listed. New images are written straight into `<id>`, which also
//! makes a second writer of the same id fail with EEXIST on any mount.
//! Writes to an existing image go to a copy-on-write clone of `<id>@snap`
//! (a fresh image for O_TRUNC) named `.imagefs-tmp-<id>.<n>`; commit gives it
//! `snap` and swaps names, and the old version goes to the RBD trash, where
//! it stays as long as clones (the new version until a background flatten
//! detaches it, or Nova disks) need it and readers read it; a deleted image
//! goes through the trash too. Readers, on any mount, watch the version
//! they read (`ffi::HeaderWatch`), and nothing watched is purged. Copies
//! inside the pool are clones.
//! Mode, owner, times, user xattrs and checksums are image metadata
//! (`meta`). The librados/librbd calls are in `ffi`; blocking ones run on
//! tokio's blocking pool, reads and writes are asynchronous (aio).

mod ffi;
mod meta;
mod reader;
mod upkeep;
mod upload;

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;

use super::budget::WriteBudget;
use super::{
    blocking, validate_id, Capabilities, Leftover, ObjectMeta, Reader as StoreReader, Result,
    SetAttrs, StatFs, Store, StoreError, Upload, UploadMode, XattrMode, TEMP_PREFIX,
};
use crate::config::RbdStoreConfig;
use ffi::{Cluster, HeaderWatch, Image, Layout, Pool, RbdError};
use reader::Reader;
use upload::RbdUpload;

/// The snapshot that marks an image as committed (Glance's name).
pub const SNAP: &str = "snap";
/// Old versions of replaced images, kept (in the trash) while clones need them.
const OLD_PREFIX: &str = ".imagefs-old-";
/// Least time an old version of a replaced image stays in the trash (after
/// that, as long as a reader watches it): also covers a reader that lost
/// its watch for a while, or one of an imagefs that did not watch.
const OLD_GRACE: Duration = Duration::from_secs(3600);
/// How long an open read handle serves reads before it is reopened, so a
/// version committed by another mount is picked up.
const READER_TTL: Duration = Duration::from_secs(2);
/// Opens of a version tried while other mounts keep replacing it.
const WATCH_TRIES: usize = 5;
/// Connection and monitor operation timeout when the config sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest default bound on one OSD operation (when `op_timeout_s` is not
/// set, OSD ops get four times the connect timeout, at least this): a
/// loaded OSD can stall an op for many seconds.
const OSD_OP_TIMEOUT_MIN: Duration = Duration::from_secs(120);
/// Images examined at once by `list`.
const LIST_PARALLEL: usize = 8;

const FEATURE_LAYERING: u64 = 1;

/// Maps a librados/librbd failure on `what` to the store's error.
fn map_err(what: &str, e: RbdError) -> StoreError {
    let ctx = format!("{what}: {e}");
    match e.errno {
        libc::ENOENT => StoreError::NotFound(what.to_string()),
        libc::EEXIST => StoreError::AlreadyExists(what.to_string()),
        libc::EBUSY | libc::ENOTEMPTY => StoreError::Busy(what.to_string(), e.to_string()),
        libc::ETIMEDOUT
        | libc::ENOTCONN
        | libc::ESHUTDOWN
        | libc::ECONNREFUSED
        | libc::ECONNRESET
        | libc::EHOSTUNREACH => StoreError::Unavailable(ctx),
        n => StoreError::io(ctx, std::io::Error::from_raw_os_error(n)),
    }
}

/// A live connection: the cluster, the pool, and what new images look like.
pub(crate) struct Conn {
    cluster: Arc<Cluster>,
    pool: Arc<Pool>,
    layout: Layout,
    fsid: String,
    /// Ids whose new version is being swapped in by this process (between
    /// the two renames the name is missing): opens wait for the swap.
    swaps: Swaps,
    upkeep: upkeep::Upkeep,
    /// Warns once that readers cannot watch (see `committed_watched`).
    warn_unwatched: std::sync::Once,
}

/// Ids in the middle of a name swap, and a signal when one ends.
#[derive(Default)]
struct Swaps {
    ids: Mutex<HashSet<String>>,
    done: Condvar,
}

/// Longest an open waits for a swap of its id (two renames) to end.
const SWAP_WAIT: Duration = Duration::from_secs(10);

impl Swaps {
    /// Marks `id` as being swapped until the guard drops.
    fn start<'a>(&'a self, id: &str) -> SwapGuard<'a> {
        let mut ids = self.ids.lock().unwrap();
        while ids.contains(id) {
            ids = self.done.wait(ids).unwrap();
        }
        ids.insert(id.to_string());
        SwapGuard {
            swaps: self,
            id: id.to_string(),
        }
    }

    /// Waits until no swap of `id` is running; true if one was.
    fn wait(&self, id: &str) -> bool {
        let ids = self.ids.lock().unwrap();
        if !ids.contains(id) {
            return false;
        }
        let _unused = self
            .done
            .wait_timeout_while(ids, SWAP_WAIT, |ids| ids.contains(id))
            .unwrap();
        true
    }
}

pub(crate) struct SwapGuard<'a> {
    swaps: &'a Swaps,
    id: String,
}

impl Drop for SwapGuard<'_> {
    fn drop(&mut self) {
        self.swaps.ids.lock().unwrap().remove(&self.id);
        self.swaps.done.notify_all();
    }
}

/// The bound on one OSD operation: `op_timeout_s` when set, else four
/// times the connect timeout, at least `OSD_OP_TIMEOUT_MIN`.
fn osd_op_timeout(configured: Duration, connect: Duration) -> Duration {
    if configured.is_zero() {
        (connect * 4).max(OSD_OP_TIMEOUT_MIN)
    } else {
        configured
    }
}

impl Conn {
    fn connect(cfg: &RbdStoreConfig) -> Result<Conn> {
        let timeout = if cfg.connect_timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            cfg.connect_timeout
        };
        let osd_timeout = osd_op_timeout(cfg.op_timeout, timeout);
        let cluster = Cluster::connect(cfg.user.as_deref(), &cfg.ceph_conf, timeout, osd_timeout)
            .map_err(|e| StoreError::Unavailable(format!("connecting to Ceph: {e}")))?;
        let cluster = Arc::new(cluster);
        let pool = Pool::open(cluster.clone(), &cfg.pool)
            .map_err(|e| map_err(&format!("pool {}", cfg.pool), e))?;
        // Glance: rbd_default_features if non-zero, else layering.
        let features = cluster
            .conf_get("rbd_default_features")
            .and_then(|v| parse_features(&v))
            .filter(|&f| f != 0)
            .unwrap_or(FEATURE_LAYERING);
        let order = (cfg.chunk_size_mb << 20).ilog2() as u8;
        let fsid = cluster
            .fsid()
            .map_err(|e| StoreError::Unavailable(format!("cluster fsid: {e}")))?;
        Ok(Conn {
            cluster,
            pool: Arc::new(pool),
            layout: Layout { order, features },
            fsid,
            swaps: Swaps::default(),
            upkeep: upkeep::Upkeep::default(),
            warn_unwatched: std::sync::Once::new(),
        })
    }
}

impl Conn {
    /// Committed image `id` as Glance reads it: `<id>@snap`, read-only.
    fn committed(&self, id: &str) -> Result<Image> {
        self.open_with(id, || Image::open_read_only(&self.pool, id, Some(SNAP)))
    }

    /// `committed(id)` and a watch on it, taken before the name is checked
    /// once more: whoever removes or replaces `id` after that renames it
    /// first, and then finds the watch before purging it (`purge_old`).
    /// A client whose caps do not allow watches (a read-only cephx user)
    /// reads without one, as librbd's read-only opens do. Also returns the
    /// image's RBD id.
    fn committed_watched(&self, id: &str) -> Result<(Image, String, Option<HeaderWatch>)> {
        for _ in 0..WATCH_TRIES {
            let img = self.committed(id)?;
            let rbd_id = img.id().map_err(|e| map_err(id, e))?;
            let watch = match HeaderWatch::new(&self.pool, &rbd_id) {
                Ok(w) => Some(w),
                Err(e) if e.errno == libc::EPERM || e.errno == libc::EACCES => {
                    self.warn_unwatched.call_once(|| {
                        tracing::warn!(
                            "this Ceph user may not watch images ({e}): readers on this \
                             mount are not protected from purges elsewhere"
                        )
                    });
                    return Ok((img, rbd_id, None));
                }
                Err(e) => return Err(map_err(id, e)),
            };
            match self.pool.image_id(id) {
                Ok(now) if now == rbd_id => return Ok((img, rbd_id, watch)),
                // Replaced, renamed or removed meanwhile: open what the
                // name holds now (or find it gone).
                Ok(_) => {}
                Err(e) if e.errno == libc::ENOENT => {}
                Err(e) => return Err(map_err(id, e)),
            }
        }
        Err(StoreError::Busy(
            id.to_string(),
            "replaced again each time it was opened".into(),
        ))
    }

    /// Image `id` itself (its head), to write it or change its metadata.
    fn head(&self, id: &str) -> Result<Image> {
        self.open_with(id, || Image::open(&self.pool, id))
    }

    /// Opens `id` with `open`; a miss while this process swaps a new
    /// version in under that name waits for the swap and tries again.
    fn open_with(&self, id: &str, open: impl Fn() -> ffi::RbdResult<Image>) -> Result<Image> {
        match open() {
            Err(e) if e.errno == libc::ENOENT && self.swaps.wait(id) => open(),
            r => r,
        }
        .map_err(|e| map_err(id, e))
    }

    /// Marks `id` as being swapped (see `swaps`) until the guard drops.
    pub(crate) fn swapping(&self, id: &str) -> SwapGuard<'_> {
        self.swaps.start(id)
    }
}

/// `rbd_default_features` as a number or a list of feature names.
fn parse_features(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(n) = v.parse() {
        return Some(n);
    }
    let mut bits = 0;
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        bits |= match name {
            "layering" => 1,
            "striping" => 2,
            "exclusive-lock" => 4,
            "object-map" => 8,
            "fast-diff" => 16,
            "deep-flatten" => 32,
            "journaling" => 64,
            "data-pool" => 128,
            _ => return None,
        };
    }
    Some(bits)
}

/// Open read handles by id; commits drop the id's entry.
pub(crate) type Readers = Arc<Mutex<LruCache<String, Reader>>>;

/// A failed connect, for the callers that waited for it.
struct Failure {
    at: Instant,
    error: String,
}

/// Glance's RBD store on one pool.
pub struct RbdStore {
    name: String,
    cfg: RbdStoreConfig,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Held while connecting: one connection per store, never a second
    /// one made and dropped beside it.
    connecting: tokio::sync::Mutex<Option<Failure>>,
    /// Read handles of committed images (`<id>@snap`), by id.
    readers: Readers,
    /// Uploads this process has open (gc never touches them).
    live: Arc<Mutex<HashSet<String>>>,
    /// Bytes of writes in flight, shared with the daemon's other stores.
    budget: WriteBudget,
}

impl RbdStore {
    /// Checks the config; the cluster is connected at first use (and again
    /// after an outage), so a cluster that is down does not stop the mount.
    pub fn open(name: &str, cfg: &RbdStoreConfig) -> Result<RbdStore> {
        if !cfg.ceph_conf.is_file() {
            return Err(StoreError::InvalidInput(format!(
                "ceph_conf {}: no such file",
                cfg.ceph_conf.display()
            )));
        }
        Ok(RbdStore {
            name: name.to_string(),
            cfg: cfg.clone(),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            readers: Arc::new(Mutex::new(LruCache::new(NonZeroUsize::new(64).unwrap()))),
            live: Arc::new(Mutex::new(HashSet::new())),
            budget: WriteBudget::default(),
        })
    }

    /// Counts this store's writes in flight against `budget`.
    pub fn with_write_budget(mut self, budget: WriteBudget) -> RbdStore {
        self.budget = budget;
        self
    }

    /// The connection, made now if there is none. One caller connects;
    /// the others wait for it, and get its error if it failed while they
    /// waited (an outage costs each request one connect timeout at most).
    async fn conn(&self) -> Result<Arc<Conn>> {
        if let Some(c) = &*self.conn.lock().unwrap() {
            return Ok(c.clone());
        }
        let asked = Instant::now();
        let mut last = self.connecting.lock().await;
        if let Some(c) = &*self.conn.lock().unwrap() {
            return Ok(c.clone());
        }
        if let Some(f) = &*last {
            if f.at >= asked {
                return Err(StoreError::Unavailable(f.error.clone()));
            }
        }
        let cfg = self.cfg.clone();
        match blocking(move || Conn::connect(&cfg)).await {
            Ok(c) => {
                let c = Arc::new(c);
                *self.conn.lock().unwrap() = Some(c.clone());
                *last = None;
                Ok(c)
            }
            Err(e) => {
                *last = Some(Failure {
                    at: Instant::now(),
                    error: e.to_string(),
                });
                Err(e)
            }
        }
    }

    /// `<id>@snap` as committed now, open.
    async fn open_version(&self, id: &str) -> Result<Reader> {
        let conn = self.conn().await?;
        let name = id.to_string();
        blocking(move || Reader::open(&conn, &name)).await
    }

    /// The open snapshot `<id>@snap` reads by id are served from.
    async fn reader(&self, id: &str) -> Result<Reader> {
        if let Some(r) = self.readers.lock().unwrap().get(id) {
            if r.opened().elapsed() < READER_TTL {
                return Ok(r.clone());
            }
        }
        let r = self.open_version(id).await?;
        self.readers.lock().unwrap().put(id.to_string(), r.clone());
        // Out of the cache when its time is up, used or not, so that its
        // watch does not hold the version (nor Glance's delete) back.
        let (readers, id, at) = (Arc::downgrade(&self.readers), id.to_string(), r.opened());
        tokio::spawn(async move {
            tokio::time::sleep(READER_TTL).await;
            if let Some(readers) = readers.upgrade() {
                let mut readers = readers.lock().unwrap();
                if readers.peek(&id).is_some_and(|r| r.opened() == at) {
                    readers.pop(&id);
                }
            }
        });
        Ok(r)
    }

    fn forget_reader(&self, id: &str) {
        self.readers.lock().unwrap().pop(id);
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn().await?;
        blocking(move || f(&conn)).await
    }
}

/// Whether `name` is one of imagefs's own hidden images.
fn is_hidden(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) || name.starts_with(OLD_PREFIX)
}

/// A name for a temporary image of `id`, unique among writers.
fn temp_name(prefix: &str, id: &str) -> String {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}{id}.{:x}{:04x}", n, std::process::id() & 0xffff)
}

/// What head and list report, read from `<id>@snap` open as `img`.
fn meta_of(id: &str, img: &Image) -> std::result::Result<ObjectMeta, RbdError> {
    let (size, _) = img.stat()?;
    let snap_id = img
        .snaps()?
        .into_iter()
        .find(|s| s.name == SNAP)
        .map(|s| s.id)
        .unwrap_or(0);
    let pairs: BTreeMap<String, String> = img.metadata()?.into_iter().collect();
    let version = format!("{}@{snap_id}", img.id()?);
    Ok(meta::parse(&pairs).object_meta(id, size, img.created()?, version))
}

/// Glance's delete, minding readers on every mount. Clones of `id@snap`
/// other than imagefs's own temporary images make it Busy, as in Glance.
/// Otherwise the image is renamed out of the way (the name is free at once)
/// and sent to the trash, which it leaves here and now unless a reader
/// still watches it or an open handle's clone still reads from it; then a
/// later purge removes it once they are done. Its `snap` goes only then,
/// so a reader never finds its version gone under it: renaming first is
/// what makes the watch check safe (`Conn::committed_watched`).
fn delete_image(conn: &Conn, id: &str) -> Result<()> {
    let err = |e| map_err(id, e);
    let img = conn.committed(id)?;
    let children = img.children().map_err(err)?;
    drop(img);
    if children.iter().any(|c| !c.starts_with(TEMP_PREFIX)) {
        return Err(StoreError::Busy(
            id.to_string(),
            "it has clones (copies or VM disks made from it)".into(),
        ));
    }
    let old = temp_name(OLD_PREFIX, id);
    conn.pool.rename(id, &old).map_err(err)?;
    if let Err(e) = to_trash(conn, &old, Duration::ZERO) {
        // Give the name back rather than leave the image hidden.
        if let Err(back) = conn.pool.rename(&old, id) {
            tracing::warn!("{id} is left as {old} (gc sends it to the trash): {back}");
        }
        return Err(e);
    }
    touch_dir(conn);
    purge_old(conn, false);
    Ok(())
}

/// An image was added to or removed from the pool: the store directory's
/// mtime and ctime move, as a directory's do (kept as pool metadata).
fn touch_dir(conn: &Conn) {
    let now = meta::encode_time(SystemTime::now());
    for key in [meta::MTIME, meta::CTIME] {
        if let Err(e) = conn.pool.metadata_set(key, &now) {
            tracing::debug!("store directory times: {e}");
        }
    }
}

/// Sends the old version of a replaced image (renamed `name`) to the
/// trash. It stays there at least `OLD_GRACE`, so readers on other mounts
/// that still have it open keep reading it, and after that as long as
/// clones (the new version until its flatten ends, VM disks) need it.
fn retire_old(conn: &Conn, name: &str) -> Result<()> {
    to_trash(conn, name, OLD_GRACE)
}

/// Moves hidden image `name` to the trash, to stay there `delay` at least.
/// Gone already is done: `imagefs gc` moved it (see `upload::collect`).
fn to_trash(conn: &Conn, name: &str, delay: Duration) -> Result<()> {
    match conn.pool.trash_move(name, delay) {
        Err(e) if e.errno != libc::ENOENT => Err(map_err(name, e)),
        _ => Ok(()),
    }
}

/// Removes old versions from the trash once their grace has passed (or at
/// once with `force`), nothing is cloned from them and no reader on any
/// mount watches them; returns their names.
fn purge_old(conn: &Conn, force: bool) -> Vec<String> {
    let now = SystemTime::now();
    let Ok(trash) = conn.pool.trash_list() else {
        return Vec::new();
    };
    let mut gone = Vec::new();
    for t in trash {
        if !t.name.starts_with(OLD_PREFIX) || (t.keep_until > now && !force) {
            continue;
        }
        // Opened read-only, the image lists no watch of this open's own:
        // every watcher is a reader (of this process too) or a writer.
        let watched = Image::open_by_id_read_only(&conn.pool, &t.id)
            .and_then(|img| img.watchers())
            .map_or(true, |w| !w.is_empty());
        if watched {
            continue;
        }
        let Ok(img) = Image::open_by_id(&conn.pool, &t.id) else {
            continue;
        };
        let has_snap = img
            .snaps()
            .map(|s| s.iter().any(|s| s.name == SNAP))
            .unwrap_or(false);
        if has_snap {
            if img.snap_is_protected(SNAP).unwrap_or(false) && img.snap_unprotect(SNAP).is_err() {
                continue; // clones still read from it
            }
            if img.snap_remove(SNAP).is_err() {
                continue;
            }
        }
        drop(img);
        if conn.pool.trash_remove(&t.id, true).is_ok() {
            gone.push(t.name);
        }
    }
    gone
}

#[async_trait]
impl Store for RbdStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "rbd"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: false,
            random_write: true,
            modify: true,
            server_side_copy: true,
            cheap_clone: true,
            local_files: false,
            metadata: true,
            readers_outlive_delete: true,
        }
    }

    fn location(&self, id: &str) -> String {
        let fsid = self
            .conn
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.fsid.clone())
            .unwrap_or_default();
        if fsid.is_empty() {
            // Glance's legacy form, until the cluster has been reached.
            return format!("rbd://{id}");
        }
        format!("rbd://{fsid}/{}/{id}/{SNAP}", self.cfg.pool)
    }

    async fn root_attrs(&self) -> Result<Option<ObjectMeta>> {
        self.with_conn(|c| {
            let mut pairs = BTreeMap::new();
            for key in [
                meta::MODE,
                meta::UID,
                meta::GID,
                meta::ATIME,
                meta::MTIME,
                meta::CTIME,
            ] {
                if let Some(v) = c.pool.metadata_get(key).map_err(|e| map_err("pool", e))? {
                    pairs.insert(key.to_string(), v);
                }
            }
            if pairs.is_empty() {
                return Ok(None);
            }
            let m = meta::parse(&pairs);
            let mtime = m.mtime.unwrap_or(SystemTime::UNIX_EPOCH);
            Ok(Some(ObjectMeta {
                id: String::new(),
                size: 0,
                blocks: None,
                mode: Some(m.mode.unwrap_or(0o755)),
                uid: m.uid,
                gid: m.gid,
                atime: m.atime,
                mtime,
                ctime: Some(m.ctime.unwrap_or(mtime)),
                version: String::new(),
            }))
        })
        .await
    }

    /// Kept as pool metadata (`imagefs.mode`, ...), so `rsync -a` into the
    /// store's directory can set them.
    async fn set_root_attrs(&self, attrs: &SetAttrs) -> Result<()> {
        let pairs = meta::attr_pairs(attrs);
        self.with_conn(move |c| {
            for (k, v) in pairs {
                c.pool.metadata_set(k, &v).map_err(|e| map_err("pool", e))?;
            }
            Ok(())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>> {
        let conn = self.conn().await?;
        let c = conn.clone();
        let names = blocking(move || c.pool.list().map_err(|e| map_err("list", e))).await?;
        let names: Vec<String> = names.into_iter().filter(|n| !is_hidden(n)).collect();
        let mut out = Vec::with_capacity(names.len());
        for batch in names.chunks(LIST_PARALLEL) {
            let tasks: Vec<_> = batch
                .iter()
                .map(|n| {
                    let (conn, n) = (conn.clone(), n.clone());
                    tokio::task::spawn_blocking(move || {
                        let img = conn.committed(&n).ok()?;
                        meta_of(&n, &img).ok()
                    })
                })
                .collect();
            for t in tasks {
                if let Ok(Some(m)) = t.await {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    async fn head(&self, id: &str) -> Result<ObjectMeta> {
        if validate_id(id).is_err() || is_hidden(id) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        let id = id.to_string();
        self.with_conn(move |c| {
            let img = c.committed(&id)?;
            meta_of(&id, &img).map_err(|e| map_err(&id, e))
        })
        .await
    }

    async fn read(&self, id: &str, offset: u64, len: u32) -> Result<Bytes> {
        let r = self.reader(id).await?;
        StoreReader::read(&r, offset, len)
            .await
            .inspect_err(|_| self.forget_reader(id))
    }

    /// `<id>@snap` as committed now, open for as long as the handle is: a
    /// version committed meanwhile (the old one goes to the trash, kept
    /// `OLD_GRACE` at least) never shows up halfway through.
    async fn open_reader(&self, id: &str) -> Result<Option<Arc<dyn StoreReader>>> {
        Ok(Some(Arc::new(self.open_version(id).await?)))
    }

    async fn create_upload(&self, id: &str, mode: UploadMode) -> Result<Box<dyn Upload>> {
        validate_id(id)?;
        if is_hidden(id) {
            return Err(StoreError::InvalidInput(format!(
                "{id:?}: names starting with .imagefs- are reserved"
            )));
        }
        let conn = self.conn().await?;
        let up = RbdUpload::start(
            conn,
            id,
            mode,
            self.cfg.thin_provisioning,
            self.live.clone(),
            self.readers.clone(),
            self.budget.clone(),
        )
        .await?;
        Ok(Box::new(up))
    }

    /// Waits for the readers still ending and the upkeep they queued: a
    /// version deleted while it was read goes now, not at the next purge.
    async fn shutdown(&self, limit: Duration) {
        self.readers.lock().unwrap().clear();
        let Some(conn) = self.conn.lock().unwrap().clone() else {
            return;
        };
        let idle = blocking(move || Ok(conn.upkeep.wait_idle(limit))).await;
        if !matches!(idle, Ok(true)) {
            tracing::warn!(
                store = self.name,
                "upkeep not done at unmount: `imagefs gc` finishes it"
            );
        }
    }

    async fn delete(&self, id: &str) -> Result<()> {
        if is_hidden(id) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        self.forget_reader(id);
        let id = id.to_string();
        self.with_conn(move |c| delete_image(c, &id)).await
    }

    async fn rename(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        validate_id(to)?;
        if is_hidden(from) || is_hidden(to) {
            return Err(StoreError::InvalidInput("reserved image name".into()));
        }
        self.forget_reader(from);
        self.forget_reader(to);
        let (from, to) = (from.to_string(), to.to_string());
        self.with_conn(move |c| {
            // Only committed images move.
            c.committed(&from)?;
            if c.committed(&to).is_ok() {
                if !replace {
                    return Err(StoreError::AlreadyExists(to));
                }
                delete_image(c, &to)?;
            }
            c.pool.rename(&from, &to).map_err(|e| map_err(&to, e))?;
            touch_dir(c);
            Ok(())
        })
        .await
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        validate_id(to)?;
        if is_hidden(to) {
            return Err(StoreError::InvalidInput("reserved image name".into()));
        }
        let (from, to) = (from.to_string(), to.to_string());
        self.with_conn(move |c| upload::clone_committed(c, &from, &to))
            .await
    }

    async fn set_attrs(&self, id: &str, attrs: &SetAttrs) -> Result<()> {
        let pairs = meta::attr_pairs(attrs);
        let id = id.to_string();
        self.with_conn(move |c| {
            let img = c.head(&id)?;
            for (k, v) in pairs {
                img.metadata_set(k, &v).map_err(|e| map_err(&id, e))?;
            }
            Ok(())
        })
        .await
    }

    async fn get_xattr(&self, id: &str, name: &str) -> Result<Vec<u8>> {
        let key = meta::xattr_key(name);
        let id = id.to_string();
        self.with_conn(move |c| {
            let img = c.committed(&id)?;
            match img.metadata_get(&key).map_err(|e| map_err(&id, e))? {
                Some(v) => Ok(meta::decode_value(&v)),
                None => Err(StoreError::NoAttribute),
            }
        })
        .await
    }

    async fn list_xattrs(&self, id: &str) -> Result<Vec<String>> {
        let id = id.to_string();
        self.with_conn(move |c| {
            let img = c.committed(&id)?;
            let pairs = img.metadata().map_err(|e| map_err(&id, e))?;
            Ok(pairs
                .iter()
                .filter_map(|(k, _)| meta::xattr_name(k))
                .collect())
        })
        .await
    }

    async fn set_xattr(&self, id: &str, name: &str, value: &[u8], mode: XattrMode) -> Result<()> {
        let key = meta::xattr_key(name);
        let value = meta::encode_value(value);
        let id = id.to_string();
        self.with_conn(move |c| {
            c.committed(&id)?;
            let img = c.head(&id)?;
            let exists = img
                .metadata_get(&key)
                .map_err(|e| map_err(&id, e))?
                .is_some();
            match mode {
                XattrMode::Create if exists => return Err(StoreError::AlreadyExists(key)),
                XattrMode::Replace if !exists => return Err(StoreError::NoAttribute),
                _ => {}
            }
            img.metadata_set(&key, &value)
                .map_err(|e| map_err(&id, e))?;
            let now = meta::encode_time(SystemTime::now());
            img.metadata_set(meta::CTIME, &now)
                .map_err(|e| map_err(&id, e))
        })
        .await
    }

    async fn remove_xattr(&self, id: &str, name: &str) -> Result<()> {
        let key = meta::xattr_key(name);
        let id = id.to_string();
        self.with_conn(move |c| {
            let img = c.head(&id)?;
            if img.metadata_remove(&key).map_err(|e| map_err(&id, e))? {
                Ok(())
            } else {
                Err(StoreError::NoAttribute)
            }
        })
        .await
    }

    async fn statfs(&self) -> Result<StatFs> {
        self.with_conn(|c| {
            let (total, _used, avail) = c.cluster.usage().map_err(|e| map_err("statfs", e))?;
            let (_bytes, objects) = c.pool.usage().map_err(|e| map_err("statfs", e))?;
            Ok(StatFs {
                total_bytes: total,
                free_bytes: avail,
                avail_bytes: avail,
                files: objects,
                files_free: u32::MAX as u64,
                block_size: 1 << c.layout.order.min(22),
                name_max: 255 - TEMP_PREFIX.len() as u32,
            })
        })
        .await
    }

    async fn gc(&self, older_than: Duration, dry_run: bool) -> Result<Vec<Leftover>> {
        let live = self.live.lock().unwrap().clone();
        self.with_conn(move |c| upload::collect(c, older_than, dry_run, &live))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osd_ops_are_bounded_by_op_timeout_else_by_the_connect_timeout() {
        let s = Duration::from_secs;
        assert_eq!(osd_op_timeout(s(5), s(30)), s(5), "op_timeout_s wins");
        assert_eq!(osd_op_timeout(Duration::ZERO, s(30)), s(120));
        assert_eq!(
            osd_op_timeout(Duration::ZERO, s(3)),
            s(120),
            "at least 120 s"
        );
        assert_eq!(osd_op_timeout(Duration::ZERO, s(60)), s(240), "4x connect");
    }
}
