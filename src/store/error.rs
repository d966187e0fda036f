//! The one error type every backend maps its failures into.

use std::io;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in a store, independent of the backend. The fs core maps
/// these to errno in exactly one place (`fs::error`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: no such image")]
    NotFound(String),
    #[error("{0}: image already exists")]
    AlreadyExists(String),
    #[error("{0}: image is busy ({1})")]
    Busy(String, String),
    #[error("store is read-only")]
    ReadOnly,
    #[error("store is full")]
    NoSpace,
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("not supported by this store: {0}")]
    NotSupported(&'static str),
    #[error("invalid argument: {0}")]
    InvalidInput(String),
    #[error("no such attribute")]
    NoAttribute,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// Wraps an I/O error, turning the errors every backend shares into their
    /// own variants so callers can match on them.
    pub fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOENT) => StoreError::NotFound(context),
            Some(libc::EEXIST) => StoreError::AlreadyExists(context),
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => StoreError::NoSpace,
            Some(libc::EACCES) | Some(libc::EPERM) => StoreError::PermissionDenied(context),
            Some(libc::EROFS) => StoreError::ReadOnly,
            Some(libc::ENODATA) => StoreError::NoAttribute,
            _ => StoreError::Io { context, source },
        }
    }
}
