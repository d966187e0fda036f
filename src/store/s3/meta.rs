//! What imagefs keeps in an S3 object's user metadata (`x-amz-meta-*`):
//! mode, owner and times, the checksums computed while the image streamed
//! (Glance's `checksum` and `os_hash_value`), and user xattrs. S3 metadata
//! names are case-insensitive header names and values are ASCII header
//! values, so xattr names are stored hex-encoded in the key and values that
//! are not plain printable ASCII are stored as `base16:<hex>`. Keys and
//! encodings live here, in one place.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::store::meta_text::{self, hex_value, Keys, HEX_PREFIX};
pub use crate::store::meta_text::{decode_value, encode_time, Parsed};
use crate::store::{Checksums, SetAttrs, XATTR_CHECKSUM, XATTR_OS_HASH_ALGO, XATTR_OS_HASH_VALUE};

pub const MODE: &str = "imagefs-mode";
pub const UID: &str = "imagefs-uid";
pub const GID: &str = "imagefs-gid";
pub const ATIME: &str = "imagefs-atime";
pub const MTIME: &str = "imagefs-mtime";
/// Moves with every change of content or attributes.
pub const CTIME: &str = "imagefs-ctime";
pub const CHECKSUM: &str = "imagefs-checksum";
pub const OS_HASH_ALGO: &str = "imagefs-os-hash-algo";
pub const OS_HASH_VALUE: &str = "imagefs-os-hash-value";
/// User xattr `name` is key `imagefs-x-<hex(name)>`.
pub const XATTR_PREFIX: &str = "imagefs-x-";

/// User metadata of one object, keys lowercased (servers differ in case).
pub type Meta = HashMap<String, String>;

pub fn normalize(m: Option<&HashMap<String, String>>) -> Meta {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    })
    .unwrap_or_default()
}

/// The metadata key holding xattr `name`.
pub fn xattr_key(name: &str) -> String {
    match name {
        XATTR_CHECKSUM => CHECKSUM.into(),
        XATTR_OS_HASH_ALGO => OS_HASH_ALGO.into(),
        XATTR_OS_HASH_VALUE => OS_HASH_VALUE.into(),
        _ => format!("{XATTR_PREFIX}{}", hex::encode(name)),
    }
}

/// The xattr name a metadata key holds, if it holds one.
pub fn xattr_name(key: &str) -> Option<String> {
    match key {
        CHECKSUM => Some(XATTR_CHECKSUM.into()),
        OS_HASH_ALGO => Some(XATTR_OS_HASH_ALGO.into()),
        OS_HASH_VALUE => Some(XATTR_OS_HASH_VALUE.into()),
        _ => {
            let h = hex::decode(key.strip_prefix(XATTR_PREFIX)?).ok()?;
            String::from_utf8(h).ok()
        }
    }
}

/// A header-safe value: printable ASCII without leading or trailing
/// blanks as it is, anything else hex-encoded.
pub fn encode_value(v: &[u8]) -> String {
    let plain = v.iter().all(|b| (0x20..0x7f).contains(b))
        && v.first() != Some(&b' ')
        && v.last() != Some(&b' ')
        && !v.starts_with(HEX_PREFIX.as_bytes());
    if plain {
        String::from_utf8(v.to_vec()).expect("ascii")
    } else {
        hex_value(v)
    }
}

/// Applies `attrs` (and a new ctime) to `m`.
pub fn apply_attrs(m: &mut Meta, attrs: &SetAttrs) {
    for (k, v) in meta_text::attr_pairs(&KEYS, attrs) {
        m.insert(k.into(), v);
    }
}

/// mtime and ctime both `now` (a directory whose entries changed).
pub fn set_dir_times(m: &mut Meta, now: SystemTime) {
    m.insert(MTIME.into(), encode_time(now));
    m.insert(CTIME.into(), encode_time(now));
}

pub fn touch(m: &mut Meta) {
    m.insert(CTIME.into(), encode_time(SystemTime::now()));
}

/// Sets (or, with None, drops) the checksums of the content.
pub fn set_checksums(m: &mut Meta, sums: Option<&Checksums>) {
    m.retain(|k, _| !is_content_key(k));
    if let Some(s) = sums {
        m.insert(CHECKSUM.into(), s.md5.clone());
        m.insert(OS_HASH_ALGO.into(), s.os_hash_algo.clone());
        m.insert(OS_HASH_VALUE.into(), s.os_hash_value.clone());
    }
}

/// What a replaced image keeps of the old one's metadata: everything but
/// the checksums of its content (and the mtime, which moves with it).
pub fn kept_on_replace(old: &Meta) -> Meta {
    old.iter()
        .filter(|(k, _)| k.starts_with("imagefs-") && !is_content_key(k) && *k != MTIME)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Keys that belong to the image's content.
pub fn is_content_key(key: &str) -> bool {
    matches!(key, CHECKSUM | OS_HASH_ALGO | OS_HASH_VALUE)
}

/// Where this store keeps each attribute.
pub const KEYS: Keys = Keys {
    mode: MODE,
    uid: UID,
    gid: GID,
    atime: ATIME,
    mtime: MTIME,
    ctime: CTIME,
};

pub fn parse(m: &Meta) -> Parsed {
    meta_text::parse(&KEYS, |k| m.get(k).map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta_text::decode_time;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn values_and_names_round_trip() {
        for v in [
            &b"ops"[..],
            b"",
            b"a\0b",
            b"\xff\xfe",
            b"base16:x",
            b" lead",
            "é".as_bytes(),
        ] {
            let e = encode_value(v);
            assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)), "{e:?}");
            assert_eq!(decode_value(&e), v);
        }
        assert_eq!(encode_value(b"ops"), "ops");
        for n in ["user.a", "user.Mixed_Case", "user.é"] {
            let k = xattr_key(n);
            assert!(k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            assert_eq!(xattr_name(&k).as_deref(), Some(n));
        }
        assert_eq!(xattr_key(XATTR_CHECKSUM), CHECKSUM);
        assert_eq!(xattr_name(MODE), None);
    }

    #[test]
    fn attrs_times_and_replace() {
        let t = UNIX_EPOCH + Duration::new(1_500_000_000, 123);
        assert_eq!(decode_time(&encode_time(t)), Some(t));
        let mut m = Meta::new();
        apply_attrs(
            &mut m,
            &SetAttrs {
                mode: Some(0o100640),
                uid: Some(7),
                mtime: Some(t),
                ..SetAttrs::default()
            },
        );
        m.insert(xattr_key("user.k"), "v".into());
        set_checksums(
            &mut m,
            Some(&Checksums {
                md5: "m".into(),
                os_hash_algo: "sha512".into(),
                os_hash_value: "h".into(),
            }),
        );
        let p = parse(&m);
        assert_eq!(
            (p.mode, p.uid, p.gid, p.mtime),
            (Some(0o640), Some(7), None, Some(t))
        );
        let kept = kept_on_replace(&m);
        assert!(kept.contains_key(MODE) && kept.contains_key(&xattr_key("user.k")));
        assert!(!kept.contains_key(CHECKSUM) && !kept.contains_key(MTIME));
    }
}
