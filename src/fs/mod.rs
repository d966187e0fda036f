//! The filesystem without FUSE: the namespace (root -> stores -> images),
//! inodes, open handles, write staging and commit, and the attribute and
//! listing caches. Every method here is what a FUSE callback of the same name
//! does; the adapter in `fuse.rs` only translates types and replies.

mod attr;
mod error;
mod hash;
mod holders;
mod inode;
#[cfg(test)]
mod model_tests;
mod open;
mod readahead;
mod staging;
#[cfg(test)]
mod tests;

pub use attr::{Attr, FileKind, OwnerOverride};
pub use error::{errno_of, FsError, FsResult};
pub use inode::ROOT_INO;
pub use open::{BackingToken, IoMode, Opened};

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::config::HashAlgorithm;
use crate::err;
use crate::store::{
    validate_id, ObjectMeta, SetAttrs, StatFs, Store, StoreError, UploadMode, XattrMode,
    TEMP_PREFIX, XATTR_IMAGEFS_PREFIX, XATTR_LOCATION,
};
use inode::{ImageNode, Inodes, Node};
use open::Handle;
use readahead::ReadAhead;
use staging::{StagedAttrs, Staging};

/// How the filesystem behaves; built from the config and mount options.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// TTL of attributes and listings, here and in the kernel.
    pub attr_ttl: Duration,
    /// Serve reads of committed local images, and writes of new ones, by
    /// FUSE passthrough.
    pub passthrough: bool,
    /// Mounted read-only (`-o ro`).
    pub read_only: bool,
    /// Algorithm of os_hash_value; None turns checksums off.
    pub hashing: Option<HashAlgorithm>,
    pub owner: OwnerOverride,
    /// Mount only this store's directory as the root (`--store`).
    pub single_store: Option<usize>,
}

