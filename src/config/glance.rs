//! The glance-api.conf importer: reads an existing Glance API configuration
//! (oslo.config INI, plus the Swift account file it names) and builds the
//! same [`Config`] an imagefs TOML file would, so an API node needs no second
//! configuration. It knows Glance's option names, its multi-store and legacy
//! single-store layouts, the `[backend_defaults]` fallback and Glance's
//! built-in defaults.
//!
//! Decisions where Glance leaves room:
//! - Glance's reserved stores `os_glance_staging_store` and
//!   `os_glance_tasks_store` hold Glance's own work files, not images. They
//!   are imported (as file stores of that name, after the enabled backends)
//!   only when glance-api.conf configures them explicitly: a section of their
//!   name with a `filesystem_store_datadir`. Otherwise they are ignored.
//! - `filesystem_store_datadirs`: the highest priority directory becomes the
//!   store's directory; among equal priorities the first one listed.
//! - The http store has no base URL in Glance (its locations are full URLs);
//!   imagefs reads `imagefs_http_base_url` from the store's section. In the
//!   legacy layout, the http store that Glance enables by default when
//!   `stores` is not set is imported only if that option is present.
//! - Relative paths are refused (Glance would resolve them against its working
//!   directory, unknown here), except `swift_store_config_file`, which is
//!   resolved against the directory of glance-api.conf.
//! - oslo.config substitution is honoured: `$name` / `${name}` /
//!   `${section.name}` refer to other options, `$$` is a literal `$`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ini::{Ini, ParseOption, Properties};

use super::rules::{self, glance_default as gd};
use super::{
    BackendConfig, BucketUrlFormat, CacheConfig, CinderStoreConfig, Config, ConfigError,
    FileStoreConfig, HttpStoreConfig, MountConfig, RbdStoreConfig, S3StoreConfig, Secret,
    StoreConfig, SwiftStoreConfig, VmwareStoreConfig,
};

/// Reads a glance-api.conf and returns the imagefs configuration it implies:
/// one store per enabled Glance store, the default store, and Glance's
/// `hashing_algorithm`; `[mount]` and `[cache]` keep their defaults.
pub fn import_glance(path: &Path) -> Result<Config, ConfigError> {
    let conf = IniFile::load(path)?;
    let glance = Glance { conf: &conf };
    glance.import()
}

const STORE_TYPES: &[&str] = &["file", "rbd", "s3", "swift", "vmware", "cinder", "http"];
const RESERVED_STORES: &[&str] = &["os_glance_staging_store", "os_glance_tasks_store"];

// ---------------------------------------------------------------------------
// An INI file as oslo.config reads it.

struct IniFile {
    path: PathBuf,
    ini: Ini,
}

impl IniFile {
    fn load(path: &Path) -> Result<IniFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        IniFile::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<IniFile, ConfigError> {
        // oslo.config: no quoting, no escapes, no inline comments, and
        // indented lines continue the previous value.
        let opt = ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            enabled_indented_mutiline_value: true,
            enabled_preserve_key_leading_whitespace: false,
        };
        let ini = Ini::load_from_str_opt(text, opt).map_err(|e| {
            let message = if e.msg.contains("Some(']')") {
                "unterminated section header (missing `]`)".to_owned()
            } else {
                e.msg.into_owned()
            };
            ConfigError::Syntax {
                file: Some(path.to_path_buf()),
                line: Some(e.line),
                message,
            }
        })?;
        Ok(IniFile {
            path: path.to_path_buf(),
            ini,
        })
    }

    /// Every instance of a section (a section may be repeated; oslo merges them).
    fn sections<'s>(&'s self, section: &str) -> impl Iterator<Item = &'s Properties> + 's {
        self.ini.section_all(Some(section.to_owned()))
    }

    fn has_section(&self, section: &str) -> bool {
        self.sections(section).next().is_some()
    }

    /// The last value of `key` in `section`, as oslo.config reads a single-valued option.
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections(section)
            .filter_map(|p| p.get_all(key).next_back())
            .last()
    }

    /// Every value of `key` in `section`, as oslo.config reads a multi-valued option.
    fn get_all(&self, section: &str, key: &str) -> Vec<&str> {
        self.sections(section)
            .flat_map(|p| p.get_all(key))
            .collect()
    }

    fn err(&self, section: &str, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(Some(&self.path), format!("[{section}] {key}"), message)
    }
}

// ---------------------------------------------------------------------------
// Option values, looked up through a chain of sections.

/// Where a store's options are read: its own section, then (multi-store)
/// `[backend_defaults]`; for the legacy layout only `[glance_store]`.
struct Opts<'a> {
    conf: &'a IniFile,
    chain: Vec<&'a str>,
}

/// Options whose values must never be quoted back, even in part.
const SECRET_OPTIONS: &[&str] = &[
    "s3_store_access_key",
    "s3_store_secret_key",
    "swift_store_user",
    "swift_store_key",
    "vmware_server_password",
    "cinder_store_password",
];

