//! The in-memory block cache: fixed-size blocks of image data keyed by
//! (store, image id, version tag, block index), bounded in bytes with LRU
//! eviction. Keying by the backend's version tag means a changed image is
//! never served from stale blocks: its new version simply misses.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

/// Identifies one block of one version of one image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub store: usize,
    pub id: String,
    pub version: String,
    pub index: u64,
}

/// A byte-bounded LRU of blocks.
pub struct BlockCache {
    block_size: u64,
    capacity: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    lru: LruCache<BlockKey, Bytes>,
    bytes: u64,
}

impl BlockCache {
    pub fn new(capacity_bytes: u64, block_size: u64) -> BlockCache {
        let block_size = block_size.max(4096);
        let slots = (capacity_bytes / block_size).max(1) as usize;
        BlockCache {
            block_size,
            capacity: capacity_bytes,
            inner: Mutex::new(Inner {
                lru: LruCache::new(NonZeroUsize::new(slots).expect("at least one slot")),
                bytes: 0,
            }),
        }
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap().bytes
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.inner.lock().unwrap().lru.get(key).cloned()
    }

    /// Stores a block, evicting the least recently used ones over capacity.
    pub fn insert(&self, key: BlockKey, data: Bytes) {
        if data.len() as u64 > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        let len = data.len() as u64;
        if let Some((_, old)) = inner.lru.push(key, data) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        while inner.bytes > self.capacity {
            match inner.lru.pop_lru() {
                Some((_, old)) => inner.bytes -= old.len() as u64,
                None => break,
            }
        }
    }

    /// Drops every block of an image (all versions).
    pub fn invalidate(&self, store: usize, id: &str) {
        let mut inner = self.inner.lock().unwrap();
        let keys: Vec<BlockKey> = inner
            .lru
            .iter()
            .filter(|(k, _)| k.store == store && k.id == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(old) = inner.lru.pop(&k) {
                inner.bytes -= old.len() as u64;
            }
        }
    }

    /// The blocks covering `[offset, offset + len)`, as (index, offset in
    /// block, length in block).
    pub fn span(&self, offset: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let index = pos / self.block_size;
            let start = pos % self.block_size;
            let n = (self.block_size - start).min(end - pos);
            out.push((index, start, n));
            pos += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, version: &str, index: u64) -> BlockKey {
        BlockKey {
            store: 0,
            id: id.into(),
            version: version.into(),
            index,
        }
    }

    #[test]
    fn bounded_by_bytes_with_lru_eviction() {
        let c = BlockCache::new(3 * 4096, 4096);
        for i in 0..3 {
            c.insert(key("a", "v1", i), Bytes::from(vec![i as u8; 4096]));
        }
        assert!(c.get(&key("a", "v1", 0)).is_some()); // 0 is now most recent
        c.insert(key("a", "v1", 3), Bytes::from(vec![3; 4096]));
        assert_eq!(c.bytes(), 3 * 4096);
        assert!(c.get(&key("a", "v1", 1)).is_none(), "LRU block evicted");
        assert!(c.get(&key("a", "v1", 0)).is_some());
        assert!(c.get(&key("a", "v1", 3)).is_some());
    }

    #[test]
    fn a_new_version_never_hits_old_blocks() {
        let c = BlockCache::new(1 << 20, 4096);
        c.insert(key("a", "v1", 0), Bytes::from_static(b"old"));
        assert!(c.get(&key("a", "v2", 0)).is_none());
        c.invalidate(0, "a");
        assert!(c.get(&key("a", "v1", 0)).is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn span_splits_ranges_on_block_boundaries() {
        let c = BlockCache::new(1 << 20, 4096);
        assert_eq!(c.span(0, 4096), vec![(0, 0, 4096)]);
        assert_eq!(
            c.span(4000, 5000),
            vec![(0, 4000, 96), (1, 0, 4096), (2, 0, 808)]
        );
        assert!(c.span(10, 0).is_empty());
    }

    #[test]
    fn replacing_a_block_keeps_the_byte_count_right() {
        let c = BlockCache::new(1 << 20, 4096);
        c.insert(key("a", "v1", 0), Bytes::from(vec![0; 100]));
        c.insert(key("a", "v1", 0), Bytes::from(vec![0; 50]));
        assert_eq!(c.bytes(), 50);
    }
}
