//! The fs core driven directly (no FUSE) over file stores in temp dirs.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::config::FileStoreConfig;
use crate::store::file::FileStore;
use crate::store::{XATTR_CHECKSUM, XATTR_OS_HASH_VALUE};

struct Rig {
    fs: ImageFs,
    dirs: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
}

fn rig_with(tmp: tempfile::TempDir, names: &[&str]) -> Rig {
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    let mut dirs = Vec::new();
    for n in names {
        let dir = tmp.path().join(n);
        let cfg = FileStoreConfig {
            datadir: dir.clone(),
            file_perm: None,
            chunk_size: 65536,
            thin_provisioning: false,
        };
        stores.push(Arc::new(FileStore::open(n, &cfg).unwrap()));
        dirs.push(dir);
    }
    let fs = ImageFs::new(
        stores,
        FsOptions {
            attr_ttl: Duration::from_millis(0),
            passthrough: false,
            read_only: false,
            hashing: Some(HashAlgorithm::Sha512),
            owner: OwnerOverride::default(),
            single_store: None,
        },
    );
    Rig {
        fs,
        dirs,
        _tmp: tmp,
    }
}

fn rig() -> Rig {
    rig_with(tempfile::tempdir().unwrap(), &["a", "b"])
}

const A: u64 = 2; // inode of store "a"
const B: u64 = 3;

fn md5_hex(data: &[u8]) -> String {
    hex::encode(openssl::hash::hash(openssl::hash::MessageDigest::md5(), data).unwrap())
}

/// Creates `name` write-only (as cp and Glance do): its inode and handle.
async fn create(fs: &ImageFs, dir: u64, name: &str) -> (u64, u64) {
    let (attr, opened) = create_opened(fs, dir, name).await;
    (attr.ino, opened.fh)
}

async fn create_opened(fs: &ImageFs, dir: u64, name: &str) -> (Attr, Opened) {
    fs.create(
        dir,
        name,
        0o644,
        0o022,
        libc::O_WRONLY | libc::O_CREAT,
        Caller::default(),
    )
    .await
    .unwrap()
}

/// A committed image `name` in `dir` holding `data`; returns its inode.
async fn put(fs: &ImageFs, dir: u64, name: &str, data: &'static [u8]) -> u64 {
    let (ino, fh) = create(fs, dir, name).await;
    fs.write(fh, 0, Bytes::from_static(data)).await.unwrap();
    close(fs, fh).await.unwrap();
    ino
}

async fn close(fs: &ImageFs, fh: u64) -> FsResult<()> {
    let r = fs.flush(fh, 0).await;
    fs.release(fh).await;
    r
}

async fn read_all(fs: &ImageFs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY).await.unwrap().fh;
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 1 << 20).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh).await;
    out
}

fn on_disk(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok()
}

#[tokio::test]
async fn a_new_image_appears_only_when_closed_with_its_checksums() {
    let r = rig();
    let (ino, fh) = create(&r.fs, A, "img").await;
    r.fs.write(fh, 0, Bytes::from_static(b"hello "))
        .await
        .unwrap();
    r.fs.write(fh, 6, Bytes::from_static(b"world"))
        .await
        .unwrap();
    assert_eq!(
        on_disk(&r.dirs[0], "img"),
        None,
        "not visible before commit"
    );
    assert_eq!(
        r.fs.getattr(ino).await.unwrap().size,
        11,
        "the writer sees its size"
    );
    let listed = r.fs.opendir(A).await.unwrap();
    let mut names = Vec::new();
    r.fs.readdir(listed, 0, false, |_, e| {
        names.push(e.name.clone());
        true
    })
    .unwrap();
    assert!(
        names.contains(&"img".to_string()),
        "pending image listed here"
    );
    close(&r.fs, fh).await.unwrap();
    assert_eq!(on_disk(&r.dirs[0], "img").unwrap(), b"hello world");
    let sum = r.fs.getxattr(ino, XATTR_CHECKSUM).await.unwrap();
    assert_eq!(String::from_utf8(sum).unwrap(), md5_hex(b"hello world"));
    let loc = r.fs.getxattr(ino, XATTR_LOCATION).await.unwrap();
    assert_eq!(
        String::from_utf8(loc).unwrap(),
        format!("file://{}/img", r.dirs[0].canonicalize().unwrap().display())
    );
}

