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

// The file store's publish (the kernel writes the upload's file directly and
// goes on after close): cases only it has.

use bytes::Bytes;
use imagefs::store::{UploadMode, TEMP_PREFIX};

fn temp_names(store: &FileStore) -> Vec<String> {
    std::fs::read_dir(store.datadir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

fn file_store_at() -> FileStore {
    let cfg = FileStoreConfig {
        datadir: tempfile::tempdir().unwrap().keep(),
        file_perm: None,
        chunk_size: 65536,
        thin_provisioning: false,
    };
    FileStore::open("local", &cfg).unwrap()
}

#[tokio::test]
async fn commit_after_publish_moves_no_times() {
    let store = file_store_at();
    for (id, len) in [("empty", 0), ("some", 100_000)] {
        let mut up = store.create_upload(id, UploadMode::New).await.unwrap();
        up.write_at(0, Bytes::from(conformance::data(len, 1)))
            .await
            .unwrap();
        let published = up.publish(None, false).await.unwrap();
        assert!(
            temp_names(&store).is_empty(),
            "{id}: temp name left after publish"
        );
        let before = store.head(id).await.unwrap();
        assert_eq!(before.ctime, published.ctime);
        std::thread::sleep(std::time::Duration::from_millis(20));
        up.commit(None, false).await.unwrap();
        let after = store.head(id).await.unwrap();
        assert_eq!(
            (after.mtime, after.ctime),
            (before.mtime, before.ctime),
            "{id}"
        );
        assert_eq!(store.read(id, 0, 200_000).await.unwrap().len(), len);
    }
}

#[tokio::test]
async fn a_replacement_after_publish_stands_unless_the_upload_changes() {
    let store = file_store_at();
    let (ours, theirs) = (conformance::data(5000, 1), conformance::data(7000, 2));
    let mut up = store.create_upload("img", UploadMode::New).await.unwrap();
    up.write_at(0, Bytes::from(ours.clone())).await.unwrap();
    up.publish(None, false).await.unwrap();
    // Another writer replaces the image after our publish.
    let mut other = store
        .create_upload("img", UploadMode::Replace)
        .await
        .unwrap();
    other
        .write_at(0, Bytes::from(theirs.clone()))
        .await
        .unwrap();
    other.commit(None, false).await.unwrap();
    // Publishing or committing nothing new keeps their image.
    up.publish(None, false).await.unwrap();
    assert_eq!(store.read("img", 0, 10_000).await.unwrap(), theirs);
    // Writing again makes ours the image again: a copy, as the temp name is gone.
    up.write_at(5000, Bytes::from_static(b"more"))
        .await
        .unwrap();
    up.commit(None, false).await.unwrap();
    let mut want = ours;
    want.extend_from_slice(b"more");
    assert_eq!(store.read("img", 0, 10_000).await.unwrap(), want);
    assert!(temp_names(&store).is_empty(), "{:?}", temp_names(&store));
}
