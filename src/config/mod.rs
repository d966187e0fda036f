//! Typed configuration: the `Config` the rest of imagefs consumes, built from
//! an imagefs TOML file, from an existing `glance-api.conf`, or from the
//! embedded default (one file store in a local directory). Everything is
//! typed here, at the edge; nothing deeper looks options up by string.

mod error;
mod glance;
mod rules;
mod secret;
mod toml_file;

pub use error::ConfigError;
pub use glance::import_glance;
pub use secret::Secret;
pub use toml_file::{embedded_default, load_toml, parse_toml};

use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration of one imagefs process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// File the configuration was read from (None for the embedded default).
    pub source: Option<PathBuf>,
    pub mount: MountConfig,
    pub cache: CacheConfig,
    /// Stores in the order they were declared.
    pub stores: Vec<StoreConfig>,
    /// Glance's `default_backend` / `default_store`, if any.
    pub default_store: Option<String>,
}

impl Config {
    pub fn store(&self, name: &str) -> Option<&StoreConfig> {
        self.stores.iter().find(|s| s.name == name)
    }
}

/// `[mount]`: how the filesystem talks to the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct MountConfig {
    /// Attribute and listing cache TTL (`attr_ttl_ms`, default 1000).
    pub attr_ttl: Duration,
    /// FUSE dispatch threads (`threads`, default 4).
    pub threads: usize,
    /// Use FUSE passthrough for local files: reads of committed images and
    /// writes of new ones (`passthrough`, default true).
    pub passthrough: bool,
    /// Kernel read-ahead for the mount, KiB (`read_ahead_kb`, default 1024).
    pub read_ahead_kb: u32,
    /// Bytes of writes in flight to the stores at once, all uploads
    /// together, MiB (`write_in_flight_mb`, default 256; 0: no bound).
    pub write_in_flight_mb: u64,
    /// Glance's `hashing_algorithm` for `os_hash_value` (default sha512).
    pub hashing_algorithm: HashAlgorithm,
    /// Compute md5 and os_hash_value of every image written (`checksums`,
    /// default true). Off for a Glance file store backend: Glance computes
    /// them itself, and hashing bounds the write rate on small machines.
    pub checksums: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            attr_ttl: Duration::from_millis(1000),
            threads: 4,
            passthrough: true,
            read_ahead_kb: 1024,
            write_in_flight_mb: 256,
            hashing_algorithm: HashAlgorithm::Sha512,
            checksums: true,
        }
    }
}

/// Algorithm of `os_hash_value`, as Glance's `hashing_algorithm` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
        }
    }
}

/// `[cache]`: the in-memory block cache used for remote stores.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Bytes of memory for cached blocks (`memory_mb`, default 256).
    pub memory_bytes: u64,
    /// Size of one cached block (`block_size_kb`, default 4096).
    pub block_size: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 256 << 20,
            block_size: 4 << 20,
        }
    }
}

/// One configured store: a name (the directory under the mount) and its backend.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub name: String,
    pub backend: BackendConfig,
}

/// The typed options of each backend type.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    File(FileStoreConfig),
    Rbd(RbdStoreConfig),
    S3(S3StoreConfig),
    Swift(SwiftStoreConfig),
    Vmware(VmwareStoreConfig),
    Cinder(CinderStoreConfig),
    Http(HttpStoreConfig),
}

impl BackendConfig {
    /// The store type as written in config files (`file`, `rbd`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::File(_) => "file",
            BackendConfig::Rbd(_) => "rbd",
            BackendConfig::S3(_) => "s3",
            BackendConfig::Swift(_) => "swift",
            BackendConfig::Vmware(_) => "vmware",
            BackendConfig::Cinder(_) => "cinder",
            BackendConfig::Http(_) => "http",
        }
    }
}

/// `type = "file"`: Glance's filesystem store.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStoreConfig {
    /// `filesystem_store_datadir` (default /var/lib/glance/images).
    pub datadir: PathBuf,
    /// `filesystem_store_file_perm`: mode applied at commit when set (> 0).
    pub file_perm: Option<u32>,
    /// `filesystem_store_chunk_size` (default 65536).
    pub chunk_size: u64,
    /// `filesystem_thin_provisioning` (default false).
    pub thin_provisioning: bool,
}

/// `type = "rbd"`: Glance's RBD store.
#[derive(Debug, Clone, PartialEq)]
pub struct RbdStoreConfig {
    /// `rbd_store_pool` (default images).
    pub pool: String,
    /// `rbd_store_user` (None = the client's default, admin).
    pub user: Option<String>,
    /// `rbd_store_ceph_conf` (default /etc/ceph/ceph.conf).
    pub ceph_conf: PathBuf,
    /// `rbd_store_chunk_size` in MiB (default 8).
    pub chunk_size_mb: u64,
    /// `rados_connect_timeout` (default 0 = library default).
    pub connect_timeout: Duration,
    /// `op_timeout_s` (imagefs only): how long one OSD operation may wait
    /// before it fails (0 = 4x the connect timeout, at least 120 s).
    pub op_timeout: Duration,
    /// `rbd_thin_provisioning` (default false).
    pub thin_provisioning: bool,
}