/// Who makes a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Attribute changes of a setattr call.
#[derive(Debug, Clone, Default)]
pub struct SetAttrRequest {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

impl SetAttrRequest {
    /// The mode/owner/times part, as the store takes it.
    fn attrs(&self) -> SetAttrs {
        SetAttrs {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            atime: self.atime,
            mtime: self.mtime,
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// Filesystem statistics.
pub type FsStat = StatFs;

/// An open directory listing: the store listed (None for the root) and the
/// snapshot readdir pages through.
type OpenDir = (Option<usize>, Arc<Vec<DirEntry>>);

struct ListingCache {
    at: Instant,
    items: Arc<Vec<ObjectMeta>>,
}

/// The filesystem core.
pub struct ImageFs {
    stores: Vec<Arc<dyn Store>>,
    opts: FsOptions,
    inodes: Inodes,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, OpenDir>>,
    /// Read-ahead of open handles of remote images: fh -> (inode, state).
    readahead: Mutex<HashMap<u64, (u64, Arc<ReadAhead>)>>,
    listings: Vec<Mutex<Option<ListingCache>>>,
    next_fh: AtomicU64,
    /// The kernel accepted FUSE passthrough at init.
    passthrough_ok: AtomicBool,
    /// The kernel drops cached pages a direct-I/O write covers (it accepted
    /// FUSE_DIRECT_IO_ALLOW_MMAP at init: Linux 6.6 and later), so
    /// write-only handles may bypass the page cache.
    direct_writes_ok: AtomicBool,
    /// The kernel's id of this mount (/proc/PID/fdinfo `mnt_id`); 0: unknown.
    mount_id: AtomicU64,
    /// Times of directories that have none of their own.
    started: SystemTime,
}

fn is_write(flags: i32) -> bool {
    let acc = flags & libc::O_ACCMODE;
    acc == libc::O_WRONLY || acc == libc::O_RDWR
}

impl ImageFs {
    pub fn new(stores: Vec<Arc<dyn Store>>, opts: FsOptions) -> ImageFs {
        let n = stores.len();
        ImageFs {
            inodes: Inodes::new(n, opts.single_store),
            listings: (0..n).map(|_| Mutex::new(None)).collect(),
            stores,
            opts,
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            readahead: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough_ok: AtomicBool::new(false),
            direct_writes_ok: AtomicBool::new(false),
            mount_id: AtomicU64::new(0),
            started: SystemTime::now(),
        }
    }

    /// At unmount, after the last release: drops what handles kept open
    /// and lets each store finish its background work (`limit` each).
    pub async fn shutdown(&self, limit: Duration) {
        self.readahead.lock().unwrap().clear();
        for s in &self.stores {
            s.shutdown(limit).await;
        }
    }

    pub fn options(&self) -> &FsOptions {
        &self.opts
    }

    pub fn stores(&self) -> &[Arc<dyn Store>] {
        &self.stores
    }

    /// The kernel agreed to passthrough (called by the adapter at init).
    pub fn set_passthrough_available(&self, ok: bool) {
        self.passthrough_ok
            .store(ok && self.opts.passthrough, Ordering::Relaxed);
    }

    /// The kernel keeps its page cache coherent with direct-I/O writes
    /// (called by the adapter at init).
    pub fn set_direct_writes_available(&self, ok: bool) {
        self.direct_writes_ok.store(ok, Ordering::Relaxed);
    }

    /// What an open with `flags` asks for, and whether this mount's kernel
    /// allows direct-I/O writes.
    fn access(&self, flags: i32) -> open::Access {
        open::Access {
            write: is_write(flags),
            write_only: flags & libc::O_ACCMODE == libc::O_WRONLY,
            append: flags & libc::O_APPEND != 0,
            direct_writes: self.direct_writes_ok.load(Ordering::Relaxed),
        }
    }

    /// Tells the core the kernel's id of its mount, so that a close can
    /// tell whether the closing process still holds the image.
    pub fn set_mount_id(&self, id: u64) {
        self.mount_id.store(id, Ordering::Relaxed);
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes
            .get(ino)
            .ok_or_else(|| err!(libc::ENOENT, "inode {ino} is unknown"))
    }

    fn image(&self, ino: u64) -> FsResult<Arc<ImageNode>> {
        match self.node(ino)? {
            Node::Image(img) => Ok(img),
            _ => Err(err!(libc::EISDIR, "inode {ino} is a directory")),
        }
    }

    fn store_dir(&self, ino: u64) -> FsResult<usize> {
        match self.node(ino)? {
            Node::Store(s) => Ok(s),
            Node::Root => Err(err!(
                libc::EPERM,
                "the mount root holds only store directories"
            )),
            Node::Image(_) => Err(err!(libc::ENOTDIR, "inode {ino} is an image")),
        }
    }

    fn check_writable(&self, store: usize) -> FsResult<()> {
        if self.opts.read_only || self.stores[store].capabilities().read_only {
            return Err(err!(
                libc::EROFS,
                "store {} is read-only",
                self.stores[store].name()
            ));
        }
        Ok(())
    }

    fn name_of(img: &ImageNode) -> FsResult<String> {
        img.name()
            .ok_or_else(|| err!(libc::ENOENT, "image inode {} was removed", img.ino))
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn invalidate_listing(&self, store: usize) {
        *self.listings[store].lock().unwrap() = None;
    }

    async fn listing(&self, store: usize) -> FsResult<Arc<Vec<ObjectMeta>>> {
        if let Some(c) = &*self.listings[store].lock().unwrap() {
            if c.at.elapsed() < self.opts.attr_ttl {
                return Ok(c.items.clone());
            }
        }
        let items = Arc::new(self.stores[store].list().await?);
        *self.listings[store].lock().unwrap() = Some(ListingCache {
            at: Instant::now(),
            items: items.clone(),
        });
        Ok(items)
    }

    /// head() through the per-inode TTL cache.
    async fn head(&self, img: &ImageNode) -> FsResult<ObjectMeta> {
        if let Some((at, m)) = &*img.meta.lock().unwrap() {
            if at.elapsed() < self.opts.attr_ttl {
                return Ok(m.clone());
            }
        }
        let name = Self::name_of(img)?;
        let m = self.stores[img.store].head(&name).await?;
        *img.meta.lock().unwrap() = Some((Instant::now(), m.clone()));
        Ok(m)
    }

    fn staged_attr(&self, img: &ImageNode, s: &Staging) -> Attr {
        let nlink = if img.name().is_some() { 1 } else { 0 };
        // A store that builds the image in a real file knows best.
        if let Some(m) = s.upload.stat() {
            let mut a = Attr::image(img.ino, &m, self.opts.owner);
            a.nlink = nlink;
            a.volatile = true;
            return a;
        }
        let len = s.len();
        let o = self.opts.owner;
        Attr {
            ino: img.ino,
            kind: FileKind::RegularFile,
            size: len,
            blocks: len.div_ceil(512),
            perm: (s.attrs.mode & 0o7777) as u16,
            nlink,
            uid: o.uid.unwrap_or(s.attrs.uid),
            gid: o.gid.unwrap_or(s.attrs.gid),
            atime: s.attrs.atime,
            mtime: s.attrs.mtime,
            ctime: s.attrs.ctime,
            volatile: true,
        }
    }

    async fn image_attr(&self, img: &ImageNode) -> FsResult<Attr> {
        if let Some(s) = &*img.staging.lock().await {
            return Ok(self.staged_attr(img, s));
        }
        if let Some(a) = img.publishing.lock().unwrap().clone() {
            return Ok(a);
        }
        if img.name().is_none() {
            // Unlinked while open: what it was, with no link left.
            let last = img.meta.lock().unwrap().as_ref().map(|(_, m)| m.clone());
            let m =
                last.ok_or_else(|| err!(libc::ENOENT, "image inode {} was removed", img.ino))?;
            let mut a = Attr::image(img.ino, &m, self.opts.owner);
            a.nlink = 0;
            return Ok(a);
        }
        let m = match self.head(img).await {
            Err(e) if e.errno == libc::ENOENT && img.io.lock().unwrap().handles() > 0 => {
                // Removed on another node while handles here still use it:
                // as a local file unlinked while open, what it was with no
                // link left (the handles read on what the store keeps for
                // them, or fail with ESTALE where it keeps nothing), and
                // the name is free for what comes next.
                let last = img.meta.lock().unwrap().as_ref().map(|(_, m)| m.clone());
                let Some(m) = last else { return Err(e) };
                if let Some(name) = img.name() {
                    self.inodes.unlink(img.store, &name);
                    self.invalidate_listing(img.store);
                }
                let mut a = Attr::image(img.ino, &m, self.opts.owner);
                a.nlink = 0;
                return Ok(a);
            }
            r => r?,
        };
        Ok(Attr::image(img.ino, &m, self.opts.owner))
    }

    /// Names longer than this leave no room for the upload's temp name.
    fn check_name_len(name: &str) -> FsResult<()> {
        if name.len() > 255 - TEMP_PREFIX.len() {
            return Err(err!(libc::ENAMETOOLONG, "{name:?}: name too long"));
        }
        Ok(())
    }

    async fn dir_attr(&self, ino: u64, store: Option<usize>) -> FsResult<Attr> {
        let meta = match store {
            Some(s) => self.stores[s].root_attrs().await?,
            None => None,
        };
        let mut a = Attr::dir(ino, meta.as_ref(), self.opts.owner);
        if meta.is_none() {
            a.perm = 0o755;
            (a.atime, a.mtime, a.ctime) = (self.started, self.started, self.started);
        }
        Ok(a)
    }

    // ---- namespace -------------------------------------------------------

    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        match self.node(parent)? {
            Node::Root => {
                let s = self
                    .stores
                    .iter()
                    .position(|s| s.name() == name)
                    .ok_or_else(|| err!(libc::ENOENT, "no store named {name:?}"))?;
                self.dir_attr(Inodes::store_ino_of(s), Some(s)).await
            }
            Node::Store(s) => {
                Self::check_name_len(name)?;
                if name.starts_with(TEMP_PREFIX) || validate_id(name).is_err() {
                    return Err(err!(libc::ENOENT, "{name:?} is not an image name"));
                }
                // An image being created here exists before it is committed.
                if let Some(img) = self.inodes.by_name(s, name) {
                    if let Some(st) = &*img.staging.lock().await {
                        self.inodes.add_lookups(img.ino, 1);
                        return Ok(self.staged_attr(&img, st));
                    }
                }
                let meta = self.stores[s].head(name).await?;
                let img = self.inodes.image(s, name, 1);
                *img.meta.lock().unwrap() = Some((Instant::now(), meta.clone()));
                Ok(Attr::image(img.ino, &meta, self.opts.owner))
            }
            Node::Image(_) => Err(err!(libc::ENOTDIR, "inode {parent} is an image")),
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        match self.node(ino)? {
            Node::Root => self.dir_attr(ino, None).await,
            Node::Store(s) => self.dir_attr(ino, Some(s)).await,
            Node::Image(img) => self.image_attr(&img).await,
        }
    }

    /// Lists a directory into a snapshot that readdir pages through.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let mut entries = Vec::new();
        let me = self.getattr(ino).await?;
        if me.kind != FileKind::Directory {
            return Err(err!(libc::ENOTDIR, "inode {ino} is an image"));
        }
        let mut parent = me.clone();
        parent.ino = ROOT_INO;
        entries.push(DirEntry {
            name: ".".into(),
            attr: me,
        });
        entries.push(DirEntry {
            name: "..".into(),
            attr: parent,
        });
        match self.node(ino)? {
            Node::Root => {
                for (i, s) in self.stores.iter().enumerate() {
                    let ino = Inodes::store_ino_of(i);
                    entries.push(DirEntry {
                        name: s.name().to_string(),
                        attr: self.dir_attr(ino, Some(i)).await?,
                    });
                }
            }
            Node::Store(s) => {
                // Forget inodes only readdir saw, unless another listing of
                // this store is still being read (its entries name them).
                if !self
                    .dirs
                    .lock()
                    .unwrap()
                    .values()
                    .any(|(d, _)| *d == Some(s))
                {
                    self.inodes.prune_store(s);
                }
                let listing = self.listing(s).await?;
                let mut seen = std::collections::HashSet::new();
                for m in listing.iter() {
                    let img = self.inodes.image(s, &m.id, 0);
                    let attr = match &*img.staging.lock().await {
                        Some(st) => self.staged_attr(&img, st),
                        None => match img.publishing.lock().unwrap().clone() {
                            Some(a) => a,
                            None => Attr::image(img.ino, m, self.opts.owner),
                        },
                    };
                    seen.insert(m.id.clone());
                    entries.push(DirEntry {
                        name: m.id.clone(),
                        attr,
                    });
                }
                // Images created through this mount and not yet committed.
                for img in self.pending_images(s) {
                    let Some(name) = img.name() else { continue };
                    if seen.contains(&name) {
                        continue;
                    }
                    if let Some(st) = &*img.staging.lock().await {
                        entries.push(DirEntry {
                            name,
                            attr: self.staged_attr(&img, st),
                        });
                    }
                }
            }
            Node::Image(_) => unreachable!(),
        }
        let store = match self.node(ino)? {
            Node::Store(s) => Some(s),
            _ => None,
        };
        let fh = self.new_fh();
        self.dirs
            .lock()
            .unwrap()
            .insert(fh, (store, Arc::new(entries)));
        Ok(fh)
    }

    fn pending_images(&self, store: usize) -> Vec<Arc<ImageNode>> {
        self.handles
            .lock()
            .unwrap()
            .values()
            .filter(|h| h.image.store == store && h.created)
            .map(|h| h.image.clone())
            .collect()
    }

    /// Entries of an open directory from `offset` on; `plus` counts each
    /// entry the adapter accepts (`add` returns false when full) as a lookup.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(u64, &DirEntry) -> bool,
    ) -> FsResult<()> {
        let entries = self
            .dirs
            .lock()
            .unwrap()
            .get(&fh)
            .map(|(_, e)| e.clone())
            .ok_or_else(|| err!(libc::EBADF, "directory handle {fh} is not open"))?;
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if !add(i as u64 + 1, e) {
                break;
            }
            if plus && e.name != "." && e.name != ".." {
                // Inodes of open listings are never pruned (see opendir).
                self.inodes.add_lookups(e.attr.ino, 1);
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    pub async fn mkdir(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let _ = self.node(parent)?;
        Err(err!(
            libc::EPERM,
            "mkdir {name:?}: store directories are flat (images only)"
        ))
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        match self.node(parent)? {
            Node::Root => Err(err!(
                libc::EPERM,
                "rmdir {name:?}: stores come from the config"
            )),
            Node::Store(_) => {
                self.lookup_quiet(parent, name).await?;
                Err(err!(
                    libc::ENOTDIR,
                    "rmdir {name:?}: an image, not a directory"
                ))
            }
            Node::Image(_) => Err(err!(libc::ENOTDIR, "inode {parent} is an image")),
        }
    }

    /// lookup() without counting a kernel reference.
    async fn lookup_quiet(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let a = self.lookup(parent, name).await?;
        if a.kind == FileKind::RegularFile {
            self.inodes.forget(a.ino, 1);
        }
        Ok(a)
    }

    pub async fn unsupported_node(&self, parent: u64, what: &str) -> FsResult<Attr> {
        let _ = self.node(parent)?;
        Err(err!(libc::EPERM, "{what}: images are regular files only"))
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        let s = self.store_dir(parent)?;
        self.check_writable(s)?;
        let img = self.inodes.by_name(s, name);
        if let Some(img) = &img {
            let open = img.io.lock().unwrap().handles() > 0;
            // What a commit in progress publishes is what goes: it cannot
            // come back afterwards.
            let mut guard = img.staging_after_commit().await;
            let was_new = unpublished_new(&guard);
            if open {
                self.keep_for_open_handles(img, &mut guard).await?;
            } else if let Some(st) = guard.take() {
                st.abort().await?;
            }
            drop(guard);
            if was_new {
                self.inodes.unlink(s, name);
                self.invalidate_listing(s);
                self.discard_if_closed(img).await;
                return Ok(());
            }
            if open {
                let _ = self.head(img).await; // remembered for fstat
            }
        }
        let result = self.stores[s].delete(name).await;
        self.invalidate_listing(s);
        result?;
        self.inodes.unlink(s, name);
        if let Some(img) = &img {
            self.discard_if_closed(img).await;
        }
        Ok(())
    }

    /// Drops what an unlinked image kept for its open handles once none is
    /// left. Called by release after the last handle, and by unlink and
    /// rename after the name is gone: a handle released while they ran
    /// (close() returns before the kernel's RELEASE, so `cat x; rm x`
    /// races) still counted as open for them, and saw the name still there.
    async fn discard_if_closed(&self, img: &ImageNode) {
        if img.name().is_some() || img.io.lock().unwrap().handles() > 0 {
            return;
        }
        if let Some(st) = img.staging.lock().await.take() {
            if let Err(e) = st.abort().await {
                tracing::warn!(ino = img.ino, "dropping an unlinked image's data: {e}");
            }
        }
    }

    /// An image loses its name while handles still use it: they keep its
    /// content, as that of an unlinked local file. Handles that only read
    /// keep the version they have open where the store keeps it for them
    /// (`pin_readers`); otherwise the content goes into a staging nobody
    /// will commit (discarded when the last closes), and the names that
    /// staging held in the store are free for a new image at once.
    async fn keep_for_open_handles(
        &self,
        img: &ImageNode,
        guard: &mut Option<Staging>,
    ) -> FsResult<()> {
        if guard.is_none() && self.pin_readers(img).await {
            return Ok(());
        }
        self.ensure_staging(img, guard, UploadMode::Modify).await?;
        let st = guard.as_mut().expect("staging exists");
        Ok(st.upload.orphan().await?)
    }

    /// Has every handle of `img` read on the version open now, where the
    /// store goes on serving an open version once it is deleted or
    /// replaced: then an unlink or a rename over `img` needs no copy for
    /// them. False when a handle may write, or the store keeps nothing,
    /// or a version cannot be opened. The caller holds `img`'s staging
    /// lock, so no commit replaces the version meanwhile.
    async fn pin_readers(&self, img: &ImageNode) -> bool {
        let store = &self.stores[img.store];
        if !store.capabilities().readers_outlive_delete || img.io.lock().unwrap().writers > 0 {
            return false;
        }
        let Some(name) = img.name() else {
            return false;
        };
        let fhs: Vec<u64> = {
            let handles = self.handles.lock().unwrap();
            let of_img = handles.iter().filter(|(_, h)| h.image.ino == img.ino);
            of_img.map(|(fh, _)| *fh).collect()
        };
        for fh in fhs {
            let ra = {
                // Not for a handle released meanwhile: nothing would drop it.
                let handles = self.handles.lock().unwrap();
                if !handles.contains_key(&fh) {
                    continue;
                }
                self.readahead_of(fh, img, name.clone())
            };
            if let Err(e) = ra.pin().await {
                tracing::debug!(ino = img.ino, "a handle cannot keep its version open: {e}");
                return false;
            }
        }
        true
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        noreplace: bool,
        exchange: bool,
    ) -> FsResult<()> {
        let (s, t) = (self.store_dir(parent)?, self.store_dir(newparent)?);
        if s != t {
            return Err(err!(libc::EXDEV, "rename across stores: copy instead"));
        }
        if exchange {
            return Err(err!(libc::EINVAL, "RENAME_EXCHANGE is not supported"));
        }
        self.check_writable(s)?;
        Self::check_name_len(newname)?;
        if validate_id(newname).is_err() {
            return Err(err!(libc::EINVAL, "{newname:?} is not an image name"));
        }
        if name == newname {
            self.lookup_quiet(parent, name).await?;
            return Ok(());
        }
        // Publish what is being written under the old name first.
        if let Some(img) = self.inodes.by_name(s, name) {
            self.commit(&img, false, true).await?;
        }
        // A write in progress under the target name is replaced too.
        let replaced = if noreplace {
            None
        } else {
            self.inodes.by_name(s, newname)
        };
        if let Some(img) = &replaced {
            let open = img.io.lock().unwrap().handles() > 0;
            // Not one that would publish over the rename afterwards.
            let mut guard = img.staging_after_commit().await;
            if open && !unpublished_new(&guard) {
                // The image replaced: as after an unlink.
                self.keep_for_open_handles(img, &mut guard).await?;
            } else if let Some(st) = guard.take() {
                st.abort().await?;
            }
        }
        let result = self.stores[s].rename(name, newname, !noreplace).await;
        self.invalidate_listing(s);
        result?;
        // The renamed image's handles open it again under its new name;
        // those of the image it replaced go on with the version they keep.
        if let Some(img) = self.inodes.by_name(s, name) {
            self.drop_readahead(img.ino);
        }
        self.inodes.rename(s, name, newname);
        if let Some(img) = &replaced {
            self.discard_if_closed(img).await;
        }
        Ok(())
    }

    pub async fn statfs(&self, ino: u64) -> FsResult<FsStat> {
        let store = match self.node(ino)? {
            Node::Root => None,
            Node::Store(s) => Some(s),
            Node::Image(img) => Some(img.store),
        };
        match store {
            Some(s) => Ok(self.stores[s].statfs().await?),
            None => {
                let mut total = StatFs {
                    block_size: 4096,
                    name_max: 255,
                    ..StatFs::default()
                };
                for s in &self.stores {
                    let st = s.statfs().await?;
                    total.total_bytes += st.total_bytes;
                    total.free_bytes += st.free_bytes;
                    total.avail_bytes += st.avail_bytes;
                    total.files += st.files;
                    total.files_free += st.files_free;
                    total.name_max = total.name_max.min(st.name_max);
                }
                Ok(total)
            }
        }
    }

    // ---- attributes ------------------------------------------------------

    pub async fn setattr(&self, ino: u64, fh: Option<u64>, req: SetAttrRequest) -> FsResult<Attr> {
        let img = match self.node(ino)? {
            Node::Image(img) => img,
            Node::Store(s) if req.size.is_none() => {
                self.check_writable(s)?;
                self.stores[s].set_root_attrs(&req.attrs()).await?;
                return self.getattr(ino).await;
            }
            Node::Root if req.size.is_none() => {
                return Err(err!(libc::EPERM, "the mount root is not a real directory"));
            }
            _ => return Err(err!(libc::EISDIR, "truncate of a directory")),
        };
        self.check_writable(img.store)?;
        let store = &self.stores[img.store];
        let attrs = req.attrs();
        if let Some(size) = req.size {
            let mut guard = img.staging.lock().await;
            // Decided under the staging lock: a writer's release counts
            // itself out before it takes the lock to commit, so a change
            // left to it is always committed by it, and a truncate by path
            // racing the last release (which the kernel sends without
            // waiting) is never left unpublished.
            let deferred = fh.is_some() || img.io.lock().unwrap().writers > 0;
            let how = if size == 0 {
                UploadMode::Replace
            } else {
                UploadMode::Modify
            };
            self.ensure_staging(&img, &mut guard, how).await?;
            let st = guard.as_mut().expect("staging exists");
            st.set_len(size).await?;
            if !attrs.is_empty() {
                st.set_attrs(&attrs).await?;
            }
            if !deferred {
                let st = guard.take().expect("staging exists");
                self.publish(&img, st, false).await?;
            }
        } else if !attrs.is_empty() {
            // Not before a commit that would publish over the change.
            let mut guard = img.staging_after_commit().await;
            match guard.as_mut() {
                Some(st) => st.set_attrs(&attrs).await?,
                None if img.name().is_none() => {
                    // Unlinked while open, with nothing kept to change (the
                    // store keeps the version for the handles): as on a
                    // local file no name leads to any more, the change
                    // shows on the open handles and goes with them.
                    drop(guard);
                    if let Some((_, m)) = img.meta.lock().unwrap().as_mut() {
                        m.apply(&attrs);
                    }
                }
                None => {
                    drop(guard);
                    let name = Self::name_of(&img)?;
                    store.set_attrs(&name, &attrs).await?;
                    *img.meta.lock().unwrap() = None;
                    self.invalidate_listing(img.store);
                }
            }
        }
        self.image_attr(&img).await
    }

    // ---- open, read, write, commit ----------------------------------------

    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let img = self.image(ino)?;
        let write = is_write(flags);
        if write {
            self.check_writable(img.store)?;
        }
        if write {
            self.join_passthrough_readers(&img).await?;
        }
        // Make sure it (still) exists, and is fresh for the kernel's cache.
        *img.meta.lock().unwrap() = None;
        let _ = self.image_attr(&img).await?;
        if write && flags & libc::O_TRUNC != 0 {
            let mut guard = img.staging.lock().await;
            self.ensure_staging(&img, &mut guard, UploadMode::Replace)
                .await?;
            let st = guard.as_mut().expect("staging exists");
            if !st.is_empty() {
                st.set_len(0).await?;
            }
        }
        let passthrough = self.passthrough_ok.load(Ordering::Relaxed);
        let (staged, shared, staged_file) = {
            let guard = img.staging.lock().await;
            let shared = guard.as_ref().is_some_and(Staging::is_shared);
            let file = guard
                .as_ref()
                .filter(|_| shared && passthrough)
                .and_then(|st| st.upload.local_file());
            (guard.is_some(), shared, file)
        };
        let local = if staged {
            staged_file
        } else if !write && passthrough {
            let name = Self::name_of(&img)?;
            self.stores[img.store]
                .local_path(&name)
                .and_then(|p| File::open(p).ok())
        } else {
            None
        };
        let store = &self.stores[img.store];
        // A reader keeps the version open now where the store keeps it
        // for it, as a local file's descriptor does: one replaced or
        // deleted after this open (here or on another mount) reads on.
        // Not past a commit of this mount's that ends meanwhile.
        let pin = !write && !staged && store.capabilities().readers_outlive_delete;
        let committing = if pin {
            Some(img.committing.lock().await)
        } else {
            None
        };
        let pinned = if pin {
            let ra = ReadAhead::new(store.clone(), Self::name_of(&img)?);
            ra.pin().await?;
            Some(Arc::new(ra))
        } else {
            None
        };
        let fh = self.new_fh();
        let (handle, io) = open::choose(&img, self.access(flags), false, local, shared)?;
        self.handles.lock().unwrap().insert(fh, handle);
        if let Some(ra) = pinned {
            self.readahead.lock().unwrap().insert(fh, (img.ino, ra));
        }
        drop(committing);
        if matches!(io, IoMode::Passthrough(None)) {
            self.wait_for_backing(fh).await;
        }
        Ok(Opened { fh, io })
    }

    /// A handle that joins the inode's passthrough file needs the backing
    /// the first handle is registering with the kernel right now (opens
    /// race): without it the open would fail (EIO). Waits for it, 2 s at
    /// most.
    async fn wait_for_backing(&self, fh: u64) {
        for _ in 0..2000 {
            if self.backing(fh).is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tracing::warn!(fh, "no passthrough backing registered after 2 s");
    }

    /// A writer of an image this mount already reads by passthrough must
    /// pass through to the same file (the kernel fails any other open): it
    /// writes the committed image in place, as a local file would, and
    /// checksums are recomputed at its last close.
    async fn join_passthrough_readers(&self, img: &ImageNode) -> FsResult<()> {
        let mut guard = img.staging.lock().await;
        let backing = {
            let io = img.io.lock().unwrap();
            (io.passthrough > 0).then_some(io.backing).flatten()
        };
        let Some(backing) = backing else {
            return Ok(());
        };
        if guard.as_ref().is_some_and(Staging::is_shared) {
            return Ok(());
        }
        let busy = || {
            err!(
                libc::EBUSY,
                "image is open for reading by passthrough on this mount"
            )
        };
        if guard.is_some() {
            return Err(busy());
        }
        let name = Self::name_of(img)?;
        let store = &self.stores[img.store];
        let meta = self.head(img).await?;
        let Ok(upload) = store.open_in_place(&name).await else {
            return Err(busy());
        };
        let same = upload
            .local_file()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| (m.dev(), m.ino()) == backing);
        let attrs = StagedAttrs::changing(&meta);
        let mut st = Staging::new(upload, UploadMode::Modify, attrs, self.opts.hashing);
        if !same || st.share().is_none() {
            // The readers hold an older version of the image.
            st.abort().await?;
            return Err(busy());
        }
        *guard = Some(st);
        Ok(())
    }

    /// The kernel could not use the passthrough file offered for `fh`: it is
    /// served as direct I/O instead.
    pub fn passthrough_failed(&self, fh: u64) {
        if let Some(h) = self.handles.lock().unwrap().get_mut(&fh) {
            open::demote(h);
        }
    }

    /// Keeps the backing registration of a new passthrough handle alive until
    /// the inode's last passthrough handle is released.
    pub fn attach_backing(&self, fh: u64, token: BackingToken) {
        if let Some(h) = self.handles.lock().unwrap().get(&fh) {
            open::attach(h, token);
        }
    }

    /// The backing registration a reusing passthrough handle must name.
    pub fn backing(&self, fh: u64) -> Option<BackingToken> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .and_then(open::backing)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let s = self.store_dir(parent)?;
        self.check_writable(s)?;
        Self::check_name_len(name)?;
        validate_id(name).map_err(|e| err!(libc::EINVAL, "{e}"))?;
        // It may exist already: on another mount, or not yet seen here.
        if let Ok(existing) = self.lookup_quiet(parent, name).await {
            if flags & libc::O_EXCL != 0 {
                return Err(err!(libc::EEXIST, "{name:?} exists"));
            }
            self.inodes.add_lookups(existing.ino, 1);
            let opened = self.open(existing.ino, flags).await?;
            let attr = self.getattr(existing.ino).await?;
            return Ok((attr, opened));
        }
        let upload = self.stores[s].create_upload(name, UploadMode::New).await?;
        let now = SystemTime::now();
        let attrs = StagedAttrs {
            mode: mode & !umask & 0o7777,
            uid: caller.uid,
            gid: caller.gid,
            atime: now,
            mtime: now,
            ctime: now,
        };
        let mut staging = Staging::new(upload, UploadMode::New, attrs.clone(), self.opts.hashing);
        let set = SetAttrs {
            mode: Some(attrs.mode),
            uid: Some(caller.uid),
            gid: Some(caller.gid),
            ..SetAttrs::default()
        };
        if let Err(e) = staging.set_attrs(&set).await {
            tracing::debug!(name, "cannot give the new image its owner: {e}");
            staging
                .set_attrs(&SetAttrs {
                    mode: set.mode,
                    ..SetAttrs::default()
                })
                .await?;
        }
        // The kernel writes a new local image itself (passthrough): no
        // round trip, no copy through this process.
        let local = if self.passthrough_ok.load(Ordering::Relaxed) {
            staging.share()
        } else {
            None
        };
        let shared = staging.is_shared();
        let img = self.inodes.image(s, name, 1);
        let attr = self.staged_attr(&img, &staging);
        *img.staging.lock().await = Some(staging);
        let fh = self.new_fh();
        let (handle, io) = open::choose(&img, self.access(flags), true, local, shared)?;
        self.handles.lock().unwrap().insert(fh, handle);
        self.invalidate_listing(s);
        Ok((attr, Opened { fh, io }))
    }

    fn handle(&self, fh: u64) -> FsResult<(Arc<ImageNode>, bool, bool)> {
        let h = self.handles.lock().unwrap();
        let h = h
            .get(&fh)
            .ok_or_else(|| err!(libc::EBADF, "file handle {fh} is not open"))?;
        Ok((h.image.clone(), h.writable, h.append))
    }

    /// Starts the staging of `img` if there is none.
    async fn ensure_staging(
        &self,
        img: &ImageNode,
        guard: &mut Option<Staging>,
        how: UploadMode,
    ) -> FsResult<()> {
        if guard.is_some() {
            return Ok(());
        }
        // A new version starts from the one being committed, once it is.
        drop(img.committing.lock().await);
        let name = Self::name_of(img)?;
        let store = &self.stores[img.store];
        if !store.capabilities().modify && how == UploadMode::Modify {
            return Err(err!(
                libc::EOPNOTSUPP,
                "store {} cannot modify images in place yet",
                store.name()
            ));
        }
        let meta = self.head(img).await?;
        let upload = store.create_upload(&name, how).await?;
        let attrs = StagedAttrs::changing(&meta);
        *guard = Some(Staging::new(upload, how, attrs, self.opts.hashing));
        Ok(())
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let (img, _, _) = self.handle(fh)?;
        {
            let guard = img.staging.lock().await;
            if let Some(st) = &*guard {
                return Ok(st.upload.read_at(offset, size).await?);
            }
        }
        // Not the version a commit in progress is replacing.
        drop(img.committing.lock().await);
        let store = &self.stores[img.store];
        // A handle that has read goes on with the version it opened, even
        // once the image lost its name (removed on another node).
        let open = self.readahead.lock().unwrap().get(&fh).map(|e| e.1.clone());
        if let Some(ra) = open {
            return Ok(ra.read(offset, size).await?);
        }
        let name = Self::name_of(&img)?;
        if store.capabilities().local_files {
            return Ok(store.read(&name, offset, size).await?);
        }
        Ok(self.readahead_of(fh, &img, name).read(offset, size).await?)
    }

    /// The read-ahead of handle `fh` of `img`, made to read `name` if the
    /// handle has none yet.
    fn readahead_of(&self, fh: u64, img: &ImageNode, name: String) -> Arc<ReadAhead> {
        let store = &self.stores[img.store];
        let mut readahead = self.readahead.lock().unwrap();
        let entry = readahead
            .entry(fh)
            .or_insert_with(|| (img.ino, Arc::new(ReadAhead::new(store.clone(), name))));
        entry.1.clone()
    }

    /// Forgets what handles of `ino` read ahead, and the version they had
    /// open: this mount committed a new one (its handles see it, as with a
    /// local file; a version committed by another mount does not show up
    /// in handles opened before) or renamed it.
    fn drop_readahead(&self, ino: u64) {
        self.readahead.lock().unwrap().retain(|_, (i, _)| *i != ino);
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Bytes) -> FsResult<u32> {
        let (img, writable, append) = self.handle(fh)?;
        if !writable {
            return Err(err!(libc::EBADF, "handle {fh} is not open for writing"));
        }
        let mut guard = img.staging.lock().await;
        self.ensure_staging(&img, &mut guard, UploadMode::Modify)
            .await?;
        let st = guard.as_mut().expect("staging exists");
        let offset = if append { st.len() } else { offset };
        let n = data.len() as u32;
        st.write(offset, data).await?;
        Ok(n)
    }

    pub async fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u64> {
        let (src, _, _) = self.handle(fh_in)?;
        let (dst, writable, _) = self.handle(fh_out)?;
        if !writable {
            return Err(err!(libc::EBADF, "handle {fh_out} is not open for writing"));
        }
        if src.store != dst.store {
            return Err(err!(libc::EXDEV, "copy across stores"));
        }
        let store = &self.stores[src.store];
        // A commit in progress publishes the version to copy.
        let src_staged = src.staging_after_commit().await.is_some();
        if !store.capabilities().server_side_copy || src.ino == dst.ino || src_staged {
            return Err(err!(libc::EOPNOTSUPP, "no server-side copy for this pair"));
        }
        let src_name = Self::name_of(&src)?;
        let mut guard = dst.staging.lock().await;
        self.ensure_staging(&dst, &mut guard, UploadMode::Modify)
            .await?;
        let st = guard.as_mut().expect("staging exists");
        Ok(st.copy_from(&src_name, off_in, off_out, len).await?)
    }

    /// Publishes `img`'s staged write, if any. A staging the kernel writes
    /// (passthrough) stays, published in place, until `last`: the last
    /// writer's release, after which the kernel cannot write it any more.
    async fn commit(&self, img: &ImageNode, durable: bool, last: bool) -> FsResult<()> {
        let mut guard = img.staging.lock().await;
        if img.name().is_none() {
            // Unlinked: nothing to publish; release() drops the data when
            // the last handle closes.
            return Ok(());
        }
        if let Some(st) = guard.as_mut().filter(|st| st.is_shared() && !last) {
            let store = &*self.stores[img.store];
            let result = st.publish(store, self.opts.hashing, durable).await;
            self.invalidate_listing(img.store);
            return match result {
                Ok(meta) => {
                    self.drop_readahead(img.ino);
                    *img.meta.lock().unwrap() = Some((Instant::now(), meta));
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(store = store.name(), "publish failed: {e}");
                    Err(e.into())
                }
            };
        }
        match guard.take() {
            Some(st) => {
                // After an earlier commit still publishing (a release's).
                let _committing = img.committing.lock().await;
                // Stats during the commit show the new version, not the
                // one it replaces.
                *img.publishing.lock().unwrap() = Some(self.staged_attr(img, &st));
                drop(guard);
                self.publish(img, st, durable).await
            }
            None => {
                // Nothing staged here, but a commit may be in progress (a
                // release's, which the kernel does not wait for): fsync,
                // close and rename return after it has published.
                drop(img.committing.lock().await);
                Ok(())
            }
        }
    }

    async fn publish(&self, img: &ImageNode, st: Staging, durable: bool) -> FsResult<()> {
        let store = &*self.stores[img.store];
        let id = st.upload.id().to_string();
        let result = st.commit(store, self.opts.hashing, durable).await;
        self.invalidate_listing(img.store);
        match result {
            Ok(meta) => {
                self.drop_readahead(img.ino);
                tracing::debug!(store = store.name(), id, size = meta.size, "committed");
                *img.meta.lock().unwrap() = Some((Instant::now(), meta));
                img.publishing.lock().unwrap().take();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(store = store.name(), id, "commit failed: {e}");
                *img.meta.lock().unwrap() = None;
                img.publishing.lock().unwrap().take();
                Err(e.into())
            }
        }
    }

    /// close() by process `pid` (0: unknown): commits what this handle (or
    /// another of the inode) wrote, unless `pid` still holds the image open
    /// (it closed a duplicate, as `dd of=` and shell redirections do): its
    /// last close commits then.
    pub async fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let may_commit = {
            let h = self.handles.lock().unwrap();
            match h.get(&fh) {
                Some(h) => h.writable || h.created,
                None => return Ok(()),
            }
        };
        if may_commit {
            let (img, _, _) = self.handle(fh)?;
            let mount_id = self.mount_id.load(Ordering::Relaxed);
            if pid != 0 && mount_id != 0 {
                let ino = img.ino;
                let held = tokio::task::spawn_blocking(move || holders::holds(pid, mount_id, ino))
                    .await
                    .unwrap_or(false);
                if held {
                    return Ok(());
                }
            }
            self.commit(&img, false, false).await?;
        }
        Ok(())
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let (img, _, _) = self.handle(fh)?;
        self.commit(&img, true, false).await
    }

    /// Last close of a handle; commits leftovers of the last writer (mmap
    /// writes can arrive after flush).
    pub async fn release(&self, fh: u64) {
        // The handle first: `pin_readers` adds read-ahead only to handles
        // still there.
        let h = self.handles.lock().unwrap().remove(&fh);
        self.readahead.lock().unwrap().remove(&fh);
        let Some(h) = h else {
            return;
        };
        if open::release(&h) {
            if let Err(e) = self.commit(&h.image, false, true).await {
                tracing::error!(ino = h.image.ino, "commit at release failed: {e}");
            }
        }
        self.discard_if_closed(&h.image).await;
    }

    // ---- extended attributes ---------------------------------------------

    /// Answers getxattr at once when no store call is needed: names outside
    /// `user.` (security.capability on every write, security.selinux and
    /// ACLs on every `ls -l`), directories and the computed location. None:
    /// ask `getxattr`.
    pub fn getxattr_now(&self, ino: u64, name: &str) -> Option<FsResult<Vec<u8>>> {
        let img = match self.node(ino) {
            Ok(Node::Image(img)) => img,
            Ok(_) => return Some(Err(err!(libc::ENODATA, "directories have no xattrs"))),
            Err(e) => return Some(Err(e)),
        };
        if !name.starts_with("user.") {
            return Some(Err(err!(libc::ENODATA, "only user.* xattrs are kept")));
        }
        if name == XATTR_LOCATION {
            return Some(
                Self::name_of(&img).map(|id| self.stores[img.store].location(&id).into_bytes()),
            );
        }
        None
    }

    /// Whether `img` is a new image not published yet, once a commit in
    /// progress has ended (its xattrs are the ones to show).
    async fn unpublished_new_after_commits(&self, img: &ImageNode) -> bool {
        unpublished_new(&*img.staging_after_commit().await)
    }

    pub async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        if let Some(answer) = self.getxattr_now(ino, name) {
            return answer;
        }
        let img = self.image(ino)?;
        let id = Self::name_of(&img)?;
        let store = &self.stores[img.store];
        if self.unpublished_new_after_commits(&img).await {
            return Err(err!(libc::ENODATA, "{id}: not committed yet"));
        }
        Ok(store.get_xattr(&id, name).await?)
    }

    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<String>> {
        let img = match self.node(ino)? {
            Node::Image(img) => img,
            _ => return Ok(Vec::new()),
        };
        let id = Self::name_of(&img)?;
        let mut names = vec![XATTR_LOCATION.to_string()];
        if !self.unpublished_new_after_commits(&img).await {
            names.extend(
                self.stores[img.store]
                    .list_xattrs(&id)
                    .await?
                    .into_iter()
                    .filter(|n| n.starts_with("user.") && n != XATTR_LOCATION),
            );
        }
        Ok(names)
    }

