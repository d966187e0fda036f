//! The imagefs TOML configuration file: `[mount]`, `[cache]`, an optional
//! `default_store` and one `[stores.NAME]` table per store. The file is read
//! into private serde structs that keep every value's span (so each error
//! names `file:line` and the dotted key), checked, then turned into the
//! public [`Config`]. Also owns the embedded default (`default.toml`).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::rules::{self, glance_default as gd};
use super::{
    BackendConfig, BucketUrlFormat, CacheConfig, CinderStoreConfig, Config, ConfigError,
    FileStoreConfig, HttpStoreConfig, MountConfig, RbdStoreConfig, S3StoreConfig, Secret,
    StoreConfig, SwiftStoreConfig, VmwareStoreConfig,
};

/// The built-in configuration, compiled in.
const DEFAULT_TOML: &str = include_str!("default.toml");

/// The configuration used when none is given: one file store named `local`
/// in `/var/lib/imagefs/local`, default `[mount]` and `[cache]`.
pub fn embedded_default() -> Config {
    match parse_toml(DEFAULT_TOML, None) {
        Ok(config) => config,
        // A unit test parses the file, so this cannot happen in a build that passed.
        Err(e) => panic!("the embedded default.toml is invalid: {e}"),
    }
}

/// Reads and checks an imagefs TOML file.
pub fn load_toml(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, Some(path))
}

/// Parses and checks imagefs TOML text. `source` is the file it came from:
/// it is named in errors, recorded in [`Config::source`], and relative paths
/// in the text are resolved against its directory (without a source,
/// relative paths are refused).
pub fn parse_toml(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
    let ctx = Ctx { text, file: source };
    let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
    ctx.convert(raw)
}

// ---------------------------------------------------------------------------
// The file as serde sees it.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mount: Option<RawMount>,
    cache: Option<RawCache>,
    default_store: Option<Spanned<String>>,
    stores: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawStore>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    attr_ttl_ms: Option<u64>,
    threads: Option<Spanned<usize>>,
    passthrough: Option<bool>,
    read_ahead_kb: Option<u32>,
    write_in_flight_mb: Option<u64>,
    hashing_algorithm: Option<Spanned<String>>,
    checksums: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    memory_mb: Option<Spanned<u64>>,
    block_size_kb: Option<Spanned<u64>>,
}

/// Declares `RawStore` (every option of every store type, each optional and
/// spanned) and `RawStore::present`, the options actually written, so that
/// an option of another store type is refused with its own line number.
macro_rules! raw_store {
    ($($field:ident : $ty:ty),* $(,)?) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawStore {
            #[serde(rename = "type")]
            kind: Option<Spanned<String>>,
            $($field: Option<Spanned<$ty>>,)*
        }

        impl RawStore {
            fn present(&self) -> Vec<(&'static str, Range<usize>)> {
                let mut set = Vec::new();
                $(
                    if let Some(v) = &self.$field {
                        set.push((stringify!($field), v.span()));
                    }
                )*
                set
            }
        }
    };
}

raw_store! {
    // file
    datadir: PathBuf,
    file_perm: FilePerm,
    chunk_size: u64,
    thin_provisioning: bool,
    // rbd
    pool: String,
    user: String,
    ceph_conf: PathBuf,
    chunk_size_mb: u64,
    connect_timeout_s: u64,
    op_timeout_s: u64,
    // s3
    host: String,
    access_key: Secret,
    secret_key: Secret,
    bucket: String,
    region: String,
    bucket_url_format: String,
    create_bucket_on_put: bool,
    large_object_size_mb: u64,
    large_object_chunk_size_mb: u64,
    thread_pools: usize,
    cacert: PathBuf,
    staging_dir: PathBuf,
    // swift
    auth_address: String,
    auth_version: u32,
    key: Secret,
    project_domain_id: String,
    user_domain_id: String,
    project_domain_name: String,
    user_domain_name: String,
    endpoint: String,
    endpoint_type: String,
    container: String,
    multiple_containers_seed: i64,
    multi_tenant: bool,
    create_container_on_put: bool,
    insecure: bool,
    // vmware
    server_host: String,
    username: String,
    password: Secret,
    datastores: Vec<String>,
    image_dir: String,
    ca_file: PathBuf,
    api_retry_count: u32,
    task_poll_interval_s: u64,
    // cinder
    endpoint_template: String,
    catalog_info: String,
    user_name: String,
    project_name: String,
    region_name: String,
    volume_type: String,
    state_transition_timeout_s: u64,
    // http
    base_url: String,
    proxy: String,
}

/// The options each store type accepts, besides `type`.
const FILE_KEYS: &[&str] = &["datadir", "file_perm", "chunk_size", "thin_provisioning"];
const RBD_KEYS: &[&str] = &[
    "pool",
    "user",
    "ceph_conf",
    "chunk_size_mb",
    "connect_timeout_s",
    "op_timeout_s",
    "thin_provisioning",
];
const S3_KEYS: &[&str] = &[
    "host",
    "access_key",
    "secret_key",
    "bucket",
    "region",
    "bucket_url_format",
    "create_bucket_on_put",
    "large_object_size_mb",
    "large_object_chunk_size_mb",
    "thread_pools",
    "cacert",
    "staging_dir",
    "op_timeout_s",
];
const SWIFT_KEYS: &[&str] = &[
    "auth_address",
    "auth_version",
    "user",
    "key",
    "project_domain_id",
    "user_domain_id",
    "project_domain_name",
    "user_domain_name",
    "region",
    "endpoint",
    "endpoint_type",
    "container",
    "multiple_containers_seed",
    "multi_tenant",
    "large_object_size_mb",
    "large_object_chunk_size_mb",
    "create_container_on_put",
    "cacert",
    "insecure",
];
const VMWARE_KEYS: &[&str] = &[
    "server_host",
    "username",
    "password",
    "datastores",
    "image_dir",
    "insecure",
    "ca_file",
    "api_retry_count",
    "task_poll_interval_s",
];
const CINDER_KEYS: &[&str] = &[
    "endpoint_template",
    "catalog_info",
    "auth_address",
    "user_name",
    "password",
    "project_name",
    "user_domain_name",
    "project_domain_name",
    "region_name",
    "volume_type",
    "state_transition_timeout_s",
    "insecure",
    "ca_file",
];
const HTTP_KEYS: &[&str] = &["base_url", "insecure", "ca_file", "proxy"];

/// The options of a store type, if it is one.
fn keys_of(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "file" => FILE_KEYS,
        "rbd" => RBD_KEYS,
        "s3" => S3_KEYS,
        "swift" => SWIFT_KEYS,
        "vmware" => VMWARE_KEYS,
        "cinder" => CINDER_KEYS,
        "http" => HTTP_KEYS,
        _ => return None,
    })
}

