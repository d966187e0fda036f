//! Glance's built-in defaults and the checks that both front-ends (imagefs
//! TOML and the glance-api.conf importer) apply, so that one rule is written
//! once whichever file an option came from. Each check returns a message
//! without the value; the caller adds the file and the key.

use std::path::PathBuf;
use std::time::Duration;

use super::{BucketUrlFormat, HashAlgorithm, VmwareDatastore};

/// Glance's defaults (glance_store 4.x option definitions).
pub(crate) mod glance_default {
    pub const FILE_DATADIR: &str = "/var/lib/glance/images";
    pub const FILE_CHUNK_SIZE: u64 = 64 * 1024;
    pub const RBD_POOL: &str = "images";
    /// Glance's own default is "" (librados searches its usual places);
    /// imagefs names the first of them.
    pub const RBD_CEPH_CONF: &str = "/etc/ceph/ceph.conf";
    pub const RBD_CHUNK_SIZE_MB: u64 = 8;
    pub const S3_LARGE_OBJECT_SIZE_MB: u64 = 100;
    pub const S3_LARGE_OBJECT_CHUNK_SIZE_MB: u64 = 10;
    pub const S3_MIN_CHUNK_SIZE_MB: u64 = 5;
    pub const S3_THREAD_POOLS: usize = 10;
    pub const SWIFT_AUTH_VERSION: u32 = 3;
    pub const SWIFT_CONTAINER: &str = "glance";
    pub const SWIFT_LARGE_OBJECT_SIZE_MB: u64 = 5 * 1024;
    pub const SWIFT_LARGE_OBJECT_CHUNK_SIZE_MB: u64 = 200;
    pub const SWIFT_MAX_CONTAINERS_SEED: u32 = 32;
    pub const SWIFT_ENDPOINT_TYPE: &str = "publicURL";
    pub const SWIFT_REFERENCE: &str = "ref1";
    /// Keystone domain id Glance assumes when neither id nor name is given.
    pub const KEYSTONE_DOMAIN_ID: &str = "default";
    pub const VMWARE_IMAGE_DIR: &str = "/openstack_glance";
    pub const VMWARE_API_RETRY_COUNT: u32 = 10;
    pub const VMWARE_TASK_POLL_INTERVAL_S: u64 = 5;
    pub const CINDER_CATALOG_INFO: &str = "volumev3::publicURL";
    pub const CINDER_DOMAIN_NAME: &str = "Default";
    pub const CINDER_STATE_TRANSITION_TIMEOUT_S: u64 = 300;
    pub const HTTPS_INSECURE: bool = true;
}

/// Why `name` cannot be a store name (a directory under the mount), if it cannot.
pub(crate) fn store_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("store name must not be empty")
    } else if name.contains('/') {
        Some("store name must not contain '/'")
    } else if name.starts_with('.') {
        Some("store name must not start with '.'")
    } else if name.contains('\0') {
        Some("store name must not contain NUL")
    } else if name.len() > 255 {
        Some("store name must be at most 255 bytes")
    } else {
        None
    }
}

/// Checks a file mode given as a number (`0o640` in TOML): <= 0 means
/// "leave the mode alone" as in Glance.
pub(crate) fn file_perm_from_int(mode: i64) -> Result<Option<u32>, String> {
    if mode <= 0 {
        return Ok(None);
    }
    check_file_perm(u32::try_from(mode).unwrap_or(u32::MAX)).map(Some)
}

/// Checks a file mode written as octal digits (`640`, `0640`, `0o640`), the
/// way Glance decodes `filesystem_store_file_perm`. Zero or negative means
/// "leave the mode alone".
pub(crate) fn file_perm_from_digits(text: &str) -> Result<Option<u32>, String> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix('-') {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
    }
    let digits = t
        .strip_prefix("0o")
        .or_else(|| t.strip_prefix("0O"))
        .unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("expected a file mode in octal digits, like 0640".into());
    }
    let mode = u32::from_str_radix(digits, 8).unwrap_or(u32::MAX);
    if mode == 0 {
        return Ok(None);
    }
    check_file_perm(mode).map(Some)
}

