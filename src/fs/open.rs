//! Open handles and how each talks to the kernel: FUSE passthrough to the
//! local file (the committed image, or the file the kernel writes a new
//! image into), the page cache, or direct I/O (write-only handles, handles
//! beside them, and handles whose passthrough the kernel refused). While an
//! inode has passthrough handles the kernel fails (EIO) any open that does
//! not pass through to the same backing file, and it refuses passthrough
//! while page-cache handles are open. This module keeps those rules.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::error::FsResult;
use super::inode::ImageNode;
use crate::err;

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

/// What an open asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Access {
    pub write: bool,
    /// Opened O_WRONLY: the handle never reads.
    pub write_only: bool,
    pub append: bool,
    /// The kernel drops cached pages that a direct-I/O write covers.
    pub direct_writes: bool,
}

/// Decides the I/O mode of a new handle and records it on the inode.
/// `local` is a file offered for passthrough: the committed image, or the
/// staging's file when `shared` (the kernel writes it). While an inode has
/// passthrough handles the kernel wants every new open to pass through to
/// the same file: readers join them, and so do writers of a shared staging;
/// a writer of a committed image being read that way would change it under
/// its readers, and gets EBUSY.
///
/// Otherwise a write-only handle bypasses the page cache (direct I/O) when
/// the kernel keeps that cache coherent with such writes and no handle of
/// the inode caches pages: its data then goes from the writer's buffer to
/// this process in one copy, instead of through the page cache, and it
/// never reads. Every handle opened while the inode has direct-I/O handles
/// is direct I/O too, so no page cache can go stale under them.
pub(super) fn choose(
    image: &Arc<ImageNode>,
    access: Access,
    created: bool,
    local: Option<File>,
    shared: bool,
) -> FsResult<(Handle, IoMode)> {
    let writable = access.write;
    let mut io = image.io.lock().unwrap();
    let (kind, mode) = if io.passthrough > 0 {
        if writable && !shared {
            return Err(err!(
                libc::EBUSY,
                "image is open for reading by passthrough on this mount"
            ));
        }
        (Kind::Passthrough, IoMode::Passthrough(None))
    } else {
        match local {
            Some(file) if io.cached == 0 => {
                io.backing = file.metadata().ok().map(|m| (m.dev(), m.ino()));
                (Kind::Passthrough, IoMode::Passthrough(Some(file)))
            }
            _ if access.direct_writes
                && (io.direct > 0 || (access.write_only && io.cached == 0)) =>
            {
                (Kind::Direct, IoMode::DirectIo)
            }
            _ => (Kind::Cached, IoMode::Cached),
        }
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
        append: access.append,
        created,
        kind,
    };
    Ok((handle, mode))
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
