//! Open handles and how each talks to the kernel: FUSE passthrough to the
//! committed local file, the page cache, or direct I/O. The kernel refuses to
//! mix passthrough and page-cache handles on one inode, and needs every
//! passthrough handle of an inode to share one backing file; direct I/O
//! handles mix with both. This module keeps those rules.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::inode::ImageNode;

/// How the adapter must answer an open.
#[derive(Debug)]
pub enum IoMode {
    /// Through the page cache, served by the core.
    Cached,
    /// Bypassing the page cache, served by the core.
    DirectIo,
    /// Served by the kernel from a local file: `Some` opens a new backing
    /// file for the inode, `None` reuses the inode's current one.
    Passthrough(Option<File>),
}

/// Result of an open or create.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    pub io: IoMode,
}

/// Keeps a backing file registered with the kernel (the adapter's type).
pub type BackingToken = Arc<dyn std::any::Any + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Cached,
    Direct,
    Passthrough,
}

/// One open file.
#[derive(Debug)]
pub(super) struct Handle {
    pub image: Arc<ImageNode>,
    pub writable: bool,
    pub append: bool,
    /// Opened by create(): commits even if opened read-only.
    pub created: bool,
    pub kind: Kind,
}

/// Decides the I/O mode of a new handle and records it on the inode.
/// `local` is the committed file, offered for passthrough.
pub(super) fn choose(
    image: &Arc<ImageNode>,
    writable: bool,
    append: bool,
    created: bool,
    local: Option<File>,
) -> (Handle, IoMode) {
    let mut io = image.io.lock().unwrap();
    let key = local
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map(|m| (m.dev(), m.ino()));
    let (kind, mode) = match (key, local) {
        (Some(key), Some(file)) if io.cached == 0 => match io.backing {
            None => {
                io.backing = Some(key);
                (Kind::Passthrough, IoMode::Passthrough(Some(file)))
            }
            Some(current) if current == key => (Kind::Passthrough, IoMode::Passthrough(None)),
            Some(_) => (Kind::Direct, IoMode::DirectIo),
        },
        _ if io.passthrough > 0 => (Kind::Direct, IoMode::DirectIo),
        _ => (Kind::Cached, IoMode::Cached),
    };
    match kind {
        Kind::Cached => io.cached += 1,
        Kind::Direct => io.direct += 1,
        Kind::Passthrough => io.passthrough += 1,
    }
    if writable || created {
        io.writers += 1;
    }
    let handle = Handle {
        image: image.clone(),
        writable,
        append,
        created,
        kind,
    };
    (handle, mode)
}

/// A passthrough the kernel refused becomes direct I/O.
pub(super) fn demote(h: &mut Handle) {
    if h.kind != Kind::Passthrough {
        return;
    }
    let mut io = h.image.io.lock().unwrap();
    io.passthrough -= 1;
    io.direct += 1;
    if io.passthrough == 0 {
        io.backing = None;
        io.backing_token = None;
    }
    h.kind = Kind::Direct;
}

/// Forgets a handle (closing the backing file with the last passthrough
/// handle); returns whether it was the inode's last writer.
pub(super) fn release(h: &Handle) -> bool {
    let mut io = h.image.io.lock().unwrap();
    match h.kind {
        Kind::Cached => io.cached -= 1,
        Kind::Direct => io.direct -= 1,
        Kind::Passthrough => {
            io.passthrough -= 1;
            if io.passthrough == 0 {
                io.backing = None;
                io.backing_token = None;
            }
        }
    }
    if h.writable || h.created {
        io.writers -= 1;
        return io.writers == 0;
    }
    false
}

/// Registers the backing file the kernel accepted for a passthrough handle.
pub(super) fn attach(h: &Handle, token: BackingToken) {
    let mut io = h.image.io.lock().unwrap();
    if h.kind == Kind::Passthrough && io.backing_token.is_none() {
        io.backing_token = Some(token);
    }
}

/// The inode's registered backing file, for a handle that reuses it.
pub(super) fn backing(h: &Handle) -> Option<BackingToken> {
    h.image.io.lock().unwrap().backing_token.clone()
}