fn check_file_perm(mode: u32) -> Result<u32, String> {
    if mode > 0o7777 {
        return Err(format!(
            "{mode:#o} is not a file mode (at most 0o7777); write modes in octal: 0o640 or \"0640\""
        ));
    }
    // Glance refuses modes it could not read back itself.
    if mode & 0o400 == 0 {
        return Err(format!(
            "mode {mode:#o} lacks owner read (0o400); write modes in octal: 0o640 or \"0640\""
        ));
    }
    Ok(mode)
}

/// One `filesystem_store_datadirs` entry, `path[:priority]` (priority 0 when absent).
pub(crate) fn parse_datadir_priority(entry: &str) -> Result<(PathBuf, i64), String> {
    let (path, priority) = match entry.rsplit_once(':') {
        Some((path, p)) => {
            let p = p.trim();
            let priority = if p.is_empty() {
                0
            } else {
                p.parse::<i64>()
                    .map_err(|_| format!("invalid priority `{p}` (expected an integer)"))?
            };
            (path.trim(), priority)
        }
        None => (entry.trim(), 0),
    };
    if path.is_empty() {
        return Err("empty directory path".into());
    }
    Ok((PathBuf::from(path), priority))
}

/// The directory Glance prefers among `path:priority` entries: the highest
/// priority; among equal priorities the first one listed (Glance would pick
/// the one with most free space at upload time, which a static
/// configuration cannot know).
pub(crate) fn best_datadir(entries: &[(PathBuf, i64)]) -> Option<PathBuf> {
    let mut best: Option<&(PathBuf, i64)> = None;
    for e in entries {
        if best.is_none_or(|b| e.1 > b.1) {
            best = Some(e);
        }
    }
    best.map(|(p, _)| p.clone())
}

/// One `vmware_datastores` entry, `datacenter_path:datastore_name[:weight]`.
pub(crate) fn parse_datastore(entry: &str) -> Result<VmwareDatastore, String> {
    const FORMAT: &str = "expected datacenter_path:datastore_name[:weight]";
    let parts: Vec<&str> = entry.rsplitn(3, ':').map(str::trim).collect();
    // rsplitn yields from the right: [weight, ds, dc] or [ds, dc].
    let (dc, ds, weight) = match parts.as_slice() {
        [ds, dc] => (*dc, *ds, 0),
        [w, ds, dc] => {
            let weight = if w.is_empty() {
                0
            } else {
                w.parse::<i64>()
                    .map_err(|_| format!("invalid weight `{w}`; {FORMAT}"))?
            };
            (*dc, *ds, weight)
        }
        _ => return Err(FORMAT.into()),
    };
    if dc.is_empty() || ds.is_empty() {
        return Err(format!("empty datacenter path or datastore name; {FORMAT}"));
    }
    Ok(VmwareDatastore {
        datacenter: dc.to_owned(),
        datastore: ds.to_owned(),
        weight,
    })
}

/// Highest weight first; equal weights keep the order they were written in.
pub(crate) fn sort_datastores(list: &mut [VmwareDatastore]) {
    list.sort_by_key(|d| std::cmp::Reverse(d.weight));
}

pub(crate) fn parse_hash_algorithm(name: &str) -> Result<HashAlgorithm, String> {
    match name.trim().to_ascii_lowercase().as_str() {
        "sha256" => Ok(HashAlgorithm::Sha256),
        "sha384" => Ok(HashAlgorithm::Sha384),
        "sha512" => Ok(HashAlgorithm::Sha512),
        other => Err(format!(
            "unsupported hashing algorithm `{other}` (imagefs supports sha256, sha384, sha512)"
        )),
    }
}