/// `s3_store_bucket_url_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketUrlFormat {
    Auto,
    Path,
    Virtual,
}

/// `type = "s3"`: Glance's S3 store.
#[derive(Debug, Clone, PartialEq)]
pub struct S3StoreConfig {
    /// `s3_store_host` (an URL; http:// or https://).
    pub host: String,
    pub access_key: Secret,
    pub secret_key: Secret,
    pub bucket: String,
    pub region: Option<String>,
    pub bucket_url_format: BucketUrlFormat,
    pub create_bucket_on_put: bool,
    /// `s3_store_large_object_size` in MiB (default 100).
    pub large_object_size_mb: u64,
    /// `s3_store_large_object_chunk_size` in MiB (default 10, minimum 5).
    pub large_object_chunk_size_mb: u64,
    /// `s3_store_thread_pools` (default 10).
    pub thread_pools: usize,
    pub cacert: Option<PathBuf>,
    /// Where writes into committed objects are staged until commit
    /// (`staging_dir`, default /var/tmp): unnamed sparse files, up to the
    /// size of each image being modified.
    pub staging_dir: PathBuf,
    /// `op_timeout_s` (imagefs only): how long one attempt of a request may
    /// wait for the server's next byte (0 = 30 s).
    pub op_timeout: Duration,
}

/// Default `staging_dir` of object stores: on disk, not a tmpfs.
pub const DEFAULT_STAGING_DIR: &str = "/var/tmp";

/// `type = "swift"`: Glance's Swift store (credentials already resolved from
/// `swift_store_config_file` when imported from glance-api.conf).
#[derive(Debug, Clone, PartialEq)]
pub struct SwiftStoreConfig {
    pub auth_address: String,
    /// 1 (tempauth), 2 or 3 (keystone; default 3).
    pub auth_version: u32,
    /// For v3 `project:user` or `user` as Glance writes it.
    pub user: String,
    pub key: Secret,
    pub project_domain_id: Option<String>,
    pub user_domain_id: Option<String>,
    /// Keystone v3 domains by name (`project_domain_name`, `user_domain_name`
    /// in the swift store config file), when given instead of the ids.
    pub project_domain_name: Option<String>,
    pub user_domain_name: Option<String>,
    /// `swift_store_region`: region of the object-store endpoint in the catalog.
    pub region: Option<String>,
    /// `swift_store_endpoint`: use this storage URL instead of the catalog's.
    pub endpoint: Option<String>,
    /// `swift_store_endpoint_type`: publicURL (default), adminURL or internalURL.
    pub endpoint_type: String,
    /// `swift_store_container` (default glance).
    pub container: String,
    /// `swift_store_multiple_containers_seed` (default 0).
    pub multiple_containers_seed: u32,
    pub multi_tenant: bool,
    /// `swift_store_large_object_size` in Swift MB of 1,024,000 B (default 5120).
    pub large_object_size_mb: u64,
    /// `swift_store_large_object_chunk_size` in Swift MB (default 200).
    pub large_object_chunk_size_mb: u64,
    pub create_container_on_put: bool,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
}

/// One entry of `vmware_datastores` (`dc:ds:weight`).
#[derive(Debug, Clone, PartialEq)]
pub struct VmwareDatastore {
    pub datacenter: String,
    pub datastore: String,
    pub weight: i64,
}

/// `type = "vmware"`: Glance's VMware datastore store.
#[derive(Debug, Clone, PartialEq)]
pub struct VmwareStoreConfig {
    pub server_host: String,
    pub username: String,
    pub password: Secret,
    /// Highest weight first.
    pub datastores: Vec<VmwareDatastore>,
    /// `vmware_store_image_dir` (default /openstack_glance).
    pub image_dir: String,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub api_retry_count: u32,
    pub task_poll_interval: Duration,
}

/// `type = "cinder"`: Glance's Cinder store.
#[derive(Debug, Clone, PartialEq)]
pub struct CinderStoreConfig {
    /// `cinder_endpoint_template`, e.g. http://127.0.0.1:8776/v3/%(tenant)s.
    pub endpoint_template: Option<String>,
    /// `cinder_catalog_info` (default volumev3::publicURL).
    pub catalog_info: String,
    pub auth_address: Option<String>,
    pub user_name: Option<String>,
    pub password: Option<Secret>,
    pub project_name: Option<String>,
    /// `cinder_store_user_domain_name` (default Default).
    pub user_domain_name: String,
    /// `cinder_store_project_domain_name` (default Default).
    pub project_domain_name: String,
    /// `cinder_os_region_name`: region used to pick the endpoint in the catalog.
    pub region_name: Option<String>,
    pub volume_type: Option<String>,
    pub state_transition_timeout: Duration,
    /// `cinder_api_insecure` (default false).
    pub insecure: bool,
    /// `cinder_ca_certificates_file`.
    pub ca_file: Option<PathBuf>,
}

/// `type = "http"`: read-only images served by a web server.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpStoreConfig {
    /// Base URL; image `<id>` is `<base_url>/<id>`.
    pub base_url: String,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub proxy: Option<String>,
}
