//! The store conformance suite against the file store (a temp directory).

mod conformance;

use std::sync::Arc;

use imagefs::config::FileStoreConfig;
use imagefs::store::{file::FileStore, Store};

async fn file_store() -> Arc<dyn Store> {
    // Leaked on purpose: the directory must outlive the store in each test.
    let dir = tempfile::tempdir().unwrap().keep();
    let cfg = FileStoreConfig {
        datadir: dir,
        file_perm: None,
        chunk_size: 65536,
        thin_provisioning: false,
    };
    Arc::new(FileStore::open("local", &cfg).unwrap())
}

conformance_tests!(file_store());