/// Options whose values are credentials: errors about them never quote the value.
const SECRET_KEYS: &[&str] = &["access_key", "secret_key", "key", "password"];

/// `file_perm`: a TOML integer that is the mode itself (`0o640`), or a
/// string of octal digits (`"0640"`, `"640"`). Zero or negative: leave the
/// mode alone (Glance's `<= 0`).
struct FilePerm(Option<u32>);

impl<'de> Deserialize<'de> for FilePerm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FilePerm, D::Error> {
        struct PermVisitor;

        impl Visitor<'_> for PermVisitor {
            type Value = FilePerm;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file mode: an octal integer like 0o640 or a string like \"0640\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FilePerm, E> {
                rules::file_perm_from_int(v)
                    .map(FilePerm)
                    .map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FilePerm, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<FilePerm, E> {
                rules::file_perm_from_digits(v)
                    .map(FilePerm)
                    .map_err(E::custom)
            }
        }

        deserializer.deserialize_any(PermVisitor)
    }
}

// ---------------------------------------------------------------------------
// From raw to typed, with errors that point at the text.

struct Ctx<'a> {
    text: &'a str,
    file: Option<&'a Path>,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(
        &self,
        span: Option<Range<usize>>,
        key: String,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.map(Path::to_path_buf),
            line: span.map(|s| self.line_of(s.start)),
            key,
            message: message.into(),
        }
    }

    /// Turns a toml/serde error into `file:line: key: message`. The toml
    /// error's own `Display` quotes the offending source line, which may hold
    /// a secret, so only its message and span are used.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let message = e.message().trim().to_owned();
        match span.clone().and_then(|s| key_path_at(self.text, s)) {
            Some(path) => {
                let message = self.explain(&path, message);
                self.err(span, format_path(&path), message)
            }
            None => ConfigError::Syntax {
                file: self.file.map(Path::to_path_buf),
                line: span.map(|s| self.line_of(s.start)),
                message,
            },
        }
    }

    /// Rewrites serde's message for the option at `path` where it would
    /// quote a secret or list the options of every store type.
    fn explain(&self, path: &[Seg], message: String) -> String {
        let keys: Vec<&str> = path
            .iter()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .collect();
        let last = keys.last().copied().unwrap_or("");
        if SECRET_KEYS.contains(&last) && message != "duplicate key" {
            return "invalid value (not shown: the option holds a secret); expected a string"
                .to_owned();
        }
        if let (true, ["stores", name, field]) =
            (message.starts_with("unknown field"), keys.as_slice())
        {
            let kind = store_type_in(self.text, name);
            return match kind
                .as_deref()
                .and_then(|k| keys_of(k).map(|opts| (k, opts)))
            {
                Some((kind, opts)) => format!(
                    "unknown option `{field}` of {kind} stores (they take: type, {})",
                    opts.join(", ")
                ),
                None => format!("unknown option `{field}`"),
            };
        }
        message
    }

    fn convert(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mount = self.mount(raw.mount)?;
        let cache = self.cache(raw.cache)?;

        let Some(stores_table) = raw.stores else {
            return Err(self.err(
                None,
                "stores".into(),
                "no store is configured; add a [stores.NAME] table with a `type`",
            ));
        };
        let table_span = stores_table.span();
        // Keep the order of the file, not the map's.
        let mut entries: Vec<_> = stores_table.into_inner().into_iter().collect();
        entries.sort_by_key(|(name, _)| name.span().start);
        if entries.is_empty() {
            return Err(self.err(
                Some(table_span),
                "stores".into(),
                "no store is configured; add a [stores.NAME] table with a `type`",
            ));
        }
        let mut stores = Vec::with_capacity(entries.len());
        for (name, raw_store) in entries {
            let name_span = name.span();
            let name = name.into_inner();
            let key = format!("stores.{}", key_segment(&name));
            if let Some(problem) = rules::store_name_problem(&name) {
                return Err(self.err(Some(name_span), key, problem));
            }
            let table_span = raw_store.span();
            let store = StoreCtx {
                ctx: self,
                key,
                span: table_span,
            };
            let backend = store.backend(raw_store.into_inner())?;
            stores.push(StoreConfig { name, backend });
        }

        let default_store = match raw.default_store {
            None => None,
            Some(d) => {
                let span = d.span();
                let d = d.into_inner();
                if !stores.iter().any(|s| s.name == d) {
                    let names: Vec<_> = stores.iter().map(|s| s.name.as_str()).collect();
                    return Err(self.err(
                        Some(span),
                        "default_store".into(),
                        format!(
                            "`{d}` is not a configured store (stores: {})",
                            names.join(", ")
                        ),
                    ));
                }
                Some(d)
            }
        };

        Ok(Config {
            source: self.file.map(Path::to_path_buf),
            mount,
            cache,
            stores,
            default_store,
        })
    }

    fn mount(&self, raw: Option<RawMount>) -> Result<MountConfig, ConfigError> {
        let mut mount = MountConfig::default();
        let Some(raw) = raw else { return Ok(mount) };
        if let Some(ms) = raw.attr_ttl_ms {
            mount.attr_ttl = Duration::from_millis(ms);
        }
        if let Some(threads) = raw.threads {
            if *threads.get_ref() == 0 {
                return Err(self.err(
                    Some(threads.span()),
                    "mount.threads".into(),
                    "must be at least 1",
                ));
            }
            mount.threads = threads.into_inner();
        }
        if let Some(p) = raw.passthrough {
            mount.passthrough = p;
        }
        if let Some(kb) = raw.read_ahead_kb {
            mount.read_ahead_kb = kb;
        }
        if let Some(mb) = raw.write_in_flight_mb {
            mount.write_in_flight_mb = mb;
        }
        if let Some(c) = raw.checksums {
            mount.checksums = c;
        }
        if let Some(algo) = raw.hashing_algorithm {
            mount.hashing_algorithm = rules::parse_hash_algorithm(algo.get_ref())
                .map_err(|m| self.err(Some(algo.span()), "mount.hashing_algorithm".into(), m))?;
        }
        Ok(mount)
    }

    fn cache(&self, raw: Option<RawCache>) -> Result<CacheConfig, ConfigError> {
        let mut cache = CacheConfig::default();
        let Some(raw) = raw else { return Ok(cache) };
        if let Some(mb) = raw.memory_mb {
            cache.memory_bytes = mb.get_ref().checked_mul(1 << 20).ok_or_else(|| {
                self.err(Some(mb.span()), "cache.memory_mb".into(), "is too large")
            })?;
        }
        if let Some(kb) = raw.block_size_kb {
            if *kb.get_ref() == 0 {
                return Err(self.err(
                    Some(kb.span()),
                    "cache.block_size_kb".into(),
                    "must be greater than 0",
                ));
            }
            cache.block_size = kb.get_ref().checked_mul(1 << 10).ok_or_else(|| {
                self.err(
                    Some(kb.span()),
                    "cache.block_size_kb".into(),
                    "is too large",
                )
            })?;
        }
        Ok(cache)
    }
}

