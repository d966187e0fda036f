//! Reference-model tests: random sequences of opens, writes, truncates,
//! reads and closes run on the fs core over a file store and on a tiny
//! in-memory model of one image; every read and every committed file must
//! match the model.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::config::FileStoreConfig;
use crate::store::file::FileStore;

#[derive(Debug, Clone)]
enum Op {
    /// Opens a writable handle (with O_TRUNC when true) if none is open.
    Open(bool),
    Write {
        offset: u32,
        len: u16,
        byte: u8,
    },
    Truncate(u32),
    Read {
        offset: u32,
        len: u16,
    },
    Fsync,
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<bool>().prop_map(Op::Open),
        (0u32..300_000, 1u16..20_000, any::<u8>()).prop_map(|(offset, len, byte)| Op::Write {
            offset,
            len,
            byte
        }),
        (0u32..300_000).prop_map(Op::Truncate),
        (0u32..300_000, 1u16..20_000).prop_map(|(offset, len)| Op::Read { offset, len }),
        Just(Op::Fsync),
        Just(Op::Close),
    ]
}

async fn run(ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = FileStoreConfig {
        datadir: tmp.path().join("s"),
        file_perm: None,
        chunk_size: 65536,
        thin_provisioning: false,
    };
    let store = Arc::new(FileStore::open("s", &cfg).unwrap());
    let fs = ImageFs::new(
        vec![store],
        FsOptions {
            attr_ttl: Duration::ZERO,
            passthrough: false,
            read_only: false,
            hashing: Some(HashAlgorithm::Sha256),
            owner: OwnerOverride::default(),
            single_store: Some(0),
        },
    );
    let (attr, opened) = fs
        .create(ROOT_INO, "img", 0o644, 0, libc::O_RDWR, Caller::default())
        .await
        .unwrap();
    let ino = attr.ino;
    let mut fh = Some(opened.fh);
    let mut committed: Vec<u8> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let on_disk = || std::fs::read(tmp.path().join("s/img")).unwrap_or_default();
    for op in ops {
        match op {
            Op::Open(trunc) if fh.is_none() => {
                let flags = libc::O_RDWR | if trunc { libc::O_TRUNC } else { 0 };
                fh = Some(fs.open(ino, flags).await.unwrap().fh);
                if trunc {
                    current.clear();
                }
            }
            Op::Open(_) => {}
            Op::Write { offset, len, byte } => {
                let Some(h) = fh else { continue };
                let data = vec![byte; len as usize];
                fs.write(h, offset as u64, Bytes::from(data.clone()))
                    .await
                    .unwrap();
                let end = offset as usize + len as usize;
                if current.len() < end {
                    current.resize(end, 0);
                }
                current[offset as usize..end].copy_from_slice(&data);
            }
            Op::Truncate(size) => {
                let req = SetAttrRequest {
                    size: Some(size as u64),
                    ..Default::default()
                };
                fs.setattr(ino, fh, req).await.unwrap();
                current.resize(size as usize, 0);
                if fh.is_none() {
                    committed = current.clone(); // no writer: applied at once
                }
            }
            Op::Read { offset, len } => {
                let h = match fh {
                    Some(h) => h,
                    None => fs.open(ino, libc::O_RDONLY).await.unwrap().fh,
                };
                let got = fs.read(h, offset as u64, len as u32).await.unwrap();
                let start = (offset as usize).min(current.len());
                let end = (offset as usize + len as usize).min(current.len());
                assert_eq!(&got[..], &current[start..end], "read at {offset}+{len}");
                if fh.is_none() {
                    fs.release(h).await;
                }
            }
            Op::Fsync => {
                if let Some(h) = fh {
                    fs.fsync(h).await.unwrap();
                    committed = current.clone();
                }
            }
            Op::Close => {
                if let Some(h) = fh.take() {
                    fs.flush(h, 0).await.unwrap();
                    fs.release(h).await;
                    committed = current.clone();
                }
            }
        }
        assert_eq!(on_disk(), committed, "committed image after {op:?}");
        assert_eq!(fs.getattr(ino).await.unwrap().size, current.len() as u64);
    }
    if let Some(h) = fh.take() {
        fs.flush(h, 0).await.unwrap();
        fs.release(h).await;
    }
    assert_eq!(on_disk(), current);
    // The stored checksum is that of the final bytes.
    let sum = fs
        .getxattr(ino, crate::store::XATTR_CHECKSUM)
        .await
        .unwrap();
    let want = openssl::hash::hash(openssl::hash::MessageDigest::md5(), &current).unwrap();
    assert_eq!(String::from_utf8(sum).unwrap(), hex::encode(want));
    let leftovers = std::fs::read_dir(tmp.path().join("s")).unwrap().count();
    assert_eq!(leftovers, 1, "only the image remains");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn fs_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops));
    }
}
