//! The store conformance suite, and interop checks with Ceph's own `rbd`
//! CLI, against the RBD store on the real test cluster (scripts/ceph.sh up).
//! Each case gets a fresh pool of its own, so cases run in parallel. A
//! cluster that is not running fails these tests; it never skips them.

mod conformance;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use imagefs::config::RbdStoreConfig;
use imagefs::store::budget::WriteBudget;
use imagefs::store::{rbd::RbdStore, Store, StoreError, UploadMode, XATTR_CHECKSUM};

fn ceph_conf() -> PathBuf {
    let state =
        std::env::var("IMAGEFS_STATE").unwrap_or_else(|_| "/var/tmp/imagefs-backends".into());
    let conf = PathBuf::from(state).join("ceph/ceph.conf");
    assert!(
        conf.is_file(),
        "{} is missing: start the cluster with `bash scripts/ceph.sh up`",
        conf.display()
    );
    conf
}

/// Runs a Ceph CLI tool as admin; panics with its stderr on failure.
fn run(tool: &str, args: &[&str]) -> Vec<u8> {
    let conf = ceph_conf();
    let out = Command::new("timeout")
        .arg("120")
        .arg(tool)
        .arg("-c")
        .arg(&conf)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_text(tool: &str, args: &[&str]) -> String {
    String::from_utf8(run(tool, args)).unwrap()
}

/// A fresh, empty pool named for the test, with rbd enabled.
fn fresh_pool(name: &str) -> String {
    let pool = format!("conformance-{name}");
    run(
        "ceph",
        &["config", "set", "mon", "mon_allow_pool_delete", "true"],
    );
    run(
        "ceph",
        &[
            "osd",
            "pool",
            "rm",
            &pool,
            &pool,
            "--yes-i-really-really-mean-it",
        ],
    );
    run("ceph", &["osd", "pool", "create", &pool, "8", "8"]);
    run("rbd", &["pool", "init", &pool]);
    pool
}

/// A fresh pool (on a blocking thread) and a store on it.
async fn pool_and_store(name: &'static str) -> (String, Arc<dyn Store>) {
    let pool = tokio::task::spawn_blocking(move || fresh_pool(name))
        .await
        .unwrap();
    let store = store_on(&pool);
    (pool, store)
}

fn store_on(pool: &str) -> Arc<dyn Store> {
    let cfg = RbdStoreConfig {
        pool: pool.to_string(),
        user: None,
        ceph_conf: ceph_conf(),
        chunk_size_mb: 8,
        connect_timeout: Duration::from_secs(30),
        op_timeout: Duration::ZERO,
        thin_provisioning: false,
    };
    Arc::new(RbdStore::open("fast", &cfg).unwrap())
}

/// A store on a fresh pool named after the calling test.
macro_rules! rbd_store {
    () => {{
        async {
            let name = {
                fn f() {}
                let n = std::any::type_name_of_val(&f);
                n.trim_end_matches("::f")
                    .rsplit("::")
                    .find(|s| *s != "{{closure}}")
                    .unwrap()
                    .replace('_', "-")
            };
            let pool = tokio::task::spawn_blocking(move || fresh_pool(&name))
                .await
                .unwrap();
            store_on(&pool)
        }
    }};
}

conformance_tests!(rbd_store!());

/// Three uploads at once against a 16 MiB write budget (two objects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_within_the_write_budget() {
    let pool = tokio::task::spawn_blocking(|| fresh_pool("write-budget"))
        .await
        .unwrap();
    let budget = WriteBudget::new(16 << 20);
    let cfg = RbdStoreConfig {
        pool,
        user: None,
        ceph_conf: ceph_conf(),
        chunk_size_mb: 8,
        connect_timeout: Duration::from_secs(30),
        op_timeout: Duration::ZERO,
        thin_provisioning: false,
    };
    let store = RbdStore::open("fast", &cfg)
        .unwrap()
        .with_write_budget(budget.clone());
    conformance::concurrent_uploads_within_the_write_budget(Arc::new(store), &budget).await;
}

