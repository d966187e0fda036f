//! The inode table: root (1), one directory per store, one inode per image
//! name the kernel knows, with the kernel's lookup count so `forget` can drop
//! inodes nobody references any more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::fs::attr::Attr;
use crate::fs::staging::Staging;
use crate::store::ObjectMeta;

pub const ROOT_INO: u64 = 1;

/// What an inode number stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// The mount root listing the stores (multi-store mounts only).
    Root,
    /// A store's directory (the root itself with `--store`).
    Store(usize),
    /// An image of a store.
    Image(Arc<ImageNode>),
}

/// How the open handles of one image talk to the kernel; the kernel allows
/// passthrough only when no handle of the inode uses the page cache, and all
/// passthrough handles of an inode must share one backing file.
#[derive(Default)]
pub struct IoState {
    pub cached: u32,
    pub direct: u32,
    pub passthrough: u32,
    /// Keeps the kernel's backing file registration alive while passthrough
    /// handles use it (opaque: the adapter's type).
    pub backing_token: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// (dev, ino) of the file the passthrough handles pass through to.
    pub backing: Option<(u64, u64)>,
    /// Handles that may commit (opened for writing, or that created the image).
    pub writers: u32,
}

impl std::fmt::Debug for IoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoState")
            .field("cached", &self.cached)
            .field("direct", &self.direct)
            .field("passthrough", &self.passthrough)
            .field("writers", &self.writers)
            .finish()
    }
}

impl IoState {
    pub fn handles(&self) -> u32 {
        self.cached + self.direct + self.passthrough
    }
}

/// One image inode.
#[derive(Debug)]
pub struct ImageNode {
    pub ino: u64,
    pub store: usize,
    /// Current name; None once unlinked or replaced by a rename.
    pub name: Mutex<Option<String>>,
    /// The write in progress, shared by every handle of the inode.
    pub staging: tokio::sync::Mutex<Option<Staging>>,
    pub io: Mutex<IoState>,
    /// Last head() result and when it was taken.
    pub meta: Mutex<Option<(Instant, ObjectMeta)>>,
    /// The attributes of a write being committed, taken out of `staging`:
    /// what the image is about to be, shown until the commit ends.
    pub publishing: Mutex<Option<Attr>>,
    /// Held by the commit in progress, from when it takes the staging
    /// until the store has published it: commits of one inode run one
    /// after another, and what must come after the version being
    /// committed waits for it: a new staging (based on the image as it
    /// is), a read of the store or of its xattrs, fsync/close with nothing
    /// staged, unlink, rename (of it or onto it), chmod/chown/utimes and a
    /// server-side copy from it. Taken while holding `staging`, never the
    /// other way round.
    pub committing: tokio::sync::Mutex<()>,
}

impl PartialEq for ImageNode {
    fn eq(&self, other: &Self) -> bool {
        self.ino == other.ino
    }
}
impl Eq for ImageNode {}

impl ImageNode {
    /// The staging, locked once a commit in progress (a release's, which
    /// the kernel does not wait for) has published: what the caller does
    /// next comes after that version.
    pub async fn staging_after_commit(&self) -> tokio::sync::MutexGuard<'_, Option<Staging>> {
        let guard = self.staging.lock().await;
        drop(self.committing.lock().await);
        guard
    }

    pub fn name(&self) -> Option<String> {
        self.name.lock().unwrap().clone()
    }
}

struct Entry {
    node: Node,
    nlookup: u64,
}

struct Table {
    entries: HashMap<u64, Entry>,
    by_name: HashMap<(usize, String), u64>,
    next: u64,
}

/// All inodes, behind one short-held lock.
pub struct Inodes {
    table: Mutex<Table>,
}

impl Inodes {
    /// `stores` directories; with `single_store` the root is that store.
    pub fn new(stores: usize, single_store: Option<usize>) -> Inodes {
        let mut entries = HashMap::new();
        match single_store {
            Some(s) => {
                entries.insert(
                    ROOT_INO,
                    Entry {
                        node: Node::Store(s),
                        nlookup: 1,
                    },
                );
            }
            None => {
                entries.insert(
                    ROOT_INO,
                    Entry {
                        node: Node::Root,
                        nlookup: 1,
                    },
                );
                for s in 0..stores {
                    entries.insert(
                        Self::store_ino_of(s),
                        Entry {
                            node: Node::Store(s),
                            nlookup: 1,
                        },
                    );
                }
            }
        }
        Inodes {
            table: Mutex::new(Table {
                entries,
                by_name: HashMap::new(),
                next: 2 + stores as u64,
            }),
        }
    }

    /// Inode number of store `s`'s directory in a multi-store mount.
    pub fn store_ino_of(s: usize) -> u64 {
        2 + s as u64
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.table
            .lock()
            .unwrap()
            .entries
            .get(&ino)
            .map(|e| e.node.clone())
    }

    /// The inode currently named `name` in store `store`, if any.
    pub fn by_name(&self, store: usize, name: &str) -> Option<Arc<ImageNode>> {
        let t = self.table.lock().unwrap();
        let ino = t.by_name.get(&(store, name.to_string()))?;
        match &t.entries.get(ino)?.node {
            Node::Image(img) => Some(img.clone()),
            _ => None,
        }
    }