#[tokio::test]
async fn thin_provisioned_writes_hash_like_the_full_image() {
    let r = rig();
    let (ino, fh) = create(&r.fs, A, "thin").await;
    // Glance: 64 KiB chunks, zero chunks skipped by seeking, truncate at end.
    let chunk = vec![7u8; 65536];
    r.fs.write(fh, 0, Bytes::from(chunk.clone())).await.unwrap();
    r.fs.write(fh, 3 * 65536, Bytes::from(chunk.clone()))
        .await
        .unwrap();
    r.fs.setattr(
        ino,
        Some(fh),
        SetAttrRequest {
            size: Some(6 * 65536),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    close(&r.fs, fh).await.unwrap();
    let mut want = vec![0u8; 6 * 65536];
    want[..65536].copy_from_slice(&chunk);
    want[3 * 65536..4 * 65536].copy_from_slice(&chunk);
    assert_eq!(on_disk(&r.dirs[0], "thin").unwrap(), want);
    let sum = r.fs.getxattr(ino, XATTR_CHECKSUM).await.unwrap();
    assert_eq!(String::from_utf8(sum).unwrap(), md5_hex(&want));
}

#[tokio::test]
async fn random_writes_are_copy_on_write_and_rehashed() {
    let r = rig();
    let (ino, fh) = create(&r.fs, A, "img").await;
    r.fs.write(fh, 0, Bytes::from(vec![1u8; 100_000]))
        .await
        .unwrap();
    close(&r.fs, fh).await.unwrap();
    let fh = r.fs.open(ino, libc::O_RDWR).await.unwrap().fh;
    r.fs.write(fh, 10, Bytes::from_static(b"XY")).await.unwrap();
    // Readers elsewhere (the directory) still see the committed version.
    assert_eq!(on_disk(&r.dirs[0], "img").unwrap(), vec![1u8; 100_000]);
    close(&r.fs, fh).await.unwrap();
    let mut want = vec![1u8; 100_000];
    want[10..12].copy_from_slice(b"XY");
    assert_eq!(read_all(&r.fs, ino).await, want);
    let sum = r.fs.getxattr(ino, XATTR_CHECKSUM).await.unwrap();
    assert_eq!(String::from_utf8(sum).unwrap(), md5_hex(&want));
    let sha = r.fs.getxattr(ino, XATTR_OS_HASH_VALUE).await.unwrap();
    let want_sha = hex::encode(openssl::sha::sha512(&want));
    assert_eq!(String::from_utf8(sha).unwrap(), want_sha);
}

#[tokio::test]
async fn truncate_on_open_replaces_the_content() {
    let r = rig();
    let ino = put(&r.fs, A, "img", b"long old content").await;
    let fh =
        r.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC)
            .await
            .unwrap()
            .fh;
    r.fs.write(fh, 0, Bytes::from_static(b"new")).await.unwrap();
    close(&r.fs, fh).await.unwrap();
    assert_eq!(on_disk(&r.dirs[0], "img").unwrap(), b"new");
}

fn resize_to(size: u64) -> SetAttrRequest {
    SetAttrRequest {
        size: Some(size),
        ..Default::default()
    }
}

/// An image "img" of 12345 bytes, open for writing, truncated by path to
/// 23456 (left to the writer's release); returns its inode and handle.
async fn grown_while_open(fs: &ImageFs) -> (u64, u64) {
    let (ino, fh) = create(fs, A, "img").await;
    fs.write(fh, 0, Bytes::from(vec![7u8; 12345]))
        .await
        .unwrap();
    close(fs, fh).await.unwrap();
    let fh = fs.open(ino, libc::O_WRONLY).await.unwrap().fh;
    assert_eq!(
        fs.setattr(ino, None, resize_to(23456)).await.unwrap().size,
        23456
    );
    (ino, fh)
}

/// The last release of `fh`, started: its commit waits for the store.
fn release_started(fs: &ImageFs, fh: u64) -> std::pin::Pin<Box<impl Future<Output = ()> + '_>> {
    let mut release = Box::pin(fs.release(fh));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        release.as_mut().poll(&mut cx).is_pending(),
        "the commit waits for the store"
    );
    release
}

