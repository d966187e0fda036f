//! The direct-SDK baseline of `scripts/bench.sh s3`: the same transfers as
//! imagefs makes through its mount, made by the same SDK client (built by
//! the S3 store itself, so retries, timeouts and checksum settings are the
//! same), without FUSE.
//!
//! ```text
//! s3bench put FILE BUCKET KEY      multipart upload: 10 MiB parts, 6 in flight
//! s3bench get BUCKET KEY [--out F] ranged GETs of 4 MiB, 8 in flight; the bytes are
//!                                  dropped, or written in order to F (`-`: stdout)
//! s3bench list BUCKET              ListObjectsV2 of the top level (delimiter /), every page; prints the count
//! s3bench head BUCKET KEY          prints the size
//! s3bench rm BUCKET KEY            deletes the object
//! s3bench fill BUCKET N BYTES      N objects of BYTES random bytes, keys = uuids
//! s3bench mb BUCKET                creates the bucket
//! s3bench rb BUCKET                empties (objects and multipart uploads) and removes it
//! ```
//!
//! Part size and parallelism are imagefs's defaults: parts of
//! `large_object_chunk_size_mb` (10 MiB), at most min(`thread_pools` (10),
//! `IN_FLIGHT_BYTES` / part) = 6 in flight, as `src/store/s3/upload.rs`;
//! reads as the read-ahead of `src/fs/readahead.rs` at its largest window
//! (8 chunks of 4 MiB). Endpoint and keys come from `S3_ENDPOINT`,
//! `S3_ACCESS_KEY`, `S3_SECRET_KEY` (and `S3_REGION`); the secret is never
//! printed. Path-style addressing. Timing goes to stderr.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use imagefs::config::{BucketUrlFormat, S3StoreConfig, Secret};
use imagefs::store::s3::{S3Store, IN_FLIGHT_BYTES};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// imagefs's default part size (`large_object_chunk_size_mb` = 10).
const PART: u64 = 10 << 20;
/// imagefs's default `thread_pools`.
const THREAD_POOLS: u64 = 10;
/// Read-ahead chunk and its largest window (src/fs/readahead.rs).
const READ_CHUNK: u64 = 4 << 20;
const READ_PARALLEL: usize = 8;
/// Small requests (fill, rb) in flight at once.
const SMALL_PARALLEL: usize = 16;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn client(bucket: &str) -> Res<Client> {
    let cfg = S3StoreConfig {
        host: env("S3_ENDPOINT")?,
        access_key: Secret::new(env("S3_ACCESS_KEY")?),
        secret_key: Secret::new(env("S3_SECRET_KEY")?),
        bucket: bucket.to_string(),
        region: std::env::var("S3_REGION").ok().filter(|r| !r.is_empty()),
        bucket_url_format: BucketUrlFormat::Path,
        create_bucket_on_put: false,
        large_object_size_mb: 100,
        large_object_chunk_size_mb: PART >> 20,
        thread_pools: THREAD_POOLS as usize,
        cacert: None,
        staging_dir: std::env::temp_dir(),
        op_timeout: std::time::Duration::ZERO,
    };
    let store = S3Store::open("s3bench", &cfg).map_err(|e| e.to_string())?;
    Ok(store.client().clone())
}

/// The SDK error with its source chain (the SDK's Display alone says
/// little more than "service error").
fn sdk<E: std::error::Error>(what: &str, e: E) -> Box<dyn std::error::Error + Send + Sync> {
    let mut s = format!("{what}: {e}");
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s.into()
}

fn report(op: &str, bytes: u64, t0: Instant) {
    let s = t0.elapsed().as_secs_f64();
    eprintln!(
        "s3bench {op}: {bytes} bytes in {s:.3} s ({:.1} MB/s)",
        bytes as f64 / s / 1e6
    );
}

