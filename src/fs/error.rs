//! The filesystem error: an errno, a message and an optional source. This is
//! the one place where store errors become errno values.

use std::fmt;

use crate::store::StoreError;

/// An error the filesystem returns to the kernel.
#[derive(Debug)]
pub struct FsError {
    pub errno: i32,
    pub message: String,
    pub source: Option<StoreError>,
}

pub type FsResult<T> = Result<T, FsError>;

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FsError {}

/// Builds an `FsError` where the errno is decided:
/// `err!(libc::EPERM, "mkdir: store directories are flat")`.
#[macro_export]
macro_rules! err {
    ($errno:expr, $($fmt:tt)+) => {
        $crate::fs::FsError { errno: $errno, message: format!($($fmt)+), source: None }
    };
}

/// The errno a store error becomes.
pub fn errno_of(e: &StoreError) -> i32 {
    match e {
        StoreError::NotFound(_) => libc::ENOENT,
        StoreError::AlreadyExists(_) => libc::EEXIST,
        StoreError::Busy(..) => libc::EBUSY,
        StoreError::ReadOnly => libc::EROFS,
        StoreError::NoSpace => libc::ENOSPC,
        StoreError::PermissionDenied(_) => libc::EACCES,
        StoreError::Unavailable(_) => libc::EIO,
        StoreError::NotSupported(_) => libc::EOPNOTSUPP,
        StoreError::InvalidInput(_) => libc::EINVAL,
        StoreError::NoAttribute => libc::ENODATA,
        StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> FsError {
        FsError {
            errno: errno_of(&e),
            message: "store".into(),
            source: Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn store_errors_map_to_errno() {
        let cases = [
            (StoreError::NotFound("x".into()), libc::ENOENT),
            (StoreError::AlreadyExists("x".into()), libc::EEXIST),
            (StoreError::Busy("x".into(), "clones".into()), libc::EBUSY),
            (StoreError::ReadOnly, libc::EROFS),
            (StoreError::NoSpace, libc::ENOSPC),
            (StoreError::Unavailable("down".into()), libc::EIO),
            (StoreError::NotSupported("rename"), libc::EOPNOTSUPP),
            (StoreError::NoAttribute, libc::ENODATA),
            (
                StoreError::Io {
                    context: "x".into(),
                    source: io::Error::from_raw_os_error(libc::ENAMETOOLONG),
                },
                libc::ENAMETOOLONG,
            ),
            (
                StoreError::Io {
                    context: "x".into(),
                    source: io::Error::other("no errno"),
                },
                libc::EIO,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(FsError::from(e).errno, want);
        }
    }

    #[test]
    fn io_errors_become_store_variants() {
        let e = StoreError::io("img", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(e, StoreError::NoSpace));
        let e = StoreError::io("img", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(errno_of(&e), libc::ENOENT);
    }

    #[test]
    fn err_macro_keeps_errno_and_message() {
        let e = err!(libc::EPERM, "mkdir {}: flat", "x");
        assert_eq!(e.errno, libc::EPERM);
        assert_eq!(e.to_string(), "mkdir x: flat (errno 1)");
    }
}
