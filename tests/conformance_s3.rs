//! The store conformance suite against the S3 store on Ceph RGW (the real
//! test cluster, scripts/ceph.sh up --rgw), and interop checks with the
//! layout Glance's own driver uses, seen through independent clients (the
//! SDK directly, and boto3 as Glance does). Each case gets a fresh bucket.
//! The same suite runs on s3s-fs in conformance_s3s.rs.

mod conformance;
mod s3_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use imagefs::store::budget::WriteBudget;
use imagefs::store::s3::{LeaseTiming, S3Store};
use imagefs::store::{
    SetAttrs, Store, StoreError, UploadMode, XattrMode, XATTR_CHECKSUM, XATTR_OS_HASH_VALUE,
};

macro_rules! rgw_store {
    () => {
        s3_common::conformance_store(s3_common::rgw(), "imagefs-rgw", test_name!())
    };
}

conformance_tests!(rgw_store!());

/// Three uploads at once against a 16 MiB write budget (three 5 MiB parts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_within_the_write_budget() {
    let case = "write_budget";
    let (bucket, _guard) = tokio::task::spawn_blocking(move || {
        let name = bucket_of(case);
        s3_common::fresh_bucket(&s3_common::rgw(), &name);
        let guard = s3_common::BucketGuard {
            server: s3_common::rgw(),
            bucket: name.clone(),
        };
        (name, guard)
    })
    .await
    .unwrap();
    let budget = WriteBudget::new(16 << 20);
    let cfg = s3_common::config(&s3_common::rgw(), &bucket);
    let store = S3Store::open("s3", &cfg)
        .unwrap()
        .with_write_budget(budget.clone());
    conformance::concurrent_uploads_within_the_write_budget(Arc::new(store), &budget).await;
}

/// A store on a fresh bucket, and the guard that removes the bucket.
async fn store(case: &str) -> (Arc<S3Store>, s3_common::BucketGuard) {
    let case = case.to_string();
    tokio::task::spawn_blocking(move || {
        s3_common::store_for(&s3_common::rgw(), "imagefs-rgw-io", &case)
    })
    .await
    .unwrap()
}

fn bucket_of(case: &str) -> String {
    format!("imagefs-rgw-io-{}", case.replace('_', "-"))
}

async fn boto3(code: String) -> Vec<u8> {
    tokio::task::spawn_blocking(move || s3_common::boto3(&s3_common::rgw(), &code))
        .await
        .unwrap()
}

fn md5_hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let d = openssl::hash::hash(openssl::hash::MessageDigest::md5(), b).unwrap();
    d.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Written through the store (multipart and single PUT): key `<id>` with
/// no prefix, nothing else left in the bucket, the bytes as written, the
/// checksums in the metadata; checked with the SDK directly and boto3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_matches_glance() {
    let (s, _bucket) = store("layout").await;
    let st: Arc<dyn Store> = s.clone();
    let big = "3f1c0e2a-0000-4000-8000-000000000001";
    let small = "3f1c0e2a-0000-4000-8000-000000000002";
    let bytes = conformance::data((12 << 20) + 4321, 7);
    let mut up = st.create_upload(big, UploadMode::New).await.unwrap();
    for (i, c) in bytes.chunks(1 << 20).enumerate() {
        up.write_at((i << 20) as u64, Bytes::copy_from_slice(c))
            .await
            .unwrap();
    }
    let sums = imagefs::store::Checksums {
        md5: md5_hex(&bytes),
        os_hash_algo: "sha512".into(),
        os_hash_value: "ab".repeat(64),
    };
    up.commit(Some(sums.clone()), false).await.unwrap();
    conformance::put(&st, small, b"small image").await;

    // The SDK, not the store.
    let c = s.client();
    let b = bucket_of("layout");
    let keys: Vec<String> = c
        .list_objects_v2()
        .bucket(&b)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_string())
        // imagefs's own hidden object (the store directory's times) aside.
        .filter(|k| !k.starts_with(".imagefs-"))
        .collect();
    assert_eq!(keys, vec![big.to_string(), small.to_string()]);
    let got = c.get_object().bucket(&b).key(big).send().await.unwrap();
    let etag = got.e_tag().unwrap().to_string();
    assert!(etag.contains('-'), "a multipart object: {etag}");
    assert_eq!(got.body.collect().await.unwrap().into_bytes(), bytes);
    let h = c.head_object().bucket(&b).key(big).send().await.unwrap();
    let m = h.metadata().unwrap();
    assert_eq!(m.get("imagefs-checksum"), Some(&sums.md5));
    assert_eq!(m.get("imagefs-os-hash-value"), Some(&sums.os_hash_value));
    assert_eq!(
        st.get_xattr(big, XATTR_OS_HASH_VALUE).await.unwrap(),
        sums.os_hash_value.as_bytes()
    );
    assert_eq!(st.location(big), format!("s3://127.0.0.1:7480/{b}/{big}"));
    let got = c.get_object().bucket(&b).key(small).send().await.unwrap();
    assert!(!got.e_tag().unwrap().contains('-'), "one PutObject");
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes(),
        &b"small image"[..]
    );
    // boto3, as Glance reads it.
    let md5 = boto3(format!(
        "import hashlib\nprint(hashlib.md5(S3.get_object(Bucket='{b}', Key='{big}')['Body'].read()).hexdigest())"
    ))
    .await;
    assert_eq!(String::from_utf8(md5).unwrap().trim(), sums.md5);
}