/// Runs `op` while the release of `fh` commits; what `op` returned, once
/// both have ended.
async fn while_committing<T>(fs: &ImageFs, fh: u64, op: impl Future<Output = T>) -> T {
    let release = release_started(fs, fh);
    tokio::join!(release, op).1
}

/// What the release after `grown_while_open` commits.
fn grown_content() -> Vec<u8> {
    let mut want = vec![7u8; 12345];
    want.resize(23456, 0);
    want
}

/// A truncate by path while a writer is open is left to the writer's
/// release (the kernel does not wait for releases): while that release
/// commits, stat shows the truncated size, never the version replaced.
#[tokio::test]
async fn stat_during_a_commit_shows_the_new_version() {
    let r = rig();
    let (ino, fh) = grown_while_open(&r.fs).await;
    let release = release_started(&r.fs, fh);
    assert_eq!(r.fs.getattr(ino).await.unwrap().size, 23456);
    release.await;
    assert_eq!(r.fs.getattr(ino).await.unwrap().size, 23456);
    assert_eq!(on_disk(&r.dirs[0], "img").unwrap().len(), 23456);
}

/// A truncate by path that arrives while a release still commits the
/// version before it waits for that commit and starts from it: the last
/// change wins, on the inode and in the store.
#[tokio::test]
async fn a_change_during_a_commit_comes_after_it() {
    let r = rig();
    let (ino, fh) = grown_while_open(&r.fs).await;
    let shrunk = while_committing(&r.fs, fh, r.fs.setattr(ino, None, resize_to(1))).await;
    assert_eq!(shrunk.unwrap().size, 1);
    assert_eq!(r.fs.getattr(ino).await.unwrap().size, 1);
    assert_eq!(on_disk(&r.dirs[0], "img").unwrap(), vec![7u8]);
}

/// An unlink that arrives while a release still commits waits for that
/// commit and then removes what it published: the image does not come
/// back under its name once unlink has returned.
#[tokio::test]
async fn an_unlink_during_a_commit_comes_after_it() {
    let r = rig();
    let (ino, fh) = grown_while_open(&r.fs).await;
    let unlinked = while_committing(&r.fs, fh, r.fs.unlink(A, "img")).await;
    unlinked.unwrap();
    assert_eq!(r.fs.lookup(A, "img").await.unwrap_err().errno, libc::ENOENT);
    assert_eq!(r.fs.getattr(ino).await.unwrap().nlink, 0);
    assert_eq!(on_disk(&r.dirs[0], "img"), None);
}

/// A rename that arrives while a release still commits waits for that
/// commit and moves what it published, not the version it replaced.
#[tokio::test]
async fn a_rename_during_a_commit_comes_after_it() {
    let r = rig();
    let (_, fh) = grown_while_open(&r.fs).await;
    let rename = r.fs.rename(A, "img", A, "new", false, false);
    while_committing(&r.fs, fh, rename).await.unwrap();
    assert_eq!(r.fs.lookup(A, "img").await.unwrap_err().errno, libc::ENOENT);
    assert_eq!(r.fs.lookup(A, "new").await.unwrap().size, 23456);
    assert_eq!(on_disk(&r.dirs[0], "img"), None);
    assert!(
        on_disk(&r.dirs[0], "new") == Some(grown_content()),
        "new differs"
    );
}

/// A rename onto an image whose release still commits waits for that
/// commit: the renamed image is what stays under the name.
#[tokio::test]
async fn a_rename_onto_an_image_being_committed_comes_after_it() {
    let r = rig();
    let (_, other) = create(&r.fs, A, "other").await;
    r.fs.write(other, 0, Bytes::from_static(b"other"))
        .await
        .unwrap();
    close(&r.fs, other).await.unwrap();
    let (_, fh) = grown_while_open(&r.fs).await;
    let rename = r.fs.rename(A, "other", A, "img", false, false);
    while_committing(&r.fs, fh, rename).await.unwrap();
    assert_eq!(r.fs.lookup(A, "img").await.unwrap().size, 5);
    assert_eq!(on_disk(&r.dirs[0], "img").unwrap(), b"other");
    assert_eq!(on_disk(&r.dirs[0], "other"), None);
}

