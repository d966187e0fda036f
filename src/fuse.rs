//! The FUSE adapter: a thin `fuser::Filesystem` that hands every request to
//! the fs core (polled once on the fuser thread, then on a tokio runtime if
//! it has to wait), converts types, and replies. Decisions
//! (errno, caching, passthrough) belong to the core; this file only carries
//! them out and negotiates kernel features at init.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::{Attr, Caller, FileKind, FsError, ImageFs, IoMode, Opened, SetAttrRequest};

/// Largest read/write request asked of the kernel (max_pages 256).
const MAX_IO: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: Arc<ImageFs>,
    rt: Handle,
    ttl: Duration,
}

impl FuseAdapter {
    pub fn new(fs: Arc<ImageFs>, rt: Handle) -> FuseAdapter {
        let ttl = fs.options().attr_ttl;
        FuseAdapter { fs, rt, ttl }
    }

    /// Runs `f` with a clone of the core: polled once on this thread (in
    /// the runtime's context), and if it has to wait, handed to the
    /// runtime as a task, which polls it again at once with its own waker.
    /// Most requests (attributes from the cache, a write gathered or
    /// queued) finish in that first poll, and answering them here saves
    /// waking a runtime thread per request: 64 KiB writes spent ~40% of
    /// the daemon's CPU switching threads.
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<ImageFs>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let _in_runtime = self.rt.enter();
        let mut fut = Box::pin(f(self.fs.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        if fut.as_mut().poll(&mut cx).is_pending() {
            self.rt.spawn(fut);
        }
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: match a.kind {
            FileKind::Directory => FileType::Directory,
            FileKind::RegularFile => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: MAX_IO,
        flags: 0,
    }
}

/// How long the kernel may cache an attribute: not at all while it changes.
fn ttl_of(a: &Attr, ttl: Duration) -> Duration {
    if a.volatile {
        Duration::ZERO
    } else {
        ttl
    }
}

/// The errno of a failed call, logged once here.
fn errno(op: &str, e: FsError) -> Errno {
    match e.errno {
        libc::ENOENT | libc::ENODATA | libc::EEXIST | libc::ENOTDIR | libc::EISDIR => {
            tracing::trace!(op, "{e}")
        }
        libc::EIO | libc::ENOSPC => tracing::warn!(op, "{e}"),
        _ => tracing::debug!(op, "{e}"),
    }
    Errno::from_i32(e.errno)
}

fn name_str<'a>(name: &'a OsStr, op: &str) -> Result<&'a str, Errno> {
    name.to_str().ok_or_else(|| {
        tracing::debug!(op, "non-UTF-8 name refused");
        Errno::EINVAL
    })
}

fn time(t: Option<TimeOrNow>) -> Option<SystemTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}

fn try_add(kc: &mut KernelConfig, flags: InitFlags) -> bool {
    kc.add_capabilities(flags).is_ok()
}

/// Replies to an open or create according to the core's I/O decision.
trait OpenReply {
    fn open_backing(&self, file: &std::fs::File) -> io::Result<BackingId>;
    fn ok(self, fh: FileHandle, flags: FopenFlags);
    fn ok_passthrough(self, fh: FileHandle, flags: FopenFlags, id: &BackingId);
}

impl OpenReply for ReplyOpen {
    fn open_backing(&self, file: &std::fs::File) -> io::Result<BackingId> {
        ReplyOpen::open_backing(self, file)
    }
    fn ok(self, fh: FileHandle, flags: FopenFlags) {
        self.opened(fh, flags)
    }
    fn ok_passthrough(self, fh: FileHandle, flags: FopenFlags, id: &BackingId) {
        self.opened_passthrough(fh, flags, id)
    }
}