/// A multipart object uploaded by boto3 (as Glance's driver does, 5 MiB
/// parts in parallel) reads byte-exact through the store, by id and
/// through a pinned reader, and copies and renames server-side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_written_by_boto3_read_exactly() {
    let (s, _bucket) = store("boto3").await;
    let st: Arc<dyn Store> = s.clone();
    let b = bucket_of("boto3");
    let len: usize = (17 << 20) + 999;
    let out = boto3(format!(
        "import hashlib, io, random\n\
         from boto3.s3.transfer import TransferConfig\n\
         random.seed(5)\n\
         data = bytes(random.getrandbits(8) for _ in range({len}))\n\
         cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=4)\n\
         S3.upload_fileobj(io.BytesIO(data), '{b}', 'glance-img', Config=cfg)\n\
         S3.put_object(Bucket='{b}', Key='glance-small', Body=data[:1000])\n\
         print(hashlib.md5(data).hexdigest())\n\
         print(S3.head_object(Bucket='{b}', Key='glance-img')['ETag'])\n"
    ))
    .await;
    let out = String::from_utf8(out).unwrap();
    let mut lines = out.lines();
    let md5 = lines.next().unwrap().to_string();
    assert!(
        lines.next().unwrap().contains('-'),
        "boto3 made a multipart object"
    );

    let head = st.head("glance-img").await.unwrap();
    assert_eq!(head.size, len as u64);
    assert_eq!(head.mode, Some(0o644));
    let all = conformance::get(&st, "glance-img").await;
    assert_eq!(md5_hex(&all), md5);
    let r = st.open_reader("glance-img").await.unwrap().unwrap();
    let mut via_reader = Vec::new();
    // Several reads in flight at once, as the read-ahead issues them.
    let chunk = 4u64 << 20;
    let reads: Vec<_> = (0..len.div_ceil(chunk as usize) as u64)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { r.read(i * chunk, chunk as u32).await.unwrap() })
        })
        .collect();
    for t in reads {
        via_reader.extend_from_slice(&t.await.unwrap());
    }
    assert_eq!(via_reader, all);
    assert_eq!(conformance::get(&st, "glance-small").await, &all[..1000]);
    let names = conformance::ids(&st).await;
    assert_eq!(names, vec!["glance-img", "glance-small"]);

    st.copy("glance-img", "copied").await.unwrap();
    assert_eq!(md5_hex(&conformance::get(&st, "copied").await), md5);
    st.rename("copied", "moved", false).await.unwrap();
    assert!(matches!(
        st.head("copied").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(md5_hex(&conformance::get(&st, "moved").await), md5);
    // An upload made of a server-side copy (whole parts by UploadPartCopy).
    let mut up = st
        .create_upload("assembled", UploadMode::New)
        .await
        .unwrap();
    let n = up.copy_from("glance-img", 0, 0, len as u64).await.unwrap();
    assert_eq!(n, len as u64);
    // The copied range reads back (what the checksums are computed from).
    assert_eq!(
        up.read_at(5 << 20, 10).await.unwrap(),
        &all[5 << 20..(5 << 20) + 10]
    );
    up.commit(None, false).await.unwrap();
    assert_eq!(md5_hex(&conformance::get(&st, "assembled").await), md5);
}

/// A reader keeps the version it opened: a replaced object fails its reads
/// (ESTALE) instead of mixing versions; a metadata change does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_are_pinned_to_their_version() {
    let (s, _bucket) = store("pinned").await;
    let st: Arc<dyn Store> = s.clone();
    let v1 = conformance::data(6 << 20, 1);
    conformance::put(&st, "img", &v1).await;
    let r = st.open_reader("img").await.unwrap().unwrap();
    assert_eq!(r.read(0, 100).await.unwrap(), &v1[..100]);
    st.set_attrs(
        "img",
        &SetAttrs {
            mode: Some(0o600),
            ..SetAttrs::default()
        },
    )
    .await
    .unwrap();
    st.set_xattr("img", "user.k", b"v", XattrMode::Any)
        .await
        .unwrap();
    assert_eq!(
        r.read(100, 100).await.unwrap(),
        &v1[100..200],
        "same content"
    );
    let b = bucket_of("pinned");
    boto3(format!(
        "S3.put_object(Bucket='{b}', Key='img', Body=b'v2' * 1000)"
    ))
    .await;
    match r.read(0, 100).await {
        Err(StoreError::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::ESTALE)),
        other => panic!("read of a replaced object: {other:?}"),
    }
    assert_eq!(st.read("img", 0, 4).await.unwrap(), &b"v2v2"[..]);
}

