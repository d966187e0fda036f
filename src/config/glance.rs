//! glance-api.conf importer (placeholder until the config branch lands).
use super::{Config, ConfigError};
use std::path::Path;
pub fn import_glance(path: &Path) -> Result<Config, ConfigError> {
    Err(ConfigError {
        file: path.display().to_string(),
        key: String::new(),
        message: "not implemented yet".into(),
    })
}