// ---- interop with Ceph's own tools ----------------------------------------

fn rbd_info(pool: &str, spec: &str) -> serde_json::Value {
    let out = run_text(
        "rbd",
        &["info", "--format", "json", &format!("{pool}/{spec}")],
    );
    serde_json::from_str(&out).unwrap()
}

fn snaps(pool: &str, id: &str) -> serde_json::Value {
    let out = run_text(
        "rbd",
        &["snap", "ls", "--format", "json", &format!("{pool}/{id}")],
    );
    serde_json::from_str(&out).unwrap()
}

/// Written through the store: exactly what Glance's driver produces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_matches_glance() {
    let (pool, store) = pool_and_store("layout").await;
    let bytes = conformance::data((9 << 20) + 4321, 7);
    conformance::put(&store, "3f1c0e2a-0000-4000-8000-000000000001", &bytes).await;
    let id = "3f1c0e2a-0000-4000-8000-000000000001";
    let info = rbd_info(&pool, id);
    assert_eq!(info["format"], 2);
    assert_eq!(info["order"], 23, "order from rbd_store_chunk_size 8");
    assert_eq!(
        info["size"],
        bytes.len() as u64,
        "trimmed to the bytes written"
    );
    let default = run_text("ceph", &["config", "get", "client", "rbd_default_features"]);
    let want: Vec<&str> = if default.trim() == "0" {
        vec!["layering"]
    } else {
        // Pacific's default, 61.
        vec![
            "layering",
            "exclusive-lock",
            "object-map",
            "fast-diff",
            "deep-flatten",
        ]
    };
    let mut got: Vec<String> = info["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = want.into_iter().map(String::from).collect();
    want.sort();
    assert_eq!(got, want, "features: ceph.conf's rbd_default_features");
    let s = snaps(&pool, id);
    assert_eq!(s.as_array().unwrap().len(), 1);
    assert_eq!(s[0]["name"], "snap");
    assert_eq!(s[0]["protected"], "true");
    let exported = run("rbd", &["export", &format!("{pool}/{id}@snap"), "-"]);
    assert!(exported == bytes, "rbd export of <id>@snap differs");
    let md5 = run_text(
        "rbd",
        &[
            "image-meta",
            "get",
            &format!("{pool}/{id}"),
            "imagefs.checksum",
        ],
    );
    assert_eq!(md5.trim(), "d41d8cd98f00b204e9800998ecf8427e");
    let fsid = run_text("ceph", &["fsid"]);
    assert_eq!(
        store.location(id),
        format!("rbd://{}/{pool}/{id}/snap", fsid.trim())
    );
}

/// Stored the way Glance does it: reads byte-identical through the store;
/// an image without `snap` is an upload in progress and is not listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_images_read_back() {
    let (pool, store) = pool_and_store("glance-import").await;
    let bytes = conformance::data((17 << 20) + 99, 8);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let p = pool.clone();
    tokio::task::spawn_blocking(move || {
        run(
            "rbd",
            &["import", "--order", "23", &path, &format!("{p}/glance-img")],
        );
        run("rbd", &["snap", "create", &format!("{p}/glance-img@snap")]);
        run("rbd", &["snap", "protect", &format!("{p}/glance-img@snap")]);
        run(
            "rbd",
            &["create", "--size", "1M", &format!("{p}/half-uploaded")],
        );
    })
    .await
    .unwrap();
    let head = store.head("glance-img").await.unwrap();
    assert_eq!(head.size, bytes.len() as u64);
    assert!(conformance::get(&store, "glance-img").await == bytes);
    let ids = conformance::ids(&store).await;
    assert_eq!(ids, vec!["glance-img".to_string()]);
    assert!(matches!(
        store.head("half-uploaded").await,
        Err(StoreError::NotFound(_))
    ));
    // Glance's delete path, through the store.
    store.delete("glance-img").await.unwrap();
    let left = run_text("rbd", &["ls", &pool]);
    assert_eq!(left.trim(), "half-uploaded");
    // gc removes the unfinished upload (no live writer has it open).
    let found = store.gc(Duration::ZERO, false).await.unwrap();
    assert!(
        found.iter().any(|l| l.name == "half-uploaded" && l.removed),
        "{found:?}"
    );
    assert_eq!(run_text("rbd", &["ls", &pool]).trim(), "");
}

