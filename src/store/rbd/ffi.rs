//! librados and librbd, wrapped safely: a cluster connection, a pool's io
//! context and an open image, each closed on drop, with the synchronous
//! calls the RBD store needs and asynchronous reads and writes whose
//! completion wakes a future. librados comes from the `ceph` crate's
//! bindings; librbd from the small `extern "C"` block below, written against
//! Ceph Pacific's `rbd/librbd.h`. This is the only module with `unsafe`.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ceph::rados::{
    rados_cluster_fsid, rados_cluster_stat, rados_conf_get, rados_conf_read_file, rados_conf_set,
    rados_connect, rados_create2, rados_get_instance_id, rados_ioctx_create, rados_ioctx_destroy,
    rados_ioctx_t, rados_notify_ack, rados_read, rados_shutdown, rados_t, rados_unwatch2,
    rados_watch2, rados_watch_flush, Struct_rados_cluster_stat_t,
};
use tokio::sync::oneshot;

/// A failed librados/librbd call: which one, and the errno it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdError {
    pub op: &'static str,
    pub errno: i32,
}

impl std::fmt::Display for RbdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "{}: {msg}", self.op)
    }
}

impl std::error::Error for RbdError {}

pub type RbdResult<T> = std::result::Result<T, RbdError>;

fn check(op: &'static str, ret: c_int) -> RbdResult<c_int> {
    if ret < 0 {
        Err(RbdError { op, errno: -ret })
    } else {
        Ok(ret)
    }
}

fn cstr(op: &'static str, s: &str) -> RbdResult<CString> {
    CString::new(s).map_err(|_| RbdError {
        op,
        errno: libc::EINVAL,
    })
}