pub(crate) fn parse_bucket_url_format(name: &str) -> Result<BucketUrlFormat, String> {
    match name.trim() {
        "auto" => Ok(BucketUrlFormat::Auto),
        "path" => Ok(BucketUrlFormat::Path),
        "virtual" => Ok(BucketUrlFormat::Virtual),
        other => Err(format!(
            "unknown bucket URL format `{other}` (expected auto, path or virtual)"
        )),
    }
}

/// Glance's rule for `s3_store_host`: a host without a scheme means http://.
pub(crate) fn normalize_s3_host(host: &str) -> Result<String, String> {
    let host = host.trim().trim_end_matches('/');
    if host.is_empty() {
        return Err("must not be empty".into());
    }
    if host.starts_with("http://") || host.starts_with("https://") {
        Ok(host.to_owned())
    } else if host.contains("://") {
        Err("must be a host name or an http:// or https:// URL".into())
    } else {
        Ok(format!("http://{host}"))
    }
}

/// A base URL for the http store: http(s)://..., without the trailing '/'.
pub(crate) fn normalize_base_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    if rest.trim_end_matches('/').is_empty() {
        return Err("has no host".into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A proxy address; like Python's requests, `host:port` means http://host:port.
pub(crate) fn normalize_proxy(proxy: &str) -> Result<String, String> {
    let proxy = proxy.trim();
    if proxy.is_empty() {
        return Err("must not be empty".into());
    }
    if proxy.contains("://") {
        Ok(proxy.to_owned())
    } else {
        Ok(format!("http://{proxy}"))
    }
}

pub(crate) fn check_swift_auth_version(v: u32) -> Result<u32, String> {
    match v {
        1..=3 => Ok(v),
        _ => Err(format!(
            "unsupported auth version {v} (1 = tempauth, 2 or 3 = keystone)"
        )),
    }
}

pub(crate) fn check_endpoint_type(t: &str) -> Result<String, String> {
    match t {
        "publicURL" | "adminURL" | "internalURL" => Ok(t.to_owned()),
        other => Err(format!(
            "unknown endpoint type `{other}` (expected publicURL, adminURL or internalURL)"
        )),
    }
}

pub(crate) fn check_containers_seed(seed: i64) -> Result<u32, String> {
    if (0..=i64::from(glance_default::SWIFT_MAX_CONTAINERS_SEED)).contains(&seed) {
        Ok(seed as u32)
    } else {
        Err(format!(
            "must be between 0 and {}",
            glance_default::SWIFT_MAX_CONTAINERS_SEED
        ))
    }
}

/// `rados_connect_timeout`: a negative or zero value means the library default.
pub(crate) fn connect_timeout(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// imagefs has no user token to borrow, so a Cinder store needs either its
/// own service credentials (all four of `creds`, given with their spelling
/// and whether they are set) or an endpoint of a Cinder without
/// authentication (`endpoint`). Returns the option to blame and why.
pub(crate) fn check_cinder_credentials(
    creds: &[(&'static str, bool); 4],
    endpoint: (&str, bool),
) -> Result<(), (&'static str, String)> {
    let names: Vec<&str> = creds.iter().map(|(name, _)| *name).collect();
    if creds.iter().all(|(_, set)| !set) {
        if endpoint.1 {
            return Ok(());
        }
        return Err((
            creds[0].0,
            format!(
                "missing: imagefs has no user token to borrow, so a cinder store needs \
                 service credentials ({}) or the {} of a Cinder without authentication",
                names.join(", "),
                endpoint.0
            ),
        ));
    }
    match creds.iter().find(|(_, set)| !set) {
        Some((name, _)) => Err((
            name,
            format!(
                "missing; cinder service credentials need {} together",
                names.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names() {
        assert!(store_name_problem("fast").is_none());
        assert!(store_name_problem("os_glance_staging_store").is_none());
        assert!(store_name_problem("").is_some());
        assert!(store_name_problem("a/b").is_some());
        assert!(store_name_problem(".hidden").is_some());
        assert!(store_name_problem("..").is_some());
    }

    #[test]
    fn file_perm_digits_are_octal_like_glance() {
        assert_eq!(file_perm_from_digits("640"), Ok(Some(0o640)));
        assert_eq!(file_perm_from_digits("0640"), Ok(Some(0o640)));
        assert_eq!(file_perm_from_digits("0o600"), Ok(Some(0o600)));
        assert_eq!(file_perm_from_digits("0"), Ok(None));
        assert_eq!(file_perm_from_digits("-1"), Ok(None));
        assert!(file_perm_from_digits("689").is_err());
        assert!(file_perm_from_digits("rw").is_err());
        // no owner read: Glance refuses it too
        assert!(file_perm_from_digits("0040").is_err());
        assert_eq!(file_perm_from_int(0o640), Ok(Some(0o640)));
        assert_eq!(file_perm_from_int(0), Ok(None));
        // decimal 640 is 0o1200: no owner read, so it is caught
        assert!(file_perm_from_int(640).is_err());
        assert!(file_perm_from_int(0o17777).is_err());
    }

    #[test]
    fn datadir_priorities() {
        assert_eq!(
            parse_datadir_priority("/a:100"),
            Ok((PathBuf::from("/a"), 100))
        );
        assert_eq!(parse_datadir_priority("/b"), Ok((PathBuf::from("/b"), 0)));
        assert_eq!(parse_datadir_priority("/c:"), Ok((PathBuf::from("/c"), 0)));
        assert!(parse_datadir_priority("/d:high").is_err());
        assert!(parse_datadir_priority(":5").is_err());
        let list = [
            (PathBuf::from("/low"), 1),
            (PathBuf::from("/high"), 200),
            (PathBuf::from("/high2"), 200),
        ];
        assert_eq!(best_datadir(&list), Some(PathBuf::from("/high")));
        assert_eq!(best_datadir(&[]), None);
    }

    #[test]
    fn datastores() {
        let d = parse_datastore("dc1:ds1:100").unwrap();
        assert_eq!(
            (d.datacenter.as_str(), d.datastore.as_str(), d.weight),
            ("dc1", "ds1", 100)
        );
        let d = parse_datastore("folder/dc2:ds2").unwrap();
        assert_eq!(
            (d.datacenter.as_str(), d.datastore.as_str(), d.weight),
            ("folder/dc2", "ds2", 0)
        );
        assert!(parse_datastore("ds-only").is_err());
        assert!(parse_datastore("dc:ds:heavy").is_err());
        assert!(parse_datastore(":ds:1").is_err());
        let mut v = vec![
            parse_datastore("a:x:1").unwrap(),
            parse_datastore("b:y:5").unwrap(),
            parse_datastore("c:z:1").unwrap(),
        ];
        sort_datastores(&mut v);
        let order: Vec<_> = v.iter().map(|d| d.datacenter.as_str()).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn urls() {
        assert_eq!(normalize_s3_host("rgw:8080").unwrap(), "http://rgw:8080");
        assert_eq!(
            normalize_s3_host("https://s3.example/").unwrap(),
            "https://s3.example"
        );
        assert!(normalize_s3_host("ftp://x").is_err());
        assert_eq!(
            normalize_base_url("http://web/images/").unwrap(),
            "http://web/images"
        );
        assert!(normalize_base_url("web/images").is_err());
        assert!(normalize_base_url("https://").is_err());
        assert_eq!(
            normalize_proxy("10.0.0.1:3128").unwrap(),
            "http://10.0.0.1:3128"
        );
    }

    #[test]
    fn names_of_enums() {
        assert_eq!(parse_hash_algorithm("SHA256"), Ok(HashAlgorithm::Sha256));
        assert!(parse_hash_algorithm("md5").is_err());
        assert_eq!(
            parse_bucket_url_format("virtual"),
            Ok(BucketUrlFormat::Virtual)
        );
        assert!(parse_bucket_url_format("dns").is_err());
    }
}