/// A copy is a clone of `<src>@snap`, itself a Glance image; the source
/// then cannot be deleted (EBUSY) while the clone exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_is_a_clone_and_pins_its_source() {
    let (pool, store) = pool_and_store("clone").await;
    let bytes = conformance::data(3 << 20, 9);
    conformance::put(&store, "src", &bytes).await;
    // Whole-image copy_file_range into a new upload, as `cp` does.
    let mut up = store.create_upload("dst", UploadMode::New).await.unwrap();
    assert_eq!(
        up.copy_from("src", 0, 0, u64::MAX >> 1).await.unwrap(),
        bytes.len() as u64
    );
    up.commit(None, false).await.unwrap();
    let info = rbd_info(&pool, "dst");
    assert_eq!(info["parent"]["image"], "src");
    assert_eq!(info["parent"]["snapshot"], "snap");
    assert_eq!(snaps(&pool, "dst")[0]["protected"], "true");
    assert!(conformance::get(&store, "dst").await == bytes);
    // Checksums belong to content the store did not see: the layer above
    // hands them to commit (it reuses the source's for a whole copy).
    assert!(matches!(
        store.get_xattr("dst", XATTR_CHECKSUM).await,
        Err(StoreError::NoAttribute)
    ));
    // In pieces, as copy_file_range comes through FUSE (1 GiB at most per
    // call): still one clone; a copy of a prefix only is just that prefix.
    let mut up = store
        .create_upload("pieces", UploadMode::New)
        .await
        .unwrap();
    let mut off = 0;
    while off < bytes.len() as u64 {
        off += up.copy_from("src", off, off, 1 << 20).await.unwrap();
    }
    assert_eq!(up.copy_from("src", off, off, 1 << 20).await.unwrap(), 0);
    up.commit(None, false).await.unwrap();
    assert_eq!(rbd_info(&pool, "pieces")["parent"]["image"], "src");
    assert!(conformance::get(&store, "pieces").await == bytes);
    let mut up = store
        .create_upload("prefix", UploadMode::New)
        .await
        .unwrap();
    assert_eq!(up.copy_from("src", 0, 0, 1 << 20).await.unwrap(), 1 << 20);
    up.write_at(3 << 20, bytes::Bytes::from_static(b"end"))
        .await
        .unwrap();
    up.commit(None, false).await.unwrap();
    let got = conformance::get(&store, "prefix").await;
    assert_eq!(got.len(), (3 << 20) + 3);
    assert!(got[..1 << 20] == bytes[..1 << 20]);
    assert!(
        got[1 << 20..3 << 20].iter().all(|&b| b == 0),
        "gap reads as zeros"
    );
    store.delete("pieces").await.unwrap();
    store.delete("prefix").await.unwrap();
    match store.delete("src").await {
        Err(StoreError::Busy(..)) => {}
        other => panic!("deleting a cloned image: {other:?}"),
    }
    assert!(conformance::get(&store, "src").await == bytes, "src intact");
    // Rewriting the source in place keeps its clone's parent readable.
    let mut up = store
        .create_upload("src", UploadMode::Modify)
        .await
        .unwrap();
    up.write_at(0, bytes::Bytes::from_static(b"new!"))
        .await
        .unwrap();
    up.commit(None, false).await.unwrap();
    assert_eq!(&conformance::get(&store, "src").await[..4], b"new!");
    assert!(
        conformance::get(&store, "dst").await == bytes,
        "clone unchanged"
    );
    store.delete("dst").await.unwrap();
    store.delete("src").await.unwrap();
}