/// Keys under `prefix`, listed with the SDK directly.
async fn keys_with_prefix(s: &S3Store, bucket: &str, prefix: &str) -> Vec<String> {
    let r = s
        .client()
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    r.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// Open readers follow this process's renames and unlinks, as open files
/// do: a renamed image is read at its new key, an unlinked or replaced one
/// from a hidden copy that gc leaves alone while it is held and the last
/// reader deletes. Objects written by imagefs and by Glance (boto3, no
/// imagefs metadata) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_follow_renames_and_unlinks() {
    let (s, _bucket) = store("follow").await;
    let st: Arc<dyn Store> = s.clone();
    let b = bucket_of("follow");
    let (v1, v2) = (conformance::data(6 << 20, 1), conformance::data(5000, 2));
    conformance::put(&st, "img", &v1).await;
    conformance::put(&st, "other", &v2).await;
    boto3(format!(
        "S3.put_object(Bucket='{b}', Key='glance', Body=b'from glance' * 1000)"
    ))
    .await;
    let r1 = st.open_reader("img").await.unwrap().unwrap();
    let r2 = st.open_reader("other").await.unwrap().unwrap();
    let r3 = st.open_reader("glance").await.unwrap().unwrap();
    assert_eq!(r1.read(0, 100).await.unwrap(), &v1[..100]);

    st.rename("img", "moved", false).await.unwrap();
    assert_eq!(r1.read(100, 100).await.unwrap(), &v1[100..200], "renamed");
    // Over "other": its reader keeps the replaced image.
    st.rename("moved", "other", true).await.unwrap();
    st.delete("other").await.unwrap();
    st.delete("glance").await.unwrap();
    assert_eq!(
        r1.read((6 << 20) - 100, 100).await.unwrap(),
        &v1[(6 << 20) - 100..],
        "unlinked"
    );
    assert_eq!(r2.read(0, 5000).await.unwrap(), &v2[..], "replaced");
    assert_eq!(
        r3.read(0, 11).await.unwrap(),
        &b"from glance"[..],
        "unlinked"
    );

    let hidden = keys_with_prefix(&s, &b, ".imagefs-unlinked-").await;
    assert_eq!(hidden.len(), 3, "{hidden:?}");
    assert!(
        st.list().await.unwrap().is_empty(),
        "hidden copies are not images"
    );
    let found = st.gc(Duration::ZERO, false).await.unwrap();
    assert!(found.is_empty(), "gc took held copies: {found:?}");

    drop((r1, r2, r3));
    let t = Instant::now();
    while !keys_with_prefix(&s, &b, ".imagefs-unlinked-")
        .await
        .is_empty()
    {
        assert!(t.elapsed() < Duration::from_secs(20), "hidden copies left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RGW (Pacific) honours If-None-Match: * on PutObject, so exclusive create
/// is atomic there: checked with the SDK directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_refuses_a_second_conditional_put() {
    let (s, _bucket) = store("conditional").await;
    let c = s.client();
    let b = bucket_of("conditional");
    let put = || {
        c.put_object()
            .bucket(&b)
            .key("k")
            .if_none_match("*")
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
            .send()
    };
    put().await.unwrap();
    let e = put().await.unwrap_err();
    let status = e.raw_response().map(|r| r.status().as_u16());
    assert_eq!(status, Some(412), "{e:?}");
}

/// gc aborts multipart uploads and removes claims that dead writers left,
/// and never touches a live upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_collects_abandoned_uploads() {
    let (s, _bucket) = store("gc").await;
    let st: Arc<dyn Store> = s.clone();
    let b = bucket_of("gc");
    boto3(format!(
        "u = S3.create_multipart_upload(Bucket='{b}', Key='dead')\n\
         S3.upload_part(Bucket='{b}', Key='dead', UploadId=u['UploadId'], PartNumber=1, Body=b'x' * (5 << 20))\n\
         S3.put_object(Bucket='{b}', Key='.imagefs-tmp-dead2', Body=b'')\n"
    ))
    .await;
    // A live upload with parts in flight.
    let mut live = st.create_upload("live", UploadMode::New).await.unwrap();
    live.write_at(0, Bytes::from(conformance::data(11 << 20, 3)))
        .await
        .unwrap();
    let found = st.gc(Duration::ZERO, true).await.unwrap();
    assert!(
        found.iter().any(|l| l.name.starts_with("dead (")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|l| l.name == ".imagefs-tmp-dead2"),
        "{found:?}"
    );
    assert!(
        found.iter().all(|l| !l.removed && !l.name.contains("live")),
        "{found:?}"
    );
    let recent = st.gc(Duration::from_secs(3600), false).await.unwrap();
    assert!(recent.is_empty(), "younger than the threshold: {recent:?}");
    let removed = st.gc(Duration::ZERO, false).await.unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.iter().all(|l| l.removed));
    let left = boto3(format!(
        "print(len(S3.list_multipart_uploads(Bucket='{b}').get('Uploads', [])))"
    ))
    .await;
    assert_eq!(
        String::from_utf8(left).unwrap().trim(),
        "1",
        "only the live upload"
    );
    live.write_at(11 << 20, Bytes::from_static(b"end"))
        .await
        .unwrap();
    live.commit(None, false).await.unwrap();
    assert_eq!(st.head("live").await.unwrap().size, (11 << 20) + 3);
    assert!(st.gc(Duration::ZERO, true).await.unwrap().is_empty());
}

