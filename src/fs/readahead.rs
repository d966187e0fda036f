//! Read-ahead for images of remote stores (RBD, object stores): one per
//! open handle. Reads that follow each other are served from aligned
//! chunks fetched ahead of the reader, several at once, in a window that
//! doubles (from `MIN_WINDOW` to `MAX_WINDOW` chunks) while the reads stay
//! sequential; a jump drops what was fetched and starts small again. A
//! read that is not part of a sequence goes to the store as it is, so
//! random reads fetch only what they need. Memory per handle is bounded by
//! the window; chunks behind the reader are dropped.

use std::collections::btree_map::{BTreeMap, Entry};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, OnceCell};

use super::error::errno_of;
use crate::store::{Reader, Result, Store, StoreError};

/// Bytes per chunk fetched ahead.
pub const CHUNK: u64 = 4 << 20;
const MIN_WINDOW: u64 = 2;
const MAX_WINDOW: u64 = 8;

/// A chunk being fetched or fetched; errors are kept as their errno and
/// text (the store error is not Clone) and returned to every reader that
/// waits for it.
type Cell = Arc<OnceCell<std::result::Result<Bytes, Failed>>>;

#[derive(Clone, Debug)]
struct Failed {
    errno: i32,
    message: String,
}

struct State {
    /// The furthest end read so far: reads near it (the kernel sends a few
    /// at once, not always in order) continue the sequence.
    next: u64,
    /// How many chunks are fetched ahead of the reader (0: no read yet).
    window: u64,
    chunks: BTreeMap<u64, Cell>,
}

/// Reads by id, for stores that keep no version open.
struct ById {
    store: Arc<dyn Store>,
    id: String,
}

#[async_trait::async_trait]
impl Reader for ById {
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes> {
        self.store.read(&self.id, offset, len).await
    }
}

/// The read-ahead of one open handle of one image.
pub struct ReadAhead {
    store: Arc<dyn Store>,
    id: String,
    /// What the handle reads: the version the store keeps open for it, or
    /// the image by id.
    reader: OnceCell<Arc<dyn Reader>>,
    state: Mutex<State>,
}

/// Fetches chunk `index`, keeping an error as its errno and text.
async fn load(reader: &Arc<dyn Reader>, index: u64) -> std::result::Result<Bytes, Failed> {
    reader
        .read(index * CHUNK, CHUNK as u32)
        .await
        .map_err(|e| Failed {
            errno: errno_of(&e),
            message: e.to_string(),
        })
}

impl ReadAhead {
    pub fn new(store: Arc<dyn Store>, id: String) -> ReadAhead {
        ReadAhead {
            store,
            id,
            reader: OnceCell::new(),
            state: Mutex::new(State {
                next: 0,
                window: 0,
                chunks: BTreeMap::new(),
            }),
        }
    }

    fn fetch(&self, reader: &Arc<dyn Reader>, index: u64) -> Cell {
        let cell: Cell = Arc::new(OnceCell::new());
        let (reader, c) = (reader.clone(), cell.clone());
        tokio::spawn(async move {
            c.get_or_init(|| load(&reader, index)).await;
        });
        cell
    }