/// A cluster that does not answer: every call fails (EIO at the mount)
/// within the configured timeout instead of hanging, and the store stays
/// usable for the next try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ceph.conf");
    let real = std::fs::read_to_string(ceph_conf()).unwrap();
    // A "monitor" that accepts connections and never answers (a hung
    // server, the hard case), and one nobody listens on.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hung.incoming() {
            held.push(c);
        }
    });
    let dead: String = real
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("mon host") {
                format!("mon host = [v2:127.0.0.1:{port},v1:127.0.0.1:1]")
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&conf, dead).unwrap();
    let cfg = RbdStoreConfig {
        pool: "images".into(),
        user: None,
        ceph_conf: conf,
        chunk_size_mb: 8,
        connect_timeout: Duration::from_secs(3),
        op_timeout: Duration::ZERO,
        thin_provisioning: false,
    };
    let store = RbdStore::open("down", &cfg).unwrap();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(30), store.head("x"))
            .await
            .expect("head hung on a dead cluster");
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        // It waited for the timeout (the hung monitor), and no longer.
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(15),
            "{took:?}"
        );
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("rados_connect"), "{msg}");
    }
}

/// A reader keeps the version it opened while a new one is committed under
/// the same id (the old one waits in the trash); new readers see the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_readers_keep_their_version() {
    let (pool, store) = pool_and_store("pinned").await;
    let old = conformance::data(5 << 20, 10);
    conformance::put(&store, "img", &old).await;
    let reader = store.open_reader("img").await.unwrap().expect("rbd pins");
    assert_eq!(reader.read(0, 100).await.unwrap(), &old[..100]);
    let new = conformance::data(3 << 20, 11);
    conformance::replace(&store, "img", &new).await;
    assert!(conformance::get(&store, "img").await == new);
    let tail = reader.read((4 << 20) + 7, 1 << 20).await.unwrap();
    assert!(
        tail[..] == old[(4 << 20) + 7..],
        "the open reader still reads the old version"
    );
    let trash = run_text("rbd", &["trash", "ls", &pool]);
    assert!(
        trash.contains(".imagefs-old-img."),
        "old version in the trash: {trash}"
    );
    // Not even gc with --older-than 0 purges it while it is read.
    store.gc(Duration::ZERO, false).await.unwrap();
    assert!(run_text("rbd", &["trash", "ls", &pool]).contains(".imagefs-old-img."));
    assert!(reader.read(0, 4096).await.unwrap()[..] == old[..4096]);
    // Once the reader is done, it does (nothing is cloned from it).
    drop(reader);
    assert!(trash_holds(&pool, 0, Some(&store)).await);
}

/// An image deleted while a copy-on-write upload of it is open (what the fs
/// keeps for descriptors still using an unlinked image) waits in the trash
/// for that clone; once the upload is aborted (their last close), the
/// version goes at once, without waiting for gc or another delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_version_goes_with_the_clone_kept_for_it() {
    let (pool, store) = pool_and_store("kept-clone").await;
    conformance::put(&store, "img", &conformance::data(2 << 20, 12)).await;
    let mut kept = store
        .create_upload("img", UploadMode::Modify)
        .await
        .unwrap();
    kept.write_at(0, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    store.delete("img").await.unwrap();
    let trash = run_text("rbd", &["trash", "ls", &pool]);
    assert!(trash.contains(".imagefs-old-img."), "{trash}");
    kept.abort().await.unwrap();
    assert!(trash_holds(&pool, 0, None).await, "still in the trash");
    assert_eq!(run_text("rbd", &["ls", &pool]).trim(), "");
}

/// A version deleted while a reader read it waits in the trash for the
/// reader; when the reader is dropped just before unmount, `shutdown`
/// returns only once it is gone (it used to stay until the next purge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_purges_what_the_last_readers_left() {
    let (pool, store) = pool_and_store("shutdown").await;
    let want = conformance::data(3 << 20, 13);
    let mut readers = Vec::new();
    for id in ["one", "two", "three"] {
        conformance::put(&store, id, &want).await;
        let r = store
            .open_reader(id)
            .await
            .unwrap()
            .expect("rbd pins readers");
        store.delete(id).await.unwrap();
        assert_eq!(
            r.read(1 << 20, 8).await.unwrap(),
            want[1 << 20..(1 << 20) + 8]
        );
        readers.push(r);
    }
    let trash = run_text("rbd", &["trash", "ls", &pool]);
    assert_eq!(trash.matches(".imagefs-old-").count(), 3, "{trash}");
    drop(readers);
    store.shutdown(Duration::from_secs(10)).await;
    let trash = run_text("rbd", &["trash", "ls", &pool]);
    assert_eq!(trash.trim(), "", "left in the trash at unmount");
}

