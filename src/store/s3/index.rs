//! The attribute index of a bucket: for each image imagefs wrote or
//! changed, one empty object whose *key* holds the image's ETag and the
//! attributes kept in its metadata (content id, mode, owner, times), so a
//! listing of the store costs one more ListObjectsV2 walk instead of one
//! HEAD per image (S3 lists no user metadata).
//!
//! The image's own metadata stays the truth; the index is a cache of what
//! HEAD saw after each change. An entry is used only while its ETag is the
//! one the listing shows for the image (an object replaced by any other
//! client falls back to HEAD); of several entries with that ETag (a
//! metadata-only change whose old entry could not be deleted) the newest
//! ctime wins. `gc` drops entries no image matches any more.
//!
//! Key: `.imagefs-attrs/<id>/<etag>_<ctime>_<content>_<mode>_<uid>_<gid>_<atime>_<mtime>`,
//! absent attributes empty; metadata values with other characters than
//! `[0-9A-Za-z.-]` are not indexed (that image is listed with HEAD).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;

use super::error::s3err;
use super::meta::{self, Meta};
use super::object::{Bucket, Head, CONTENT};
use crate::store::meta_text::decode_time;
use crate::store::{ObjectMeta, Result};

/// Every index key starts with this (inside imagefs's hidden names).
pub const PREFIX: &str = ".imagefs-attrs/";

/// The metadata keys an entry holds, in key order after the ETag.
const FIELDS: [&str; 7] = [
    meta::CTIME,
    CONTENT,
    meta::MODE,
    meta::UID,
    meta::GID,
    meta::ATIME,
    meta::MTIME,
];

/// One index entry, parsed from its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub id: String,
    /// Without quotes.
    pub etag: String,
    pub meta: Meta,
}

impl Entry {
    fn ctime(&self) -> Option<SystemTime> {
        self.meta.get(meta::CTIME).and_then(|v| decode_time(v))
    }
}

fn plain(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// The prefix of every entry of image `id`.
fn prefix_of(id: &str) -> String {
    format!("{PREFIX}{id}/")
}

/// The key of the entry for image `id` as `h` saw it; None when something
/// in it cannot be part of a key.
pub fn key_of(id: &str, h: &Head) -> Option<String> {
    let etag = h.etag.trim_matches('"');
    if etag.is_empty() || !plain(etag) {
        return None;
    }
    let mut k = prefix_of(id);
    k.push_str(etag);
    for f in FIELDS {
        let v = h.meta.get(f).map(String::as_str).unwrap_or("");
        if !plain(v) {
            return None;
        }
        k.push('_');
        k.push_str(v);
    }
    Some(k)
}

/// The entry `key` names, None for keys that are not entries.
pub fn parse_key(key: &str) -> Option<Entry> {
    let (id, attrs) = key.strip_prefix(PREFIX)?.split_once('/')?;
    let mut parts = attrs.split('_');
    let etag = parts.next().filter(|e| !e.is_empty())?;
    let mut m = Meta::new();
    for f in FIELDS {
        let v = parts.next()?;
        if !v.is_empty() {
            m.insert(f.to_string(), v.to_string());
        }
    }
    if parts.next().is_some() || id.is_empty() {
        return None;
    }
    Some(Entry {
        key: key.to_string(),
        id: id.to_string(),
        etag: etag.to_string(),
        meta: m,
    })
}

/// The entries of a bucket, by image id.
pub type Index = HashMap<String, Vec<Entry>>;

/// Reads the whole index (one ListObjectsV2 walk).
pub async fn load(b: &Bucket) -> Result<Index> {
    let mut idx = Index::new();
    for o in b.list_keys(Some(PREFIX), None).await? {
        if let Some(e) = o.key().and_then(parse_key) {
            idx.entry(e.id.clone()).or_default().push(e);
        }
    }
    Ok(idx)
}

/// The entry that describes image `id` while its ETag is `etag`.
pub fn current<'a>(idx: &'a Index, id: &str, etag: &str) -> Option<&'a Entry> {
    let etag = etag.trim_matches('"');
    idx.get(id)?
        .iter()
        .filter(|e| e.etag == etag)
        .max_by_key(|e| e.ctime())
}

/// What HEAD would say of image `id`, from its listing (`size`, `etag`,
/// `last_modified`) and its current index entry; None without one.
pub fn object_meta(
    idx: &Index,
    id: &str,
    size: u64,
    etag: &str,
    last_modified: SystemTime,
) -> Option<ObjectMeta> {
    let e = current(idx, id, etag)?;
    // HEAD's Last-Modified has whole seconds, the listing's milliseconds:
    // the same value either way.
    let secs = last_modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let h = Head {
        size,
        etag: etag.to_string(),
        last_modified: UNIX_EPOCH + Duration::from_secs(secs),
        content_type: None,
        meta: e.meta.clone(),
    };
    Some(h.object_meta(id))
}

