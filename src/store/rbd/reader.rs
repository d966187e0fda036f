//! Read handles of the RBD store: an open `<id>@snap` and the watch on
//! its header that keeps the version from being purged, on any mount,
//! while it is read; when the last handle is done with a version that lost
//! its name, the trash is purged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use super::ffi::{HeaderWatch, Image};
use super::upkeep::Busy;
use super::{blocking, map_err, Conn, SNAP};
use crate::store::{Reader as StoreReader, Result, StoreError};

/// An open `<id>@snap`, its size, when it was opened, and the watch that
/// keeps the version from being purged while it is read.
#[derive(Clone)]
pub(crate) struct Reader {
    id: String,
    at: Instant,
    img: Arc<Image>,
    size: u64,
    watch: Arc<VersionWatch>,
}

/// A reader's watch on the version it opened. When the reader's last clone
/// drops it, the watch ends on a blocking thread, and if the version has
/// lost its name meanwhile (deleted or replaced: it waited in the trash for
/// its readers), the upkeep thread purges the trash.
struct VersionWatch {
    /// The open version, closed with the watch (both wait for the OSD) on
    /// a blocking thread.
    img: Option<Arc<Image>>,
    /// Counted by the upkeep until the watch has ended (and the purge it
    /// may need is queued): unmount waits for it.
    busy: Option<Busy>,
    watch: Option<HeaderWatch>,
    conn: Arc<Conn>,
    name: String,
    rbd_id: String,
    /// The id of the version's `snap`.
    snap_id: u64,
    /// Set once the version is found gone.
    gone: AtomicBool,
}

impl VersionWatch {
    /// Fails with ESTALE once the version may be gone, rather than read
    /// it: an open snapshot that was removed reads back as zeros, without
    /// an error. It may be gone when the watch was lost (cut off from the
    /// cluster longer than the watch timeout: a purge elsewhere no longer
    /// saw it), or when the header changed and `snap` is no longer there
    /// (Glance's own delete removes `snap` before it finds the image in
    /// use).
    async fn check(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(watch) = &self.watch else {
            return Ok(());
        };
        if watch.take_notified() {
            let me = self.clone();
            if !blocking(move || Ok(me.version_exists())).await? {
                self.gone.store(true, Ordering::SeqCst);
            }
        }
        if watch.lost() || self.gone.load(Ordering::SeqCst) {
            return Err(StoreError::io(
                format!("{id}: the version open may have been removed"),
                std::io::Error::from_raw_os_error(libc::ESTALE),
            ));
        }
        Ok(())
    }

    /// Whether the image still has this version's `snap` (an error other
    /// than the image being gone counts as yes: reads will tell).
    fn version_exists(&self) -> bool {
        match Image::open_by_id_read_only(&self.conn.pool, &self.rbd_id).and_then(|i| i.snaps()) {
            Ok(snaps) => snaps.iter().any(|s| s.name == SNAP && s.id == self.snap_id),
            Err(e) => e.errno != libc::ENOENT,
        }
    }
}

impl Drop for VersionWatch {
    fn drop(&mut self) {
        let (img, watch, busy) = (self.img.take(), self.watch.take(), self.busy.take());
        let (conn, name, rbd_id) = (
            self.conn.clone(),
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.rbd_id),
        );
        let end = move || {
            drop(img); // closes the image (unless a read still holds it)
            let Some(watch) = watch else { return };
            drop(watch); // unwatches: waits for the OSD
            if conn.pool.image_id(&name).ok() != Some(rbd_id) {
                conn.upkeep.purge(&conn);
            }
            drop(busy); // after the purge is queued, which counts itself
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(end)),
            Err(_) => end(),
        }
    }
}

impl Reader {
    /// `<id>@snap` as committed now, open and watched.
    pub(crate) fn open(conn: &Arc<Conn>, id: &str) -> Result<Reader> {
        let err = |e| map_err(id, e);
        let (img, rbd_id, watch) = conn.committed_watched(id)?;
        let (size, _) = img.stat().map_err(err)?;
        let snap_id = img
            .snaps()
            .map_err(err)?
            .into_iter()
            .find(|s| s.name == SNAP)
            .map_or(0, |s| s.id);
        let img = Arc::new(img);
        Ok(Reader {
            id: id.to_string(),
            at: Instant::now(),
            img: img.clone(),
            size,
            watch: Arc::new(VersionWatch {
                img: Some(img),
                busy: Some(conn.upkeep.busy()),
                watch,
                conn: conn.clone(),
                name: id.to_string(),
                rbd_id,
                snap_id,
                gone: AtomicBool::new(false),
            }),
        })
    }

    /// When it was opened.
    pub(crate) fn opened(&self) -> Instant {
        self.at
    }
}

#[async_trait]
impl StoreReader for Reader {
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes> {
        self.watch.check(&self.id).await?;
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let len = (len as u64).min(self.size - offset) as usize;
        self.img
            .read(offset, len)
            .await
            .map_err(|e| map_err(&self.id, e))
    }
}