impl<'a> Opts<'a> {
    fn new(conf: &'a IniFile, chain: Vec<&'a str>) -> Opts<'a> {
        Opts { conf, chain }
    }

    /// The section errors about a missing option name.
    fn primary(&self) -> &'a str {
        self.chain[0]
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.conf.err(self.primary(), key, message)
    }

    fn missing(&self, key: &str, kind: &str) -> ConfigError {
        self.err(key, format!("missing; {kind} stores require it"))
    }

    /// First section of the chain that sets `key` (or one of its deprecated
    /// names), with the value after substitution.
    fn find(&self, keys: &[&'static str]) -> Result<Option<Found<'a>>, ConfigError> {
        for section in &self.chain {
            for key in keys {
                if let Some(raw) = self.conf.get(section, key) {
                    let secret = SECRET_OPTIONS.contains(key);
                    let value = substitute(self.conf, section, key, raw, secret, 0)?;
                    return Ok(Some(Found {
                        conf: self.conf,
                        section,
                        key,
                        value,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// A string; an empty value counts as unset, as for most Glance options.
    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self
            .find(&[key])?
            .map(|f| f.value.trim().to_owned())
            .filter(|v| !v.is_empty()))
    }

    fn string_or(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self.string(key)?.unwrap_or_else(|| default.to_owned()))
    }

    fn required(&self, key: &'static str, kind: &str) -> Result<String, ConfigError> {
        self.string(key)?.ok_or_else(|| self.missing(key, kind))
    }

    fn secret(&self, key: &'static str) -> Result<Option<Secret>, ConfigError> {
        Ok(self.string(key)?.map(Secret::new))
    }

    fn required_secret(&self, key: &'static str, kind: &str) -> Result<Secret, ConfigError> {
        self.secret(key)?.ok_or_else(|| self.missing(key, kind))
    }

    fn bool(&self, keys: &[&'static str], default: bool) -> Result<bool, ConfigError> {
        match self.find(keys)? {
            None => Ok(default),
            Some(f) => f.bool(default),
        }
    }

    /// An integer of at least `min`.
    fn int(&self, key: &'static str, default: i64, min: i64) -> Result<i64, ConfigError> {
        match self.find(&[key])? {
            None => Ok(default),
            Some(f) => {
                let v = f.int(default)?;
                if v < min {
                    return Err(f.err(format!("must be at least {min}")));
                }
                Ok(v)
            }
        }
    }

    fn uint(&self, key: &'static str, default: u64, min: u64) -> Result<u64, ConfigError> {
        let v = self.int(key, default as i64, min as i64)?;
        Ok(v as u64)
    }

    /// An absolute path; empty means unset.
    fn path(&self, keys: &[&'static str]) -> Result<Option<PathBuf>, ConfigError> {
        let Some(f) = self.find(keys)? else {
            return Ok(None);
        };
        let v = f.value.trim();
        if v.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(v);
        if !path.is_absolute() {
            return Err(f.err(
                "must be an absolute path (Glance would resolve it against its working directory)",
            ));
        }
        Ok(Some(path))
    }

    /// A multi-valued option, from the first section of the chain that has it.
    fn multi(&self, key: &'static str) -> Result<Option<(Vec<String>, &'a str)>, ConfigError> {
        for section in &self.chain {
            let values = self.conf.get_all(section, key);
            if values.is_empty() {
                continue;
            }
            let mut out = Vec::new();
            for raw in values {
                let v = substitute(self.conf, section, key, raw, false, 0)?;
                if !v.trim().is_empty() {
                    out.push(v.trim().to_owned());
                }
            }
            return Ok(Some((out, section)));
        }
        Ok(None)
    }
}

/// One option value and where it was found (errors name that section).
struct Found<'a> {
    conf: &'a IniFile,
    section: &'a str,
    key: &'static str,
    value: String,
}

impl Found<'_> {
    fn err(&self, message: impl Into<String>) -> ConfigError {
        self.conf.err(self.section, self.key, message)
    }

    /// oslo.config's Boolean: true/1/on/yes and false/0/off/no, any case.
    fn bool(&self, default: bool) -> Result<bool, ConfigError> {
        let v = self.value.trim();
        if v.is_empty() {
            return Ok(default);
        }
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Ok(true),
            "false" | "0" | "off" | "no" => Ok(false),
            _ => Err(self.err(format!(
                "expected a boolean (true/false, yes/no, on/off, 1/0), got `{v}`"
            ))),
        }
    }

    /// oslo.config's Integer (Python's int(): sign, digits, underscores).
    fn int(&self, default: i64) -> Result<i64, ConfigError> {
        let v = self.value.trim();
        if v.is_empty() {
            return Ok(default);
        }
        parse_int(v).ok_or_else(|| self.err(format!("expected an integer, got `{v}`")))
    }
}

fn parse_int(v: &str) -> Option<i64> {
    let (neg, digits) = match v.as_bytes().first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let n: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

/// oslo.config substitution: `$$` is `$`; `$name` and `${name}` are the
/// option `name` of the same section, else of `[DEFAULT]`; `${group.name}`
/// is the option of `[group]`. `state_path` defaults to /var/lib/glance.
fn substitute(
    conf: &IniFile,
    section: &str,
    key: &str,
    raw: &str,
    secret: bool,
    depth: usize,
) -> Result<String, ConfigError> {
    if !raw.contains('$') {
        return Ok(raw.to_owned());
    }
    if depth > 8 {
        return Err(conf.err(section, key, "substitutions nest too deep (a loop?)"));
    }
    let unresolved = |name: &str| {
        if secret {
            conf.err(
                section,
                key,
                "refers to an unset option with `$` (a literal `$` is written `$$`)",
            )
        } else {
            conf.err(
                section,
                key,
                format!("refers to `${name}`, which is not set (a literal `$` is written `$$`)"),
            )
        }
    };
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => return Err(unresolved(braced)),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            return Err(unresolved(name));
        }
        let (group, option) = match name.split_once('.') {
            Some((g, o)) => (Some(g), o),
            None => (None, name),
        };
        let found = match group {
            Some(g) => conf.get(g, option).map(|v| (g, v)),
            None => conf
                .get(section, option)
                .map(|v| (section, v))
                .or_else(|| conf.get("DEFAULT", option).map(|v| ("DEFAULT", v))),
        };
        let value = match (found, option) {
            (Some((g, v)), _) => substitute(conf, g, option, v, secret, depth + 1)?,
            (None, "state_path") => "/var/lib/glance".to_owned(),
            (None, _) => return Err(unresolved(name)),
        };
        out.push_str(&value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------
// The importer.

struct Glance<'a> {
    conf: &'a IniFile,
}

impl<'a> Glance<'a> {
    /// A single-valued option of one section, after substitution.
    fn value(&self, section: &str, key: &str) -> Result<Option<String>, ConfigError> {
        match self.conf.get(section, key) {
            None => Ok(None),
            Some(raw) => Ok(Some(
                substitute(self.conf, section, key, raw, false, 0)?
                    .trim()
                    .to_owned(),
            )),
        }
    }

    fn import(&self) -> Result<Config, ConfigError> {
        let mut mount = MountConfig::default();
        if let Some(algo) = self.value("DEFAULT", "hashing_algorithm")? {
            if !algo.is_empty() {
                mount.hashing_algorithm = rules::parse_hash_algorithm(&algo)
                    .map_err(|m| self.conf.err("DEFAULT", "hashing_algorithm", m))?;
            }
        }
        let multi = self
            .value("DEFAULT", "enabled_backends")?
            .filter(|v| !v.is_empty());
        let (stores, default_store) = match multi {
            Some(list) => self.multi_store(&list)?,
            None => self.single_store()?,
        };
        Ok(Config {
            source: Some(self.conf.path.clone()),
            mount,
            cache: CacheConfig::default(),
            stores,
            default_store,
        })
    }

    /// `[DEFAULT] enabled_backends = name:type, ...`, options in `[name]`
    /// falling back to `[backend_defaults]`, `[glance_store] default_backend`.
    fn multi_store(&self, list: &str) -> Result<(Vec<StoreConfig>, Option<String>), ConfigError> {
        let list_err = |m: String| self.conf.err("DEFAULT", "enabled_backends", m);
        let mut declared: Vec<(&str, &str)> = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((name, kind)) = entry.split_once(':') else {
                return Err(list_err(format!("entry `{entry}` is not name:type")));
            };
            let (name, kind) = (name.trim(), kind.trim());
            if let Some(problem) = rules::store_name_problem(name) {
                return Err(list_err(format!("entry `{entry}`: {problem}")));
            }
            if !STORE_TYPES.contains(&kind) {
                return Err(list_err(format!(
                    "store `{name}` has unknown type `{kind}` (expected one of {})",
                    STORE_TYPES.join(", ")
                )));
            }
            if declared.iter().any(|(n, _)| *n == name) {
                return Err(list_err(format!("store `{name}` is listed twice")));
            }
            declared.push((name, kind));
        }
        if declared.is_empty() {
            return Err(list_err("lists no store".into()));
        }

        let mut stores = Vec::new();
        for (name, kind) in &declared {
            let opts = Opts::new(self.conf, vec![name, "backend_defaults"]);
            stores.push(StoreConfig {
                name: (*name).to_owned(),
                backend: self.backend(kind, &opts)?,
            });
        }
        for reserved in RESERVED_STORES {
            let explicit = self
                .conf
                .get(reserved, "filesystem_store_datadir")
                .is_some();
            if explicit && !declared.iter().any(|(n, _)| n == reserved) {
                let opts = Opts::new(self.conf, vec![reserved, "backend_defaults"]);
                stores.push(StoreConfig {
                    name: (*reserved).to_owned(),
                    backend: BackendConfig::File(self.file(&opts)?),
                });
            }
        }

        let default_store = match self.value("glance_store", "default_backend")? {
            None => None,
            Some(d) if d.is_empty() => None,
            Some(d) => {
                if !declared.iter().any(|(n, _)| *n == d) {
                    return Err(self.conf.err(
                        "glance_store",
                        "default_backend",
                        format!("`{d}` is not one of the stores in [DEFAULT] enabled_backends"),
                    ));
                }
                Some(d)
            }
        };
        Ok((stores, default_store))
    }

    /// Legacy layout: `[glance_store] stores = file, http, ...`,
    /// `default_store`, every option in `[glance_store]`; each store is named
    /// after its type.
    fn single_store(&self) -> Result<(Vec<StoreConfig>, Option<String>), ConfigError> {
        let listed = self
            .value("glance_store", "stores")?
            .filter(|v| !v.is_empty());
        let explicit = listed.is_some();
        let listed = listed.unwrap_or_else(|| "file, http".to_owned());
        let mut kinds: Vec<&'static str> = Vec::new();
        for entry in listed.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let kind = legacy_store_type(entry).ok_or_else(|| {
                self.conf.err(
                    "glance_store",
                    "stores",
                    format!(
                        "unknown store `{entry}` (expected some of {})",
                        STORE_TYPES.join(", ")
                    ),
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        let opts = Opts::new(self.conf, vec!["glance_store"]);
        let mut stores = Vec::new();
        for kind in kinds {
            if kind == "http" && !explicit && opts.find(&["imagefs_http_base_url"])?.is_none() {
                // Glance enables http by default to read images by URL; there
                // is nothing to mount unless a base URL is given.
                continue;
            }
            stores.push(StoreConfig {
                name: kind.to_owned(),
                backend: self.backend(kind, &opts)?,
            });
        }
        if stores.is_empty() {
            return Err(self.conf.err(
                "glance_store",
                "stores",
                "enables no store imagefs can mount",
            ));
        }

        let default_store = match self.value("glance_store", "default_store")? {
            Some(scheme) if !scheme.is_empty() => {
                let err = |m: String| self.conf.err("glance_store", "default_store", m);
                let kind = scheme_store_type(&scheme)
                    .ok_or_else(|| err(format!("unknown scheme `{scheme}`")))?;
                if !stores.iter().any(|s| s.name == kind) {
                    return Err(err(format!(
                        "`{scheme}` is a {kind} store, which [glance_store] stores does not enable"
                    )));
                }
                Some(kind.to_owned())
            }
            // Glance's default is `file`.
            _ => stores
                .iter()
                .any(|s| s.name == "file")
                .then(|| "file".to_owned()),
        };
        Ok((stores, default_store))
    }

    fn backend(&self, kind: &str, opts: &Opts<'_>) -> Result<BackendConfig, ConfigError> {
        Ok(match kind {
            "file" => BackendConfig::File(self.file(opts)?),
            "rbd" => BackendConfig::Rbd(self.rbd(opts)?),
            "s3" => BackendConfig::S3(self.s3(opts)?),
            "swift" => BackendConfig::Swift(self.swift(opts)?),
            "vmware" => BackendConfig::Vmware(self.vmware(opts)?),
            "cinder" => BackendConfig::Cinder(self.cinder(opts)?),
            _ => BackendConfig::Http(self.http(opts)?),
        })
    }

    fn file(&self, opts: &Opts<'_>) -> Result<FileStoreConfig, ConfigError> {
        let single = opts.path(&["filesystem_store_datadir"])?;
        let datadir = match opts.multi("filesystem_store_datadirs")? {
            Some((entries, section)) if !entries.is_empty() => {
                if single.is_some() {
                    return Err(self.conf.err(
                        section,
                        "filesystem_store_datadirs",
                        "set either filesystem_store_datadir or filesystem_store_datadirs, not both (Glance refuses both)",
                    ));
                }
                let mut dirs = Vec::new();
                for entry in &entries {
                    let (path, priority) = rules::parse_datadir_priority(entry).map_err(|m| {
                        self.conf.err(
                            section,
                            "filesystem_store_datadirs",
                            format!("`{entry}`: {m}"),
                        )
                    })?;
                    if !path.is_absolute() {
                        return Err(self.conf.err(
                            section,
                            "filesystem_store_datadirs",
                            format!("`{entry}`: must be an absolute path"),
                        ));
                    }
                    dirs.push((path, priority));
                }
                rules::best_datadir(&dirs).unwrap_or_else(|| PathBuf::from(gd::FILE_DATADIR))
            }
            _ => single.unwrap_or_else(|| PathBuf::from(gd::FILE_DATADIR)),
        };
        let file_perm = match opts.find(&["filesystem_store_file_perm"])? {
            None => None,
            Some(f) if f.value.trim().is_empty() => None,
            Some(f) => rules::file_perm_from_digits(&f.value).map_err(|m| f.err(m))?,
        };
        Ok(FileStoreConfig {
            datadir,
            file_perm,
            chunk_size: opts.uint("filesystem_store_chunk_size", gd::FILE_CHUNK_SIZE, 1)?,
            thin_provisioning: opts.bool(&["filesystem_thin_provisioning"], false)?,
        })
    }

    fn rbd(&self, opts: &Opts<'_>) -> Result<RbdStoreConfig, ConfigError> {
        Ok(RbdStoreConfig {
            pool: opts.string_or("rbd_store_pool", gd::RBD_POOL)?,
            user: opts.string("rbd_store_user")?,
            ceph_conf: opts
                .path(&["rbd_store_ceph_conf"])?
                .unwrap_or_else(|| PathBuf::from(gd::RBD_CEPH_CONF)),
            chunk_size_mb: opts.uint("rbd_store_chunk_size", gd::RBD_CHUNK_SIZE_MB, 1)?,
            connect_timeout: rules::connect_timeout(opts.int(
                "rados_connect_timeout",
                -1,
                i64::MIN,
            )?),
            op_timeout: Duration::ZERO,
            thin_provisioning: opts.bool(&["rbd_thin_provisioning"], false)?,
        })
    }

    fn s3(&self, opts: &Opts<'_>) -> Result<S3StoreConfig, ConfigError> {
        let host = match opts.find(&["s3_store_host"])? {
            Some(f) if !f.value.trim().is_empty() => {
                rules::normalize_s3_host(&f.value).map_err(|m| f.err(m))?
            }
            _ => return Err(opts.missing("s3_store_host", "s3")),
        };
        let bucket_url_format = match opts.find(&["s3_store_bucket_url_format"])? {
            Some(f) if !f.value.trim().is_empty() => {
                rules::parse_bucket_url_format(&f.value).map_err(|m| f.err(m))?
            }
            _ => BucketUrlFormat::Auto,
        };
        Ok(S3StoreConfig {
            host,
            access_key: opts.required_secret("s3_store_access_key", "s3")?,
            secret_key: opts.required_secret("s3_store_secret_key", "s3")?,
            bucket: opts.required("s3_store_bucket", "s3")?,
            region: opts.string("s3_store_region_name")?,
            bucket_url_format,
            create_bucket_on_put: opts.bool(&["s3_store_create_bucket_on_put"], false)?,
            large_object_size_mb: opts.uint(
                "s3_store_large_object_size",
                gd::S3_LARGE_OBJECT_SIZE_MB,
                0,
            )?,
            large_object_chunk_size_mb: opts.uint(
                "s3_store_large_object_chunk_size",
                gd::S3_LARGE_OBJECT_CHUNK_SIZE_MB,
                gd::S3_MIN_CHUNK_SIZE_MB,
            )?,
            thread_pools: opts.uint("s3_store_thread_pools", gd::S3_THREAD_POOLS as u64, 1)?
                as usize,
            cacert: opts.path(&["s3_store_cacert"])?,
            staging_dir: PathBuf::from(super::DEFAULT_STAGING_DIR),
            op_timeout: Duration::ZERO,
        })
    }

    fn swift(&self, opts: &Opts<'_>) -> Result<SwiftStoreConfig, ConfigError> {
        let account = self.swift_account(opts)?;
        let endpoint_type = match opts.find(&["swift_store_endpoint_type"])? {
            Some(f) if !f.value.trim().is_empty() => {
                rules::check_endpoint_type(f.value.trim()).map_err(|m| f.err(m))?
            }
            _ => gd::SWIFT_ENDPOINT_TYPE.to_owned(),
        };
        let multiple_containers_seed = match opts.find(&["swift_store_multiple_containers_seed"])? {
            None => 0,
            Some(f) => rules::check_containers_seed(f.int(0)?).map_err(|m| f.err(m))?,
        };
        Ok(SwiftStoreConfig {
            auth_address: account.auth_address,
            auth_version: account.auth_version,
            user: account.user,
            key: account.key,
            project_domain_id: account.project_domain_id,
            user_domain_id: account.user_domain_id,
            project_domain_name: account.project_domain_name,
            user_domain_name: account.user_domain_name,
            region: opts.string("swift_store_region")?,
            endpoint: opts.string("swift_store_endpoint")?,
            endpoint_type,
            container: opts.string_or("swift_store_container", gd::SWIFT_CONTAINER)?,
            multiple_containers_seed,
            multi_tenant: opts.bool(&["swift_store_multi_tenant"], false)?,
            large_object_size_mb: opts.uint(
                "swift_store_large_object_size",
                gd::SWIFT_LARGE_OBJECT_SIZE_MB,
                1,
            )?,
            large_object_chunk_size_mb: opts.uint(
                "swift_store_large_object_chunk_size",
                gd::SWIFT_LARGE_OBJECT_CHUNK_SIZE_MB,
                1,
            )?,
            create_container_on_put: opts.bool(&["swift_store_create_container_on_put"], false)?,
            cacert: opts.path(&["swift_store_cacert"])?,
            insecure: opts.bool(&["swift_store_auth_insecure"], false)?,
        })
    }

    /// The Swift account: from `swift_store_config_file` at the section named
    /// by `default_swift_reference`, else from the deprecated inline
    /// `swift_store_auth_address` / `swift_store_user` / `swift_store_key`.
    fn swift_account(&self, opts: &Opts<'_>) -> Result<SwiftAccount, ConfigError> {
        let default_version = match opts.find(&["swift_store_auth_version"])? {
            Some(f) if !f.value.trim().is_empty() => {
                parse_auth_version(&f.value).map_err(|m| f.err(m))?
            }
            _ => gd::SWIFT_AUTH_VERSION,
        };
        let Some(file_opt) = opts
            .find(&["swift_store_config_file"])?
            .filter(|f| !f.value.trim().is_empty())
        else {
            return self.swift_inline_account(opts, default_version);
        };
        let reference = opts.string_or("default_swift_reference", gd::SWIFT_REFERENCE)?;
        let mut path = PathBuf::from(file_opt.value.trim());
        if path.is_relative() {
            if let Some(dir) = self.conf.path.parent() {
                path = dir.join(path);
            }
        }
        let swift_conf = match IniFile::load(&path) {
            Ok(c) => c,
            Err(ConfigError::Read { source, .. }) => {
                return Err(file_opt.err(format!(
                    "cannot read the swift store config file {}: {source}",
                    path.display()
                )))
            }
            Err(e) => return Err(e),
        };
        if !swift_conf.has_section(&reference) {
            return Err(file_opt.err(format!(
                "{} has no section [{reference}] (named by default_swift_reference)",
                path.display()
            )));
        }
        let account = SwiftFile {
            conf: &swift_conf,
            section: &reference,
        };
        let get = |key: &'static str| account.get(key);
        let need = |key: &'static str| -> Result<String, ConfigError> {
            get(key)?.ok_or_else(|| {
                let why = match get("application_credential_id") {
                    Ok(Some(_)) => "missing; imagefs does not support application credentials yet, give user and key",
                    _ => "missing; a swift account needs auth_address, user and key",
                };
                swift_conf.err(&reference, key, why)
            })
        };
        let auth_address = need("auth_address")?;
        let user = need("user")?;
        let key = Secret::new(need("key")?);
        let auth_version = match get("auth_version")? {
            Some(v) => {
                parse_auth_version(&v).map_err(|m| swift_conf.err(&reference, "auth_version", m))?
            }
            None => default_version,
        };
        Ok(SwiftAccount::new(
            auth_address,
            auth_version,
            user,
            key,
            [
                get("project_domain_id")?,
                get("user_domain_id")?,
                get("project_domain_name")?,
                get("user_domain_name")?,
            ],
        ))
    }

    fn swift_inline_account(
        &self,
        opts: &Opts<'_>,
        auth_version: u32,
    ) -> Result<SwiftAccount, ConfigError> {
        let auth_address = opts.string("swift_store_auth_address")?;
        let user = opts.string("swift_store_user")?;
        let key = opts.secret("swift_store_key")?;
        match (auth_address, user, key) {
            (Some(a), Some(u), Some(k)) => Ok(SwiftAccount::new(
                a,
                auth_version,
                u,
                k,
                [None, None, None, None],
            )),
            (None, None, None) => Err(opts.err(
                "swift_store_config_file",
                "missing: a swift store needs credentials, from swift_store_config_file \
                 (with default_swift_reference) or swift_store_auth_address, \
                 swift_store_user and swift_store_key",
            )),
            (a, u, _) => {
                let missing = if a.is_none() {
                    "swift_store_auth_address"
                } else if u.is_none() {
                    "swift_store_user"
                } else {
                    "swift_store_key"
                };
                Err(opts.missing(missing, "swift"))
            }
        }
    }

    fn vmware(&self, opts: &Opts<'_>) -> Result<VmwareStoreConfig, ConfigError> {
        let mut datastores = Vec::new();
        match opts.multi("vmware_datastores")? {
            Some((entries, section)) if !entries.is_empty() => {
                for entry in &entries {
                    datastores.push(rules::parse_datastore(entry).map_err(|m| {
                        self.conf
                            .err(section, "vmware_datastores", format!("`{entry}`: {m}"))
                    })?);
                }
            }
            _ => return Err(opts.missing("vmware_datastores", "vmware")),
        }
        rules::sort_datastores(&mut datastores);
        let ca_file = opts.path(&["vmware_ca_file"])?;
        Ok(VmwareStoreConfig {
            server_host: opts.required("vmware_server_host", "vmware")?,
            username: opts.required("vmware_server_username", "vmware")?,
            password: opts.required_secret("vmware_server_password", "vmware")?,
            datastores,
            image_dir: opts.string_or("vmware_store_image_dir", gd::VMWARE_IMAGE_DIR)?,
            // Glance ignores vmware_insecure when a CA file is given.
            insecure: ca_file.is_none()
                && opts.bool(&["vmware_insecure", "vmware_api_insecure"], false)?,
            ca_file,
            api_retry_count: opts
                .uint(
                    "vmware_api_retry_count",
                    u64::from(gd::VMWARE_API_RETRY_COUNT),
                    1,
                )?
                .min(u64::from(u32::MAX)) as u32,
            task_poll_interval: Duration::from_secs(opts.uint(
                "vmware_task_poll_interval",
                gd::VMWARE_TASK_POLL_INTERVAL_S,
                1,
            )?),
        })
    }

    fn cinder(&self, opts: &Opts<'_>) -> Result<CinderStoreConfig, ConfigError> {
        let endpoint_template = opts.string("cinder_endpoint_template")?;
        let auth_address = opts.string("cinder_store_auth_address")?;
        let user_name = opts.string("cinder_store_user_name")?;
        let password = opts.secret("cinder_store_password")?;
        let project_name = opts.string("cinder_store_project_name")?;
        rules::check_cinder_credentials(
            &[
                ("cinder_store_auth_address", auth_address.is_some()),
                ("cinder_store_user_name", user_name.is_some()),
                ("cinder_store_password", password.is_some()),
                ("cinder_store_project_name", project_name.is_some()),
            ],
            ("cinder_endpoint_template", endpoint_template.is_some()),
        )
        .map_err(|(key, message)| opts.err(key, message))?;
        let region_name = match opts.find(&["cinder_os_region_name", "os_region_name"])? {
            Some(f) if !f.value.trim().is_empty() => Some(f.value.trim().to_owned()),
            _ => None,
        };
        Ok(CinderStoreConfig {
            endpoint_template,
            catalog_info: opts.string_or("cinder_catalog_info", gd::CINDER_CATALOG_INFO)?,
            auth_address,
            user_name,
            password,
            project_name,
            user_domain_name: opts
                .string_or("cinder_store_user_domain_name", gd::CINDER_DOMAIN_NAME)?,
            project_domain_name: opts
                .string_or("cinder_store_project_domain_name", gd::CINDER_DOMAIN_NAME)?,
            region_name,
            volume_type: opts.string("cinder_volume_type")?,
            state_transition_timeout: Duration::from_secs(opts.uint(
                "cinder_state_transition_timeout",
                gd::CINDER_STATE_TRANSITION_TIMEOUT_S,
                0,
            )?),
            insecure: opts.bool(&["cinder_api_insecure"], false)?,
            ca_file: opts.path(&["cinder_ca_certificates_file"])?,
        })
    }

    fn http(&self, opts: &Opts<'_>) -> Result<HttpStoreConfig, ConfigError> {
        let base_url = match opts.find(&["imagefs_http_base_url"])? {
            Some(f) if !f.value.trim().is_empty() => {
                rules::normalize_base_url(&f.value).map_err(|m| f.err(m))?
            }
            _ => {
                return Err(opts.err(
                    "imagefs_http_base_url",
                    "missing: Glance's http store has no base URL (its image locations are full URLs), \
                     so imagefs needs this imagefs-only option: the URL under which image <id> is <url>/<id>",
                ))
            }
        };
        let proxy = match opts.find(&["http_proxy_information"])? {
            None => None,
            Some(f) => {
                let scheme = if base_url.starts_with("https://") {
                    "https"
                } else {
                    "http"
                };
                match proxy_for_scheme(&f.value, scheme) {
                    Ok(None) => None,
                    Ok(Some(p)) => Some(rules::normalize_proxy(&p).map_err(|m| f.err(m))?),
                    Err(m) => return Err(f.err(m)),
                }
            }
        };
        let ca_file = opts.path(&["https_ca_certificates_file"])?;
        Ok(HttpStoreConfig {
            base_url,
            // Glance ignores https_insecure when a CA file is given.
            insecure: ca_file.is_none() && opts.bool(&["https_insecure"], gd::HTTPS_INSECURE)?,
            ca_file,
            proxy,
        })
    }
}

/// One account section of the swift store config file, read the way
/// Glance's parser (Python's configparser) reads it: keys in any case,
/// `[DEFAULT]` inherited by every section, `%(name)s` substitution with `%%`
/// for a literal `%`, then one pair of matching quotes stripped.
struct SwiftFile<'a> {
    conf: &'a IniFile,
    section: &'a str,
}

impl SwiftFile<'_> {
    fn raw(&self, section: &str, key: &str) -> Option<String> {
        self.conf
            .sections(section)
            .flat_map(|p| p.iter())
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim().to_owned())
            .last()
    }

    fn lookup(&self, key: &str) -> Option<String> {
        self.raw(self.section, key)
            .or_else(|| self.raw("DEFAULT", key))
    }

    /// The value of `key`; empty counts as unset.
    fn get(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(raw) = self.lookup(key) else {
            return Ok(None);
        };
        let secret = key == "key" || key.ends_with("secret");
        let value = self.interpolate(key, &raw, secret, 0)?;
        let first = value.chars().next();
        if let Some(q @ ('"' | '\'')) = first {
            if value.len() < 2 || !value.ends_with(q) {
                return Err(self.conf.err(self.section, key, "non-closed quote"));
            }
        }
        let value = unquote(&value).to_owned();
        Ok(Some(value).filter(|v| !v.is_empty()))
    }

    fn interpolate(
        &self,
        key: &str,
        raw: &str,
        secret: bool,
        depth: usize,
    ) -> Result<String, ConfigError> {
        if !raw.contains('%') {
            return Ok(raw.to_owned());
        }
        let bad = |what: &str| {
            let m = if secret {
                format!("{what} (a literal `%` is written `%%`)")
            } else {
                format!("{what} in `{raw}` (a literal `%` is written `%%`)")
            };
            self.conf.err(self.section, key, m)
        };
        if depth > 8 {
            return Err(bad("substitutions nest too deep"));
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(pos) = rest.find('%') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                out.push('%');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('(') {
                let Some(end) = inner.find(")s") else {
                    return Err(bad("bad `%(name)s` substitution"));
                };
                let name = &inner[..end];
                let Some(v) = self.lookup(name) else {
                    return Err(bad("`%(...)s` refers to an option that is not set"));
                };
                out.push_str(&self.interpolate(key, &v, secret, depth + 1)?);
                rest = &inner[end + 2..];
            } else {
                return Err(bad("a lone `%`"));
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A Swift account with Glance's domain defaults applied.
struct SwiftAccount {
    auth_address: String,
    auth_version: u32,
    user: String,
    key: Secret,
    project_domain_id: Option<String>,
    user_domain_id: Option<String>,
    project_domain_name: Option<String>,
    user_domain_name: Option<String>,
}

impl SwiftAccount {
    /// `domains`: project_domain_id, user_domain_id, project_domain_name,
    /// user_domain_name. Keystone v3 without an id or a name means Glance's
    /// `default` domain.
    fn new(
        auth_address: String,
        auth_version: u32,
        user: String,
        key: Secret,
        domains: [Option<String>; 4],
    ) -> SwiftAccount {
        let [mut project_domain_id, mut user_domain_id, project_domain_name, user_domain_name] =
            domains;
        if auth_version == 3 {
            if project_domain_id.is_none() && project_domain_name.is_none() {
                project_domain_id = Some(gd::KEYSTONE_DOMAIN_ID.to_owned());
            }
            if user_domain_id.is_none() && user_domain_name.is_none() {
                user_domain_id = Some(gd::KEYSTONE_DOMAIN_ID.to_owned());
            }
        }
        SwiftAccount {
            auth_address,
            auth_version,
            user,
            key,
            project_domain_id,
            user_domain_id,
            project_domain_name,
            user_domain_name,
        }
    }
}

/// `1`, `2`, `3` (also written `2.0`, `3.0`).
fn parse_auth_version(v: &str) -> Result<u32, String> {
    let v = v.trim();
    let n = v.strip_suffix(".0").unwrap_or(v);
    match n.parse::<u32>() {
        Ok(n) => rules::check_swift_auth_version(n),
        Err(_) => Err(format!(
            "unsupported auth version `{v}` (expected 1, 2 or 3)"
        )),
    }
}

/// Glance's swift config parser strips one pair of matching quotes.
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// `http_proxy_information = http:10.0.0.1:3128, https:10.0.0.1:1080`: the
/// proxy for `scheme`, if any.
fn proxy_for_scheme(dict: &str, scheme: &str) -> Result<Option<String>, String> {
    for entry in dict.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once(':') else {
            return Err(format!("entry `{entry}` is not scheme:proxy"));
        };
        if key.trim() == scheme {
            return Ok(Some(value.trim().to_owned()));
        }
    }
    Ok(None)
}

/// A `[glance_store] stores` entry: a driver name or its pre-Liberty class path.
fn legacy_store_type(entry: &str) -> Option<&'static str> {
    Some(match entry {
        "file" | "glance.store.filesystem.Store" => "file",
        "http" | "glance.store.http.Store" => "http",
        "swift" | "glance.store.swift.Store" => "swift",
        "rbd" | "glance.store.rbd.Store" => "rbd",
        "cinder" | "glance.store.cinder.Store" => "cinder",
        "vmware" | "glance.store.vmware_datastore.Store" => "vmware",
        "s3" | "glance.store.s3.Store" => "s3",
        _ => return None,
    })
}

/// A `[glance_store] default_store` scheme: which store type serves it.
fn scheme_store_type(scheme: &str) -> Option<&'static str> {
    Some(match scheme {
        "file" | "filesystem" => "file",
        "http" | "https" => "http",
        "swift" | "swift+http" | "swift+https" | "swift+config" => "swift",
        "rbd" => "rbd",
        "cinder" => "cinder",
        "vsphere" => "vmware",
        "s3" | "s3+https" => "s3",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HashAlgorithm, VmwareDatastore};
    use std::fs;

    /// Writes `text` as glance-api.conf in a fresh tempdir.
    fn write_conf(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("glance-api.conf");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn import(text: &str) -> Result<Config, ConfigError> {
        let (_dir, path) = write_conf(text);
        import_glance(&path)
    }

    fn import_err(text: &str) -> String {
        match import(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    const SWIFT_CONF: &str = "\
[ref1]
auth_version = 3
auth_address = http://keystone.example:5000/v3
user = service:glance
key = 'swift-secret-key'
user_domain_id = default
project_domain_id = default

[other]
auth_address = http://other:5000/v3
user = x
key = y
";

    const MULTI_STORE: &str = "\
[DEFAULT]
# Glance API node with every kind of store
bind_host = 0.0.0.0
enabled_backends = local:file, fast:rbd, cheap:s3,
    objects:swift, vsphere:vmware, volumes:cinder, web:http
hashing_algorithm = sha256
state_path = /srv/glance

[glance_store]
default_backend = fast

[backend_defaults]
rbd_store_chunk_size = 4
filesystem_store_chunk_size = 131072
https_insecure = False
swift_store_container = glance-images

[local]
filesystem_store_datadir = $state_path/images
filesystem_store_file_perm = 640
filesystem_thin_provisioning = yes

[fast]
rbd_store_pool = images
rbd_store_user = glance
rbd_store_ceph_conf = /etc/ceph/ceph.conf
rados_connect_timeout = 30
rbd_thin_provisioning = True

[cheap]
s3_store_host = rgw.example:8080
s3_store_access_key = AKIAEXAMPLE
s3_store_secret_key = s3-secret-$$value
s3_store_bucket = glance
s3_store_create_bucket_on_put = true
s3_store_bucket_url_format = path
s3_store_large_object_size = 50
s3_store_large_object_chunk_size = 8
s3_store_thread_pools = 5
s3_store_region_name = us-east-1

[objects]
swift_store_config_file = swift-store.conf
default_swift_reference = ref1
swift_store_create_container_on_put = 1
swift_store_large_object_size = 1024
swift_store_large_object_chunk_size = 100
swift_store_multiple_containers_seed = 3
swift_store_endpoint_type = internalURL

[vsphere]
vmware_server_host = vcenter.example
vmware_server_username = administrator@vsphere.local
vmware_server_password = vmware-secret
vmware_datastores = dc1:ds-slow:10
vmware_datastores = dc1:ds-fast:100
vmware_api_insecure = true
vmware_task_poll_interval = 2

[volumes]
cinder_store_auth_address = http://keystone.example:5000/v3
cinder_store_user_name = glance
cinder_store_password = cinder-secret
cinder_store_project_name = service
cinder_volume_type = ceph
os_region_name = RegionTwo

[web]
imagefs_http_base_url = http://mirror.example/images/
http_proxy_information = http:10.0.0.1:3128, https:10.0.0.1:1080

[os_glance_staging_store]
filesystem_store_datadir = /var/lib/glance/staging/
";

    #[test]
    fn multi_store_glance_api_conf() {
        let (dir, path) = write_conf(MULTI_STORE);
        fs::write(dir.path().join("swift-store.conf"), SWIFT_CONF).unwrap();
        let c = import_glance(&path).unwrap();

        assert_eq!(c.source.as_deref(), Some(path.as_path()));
        assert_eq!(c.mount.hashing_algorithm, HashAlgorithm::Sha256);
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.default_store.as_deref(), Some("fast"));
        let names: Vec<_> = c.stores.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "local",
                "fast",
                "cheap",
                "objects",
                "vsphere",
                "volumes",
                "web",
                "os_glance_staging_store"
            ]
        );

        assert_eq!(
            c.store("local").unwrap().backend,
            BackendConfig::File(FileStoreConfig {
                datadir: PathBuf::from("/srv/glance/images"),
                file_perm: Some(0o640),
                chunk_size: 131072, // from [backend_defaults]
                thin_provisioning: true,
            })
        );
        assert_eq!(
            c.store("fast").unwrap().backend,
            BackendConfig::Rbd(RbdStoreConfig {
                pool: "images".into(),
                user: Some("glance".into()),
                ceph_conf: PathBuf::from("/etc/ceph/ceph.conf"),
                chunk_size_mb: 4, // from [backend_defaults]
                connect_timeout: Duration::from_secs(30),
                op_timeout: Duration::ZERO,
                thin_provisioning: true,
            })
        );

        let BackendConfig::S3(s) = &c.store("cheap").unwrap().backend else {
            panic!()
        };
        assert_eq!(s.host, "http://rgw.example:8080");
        assert_eq!(s.access_key.expose(), "AKIAEXAMPLE");
        assert_eq!(s.secret_key.expose(), "s3-secret-$value");
        assert_eq!(s.bucket, "glance");
        assert_eq!(s.region.as_deref(), Some("us-east-1"));
        assert_eq!(s.bucket_url_format, BucketUrlFormat::Path);
        assert!(s.create_bucket_on_put);
        assert_eq!(
            (
                s.large_object_size_mb,
                s.large_object_chunk_size_mb,
                s.thread_pools
            ),
            (50, 8, 5)
        );
        assert_eq!(s.cacert, None);

        let BackendConfig::Swift(w) = &c.store("objects").unwrap().backend else {
            panic!()
        };
        assert_eq!(w.auth_address, "http://keystone.example:5000/v3");
        assert_eq!(w.auth_version, 3);
        assert_eq!(w.user, "service:glance");
        assert_eq!(
            w.key.expose(),
            "swift-secret-key",
            "quotes stripped like Glance"
        );
        assert_eq!(w.user_domain_id.as_deref(), Some("default"));
        assert_eq!(w.project_domain_id.as_deref(), Some("default"));
        assert_eq!(w.container, "glance-images"); // from [backend_defaults]
        assert_eq!(w.multiple_containers_seed, 3);
        assert!(w.create_container_on_put && !w.multi_tenant && !w.insecure);
        assert_eq!(
            (w.large_object_size_mb, w.large_object_chunk_size_mb),
            (1024, 100)
        );
        assert_eq!(w.endpoint_type, "internalURL");

        let BackendConfig::Vmware(v) = &c.store("vsphere").unwrap().backend else {
            panic!()
        };
        assert_eq!(v.server_host, "vcenter.example");
        assert_eq!(v.username, "administrator@vsphere.local");
        assert_eq!(v.password.expose(), "vmware-secret");
        assert_eq!(
            v.datastores,
            vec![
                VmwareDatastore {
                    datacenter: "dc1".into(),
                    datastore: "ds-fast".into(),
                    weight: 100
                },
                VmwareDatastore {
                    datacenter: "dc1".into(),
                    datastore: "ds-slow".into(),
                    weight: 10
                },
            ]
        );
        assert_eq!(v.image_dir, "/openstack_glance");
        assert!(v.insecure, "deprecated name vmware_api_insecure");
        assert_eq!(v.api_retry_count, 10);
        assert_eq!(v.task_poll_interval, Duration::from_secs(2));

        let BackendConfig::Cinder(k) = &c.store("volumes").unwrap().backend else {
            panic!()
        };
        assert_eq!(
            k.auth_address.as_deref(),
            Some("http://keystone.example:5000/v3")
        );
        assert_eq!(k.user_name.as_deref(), Some("glance"));
        assert_eq!(
            k.password.as_ref().map(Secret::expose),
            Some("cinder-secret")
        );
        assert_eq!(k.project_name.as_deref(), Some("service"));
        assert_eq!(k.catalog_info, "volumev3::publicURL");
        assert_eq!(
            (k.user_domain_name.as_str(), k.project_domain_name.as_str()),
            ("Default", "Default")
        );
        assert_eq!(k.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(k.volume_type.as_deref(), Some("ceph"));
        assert_eq!(k.state_transition_timeout, Duration::from_secs(300));

        let BackendConfig::Http(h) = &c.store("web").unwrap().backend else {
            panic!()
        };
        assert_eq!(h.base_url, "http://mirror.example/images");
        assert!(
            !h.insecure,
            "https_insecure = False from [backend_defaults]"
        );
        assert_eq!(h.proxy.as_deref(), Some("http://10.0.0.1:3128"));

        let BackendConfig::File(staging) = &c.store("os_glance_staging_store").unwrap().backend
        else {
            panic!()
        };
        assert_eq!(staging.datadir, PathBuf::from("/var/lib/glance/staging/"));

        // no secret in Debug output
        let debug = format!("{c:?}");
        for secret in [
            "AKIAEXAMPLE",
            "s3-secret",
            "swift-secret-key",
            "vmware-secret",
            "cinder-secret",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked in Debug");
        }
    }

    #[test]
    fn legacy_single_store_glance_api_conf() {
        let c = import(
            "\
[DEFAULT]
debug = False

[glance_store]
stores = file, http, rbd
default_store = rbd
filesystem_store_datadir = /var/lib/glance/images/
rbd_store_pool = volumes-images
rbd_store_chunk_size = 16
imagefs_http_base_url = https://web.example
",
        )
        .unwrap();
        let names: Vec<_> = c.stores.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["file", "http", "rbd"]);
        assert_eq!(c.default_store.as_deref(), Some("rbd"));
        assert_eq!(
            c.mount.hashing_algorithm,
            HashAlgorithm::Sha512,
            "Glance's default"
        );
        let BackendConfig::File(f) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(f.datadir, PathBuf::from("/var/lib/glance/images/"));
        assert_eq!(f.file_perm, None);
        let BackendConfig::Http(h) = &c.stores[1].backend else {
            panic!()
        };
        assert!(h.insecure, "Glance's https_insecure defaults to True");
        let BackendConfig::Rbd(r) = &c.stores[2].backend else {
            panic!()
        };
        assert_eq!(r.pool, "volumes-images");
        assert_eq!(r.chunk_size_mb, 16);
        assert_eq!(r.user, None);
        assert_eq!(r.connect_timeout, Duration::ZERO);
    }

    #[test]
    fn legacy_defaults_give_one_file_store() {
        let c = import("[DEFAULT]\n[glance_store]\n").unwrap();
        assert_eq!(
            c.stores.len(),
            1,
            "the implicit http store has no base URL: skipped"
        );
        assert_eq!(c.stores[0].name, "file");
        assert_eq!(c.default_store.as_deref(), Some("file"));
        let BackendConfig::File(f) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(f.datadir, PathBuf::from("/var/lib/glance/images"));
        assert_eq!(f.chunk_size, 65536);
    }

    #[test]
    fn legacy_names_and_schemes() {
        let c = import(
            "[glance_store]\nstores = glance.store.filesystem.Store, swift\ndefault_store = swift+config\n\
             swift_store_auth_address = http://ks:5000/v2.0\nswift_store_user = t:u\nswift_store_key = k\n\
             swift_store_auth_version = 2\n",
        )
        .unwrap();
        let names: Vec<_> = c.stores.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["file", "swift"]);
        assert_eq!(c.default_store.as_deref(), Some("swift"));
        let BackendConfig::Swift(w) = &c.stores[1].backend else {
            panic!()
        };
        assert_eq!(w.auth_version, 2);
        assert_eq!(w.project_domain_id, None);
        assert_eq!(w.container, "glance");
        assert_eq!(
            (w.large_object_size_mb, w.large_object_chunk_size_mb),
            (5120, 200)
        );

        let e = import_err("[glance_store]\nstores = file\ndefault_store = rbd\n");
        assert!(e.ends_with("[glance_store] default_store: `rbd` is a rbd store, which [glance_store] stores does not enable"), "{e}");
        let e = import_err("[glance_store]\nstores = file, sheepdog\n");
        assert!(
            e.contains("[glance_store] stores: unknown store `sheepdog`"),
            "{e}"
        );
        let e = import_err("[glance_store]\nstores = file, http\n");
        assert!(
            e.contains("[glance_store] imagefs_http_base_url: missing"),
            "{e}"
        );
    }

    #[test]
    fn hashing_algorithm() {
        for (name, algo) in [
            ("sha256", HashAlgorithm::Sha256),
            ("sha384", HashAlgorithm::Sha384),
            ("sha512", HashAlgorithm::Sha512),
        ] {
            let c = import(&format!("[DEFAULT]\nhashing_algorithm = {name}\n")).unwrap();
            assert_eq!(c.mount.hashing_algorithm, algo);
        }
        let e = import_err("[DEFAULT]\nhashing_algorithm = md5\n");
        assert!(
            e.contains(
                "glance-api.conf: [DEFAULT] hashing_algorithm: unsupported hashing algorithm `md5`"
            ),
            "{e}"
        );
    }

    #[test]
    fn filesystem_store_datadirs_highest_priority_wins() {
        let c = import(
            "[DEFAULT]\nenabled_backends = local:file\n[local]\n\
             filesystem_store_datadirs = /mnt/nfs1:100\n\
             filesystem_store_datadirs = /mnt/nfs2:200\n\
             filesystem_store_datadirs = /mnt/nfs3:200\n\
             filesystem_store_datadirs = /var/lib/glance/images\n",
        )
        .unwrap();
        let BackendConfig::File(f) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(f.datadir, PathBuf::from("/mnt/nfs2"));

        let e = import_err(
            "[DEFAULT]\nenabled_backends = local:file\n[local]\nfilesystem_store_datadir = /a\nfilesystem_store_datadirs = /b:1\n",
        );
        assert!(
            e.contains("[local] filesystem_store_datadirs: set either"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = local:file\n[local]\nfilesystem_store_datadirs = /b:high\n");
        assert!(
            e.contains("[local] filesystem_store_datadirs: `/b:high`: invalid priority"),
            "{e}"
        );
    }

    #[test]
    fn swift_config_file_problems_name_both_files() {
        let conf = "[DEFAULT]\nenabled_backends = objects:swift\n[objects]\nswift_store_config_file = /nonexistent/swift.conf\n";
        let e = import_err(conf);
        assert!(e.contains("glance-api.conf: [objects] swift_store_config_file: cannot read the swift store config file /nonexistent/swift.conf"), "{e}");

        let (dir, path) = write_conf(
            "[DEFAULT]\nenabled_backends = objects:swift\n[objects]\nswift_store_config_file = swift.conf\ndefault_swift_reference = ref9\n",
        );
        fs::write(dir.path().join("swift.conf"), SWIFT_CONF).unwrap();
        let e = import_glance(&path).unwrap_err().to_string();
        assert!(e.contains("[objects] swift_store_config_file: "), "{e}");
        assert!(
            e.contains("swift.conf has no section [ref9] (named by default_swift_reference)"),
            "{e}"
        );

        fs::write(
            dir.path().join("swift.conf"),
            "[ref9]\nauth_address = http://ks\nuser = u\n",
        )
        .unwrap();
        let e = import_glance(&path).unwrap_err().to_string();
        assert!(e.contains("swift.conf: [ref9] key: missing"), "{e}");

        let e = import_err(
            "[DEFAULT]\nenabled_backends = objects:swift\n[objects]\nswift_store_container = x\n",
        );
        assert!(
            e.contains(
                "[objects] swift_store_config_file: missing: a swift store needs credentials"
            ),
            "{e}"
        );
    }

    #[test]
    fn swift_config_file_is_read_like_configparser() {
        let (dir, path) = write_conf(
            "[DEFAULT]\nenabled_backends = objects:swift\n[objects]\nswift_store_config_file = swift.conf\n",
        );
        // [DEFAULT] inherited, keys in any case, %(name)s and %%, quotes stripped
        fs::write(
            dir.path().join("swift.conf"),
            "[DEFAULT]\nauth_address = http://ks:5000/v3\nauth_version = 3\n\n\
             [ref1]\nUser = glance\nproject = service\nkey = \"100%%-%(project)s\"\nuser_domain_name = Users\n",
        )
        .unwrap();
        let c = import_glance(&path).unwrap();
        let BackendConfig::Swift(w) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(w.auth_address, "http://ks:5000/v3");
        assert_eq!(w.user, "glance");
        assert_eq!(w.key.expose(), "100%-service");
        assert_eq!(w.user_domain_name.as_deref(), Some("Users"));
        assert_eq!(w.user_domain_id, None, "a name was given");
        assert_eq!(w.project_domain_id.as_deref(), Some("default"));

        fs::write(
            dir.path().join("swift.conf"),
            "[ref1]\nauth_address = http://ks\nuser = u\nkey = 'half-quoted-secret\n",
        )
        .unwrap();
        let e = import_glance(&path).unwrap_err().to_string();
        assert!(
            e.contains("swift.conf: [ref1] key: non-closed quote"),
            "{e}"
        );
        assert!(!e.contains("half-quoted"), "{e}");

        fs::write(
            dir.path().join("swift.conf"),
            "[ref1]\nauth_address = http://ks\nuser = u\nkey = 50%-secret\n",
        )
        .unwrap();
        let e = import_glance(&path).unwrap_err().to_string();
        assert!(e.contains("[ref1] key: a lone `%`"), "{e}");
        assert!(!e.contains("50%-secret"), "{e}");
    }

    #[test]
    fn http_store_needs_a_base_url() {
        let e =
            import_err("[DEFAULT]\nenabled_backends = web:http\n[web]\nhttps_insecure = false\n");
        assert!(
            e.contains("glance-api.conf: [web] imagefs_http_base_url: missing"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = web:http\n[web]\nimagefs_http_base_url = mirror/images\n");
        assert!(
            e.contains("[web] imagefs_http_base_url: must start with http"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_section_and_key() {
        let e = import_err(
            "[DEFAULT]\nenabled_backends = fast:rbd\n[fast]\nrbd_store_chunk_size = 0\n",
        );
        assert!(
            e.ends_with("glance-api.conf: [fast] rbd_store_chunk_size: must be at least 1"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = fast:rbd\n[backend_defaults]\nrbd_thin_provisioning = maybe\n");
        assert!(
            e.contains("[backend_defaults] rbd_thin_provisioning: expected a boolean"),
            "{e}"
        );
        let e = import_err(
            "[DEFAULT]\nenabled_backends = fast:rbd\n[fast]\nrados_connect_timeout = soon\n",
        );
        assert!(
            e.contains("[fast] rados_connect_timeout: expected an integer, got `soon`"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = fast:ceph\n");
        assert!(
            e.contains("[DEFAULT] enabled_backends: store `fast` has unknown type `ceph`"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = fast\n");
        assert!(
            e.contains("[DEFAULT] enabled_backends: entry `fast` is not name:type"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = .x:file\n");
        assert!(e.contains("must not start with '.'"), "{e}");
        let e = import_err("[DEFAULT]\nenabled_backends = a:file, a:rbd\n");
        assert!(e.contains("store `a` is listed twice"), "{e}");
        let e = import_err(
            "[DEFAULT]\nenabled_backends = a:file\n[glance_store]\ndefault_backend = b\n",
        );
        assert!(
            e.contains("[glance_store] default_backend: `b` is not one of the stores"),
            "{e}"
        );
        let e = import_err(
            "[DEFAULT]\nenabled_backends = a:file\n[a]\nfilesystem_store_file_perm = 0040\n",
        );
        assert!(
            e.contains("[a] filesystem_store_file_perm: mode 0o40 lacks owner read"),
            "{e}"
        );
        let e = import_err(
            "[DEFAULT]\nenabled_backends = a:file\n[a]\nfilesystem_store_datadir = images\n",
        );
        assert!(
            e.contains("[a] filesystem_store_datadir: must be an absolute path"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = s:s3\n[s]\ns3_store_host = h\ns3_store_access_key = a\ns3_store_secret_key = b\ns3_store_bucket = c\ns3_store_large_object_chunk_size = 4\n");
        assert!(
            e.contains("[s] s3_store_large_object_chunk_size: must be at least 5"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = s:s3\n[s]\ns3_store_access_key = a\n");
        assert!(
            e.contains("[s] s3_store_host: missing; s3 stores require it"),
            "{e}"
        );
        let e =
            import_err("[DEFAULT]\nenabled_backends = v:vmware\n[v]\nvmware_server_host = vc\n");
        assert!(e.contains("[v] vmware_datastores: missing"), "{e}");
        let e = import_err(
            "[DEFAULT]\nenabled_backends = v:vmware\n[v]\nvmware_datastores = onlyname\n",
        );
        assert!(
            e.contains(
                "[v] vmware_datastores: `onlyname`: expected datacenter_path:datastore_name"
            ),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = c:cinder\n[c]\ncinder_volume_type = x\n");
        assert!(
            e.contains("[c] cinder_store_auth_address: missing: imagefs has no user token"),
            "{e}"
        );
        let e = import_err("[DEFAULT]\nenabled_backends = a:file\n[a]\nfilesystem_store_datadir = $nowhere/images\n");
        assert!(
            e.contains("[a] filesystem_store_datadir: refers to `$nowhere`, which is not set"),
            "{e}"
        );
        let e = import("[DEFAULT]\nenabled_backends = a:file\n[a\n").unwrap_err();
        assert!(
            matches!(e, ConfigError::Syntax { line: Some(_), .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("syntax error: unterminated section header"),
            "{e}"
        );
        let e = import_glance(Path::new("/nonexistent/glance-api.conf")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        // a secret that refers to an unset option: the name is part of the secret
        let e = import_err(
            "[DEFAULT]\nenabled_backends = s:s3\n[s]\ns3_store_host = h\ns3_store_access_key = a\n\
             s3_store_secret_key = pa$sword\ns3_store_bucket = c\n",
        );
        assert!(
            e.contains("[s] s3_store_secret_key: refers to an unset option"),
            "{e}"
        );
        assert!(!e.contains("sword"), "{e}");
        // an error next to secrets quotes none of them
        let e = import_err(
            "[DEFAULT]\nenabled_backends = s:s3\n[s]\ns3_store_host = h\ns3_store_access_key = AKIA-HIDDEN\n\
             s3_store_secret_key = very-hidden\ns3_store_bucket = c\ns3_store_thread_pools = 0\n",
        );
        assert!(!e.contains("HIDDEN") && !e.contains("hidden"), "{e}");
    }

    #[test]
    fn reserved_stores_are_ignored_unless_configured() {
        let c = import(
            "[DEFAULT]\nenabled_backends = a:file\n[a]\nfilesystem_store_datadir = /images\n\
             [backend_defaults]\nfilesystem_store_datadir = /default\n[os_glance_tasks_store]\nfilesystem_store_chunk_size = 1024\n",
        )
        .unwrap();
        assert_eq!(c.stores.len(), 1);
        assert_eq!(c.default_store, None);
    }

    #[test]
    fn oslo_values() {
        assert_eq!(parse_int("0640"), Some(640));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("1_000"), Some(1000));
        assert_eq!(parse_int("1e3"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(
            proxy_for_scheme("http:p1:3128, https:p2:1080", "https"),
            Ok(Some("p2:1080".into()))
        );
        assert_eq!(proxy_for_scheme("", "http"), Ok(None));
        assert_eq!(unquote("\"a b\""), "a b");
        assert_eq!(unquote("'x"), "'x");
        assert_eq!(parse_auth_version("3.0"), Ok(3));
        assert!(parse_auth_version("4").is_err());
        // repeated sections merge, the last value wins, `;` and `#` comments
        let c = import(
            "; comment\n[DEFAULT]\nenabled_backends = a:rbd\n[a]\nrbd_store_pool = one\n# comment\n[a]\nrbd_store_pool = two\n",
        )
        .unwrap();
        let BackendConfig::Rbd(r) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(r.pool, "two");
    }

    #[test]
    fn keys_are_case_sensitive() {
        let c =
            import("[DEFAULT]\nenabled_backends = a:rbd\n[a]\nRBD_STORE_POOL = other\n").unwrap();
        let BackendConfig::Rbd(r) = &c.stores[0].backend else {
            panic!()
        };
        assert_eq!(r.pool, "images");
    }
}
