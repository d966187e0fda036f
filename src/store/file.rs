//! The file store: Glance's filesystem store layout, `<datadir>/<image-id>`.
//!
//! Committed images are plain files named by their id, exactly where Glance's
//! own driver puts them. An upload writes a hidden temp file
//! `<datadir>/.imagefs-tmp-<id>`, created with O_EXCL and held under an
//! exclusive `flock` for its whole life: the O_EXCL name makes a second writer
//! of the same id fail (on any mount sharing the directory), the lock tells
//! `gc` which temp files belong to a dead writer. Commit renames the temp file
//! onto the id (`RENAME_NOREPLACE` for new images), so readers and other
//! mounts see either the old image or the complete new one, never a torn mix.
//! Mode, owner, times and user xattrs are the file's own; the checksums are
//! stored as `user.imagefs.*` xattrs on the file.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    blocking, validate_id, Capabilities, Checksums, Leftover, ObjectMeta, Result, SetAttrs, StatFs,
    Store, StoreError, Upload, UploadMode, XattrMode, TEMP_PREFIX, XATTR_CHECKSUM,
    XATTR_OS_HASH_ALGO, XATTR_OS_HASH_VALUE,
};
use crate::config::FileStoreConfig;

/// A Glance filesystem store rooted at one data directory. Cloning copies
/// its settings (for blocking closures).
#[derive(Clone)]
pub struct FileStore {
    name: String,
    datadir: PathBuf,
    file_perm: Option<u32>,
    /// Every write moves a file's ctime here, however close together
    /// (multigrain timestamps): uploads may then be written by the kernel
    /// directly (FUSE passthrough) with changes still detectable.
    fine_ctime: bool,
}

/// Whether two changes to a file in `dir` always get different ctimes once
/// the first was looked at (Linux >= 6.13 on ext4, xfs, btrfs, tmpfs). Probed
/// on an unnamed temp file: a few hundred writes, each between two fstats.
fn ctime_is_fine_grained(dir: &Path) -> bool {
    let probe = || -> io::Result<bool> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)?;
        for i in 0..300u64 {
            let before = f.metadata()?;
            f.write_all_at(b"x", i)?;
            let after = f.metadata()?;
            if (before.ctime(), before.ctime_nsec()) == (after.ctime(), after.ctime_nsec()) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    probe().unwrap_or(false)
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StoreError::InvalidInput(format!("{path:?} contains a NUL byte")))
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| StoreError::InvalidInput(format!("{s:?} contains a NUL byte")))
}

fn last_os_error(context: impl Into<String>) -> StoreError {
    StoreError::io(context, io::Error::last_os_error())
}

fn to_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn meta_of(id: &str, m: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        id: id.to_string(),
        size: m.len(),
        blocks: Some(m.blocks()),
        mode: Some(m.mode() & 0o7777),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        atime: Some(to_time(m.atime(), m.atime_nsec())),
        mtime: to_time(m.mtime(), m.mtime_nsec()),
        ctime: Some(to_time(m.ctime(), m.ctime_nsec())),
        version: format!(
            "{:x}-{:x}-{:x}.{:x}",
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ),
    }
}

/// What tells one content of an upload from a later one.
fn content_stamp(m: &fs::Metadata) -> (u64, i64, i64) {
    (m.len(), m.mtime(), m.mtime_nsec())
}

/// `renameat2(from, to, RENAME_NOREPLACE)` or a plain rename.
fn rename_file(from: &Path, to: &Path, replace: bool) -> io::Result<()> {
    if replace {
        return fs::rename(from, to);
    }
    let (f, t) = (
        CString::new(from.as_os_str().as_bytes())?,
        CString::new(to.as_os_str().as_bytes())?,
    );
    // SAFETY: both pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Tries to take the exclusive lock that marks a live upload.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a valid open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Copies `len` bytes between two files inside the kernel (reflink where the
/// file system can), returning how many were copied before EOF.
fn copy_range(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    len: u64,
) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        let mut off_in = src_off as libc::loff_t;
        let mut off_out = dst_off as libc::loff_t;
        // SAFETY: valid descriptors and offset pointers for the duration of the call.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as u64;
        src_off += n as u64;
        dst_off += n as u64;
    }
    Ok(done)
}