/// Owned copy of a C string librbd handed out (NULL: empty).
fn owned(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: librbd returns NUL-terminated strings that live until the
    // matching cleanup call, which runs after this copy.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

// ---- librbd ----------------------------------------------------------------

type RbdImageT = *mut c_void;
type RbdOptionsT = *mut c_void;
type RbdCompletionT = *mut c_void;
type RbdCallbackT = extern "C" fn(RbdCompletionT, *mut c_void);

/// `rados_pool_stat_t` as Pacific's librados.h has it. The `ceph` crate's
/// `Struct_rados_pool_stat_t` predates the last four fields: librados would
/// write 32 bytes past it.
#[repr(C)]
#[derive(Default)]
struct RadosPoolStat {
    num_bytes: u64,
    num_kb: u64,
    num_objects: u64,
    num_object_clones: u64,
    num_object_copies: u64,
    num_objects_missing_on_primary: u64,
    num_objects_unfound: u64,
    num_objects_degraded: u64,
    num_rd: u64,
    num_rd_kb: u64,
    num_wr: u64,
    num_wr_kb: u64,
    num_user_bytes: u64,
    compressed_bytes_orig: u64,
    compressed_bytes: u64,
    compressed_bytes_alloc: u64,
}

#[repr(C)]
struct RbdImageSpec {
    id: *mut c_char,
    name: *mut c_char,
}

#[repr(C)]
struct RbdLinkedImageSpec {
    pool_id: i64,
    pool_name: *mut c_char,
    pool_namespace: *mut c_char,
    image_id: *mut c_char,
    image_name: *mut c_char,
    trash: bool,
}

#[repr(C)]
struct RbdSnapSpec {
    id: u64,
    namespace_type: c_int,
    name: *mut c_char,
}

#[repr(C)]
struct RbdSnapInfo {
    id: u64,
    size: u64,
    name: *const c_char,
}

#[repr(C)]
struct RbdImageInfo {
    size: u64,
    obj_size: u64,
    num_objs: u64,
    order: c_int,
    block_name_prefix: [c_char; 24],
    parent_pool: i64,
    parent_name: [c_char; 96],
}

#[repr(C)]
struct RbdImageWatcher {
    addr: *mut c_char,
    id: i64,
    cookie: u64,
}

#[repr(C)]
struct RbdTrashImageInfo {
    id: *mut c_char,
    name: *mut c_char,
    source: c_int,
    deletion_time: libc::time_t,
    deferment_end_time: libc::time_t,
}

const RBD_IMAGE_OPTION_FORMAT: c_int = 0;
const RBD_IMAGE_OPTION_FEATURES: c_int = 1;
const RBD_IMAGE_OPTION_ORDER: c_int = 2;

#[link(name = "rados")]
extern "C" {
    fn rados_ioctx_pool_stat(io: rados_ioctx_t, stats: *mut RadosPoolStat) -> c_int;
}

#[link(name = "rbd")]
extern "C" {
    fn rbd_image_options_create(opts: *mut RbdOptionsT);
    fn rbd_image_options_destroy(opts: RbdOptionsT);
    fn rbd_image_options_set_uint64(opts: RbdOptionsT, optname: c_int, optval: u64) -> c_int;
    fn rbd_list2(io: rados_ioctx_t, images: *mut RbdImageSpec, max: *mut usize) -> c_int;
    fn rbd_image_spec_list_cleanup(images: *mut RbdImageSpec, n: usize);
    fn rbd_create4(io: rados_ioctx_t, name: *const c_char, size: u64, opts: RbdOptionsT) -> c_int;
    fn rbd_clone3(
        p_io: rados_ioctx_t,
        p_name: *const c_char,
        p_snap: *const c_char,
        c_io: rados_ioctx_t,
        c_name: *const c_char,
        opts: RbdOptionsT,
    ) -> c_int;
    fn rbd_remove(io: rados_ioctx_t, name: *const c_char) -> c_int;
    fn rbd_rename(io: rados_ioctx_t, src: *const c_char, dst: *const c_char) -> c_int;
    fn rbd_trash_move(io: rados_ioctx_t, name: *const c_char, delay: u64) -> c_int;
    fn rbd_open_by_id(
        io: rados_ioctx_t,
        id: *const c_char,
        image: *mut RbdImageT,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_open_by_id_read_only(
        io: rados_ioctx_t,
        id: *const c_char,
        image: *mut RbdImageT,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_trash_list(io: rados_ioctx_t, entries: *mut RbdTrashImageInfo, n: *mut usize) -> c_int;
    fn rbd_trash_list_cleanup(entries: *mut RbdTrashImageInfo, n: usize);
    fn rbd_trash_remove(io: rados_ioctx_t, id: *const c_char, force: bool) -> c_int;
    fn rbd_open(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut RbdImageT,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_open_read_only(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut RbdImageT,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_close(image: RbdImageT) -> c_int;
    fn rbd_stat(image: RbdImageT, info: *mut RbdImageInfo, infosize: usize) -> c_int;
    fn rbd_resize(image: RbdImageT, size: u64) -> c_int;
    fn rbd_get_id(image: RbdImageT, id: *mut c_char, len: usize) -> c_int;
    fn rbd_get_create_timestamp(image: RbdImageT, ts: *mut libc::timespec) -> c_int;
    fn rbd_get_parent(
        image: RbdImageT,
        parent: *mut RbdLinkedImageSpec,
        snap: *mut RbdSnapSpec,
    ) -> c_int;
    fn rbd_linked_image_spec_cleanup(spec: *mut RbdLinkedImageSpec);
    fn rbd_snap_spec_cleanup(spec: *mut RbdSnapSpec);
    fn rbd_snap_list(image: RbdImageT, snaps: *mut RbdSnapInfo, max: *mut c_int) -> c_int;
    fn rbd_snap_list_end(snaps: *mut RbdSnapInfo);
    fn rbd_snap_create(image: RbdImageT, name: *const c_char) -> c_int;
    fn rbd_snap_set(image: RbdImageT, name: *const c_char) -> c_int;
    fn rbd_snap_remove(image: RbdImageT, name: *const c_char) -> c_int;
    fn rbd_snap_protect(image: RbdImageT, name: *const c_char) -> c_int;
    fn rbd_snap_unprotect(image: RbdImageT, name: *const c_char) -> c_int;
    fn rbd_snap_is_protected(image: RbdImageT, name: *const c_char, prot: *mut c_int) -> c_int;
    fn rbd_flatten(image: RbdImageT) -> c_int;
    fn rbd_list_children3(
        image: RbdImageT,
        images: *mut RbdLinkedImageSpec,
        max: *mut usize,
    ) -> c_int;
    fn rbd_linked_image_spec_list_cleanup(specs: *mut RbdLinkedImageSpec, n: usize);
    fn rbd_pool_metadata_get(
        io: rados_ioctx_t,
        key: *const c_char,
        value: *mut c_char,
        len: *mut usize,
    ) -> c_int;
    fn rbd_pool_metadata_set(io: rados_ioctx_t, key: *const c_char, value: *const c_char) -> c_int;
    fn rbd_watchers_list(image: RbdImageT, w: *mut RbdImageWatcher, max: *mut usize) -> c_int;
    fn rbd_watchers_list_cleanup(w: *mut RbdImageWatcher, n: usize);
    fn rbd_metadata_get(
        image: RbdImageT,
        key: *const c_char,
        value: *mut c_char,
        len: *mut usize,
    ) -> c_int;
    fn rbd_metadata_set(image: RbdImageT, key: *const c_char, value: *const c_char) -> c_int;
    fn rbd_metadata_remove(image: RbdImageT, key: *const c_char) -> c_int;
    fn rbd_metadata_list(
        image: RbdImageT,
        start: *const c_char,
        max: u64,
        keys: *mut c_char,
        key_len: *mut usize,
        values: *mut c_char,
        vals_len: *mut usize,
    ) -> c_int;
    fn rbd_aio_create_completion(
        arg: *mut c_void,
        cb: RbdCallbackT,
        c: *mut RbdCompletionT,
    ) -> c_int;
    fn rbd_aio_get_return_value(c: RbdCompletionT) -> isize;
    fn rbd_aio_release(c: RbdCompletionT);
    fn rbd_aio_wait_for_complete(c: RbdCompletionT) -> c_int;
    fn rbd_aio_read(
        image: RbdImageT,
        off: u64,
        len: usize,
        buf: *mut c_char,
        c: RbdCompletionT,
    ) -> c_int;
    fn rbd_aio_write(
        image: RbdImageT,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: RbdCompletionT,
    ) -> c_int;
    fn rbd_aio_writev(
        image: RbdImageT,
        iov: *const libc::iovec,
        iovcnt: c_int,
        off: u64,
        c: RbdCompletionT,
    ) -> c_int;
    fn rbd_aio_flush(image: RbdImageT, c: RbdCompletionT) -> c_int;
}

/// Calls `f(ptr, &mut len)` with a buffer grown until it stops answering
/// ERANGE; returns the buffer and the final len.
fn grow<T: Copy>(
    op: &'static str,
    zero: T,
    mut f: impl FnMut(*mut T, &mut usize) -> c_int,
) -> RbdResult<(Vec<T>, c_int, usize)> {
    let mut cap = 64usize;
    loop {
        let mut buf = vec![zero; cap];
        let mut len = cap;
        let ret = f(buf.as_mut_ptr(), &mut len);
        if ret == -libc::ERANGE {
            cap = len.max(cap * 2);
            continue;
        }
        let ret = check(op, ret)?;
        return Ok((buf, ret, len));
    }
}

// ---- cluster ---------------------------------------------------------------

/// A connection to a Ceph cluster (librados client).
pub struct Cluster {
    rados: rados_t,
}

// SAFETY: a librados client handle may be used from any thread at once.
unsafe impl Send for Cluster {}
unsafe impl Sync for Cluster {}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: created by rados_create2, shut down once.
        unsafe { rados_shutdown(self.rados) }
    }
}

impl Cluster {
    /// Connects as `client.<user>` (None: admin) with the settings of
    /// `conf`. Non-zero timeouts bound the connection and every monitor
    /// operation (`timeout`) and every OSD operation (`osd_timeout`), so
    /// that an outage fails instead of hanging.
    pub fn connect(
        user: Option<&str>,
        conf: &Path,
        timeout: Duration,
        osd_timeout: Duration,
    ) -> RbdResult<Cluster> {
        let name = cstr(
            "rados_create2",
            &format!("client.{}", user.unwrap_or("admin")),
        )?;
        let cluster = cstr("rados_create2", "ceph")?;
        let mut rados: rados_t = ptr::null_mut();
        // SAFETY: out-pointer to a handle; strings are NUL-terminated.
        check("rados_create2", unsafe {
            rados_create2(&mut rados, cluster.as_ptr(), name.as_ptr(), 0)
        })?;
        let c = Cluster { rados };
        let path = cstr(
            "rados_conf_read_file",
            conf.to_str().ok_or(RbdError {
                op: "rados_conf_read_file",
                errno: libc::EINVAL,
            })?,
        )?;
        // SAFETY: valid handle and path.
        check("rados_conf_read_file", unsafe {
            rados_conf_read_file(c.rados, path.as_ptr())
        })?;
        if !timeout.is_zero() {
            let secs = timeout.as_secs().max(1);
            c.conf_set("client_mount_timeout", &secs.to_string())?;
            c.conf_set("rados_mon_op_timeout", &secs.to_string())?;
        }
        if !osd_timeout.is_zero() {
            let secs = osd_timeout.as_secs().max(1);
            c.conf_set("rados_osd_op_timeout", &secs.to_string())?;
        }
        // SAFETY: valid, configured handle.
        check("rados_connect", unsafe { rados_connect(c.rados) })?;
        Ok(c)
    }

    fn conf_set(&self, key: &str, value: &str) -> RbdResult<()> {
        let k = cstr("rados_conf_set", key)?;
        let v = cstr("rados_conf_set", value)?;
        // SAFETY: valid handle and strings.
        check("rados_conf_set", unsafe {
            rados_conf_set(self.rados, k.as_ptr(), v.as_ptr())
        })?;
        Ok(())
    }

    /// A configuration value as the client sees it (ceph.conf or default).
    pub fn conf_get(&self, key: &str) -> Option<String> {
        let k = cstr("rados_conf_get", key).ok()?;
        let mut buf = vec![0 as c_char; 4096];
        // SAFETY: buffer of the given length.
        let ret = unsafe { rados_conf_get(self.rados, k.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        (ret == 0).then(|| owned(buf.as_ptr()))
    }

    pub fn fsid(&self) -> RbdResult<String> {
        let mut buf = vec![0 as c_char; 64];
        // SAFETY: buffer of the given length.
        let n = check("rados_cluster_fsid", unsafe {
            rados_cluster_fsid(self.rados, buf.as_mut_ptr(), buf.len())
        })?;
        let bytes: Vec<u8> = buf[..n as usize].iter().map(|&c| c as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// This client's global id (as watchers list it).
    pub fn instance_id(&self) -> u64 {
        // SAFETY: connected handle.
        unsafe { rados_get_instance_id(self.rados) }
    }

    /// (total, used, available) bytes of the cluster.
    pub fn usage(&self) -> RbdResult<(u64, u64, u64)> {
        let mut st = Struct_rados_cluster_stat_t::default();
        // SAFETY: out-pointer to a plain struct.
        check("rados_cluster_stat", unsafe {
            rados_cluster_stat(self.rados, &mut st)
        })?;
        Ok((st.kb << 10, st.kb_used << 10, st.kb_avail << 10))
    }
}

// ---- pool ------------------------------------------------------------------

/// One pool's io context.
pub struct Pool {
    io: rados_ioctx_t,
    cluster: Arc<Cluster>,
}

// SAFETY: io contexts are thread-safe in librados.
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create, destroyed once, before the
        // cluster (which this holds).
        unsafe { rados_ioctx_destroy(self.io) }
    }
}

/// How a new image is laid out.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub order: u8,
    pub features: u64,
}

struct Options(RbdOptionsT);

impl Options {
    fn new(layout: Layout) -> RbdResult<Options> {
        let mut o: RbdOptionsT = ptr::null_mut();
        // SAFETY: out-pointer; destroyed in Drop.
        unsafe { rbd_image_options_create(&mut o) };
        let opts = Options(o);
        for (k, v) in [
            (RBD_IMAGE_OPTION_FORMAT, 2),
            (RBD_IMAGE_OPTION_FEATURES, layout.features),
            (RBD_IMAGE_OPTION_ORDER, layout.order as u64),
        ] {
            // SAFETY: valid options handle.
            check("rbd_image_options_set_uint64", unsafe {
                rbd_image_options_set_uint64(opts.0, k, v)
            })?;
        }
        Ok(opts)
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create.
        unsafe { rbd_image_options_destroy(self.0) }
    }
}

/// An image in the RBD trash.
#[derive(Debug, Clone)]
pub struct TrashEntry {
    pub id: String,
    pub name: String,
    /// Until when the trash keeps it (removal before needs force).
    pub keep_until: SystemTime,
}

impl Pool {
    pub fn open(cluster: Arc<Cluster>, pool: &str) -> RbdResult<Pool> {
        let name = cstr("rados_ioctx_create", pool)?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected cluster, out-pointer.
        check("rados_ioctx_create", unsafe {
            rados_ioctx_create(cluster.rados, name.as_ptr(), &mut io)
        })?;
        Ok(Pool { io, cluster })
    }

    /// The RBD id of image `name` as its id object `rbd_id.<name>` holds
    /// it now (a length-prefixed string); ENOENT once the name is gone.
    pub fn image_id(&self, name: &str) -> RbdResult<String> {
        let oid = cstr("rados_read", &format!("rbd_id.{name}"))?;
        let mut buf = vec![0 as c_char; 256];
        // SAFETY: buffer of the given length.
        let n = check("rados_read", unsafe {
            rados_read(self.io, oid.as_ptr(), buf.as_mut_ptr(), buf.len(), 0)
        })? as usize;
        let bytes: Vec<u8> = buf[..n].iter().map(|&c| c as u8).collect();
        let len = bytes
            .get(..4)
            .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
        match len.and_then(|len| bytes.get(4..4 + len)) {
            Some(id) => Ok(String::from_utf8_lossy(id).into_owned()),
            None => Err(RbdError {
                op: "rados_read",
                errno: libc::EINVAL,
            }),
        }
    }

    /// (bytes, objects) stored in the pool.
    pub fn usage(&self) -> RbdResult<(u64, u64)> {
        let mut st = RadosPoolStat::default();
        // SAFETY: out-pointer to a struct of the size librados writes.
        check("rados_ioctx_pool_stat", unsafe {
            rados_ioctx_pool_stat(self.io, &mut st)
        })?;
        Ok((st.num_bytes, st.num_objects))
    }

    /// Names of every image in the pool.
    pub fn list(&self) -> RbdResult<Vec<String>> {
        let zero = RbdImageSpec {
            id: ptr::null_mut(),
            name: ptr::null_mut(),
        };
        let mut cap = 64usize;
        loop {
            let mut specs: Vec<RbdImageSpec> = (0..cap).map(|_| RbdImageSpec { ..zero }).collect();
            let mut n = cap;
            // SAFETY: array of `cap` specs; filled entries are cleaned up.
            let ret = unsafe { rbd_list2(self.io, specs.as_mut_ptr(), &mut n) };
            if ret == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_list2", ret)?;
            let names = specs[..n].iter().map(|s| owned(s.name)).collect();
            // SAFETY: the first n entries were filled by rbd_list2.
            unsafe { rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
            return Ok(names);
        }
    }

    /// Creates image `name` (EEXIST if the name is taken).
    pub fn create(&self, name: &str, size: u64, layout: Layout) -> RbdResult<()> {
        let n = cstr("rbd_create4", name)?;
        let opts = Options::new(layout)?;
        // SAFETY: valid io context, name, options.
        check("rbd_create4", unsafe {
            rbd_create4(self.io, n.as_ptr(), size, opts.0)
        })?;
        Ok(())
    }

    /// Copy-on-write clone of `parent@snap` (protected) as `child`.
    pub fn clone_image(
        &self,
        parent: &str,
        snap: &str,
        child: &str,
        layout: Layout,
    ) -> RbdResult<()> {
        let p = cstr("rbd_clone3", parent)?;
        let s = cstr("rbd_clone3", snap)?;
        let c = cstr("rbd_clone3", child)?;
        let opts = Options::new(layout)?;
        // SAFETY: valid io contexts, names, options.
        check("rbd_clone3", unsafe {
            rbd_clone3(self.io, p.as_ptr(), s.as_ptr(), self.io, c.as_ptr(), opts.0)
        })?;
        Ok(())
    }

    /// Removes an image with no snapshots.
    pub fn remove(&self, name: &str) -> RbdResult<()> {
        let n = cstr("rbd_remove", name)?;
        // SAFETY: valid io context and name.
        check("rbd_remove", unsafe { rbd_remove(self.io, n.as_ptr()) })?;
        Ok(())
    }

    pub fn rename(&self, from: &str, to: &str) -> RbdResult<()> {
        let f = cstr("rbd_rename", from)?;
        let t = cstr("rbd_rename", to)?;
        // SAFETY: valid io context and names.
        check("rbd_rename", unsafe {
            rbd_rename(self.io, f.as_ptr(), t.as_ptr())
        })?;
        Ok(())
    }

    /// Moves an image to the RBD trash (it may keep snapshots and clones);
    /// it cannot be removed from there for `delay`.
    pub fn trash_move(&self, name: &str, delay: Duration) -> RbdResult<()> {
        let n = cstr("rbd_trash_move", name)?;
        // SAFETY: valid io context and name.
        check("rbd_trash_move", unsafe {
            rbd_trash_move(self.io, n.as_ptr(), delay.as_secs())
        })?;
        Ok(())
    }

    pub fn trash_list(&self) -> RbdResult<Vec<TrashEntry>> {
        let mut cap = 32usize;
        loop {
            let mut e: Vec<RbdTrashImageInfo> = (0..cap)
                .map(|_| RbdTrashImageInfo {
                    id: ptr::null_mut(),
                    name: ptr::null_mut(),
                    source: 0,
                    deletion_time: 0,
                    deferment_end_time: 0,
                })
                .collect();
            let mut n = cap;
            // SAFETY: array of `cap` entries; filled ones are cleaned up.
            let ret = unsafe { rbd_trash_list(self.io, e.as_mut_ptr(), &mut n) };
            if ret == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_trash_list", ret)?;
            let out = e[..n]
                .iter()
                .map(|t| TrashEntry {
                    id: owned(t.id),
                    name: owned(t.name),
                    keep_until: UNIX_EPOCH
                        + Duration::from_secs(t.deferment_end_time.max(0) as u64),
                })
                .collect();
            // SAFETY: the first n entries were filled.
            unsafe { rbd_trash_list_cleanup(e.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    /// A pool-level metadata value (`rbd config pool` / pool metadata).
    pub fn metadata_get(&self, key: &str) -> RbdResult<Option<String>> {
        let k = cstr("rbd_pool_metadata_get", key)?;
        match grow("rbd_pool_metadata_get", 0 as c_char, |p, len| {
            // SAFETY: buffer of *len bytes.
            unsafe { rbd_pool_metadata_get(self.io, k.as_ptr(), p, len) }
        }) {
            Ok((buf, _, _)) => Ok(Some(owned(buf.as_ptr()))),
            Err(e) if e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn metadata_set(&self, key: &str, value: &str) -> RbdResult<()> {
        let k = cstr("rbd_pool_metadata_set", key)?;
        let v = cstr("rbd_pool_metadata_set", value)?;
        // SAFETY: valid io context and strings.
        check("rbd_pool_metadata_set", unsafe {
            rbd_pool_metadata_set(self.io, k.as_ptr(), v.as_ptr())
        })?;
        Ok(())
    }

    /// Removes a trashed image for good (fails while it has snapshots);
    /// `force` also before its deferment ends.
    pub fn trash_remove(&self, id: &str, force: bool) -> RbdResult<()> {
        let i = cstr("rbd_trash_remove", id)?;
        // SAFETY: valid io context and id.
        check("rbd_trash_remove", unsafe {
            rbd_trash_remove(self.io, i.as_ptr(), force)
        })?;
        Ok(())
    }
}

// ---- header watch ----------------------------------------------------------

/// What the callbacks of one header watch reach: the io context and object
/// to ack notifies on, whether the watch was lost and whether the header
/// changed.
struct WatchCtx {
    io: rados_ioctx_t,
    oid: CString,
    lost: AtomicBool,
    /// Set at each notify (librbd notifies header changes: snapshots
    /// removed, metadata, resizes).
    notified: AtomicBool,
}

/// A watch on an image's header object, `rbd_header.<id>`: the image then
/// lists this client among its watchers, as it lists a client that has it
/// open for writing. A read-only open registers none, so this is how a
/// reader tells every other client (imagefs's purge on any node, `rbd rm`,
/// Glance's delete) that it still reads the image. Notifies are acked at
/// once. Dropping it unwatches, which waits for the OSD: drop it on a
/// blocking thread.
pub struct HeaderWatch {
    pool: Arc<Pool>,
    cookie: u64,
    ctx: *mut WatchCtx,
}

// SAFETY: `ctx` is only read through atomics (and by librados, which owns
// the callbacks); the rest is librados state usable from any thread.
unsafe impl Send for HeaderWatch {}
unsafe impl Sync for HeaderWatch {}

impl Drop for HeaderWatch {
    fn drop(&mut self) {
        // SAFETY: the watch was registered with this cookie on this io
        // context; after rados_watch_flush no callback uses `ctx` any more,
        // so it is freed once, here.
        unsafe {
            rados_unwatch2(self.pool.io, self.cookie);
            rados_watch_flush(self.pool.cluster.rados);
            drop(Box::from_raw(self.ctx));
        }
    }
}

extern "C" fn watch_notified(
    arg: *mut c_void,
    notify_id: u64,
    cookie: u64,
    _notifier: u64,
    _data: *mut c_void,
    _len: libc::size_t,
) {
    // SAFETY: `arg` is the watch's context, alive until its unwatch has
    // flushed the callbacks.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    ctx.notified.store(true, Ordering::SeqCst);
    // SAFETY: valid io context and object name; an empty reply.
    unsafe { rados_notify_ack(ctx.io, ctx.oid.as_ptr(), notify_id, cookie, ptr::null(), 0) };
}

extern "C" fn watch_failed(arg: *mut c_void, _cookie: u64, err: c_int) {
    // SAFETY: as in `watch_notified`.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    ctx.lost.store(true, Ordering::SeqCst);
    tracing::warn!(
        object = %ctx.oid.to_string_lossy(),
        "watch lost: {}",
        std::io::Error::from_raw_os_error(err.abs())
    );
}

impl HeaderWatch {
    /// Watches the header of the image with RBD id `id` in `pool`.
    pub fn new(pool: &Arc<Pool>, id: &str) -> RbdResult<HeaderWatch> {
        let oid = cstr("rados_watch2", &format!("rbd_header.{id}"))?;
        let ctx = Box::into_raw(Box::new(WatchCtx {
            io: pool.io,
            oid,
            lost: AtomicBool::new(false),
            notified: AtomicBool::new(false),
        }));
        let mut cookie = 0u64;
        // SAFETY: `ctx` outlives the watch (freed by `HeaderWatch::drop`
        // after the callbacks are flushed, or below if the watch never
        // started).
        let ret = unsafe {
            rados_watch2(
                pool.io,
                (*ctx).oid.as_ptr(),
                &mut cookie,
                Some(watch_notified),
                Some(watch_failed),
                ctx as *mut c_void,
            )
        };
        if let Err(e) = check("rados_watch2", ret) {
            // SAFETY: no watch was registered; once the callbacks queued are
            // flushed (there should be none), nothing holds `ctx`.
            unsafe {
                rados_watch_flush(pool.cluster.rados);
                drop(Box::from_raw(ctx));
            }
            return Err(e);
        }
        Ok(HeaderWatch {
            pool: pool.clone(),
            cookie,
            ctx,
        })
    }

    /// Whether the OSD dropped the watch (after the client was cut off
    /// longer than the watch timeout): the image no longer counts this
    /// client among its watchers.
    pub fn lost(&self) -> bool {
        self.ctx().lost.load(Ordering::SeqCst)
    }

    /// Whether a notify came since the last call (the header changed).
    pub fn take_notified(&self) -> bool {
        self.ctx().notified.swap(false, Ordering::SeqCst)
    }

    fn ctx(&self) -> &WatchCtx {
        // SAFETY: the context lives until drop.
        unsafe { &*self.ctx }
    }
}

// ---- image -----------------------------------------------------------------

/// An open image (or snapshot of one).
pub struct Image {
    img: RbdImageT,
    _pool: Arc<Pool>,
}

// SAFETY: librbd image handles accept calls from several threads at once.
unsafe impl Send for Image {}
unsafe impl Sync for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: opened by rbd_open*, closed once; every aio op holds an
        // Arc of this image, so none is in flight.
        unsafe { rbd_close(self.img) };
    }
}

/// One snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub id: u64,
    pub size: u64,
    pub name: String,
}

/// Where a clone comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub image: String,
    pub snap: String,
    pub trash: bool,
}

/// What an aio operation keeps alive until librbd calls back.
struct AioOp {
    tx: oneshot::Sender<AioDone>,
    /// The buffer a read fills, handed back at completion.
    read_buf: Option<ReadBuf>,
    /// The data a write sends, and what its caller keeps with it (a
    /// hold on the write budget): released when librbd is done.
    _write_buf: Vec<Bytes>,
    _keep: Option<Box<dyn std::any::Any + Send>>,
    /// Handed back too: closing an image on librbd's own callback thread
    /// would deadlock, so the last reference is never dropped there.
    image: Option<Arc<Image>>,
}

/// Our reference on a completion. librbd calls back from a task that
/// still touches the completion after the callback returns, so this is
/// released only once librbd marks it complete (a short wait: the rest of
/// that task), and before the image it belongs to can close.
struct Completion(RbdCompletionT);

// SAFETY: completions may be waited on and released from any thread.
unsafe impl Send for Completion {}

impl Drop for Completion {
    fn drop(&mut self) {
        // SAFETY: a completion whose callback has run (so it completes
        // without us), released once.
        unsafe {
            rbd_aio_wait_for_complete(self.0);
            rbd_aio_release(self.0);
        }
    }
}

/// What a finished aio op hands back: its return value, the read buffer,
/// the completion, and the image it kept open (dropped in that order: the
/// completion before the image).
type AioDone = (isize, Option<ReadBuf>, Completion, Option<Arc<Image>>);

extern "C" fn aio_done(c: RbdCompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the Box<AioOp> leaked when the op was submitted;
    // librbd calls back exactly once.
    let mut op = unsafe { Box::from_raw(arg as *mut AioOp) };
    let ret = unsafe { rbd_aio_get_return_value(c) };
    let done = (ret, op.read_buf.take(), Completion(c), op.image.take());
    if let Err(done) = op.tx.send(done) {
        // Nobody waits any more: release the completion and close the
        // image (if this was the last reference) away from librbd's
        // thread, which has to return first.
        std::thread::spawn(move || drop(done));
    }
}

/// Submits an aio op: `submit` gets the completion and starts the call.
type AioRx = oneshot::Receiver<AioDone>;

fn aio(
    op: &'static str,
    image: &Arc<Image>,
    read_buf: Option<ReadBuf>,
    write_buf: Vec<Bytes>,
    keep: Option<Box<dyn std::any::Any + Send>>,
    submit: impl FnOnce(RbdImageT, RbdCompletionT) -> c_int,
) -> RbdResult<AioRx> {
    let (tx, rx) = oneshot::channel();
    let state = Box::into_raw(Box::new(AioOp {
        tx,
        read_buf,
        _write_buf: write_buf,
        _keep: keep,
        image: Some(image.clone()),
    }));
    let mut c: RbdCompletionT = ptr::null_mut();
    // SAFETY: `state` stays valid until aio_done reclaims it.
    let ret = unsafe { rbd_aio_create_completion(state as *mut c_void, aio_done, &mut c) };
    if ret < 0 {
        // SAFETY: not handed to librbd: reclaim it here.
        drop(unsafe { Box::from_raw(state) });
        return Err(RbdError { op, errno: -ret });
    }
    let ret = submit(image.img, c);
    if ret < 0 {
        // SAFETY: the op was not queued: no callback will come.
        unsafe { rbd_aio_release(c) };
        drop(unsafe { Box::from_raw(state) });
        return Err(RbdError { op, errno: -ret });
    }
    Ok(rx)
}

async fn aio_wait(op: &'static str, rx: AioRx) -> RbdResult<(usize, Option<ReadBuf>)> {
    let (ret, buf, completion, image) = rx.await.map_err(|_| RbdError {
        op,
        errno: libc::EIO,
    })?;
    drop(completion);
    drop(image);
    if ret < 0 {
        Err(RbdError {
            op,
            errno: -ret as i32,
        })
    } else {
        Ok((ret as usize, buf))
    }
}

/// Reads of a huge page or more get memory of whole 2 MiB pages.
const HUGE_PAGE: usize = 2 << 20;
/// Read buffers kept for reuse: one handle's read-ahead window and a few
/// more (at most this many times the read-ahead chunk stay allocated).
const POOL: usize = 12;

/// The memory a read fills. From 2 MiB up it is mapped 2 MiB aligned and
/// advised to be backed by transparent huge pages, and returned to a small
/// pool when the last `Bytes` of it is dropped: faulting it in, and pinning
/// it when the FUSE reply is copied out of it, then go 2 MiB at a time
/// instead of 4 KiB, and a reused buffer is not zeroed again.
pub struct ReadBuf {
    ptr: *mut u8,
    /// Bytes filled (visible).
    len: usize,
    cap: usize,
    /// The mapping (`None`: the memory is `_heap`'s).
    map: Option<(*mut c_void, usize)>,
    _heap: Vec<u8>,
}

// SAFETY: a ReadBuf owns its memory; it is filled by one op and then only
// read.
unsafe impl Send for ReadBuf {}
unsafe impl Sync for ReadBuf {}

static READ_POOL: std::sync::Mutex<Vec<ReadBuf>> = std::sync::Mutex::new(Vec::new());

impl ReadBuf {
    /// A buffer of at least `cap` bytes, not zeroed.
    fn take(cap: usize) -> ReadBuf {
        if cap >= HUGE_PAGE {
            let mut pool = READ_POOL.lock().unwrap();
            if let Some(i) = pool.iter().position(|b| b.cap >= cap) {
                return pool.swap_remove(i);
            }
            drop(pool);
            if let Some(b) = ReadBuf::mapped(cap) {
                return b;
            }
        }
        let mut heap = Vec::with_capacity(cap);
        ReadBuf {
            ptr: heap.as_mut_ptr(),
            len: 0,
            cap,
            map: None,
            _heap: heap,
        }
    }

    fn mapped(cap: usize) -> Option<ReadBuf> {
        let cap = cap.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let map_len = cap + HUGE_PAGE;
        // SAFETY: a new private anonymous mapping, unmapped on drop.
        let map = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let ptr = ((map as usize).div_ceil(HUGE_PAGE) * HUGE_PAGE) as *mut u8;
        // SAFETY: inside the mapping. Only advice: without THP it is
        // ordinary memory.
        unsafe { libc::madvise(ptr as *mut c_void, cap, libc::MADV_HUGEPAGE) };
        Some(ReadBuf {
            ptr,
            len: 0,
            cap,
            map: Some((map, map_len)),
            _heap: Vec::new(),
        })
    }
}

impl AsRef<[u8]> for ReadBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by the read.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        // (heap memory goes with `_heap`)
        let Some((map, map_len)) = self.map else {
            return;
        };
        let mut pool = READ_POOL.lock().unwrap();
        if pool.len() < POOL {
            pool.push(ReadBuf {
                ptr: self.ptr,
                len: 0,
                cap: self.cap,
                map: self.map.take(),
                _heap: Vec::new(),
            });
            return;
        }
        drop(pool);
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(map, map_len) };
    }
}

fn timestamp(ts: libc::timespec) -> SystemTime {
    UNIX_EPOCH
        + Duration::new(
            ts.tv_sec.max(0) as u64,
            ts.tv_nsec.clamp(0, 999_999_999) as u32,
        )
}

impl Image {
    /// Opens an image with librbd call `op`, given `key` (name or id) and
    /// the out-pointer.
    fn open_with(
        pool: &Arc<Pool>,
        op: &'static str,
        key: &str,
        open: impl FnOnce(*const c_char, *mut RbdImageT) -> c_int,
    ) -> RbdResult<Image> {
        let k = cstr(op, key)?;
        let mut img: RbdImageT = ptr::null_mut();
        check(op, open(k.as_ptr(), &mut img))?;
        Ok(Image {
            img,
            _pool: pool.clone(),
        })
    }

    /// Opens image `name` for writing (its head).
    pub fn open(pool: &Arc<Pool>, name: &str) -> RbdResult<Image> {
        // SAFETY: valid io context and name; out-pointer.
        Self::open_with(pool, "rbd_open", name, |n, out| unsafe {
            rbd_open(pool.io, n, out, ptr::null())
        })
    }

    /// Opens the image with RBD id `id` (also one in the trash).
    pub fn open_by_id(pool: &Arc<Pool>, id: &str) -> RbdResult<Image> {
        // SAFETY: valid io context and id; out-pointer.
        Self::open_with(pool, "rbd_open_by_id", id, |i, out| unsafe {
            rbd_open_by_id(pool.io, i, out, ptr::null())
        })
    }

    /// Opens the image with RBD id `id` (also one in the trash) read-only:
    /// no watch of its own, so every watcher it lists is another's.
    pub fn open_by_id_read_only(pool: &Arc<Pool>, id: &str) -> RbdResult<Image> {
        // SAFETY: valid io context and id; out-pointer.
        Self::open_with(pool, "rbd_open_by_id_read_only", id, |i, out| unsafe {
            rbd_open_by_id_read_only(pool.io, i, out, ptr::null())
        })
    }

    /// Opens image `name` read-only, at snapshot `snap` if given.
    ///
    /// The head is opened and then set to the snapshot: opening at a
    /// snapshot directly (`rbd_open_read_only` with a snap name) leaves
    /// librbd (Pacific 16.2.15) with work in flight that locks the image's
    /// state after `rbd_close` has freed it, which crashed the daemon now
    /// and then (valgrind: a mutex locked inside a freed 120-byte block on
    /// a librados thread; a plain C loop of open-at-snap, stat, close shows
    /// it, the same loop with open then `rbd_snap_set` does not).
    pub fn open_read_only(pool: &Arc<Pool>, name: &str, snap: Option<&str>) -> RbdResult<Image> {
        let s = snap.map(|s| cstr("rbd_snap_set", s)).transpose()?;
        // SAFETY: valid io context and name; out-pointer.
        let image = Self::open_with(pool, "rbd_open_read_only", name, |n, out| unsafe {
            rbd_open_read_only(pool.io, n, out, ptr::null())
        })?;
        if let Some(s) = s {
            // SAFETY: open image, NUL-terminated name.
            check("rbd_snap_set", unsafe {
                rbd_snap_set(image.img, s.as_ptr())
            })?;
        }
        Ok(image)
    }

    /// (size, order) of the image or snapshot open.
    pub fn stat(&self) -> RbdResult<(u64, u8)> {
        // SAFETY: plain C struct, zero is a valid value.
        let mut info: RbdImageInfo = unsafe { std::mem::zeroed() };
        // SAFETY: out-pointer with its size.
        check("rbd_stat", unsafe {
            rbd_stat(self.img, &mut info, std::mem::size_of::<RbdImageInfo>())
        })?;
        Ok((info.size, info.order as u8))
    }

    pub fn resize(&self, size: u64) -> RbdResult<()> {
        // SAFETY: open image.
        check("rbd_resize", unsafe { rbd_resize(self.img, size) })?;
        Ok(())
    }

    /// RBD's internal image id (changes when an image is replaced).
    pub fn id(&self) -> RbdResult<String> {
        let mut buf = vec![0 as c_char; 64];
        // SAFETY: buffer of the given length.
        check("rbd_get_id", unsafe {
            rbd_get_id(self.img, buf.as_mut_ptr(), buf.len())
        })?;
        Ok(owned(buf.as_ptr()))
    }

    pub fn created(&self) -> RbdResult<SystemTime> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: out-pointer.
        check("rbd_get_create_timestamp", unsafe {
            rbd_get_create_timestamp(self.img, &mut ts)
        })?;
        Ok(timestamp(ts))
    }

    /// The image this one is a clone of, if any.
    pub fn parent(&self) -> RbdResult<Option<Parent>> {
        // SAFETY: plain C structs, filled by librbd, cleaned up below.
        let mut spec: RbdLinkedImageSpec = unsafe { std::mem::zeroed() };
        let mut snap: RbdSnapSpec = unsafe { std::mem::zeroed() };
        // SAFETY: out-pointers.
        let ret = unsafe { rbd_get_parent(self.img, &mut spec, &mut snap) };
        if ret == -libc::ENOENT {
            return Ok(None);
        }
        check("rbd_get_parent", ret)?;
        let p = Parent {
            image: owned(spec.image_name),
            snap: owned(snap.name),
            trash: spec.trash,
        };
        // SAFETY: filled by rbd_get_parent.
        unsafe {
            rbd_linked_image_spec_cleanup(&mut spec);
            rbd_snap_spec_cleanup(&mut snap);
        }
        Ok(Some(p))
    }

    pub fn snaps(&self) -> RbdResult<Vec<Snap>> {
        let mut cap = 16usize;
        loop {
            let mut s: Vec<RbdSnapInfo> = (0..cap)
                .map(|_| RbdSnapInfo {
                    id: 0,
                    size: 0,
                    name: ptr::null(),
                })
                .collect();
            let mut max = cap as c_int;
            // SAFETY: array of `cap` entries.
            let ret = unsafe { rbd_snap_list(self.img, s.as_mut_ptr(), &mut max) };
            if ret == -libc::ERANGE {
                cap = (max as usize).max(cap * 2);
                continue;
            }
            let n = check("rbd_snap_list", ret)? as usize;
            let out = s[..n]
                .iter()
                .map(|i| Snap {
                    id: i.id,
                    size: i.size,
                    name: owned(i.name),
                })
                .collect();
            // SAFETY: filled by rbd_snap_list.
            unsafe { rbd_snap_list_end(s.as_mut_ptr()) };
            return Ok(out);
        }
    }

    fn snap_call(
        &self,
        op: &'static str,
        name: &str,
        f: unsafe extern "C" fn(RbdImageT, *const c_char) -> c_int,
    ) -> RbdResult<()> {
        let n = cstr(op, name)?;
        // SAFETY: open image, NUL-terminated name.
        check(op, unsafe { f(self.img, n.as_ptr()) })?;
        Ok(())
    }

    pub fn snap_create(&self, name: &str) -> RbdResult<()> {
        self.snap_call("rbd_snap_create", name, rbd_snap_create)
    }

    pub fn snap_remove(&self, name: &str) -> RbdResult<()> {
        self.snap_call("rbd_snap_remove", name, rbd_snap_remove)
    }

    pub fn snap_protect(&self, name: &str) -> RbdResult<()> {
        self.snap_call("rbd_snap_protect", name, rbd_snap_protect)
    }

    pub fn snap_unprotect(&self, name: &str) -> RbdResult<()> {
        self.snap_call("rbd_snap_unprotect", name, rbd_snap_unprotect)
    }

    pub fn snap_is_protected(&self, name: &str) -> RbdResult<bool> {
        let n = cstr("rbd_snap_is_protected", name)?;
        let mut p: c_int = 0;
        // SAFETY: open image, name, out-pointer.
        check("rbd_snap_is_protected", unsafe {
            rbd_snap_is_protected(self.img, n.as_ptr(), &mut p)
        })?;
        Ok(p != 0)
    }

    /// Copies the parent's data in, so the image no longer needs it.
    pub fn flatten(&self) -> RbdResult<()> {
        // SAFETY: open image.
        check("rbd_flatten", unsafe { rbd_flatten(self.img) })?;
        Ok(())
    }

    /// Names of the clones of the snapshot this handle is open at.
    pub fn children(&self) -> RbdResult<Vec<String>> {
        let mut cap = 16usize;
        loop {
            // SAFETY: plain C structs, zero is valid.
            let mut v: Vec<RbdLinkedImageSpec> =
                (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut n = cap;
            // SAFETY: array of `cap` entries.
            let ret = unsafe { rbd_list_children3(self.img, v.as_mut_ptr(), &mut n) };
            if ret == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_list_children3", ret)?;
            let out = v[..n].iter().map(|c| owned(c.image_name)).collect();
            // SAFETY: the first n entries were filled.
            unsafe { rbd_linked_image_spec_list_cleanup(v.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    /// Global ids of the clients watching the image: those that have it
    /// open for writing, and imagefs readers (`HeaderWatch`).
    pub fn watchers(&self) -> RbdResult<Vec<i64>> {
        let mut cap = 8usize;
        loop {
            let mut v: Vec<RbdImageWatcher> = (0..cap)
                .map(|_| RbdImageWatcher {
                    addr: ptr::null_mut(),
                    id: 0,
                    cookie: 0,
                })
                .collect();
            let mut n = cap;
            // SAFETY: array of `cap` entries.
            let ret = unsafe { rbd_watchers_list(self.img, v.as_mut_ptr(), &mut n) };
            if ret == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_watchers_list", ret)?;
            let out = v[..n].iter().map(|w| w.id).collect();
            // SAFETY: the first n entries were filled.
            unsafe { rbd_watchers_list_cleanup(v.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    pub fn metadata_get(&self, key: &str) -> RbdResult<Option<String>> {
        let k = cstr("rbd_metadata_get", key)?;
        let res = grow("rbd_metadata_get", 0 as c_char, |p, len| {
            // SAFETY: buffer of *len bytes.
            unsafe { rbd_metadata_get(self.img, k.as_ptr(), p, len) }
        });
        match res {
            Ok((buf, _, _)) => Ok(Some(owned(buf.as_ptr()))),
            Err(e) if e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn metadata_set(&self, key: &str, value: &str) -> RbdResult<()> {
        let k = cstr("rbd_metadata_set", key)?;
        let v = cstr("rbd_metadata_set", value)?;
        // SAFETY: open image, strings.
        check("rbd_metadata_set", unsafe {
            rbd_metadata_set(self.img, k.as_ptr(), v.as_ptr())
        })?;
        Ok(())
    }

    /// Removes a key; false if it was not set.
    pub fn metadata_remove(&self, key: &str) -> RbdResult<bool> {
        let k = cstr("rbd_metadata_remove", key)?;
        // SAFETY: open image, string.
        let ret = unsafe { rbd_metadata_remove(self.img, k.as_ptr()) };
        if ret == -libc::ENOENT {
            return Ok(false);
        }
        check("rbd_metadata_remove", ret)?;
        Ok(true)
    }

    /// Every metadata key and value.
    pub fn metadata(&self) -> RbdResult<Vec<(String, String)>> {
        let mut cap = 4096usize;
        loop {
            let mut keys = vec![0 as c_char; cap];
            let mut vals = vec![0 as c_char; cap];
            let (mut klen, mut vlen) = (cap, cap);
            // SAFETY: two buffers of `cap` bytes.
            let ret = unsafe {
                rbd_metadata_list(
                    self.img,
                    c"".as_ptr(),
                    0,
                    keys.as_mut_ptr(),
                    &mut klen,
                    vals.as_mut_ptr(),
                    &mut vlen,
                )
            };
            if ret == -libc::ERANGE {
                cap = klen.max(vlen).max(cap * 2);
                continue;
            }
            check("rbd_metadata_list", ret)?;
            let pieces = |b: &[c_char], n: usize| -> Vec<String> {
                let bytes: Vec<u8> = b[..n.min(b.len())].iter().map(|&c| c as u8).collect();
                bytes
                    .split(|&c| c == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            // Each key and each value is followed by a NUL; values may be
            // empty, keys never are.
            let k: Vec<String> = pieces(&keys, klen)
                .into_iter()
                .filter(|k| !k.is_empty())
                .collect();
            let mut values = pieces(&vals, vlen);
            values.resize(k.len(), String::new());
            return Ok(k.into_iter().zip(values).collect());
        }
    }

    /// Reads up to `len` bytes at `off` without blocking a thread.
    pub async fn read(self: &Arc<Self>, off: u64, len: usize) -> RbdResult<Bytes> {
        let rx = {
            // Not zeroed: librbd fills the first n bytes (its return value)
            // and only those become visible.
            let buf = ReadBuf::take(len);
            let ptr = buf.ptr as *mut c_char;
            // The buffer moves into the op (its memory stays where it is)
            // and comes back once librbd is done filling it.
            aio(
                "rbd_aio_read",
                self,
                Some(buf),
                Vec::new(),
                None,
                |img, c| {
                    // SAFETY: `ptr` points to `len` bytes of capacity the op owns
                    // until the callback hands it back; nothing else touches it
                    // before then.
                    unsafe { rbd_aio_read(img, off, len, ptr, c) }
                },
            )?
        };
        let (n, buf) = aio_wait("rbd_aio_read", rx).await?;
        let mut buf = buf.expect("a read hands its buffer back");
        buf.len = n.min(len);
        Ok(Bytes::from_owner(buf))
    }

    /// Writes `data` at `off`; the returned future ends when it is done.
    /// `keep` is dropped once librbd is done with the data.
    pub fn write(
        self: &Arc<Self>,
        off: u64,
        data: Bytes,
        keep: impl Send + 'static,
    ) -> RbdResult<AioWait> {
        let rx = {
            let (ptr, len) = (data.as_ptr() as *const c_char, data.len());
            let keep: Box<dyn std::any::Any + Send> = Box::new(keep);
            aio(
                "rbd_aio_write",
                self,
                None,
                vec![data],
                Some(keep),
                |img, c| {
                    // SAFETY: `ptr` points into `data`, kept alive by the op.
                    unsafe { rbd_aio_write(img, off, len, ptr, c) }
                },
            )?
        };
        Ok(AioWait {
            op: "rbd_aio_write",
            rx,
        })
    }

    /// Writes the pieces of `data` one after the other from `off` in one
    /// request; the returned future ends when it is done. `keep` is dropped
    /// once librbd is done with the data.
    pub fn writev(
        self: &Arc<Self>,
        off: u64,
        data: Vec<Bytes>,
        keep: impl Send + 'static,
    ) -> RbdResult<AioWait> {
        let iov: Vec<libc::iovec> = data
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut c_void,
                iov_len: b.len(),
            })
            .collect();
        let count = c_int::try_from(iov.len()).map_err(|_| RbdError {
            op: "rbd_aio_writev",
            errno: libc::EINVAL,
        })?;
        let keep: Box<dyn std::any::Any + Send> = Box::new(keep);
        let rx = aio("rbd_aio_writev", self, None, data, Some(keep), |img, c| {
            // SAFETY: every iovec points into a piece of `data`, which the
            // op keeps alive; librbd reads the iovec array during the call.
            unsafe { rbd_aio_writev(img, iov.as_ptr(), count, off, c) }
        })?;
        Ok(AioWait {
            op: "rbd_aio_writev",
            rx,
        })
    }

    /// Flushes without blocking a thread.
    pub async fn aio_flush(self: &Arc<Self>) -> RbdResult<()> {
        let rx = aio("rbd_aio_flush", self, None, Vec::new(), None, |img, c| {
            // SAFETY: open image, fresh completion.
            unsafe { rbd_aio_flush(img, c) }
        })?;
        aio_wait("rbd_aio_flush", rx).await?;
        Ok(())
    }
}

/// An asynchronous operation in flight.
pub struct AioWait {
    op: &'static str,
    rx: AioRx,
}

impl AioWait {
    pub async fn wait(self) -> RbdResult<usize> {
        Ok(aio_wait(self.op, self.rx).await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_of_huge_pages_are_aligned_and_reused_and_show_what_was_filled() {
        let mut big = ReadBuf::take(3 << 20);
        assert_eq!(big.ptr as usize % HUGE_PAGE, 0);
        assert_eq!(big.cap, 4 << 20, "rounded up to whole huge pages");
        // SAFETY: within the buffer's capacity.
        unsafe { ptr::write_bytes(big.ptr, 7, 5) };
        big.len = 5;
        let addr = big.ptr as usize;
        let bytes = Bytes::from_owner(big);
        assert_eq!(&bytes[..], &[7; 5]);
        drop(bytes);
        // Back in the pool: the next read of that size gets it again.
        let again = ReadBuf::take(4 << 20);
        assert_eq!(again.ptr as usize, addr);
        assert_eq!(again.len, 0);
        let small = ReadBuf::take(4096);
        assert!(small.map.is_none() && small.cap == 4096);
    }
}
