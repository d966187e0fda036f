//! The text form of the attributes that stores without native ones keep as
//! string metadata (RBD image-meta, S3 `x-amz-meta-*`): byte values, times,
//! modes, and one image's attributes parsed back. Each store names its keys.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{ObjectMeta, SetAttrs};

/// Marks a value kept as hex because it is not plain text.
pub const HEX_PREFIX: &str = "base16:";

/// `v` in its hex form (for values a store cannot keep as they are).
pub fn hex_value(v: &[u8]) -> String {
    format!("{HEX_PREFIX}{}", hex::encode(v))
}

pub fn decode_value(s: &str) -> Vec<u8> {
    match s.strip_prefix(HEX_PREFIX).map(hex::decode) {
        Some(Ok(b)) => b,
        _ => s.as_bytes().to_vec(),
    }
}

pub fn encode_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

pub fn decode_time(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = s.split_once('.').unwrap_or((s, "0"));
    Some(UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?))
}

/// The key a store keeps each attribute under.
pub struct Keys {
    pub mode: &'static str,
    pub uid: &'static str,
    pub gid: &'static str,
    pub atime: &'static str,
    pub mtime: &'static str,
    pub ctime: &'static str,
}

/// The key/value pairs that apply `attrs`, with a new ctime.
pub fn attr_pairs(keys: &Keys, attrs: &SetAttrs) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(m) = attrs.mode {
        out.push((keys.mode, format!("{:o}", m & 0o7777)));
    }
    if let Some(u) = attrs.uid {
        out.push((keys.uid, u.to_string()));
    }
    if let Some(g) = attrs.gid {
        out.push((keys.gid, g.to_string()));
    }
    if let Some(t) = attrs.atime {
        out.push((keys.atime, encode_time(t)));
    }
    if let Some(t) = attrs.mtime {
        out.push((keys.mtime, encode_time(t)));
    }
    out.push((keys.ctime, encode_time(SystemTime::now())));
    out
}

/// Metadata of one image, parsed.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
}

/// Parses the attributes `get` finds under `keys`.
pub fn parse<'a>(keys: &Keys, get: impl Fn(&str) -> Option<&'a str>) -> Parsed {
    let num = |k: &str| get(k).and_then(|v| v.parse().ok());
    Parsed {
        mode: get(keys.mode).and_then(|v| u32::from_str_radix(v, 8).ok()),
        uid: num(keys.uid),
        gid: num(keys.gid),
        atime: get(keys.atime).and_then(decode_time),
        mtime: get(keys.mtime).and_then(decode_time),
        ctime: get(keys.ctime).and_then(decode_time),
    }
}

impl Parsed {
    /// What head and list report for an image of `size` bytes whose backend
    /// stamped it at `stamp` (creation or last write): attributes never set
    /// read as mode 0644 and times from that stamp.
    pub fn object_meta(
        &self,
        id: &str,
        size: u64,
        stamp: SystemTime,
        version: String,
    ) -> ObjectMeta {
        let mtime = self.mtime.unwrap_or(stamp);
        ObjectMeta {
            id: id.to_string(),
            size,
            blocks: None,
            mode: Some(self.mode.unwrap_or(0o644)),
            uid: self.uid,
            gid: self.gid,
            atime: self.atime,
            mtime,
            ctime: Some(self.ctime.unwrap_or(stamp.max(mtime))),
            version,
        }
    }
}