fn set_file_attrs(file: &File, attrs: &SetAttrs) -> io::Result<()> {
    let fd = file.as_raw_fd();
    if attrs.uid.is_some() || attrs.gid.is_some() {
        let uid = attrs.uid.unwrap_or(u32::MAX);
        let gid = attrs.gid.unwrap_or(u32::MAX);
        // SAFETY: fchown on a valid descriptor; -1 keeps the id.
        if unsafe { libc::fchown(fd, uid, gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(mode) = attrs.mode {
        // SAFETY: fchmod on a valid descriptor.
        if unsafe { libc::fchmod(fd, mode & 0o7777) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if attrs.atime.is_some() || attrs.mtime.is_some() {
        let ts = |t: Option<SystemTime>| match t {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            Some(t) => {
                let (sec, nsec) = match t.duration_since(UNIX_EPOCH) {
                    Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                    Err(e) => {
                        let d = e.duration();
                        let mut sec = -(d.as_secs() as i64);
                        let mut nsec = -(d.subsec_nanos() as i64);
                        if nsec < 0 {
                            sec -= 1;
                            nsec += 1_000_000_000;
                        }
                        (sec, nsec)
                    }
                };
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        };
        let times = [ts(attrs.atime), ts(attrs.mtime)];
        // SAFETY: futimens with a valid descriptor and a two-element array.
        if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn fset_xattr(file: &File, name: &str, value: &[u8]) -> io::Result<()> {
    let n = CString::new(name)?;
    // SAFETY: valid descriptor, NUL-terminated name, value buffer of the given length.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Names of the user xattrs of an open file.
fn flist_xattrs(file: &File) -> io::Result<Vec<String>> {
    let fd = file.as_raw_fd();
    // SAFETY: a NULL buffer with size 0 asks for the needed size.
    let size = unsafe { libc::flistxattr(fd, std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: buffer of the size just reported.
    let size = unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(size as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

fn fget_xattr(file: &File, name: &str) -> io::Result<Vec<u8>> {
    let n = CString::new(name)?;
    let fd = file.as_raw_fd();
    loop {
        // SAFETY: a NULL buffer with size 0 asks for the needed size.
        let size = unsafe { libc::fgetxattr(fd, n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buffer of the size just reported.
        let got = unsafe { libc::fgetxattr(fd, n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// Copies the user xattrs (other than imagefs's own, which are recomputed)
/// from one file to another.
fn copy_user_xattrs(from: &File, to: &File) -> io::Result<()> {
    let names = match flist_xattrs(from) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        if name.starts_with("user.") && !name.starts_with(super::XATTR_IMAGEFS_PREFIX) {
            let value = fget_xattr(from, &name)?;
            fset_xattr(to, &name, &value)?;
        }
    }
    Ok(())
}

impl FileStore {
    /// Opens (creating it if missing, as Glance does) the data directory.
    pub fn open(name: &str, cfg: &FileStoreConfig) -> io::Result<FileStore> {
        fs::create_dir_all(&cfg.datadir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create datadir {}: {e}", cfg.datadir.display()),
            )
        })?;
        let datadir = cfg.datadir.canonicalize()?;
        if !datadir.is_dir() {
            return Err(io::Error::other(format!(
                "datadir {} is not a directory",
                datadir.display()
            )));
        }
        let fine_ctime = ctime_is_fine_grained(&datadir);
        tracing::debug!(store = name, fine_ctime, "datadir timestamps probed");
        Ok(FileStore {
            name: name.to_string(),
            datadir,
            file_perm: cfg.file_perm,
            fine_ctime,
        })
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.datadir.join(id)
    }

    fn temp_path(&self, id: &str) -> PathBuf {
        self.datadir.join(format!("{TEMP_PREFIX}{id}"))
    }

    /// Creates the locked temp file of an upload, clearing a dead writer's.
    fn create_temp(&self, id: &str, mode: UploadMode) -> Result<(PathBuf, File)> {
        let temp = self.temp_path(id);
        for _ in 0..2 {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
            {
                Ok(file) => {
                    if !try_lock(&file) {
                        // Someone opened our brand new file and locked it: a
                        // racing gc-then-create; let the caller retry.
                        return Err(StoreError::Busy(id.into(), "upload in progress".into()));
                    }
                    return Ok((temp, file));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let stale = match File::open(&temp) {
                        Ok(f) => try_lock(&f),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                        Err(e) => return Err(StoreError::io(temp.display().to_string(), e)),
                    };
                    if !stale {
                        return Err(match mode {
                            UploadMode::New => StoreError::AlreadyExists(id.into()),
                            _ => {
                                StoreError::Busy(id.into(), "another writer is uploading it".into())
                            }
                        });
                    }
                    tracing::info!(store = %self.name, id, "removing a dead writer's temp file");
                    let _ = fs::remove_file(&temp);
                }
                Err(e) => return Err(StoreError::io(temp.display().to_string(), e)),
            }
        }
        Err(StoreError::Busy(
            id.into(),
            "temp file keeps reappearing".into(),
        ))
    }

    fn head_sync(&self, id: &str) -> Result<ObjectMeta> {
        validate_id(id).map_err(|_| StoreError::NotFound(id.into()))?;
        let m = fs::metadata(self.path(id)).map_err(|e| StoreError::io(id, e))?;
        if !m.is_file() {
            return Err(StoreError::NotFound(id.into()));
        }
        Ok(meta_of(id, &m))
    }

    fn open_image(&self, id: &str) -> Result<File> {
        validate_id(id).map_err(|_| StoreError::NotFound(id.into()))?;
        File::open(self.path(id)).map_err(|e| StoreError::io(id, e))
    }

    fn create_upload_sync(&self, id: &str, mode: UploadMode) -> Result<FileUpload> {
        validate_id(id)?;
        let path = self.path(id);
        let existing = match fs::metadata(&path) {
            Ok(m) if m.is_file() => true,
            Ok(_) => {
                return Err(StoreError::InvalidInput(format!(
                    "{id}: not a regular file"
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::io(id, e)),
        };
        if existing && mode == UploadMode::New {
            return Err(StoreError::AlreadyExists(id.into()));
        }
        if !existing && mode == UploadMode::Modify {
            return Err(StoreError::NotFound(id.into()));
        }
        let (temp, file) = self.create_temp(id, mode)?;
        let mut upload = FileUpload {
            id: id.to_string(),
            path,
            temp,
            file: Some(file),
            len: 0,
            replace: mode != UploadMode::New,
            datadir: self.datadir.clone(),
            file_perm: self.file_perm,
            shareable: self.fine_ctime,
            published: false,
            temp_named: true,
            published_as: None,
        };
        if existing {
            // Keep mode, owner and user xattrs across an overwrite; Modify
            // also keeps the content (copied inside the kernel).
            let prepared = (|| -> Result<()> {
                let old = File::open(&upload.path).map_err(|e| StoreError::io(id, e))?;
                let m = old.metadata().map_err(|e| StoreError::io(id, e))?;
                let f = upload.file();
                let attrs = SetAttrs {
                    mode: Some(m.mode() & 0o7777),
                    uid: Some(m.uid()),
                    gid: Some(m.gid()),
                    ..SetAttrs::default()
                };
                if let Err(e) = set_file_attrs(f, &attrs) {
                    // Not being able to chown is not a reason to refuse a write.
                    tracing::debug!(id, "keeping owner on overwrite failed: {e}");
                    set_file_attrs(
                        f,
                        &SetAttrs {
                            mode: attrs.mode,
                            ..SetAttrs::default()
                        },
                    )
                    .map_err(|e| StoreError::io(id, e))?;
                }
                copy_user_xattrs(&old, f).map_err(|e| StoreError::io(id, e))?;
                if mode == UploadMode::Modify {
                    let n =
                        copy_range(&old, 0, f, 0, m.len()).map_err(|e| StoreError::io(id, e))?;
                    upload.len = n;
                }
                Ok(())
            })();
            if let Err(e) = prepared {
                let _ = fs::remove_file(&upload.temp);
                return Err(e);
            }
        }
        Ok(upload)
    }

    fn gc_sync(&self, older_than: Duration, dry_run: bool) -> Result<Vec<Leftover>> {
        let mut found = Vec::new();
        let now = SystemTime::now();
        let dir = fs::read_dir(&self.datadir)
            .map_err(|e| StoreError::io(self.datadir.display().to_string(), e))?;
        for entry in dir {
            let entry = entry.map_err(|e| StoreError::io("readdir", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(m) = file.metadata() else { continue };
            let age = now
                .duration_since(meta_of(&name, &m).mtime)
                .unwrap_or_default();
            if age < older_than || !try_lock(&file) {
                continue; // too young, or a live writer holds it
            }
            let removed = !dry_run && fs::remove_file(&path).is_ok();
            found.push(Leftover {
                name,
                bytes: m.len(),
                age,
                removed,
            });
        }
        Ok(found)
    }
}

#[async_trait]
impl Store for FileStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "file"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: false,
            random_write: true,
            modify: true,
            server_side_copy: true,
            cheap_clone: false,
            local_files: true,
            metadata: true,
            readers_outlive_delete: false,
        }
    }

    fn location(&self, id: &str) -> String {
        format!("file://{}", self.path(id).display())
    }

    fn local_path(&self, id: &str) -> Option<PathBuf> {
        validate_id(id).ok()?;
        Some(self.path(id))
    }

    async fn root_attrs(&self) -> Result<Option<ObjectMeta>> {
        let dir = self.datadir.clone();
        blocking(move || {
            let m = fs::metadata(&dir).map_err(|e| StoreError::io(dir.display().to_string(), e))?;
            Ok(Some(meta_of("", &m)))
        })
        .await
    }

    async fn set_root_attrs(&self, attrs: &SetAttrs) -> Result<()> {
        let dir = self.datadir.clone();
        let attrs = attrs.clone();
        blocking(move || {
            let f = File::open(&dir).map_err(|e| StoreError::io(dir.display().to_string(), e))?;
            set_file_attrs(&f, &attrs).map_err(|e| StoreError::io(dir.display().to_string(), e))
        })
        .await
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>> {
        let dir = self.datadir.clone();
        blocking(move || {
            let mut out = Vec::new();
            let entries =
                fs::read_dir(&dir).map_err(|e| StoreError::io(dir.display().to_string(), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io("readdir", e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                match entry.metadata() {
                    Ok(m) if m.is_file() => out.push(meta_of(name, &m)),
                    _ => continue, // vanished, or not an image
                }
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }

    async fn head(&self, id: &str) -> Result<ObjectMeta> {
        let this = self.clone();
        let id = id.to_string();
        blocking(move || this.head_sync(&id)).await
    }

    async fn read(&self, id: &str, offset: u64, len: u32) -> Result<Bytes> {
        let file = self.open_image(id)?;
        let id = id.to_string();
        blocking(move || read_full(&file, offset, len).map_err(|e| StoreError::io(id, e))).await
    }

    async fn create_upload(&self, id: &str, mode: UploadMode) -> Result<Box<dyn Upload>> {
        let this = self.clone();
        let id = id.to_string();
        let upload = blocking(move || this.create_upload_sync(&id, mode)).await?;
        Ok(Box::new(upload))
    }

    async fn open_in_place(&self, id: &str) -> Result<Box<dyn Upload>> {
        validate_id(id).map_err(|_| StoreError::NotFound(id.into()))?;
        if !self.fine_ctime {
            return Err(StoreError::NotSupported("writing an image in place"));
        }
        let path = self.path(id);
        let id = id.to_string();
        let this = self.clone();
        let upload = blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io(&id, e))?;
            Ok(FileUpload {
                len: file.metadata().map_err(|e| StoreError::io(&id, e))?.len(),
                temp: path.clone(),
                path,
                id,
                file: Some(file),
                replace: true,
                datadir: this.datadir.clone(),
                file_perm: this.file_perm,
                shareable: true,
                published: true,
                temp_named: false,
                published_as: None,
            })
        })
        .await?;
        Ok(Box::new(upload))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        validate_id(id).map_err(|_| StoreError::NotFound(id.into()))?;
        let path = self.path(id);
        let id = id.to_string();
        blocking(move || {
            let m = fs::symlink_metadata(&path).map_err(|e| StoreError::io(&id, e))?;
            if !m.is_file() {
                return Err(StoreError::NotFound(id));
            }
            fs::remove_file(&path).map_err(|e| StoreError::io(id, e))
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        validate_id(from).map_err(|_| StoreError::NotFound(from.into()))?;
        validate_id(to)?;
        let (src, dst) = (self.path(from), self.path(to));
        let from = from.to_string();
        blocking(move || rename_file(&src, &dst, replace).map_err(|e| StoreError::io(from, e)))
            .await
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let src = self.open_image(from)?;
        let this = self.clone();
        let (from, to) = (from.to_string(), to.to_string());
        blocking(move || {
            let mut up = this.create_upload_sync(&to, UploadMode::New)?;
            let len = src.metadata().map_err(|e| StoreError::io(&from, e))?.len();
            let result = copy_range(&src, 0, up.file(), 0, len)
                .and_then(|_| copy_user_xattrs(&src, up.file()))
                .map_err(|e| StoreError::io(&from, e));
            if let Err(e) = result {
                up.abort_sync();
                return Err(e);
            }
            up.len = len;
            up.commit_sync(None, false).map(|_| ())
        })
        .await
    }

    async fn set_attrs(&self, id: &str, attrs: &SetAttrs) -> Result<()> {
        let file = self.open_image(id)?;
        let (attrs, id) = (attrs.clone(), id.to_string());
        blocking(move || set_file_attrs(&file, &attrs).map_err(|e| StoreError::io(id, e))).await
    }

    async fn get_xattr(&self, id: &str, name: &str) -> Result<Vec<u8>> {
        let file = self.open_image(id)?;
        let name = name.to_string();
        blocking(move || fget_xattr(&file, &name).map_err(|e| StoreError::io(name, e))).await
    }

    async fn list_xattrs(&self, id: &str) -> Result<Vec<String>> {
        let file = self.open_image(id)?;
        let id = id.to_string();
        blocking(move || match flist_xattrs(&file) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
            other => other.map_err(|e| StoreError::io(id, e)),
        })
        .await
    }

    async fn set_xattr(&self, id: &str, name: &str, value: &[u8], mode: XattrMode) -> Result<()> {
        let path = cpath(&self.path(id))?;
        validate_id(id).map_err(|_| StoreError::NotFound(id.into()))?;
        let n = cstr(name)?;
        let value = value.to_vec();
        let flags = match mode {
            XattrMode::Any => 0,
            XattrMode::Create => libc::XATTR_CREATE,
            XattrMode::Replace => libc::XATTR_REPLACE,
        };
        let name = name.to_string();
        blocking(move || {
            // SAFETY: valid NUL-terminated path and name, value buffer of its length.
            let rc = unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(last_os_error(name))
            }
        })
        .await
    }

    async fn remove_xattr(&self, id: &str, name: &str) -> Result<()> {
        validate_id(id).map_err(|_| StoreError::NotFound(id.into()))?;
        let path = cpath(&self.path(id))?;
        let n = cstr(name)?;
        let name = name.to_string();
        blocking(move || {
            // SAFETY: valid NUL-terminated path and name.
            if unsafe { libc::removexattr(path.as_ptr(), n.as_ptr()) } == 0 {
                Ok(())
            } else {
                Err(last_os_error(name))
            }
        })
        .await
    }

    async fn statfs(&self) -> Result<StatFs> {
        let path = cpath(&self.datadir)?;
        blocking(move || {
            // SAFETY: statvfs fills the zeroed struct we pass.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
                return Err(last_os_error("statvfs"));
            }
            let frsize = st.f_frsize as u64;
            Ok(StatFs {
                total_bytes: st.f_blocks as u64 * frsize,
                free_bytes: st.f_bfree as u64 * frsize,
                avail_bytes: st.f_bavail as u64 * frsize,
                files: st.f_files as u64,
                files_free: st.f_ffree as u64,
                block_size: st.f_bsize as u32,
                name_max: (st.f_namemax as u32).min(255 - TEMP_PREFIX.len() as u32),
            })
        })
        .await
    }

    async fn gc(&self, older_than: Duration, dry_run: bool) -> Result<Vec<Leftover>> {
        let this = self.clone();
        blocking(move || this.gc_sync(older_than, dry_run)).await
    }
}

/// Reads up to `len` bytes at `offset`, short only at end of file.
fn read_full(file: &File, offset: u64, len: u32) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(Bytes::from(buf))
}

/// An upload into `<datadir>/.imagefs-tmp-<id>`.
pub struct FileUpload {
    id: String,
    path: PathBuf,
    temp: PathBuf,
    /// None once committed or aborted.
    file: Option<File>,
    len: u64,
    replace: bool,
    datadir: PathBuf,
    file_perm: Option<u32>,
    /// The temp file may be handed to the kernel (see `local_file`).
    shareable: bool,
    /// `publish` made the upload's content `<id>`.
    published: bool,
    /// `temp` still names the upload's file (a publish renames it to `<id>`;
    /// `open_in_place` writes `<id>` itself and has none).
    temp_named: bool,
    /// Size and mtime of the content the last publish made `<id>`.
    published_as: Option<(u64, i64, i64)>,
}

impl FileUpload {
    fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("upload used after commit or abort")
    }

    /// Hands the temp file to blocking work, getting it back after.
    async fn with_file<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let file = self.file.take().expect("upload used after commit or abort");
        let id = self.id.clone();
        let (file, out) = tokio::task::spawn_blocking(move || {
            let out = f(&file);
            (file, out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("worker thread failed: {e}")))?;
        self.file = Some(file);
        out.map_err(|e| StoreError::io(id, e))
    }

    /// Checksums and the configured mode onto the temp file, and its data
    /// onto stable storage if `durable`.
    fn finish_file(&self, file: &File, sums: &Option<Checksums>, durable: bool) -> Result<()> {
        let id = &self.id;
        if let Some(s) = sums {
            for (name, value) in [
                (XATTR_CHECKSUM, &s.md5),
                (XATTR_OS_HASH_ALGO, &s.os_hash_algo),
                (XATTR_OS_HASH_VALUE, &s.os_hash_value),
            ] {
                // Unchanged values are not rewritten: that would move ctime.
                if fget_xattr(file, name).is_ok_and(|v| v == value.as_bytes()) {
                    continue;
                }
                if let Err(e) = fset_xattr(file, name, value.as_bytes()) {
                    // A file system without user xattrs still stores the image.
                    tracing::warn!(id, "cannot store {name}: {e}");
                }
            }
        }
        let mode = file.metadata().map_err(|e| StoreError::io(id, e))?.mode() & 0o7777;
        if let Some(perm) = self.file_perm.filter(|p| *p > 0 && *p != mode) {
            set_file_attrs(
                file,
                &SetAttrs {
                    mode: Some(perm),
                    ..SetAttrs::default()
                },
            )
            .map_err(|e| StoreError::io(id, e))?;
        }
        if durable {
            file.sync_all().map_err(|e| StoreError::io(id, e))?;
        }
        Ok(())
    }

    /// Whether `<id>` is (still) the temp file itself, linked by `publish`.
    fn linked(&self, file: &File) -> bool {
        let (Ok(a), Ok(b)) = (file.metadata(), fs::metadata(&self.path)) else {
            return false;
        };
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }

    fn sync_datadir(&self) -> Result<()> {
        File::open(&self.datadir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(&self.id, e))
    }

    /// Whether `<id>` must be (re)pointed at the upload: it is not the upload's
    /// file, and the upload changed since a publish made it `<id>` (a writer
    /// that replaced `<id>` after that publish keeps its image).
    fn needs_linking(&self, file: &File) -> bool {
        if self.linked(file) {
            return false;
        }
        match (self.published_as, file.metadata()) {
            (Some(p), Ok(m)) => content_stamp(&m) != p,
            _ => true,
        }
    }

    /// Makes `<id>` name the upload's content: the temp file renamed over it
    /// or, once a publish has moved the temp file and something else has
    /// taken `<id>` since, a copy of the content. Returns the copy.
    fn link_as_id(
        &mut self,
        file: &File,
        sums: &Option<Checksums>,
        durable: bool,
    ) -> Result<Option<File>> {
        let id = self.id.clone();
        let replace = self.replace || self.published;
        if self.temp_named {
            rename_file(&self.temp, &self.path, replace).map_err(|e| StoreError::io(&id, e))?;
            self.temp_named = false;
            return Ok(None);
        }
        let side = self.datadir.join(format!("{TEMP_PREFIX}{id}.publish"));
        let copied = (|| -> Result<File> {
            let m = file.metadata().map_err(|e| StoreError::io(&id, e))?;
            let dst = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&side)
                .map_err(|e| StoreError::io(&id, e))?;
            copy_range(file, 0, &dst, 0, m.len()).map_err(|e| StoreError::io(&id, e))?;
            set_file_attrs(
                &dst,
                &SetAttrs {
                    mode: Some(m.mode() & 0o7777),
                    ..SetAttrs::default()
                },
            )
            .map_err(|e| StoreError::io(&id, e))?;
            self.finish_file(&dst, sums, durable)?;
            rename_file(&side, &self.path, replace).map_err(|e| StoreError::io(&id, e))?;
            Ok(dst)
        })();
        if copied.is_err() {
            let _ = fs::remove_file(&side);
        }
        copied.map(Some)
    }

    fn publish_sync(&mut self, sums: Option<Checksums>, durable: bool) -> Result<ObjectMeta> {
        let file = self.file.take().expect("upload used after commit or abort");
        let result = (|| -> Result<ObjectMeta> {
            self.finish_file(&file, &sums, durable)?;
            let mut copy = None;
            if self.needs_linking(&file) {
                // A new image fails with EEXIST if another writer won.
                copy = self.link_as_id(&file, &sums, durable)?;
                self.published = true;
            }
            if durable {
                self.sync_datadir()?;
            }
            let m = file.metadata().map_err(|e| StoreError::io(&self.id, e))?;
            self.published_as = Some(content_stamp(&m));
            let m = match &copy {
                Some(c) => c.metadata().map_err(|e| StoreError::io(&self.id, e))?,
                None => m,
            };
            Ok(meta_of(&self.id, &m))
        })();
        self.file = Some(file);
        result
    }

    fn commit_sync(&mut self, sums: Option<Checksums>, durable: bool) -> Result<ObjectMeta> {
        let file = self.file.take().expect("upload committed twice");
        let id = self.id.clone();
        let result = (|| -> Result<ObjectMeta> {
            self.finish_file(&file, &sums, durable)?;
            // A published upload usually is `<id>` already: nothing moves,
            // so the times a reader saw at close stay as they were.
            let copy = if self.needs_linking(&file) {
                self.link_as_id(&file, &sums, durable)?
            } else {
                None
            };
            if durable {
                self.sync_datadir()?;
            }
            let m = copy.as_ref().unwrap_or(&file).metadata();
            Ok(meta_of(&id, &m.map_err(|e| StoreError::io(&id, e))?))
        })();
        if result.is_err() && self.temp_named {
            let _ = fs::remove_file(&self.temp);
        }
        drop(file); // releases the lock only after the rename
        result
    }

    fn abort_sync(&mut self) {
        if self.file.take().is_some() && self.temp_named {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl Drop for FileUpload {
    fn drop(&mut self) {
        self.abort_sync();
    }
}

#[async_trait]
impl Upload for FileUpload {
    fn id(&self) -> &str {
        &self.id
    }

    /// The temp file's name goes (its descriptor keeps the data), so a new
    /// upload of the id can make its own.
    async fn orphan(&mut self) -> Result<()> {
        if self.temp_named {
            let temp = self.temp.clone();
            blocking(move || match fs::remove_file(&temp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(StoreError::io(temp.display().to_string(), e))
                }
                _ => Ok(()),
            })
            .await?;
            self.temp_named = false;
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        // The kernel may write the file directly (local_file): ask it.
        match self.file.as_ref().map(File::metadata) {
            Some(Ok(m)) => m.len(),
            _ => self.len,
        }
    }

    fn local_file(&self) -> Option<File> {
        self.file
            .as_ref()
            .filter(|_| self.shareable)
            .and_then(|f| f.try_clone().ok())
    }

    fn stat(&self) -> Option<ObjectMeta> {
        let m = self.file.as_ref()?.metadata().ok()?;
        Some(meta_of(&self.id, &m))
    }

    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<()> {
        let end = offset + data.len() as u64;
        self.with_file(move |f| f.write_all_at(&data, offset))
            .await?;
        self.len = self.len.max(end);
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes> {
        let file = self
            .file()
            .try_clone()
            .map_err(|e| StoreError::io(&self.id, e))?;
        let id = self.id.clone();
        blocking(move || read_full(&file, offset, len).map_err(|e| StoreError::io(id, e))).await
    }

    async fn set_len(&mut self, len: u64) -> Result<()> {
        self.with_file(move |f| f.set_len(len)).await?;
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
        validate_id(src).map_err(|_| StoreError::NotFound(src.into()))?;
        let src_file = File::open(self.datadir.join(src)).map_err(|e| StoreError::io(src, e))?;
        let n = self
            .with_file(move |f| copy_range(&src_file, src_offset, f, offset, len))
            .await?;
        self.len = self.len.max(offset + n);
        Ok(n)
    }

    async fn set_attrs(&mut self, attrs: &SetAttrs) -> Result<()> {
        let attrs = attrs.clone();
        self.with_file(move |f| set_file_attrs(f, &attrs)).await
    }

    async fn publish(&mut self, sums: Option<Checksums>, durable: bool) -> Result<ObjectMeta> {
        let file = self.file.take().expect("upload used after commit or abort");
        let mut me = FileUpload {
            file: Some(file),
            id: self.id.clone(),
            path: self.path.clone(),
            temp: self.temp.clone(),
            len: self.len,
            replace: self.replace,
            datadir: self.datadir.clone(),
            file_perm: self.file_perm,
            shareable: self.shareable,
            published: self.published,
            temp_named: self.temp_named,
            published_as: self.published_as,
        };
        let (me, result) = tokio::task::spawn_blocking(move || {
            let r = me.publish_sync(sums, durable);
            (me, r)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("worker thread failed: {e}")))?;
        let mut me = me;
        self.file = me.file.take();
        self.published = me.published;
        self.temp_named = me.temp_named;
        self.published_as = me.published_as;
        result
    }

    async fn commit(
        mut self: Box<Self>,
        sums: Option<Checksums>,
        durable: bool,
    ) -> Result<ObjectMeta> {
        blocking(move || self.commit_sync(sums, durable)).await
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        blocking(move || {
            self.abort_sync();
            Ok(())
        })
        .await
    }
}
