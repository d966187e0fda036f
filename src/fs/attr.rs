//! File attributes as the fs core reports them (no FUSE types).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::ObjectMeta;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    RegularFile,
}

/// What getattr answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Changing (an image being written): the kernel must not cache it.
    pub volatile: bool,
}

/// Owner reported for everything when `-o uid=,gid=` is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerOverride {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Attr {
    /// A directory (the root or a store).
    pub fn dir(ino: u64, meta: Option<&ObjectMeta>, owner: OwnerOverride) -> Attr {
        let t = meta.map(|m| m.mtime).unwrap_or(UNIX_EPOCH);
        Attr {
            ino,
            kind: FileKind::Directory,
            size: 4096,
            blocks: 8,
            perm: meta.and_then(|m| m.mode).unwrap_or(0o755) as u16 & 0o7777,
            nlink: 2,
            uid: owner.uid.or(meta.and_then(|m| m.uid)).unwrap_or(0),
            gid: owner.gid.or(meta.and_then(|m| m.gid)).unwrap_or(0),
            atime: meta.and_then(|m| m.atime).unwrap_or(t),
            mtime: t,
            ctime: meta.and_then(|m| m.ctime).unwrap_or(t),
            volatile: false,
        }
    }

    /// An image, from what its store reports.
    pub fn image(ino: u64, meta: &ObjectMeta, owner: OwnerOverride) -> Attr {
        Attr {
            ino,
            kind: FileKind::RegularFile,
            size: meta.size,
            blocks: meta.blocks.unwrap_or(meta.size.div_ceil(512)),
            perm: meta.mode.unwrap_or(0o644) as u16 & 0o7777,
            nlink: 1,
            uid: owner.uid.or(meta.uid).unwrap_or(0),
            gid: owner.gid.or(meta.gid).unwrap_or(0),
            atime: meta.atime.unwrap_or(meta.mtime),
            mtime: meta.mtime,
            ctime: meta.ctime.unwrap_or(meta.mtime),
            volatile: false,
        }
    }
}