async fn put(path: &str, bucket: &str, key: &str) -> Res<()> {
    let c = client(bucket)?;
    let t0 = Instant::now();
    let mut f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let size = f.metadata()?.len();
    let read_part = |f: &mut std::fs::File| -> Res<Bytes> {
        let mut buf = Vec::with_capacity(PART as usize);
        Read::take(&mut *f, PART).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    };
    if size < PART {
        let body = read_part(&mut f)?;
        c.put_object()
            .bucket(bucket)
            .key(key)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk("PutObject", e))?;
        report("put", size, t0);
        return Ok(());
    }
    let upload_id = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| sdk("CreateMultipartUpload", e))?
        .upload_id()
        .ok_or("no upload id")?
        .to_string();
    let in_flight = (IN_FLIGHT_BYTES / PART).clamp(1, THREAD_POOLS) as usize;
    let mut tasks: JoinSet<Res<CompletedPart>> = JoinSet::new();
    let mut parts = Vec::new();
    let mut num = 1;
    let result: Res<()> = async {
        loop {
            let body = read_part(&mut f)?;
            if body.is_empty() {
                break;
            }
            while tasks.len() >= in_flight {
                parts.push(tasks.join_next().await.expect("a task")??);
            }
            let req = c
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(num)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body));
            let n = num;
            tasks.spawn(async move {
                let r = req.send().await.map_err(|e| sdk("UploadPart", e))?;
                Ok(CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(r.e_tag().map(str::to_string))
                    .build())
            });
            num += 1;
        }
        while let Some(r) = tasks.join_next().await {
            parts.push(r??);
        }
        parts.sort_by_key(|p| p.part_number());
        c.complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk("CompleteMultipartUpload", e))?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tasks.abort_all();
        let _ = c
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
        return Err(e);
    }
    report("put", size, t0);
    Ok(())
}

async fn head_size(c: &Client, bucket: &str, key: &str) -> Res<u64> {
    let h = c
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| sdk("HeadObject", e))?;
    Ok(h.content_length().unwrap_or(0).max(0) as u64)
}

async fn get(bucket: &str, key: &str, out: Option<&str>) -> Res<()> {
    let c = client(bucket)?;
    let t0 = Instant::now();
    let size = head_size(&c, bucket, key).await?;
    let mut sink: Option<Box<dyn Write>> = match out {
        None => None,
        Some("-") => Some(Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        ))),
        Some(p) => Some(Box::new(std::fs::File::create(p)?)),
    };
    // In order, READ_PARALLEL ahead of the one being consumed.
    let mut queue = VecDeque::new();
    let mut next = 0u64;
    let mut got = 0u64;
    loop {
        while queue.len() < READ_PARALLEL && next < size {
            let len = READ_CHUNK.min(size - next);
            let req = c
                .get_object()
                .bucket(bucket)
                .key(key)
                .range(format!("bytes={next}-{}", next + len - 1));
            queue.push_back(tokio::spawn(async move {
                let r = req.send().await.map_err(|e| sdk("GetObject", e))?;
                let b = r
                    .body
                    .collect()
                    .await
                    .map_err(|e| sdk("GetObject body", e))?;
                Res::Ok(b.into_bytes())
            }));
            next += len;
        }
        let Some(t) = queue.pop_front() else { break };
        let b = t.await??;
        got += b.len() as u64;
        if let Some(w) = sink.as_mut() {
            w.write_all(&b)?;
        }
    }
    if let Some(mut w) = sink {
        w.flush()?;
    }
    if got != size {
        return Err(format!("read {got} bytes, HEAD said {size}").into());
    }
    report("get", size, t0);
    Ok(())
}

/// Every key of `bucket`, or with `delimiter` only those before it (the
/// top level: what Glance stores, without imagefs's `.imagefs-attrs/`).
async fn all_keys(c: &Client, bucket: &str, delimiter: Option<&str>) -> Res<Vec<String>> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let r = c
            .list_objects_v2()
            .bucket(bucket)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| sdk("ListObjectsV2", e))?;
        keys.extend(
            r.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        token = r.next_continuation_token().map(str::to_string);
        if !r.is_truncated().unwrap_or(false) || token.is_none() {
            return Ok(keys);
        }
    }
}

