//! One bucket on one S3 server, as the store and its uploads share it: the
//! client, HEAD (size, ETag, user metadata) and ranged GET of a key, the
//! claim objects that make a new id exclusive, whether the server honours
//! `If-None-Match: *` (probed once), and the bucket created on first put
//! when the config asks for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::error::{s3err, S3Error};
use super::lease::{Live, Timing};
use super::meta::{self, Meta};
use super::reader::Pins;
use crate::store::budget::WriteBudget;
use crate::store::{ObjectMeta, Result, StoreError, TEMP_PREFIX};

/// Metadata key holding an id that changes with every committed content
/// (and never with a metadata-only change), set by imagefs's own writes.
pub const CONTENT: &str = "imagefs-content";

/// Metadata key of a claim object: who made it.
const CLAIM: &str = "imagefs-claim";

/// What HEAD says about one key.
#[derive(Debug, Clone)]
pub struct Head {
    pub size: u64,
    /// As the server sent it, quotes included (for If-Match).
    pub etag: String,
    pub last_modified: SystemTime,
    pub content_type: Option<String>,
    pub meta: Meta,
}

impl Head {
    /// The content version: imagefs's content id, else the ETag.
    pub fn version(&self) -> String {
        match self.meta.get(CONTENT) {
            Some(c) => c.clone(),
            None => self.etag.trim_matches('"').to_string(),
        }
    }

    pub fn object_meta(&self, id: &str) -> ObjectMeta {
        meta::parse(&self.meta).object_meta(id, self.size, self.last_modified, self.version())
    }
}

/// A name no other writer picks: time, process, counter.
pub fn unique_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{t:x}-{:x}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// When a listed object was last written (the epoch if the server did not
/// say).
pub fn modified(o: &aws_sdk_s3::types::Object) -> SystemTime {
    o.last_modified()
        .and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(UNIX_EPOCH)
}

/// How long ago, by the local clock, a listed object was last written.
pub fn age(o: &aws_sdk_s3::types::Object, now: SystemTime) -> std::time::Duration {
    now.duration_since(modified(o)).unwrap_or_default()
}

/// The claim object of a new image being written.
pub fn claim_key(id: &str) -> String {
    format!("{TEMP_PREFIX}{id}")
}

