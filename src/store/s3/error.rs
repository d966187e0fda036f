//! The one place where S3 failures become `StoreError`s: SDK errors are
//! reduced to an HTTP status and an S3 error code, which callers can look
//! at (a failed precondition means different things to different calls),
//! and then mapped. Messages name the operation and the key, never a
//! credential (the SDK's errors carry none; request signatures are not
//! part of them).

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::store::StoreError;

/// An S3 call that failed: the HTTP status (None: no response at all) and
/// the S3 error code, if the server sent one.
#[derive(Debug)]
pub(crate) struct S3Error {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

impl S3Error {
    pub fn from_sdk<E, R>(e: SdkError<E, R>) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HasStatus,
    {
        let status = match &e {
            SdkError::ServiceError(se) => Some(se.raw().status_code()),
            SdkError::ResponseError(re) => Some(re.raw().status_code()),
            _ => None,
        };
        let code = match &e {
            SdkError::ServiceError(se) => se.err().code().map(str::to_string),
            _ => None,
        };
        let message = match &e {
            SdkError::ServiceError(se) => format!(
                "HTTP {} {}{}",
                status.unwrap_or_default(),
                se.err().code().unwrap_or("(no code)"),
                se.err()
                    .message()
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            _ => DisplayErrorContext(&e).to_string(),
        };
        S3Error {
            status,
            code,
            message,
        }
    }

    /// The server answered 412 Precondition Failed (If-Match, If-None-Match).
    pub fn is_precondition(&self) -> bool {
        self.status == Some(412) || self.code.as_deref() == Some("PreconditionFailed")
    }

    /// 409 ConditionalRequestConflict: a concurrent conditional write won.
    pub fn is_conflict(&self) -> bool {
        self.status == Some(409)
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404) || matches!(self.code.as_deref(), Some("NoSuchKey" | "NotFound"))
    }

    /// 416: a range starting at or past the end of the object.
    pub fn is_invalid_range(&self) -> bool {
        self.status == Some(416) || self.code.as_deref() == Some("InvalidRange")
    }

    /// The server does not implement the call (or this form of it).
    pub fn is_not_implemented(&self) -> bool {
        self.status == Some(501) || matches!(self.code.as_deref(), Some("NotImplemented"))
    }

    /// Maps the failure of an operation on `what` (a key, or "bucket x").
    pub fn into_store(self, what: &str) -> StoreError {
        let ctx = || format!("{what}: {}", self.message);
        match (self.status, self.code.as_deref()) {
            (_, Some("NoSuchBucket")) => StoreError::Unavailable(format!(
                "{what}: the bucket does not exist (create it, or set create_bucket_on_put)"
            )),
            (Some(404), _) | (_, Some("NoSuchKey" | "NotFound" | "NoSuchUpload")) => {
                StoreError::NotFound(what.to_string())
            }
            (_, Some("QuotaExceeded" | "EntityTooLarge")) | (Some(507), _) => StoreError::NoSpace,
            (Some(401 | 403), _)
            | (_, Some("AccessDenied" | "SignatureDoesNotMatch" | "InvalidAccessKeyId")) => {
                StoreError::PermissionDenied(ctx())
            }
            (Some(412), _) | (_, Some("PreconditionFailed")) => StoreError::Io {
                context: format!("{what}: changed meanwhile ({})", self.message),
                source: std::io::Error::from_raw_os_error(libc::ESTALE),
            },
            (Some(400), _) | (Some(416), _) => StoreError::InvalidInput(ctx()),
            (Some(501), _) => StoreError::Unavailable(format!(
                "{what}: not implemented by this S3 server ({})",
                self.message
            )),
            // No response (connect/timeout/dispatch), 5xx, anything else.
            _ => StoreError::Unavailable(ctx()),
        }
    }
}

/// The HTTP status of a raw response, for the error types the SDK returns.
pub(crate) trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// `?` for SDK calls: `.await.map_err(s3err)?` then `.into_store(key)`.
pub(crate) fn s3err<E, R>(e: SdkError<E, R>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    S3Error::from_sdk(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(status: Option<u16>, code: Option<&str>) -> S3Error {
        S3Error {
            status,
            code: code.map(str::to_string),
            message: "m".into(),
        }
    }

    #[test]
    fn statuses_map_to_store_errors() {
        assert!(matches!(
            e(Some(404), None).into_store("k"),
            StoreError::NotFound(_)
        ));
        assert!(matches!(
            e(Some(404), Some("NoSuchBucket")).into_store("k"),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            e(Some(403), Some("AccessDenied")).into_store("k"),
            StoreError::PermissionDenied(_)
        ));
        assert!(matches!(
            e(Some(503), Some("SlowDown")).into_store("k"),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            e(None, None).into_store("k"),
            StoreError::Unavailable(_)
        ));
        match e(Some(412), None).into_store("k") {
            StoreError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ESTALE)),
            other => panic!("{other:?}"),
        }
        assert!(e(Some(412), None).is_precondition());
        assert!(e(Some(416), Some("InvalidRange")).is_invalid_range());
    }
}
