//! `-o` mount options, as given on the command line or by mount(8) from
//! /etc/fstab (`mount.fuse3` passes them through).

use std::path::PathBuf;

use fuser::{MountOption, SessionACL};

/// What the `-o` options ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOpts {
    pub read_only: bool,
    pub acl: SessionACL,
    pub default_permissions: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub config: Option<PathBuf>,
    pub glance_config: Option<PathBuf>,
    pub store: Option<String>,
}

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            read_only: false,
            acl: SessionACL::Owner,
            default_permissions: true,
            uid: None,
            gid: None,
            config: None,
            glance_config: None,
            store: None,
        }
    }
}

/// Options mount(8) and systemd add that concern them, not us.
const IGNORED: &[&str] = &[
    "rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "dev",
    "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "async",
];

fn number(key: &str, v: &str) -> Result<u32, String> {
    v.parse()
        .map_err(|_| format!("mount option {key}={v}: expected a number"))
}

/// Parses every `-o` argument (each comma-separated).
pub fn parse(args: &[String]) -> Result<MountOpts, String> {
    let mut o = MountOpts::default();
    for opt in args
        .iter()
        .flat_map(|a| a.split(','))
        .filter(|s| !s.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("ro", None) => o.read_only = true,
            ("allow_other", None) => o.acl = SessionACL::All,
            ("allow_root", None) => o.acl = SessionACL::RootAndOwner,
            ("default_permissions", None) => o.default_permissions = true,
            ("uid", Some(v)) => o.uid = Some(number(key, v)?),
            ("gid", Some(v)) => o.gid = Some(number(key, v)?),
            ("config", Some(v)) => o.config = Some(PathBuf::from(v)),
            ("glance_config", Some(v)) => o.glance_config = Some(PathBuf::from(v)),
            ("store", Some(v)) => o.store = Some(v.to_string()),
            (k, None) if IGNORED.contains(&k) || k.starts_with("x-") => {}
            (k, _) if k.starts_with("x-") => {}
            _ => return Err(format!("unknown mount option {opt:?}")),
        }
    }
    Ok(o)
}

impl MountOpts {
    /// The options handed to the kernel mount.
    pub fn fuser_options(&self) -> Vec<MountOption> {
        let mut v = vec![
            MountOption::FSName("imagefs".into()),
            MountOption::Subtype("imagefs".into()),
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        if self.default_permissions {
            v.push(MountOption::DefaultPermissions);
        }
        v.push(if self.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Result<MountOpts, String> {
        parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_fstab_style_options() {
        let o = p(&[
            "rw,allow_other,_netdev,x-systemd.requires=ceph.target",
            "uid=160,gid=160",
        ])
        .unwrap();
        assert_eq!(o.acl, SessionACL::All);
        assert_eq!((o.uid, o.gid), (Some(160), Some(160)));
        assert!(!o.read_only);
        let o = p(&["ro,config=/etc/imagefs/imagefs.toml,store=fast"]).unwrap();
        assert!(o.read_only);
        assert_eq!(o.config, Some(PathBuf::from("/etc/imagefs/imagefs.toml")));
        assert_eq!(o.store.as_deref(), Some("fast"));
    }

    #[test]
    fn rejects_unknown_and_bad_values() {
        assert!(p(&["bogus"]).unwrap_err().contains("bogus"));
        assert!(p(&["uid=glance"]).unwrap_err().contains("uid=glance"));
    }
}
