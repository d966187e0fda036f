//! The store conformance suite against the S3 store on s3s-fs, a second,
//! independent S3 server (scripts/s3s.sh up). Each case gets a fresh
//! bucket of its own, so cases run in parallel.

mod conformance;
mod s3_common;

use std::sync::Arc;

use imagefs::store::Store;

macro_rules! s3s_store {
    () => {{
        async {
            let name = test_name!();
            let server = s3_common::s3s();
            tokio::task::spawn_blocking(move || s3_common::store_for(&server, "imagefs-s3s", &name))
                .await
                .unwrap() as Arc<dyn Store>
        }
    }};
}

conformance_tests!(s3s_store!());
