//! The store conformance suite: the same cases, written once against the
//! `Store` trait, run against every backend on a real server. A backend's
//! test file calls `conformance_tests!(async_expr_making_a_store)`, where the
//! expression yields a fresh, empty `Arc<dyn Store>` each time.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use imagefs::store::budget::WriteBudget;
use imagefs::store::{
    Checksums, SetAttrs, Store, StoreError, UploadMode, XattrMode, TEMP_PREFIX, XATTR_CHECKSUM,
};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sums(md5: &str) -> Checksums {
    Checksums {
        md5: md5.into(),
        os_hash_algo: "sha512".into(),
        os_hash_value: "00".into(),
    }
}

/// Uploads `bytes` as a new image in 1 MiB parts.
pub async fn put(store: &Arc<dyn Store>, id: &str, bytes: &[u8]) {
    let sums = Some(sums("d41d8cd98f00b204e9800998ecf8427e"));
    upload(store, id, bytes, UploadMode::New, sums).await;
}

/// Replaces `id` with `bytes`: a new version, without checksums.
pub async fn replace(store: &Arc<dyn Store>, id: &str, bytes: &[u8]) {
    upload(store, id, bytes, UploadMode::Replace, None).await;
}

async fn upload(
    store: &Arc<dyn Store>,
    id: &str,
    bytes: &[u8],
    mode: UploadMode,
    sums: Option<Checksums>,
) {
    let mut up = store.create_upload(id, mode).await.unwrap();
    for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
        up.write_at((i << 20) as u64, Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    up.commit(sums, false).await.unwrap();
}

pub async fn get(store: &Arc<dyn Store>, id: &str) -> Vec<u8> {
    let size = store.head(id).await.unwrap().size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let chunk = store.read(id, out.len() as u64, 3 << 20).await.unwrap();
        assert!(!chunk.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&chunk);
    }
    out
}

/// The ids `list` answers.
pub async fn ids(store: &Arc<dyn Store>) -> Vec<String> {
    let listed = store.list().await.unwrap();
    listed.into_iter().map(|m| m.id).collect()
}

async fn listed(store: &Arc<dyn Store>, id: &str) -> bool {
    ids(store).await.iter().any(|i| i == id)
}