async fn list(bucket: &str) -> Res<()> {
    let c = client(bucket)?;
    let t0 = Instant::now();
    let n = all_keys(&c, bucket, Some("/")).await?.len();
    eprintln!(
        "s3bench list: {n} objects in {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    println!("{n}");
    Ok(())
}

/// Runs `f` on every item, SMALL_PARALLEL at once.
async fn each<T, F, Fut>(items: Vec<T>, f: F) -> Res<()>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Res<()>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(SMALL_PARALLEL));
    let mut tasks = JoinSet::new();
    for it in items {
        let permit = sem.clone().acquire_owned().await?;
        let fut = f(it);
        tasks.spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        });
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn random_key() -> Res<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_string())
}

async fn fill(bucket: &str, n: usize, bytes: usize) -> Res<()> {
    let c = client(bucket)?;
    let t0 = Instant::now();
    let mut blob = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut blob)?;
    let blob = Bytes::from(blob);
    let keys = (0..n).map(|_| random_key()).collect::<Res<Vec<_>>>()?;
    let bucket = bucket.to_string();
    each(keys, |k| {
        let req = c
            .put_object()
            .bucket(&bucket)
            .key(k)
            .body(ByteStream::from(blob.clone()));
        async move {
            req.send().await.map_err(|e| sdk("PutObject", e))?;
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "s3bench fill: {n} objects of {bytes} bytes in {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn make_bucket(bucket: &str) -> Res<()> {
    client(bucket)?
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| sdk("CreateBucket", e))?;
    Ok(())
}

async fn remove_bucket(bucket: &str) -> Res<()> {
    let c = client(bucket)?;
    let uploads = c
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| sdk("ListMultipartUploads", e))?;
    for u in uploads.uploads() {
        if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
            c.abort_multipart_upload()
                .bucket(bucket)
                .key(k)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| sdk("AbortMultipartUpload", e))?;
        }
    }
    loop {
        let keys = all_keys(&c, bucket, None).await?;
        if keys.is_empty() {
            break;
        }
        let b = bucket.to_string();
        each(keys, |k| {
            let req = c.delete_object().bucket(&b).key(k);
            async move {
                req.send().await.map_err(|e| sdk("DeleteObject", e))?;
                Ok(())
            }
        })
        .await?;
    }
    c.delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| sdk("DeleteBucket", e))?;
    Ok(())
}

const USAGE: &str =
    "usage: s3bench put FILE BUCKET KEY | get BUCKET KEY [--out FILE|-] | list BUCKET \
| head BUCKET KEY | rm BUCKET KEY | fill BUCKET N BYTES | mb BUCKET | rb BUCKET";

async fn run(args: &[String]) -> Res<()> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["put", file, bucket, key] => put(file, bucket, key).await,
        ["get", bucket, key] => get(bucket, key, None).await,
        ["get", bucket, key, "--out", out] => get(bucket, key, Some(out)).await,
        ["list", bucket] => list(bucket).await,
        ["head", bucket, key] => {
            let c = client(bucket)?;
            println!("{}", head_size(&c, bucket, key).await?);
            Ok(())
        }
        ["rm", bucket, key] => {
            client(bucket)?
                .delete_object()
                .bucket(*bucket)
                .key(*key)
                .send()
                .await
                .map_err(|e| sdk("DeleteObject", e))?;
            Ok(())
        }
        ["fill", bucket, n, bytes] => fill(bucket, n.parse()?, bytes.parse()?).await,
        ["mb", bucket] => make_bucket(bucket).await,
        ["rb", bucket] => remove_bucket(bucket).await,
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3bench: {e}");
            ExitCode::FAILURE
        }
    }
}
