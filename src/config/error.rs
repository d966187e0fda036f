//! `ConfigError`: what went wrong while reading a configuration, always
//! naming the file (and line when known), the option and the problem, and
//! never the value of a secret.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// An error found while reading or checking a configuration.
///
/// `Display` reads `FILE[:LINE]: KEY: MESSAGE`, where KEY is written the way
/// the file spells it: `stores.local.datadir` in imagefs TOML,
/// `[fast] rbd_store_pool` in a glance-api.conf.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML / INI.
    #[error("{}: syntax error: {message}", Origin(file.as_deref(), *line))]
    Syntax {
        file: Option<PathBuf>,
        line: Option<usize>,
        message: String,
    },
    /// An option is missing, unknown, of the wrong type or has a bad value.
    #[error("{}: {key}: {message}", Origin(file.as_deref(), *line))]
    Invalid {
        file: Option<PathBuf>,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// An `Invalid` error without a line number.
    pub(crate) fn invalid(
        file: Option<&Path>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: file.map(Path::to_path_buf),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The file the error is about, if there is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            ConfigError::Read { path, .. } => Some(path),
            ConfigError::Syntax { file, .. } | ConfigError::Invalid { file, .. } => file.as_deref(),
        }
    }

    /// The option the error is about, as the file spells it.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// 1-based line number, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }
}

/// `path:line`, or a placeholder when the text came from no file.
struct Origin<'a>(Option<&'a Path>, Option<usize>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}", path.display())?,
            None => f.write_str("<configuration text>")?,
        }
        if let Some(line) = self.1 {
            write!(f, ":{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_key_and_problem() {
        let e = ConfigError::Invalid {
            file: Some(PathBuf::from("/etc/imagefs.toml")),
            line: Some(7),
            key: "stores.local.datadir".into(),
            message: "must be an absolute path".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/imagefs.toml:7: stores.local.datadir: must be an absolute path"
        );
        assert_eq!(e.key(), Some("stores.local.datadir"));
        assert_eq!(e.line(), Some(7));
        assert_eq!(e.file(), Some(Path::new("/etc/imagefs.toml")));
    }

    #[test]
    fn display_without_line_or_file() {
        let e = ConfigError::invalid(
            Some(Path::new("/etc/glance/glance-api.conf")),
            "[fast] rbd_store_pool",
            "must not be empty",
        );
        assert_eq!(
            e.to_string(),
            "/etc/glance/glance-api.conf: [fast] rbd_store_pool: must not be empty"
        );
        let e = ConfigError::Syntax {
            file: None,
            line: Some(3),
            message: "expected `=`".into(),
        };
        assert_eq!(
            e.to_string(),
            "<configuration text>:3: syntax error: expected `=`"
        );
    }

    #[test]
    fn read_error_names_the_file() {
        let e = ConfigError::Read {
            path: PathBuf::from("/nope.toml"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(e.to_string().starts_with("/nope.toml: cannot read: "));
        assert_eq!(e.key(), None);
    }
}