/// A server-side copy from an image whose release still commits copies
/// what that commit publishes, not the version it replaces.
#[tokio::test]
async fn a_copy_during_a_commit_copies_what_it_publishes() {
    let r = rig();
    let (ino, fh) = grown_while_open(&r.fs).await;
    let (_, dfh) = create(&r.fs, A, "dst").await;
    let copy = async {
        let sfh = r.fs.open(ino, libc::O_RDONLY).await.unwrap().fh;
        let n = r.fs.copy_file_range(sfh, 0, dfh, 0, 1 << 30).await;
        r.fs.release(sfh).await;
        n
    };
    let copied = while_committing(&r.fs, fh, copy).await;
    assert_eq!(copied.unwrap(), 23456);
    close(&r.fs, dfh).await.unwrap();
    assert!(
        on_disk(&r.dirs[0], "dst") == Some(grown_content()),
        "dst differs"
    );
}

/// The checksum asked for while a release still commits is that of the
/// version it publishes.
#[tokio::test]
async fn checksums_asked_during_a_commit_are_those_it_publishes() {
    let r = rig();
    let (ino, fh) = grown_while_open(&r.fs).await;
    let sum = while_committing(&r.fs, fh, r.fs.getxattr(ino, XATTR_CHECKSUM)).await;
    assert_eq!(sum.unwrap(), md5_hex(&grown_content()).into_bytes());
}

/// A chmod that arrives while a release still commits applies to what
/// that commit publishes, and is not lost under it.
#[tokio::test]
async fn a_chmod_during_a_commit_comes_after_it() {
    let r = rig();
    let (ino, fh) = grown_while_open(&r.fs).await;
    let chmod = SetAttrRequest {
        mode: Some(0o600),
        ..Default::default()
    };
    let changed = while_committing(&r.fs, fh, r.fs.setattr(ino, None, chmod)).await;
    assert_eq!(changed.unwrap().perm, 0o600);
    let fresh = rig_with(r._tmp, &["a", "b"]);
    let attr = fresh.fs.lookup(A, "img").await.unwrap();
    assert_eq!((attr.perm, attr.size), (0o600, 23456));
}

/// A name unlinked while a handle still uses it is free for a new image at
/// once (a new one, and a committed one open for writing, alike), and the
/// old handle's close leaves the new image alone.
#[tokio::test]
async fn a_name_unlinked_while_open_is_free_at_once() {
    let r = rig();
    for committed in [false, true] {
        let (ino, fh) = create(&r.fs, A, "img").await;
        r.fs.write(fh, 0, Bytes::from_static(b"old")).await.unwrap();
        let fh = if committed {
            close(&r.fs, fh).await.unwrap();
            r.fs.open(ino, libc::O_RDWR).await.unwrap().fh
        } else {
            fh
        };
        r.fs.write(fh, 0, Bytes::from_static(b"OLD")).await.unwrap();
        r.fs.unlink(A, "img").await.unwrap();
        let (_, new) = create(&r.fs, A, "img").await;
        r.fs.write(new, 0, Bytes::from_static(b"new image"))
            .await
            .unwrap();
        close(&r.fs, new).await.unwrap();
        assert_eq!(r.fs.read(fh, 0, 10).await.unwrap(), &b"OLD"[..]);
        close(&r.fs, fh).await.unwrap();
        assert_eq!(on_disk(&r.dirs[0], "img").unwrap(), b"new image");
        r.fs.unlink(A, "img").await.unwrap();
    }
}

/// A handle of an image deleted on another node reads on what the store
/// keeps (here: nothing, so fstat only); chmod and utimes through it show
/// in its attributes, with no link, as on an unlinked local file.
#[tokio::test]
async fn attributes_of_an_image_deleted_while_open_change_on_its_handles() {
    let r = rig();
    let ino = put(&r.fs, A, "img", b"data").await;
    let fh = r.fs.open(ino, libc::O_RDONLY).await.unwrap().fh;
    std::fs::remove_file(r.dirs[0].join("img")).unwrap();
    assert_eq!(r.fs.getattr(ino).await.unwrap().nlink, 0);
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let req = SetAttrRequest {
        mode: Some(0o600),
        mtime: Some(when),
        ..Default::default()
    };
    let a = r.fs.setattr(ino, Some(fh), req).await.unwrap();
    assert_eq!((a.perm, a.mtime, a.nlink, a.size), (0o600, when, 0, 4));
    assert_eq!(r.fs.getattr(ino).await.unwrap().perm, 0o600);
    close(&r.fs, fh).await.unwrap();
    assert!(on_disk(&r.dirs[0], "img").is_none());
}