/// One `[stores.NAME]` table being converted.
struct StoreCtx<'a> {
    ctx: &'a Ctx<'a>,
    /// `stores.NAME`
    key: String,
    /// The table's span (its header for `[stores.NAME]`).
    span: Range<usize>,
}

impl StoreCtx<'_> {
    fn key(&self, field: &str) -> String {
        format!("{}.{field}", self.key)
    }

    fn err_at(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> ConfigError {
        self.ctx.err(Some(span), self.key(field), message)
    }

    fn missing(&self, field: &str, kind: &str) -> ConfigError {
        self.ctx.err(
            Some(self.span.clone()),
            self.key(field),
            format!("missing; {kind} stores require it"),
        )
    }

    fn backend(&self, mut raw: RawStore) -> Result<BackendConfig, ConfigError> {
        let Some(kind) = raw.kind.take() else {
            return Err(self.ctx.err(
                Some(self.span.clone()),
                self.key("type"),
                "missing; one of file, rbd, s3, swift, vmware, cinder, http",
            ));
        };
        let Some(allowed) = keys_of(kind.get_ref()) else {
            return Err(self.err_at(
                kind.span(),
                "type",
                format!(
                    "unknown store type `{}` (expected file, rbd, s3, swift, vmware, cinder or http)",
                    kind.get_ref()
                ),
            ));
        };
        let kind = kind.into_inner();
        if let Some((field, span)) = raw
            .present()
            .into_iter()
            .find(|(field, _)| !allowed.contains(field))
        {
            return Err(self.err_at(
                span,
                field,
                format!(
                    "not an option of {kind} stores (they take: type, {})",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(match kind.as_str() {
            "file" => BackendConfig::File(self.file(raw)?),
            "rbd" => BackendConfig::Rbd(self.rbd(raw)?),
            "s3" => BackendConfig::S3(self.s3(raw)?),
            "swift" => BackendConfig::Swift(self.swift(raw)?),
            "vmware" => BackendConfig::Vmware(self.vmware(raw)?),
            "cinder" => BackendConfig::Cinder(self.cinder(raw)?),
            _ => BackendConfig::Http(self.http(raw)?),
        })
    }

    /// A path option; relative paths are resolved against the file's directory.
    fn path(&self, value: Spanned<PathBuf>, field: &str) -> Result<PathBuf, ConfigError> {
        let span = value.span();
        let path = value.into_inner();
        if path.as_os_str().is_empty() {
            return Err(self.err_at(span, field, "must not be empty"));
        }
        if path.is_absolute() {
            return Ok(path);
        }
        match self.ctx.file.and_then(Path::parent) {
            Some(dir) => Ok(dir.join(path)),
            None => Err(self.err_at(
                span,
                field,
                "relative path without a configuration file to resolve it against; use an absolute path",
            )),
        }
    }

    fn opt_path(
        &self,
        value: Option<Spanned<PathBuf>>,
        field: &str,
    ) -> Result<Option<PathBuf>, ConfigError> {
        value.map(|v| self.path(v, field)).transpose()
    }

    /// A required, non-empty string.
    fn string(
        &self,
        value: Option<Spanned<String>>,
        field: &str,
        kind: &str,
    ) -> Result<String, ConfigError> {
        let value = value.ok_or_else(|| self.missing(field, kind))?;
        if value.get_ref().trim().is_empty() {
            return Err(self.err_at(value.span(), field, "must not be empty"));
        }
        Ok(value.into_inner())
    }

    /// A required, non-empty secret.
    fn secret(
        &self,
        value: Option<Spanned<Secret>>,
        field: &str,
        kind: &str,
    ) -> Result<Secret, ConfigError> {
        let value = value.ok_or_else(|| self.missing(field, kind))?;
        if value.get_ref().is_empty() {
            return Err(self.err_at(value.span(), field, "must not be empty"));
        }
        Ok(value.into_inner())
    }

    /// A number that must be at least `min`.
    fn at_least<T>(
        &self,
        value: Option<Spanned<T>>,
        field: &str,
        min: T,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T: PartialOrd + Copy + fmt::Display,
    {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() < min => {
                Err(self.err_at(v.span(), field, format!("must be at least {min}")))
            }
            Some(v) => Ok(v.into_inner()),
        }
    }

    fn file(&self, raw: RawStore) -> Result<FileStoreConfig, ConfigError> {
        let datadir = match raw.datadir {
            Some(d) => self.path(d, "datadir")?,
            None => PathBuf::from(gd::FILE_DATADIR),
        };
        Ok(FileStoreConfig {
            datadir,
            file_perm: raw.file_perm.and_then(|p| p.into_inner().0),
            chunk_size: self.at_least(raw.chunk_size, "chunk_size", 1, gd::FILE_CHUNK_SIZE)?,
            thin_provisioning: opt_bool(raw.thin_provisioning, false),
        })
    }

    fn rbd(&self, raw: RawStore) -> Result<RbdStoreConfig, ConfigError> {
        let pool = match raw.pool {
            Some(p) => self.string(Some(p), "pool", "rbd")?,
            None => gd::RBD_POOL.to_owned(),
        };
        Ok(RbdStoreConfig {
            pool,
            user: non_empty(raw.user),
            ceph_conf: match raw.ceph_conf {
                Some(c) => self.path(c, "ceph_conf")?,
                None => PathBuf::from(gd::RBD_CEPH_CONF),
            },
            chunk_size_mb: self.at_least(
                raw.chunk_size_mb,
                "chunk_size_mb",
                1,
                gd::RBD_CHUNK_SIZE_MB,
            )?,
            connect_timeout: Duration::from_secs(
                raw.connect_timeout_s.map_or(0, Spanned::into_inner),
            ),
            op_timeout: Duration::from_secs(raw.op_timeout_s.map_or(0, Spanned::into_inner)),
            thin_provisioning: opt_bool(raw.thin_provisioning, false),
        })
    }

    fn s3(&self, raw: RawStore) -> Result<S3StoreConfig, ConfigError> {
        let host = raw.host.ok_or_else(|| self.missing("host", "s3"))?;
        let host_span = host.span();
        let host = rules::normalize_s3_host(host.get_ref())
            .map_err(|m| self.err_at(host_span, "host", m))?;
        let bucket_url_format = match raw.bucket_url_format {
            None => BucketUrlFormat::Auto,
            Some(f) => rules::parse_bucket_url_format(f.get_ref())
                .map_err(|m| self.err_at(f.span(), "bucket_url_format", m))?,
        };
        Ok(S3StoreConfig {
            host,
            access_key: self.secret(raw.access_key, "access_key", "s3")?,
            secret_key: self.secret(raw.secret_key, "secret_key", "s3")?,
            bucket: self.string(raw.bucket, "bucket", "s3")?,
            region: non_empty(raw.region),
            bucket_url_format,
            create_bucket_on_put: opt_bool(raw.create_bucket_on_put, false),
            large_object_size_mb: raw
                .large_object_size_mb
                .map_or(gd::S3_LARGE_OBJECT_SIZE_MB, Spanned::into_inner),
            large_object_chunk_size_mb: self.at_least(
                raw.large_object_chunk_size_mb,
                "large_object_chunk_size_mb",
                gd::S3_MIN_CHUNK_SIZE_MB,
                gd::S3_LARGE_OBJECT_CHUNK_SIZE_MB,
            )?,
            thread_pools: self.at_least(
                raw.thread_pools,
                "thread_pools",
                1,
                gd::S3_THREAD_POOLS,
            )?,
            cacert: self.opt_path(raw.cacert, "cacert")?,
            staging_dir: self
                .opt_path(raw.staging_dir, "staging_dir")?
                .unwrap_or_else(|| PathBuf::from(super::DEFAULT_STAGING_DIR)),
            op_timeout: Duration::from_secs(raw.op_timeout_s.map_or(0, Spanned::into_inner)),
        })
    }

    fn swift(&self, raw: RawStore) -> Result<SwiftStoreConfig, ConfigError> {
        let auth_version = match raw.auth_version {
            None => gd::SWIFT_AUTH_VERSION,
            Some(v) => rules::check_swift_auth_version(*v.get_ref())
                .map_err(|m| self.err_at(v.span(), "auth_version", m))?,
        };
        let project_domain_name = non_empty(raw.project_domain_name);
        let user_domain_name = non_empty(raw.user_domain_name);
        let mut project_domain_id = non_empty(raw.project_domain_id);
        let mut user_domain_id = non_empty(raw.user_domain_id);
        // Glance's rule: keystone v3 without a domain means the `default` domain.
        if auth_version == 3 {
            if project_domain_id.is_none() && project_domain_name.is_none() {
                project_domain_id = Some(gd::KEYSTONE_DOMAIN_ID.to_owned());
            }
            if user_domain_id.is_none() && user_domain_name.is_none() {
                user_domain_id = Some(gd::KEYSTONE_DOMAIN_ID.to_owned());
            }
        }
        let endpoint_type = match raw.endpoint_type {
            None => gd::SWIFT_ENDPOINT_TYPE.to_owned(),
            Some(t) => rules::check_endpoint_type(t.get_ref())
                .map_err(|m| self.err_at(t.span(), "endpoint_type", m))?,
        };
        let container = match raw.container {
            Some(c) => self.string(Some(c), "container", "swift")?,
            None => gd::SWIFT_CONTAINER.to_owned(),
        };
        let multiple_containers_seed = match raw.multiple_containers_seed {
            None => 0,
            Some(s) => rules::check_containers_seed(*s.get_ref())
                .map_err(|m| self.err_at(s.span(), "multiple_containers_seed", m))?,
        };
        Ok(SwiftStoreConfig {
            auth_address: self.string(raw.auth_address, "auth_address", "swift")?,
            auth_version,
            user: self.string(raw.user, "user", "swift")?,
            key: self.secret(raw.key, "key", "swift")?,
            project_domain_id,
            user_domain_id,
            project_domain_name,
            user_domain_name,
            region: non_empty(raw.region),
            endpoint: non_empty(raw.endpoint),
            endpoint_type,
            container,
            multiple_containers_seed,
            multi_tenant: opt_bool(raw.multi_tenant, false),
            large_object_size_mb: self.at_least(
                raw.large_object_size_mb,
                "large_object_size_mb",
                1,
                gd::SWIFT_LARGE_OBJECT_SIZE_MB,
            )?,
            large_object_chunk_size_mb: self.at_least(
                raw.large_object_chunk_size_mb,
                "large_object_chunk_size_mb",
                1,
                gd::SWIFT_LARGE_OBJECT_CHUNK_SIZE_MB,
            )?,
            create_container_on_put: opt_bool(raw.create_container_on_put, false),
            cacert: self.opt_path(raw.cacert, "cacert")?,
            insecure: opt_bool(raw.insecure, false),
        })
    }

    fn vmware(&self, raw: RawStore) -> Result<VmwareStoreConfig, ConfigError> {
        let list = raw
            .datastores
            .ok_or_else(|| self.missing("datastores", "vmware"))?;
        let span = list.span();
        let mut datastores = Vec::new();
        for entry in list.into_inner() {
            datastores.push(
                rules::parse_datastore(&entry)
                    .map_err(|m| self.err_at(span.clone(), "datastores", m))?,
            );
        }
        if datastores.is_empty() {
            return Err(self.err_at(span, "datastores", "must list at least one datastore"));
        }
        rules::sort_datastores(&mut datastores);
        let image_dir = match raw.image_dir {
            Some(d) => self.string(Some(d), "image_dir", "vmware")?,
            None => gd::VMWARE_IMAGE_DIR.to_owned(),
        };
        let ca_file = self.opt_path(raw.ca_file, "ca_file")?;
        Ok(VmwareStoreConfig {
            server_host: self.string(raw.server_host, "server_host", "vmware")?,
            username: self.string(raw.username, "username", "vmware")?,
            password: self.secret(raw.password, "password", "vmware")?,
            datastores,
            image_dir,
            // Glance ignores vmware_insecure when a CA file is given.
            insecure: ca_file.is_none() && opt_bool(raw.insecure, false),
            ca_file,
            api_retry_count: self.at_least(
                raw.api_retry_count,
                "api_retry_count",
                1,
                gd::VMWARE_API_RETRY_COUNT,
            )?,
            task_poll_interval: Duration::from_secs(self.at_least(
                raw.task_poll_interval_s,
                "task_poll_interval_s",
                1,
                gd::VMWARE_TASK_POLL_INTERVAL_S,
            )?),
        })
    }

    fn cinder(&self, raw: RawStore) -> Result<CinderStoreConfig, ConfigError> {
        let creds = [
            ("auth_address", raw.auth_address.is_some()),
            ("user_name", raw.user_name.is_some()),
            ("password", raw.password.is_some()),
            ("project_name", raw.project_name.is_some()),
        ];
        rules::check_cinder_credentials(
            &creds,
            ("endpoint_template", raw.endpoint_template.is_some()),
        )
        .map_err(|(field, message)| {
            self.ctx
                .err(Some(self.span.clone()), self.key(field), message)
        })?;
        let catalog_info = match raw.catalog_info {
            Some(c) => self.string(Some(c), "catalog_info", "cinder")?,
            None => gd::CINDER_CATALOG_INFO.to_owned(),
        };
        Ok(CinderStoreConfig {
            endpoint_template: non_empty(raw.endpoint_template),
            catalog_info,
            auth_address: non_empty(raw.auth_address),
            user_name: non_empty(raw.user_name),
            password: raw.password.map(Spanned::into_inner),
            project_name: non_empty(raw.project_name),
            user_domain_name: non_empty(raw.user_domain_name)
                .unwrap_or_else(|| gd::CINDER_DOMAIN_NAME.to_owned()),
            project_domain_name: non_empty(raw.project_domain_name)
                .unwrap_or_else(|| gd::CINDER_DOMAIN_NAME.to_owned()),
            region_name: non_empty(raw.region_name),
            volume_type: non_empty(raw.volume_type),
            state_transition_timeout: Duration::from_secs(
                raw.state_transition_timeout_s
                    .map_or(gd::CINDER_STATE_TRANSITION_TIMEOUT_S, Spanned::into_inner),
            ),
            insecure: opt_bool(raw.insecure, false),
            ca_file: self.opt_path(raw.ca_file, "ca_file")?,
        })
    }

    fn http(&self, raw: RawStore) -> Result<HttpStoreConfig, ConfigError> {
        let base = raw
            .base_url
            .ok_or_else(|| self.missing("base_url", "http"))?;
        let base_url = rules::normalize_base_url(base.get_ref())
            .map_err(|m| self.err_at(base.span(), "base_url", m))?;
        let proxy = match raw.proxy {
            None => None,
            Some(p) => Some(
                rules::normalize_proxy(p.get_ref())
                    .map_err(|m| self.err_at(p.span(), "proxy", m))?,
            ),
        };
        let ca_file = self.opt_path(raw.ca_file, "ca_file")?;
        Ok(HttpStoreConfig {
            base_url,
            // Glance ignores https_insecure when a CA file is given.
            insecure: ca_file.is_none() && opt_bool(raw.insecure, gd::HTTPS_INSECURE),
            ca_file,
            proxy,
        })
    }
}

fn opt_bool(value: Option<Spanned<bool>>, default: bool) -> bool {
    value.map_or(default, Spanned::into_inner)
}

/// An optional string where "" means "not set", as in Glance.
fn non_empty(value: Option<Spanned<String>>) -> Option<String> {
    value
        .map(Spanned::into_inner)
        .filter(|s| !s.trim().is_empty())
}

/// A store name as a TOML key segment, quoted unless it is a bare key.
fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// The key path (unquoted segments) whose key or value covers `at`,
/// e.g. `["stores", "local", "datadir"]`.
fn key_path_at(text: &str, at: Range<usize>) -> Option<Vec<Seg>> {
    let (root, _errors) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    find_in_table(root.get_ref(), &at, &mut path).then_some(path)
}

/// The `type` written in `[stores.NAME]`, if any.
fn store_type_in(text: &str, name: &str) -> Option<String> {
    fn child<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t DeValue<'i>> {
        table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v.get_ref())
    }
    let (root, _errors) = DeTable::parse_recoverable(text);
    let stores = child(root.get_ref(), "stores")?.as_table()?;
    let store = child(stores, name)?.as_table()?;
    child(store, "type")?.as_str().map(str::to_owned)
}

fn covers(span: &Range<usize>, at: &Range<usize>) -> bool {
    at.start >= span.start
        && at.start < span.end.max(span.start + 1)
        && at.end <= span.end.max(at.start)
}

/// One step of a key path: a key, or an index in an array.
enum Seg {
    Key(String),
    Index(usize),
}

/// `stores.local.datadir`, `stores.v.datastores[1]`.
fn format_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(k));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn find_in_table(table: &DeTable<'_>, at: &Range<usize>, path: &mut Vec<Seg>) -> bool {
    for (key, value) in table {
        path.push(Seg::Key(key.get_ref().to_string()));
        if covers(&key.span(), at) || find_in_value(value, at, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &Spanned<DeValue<'_>>, at: &Range<usize>, path: &mut Vec<Seg>) -> bool {
    match value.get_ref() {
        DeValue::Table(inner) if find_in_table(inner, at, path) => return true,
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                if find_in_value(item, at, path) {
                    return true;
                }
                path.pop();
            }
        }
        _ => {}
    }
    covers(&value.span(), at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HashAlgorithm, VmwareDatastore};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_toml(text, Some(Path::new("/etc/imagefs/imagefs.toml")))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_default_is_one_local_file_store() {
        let c = embedded_default();
        assert_eq!(c.source, None);
        assert_eq!(c.mount, MountConfig::default());
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.default_store, None);
        assert_eq!(c.stores.len(), 1);
        let local = c.store("local").expect("store `local`");
        assert_eq!(
            local.backend,
            BackendConfig::File(FileStoreConfig {
                datadir: PathBuf::from("/var/lib/imagefs/local"),
                file_perm: None,
                chunk_size: 65536,
                thin_provisioning: false,
            })
        );
    }

    #[test]
    fn mount_and_cache_sections() {
        let c = parse(
            r#"
default_store = "b"
[mount]
attr_ttl_ms = 250
threads = 8
passthrough = false
read_ahead_kb = 4096
write_in_flight_mb = 64
hashing_algorithm = "sha256"
checksums = false
[cache]
memory_mb = 1024
block_size_kb = 1024
[stores.b]
type = "file"
datadir = "/b"
[stores.a]
type = "file"
datadir = "/a"
"#,
        )
        .unwrap();
        assert_eq!(c.source, Some(PathBuf::from("/etc/imagefs/imagefs.toml")));
        assert_eq!(c.mount.attr_ttl, Duration::from_millis(250));
        assert_eq!(c.mount.threads, 8);
        assert!(!c.mount.passthrough);
        assert_eq!(c.mount.read_ahead_kb, 4096);
        assert_eq!(c.mount.write_in_flight_mb, 64);
        assert_eq!(c.mount.hashing_algorithm, HashAlgorithm::Sha256);
        assert!(!c.mount.checksums);
        assert_eq!(c.cache.memory_bytes, 1 << 30);
        assert_eq!(c.cache.block_size, 1 << 20);
        assert_eq!(c.default_store.as_deref(), Some("b"));
        // declaration order, not alphabetical
        let names: Vec<_> = c.stores.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn every_backend_type() {
        let c = parse(
            r#"
[stores.local]
type = "file"
datadir = "images"
file_perm = 0o640
chunk_size = 131072
thin_provisioning = true

[stores.fast]
type = "rbd"
pool = "glance-images"
user = "glance"
ceph_conf = "/etc/ceph/ceph.conf"
chunk_size_mb = 4
connect_timeout_s = 10
op_timeout_s = 90
thin_provisioning = true

[stores.cheap]
type = "s3"
host = "rgw.example:8080"
access_key = "AKIA-ACCESS"
secret_key = "s3-very-secret"
bucket = "images"
region = "us-east-1"
bucket_url_format = "path"
create_bucket_on_put = true
large_object_size_mb = 200
large_object_chunk_size_mb = 16
thread_pools = 4
cacert = "/etc/ssl/rgw.pem"

[stores.objects]
type = "swift"
auth_address = "http://keystone:5000/v3"
user = "service:glance"
key = "swift-very-secret"
container = "images"
multiple_containers_seed = 2
large_object_size_mb = 1000
large_object_chunk_size_mb = 100
create_container_on_put = true
endpoint_type = "internalURL"
insecure = true

[stores.vsphere]
type = "vmware"
server_host = "vcenter.example"
username = "administrator@vsphere.local"
password = "vmware-very-secret"
datastores = ["dc1:ds1:10", "dc1:ds2:100", "dc2:ds3"]
api_retry_count = 3
task_poll_interval_s = 2
ca_file = "/etc/ssl/vc.pem"

[stores.volumes]
type = "cinder"
auth_address = "http://keystone:5000/v3"
user_name = "glance"
password = "cinder-very-secret"
project_name = "service"
volume_type = "rbd"
state_transition_timeout_s = 60

[stores.web]
type = "http"
base_url = "https://mirror.example/images/"
proxy = "10.0.0.1:3128"
"#,
        )
        .unwrap();
        let kinds: Vec<_> = c.stores.iter().map(|s| s.backend.type_name()).collect();
        assert_eq!(
            kinds,
            ["file", "rbd", "s3", "swift", "vmware", "cinder", "http"]
        );

        let BackendConfig::File(f) = &c.store("local").unwrap().backend else {
            panic!()
        };
        assert_eq!(
            f.datadir,
            PathBuf::from("/etc/imagefs/images"),
            "relative to the file"
        );
        assert_eq!(f.file_perm, Some(0o640));
        assert_eq!(f.chunk_size, 131072);
        assert!(f.thin_provisioning);

        let BackendConfig::Rbd(r) = &c.store("fast").unwrap().backend else {
            panic!()
        };
        assert_eq!(
            r,
            &RbdStoreConfig {
                pool: "glance-images".into(),
                user: Some("glance".into()),
                ceph_conf: PathBuf::from("/etc/ceph/ceph.conf"),
                chunk_size_mb: 4,
                connect_timeout: Duration::from_secs(10),
                op_timeout: Duration::from_secs(90),
                thin_provisioning: true,
            }
        );

        let BackendConfig::S3(s) = &c.store("cheap").unwrap().backend else {
            panic!()
        };
        assert_eq!(s.host, "http://rgw.example:8080");
        assert_eq!(s.access_key.expose(), "AKIA-ACCESS");
        assert_eq!(s.secret_key.expose(), "s3-very-secret");
        assert_eq!(s.bucket, "images");
        assert_eq!(s.region.as_deref(), Some("us-east-1"));
        assert_eq!(s.bucket_url_format, BucketUrlFormat::Path);
        assert!(s.create_bucket_on_put);
        assert_eq!(
            (s.large_object_size_mb, s.large_object_chunk_size_mb),
            (200, 16)
        );
        assert_eq!(s.thread_pools, 4);
        assert_eq!(s.cacert, Some(PathBuf::from("/etc/ssl/rgw.pem")));

        let BackendConfig::Swift(w) = &c.store("objects").unwrap().backend else {
            panic!()
        };
        assert_eq!(w.auth_version, 3);
        assert_eq!(w.user, "service:glance");
        assert_eq!(w.key.expose(), "swift-very-secret");
        assert_eq!(w.project_domain_id.as_deref(), Some("default"));
        assert_eq!(w.user_domain_id.as_deref(), Some("default"));
        assert_eq!(w.container, "images");
        assert_eq!(w.multiple_containers_seed, 2);
        assert_eq!(
            (w.large_object_size_mb, w.large_object_chunk_size_mb),
            (1000, 100)
        );
        assert!(w.create_container_on_put && w.insecure && !w.multi_tenant);
        assert_eq!(w.endpoint_type, "internalURL");

        let BackendConfig::Vmware(v) = &c.store("vsphere").unwrap().backend else {
            panic!()
        };
        assert_eq!(v.server_host, "vcenter.example");
        assert_eq!(v.password.expose(), "vmware-very-secret");
        assert_eq!(
            v.datastores,
            vec![
                VmwareDatastore {
                    datacenter: "dc1".into(),
                    datastore: "ds2".into(),
                    weight: 100
                },
                VmwareDatastore {
                    datacenter: "dc1".into(),
                    datastore: "ds1".into(),
                    weight: 10
                },
                VmwareDatastore {
                    datacenter: "dc2".into(),
                    datastore: "ds3".into(),
                    weight: 0
                },
            ]
        );
        assert_eq!(v.image_dir, "/openstack_glance");
        assert_eq!(v.api_retry_count, 3);
        assert_eq!(v.task_poll_interval, Duration::from_secs(2));
        assert_eq!(v.ca_file, Some(PathBuf::from("/etc/ssl/vc.pem")));

        let BackendConfig::Cinder(k) = &c.store("volumes").unwrap().backend else {
            panic!()
        };
        assert_eq!(k.catalog_info, "volumev3::publicURL");
        assert_eq!(k.user_name.as_deref(), Some("glance"));
        assert_eq!(
            k.password.as_ref().map(Secret::expose),
            Some("cinder-very-secret")
        );
        assert_eq!(k.user_domain_name, "Default");
        assert_eq!(k.volume_type.as_deref(), Some("rbd"));
        assert_eq!(k.state_transition_timeout, Duration::from_secs(60));

        let BackendConfig::Http(h) = &c.store("web").unwrap().backend else {
            panic!()
        };
        assert_eq!(h.base_url, "https://mirror.example/images");
        assert!(h.insecure, "Glance's https_insecure defaults to True");
        assert_eq!(h.proxy.as_deref(), Some("http://10.0.0.1:3128"));

        // secrets stay hidden in Debug output of the whole config
        let debug = format!("{c:?}");
        for secret in [
            "s3-very-secret",
            "AKIA-ACCESS",
            "swift-very-secret",
            "vmware-very-secret",
            "cinder-very-secret",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked in Debug");
        }
    }

    #[test]
    fn glance_defaults_apply() {
        let c = parse(
            "[stores.f]\ntype = \"file\"\n[stores.r]\ntype = \"rbd\"\n\
             [stores.s]\ntype = \"s3\"\nhost = \"https://s3\"\naccess_key = \"a\"\nsecret_key = \"b\"\nbucket = \"c\"\n",
        )
        .unwrap();
        let BackendConfig::File(f) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(f.datadir, PathBuf::from("/var/lib/glance/images"));
        assert_eq!(f.chunk_size, 65536);
        let BackendConfig::Rbd(r) = &c.stores[1].backend else {
            panic!()
        };
        assert_eq!(r.pool, "images");
        assert_eq!(r.user, None);
        assert_eq!(r.chunk_size_mb, 8);
        assert_eq!(r.connect_timeout, Duration::ZERO);
        let BackendConfig::S3(s) = &c.stores[2].backend else {
            panic!()
        };
        assert_eq!(s.host, "https://s3");
        assert_eq!(s.bucket_url_format, BucketUrlFormat::Auto);
        assert_eq!(
            (
                s.large_object_size_mb,
                s.large_object_chunk_size_mb,
                s.thread_pools
            ),
            (100, 10, 10)
        );
    }

    #[test]
    fn file_perm_as_string() {
        let c =
            parse("[stores.f]\ntype = \"file\"\ndatadir = \"/x\"\nfile_perm = \"0640\"\n").unwrap();
        let BackendConfig::File(f) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(f.file_perm, Some(0o640));
        let c = parse("[stores.f]\ntype = \"file\"\ndatadir = \"/x\"\nfile_perm = 0\n").unwrap();
        let BackendConfig::File(f) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(f.file_perm, None);
        let e = err("[stores.f]\ntype = \"file\"\ndatadir = \"/x\"\nfile_perm = 640\n");
        assert!(
            e.starts_with("/etc/imagefs/imagefs.toml:4: stores.f.file_perm: "),
            "{e}"
        );
        assert!(e.contains("0o640"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("[mount]\nthreads = 2\nthreadz = 3\n[stores.a]\ntype = \"file\"\n");
        assert!(
            e.starts_with("/etc/imagefs/imagefs.toml:3: mount.threadz: unknown field `threadz`"),
            "{e}"
        );

        let e = err("[stores.a]\ntype = \"file\"\ndatadri = \"/x\"\n");
        assert!(
            e.starts_with("/etc/imagefs/imagefs.toml:3: stores.a.datadri: unknown option `datadri` of file stores (they take: type, datadir,"),
            "{e}"
        );

        let e = err("colour = 1\n[stores.a]\ntype = \"file\"\n");
        assert!(
            e.starts_with("/etc/imagefs/imagefs.toml:1: colour: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn option_of_another_store_type_is_refused() {
        let e = err("[stores.a]\ntype = \"file\"\ndatadir = \"/x\"\npool = \"images\"\n");
        assert!(
            e.starts_with(
                "/etc/imagefs/imagefs.toml:4: stores.a.pool: not an option of file stores"
            ),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let e = err("[stores.a]\ntype = \"file\"\nchunk_size = \"big\"\n");
        assert!(
            e.starts_with("/etc/imagefs/imagefs.toml:3: stores.a.chunk_size: invalid type: string"),
            "{e}"
        );

        let e = err("[mount]\npassthrough = \"yes\"\n");
        assert!(
            e.starts_with("/etc/imagefs/imagefs.toml:2: mount.passthrough: invalid type"),
            "{e}"
        );

        let e = err("[stores]\nweb = { type = \"http\", base_url = 5 }\n");
        assert!(
            e.starts_with("/etc/imagefs/imagefs.toml:2: stores.web.base_url: invalid type"),
            "{e}"
        );

        let e = err("[stores.v]\ntype = \"vmware\"\ndatastores = [\"dc:ds\", 3]\n");
        assert!(
            e.starts_with("/etc/imagefs/imagefs.toml:3: stores.v.datastores[1]: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn errors_without_a_file() {
        let e = parse_toml("[stores.a]\ntype = \"file\"\ndatadir = \"rel\"\n", None).unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert_eq!(e.key(), Some("stores.a.datadir"));
        assert!(e
            .to_string()
            .starts_with("<configuration text>:3: stores.a.datadir: relative path"));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse("[stores.a]\ntype = \"file\"\n[mount\n").unwrap_err();
        assert!(
            matches!(e, ConfigError::Syntax { .. } | ConfigError::Invalid { .. }),
            "{e:?}"
        );
        assert_eq!(e.line(), Some(3), "{e}");
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        // a secret of the wrong type: serde would quote the value
        let e = err("[stores.s]\ntype = \"s3\"\nhost = \"h\"\naccess_key = \"a\"\nbucket = \"b\"\nsecret_key = 123456789\n");
        assert!(e.contains("stores.s.secret_key"), "{e}");
        assert!(!e.contains("123456789"), "{e}");
        // a bad line next to a secret: the source line is never quoted
        let e =
            err("[stores.s]\ntype = \"swift\"\nkey = \"topsecret\"\nauth_version = \"three\"\n");
        assert!(!e.contains("topsecret"), "{e}");
        let e = err("[stores.v]\ntype = \"vmware\"\npassword = [\"hidden-pw\"]\n");
        assert!(!e.contains("hidden-pw"), "{e}");
        // missing credential: says which one
        let e =
            err("[stores.s]\ntype = \"s3\"\nhost = \"h\"\naccess_key = \"a\"\nbucket = \"b\"\n");
        assert!(e.contains("stores.s.secret_key: missing"), "{e}");
    }

    #[test]
    fn checks() {
        assert!(err("[mount]\nthreads = 1\n").contains("stores: no store is configured"));
        assert!(err("[stores]\n").contains("stores: no store is configured"));
        let e = err("[stores.\".hidden\"]\ntype = \"file\"\n");
        assert!(
            e.contains(":1: stores.\".hidden\": store name must not start with '.'"),
            "{e}"
        );
        let e = err("[stores.\"a/b\"]\ntype = \"file\"\n");
        assert!(e.contains("must not contain '/'"), "{e}");
        let e = err("[stores.\"\"]\ntype = \"file\"\n");
        assert!(e.contains("must not be empty"), "{e}");
        let e = err("[stores.a]\ndatadir = \"/x\"\n");
        assert!(e.contains(":1: stores.a.type: missing"), "{e}");
        let e = err("[stores.a]\ntype = \"nfs\"\n");
        assert!(
            e.contains(":2: stores.a.type: unknown store type `nfs`"),
            "{e}"
        );
        let e = err("[stores.a]\ntype = \"file\"\nchunk_size = 0\n");
        assert!(
            e.contains(":3: stores.a.chunk_size: must be at least 1"),
            "{e}"
        );
        let e = err("[stores.a]\ntype = \"rbd\"\nchunk_size_mb = 0\n");
        assert!(
            e.contains("stores.a.chunk_size_mb: must be at least 1"),
            "{e}"
        );
        let s3 = "[stores.s]\ntype = \"s3\"\nhost = \"h\"\naccess_key = \"a\"\nsecret_key = \"k\"\nbucket = \"b\"\n";
        let e = err(&format!("{s3}large_object_chunk_size_mb = 4\n"));
        assert!(
            e.contains(":7: stores.s.large_object_chunk_size_mb: must be at least 5"),
            "{e}"
        );
        let e = err(&format!("{s3}bucket_url_format = \"dns\"\n"));
        assert!(
            e.contains("stores.s.bucket_url_format: unknown bucket URL format"),
            "{e}"
        );
        let e = err("[stores.s]\ntype = \"s3\"\naccess_key = \"a\"\n");
        assert!(
            e.contains(":1: stores.s.host: missing; s3 stores require it"),
            "{e}"
        );
        let e = err("[stores.h]\ntype = \"http\"\n");
        assert!(e.contains("stores.h.base_url: missing"), "{e}");
        let e = err("[stores.h]\ntype = \"http\"\nbase_url = \"ftp://x\"\n");
        assert!(e.contains("stores.h.base_url: must start with http"), "{e}");
        let e = err("[stores.v]\ntype = \"vmware\"\nserver_host = \"vc\"\nusername = \"u\"\npassword = \"p\"\ndatastores = []\n");
        assert!(
            e.contains("stores.v.datastores: must list at least one"),
            "{e}"
        );
        let e = err("[stores.w]\ntype = \"swift\"\nauth_address = \"a\"\nuser = \"u\"\nkey = \"k\"\nauth_version = 4\n");
        assert!(
            e.contains("stores.w.auth_version: unsupported auth version 4"),
            "{e}"
        );
        let e = err("[stores.w]\ntype = \"swift\"\nauth_address = \"a\"\nuser = \"u\"\nkey = \"k\"\nmultiple_containers_seed = 33\n");
        assert!(
            e.contains("stores.w.multiple_containers_seed: must be between 0 and 32"),
            "{e}"
        );
        let e = err("[stores.c]\ntype = \"cinder\"\n");
        assert!(e.contains("stores.c.auth_address: missing"), "{e}");
        let e = err("[stores.c]\ntype = \"cinder\"\nauth_address = \"http://ks\"\nuser_name = \"u\"\npassword = \"p\"\n");
        assert!(e.contains("stores.c.project_name: missing"), "{e}");
        let e = err("default_store = \"nope\"\n[stores.a]\ntype = \"file\"\n");
        assert!(
            e.contains(":1: default_store: `nope` is not a configured store (stores: a)"),
            "{e}"
        );
        let e = err("[mount]\nhashing_algorithm = \"md5\"\n[stores.a]\ntype = \"file\"\n");
        assert!(
            e.contains(":2: mount.hashing_algorithm: unsupported hashing algorithm `md5`"),
            "{e}"
        );
        let e = err("[mount]\nthreads = 0\n[stores.a]\ntype = \"file\"\n");
        assert!(e.contains("mount.threads: must be at least 1"), "{e}");
        let e = err("[cache]\nblock_size_kb = 0\n[stores.a]\ntype = \"file\"\n");
        assert!(
            e.contains("cache.block_size_kb: must be greater than 0"),
            "{e}"
        );
    }

    #[test]
    fn cinder_without_auth_needs_an_endpoint() {
        let c = parse("[stores.c]\ntype = \"cinder\"\nendpoint_template = \"http://cinder:8776/v3/%(tenant)s\"\n").unwrap();
        let BackendConfig::Cinder(k) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(
            k.endpoint_template.as_deref(),
            Some("http://cinder:8776/v3/%(tenant)s")
        );
        assert_eq!(k.password, None);
        assert_eq!(k.state_transition_timeout, Duration::from_secs(300));
    }

    #[test]
    fn http_ca_file_turns_insecure_off() {
        let c =
            parse("[stores.h]\ntype = \"http\"\nbase_url = \"https://x\"\nca_file = \"/ca.pem\"\n")
                .unwrap();
        let BackendConfig::Http(h) = &c.stores[0].backend else {
            panic!()
        };
        assert!(!h.insecure);
        let c = parse("[stores.h]\ntype = \"http\"\nbase_url = \"https://x\"\ninsecure = false\n")
            .unwrap();
        let BackendConfig::Http(h) = &c.stores[0].backend else {
            panic!()
        };
        assert!(!h.insecure);
    }

    #[test]
    fn examples_in_the_documentation_parse() {
        let doc = include_str!("../../docs/configuration.md");
        let mut blocks = 0;
        for block in doc.split("```toml\n").skip(1) {
            let text = block.split("```").next().unwrap();
            if let Err(e) = parse(text) {
                panic!("example in docs/configuration.md does not parse: {e}\n{text}");
            }
            blocks += 1;
        }
        assert!(blocks >= 9, "found {blocks} examples");
    }

    #[test]
    fn load_toml_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imagefs.toml");
        std::fs::write(
            &path,
            "[stores.local]\ntype = \"file\"\ndatadir = \"data\"\n",
        )
        .unwrap();
        let c = load_toml(&path).unwrap();
        assert_eq!(c.source.as_deref(), Some(path.as_path()));
        let BackendConfig::File(f) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(f.datadir, dir.path().join("data"));

        let missing = dir.path().join("missing.toml");
        let e = load_toml(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("missing.toml: cannot read"), "{e}");
    }
}
