//! Server-side copies: one CopyObject (S3 allows it up to 5 GiB; Ceph RGW
//! at any size), else, when the server refuses it for the size, a
//! multipart upload whose parts are UploadPartCopy ranges of the source,
//! several in flight. Every copy names the source's ETag
//! (`x-amz-copy-source-if-match`), so a source replaced meanwhile fails the
//! copy instead of mixing versions. The destination's metadata is always
//! given (MetadataDirective REPLACE), which also makes a copy of an object
//! onto itself legal: that is how metadata of a committed object changes.

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};
use tokio::task::JoinSet;

use super::error::{s3err, S3Error};
use super::meta::Meta;
use super::object::{copy_source, Bucket, Head};
use crate::store::{Result, StoreError};

/// Largest object one CopyObject copies.
pub const COPY_OBJECT_MAX: u64 = 5 << 30;
/// Part size of a multipart copy (10,000 parts cover S3's 5 TiB limit).
const COPY_PART: u64 = 512 << 20;

/// Copies `src` (as `head` saw it) to `dst` with metadata `meta`.
pub async fn copy(
    b: &std::sync::Arc<Bucket>,
    src: &str,
    head: &Head,
    dst: &str,
    meta: &Meta,
) -> Result<()> {
    // CopyObject first, whatever the size: S3 refuses it above 5 GiB, but
    // Ceph RGW copies any size (onto itself: only the metadata changes),
    // where parts would copy every byte.
    let one = b
        .client
        .copy_object()
        .bucket(&b.name)
        .key(dst)
        .copy_source(copy_source(&b.name, src))
        .copy_source_if_match(&head.etag)
        .metadata_directive(MetadataDirective::Replace)
        .set_metadata(Some(meta.clone()))
        .set_content_type(head.content_type.clone())
        .customize()
        .config_override(slow())
        .send()
        .await
        .map_err(s3err);
    match one {
        Ok(_) => return Ok(()),
        Err(e) if head.size > COPY_OBJECT_MAX && too_large(&e) => {
            tracing::debug!(
                src,
                dst,
                "CopyObject refused ({}); copying in parts",
                e.message
            );
        }
        Err(e) => return Err(e.into_store(src)),
    }
    let up = b
        .client
        .create_multipart_upload()
        .bucket(&b.name)
        .key(dst)
        .set_metadata(Some(meta.clone()))
        .set_content_type(head.content_type.clone())
        .send()
        .await
        .map_err(|e| s3err(e).into_store(dst))?;
    let upload_id = up
        .upload_id()
        .ok_or_else(|| StoreError::Unavailable(format!("{dst}: no upload id")))?
        .to_string();
    b.live.insert(&upload_id);
    let r = copy_parts(b, src, head, dst, &upload_id).await;
    let r = match r {
        Ok(parts) => complete(b, dst, &upload_id, parts).await,
        Err(e) => Err(e),
    };
    b.live.remove(&upload_id);
    if r.is_err() {
        let _ = b
            .client
            .abort_multipart_upload()
            .bucket(&b.name)
            .key(dst)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    r
}

/// Completes multipart upload `upload_id` of `key` from `parts`.
pub(crate) async fn complete(
    b: &Bucket,
    key: &str,
    upload_id: &str,
    parts: Vec<CompletedPart>,
) -> Result<()> {
    b.client
        .complete_multipart_upload()
        .bucket(&b.name)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .customize()
        .config_override(slow())
        .send()
        .await
        .map(|_| ())
        .map_err(|e| s3err(e).into_store(key))
}

/// Timeouts of copies and of CompleteMultipartUpload: the server answers
/// only once the copy or the assembly is done (RGW took over 30 s to
/// complete a 2 GiB upload of 205 parts on a loaded machine), so no byte
/// for a while is normal.
fn slow() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(
        aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .read_timeout(super::client::COPY_TIMEOUT)
            .operation_attempt_timeout(super::client::COPY_TIMEOUT)
            .build(),
    )
}

/// A CopyObject refused for the size of its source (AWS: 400
/// InvalidRequest, others: EntityTooLarge).
fn too_large(e: &S3Error) -> bool {
    matches!(e.status, Some(400 | 413))
        || matches!(e.code.as_deref(), Some("InvalidRequest" | "EntityTooLarge"))
}

async fn copy_parts(
    b: &std::sync::Arc<Bucket>,
    src: &str,
    head: &Head,
    dst: &str,
    upload_id: &str,
) -> Result<Vec<CompletedPart>> {
    let mut tasks: JoinSet<std::result::Result<CompletedPart, S3Error>> = JoinSet::new();
    let mut parts = Vec::new();
    let mut off = 0;
    let mut n = 1;
    while off < head.size || !tasks.is_empty() {
        if off < head.size && tasks.len() < b.in_flight_parts {
            let end = (off + COPY_PART).min(head.size);
            part_copy(
                &mut tasks,
                b,
                src,
                &head.etag,
                dst,
                upload_id,
                n,
                off,
                end - off,
            );
            off = end;
            n += 1;
            continue;
        }
        match tasks.join_next().await.expect("a task") {
            Ok(Ok(p)) => parts.push(p),
            Ok(Err(e)) => return Err(e.into_store(src)),
            Err(e) => return Err(StoreError::Unavailable(format!("copy task: {e}"))),
        }
    }
    parts.sort_by_key(|p| p.part_number());
    Ok(parts)
}

/// Starts UploadPartCopy of `len` bytes of `src` at `off` as part `n`.
#[allow(clippy::too_many_arguments)]
pub fn part_copy(
    tasks: &mut JoinSet<std::result::Result<CompletedPart, S3Error>>,
    b: &std::sync::Arc<Bucket>,
    src: &str,
    etag: &str,
    dst: &str,
    upload_id: &str,
    n: i32,
    off: u64,
    len: u64,
) {
    let req = b
        .client
        .upload_part_copy()
        .bucket(&b.name)
        .key(dst)
        .upload_id(upload_id)
        .part_number(n)
        .copy_source(copy_source(&b.name, src))
        .copy_source_if_match(etag)
        .copy_source_range(format!("bytes={off}-{}", off + len - 1))
        .customize()
        .config_override(slow())
        // The request has no body; RGW (Pacific) refuses it without an
        // explicit Content-Length (411), which the SDK leaves out.
        .mutate_request(|r| {
            r.headers_mut().insert("content-length", "0");
        });
    tasks.spawn(async move {
        let r = req.send().await.map_err(s3err)?;
        let etag = r
            .copy_part_result()
            .and_then(|c| c.e_tag())
            .unwrap_or_default()
            .to_string();
        Ok(CompletedPart::builder().part_number(n).e_tag(etag).build())
    });
}