/// A failed commit returns the error and leaves nothing behind: here a
/// bucket removed under a multipart upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_returns_the_error() {
    let (s, _bucket) = store("failed-commit").await;
    let st: Arc<dyn Store> = s.clone();
    let b = bucket_of("failed-commit");
    let mut up = st.create_upload("img", UploadMode::Replace).await.unwrap();
    up.write_at(0, Bytes::from(conformance::data(7 << 20, 2)))
        .await
        .unwrap();
    // Abort the multipart upload behind the store's back.
    boto3(format!(
        "for u in S3.list_multipart_uploads(Bucket='{b}').get('Uploads', []):\n\
         \x20   S3.abort_multipart_upload(Bucket='{b}', Key=u['Key'], UploadId=u['UploadId'])\n"
    ))
    .await;
    let e = up.commit(None, false).await.unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound(_) | StoreError::Unavailable(_)),
        "{e:?}"
    );
    assert!(matches!(st.head("img").await, Err(StoreError::NotFound(_))));
}

/// A server that is not there fails with EIO (Unavailable) in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_fails_in_bounded_time() {
    let mut server = s3_common::rgw();
    server.endpoint = "http://127.0.0.1:9".into(); // discard: nothing listens
    let st = S3Store::open("s3", &s3_common::config(&server, "nobucket")).unwrap();
    let t = Instant::now();
    let e = st.head("x").await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(st.statfs().await.is_err());
    println!("dead server: EIO after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let shown = format!("{e} {e:?} {st:?}");
    assert!(!shown.contains(&server.secret_key), "secret in {shown}");
}

