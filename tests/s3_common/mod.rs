//! What the S3 store's tests share: the servers' env files (written by
//! scripts/ceph.sh --rgw and scripts/s3s.sh), a fresh bucket per test, and
//! boto3 (what Glance itself uses) as an independent client. A server
//! whose env file is missing fails the tests; it never skips them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use imagefs::config::{BucketUrlFormat, S3StoreConfig, Secret};
use imagefs::store::s3::S3Store;
use imagefs::store::{
    Capabilities, Leftover, ObjectMeta, Reader, Result, SetAttrs, StatFs, Store, Upload,
    UploadMode, XattrMode,
};

/// One S3 server: its endpoint and credentials.
#[derive(Clone)]
pub struct Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

fn state_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("IMAGEFS_STATE").unwrap_or_else(|_| "/var/tmp/imagefs-backends".into()),
    )
}

fn load(file: PathBuf, how: &str) -> Server {
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}: start the server with `{how}`", file.display()));
    let vars: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |k: &str| {
        vars.get(k)
            .unwrap_or_else(|| panic!("{}: no {k}", file.display()))
            .to_string()
    };
    Server {
        endpoint: get("S3_ENDPOINT"),
        access_key: get("S3_ACCESS_KEY"),
        secret_key: get("S3_SECRET_KEY"),
    }
}

/// Ceph RGW (scripts/ceph.sh up --rgw).
pub fn rgw() -> Server {
    load(
        state_dir().join("ceph/rgw.env"),
        "bash scripts/ceph.sh up --rgw",
    )
}

/// s3s-fs (scripts/s3s.sh up).
pub fn s3s() -> Server {
    load(state_dir().join("s3s/s3s.env"), "bash scripts/s3s.sh up")
}

pub fn config(server: &Server, bucket: &str) -> S3StoreConfig {
    S3StoreConfig {
        host: server.endpoint.clone(),
        access_key: Secret::new(server.access_key.clone()),
        secret_key: Secret::new(server.secret_key.clone()),
        bucket: bucket.to_string(),
        region: None,
        bucket_url_format: BucketUrlFormat::Auto,
        create_bucket_on_put: false,
        large_object_size_mb: 100,
        // The smallest part S3 allows, so a few MiB make multipart uploads.
        large_object_chunk_size_mb: 5,
        thread_pools: 4,
        cacert: None,
        staging_dir: std::env::temp_dir(),
        op_timeout: std::time::Duration::ZERO,
    }
}