    /// The inode for `name`, created if needed; `lookups` is added to its
    /// kernel lookup count.
    pub fn image(&self, store: usize, name: &str, lookups: u64) -> Arc<ImageNode> {
        let mut t = self.table.lock().unwrap();
        let key = (store, name.to_string());
        if let Some(ino) = t.by_name.get(&key).copied() {
            if let Some(e) = t.entries.get_mut(&ino) {
                e.nlookup += lookups;
                if let Node::Image(img) = &e.node {
                    return img.clone();
                }
            }
        }
        let ino = t.next;
        t.next += 1;
        let img = Arc::new(ImageNode {
            ino,
            store,
            name: Mutex::new(Some(name.to_string())),
            staging: tokio::sync::Mutex::new(None),
            io: Mutex::new(IoState::default()),
            meta: Mutex::new(None),
            publishing: Mutex::new(None),
            committing: tokio::sync::Mutex::new(()),
        });
        t.entries.insert(
            ino,
            Entry {
                node: Node::Image(img.clone()),
                nlookup: lookups,
            },
        );
        t.by_name.insert(key, ino);
        img
    }

    /// Adds kernel lookups to an existing inode (readdirplus entries).
    pub fn add_lookups(&self, ino: u64, n: u64) {
        if let Some(e) = self.table.lock().unwrap().entries.get_mut(&ino) {
            e.nlookup += n;
        }
    }

    /// The name `name` no longer exists (unlink, or replaced by a rename).
    pub fn unlink(&self, store: usize, name: &str) {
        let mut t = self.table.lock().unwrap();
        if let Some(ino) = t.by_name.remove(&(store, name.to_string())) {
            if let Some(Entry {
                node: Node::Image(img),
                ..
            }) = t.entries.get(&ino)
            {
                *img.name.lock().unwrap() = None;
            }
            Self::prune(&mut t, ino);
        }
    }

    /// Moves an inode from one name to another inside a store.
    pub fn rename(&self, store: usize, from: &str, to: &str) {
        self.unlink(store, to);
        let mut t = self.table.lock().unwrap();
        if let Some(ino) = t.by_name.remove(&(store, from.to_string())) {
            if let Some(Entry {
                node: Node::Image(img),
                ..
            }) = t.entries.get(&ino)
            {
                *img.name.lock().unwrap() = Some(to.to_string());
                *img.meta.lock().unwrap() = None;
            }
            t.by_name.insert((store, to.to_string()), ino);
        }
    }

    /// The kernel dropped `n` references.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut t = self.table.lock().unwrap();
        if let Some(e) = t.entries.get_mut(&ino) {
            e.nlookup = e.nlookup.saturating_sub(n);
        }
        Self::prune(&mut t, ino);
    }

    /// Drops image inodes of `store` that the kernel does not reference and
    /// that have no open handle or write (names seen only by readdir).
    pub fn prune_store(&self, store: usize) {
        let mut t = self.table.lock().unwrap();
        let inos: Vec<u64> = t
            .entries
            .iter()
            .filter(|(_, e)| {
                matches!(&e.node, Node::Image(i) if i.store == store) && e.nlookup == 0
            })
            .map(|(ino, _)| *ino)
            .collect();
        for ino in inos {
            Self::prune(&mut t, ino);
        }
    }

    /// Removes `ino` if nothing refers to it any more.
    fn prune(t: &mut Table, ino: u64) {
        let Some(e) = t.entries.get(&ino) else { return };
        let Node::Image(img) = &e.node else { return };
        if e.nlookup > 0 || img.io.lock().unwrap().handles() > 0 {
            return;
        }
        match img.staging.try_lock() {
            Ok(s) if s.is_none() => {}
            _ => return,
        }
        let name = img.name();
        let store = img.store;
        t.entries.remove(&ino);
        if let Some(name) = name {
            let key = (store, name);
            if t.by_name.get(&key) == Some(&ino) {
                t.by_name.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.lock().unwrap().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_forget() {
        let t = Inodes::new(2, None);
        assert_eq!(t.get(ROOT_INO), Some(Node::Root));
        assert_eq!(t.get(3), Some(Node::Store(1)));
        let a = t.image(0, "a", 1);
        let again = t.image(0, "a", 1);
        assert_eq!(a.ino, again.ino);
        let b = t.image(1, "a", 1);
        assert_ne!(a.ino, b.ino, "same name in two stores");
        t.forget(a.ino, 1);
        assert!(t.get(a.ino).is_some(), "still one lookup");
        t.forget(a.ino, 1);
        assert!(t.get(a.ino).is_none());
        assert!(t.by_name(0, "a").is_none());
    }

    #[test]
    fn rename_moves_the_inode_and_orphans_the_target() {
        let t = Inodes::new(1, None);
        let a = t.image(0, "a", 1);
        let b = t.image(0, "b", 1);
        t.rename(0, "a", "b");
        assert_eq!(t.by_name(0, "b").unwrap().ino, a.ino);
        assert_eq!(a.name(), Some("b".into()));
        assert_eq!(b.name(), None);
        assert!(t.by_name(0, "a").is_none());
    }

    #[test]
    fn readdir_only_inodes_are_pruned() {
        let t = Inodes::new(1, Some(0));
        assert_eq!(t.get(ROOT_INO), Some(Node::Store(0)));
        let before = t.len();
        t.image(0, "x", 0);
        let kept = t.image(0, "y", 1);
        t.prune_store(0);
        assert_eq!(t.len(), before + 1);
        assert!(t.by_name(0, "y").is_some());
        assert_eq!(t.by_name(0, "y").unwrap().ino, kept.ino);
    }
}