    /// What the handle reads, opened by its first read or by `pin`.
    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        let reader = self
            .reader
            .get_or_try_init(|| async {
                let pinned = self.store.open_reader(&self.id).await?;
                Ok::<_, StoreError>(pinned.unwrap_or_else(|| {
                    Arc::new(ById {
                        store: self.store.clone(),
                        id: self.id.clone(),
                    })
                }))
            })
            .await?;
        Ok(reader.clone())
    }

    /// Opens the version the handle reads now, if no read has yet.
    pub async fn pin(&self) -> Result<()> {
        self.reader().await.map(drop)
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes> {
        let reader = self.reader().await?;
        let end = offset + len as u64;
        let needed: Vec<(u64, Cell)> = {
            let mut st = self.state.lock().await;
            let near = offset.abs_diff(st.next) <= 2 * CHUNK;
            let sequential = (offset == 0 && st.window == 0) || (st.window > 0 && near);
            st.next = if sequential { st.next.max(end) } else { end };
            if !sequential {
                // A read that follows this one starts a sequence.
                st.chunks.clear();
                st.window = 1;
                drop(st);
                return reader.read(offset, len).await;
            }
            st.window = (st.window * 2).clamp(MIN_WINDOW, MAX_WINDOW);
            let first = offset / CHUNK;
            let last = (end.max(offset + 1) - 1) / CHUNK;
            // Behind the reader (but the one just before): done with.
            st.chunks = st.chunks.split_off(&first.saturating_sub(1));
            for i in first..=last + st.window {
                if let Entry::Vacant(e) = st.chunks.entry(i) {
                    e.insert(self.fetch(&reader, i));
                }
            }
            (first..=last).map(|i| (i, st.chunks[&i].clone())).collect()
        };
        let mut out = BytesMut::with_capacity(len as usize);
        for (i, cell) in needed {
            let data = match cell.get() {
                Some(r) => r.clone(),
                // The fetch task fills it; wait by initialising it ourselves
                // if it has not started, or for it if it has.
                None => cell.get_or_init(|| load(&reader, i)).await.clone(),
            };
            if data.is_err() {
                // Fetched again by the next read that needs it.
                self.state.lock().await.chunks.remove(&i);
            }
            let data = data.map_err(|e| {
                StoreError::io(
                    format!("{}: read-ahead: {}", self.id, e.message),
                    std::io::Error::from_raw_os_error(e.errno),
                )
            })?;
            let start = i * CHUNK;
            let from = offset.max(start) - start;
            let to = (end.min(start + CHUNK) - start).min(data.len() as u64);
            if from >= to {
                break; // end of the image
            }
            if out.is_empty() && (to - from == len as u64 || (data.len() as u64) < CHUNK) {
                // All in one chunk (the usual case): no copy.
                return Ok(data.slice(from as usize..to as usize));
            }
            out.extend_from_slice(&data[from as usize..to as usize]);
            if (data.len() as u64) < CHUNK {
                break;
            }
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileStoreConfig;
    use crate::store::file::FileStore;

    fn store_with(bytes: &[u8]) -> (tempfile::TempDir, Arc<dyn Store>) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("img"), bytes).unwrap();
        let cfg = FileStoreConfig {
            datadir: tmp.path().to_path_buf(),
            file_perm: None,
            chunk_size: 65536,
            thin_provisioning: false,
        };
        (tmp, Arc::new(FileStore::open("t", &cfg).unwrap()))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_random_and_past_the_end() {
        let want = pattern((CHUNK as usize) * 5 + 12345);
        let (_tmp, store) = store_with(&want);
        let ra = ReadAhead::new(store, "img".into());
        // Sequential 1 MiB reads, the way the kernel sends them.
        let mut got = Vec::new();
        let mut off = 0u64;
        loop {
            let b = ra.read(off, 1 << 20).await.unwrap();
            if b.is_empty() {
                break;
            }
            off += b.len() as u64;
            got.extend_from_slice(&b);
        }
        assert!(got == want, "sequential read differs");
        assert!(ra.state.lock().await.chunks.len() as u64 <= MAX_WINDOW + 3);
        // Out of order within the stream, a jump back, a read across chunks.
        for (o, l) in [
            (0u64, 4096u32),
            (3 << 20, 1 << 20),
            (2 << 20, 1 << 20),
            (CHUNK - 10, 100),
        ] {
            let b = ra.read(o, l).await.unwrap();
            assert_eq!(&b[..], &want[o as usize..o as usize + l as usize], "at {o}");
        }
        let tail = want.len() as u64 - 5;
        assert_eq!(
            &ra.read(tail, 100).await.unwrap()[..],
            &want[tail as usize..]
        );
        assert!(ra.read(want.len() as u64 + 1, 10).await.unwrap().is_empty());
    }

    /// A reader whose version is gone.
    struct Stale;

    #[async_trait::async_trait]
    impl Reader for Stale {
        async fn read(&self, _offset: u64, _len: u32) -> Result<Bytes> {
            Err(StoreError::io(
                "img: gone",
                std::io::Error::from_raw_os_error(libc::ESTALE),
            ))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_keep_their_errno() {
        let (_tmp, store) = store_with(&pattern(4096));
        let ra = ReadAhead::new(store, "img".into());
        let stale: Arc<dyn Reader> = Arc::new(Stale);
        ra.reader.set(stale).ok().unwrap();
        for off in [0, 1 << 20] {
            let e = ra.read(off, 4096).await.unwrap_err();
            assert_eq!(errno_of(&e), libc::ESTALE, "{e}");
        }
    }
}
