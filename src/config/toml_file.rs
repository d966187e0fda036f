//! TOML loading (placeholder until the config branch lands).
use super::*;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(serde::Deserialize)]
struct Raw {
    stores: BTreeMap<String, RawStore>,
    #[serde(default)]
    mount: RawMount,
}
#[derive(serde::Deserialize, Default)]
struct RawMount {
    attr_ttl_ms: Option<u64>,
    threads: Option<usize>,
    passthrough: Option<bool>,
}
#[derive(serde::Deserialize)]
struct RawStore {
    #[serde(rename = "type")]
    kind: String,
    datadir: PathBuf,
}

pub fn embedded_default() -> Config {
    parse_toml(
        "[stores.local]\ntype = \"file\"\ndatadir = \"/var/lib/imagefs/local\"\n",
        None,
    )
    .unwrap()
}
pub fn load_toml(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        key: String::new(),
        message: e.to_string(),
    })?;
    parse_toml(&text, Some(path))
}
pub fn parse_toml(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
    let raw: Raw = toml::from_str(text).map_err(|e| ConfigError {
        file: format!("{source:?}"),
        key: String::new(),
        message: e.to_string(),
    })?;
    let mut mount = MountConfig::default();
    if let Some(t) = raw.mount.attr_ttl_ms {
        mount.attr_ttl = Duration::from_millis(t);
    }
    if let Some(t) = raw.mount.threads {
        mount.threads = t;
    }
    if let Some(p) = raw.mount.passthrough {
        mount.passthrough = p;
    }
    let stores = raw
        .stores
        .into_iter()
        .map(|(name, s)| {
            assert_eq!(s.kind, "file");
            StoreConfig {
                name,
                backend: BackendConfig::File(FileStoreConfig {
                    datadir: s.datadir,
                    file_perm: None,
                    chunk_size: 65536,
                    thin_provisioning: false,
                }),
            }
        })
        .collect();
    Ok(Config {
        source: source.map(Path::to_path_buf),
        mount,
        cache: CacheConfig::default(),
        stores,
        default_store: None,
    })
}