/// The checksums handed to commit come back as the xattrs Glance's
/// `checksum` and `os_hash_value` are registered from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_survive_attribute_changes() {
    let (s, _bucket) = store("sums").await;
    let st: Arc<dyn Store> = s.clone();
    conformance::put(&st, "img", &conformance::data(9 << 20, 4)).await;
    st.set_attrs(
        "img",
        &SetAttrs {
            uid: Some(42),
            ..SetAttrs::default()
        },
    )
    .await
    .unwrap();
    st.set_xattr(
        "img",
        "user.Mixed Case é",
        b"\x00\xffbin",
        XattrMode::Create,
    )
    .await
    .unwrap();
    assert_eq!(
        st.get_xattr("img", XATTR_CHECKSUM).await.unwrap(),
        b"d41d8cd98f00b204e9800998ecf8427e"
    );
    assert_eq!(st.head("img").await.unwrap().uid, Some(42));
    assert_eq!(
        st.get_xattr("img", "user.Mixed Case é").await.unwrap(),
        b"\x00\xffbin"
    );
    assert!(st
        .list_xattrs("img")
        .await
        .unwrap()
        .contains(&"user.Mixed Case é".to_string()));
}

/// Keys under `prefix` in `bucket`, seen with the SDK.
async fn keys_under(c: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    c.list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_string())
        .collect()
}

/// Listing reads the attributes from the attribute index (no HEAD per
/// image) while the index matches the object's ETag, and from the object
/// once another client replaced it; rename, delete and gc keep the index
/// to one entry per image. The index is inspected with the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_reads_the_attribute_index() {
    let (s, _bucket) = store("index").await;
    let st: Arc<dyn Store> = s.clone();
    let c = s.client();
    let b = bucket_of("index");
    let t = std::time::UNIX_EPOCH + Duration::new(1_500_000_000, 5);
    conformance::put(&st, "a", &conformance::data(3 << 20, 2)).await;
    st.set_attrs(
        "a",
        &SetAttrs {
            mode: Some(0o600),
            mtime: Some(t),
            ..SetAttrs::default()
        },
    )
    .await
    .unwrap();
    let entries = keys_under(c, &b, ".imagefs-attrs/a/").await;
    let etag = c.head_object().bucket(&b).key("a").send().await.unwrap();
    let etag = etag.e_tag().unwrap().trim_matches('"').to_string();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].starts_with(&format!(".imagefs-attrs/a/{etag}_")));
    let listed = st.list().await.unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the index itself is not listed: {listed:?}"
    );
    let head = st.head("a").await.unwrap();
    assert_eq!((listed[0].mode, listed[0].mtime), (Some(0o600), t));
    assert_eq!(listed[0], head);

    // The listing believes the index: an entry put there by hand with the
    // same ETag and a newer ctime wins over the object's own metadata.
    // Fields after the id: etag, ctime, content id, mode, uid, gid, ...
    let mut f: Vec<String> = entries[0].split('_').map(str::to_string).collect();
    f[1] = "9999999999.000000000".into();
    f[3] = "444".into();
    let forged = f.join("_");
    c.put_object()
        .bucket(&b)
        .key(&forged)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b""))
        .send()
        .await
        .unwrap();
    assert_eq!(st.list().await.unwrap()[0].mode, Some(0o444));
    assert_eq!(st.head("a").await.unwrap().mode, Some(0o600));

    // Replaced by another client: the entries no longer match its ETag.
    boto3(format!(
        "S3.put_object(Bucket='{b}', Key='a', Body=b'v2' * 1000)"
    ))
    .await;
    let listed = st.list().await.unwrap();
    assert_eq!((listed[0].size, listed[0].mode), (2000, Some(0o644)));
    assert_eq!(listed[0], st.head("a").await.unwrap());
    let gone = st.gc(Duration::ZERO, false).await.unwrap();
    let gone: Vec<&str> = gone.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(keys_under(c, &b, ".imagefs-attrs/").await.is_empty());

    // rename and delete move and drop the entries.
    st.set_attrs(
        "a",
        &SetAttrs {
            uid: Some(42),
            ..SetAttrs::default()
        },
    )
    .await
    .unwrap();
    st.rename("a", "b", false).await.unwrap();
    assert!(keys_under(c, &b, ".imagefs-attrs/a/").await.is_empty());
    assert_eq!(keys_under(c, &b, ".imagefs-attrs/b/").await.len(), 1);
    assert_eq!(st.list().await.unwrap()[0].uid, Some(42));
    st.delete("b").await.unwrap();
    assert!(keys_under(c, &b, ".imagefs-attrs/").await.is_empty());
}

