//! Memory of a large S3 upload stays bounded (parts in flight, not the
//! image): 2 GiB streamed through the store on RGW, in 1 MiB writes as the
//! FUSE layer sends them, while this process's peak RSS is checked. Its own
//! test binary, so no other test shares the process.

mod s3_common;

use bytes::Bytes;
use imagefs::store::{Store, UploadMode};

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_upload_memory_is_bounded() {
    let server = s3_common::rgw();
    let (store, _bucket) = tokio::task::spawn_blocking(move || {
        let bucket = "imagefs-rgw-memory";
        s3_common::fresh_bucket(&server, bucket);
        let guard = s3_common::BucketGuard {
            server: server.clone(),
            bucket: bucket.into(),
        };
        let mut cfg = s3_common::config(&server, bucket);
        // Glance's defaults: 10 MiB parts, 10 threads.
        cfg.large_object_chunk_size_mb = 10;
        cfg.thread_pools = 10;
        (
            imagefs::store::s3::S3Store::open("s3", &cfg).unwrap(),
            guard,
        )
    })
    .await
    .unwrap();
    let before = peak_rss_kib();
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let total: u64 = 2 << 30;
    let mut up = store.create_upload("big", UploadMode::New).await.unwrap();
    let mut off = 0;
    while off < total {
        up.write_at(off, chunk.clone()).await.unwrap();
        off += chunk.len() as u64;
    }
    up.commit(None, false).await.unwrap();
    let peak = peak_rss_kib();
    println!("peak RSS {before} KiB before, {peak} KiB after 2 GiB");
    assert_eq!(store.head("big").await.unwrap().size, total);
    assert!(
        peak < before + (128 << 10),
        "peak RSS grew from {before} KiB to {peak} KiB"
    );
    store.delete("big").await.unwrap();
}