/// `bucket/key` for CopySource, the key percent-encoded.
pub fn copy_source(bucket: &str, key: &str) -> String {
    let mut s = String::with_capacity(bucket.len() + key.len() + 1);
    s.push_str(bucket);
    s.push('/');
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The object whose metadata holds the store directory's mode, owner and
/// times (S3 has no directories); hidden like every `.imagefs-` name.
pub const STORE_OBJECT: &str = ".imagefs-store";

pub struct Bucket {
    pub client: aws_sdk_s3::Client,
    pub name: String,
    /// Bytes of the first parts of a multipart upload.
    pub part_size: u64,
    /// Bytes of upload parts in flight at once, at most.
    pub in_flight_bytes: u64,
    /// Parts in flight at once, at most (`thread_pools`).
    pub in_flight_parts: usize,
    create_on_put: bool,
    created: OnceCell<()>,
    /// Whether `If-None-Match: *` on PutObject is honoured.
    conditional: OnceCell<bool>,
    /// Claim keys and multipart upload ids of this process's live uploads,
    /// and the hidden keys of unlinked objects its readers still hold,
    /// published as this process's lease so gc anywhere spares them.
    pub live: Live,
    /// This process's open readers, by key.
    pub pins: Pins,
    /// Bytes of parts in flight, shared with the daemon's other stores.
    pub budget: WriteBudget,
}

impl Bucket {
    /// Changes the metadata of `STORE_OBJECT` (created if missing).
    pub async fn update_store_meta(&self, change: impl FnOnce(&mut Meta)) -> Result<()> {
        let mut m = match self.head_opt(STORE_OBJECT).await? {
            Some(h) => h.meta,
            None => Meta::new(),
        };
        change(&mut m);
        self.client
            .put_object()
            .bucket(&self.name)
            .key(STORE_OBJECT)
            .set_metadata(Some(m))
            .body(ByteStream::from_static(b""))
            .send()
            .await
            .map_err(|e| s3err(e).into_store(STORE_OBJECT))?;
        Ok(())
    }

    /// An image was added or removed: the store directory's mtime and
    /// ctime move, as a directory's do. Best effort (the image is there).
    pub async fn touch_dir(&self) {
        let now = SystemTime::now();
        let r = self
            .update_store_meta(|m| meta::set_dir_times(m, now))
            .await;
        if let Err(e) = r {
            tracing::debug!("store directory times: {e}");
        }
    }

    pub fn new(
        client: aws_sdk_s3::Client,
        name: String,
        part_size: u64,
        in_flight_parts: usize,
        in_flight_bytes: u64,
        create_on_put: bool,
    ) -> Bucket {
        let live = Live::new(
            client.clone(),
            name.clone(),
            &unique_token(),
            Timing::default(),
        );
        Bucket {
            client,
            name,
            part_size,
            in_flight_bytes,
            in_flight_parts,
            create_on_put,
            created: OnceCell::new(),
            conditional: OnceCell::new(),
            live,
            pins: Pins::default(),
            budget: WriteBudget::default(),
        }
    }

    pub async fn head(&self, key: &str) -> std::result::Result<Head, S3Error> {
        let r = self
            .client
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(s3err)?;
        Ok(Head {
            size: r.content_length().unwrap_or(0).max(0) as u64,
            etag: r.e_tag().unwrap_or_default().to_string(),
            last_modified: r
                .last_modified()
                .and_then(|t| SystemTime::try_from(*t).ok())
                .unwrap_or(UNIX_EPOCH),
            content_type: r.content_type().map(str::to_string),
            meta: meta::normalize(r.metadata()),
        })
    }

    /// HEAD of `key`, None if it does not exist.
    pub async fn head_opt(&self, key: &str) -> Result<Option<Head>> {
        match self.head(key).await {
            Ok(h) => Ok(Some(h)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into_store(key)),
        }
    }

    /// HEAD of `key`, NotFound if it does not exist.
    pub async fn head_or(&self, key: &str) -> Result<Head> {
        self.head(key).await.map_err(|e| e.into_store(key))
    }

    /// Bytes `offset..offset+len` of `key` (fewer at its end, none past
    /// it), of version `etag` when given.
    pub async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        etag: Option<&str>,
    ) -> std::result::Result<Bytes, S3Error> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut req = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .range(format!("bytes={offset}-{}", offset + len - 1));
        if let Some(t) = etag {
            req = req.if_match(t);
        }
        let r = match req.send().await.map_err(s3err) {
            Ok(r) => r,
            Err(e) if e.is_invalid_range() => return Ok(Bytes::new()),
            Err(e) => return Err(e),
        };
        let body = r.body.collect().await.map_err(|e| S3Error {
            status: None,
            code: None,
            message: format!("reading the body: {e}"),
        })?;
        let mut b = body.into_bytes();
        if b.len() as u64 > len {
            // A server that ignored the range.
            b = b.slice(..len as usize);
        }
        Ok(b)
    }

    /// Every key under `prefix` (all pages); with `delimiter`, keys that
    /// go on past it after the prefix are left out (their common prefixes
    /// are not returned either).
    pub async fn list_keys(
        &self,
        prefix: Option<&str>,
        delimiter: Option<&str>,
    ) -> Result<Vec<aws_sdk_s3::types::Object>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let r = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .set_prefix(prefix.map(str::to_string))
                .set_delimiter(delimiter.map(str::to_string))
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| s3err(e).into_store(&format!("bucket {}", self.name)))?;
            out.extend(r.contents().iter().cloned());
            token = r.next_continuation_token().map(str::to_string);
            if !r.is_truncated().unwrap_or(false) || token.is_none() {
                return Ok(out);
            }
        }
    }

    pub async fn delete_key(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(|e| s3err(e).into_store(key))?;
        Ok(())
    }

    /// Creates the bucket once, when `create_bucket_on_put` is set and it
    /// does not exist yet (Glance does the same before its first put).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if !self.create_on_put {
            return Ok(());
        }
        self.created
            .get_or_try_init(|| async {
                let head = self.client.head_bucket().bucket(&self.name).send().await;
                match head.map_err(s3err) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into_store(&format!("bucket {}", self.name))),
                }
                let r = self.client.create_bucket().bucket(&self.name).send().await;
                match r.map_err(s3err) {
                    Ok(_) => Ok(()),
                    Err(e)
                        if matches!(
                            e.code.as_deref(),
                            Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                        ) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e.into_store(&format!("creating bucket {}", self.name))),
                }
            })
            .await
            .map(|_| ())
    }

    /// Whether the server refuses a second `If-None-Match: *` PutObject of
    /// one key (AWS, RGW, s3s-fs do; Swift's s3api does not). Probed once
    /// with a temp key; a server that ignores the header makes exclusive
    /// create fall back to HEAD then PUT, which is racy.
    pub async fn conditional_put(&self) -> Result<bool> {
        self.conditional
            .get_or_try_init(|| async {
                let key = format!("{TEMP_PREFIX}probe.{}", unique_token());
                let put = || {
                    self.client
                        .put_object()
                        .bucket(&self.name)
                        .key(&key)
                        .if_none_match("*")
                        .body(ByteStream::from_static(b""))
                        .send()
                };
                put().await.map_err(|e| s3err(e).into_store(&key))?;
                let second = put().await.map_err(s3err);
                let _ = self.delete_key(&key).await;
                let honoured = match second {
                    Ok(_) => false,
                    Err(e) if e.is_precondition() || e.is_conflict() => true,
                    Err(e) if e.is_not_implemented() || e.status == Some(400) => false,
                    Err(e) => return Err(e.into_store(&key)),
                };
                if !honoured {
                    tracing::warn!(
                        bucket = %self.name,
                        "this S3 server ignores If-None-Match: *; exclusive create falls back to HEAD then PUT (racy between mounts)"
                    );
                }
                Ok(honoured)
            })
            .await
            .copied()
    }

    /// Claims new id `id` for one writer: its claim object is created with
    /// `If-None-Match: *`, so a second writer on any mount fails with
    /// AlreadyExists. Returns the claim key.
    pub async fn claim(&self, id: &str) -> Result<String> {
        let key = claim_key(id);
        let conditional = self.conditional_put().await?;
        if !conditional && self.head_opt(&key).await?.is_some() {
            return Err(StoreError::AlreadyExists(id.to_string()));
        }
        let token = unique_token();
        let mut req = self
            .client
            .put_object()
            .bucket(&self.name)
            .key(&key)
            .metadata(CLAIM, &token)
            .body(ByteStream::from_static(b""));
        if conditional {
            req = req.if_none_match("*");
        }
        match req.send().await.map_err(s3err) {
            Ok(_) => {}
            Err(e) if e.is_precondition() || e.is_conflict() => {
                // The SDK retries a PUT whose answer was lost: the retry
                // meets the claim its own first attempt made.
                let ours = self
                    .head_opt(&key)
                    .await?
                    .is_some_and(|h| h.meta.get(CLAIM) == Some(&token));
                if !ours {
                    return Err(StoreError::AlreadyExists(id.to_string()));
                }
            }
            Err(e) => return Err(e.into_store(&key)),
        }
        self.live.insert(&key);
        Ok(key)
    }

    /// Drops a claim (after commit or abort).
    pub async fn release(&self, claim: &str) {
        if let Err(e) = self.delete_key(claim).await {
            tracing::warn!(key = claim, "dropping the claim of a new image: {e}");
        }
        self.live.remove(claim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_is_encoded() {
        assert_eq!(copy_source("b", "abc-1.x_~"), "b/abc-1.x_~");
        assert_eq!(copy_source("b", "a b/c+é"), "b/a%20b%2Fc%2B%C3%A9");
    }
}
