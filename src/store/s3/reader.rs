//! Reads of committed objects. A `Reader` is pinned to the object's ETag
//! seen at open: every ranged GET carries `If-Match`, so an object replaced
//! meanwhile fails the read (ESTALE) instead of mixing two versions. A
//! metadata-only change (chmod, xattrs: a copy of the object onto itself)
//! may give the same content a new ETag; the reader then checks that the
//! content id imagefs keeps in the metadata is unchanged and follows the
//! new ETag. Reads are independent GETs, so the read-ahead above may keep
//! several in flight on one reader.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::object::{Bucket, Head, CONTENT};
use crate::store::{Reader, Result, StoreError};

pub struct S3Reader {
    bucket: Arc<Bucket>,
    id: String,
    size: u64,
    content: Option<String>,
    etag: Mutex<String>,
}

impl S3Reader {
    pub fn new(bucket: Arc<Bucket>, id: &str, head: &Head) -> S3Reader {
        S3Reader {
            bucket,
            id: id.to_string(),
            size: head.size,
            content: head.meta.get(CONTENT).cloned(),
            etag: Mutex::new(head.etag.clone()),
        }
    }

    /// After a failed If-Match: the new ETag, if the content is the same.
    async fn follow(&self) -> Result<Option<String>> {
        let Some(content) = &self.content else {
            return Ok(None);
        };
        let Some(h) = self.bucket.head_opt(&self.id).await? else {
            return Ok(None);
        };
        if h.meta.get(CONTENT) == Some(content) && h.size == self.size {
            *self.etag.lock().unwrap() = h.etag.clone();
            return Ok(Some(h.etag));
        }
        Ok(None)
    }
}

fn stale(id: &str) -> StoreError {
    StoreError::Io {
        context: format!("{id}: replaced while open for reading"),
        source: std::io::Error::from_raw_os_error(libc::ESTALE),
    }
}

#[async_trait]
impl Reader for S3Reader {
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let len = (len as u64).min(self.size - offset);
        let etag = self.etag.lock().unwrap().clone();
        match self
            .bucket
            .get_range(&self.id, offset, len, Some(&etag))
            .await
        {
            Ok(b) => Ok(b),
            Err(e) if e.is_precondition() => match self.follow().await? {
                Some(etag) => self
                    .bucket
                    .get_range(&self.id, offset, len, Some(&etag))
                    .await
                    .map_err(|e| {
                        if e.is_precondition() {
                            stale(&self.id)
                        } else {
                            e.into_store(&self.id)
                        }
                    }),
                None => Err(stale(&self.id)),
            },
            Err(e) if e.is_not_found() => Err(stale(&self.id)),
            Err(e) => Err(e.into_store(&self.id)),
        }
    }
}