/// Records image `id` as HEAD just saw it (`new`) and drops the entry of
/// the version before (`old`). Best effort: the image is committed either
/// way, and an image without an entry is listed with HEAD.
pub async fn record(b: &Bucket, id: &str, old: Option<&Head>, new: &Head) {
    let new_key = key_of(id, new);
    if let Some(k) = &new_key {
        let r = b
            .client
            .put_object()
            .bucket(&b.name)
            .key(k)
            .body(ByteStream::from_static(b""))
            .send()
            .await;
        if let Err(e) = r {
            tracing::debug!(id, "attribute index: {}", s3err(e).message);
        }
    }
    if let Some(k) = old.and_then(|h| key_of(id, h)) {
        if Some(&k) != new_key.as_ref() {
            // Must go even if the new entry failed: with the same ETag (a
            // metadata-only change) it would show the old attributes.
            if let Err(e) = b.delete_key(&k).await {
                tracing::debug!(id, "attribute index: {e}");
            }
        }
    }
}

/// Drops every entry of image `id` (deleted, renamed away, or about to be
/// replaced by a copy).
pub async fn forget(b: &Bucket, id: &str) {
    let keys = match b.list_keys(Some(&prefix_of(id)), None).await {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(id, "attribute index: {e}");
            return;
        }
    };
    for o in keys {
        if let Some(k) = o.key() {
            if let Err(e) = b.delete_key(k).await {
                tracing::debug!(id, "attribute index: {e}");
            }
        }
    }
}

/// Entries of `idx` that describe no image any more, given each image's
/// current ETag (`etags`): gone, replaced, or superseded by a newer entry.
pub fn stale(idx: &Index, etags: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, entries) in idx {
        let keep = etags
            .get(id)
            .and_then(|etag| current(idx, id, etag))
            .map(|e| e.key.as_str());
        out.extend(
            entries
                .iter()
                .filter(|e| Some(e.key.as_str()) != keep)
                .map(|e| e.key.clone()),
        );
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(etag: &str, pairs: &[(&str, &str)]) -> Head {
        Head {
            size: 5,
            etag: format!("\"{etag}\""),
            last_modified: UNIX_EPOCH + Duration::from_secs(1000),
            content_type: None,
            meta: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn keys_round_trip_and_refuse_odd_values() {
        let h = head(
            "0cc175b9c0f1b6a831c399e269772661-3",
            &[
                (meta::MODE, "640"),
                (meta::UID, "7"),
                (meta::MTIME, "1500000000.000000123"),
                (meta::CTIME, "1600000000.000000000"),
                (CONTENT, "18a-2f-0"),
                ("imagefs-x-75", "ignored"),
            ],
        );
        let k = key_of("img-1", &h).unwrap();
        assert_eq!(
            k,
            ".imagefs-attrs/img-1/0cc175b9c0f1b6a831c399e269772661-3_1600000000.000000000_18a-2f-0_640_7___1500000000.000000123"
        );
        let e = parse_key(&k).unwrap();
        assert_eq!(
            (e.id.as_str(), e.etag.as_str()),
            ("img-1", "0cc175b9c0f1b6a831c399e269772661-3")
        );
        let mut want = h.meta.clone();
        want.remove("imagefs-x-75");
        assert_eq!(e.meta, want);
        assert_eq!(key_of("a", &head("e", &[(meta::MODE, "6_4")])), None);
        assert_eq!(key_of("a", &head("", &[])), None);
        assert_eq!(parse_key(".imagefs-attrs/a/e_1_2"), None);
        assert_eq!(parse_key(".imagefs-store"), None);
    }

    #[test]
    fn the_newest_entry_of_the_listed_etag_wins() {
        let mk = |etag: &str, ctime: &str, mode: &str| {
            parse_key(
                &key_of(
                    "i",
                    &head(etag, &[(meta::CTIME, ctime), (meta::MODE, mode)]),
                )
                .unwrap(),
            )
            .unwrap()
        };
        let mut idx = Index::new();
        idx.insert(
            "i".into(),
            vec![
                mk("e1", "20.0", "600"),
                mk("e1", "30.0", "640"),
                mk("e0", "40.0", "666"),
            ],
        );
        idx.insert("gone".into(), vec![mk("e9", "1.0", "600")]);
        let m = object_meta(&idx, "i", 5, "\"e1\"", UNIX_EPOCH).unwrap();
        assert_eq!((m.mode, m.size), (Some(0o640), 5));
        assert_eq!(object_meta(&idx, "i", 5, "e2", UNIX_EPOCH), None);
        let etags: HashMap<String, String> = [("i".to_string(), "\"e1\"".to_string())].into();
        let st = stale(&idx, &etags);
        assert_eq!(st.len(), 3);
        assert!(!st.iter().any(|k| k.contains("e1_30.0")));
    }
}