    fn xattr_target(&self, ino: u64, name: &str) -> FsResult<(Arc<ImageNode>, String)> {
        let img = match self.node(ino)? {
            Node::Image(img) => img,
            _ => return Err(err!(libc::EPERM, "directories take no xattrs")),
        };
        if !name.starts_with("user.") {
            return Err(err!(
                libc::EOPNOTSUPP,
                "{name}: only user.* xattrs are kept"
            ));
        }
        self.check_writable(img.store)?;
        let id = Self::name_of(&img)?;
        Ok((img, id))
    }

    pub async fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        let (img, id) = self.xattr_target(ino, name)?;
        if name.starts_with(XATTR_IMAGEFS_PREFIX) {
            // Computed by imagefs at commit: a copy (cp -a, mv, rsync -X)
            // carrying them over is accepted and the values recomputed.
            return Ok(());
        }
        let mode = if flags & libc::XATTR_CREATE != 0 {
            XattrMode::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            XattrMode::Replace
        } else {
            XattrMode::Any
        };
        // Attributes belong to the committed image: publish a pending write.
        self.commit(&img, false, false).await?;
        Ok(self.stores[img.store]
            .set_xattr(&id, name, value, mode)
            .await?)
    }

    pub async fn removexattr(&self, ino: u64, name: &str) -> FsResult<()> {
        let (img, id) = self.xattr_target(ino, name)?;
        if name.starts_with(XATTR_IMAGEFS_PREFIX) {
            return Err(err!(libc::EPERM, "{name} is computed by imagefs"));
        }
        self.commit(&img, false, false).await?;
        match self.stores[img.store].remove_xattr(&id, name).await {
            Err(StoreError::NoAttribute) => Err(err!(libc::ENODATA, "{name} is not set")),
            other => Ok(other?),
        }
    }
}

/// Whether a staging creates an image nobody can see yet.
fn unpublished_new(st: &Option<Staging>) -> bool {
    st.as_ref()
        .is_some_and(|st| st.mode == UploadMode::New && !st.is_published())
}