pub async fn put_get_delete_list(store: Arc<dyn Store>) {
    let bytes = data(5 << 20 | 12345, 1);
    put(&store, "img-a", &bytes).await;
    let head = store.head("img-a").await.unwrap();
    assert_eq!(head.size, bytes.len() as u64);
    assert!(listed(&store, "img-a").await);
    assert_eq!(get(&store, "img-a").await, bytes);
    // Ranges: start, across a part boundary, the tail, past the end.
    assert_eq!(store.read("img-a", 0, 10).await.unwrap(), &bytes[..10]);
    let mid = (1 << 20) - 7;
    assert_eq!(
        store.read("img-a", mid, 100).await.unwrap(),
        &bytes[mid as usize..mid as usize + 100]
    );
    let tail = bytes.len() as u64 - 5;
    assert_eq!(
        store.read("img-a", tail, 100).await.unwrap(),
        &bytes[tail as usize..]
    );
    assert!(store
        .read("img-a", bytes.len() as u64 + 10, 10)
        .await
        .unwrap()
        .is_empty());
    store.delete("img-a").await.unwrap();
    assert!(matches!(
        store.head("img-a").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!listed(&store, "img-a").await);
    assert!(matches!(
        store.delete("img-a").await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn uncommitted_uploads_are_invisible(store: Arc<dyn Store>) {
    let mut up = store.create_upload("img-b", UploadMode::New).await.unwrap();
    up.write_at(0, Bytes::from(data(1 << 20, 2))).await.unwrap();
    assert!(matches!(
        store.head("img-b").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!listed(&store, "img-b").await);
    assert!(
        store
            .list()
            .await
            .unwrap()
            .iter()
            .all(|m| !m.id.starts_with(TEMP_PREFIX)),
        "temp objects are never listed"
    );
    // A live upload is never collected.
    let found = store.gc(Duration::ZERO, false).await.unwrap();
    assert!(
        found.iter().all(|l| !l.removed),
        "gc removed a live upload: {found:?}"
    );
    up.abort().await.unwrap();
    assert!(matches!(
        store.head("img-b").await,
        Err(StoreError::NotFound(_))
    ));
    let found = store.gc(Duration::ZERO, true).await.unwrap();
    assert!(found.is_empty(), "abort left {found:?}");
}

pub async fn exclusive_create(store: Arc<dyn Store>) {
    put(&store, "img-c", b"first").await;
    assert!(matches!(
        store.create_upload("img-c", UploadMode::New).await,
        Err(StoreError::AlreadyExists(_))
    ));
    // Two writers racing for one new id: the second is refused at once.
    let first = store.create_upload("img-d", UploadMode::New).await.unwrap();
    assert!(matches!(
        store.create_upload("img-d", UploadMode::New).await,
        Err(StoreError::AlreadyExists(_))
    ));
    first.commit(None, false).await.unwrap();
    assert_eq!(store.head("img-d").await.unwrap().size, 0);
    assert!(store.create_upload("../x", UploadMode::New).await.is_err());
    let reserved = format!("{TEMP_PREFIX}x");
    assert!(store
        .create_upload(&reserved, UploadMode::New)
        .await
        .is_err());
}

/// A new image given up while being written (unlinked while a handle
/// still writes it, see `Upload::orphan`): its id is free for another
/// writer at once, the orphan goes on taking writes, and aborting it
/// leaves the new image and nothing else.
pub async fn orphaned_upload_frees_its_id(store: Arc<dyn Store>) {
    let (old, new) = (data(11 << 20, 7), data(3 << 20, 8));
    let mut orphan = store.create_upload("img-o", UploadMode::New).await.unwrap();
    orphan
        .write_at(0, Bytes::from(old[..6 << 20].to_vec()))
        .await
        .unwrap();
    orphan.orphan().await.unwrap();
    let mut up = store.create_upload("img-o", UploadMode::New).await.unwrap();
    orphan
        .write_at(6 << 20, Bytes::from(old[6 << 20..].to_vec()))
        .await
        .unwrap();
    up.write_at(0, Bytes::from(new.clone())).await.unwrap();
    up.commit(None, false).await.unwrap();
    assert!(get(&store, "img-o").await == new);
    // The orphan is not a writer of the id any more, nor an image.
    assert!(matches!(
        store.create_upload("img-o", UploadMode::New).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let ids = ids(&store).await;
    assert_eq!(
        ids.iter().filter(|i| i.contains("img-o")).count(),
        1,
        "{ids:?}"
    );
    let found = store.gc(Duration::ZERO, false).await.unwrap();
    assert!(
        found.iter().all(|l| !l.removed),
        "gc took the orphan: {found:?}"
    );
    orphan.abort().await.unwrap();
    assert!(get(&store, "img-o").await == new);
    let found = store.gc(Duration::ZERO, true).await.unwrap();
    assert!(found.is_empty(), "the orphan left {found:?}");
}

pub async fn forward_gaps_and_extension(store: Arc<dyn Store>) {
    let mut up = store.create_upload("img-e", UploadMode::New).await.unwrap();
    up.write_at(0, Bytes::from_static(b"head")).await.unwrap();
    up.write_at(3 << 20, Bytes::from_static(b"tail"))
        .await
        .unwrap();
    up.set_len(5 << 20).await.unwrap();
    assert_eq!(up.len(), 5 << 20);
    up.commit(None, false).await.unwrap();
    let got = get(&store, "img-e").await;
    let mut want = vec![0u8; 5 << 20];
    want[..4].copy_from_slice(b"head");
    want[3 << 20..(3 << 20) + 4].copy_from_slice(b"tail");
    assert_eq!(got, want);
}

pub async fn replace_and_modify(store: Arc<dyn Store>) {
    let old = data(3 << 20, 3);
    put(&store, "img-f", &old).await;
    // Replace: nothing of the old content remains.
    let mut up = store
        .create_upload("img-f", UploadMode::Replace)
        .await
        .unwrap();
    up.write_at(0, Bytes::from_static(b"new")).await.unwrap();
    // Readers see the old image until commit.
    assert_eq!(get(&store, "img-f").await, old);
    up.commit(None, false).await.unwrap();
    assert_eq!(get(&store, "img-f").await, b"new");
    if !store.capabilities().modify {
        return;
    }
    put(&store, "img-g", &old).await;
    let mut up = store
        .create_upload("img-g", UploadMode::Modify)
        .await
        .unwrap();
    assert_eq!(up.len(), old.len() as u64);
    up.write_at(1000, Bytes::from_static(b"patch"))
        .await
        .unwrap();
    assert_eq!(
        up.read_at(998, 9).await.unwrap(),
        [&old[998..1000], b"patch", &old[1005..1007]].concat()
    );
    let appended = old.len() as u64;
    up.write_at(appended, Bytes::from_static(b"append"))
        .await
        .unwrap();
    assert_eq!(
        get(&store, "img-g").await,
        old,
        "no torn image before commit"
    );
    up.commit(None, false).await.unwrap();
    let mut want = old.clone();
    want[1000..1005].copy_from_slice(b"patch");
    want.extend_from_slice(b"append");
    assert_eq!(get(&store, "img-g").await, want);
    // Truncate through Modify.
    let mut up = store
        .create_upload("img-g", UploadMode::Modify)
        .await
        .unwrap();
    up.set_len(10).await.unwrap();
    up.commit(None, false).await.unwrap();
    assert_eq!(get(&store, "img-g").await, &want[..10]);
    assert!(matches!(
        store.create_upload("missing", UploadMode::Modify).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Random writes, truncates and reads of a Modify upload match a plain
/// byte vector, before and after commit (blocks written in part, gaps past
/// the end, truncate then extend showing zeros, appends).
pub async fn modify_matches_a_model(store: Arc<dyn Store>) {
    if !store.capabilities().modify {
        return;
    }
    let mut model = data((3 << 20) + 12345, 21);
    put(&store, "img-m", &model).await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n.max(1)
    };
    for round in 0..2 {
        let mut up = store
            .create_upload("img-m", UploadMode::Modify)
            .await
            .unwrap();
        assert_eq!(up.len(), model.len() as u64);
        for op in 0..40 {
            let len = model.len() as u64;
            match next(10) {
                0..=5 => {
                    let off = next(len + (2 << 20));
                    let n = 1 + next(3 << 19) as usize;
                    let bytes = data(n, (round * 100 + op) as u64);
                    up.write_at(off, Bytes::from(bytes.clone())).await.unwrap();
                    let end = off as usize + n;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[off as usize..end].copy_from_slice(&bytes);
                }
                6 => {
                    let n = next(len + (1 << 20)) as usize;
                    up.set_len(n as u64).await.unwrap();
                    model.resize(n, 0);
                }
                _ => {
                    let off = next(len + 10);
                    let n = next(3 << 20) as u32;
                    let got = up.read_at(off, n).await.unwrap();
                    let lo = (off as usize).min(model.len());
                    let hi = (off as usize + n as usize).min(model.len());
                    assert!(
                        got[..] == model[lo..hi],
                        "round {round} op {op}: read {off}+{n}"
                    );
                }
            }
            assert_eq!(up.len(), model.len() as u64, "round {round} op {op}");
        }
        up.commit(None, false).await.unwrap();
        assert!(
            get(&store, "img-m").await == model,
            "round {round}: committed content"
        );
    }
    store.delete("img-m").await.unwrap();
}

pub async fn rename_and_copy(store: Arc<dyn Store>) {
    let a = data(2 << 20, 4);
    let b = data(1000, 5);
    put(&store, "img-h", &a).await;
    put(&store, "img-i", &b).await;
    assert!(matches!(
        store.rename("img-h", "img-i", false).await,
        Err(StoreError::AlreadyExists(_))
    ));
    store.rename("img-h", "img-j", false).await.unwrap();
    assert!(matches!(
        store.head("img-h").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(get(&store, "img-j").await, a);
    store.rename("img-j", "img-i", true).await.unwrap();
    assert_eq!(get(&store, "img-i").await, a);
    assert!(matches!(
        store.rename("nope", "img-k", true).await,
        Err(StoreError::NotFound(_))
    ));
    store.copy("img-i", "img-k").await.unwrap();
    assert_eq!(get(&store, "img-k").await, a);
    assert_eq!(get(&store, "img-i").await, a, "copy keeps the source");
    assert!(matches!(
        store.copy("img-i", "img-k").await,
        Err(StoreError::AlreadyExists(_))
    ));
    // Ranged server-side copy into an upload.
    let mut up = store.create_upload("img-l", UploadMode::New).await.unwrap();
    let n = up.copy_from("img-k", 100, 0, 5000).await.unwrap();
    assert_eq!(n, 5000);
    up.commit(None, false).await.unwrap();
    assert_eq!(get(&store, "img-l").await, &a[100..5100]);
}

pub async fn metadata(store: Arc<dyn Store>) {
    if !store.capabilities().metadata {
        return;
    }
    put(&store, "img-m", b"meta").await;
    let when = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    store
        .set_attrs(
            "img-m",
            &SetAttrs {
                mode: Some(0o640),
                mtime: Some(when),
                ..SetAttrs::default()
            },
        )
        .await
        .unwrap();
    let h = store.head("img-m").await.unwrap();
    assert_eq!(h.mode, Some(0o640));
    assert_eq!(h.mtime, when);
    // The checksums handed to commit are kept with the image.
    assert_eq!(
        store.get_xattr("img-m", XATTR_CHECKSUM).await.unwrap(),
        b"d41d8cd98f00b204e9800998ecf8427e"
    );
    store
        .set_xattr("img-m", "user.owner", b"ops", XattrMode::Create)
        .await
        .unwrap();
    assert!(store
        .set_xattr("img-m", "user.owner", b"x", XattrMode::Create)
        .await
        .is_err());
    assert!(store
        .set_xattr("img-m", "user.none", b"x", XattrMode::Replace)
        .await
        .is_err());
    assert_eq!(
        store.get_xattr("img-m", "user.owner").await.unwrap(),
        b"ops"
    );
    assert!(store
        .list_xattrs("img-m")
        .await
        .unwrap()
        .contains(&"user.owner".to_string()));
    store.remove_xattr("img-m", "user.owner").await.unwrap();
    assert!(matches!(
        store.get_xattr("img-m", "user.owner").await,
        Err(StoreError::NoAttribute)
    ));
    // Overwriting the content keeps mode and user attributes.
    store
        .set_xattr("img-m", "user.keep", b"1", XattrMode::Any)
        .await
        .unwrap();
    replace(&store, "img-m", b"v2").await;
    assert_eq!(store.head("img-m").await.unwrap().mode, Some(0o640));
    assert_eq!(store.get_xattr("img-m", "user.keep").await.unwrap(), b"1");
    assert!(SystemTime::now() > when);
}

pub async fn streaming_upload_many_parts(store: Arc<dyn Store>) {
    let bytes = data(24 << 20, 6);
    put(&store, "img-n", &bytes).await;
    assert_eq!(get(&store, "img-n").await, bytes);
    let head = store.head("img-n").await.unwrap();
    let again = store.head("img-n").await.unwrap();
    assert_eq!(head.version, again.version, "version is stable");
    put(&store, "img-o", &bytes[..10]).await;
    let other = store.head("img-o").await.unwrap();
    assert_ne!(head.version, other.version);
}

/// Small writes in order (64 KiB, as Glance's file store writes, and odd
/// sizes) across several 8 MiB objects commit byte-exact. Where uploads
/// take writes anywhere, overwrites of the newest bytes and of older ones
/// and reads in the middle of the stream see every earlier write.
pub async fn small_writes_in_order(store: Arc<dyn Store>) {
    let mut model = data((17 << 20) + 4321, 31);
    let mut up = store.create_upload("img-w", UploadMode::New).await.unwrap();
    let sizes = [64 << 10, 100_000, 4096, 64 << 10, 1 << 20, 777];
    let (mut off, mut i) = (0usize, 0usize);
    while off < model.len() {
        let n = sizes[i % sizes.len()].min(model.len() - off);
        up.write_at(off as u64, Bytes::copy_from_slice(&model[off..off + n]))
            .await
            .unwrap();
        off += n;
        i += 1;
        if store.capabilities().random_write && i % 50 == 0 {
            // The newest bytes (not sent yet), then older ones.
            for at in [off - n.min(3000), off / 3] {
                let patch = data(2000.min(off - at), i as u64);
                up.write_at(at as u64, Bytes::from(patch.clone()))
                    .await
                    .unwrap();
                model[at..at + patch.len()].copy_from_slice(&patch);
            }
            let at = off.saturating_sub(5 << 20);
            let got = up.read_at(at as u64, (off - at) as u32).await.unwrap();
            assert!(got[..] == model[at..off], "read back {at}..{off}");
        }
    }
    if store.capabilities().random_write {
        // A run that grows over a write sent before it: the run must land
        // last. [9, 10) MiB is sent when [8.5, 9) MiB starts a new run,
        // which then grows over it.
        let mib = 1usize << 20;
        for (at, n, seed) in [
            (9 * mib, mib, 1u64),
            (8 * mib + mib / 2, mib / 2, 2),
            (9 * mib, mib / 2, 3),
        ] {
            let bytes = data(n, seed);
            up.write_at(at as u64, Bytes::from(bytes.clone()))
                .await
                .unwrap();
            model[at..at + n].copy_from_slice(&bytes);
        }
    }
    up.commit(None, false).await.unwrap();
    assert!(get(&store, "img-w").await == model, "committed content");
    store.delete("img-w").await.unwrap();
}

pub async fn statfs_reports_capacity(store: Arc<dyn Store>) {
    let st = store.statfs().await.unwrap();
    assert!(st.total_bytes > 0);
    assert!(st.avail_bytes <= st.total_bytes);
    assert!(st.name_max > 0);
}

/// Uploads at once on a store whose writes count against `budget` (a few
/// RBD objects or S3 parts): every image reads back as written, the store
/// held room in the budget while sending, and never more than it.
pub async fn concurrent_uploads_within_the_write_budget(
    store: Arc<dyn Store>,
    budget: &WriteBudget,
) {
    let limit = budget.limit().expect("a bounded budget");
    let images: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("budget-{i}"), data(40 << 20, 50 + i)))
        .collect();
    let [a, b, c] = &images[..] else {
        unreachable!()
    };
    tokio::join!(
        put(&store, &a.0, &a.1),
        put(&store, &b.0, &b.1),
        put(&store, &c.0, &c.1)
    );
    for (id, bytes) in &images {
        assert!(get(&store, id).await == *bytes, "{id} differs");
        store.delete(id).await.unwrap();
    }
    let peak = budget.peak();
    assert!(peak >= limit / 2 && peak <= limit, "peak {peak} of {limit}");
}

/// Generates one `#[tokio::test]` per case for a backend.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            put_get_delete_list, uncommitted_uploads_are_invisible, exclusive_create,
            orphaned_upload_frees_its_id, forward_gaps_and_extension, replace_and_modify,
            modify_matches_a_model, rename_and_copy, metadata,
            streaming_upload_many_parts, small_writes_in_order, statfs_reports_capacity);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                conformance::$case(store).await;
            }
        )*
    };
}
