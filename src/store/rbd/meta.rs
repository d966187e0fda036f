//! What imagefs keeps in an RBD image's metadata (`rbd image-meta`): mode,
//! owner and times, the checksums computed while the image streamed, and
//! user xattrs. Keys and encodings live here, in one place.

use crate::store::meta_text::{self, hex_value, Keys, HEX_PREFIX};
pub use crate::store::meta_text::{decode_value, encode_time, Parsed};
use crate::store::{Checksums, SetAttrs, XATTR_CHECKSUM, XATTR_OS_HASH_ALGO, XATTR_OS_HASH_VALUE};
use std::collections::BTreeMap;

pub const MODE: &str = "imagefs.mode";
pub const UID: &str = "imagefs.uid";
pub const GID: &str = "imagefs.gid";
pub const ATIME: &str = "imagefs.atime";
pub const MTIME: &str = "imagefs.mtime";
/// Moves with every change of content or attributes.
pub const CTIME: &str = "imagefs.ctime";
pub const CHECKSUM: &str = "imagefs.checksum";
pub const OS_HASH_ALGO: &str = "imagefs.os_hash_algo";
pub const OS_HASH_VALUE: &str = "imagefs.os_hash_value";
/// User xattr `user.x` is key `imagefs.xattr.user.x`.
pub const XATTR_PREFIX: &str = "imagefs.xattr.";

/// The metadata key holding xattr `name`.
pub fn xattr_key(name: &str) -> String {
    match name {
        XATTR_CHECKSUM => CHECKSUM.into(),
        XATTR_OS_HASH_ALGO => OS_HASH_ALGO.into(),
        XATTR_OS_HASH_VALUE => OS_HASH_VALUE.into(),
        _ => format!("{XATTR_PREFIX}{name}"),
    }
}

/// The xattr name a metadata key holds, if it holds one.
pub fn xattr_name(key: &str) -> Option<String> {
    match key {
        CHECKSUM => Some(XATTR_CHECKSUM.into()),
        OS_HASH_ALGO => Some(XATTR_OS_HASH_ALGO.into()),
        OS_HASH_VALUE => Some(XATTR_OS_HASH_VALUE.into()),
        _ => key.strip_prefix(XATTR_PREFIX).map(str::to_string),
    }
}

/// Values that are not NUL-free UTF-8 are stored hex-encoded (`base16:`).
pub fn encode_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.contains('\0') && !s.starts_with(HEX_PREFIX) => s.to_string(),
        _ => hex_value(v),
    }
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

/// The key/value pairs that apply `attrs`.
pub fn attr_pairs(attrs: &SetAttrs) -> Vec<(&'static str, String)> {
    meta_text::attr_pairs(&KEYS, attrs)
}

pub fn checksum_pairs(sums: &Checksums) -> Vec<(&'static str, String)> {
    vec![
        (CHECKSUM, sums.md5.clone()),
        (OS_HASH_ALGO, sums.os_hash_algo.clone()),
        (OS_HASH_VALUE, sums.os_hash_value.clone()),
    ]
}

pub fn parse(pairs: &BTreeMap<String, String>) -> Parsed {
    meta_text::parse(&KEYS, |k| pairs.get(k).map(String::as_str))
}

/// Keys that belong to the image's content (dropped when it is replaced).
pub fn is_content_key(key: &str) -> bool {
    matches!(key, CHECKSUM | OS_HASH_ALGO | OS_HASH_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta_text::decode_time;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn values_round_trip() {
        for v in [&b"ops"[..], b"", b"a\0b", b"\xff\xfe", b"base16:x"] {
            assert_eq!(decode_value(&encode_value(v)), v);
        }
        assert_eq!(encode_value(b"ops"), "ops");
    }

    #[test]
    fn times_and_modes() {
        let t = UNIX_EPOCH + Duration::new(1_500_000_000, 123);
        assert_eq!(decode_time(&encode_time(t)), Some(t));
        let mut m = BTreeMap::new();
        for (k, v) in attr_pairs(&SetAttrs {
            mode: Some(0o100640),
            uid: Some(7),
            ..SetAttrs::default()
        }) {
            m.insert(k.to_string(), v);
        }
        let p = parse(&m);
        assert_eq!((p.mode, p.uid, p.gid), (Some(0o640), Some(7), None));
        assert_eq!(xattr_name(&xattr_key("user.a")).as_deref(), Some("user.a"));
        assert_eq!(xattr_key(XATTR_CHECKSUM), CHECKSUM);
    }
}