fn reply_opened(fs: &ImageFs, opened: Opened, reply: impl OpenReply) {
    let fh = FileHandle(opened.fh);
    match opened.io {
        IoMode::Cached => reply.ok(fh, FopenFlags::empty()),
        IoMode::DirectIo => reply.ok(fh, FopenFlags::FOPEN_DIRECT_IO),
        IoMode::Passthrough(file) => {
            let id = match file {
                Some(file) => match reply.open_backing(&file) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        fs.attach_backing(opened.fh, id.clone());
                        Some(id)
                    }
                    Err(e) => {
                        tracing::debug!("passthrough refused: {e}");
                        None
                    }
                },
                None => fs
                    .backing(opened.fh)
                    .and_then(|t| t.downcast::<BackingId>().ok()),
            };
            match id {
                Some(id) => reply.ok_passthrough(fh, FopenFlags::empty(), &id),
                None => {
                    fs.passthrough_failed(opened.fh);
                    reply.ok(fh, FopenFlags::FOPEN_DIRECT_IO)
                }
            }
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, kc: &mut KernelConfig) -> io::Result<()> {
        let _ = kc.set_max_write(MAX_IO);
        if let Err(max) = kc.set_max_readahead(MAX_IO) {
            let _ = kc.set_max_readahead(max);
        }
        let _ = kc.set_max_background(64);
        try_add(kc, InitFlags::FUSE_DO_READDIRPLUS);
        try_add(kc, InitFlags::FUSE_PARALLEL_DIROPS);
        try_add(kc, InitFlags::FUSE_ASYNC_DIO);
        // Kernels that know this flag (6.6+) also drop the cached pages a
        // direct-I/O write covers.
        let direct_writes = try_add(kc, InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        self.fs.set_direct_writes_available(direct_writes);
        // The kernel then caches ACL lookups (`ls -l` asks for one per file).
        try_add(kc, InitFlags::FUSE_POSIX_ACL);
        let passthrough = self.fs.options().passthrough
            && kc.set_max_stack_depth(1).is_ok()
            && try_add(kc, InitFlags::FUSE_PASSTHROUGH);
        self.fs.set_passthrough_available(passthrough);
        tracing::info!(passthrough, direct_writes, "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_str(name, "lookup") {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        let ttl = self.ttl;
        self.run(move |fs| async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&ttl_of(&a, ttl), &fuse_attr(&a), Generation(0)),
                Err(e) => reply.error(errno("lookup", e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.ttl;
        self.run(move |fs| async move {
            match fs.getattr(ino.0).await {
                Ok(a) => reply.attr(&ttl_of(&a, ttl), &fuse_attr(&a)),
                Err(e) => reply.error(errno("getattr", e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let req = SetAttrRequest {
            mode,
            uid,
            gid,
            size,
            atime: time(atime),
            mtime: time(mtime),
        };
        let ttl = self.ttl;
        self.run(move |fs| async move {
            match fs.setattr(ino.0, fh.map(|f| f.0), req).await {
                Ok(a) => reply.attr(&ttl_of(&a, ttl), &fuse_attr(&a)),
                Err(e) => reply.error(errno("setattr", e)),
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.run(move |fs| async move {
            let e = fs.unsupported_node(parent.0, "mknod").await.unwrap_err();
            reply.error(errno("mknod", e))
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_string_lossy().into_owned();
        self.run(move |fs| async move {
            let e = fs.mkdir(parent.0, &name).await.unwrap_err();
            reply.error(errno("mkdir", e))
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_str(name, "unlink") {
            Ok(n) => n.to_string(),
            Err(_) => return reply.error(Errno::ENOENT),
        };
        self.run(move |fs| async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("unlink", e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_string_lossy().into_owned();
        self.run(move |fs| async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("rmdir", e)),
            }
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        self.run(move |fs| async move {
            let e = fs.unsupported_node(parent.0, "symlink").await.unwrap_err();
            reply.error(errno("symlink", e))
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.run(move |fs| async move {
            let e = fs.unsupported_node(newparent.0, "link").await.unwrap_err();
            reply.error(errno("link", e))
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = match (name_str(name, "rename"), name_str(newname, "rename")) {
            (Ok(a), Ok(b)) => (a.to_string(), b.to_string()),
            _ => return reply.error(Errno::EINVAL),
        };
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let exchange =
            flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT);
        self.run(move |fs| async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, noreplace, exchange)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("rename", e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.run(move |fs| async move {
            match fs.open(ino.0, flags.0).await {
                Ok(opened) => reply_opened(&fs, opened, reply),
                Err(e) => reply.error(errno("open", e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = Bytes::copy_from_slice(data);
        self.run(move |fs| async move {
            match fs.write(fh.0, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let pid = req.pid();
        self.run(move |fs| async move {
            match fs.flush(fh.0, pid).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("flush", e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |fs| async move {
            fs.release(fh.0).await;
            reply.ok()
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |fs| async move {
            match fs.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("fsync", e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run(move |fs| async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let kind = |k: FileKind| match k {
            FileKind::Directory => FileType::Directory,
            FileKind::RegularFile => FileType::RegularFile,
        };
        let result = self.fs.readdir(fh.0, offset, false, |next, e| {
            !reply.add(INodeNo(e.attr.ino), next, kind(e.attr.kind), &e.name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdir", e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl;
        let result = self.fs.readdir(fh.0, offset, true, |next, e| {
            !reply.add(
                INodeNo(e.attr.ino),
                next,
                &e.name,
                &ttl_of(&e.attr, ttl),
                &fuse_attr(&e.attr),
                Generation(0),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdirplus", e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.run(move |fs| async move {
            match fs.statfs(ino.0).await {
                Ok(st) => {
                    let bsize = st.block_size.max(512) as u64;
                    reply.statfs(
                        st.total_bytes / bsize,
                        st.free_bytes / bsize,
                        st.avail_bytes / bsize,
                        st.files,
                        st.files_free,
                        bsize as u32,
                        st.name_max,
                        bsize as u32,
                    )
                }
                Err(e) => reply.error(errno("statfs", e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = name.to_string_lossy().into_owned();
        let value = value.to_vec();
        self.run(move |fs| async move {
            match fs.setxattr(ino.0, &name, &value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("setxattr", e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_string_lossy().into_owned();
        if let Some(answer) = self.fs.getxattr_now(ino.0, &name) {
            return match answer {
                Ok(v) => xattr_reply(reply, size, &v),
                Err(e) => reply.error(errno("getxattr", e)),
            };
        }
        self.run(move |fs| async move {
            match fs.getxattr(ino.0, &name).await {
                Ok(v) => xattr_reply(reply, size, &v),
                Err(e) => reply.error(errno("getxattr", e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run(move |fs| async move {
            match fs.listxattr(ino.0).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(n.as_bytes());
                        buf.push(0);
                    }
                    xattr_reply(reply, size, &buf)
                }
                Err(e) => reply.error(errno("listxattr", e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_string_lossy().into_owned();
        self.run(move |fs| async move {
            match fs.removexattr(ino.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("removexattr", e)),
            }
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_str(name, "create") {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        let caller = Caller {
            uid: req.uid(),
            gid: req.gid(),
        };
        let ttl = self.ttl;
        self.run(move |fs| async move {
            match fs.create(parent.0, &name, mode, umask, flags, caller).await {
                Ok((attr, opened)) => {
                    let reply = CreateReply {
                        reply,
                        ttl: ttl_of(&attr, ttl),
                        attr: fuse_attr(&attr),
                    };
                    reply_opened(&fs, opened, reply)
                }
                Err(e) => reply.error(errno("create", e)),
            }
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Images are not terminals or devices (isatty asks TCGETS).
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Images are streamed, not preallocated; posix_fallocate falls back.
        reply.error(Errno::EOPNOTSUPP);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The reply carries a u32 count: copy at most 1 GiB per call.
        let len = len.min(1 << 30);
        self.run(move |fs| async move {
            match fs
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
                .await
            {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno("copy_file_range", e)),
            }
        });
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}

/// ReplyCreate answered like an open, with the new entry.
struct CreateReply {
    reply: ReplyCreate,
    ttl: Duration,
    attr: FileAttr,
}

impl OpenReply for CreateReply {
    fn open_backing(&self, file: &std::fs::File) -> io::Result<BackingId> {
        self.reply.open_backing(file)
    }
    fn ok(self, fh: FileHandle, flags: FopenFlags) {
        self.reply
            .created(&self.ttl, &self.attr, Generation(0), fh, flags)
    }
    fn ok_passthrough(self, fh: FileHandle, flags: FopenFlags, id: &BackingId) {
        self.reply
            .created_passthrough(&self.ttl, &self.attr, Generation(0), fh, flags, id)
    }
}