#[tokio::test]
async fn namespace_rules_and_errnos() {
    let r = rig();
    let (_, fh) = create(&r.fs, A, "img").await;
    close(&r.fs, fh).await.unwrap();
    let e =
        r.fs.rename(A, "img", B, "img", false, false)
            .await
            .unwrap_err();
    assert_eq!(e.errno, libc::EXDEV);
    assert_eq!(r.fs.mkdir(A, "d").await.unwrap_err().errno, libc::EPERM);
    assert_eq!(r.fs.rmdir(A, "img").await.unwrap_err().errno, libc::ENOTDIR);
    assert_eq!(
        r.fs.unsupported_node(A, "symlink").await.unwrap_err().errno,
        libc::EPERM
    );
    let e =
        r.fs.create(ROOT_INO, "x", 0o644, 0, libc::O_WRONLY, Caller::default())
            .await
            .unwrap_err();
    assert_eq!(e.errno, libc::EPERM);
    let e =
        r.fs.create(
            A,
            ".imagefs-tmp-x",
            0o644,
            0,
            libc::O_WRONLY,
            Caller::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    let e =
        r.fs.create(
            A,
            "img",
            0o644,
            0,
            libc::O_WRONLY | libc::O_EXCL,
            Caller::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
    assert_eq!(
        r.fs.lookup(A, "nope").await.unwrap_err().errno,
        libc::ENOENT
    );
    let ino = r.fs.lookup(A, "img").await.unwrap().ino;
    let e = r.fs.getxattr(ino, "security.capability").await.unwrap_err();
    assert_eq!(e.errno, libc::ENODATA);
    // Computed attributes: a copy carrying them over is accepted, removal is not.
    r.fs.setxattr(ino, XATTR_CHECKSUM, b"bogus", 0)
        .await
        .unwrap();
    assert_ne!(r.fs.getxattr(ino, XATTR_CHECKSUM).await.unwrap(), b"bogus");
    assert_eq!(
        r.fs.removexattr(ino, XATTR_CHECKSUM)
            .await
            .unwrap_err()
            .errno,
        libc::EPERM
    );
    r.fs.rename(A, "img", A, "img2", true, false).await.unwrap();
    assert!(on_disk(&r.dirs[0], "img2").is_some());
    r.fs.unlink(A, "img2").await.unwrap();
    assert!(on_disk(&r.dirs[0], "img2").is_none());
}

#[tokio::test]
async fn two_mounts_cannot_create_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().to_path_buf();
    let one = rig_with(tmp, &["a"]);
    // A second "mount" of the same directory.
    let cfg = FileStoreConfig {
        datadir: path.join("a"),
        file_perm: None,
        chunk_size: 65536,
        thin_provisioning: false,
    };
    let other = ImageFs::new(
        vec![Arc::new(FileStore::open("a", &cfg).unwrap())],
        one.fs.options().clone(),
    );
    let (_, fh) = create(&one.fs, A, "race").await;
    let e = other
        .create(A, "race", 0o644, 0, libc::O_WRONLY, Caller::default())
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
    close(&one.fs, fh).await.unwrap();
}

#[tokio::test]
async fn unlinking_an_image_being_created_leaves_nothing() {
    let r = rig();
    let (_, fh) = create(&r.fs, A, "gone").await;
    r.fs.write(fh, 0, Bytes::from_static(b"data"))
        .await
        .unwrap();
    r.fs.unlink(A, "gone").await.unwrap();
    close(&r.fs, fh).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(&r.dirs[0]).unwrap().collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
}

#[tokio::test]
async fn server_side_copy_reuses_the_source_checksums() {
    let r = rig();
    let (src, fh) = create(&r.fs, A, "src").await;
    let body = vec![9u8; 300_000];
    r.fs.write(fh, 0, Bytes::from(body.clone())).await.unwrap();
    close(&r.fs, fh).await.unwrap();
    let sfh = r.fs.open(src, libc::O_RDONLY).await.unwrap().fh;
    let (dst, dfh) = create(&r.fs, A, "dst").await;
    let n = r.fs.copy_file_range(sfh, 0, dfh, 0, 1 << 30).await.unwrap();
    assert_eq!(n, body.len() as u64);
    close(&r.fs, dfh).await.unwrap();
    r.fs.release(sfh).await;
    assert_eq!(on_disk(&r.dirs[0], "dst").unwrap(), body);
    assert_eq!(
        r.fs.getxattr(dst, XATTR_CHECKSUM).await.unwrap(),
        md5_hex(&body).into_bytes()
    );
    // Across stores the kernel must fall back to a plain copy.
    let sfh = r.fs.open(src, libc::O_RDONLY).await.unwrap().fh;
    let (_, bfh) = create(&r.fs, B, "x").await;
    let e = r.fs.copy_file_range(sfh, 0, bfh, 0, 10).await.unwrap_err();
    assert_eq!(e.errno, libc::EXDEV);
}

#[tokio::test]
async fn write_only_handles_bypass_the_page_cache_when_it_stays_coherent() {
    let r = rig();
    let direct = |o: &Opened| matches!(o.io, IoMode::DirectIo);
    // A kernel that does not drop pages under direct writes: all cached.
    let (ino, fh) = create(&r.fs, A, "img").await;
    close(&r.fs, fh).await.unwrap();
    let w = r.fs.open(ino, libc::O_WRONLY).await.unwrap();
    assert!(matches!(w.io, IoMode::Cached));
    close(&r.fs, w.fh).await.unwrap();

    r.fs.set_direct_writes_available(true);
    // Write-only: direct; so is every handle opened beside it.
    let w = r.fs.open(ino, libc::O_WRONLY).await.unwrap();
    assert!(direct(&w));
    let rd = r.fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(
        direct(&rd),
        "a reader beside a direct writer caches nothing"
    );
    let rw = r.fs.open(ino, libc::O_RDWR).await.unwrap();
    assert!(direct(&rw));
    for fh in [w.fh, rd.fh, rw.fh] {
        close(&r.fs, fh).await.unwrap();
    }
    // Handles that may read go through the page cache, and a writer
    // opened while one is open does too.
    let rd = r.fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(matches!(rd.io, IoMode::Cached));
    let rw = r.fs.open(ino, libc::O_RDWR).await.unwrap();
    assert!(matches!(rw.io, IoMode::Cached));
    let w = r.fs.open(ino, libc::O_WRONLY).await.unwrap();
    assert!(matches!(w.io, IoMode::Cached), "a cached reader is open");
    for fh in [w.fh, rd.fh, rw.fh] {
        close(&r.fs, fh).await.unwrap();
    }
    // New images created write-only, as cp and Glance do.
    let (_, opened) = create_opened(&r.fs, A, "new").await;
    assert!(direct(&opened));
    r.fs.write(opened.fh, 0, Bytes::from_static(b"data"))
        .await
        .unwrap();
    close(&r.fs, opened.fh).await.unwrap();
    assert_eq!(on_disk(&r.dirs[0], "new").unwrap(), b"data");
}

#[tokio::test]
async fn a_handle_released_while_its_image_is_unlinked_leaves_nothing() {
    let r = rig();
    for replace in [false, true] {
        let ino = put(&r.fs, A, "img", b"data").await;
        let (_, w) = create(&r.fs, A, "other").await;
        close(&r.fs, w).await.unwrap();
        let rd = r.fs.open(ino, libc::O_RDONLY).await.unwrap().fh;
        r.fs.flush(rd, 0).await.unwrap();
        // `cat img; rm img`: close() has returned, and the kernel's RELEASE
        // comes while the UNLINK (or a rename over the image) runs.
        let gone = async {
            if replace {
                r.fs.rename(A, "other", A, "img", false, false).await
            } else {
                r.fs.unlink(A, "img").await
            }
        };
        let (gone, ()) = tokio::join!(gone, r.fs.release(rd));
        gone.unwrap();
        let img = r.fs.image(ino).unwrap();
        assert!(
            img.staging.lock().await.is_none(),
            "the data kept for the closed handle is still there (replace: {replace})"
        );
        for name in ["img", "other"] {
            let _ = r.fs.unlink(A, name).await;
        }
    }
}