/// Runs a Python snippet with boto3 against `server`; `S3` in the
/// snippet is a boto3 client. Returns stdout; panics with stderr.
pub fn boto3(server: &Server, code: &str) -> Vec<u8> {
    let prelude = "import boto3, botocore, sys, os\n\
        S3 = boto3.client('s3', endpoint_url=os.environ['EP'], \
        aws_access_key_id=os.environ['AK'], aws_secret_access_key=os.environ['SK'], \
        region_name='us-east-1', \
        config=botocore.config.Config(s3={'addressing_style': 'path'}))\n";
    let out = Command::new("timeout")
        .arg("300")
        .arg("python3")
        .arg("-c")
        .arg(format!("{prelude}{code}"))
        .env("EP", &server.endpoint)
        .env("AK", &server.access_key)
        .env("SK", &server.secret_key)
        // Ceph Pacific does not take the checksums newer botocore sends.
        .env("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        .env("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Empties and removes `bucket` if it exists, then creates it empty.
pub fn fresh_bucket(server: &Server, bucket: &str) {
    remove_bucket(server, bucket);
    boto3(server, &format!("S3.create_bucket(Bucket='{bucket}')\n"));
}

/// Removes a test's bucket when the test ends (passed or not).
pub struct BucketGuard {
    pub server: Server,
    pub bucket: String,
}

impl Drop for BucketGuard {
    fn drop(&mut self) {
        remove_bucket(&self.server, &self.bucket);
    }
}

/// Aborts the uploads in `bucket`, deletes its objects and the bucket.
pub fn remove_bucket(server: &Server, bucket: &str) {
    boto3(
        server,
        &format!(
            "b = '{bucket}'\n\
             try:\n\
             \x20   for u in S3.list_multipart_uploads(Bucket=b).get('Uploads', []):\n\
             \x20       S3.abort_multipart_upload(Bucket=b, Key=u['Key'], UploadId=u['UploadId'])\n\
             except botocore.exceptions.ClientError as e:\n\
             \x20   if e.response['Error']['Code'] not in ('NoSuchBucket', 'NotImplemented'):\n\
             \x20       raise\n\
             try:\n\
             \x20   while True:\n\
             \x20       r = S3.list_objects_v2(Bucket=b)\n\
             \x20       for o in r.get('Contents', []):\n\
             \x20           S3.delete_object(Bucket=b, Key=o['Key'])\n\
             \x20       if not r.get('IsTruncated'):\n\
             \x20           break\n\
             \x20   S3.delete_bucket(Bucket=b)\n\
             except botocore.exceptions.ClientError as e:\n\
             \x20   if e.response['Error']['Code'] != 'NoSuchBucket':\n\
             \x20       raise\n"
        ),
    );
}

/// A store on a fresh bucket of `server` named after `case`, and the
/// guard that removes the bucket.
pub fn store_for(server: &Server, prefix: &str, case: &str) -> (Arc<S3Store>, BucketGuard) {
    let bucket = format!("{prefix}-{}", case.replace('_', "-"));
    fresh_bucket(server, &bucket);
    let store = Arc::new(S3Store::open("s3", &config(server, &bucket)).unwrap());
    let guard = BucketGuard {
        server: server.clone(),
        bucket,
    };
    (store, guard)
}

/// A store whose bucket goes when the store does (the conformance cases
/// take the store and drop it at their end).
pub struct Guarded {
    pub store: Arc<S3Store>,
    pub _guard: BucketGuard,
}

#[async_trait::async_trait]
impl Store for Guarded {
    fn name(&self) -> &str {
        self.store.name()
    }
    fn type_name(&self) -> &'static str {
        self.store.type_name()
    }
    fn capabilities(&self) -> Capabilities {
        self.store.capabilities()
    }
    fn location(&self, id: &str) -> String {
        self.store.location(id)
    }
    async fn root_attrs(&self) -> Result<Option<ObjectMeta>> {
        self.store.root_attrs().await
    }
    async fn set_root_attrs(&self, a: &SetAttrs) -> Result<()> {
        self.store.set_root_attrs(a).await
    }
    async fn list(&self) -> Result<Vec<ObjectMeta>> {
        self.store.list().await
    }
    async fn head(&self, id: &str) -> Result<ObjectMeta> {
        self.store.head(id).await
    }
    async fn read(&self, id: &str, offset: u64, len: u32) -> Result<Bytes> {
        self.store.read(id, offset, len).await
    }
    async fn open_reader(&self, id: &str) -> Result<Option<Arc<dyn Reader>>> {
        self.store.open_reader(id).await
    }
    async fn create_upload(&self, id: &str, mode: UploadMode) -> Result<Box<dyn Upload>> {
        self.store.create_upload(id, mode).await
    }
    async fn delete(&self, id: &str) -> Result<()> {
        self.store.delete(id).await
    }
    async fn rename(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        self.store.rename(from, to, replace).await
    }
    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        self.store.copy(from, to).await
    }
    async fn set_attrs(&self, id: &str, a: &SetAttrs) -> Result<()> {
        self.store.set_attrs(id, a).await
    }
    async fn get_xattr(&self, id: &str, name: &str) -> Result<Vec<u8>> {
        self.store.get_xattr(id, name).await
    }
    async fn list_xattrs(&self, id: &str) -> Result<Vec<String>> {
        self.store.list_xattrs(id).await
    }
    async fn set_xattr(&self, id: &str, name: &str, v: &[u8], m: XattrMode) -> Result<()> {
        self.store.set_xattr(id, name, v, m).await
    }
    async fn remove_xattr(&self, id: &str, name: &str) -> Result<()> {
        self.store.remove_xattr(id, name).await
    }
    async fn statfs(&self) -> Result<StatFs> {
        self.store.statfs().await
    }
    async fn gc(&self, older_than: Duration, dry_run: bool) -> Result<Vec<Leftover>> {
        self.store.gc(older_than, dry_run).await
    }
}

/// A conformance store on a fresh bucket, removed when the case ends.
pub async fn conformance_store(
    server: Server,
    prefix: &'static str,
    case: String,
) -> Arc<dyn Store> {
    let (store, guard) = tokio::task::spawn_blocking(move || store_for(&server, prefix, &case))
        .await
        .unwrap();
    Arc::new(Guarded {
        store,
        _guard: guard,
    })
}

/// The name of the test function this is expanded in.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn f() {}
        let n = std::any::type_name_of_val(&f);
        n.trim_end_matches("::f")
            .rsplit("::")
            .find(|s| *s != "{{closure}}")
            .unwrap()
            .to_string()
    }};
}