/// gc run by another process (a second store on the bucket, as on another
/// node) spares what a live process holds, however old: its multipart
/// upload and claim, and the hidden copy of an unlinked object its reader
/// holds, all named in its lease. A lease no longer renewed (a dead
/// process's) protects nothing and is removed itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_elsewhere_spares_what_a_live_process_holds() {
    let (s, _bucket) = store("lease").await;
    let b = bucket_of("lease");
    let timing = LeaseTiming {
        settle: Duration::from_millis(200),
        renew: Duration::from_secs(1),
        expiry: Duration::from_secs(3),
    };
    let open = || {
        let cfg = s3_common::config(&s3_common::rgw(), &b);
        Arc::new(S3Store::open("s3", &cfg).unwrap().with_lease_timing(timing))
    };
    let (here, elsewhere) = (open(), open());
    let st: Arc<dyn Store> = here.clone();
    let v1 = conformance::data(6 << 20, 1);
    conformance::put(&st, "img", &v1).await;
    let reader = st.open_reader("img").await.unwrap().unwrap();
    st.delete("img").await.unwrap();
    let new = conformance::data(11 << 20, 2);
    let mut up = st.create_upload("new", UploadMode::New).await.unwrap();
    up.write_at(0, Bytes::from(new.clone())).await.unwrap();

    let lease = here.lease_key().to_string();
    let t = Instant::now();
    let names = loop {
        if let Ok(r) = s.client().get_object().bucket(&b).key(&lease).send().await {
            let body = r.body.collect().await.unwrap().into_bytes();
            let names: Vec<String> = String::from_utf8_lossy(&body)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            if names.len() == 3 {
                break names;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no lease of 3 names");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hidden = keys_with_prefix(&s, &b, ".imagefs-unlinked-").await;
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    assert!(names.contains(&hidden[0]), "{names:?}");
    assert!(names.contains(&".imagefs-tmp-new".to_string()), "{names:?}");

    // Longer than the expiry: the lease is renewed meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let found = elsewhere.gc(Duration::ZERO, false).await.unwrap();
    assert!(
        found.is_empty(),
        "gc took what a live process holds: {found:?}"
    );
    assert_eq!(keys_with_prefix(&s, &b, ".imagefs-unlinked-").await, hidden);
    assert_eq!(
        keys_with_prefix(&s, &b, ".imagefs-tmp-new").await,
        [".imagefs-tmp-new"]
    );
    assert_eq!(reader.read(0, 4096).await.unwrap(), &v1[..4096]);
    up.commit(None, false).await.unwrap();
    assert!(st.read("new", 0, new.len() as u32).await.unwrap() == new);

    // Nothing held: the lease goes.
    drop(reader);
    let t = Instant::now();
    while !keys_with_prefix(&s, &b, ".imagefs-live/").await.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "lease left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(keys_with_prefix(&s, &b, ".imagefs-unlinked-")
        .await
        .is_empty());

    // Leases of dead processes and the claims they name: one of another
    // node (no header, only its age tells), one of a process of this host
    // that is gone (pid above pid_max): at once.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let crashed = format!(
        "# imagefs host=h boot={} pid=4294967295 start=1\n.imagefs-tmp-crashed\n",
        boot.trim()
    );
    for (key, body) in [
        (".imagefs-tmp-ghost", String::new()),
        (".imagefs-live/dead", ".imagefs-tmp-ghost\n".to_string()),
        (".imagefs-tmp-crashed", String::new()),
        (".imagefs-live/crashed", crashed),
    ] {
        s.client()
            .put_object()
            .bucket(&b)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
    let names = |found: Vec<imagefs::store::Leftover>| {
        let mut v: Vec<String> = found.into_iter().map(|l| l.name).collect();
        v.sort();
        v
    };
    let now = names(elsewhere.gc(Duration::ZERO, true).await.unwrap());
    assert_eq!(now, [".imagefs-live/crashed", ".imagefs-tmp-crashed"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let found = elsewhere.gc(Duration::ZERO, false).await.unwrap();
    assert!(found.iter().all(|l| l.removed), "{found:?}");
    assert_eq!(
        names(found),
        [
            ".imagefs-live/crashed",
            ".imagefs-live/dead",
            ".imagefs-tmp-crashed",
            ".imagefs-tmp-ghost"
        ]
    );
    for prefix in [".imagefs-tmp-", ".imagefs-live/", ".imagefs-unlinked-"] {
        assert!(
            keys_with_prefix(&s, &b, prefix).await.is_empty(),
            "{prefix}"
        );
    }
}