/// Whether the pool's trash holds `want` images within 10 s (a reader's
/// watch ends on a blocking thread after the reader drops), running gc
/// with --older-than 0 on `store` meanwhile if given.
async fn trash_holds(pool: &str, want: usize, store: Option<&Arc<dyn Store>>) -> bool {
    for _ in 0..50 {
        if let Some(s) = store {
            s.gc(Duration::ZERO, false).await.unwrap();
        }
        let p = pool.to_string();
        let trash = tokio::task::spawn_blocking(move || run_text("rbd", &["trash", "ls", &p]))
            .await
            .unwrap();
        if trash.lines().count() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A fresh pool and two stores on it, each its own Ceph client (as two
/// nodes).
async fn two_clients(name: &'static str) -> (String, Arc<dyn Store>, Arc<dyn Store>) {
    let pool = tokio::task::spawn_blocking(move || fresh_pool(name))
        .await
        .unwrap();
    let (a, b) = (store_on(&pool), store_on(&pool));
    (pool, a, b)
}

/// Readers on another mount (another Ceph client) keep reading the version
/// they opened when this one deletes or replaces the image, even through
/// a gc with --older-than 0: they watch its header, `rbd status` lists
/// them, and the version waits in the trash until they are done. Without
/// the watch, such a reader read zeros once the version was purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_elsewhere_keep_deleted_and_replaced_versions() {
    let (pool, here, there) = two_clients("readers-elsewhere").await;
    let old = conformance::data(9 << 20, 21);
    conformance::put(&here, "gone", &old).await;
    conformance::put(&here, "swapped", &old).await;
    let r_gone = there.open_reader("gone").await.unwrap().expect("rbd pins");
    let r_swapped = there
        .open_reader("swapped")
        .await
        .unwrap()
        .expect("rbd pins");
    let status = run_text("rbd", &["status", &format!("{pool}/gone")]);
    assert!(status.contains("watcher="), "a reader is listed: {status}");

    here.delete("gone").await.unwrap();
    assert!(matches!(
        here.head("gone").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!run_text("rbd", &["ls", &pool]).lines().any(|l| l == "gone"));
    let new = conformance::data(2 << 20, 22);
    conformance::replace(&here, "swapped", &new).await;
    here.gc(Duration::ZERO, false).await.unwrap();

    for r in [&r_gone, &r_swapped] {
        let tail = r.read(8 << 20, 1 << 20).await.unwrap();
        assert!(tail[..] == old[8 << 20..], "the old version, not zeros");
        let head = r.read(0, 1 << 20).await.unwrap();
        assert!(head[..] == old[..1 << 20]);
    }
    assert!(conformance::get(&there, "swapped").await == new);
    let trash = run_text("rbd", &["trash", "ls", &pool]);
    assert_eq!(trash.matches(".imagefs-old-").count(), 2, "{trash}");

    // Done reading: the readers' mount purges the deleted image at once;
    // the replaced version waits its hour, or a gc with --older-than 0.
    drop((r_gone, r_swapped));
    assert!(trash_holds(&pool, 1, None).await, "deleted one purged");
    assert!(trash_holds(&pool, 0, Some(&here)).await, "then the other");
    // The reads by id above keep theirs 2 s at most.
    let mut status = String::new();
    for _ in 0..50 {
        status = run_text("rbd", &["status", &format!("{pool}/swapped")]);
        if status.contains("none") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(status.contains("none"), "no watcher left: {status}");
    conformance::put(&there, "gone", &new).await;
    assert!(conformance::get(&here, "gone").await == new);

    // Glance's own delete (the rbd CLI doing what its driver does):
    // unprotect and remove `snap`, then remove the image, which librbd
    // refuses while a reader watches it. The reader's next read fails with
    // ESTALE: the snapshot it had open would now read back as zeros.
    conformance::put(&here, "by-glance", &old).await;
    let r = there.open_reader("by-glance").await.unwrap().unwrap();
    assert!(r.read(0, 4096).await.unwrap()[..] == old[..4096]);
    let snap = format!("{pool}/by-glance@snap");
    run("rbd", &["snap", "unprotect", &snap]);
    run("rbd", &["snap", "rm", &snap]);
    let rm = rbd_rm(&pool, "by-glance");
    assert!(rm.contains("watchers"), "rbd rm refused: {rm}");
    let e = r.read(8 << 20, 1 << 20).await.unwrap_err();
    assert_eq!(imagefs::fs::errno_of(&e), libc::ESTALE, "{e}");
    drop(r);
    let mut rm = String::new();
    for _ in 0..50 {
        rm = rbd_rm(&pool, "by-glance");
        if rm.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rm, "", "rbd rm once the reader is done");
}

/// A reader whose watch is lost (here: its client is blocklisted, as after
/// being cut off from the cluster longer than the watch timeout) may no
/// longer be protected from purges: its reads fail with ESTALE, not with
/// whatever the cluster then answers, and never read zeros.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_lose_their_watch_fail_with_estale() {
    let (pool, here, there) = two_clients("lost-watch").await;
    let bytes = conformance::data(1 << 20, 31);
    conformance::put(&here, "img", &bytes).await;
    let r = there.open_reader("img").await.unwrap().unwrap();
    assert!(r.read(0, 4096).await.unwrap()[..] == bytes[..4096]);
    let status = run_text("rbd", &["status", &format!("{pool}/img")]);
    let addr = status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("watcher="))
        .unwrap_or_else(|| panic!("the reader watches: {status}"))
        .to_string();
    run("ceph", &["osd", "blocklist", "add", &addr]);
    let mut errno = 0;
    for _ in 0..150 {
        match r.read(0, 4096).await {
            Ok(b) => assert!(b[..] == bytes[..4096]),
            Err(e) => {
                errno = imagefs::fs::errno_of(&e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run("ceph", &["osd", "blocklist", "rm", &addr]);
    assert_eq!(errno, libc::ESTALE, "the reads after the watch was lost");
}

/// `rbd rm POOL/NAME`: "" if it succeeded, else its error.
fn rbd_rm(pool: &str, name: &str) -> String {
    let out = Command::new("rbd")
        .arg("-c")
        .arg(ceph_conf())
        .args(["rm", "--no-progress", &format!("{pool}/{name}")])
        .output()
        .unwrap();
    if out.status.success() {
        String::new()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A new version is swapped in by two renames (RBD has no atomic replace):
/// lookups on the same mount in between wait for the swap instead of
/// finding no image. Modify commits are clones of the old version, which
/// the upkeep thread then flattens so that the old one can be purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_during_commits_always_find_the_image() {
    let (pool, store) = pool_and_store("swaps").await;
    conformance::put(&store, "img", &conformance::data(1 << 20, 1)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lookups: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(e) = store.head("img").await {
                        panic!("lookup {n} during a commit: {e}");
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..12u8 {
        let mut up = store
            .create_upload("img", UploadMode::Modify)
            .await
            .unwrap();
        up.write_at(u64::from(i) * 4096, bytes::Bytes::from(vec![i; 4096]))
            .await
            .unwrap();
        up.commit(None, false).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in lookups {
        assert!(l.await.unwrap() > 0, "lookups ran");
    }
    let got = conformance::get(&store, "img").await;
    for i in 0..12usize {
        assert!(got[i * 4096..(i + 1) * 4096].iter().all(|&b| b == i as u8));
    }
    // The upkeep thread detaches each new version from the old one.
    let mut parent = serde_json::Value::Null;
    for _ in 0..100 {
        parent = rbd_info(&pool, "img")["parent"].clone();
        if parent.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(parent.is_null(), "img still a clone: {parent}");
}
