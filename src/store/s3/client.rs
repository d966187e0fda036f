//! The S3 client built from a store's config, by hand (no environment or
//! profile lookups): static credentials, the region (default us-east-1),
//! the endpoint `s3_store_host`, path or virtual-host style as Glance picks
//! it, https through rustls (ring) with the store's CA file, and the SDK's
//! own retry and timeout settings. Also the Glance location URI.

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

use crate::config::{BucketUrlFormat, S3StoreConfig};
use crate::store::StoreError;

/// Region when the config names none (Glance's default too).
pub const DEFAULT_REGION: &str = "us-east-1";
/// Attempts per request (the first and two retries), with the SDK's
/// exponential backoff; only errors the SDK classifies as transient retry.
pub const MAX_ATTEMPTS: u32 = 3;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No byte from the server for this long fails the attempt.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// One attempt of one request (a part of up to a few hundred MiB).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Read and attempt timeout of server-side copies (CopyObject and
/// UploadPartCopy answer only when done).
pub const COPY_TIMEOUT: Duration = Duration::from_secs(900);

/// The host part of an `http(s)://host[:port][/...]` URL.
pub fn host_of(url: &str) -> &str {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// The host name without the port (and without IPv6 brackets).
fn hostname_of(url: &str) -> &str {
    let h = host_of(url);
    if let Some(v6) = h.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    h.rsplit_once(':').map_or(h, |(n, _)| n)
}

/// Whether a bucket name can be a DNS label (virtual-host style).
fn dns_compatible(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !bucket.starts_with('-')
        && !bucket.ends_with('-')
}

/// Path style or virtual-host style, as Glance (botocore's addressing
/// rules) picks it: `path` and `virtual` are taken as given; `auto` is path
/// style for an endpoint that is an IP address or localhost, or a bucket
/// that cannot be a DNS label, and virtual-host style otherwise.
pub fn path_style(cfg: &S3StoreConfig) -> bool {
    match cfg.bucket_url_format {
        BucketUrlFormat::Path => true,
        BucketUrlFormat::Virtual => false,
        BucketUrlFormat::Auto => {
            let host = hostname_of(&cfg.host);
            host.parse::<IpAddr>().is_ok()
                || host.eq_ignore_ascii_case("localhost")
                || !dns_compatible(&cfg.bucket)
        }
    }
}

/// Glance's location URI of `id`, without the credentials Glance puts in
/// it (`s3://<access>:<secret>@host/bucket/id`): `s3://host/bucket/id`, or
/// `s3+https://...` for an https endpoint.
pub fn location(cfg: &S3StoreConfig, id: &str) -> String {
    let scheme = if cfg.host.starts_with("https://") {
        "s3+https"
    } else {
        "s3"
    };
    let host = cfg
        .host
        .strip_prefix("https://")
        .or_else(|| cfg.host.strip_prefix("http://"))
        .unwrap_or(&cfg.host)
        .trim_matches('/');
    format!("{scheme}://{host}/{}/{id}", cfg.bucket)
}

/// The SDK client for `cfg`.
pub fn build(cfg: &S3StoreConfig) -> Result<aws_sdk_s3::Client, StoreError> {
    let mut builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
    if let Some(ca) = &cfg.cacert {
        let pem = std::fs::read(ca)
            .map_err(|e| StoreError::InvalidInput(format!("cacert {}: {e}", ca.display())))?;
        let ctx = TlsContext::builder()
            .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
            .build()
            .map_err(|e| StoreError::InvalidInput(format!("cacert {}: {e}", ca.display())))?;
        builder = builder.tls_context(ctx);
    }
    let http = builder.build_https();
    let creds = Credentials::new(
        cfg.access_key.expose(),
        cfg.secret_key.expose(),
        None,
        None,
        "imagefs-config",
    );
    let region = cfg.region.clone().unwrap_or_else(|| DEFAULT_REGION.into());
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .credentials_provider(creds)
        .region(Region::new(region))
        .endpoint_url(&cfg.host)
        .force_path_style(path_style(cfg))
        // Ceph RGW before Reef and other S3 servers reject the flexible
        // checksums (aws-chunked trailers) the SDK now sends by default.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(if cfg.op_timeout.is_zero() {
                    READ_TIMEOUT
                } else {
                    cfg.op_timeout
                })
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .build();
    Ok(aws_sdk_s3::Client::from_conf(conf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cfg(host: &str, bucket: &str, f: BucketUrlFormat) -> S3StoreConfig {
        S3StoreConfig {
            host: host.into(),
            access_key: Secret::new("AKIA-NOT-SHOWN".into()),
            secret_key: Secret::new("very-secret".into()),
            bucket: bucket.into(),
            region: None,
            bucket_url_format: f,
            create_bucket_on_put: false,
            large_object_size_mb: 100,
            large_object_chunk_size_mb: 10,
            thread_pools: 10,
            cacert: None,
            staging_dir: std::env::temp_dir(),
            op_timeout: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn path_style_rule() {
        use BucketUrlFormat::*;
        assert!(path_style(&cfg("http://127.0.0.1:7480", "glance", Auto)));
        assert!(path_style(&cfg("http://[::1]:7480", "glance", Auto)));
        assert!(path_style(&cfg("http://localhost:9000", "glance", Auto)));
        assert!(!path_style(&cfg("https://s3.example.com", "glance", Auto)));
        assert!(path_style(&cfg(
            "https://s3.example.com",
            "Glance_Images",
            Auto
        )));
        assert!(path_style(&cfg("https://s3.example.com", "glance", Path)));
        assert!(!path_style(&cfg("http://127.0.0.1", "glance", Virtual)));
    }

    #[test]
    fn location_has_no_secrets() {
        let c = cfg("http://rgw.example:8080", "glance", BucketUrlFormat::Auto);
        assert_eq!(location(&c, "abc"), "s3://rgw.example:8080/glance/abc");
        let c = cfg("https://s3.example.com", "b", BucketUrlFormat::Auto);
        assert_eq!(location(&c, "abc"), "s3+https://s3.example.com/b/abc");
        let shown = format!("{:?} {}", c, location(&c, "x"));
        assert!(!shown.contains("very-secret") && !shown.contains("AKIA-NOT-SHOWN"));
    }
}
